"""`sglang`: SGLang 0.3's scheduler (radix cache off): prompt batches of their own, admitted against the whole
output each request asks for, and decodes retracted when the cache runs out.

Source: the sglang 0.3.0 wheel on PyPI (September 2024): python/sglang/srt/managers/tp_worker.py
(`ModelTpServer.forward_step`, `get_new_prefill_batch`, `forward_decode_batch`), managers/policy_scheduler.py
(`PrefillAdder`, `PolicyScheduler`), managers/schedule_batch.py (`check_decode_mem`, `retract_decode`) and
python/sglang/global_config.py. Each step of the engine:

1. **A prompt batch, if one can be formed** (`get_new_prefill_batch`), run in a forward pass of its own (mixed
   chunks are off by default: `enable_mixed_chunk`), the decodes waiting. None while the running requests
   reach `max_running_requests` (here max_num_seqs). A prompt split by the previous batch (the "inflight"
   request) continues first, with no admission check (`add_inflight_req`). Then the waiting requests, first come
   first served (`lpm`, the default policy, falls back to `fcfs` with the radix cache disabled), each while
   * its prompt (a retracted request's prompt and generated tokens) plus its whole max_new_tokens (clipped at
     `CLIP_MAX_NEW_TOKENS` = 4096) is below `rem_total_tokens`: the free KV tokens less, for every running
     request, `new_token_ratio` x its remaining max_new_tokens (clipped), less what this batch took already;
   * its prompt fits the chunk budget (`chunked_prefill_size`, here max_batched_tokens); the first that does not
     is split at what is left of it and becomes the inflight request (`rem_chunk_tokens`; max_prefill_tokens,
     16,384 by default, never binds before an 8,192-token chunk);
   and the batch stops at the first that fails, or once the budget or the running cap is reached.
2. **Otherwise one decode step of every running request** (`num_continue_decode_steps` = 10 steps a call, but
   a streamed batch breaks after each). Before it, `check_decode_mem`: a token slot for every request; if the
   cache has fewer, `retract_decode` frees requests (sorted by generated tokens, then by shorter prompt, the
   last of that order first: the fewest generated tokens, and of those the longest prompt) until the free
   slots reach `retract_decode_steps` (20) x the requests left (one is always kept); a retracted request forgets
   its cache and goes to the **end** of the queue (recompute, as vLLM's preemption, but queued last), and
   new_token_ratio becomes min(1, (generated + 20 x requests) / their max_new_tokens) over the requests left.
   Without retraction the ratio decays by `new_token_ratio_decay` (0.001) a step, to
   `base_min_new_token_ratio` x `schedule_conservativeness` (0.1 x 1.0).
3. **Idle** (no prompt batch, nothing running): new_token_ratio is reset to `init_new_token_ratio` (0.7). The
   server loop steps while idle, and bench_serving sends a warm-up request before its run, so a benchmark starts
   at 0.7: so does this policy.

Mapping to llmsim: a request's max_new_tokens is its output tokens (the benchmarks here ask for exactly the
dataset's answer length with ignore_eos); SGLang's pages are one token (`kv_block_tokens: 1`); with larger
blocks the free slots are counted as free blocks x block tokens. Departure: a request whose prompt and output
exceed what an empty cache could ever reserve would wait forever in SGLang 0.3; here it is admitted alone once
nothing runs (as the `tgi` policy does), so that a simulation always ends. Not modelled: the radix cache (the runs here
disable it), regex jump-forward (no constrained decoding), the engine's CPU time between steps (as for every
policy: llmsim.serving.replica).
"""

from __future__ import annotations

from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.scheduling import Iteration, Scheduler
from llmsim.serving.spec import SchedulerSpec

# python/sglang/global_config.py (0.3.0) and srt/managers/policy_scheduler.py
INIT_NEW_TOKEN_RATIO = 0.7        # init_new_token_ratio: set while the engine is idle
MIN_NEW_TOKEN_RATIO = 0.1         # base_min_new_token_ratio x schedule_conservativeness (default 1.0)
NEW_TOKEN_RATIO_DECAY = 0.001     # new_token_ratio_decay, per decode step without retraction
RETRACT_DECODE_STEPS = 20         # retract_decode_steps: free slots kept per running request after a retraction
CLIP_MAX_NEW_TOKENS = 4096        # CLIP_MAX_NEW_TOKENS (SGLANG_CLIP_MAX_NEW_TOKENS): the estimate's clip


class SglangScheduler(Scheduler):
    """SGLang 0.3's `forward_step` (module docstring): prompt batches admitted against the requests' whole
    outputs, otherwise decodes, retracting from the back when the cache runs out."""

    kind = "sglang"

    def __init__(self, spec: SchedulerSpec, kv: KVCache) -> None:
        super().__init__(spec, kv)
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.inflight: Sequence | None = None   # a prompt split by the last batch, continued first

    def schedule(self, now: float) -> Iteration | None:
        work = self._prompts(now)
        if not work:
            work = self._decodes()
        if not work and not self.running:
            self.new_token_ratio = INIT_NEW_TOKEN_RATIO   # idle (module docstring, 3)
        return Iteration(work) if work else None

    def _free_tokens(self) -> int:
        return self.kv.free * self.kv.block_tokens

    def _prompts(self, now: float) -> list[tuple[Sequence, int]]:
        """`get_new_prefill_batch` with PrefillAdder: the inflight prompt, then waiting requests while they fit."""
        decoding = len(self.running) - (self.inflight is not None)
        if decoding >= self.spec.max_num_seqs:
            return []
        kv = self.kv
        rem_total = self._free_tokens() - self.new_token_ratio * sum(
            min(seq.request.output_tokens - seq.generated, CLIP_MAX_NEW_TOKENS)
            for seq in self.running if seq is not self.inflight)
        rem_chunk = self.spec.max_batched_tokens
        work: list[tuple[Sequence, int]] = []
        if self.inflight is not None:                       # add_inflight_req: no admission check
            seq = self.inflight
            n = min(seq.pending, rem_chunk)
            if not kv.grow(seq, seq.computed + n):
                return []
            work.append((seq, n))
            done = n == seq.pending
            rem_total -= n + (min(seq.request.output_tokens, CLIP_MAX_NEW_TOKENS) if done else 0)
            rem_chunk -= n
            self.inflight = None if done else seq
        waiting = self.waiting
        while waiting and self.inflight is None and rem_total > 0 and rem_chunk > 0:
            if decoding + len(work) >= self.spec.max_num_seqs:
                break
            seq = waiting[0]
            n = seq.pending                                  # a retracted request: prompt + generated tokens
            if n + min(seq.request.output_tokens, CLIP_MAX_NEW_TOKENS) >= rem_total:
                alone = not self.running and not work        # would never fit: served alone (docstring)
                if not (alone and n <= rem_chunk and n <= self._free_tokens()):
                    break
            chunked = n > rem_chunk
            if chunked:
                n = rem_chunk                                # split: the rest continues in the next batch
            if not kv.grow(seq, seq.computed + n):
                break
            self.admit(seq, now)
            work.append((seq, n))
            rem_total -= n + (0 if chunked else min(seq.request.output_tokens, CLIP_MAX_NEW_TOKENS))
            rem_chunk -= n
            if chunked:
                self.inflight = seq
        return work

    def _decodes(self) -> list[tuple[Sequence, int]]:
        """`forward_decode_batch`: `check_decode_mem`, `retract_decode` when it fails, one token for each."""
        running = [seq for seq in self.running if seq is not self.inflight]
        if not running:
            return []
        if self._free_tokens() < len(running):
            self._retract(running)
            running = [seq for seq in self.running if seq is not self.inflight]
        else:
            self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY, MIN_NEW_TOKEN_RATIO)
        work: list[tuple[Sequence, int]] = []
        for seq in running:
            if not self.kv.grow(seq, seq.computed + 1):
                continue                                    # only with blocks > 1 token (module docstring)
            work.append((seq, 1))
        return work

    def _retract(self, running: list[Sequence]) -> None:
        """`retract_decode`: free requests from the back of (generated, -prompt) descending until the free slots
        reach RETRACT_DECODE_STEPS per request left; the queue gets them at its end; the ratio is re-estimated."""
        order = sorted(running, key=lambda s: (s.generated, -s.request.input_tokens), reverse=True)
        while self._free_tokens() < len(order) * RETRACT_DECODE_STEPS and len(order) > 1:
            victim = order.pop()
            self.running.remove(victim)
            self.kv.release(victim)
            victim.computed = 0
            victim.preemptions += 1
            self.preemptions += 1
            self.waiting.append(victim)
        decoded = sum(s.generated for s in order)
        asked = sum(s.request.output_tokens for s in order)
        self.new_token_ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * len(order)) / asked)
