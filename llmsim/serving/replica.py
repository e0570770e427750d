"""One model replica as a SimPy process: its scheduler forms an iteration, the cost model prices it, the clock
advances by that much, and the iteration's tokens come out at its end.

SimPy style (llmsim.sim, SimPy's carwash.py): the `Replica` owns its scheduler and KV cache; `run` is its one
generator. A replica with nothing to do sleeps on an event that the next arrival routed to it triggers. An
engine's own host overheads (scheduling, detokenisation, HTTP) are not modelled: iterations run back to back.

Output processing overlapped with the next iteration (the scheduler spec's `async_output`: vLLM V0's
asynchronous output processor, vLLM >= 0.6.0). vllm/engine/llm_engine.py `step` appends the sampler output of
iteration N to `ctx.output_queue`; the model runner calls the engine's `async_callback` (`_process_model_outputs`:
detokenise, stop checks, build the RequestOutputs) while iteration N + 1 runs on the GPU
(vllm/worker/model_runner.py `execute_model`: after the forward pass is launched, before the sampler's result is
read). Where the tokens go from there depends on the front end. The OpenAI server's engine (vllm/engine/
multiprocessing/engine.py `MQLLMEngine`, its default front end; AsyncLLMEngine alike) registers
`process_request_outputs_callback` whenever the processor is on, and `_process_model_outputs` calls it at once
("Immediately process request outputs here"), sending iteration N's tokens to the API server from inside that
callback: right after iteration N + 1 was launched, not when it ends. The offline `LLM.generate` reads what
`step` returns, iteration N's outputs at the end of N + 1 (the queue drained at once only when no request is left
unfinished), so its wall time ends after the last iteration. Here (no host time is priced, so "after N + 1 was
launched" is "when N ended"): a token comes out at the end of the iteration that sampled it, as without the flag,
and the run's duration runs to the end of the replica's last iteration. What the flag changes is the work: V0
finds that a request is finished only when it processes its last token, so the finished request is scheduled
once more and its output of that step thrown away (`_process_model_outputs`, `finished_before`): when the replica
has nothing else to run, that wasted decode step of the finished requests is run and priced (`_wasted_step`);
when the next iteration decodes other requests, the finished ones are priced as decode rows of it (a prompt-only
iteration of prefill-first holds no running request, so none is added there). Their blocks are freed when the last
token is sampled, not a step later: the scheduler sees every token at once. Not priced: the host time between N's
end and N + 1's launch (scheduling, input preparation; for an eager prompt pass, launching the whole forward) by
which a streamed token leaves later still.

The next iteration formed while the current one runs (the scheduler spec's `overlap_schedule`: SGLang's overlap
scheduler, the default from v0.4). python/sglang/srt/managers/scheduler.py `event_loop_overlap`: each pass of its
loop receives the requests that reached the scheduler (`recv_requests`), forms the next batch
(`get_next_batch_to_run`), launches it behind the batch the GPU is running, and only then waits for that batch's
result (`process_batch_result` of the last batch). So the batch that runs after iteration N was formed when N
started, and a request arriving while N runs can join the iteration after the next one at the earliest (without
overlap, `event_loop_normal`, it joins the next). With nothing running the loop reads and launches at once. Here:
arrivals while an iteration runs are held and handed to the scheduler just after the next iteration is formed;
an idle replica takes them at once. Its tokens are not delayed (the result of N is processed as soon as N ends,
while N + 1 runs). Not modelled: that SGLang, too, learns a request is finished only when it processes its last
token, so the finished request is one more (discarded) row of the iteration formed meanwhile.

Arrivals read every N decode iterations (the scheduler spec's `recv_interval`: SGLang's --scheduler-recv-interval
N, default 1). sglang 0.5.6.post1 python/sglang/srt/managers/scheduler.py `recv_requests` asks its
SchedulerRecvSkipper (managers/scheduler_recv_skipper.py `handle`) first and returns no request unless the skipper's
counter, grown by the weight of the last batch's forward mode, reached N: 1 for a decode (or target-verify) batch
and for no batch, 1,000 for any other mode, such as the extend that computes prompt tokens (srt/environ.py
SGLANG_SCHEDULER_RECV_SKIPPER_WEIGHT_*). So while the replica decodes, a request that reached the scheduler's
socket waits until the N-th decode iteration since the last read; after a prompt pass the next read comes at once,
and an idle loop spins through its N polls without a pass (at once here). Here (`Replica._read_due`): arrivals are
held and handed to the scheduler at the read; with overlap_schedule the read follows the forming of the next
iteration and counts that iteration (the last batch launched when SGLang's loop reads), without it the read
precedes the forming and counts the iteration that just ran. LockstepReplica does not skip reads (SGLang refuses
the skipper with DP attention; the scenario's rules refuse the pair).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Generator
from typing import Any

import simpy

from llmsim.costmodel.iteration import Mix
from llmsim.serving.kvcache import Sequence
from llmsim.serving.schedulers import Scheduler, mix_of
from llmsim.serving.speculative import Speculator

# (iteration seconds, of which the devices compute) for one mix on this replica.
Pricer = Callable[[Mix], tuple[float, float]]

# Distinct mixes a pricer remembers (functools.lru_cache; ~1.5 KB each with its key: ~25 MB at most). A serving
# simulation forms the same mix again and again (every lone request's decode step at the same cache length, the
# same full batch of equal prompts), and the cost model prices one as a pure function of it (~0.2 ms each): a
# calibration fit's simulations priced each mix 3 times on average (measured, session 26).
PRICED_MIXES_KEPT = 16384


class Timeline:
    """One replica's state at the start of every iteration, in compact arrays (~40 bytes an iteration):
    when it started (simulated seconds, t = 0 at the first arrival), the sequences it runs (batch), the tokens
    it is priced for (static batching's padding included), the KV blocks in use while it runs and the requests left waiting. A 90,000-iteration run holds
    ~3.6 MB; `llmsim.serving.metrics.timeline_table` thins it when it is written."""

    __slots__ = ("time_s", "batch", "tokens", "kv_blocks_used", "waiting")

    def __init__(self) -> None:
        self.time_s = array("d")
        self.batch = array("l")
        self.tokens = array("l")
        self.kv_blocks_used = array("l")
        self.waiting = array("l")

    def __len__(self) -> int:
        return len(self.time_s)

    def add(self, now: float, batch: int, tokens: int, kv_used: int, waiting: int) -> None:
        self.time_s.append(now)
        self.batch.append(batch)
        self.tokens.append(tokens)
        self.kv_blocks_used.append(kv_used)
        self.waiting.append(waiting)


class Replica:
    """tp x pp devices serving one copy of the model behind the router."""

    def __init__(self, env: simpy.Environment, index: int, scheduler: Scheduler, price: Pricer,
                 on_finish: Callable[[Sequence], None], speculator: Speculator | None = None) -> None:
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.speculator = speculator  # speculative decoding (llmsim.serving.speculative), None without
        if speculator is not None:
            scheduler.draft_tokens, scheduler.lookahead = speculator.k, speculator.lookahead
        self.price = price
        self.on_finish = on_finish
        self.outstanding = 0          # routed here and not finished (the router's load figure)
        self.iterations = 0
        self.busy_s = 0.0             # time in iterations
        self.compute_s = 0.0          # of which the devices compute (energy)
        self.max_batch = 0            # most sequences in one iteration
        self.last_end_s = 0.0         # when its last iteration ended (a wasted step may end after the last token)
        self.timeline = Timeline()    # batch, tokens, KV use and queue at each iteration's start
        self._wakeup: simpy.Event | None = None
        self._held: list[Sequence] | None = None   # overlap_schedule / recv_interval: arrivals not yet read
        self.recv_interval = scheduler.recv_interval
        self._since_read = 0          # recv_interval: SGLang's recv-skipper counter (decode iterations since a read)

    def arrive(self, seq: Sequence) -> None:
        """A request routed here: queue it (or, with overlap_schedule while an iteration runs, hold it until
        the next iteration is formed) and wake the replica if it sleeps."""
        self.outstanding += 1
        if self._held is not None:
            self._held.append(seq)
        else:
            self.scheduler.add(seq)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    def _read_due(self, last: Mix | None) -> bool:
        """Whether the engine reads its arrivals at this pass of its loop, the last iteration launched being `last`
        (None: nothing runs). SGLang's SchedulerRecvSkipper.handle (sglang 0.5.6.post1, python/sglang/srt/managers/
        scheduler_recv_skipper.py, called first in scheduler.py `recv_requests`): a counter grows by the weight of
        the last batch's forward mode, and the socket is read (and the counter zeroed) once it reaches
        --scheduler-recv-interval; the weights (srt/environ.py) are 1 for DECODE, TARGET_VERIFY and no batch,
        1,000 for any other mode (an EXTEND: a pass computing prompt tokens). So a decode pass counts one, a
        prompt pass forces the next read, and an idle loop, which spins without a pass, reads within
        recv_interval spins: taken as at once. recv_interval 1: every pass reads."""
        if self.recv_interval <= 1 or last is None or last.prefill_tokens > 0:
            self._since_read = 0
            return True
        self._since_read += 1
        if self._since_read >= self.recv_interval:
            self._since_read = 0
            return True
        return False

    def _read_held(self) -> bool:
        """Hand the arrivals not yet read to the scheduler; whether there were any."""
        held, self._held = self._held, []
        for seq in held or ():
            self.scheduler.add(seq)
        return bool(held)

    def run(self) -> Generator[simpy.Event, Any, None]:
        env, scheduler = self.env, self.scheduler
        wasteful = scheduler.async_output       # finished requests are decoded once more (module docstring)
        overlap = scheduler.overlap_schedule    # arrivals join one iteration later (module docstring)
        skipping = self.recv_interval > 1       # arrivals read every recv_interval decode iterations (docstring)
        finished: list[Sequence] = []           # requests that sampled their last token in the last iteration
        last: Mix | None = None                 # the iteration that just ran (None after a sleep)
        while True:
            if skipping and not overlap:        # the loop reads, when due, before it forms the next iteration
                if self._read_due(last):
                    self._read_held()
                elif self._held is None:
                    self._held = []
            iteration = scheduler.schedule(env.now)
            if overlap:                         # formed, as SGLang's loop does, before the last arrivals are read
                formed = None if iteration is None else iteration.mix or mix_of(iteration.work, scheduler.kv.window)
                if not skipping or self._read_due(formed):
                    if self._read_held() and iteration is None:   # nothing ran: read and scheduled at once
                        continue
            if iteration is None and skipping and self._held:      # nothing runs: the idle loop reads at once
                self._since_read = 0
                self._read_held()
                continue
            if iteration is None:
                if finished:                    # nothing else to run: V0's wasted step of the finished requests
                    yield from self._wasted_step([(seq, 1) for seq in finished])
                    finished = []
                    continue
                self._held = None               # asleep: an arrival is read at once
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                last = None
                continue
            mix = iteration.mix or mix_of(iteration.work, scheduler.kv.window)
            last = mix
            if finished and mix.decode_seqs:    # V0 decodes its finished requests once more (module docstring)
                mix = mix + mix_of([(seq, 1) for seq in finished], scheduler.kv.window)
            finished = []
            self.timeline.add(env.now, len(iteration.work), round(mix.tokens), scheduler.kv.used, len(scheduler.waiting))
            seconds, compute = self.price(mix)
            yield env.timeout(seconds)
            self.iterations += 1
            self.busy_s += seconds
            self.compute_s += compute
            self.last_end_s = env.now
            if len(iteration.work) > self.max_batch:
                self.max_batch = len(iteration.work)
            for seq in advance(iteration.work, env.now, scheduler, self.on_finish, self.speculator):
                self.outstanding -= 1
                if wasteful:
                    finished.append(seq)

    @property
    def preemptions(self) -> int:
        return self.scheduler.preemptions

    @property
    def kv_peak_used(self) -> int:
        return self.scheduler.kv.peak_used

    @property
    def kinds(self) -> set[str]:
        return {type(self.scheduler).__name__}

    def _wasted_step(self, finished: list[tuple[Sequence, int]]) -> Generator[simpy.Event, Any, None]:
        """The decode step V0 runs for requests whose last token it has not processed yet (their stop is found
        while this step runs): priced and timed like any iteration, its tokens thrown away."""
        mix = mix_of(finished, self.scheduler.kv.window)
        self.timeline.add(self.env.now, len(finished), round(mix.tokens), self.scheduler.kv.used,
                          len(self.scheduler.waiting))
        seconds, compute = self.price(mix)
        yield self.env.timeout(seconds)
        self.iterations += 1
        self.busy_s += seconds
        self.compute_s += compute
        self.last_end_s = self.env.now


def advance(work: list[tuple[Sequence, int]], now: float, scheduler: Scheduler,
            on_finish: Callable[[Sequence], None], speculator: Speculator | None = None) -> list[Sequence]:
    """Credit an iteration's work that ended at `now`: each sequence's computed tokens; one that computed every
    known token samples its next one (at `now`); one that sampled its last is finished (scheduler.finish, then
    on_finish). The sequences finished, in order.

    A decoding sequence that verified m >= 1 speculative drafts (1 + m tokens computed; `speculator` given) keeps
    the a drafts the speculator accepts and the target's own next token: a + 1 tokens out at `now` (at most its
    output's remainder), its cache holding the last token and the accepted drafts (llmsim.serving.speculative)."""
    done: list[Sequence] = []
    for seq, n in work:
        request = seq.request
        if (n > 1 and speculator is not None and seq.generated
                and seq.computed == request.input_tokens + seq.generated - 1):   # a verify step
            accepted = speculator.accept(n - 1)
            out = min(accepted + 1, request.output_tokens - seq.generated)
            speculator.record(out)
            seq.computed += 1 + accepted
            seq.generated += out
            seq.token_times.extend([now] * out)
            if seq.generated >= request.output_tokens:
                seq.finished = True
                scheduler.finish(seq)
                on_finish(seq)
                done.append(seq)
            continue
        seq.computed += n
        if seq.computed >= request.input_tokens + seq.generated:   # every known token computed: sample
            seq.generated += 1
            seq.token_times.append(now)
            if seq.generated >= request.output_tokens:
                seq.finished = True
                scheduler.finish(seq)
                on_finish(seq)
                done.append(seq)
    return done


# (iteration seconds, of which the devices compute) for the attention-DP ranks' mixes of one lockstep iteration.
LockstepPricer = Callable[[tuple[Mix, ...]], tuple[float, float]]


class _Rank:
    """One attention-DP rank of a lockstep replica: its own scheduler (queue, running batch, KV cache)."""

    def __init__(self, index: int, scheduler: Scheduler) -> None:
        self.index = index
        self.scheduler = scheduler
        self.outstanding = 0          # requests assigned here and not finished (the assignment's load figure)
        self.held: list[Sequence] = []


class LockstepReplica:
    """A replica whose tp devices run attention as D data-parallel ranks (Strategy.attention_dp): each rank has its
    own scheduler and KV cache and forms its own batch; the ranks run every iteration together, since every MoE
    layer exchanges all ranks' tokens (costmodel.iteration.attention_dp_times), so an iteration starts when the
    replica is free and ends for every rank when the slowest one's is done; a rank with nothing to run joins it
    idle (SGLang runs an IDLE forward on such a rank, scheduler.py `prepare_mlp_sync_batch`; TensorRT-LLM pads
    it with a dummy request). A request routed to the replica goes to one rank by the replica's `policy`
    (serving.router): round-robin (SGLang's DataParallelController default, `load_balance_method` round_robin) or
    least-outstanding (TensorRT-LLM's attention-DP balancing of new requests over the ranks' active ones). The
    replica's own overlap (overlap_schedule) and wasted finished step (async_output) follow Replica's rules, per
    rank. The same interface as Replica for the router and the simulation."""

    def __init__(self, env: simpy.Environment, index: int, schedulers: list[Scheduler], price: LockstepPricer,
                 on_finish: Callable[[Sequence], None], policy: str = "round-robin",
                 speculator: Speculator | None = None) -> None:
        from llmsim.serving.router import Router   # the one rule for picking among equals
        self.env = env
        self.index = index
        self.ranks = [_Rank(i, sched) for i, sched in enumerate(schedulers)]
        self.speculator = speculator  # one stream for the replica's ranks, drawn in rank order
        if speculator is not None:
            for sched in schedulers:
                sched.draft_tokens, sched.lookahead = speculator.k, speculator.lookahead
        self.assign = Router(policy, self.ranks)
        self.price = price
        self.on_finish = on_finish
        self.outstanding = 0
        self.iterations = 0
        self.busy_s = 0.0
        self.compute_s = 0.0
        self.max_batch = 0            # most sequences in one iteration, all ranks
        self.last_end_s = 0.0
        self.timeline = Timeline()    # the ranks' sums at each iteration's start
        self._wakeup: simpy.Event | None = None
        self._holding = False         # overlap_schedule: arrivals held until the next iteration is formed
        self._rank_of: dict[int, _Rank] = {}
        self.finishing_rank = 0       # the rank of the sequence on_finish is handed (_done)

    @property
    def preemptions(self) -> int:
        return sum(r.scheduler.preemptions for r in self.ranks)

    @property
    def kv_peak_used(self) -> int:
        """The fullest rank's peak KV blocks (each rank has the replica's kv_blocks)."""
        return max(r.scheduler.kv.peak_used for r in self.ranks)

    @property
    def kinds(self) -> set[str]:
        return {type(r.scheduler).__name__ for r in self.ranks}

    def arrive(self, seq: Sequence) -> None:
        """A request routed here: assign it to a rank (policy), queue it there (or hold it, overlap_schedule, while
        an iteration runs) and wake the replica if it sleeps."""
        self.outstanding += 1
        rank = self.assign.pick()
        rank.outstanding += 1
        self._rank_of[seq.request.id] = rank
        if self._holding:
            rank.held.append(seq)
        else:
            rank.scheduler.add(seq)
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    def _done(self, seq: Sequence) -> None:
        self.outstanding -= 1
        rank = self._rank_of.pop(seq.request.id)
        rank.outstanding -= 1
        # the rank `seq` ran on, read by on_finish while it runs (a disaggregated prefill instance sends the
        # prompt's KV cache from that rank's devices: serving.disaggregation)
        self.finishing_rank = rank.index
        self.on_finish(seq)

    def run(self) -> Generator[simpy.Event, Any, None]:
        env, ranks = self.env, self.ranks
        first = ranks[0].scheduler
        wasteful, overlap = first.async_output, first.overlap_schedule
        finished: list[list[Sequence]] = [[] for _ in ranks]
        while True:
            iterations = [r.scheduler.schedule(env.now) for r in ranks]
            if overlap:
                added = False
                if self._holding:
                    for r in ranks:
                        held, r.held = r.held, []
                        for seq in held:
                            r.scheduler.add(seq)
                        added = added or bool(held)
                self._holding = True
                if added and all(it is None for it in iterations):
                    continue
            if all(it is None for it in iterations):
                if any(finished):             # V0's wasted step of the finished requests, every rank at once
                    mixes = tuple(mix_of([(seq, 1) for seq in f], r.scheduler.kv.window) if f else Mix()
                                  for f, r in zip(finished, ranks))
                    finished = [[] for _ in ranks]
                    yield from self._step(mixes, sum(int(m.decode_seqs) for m in mixes))
                    continue
                self._holding = False
                self._wakeup = env.event()
                yield self._wakeup
                self._wakeup = None
                continue
            mixes_list: list[Mix] = []
            for it, f, r in zip(iterations, finished, ranks):
                if it is None:
                    mixes_list.append(Mix())
                    continue
                mix = it.mix or mix_of(it.work, r.scheduler.kv.window)
                if f and mix.decode_seqs:
                    mix = mix + mix_of([(seq, 1) for seq in f], r.scheduler.kv.window)
                mixes_list.append(mix)
            finished = [[] for _ in ranks]
            batch = sum(len(it.work) for it in iterations if it is not None)
            yield from self._step(tuple(mixes_list), batch)
            self.max_batch = max(self.max_batch, batch)
            now = env.now
            for i, (it, r) in enumerate(zip(iterations, ranks)):
                if it is None:
                    continue
                done = advance(it.work, now, r.scheduler, self._done, self.speculator)
                if wasteful:
                    finished[i].extend(done)

    def _step(self, mixes: tuple[Mix, ...], batch: int) -> Generator[simpy.Event, Any, None]:
        """One lockstep iteration of the ranks' mixes: recorded, priced, timed."""
        ranks = self.ranks
        self.timeline.add(self.env.now, batch, round(sum(m.tokens for m in mixes)),
                          sum(r.scheduler.kv.used for r in ranks), sum(len(r.scheduler.waiting) for r in ranks))
        seconds, compute = self.price(mixes)
        yield self.env.timeout(seconds)
        self.iterations += 1
        self.busy_s += seconds
        self.compute_s += compute
        self.last_end_s = self.env.now
