"""What each simulated device is asked to do, priced by the shared cost model (llmsim.costmodel).

Every number here comes from the same functions the roofline backend sums: kernel times from
costmodel.compute.phase_times, collective sizes and group placement from costmodel.cluster, per-stage
parameters from costmodel.memory, accumulation and optimizer time from costmodel.step. The simulation
then decides *when* things happen and what they wait for; this module only says *what* and *how much*.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from llmsim.costmodel import ClusterSpec, Options, Plan
from llmsim.costmodel.cluster import place_group
from llmsim.costmodel.compute import phase_times
from llmsim.costmodel.memory import FP32_BYTES, stage_params
from llmsim.costmodel.plan import DTYPE_BYTES
from llmsim.costmodel.step import (TP_COLLECTIVES_PER_LAYER_BACKWARD, TP_COLLECTIVES_PER_LAYER_FORWARD,
                                   accumulate_time, cp_exposed_time, device_rates, optimizer_time, traced_optimizer,
                                   sharing_sync_collectives)
from llmsim_plugins.cluster.entities import Placement
from llmsim_plugins.cluster.processes import (NO_COMM, Collective, Fabric, StageWork, StepWork, SyncWork,
                                              collective, repeat)

if TYPE_CHECKING:
    from llmsim.config import SharingChoice, Workload
    from llmsim.workload.profile import WorkloadProfile

# PyTorch DDP's default gradient bucket (bucket_cap_mb=25, torch.nn.parallel.DistributedDataParallel).
DEFAULT_BUCKET_BYTES = 25 * 2**20


def fabric_of(cluster: ClusterSpec) -> Fabric:
    """The cost model's view of the links, as one rank sees them alone (port sharing included)."""
    return Fabric(intra=cluster.intra_channel, inter=cluster.inter_channel)


def placement_of(plan: Plan, cluster: ClusterSpec) -> Placement:
    return Placement(tp=plan.tp, cp=plan.cp, pp=plan.pp, devices_per_node=cluster.devices_per_node)


def _tp_one(size: float, plan: Plan, fabric: Fabric, devices_per_node: int) -> Collective:
    """One tensor-parallel all-reduce of `size` bytes (reduce-scatter + all-gather with sp)."""
    group = place_group(plan.tp, 1, devices_per_node)
    if plan.sp:
        return (*collective("reduce-scatter", size, group, fabric), *collective("all-gather", size, group, fabric))
    return collective("all-reduce", size, group, fabric)


def _p2p(size: float, plan: Plan, options: Options, fabric: Fabric, devices_per_node: int) -> tuple[float, Collective]:
    """(bytes sent between stages, all-gather the receiver runs over tensor parallel) for one message."""
    if plan.pp <= 1:
        return 0.0, NO_COMM
    split = plan.tp > 1 and (options.p2p_scatter_gather or plan.sp)
    gather = collective("all-gather", size, place_group(plan.tp, 1, devices_per_node), fabric) \
        if split and not plan.sp else NO_COMM
    return (size / plan.tp if split else size), gather


def _stage_kinds(pp: int) -> list[str]:
    if pp == 1:
        return ["first"]
    return ["first"] + ["middle"] * (pp - 2) + ["last"]


def _chunk_layers(layers: int, plan: Plan) -> tuple[int, float]:
    """(layers per model chunk, that count's share of the stage's layers): chunks of L/(p v) layers."""
    per_stage = layers / plan.pp
    chunk = max(1, round(per_stage / plan.v))
    return chunk, per_stage / (chunk * plan.v)


def train_step(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
               cluster: ClusterSpec, options: Options = Options(), bucket_bytes: float = DEFAULT_BUCKET_BYTES,
               prefetch: int = 1) -> StepWork:
    """The training step of one pipeline replica, stage by stage."""
    spec = workload.model
    rates = device_rates(cluster, workload.dtype)
    fabric = fabric_of(cluster)
    dpn = cluster.devices_per_node
    elem = DTYPE_BYTES[workload.dtype]
    grad_elem = FP32_BYTES if options.main_grads_fp32 else elem
    div = plan.tp * plan.pp * plan.cp
    fwd = phase_times(profile, workload, plan, options, rates, "forward", "layers", div)
    bwd = phase_times(profile, workload, plan, options, rates, "backward", "layers", div)
    recompute = {"none": 0.0, "full": fwd.total,
                 "selective": fwd.attention if options.attention != "flash" else 0.0}[plan.recompute]
    chunk_layers, scale = _chunk_layers(spec.layers, plan)
    per_stage_layers = spec.layers / plan.pp
    per_layer = scale / per_stage_layers  # fraction of the stage's layer time one simulated layer carries

    edge_div = plan.tp * plan.cp
    embed = [phase_times(profile, workload, plan, options, rates, ph, "embed", edge_div).total
             for ph in ("forward", "backward")]
    head = [phase_times(profile, workload, plan, options, rates, ph, "head", edge_div).total
            for ph in ("forward", "backward")]

    activation = plan.micro_batch * (spec.seq_len // plan.cp) * spec.hidden * elem
    tp_one = _tp_one(activation, plan, fabric, dpn)
    p2p_bytes, recv_gather = _p2p(activation, plan, options, fabric, dpn)
    cp_layer = (cp_exposed_time(workload, plan, fwd, bwd, cluster, spec.layers // plan.pp) * per_layer
                if plan.cp > 1 else 0.0)

    dp_group = place_group(plan.dp, plan.tp * plan.cp * plan.pp, dpn)
    middle_params, middle_trainable = stage_params(workload, profile, sharing, plan, "middle")
    layers_on_stage = chunk_layers * plan.v
    stages = []
    for kind in _stage_kinds(plan.pp):
        params, trainable = stage_params(workload, profile, sharing, plan, kind)
        edge_params, edge_trainable = params - middle_params, trainable - middle_trainable
        first, last = kind == "first", kind == "last" or plan.pp == 1
        split = 0.5 if plan.pp == 1 else 1.0  # the only stage holds both embedding and head
        zero12 = plan.zero in (1, 2) and plan.dp > 1
        stages.append(StageWork(
            layers=chunk_layers,
            fwd_layer_s=fwd.total * per_layer, bwd_layer_s=bwd.total * per_layer,
            recompute_layer_s=recompute * per_layer, cp_layer_s=cp_layer,
            embed_fwd_s=embed[0] if first else 0.0, embed_bwd_s=embed[1] if first else 0.0,
            head_fwd_s=head[0] if last else 0.0, head_bwd_s=head[1] if last else 0.0,
            tp_fwd=repeat(tp_one, TP_COLLECTIVES_PER_LAYER_FORWARD),
            tp_recompute=repeat(tp_one, TP_COLLECTIVES_PER_LAYER_FORWARD) if plan.recompute == "full" else NO_COMM,
            tp_bwd=repeat(tp_one, TP_COLLECTIVES_PER_LAYER_BACKWARD),
            tp_embed=tp_one if first else NO_COMM, tp_head=tp_one if last else NO_COMM,
            recv_gather=recv_gather,
            accumulate_s=accumulate_time(rates, trainable, plan.microbatches, workload.dtype, options),
            optimizer_s=optimizer_time(rates, trainable, plan, workload.dtype, options,
                                       traced_optimizer(profile, trainable)),
            grad_bytes_layer=middle_trainable / layers_on_stage * grad_elem,
            grad_bytes_embed=edge_trainable * grad_elem * (split if first else 0.0),
            grad_bytes_head=edge_trainable * grad_elem * (split if last else 0.0),
            param_bytes_layer=middle_params / layers_on_stage * elem,
            param_bytes_embed=edge_params * elem * (split if first else 0.0),
            param_bytes_head=edge_params * elem * (split if last else 0.0),
            gather_after_step=collective("all-gather", params * elem, dp_group, fabric) if zero12 else NO_COMM))

    syncs = []
    for name, size, group in sharing_sync_collectives(workload, profile, sharing, plan, dpn, grad_elem):
        members = (0, plan.pp - 1) if name == "tied-embedding" else tuple(range(plan.pp))
        syncs.append(SyncWork(name, members, collective("all-reduce", size, group, fabric)))
    return StepWork(stages=tuple(stages), microbatches=plan.microbatches, schedule=plan.schedule,
                    virtual_stages=plan.v, p2p_bytes=p2p_bytes,
                    dp_op="all-reduce" if plan.zero <= 1 else "reduce-scatter", dp_group=dp_group, zero=plan.zero,
                    overlap_grad_reduce=plan.overlap_grad_reduce, bucket_bytes=bucket_bytes, prefetch=prefetch,
                    syncs=tuple(syncs), comm_shares_cores=not cluster.device.overlaps_communication)


def inference_plan(plan: Plan) -> Plan:
    """Without a pipeline to fill, a server runs its whole share of the batch at once (as the roofline)."""
    if plan.pp == 1:
        return replace(plan, micro_batch=plan.micro_batch * plan.microbatches, microbatches=1)
    return plan


def forward_step(workload: "Workload", profile: "WorkloadProfile", plan: Plan, cluster: ClusterSpec,
                 options: Options = Options(), phase: str = "prefill", steps: int = 1) -> StepWork:
    """A forward-only pass (prefill, or one decode token step of `steps`) of one pipeline replica."""
    spec = workload.model
    plan = inference_plan(plan)
    rates = device_rates(cluster, workload.dtype)
    fabric = fabric_of(cluster)
    dpn = cluster.devices_per_node
    layers_t = phase_times(profile, workload, plan, options, rates, phase, "layers", plan.tp * plan.pp * plan.cp,
                           steps)
    edge_div = plan.tp * plan.cp
    embed = phase_times(profile, workload, plan, options, rates, phase, "embed", edge_div, steps).total
    head = phase_times(profile, workload, plan, options, rates, phase, "head", edge_div, steps).total
    plan1 = replace(plan, schedule="1f1b", virtual_stages=1)
    chunk_layers, scale = _chunk_layers(spec.layers, plan1)
    per_layer = scale / (spec.layers / plan.pp)
    tokens = plan.micro_batch * (1 if phase == "decode" else spec.seq_len // plan.cp)
    activation = tokens * spec.hidden * DTYPE_BYTES[workload.dtype]
    tp_one = _tp_one(activation, plan, fabric, dpn)
    p2p_bytes, recv_gather = _p2p(activation, plan, options, fabric, dpn)
    stages = []
    for kind in _stage_kinds(plan.pp):
        first, last = kind == "first", kind == "last" or plan.pp == 1
        stages.append(StageWork(layers=chunk_layers, fwd_layer_s=layers_t.total * per_layer,
                                embed_fwd_s=embed if first else 0.0, head_fwd_s=head if last else 0.0,
                                tp_fwd=repeat(tp_one, TP_COLLECTIVES_PER_LAYER_FORWARD),
                                tp_embed=tp_one if first else NO_COMM, recv_gather=recv_gather))
    return StepWork(stages=tuple(stages), microbatches=plan.microbatches, schedule="gpipe", forward_only=True,
                    p2p_bytes=p2p_bytes)
