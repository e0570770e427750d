"""Prefill-decode (PD) disaggregation on the SimPy engine: prefill instances run prompts only, decode instances
run decode steps only, and each prompt's KV cache crosses a link from the one to the other.

The mechanism (DistServe: Zhong et al., "DistServe: Disaggregating Prefill and Decoding for Goodput-optimized Large
Language Model Serving", OSDI '24, Sec. 3-4; Splitwise: Patel et al., ISCA '24; SGLang's
`--disaggregation-mode prefill|decode` with Mooncake / NIXL transfer; vLLM's disaggregated prefill with
NixlConnector; NVIDIA Dynamo):

1. A request arrives and the router (serving.router, as for colocated replicas) sends it to a prefill instance.
   That instance's scheduler (the scenario's kind and token budget, chunked or whole) runs its prompt as it would
   a colocated replica's, but the request asks for one token only: its first token is sampled at the end of its
   prefill, so its TTFT is the prefill queue plus the prefill (DistServe Sec. 2: "TTFT ... prefill instance"),
   and it frees its prefill KV blocks then (SGLang and vLLM free the sender's blocks once the transfer is done;
   here at once: the prefill pool is not the bottleneck this models, noted in docs/serving.md).
2. Its KV cache, `kv_bytes` for its prompt (the memory model's bytes per token at the scenario's kv dtype, MLA's
   latent for an MLA model), crosses the link: latency_s + bytes per port / (bandwidth x efficiency) of the
   catalog entry (the port model of costmodel.cluster: bandwidth per device per direction; one port per node
   shared by its devices where shared_per_node). The transfers of one prefill instance go one after another on
   its ports (a FIFO: at full bandwidth, the same finishing order and total time as fair sharing for equal
   sizes). Layerwise (kv_transfer.layerwise): each layer's KV is sent when the prefill has computed it
   (Mooncake's and LMCache's layer-wise transfer; DistServe Sec. 4.3 pipelines it the same way), so what is
   left after the prefill ends is the last layer's share, or more if the link could not keep up
   (full transfer time - the request's prefill span).
3. The request joins a decode instance (serving.router over the decode instances: round-robin or
   least-outstanding) with its prompt cached and its first token out: the decode instance's scheduler admits it
   when its KV pool has room for the prompt and the next token (vLLM's and SGLang's decode side allocate the
   blocks before the pull); until then it waits (counted: `decode_waits`). The decode instance then runs decode
   steps only: no prompt is ever in its iterations (DistServe's point: no prefill-decode interference), except a
   preempted request's recompute (preemption by recompute as a colocated replica does it; the engines differ).

An instance with attention data parallelism (Pool.attention_dp > 1: Strategy.attention_dp, a side's own in
serving.disaggregation) is a LockstepReplica of that many ranks, each with its own scheduler and KV cache, as a
colocated replica is (llmsim.serving.replica): a request's KV cache lives on its rank's devices, so each prefill rank
sends its requests' transfers over its own ports (one FIFO per rank, not per instance).

Devices: prefill replicas x tp_p + decode replicas x tp_d; the outcome's per-replica lists hold the prefill
instances first, then the decode instances (index P + j).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import simpy

from llmsim.costmodel.window import KVLayout
from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.replica import LockstepReplica, Pricer, Replica
from llmsim.serving.requests import ClosedLoop, Request
from llmsim.serving.router import Router
from llmsim.serving.schedulers import Scheduler
from llmsim.serving.simulate import (Occupancy, ProgressLine, Rejection, ServingOutcome, StalledError,
                                     start_arrivals)
from llmsim.sim.entities import CountingEnvironment


@dataclass(frozen=True)
class TransferLink:
    """The link a KV cache crosses, as priced: `bandwidth_bytes_per_s` per port and direction already times the
    link's efficiency, `latency_s` once per transfer."""

    bandwidth_bytes_per_s: float
    latency_s: float


def transfer_link(bandwidth_bytes_per_s: float, latency_s: float, efficiency: float, shared_per_node: bool,
                  devices_sharing: int) -> TransferLink:
    """A catalog link as a KV transfer sees it (hardware.LinkSpec's fields): bandwidth x efficiency per port,
    divided among `devices_sharing` devices where the link is one port per node (shared_per_node)."""
    bandwidth = bandwidth_bytes_per_s * efficiency
    if shared_per_node:
        bandwidth /= max(1, devices_sharing)
    return TransferLink(bandwidth, latency_s)


def kv_bytes_per_port(kv_bytes_per_token: float, tokens: int, tp_prefill: int, tp_decode: int,
                      kv_split_decode: int) -> float:
    """Bytes the busiest port moves for one prompt's KV cache: `kv_bytes_per_token` is the whole model's K and V of
    one token (all layers, the cache's element type; MLA: the latent), `kv_split_decode` the ways a decode instance
    splits it (ModelSpec.kv_split(tp_d): min(tp_d, kv_heads), 1 for MLA, whose latent every rank holds whole).
    Each decode device receives its share, kv_bytes / kv_split_decode per token (more than 1/tp_d where heads are
    replicated); the tp_d shares are sent by the tp_p prefill devices, each over its own port, so a prefill port
    sends tp_d x share / tp_p. The transfer takes as long as the busier side's port."""
    receive = kv_bytes_per_token * tokens / kv_split_decode
    send = receive * tp_decode / tp_prefill
    return max(receive, send)


def transfer_seconds(bytes_per_port: float, link: TransferLink, layers: int, prefill_span_s: float,
                     layerwise: bool) -> tuple[float, float]:
    """(seconds the ports are busy after the prefill ends, latency seconds) of one KV transfer.

    Whole: every byte after the prefill, bytes / bandwidth. Layerwise: layer l's KV is sent while layers l+1...
    compute, so only the last layer's share, bytes / layers / bandwidth, is left after the prefill ends, unless the
    link is slower than the prefill: then what the link could not send during the prefill's span
    (bytes / bandwidth - prefill_span_s) is left."""
    full = bytes_per_port / link.bandwidth_bytes_per_s
    if layerwise:
        full = max(full / max(1, layers), full - prefill_span_s)
    return full, link.latency_s


@dataclass(frozen=True)
class Pool:
    """One side of the deployment: `replicas` instances, each with `kv_blocks` blocks of its own cache layout (per
    attention-DP rank), the scheduler `make_scheduler` builds over it and the pricer `price(i)` of instance i (i
    counted from 0 within the side)."""

    replicas: int
    kv_blocks: int
    make_scheduler: Callable[[KVCache], Scheduler]
    price: Callable[[int], Pricer]
    kv_layout: KVLayout = KVLayout()
    # attention data parallelism of each instance (Strategy.attention_dp): > 1 makes an instance a LockstepReplica
    # of that many ranks, each with its own scheduler and kv_blocks, price(i) pricing a tuple of the ranks' mixes
    attention_dp: int = 1


@dataclass
class _Watch:
    """The decode side's admission watch: when each request joined a decode instance and whether it was left
    waiting when an iteration was formed."""

    joined: dict[int, float]
    waited: set[int]
    queue_s: list[float]


def _watched(scheduler: Scheduler, watch: _Watch) -> Scheduler:
    """The scheduler with its `schedule` and `admit` watched (instance attributes over the class's methods): a
    request that joined the instance and is still waiting after an iteration was formed is counted as waiting
    for room (its KV pool, or max_num_seqs, full); its admission records the seconds it waited."""
    schedule, admit = scheduler.schedule, scheduler.admit

    def watched_schedule(now: float):  # noqa: ANN202 - Iteration | None
        iteration = schedule(now)
        for seq in scheduler.waiting:
            if seq.request.id in watch.joined:
                watch.waited.add(seq.request.id)
        return iteration

    def watched_admit(seq: Sequence, now: float) -> None:
        joined = watch.joined.pop(seq.request.id, None)
        if joined is not None:
            watch.queue_s.append(now - joined)
        admit(seq, now)

    scheduler.schedule = watched_schedule  # type: ignore[method-assign]
    scheduler.admit = watched_admit  # type: ignore[method-assign]
    return scheduler


def simulate_disaggregated(requests: Iterable[Request], *, prefill: Pool, decode: Pool, block_tokens: int,
                           router: str, context_tokens: int,
                           transfer: Callable[[Request, float], tuple[float, float]],
                           request_overhead_s: float = 0.0,
                           closed_loop: ClosedLoop | None = None) -> ServingOutcome:
    """Serve `requests` on `prefill` and `decode` instances (module docstring). `transfer(request, prefill_span_s)`
    gives (seconds its prefill instance's ports are busy, latency seconds) of its KV transfer (transfer_seconds);
    `request_overhead_s` as in simulate_serving (added to every token time the client sees). A request of one
    output token is done at its prefill (nothing to transfer).

    Rejected on arrival, as simulate_serving does: `context` (prompt + output longer than the model's context),
    `kv-cache` (its prompt does not fit a prefill instance's cache, or its whole length a decode instance's).

    The outcome's per-replica lists are the prefill instances', then the decode instances'; its kv_blocks is the
    decode instances' (kv_blocks_each has each instance's), and `extra` carries kv_transfer_mean_s,
    decode_waits (requests that joined a decode instance and were left waiting at least one iteration for room)
    and decode_queue_mean_s (mean seconds from joining a decode instance to being admitted)."""
    if not request_overhead_s >= 0:
        raise ValueError(f"request_overhead_s must be >= 0 seconds (got {request_overhead_s!r})")
    start = time.perf_counter()
    env = CountingEnvironment()
    occupancy = Occupancy()
    done: list[Sequence] = []
    answered: dict[int, simpy.Event] = {}   # a closed-loop client waits on its request's (start_arrivals)
    watch = _Watch({}, set(), [])
    transfers: list[float] = []
    n_pre = prefill.replicas
    progress = ProgressLine()

    def finished(seq: Sequence) -> None:
        occupancy.change(env.now, -1)
        done.append(seq)
        progress.finished(len(done), env.now)
        event = answered.pop(seq.request.id, None)
        if event is not None:
            event.succeed()  # type: ignore[attr-defined]

    originals: dict[int, Request] = {}
    # when each prefill instance's ports finish their queued transfers: per attention-DP rank, whose own devices
    # hold (and send) its requests' KV caches
    port_free = [[0.0] * prefill.attention_dp for _ in range(n_pre)]

    def deliver(dseq: Sequence, at_s: float):  # noqa: ANN202 - a SimPy generator
        yield env.timeout(at_s - env.now)
        target = decode_route.pick()
        dseq.replica = n_pre + target.index   # type: ignore[attr-defined]
        watch.joined[dseq.request.id] = env.now
        target.arrive(dseq)  # type: ignore[attr-defined]

    def prefilled(pseq: Sequence) -> None:
        """A prompt's first token is out: hand the request to the decode side (or finish it)."""
        request = originals.pop(pseq.request.id)
        dseq = Sequence(request, pseq.replica)
        dseq.computed = request.input_tokens
        dseq.generated = 1
        dseq.token_times = pseq.token_times
        dseq.scheduled_s = pseq.scheduled_s
        dseq.preemptions = pseq.preemptions
        if request.output_tokens <= 1:
            dseq.finished = True
            finished(dseq)
            return
        now = env.now
        span = now - (pseq.scheduled_s if pseq.scheduled_s is not None else now)
        busy, latency = transfer(request, span)
        ports = port_free[pseq.replica]
        rank = pre_pool[pseq.replica].finishing_rank if prefill.attention_dp > 1 else 0  # type: ignore[union-attr]
        begin = max(now, ports[rank])
        ports[rank] = begin + busy
        arrive_s = begin + busy + latency
        transfers.append(arrive_s - now)
        env.process(deliver(dseq, arrive_s))

    def instance(side: Pool, i: int, on_finish: Callable[[Sequence], None],
                 watched: bool) -> Replica | LockstepReplica:
        """Instance i of `side`: a Replica, or a LockstepReplica of its attention-DP ranks (Pool.attention_dp),
        its ranks' requests assigned by the router's policy as simulate_serving's are."""
        def scheduler() -> Scheduler:
            made = side.make_scheduler(KVCache(side.kv_blocks, block_tokens, side.kv_layout))
            return _watched(made, watch) if watched else made
        if side.attention_dp > 1:
            return LockstepReplica(env, i, [scheduler() for _ in range(side.attention_dp)], side.price(i),  # type: ignore[arg-type]
                                   on_finish, router)
        return Replica(env, i, scheduler(), side.price(i), on_finish)

    pre_pool = [instance(prefill, i, prefilled, False) for i in range(n_pre)]
    dec_pool = [instance(decode, j, finished, True) for j in range(decode.replicas)]
    route = Router(router, pre_pool)
    decode_route = Router(router, dec_pool)
    rejected: list[Rejection] = []
    accepted: list[int] = []
    pre_probe = KVCache(prefill.kv_blocks, block_tokens, prefill.kv_layout)
    dec_probe = KVCache(decode.kv_blocks, block_tokens, decode.kv_layout)

    def admit(request: Request) -> bool:
        """Reject the request (counted) or route it to a prefill instance now; whether it was accepted."""
        if request.input_tokens + request.output_tokens > context_tokens:
            rejected.append(Rejection(request, "context"))
            return False
        if (pre_probe.blocks_for(request.input_tokens) > prefill.kv_blocks
                or dec_probe.blocks_for(request.input_tokens + request.output_tokens - 1) > decode.kv_blocks):
            rejected.append(Rejection(request, "kv-cache"))
            return False
        replica = route.pick()
        originals[request.id] = request
        accepted.append(request.id)
        occupancy.change(env.now, +1)
        replica.arrive(Sequence(replace(request, output_tokens=1), replica.index))  # type: ignore[attr-defined]
        return True

    listed = start_arrivals(env, requests, closed_loop, admit, answered, rejected, request_overhead_s, "the instances")
    progress.total = len(listed) if listed else None
    pool = pre_pool + dec_pool
    for replica in pool:
        env.process(replica.run())
    env.run()
    if len(done) != len(accepted):
        raise StalledError(f"disaggregated serving stopped with {len(accepted) - len(done)} of {len(accepted)} "
                           f"requests unfinished")
    if request_overhead_s:
        for seq in done:
            seq.token_times = array("d", (t + request_overhead_s for t in seq.token_times))
    duration = max((seq.token_times[-1] for seq in done), default=0.0)
    arrivals_s = [r.request.arrival_s for r in rejected] + [s.request.arrival_s for s in done]
    duration = max(duration, max(arrivals_s, default=0.0), max(r.last_end_s for r in pool))
    occupancy.change(duration, 0)
    occupancy.integral += request_overhead_s * len(done)
    extra = {"kv_transfer_mean_s": sum(transfers) / len(transfers) if transfers else 0.0,
             "decode_waits": float(len(watch.waited)),
             "decode_queue_mean_s": sum(watch.queue_s) / len(watch.queue_s) if watch.queue_s else 0.0}
    return ServingOutcome(
        sequences=sorted(done, key=lambda s: s.request.id), rejected=rejected, duration_s=duration,
        occupancy_s=occupancy.integral, preemptions=sum(r.preemptions for r in pool),
        kv_blocks=decode.kv_blocks, kv_peak_used=[r.kv_peak_used for r in pool],
        iterations=[r.iterations for r in pool], busy_s=[r.busy_s for r in pool],
        compute_s=[r.compute_s for r in pool], max_batch=[r.max_batch for r in pool],
        events=env.events_processed, wall_s=time.perf_counter() - start, extra=extra,
        timelines=[r.timeline for r in pool],
        clients=None if closed_loop is None else closed_loop.clients,
        think_s=None if closed_loop is None else closed_loop.think_s,
        kv_blocks_each=[prefill.kv_blocks] * n_pre + [decode.kv_blocks] * decode.replicas)
