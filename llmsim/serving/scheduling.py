"""What every serving scheduling policy shares: the `Iteration` it returns, the cost model's view of one
(`mix_of`), and the `Scheduler` base class (queue, running set, KV cache, preemption by recompute). The policies
live in llmsim.serving.schedulers (the generic ones) and llmsim.serving.policies (the engines' own); plugins
subclass `Scheduler` too (llmsim.hookspecs, `llmsim_serving_schedulers`). Kept apart from both so that the
policies import it and llmsim.serving.schedulers imports them, without an import cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

from llmsim.costmodel.iteration import Mix
from llmsim.costmodel.window import window_pairs
from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.spec import SchedulerSpec


@dataclass
class Iteration:
    """One forward pass of a replica: each sequence in it with the tokens it computes (a prompt chunk, or
    1 for a decoding sequence; 1 + m with speculative decoding, its last token and m drafts to verify). `mix` overrides what is priced (static batching pads its rows); None = the
    plain sum of the work (`mix_of`)."""

    work: list[tuple[Sequence, int]] = field(default_factory=list)
    mix: Mix | None = None


def mix_of(work: list[tuple[Sequence, int]], window: int | None = None) -> Mix:
    """The cost model's view of an iteration: a sequence that has generated a token and computes one more is
    decoding (attending over its cache and the new token); anything else computes a prompt chunk after the
    tokens it has cached (a preempted sequence recomputes its prompt and its generated tokens that way).
    `window`: the model's sliding window (KVCache.window), whose layers see each sequence capped (Mix.window_*).
    A decoding sequence computing 1 + m tokens verifies m speculative drafts (Mix.verify_tokens, verify_pairs)."""
    pre = pairs = square = prefix = dec = keys = 0
    w_pairs = w_prefix = w_keys = 0
    v_tokens = v_pairs = 0
    longest = (0, 0)                            # (c, p) of the longest prompt chunk
    for seq, n in work:
        done = seq.computed
        if seq.generated and done == seq.request.input_tokens + seq.generated - 1:
            dec += 1
            keys += done + 1
            if window is not None:
                w_keys += min(done + 1, window)
            if n > 1:                           # m = n - 1 drafts: draft j attends done + 1 + j keys
                m = n - 1
                v_tokens += m
                v_pairs += m * (done + 1) + m * (m + 1) // 2
        else:
            pre += n
            pairs += n * done
            square += n * n
            prefix += done
            longest = max(longest, (n, done))
            if window is not None:
                w_pairs += window_pairs(n, done, window)
                w_prefix += min(done, window - 1)
    return Mix(prefill_tokens=pre, prefill_pairs=pairs, prefill_square=square, prefix_tokens=prefix,
               decode_seqs=dec, decode_keys=keys, rows=len(work), longest_chunk=longest[0], longest_prefix=longest[1],
               window_pairs=w_pairs, window_prefix=w_prefix, window_keys=w_keys, verify_tokens=v_tokens,
               verify_pairs=v_pairs)


class Scheduler(ABC):
    """Forms the iterations of one replica. Subclasses set `kind` and implement `schedule`.

    State a subclass works with: `waiting` (a deque, first come first served; `add` appends), `running`
    (a list in admission order), `kv` (the replica's KVCache: `grow(seq, tokens)` gives a sequence the
    blocks for that many cached tokens or returns False, `release(seq)` frees them) and `spec` (the
    scenario's serving.scheduler block). `preempt(seq)` is preemption by recompute, counted.
    """

    kind: ClassVar[str]
    # With pp > 1, whether the engine keeps pp batches in flight so that its pipeline never drains between
    # iterations: vLLM V0 runs one scheduler per virtual engine (`pipeline_parallel_size` of them, each stepped
    # as its own task: vllm/engine/async_llm_engine.py `run_engine_loop`), V1 a batch queue of
    # `max_concurrent_batches` = pp (vllm/v1/engine/core.py `step_with_batch_queue`), SGLang and Sarathi-Serve
    # their own micro-batch loops. A FasterTransformer-style static batch runs every step through the whole
    # pipeline and waits for it (StaticScheduler: False). costmodel.iteration.iteration_times prices either.
    pipeline_in_flight: ClassVar[bool] = True

    def __init__(self, spec: SchedulerSpec, kv: KVCache) -> None:
        self.spec = spec
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        # speculative decoding (serving.speculative; llmsim.serving.speculative): drafts a decoding sequence verifies
        # per iteration and the KV slots reserved beyond them; 0 without speculation. Read by the policies that
        # run it (SPECULATIVE_SCHEDULERS).
        self.draft_tokens = 0
        self.lookahead = 0

    def add(self, seq: Sequence) -> None:
        """A request routed to this replica arrives."""
        self.waiting.append(seq)

    @property
    def async_output(self) -> bool:
        """Whether the engine processes an iteration's outputs while the next one runs, so that it decodes a
        finished request once more before it knows it finished (serving.scheduler.async_output;
        llmsim.serving.replica). A plugin's policy may override it."""
        return bool(getattr(self.spec, "async_output", False))

    @property
    def overlap_schedule(self) -> bool:
        """Whether the engine forms each iteration while the previous one runs, so that a request arriving
        during an iteration can join only the one after the next (serving.scheduler.overlap_schedule;
        llmsim.serving.replica). A plugin's policy may override it."""
        return bool(getattr(self.spec, "overlap_schedule", False))

    @property
    def recv_interval(self) -> int:
        """Every how many decode iterations the engine reads newly arrived requests (serving.scheduler.recv_interval,
        SGLang's --scheduler-recv-interval; llmsim.serving.replica): 1 = before every iteration. A plugin's policy
        may override it."""
        return max(1, int(getattr(self.spec, "recv_interval", 1) or 1))

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        return not self.waiting and not self.running

    @abstractmethod
    def schedule(self, now: float) -> Iteration | None:
        """The next iteration to run at simulated time `now` (seconds), or None when nothing can run."""

    def admit(self, seq: Sequence, now: float) -> None:
        """Move the head of the queue into the running set (its first scheduling time is kept)."""
        self.waiting.popleft()
        self.running.append(seq)
        if seq.scheduled_s is None:
            seq.scheduled_s = now

    def preempt(self, seq: Sequence) -> None:
        """Preemption by recompute: free its blocks, forget its cache, back to the head of the queue."""
        self.kv.release(seq)
        seq.computed = 0
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """`seq` generated its last token: it leaves and frees its blocks."""
        self.running.remove(seq)
        self.kv.release(seq)
