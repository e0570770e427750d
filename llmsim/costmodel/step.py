"""The roofline: one step of a case as the closed-form sum of its work (costmodel.work).

Each pipeline stage's own time is summed from the data (each holds its own layers, Plan.layers_per_stage),
and the step is that of the stage which, with the fill and drain of the pipeline it waits, finishes last
(the critical one):

    stage(s)  = m * (compute_mb + comm_mb) + accumulate        every micro-batch through the stage
    busy(s)   = stage(s) + exposed data-parallel / ZeRO / sharing sync after the last backward + optimizer
    bubble(s) = sum over the other stages r of stage(r) / (v m)  the fill and drain pass each other stage once
    step      = max over stages of busy(s) + bubble(s)

With equal stages the bubble is Narayanan et al. 2021's (p-1)/(v m) of a stage's time (pipeline.py); with
uneven ones each lighter stage adds only its own time per micro-batch to the fill and drain (a flow shop
of identical jobs, price()), as the `cluster` backend's simulation plays it (docs/costmodel.md).

The breakdown columns are defined once (docs/results.md) and the cluster simulation reports the same
split: compute, exposed communication and other (optimizer) of the critical stage, and the bubble = the
rest of the step it spends waiting.

Exposure: the tensor-parallel collectives, pipeline messages and ring-attention excess are on the
critical path (comm_mb); with tp_comm_overlap each tensor-parallel collective hides under its GEMM but
for a pipeline's last chunk (work.Overlapped), with overlap_p2p a pipeline send hides under the sender's
next model chunk. The data-parallel reduction (ZeRO 0-2) runs after the last micro-batch's backward and,
with overlap_grad_reduce, hides behind that backward (interleaved: chunk by chunk under the cool-down's
remaining backward, interleaved_reduce_exposed); ZeRO-3's per-micro-batch gathers and
reduce-scatters are prefetched under the micro-batches' compute; ZeRO 1/2 all-gather the updated
parameters after the optimizer, or with overlap_param_gather under the next step's first forward (but
the first layer's, which that forward waits for; interleaved: chunk by chunk, interleaved_gather_exposed). A device whose collectives run on the cores that
compute (DeviceSpec.overlaps_communication False: gloo on a CPU host) hides nothing.

Inference: prefill is one forward pass; decode = prefill (time to first token) + (n-1) token steps, each
a forward of one token per sequence reading the weights and the KV cache (costmodel.work.forward_work).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from llmsim.costmodel.arrays import Num, is_array, maximum, pick
from llmsim.costmodel.cluster import ClusterSpec, Group, plan_on
from llmsim.costmodel.collectives import Fabric
from llmsim.costmodel.compute import CostModelError, workload_rates
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.memory import MemoryBreakdown, memory_breakdown
from llmsim.costmodel.pipeline import bubble_fraction
from llmsim.costmodel.plan import Options, Plan
from llmsim.costmodel.work import (Comm, StageWork, StepWork, comms_time, forward_work, overlaps_time,
                                   train_work)

if TYPE_CHECKING:
    from llmsim.config import SharingChoice, Workload
    from llmsim.workload.profile import WorkloadProfile

__all__ = ["CostModelError", "StepBreakdown", "StepTimes", "estimate", "price", "single_device_step_time"]


@dataclass(frozen=True)
class StepBreakdown:
    """Modeled step: times in seconds (step = compute + comm + bubble + other), memory, energy."""

    step_time_s: float
    compute_time_s: float
    comm_time_s: float
    bubble_time_s: float
    other_time_s: float
    memory: MemoryBreakdown
    memory_capacity_bytes: float
    model_flops: float
    peak_flops: float
    n_devices: int
    energy_j: float
    ttft_s: float | None = None
    tpot_s: float | None = None
    comm_detail: dict[str, float] = field(default_factory=dict)
    critical_stage: int = 0

    @property
    def fits(self) -> bool:
        """False when the busiest device needs more than it has (capacity 0 = unknown: assumed to fit)."""
        return self.memory.fits(self.memory_capacity_bytes)

    @property
    def mfu(self) -> float:
        return self.model_flops / self.step_time_s / self.n_devices / self.peak_flops


@dataclass(frozen=True)
class StepTimes:
    """Where a step's time goes on its critical stage, in seconds (the result columns' definitions)."""

    compute: float
    comm: float
    bubble: float
    other: float
    critical_stage: int = 0
    ttft: float | None = None
    tpot: float | None = None
    detail: dict[str, float] = field(default_factory=dict)
    # The stages' mean of compute + other (each stage's own busy time): the energy's busy part. Uneven stages are
    # busy for different times; every device waits the critical stage's step, but only its own stage's compute
    # draws busy power (as the simulation's ledgers count it). None: every stage busy as the critical one.
    stage_busy_mean: float | None = None

    @property
    def step(self) -> float:
        return self.compute + self.comm + self.bubble + self.other

    @property
    def device_busy(self) -> float:
        """Seconds a device computes in the step, the mean over the pipeline's stages (`stage_busy_mean`), where
        costmodel.energy.step_energy_j charges busy power."""
        return self.compute + self.other if self.stage_busy_mean is None else self.stage_busy_mean


def _per_microbatch(work: StepWork, st: StageWork, fabric: Fabric) -> tuple[float, float, float]:
    """(compute, exposed communication, backward compute) of one micro-batch through stage `st`."""
    layers = work.layers_on(st)
    compute = (layers * (st.fwd_layer_s + st.bwd_layer_s + st.recompute_layer_s)
               + st.embed_fwd_s + st.embed_bwd_s + st.head_fwd_s + st.head_bwd_s)
    per_layer = (comms_time(st.tp_fwd + st.tp_recompute + st.tp_bwd, fabric) + st.cp_layer_s
                 + overlaps_time(st.tp_fwd_overlap + st.tp_recompute_overlap + st.tp_bwd_overlap, fabric))
    comm = (layers * per_layer + comms_time(st.tp_embed + st.tp_head + st.logits_gather, fabric)
            + _pipeline_exposed(work, st, fabric))
    return compute, comm, layers * (st.bwd_layer_s + st.recompute_layer_s)


def _pipeline_exposed(work: StepWork, st: StageWork, fabric: Fabric) -> float:
    """Exposed pipeline messages of one micro-batch through stage `st`: a message each way per model chunk
    (a forward only: one), each followed by the receiver's all-gather when it was scattered. Blocking sends
    expose the whole message; with overlap_p2p a send runs under the op that follows it on the sender (in
    the steady state of 1F1B a forward's under a backward, a backward's under a forward) and only what
    that chunk's compute does not cover is exposed."""
    if work.p2p is None:
        return 0.0
    send, gather = work.p2p.time(fabric), comms_time(st.recv_gather, fabric)
    if work.forward_only:
        return work.v * (send + gather)
    if not work.overlap_p2p:
        return 2 * work.v * (send + gather)
    forward_chunk = st.layers * st.fwd_layer_s
    backward_chunk = st.layers * (st.bwd_layer_s + st.recompute_layer_s)
    return work.v * (max(0.0, send - backward_chunk) + max(0.0, send - forward_chunk) + 2 * gather)


def _data_parallel(work: StepWork, st: StageWork, backward_mb: float, fabric: Fabric, stage: int = 0) -> float:
    """Exposed gradient reduction and parameter gathers of pipeline stage `stage` (its work `st`) after its
    pipelined micro-batches: the collectives' times alone (cached per collective), combined by
    `data_parallel_exposed` (ZeRO-3: `zero3_exposed`, unit by unit)."""
    if work.forward_only:
        return 0.0
    grads = work.grad_bytes(st)
    zero3 = reduce = gather = 0.0
    chunks = (0.0, 0.0, 0.0)
    if work.zero >= 3:
        *windows, lp, ep, hp, lg, eg, hg = zero3_unit_terms(work, st, fabric)
        zero3 = zero3_exposed(work.microbatches, not work.comm_shares_cores, *windows,
                              *zero3_unit_times(work.dp_group, fabric, lp, ep, hp, lg, eg, hg))
    else:
        reduce = Comm(work.dp_op, grads, work.dp_group).time(fabric)
        if work.v > 1:
            chunks = chunk_reduce_times(work, st, fabric)
        gather = comms_time(st.gather_after_step, fabric)
        if work.overlap_param_gather and not work.comm_shares_cores and st.gather_after_step:
            gather = _param_gather_exposed(work, st, fabric, stage)
    return data_parallel_exposed(work.zero, not work.comm_shares_cores, work.overlap_grad_reduce, backward_mb, zero3,
                                 reduce, gather, work.v, work.pp, stage, chunks)


def zero3_unit_terms(work: StepWork, st: StageWork, fabric: Fabric) -> tuple[float, ...]:
    """What `zero3_exposed` needs of stage `st`, but for its collectives' times (those follow the data-parallel
    group: `zero3_unit_times` of the last six): (units per micro-batch, a layer's forward window s, its
    backward window s, what the first unit's forward and backward windows add (the embedding's compute) and
    the last unit's (the head's compute and the tensor-parallel reduction of its input gradient), parameter bytes of a layer, of the embedding, of the head, gradient bytes of a layer, of the embedding, of
    the head). A unit is a Transformer layer, the embedding (head) folded into the stage's first (last) one,
    as the simulation gathers them (llmsim.sim.processes._units); a stage without layers gathers nothing.
    A window is what one layer's pass keeps the compute stream busy: its compute and the tensor-parallel
    (context-parallel) communication it waits for."""
    forward = st.fwd_layer_s + comms_time(st.tp_fwd, fabric) + overlaps_time(st.tp_fwd_overlap, fabric)
    backward = (st.bwd_layer_s + st.recompute_layer_s + comms_time(st.tp_bwd + st.tp_recompute, fabric)
                + overlaps_time(st.tp_bwd_overlap + st.tp_recompute_overlap, fabric) + st.cp_layer_s)
    head_backward = st.head_bwd_s + comms_time(st.tp_head, fabric)
    return (float(work.layers_on(st)), forward, backward, st.embed_fwd_s, st.embed_bwd_s, st.head_fwd_s,
            head_backward, st.param_bytes_layer, st.param_bytes_embed, st.param_bytes_head, st.grad_bytes_layer,
            st.grad_bytes_embed, st.grad_bytes_head)


def zero3_unit_times(group: Group, fabric: Fabric, layer_params: float, embed_params: float, head_params: float,
                     layer_grads: float, embed_grads: float, head_grads: float) -> tuple[float, ...]:
    """Seconds alone of ZeRO-3's per-unit collectives over the data-parallel `group`: (all-gather of a middle
    layer, of the first unit, of the last unit, of a one-layer stage's only unit; reduce-scatter of the same
    four). One collective per unit, each with its own launch and ring latency (costmodel.collectives)."""
    def both(params: float, grads: float) -> tuple[float, float]:
        return Comm("all-gather", params, group).time(fabric), Comm("reduce-scatter", grads, group).time(fabric)
    units = (both(layer_params, layer_grads), both(layer_params + embed_params, layer_grads + embed_grads),
             both(layer_params + head_params, layer_grads + head_grads),
             both(layer_params + embed_params + head_params, layer_grads + embed_grads + head_grads))
    return tuple(g for g, _ in units) + tuple(r for _, r in units)


def zero3_exposed(m: Num, hides: bool, units: Num, window_f: Num, window_b: Num, first_f: Num, first_b: Num,
                  last_f: Num, last_b: Num, gather_mid: Num, gather_first: Num, gather_last: Num, gather_only: Num,
                  reduce_mid: Num, reduce_first: Num, reduce_last: Num, reduce_only: Num) -> Num:
    """Exposed ZeRO-3 / FSDP seconds of one stage per step (numbers or columns over candidates).

    Every unit (a layer; the stage's first and last carry the embedding and the head, `zero3_unit_terms`) is
    all-gathered before its forward and again before its backward, and its gradients are reduce-scattered
    after its backward: `units` collectives of each per micro-batch, issued on one communication stream one
    unit ahead of the compute (PyTorch FSDP's BackwardPrefetch.BACKWARD_PRE and forward prefetch, at most two
    units in flight with limit_all_gathers, torch/distributed/fsdp; DeepSpeed stage 3's prefetch bucket,
    deepspeed/runtime/zero/partitioned_param_coordinator.py; the memory model holds the same two units,
    costmodel.memory.zero3_gathered). With a look-ahead of one, a unit's pass hides the next unit's gather
    (backward: and the previous unit's reduce-scatter), no more: in the steady state each forward unit
    costs max(window_f, gather) and each backward one max(window_b, gather + reduce-scatter), so

        exposed = m x sum over units of [max(0, gather - window_f) + max(0, gather + reduce - window_b)]
                  + the step's first gather + its last reduce-scatter (nothing runs before or after them)

    `gather_*`/`reduce_*`: the middle layers', the first unit's, the last unit's, and the only unit's of a
    one-layer stage (`zero3_unit_times`); the first (last) unit's windows are longer by `first_f`, `first_b`
    (`last_f`, `last_b`): the embedding's (head's) passes, which run beside the gathers too. Not pooled over the step: the communication of one unit cannot
    hide under the compute of a unit two or more ahead, and each unit's collective pays its own latency
    (at 1024 ranks the ring's (n-1) steps are milliseconds). A device whose collectives run on the compute
    cores (`hides` False) exposes every collective. Idle time in pipeline bubbles is not counted as a window
    (an upper bound with pp > 1)."""
    middle = maximum(units - 2, 0)
    several = units >= 2

    def unit(gather: Num, reduce: Num, more_f: Num = 0.0, more_b: Num = 0.0) -> Num:
        if not hides:
            return 2 * gather + reduce
        return maximum(0.0, gather - window_f - more_f) + maximum(0.0, gather + reduce - window_b - more_b)
    per_microbatch = (middle * unit(gather_mid, reduce_mid)
                      + pick(several, unit(gather_first, reduce_first, first_f, first_b)
                             + unit(gather_last, reduce_last, last_f, last_b),
                             pick(units >= 1, unit(gather_only, reduce_only, first_f + last_f, first_b + last_b), 0.0)))
    if not hides:
        return m * per_microbatch
    edges = pick(several, gather_first + reduce_first, pick(units >= 1, gather_only + reduce_only, 0.0))
    return m * per_microbatch + edges


def chunk_reduce_times(work: StepWork, st: StageWork, fabric: Fabric) -> tuple[float, float, float]:
    """Seconds of the gradient reduction (`work.dp_op`) of one model chunk of stage `st` alone, for the chunk
    whose gradients are final first in a step (chunk v-1: with the LM head's on the last stage), a middle one
    (its layers only) and the one final last (chunk 0: with the embedding's on the first stage). Megatron-Core
    keeps one gradient buffer per model chunk (one DistributedDataParallel per chunk, `get_model`)."""
    layers = st.layers * st.grad_bytes_layer
    return (Comm(work.dp_op, layers + st.grad_bytes_head, work.dp_group).time(fabric),
            Comm(work.dp_op, layers, work.dp_group).time(fabric),
            Comm(work.dp_op, layers + st.grad_bytes_embed, work.dp_group).time(fabric))


def data_parallel_exposed(zero: Num, hides: bool, overlap_grad_reduce: bool, backward_mb: Num, zero3_s: Num,
                          reduce_s: Num, gather_s: Num, v: Num = 1, pp: Num = 1, stage: Num = 0,
                          chunk_s: tuple[Num, Num, Num] = (0.0, 0.0, 0.0)) -> Num:
    """Exposed data-parallel seconds of pipeline stage `stage` per step (numbers or columns over candidates).

    ZeRO-3: `zero3_s`, the exposed per-unit gathers and reduce-scatters of the whole step (`zero3_exposed`).
    ZeRO 0-2: the gradient reduction `reduce_s` after the last backward, with overlap_grad_reduce hidden
    behind that backward (`backward_mb`) when the device `hides` communication or, with v > 1 model chunks
    (interleaved), chunk by chunk under the cool-down's remaining backward (`interleaved_reduce_exposed`,
    `chunk_s` its chunks' reductions); plus the parameter gather after the step `gather_s` (ZeRO 1/2;
    already its exposed part with overlap_param_gather)."""
    if overlap_grad_reduce and hides:
        chunked = interleaved_reduce_exposed(maximum(v, 1), pp, stage, *chunk_s, backward_mb / maximum(v, 1))
        reduce = pick(v > 1, chunked, maximum(0.0, reduce_s - backward_mb))
    else:
        reduce = reduce_s
    return pick(zero >= 3, zero3_s, reduce + gather_s)


def interleaved_reduce_exposed(v: Num, pp: Num, stage: Num, first_s: Num, middle_s: Num, last_s: Num,
                               backward_chunk_s: Num) -> Num:
    """Exposed seconds of the per-chunk gradient reductions of pipeline rank `stage` with the interleaved
    schedule (v model chunks, pp stages) and overlap_grad_reduce, as Megatron-Core runs them by default
    (`--align-grad-reduce`, megatron/training/training.py: `config.grad_sync_func` = each chunk's
    `start_grad_sync`; megatron/core/pipeline_parallel/schedules.py, `backward_step_helper_postprocess`).

    Each chunk's reduction is issued as one collective (one bucket: DistributedDataParallel turns bucketing
    off on pipeline ranks > 0 and for chunks > 0) `stage` backward passes after its last micro-batch's
    backward (launches aligned across the pipeline group), or after the step's last backward if that comes
    first, and the reductions run one after another on the communication stream. The last group of pp
    micro-batches (Megatron's microbatch_group_size_per_vp_stage = pp) runs its chunks' backwards in the
    order v-1, ..., 0, pp micro-batches each, so the chunk with k chunks still to finish after it (k = 0 for
    chunk 0, whose reduction is exposed whole) is issued (k*pp - stage) chunk backwards
    (`backward_chunk_s` each) before the end. A FIFO server's finishing time (Lindley's recursion) is the
    latest issue time plus the work queued from it, so the stage waits after its last backward

        exposed = max over k of ( -(k*pp - stage) * backward_chunk_s * [k > 0] + sum of the reductions of
                  the chunks k, ..., 0 )

    with chunk v-1's reduction `first_s`, chunk 0's `last_s`, the others `middle_s` (chunk_reduce_times).
    Only the backward passes after an issue hide it: the forwards of the steady state and the cool-down's
    idle waits, which also pass under the communication, are not counted (an upper bound). Every argument
    may be a column (one value per candidate)."""
    exposed, queued = last_s, last_s
    top = int(np.max(v)) if is_array(v) else int(v)
    for k in range(1, top):
        queued = queued + pick(k == v - 1, first_s, middle_s)
        exposed = pick(k < v, maximum(exposed, queued - (k * pp - stage) * backward_chunk_s), exposed)
    return exposed


def _param_gather_exposed(work: StepWork, st: StageWork, fabric: Fabric, stage: int = 0) -> float:
    """overlap_param_gather: the updated parameters are gathered layer by layer, in forward order, while the
    next step's first forward runs, and each layer waits for its own. Gathers back to back (G_k done at the
    k-th) against a forward that reaches layer k after C_k of compute: the forward waits max_k (G_k - C_k)
    in all, the max of an even stage's sequence at one of its ends: the first layer (with the embedding on
    the first stage), which nothing hides, or the last, whose gather only the layers before it hide.
    Interleaved (v > 1): chunk by chunk, `interleaved_gather_exposed`."""
    if work.v > 1:
        layers = st.layers * st.param_bytes_layer
        chunks = [layers + (st.param_bytes_embed if c == 0 else 0.0) + (st.param_bytes_head if c == work.v - 1 else 0.0)
                  for c in range(work.v)]
        return interleaved_gather_exposed(work.pp, stage, [Comm("all-gather", b, work.dp_group).time(fabric)
                                                           for b in chunks], st.layers * st.fwd_layer_s)
    first = st.param_bytes_layer + st.param_bytes_embed
    alone = Comm("all-gather", first, work.dp_group).time(fabric)
    whole = Comm("all-gather", work.param_bytes(st), work.dp_group).time(fabric)
    before_last = (work.layers_on(st) - 1) * st.fwd_layer_s + st.embed_fwd_s
    return max(alone, whole - before_last)


def interleaved_gather_exposed(pp: int, stage: int, gathers: list[float], forward_chunk_s: float) -> float:
    """Seconds pipeline rank `stage` waits in its first forwards for the parameters the previous step's
    optimizer updated, with the interleaved schedule and overlap_param_gather, as Megatron-Core runs it by
    default (`--align-param-gather`: `config.param_sync_func` = each chunk's `start_param_sync`,
    megatron/training/training.py; megatron/core/pipeline_parallel/schedules.py: chunks 0 and 1 launched as
    the step starts, chunk c >= 2 at the forward (c-1)*pp - stage, `forward_step_helper_preprocess`).

    `gathers[c]`: chunk c's all-gather alone (one bucket per chunk: DistributedDataParallel turns bucketing
    off on pipeline ranks > 0 and for chunks > 0), run one after another on the communication stream; each
    chunk's first forward waits for its own (the forward pre-hook). The first group of pp micro-batches
    runs chunk c's forwards (`forward_chunk_s` each) from the forward c*pp on, after the waits before it
    (W_c in all up to chunk c's):

        issue_c = 0 (c < 2), (c-1)*pp*f - stage*f + W_{c-2} (c >= 2)     f = forward_chunk_s
        done_c  = max(done_{c-1}, issue_c) + gathers[c]
        W_c     = max(W_{c-1}, done_c - c*pp*f)

    and the stage waits W_{v-1}. Only forwards count: the warm-up's forwards run back to back (a stage
    whose warm-up ends inside the first group also runs backwards there, which hide more: an upper bound),
    and the first pipeline rank's bucketed chunk 0 is priced as one bucket."""
    f = forward_chunk_s
    waits = [0.0, 0.0]                      # W_{c-2}, W_{c-1}
    done = 0.0
    for c, gather in enumerate(gathers):
        issue = 0.0 if c < 2 else ((c - 1) * pp - stage) * f + waits[0]
        done = max(done, issue) + gather
        waits = [waits[1], max(waits[1], done - c * pp * f)]
    return waits[1]


# Relative difference under which two stages' finishing times are one (float summation order, not a model).
_SAME_FINISH = 1e-12


def price(work: StepWork, fabric: Fabric) -> StepTimes:
    """The roofline of one step of `work`: each stage's own busy time plus the fill and drain it waits, which
    pass every other stage once; the step is the largest of these, on the critical stage c (module doc):

        bubble(c) = bubble_fraction / (p - 1) * sum over s != c of stage(s)   (= (p-1)/(v m) * stage, equal stages)
        step      = max over c of busy(c) + bubble(c)

    A pipeline step is a flow shop of m identical jobs (micro-batches) over p machines (stages): its makespan
    is the bottleneck machine's m jobs plus one pass of each other machine (Pinedo, "Scheduling: Theory,
    Algorithms, and Systems", 5th ed., Ch. 6, permutation flow shops); with equal stages that is Narayanan
    et al. 2021's (p-1)/m bubble (1/v of it interleaved)."""
    m = work.microbatches
    schedule = "gpipe" if work.forward_only else work.schedule
    fraction = bubble_fraction(schedule, work.pp, m, work.v)
    alike: dict[object, StageParts] = {}  # stages alike share one StageWork: price it once
    parts = []
    for index, st in enumerate(work.stages):
        # the interleaved reductions' launches depend on the pipeline rank (interleaved_reduce_exposed)
        key = (id(st), index if work.v > 1 else 0)
        if key not in alike:
            compute_mb, comm_mb, backward_mb = _per_microbatch(work, st, fabric)
            alike[key] = StageParts(compute_mb, comm_mb,
                                    _data_parallel(work, st, backward_mb, fabric, index),
                                    st.accumulate_s, 0.0, st.optimizer_s)
        sync = sum(s.comm.time(fabric) for s in work.syncs if index in s.stages)
        parts.append((index, replace(alike[key], sync_s=sync)))
    return combine_stages(m, fraction, work.pp, parts)


@dataclass(frozen=True)
class StageParts:
    """One stage's share of a step, seconds (numbers, or columns over candidates): per micro-batch its
    compute and exposed communication, per step its exposed data-parallel time, gradient accumulation,
    parameter-sharing sync and optimizer; `copies`: how many stages of the pipeline are this one (the
    planner's table passes each distinct stage once; 0 = no stage)."""

    compute_mb: Num
    comm_mb: Num
    data_parallel_s: Num
    accumulate_s: Num
    sync_s: Num
    optimizer_s: Num
    copies: Num = 1


def combine_stages(m: Num, fraction: Num, pp: Num, parts: list[tuple[int, StageParts]]) -> StepTimes:
    """The step from its stages' parts (`price`; the planner's table passes columns, each distinct stage once
    with its `copies`): stage s is busy for m x (compute + comm) + accumulation (its pipelined time) +
    data-parallel + sync + optimizer and waits the fill and drain through every other stage once,
    fraction / (p - 1) x (sum of the pipelined times - its own) (the flow shop of `price`); the critical
    stage is the one that finishes last, of stages finishing together the one busy longest, then the first."""
    per_other = pick(pp > 1, fraction / maximum(pp - 1, 1), 0.0)
    pipelined = [m * (p.compute_mb + p.comm_mb) + p.accumulate_s for _, p in parts]
    total: Num = 0.0
    busy: Num = 0.0
    stages: Num = 0.0
    for (_, p), own in zip(parts, pipelined):
        total = total + p.copies * own
        busy = busy + p.copies * (m * p.compute_mb + p.accumulate_s + p.optimizer_s)
        stages = stages + p.copies
    busy_mean = busy / maximum(stages, 1)
    best: StepTimes | None = None
    for (index, p), own in zip(parts, pipelined):
        times = StepTimes(compute=m * p.compute_mb + p.accumulate_s, comm=m * p.comm_mb + p.data_parallel_s + p.sync_s,
                          bubble=per_other * (total - own), other=p.optimizer_s, critical_stage=index,
                          detail={"pipeline_and_tensor": m * p.comm_mb, "data_parallel": p.data_parallel_s,
                                  "sharing_sync": p.sync_s}, stage_busy_mean=busy_mean)
        if best is None:
            best = times
            continue
        # Finishing times within _SAME_FINISH are one (float summation order; one micro-batch: every stage
        # waits all the others): the stage busy longest is critical, as the simulation blames it.
        new, old = times.step, best.step
        busy_new = times.compute + times.comm + times.other
        busy_old = best.compute + best.comm + best.other
        later = (new > old * (1 + _SAME_FINISH)) | ((new >= old * (1 - _SAME_FINISH)) & (busy_new > busy_old))
        if not is_array(later):
            best = times if later else best
            continue
        best = StepTimes(compute=pick(later, times.compute, best.compute), comm=pick(later, times.comm, best.comm),
                         bubble=pick(later, times.bubble, best.bubble), other=pick(later, times.other, best.other),
                         critical_stage=pick(later, index, best.critical_stage),
                         detail={k: pick(later, v, best.detail[k]) for k, v in times.detail.items()},
                         stage_busy_mean=busy_mean)
    assert best is not None, "a step has at least one stage"
    return best


def step_times(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
               cluster: ClusterSpec, options: Options = Options()) -> StepTimes:
    """The roofline's split of one step (train), one request batch (prefill), or the whole generation
    (decode: ttft = the prefill, tpot = one token step)."""
    fabric = cluster.fabric
    if workload.mode == "train":
        return price(train_work(workload, profile, sharing, plan, cluster, options), fabric)
    prefill = price(forward_work(workload, profile, plan, cluster, options, "prefill"), fabric)
    n = workload.decode_tokens - 1
    if workload.mode != "decode":
        return prefill
    if n <= 0:
        return replace(prefill, ttft=prefill.step, tpot=0.0)
    token = price(forward_work(workload, profile, plan, cluster, options, "decode", n), fabric)
    return StepTimes(compute=prefill.compute + n * token.compute, comm=prefill.comm + n * token.comm,
                     bubble=prefill.bubble + n * token.bubble, other=0.0, critical_stage=token.critical_stage,
                     ttft=prefill.step, tpot=token.step, stage_busy_mean=prefill.device_busy + n * token.device_busy)


def estimate(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
             cluster: ClusterSpec, options: Options = Options()) -> StepBreakdown:
    """Model one step of `workload` under `plan` on `cluster`. Raises CostModelError if it cannot."""
    plan = plan_on(plan, cluster)
    rates = workload_rates(cluster, workload)
    t = step_times(workload, profile, sharing, plan, cluster, options)
    memory = memory_breakdown(workload, profile, sharing, plan, options, device=cluster.device)
    energy = step_energy_j(cluster.device, plan.world, t.step, busy_s=t.device_busy)
    return StepBreakdown(step_time_s=t.step, compute_time_s=t.compute, comm_time_s=t.comm, bubble_time_s=t.bubble,
                         other_time_s=t.other, memory=memory, memory_capacity_bytes=cluster.device.memory_bytes,
                         model_flops=profile.model_flops_per_step, peak_flops=rates.peak_flops,
                         n_devices=plan.world, energy_j=energy, ttft_s=t.ttft, tpot_s=t.tpot, comm_detail=t.detail,
                         critical_stage=t.critical_stage)


def step_time(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
              cluster: ClusterSpec, options: Options = Options()) -> float:
    """`estimate(...).step_time_s` alone, seconds, without the memory breakdown and the energy that do not
    change it: what a fit that prices the same cases on thousands of candidate devices needs (llmsim.calibrate:
    the memory breakdown was a quarter of each evaluation). Raises CostModelError if it cannot."""
    return step_times(workload, profile, sharing, plan_on(plan, cluster), cluster, options).step


def single_device_step_time(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                            cluster: ClusterSpec, options: Options = Options()) -> float:
    """The whole step on one device of the cluster, memory ignored: m*C in T = m*C/n."""
    return step_times(workload, profile, sharing, plan.single_device(), cluster.with_devices(1), options).step
