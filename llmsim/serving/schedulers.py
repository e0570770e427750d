"""How one replica forms each iteration: the built-in policies and the base class plugins extend.

A scheduler owns a replica's queue of waiting sequences and its running ones, and the KV cache they
share. Each time the replica is ready for another forward pass it calls `schedule()`, which returns the
`Iteration` to run (each sequence with the tokens it computes) or None when there is nothing to do; the
replica prices the iteration with the cost model, advances the clock, emits the tokens and calls
`finish()` for every sequence that generated its last token.

Built in:
* `static` (FasterTransformer-style request batching): when the replica is idle it takes up to
  max_num_seqs waiting requests (first come, first served) whose whole length fits in the KV cache and
  whose prompts, padded to the longest, fit in max_batched_tokens; runs their prefill, then decode steps
  until the longest answer is done, every row computing (a finished row is padding) and holding its
  blocks until the batch ends; then the next batch. New arrivals wait for the whole batch.
* `continuous` (iteration-level scheduling: Yu et al. 2022, "Orca", OSDI '22; vLLM v1 with chunked
  prefill off): every iteration, the running sequences first (a decode token each), then waiting prompts,
  whole, while the token budget, max_num_seqs and the KV cache allow.
* `chunked-prefill` (Agrawal et al. 2024, "Sarathi-Serve", OSDI '24; vLLM v1's default): the same, but a
  prompt is split into chunks of at most chunk_tokens that fill the rest of the token budget beside the
  decodes, so a long prompt never stalls them.
* `prefill-first` (vLLM V0's default scheduler, mid-2024; llmsim.serving.policies.vllm_v0): waiting prompts
  get an iteration of their own and every running decode waits for it; preemption by recompute when no block
  is free; V0's watermark and delay_factor.
* `tgi` (Hugging Face TGI 2.1's router; llmsim.serving.policies.tgi): new requests are prefilled in a pass of
  their own and then join the running batch, admitted by TGI's waiting_served_ratio / max_waiting_tokens rule
  with their whole length reserved up front; never preempted.
* `sglang` (SGLang 0.3's scheduler; llmsim.serving.policies.sglang): prompt batches of their own, chunked at the
  budget, admitted while the cache can reserve each new request's whole output and new_token_ratio of the
  running ones'; decodes retracted to the back of the queue when the cache runs out.
`continuous` and `chunked-prefill` follow vllm/v1/core/sched/scheduler.py, `Scheduler.schedule`: running requests in
order, each its pending tokens (capped by the chunk and the budget); when the KV cache cannot give one its blocks, the
most recently admitted running request is preempted (blocks freed, recomputed later from its prompt and
the tokens it generated, put back at the head of the queue), until it fits or the request itself was the
one preempted; waiting requests only when nothing was preempted in this iteration, first come first
served, stopping at the first that does not fit.

Plugins add policies through the `llmsim_serving_schedulers` hook (llmsim.hookspecs): a subclass of
`Scheduler` (llmsim.serving.scheduling, re-exported here) with a `kind` name, usable as `serving.scheduler.kind`.
"""

from __future__ import annotations

from typing import ClassVar

from llmsim.costmodel.iteration import Mix
from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.policies.sglang import SglangScheduler
from llmsim.serving.policies.tgi import TgiScheduler
from llmsim.serving.policies.vllm_v0 import PrefillFirstScheduler
from llmsim.costmodel.window import window_pairs
from llmsim.serving.scheduling import Iteration, Scheduler, mix_of
from llmsim.serving.spec import SchedulerSpec

__all__ = ["BUILTIN", "ChunkedPrefillScheduler", "ContinuousScheduler", "Iteration", "PrefillFirstScheduler",
           "Scheduler", "SglangScheduler", "StaticScheduler", "TgiScheduler", "mix_of"]


class IterationLevelScheduler(Scheduler):
    """vLLM v1's scheduling loop (module docstring); `chunked` decides whether a prompt may be split."""

    chunked: ClassVar[bool] = False

    def schedule(self, now: float) -> Iteration | None:
        budget = self.spec.max_batched_tokens
        chunk = self.spec.chunk if self.chunked else budget
        kv, running = self.kv, self.running
        block = kv.block_tokens
        plain = kv.window is None                  # every layer full: blocks x block tokens (KVCache.blocks_for)
        drafts, lookahead = self.draft_tokens, self.lookahead
        work: list[tuple[Sequence, int]] = []
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = seq.request.input_tokens + seq.generated - seq.computed
            if n > chunk or n > budget:
                n = min(n, chunk, budget)
            need = seq.computed + n
            if drafts and n == 1 and seq.generated:
                # speculative decoding (llmsim.serving.speculative): the last token and its drafts, trimmed to the
                # budget (vLLM: num_new_tokens = min(num_tokens_with_spec - num_computed_tokens, token_budget),
                # spec tokens cut to what was scheduled); KV slots for them and the draft's lookahead ones, at most
                # the sequence's peak (K and V past its last output token are never kept)
                n = min(1 + drafts, budget)
                need = min(seq.computed + n + lookahead, seq.peak_tokens)
            # kv.grow, with its no-new-block case inline (most decode steps stay inside their last block)
            fits = ((seq.blocks * block >= need if plain else kv.blocks_for(need) <= seq.blocks)
                    or kv.grow(seq, need))
            while not fits:
                victim = running.pop()
                self.preempt(victim)
                preempted = True
                if victim is seq:
                    break
                fits = kv.grow(seq, need)
            if not fits:
                break
            work.append((seq, n))
            budget -= n
            i += 1
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.spec.max_num_seqs:
                seq = waiting[0]
                n = seq.request.input_tokens + seq.generated - seq.computed
                if not self.chunked and n > budget:
                    break
                n = min(n, chunk, budget)
                if not kv.grow(seq, seq.computed + n):
                    break
                self.admit(seq, now)
                work.append((seq, n))
                budget -= n
        return Iteration(work) if work else None


class ContinuousScheduler(IterationLevelScheduler):
    kind = "continuous"
    chunked = False


class ChunkedPrefillScheduler(IterationLevelScheduler):
    kind = "chunked-prefill"
    chunked = True


class StaticScheduler(Scheduler):
    """Request-level batches, FasterTransformer-style (module docstring)."""

    kind = "static"
    pipeline_in_flight = False      # each step fills and drains the pipeline (FasterTransformer's GPT pipeline)

    def __init__(self, spec: SchedulerSpec, kv: KVCache) -> None:
        super().__init__(spec, kv)
        self.step = 0                 # decode steps the current batch has run
        self.longest_prompt = 0

    def _form_batch(self, now: float) -> None:
        """Take waiting requests while the batch, its padded prompts and their whole lengths fit."""
        budget, kv = self.spec.max_batched_tokens, self.kv
        while self.waiting and len(self.running) < self.spec.max_num_seqs:
            seq = self.waiting[0]
            longest = max(self.longest_prompt, seq.request.input_tokens)
            if (len(self.running) + 1) * longest > budget or not kv.grow(seq, seq.peak_tokens):
                break
            self.longest_prompt = longest
            self.admit(seq, now)
        self.step = 0

    def schedule(self, now: float) -> Iteration | None:
        if not self.running:
            self._form_batch(now)
            if not self.running:
                return None
            rows = len(self.running)
            work = [(seq, seq.request.input_tokens) for seq in self.running]
            window = self.kv.window            # padded rows at the longest prompt, as a windowed layer sees them
            return Iteration(work, Mix(prefill_tokens=rows * self.longest_prompt, prefill_square=rows *
                                       self.longest_prompt ** 2, rows=rows,
                                       window_pairs=rows * window_pairs(self.longest_prompt, 0, window) if window else 0))
        self.step += 1
        rows = len(self.running)
        work = [(seq, 1) for seq in self.running if not seq.finished]
        keys = self.longest_prompt + self.step
        return Iteration(work, Mix(decode_seqs=rows, decode_keys=rows * keys, rows=rows,
                                   window_keys=rows * min(keys, self.kv.window) if self.kv.window else 0))

    def finish(self, seq: Sequence) -> None:
        """Finished rows stay in the batch as padding until its longest answer is done."""
        if all(s.finished for s in self.running):
            for s in self.running:
                self.kv.release(s)
            self.running.clear()
            self.longest_prompt = 0


BUILTIN: dict[str, type[Scheduler]] = {cls.kind: cls for cls in (StaticScheduler, ContinuousScheduler,
                                                                 ChunkedPrefillScheduler, PrefillFirstScheduler,
                                                                 TgiScheduler, SglangScheduler)}
