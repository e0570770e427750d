"""One step of a case on a cluster: compute, exposed communication, pipeline bubble, optimizer, memory.

The step of the busiest pipeline stage is built from one micro-batch:

    stage   = m * (compute_mb + tp_comm_mb + cp_exposed_mb + p2p_mb) + gradient accumulation
    bubble  = bubble_fraction(schedule, p, m, v) * stage            (costmodel.pipeline)
    step    = stage + bubble + exposed DP/ZeRO/sharing sync + optimizer

compute_mb is the roofline time of the profile's ops (costmodel.compute) divided over tp*pp*cp (layers)
or tp*cp (embedding, LM head: first/last stage), plus the recomputed forward. Communication volumes:
* tensor parallel (Megatron, Shoeybi et al. 2019): 2 all-reduces of b*s*h per layer forward, 2 backward,
  2 more when the forward is recomputed in full; with sequence parallelism each is a reduce-scatter plus
  an all-gather (Korthikanti 2022), the same ring volume. Not overlapped with compute.
* context parallel (ring attention): cp-1 K/V block exchanges per layer forward, twice that backward,
  overlapped with that layer's attention compute; only the excess is exposed.
* pipeline: one activation forward and one gradient backward per micro-batch and model chunk, not
  overlapped (1/tp of it with the scatter/gather optimization, then an all-gather over tp).
* data parallel: an all-reduce of the gradients (ZeRO 0/1) or a reduce-scatter (ZeRO 2/3), after the
  last backward; with overlap_grad_reduce it hides behind that micro-batch's backward. ZeRO 1/2 all-gather
  the updated parameters after the step; ZeRO-3 all-gathers parameters forward and backward and
  reduce-scatters gradients every micro-batch, prefetched under compute.
* a device whose collectives run on the cores that compute (DeviceSpec.overlaps_communication False:
  gloo on a CPU host) hides nothing: DP, ZeRO-3 and context-parallel traffic is all exposed.
* parameter sharing: tied embeddings with pp > 1 all-reduce the embedding gradient between the first and
  last stage; layer_groups with pp > 1 all-reduce a shared block's gradient between the stages using it.
  Both shrink to nothing with LoRA (a frozen base has no such gradients).

Inference: prefill is one forward; decode = prefill (time to first token) + (n-1) token steps, each a
forward of one token per sequence reading the weights and the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from llmsim.costmodel.cluster import ClusterSpec, Group, collective_time, neighbour_p2p_time, place_group
from llmsim.costmodel.compute import PhaseTimes, Rates, phase_times
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.memory import FP32_BYTES, MemoryBreakdown, _stage_params, memory_breakdown
from llmsim.costmodel.pipeline import bubble_fraction
from llmsim.costmodel.plan import DTYPE_BYTES, Options, Plan

if TYPE_CHECKING:
    from llmsim.config import SharingChoice, Workload
    from llmsim.workload.profile import WorkloadProfile

# Fused Adam over the trainable parameters, bytes touched per parameter: read and write fp32 master,
# m and v (24), read the gradient, and with mixed precision write the 16-bit working copy
# (apex/Megatron FusedAdam, torch fused AdamW): 24 + grad bytes (+ 2).
ADAM_STATE_RW_BYTES = 24
# Gradient accumulation across micro-batches: each micro-batch's weight gradient is added to the
# accumulator (read accumulator, read new gradient, write accumulator).
ACCUMULATE_READS_WRITES = 3


# Megatron tensor parallelism per layer (Shoeybi et al. 2019): an all-reduce after attention and one after
# the MLP in the forward pass, the conjugate two in the backward pass; a full recompute repeats the forward's.
TP_COLLECTIVES_PER_LAYER_FORWARD = 2
TP_COLLECTIVES_PER_LAYER_BACKWARD = 2


class CostModelError(ValueError):
    """The case cannot be priced on this hardware (no peak for the dtype, an uncalibrated device...)."""


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

    @property
    def fits(self) -> bool:
        """False when the busiest device needs more than it has (capacity 0 = unknown: assumed to fit)."""
        return not self.memory_capacity_bytes or self.memory.total <= self.memory_capacity_bytes

    @property
    def mfu(self) -> float:
        return self.model_flops / self.step_time_s / self.n_devices / self.peak_flops


def device_rates(cluster: ClusterSpec, dtype: str) -> Rates:
    device = cluster.device
    peak = device.peak_flops.get(dtype)  # type: ignore[call-overload]
    if not peak:
        have = ", ".join(device.peak_flops) or "none (measured at run time: run `llmsim calibrate` first)"
        raise CostModelError(f"device {device.name!r} has no peak FLOP/s for {dtype}; it has: {have}")
    if not device.memory_bw_bytes_per_s:
        raise CostModelError(f"device {device.name!r} has no memory bandwidth in the catalog "
                             f"(run `llmsim calibrate` on measured runs to make an entry that has one)")
    return Rates(peak_flops=peak, memory_bw=device.memory_bw_bytes_per_s, efficiency=cluster.efficiency,
                 compute_units=device.compute_units)


@dataclass(frozen=True)
class _Groups:
    tp: Group
    cp: Group
    pp: Group
    dp: Group

    @classmethod
    def of(cls, plan: Plan, devices_per_node: int) -> "_Groups":
        return cls(tp=place_group(plan.tp, 1, devices_per_node),
                   cp=place_group(plan.cp, plan.tp, devices_per_node),
                   pp=place_group(plan.pp, plan.tp * plan.cp, devices_per_node),
                   dp=place_group(plan.dp, plan.tp * plan.cp * plan.pp, devices_per_node))


@dataclass(frozen=True)
class _Pass:
    """One forward (and backward) pass of a micro-batch on the busiest stage."""

    compute: float         # seconds of compute
    comm: float            # exposed communication
    backward: float = 0.0  # the backward part of `compute`, the window that hides the gradient reduction


def _tp_collective(size: float, plan: Plan, groups: _Groups, cluster: ClusterSpec) -> float:
    """One tensor-parallel all-reduce of `size` bytes (reduce-scatter + all-gather with sp)."""
    if plan.sp:
        return (collective_time("reduce-scatter", size, groups.tp, cluster)
                + collective_time("all-gather", size, groups.tp, cluster))
    return collective_time("all-reduce", size, groups.tp, cluster)


def _p2p(size: float, plan: Plan, options: Options, groups: _Groups, cluster: ClusterSpec) -> float:
    """One pipeline message of an activation of `size` bytes between neighbouring stages."""
    if plan.pp <= 1:
        return 0.0
    split = plan.tp > 1 and (options.p2p_scatter_gather or plan.sp)
    t = neighbour_p2p_time(size / plan.tp if split else size, groups.pp, cluster)
    if split and not plan.sp:  # the receiver all-gathers the pieces over tensor parallel
        t += collective_time("all-gather", size, groups.tp, cluster)
    return t


def _edge(profile: "WorkloadProfile", workload: "Workload", plan: Plan, options: Options, rates: Rates,
          phases: tuple[str, ...], steps: int = 1) -> float:
    """Embedding and LM head of one micro-batch on the stage holding them (the slower one if split)."""
    div = plan.tp * plan.cp
    head = sum(phase_times(profile, workload, plan, options, rates, ph, "head", div, steps).total for ph in phases)
    embed = sum(phase_times(profile, workload, plan, options, rates, ph, "embed", div, steps).total for ph in phases)
    return head + embed if plan.pp == 1 else max(head, embed)


def _train_pass(profile: "WorkloadProfile", workload: "Workload", plan: Plan, options: Options, rates: Rates,
                groups: _Groups, cluster: ClusterSpec) -> _Pass:
    spec = workload.model
    elem = DTYPE_BYTES[workload.dtype]
    div = plan.tp * plan.pp * plan.cp
    fwd = phase_times(profile, workload, plan, options, rates, "forward", "layers", div)
    bwd = phase_times(profile, workload, plan, options, rates, "backward", "layers", div)
    recompute = {"none": 0.0, "full": fwd.total,
                 "selective": fwd.attention if options.attention != "flash" else 0.0}[plan.recompute]
    edge = _edge(profile, workload, plan, options, rates, ("forward", "backward"))
    compute = fwd.total + bwd.total + recompute + edge
    layers = spec.layers // plan.pp
    activation = plan.micro_batch * (spec.seq_len // plan.cp) * spec.hidden * elem
    per_layer = (TP_COLLECTIVES_PER_LAYER_FORWARD * (2 if plan.recompute == "full" else 1)
                 + TP_COLLECTIVES_PER_LAYER_BACKWARD)
    edge_collectives = 2 if plan.pp == 1 else 1  # embedding forward / LM-head input gradient
    tp = (layers * per_layer + edge_collectives) * _tp_collective(activation, plan, groups, cluster)
    cp = _cp_exposed(workload, plan, fwd, bwd, groups, cluster, layers)
    p2p = 2 * plan.v * _p2p(activation, plan, options, groups, cluster)
    return _Pass(compute=compute, comm=tp + cp + p2p, backward=bwd.total + recompute)


def _cp_exposed(workload: "Workload", plan: Plan, fwd: PhaseTimes, bwd: PhaseTimes, groups: _Groups,
                cluster: ClusterSpec, layers: int) -> float:
    """Ring-attention K/V exchange per micro-batch that the attention compute does not hide."""
    if plan.cp <= 1:
        return 0.0
    spec = workload.model
    kv = spec.kv_heads or spec.heads
    kv_local = kv // plan.tp if plan.tp <= kv else 1
    block = 2 * plan.micro_batch * (spec.seq_len // plan.cp) * kv_local * spec.head_dim * DTYPE_BYTES[workload.dtype]
    exchange = (plan.cp - 1) * neighbour_p2p_time(block, groups.cp, cluster)
    hide = 1.0 if cluster.device.overlaps_communication else 0.0
    forward = max(0.0, exchange - hide * fwd.attention / layers)
    backward = max(0.0, 2 * exchange - hide * bwd.attention / layers)
    return layers * (forward * (2 if plan.recompute == "full" else 1) + backward)


def sharing_sync_collectives(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                             devices_per_node: int, grad_elem: int) -> list[tuple[str, float, Group]]:
    """The gradient all-reduces parameter sharing adds across pipeline stages: (name, bytes, group) each.

    Tied embeddings with pp > 1 reduce the embedding gradient between the first and last stage
    ("tied-embedding"); layer_groups with pp > 1 reduce a shared block's gradient between the stages that
    use it ("shared-layers"). None without pp, none with LoRA (a frozen base has no such gradients).
    """
    if plan.pp <= 1 or sharing.lora is not None:
        return []
    spec = workload.model
    out: list[tuple[str, float, Group]] = []
    pp_group = place_group(plan.pp, plan.tp * plan.cp, devices_per_node)
    if sharing.tie_embeddings:
        pair = Group(size=2, per_node=1, nodes=2) if pp_group.crosses_nodes else Group(size=2, per_node=2, nodes=1)
        out.append(("tied-embedding", spec.vocab * spec.hidden / plan.tp * grad_elem, pair))
    k = sharing.layer_groups
    if k and k < spec.layers:
        stages_per_block = min(plan.pp, spec.layers // k)
        if stages_per_block > 1:
            per_block = profile.layer_params / k / plan.tp
            blocks = min(k, spec.layers // plan.pp)
            group = place_group(stages_per_block, plan.tp * plan.cp, devices_per_node)
            out.append(("shared-layers", per_block * blocks * grad_elem, group))
    return out


def _sharing_sync(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                  groups: _Groups, cluster: ClusterSpec, grad_elem: int) -> float:
    """Gradient all-reduces that parameter sharing adds across pipeline stages (none without pp)."""
    return sum(collective_time("all-reduce", size, group, cluster) for _, size, group in
               sharing_sync_collectives(workload, profile, sharing, plan, cluster.devices_per_node, grad_elem))


def accumulate_time(rates: Rates, trainable: float, microbatches: int, dtype: str, options: Options) -> float:
    """Gradient accumulation over a step's micro-batches on one device: m-1 adds (m with fp32 main grads)."""
    elem = DTYPE_BYTES[dtype]
    grad_elem = FP32_BYTES if options.main_grads_fp32 else elem
    accumulations = microbatches if options.main_grads_fp32 else microbatches - 1
    return accumulations * rates.memory_time(trainable * (2 * grad_elem + elem))


def optimizer_time(rates: Rates, trainable: float, plan: Plan, dtype: str, options: Options,
                   traced: tuple[float, float] | None = None) -> float:
    """Adam over the parameters one device updates (1/dp of them with ZeRO >= 1).

    An accelerator runs a fused kernel (apex/Megatron FusedAdam, torch fused AdamW): the state's bytes
    once. An eager host (op_overhead_s > 0) runs what the profile traced, PyTorch's AdamW loop of a dozen
    or so pointwise ops per tensor with their temporaries: `traced` = (bytes, operators) of this device's
    share, each operator paying the host's per-operator cost.
    """
    shard = plan.dp if plan.zero >= 1 else 1
    if traced is not None and rates.efficiency.op_overhead_s > 0:
        nbytes, ops = traced
        return rates.memory_time(nbytes / shard) + rates.efficiency.op_overhead_s * ops
    elem = DTYPE_BYTES[dtype]
    grad_elem = FP32_BYTES if options.main_grads_fp32 else elem
    per_param = ADAM_STATE_RW_BYTES + grad_elem + (elem if elem < FP32_BYTES else 0)
    return rates.memory_time(trainable / shard * per_param)


def traced_optimizer(profile: "WorkloadProfile", trainable: float) -> tuple[float, float]:
    """(bytes, operators) of the traced optimizer step for `trainable` of the profile's trainable parameters.

    A stage holding a share of them runs that share of the per-tensor loop; ZeRO shards every tensor,
    which divides the bytes (optimizer_time) but not the operator count.
    """
    share = trainable / profile.trainable_params if profile.trainable_params else 0.0
    steps = [totals for key, totals in profile.ops.items() if key[0] == "optimizer"]
    return sum(t.bytes for t in steps) * share, sum(t.count for t in steps) * share


def cp_exposed_time(workload: "Workload", plan: Plan, fwd: PhaseTimes, bwd: PhaseTimes, cluster: ClusterSpec,
                    layers: int) -> float:
    """Public name of the exposed ring-attention exchange per micro-batch (see _cp_exposed)."""
    return _cp_exposed(workload, plan, fwd, bwd, _Groups.of(plan, cluster.devices_per_node), cluster, layers)


def _trainable_on_device(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice",
                         plan: Plan) -> tuple[float, float]:
    """(parameters, trainable parameters) of the stage holding the most, before ZeRO."""
    stages = ["first"] if plan.pp == 1 else ["first", "last"]
    return max((_stage_params(workload, profile, sharing, plan, st) for st in stages), key=lambda pt: pt[1])


def _train(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
           cluster: ClusterSpec, options: Options, rates: Rates) -> tuple[float, float, float, float, dict[str, float]]:
    elem = DTYPE_BYTES[workload.dtype]
    grad_elem = FP32_BYTES if options.main_grads_fp32 else elem
    groups = _Groups.of(plan, cluster.devices_per_node)
    m = plan.microbatches
    one = _train_pass(profile, workload, plan, options, rates, groups, cluster)
    params, trainable = _trainable_on_device(workload, profile, sharing, plan)

    accumulate = accumulate_time(rates, trainable, m, workload.dtype, options)
    stage = m * (one.compute + one.comm) + accumulate
    bubble = bubble_fraction(plan.schedule, plan.pp, m, plan.v) * stage

    grads, weights = trainable * grad_elem, params * elem
    detail = {"pipeline_and_tensor": m * one.comm}
    hides = cluster.device.overlaps_communication  # False: collectives take the cores compute runs on
    if plan.zero >= 3:
        per_micro_batch = (2 * collective_time("all-gather", weights, groups.dp, cluster)
                           + collective_time("reduce-scatter", grads, groups.dp, cluster))
        reduce, gather = max(0.0, m * per_micro_batch - (m * one.compute if hides else 0.0)), 0.0
    else:
        op = "all-reduce" if plan.zero <= 1 else "reduce-scatter"
        reduce = collective_time(op, grads, groups.dp, cluster)  # type: ignore[arg-type]
        if plan.overlap_grad_reduce and hides:
            reduce = max(0.0, reduce - one.backward)
        gather = collective_time("all-gather", weights, groups.dp, cluster) if plan.zero in (1, 2) else 0.0
    sync = _sharing_sync(workload, profile, sharing, plan, groups, cluster, grad_elem)
    detail.update(data_parallel=reduce + gather, sharing_sync=sync)

    optimizer = optimizer_time(rates, trainable, plan, workload.dtype, options, traced_optimizer(profile, trainable))
    compute = m * one.compute + accumulate
    comm = m * one.comm + reduce + gather + sync
    return compute, comm, bubble, optimizer, detail


def _inference_pass(profile: "WorkloadProfile", workload: "Workload", plan: Plan, options: Options,
                    rates: Rates, groups: _Groups, cluster: ClusterSpec, phase: str, steps: int) -> _Pass:
    spec = workload.model
    div = plan.tp * plan.pp * plan.cp
    layers_t = phase_times(profile, workload, plan, options, rates, phase, "layers", div, steps)
    edge = _edge(profile, workload, plan, options, rates, (phase,), steps)
    tokens = plan.micro_batch * (1 if phase == "decode" else spec.seq_len // plan.cp)
    activation = tokens * spec.hidden * DTYPE_BYTES[workload.dtype]
    edge_collectives = 1
    tp = (spec.layers // plan.pp * 2 + edge_collectives) * _tp_collective(activation, plan, groups, cluster)
    p2p = _p2p(activation, plan, options, groups, cluster)
    return _Pass(compute=layers_t.total + edge, comm=tp + p2p)


def _pipelined(one: _Pass, plan: Plan) -> tuple[float, float, float]:
    """(compute, comm, bubble) of m micro-batches through the pipeline (inference: GPipe-like fill)."""
    m = plan.microbatches
    bubble = bubble_fraction("gpipe", plan.pp, m) * m * (one.compute + one.comm)
    return m * one.compute, m * one.comm, bubble


@dataclass(frozen=True)
class _Times:
    compute: float
    comm: float
    bubble: float
    other: float
    ttft: float | None = None
    tpot: float | None = None
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def step(self) -> float:
        return self.compute + self.comm + self.bubble + self.other


def _times(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
           cluster: ClusterSpec, options: Options, rates: Rates) -> _Times:
    if workload.mode == "train":
        compute, comm, bubble, other, detail = _train(workload, profile, sharing, plan, cluster, options, rates)
        return _Times(compute, comm, bubble, other, detail=detail)
    if plan.pp == 1:  # without a pipeline to fill, a server runs its whole share of the batch at once
        plan = replace(plan, micro_batch=plan.micro_batch * plan.microbatches, microbatches=1)
    groups = _Groups.of(plan, cluster.devices_per_node)
    compute, comm, bubble = _pipelined(
        _inference_pass(profile, workload, plan, options, rates, groups, cluster, "prefill", 1), plan)
    if workload.mode != "decode":
        return _Times(compute, comm, bubble, 0.0)
    ttft = compute + comm + bubble
    n = workload.decode_tokens - 1
    tpot = 0.0
    if n > 0:
        c, k, b = _pipelined(_inference_pass(profile, workload, plan, options, rates, groups, cluster, "decode", n),
                             plan)
        tpot = c + k + b
        compute, comm, bubble = compute + n * c, comm + n * k, bubble + n * b
    return _Times(compute, comm, bubble, 0.0, ttft=ttft, tpot=tpot)


def estimate(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
             cluster: ClusterSpec, options: Options = Options()) -> StepBreakdown:
    """Model one step of `workload` under `plan` on `cluster`. Raises CostModelError if it cannot."""
    rates = device_rates(cluster, workload.dtype)
    t = _times(workload, profile, sharing, plan, cluster, options, rates)
    memory = memory_breakdown(workload, profile, sharing, plan, options)
    energy = step_energy_j(cluster.device, plan.world, t.step, busy_s=t.compute + t.other)
    return StepBreakdown(step_time_s=t.step, compute_time_s=t.compute, comm_time_s=t.comm, bubble_time_s=t.bubble,
                         other_time_s=t.other, memory=memory, memory_capacity_bytes=cluster.device.memory_bytes,
                         model_flops=profile.model_flops_per_step, peak_flops=rates.peak_flops,
                         n_devices=plan.world, energy_j=energy, ttft_s=t.ttft, tpot_s=t.tpot, comm_detail=t.detail)


def single_device_step_time(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                            cluster: ClusterSpec, options: Options = Options()) -> float:
    """The whole step on one device of the cluster, memory ignored: m*C in T = m*C/n."""
    one = replace(cluster, nodes=1, devices_per_node=1)
    return _times(workload, profile, sharing, plan.single_device(), one, options,
                  device_rates(one, workload.dtype)).step
