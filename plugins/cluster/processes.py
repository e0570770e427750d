"""What happens in one simulated step: collectives over links, pipeline schedules, gradient reduction.

One generator per actor, `env` (or the replica holding it) first, as in SimPy's carwash.py:
* `stage_worker`   a pipeline stage walking its schedule (gpipe, 1f1b, interleaved) op by op: wait for the
                   input activation or gradient, run the layers on the compute stream with their tensor-
                   parallel collectives on the critical path, send the result to the neighbour stage.
* `run_collective` a collective as the algorithm NCCL would run: ring or tree, hierarchical across nodes,
                   each phase a transfer over the rank's port (shared with whatever else crosses it).
* `GradientBuckets` data-parallel reduction of the last micro-batch's gradients in buckets, launched on
                   the communication stream as layers finish their backward (overlap) or after it.
* `ZeroGatherer`   ZeRO-3/FSDP: each layer's parameters all-gathered before use, `prefetch` layers ahead.

The work itself (seconds per layer, bytes per collective) comes priced from the shared cost model
(program.py), so the simulation and the roofline agree where nothing contends; the simulation adds what
a closed form cannot see: who waits for whom, which transfers share a port, and faults.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal

import simpy

from llmsim.costmodel import collectives as coll
from llmsim.costmodel.cluster import Group
from llmsim.costmodel.collectives import Channel, Op
from llmsim_plugins.cluster.entities import CountingEnvironment, Device, Faults, Ledger, Placement, Replica, Span, Tier

Schedule = Literal["gpipe", "1f1b", "interleaved"]


# ---------------------------------------------------------------------------------------------------
# Collectives: the algorithm as phases over a rank's ports
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One stretch of a collective on one port: `nbytes` serialized, then `latency_s` of hops in flight."""

    tier: Tier
    nbytes: float
    latency_s: float


Collective = tuple[Phase, ...]
NO_COMM: Collective = ()


@dataclass(frozen=True)
class Fabric:
    """What one rank sees of the two fabrics when nothing else uses them (the cost model's channels)."""

    intra: Channel
    inter: Channel

    def channel(self, tier: Tier) -> Channel:
        return self.intra if tier == "intra" else self.inter


def _ring(op: Op, size: float, p: int, tier: Tier, ch: Channel) -> Phase:
    """Ring: (p-1) steps (2(p-1) for all-reduce), each a hop latency; every rank sends its ring share."""
    steps = (2 if op == "all-reduce" else 1) * (p - 1)
    # An implementation reaching a share of the port's bandwidth (Channel.op_efficiency) occupies the port as
    # long as proportionally more bytes would.
    nbytes = coll.ring_bytes_per_rank(op, size, p) * ch.bandwidth / ch.bandwidth_for(op)
    return Phase(tier, nbytes, coll.COLLECTIVE_BASE_LATENCY_S + steps * ch.latency)


def _tree(size: float, p: int, tier: Tier, ch: Channel) -> Phase:
    """Double binary tree all-reduce: 2 log2(p) hops, about 2S bytes per rank (pipelined)."""
    nbytes = 2 * size * ch.bandwidth / ch.bandwidth_for("all-reduce")
    return Phase(tier, nbytes, coll.COLLECTIVE_BASE_LATENCY_S + 2 * math.ceil(math.log2(p)) * ch.latency)


def _flat(op: Op, size: float, p: int, tier: Tier, fabric: Fabric) -> Collective:
    """One-level collective; for all-reduce the algorithm NCCL's tuner picks (the faster uncontended)."""
    if p <= 1 or size <= 0:
        return NO_COMM
    ch = fabric.channel(tier)
    if op == "all-reduce" and coll.tree_all_reduce_time(size, p, ch) < coll.ring_time(op, size, p, ch):
        return (_tree(size, p, tier, ch),)
    return (_ring(op, size, p, tier, ch),)


def collective(op: Op, size: float, group: Group, fabric: Fabric) -> Collective:
    """A collective of `size` bytes (the full buffer per rank) over a placed group, as port phases.

    Inside a node: a flat ring (or tree). Across nodes: hierarchical, as costmodel.collectives does it:
    reduce-scatter inside the node, the 1/per_node shard across nodes (each local rank on its own NIC),
    all-gather inside; reduce-scatter and all-gather are the corresponding halves.
    """
    if group.size <= 1 or size <= 0:
        return NO_COMM
    if not group.crosses_nodes:
        return _flat(op, size, group.size, "intra", fabric)
    if group.per_node <= 1:
        return _flat(op, size, group.nodes, "inter", fabric)
    shard = size / group.per_node
    if op == "all-reduce":
        return (_ring("reduce-scatter", size, group.per_node, "intra", fabric.intra),
                *_flat("all-reduce", shard, group.nodes, "inter", fabric),
                _ring("all-gather", size, group.per_node, "intra", fabric.intra))
    return (_ring(op, size, group.per_node, "intra", fabric.intra),
            *_flat(op, shard, group.nodes, "inter", fabric))


def point_to_point(size: float, tier: Tier, fabric: Fabric) -> Collective:
    """One message to a neighbour: its bytes, then one hop latency."""
    if size <= 0:
        return NO_COMM
    return (Phase(tier, size, fabric.channel(tier).latency),)


def repeat(c: Collective, k: int) -> Collective:
    """k identical collectives back to back, merged phase-wise: the same time uncontended, fewer events."""
    if k <= 0 or not c:
        return NO_COMM
    return tuple(Phase(ph.tier, ph.nbytes * k, ph.latency_s * k) for ph in c) if k > 1 else c


def uncontended_time(c: Collective, fabric: Fabric) -> float:
    """What the collective takes alone on its ports (equals the cost model's formula)."""
    return sum(ph.nbytes / fabric.channel(ph.tier).bandwidth + ph.latency_s for ph in c)


def run_collective(device: Device, c: Collective) -> Generator[simpy.Event, None, None]:
    """Run the collective's phases in order on the device's ports (its peers do the same on theirs)."""
    for ph in c:
        yield from device.ports[ph.tier].transfer(ph.nbytes, ph.latency_s)


# ---------------------------------------------------------------------------------------------------
# The work: what each stage does, priced by the cost model (program.py builds it)
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageWork:
    """One pipeline stage's work per micro-batch and per step (seconds on an uncontended device).

    Layer times are per layer and micro-batch; `layers` is per model chunk (v chunks per stage when
    interleaved). `embed_*` are non-zero on the first stage, `head_*` on the last.
    """

    layers: int
    fwd_layer_s: float
    bwd_layer_s: float = 0.0
    recompute_layer_s: float = 0.0
    cp_layer_s: float = 0.0             # exposed context-parallel exchange per layer (analytic)
    embed_fwd_s: float = 0.0
    embed_bwd_s: float = 0.0
    head_fwd_s: float = 0.0
    head_bwd_s: float = 0.0
    tp_fwd: Collective = NO_COMM        # per layer forward (and per recomputed forward)
    tp_recompute: Collective = NO_COMM  # per layer recomputed forward (full recompute repeats tp_fwd)
    tp_bwd: Collective = NO_COMM        # per layer backward
    tp_embed: Collective = NO_COMM      # after the embedding forward (first stage)
    tp_head: Collective = NO_COMM       # LM-head input gradient (last stage)
    recv_gather: Collective = NO_COMM   # all-gather of a scattered pipeline message over tensor parallel
    accumulate_s: float = 0.0           # gradient accumulation of the whole step on this stage
    optimizer_s: float = 0.0
    grad_bytes_layer: float = 0.0       # gradient bytes of one layer (data-parallel reduction)
    grad_bytes_embed: float = 0.0
    grad_bytes_head: float = 0.0
    param_bytes_layer: float = 0.0      # parameter bytes of one layer (ZeRO-3 all-gather)
    param_bytes_embed: float = 0.0
    param_bytes_head: float = 0.0
    gather_after_step: Collective = NO_COMM   # ZeRO 1/2: all-gather the updated parameters


@dataclass(frozen=True)
class SyncWork:
    """A gradient all-reduce between stages that parameter sharing adds (tied embedding, shared layers)."""

    name: str
    stages: tuple[int, ...]
    collective: Collective


@dataclass(frozen=True)
class StepWork:
    """One step of one pipeline replica: the stages' work, the schedule and the data-parallel setup."""

    stages: tuple[StageWork, ...]
    microbatches: int
    schedule: Schedule = "1f1b"
    virtual_stages: int = 1
    forward_only: bool = False
    p2p_bytes: float = 0.0              # one pipeline message (activation or its gradient)
    dp_op: Op = "all-reduce"
    dp_group: Group = field(default_factory=lambda: Group(1, 1, 1))
    zero: int = 0
    overlap_grad_reduce: bool = True
    bucket_bytes: float = 25 * 2**20
    prefetch: int = 1
    syncs: tuple[SyncWork, ...] = ()
    comm_shares_cores: bool = False     # collectives run on the compute cores (gloo on a CPU host)

    @property
    def pp(self) -> int:
        return len(self.stages)

    @property
    def v(self) -> int:
        return self.virtual_stages if self.schedule == "interleaved" else 1


# ---------------------------------------------------------------------------------------------------
# Pipeline schedules
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PipeOp:
    forward: bool
    microbatch: int
    chunk: int


def schedule_ops(schedule: Schedule, p: int, m: int, v: int, stage: int,
                 forward_only: bool = False) -> list[PipeOp]:
    """The order in which `stage` runs its forward and backward passes (Narayanan et al. 2021, Sec. 2.2).

    gpipe: all forwards, then all backwards. 1f1b: p-stage-1 warm-up forwards, then one forward one
    backward, then the remaining backwards. interleaved: Megatron-LM's schedule over v model chunks per
    device in groups of p micro-batches (needs m % p == 0).
    """
    if forward_only:  # inference: every micro-batch through the pipeline in order (a GPipe fill)
        return [PipeOp(True, i, 0) for i in range(m)]
    if schedule == "gpipe":
        return [PipeOp(True, i, 0) for i in range(m)] + [PipeOp(False, i, 0) for i in reversed(range(m))]
    if schedule == "1f1b" or v == 1:
        warm = min(p - stage - 1, m)
        ops = [PipeOp(True, i, 0) for i in range(warm)]
        for i in range(m - warm):
            ops += [PipeOp(True, warm + i, 0), PipeOp(False, i, 0)]
        return ops + [PipeOp(False, i, 0) for i in range(m - warm, m)]
    total = m * v

    def op(k: int, forward: bool) -> PipeOp:
        group, within = divmod(k, p * v)
        chunk = within // p
        return PipeOp(forward, group * p + k % p, chunk if forward else v - 1 - chunk)

    warm = min((p - stage - 1) * 2 + (v - 1) * p, total)
    ops = [op(k, True) for k in range(warm)]
    for k in range(total - warm):
        ops += [op(warm + k, True), op(k, False)]
    return ops + [op(k, False) for k in range(total - warm, total)]


# ---------------------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------------------

class StepSim:
    """One step of `work` on `replica`: the shared state the actors below read and write."""

    def __init__(self, replica: Replica, work: StepWork, fabric: Fabric, faults: Faults) -> None:
        self.env = replica.env
        self.replica = replica
        self.work = work
        self.fabric = fabric
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.tp_peers = 1
        self._arrivals: dict[tuple[str, int, int], simpy.Event] = {}
        self._barriers: dict[str, tuple[simpy.Event, set[int]]] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def arrival(self, kind: str, microbatch: int, vstage: int) -> simpy.Event:
        """The event of a pipeline message for (forward activation | backward gradient, mb, virtual stage)."""
        key = (kind, microbatch, vstage)
        if key not in self._arrivals:
            self._arrivals[key] = self.env.event()
        return self._arrivals[key]

    def barrier(self, name: str, stage: int, members: tuple[int, ...]) -> simpy.Event:
        """An event that fires when every member stage has reached the barrier `name`."""
        event, arrived = self._barriers.setdefault(name, (self.env.event(), set()))
        arrived.add(stage)
        if arrived >= set(members) and not event.triggered:
            event.succeed()
        return event

    def kernel_time(self, device: Device, seconds: float) -> float:
        """A kernel's duration on `device`: slowed by a straggler, stretched by seeded jitter."""
        t = seconds * device.slowdown
        if self.faults.jitter_std > 0 and t > 0:
            worst = max(self.rng.gauss(0.0, self.faults.jitter_std) for _ in range(self.tp_peers))
            t *= max(0.0, 1.0 + worst)
        return t

    def compute(self, device: Device, seconds: float) -> Generator[simpy.Event, None, None]:
        t = self.kernel_time(device, seconds)
        if t <= 0:
            return
        if self.work.comm_shares_cores:
            # The communication stream's collectives run on these cores: a kernel waits for the one in
            # flight, and the wait is exposed communication.
            start = self.env.now
            with device.comm.request() as turn:
                yield turn
                device.ledger.comm_s += self.env.now - start
                yield self.env.timeout(t)
        else:
            yield self.env.timeout(t)
        device.ledger.compute_s += t

    def exposed(self, device: Device, c: Collective) -> Generator[simpy.Event, None, None]:
        """A collective the compute stream waits for (tensor parallel, pipeline messages)."""
        if not c:
            return
        start = self.env.now
        yield from run_collective(device, c)
        device.ledger.comm_s += self.env.now - start

    def on_comm_stream(self, device: Device, c: Collective, name: str, category: str) -> simpy.Process:
        """Issue a collective on the device's communication stream (runs in issue order, overlapped)."""
        def run() -> Generator[simpy.Event, None, None]:
            with device.comm.request() as turn:
                yield turn
                start = self.env.now
                yield from run_collective(device, c)
                self.replica.record(device.stage, "comm", name, category, start)
        return self.env.process(run())

    def wait(self, device: Device, event: simpy.Event) -> Generator[simpy.Event, None, None]:
        """Wait for the device's own communication to finish: exposed communication."""
        if event.triggered and event.processed:
            return
        start = self.env.now
        yield event
        device.ledger.comm_s += self.env.now - start


class GradientBuckets:
    """Data-parallel gradient reduction of one stage in buckets of `bucket_bytes`, in backward order.

    With overlap, a bucket's all-reduce (reduce-scatter with ZeRO 2) is issued on the communication
    stream as soon as the last micro-batch's backward has produced its gradients, so it hides behind the
    rest of the backward; without, everything is issued when the backward is over (PyTorch DDP and
    Megatron-LM's buckets).
    """

    def __init__(self, sim: StepSim, device: Device) -> None:
        self.sim = sim
        self.device = device
        self.pending = 0.0
        self.issued: list[simpy.Process] = []
        self.work = sim.work

    def add(self, nbytes: float) -> None:
        if self.work.dp_group.size <= 1 or nbytes <= 0:
            return
        self.pending += nbytes
        if self.work.overlap_grad_reduce and self.pending >= self.work.bucket_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending <= 0:
            return
        c = collective(self.work.dp_op, self.pending, self.work.dp_group, self.sim.fabric)
        self.issued.append(self.sim.on_comm_stream(self.device, c, f"{self.work.dp_op} {self.pending / 1e6:.0f} MB",
                                                   "dp"))
        self.pending = 0.0


class ZeroGatherer:
    """ZeRO-3 / FSDP: each unit (a layer, with the embedding or head folded into the edge layers) is
    all-gathered over data parallel before it runs, forward and backward, issued `prefetch` units ahead
    of the compute on the communication stream; its gradients are reduce-scattered after its backward."""

    def __init__(self, sim: StepSim, device: Device, needs: list[float]) -> None:
        self.sim = sim
        self.device = device
        self.needs = needs          # bytes of each gather, in the order compute will use them
        self.issued: list[simpy.Process] = []
        self.reductions: list[simpy.Process] = []

    def _issue_through(self, k: int) -> None:
        work = self.sim.work
        while len(self.issued) <= min(k, len(self.needs) - 1):
            size = self.needs[len(self.issued)]
            c = collective("all-gather", size, work.dp_group, self.sim.fabric)
            self.issued.append(self.sim.on_comm_stream(self.device, c, "all-gather params", "zero"))

    def use(self, k: int) -> simpy.Event:
        """The k-th gather (issuing it and the next `prefetch` if not yet issued)."""
        self._issue_through(k + self.sim.work.prefetch)
        return self.issued[k]

    def reduce(self, nbytes: float) -> None:
        c = collective("reduce-scatter", nbytes, self.sim.work.dp_group, self.sim.fabric)
        self.reductions.append(self.sim.on_comm_stream(self.device, c, "reduce-scatter grads", "zero"))


def _units(work: StepWork, st: StageWork, stage: int, op: PipeOp) -> list[tuple[float, float]]:
    """(parameter bytes, gradient bytes) of each layer unit of `op`, in the order it runs them."""
    p, v = work.pp, work.v
    vstage = op.chunk * p + stage
    units = [(st.param_bytes_layer, st.grad_bytes_layer) for _ in range(st.layers)]
    if vstage == 0 and units:
        units[0] = (units[0][0] + st.param_bytes_embed, units[0][1] + st.grad_bytes_embed)
    if vstage == p * v - 1 and units:
        units[-1] = (units[-1][0] + st.param_bytes_head, units[-1][1] + st.grad_bytes_head)
    return units if op.forward else units[::-1]


def stage_worker(sim: StepSim, stage: int) -> Generator[simpy.Event, None, None]:
    """One pipeline stage through its schedule, then the gradient reduction and the optimizer step."""
    env, work = sim.env, sim.work
    device = sim.replica.devices[stage]
    st = work.stages[stage]
    p, v, m = work.pp, work.v, work.microbatches
    last_vstage = p * v - 1
    ops = schedule_ops(work.schedule, p, m, v, stage, work.forward_only)
    last_backward = {op.chunk: i for i, op in enumerate(ops) if not op.forward}
    buckets = GradientBuckets(sim, device)
    zero3 = work.zero >= 3 and work.dp_group.size > 1 and not work.forward_only
    gatherer = ZeroGatherer(sim, device, [u[0] for op in ops for u in _units(work, st, stage, op)]) if zero3 else None
    per_backward_accumulate = st.accumulate_s / (m * v) if m * v else 0.0
    gather_index = 0

    for i, op in enumerate(ops):
        vstage = op.chunk * p + stage
        kind = "F" if op.forward else "B"
        first_in, last_in = (vstage == 0, vstage == last_vstage) if op.forward else (vstage == last_vstage, vstage == 0)
        if not first_in:  # wait for the neighbour's activation (forward) or gradient (backward): the bubble
            yield sim.arrival(kind, op.microbatch, vstage)
            yield from sim.exposed(device, st.recv_gather)
        units = _units(work, st, stage, op)
        with device.compute.request() as turn:
            yield turn
            start = env.now
            if op.forward:
                if vstage == 0:
                    yield from sim.compute(device, st.embed_fwd_s)
                    yield from sim.exposed(device, st.tp_embed)
                for _ in units:
                    if gatherer:
                        yield from sim.wait(device, gatherer.use(gather_index))
                        gather_index += 1
                    yield from sim.compute(device, st.fwd_layer_s)
                    yield from sim.exposed(device, st.tp_fwd)
                if vstage == last_vstage:
                    yield from sim.compute(device, st.head_fwd_s)
            else:
                final = last_backward[op.chunk] == i
                if vstage == last_vstage:
                    yield from sim.compute(device, st.head_bwd_s)
                    yield from sim.exposed(device, st.tp_head)
                for params, grads in units:
                    if gatherer:
                        yield from sim.wait(device, gatherer.use(gather_index))
                        gather_index += 1
                    if st.recompute_layer_s:
                        yield from sim.compute(device, st.recompute_layer_s)
                        yield from sim.exposed(device, st.tp_recompute)
                    yield from sim.compute(device, st.bwd_layer_s)
                    yield from sim.exposed(device, st.tp_bwd)
                    if st.cp_layer_s:
                        start_cp = env.now
                        yield env.timeout(st.cp_layer_s)
                        device.ledger.comm_s += env.now - start_cp
                    if gatherer:
                        gatherer.reduce(grads)
                    elif final:
                        buckets.add(grads)
                if vstage == 0:
                    yield from sim.compute(device, st.embed_bwd_s)
                yield from sim.compute(device, per_backward_accumulate)
            sim.replica.record(stage, "compute", f"{kind}{op.microbatch}" + (f".{op.chunk}" if v > 1 else ""),
                               "forward" if op.forward else "backward", start)
        if not last_in:  # send to the next virtual stage, blocking like Megatron's p2p of 2021
            nxt = vstage + 1 if op.forward else vstage - 1
            to = nxt % p
            start = env.now
            yield from sim.exposed(device, point_to_point(work.p2p_bytes, sim.replica.placement.hop_tier(stage, to),
                                                          sim.fabric))
            sim.replica.record(stage, "p2p", f"send {kind}{op.microbatch}", "p2p", start)
            sim.arrival(kind, op.microbatch, nxt).succeed()

    if not work.forward_only:
        buckets.flush()
        pending = buckets.issued + (gatherer.reductions if gatherer else [])
        if pending:
            yield from sim.wait(device, env.all_of(pending))
        for sync in work.syncs:
            if stage in sync.stages:
                yield sim.barrier(sync.name, stage, sync.stages)
                start = env.now
                yield from sim.exposed(device, sync.collective)
                sim.replica.record(stage, "comm", sync.name, "sync", start)
        with device.compute.request() as turn:
            yield turn
            start = env.now
            t = sim.kernel_time(device, st.optimizer_s)
            yield env.timeout(t)
            device.ledger.other_s += t
            sim.replica.record(stage, "compute", "optimizer", "optimizer", start)
        if st.gather_after_step:
            start = env.now
            yield from sim.exposed(device, st.gather_after_step)
            sim.replica.record(stage, "comm", "all-gather params", "dp", start)
    device.ledger.end_s = env.now


@dataclass(frozen=True)
class Outcome:
    """A simulated step: its time, the critical stage's breakdown, every stage's ledger, the timeline."""

    step_s: float
    compute_s: float
    comm_s: float
    bubble_s: float
    other_s: float
    critical_stage: int
    ledgers: tuple[Ledger, ...]
    events: int
    spans: tuple[Span, ...] = ()
    link_bytes: dict[str, float] = field(default_factory=dict)


def simulate(work: StepWork, placement: Placement, fabric: Fabric, faults: Faults = Faults(),
             record: bool = False) -> Outcome:
    """Run one step of `work` and return what it took. Deterministic for a given `faults.seed`."""
    env = CountingEnvironment()
    replica = Replica.build(env, placement, fabric.intra.bandwidth, fabric.intra.latency, fabric.inter.bandwidth,
                            fabric.inter.latency, faults, record)
    sim = StepSim(replica, work, fabric, faults)
    sim.tp_peers = placement.tp * placement.cp
    for stage in range(work.pp):
        env.process(stage_worker(sim, stage))
    env.run()
    ledgers = tuple(d.ledger for d in replica.devices)
    step = max(led.end_s for led in ledgers)
    critical = max(range(len(ledgers)), key=lambda s: (ledgers[s].end_s, -s))
    led = ledgers[critical]
    bubble = max(0.0, step - led.compute_s - led.comm_s - led.other_s)
    links = {link.name: link.bytes_sent for d in replica.devices for link in d.ports.values()}
    return Outcome(step_s=step, compute_s=led.compute_s, comm_s=led.comm_s, bubble_s=bubble, other_s=led.other_s,
                   critical_stage=critical, ledgers=ledgers, events=env.events_processed,
                   spans=tuple(replica.spans or ()), link_bytes=links)
