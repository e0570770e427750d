"""What happens in one simulated step: a pipeline stage's schedule, its collectives, its gradient reduction.

One generator per actor, `env` (or the step holding it) first, as in SimPy's carwash.py:
* `stage_worker`    a pipeline stage walking its schedule (gpipe, 1f1b, interleaved) op by op: wait for the
                    input activation or gradient, run the layers on the compute stream with their tensor-
                    parallel collectives on the critical path, send the result to the neighbour stage.
* `run_phases`      a collective as the cost model's algorithm runs it (costmodel.collectives: ring or
                    tree, hierarchical across nodes), each phase a transfer over the rank's port, shared
                    with whatever else crosses it.
* `GradientBuckets` data-parallel reduction of the last micro-batch's gradients in buckets, launched on
                    the communication stream as layers finish their backward (overlap) or after it;
                    interleaved (v > 1), one reduction per model chunk, launched `stage` backward
                    passes after the chunk's last one (Megatron-Core's aligned grad sync).
* `ZeroGatherer`    ZeRO-3/FSDP: each layer's parameters all-gathered before use, `prefetch` layers ahead.
* `ParamGather`     ZeRO 1/2 with overlap_param_gather: the updated parameters gathered in buckets under
                    the forward. With tp_comm_overlap a layer's tensor-parallel chunks run on the ports
                    beside its GEMMs (`StepSim.overlapped`); with overlap_p2p pipeline sends are asynchronous.

What each stage does and how much (seconds per layer, collectives with their groups and sizes) is the
cost model's data (costmodel.work.StepWork), the very data the roofline sums; this module decides when
things happen and what they wait for: who waits for whom, which transfers share a port, and faults.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass

import simpy

from llmsim.costmodel.collectives import Fabric, Phases, p2p_phases
from llmsim.costmodel.work import Comm, Comms, Overlaps, StageWork, StepWork, overlapped_gemm_s
from llmsim.sim.entities import Device, Faults, Replica
from llmsim.sim.schedules import PipeOp, schedule_ops

# PyTorch DDP's default gradient bucket (bucket_cap_mb=25, torch.nn.parallel.DistributedDataParallel).
DEFAULT_BUCKET_BYTES = 25 * 2**20


@dataclass(frozen=True)
class SimOptions:
    """How the simulated framework issues its data-parallel traffic (not part of the priced work)."""

    bucket_bytes: float = DEFAULT_BUCKET_BYTES  # gradient bucket (PyTorch DDP's bucket_cap_mb)
    prefetch: int = 1                            # ZeRO-3 all-gathers issued ahead of use


def run_phases(device: Device, phases: Phases) -> Generator[simpy.Event, None, None]:
    """Run a collective's phases in order on the device's ports (its peers do the same on theirs)."""
    for ph in phases:
        yield from device.port(ph.tier, ph.link).transfer(ph.nbytes, ph.latency_s)


class StepSim:
    """One step of `work` on `replica`: the shared state the actors below read and write."""

    def __init__(self, replica: Replica, work: StepWork, fabric: Fabric, faults: Faults,
                 options: SimOptions = SimOptions()) -> None:
        self.env = replica.env
        self.replica = replica
        self.work = work
        self.fabric = fabric
        self.faults = faults
        self.options = options
        self.rng = random.Random(faults.seed)
        self.tp_peers = replica.placement.tp * replica.placement.cp
        self._arrivals: dict[tuple[str, int, int], simpy.Event] = {}
        self._barriers: dict[str, tuple[simpy.Event, set[int]]] = {}
        self._phases: dict[Comms, Phases] = {}

    def phases(self, comms: Comms) -> Phases:
        """The port phases of a stage's collectives, computed once per distinct tuple."""
        found = self._phases.get(comms)
        if found is None:
            found = self._phases[comms] = tuple(ph for c in comms for ph in c.phases(self.fabric))
        return found

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

    def exposed(self, device: Device, phases: Phases) -> Generator[simpy.Event, None, None]:
        """A collective the compute stream waits for (tensor parallel, pipeline messages)."""
        if not phases:
            return
        start = self.env.now
        yield from run_phases(device, phases)
        device.ledger.comm_s += self.env.now - start

    def overlapped(self, device: Device, items: Overlaps) -> Generator[simpy.Event, None, None]:
        """Collectives pipelined with their GEMMs (tp_comm_overlap): each item's unhidden chunks on the
        critical path, then its hidden chunks on the ports beside its GEMM's seconds on the compute stream;
        the layer goes on when both are done, and waiting beyond the GEMM is exposed communication."""
        for item in items:
            yield from self.exposed(device, self.phases(item.exposed))
            start = self.env.now
            gemm = self.kernel_time(device, item.gemm_s)
            computed = self.env.timeout(gemm)      # the GEMM runs on while this process drives the ports
            yield from run_phases(device, self.phases(item.hidden))
            yield computed                          # at once if the GEMM is already done
            device.ledger.compute_s += gemm
            device.ledger.comm_s += max(0.0, self.env.now - start - gemm)

    def on_comm_stream(self, device: Device, comm: Comm, name: str, category: str) -> simpy.Process:
        """Issue a collective on the device's communication stream (runs in issue order, overlapped)."""
        phases = comm.phases(self.fabric)

        def run() -> Generator[simpy.Event, None, None]:
            with device.comm.request() as turn:
                yield turn
                start = self.env.now
                yield from run_phases(device, phases)
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
        if self.work.overlap_grad_reduce and self.pending >= self.sim.options.bucket_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending <= 0:
            return
        c = Comm(self.work.dp_op, self.pending, self.work.dp_group)
        self.issued.append(self.sim.on_comm_stream(self.device, c, f"{self.work.dp_op} {self.pending / 1e6:.0f} MB",
                                                   "dp"))
        self.pending = 0.0


class ChunkGradSync:
    """Interleaved schedule (v > 1) with overlap_grad_reduce: each model chunk's gradients reduced as one
    collective, issued `stage` backward passes after the chunk's last micro-batch's backward, or after the
    step's last backward if that comes first (Megatron-Core's default `--align-grad-reduce`:
    `config.grad_sync_func` per chunk, megatron/core/pipeline_parallel/schedules.py
    `backward_step_helper_postprocess`; DistributedDataParallel keeps one bucket per chunk on pipeline
    ranks > 0 and for chunks > 0). The roofline's closed form is step.interleaved_reduce_exposed."""

    def __init__(self, buckets: GradientBuckets, stage: int) -> None:
        self.buckets = buckets
        self.delay = stage
        self.done = 0                                  # backward passes finished
        self.final: list[tuple[int, int]] = []         # (its backward's number, chunk) of each chunk final
        self.nbytes: dict[int, float] = {}

    def add(self, chunk: int, nbytes: float) -> None:
        self.nbytes[chunk] = self.nbytes.get(chunk, 0.0) + nbytes

    def backward_done(self, chunk: int, final: bool) -> None:
        """After a backward pass: note a chunk made final, issue the chunks final `delay` passes ago."""
        if final:
            self.final.append((self.done, chunk))
        while self.final and self.final[0][0] + self.delay <= self.done:
            self._issue(self.final.pop(0)[1])
        self.done += 1

    def flush(self) -> None:
        while self.final:
            self._issue(self.final.pop(0)[1])

    def _issue(self, chunk: int) -> None:
        self.buckets.pending += self.nbytes.pop(chunk, 0.0)
        self.buckets.flush()


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
            c = Comm("all-gather", size, work.dp_group)
            self.issued.append(self.sim.on_comm_stream(self.device, c, "all-gather params", "zero"))

    def use(self, k: int) -> simpy.Event:
        """The k-th gather (issuing it and the next `prefetch` if not yet issued)."""
        self._issue_through(k + self.sim.options.prefetch)
        return self.issued[k]

    def reduce(self, nbytes: float) -> None:
        c = Comm("reduce-scatter", nbytes, self.sim.work.dp_group)
        self.reductions.append(self.sim.on_comm_stream(self.device, c, "reduce-scatter grads", "zero"))


class ParamGather:
    """overlap_param_gather (ZeRO 1/2): the all-gather of the parameters the previous step's optimizer
    updated in shards, issued in buckets of `bucket_bytes` on the communication stream as the step starts,
    in the order the forward uses the layers; each layer's first forward waits for its bucket (Megatron-
    Core's forward pre-hook, megatron/core/distributed/distributed_data_parallel.py). One step is
    simulated, so the gather it waits for is the previous step's, as in the steady state."""

    def __init__(self, sim: StepSim, device: Device, units: list[tuple[int, float]]) -> None:
        self.bucket: dict[int, simpy.Process] = {}   # first-use index of a layer unit -> its bucket's gather
        pending: list[int] = []
        size = 0.0
        for index, nbytes in units:
            pending.append(index)
            size += nbytes
            if size >= sim.options.bucket_bytes or index == units[-1][0]:
                c = Comm("all-gather", size, sim.work.dp_group)
                gather = sim.on_comm_stream(device, c, f"all-gather params {size / 1e6:.0f} MB", "dp")
                self.bucket.update({i: gather for i in pending})
                pending, size = [], 0.0

    def ready(self, index: int) -> simpy.Event | None:
        """The gather a unit waits for before its first forward, once; None after."""
        return self.bucket.pop(index, None)


class ChunkParamGather:
    """overlap_param_gather with the interleaved schedule (v > 1): one all-gather per model chunk, chunks 0
    and 1 issued as the step starts, chunk c >= 2 at the forward (c-1)*pp - stage (Megatron-Core's default
    `--align-param-gather`: `config.param_sync_func` per chunk, megatron/core/pipeline_parallel/schedules.py
    `forward_step_helper_preprocess`); a chunk's first forward waits for its own. The roofline's closed form
    is step.interleaved_gather_exposed."""

    def __init__(self, sim: StepSim, device: Device, stage: int, sizes: list[float]) -> None:
        self.sim, self.device, self.stage = sim, device, stage
        self.sizes = sizes                           # bytes of each chunk's gather
        self.issued: dict[int, simpy.Process] = {}
        self.used: set[int] = set()                  # chunks whose first forward has run
        self.forwards = 0                            # forward passes begun
        for chunk in range(min(2, len(sizes))):
            self._issue(chunk)

    def _issue(self, chunk: int) -> None:
        if self.sizes[chunk] > 0 and chunk not in self.issued and chunk not in self.used:
            c = Comm("all-gather", self.sizes[chunk], self.sim.work.dp_group)
            self.issued[chunk] = self.sim.on_comm_stream(self.device, c, f"all-gather params chunk {chunk}", "dp")

    def forward_begins(self) -> None:
        """Before a forward pass: issue the chunk after the one whose first micro-batch is `stage` passes on."""
        p = self.sim.work.pp
        ahead = self.forwards + self.stage
        if ahead < p * len(self.sizes) and ahead % p == 0 and 2 <= ahead // p + 1 < len(self.sizes):
            self._issue(ahead // p + 1)
        self.forwards += 1

    def ready(self, chunk: int) -> simpy.Process | None:
        """The gather chunk `chunk`'s first forward waits for, once (issued now if not yet); None after."""
        self._issue(chunk)
        self.used.add(chunk)
        return self.issued.pop(chunk, None)


def _units(work: StepWork, st: StageWork, stage: int, op: PipeOp) -> list[tuple[float, float, bool]]:
    """(parameter bytes, gradient bytes, whether it is a layer) of each unit of `op`, in the order it runs
    them: its layers, the embedding (head) folded into the first (last) one; a stage without layers (the
    embedding or the head alone, an uneven split) has that edge as its one unit, which runs no layer."""
    p, v = work.pp, work.v
    vstage = op.chunk * p + stage
    units = [(st.param_bytes_layer, st.grad_bytes_layer, True) for _ in range(st.layers)]
    for edge, params, grads in ((vstage == 0, st.param_bytes_embed, st.grad_bytes_embed),
                                (vstage == p * v - 1, st.param_bytes_head, st.grad_bytes_head)):
        if edge and not units:
            units.append((0.0, 0.0, False))
    if vstage == 0 and units:
        units[0] = (units[0][0] + st.param_bytes_embed, units[0][1] + st.grad_bytes_embed, units[0][2])
    if vstage == p * v - 1 and units:
        units[-1] = (units[-1][0] + st.param_bytes_head, units[-1][1] + st.grad_bytes_head, units[-1][2])
    return units if op.forward else units[::-1]


def _send(sim: StepSim, device: Device, message: Phases, name: str,
          arrived: simpy.Event) -> Generator[simpy.Event, None, None]:
    """An asynchronous pipeline send (overlap_p2p): the message on the sender's port while it computes on."""
    start = sim.env.now
    yield from run_phases(device, message)
    sim.replica.record(device.stage, "p2p", name, "p2p", start)
    arrived.succeed()


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
    chunked = ChunkGradSync(buckets, stage) if v > 1 and work.overlap_grad_reduce and work.dp_group.size > 1 else None
    zero3 = work.zero >= 3 and work.dp_group.size > 1 and not work.forward_only
    gatherer = ZeroGatherer(sim, device, [u[0] for op in ops for u in _units(work, st, stage, op)]) if zero3 else None
    per_backward_accumulate = st.accumulate_s / (m * v) if m * v else 0.0
    gather_index = 0
    updated: ParamGather | None = None
    chunk_gather: ChunkParamGather | None = None
    if work.overlap_param_gather and st.gather_after_step and not work.forward_only and v > 1:
        chunk_gather = ChunkParamGather(sim, device, stage, [sum(u[0] for u in _units(work, st, stage,
                                                                                     PipeOp(True, 0, chunk)))
                                                             for chunk in range(v)])
    elif work.overlap_param_gather and st.gather_after_step and not work.forward_only:
        sizes = [u[0] for chunk in range(v) for u in _units(work, st, stage, PipeOp(True, 0, chunk))]
        updated = ParamGather(sim, device, [(k, nbytes) for k, nbytes in enumerate(sizes) if nbytes > 0])
    fwd_gemm = overlapped_gemm_s(st.tp_fwd_overlap)
    bwd_gemm = overlapped_gemm_s(st.tp_bwd_overlap)
    recompute_gemm = overlapped_gemm_s(st.tp_recompute_overlap)
    sending: simpy.Process | None = None   # overlap_p2p: the send in flight

    for i, op in enumerate(ops):
        vstage = op.chunk * p + stage
        kind = "F" if op.forward else "B"
        first_in, last_in = (vstage == 0, vstage == last_vstage) if op.forward else (vstage == last_vstage, vstage == 0)
        if not first_in:  # wait for the neighbour's activation (forward) or gradient (backward): the bubble
            yield sim.arrival(kind, op.microbatch, vstage)
            yield from sim.exposed(device, sim.phases(st.recv_gather))
        units = _units(work, st, stage, op)
        with device.compute.request() as turn:
            yield turn
            start = env.now
            if op.forward:
                if chunk_gather:
                    chunk_gather.forward_begins()
                    first_use = chunk_gather.ready(op.chunk)
                    if first_use is not None:
                        yield from sim.wait(device, first_use)
                if vstage == 0:
                    yield from sim.compute(device, st.embed_fwd_s)
                    yield from sim.exposed(device, sim.phases(st.tp_embed))
                for k, (_, _, layer) in enumerate(units):
                    if gatherer:
                        yield from sim.wait(device, gatherer.use(gather_index))
                        gather_index += 1
                    if updated:
                        ready = updated.ready(op.chunk * st.layers + k)
                        if ready is not None:
                            yield from sim.wait(device, ready)
                    if layer:
                        yield from sim.compute(device, st.fwd_layer_s - fwd_gemm)
                        yield from sim.exposed(device, sim.phases(st.tp_fwd))
                        yield from sim.overlapped(device, st.tp_fwd_overlap)
                if vstage == last_vstage:
                    yield from sim.compute(device, st.head_fwd_s)
                    yield from sim.exposed(device, sim.phases(st.logits_gather))
            else:
                final = last_backward[op.chunk] == i
                if vstage == last_vstage:
                    yield from sim.compute(device, st.head_bwd_s)
                    yield from sim.exposed(device, sim.phases(st.tp_head))
                for params, grads, layer in units:
                    if gatherer:
                        yield from sim.wait(device, gatherer.use(gather_index))
                        gather_index += 1
                    if layer and st.recompute_layer_s:
                        yield from sim.compute(device, st.recompute_layer_s - recompute_gemm)
                        yield from sim.exposed(device, sim.phases(st.tp_recompute))
                        yield from sim.overlapped(device, st.tp_recompute_overlap)
                    if layer:
                        yield from sim.compute(device, st.bwd_layer_s - bwd_gemm)
                        yield from sim.exposed(device, sim.phases(st.tp_bwd))
                        yield from sim.overlapped(device, st.tp_bwd_overlap)
                    if layer and st.cp_layer_s:
                        start_cp = env.now
                        yield env.timeout(st.cp_layer_s)
                        device.ledger.comm_s += env.now - start_cp
                    if gatherer:
                        gatherer.reduce(grads)
                    elif final and chunked:
                        chunked.add(op.chunk, grads)
                    elif final:
                        buckets.add(grads)
                if vstage == 0:
                    yield from sim.compute(device, st.embed_bwd_s)
                yield from sim.compute(device, per_backward_accumulate)
                if chunked:
                    chunked.backward_done(op.chunk, final)
            sim.replica.record(stage, "compute", f"{kind}{op.microbatch}" + (f".{op.chunk}" if v > 1 else ""),
                               "forward" if op.forward else "backward", start)
        if not last_in:  # send to the next virtual stage
            nxt = vstage + 1 if op.forward else vstage - 1
            tier = sim.replica.placement.hop_tier(stage, nxt % p)
            message = p2p_phases(work.p2p_bytes, sim.fabric.channel(tier), tier)
            arrived = sim.arrival(kind, op.microbatch, nxt)
            if work.overlap_p2p:  # asynchronous: the previous send must be done first (its wait handle)
                if sending is not None:
                    yield from sim.wait(device, sending)
                sending = env.process(_send(sim, device, message, f"send {kind}{op.microbatch}", arrived))
            else:  # blocking, like Megatron's p2p of 2021 (batch_isend_irecv, wait, synchronize)
                start = env.now
                yield from sim.exposed(device, message)
                sim.replica.record(stage, "p2p", f"send {kind}{op.microbatch}", "p2p", start)
                arrived.succeed()

    if sending is not None:
        yield from sim.wait(device, sending)
    if not work.forward_only:
        if chunked:
            chunked.flush()
        buckets.flush()
        pending = buckets.issued + (gatherer.reductions if gatherer else [])
        if pending:
            yield from sim.wait(device, env.all_of(pending))
        for sync in work.syncs:
            if stage in sync.stages:
                yield sim.barrier(sync.name, stage, sync.stages)
                start = env.now
                yield from sim.exposed(device, sim.phases((sync.comm,)))
                sim.replica.record(stage, "comm", sync.name, "sync", start)
        with device.compute.request() as turn:
            yield turn
            start = env.now
            t = sim.kernel_time(device, st.optimizer_s)
            yield env.timeout(t)
            device.ledger.other_s += t
            sim.replica.record(stage, "compute", "optimizer", "optimizer", start)
        if st.gather_after_step and updated is None and chunk_gather is None:
            start = env.now
            yield from sim.exposed(device, sim.phases(st.gather_after_step))
            sim.replica.record(stage, "comm", "all-gather params", "dp", start)
    device.ledger.end_s = env.now
