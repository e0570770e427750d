"""A serving run on the SimPy engine: requests arrive, the router sends each to a replica, every replica
runs its own process (llmsim.serving.replica), and the run ends when the last request is done.

Requests the engine could never serve are rejected on arrival and counted, as vLLM's OpenAI server
answers them with an error instead of queueing them (vllm/entrypoints/openai/serving_engine.py: a prompt
plus max_tokens longer than max_model_len), and as vLLM refuses a context that its KV cache cannot hold
(at start-up; here per request, since lengths vary): `context` (prompt + output longer than the model's
context) and `kv-cache` (more blocks than a replica has).

A closed loop (llmsim.serving.requests.ClosedLoop) replaces the arrival process by its clients: one SimPy process
per client takes the next request of the list, sends it at once (its arrival_s becomes the send time), waits for
its last token as the client sees it (the finish plus request_overhead_s), thinks think_s seconds and takes the
next; a rejected request costs no time. Replicas and router are the same as in an open loop.

Which iteration a client's next request joins (think_s 0): the finish is signalled from inside the replica's process
(an event the client waits on), and the replica forms its next iteration in the same step, before SimPy resumes the
client; so the request, sent at the very instant the iteration ended, is scheduled in the iteration after the one
formed then, never in that one. That is a real engine's order: vLLM's engine core (vllm/v1/engine/core.py
`run_busy_loop`: read the input queue, then `step`: schedule, execute, `update_from_output`) schedules its next
iteration right after queueing an iteration's outputs, while the last token still has to reach the client through
the API server and the new request has to come back through it. With the scheduler's `overlap_schedule` (vLLM V1's
async scheduling, SGLang's overlap loop) that next iteration was formed even earlier, when the ending one started,
and the request joins one iteration later still (llmsim.serving.replica). tests/serving/test_closed_loop.py pins both.

Deterministic: the same request list, scheduler, prices and seed give the same outcome.
"""

from __future__ import annotations

import itertools
import logging
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import simpy

from llmsim.serving.early_stop import EarlyStop, MissCounter
from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.costmodel.window import KVLayout
from llmsim.serving.replica import LockstepReplica, Pricer, Replica, Timeline
from llmsim.serving.requests import ClosedLoop, Request
from llmsim.serving.router import Router
from llmsim.serving.schedulers import Scheduler
from llmsim.serving.spec import Slo, Speculative
from llmsim.serving.speculative import Speculator, accept_length
from llmsim.sim.entities import CountingEnvironment


# A long simulation (a million requests takes minutes) says how far it is, on the logger below, at most once every
# PROGRESS_INTERVAL_S wall seconds; the clock is read once every PROGRESS_CHECK_EVERY finished requests. Nothing is
# printed unless a handler is attached: `llmsim run` attaches one that writes to stderr (cli.show_simulation_progress);
# the planner's rate searches and the library stay quiet.
PROGRESS_LOG = logging.getLogger("llmsim.serving.progress")
PROGRESS_INTERVAL_S = 15.0
PROGRESS_CHECK_EVERY = 512


class ProgressLine:
    """Progress lines of one simulation: requests finished (of the list's length when it has one), simulated seconds
    and wall seconds so far, logged at INFO on PROGRESS_LOG."""

    def __init__(self) -> None:
        self.total: int | None = None      # the request list's length, once known (an open loop's: start_arrivals)
        self.start = self.last = time.perf_counter()

    def finished(self, done: int, now_s: float) -> None:
        """After the `done`-th request finished at simulated time `now_s` (seconds)."""
        if done % PROGRESS_CHECK_EVERY:
            return
        wall = time.perf_counter()
        if wall - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = wall
        of = f" of {self.total:,}" if self.total is not None else ""
        PROGRESS_LOG.info("  serving simulation: %s requests finished%s, %s s simulated, %.0f s so far", f"{done:,}",
                          of, f"{now_s:,.0f}", wall - self.start)


@dataclass(frozen=True)
class Rejection:
    request: Request
    reason: str          # context | kv-cache


@dataclass
class ServingOutcome:
    """What happened: every served sequence (with its token times), the rejections, the replicas' counters."""

    sequences: list[Sequence]
    rejected: list[Rejection]
    duration_s: float                 # first arrival (t = 0) to the last token (or the last pass's end)
    occupancy_s: float                # integral over time of the requests in the system (Little's L x T)
    preemptions: int
    kv_blocks: int                    # per replica
    kv_peak_used: list[int]           # per replica
    iterations: list[int]
    busy_s: list[float]
    compute_s: list[float]
    max_batch: list[int]
    events: int
    wall_s: float
    extra: dict[str, float] = field(default_factory=dict)
    timelines: list[Timeline] = field(default_factory=list)   # per replica, every iteration (simulation only)
    clients: int | None = None        # a closed loop's clients (None: open loop)
    think_s: float | None = None      # a closed loop's think time, seconds
    # set when the run stopped once its SLO was certainly missed (stop_on_miss): `sequences` are then the
    # requests finished by that time, and nothing else of the run is complete (llmsim.serving.early_stop)
    stopped: EarlyStop | None = None
    # blocks of each replica where they differ (prefill and decode instances of a disaggregated run,
    # llmsim.serving.disaggregation); empty: every replica has kv_blocks
    kv_blocks_each: list[int] = field(default_factory=list)

    @property
    def kv_peak_utilization(self) -> float:
        """The fullest any replica's KV cache got: peak blocks in use / blocks."""
        if self.kv_blocks_each:
            return max((used / blocks for used, blocks in zip(self.kv_peak_used, self.kv_blocks_each) if blocks),
                       default=0.0)
        return max(self.kv_peak_used) / self.kv_blocks if self.kv_blocks else 0.0


class StalledError(RuntimeError):
    """A scheduler left requests unfinished with nothing more to run (a policy that never schedules them), or a
    closed loop whose every request is rejected at once (it would never advance time)."""


# Rejections in a row, with none accepted, after which a closed loop bounded by duration_s is taken as one whose
# every request is rejected: rejections cost no simulated time, so its clients would never reach duration_s.
MAX_REJECTIONS_IN_A_ROW = 100_000


def simulate_serving(requests: Iterable[Request], *, replicas: int, make_scheduler: Callable[[KVCache], Scheduler],
                     kv_blocks: int, block_tokens: int, price: Callable[[int], Pricer], router: str,
                     context_tokens: int, request_overhead_s: float = 0.0,
                     closed_loop: ClosedLoop | None = None, stop_on_miss: Slo | None = None,
                     kv_layout: KVLayout = KVLayout(), attention_dp: int = 1,
                     speculative: Speculative | None = None, speculative_seed: int = 0) -> ServingOutcome:
    """Serve `requests` on `replicas` replicas, each with `kv_blocks` blocks of `block_tokens` tokens and the
    scheduler `make_scheduler` builds over its cache; `price(i)` prices replica i's iterations.

    Open loop (closed_loop None): each request arrives at its arrival_s. Closed loop: `requests` is taken in order
    (lazily: it may be endless when closed_loop.until_s bounds it) by closed_loop.clients clients; a request's
    arrival_s in the outcome is when it was sent.

    `request_overhead_s` (seconds, >= 0): each request's time outside the engine's passes (API server,
    tokenisation, IPC hop to the engine and back, detokenisation: vLLM's request path, docs/serving.md). It is
    the same for every request and does not occupy a replica, so it shifts when the client sees each token by
    that constant: the engine runs exactly as without it (a constant delay of every arrival changes no
    scheduling decision), TTFT and end-to-end latency grow by it, TPOT and ITL do not. Sequence.token_times are
    the client's times; scheduled_s (queue) and the timelines stay the engine's.

    `stop_on_miss` (open loop only): the run stops as soon as more of its requests are certain to miss this SLO's
    per-request bounds than its percentile allows (llmsim.serving.early_stop); the outcome's `stopped` then says
    what is known, and `sequences` holds the requests finished by then. A run that meets the SLO runs to its end,
    exactly as without it.

    `attention_dp` (>= 1): each replica is a LockstepReplica of that many attention-DP ranks, each with its own
    scheduler and `kv_blocks`; `price(i)` then prices a tuple of the ranks' mixes (Strategy.attention_dp).

    `speculative` (serving.speculative): speculative decoding, each replica's acceptance drawn from its own stream
    seeded by `speculative_seed` and the replica's index (llmsim.serving.speculative); the outcome's extra then
    holds `accept_length`, the mean tokens emitted per verify step.

    Raises StalledError when requests are left unfinished with no replica able to run them."""
    if not request_overhead_s >= 0:
        raise ValueError(f"request_overhead_s must be >= 0 seconds (got {request_overhead_s!r})")
    if stop_on_miss is not None and closed_loop is not None:
        raise ValueError("stop_on_miss needs an open loop: a closed loop's requests sent are not known in advance")
    start = time.perf_counter()
    env = CountingEnvironment()
    occupancy = Occupancy()
    done: list[Sequence] = []
    answered: dict[int, object] = {}   # request id -> the event its client waits on (closed loop)

    counter: MissCounter | None = None
    progress = ProgressLine()

    def finished(seq: Sequence) -> None:
        occupancy.change(env.now, -1)
        done.append(seq)
        progress.finished(len(done), env.now)
        if counter is not None:
            counter.finish(seq, env.now)
        event = answered.pop(seq.request.id, None)
        if event is not None:
            event.succeed()  # type: ignore[attr-defined]

    speculators = [Speculator(speculative, speculative_seed, i) for i in range(replicas)] if speculative else []
    pool: list[Replica | LockstepReplica]
    if attention_dp > 1:
        pool = [LockstepReplica(env, i, [make_scheduler(KVCache(kv_blocks, block_tokens, kv_layout))
                                         for _ in range(attention_dp)], price(i), finished, router,  # type: ignore[arg-type]
                                speculators[i] if speculators else None)
                for i in range(replicas)]
    else:
        pool = [Replica(env, i, make_scheduler(KVCache(kv_blocks, block_tokens, kv_layout)), price(i), finished,
                        speculators[i] if speculators else None)
                for i in range(replicas)]
    route = Router(router, pool)
    rejected: list[Rejection] = []
    accepted: list[Sequence] = []
    probe = KVCache(kv_blocks, block_tokens, kv_layout)

    def admit(request: Request) -> Sequence | None:
        """Reject the request (counted) or route it to a replica now; its sequence, or None if rejected."""
        if request.input_tokens + request.output_tokens > context_tokens:
            rejected.append(Rejection(request, "context"))
            if counter is not None:
                counter.reject(request, env.now)
            return None
        if probe.blocks_for(request.input_tokens + request.output_tokens - 1) > kv_blocks:
            rejected.append(Rejection(request, "kv-cache"))
            if counter is not None:
                counter.reject(request, env.now)
            return None
        replica = route.pick()
        seq = Sequence(request, replica.index)
        accepted.append(seq)
        if counter is not None:
            counter.accept(seq)
        occupancy.change(env.now, +1)
        replica.arrive(seq)  # type: ignore[attr-defined]
        return seq

    listed = start_arrivals(env, requests, closed_loop, admit, answered, rejected, request_overhead_s, "the replica")
    progress.total = len(listed) if listed else None
    if listed and stop_on_miss is not None:
        counter = MissCounter(listed, stop_on_miss, request_overhead_s)
        env.process(counter.deadlines(env))
    for replica in pool:
        env.process(replica.run())
    if counter is None:
        env.run()
    else:
        _run_until_stopped(env, counter)
    stopped = counter.stopped if counter is not None else None
    if stopped is not None:   # the finished requests only: the others' tokens are not all out
        accepted = sorted(done, key=lambda s: s.request.id)
    elif len(done) != len(accepted):
        kinds = set().union(*(r.kinds for r in pool))
        raise StalledError(f"scheduler {', '.join(sorted(kinds))} stopped with {len(accepted) - len(done)} of "
                           f"{len(accepted)} requests unfinished")
    if request_overhead_s:
        for seq in done:
            seq.token_times = array("d", (t + request_overhead_s for t in seq.token_times))
    duration = max((seq.token_times[-1] for seq in done), default=0.0)
    last_arrival = max((r.request.arrival_s for r in rejected), default=0.0)
    if accepted:
        last_arrival = max(last_arrival, max(s.request.arrival_s for s in accepted))
    duration = max(duration, last_arrival)
    # the engine's last pass may end after the last token: V0's wasted decode step of the finished requests
    # (async_output), which an offline run's wall time includes (llmsim.serving.replica)
    duration = max(duration, max(r.last_end_s for r in pool))
    if stopped is not None:   # the simulated time covered: up to the stop (a client sees the tokens later)
        duration = stopped.time_s
    occupancy.change(duration, 0)
    occupancy.integral += request_overhead_s * len(done)   # each is in the system that much longer (Little's law)
    extra: dict[str, float] = {}
    if speculators:
        length = accept_length(speculators)
        if length is not None:
            extra["accept_length"] = length
    return ServingOutcome(
        sequences=sorted(accepted, key=lambda s: s.request.id), rejected=rejected, duration_s=duration, extra=extra,
        occupancy_s=occupancy.integral, preemptions=sum(r.preemptions for r in pool),
        kv_blocks=kv_blocks, kv_peak_used=[r.kv_peak_used for r in pool],
        iterations=[r.iterations for r in pool], busy_s=[r.busy_s for r in pool],
        compute_s=[r.compute_s for r in pool], max_batch=[r.max_batch for r in pool],
        events=env.events_processed, wall_s=time.perf_counter() - start,
        timelines=[r.timeline for r in pool],
        clients=None if closed_loop is None else closed_loop.clients,
        think_s=None if closed_loop is None else closed_loop.think_s, stopped=stopped)



def start_arrivals(env: simpy.Environment, requests: Iterable[Request], closed_loop: ClosedLoop | None,
                   admit: Callable[[Request], object], answered: dict[int, simpy.Event], rejected: list[Rejection],
                   request_overhead_s: float, what: str) -> list[Request] | None:
    """Start the requests' arrivals in `env`: an open loop's list at its arrival times (returned), or a closed
    loop's clients (None returned), each sending its next request `think_s` after its last one was answered
    (`answered[request.id]`, an event its replica succeeds at the last token; the client sees it
    `request_overhead_s` later). `admit(request)` routes a request or rejects it (falsy). A closed loop whose
    MAX_REJECTIONS_IN_A_ROW requests in a row are rejected raises StalledError naming `what` it does not fit.
    simulate_serving's and serving.disaggregation's one driver."""
    if closed_loop is None:
        listed = requests if isinstance(requests, list) else list(requests)

        def arrivals():  # noqa: ANN202 - a SimPy generator
            for request in listed:
                if request.arrival_s > env.now:
                    yield env.timeout(request.arrival_s - env.now)
                admit(request)

        env.process(arrivals())
        return listed
    # As many clients as there are requests at most: one beyond them finds none to send (each of the first ones
    # takes at least one at t = 0), so it is never made (1e8 clients for 200 requests made 1e8 SimPy processes). The
    # first requests are drawn ahead to count them; the clients take them in id order as before.
    source = iter(requests)
    ahead = list(itertools.islice(source, closed_loop.clients))
    source = itertools.chain(ahead, source)
    in_a_row = [0]   # rejections since the last accepted request

    def client():  # noqa: ANN202 - a SimPy generator: one client of the closed loop
        while closed_loop.until_s is None or env.now < closed_loop.until_s:
            request = next(source, None)
            if request is None:
                return
            if not admit(replace(request, arrival_s=env.now)):
                in_a_row[0] += 1
                if closed_loop.until_s is not None and in_a_row[0] >= MAX_REJECTIONS_IN_A_ROW:
                    raise StalledError(f"a closed loop's {MAX_REJECTIONS_IN_A_ROW} requests in a row were "
                                       f"rejected ({rejected[-1].reason}): no request fits {what}")
            else:
                in_a_row[0] = 0
                event = answered[request.id] = env.event()
                yield event
                if request_overhead_s:   # the client sees the last token that much later
                    yield env.timeout(request_overhead_s)
            if closed_loop.think_s:
                yield env.timeout(closed_loop.think_s)

    for _ in range(len(ahead)):
        env.process(client())
    return None

def _run_until_stopped(env: simpy.Environment, counter: MissCounter) -> None:
    """env.run(), but returning as soon as `counter` says the SLO is certainly missed."""
    try:
        while counter.stopped is None:
            env.step()
    except simpy.core.EmptySchedule:
        pass


class Occupancy:
    """Requests in the system (arrived and accepted, not finished) and its integral over time."""

    def __init__(self) -> None:
        self.count = 0
        self.integral = 0.0
        self.last = 0.0

    def change(self, now: float, delta: int) -> None:
        self.integral += self.count * (now - self.last)
        self.last = now
        self.count += delta
