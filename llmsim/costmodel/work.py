"""One step of a case as data: what each pipeline stage computes and communicates, priced once.

This is the single pricing path of llmsim's modeled backends. `train_work` and `forward_work` price the
work of every pipeline stage for one micro-batch — compute by phase (seconds per layer, embedding,
head), the collectives it issues with their groups and sizes, the pipeline message — and per step
(gradient accumulation, optimizer, the gradient and parameter bytes data parallelism reduces and
gathers). The roofline (costmodel.step) sums this data in closed form; the SimPy cluster (llmsim.sim)
schedules the same data on links and streams. A change to what a stage does lands once, for both.

Sources of the volumes:
* tensor parallel (Megatron, Shoeybi et al. 2019): 2 all-reduces of b*s*h per layer forward, 2 backward,
  2 more when the forward is recomputed in full; with sequence parallelism each is a reduce-scatter plus
  an all-gather (Korthikanti et al. 2022), the same ring volume. On the critical path.
* context parallel (ring attention): cp-1 K/V block exchanges per layer forward, twice that backward,
  overlapped with that layer's attention compute; only the excess is exposed.
* pipeline: one activation forward and one gradient backward per micro-batch and model chunk between
  neighbouring stages (1/tp of it with the scatter/gather optimization, then an all-gather over tp;
  Narayanan et al. 2021, Sec. 4.1).
* data parallel: an all-reduce of the gradients (ZeRO 0) or a reduce-scatter (ZeRO >= 1: each rank
  updates only its shard, Megatron-Core's distributed optimizer, `use_distributed_optimizer` in
  megatron/core/distributed/distributed_data_parallel_config.py); ZeRO 1/2 all-gather the updated
  parameters after the step (twice the gradient bytes in all, plain DP's own volume: Rajbhandari et
  al. 2020, Sec. 7); ZeRO-3 all-gathers parameters forward and backward and reduce-scatters gradients every
  micro-batch.
* parameter sharing: tied embeddings with pp > 1 all-reduce the embedding gradient between the first and
  last stage; layer_groups with pp > 1 all-reduce a shared block's gradient between the stages using it.
  Both vanish with LoRA (a frozen base has no such gradients).

Communication overlaps (Megatron-Core's options, Plan): `tp_comm_overlap` turns each layer's tensor-
parallel collectives into `Overlapped` items, chunks pipelined with the GEMM they feed or follow as
Transformer Engine's userbuffers run them (`tp_overlaps`); `overlap_p2p`, `overlap_grad_reduce` and
`overlap_param_gather` are flags of the step that the roofline (costmodel.step) and the simulation
(llmsim.sim) each schedule. A device whose collectives run on its compute cores overlaps none of them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from llmsim.costmodel.memo import scoped_memo
from llmsim.costmodel.cluster import (ClusterSpec, Group, collective_phases, neighbour_p2p_phases, place_grid,
                                      place_group, plan_on, torus_groups, with_cp)
from llmsim.costmodel.collectives import AllReduceAlgorithm, Fabric, Op, Phases, phases_time, repeat
from llmsim.costmodel.compute import (CostModelError, PhaseTimes, Rates, workload_rates, layer_gemm_shares,
                                      op_sac_recomputed_share, phase_times, phase_times_of, runs_compiled)
from llmsim.costmodel.memory import ADAM_MOMENTS, FP32_BYTES, stage_param_counts, tp_block_params
from llmsim.costmodel import moe, precision, sampling
from llmsim.costmodel.arrays import Num, pick
from llmsim.costmodel.plan import DTYPE_BYTES, FUSED_ATTENTION, Options, Plan
from llmsim.costmodel.torus import TorusError

if TYPE_CHECKING:
    from llmsim.config import ModelSpec, SharingChoice, Workload
    from llmsim.workload.profile import WorkloadProfile

Schedule = Literal["gpipe", "1f1b", "interleaved"]

# Megatron tensor parallelism per layer (Shoeybi et al. 2019): an all-reduce after attention and one after
# the MLP in the forward pass, the conjugate two in the backward pass; a full recompute repeats the forward's.
TP_COLLECTIVES_PER_LAYER_FORWARD = 2
TP_COLLECTIVES_PER_LAYER_BACKWARD = 2
# A parallel block (ModelSpec.parallel_block) sums the attention and MLP outputs before the residual add, so
# the two row-parallel partial sums are reduced once: GPT-J's layer psums attn_out + ff_out in one collective
# (kingoflolz/mesh-transformer-jax mesh_transformer/layers.py, TransformerLayerShard: g_psum(attn_out +
# dense_out)); XLA reassociates all-reduce(x) + all-reduce(y) into all-reduce(x + y) (xla/service/
# all_reduce_reassociate.h, reduce_scatter_reassociate.h). Both branches read the same normed input, so its
# all-gather under sequence parallelism, and in the backward the conjugate pair, run once too.
TP_COLLECTIVES_PER_PARALLEL_BLOCK = 1


def tp_collectives_per_layer(spec: "ModelSpec") -> int:
    """Tensor-parallel reductions of one layer per pass (forward, backward, recomputed forward): 2 for the
    sequential block (after attention, after the MLP; Shoeybi et al. 2019), 1 for a parallel block."""
    return TP_COLLECTIVES_PER_PARALLEL_BLOCK if spec.parallel_block else TP_COLLECTIVES_PER_LAYER_FORWARD
# Megatron-Core --tp-comm-overlap runs Transformer Engine's userbuffers with TE's default configuration
# (NVIDIA/TransformerEngine transformer_engine/pytorch/module/base.py at d0067d0, initialize_ub ->
# get_default_config):
#   ring_exchange  qkv_fprop, fc1_fprop, proj_dgrad, fc2_dgrad: the all-gather before the GEMM as tp - 1
#                  neighbour exchanges of one 1/tp chunk each (num_splits = tp), each under the GEMM of the
#                  chunk already here; 1 SM for communication (num_sm), no SM margin
#   pipeline       proj_fprop, fc2_fprop: the GEMM split in num_splits = 4, the reduce-scatter of chunk i
#                  under the GEMM of chunk i+1, the last chunk's after the GEMM; the GEMM leaves num_sm = 16
#                  SMs to communication (set_sm_margin)
#   bulk           qkv_wgrad, fc1_wgrad: the reduce-scatter of the input gradient whole beside the weight-
#                  gradient GEMM, which leaves 16 SMs (num_sm, set_sm_margin)
TE_PIPELINE_SPLITS = 4
TE_COMM_SMS = 16
# XLA's SPMD partitioner on a TPU slice runs an einsum whose operand must be all-gathered (or whose output
# reduce-scattered) over a mesh axis as a *windowed einsum* ("collective matmul"): a loop of tp steps, each a
# partial einsum on the shard at hand while the next shard moves one neighbour on over an asynchronous
# collective-permute (Xu et al. 2021, GSPMD, Sec. 3.5; Wang et al. 2023, "Overlap Communication with Dependent
# Computation via Decomposition", ASPLOS; xla/service/spmd/dot_handler.cc). It applies to operands of at least
# SpmdPartitionerOptions::threshold_for_windowed_einsum_mib = 256 MiB (xla/service/spmd/spmd_partitioner.h);
# on TPU it is on unless that threshold is raised (MaxText benchmarks/xla_flags_library.py:
# DISABLE_COLLECTIVE_MATMUL = --xla_jf_spmd_threshold_for_windowed_einsum_mib=1000000). The TPU compiler's own
# default threshold is not published: the partitioner's default is assumed.
XLA_WINDOWED_EINSUM_THRESHOLD_BYTES = 256 * 2**20
# Fused Adam over the trainable parameters, bytes touched per parameter: read and write fp32 master,
# m and v (24), read the gradient, and with mixed precision write the 16-bit working copy
# (apex/Megatron FusedAdam, torch fused AdamW): 24 + grad bytes (+ 2).
ADAM_STATE_RW_BYTES = 24


# ---------------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comm:
    """One collective a device issues, `count` times back to back: `op` over a placed `group`, `size` bytes
    (the full buffer one rank holds; costmodel.collectives). `op` "p2p" is a message to a neighbour;
    "all-to-all" the expert-parallel token dispatch or combine (costmodel.moe.all_to_all_phases)."""

    op: Op | Literal["p2p", "all-to-all"]
    size: float
    group: Group
    count: int = 1
    algorithm: AllReduceAlgorithm = "nccl"   # an all-reduce's library (collectives.AllReduceAlgorithm)

    def __hash__(self) -> int:
        # its price is cached per (collective, fabric) (work._comm_time): hashed once, when first asked (the value
        # the dataclass's own __hash__ gives; not at construction, where a test may hold an unhashable field)
        try:
            return self._hash  # type: ignore[attr-defined, no-any-return]
        except AttributeError:
            value = hash((self.op, self.size, self.group, self.count, self.algorithm))
            object.__setattr__(self, "_hash", value)
            return value

    def __reduce__(self) -> tuple:
        return Comm, (self.op, self.size, self.group, self.count, self.algorithm)  # hashed again where unpickled

    def phases(self, fabric: Fabric) -> Phases:
        """Its stretches on one rank's ports; a p2p message crosses the group's slowest hop."""
        return _comm_phases(self, fabric)

    def time(self, fabric: Fabric) -> float:
        """Seconds alone on its ports."""
        return _comm_time(self, fabric)


# A sweep prices the same few collectives (one layer's activation over the same group) for thousands of
# plans and every pipeline stage: pure functions of hashable values, cached.
@functools.lru_cache(maxsize=65536)
def _comm_phases(comm: Comm, fabric: Fabric) -> Phases:
    if comm.op == "p2p":
        one = neighbour_p2p_phases(comm.size, comm.group, fabric)
    elif comm.op == "all-to-all":
        one = moe.all_to_all_phases(comm.size, comm.group.per_node, comm.group.nodes, fabric)
    else:
        one = collective_phases(comm.op, comm.size, comm.group, fabric, comm.algorithm)
    return repeat(one, comm.count)


@functools.lru_cache(maxsize=65536)
def _comm_time(comm: Comm, fabric: Fabric) -> float:
    return phases_time(_comm_phases(comm, fabric), fabric)


Comms = tuple[Comm, ...]


def comms_time(comms: Comms, fabric: Fabric) -> float:
    """Seconds of `comms` one after another, each alone on its ports (Comm.time; the cache asked directly: a
    stage's collectives are summed hundreds of thousands of times in a planner's table)."""
    return sum(map(_comm_time, comms, itertools.repeat(fabric)))


@dataclass(frozen=True)
class Overlapped:
    """A collective pipelined with a GEMM (tp_comm_overlap): `exposed` runs while nothing computes (the
    pipeline's last chunk), `hidden` runs beside `gemm_s` seconds of the GEMM, and the layer goes on when
    the slower of the two is done. The GEMM's seconds are part of the stage's compute (fwd_layer_s ...)."""

    hidden: Comms
    gemm_s: float
    exposed: Comms = ()

    def time(self, fabric: Fabric) -> float:
        """Exposed seconds alone on its ports: the unhidden chunks plus what the GEMM does not cover."""
        return comms_time(self.exposed, fabric) + max(0.0, comms_time(self.hidden, fabric) - self.gemm_s)


Overlaps = tuple[Overlapped, ...]


def overlaps_time(items: Overlaps, fabric: Fabric) -> float:
    return sum(o.time(fabric) for o in items) if items else 0


def overlapped_gemm_s(items: Overlaps) -> float:
    """Compute seconds that run beside the items' hidden communication."""
    return sum(o.gemm_s for o in items)


@dataclass(frozen=True)
class StageWork:
    """One pipeline stage's work: per layer and micro-batch, per micro-batch, and per step.

    Seconds are on an uncontended device. `layers` is per model chunk (a stage runs `v` chunks per
    micro-batch when interleaved). `embed_*` are non-zero on the first stage, `head_*` on the last.
    """

    layers: int
    fwd_layer_s: float
    bwd_layer_s: float = 0.0
    recompute_layer_s: float = 0.0
    cp_layer_s: float = 0.0             # exposed context-parallel exchange per layer (closed form)
    embed_fwd_s: float = 0.0
    embed_bwd_s: float = 0.0
    head_fwd_s: float = 0.0
    head_bwd_s: float = 0.0
    tp_fwd: Comms = ()                  # per layer forward
    tp_recompute: Comms = ()            # per layer recomputed forward (full recompute)
    tp_bwd: Comms = ()                  # per layer backward
    tp_embed: Comms = ()                # after the embedding forward (first stage)
    tp_head: Comms = ()                 # the LM head's input gradient (last stage)
    logits_gather: Comms = ()           # inference, last stage: the logits all-gather before sampling (sampling.py)
    tp_fwd_overlap: Overlaps = ()       # per layer forward with tp_comm_overlap (tp_fwd is then empty)
    tp_recompute_overlap: Overlaps = () # per layer recomputed forward with tp_comm_overlap
    tp_bwd_overlap: Overlaps = ()       # per layer backward with tp_comm_overlap
    recv_gather: Comms = ()             # all-gather of a scattered pipeline message over tensor parallel
    accumulate_s: float = 0.0           # gradient accumulation of the whole step on this stage
    optimizer_s: float = 0.0
    grad_bytes_layer: float = 0.0       # gradient bytes of one layer (data-parallel reduction)
    grad_bytes_embed: float = 0.0
    grad_bytes_head: float = 0.0
    param_bytes_layer: float = 0.0      # parameter bytes of one layer (ZeRO-3 all-gather)
    param_bytes_embed: float = 0.0
    param_bytes_head: float = 0.0
    gather_after_step: Comms = ()       # ZeRO 1/2: all-gather the updated parameters


@dataclass(frozen=True)
class SyncWork:
    """A gradient all-reduce between stages that parameter sharing adds (tied embedding, shared layers)."""

    name: str
    stages: tuple[int, ...]
    comm: Comm


@dataclass(frozen=True)
class StepWork:
    """One step of one pipeline replica: the stages' work, the schedule and the data-parallel setup."""

    stages: tuple[StageWork, ...]
    microbatches: int
    schedule: Schedule = "1f1b"
    virtual_stages: int = 1
    forward_only: bool = False
    p2p: Comm | None = None             # one pipeline message (activation or its gradient)
    dp_op: Op = "all-reduce"
    dp_group: Group = field(default_factory=lambda: Group(1, 1, 1))
    zero: int = 0
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False  # ZeRO 1/2's gather after the step runs under the next forward
    overlap_p2p: bool = False           # pipeline sends are asynchronous, under the next op's compute
    syncs: tuple[SyncWork, ...] = ()
    comm_shares_cores: bool = False     # collectives run on the compute cores (gloo on a CPU host)

    @property
    def pp(self) -> int:
        return len(self.stages)

    @property
    def v(self) -> int:
        return self.virtual_stages if self.schedule == "interleaved" else 1

    @property
    def p2p_bytes(self) -> float:
        return self.p2p.size if self.p2p is not None else 0.0

    def layers_on(self, st: StageWork) -> int:
        """Layers one stage runs per micro-batch (all its chunks)."""
        return st.layers * self.v

    def grad_bytes(self, st: StageWork) -> float:
        return self.layers_on(st) * st.grad_bytes_layer + st.grad_bytes_embed + st.grad_bytes_head

    def param_bytes(self, st: StageWork) -> float:
        return self.layers_on(st) * st.param_bytes_layer + st.param_bytes_embed + st.param_bytes_head


# ---------------------------------------------------------------------------------------------------
# Pricing helpers (per device)
# ---------------------------------------------------------------------------------------------------

def accumulate_time(rates: Rates, trainable: float, microbatches: Num, dtype: str, options: Options) -> Num:
    """Gradient accumulation over a step's micro-batches on one device: m-1 adds (m with fp32 main grads),
    each reading the accumulator and the new gradient and writing the accumulator, over `trainable`
    parameters: those no weight-gradient GEMM accumulates itself (memory.accumulated_params; all of them
    unless Options.grad_accumulation_fusion). Seconds; `microbatches` may be a column."""
    elem = DTYPE_BYTES[dtype]
    grad_elem = FP32_BYTES if options.main_grads_fp32 else elem
    accumulations = microbatches if options.main_grads_fp32 else microbatches - 1
    return accumulations * rates.memory_time(trainable * (2 * grad_elem + elem))


def optimizer_shard(dp: Num, zero: Num) -> Num:
    """The ranks one device's optimizer step is divided over: `dp` (the weights' replicas, Plan.dp_cp =
    dp x cp) with ZeRO >= 1, else 1."""
    return pick(zero >= 1, dp, 1)


def optimizer_time(rates: Rates, trainable: float, plan: Plan, dtype: str, options: Options,
                   traced: tuple[float, float] | None = None) -> float:
    """Adam over the parameters one device updates (1/(dp x cp) of them with ZeRO >= 1): `optimizer_step_time`."""
    return optimizer_step_time(rates, trainable, optimizer_shard(plan.dp_cp, plan.zero), dtype, options, traced)


def optimizer_step_time(rates: Rates, trainable: float, shard: Num, dtype: str, options: Options,
                        traced: tuple[float, float] | None = None) -> Num:
    """Adam over 1/shard of `trainable` parameters on one device, seconds (`shard` may be a column).

    An accelerator runs a fused kernel (apex/Megatron FusedAdam, torch fused AdamW): the state's bytes
    once; with Options.optimizer "foreach" (torch AdamW's default on CUDA) one pass per operation, the traced
    loop's bytes. An eager host (op_overhead_s > 0) runs what the profile traced, PyTorch's AdamW loop of a
    dozen or so pointwise ops per tensor with their temporaries: `traced` = (bytes, operators) of this
    device's share, each operator paying the host's per-operator cost.
    """
    if traced is not None and rates.efficiency.op_overhead_s > 0:
        nbytes, ops = traced
        return rates.memory_time(nbytes / shard) + rates.efficiency.op_overhead_s * ops
    elem = DTYPE_BYTES[dtype]
    if traced is not None and options.optimizer == "foreach":
        # the trace is the cast model's loop (its tensors in the workload dtype); with an fp32 master the same
        # operations run over fp32 master, m, v and gradient, and the 16-bit copy of the weights is written once
        if elem < FP32_BYTES and (options.master_weights or options.params_fp32):
            copy = 0.0 if options.params_fp32 else trainable * elem
            return rates.memory_time((traced[0] * FP32_BYTES / elem + copy) / shard)
        return rates.memory_time(traced[0] / shard)
    grad_elem = FP32_BYTES if options.main_grads_fp32 or options.params_fp32 else elem
    if elem < FP32_BYTES and not options.master_weights and not options.params_fp32:
        # no master (Options.master_weights): read and write the 16-bit parameter, m and v; read the gradient
        return rates.memory_time(trainable / shard * (2 * (1 + ADAM_MOMENTS) * elem + grad_elem))
    # a 16-bit copy of the updated weights, unless the fp32 parameters are the only copy (params_fp32)
    per_param = ADAM_STATE_RW_BYTES + grad_elem + (elem if elem < FP32_BYTES and not options.params_fp32 else 0)
    return rates.memory_time(trainable / shard * per_param)


def _optimizer_totals(profile: "WorkloadProfile") -> tuple[float, float]:
    """(bytes, operators) of the whole traced optimizer step. A stage holding a share of the trainable
    parameters runs that share of the per-tensor loop; ZeRO shards every tensor, which divides the bytes
    (optimizer_time) but not the operator count."""
    steps = [totals for key, totals in profile.ops.items() if key[0] == "optimizer"]
    return sum(t.bytes for t in steps), sum(t.count for t in steps)


@dataclass(frozen=True)
class Groups:
    """Where each parallel group of a plan lands (Megatron order: tp innermost, then cp, pp, dp).

    `dp` is the group gradients are reduced and ZeRO shards over: the data-parallel ranks with the
    context-parallel ones (Plan.dp_cp; Megatron-Core's data-parallel group with context parallelism), laid out
    as its cp members (stride tp) times its dp members (stride tp*cp*pp): `place_grid`."""

    tp: Group
    cp: Group
    pp: Group
    dp: Group
    ep: Group = Group(1, 1, 1)   # expert parallel (costmodel.moe.ep_group)
    etp: Group = Group(1, 1, 1)  # expert tensor parallel (costmodel.moe.etp_group)

    @classmethod
    def of(cls, plan: Plan, devices_per_node: int) -> "Groups":
        return _groups_of(plan.tp, plan.cp, plan.pp, plan.dp, plan.ep, plan.etp, devices_per_node)

    @classmethod
    def on(cls, plan: Plan, cluster: ClusterSpec) -> "Groups":
        """`of` on a cluster of nodes; on TPU slices, the axes laid onto the torus (cluster.torus_groups), and
        with ZeRO across slices (plan.dcn_replicas > 1) the data-parallel group is the slice's own part."""
        if not cluster.is_torus:
            return cls.of(plan, cluster.devices_per_node)
        try:
            g = torus_groups({"tp": plan.tp, "cp": plan.cp, "pp": plan.pp, "dp": plan.dp}, cluster)
        except TorusError as exc:
            raise CostModelError(str(exc)) from None
        dp = with_cp(g["dp"], g["cp"])
        if plan.dcn_replicas > 1:
            dp = Group(size=dp.per_node, per_node=dp.per_node, nodes=1, rings=dp.rings)
        return cls(tp=g["tp"], cp=g["cp"], pp=g["pp"], dp=dp,
                   ep=moe.ep_group(plan.ep, plan.etp, cluster.devices_per_node),
                   etp=moe.etp_group(plan.etp, cluster.devices_per_node))


@functools.lru_cache(maxsize=65536)
def _groups_of(tp: int, cp: int, pp: int, dp: int, ep: int, etp: int, devices_per_node: int) -> Groups:
    """Groups.of for these degrees: a pure function of integers, cached (a planner's search places the same
    few thousand degree combinations for every micro-batch, recompute and schedule; Groups is frozen)."""
    return Groups(tp=place_group(tp, 1, devices_per_node),
                  cp=place_group(cp, tp, devices_per_node),
                  pp=place_group(pp, tp * cp, devices_per_node),
                  dp=place_grid(((cp, tp), (dp, tp * cp * pp)), devices_per_node),
                  ep=moe.ep_group(ep, etp, devices_per_node),
                  etp=moe.etp_group(etp, devices_per_node))


def cross_slice_syncs(plan: Plan, stages: tuple["StageWork", ...], v: int) -> tuple["SyncWork", ...]:
    """ZeRO inside each slice, data parallelism across slices (plan.dcn_replicas): after the in-slice
    reduce-scatter each chip all-reduces its gradient shard with its peers of the other slices over the
    data-center network, once per step (MaxText's dcn_data_parallelism; JAX's gradient psum over the
    'data' mesh axis). One SyncWork per distinct stage, its shard = the stage's gradient bytes / zero_dp."""
    if plan.dcn_replicas <= 1:
        return ()
    across = Group(size=plan.dcn_replicas, per_node=1, nodes=plan.dcn_replicas)
    out: list[SyncWork] = []
    for st in dict.fromkeys(stages):
        where = tuple(i for i, s in enumerate(stages) if s is st)
        grads = st.layers * v * st.grad_bytes_layer + st.grad_bytes_embed + st.grad_bytes_head
        out.append(SyncWork("dcn-data-parallel", where, Comm("all-reduce", grads / plan.zero_dp, across)))
    return tuple(out)


def cp_exposed_time(workload: "Workload", plan: Plan, fwd: PhaseTimes, bwd: PhaseTimes, groups: Groups,
                    cluster: ClusterSpec, layers: int) -> float:
    """Ring-attention K/V exchange per micro-batch over a stage's `layers` that attention compute does not hide.

    A device whose collectives run on the cores that compute (DeviceSpec.overlaps_communication False)
    hides none of it.
    """
    if plan.cp <= 1:
        return 0.0
    spec = workload.model
    kv = spec.kv_heads or spec.heads
    kv_local = kv // plan.tp if plan.tp <= kv else 1
    # K and V of the local heads per token; multi-head latent attention exchanges its decompressed per-head K
    # (nope + rope) and V (v_head_dim), as Megatron-Core's MLA under context parallelism runs its core attention
    width = (kv_local * (spec.mla.qk_head_dim + spec.mla.v_head_dim) if spec.mla is not None
             else 2 * kv_local * spec.head_dim)
    block = plan.micro_batch * (spec.seq_len // plan.cp) * width * DTYPE_BYTES[workload.dtype]
    exchange = (plan.cp - 1) * Comm("p2p", block, groups.cp).time(cluster.fabric)
    hide = 1.0 if cluster.device.overlaps_communication else 0.0
    forward = max(0.0, exchange - hide * fwd.attention / layers)
    backward = max(0.0, 2 * exchange - hide * bwd.attention / layers)
    return layers * (forward * (2 if plan.recompute == "full" else 1) + backward)


def recompute_layer_time(workload: "Workload", plan: Plan, options: Options, fwd: PhaseTimes) -> float:
    """Seconds one layer's backward spends recomputing its forward under `plan.recompute` (one layer's forward
    `fwd`): none, all of it (full), the attention core unless a fused kernel (selective: Megatron's core-attention
    checkpointing, which a fused kernel does not need), `op_sac_recompute_time` (selective-op),
    `dots_recompute_time` (selective-dots). Only the plan's own policy is computed."""
    policy = plan.recompute
    if policy == "none":
        return 0.0
    if policy == "full":
        return fwd.total
    if policy == "selective":
        return fwd.attention if options.attention not in FUSED_ATTENTION else 0.0
    if policy == "selective-op":
        return op_sac_recompute_time(workload, plan, options, fwd)
    if policy == "selective-dots":
        return dots_recompute_time(fwd)
    raise KeyError(policy)


def op_sac_recompute_time(workload: "Workload", plan: Plan, options: Options, fwd: PhaseTimes) -> float:
    """Seconds one layer's backward spends recomputing under torchtitan's op-level SAC (`selective-op`,
    costmodel.activations): the recomputed projections' share of the forward GEMMs
    (compute.op_sac_recomputed_share), every elementwise op of the forward again (norms, rotary, SiLU, the
    products, residual adds: `other`, with FP8 its casts), and the attention forward only with a kernel
    the policy does not cache (anything but a fused one, plan.FUSED_ATTENTION: the policy saves the flash
    and cuDNN SDPA outputs, torchtitan/distributed/activation_checkpoint.py)."""
    attention = fwd.attention if options.attention not in FUSED_ATTENTION else 0.0
    return fwd.matmul * op_sac_recomputed_share(workload, plan) + fwd.other + attention


def dots_recompute_time(fwd: PhaseTimes) -> float:
    """Seconds one layer's backward spends recomputing under JAX's checkpoint_dots_with_no_batch_dims
    (`selective-dots`, costmodel.activations): the attention forward (its batched dots, or the flash kernel,
    are not saved) and every elementwise op of the forward (`other`); no weight GEMM runs again."""
    return fwd.attention + fwd.other


def dots_tp_collectives(size: float, plan: Plan, group: Group, windowed: bool,
                        shares: tuple[float, float, float, float], wgrad_s: float,
                        parallel_block: bool = False) -> tuple[Comms, Overlaps]:
    """(blocking collectives, overlapped ones) the `selective-dots` recomputation repeats per layer (the
    overlapped ones run in the backward, beside the layer's other windowed einsums: `tp_bwd_overlap`). With
    sequence parallelism the norm outputs are recomputed sharded, and the QKV and MLP-up weight gradients
    need them gathered over tp again: two all-gathers of the b*s*h `size`; as XLA windowed einsums
    (`xla_windowed_einsum`) each runs as tp - 1 neighbour messages under (tp - 1)/tp of its weight-gradient
    GEMM (`shares` of one backward pass of `wgrad_s` seconds). Without sequence parallelism the saved
    projection outputs are already whole: nothing repeats. A `parallel_block` has one norm output for both:
    one all-gather, under both weight-gradient GEMMs."""
    if plan.tp <= 1 or not plan.sp:
        return (), ()
    count = TP_COLLECTIVES_PER_PARALLEL_BLOCK if parallel_block else TP_COLLECTIVES_PER_LAYER_FORWARD
    if not windowed:
        return (Comm("all-gather", size, group, count),), ()
    qkv, _, up, _ = shares
    tp = plan.tp
    gemms = (qkv + up,) if parallel_block else (qkv, up)
    return (), tuple(Overlapped(hidden=(Comm("p2p", size / tp, group, tp - 1),), gemm_s=g * wgrad_s * (tp - 1) / tp)
                     for g in gemms)


def op_sac_tp_collectives(size: float, plan: Plan, group: Group, count: int = TP_COLLECTIVES_PER_LAYER_FORWARD
                          ) -> Comms:
    """The tensor-parallel collectives the op-level SAC recomputation repeats per layer: the policy caches
    reduce_scatter_tensor outputs but not all-gathers or all-reduces, so with sequence parallelism the
    all-gathers before the QKV and MLP-up projections run again; without it, the all-reduces (`count` of
    them: tp_collectives_per_layer)."""
    if plan.tp <= 1:
        return ()
    if plan.sp:
        return (Comm("all-gather", size, group, count),)
    return (Comm("all-reduce", size, group, count),)


def sharing_syncs(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                  devices_per_node: int, grad_elem: int) -> tuple[SyncWork, ...]:
    """The gradient all-reduces parameter sharing adds across pipeline stages (module docstring)."""
    if plan.pp <= 1 or sharing.lora is not None:
        return ()
    spec = workload.model
    out: list[SyncWork] = []
    pp_group = place_group(plan.pp, plan.tp * plan.cp, devices_per_node)
    if sharing.tie_embeddings:
        pair = Group(size=2, per_node=1, nodes=2) if pp_group.crosses_nodes else Group(size=2, per_node=2, nodes=1)
        out.append(SyncWork("tied-embedding", (0, plan.pp - 1),
                            Comm("all-reduce", spec.vocab * spec.hidden / plan.tp * grad_elem, pair)))
    k = sharing.layer_groups
    if k and k < spec.layers:
        stages_per_block = min(plan.pp, spec.layers // k)
        if stages_per_block > 1:
            per_block = tp_block_params(spec, profile.layer_params / k, plan.tp)
            blocks = min(k, max(plan.layers_per_stage(spec.layers)))  # the stage with the most blocks
            group = place_group(stages_per_block, plan.tp * plan.cp, devices_per_node)
            out.append(SyncWork("shared-layers", tuple(range(plan.pp)),
                                Comm("all-reduce", per_block * blocks * grad_elem, group)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# The step's work
# ---------------------------------------------------------------------------------------------------

def _tp_collectives(size: float, plan: Plan, group: Group, count: int,
                    algorithm: AllReduceAlgorithm = "nccl") -> Comms:
    """`count` tensor-parallel all-reduces of `size` bytes (reduce-scatter + all-gather with sp), run by
    `algorithm`'s library (an inference engine's choice: Options.all_reduce)."""
    if plan.tp <= 1 or count <= 0:
        return ()
    return _tp_comms(size, plan.sp, group, count, algorithm)


@functools.lru_cache(maxsize=65536)
def _tp_comms(size: float, sp: bool, group: Group, count: int, algorithm: AllReduceAlgorithm) -> Comms:
    """`_tp_collectives` of tp > 1, one tuple per distinct question: the work of thousands of plans (a planner's
    table) holds the same Comm objects, whose cached prices (`_comm_time`) are then found without building and
    comparing new ones. Comm is frozen, so sharing one is the same as building an equal one."""
    if sp:
        return (Comm("reduce-scatter", size, group, count), Comm("all-gather", size, group, count))
    return (Comm("all-reduce", size, group, count, algorithm),)


def tp_overlaps(size: float, plan: Plan, group: Group, gemm_s: tuple[float, float, float, float],
                backward: bool, compute_units: int | None, windowed: bool = False,
                parallel_block: bool = False) -> tuple[Overlaps, float]:
    """One layer's tensor-parallel collectives with tp_comm_overlap, pipelined with their GEMMs as
    Transformer Engine's userbuffers do by default (TE_* constants above), and the compute seconds the
    GEMMs lose to the SMs userbuffers keep for communication.

    `size`: the b*s*h activation (bytes, the full buffer of each collective); `gemm_s`: one pass of the
    layer's (QKV, attention out, MLP up, MLP down) GEMMs in seconds (forward; a backward passes each twice,
    data and weight gradient, and `gemm_s` is then one of the two). Forward: the all-gathers before QKV and
    MLP-up by ring exchange, the reduce-scatters after attention-out and MLP-down pipelined in 4 chunks.
    Backward: the all-gathers of the output gradient before the attention-out and MLP-down data-gradient
    GEMMs by ring exchange, the reduce-scatters of the input gradient beside the QKV and MLP-up weight-
    gradient GEMMs (bulk). A GEMM that leaves TE_COMM_SMS of `compute_units` SMs runs
    units / (units - TE_COMM_SMS) times longer (unknown units: no slowdown).

    `windowed`: XLA's windowed einsum on a TPU slice (XLA_WINDOWED_EINSUM_THRESHOLD_BYTES above) instead of
    userbuffers: every one of the layer's collectives, all-gather before or reduce-scatter after its GEMM, is a
    ring of tp - 1 neighbour collective-permutes of one 1/tp chunk, each under the partial einsum of the chunk
    at hand ((tp - 1)/tp of the GEMM); the TensorCore keeps computing while the DMA moves data (MaxText's
    --xla_tpu_overlap_compute_collective_tc), so no GEMM is slowed.

    `parallel_block` (TP_COLLECTIVES_PER_PARALLEL_BLOCK): one collective on each side of the layer, the
    gather of the shared input under the QKV and MLP-up GEMMs together, the reduction of the branches' sum
    under the attention-out and MLP-down GEMMs together (backward: the other way round).
    """
    tp = plan.tp
    if parallel_block:
        qkv, out, up, down = gemm_s
        inputs, outputs = qkv + up, out + down
    if windowed:
        def windowed_einsum(gemm: float) -> Overlapped:
            return Overlapped(hidden=(Comm("p2p", size / tp, group, tp - 1),), gemm_s=gemm * (tp - 1) / tp)
        gemms = (inputs, outputs) if parallel_block else gemm_s
        return tuple(windowed_einsum(g) for g in gemms), 0.0
    units = compute_units or 0
    margin = units / (units - TE_COMM_SMS) if units > TE_COMM_SMS else 1.0
    qkv, out, up, down = gemm_s

    def ring_exchange(gemm: float) -> Overlapped:
        return Overlapped(hidden=(Comm("p2p", size / tp, group, tp - 1),), gemm_s=gemm * (tp - 1) / tp)

    def pipeline(gemm: float) -> Overlapped:
        n = TE_PIPELINE_SPLITS
        chunk = size / n
        return Overlapped(hidden=(Comm("reduce-scatter", chunk, group, n - 1),),
                          gemm_s=gemm * margin * (n - 1) / n, exposed=(Comm("reduce-scatter", chunk, group),))

    def bulk(gemm: float) -> Overlapped:
        return Overlapped(hidden=(Comm("reduce-scatter", size, group),), gemm_s=gemm * margin)

    if parallel_block:
        if backward:
            return (ring_exchange(outputs), bulk(inputs)), inputs * (margin - 1)
        return (ring_exchange(inputs), pipeline(outputs)), outputs * (margin - 1)
    if backward:
        return (ring_exchange(out), ring_exchange(down), bulk(qkv), bulk(up)), (qkv + up) * (margin - 1)
    return (ring_exchange(qkv), pipeline(out), ring_exchange(up), pipeline(down)), (out + down) * (margin - 1)


def xla_windowed_einsum(size: float, plan: Plan, cluster: ClusterSpec) -> bool:
    """Whether a layer's tensor-parallel collectives run as XLA windowed einsums (collective matmul,
    XLA_WINDOWED_EINSUM_THRESHOLD_BYTES): on a TPU slice (a torus cluster: one XLA SPMD program), with the
    activations sharded over tp between the GEMMs (sp: MaxText's `activation_embed` on the tensor axis), and
    the gathered activation of `size` bytes (b*s*h) at least the partitioner's threshold."""
    return (cluster.is_torus and plan.sp and plan.tp > 1 and cluster.device.overlaps_communication
            and size >= XLA_WINDOWED_EINSUM_THRESHOLD_BYTES)


def _pipeline_message(size: float, plan: Plan, options: Options, groups: Groups) -> tuple[Comm | None, Comms]:
    """(the message between stages, the all-gather the receiver runs over tensor parallel) for one
    activation of `size` bytes; with tp > 1 only 1/tp of it is sent (scatter/gather or sp)."""
    if plan.pp <= 1:
        return None, ()
    split = plan.tp > 1 and (options.p2p_scatter_gather or plan.sp)
    return _pipeline_comms(size, plan.tp, split, split and not plan.sp, groups.pp, groups.tp)


@functools.lru_cache(maxsize=65536)
def _pipeline_comms(size: float, tp: int, split: bool, gathered: bool, pp_group: Group, tp_group: Group
                    ) -> tuple[Comm, Comms]:
    """`_pipeline_message` of pp > 1, one answer per distinct question (shared Comm objects, as `_tp_comms`)."""
    gather = (Comm("all-gather", size, tp_group),) if gathered else ()
    return Comm("p2p", size / tp if split else size, pp_group), gather


def _stage_kinds(pp: int) -> list[str]:
    if pp == 1:
        return ["first"]
    return ["first"] + ["middle"] * (pp - 2) + ["last"]


def layer_phase_times(profile: "WorkloadProfile", workload: "Workload", plan: Plan, options: Options, rates: Rates,
                      phase: str, steps: int = 1) -> PhaseTimes:
    """One Transformer layer's share of `phase` for one micro-batch on one device: the layers region divided
    over tp*cp devices and the model's L layers (every layer costs the same; a stage runs its own count of
    them, Plan.layers_per_stage)."""
    return phase_times(profile, workload, plan, options, rates, phase, "layers",
                       plan.tp * plan.cp * workload.model.layers, steps)


def train_work(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
               cluster: ClusterSpec, options: Options = Options()) -> StepWork:
    """The training step of one pipeline replica, stage by stage. Raises CostModelError if the device
    cannot be priced in the workload's dtype."""
    return train_works(workload, profile, sharing, plan, cluster, (plan.micro_batch,), options)[0]


def train_works(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                cluster: ClusterSpec, micro_batches: Sequence[int], options: Options = Options()) -> list[StepWork]:
    """`train_work` of `plan` with each micro-batch size of `micro_batches` (replace(plan, micro_batch=b)), in their
    order: the same work, built by the same code (train_work is this with one size). What the micro-batch size
    does not change is built once for all of them: the device's rates, the placed groups, the split, each
    stage's per-step terms (`stage_step_terms`, which read no micro-batch size: `stage_step_plan_key`) and the
    parameter-sharing syncs (`sharing_syncs`: the embedding and shared blocks' gradients). A planner's table
    prices thousands of plans that differ only in the micro-batch size. Raises CostModelError as train_work."""
    spec = workload.model
    rates = workload_rates(cluster, workload)
    plan = plan_on(plan, cluster)
    groups = Groups.on(plan, cluster)
    elem = DTYPE_BYTES[workload.dtype]
    # bytes per gradient element reduced across data parallelism; params_fp32: the 16-bit cotangent
    grad_elem = FP32_BYTES if options.main_grads_fp32 and not options.params_fp32 else elem
    counts = plan.layers_per_stage(spec.layers)
    kinds = _stage_kinds(plan.pp)
    # each stage's share of MoE layers (costmodel.moe.stage_moe_layers): stages alike (same kind, layers and
    # share) share one StageWork, whose per-step terms are built once here
    shares = ([moe.stage_moe_share(workload, plan, i) for i in range(plan.pp)] if spec.moe is not None
              else [0.0] * plan.pp)
    keys = list(zip(kinds, counts, shares))
    fixed: dict[tuple[str, int, float], StageStepTerms] = {}
    for index, key in enumerate(keys):
        if key not in fixed:
            fixed[key] = stage_step_terms(workload, profile, sharing, plan, cluster, rates, groups, options, index,
                                          key[1])
    syncs = sharing_syncs(workload, profile, sharing, plan, cluster.devices_per_node, grad_elem)
    return [_train_work_at(workload, profile, plan if b == plan.micro_batch else replace(plan, micro_batch=b),
                           cluster, options, rates, groups, keys, fixed, syncs)
            for b in micro_batches]


def _train_work_at(workload: "Workload", profile: "WorkloadProfile", plan: Plan, cluster: ClusterSpec,
                   options: Options, rates: Rates, groups: Groups, keys: list[tuple[str, int, float]],
                   fixed: dict[tuple[str, int, float], StageStepTerms], syncs: tuple[SyncWork, ...]) -> StepWork:
    """train_works' step of one micro-batch size (`plan`'s): what the micro-batch size changes (each pass's
    seconds, the activation and so every tensor-parallel, context-parallel and pipeline message, the experts'
    work), over the stages `keys` (kind, layers, share of MoE layers) and their per-step terms `fixed`."""
    spec = workload.model
    elem = DTYPE_BYTES[workload.dtype]
    # one layer's forward and backward (layer_phase_times), the embedding's and the head's (over tp x cp)
    edge_div = plan.tp * plan.cp
    layer_div = edge_div * spec.layers
    fwd, bwd, embed_f, embed_b, head_f, head_b = phase_times_of(
        profile, workload, plan, options, rates,
        (("forward", "layers", layer_div), ("backward", "layers", layer_div), ("forward", "embed", edge_div),
         ("backward", "embed", edge_div), ("forward", "head", edge_div), ("backward", "head", edge_div)))
    recompute = recompute_layer_time(workload, plan, options, fwd)
    embed = [embed_f.total, embed_b.total]
    head = [head_f.total, head_b.total]

    activation = plan.micro_batch * (spec.seq_len // plan.cp) * spec.hidden * elem
    p2p, recv_gather = _pipeline_message(activation, plan, options, groups)
    cp_layer = cp_exposed_time(workload, plan, fwd, bwd, groups, cluster, 1)

    n_tp = tp_collectives_per_layer(spec)  # each pass; the backward's are the forward's conjugates
    tp_fwd = _tp_collectives(activation, plan, groups.tp, n_tp)
    tp_bwd = _tp_collectives(activation, plan, groups.tp, n_tp)
    tp_edge = _tp_collectives(activation, plan, groups.tp, 1)
    fwd_s, bwd_s, recompute_s = fwd.total, bwd.total, recompute  # one layer's
    fwd_overlap: Overlaps = ()
    bwd_overlap: Overlaps = ()
    windowed = xla_windowed_einsum(activation, plan, cluster)
    if (plan.tp_comm_overlap or windowed) and plan.sp and plan.tp > 1 and cluster.device.overlaps_communication:
        qkv, out, up, down = layer_gemm_shares(workload, plan)
        forward = fwd.matmul                         # one layer's GEMMs
        backward = bwd.matmul / 2                    # one of a backward's two passes (data, weight gradient)
        fwd_overlap, fwd_margin = tp_overlaps(activation, plan, groups.tp, (qkv * forward, out * forward,
                                              up * forward, down * forward), False, rates.compute_units, windowed,
                                              spec.parallel_block)
        bwd_overlap, bwd_margin = tp_overlaps(activation, plan, groups.tp, (qkv * backward, out * backward,
                                              up * backward, down * backward), True, rates.compute_units, windowed,
                                              spec.parallel_block)
        tp_fwd = tp_bwd = ()
        fwd_s, bwd_s = fwd_s + fwd_margin, bwd_s + bwd_margin
        recompute_s += fwd_margin if plan.recompute == "full" else 0.0
    # one MoE layer's routed experts and token collectives, added to each stage's mean layer at the stage's
    # own share of MoE layers (costmodel.moe.stage_moe_layers)
    expert_layer = (moe_layer_work(workload, profile, plan, rates, groups, runs_compiled(options, rates, "experts"))
                    if spec.moe is not None else None)
    amax_sp = precision.sp_amax_reductions(workload, plan)
    if amax_sp:  # current scaling + sp: the FP8-gathered tensors' amax, one fp32 each, over tp
        tp_fwd += (Comm("all-reduce", precision.AMAX_BYTES, groups.tp, amax_sp),)
        tp_bwd += (Comm("all-reduce", precision.AMAX_BYTES, groups.tp, amax_sp),)
    tp_recompute = (tp_fwd if plan.recompute == "full" else
                    op_sac_tp_collectives(activation, plan, groups.tp, n_tp) if plan.recompute == "selective-op"
                    else ())
    recompute_overlap = fwd_overlap if plan.recompute == "full" else ()
    if plan.recompute == "selective-dots":  # windowed: under the backward's weight-gradient GEMMs
        tp_recompute, regathers = dots_tp_collectives(activation, plan, groups.tp, windowed,
                                                      layer_gemm_shares(workload, plan), bwd.matmul / 2,
                                                      spec.parallel_block)
        bwd_overlap += regathers
    by_key: dict[tuple[str, int, float], StageWork] = {}
    for key in keys:  # stages alike share one StageWork
        kind, n, share_moe = key
        if key in by_key:
            continue
        st_fwd_s, st_bwd_s, st_recompute_s = fwd_s, bwd_s, recompute_s
        st_tp_fwd, st_tp_bwd, st_fwd_overlap, st_bwd_overlap = tp_fwd, tp_bwd, fwd_overlap, bwd_overlap
        st_tp_recompute, st_recompute_overlap = tp_recompute, recompute_overlap
        if expert_layer is not None and share_moe:
            if not spec.moe.shared_experts:  # the MoE layers' tokens cross tp in the dispatcher, not around an MLP
                st_tp_fwd = without_mlp_pair(tp_fwd, activation, groups.tp, share_moe)
                st_tp_bwd = without_mlp_pair(tp_bwd, activation, groups.tp, share_moe)
            st_fwd_s, st_bwd_s, st_tp_fwd, st_tp_bwd, st_fwd_overlap, st_bwd_overlap = _with_experts(
                expert_layer, share_moe, plan, cluster, fwd_s, bwd_s, st_tp_fwd, st_tp_bwd, fwd_overlap, bwd_overlap)
            if plan.recompute == "full":  # the recomputed forward runs the experts and their collectives again
                st_recompute_s += st_fwd_s - fwd_s
                st_tp_recompute, st_recompute_overlap = st_tp_fwd, st_fwd_overlap
        step = fixed[key]
        first, last = kind == "first", kind == "last" or plan.pp == 1
        by_key[key] = StageWork(
            layers=step.layers,
            fwd_layer_s=st_fwd_s + step.amax_fwd, bwd_layer_s=st_bwd_s + step.amax_bwd,
            recompute_layer_s=st_recompute_s, cp_layer_s=cp_layer,
            embed_fwd_s=embed[0] if first else 0.0, embed_bwd_s=embed[1] if first else 0.0,
            head_fwd_s=head[0] if last else 0.0, head_bwd_s=head[1] if last else 0.0,
            tp_fwd=st_tp_fwd, tp_recompute=st_tp_recompute, tp_bwd=st_tp_bwd,
            tp_fwd_overlap=st_fwd_overlap, tp_recompute_overlap=st_recompute_overlap, tp_bwd_overlap=st_bwd_overlap,
            tp_embed=tp_edge if first else (), tp_head=tp_edge if last else (),
            recv_gather=recv_gather, accumulate_s=step.accumulate_s, optimizer_s=step.optimizer_s,
            grad_bytes_layer=step.grad_bytes_layer, grad_bytes_embed=step.grad_bytes_embed,
            grad_bytes_head=step.grad_bytes_head, param_bytes_layer=step.param_bytes_layer,
            param_bytes_embed=step.param_bytes_embed, param_bytes_head=step.param_bytes_head,
            gather_after_step=step.gather_after_step)
    stages = tuple(map(by_key.__getitem__, keys))
    return StepWork(stages=stages, microbatches=plan.microbatches,
                    schedule=plan.schedule,
                    virtual_stages=plan.v, p2p=p2p,
                    dp_op="all-reduce" if plan.zero == 0 else "reduce-scatter", dp_group=groups.dp, zero=plan.zero,
                    overlap_grad_reduce=plan.overlap_grad_reduce,
                    overlap_param_gather=(plan.overlap_param_gather and plan.zero in (1, 2)
                                          and cluster.device.overlaps_communication),
                    overlap_p2p=plan.p2p_overlapped and plan.pp > 1 and cluster.device.overlaps_communication,
                    syncs=syncs + cross_slice_syncs(plan, stages, plan.v),
                    comm_shares_cores=not cluster.device.overlaps_communication)


@dataclass(frozen=True)
class StageStepTerms:
    """What train_work's stage holds that neither the micro-batch size, the recompute policy, sequence
    parallelism nor the schedule (but for its chunks per device) changes: its layers per model chunk, the
    delayed-scaling amax seconds per layer and pass, the step's accumulation and optimizer seconds, the
    gradient and parameter bytes data parallelism moves, and ZeRO 1/2's gather after the step (StageWork's
    fields of the same names)."""

    layers: int
    amax_fwd: float
    amax_bwd: float
    accumulate_s: float
    optimizer_s: float
    grad_bytes_layer: float
    grad_bytes_embed: float
    grad_bytes_head: float
    param_bytes_layer: float
    param_bytes_embed: float
    param_bytes_head: float
    gather_after_step: Comms


class _StepMemo:
    """stage_step_memo's table: StageStepTerms by (objects, stage, the plan fields they read), and the objects
    keyed by id() in it, kept alive so that no id is reused while the memo lives."""

    def __init__(self) -> None:
        self.results: dict[tuple, StageStepTerms] = {}
        self.alive: dict[int, object] = {}


# The open memo of this thread / task, if any: scoped to the `with stage_step_memo()` block that opened it (as
# compute.phase_memo), so two threads pricing tables never share one.
_STEP_MEMO: ContextVar[_StepMemo | None] = ContextVar("llmsim_stage_step_memo", default=None)


@contextmanager
def stage_step_memo() -> Iterator[None]:
    """Within this block, `stage_step_terms` computes each distinct question once: calls whose arguments agree on
    the objects (workload, profile, sharing, cluster, options), the stage and the plan fields the terms read
    (`stage_step_plan_key`) share one result. The planner's table builds the work of thousands of plans that
    differ only in the micro-batch size, recompute or sequence parallelism; the numbers are the same as
    without the block. Nested blocks share the outer one's table."""
    with scoped_memo(_STEP_MEMO, _StepMemo):
        yield


def stage_step_plan_key(plan: Plan) -> tuple:
    """The fields of `plan` that `stage_step_terms` reads (through the parameter counts, the data-parallel and
    expert-data-parallel shares, the groups it places, the optimizer's shard and the accumulation's count):
    tp, pp, cp, dp, ZeRO, the micro-batch count, the chunks per device, the split, ep, etp and the slices'
    replicas; not the micro-batch size, recompute, sp, the overlaps or the schedule's name.
    tests/costmodel/test_work.py checks that plans agreeing on these get the same work."""
    return (plan.tp, plan.pp, plan.cp, plan.dp, plan.zero, plan.microbatches, plan.v, plan.stage_layers, plan.ep,
            plan.etp, plan.dcn_replicas)


def stage_step_terms(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                     cluster: ClusterSpec, rates: Rates, groups: Groups, options: Options, index: int,
                     layers: int) -> StageStepTerms:
    """StageStepTerms of stage `index` (`layers` layers, all its chunks) of `plan` as it runs on `cluster`
    (`rates`, `groups`: its device's and its placed groups, train_work's). Inside `stage_step_memo`, a question
    asked before is answered from its table."""
    memo = _STEP_MEMO.get()
    if memo is None:
        return _stage_step_terms(workload, profile, sharing, plan, cluster, rates, groups, options, index, layers)
    key = (id(workload), id(profile), id(sharing), id(cluster), id(options), index, layers, *stage_step_plan_key(plan))
    out = memo.results.get(key)
    if out is None:
        out = memo.results[key] = _stage_step_terms(workload, profile, sharing, plan, cluster, rates, groups, options,
                                                    index, layers)
        for obj in (workload, profile, sharing, cluster, options):
            memo.alive[id(obj)] = obj
    return out


def _stage_step_terms(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                      cluster: ClusterSpec, rates: Rates, groups: Groups, options: Options, index: int,
                      n: int) -> StageStepTerms:
    elem = DTYPE_BYTES[workload.dtype]
    # bytes per gradient element reduced across data parallelism; params_fp32: the 16-bit cotangent
    grad_elem = FP32_BYTES if options.main_grads_fp32 and not options.params_fp32 else elem
    kind = _stage_kinds(plan.pp)[index]
    counts = stage_param_counts(workload, profile, sharing, plan, index, options)
    params, trainable = counts.params, counts.trainable
    layer_params, layer_trainable = counts.layer_params, counts.layer_trainable
    # routed experts reduce and gather over the expert-data-parallel group, not dp (costmodel.moe)
    experts = counts.experts
    reduced = moe.data_parallel_params(plan, layer_trainable, experts if sharing.lora is None else 0.0)
    gathered = moe.data_parallel_params(plan, layer_params, experts)
    # ZeRO shards the experts' optimizer step over edp: as many parameters as dp*cp/edp times theirs over dp x cp
    updated = moe.optimizer_params(plan, trainable, experts, sharing.lora is None)
    share = trainable / profile.trainable_params if profile.trainable_params else 0.0  # of the optimizer
    optimizer_bytes, optimizer_ops = _optimizer_totals(profile)
    edge_params, edge_trainable = params - layer_params, trainable - layer_trainable
    first, last = kind == "first", kind == "last" or plan.pp == 1
    split = 0.5 if plan.pp == 1 else 1.0  # the only stage holds both embedding and head
    # ZeRO 1/2: each rank updated its shard of the trainable parameters; the all-gather hands the updated
    # values round (Megatron-Core's distributed optimizer gathers its param buffers, which hold only
    # parameters with requires_grad: a frozen base under LoRA is never updated, so never gathered)
    gathered_after = moe.data_parallel_params(plan, trainable, experts if sharing.lora is None else 0.0)
    gather_after = ((Comm("all-gather", gathered_after * elem, groups.dp),)
                    if plan.zero in (1, 2) and plan.dp_cp > 1 and gathered_after > 0 else ())
    chunk = n // plan.v
    amax_fwd, amax_bwd = (_delayed_amax_time(workload, plan, groups, cluster, rates, chunk, phase) / chunk
                          if chunk else 0.0 for phase in ("forward", "backward"))
    return StageStepTerms(
        layers=chunk, amax_fwd=amax_fwd, amax_bwd=amax_bwd,
        accumulate_s=accumulate_time(rates, counts.accumulated, plan.microbatches, workload.dtype, options),
        optimizer_s=optimizer_time(rates, updated, plan, workload.dtype, options,
                                   (optimizer_bytes * share, optimizer_ops * share)),
        grad_bytes_layer=reduced / n * grad_elem if n else 0.0,
        grad_bytes_embed=edge_trainable * grad_elem * (split if first else 0.0),
        grad_bytes_head=edge_trainable * grad_elem * (split if last else 0.0),
        param_bytes_layer=(precision.gathered_layer_bytes(workload, plan, gathered / n, elem) if n else 0.0),
        param_bytes_embed=edge_params * elem * (split if first else 0.0),
        param_bytes_head=edge_params * elem * (split if last else 0.0),
        gather_after_step=gather_after)


def _delayed_amax_time(workload: "Workload", plan: Plan, groups: Groups, cluster: ClusterSpec, rates: Rates,
                      layers: int, phase: str) -> float:
    """Seconds of delayed scaling's once-per-pass amax bookkeeping of a model chunk of `layers` layers, per
    micro-batch (costmodel.precision): the blocking all-reduce (async_op=False) of the concatenated amaxes
    over the tensor-parallel group, then one fused kernel that updates every amax history and scale. Megatron
    passes TE the tp x dp x cp group (parallel_state.get_amax_reduction_group); only its tp part is priced
    here, the group whose ranks hold shards of the same tensors. 0 for other recipes and for inference."""
    size = precision.delayed_amax_buffer_bytes(workload, layers, phase)
    if not size:
        return 0.0
    reduce = Comm("all-reduce", size, groups.tp).time(cluster.fabric) if plan.tp > 1 else 0.0
    update = rates.efficiency.kernel_latency_s + rates.memory_time(
        precision.amax_history_update_bytes(workload, layers, phase))
    return reduce + update


def a2a_comms(workload: "Workload", plan: Plan, group: Group, phase: str, count: int, share: float = 1.0) -> Comms:
    """`count` dispatch/combine all-to-alls of `share` of one MoE layer (a stage's mean layer holds its share
    of MoE layers: moe.stage_moe_share) over the placed ep group: each rank's tokens x top_k x hidden buffer
    (moe.a2a_buffer_bytes); none without expert parallelism."""
    spec = workload.model
    if spec.moe is None or plan.ep <= 1 or count <= 0 or share <= 0:
        return ()
    size = moe.a2a_buffer_bytes(moe.tokens_per_rank(workload, plan, phase), spec.moe.top_k, spec.hidden,
                                DTYPE_BYTES[workload.dtype]) * share
    return (Comm("all-to-all", size, group, count),)


def etp_comms(workload: "Workload", plan: Plan, group: Group, phase: str, share: float = 1.0) -> Comms:
    """The expert-tensor-parallel token collectives of `share` of one MoE layer for one pass (moe.etp_token_bytes):
    forward the all-gather of the routed tokens over the etp group after the dispatch and the reduce-scatter
    of the experts' partial outputs before the combine; backward their conjugates (a reduce-scatter and an
    all-gather of the same size). None at etp = 1."""
    spec = workload.model
    if spec.moe is None or plan.etp <= 1 or share <= 0:
        return ()
    size = moe.etp_token_bytes(moe.tokens_per_rank(workload, plan, phase), spec.moe.top_k, spec.hidden,
                               DTYPE_BYTES[workload.dtype], plan.etp) * share
    return (Comm("all-gather", size, group, moe.ETP_GATHERS_PER_MOE_LAYER),
            Comm("reduce-scatter", size, group, moe.ETP_SCATTERS_PER_MOE_LAYER))


@dataclass(frozen=True)
class MoeLayerWork:
    """One MoE layer's routed experts on the busiest rank of the ep group, for one micro-batch: seconds of
    the forward and backward expert GEMMs and ops, and the token collectives of each pass, full size (a
    stage scales them by its share of MoE layers: `_with_experts`)."""

    fwd_s: float
    bwd_s: float
    a2a_fwd: Comms
    a2a_bwd: Comms
    etp_fwd: Comms
    etp_bwd: Comms


def moe_layer_work(workload: "Workload", profile: "WorkloadProfile", plan: Plan, rates: Rates, groups: Groups,
                   compiled: bool = False) -> MoeLayerWork:
    """`MoeLayerWork` of the case (costmodel.moe): 2 all-to-alls forward and 2 backward over the ep group
    (dispatch, combine and their conjugates), and with etp > 1 an all-gather and a reduce-scatter of the
    routed tokens over the etp group in each pass (Megatron-Core MoEAlltoAllTokenDispatcher)."""
    return MoeLayerWork(
        fwd_s=moe.experts_layer_time(profile, workload, plan, rates, "forward", compiled=compiled),
        bwd_s=moe.experts_layer_time(profile, workload, plan, rates, "backward", compiled=compiled),
        a2a_fwd=a2a_comms(workload, plan, groups.ep, "forward", moe.A2A_PER_MOE_LAYER_FORWARD),
        a2a_bwd=a2a_comms(workload, plan, groups.ep, "backward", moe.A2A_PER_MOE_LAYER_BACKWARD),
        etp_fwd=etp_comms(workload, plan, groups.etp, "forward"),
        etp_bwd=etp_comms(workload, plan, groups.etp, "backward"))


def _scaled(comms: Comms, share: float) -> Comms:
    """`comms` at `share` of their size (a stage's mean layer: its share of MoE layers)."""
    return tuple(replace(c, size=c.size * share) for c in comms)


def without_mlp_pair(comms: Comms, size: float, group: Group, share: float) -> Comms:
    """A layer's tensor-parallel collectives (`_tp_collectives` of `size` bytes over `group`, one per
    sub-layer: attention and MLP) with the MLP's taken out of `share` of the layers. A MoE layer without
    shared experts has no sequence-parallel gather and scatter around a dense MLP: its routed tokens cross
    the tensor-parallel ranks in the dispatcher instead (the all-to-all over ep, the etp collectives:
    Megatron-Core MoELayer routes the sequence-parallel tokens; token_dispatcher.py). Shared experts keep
    theirs (shared_experts.py: gather_from_sequence_parallel_region / reduce_scatter_to_sequence_parallel_region
    over the tensor-parallel group)."""
    out: list[Comm] = []
    for c in comms:
        if c.group == group and c.size == size and c.count >= 2 and c.op in ("all-reduce", "reduce-scatter",
                                                                             "all-gather"):
            out.append(replace(c, count=c.count - 1))
            if share < 1:
                out.append(replace(c, size=c.size * (1 - share), count=1))
        else:
            out.append(c)
    return tuple(out)


def _with_experts(layer: MoeLayerWork, share: float, plan: Plan, cluster: ClusterSpec, fwd_s: float, bwd_s: float,
                  tp_fwd: Comms, tp_bwd: Comms, fwd_overlap: Overlaps, bwd_overlap: Overlaps
                  ) -> tuple[float, float, Comms, Comms, Overlaps, Overlaps]:
    """A stage's mean layer with `share` of one MoE layer's routed experts added (`moe_layer_work`): the
    busiest rank's expert time, and the all-to-alls over the ep group on the critical path, or with
    ep_comm_overlap each pass's all-to-alls as an `Overlapped` beside the layer's compute that nothing else
    overlaps (Megatron-Core --overlap-moe-expert-parallel-comm runs one micro-batch's all-to-all under
    another's computation; DeepSeek-V3's DualPipe likewise). The etp all-gather and reduce-scatter sit
    between the dispatch and the experts and between the experts and the combine: exposed (Megatron-Core
    runs them as plain collectives on the compute stream, token_dispatcher.py dispatch_postprocess /
    combine_preprocess)."""
    fwd_s += share * layer.fwd_s
    bwd_s += share * layer.bwd_s
    a2a_fwd, a2a_bwd = _scaled(layer.a2a_fwd, share), _scaled(layer.a2a_bwd, share)
    tp_fwd, tp_bwd = tp_fwd + _scaled(layer.etp_fwd, share), tp_bwd + _scaled(layer.etp_bwd, share)
    if plan.ep_comm_overlap and cluster.device.overlaps_communication:
        if a2a_fwd:
            fwd_overlap += (Overlapped(hidden=a2a_fwd, gemm_s=max(fwd_s - overlapped_gemm_s(fwd_overlap), 0.0)),)
        if a2a_bwd:
            bwd_overlap += (Overlapped(hidden=a2a_bwd, gemm_s=max(bwd_s - overlapped_gemm_s(bwd_overlap), 0.0)),)
        return fwd_s, bwd_s, tp_fwd, tp_bwd, fwd_overlap, bwd_overlap
    return fwd_s, bwd_s, tp_fwd + a2a_fwd, tp_bwd + a2a_bwd, fwd_overlap, bwd_overlap


def inference_plan(plan: Plan) -> Plan:
    """How a server splits one replica's batch for a forward pass (prefill, or one token step).

    Without a pipeline it runs the whole batch at once. With pp stages it keeps pp micro-batches of
    batch/pp sequences in flight, so that every stage has work (FasterTransformer's ParallelGpt:
    `getLocalBatchSize(batch, seq_len, pp)` divides the batch by pp when it can and runs `batch /
    local_batch_size` iterations per step, src/fastertransformer/utils/nccl_utils.cc; vLLM's engine runs
    `max_concurrent_batches = pipeline_parallel_size` batches at once, vllm/v1/engine/core.py); a batch pp
    does not divide runs whole. A strategy's `micro_batch` is a training setting and does not apply:
    running a decode batch one sequence at a time would read every stage's weights once per sequence.
    (FasterTransformer also halves a context-phase micro-batch while it holds more than 1,024 tokens, a
    memory cap of its own that is not modelled.)
    """
    batch = plan.micro_batch * plan.microbatches
    microbatches = plan.pp if plan.pp > 1 and batch % plan.pp == 0 else 1
    return replace(plan, micro_batch=batch // microbatches, microbatches=microbatches)


def forward_work(workload: "Workload", profile: "WorkloadProfile", plan: Plan, cluster: ClusterSpec,
                 options: Options = Options(), phase: str = "prefill", steps: int = 1) -> StepWork:
    """A forward-only pass of one pipeline replica: the prefill, or one decode token step of the `steps`
    traced (inference runs every micro-batch through the pipeline in order, a GPipe fill)."""
    spec = workload.model
    # the split as stated or defaulted for the strategy's schedule, before inference drops interleaving
    plan = replace(inference_plan(plan), schedule="1f1b", virtual_stages=1,
                   stage_layers=plan.layers_per_stage(spec.layers))
    rates = workload_rates(cluster, workload)
    groups = Groups.on(plan, cluster)
    layer_t = layer_phase_times(profile, workload, plan, options, rates, phase, steps)
    edge_div = plan.tp * plan.cp
    embed = phase_times(profile, workload, plan, options, rates, phase, "embed", edge_div, steps).total
    head = phase_times(profile, workload, plan, options, rates, phase, "head", edge_div, steps).total
    counts = plan.layers_per_stage(spec.layers)
    tokens = plan.micro_batch * (1 if phase == "decode" else spec.seq_len // plan.cp)
    activation = tokens * spec.hidden * DTYPE_BYTES[workload.dtype]
    layer_s = layer_t.total
    tp_layer = _tp_collectives(activation, plan, groups.tp, tp_collectives_per_layer(spec), options.all_reduce)
    expert_s = (moe.experts_layer_time(profile, workload, plan, rates, phase, steps,
                                       runs_compiled(options, rates, "experts")) if spec.moe is not None else 0.0)
    shares = [moe.stage_moe_share(workload, plan, i) for i in range(plan.pp)] if spec.moe is not None \
        else [0.0] * plan.pp

    def stage_layer(share: float) -> tuple[float, Comms, Overlaps]:
        """A stage's mean layer with `share` of one MoE layer's routed experts and its dispatch and combine
        (costmodel.moe.stage_moe_share)."""
        if not share:
            return layer_s, tp_layer, ()
        seconds = layer_s + share * expert_s
        # an ep inside the tp group exchanges no tokens at inference (moe.ep_inside_tp): only the tp all-reduce
        a2a = () if moe.ep_inside_tp(plan) else a2a_comms(workload, plan, groups.ep, phase,
                                                            moe.A2A_PER_MOE_LAYER_FORWARD, share)
        if plan.ep_comm_overlap and cluster.device.overlaps_communication and a2a:
            return seconds, tp_layer, (Overlapped(hidden=a2a, gemm_s=seconds),)
        return seconds, tp_layer + a2a, ()
    p2p, recv_gather = _pipeline_message(activation, plan, options, groups)
    # the last stage chooses the next token of each sequence of the micro-batch (costmodel.sampling): the
    # prefill's first token and every decode step's
    head += sampling.sampling_time(workload, plan, rates, plan.micro_batch, options)
    gather = sampling.logits_gather_bytes(workload, plan, plan.micro_batch, options)
    logits_gather = (Comm("all-gather", gather, groups.tp),) if gather else ()
    kinds = _stage_kinds(plan.pp)
    keys = list(zip(kinds, counts, shares))
    by_key: dict[tuple[str, int, float], StageWork] = {}
    for kind, n, share in keys:
        first, last = kind == "first", kind == "last" or plan.pp == 1
        st_layer_s, st_tp_layer, layer_overlap = stage_layer(share)
        by_key[(kind, n, share)] = StageWork(layers=n, fwd_layer_s=st_layer_s,
                                      embed_fwd_s=embed if first else 0.0, head_fwd_s=head if last else 0.0,
                                      tp_fwd=st_tp_layer, tp_fwd_overlap=layer_overlap,
                                      tp_embed=(_tp_collectives(activation, plan, groups.tp, 1, options.all_reduce)
                                                if first else ()),
                                      logits_gather=logits_gather if last else (), recv_gather=recv_gather)
    return StepWork(stages=tuple(by_key[key] for key in keys), microbatches=plan.microbatches,
                    schedule="gpipe", forward_only=True,
                    p2p=p2p, comm_shares_cores=not cluster.device.overlaps_communication)
