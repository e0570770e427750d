"""`tgi`: Hugging Face Text Generation Inference 2.1's router, its batching loop and admission rule.

Source: huggingface/text-generation-inference at tag v2.1.0: router/src/infer/v3/scheduler.rs
(`batching_task`), router/src/infer/v3/queue.rs (`State::next_batch`), router/src/infer/v3/block_allocator.rs,
router/src/server.rs (the v3 scheduler is the one used with 2.1's Python server, which speaks the v3 protocol:
server/Makefile compiles proto/v3) and launcher/src/main.rs (the defaults). The loop:

* With no running batch, take a new batch from the queue (`next_batch(None, ...)`) and **prefill it in a
  forward pass of its own**; its first tokens come out of that pass. `waiting_tokens = 1`.
* Then, before every decode step of the running batch, try to add a batch of waiting requests:
  `min_size = None` when `waiting_tokens >= max_waiting_tokens`, else `floor(batch_size x
  waiting_served_ratio)` (Rust f32 arithmetic). If `next_batch(min_size, ...)` gives one, **prefill it alone
  (the running requests wait)**, reset `waiting_tokens = 1`, and concatenate it. Then one decode step of the
  whole batch and `waiting_tokens += 1`. So the running requests' inter-token gap holds a prefill each time a
  batch joins, and a waiting request joins at once only when enough others wait with it (the ratio rule,
  "backpressure"), or after max_waiting_tokens decode steps without an admission ("wait_exceeded").
* `next_batch(min_size, max_size, prefill_budget, token_budget)`: nothing when the queue is empty or shorter
  than min_size; else it takes requests first come first served while the sum of their prompts stays within
  `max_batch_prefill_tokens` (rounded up to the 16-token block), the sum of prompt + max_new_tokens stays
  within `token_budget = max_batch_total_tokens - the running batch's reserved tokens` (its blocks x 16:
  CachedBatch.max_tokens, server/text_generation_server/models/flash_causal_lm.py) and the block allocator
  gives each its **whole length, prompt + max_new_tokens - 1 tokens, up front**; it stops at the first that
  does not fit or at max_size; fewer than min_size taken: all go back, nothing. Requests are never preempted:
  their blocks are freed when they finish.

Mapping to llmsim: max_new_tokens is the request's output tokens (the benchmark asks for exactly the
dataset's answer length); `max_batched_tokens` is max_batch_prefill_tokens; `max_num_seqs` is TGI's
max_batch_size (unset in TGI by default; its max_concurrent_requests, 128, refuses requests beyond it with
HTTP 429, which llmsim does not model: they queue); `max_batch_total_tokens` defaults to the KV cache's tokens
(TGI 2.1 infers it from free memory at warm-up for flash-attention models and ignores a given value). Not
modelled: block 0 kept for health checks, the router's own CPU time, the concatenation's copy (its time is in
TGI's decode step; llmsim prices the step alone). A request that fits the empty cache by its blocks but not the
token budget by one token (prompt + output = blocks x block + 1) is admitted alone, so that nothing stalls.
"""

from __future__ import annotations

import math

import numpy as np

from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.scheduling import Iteration, Scheduler
from llmsim.serving.spec import DEFAULT_MAX_WAITING_TOKENS, DEFAULT_WAITING_SERVED_RATIO, SchedulerSpec


class TgiScheduler(Scheduler):
    """TGI 2.1's `batching_task` (module docstring): prefills of new batches alone, then decode steps."""

    kind = "tgi"

    def __init__(self, spec: SchedulerSpec, kv: KVCache) -> None:
        super().__init__(spec, kv)
        self.ratio = np.float32(spec.waiting_served_ratio if spec.waiting_served_ratio is not None
                                else DEFAULT_WAITING_SERVED_RATIO)
        self.max_waiting_tokens = (spec.max_waiting_tokens if spec.max_waiting_tokens is not None
                                   else DEFAULT_MAX_WAITING_TOKENS)
        capacity = kv.blocks * kv.block_tokens
        self.total_tokens = min(spec.max_batch_total_tokens or capacity, capacity)
        block = kv.block_tokens
        self.prefill_budget = -(-spec.max_batched_tokens // block) * block   # padded to the block size
        self.waiting_tokens = 0        # decode steps since the last admission (TGI's waiting_tokens)
        self.decode_next = False       # a batch just joined: the next pass is the whole batch's decode step

    def schedule(self, now: float) -> Iteration | None:
        if not self.running:
            self.decode_next = False
            batch = self.next_batch(None, now)
            if not batch:
                return None
            self.waiting_tokens = 1
            return Iteration([(seq, seq.pending) for seq in batch])
        if not self.decode_next:
            if self.waiting_tokens >= self.max_waiting_tokens:
                min_size = None
            else:
                min_size = math.floor(np.float32(len(self.running)) * self.ratio)
            batch = self.next_batch(min_size, now)
            if batch:
                self.waiting_tokens = 1
                self.decode_next = True
                return Iteration([(seq, seq.pending) for seq in batch])
        self.decode_next = False
        self.waiting_tokens += 1
        return Iteration([(seq, 1) for seq in self.running if seq.pending == 1])

    def next_batch(self, min_size: int | None, now: float) -> list[Sequence]:
        """TGI's `State::next_batch`: the requests admitted (blocks reserved, moved to running), or none."""
        waiting, kv = self.waiting, self.kv
        if not waiting or (min_size is not None and len(waiting) < min_size):
            return []
        max_size = self.spec.max_num_seqs - len(self.running)
        token_budget = self.total_tokens - kv.used * kv.block_tokens
        taken: list[Sequence] = []
        prefill = decode = 0
        for seq in waiting:
            if len(taken) >= max_size:
                break
            prefill += seq.request.input_tokens
            decode += seq.request.output_tokens
            alone = not self.running and not taken and kv.free == kv.blocks   # the guard in the module docstring
            if prefill > self.prefill_budget or (prefill + decode > token_budget and not alone):
                break
            if not kv.grow(seq, seq.peak_tokens):
                break
            taken.append(seq)
        if not taken or (min_size is not None and len(taken) < min_size):
            for seq in taken:
                kv.release(seq)
            return []
        for seq in taken:
            self.admit(seq, now)
        return taken
