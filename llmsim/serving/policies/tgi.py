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

**The kernels TGI's server launches beyond a fused engine's** (server/text_generation_server at v2.1.0, CUDA,
Llama; priced as Mix.layer_kernels / Mix.pass_kernels, each at the device's fixed time per kernel, as every
kernel of a pass is: docs/costmodel.md, "kernel latency"). The cost model counts 9 kernels per layer, vLLM's
fused Llama layer (its KV-cache write not counted); TGI's layer (custom_modeling/flash_llama_modeling.py) launches
the same plus **2** (`TGI_LAYER_EXTRA_KERNELS`): the rotary embedding is applied to the query and to the key in
two calls of flash-attn's `apply_rotary` (layers/rotary.py), and the MLP computes `act(gate) * up` as two
elementwise kernels where vLLM fuses `silu_and_mul`. After the LM head, every pass (prefill or decode) chooses a
token per sequence with the request's sampling parameters; vLLM's benchmark client sends every TGI request with
`do_sample: true, temperature: 0.01, top_p: 0.99` (vLLM benchmarks/backend_request_func.py `async_request_tgi`:
TGI refuses temperature 0 and top_p 1), so TGI's HeterogeneousNextTokenChooser (utils/tokens.py,
utils/logits_process.py) runs a temperature warper, a top-p warper and per-sequence sampling, and
FlashCausalLM.generate_token (models/flash_causal_lm.py) updates the batch, with Python loops over the sequences:
per pass `TGI_PASS_KERNELS` = 29 (next_ids zeros 1, temperature div_ 1, torch.sort of the (rows, vocab) logits 7 —
PyTorch's aten/src/ATen/native/cuda/SortStable.cu `segmented_sort_pairs_by_full_sort`, its path for 2-127 rows:
fill_index_and_segment, a CUB radix sort of the 16-bit keys (a histogram and a pass per 8 bits, CUB's onesweep
digit on sm80: 3), a radix sort on the segment index (a histogram and one pass: 2), sort_postprocess; CUB's
scan kernels and memsets not counted, so a lower bound —, softmax 1, the top-p comparison 1, the last-token fill 1, scatter 2
(clone and scatter), masked_fill_ 1, two copies back into scores / next_ids 2, log_softmax 1, ones_like 1,
gather 1, the batch update's cumsum, subtraction, index, position, length and slot updates 6, three `.tolist()`
copies 3), plus in a decode step the inputs copied into the CUDA graph's static buffers and the slot gather 8
(`TGI_DECODE_INPUT_KERNELS`; flash_causal_lm.py `forward`); per sequence `TGI_ROW_KERNELS` = 8 (the per-row
cumsum and its copy 2, sampling's softmax, exponential_, div_, argmax and the copy into the output 5, the token's
write into all_input_ids_tensor 1), 2 more in a prefill (next_position_ids[i], next_adapter_indices[i]). Not
priced: paged attention v2's second (reduce) kernel, which TGI runs unless the padded batch x heads per rank
exceeds 512 (layers/attention/cuda.py; the decode graphs are captured at max_s = the max total tokens), and
the padding of a decode batch to the next captured graph size (1, 2, 4, 8, 16, 32; launcher default), since the
scheduler does not know the heads per rank; the host's own time (Python, gRPC, detokenisation) between passes.
"""

from __future__ import annotations

import math

import numpy as np

from dataclasses import replace

from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.scheduling import Iteration, Scheduler, mix_of
from llmsim.serving.spec import DEFAULT_MAX_WAITING_TOKENS, DEFAULT_WAITING_SERVED_RATIO, SchedulerSpec


# Kernels TGI 2.1's server launches beyond the fused engine's count (module docstring, counted in its source).
TGI_LAYER_EXTRA_KERNELS = 2       # per layer and pass: rotary in two calls, SiLU and the product unfused
TGI_PASS_KERNELS = 29             # per pass after the LM head: the sampler's and the batch update's
TGI_DECODE_INPUT_KERNELS = 8      # per decode step: the CUDA graph's input copies and the slot gather
TGI_ROW_KERNELS = 8               # per sequence sampled: the top-p cumsum loop, the sampling loop, the token write
TGI_PREFILL_ROW_KERNELS = 2       # per prompt in a prefill: its position and adapter index


def tgi_pass(work: list[tuple[Sequence, int]], prefill: bool, window: int | None = None) -> Iteration:
    """An iteration of TGI 2.1 with its own kernels priced (module docstring): a prefill of new requests or a
    decode step of the running batch."""
    mix = mix_of(work, window)
    rows = len(work)
    per_row = TGI_ROW_KERNELS + (TGI_PREFILL_ROW_KERNELS if prefill else 0)
    per_pass = TGI_PASS_KERNELS + (0 if prefill else TGI_DECODE_INPUT_KERNELS)
    return Iteration(work, replace(mix, layer_kernels=TGI_LAYER_EXTRA_KERNELS, pass_kernels=per_pass + per_row * rows))


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
            return tgi_pass([(seq, seq.pending) for seq in batch], prefill=True, window=self.kv.window)
        if not self.decode_next:
            if self.waiting_tokens >= self.max_waiting_tokens:
                min_size = None
            else:
                min_size = math.floor(np.float32(len(self.running)) * self.ratio)
            batch = self.next_batch(min_size, now)
            if batch:
                self.waiting_tokens = 1
                self.decode_next = True
                return tgi_pass([(seq, seq.pending) for seq in batch], prefill=True, window=self.kv.window)
        self.decode_next = False
        self.waiting_tokens += 1
        return tgi_pass([(seq, 1) for seq in self.running if seq.pending == 1], prefill=False,
                        window=self.kv.window)

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
