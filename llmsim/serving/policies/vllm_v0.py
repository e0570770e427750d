"""`prefill-first`: vLLM V0's default scheduler (chunked prefill off), the engine of vLLM's mid-2024 benchmarks.

Source: vllm-project/vllm, vllm/core/scheduler.py, `Scheduler._schedule_default` with `_schedule_prefills`,
`_schedule_running`, `_passed_delay` and `_preempt` (the same logic from v0.4.1, April 2024, to the last V0
releases; read here at commit 0054e1fa), and vllm/core/block_manager_v1.py, `BlockSpaceManagerV1` (V0's default
block manager until v0.6.2: `can_allocate`, `can_append_slots`, `watermark=0.01`). Each call of `schedule`:

1. **Prompts first.** Unless the delay rule holds them back (`_passed_delay`, below), waiting requests are
   taken first come first served, each with all its known tokens (a preempted one recomputes its prompt and
   the tokens it generated), while three things hold: the KV cache can give the request the blocks of those
   tokens and still keep the watermark free (`can_allocate`: free - needed >= watermark_blocks, with
   watermark_blocks = int(0.01 x blocks), else LATER: stop), the token budget max_batched_tokens is not
   exceeded (V0's max_num_batched_tokens), and the running plus the new requests stay within max_num_seqs.
   It stops at the first that does not fit.
2. **If any prompt was taken, the iteration holds those prompts only**: "Don't schedule decodes if prefills
   are scheduled" (`_schedule_default`). Every running sequence waits a whole prefill: its inter-token gap
   holds that iteration.
3. **Otherwise every running request decodes one token**, in admission order. V1's block manager lets a
   request continue only while at least one block is free (`can_append_slots`: "Simple heuristic: If there is
   at least one free block for each sequence, we can append"; the block is taken only when the token crosses
   a block edge); when none is free the most recently admitted running request is preempted, by recompute
   (`_preempt`: V0's default for a request of one sequence; swapping only for several sequences, e.g. beam
   search), until one is free or the request itself was the one preempted. Preempted requests go back to
   the head of the queue, in their admission order.

`delay_factor` (V0's SchedulerConfig.delay_factor, default 0): `_passed_delay(now)` lets prompts be scheduled
only when the oldest waiting request has waited longer than delay_factor x the last prompt iteration's
latency (the time from the call that scheduled prompts to the next call), or when nothing runs. It is
evaluated at every call (it records the call's time), as V0 does.

Departures from the engine: V0 ignores a request whose prompt could never leave the watermark free
(`AllocStatus.NEVER`: finished with no output); the simulation rejects only requests longer than the cache
(llmsim.serving.simulate) and serves such a request alone once the cache is empty. V0's decode rule wants one
free block per running sequence even when its next token fits the blocks it holds; a lone request whose length
fills the whole cache would then preempt itself and recompute forever (vLLM refuses at start-up a max_model_len
the cache cannot hold, which makes this rare there): here a lone sequence whose token fits its last block goes on. The CPU time of the
scheduler itself, detokenisation and the engine's loop between iterations are not modelled (as for every
policy: llmsim.serving.replica).
"""

from __future__ import annotations

from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.scheduling import Iteration, Scheduler
from llmsim.serving.spec import DEFAULT_DELAY_FACTOR, SchedulerSpec

# BlockSpaceManagerV1(watermark=0.01) (vllm/core/block_manager_v1.py; the scheduler builds it without passing
# one): prompts are admitted only while this share of the blocks stays free, "to avoid frequent cache eviction".
WATERMARK = 0.01


class PrefillFirstScheduler(Scheduler):
    """vLLM V0's `_schedule_default` (module docstring): prompt iterations of their own, decodes otherwise."""

    kind = "prefill-first"

    def __init__(self, spec: SchedulerSpec, kv: KVCache) -> None:
        super().__init__(spec, kv)
        self.watermark_blocks = int(WATERMARK * kv.blocks)
        self.delay_factor = spec.delay_factor if spec.delay_factor is not None else DEFAULT_DELAY_FACTOR
        self.prev_time = 0.0              # time of the previous call (seconds)
        self.prev_prompt = False          # whether the previous call scheduled prompts
        self.last_prompt_latency = 0.0    # seconds from a call that scheduled prompts to the next call

    def passed_delay(self, now: float) -> bool:
        """V0's `_passed_delay`: whether waiting prompts may be scheduled now (records this call's time)."""
        if self.prev_prompt:
            self.last_prompt_latency = now - self.prev_time
        self.prev_time, self.prev_prompt = now, False
        if self.delay_factor > 0 and self.waiting:
            earliest = min(seq.request.arrival_s for seq in self.waiting)
            return now - earliest > self.delay_factor * self.last_prompt_latency or not self.running
        return True

    def schedule(self, now: float) -> Iteration | None:
        work = self._prompts(now)
        if not work:
            work = self._decodes()
        return Iteration(work) if work else None

    def _prompts(self, now: float) -> list[tuple[Sequence, int]]:
        """`_schedule_prefills` without chunking: whole prompts while the cache, the budget and max_num_seqs allow."""
        if not self.passed_delay(now):
            return []
        kv, waiting = self.kv, self.waiting
        budget, seqs = self.spec.max_batched_tokens, len(self.running)
        work: list[tuple[Sequence, int]] = []
        while waiting:
            seq = waiting[0]
            n = seq.pending                       # the prompt, or a preempted request's prompt + generated tokens
            need = kv.blocks_for(n) - seq.blocks  # seq.blocks is 0 in the queue
            if kv.free - need < self.watermark_blocks:
                never = kv.blocks - need < self.watermark_blocks
                # AllocStatus.NEVER (V0 would drop it): served alone once everything is free (module docstring)
                if not (never and kv.free == kv.blocks and not self.running and not work):
                    break
            if n > budget or seqs + 1 > self.spec.max_num_seqs:
                break
            kv.grow(seq, seq.computed + n)
            self.admit(seq, now)
            work.append((seq, n))
            budget -= n
            seqs += 1
        if work:
            self.prev_prompt = True
        return work

    def _decodes(self) -> list[tuple[Sequence, int]]:
        """`_schedule_running`: one token for every running request, preempting from the back when no block is free."""
        kv, running = self.kv, self.running
        work: list[tuple[Sequence, int]] = []
        i = 0
        while i < len(running):
            seq = running[i]
            preempted_itself = False
            while kv.free < 1:                    # can_append_slots: one free block per sequence
                if len(running) == 1 and kv.blocks_for(seq.computed + 1) <= seq.blocks:
                    break  # alone, and its token fits its last block: served on (module docstring, departures)
                victim = running.pop()
                self.preempt(victim)
                if victim is seq:
                    preempted_itself = True
                    break
            if preempted_itself:
                break
            kv.grow(seq, seq.computed + 1)        # a block only when the token crosses a block edge
            work.append((seq, 1))
            i += 1
        return work
