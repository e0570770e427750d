"""Mixture-of-experts layers priced: the token all-to-alls, the routed experts' GEMMs, their memory and the
expert weights a decode step reads. Pure functions of numbers (torch-free), used by costmodel.work, memory
and iteration.

Expert parallelism as Megatron-Core runs it (megatron/core/transformer/moe/README.md; token_dispatcher.py,
MoEAlltoAllTokenDispatcher): the routed experts of a layer are split over `ep` ranks carved out of the
data- and context-parallel ranks (per pipeline stage tp*cp*dp = etp*ep*edp), each expert's weights split
further over `etp` ranks (expert tensor parallelism). Each rank routes its own tokens (with tp > 1 the
sequence-parallel 1/tp of them: Megatron-Core requires sequence parallelism for MoE with tp > 1), sends
each (token, chosen expert) pair to the rank that holds the expert (dispatch), the experts run, and the
results come back (combine). Every token is sent top_k times, 1/ep of them to itself:

    bytes each rank sends per all-to-all = tokens x top_k x hidden x bytes x (ep - 1) / ep

Per MoE layer and micro-batch: forward dispatch + combine (2), backward their two conjugates (2), and a full
recompute repeats the forward's two; inference runs the forward's 2.

Load imbalance. A router trained with the Switch/GShard auxiliary loss is pushed towards uniform routing;
uniform random routing of N (token, expert) pairs over E experts is "balls into bins", whose fullest bin
holds N/E + sqrt(2 (N/E) ln E) for N >= E ln E (Raab & Steger 1998, "Balls into Bins - A Simple and Tight
Analysis", RANDOM'98, Theorem 1). Hence the default, the busiest expert's tokens over the mean:

    imbalance = 1 + sqrt(2 E ln E / N),   at most E / top_k (no expert sees a token twice)

with N the (token, expert) pairs one ep group routes per micro-batch. A measured router is more skewed than
uniform (moe.load_imbalance sets the factor instead). The busiest *rank* holds E/ep experts; under the same
statistics its excess load over the mean is the expert's scaled by sqrt(ep ln ep / (E ln E)) (the same
theorem with ep bins), 0 at ep = 1, where one device runs every expert and the total is fixed. The busiest
rank sets the ep group's time (every rank waits for it at the combine).

Expert GEMMs run per expert at the batch each expert really gets: tokens x top_k / E x (rank factor), so
a small per-expert batch is a skinny GEMM (the GEMV/split-K efficiency of efficiency.gemm_efficiency) and,
below the device's ridge point, memory-bound on the expert's weights, which every local expert reads once
per pass.

Decode reads only the experts the batch touches: with T tokens routed uniformly, each expert is missed by
a token with probability 1 - k/E, so the expected number of distinct experts touched is

    E x (1 - (1 - k/E)^T)

(linearity of expectation; the top-k of a token are distinct, so each expert is chosen with probability k/E).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmsim.costmodel.arrays import Num, maximum, pick
from llmsim.costmodel.cluster import Group
from llmsim.costmodel.collectives import COLLECTIVE_BASE_LATENCY_S, NO_PHASES, Fabric, Phase, Phases
from llmsim.costmodel.compute import Rates, _weighted_wave
from llmsim.costmodel import precision
from llmsim.costmodel.plan import DTYPE_BYTES
from llmsim.stages import stage_layer_ranges

if TYPE_CHECKING:
    from llmsim.config import Workload
    from llmsim.costmodel.plan import Plan
    from llmsim.workload.profile import WorkloadProfile

# MXFP4 routed-expert weights (MoeSpec.expert_weight_dtype: mxfp4; gpt-oss checkpoints): OCP Microscaling Formats
# (MX) Specification v1.0 (2023-09), Sec. 5: MXFP4 = blocks of 32 FP4 E2M1 elements (4 bits) sharing one 8-bit E8M0
# scale, (32 x 4 + 8) / 32 = 4.25 bits a weight. vLLM stores them so (vllm/model_executor/layers/quantization/
# mxfp4.py, Mxfp4MoEMethod.create_weights: uint8 weights of two elements, one uint8 scale per mxfp4_block = 32;
# the stored copy at index commit afdb4a4f) and on Hopper runs them weight-only: get_mxfp4_backend picks Triton's
# matmul_ogs (triton_kernels, torch >= 2.8) or Marlin, FlashInfer's SM90 MXFP4xBF16 only on request
# (VLLM_USE_FLASHINFER_MOE_MXFP4_BF16), every one with bf16 activations (Mxfp4Config.get_supported_act_dtypes):
# the expert GEMMs read 4.25-bit weights and compute at the 16-bit tensor-core rate. Their biases stay bf16
# (w13_bias, w2_bias: 8,640 of 24.9 M parameters an expert for gpt-oss, priced at 4.25 bits too: 0.03% off).
MXFP4_BITS_PER_WEIGHT = (32 * 4 + 8) / 32     # 4.25
MXFP4_BYTES_PER_WEIGHT = MXFP4_BITS_PER_WEIGHT / 8


def expert_weight_elem(workload: "Workload") -> float:
    """Bytes of one routed-expert weight as stored and read: MXFP4's 4.25 bits for `expert_weight_dtype: mxfp4`
    in prefill, decode and serving (the checkpoint served weight-only); FP8's 1 byte for a float8 workload's
    prefill, decode and serving; else the workload dtype's. A training step
    keeps 16-bit experts (MXFP4 is the released checkpoint's storage, not a training format here)."""
    moe = workload.model.moe
    if moe is not None and moe.expert_weight_dtype == "mxfp4" and workload.mode != "train":
        return MXFP4_BYTES_PER_WEIGHT
    if precision.is_fp8(workload) and workload.mode != "train":
        # float8 serving stores and reads the experts in FP8, as it does the layer GEMM weights
        # (precision.fp8_weight_copy_bytes): vLLM's Fp8MoEMethod (vllm/model_executor/layers/quantization/fp8.py)
        # allocates w13_weight and w2_weight as torch.float8_e4m3fn, and DeepSeek-V3's released checkpoint stores
        # its experts in FP8 (DeepSeek-V3 report Sec. 3.3; config.json quantization_config fmt e4m3,
        # weight_block_size [128, 128]; the block scales, 1/16384 of the weights, left out)
        return float(precision.FP8_BYTES)
    if precision.is_fp4(workload) and workload.mode != "train":
        # float4 serving stores the experts in FP4 as it does the layer GEMM weights: nvidia/DeepSeek-R1-FP4
        # quantizes the linear operators within the transformer blocks, the experts included (its model card)
        return precision.layer_weight_elem(workload)
    return DTYPE_BYTES[workload.dtype]


# Per MoE layer and micro-batch (Megatron-Core MoEAlltoAllTokenDispatcher: token_permutation's all-to-all
# (dispatch) and token_unpermutation's (combine); autograd runs each one's conjugate in the backward).
A2A_PER_MOE_LAYER_FORWARD = 2
A2A_PER_MOE_LAYER_BACKWARD = 2


# ---------------------------------------------------------------------------------------------------
# Routing statistics
# ---------------------------------------------------------------------------------------------------

def routed_pairs(tokens_per_rank: float, top_k: int, ep: int) -> float:
    """(token, expert) pairs one ep group routes per micro-batch: each of the ep ranks routes its tokens
    top_k times."""
    return tokens_per_rank * top_k * max(ep, 1)


def default_imbalance(experts: int, top_k: int, pairs: float) -> float:
    """The busiest expert's tokens over the mean under uniform random routing of `pairs` (token, expert)
    pairs over `experts` experts (Raab & Steger 1998; module docstring), capped at experts / top_k."""
    if experts <= 1 or pairs <= 0:
        return 1.0
    return min(1.0 + math.sqrt(2.0 * experts * math.log(experts) / pairs), experts / top_k)


def rank_load_factor(imbalance: float, experts: int, ep: int) -> float:
    """The busiest ep rank's tokens over the mean when the busiest expert's is `imbalance`: the expert's
    excess scaled by sqrt(ep ln ep / (E ln E)) (the same balls-into-bins statistics with ep bins); 1 at ep = 1."""
    if ep <= 1 or experts <= 1 or imbalance <= 1.0:
        return 1.0
    return 1.0 + (imbalance - 1.0) * math.sqrt(ep * math.log(ep) / (experts * math.log(experts)))


def expected_distinct_experts(experts: int, top_k: int, tokens: float) -> float:
    """Expected number of distinct experts `tokens` tokens touch under uniform top-k routing:
    E (1 - (1 - k/E)^T) (module docstring)."""
    if tokens <= 0:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


# ---------------------------------------------------------------------------------------------------
# The all-to-all
# ---------------------------------------------------------------------------------------------------

def a2a_bytes_per_rank(tokens: float, top_k: int, hidden: int, elem: int, ep: int) -> float:
    """Bytes one rank sends (and receives) in one dispatch or combine: tokens x top_k x hidden x bytes x
    (ep-1)/ep. `tokens`: the tokens this rank routes (micro-batch x sequence / cp / tp)."""
    if ep <= 1:
        return 0.0
    return tokens * top_k * hidden * elem * (ep - 1) / ep


def a2a_buffer_bytes(tokens: float, top_k: int, hidden: int, elem: int) -> float:
    """The whole buffer one rank holds before an all-to-all (the `size` a Comm carries): every routed copy
    of its tokens, tokens x top_k x hidden x bytes."""
    return tokens * top_k * hidden * elem


def all_to_all_phases(size: float, per_node: int, nodes: int, fabric: Fabric) -> Phases:
    """An all-to-all of `size` bytes per rank (the whole buffer, 1/p to each member) over a group of
    `per_node` ranks on each of `nodes` nodes, as port phases.

    PyTorch's all_to_all_single runs as one NCCL group of a send and a receive per peer, all in flight at
    once (torch/csrc/cuda/nccl.cpp, all2all_single_equal_split): one launch and one hop of latency; each rank
    serializes size x (p-1)/p bytes. When the group spans nodes the share for the other nodes'
    size x (p - per_node)/p crosses the inter-node link and the rest, size x (per_node - 1)/p, stays on the
    intra-node one: two phases, the inter one first (DeepEP's normal kernels likewise forward over RDMA,
    then NVLink; deepseek-ai/DeepEP README)."""
    p = per_node * nodes
    if p <= 1 or size <= 0:
        return NO_PHASES
    if nodes <= 1:
        return (Phase("intra", size * (p - 1) / p, COLLECTIVE_BASE_LATENCY_S + fabric.intra.latency),)
    inter = Phase("inter", size * (p - per_node) / p, COLLECTIVE_BASE_LATENCY_S + fabric.inter.latency)
    if per_node <= 1:
        return (inter,)
    return (inter, Phase("intra", size * (per_node - 1) / p, fabric.intra.latency))


# Expert tensor parallelism (etp > 1), Megatron-Core MoEAlltoAllTokenDispatcher (token_dispatcher.py, its
# workflow "(3) token dispatch: A2A(EP) (4) dispatch postprocess: AG(TP) ... (5) combine preprocess: ...
# RS(TP) (6) token combine: A2A(EP)", the TP group being the expert tensor-parallel group pg_collection.expt_tp):
# per MoE layer and forward one all-gather of the received tokens over etp (gather_from_sequence_parallel_region)
# and one reduce-scatter of the experts' partial outputs (reduce_scatter_to_sequence_parallel_region); autograd
# runs each one's conjugate in the backward (a reduce-scatter and an all-gather): one of each per pass.
ETP_GATHERS_PER_MOE_LAYER = 1
ETP_SCATTERS_PER_MOE_LAYER = 1


def etp_token_bytes(tokens: float, top_k: int, hidden: int, elem: int, etp: int) -> float:
    """The buffer of one expert-tensor-parallel all-gather (and reduce-scatter) of one MoE layer, the size a
    Comm carries (the gathered whole): each of the etp ranks received about tokens x top_k routed rows in the
    dispatch (`tokens` = the tokens each rank routes), so the gathered buffer is etp x tokens x top_k x
    hidden x bytes, of which a ring moves (etp-1)/etp per rank. The gathered router probabilities (one
    value per row, not hidden of them) are left out; the combine's reduce-scatter runs in the probabilities'
    dtype, the activations' unless --moe-router-dtype fp32 (router.py), priced at the workload's. 0 at etp = 1."""
    if etp <= 1:
        return 0.0
    return etp * tokens * top_k * hidden * elem


# ---------------------------------------------------------------------------------------------------
# The experts' GEMMs
# ---------------------------------------------------------------------------------------------------

def expert_shapes(hidden: int, expert_ffn: int, gated: bool, etp: int) -> tuple[tuple[int, int], ...]:
    """(in, out) features of one routed expert's GEMMs on one expert-tensor-parallel rank: up (gate and up
    fused when gated, Megatron-Core's GroupedMLP linear_fc1) and down."""
    ffn_local = -(-expert_ffn // max(etp, 1))
    return ((hidden, ffn_local * (2 if gated else 1)), (ffn_local, hidden))


def expert_weight_params(hidden: int, expert_ffn: int, gated: bool) -> int:
    """Weights of one routed expert (no biases: Mixtral, Qwen3-MoE, OLMoE, DeepSeek experts have none)."""
    return sum(k * n for k, n in expert_shapes(hidden, expert_ffn, gated, 1))


@dataclass(frozen=True)
class ExpertBatch:
    """What one ep rank's routed experts compute in one MoE layer and micro-batch.

    `local_experts`: experts the rank holds (E/ep); `per_expert_tokens`: the batch each of them runs, the
    mean tokens x top_k / E of the ep group's tokens times the busiest rank's load factor; `imbalance`:
    the busiest expert's tokens over the mean that the factor was derived from (the result column)."""

    local_experts: int
    per_expert_tokens: float
    imbalance: float
    rank_factor: float

    @property
    def tokens(self) -> float:
        """(token, expert) pairs the busiest rank computes."""
        return self.local_experts * self.per_expert_tokens


def expert_batch(tokens_per_rank: float, experts: int, top_k: int, ep: int,
                 load_imbalance: float | None = None, capacity_factor: float | None = None) -> ExpertBatch:
    """The busiest rank's expert work for one MoE layer and micro-batch: `tokens_per_rank` tokens routed
    by each of the ep ranks, `load_imbalance` (busiest expert over mean) or the default derived from the
    routing statistics (`default_imbalance`); a capacity factor caps every expert at cf x the mean
    (dropped tokens pass through the residual: Fedus et al. 2022, Switch Transformer, Sec. 2.2)."""
    pairs = routed_pairs(tokens_per_rank, top_k, ep)
    imbalance = load_imbalance if load_imbalance is not None else default_imbalance(experts, top_k, pairs)
    if capacity_factor is not None:
        imbalance = min(imbalance, max(capacity_factor, 0.0))
    factor = rank_load_factor(imbalance, experts, ep)
    mean = pairs / experts
    return ExpertBatch(local_experts=max(experts // max(ep, 1), 1), per_expert_tokens=mean * factor,
                       imbalance=imbalance, rank_factor=factor)


def active_local_experts(batch: ExpertBatch, experts: int, top_k: int, ep: int, tokens_per_rank: float) -> float:
    """Expected local experts that get any token: the rank's share of the distinct experts the ep group's
    tokens touch (`expected_distinct_experts`); all of them once the batch is large."""
    touched = expected_distinct_experts(experts, top_k, tokens_per_rank * max(ep, 1))
    return min(float(batch.local_experts), touched / max(ep, 1))


def expert_gemm_time(rates: Rates, batch: ExpertBatch, shapes: tuple[tuple[int, int], ...], elem: float,
                     active: float, backward: bool = False, trainable: bool = True) -> float:
    """Seconds of one MoE layer's routed-expert GEMMs for one micro-batch on the busiest rank.

    `active` experts (active_local_experts) each run the rank's `batch.tokens` pairs split evenly, m rows
    per expert, on their `shapes` (expert_shapes): per expert and GEMM 2 m k n FLOPs (twice that backward:
    data and weight gradient), at the device's GEMM efficiency times the shape efficiency of an m-row GEMM
    (compute._weighted_wave: tile waves, or GEMV/split-K padding for a skinny one), or the bytes it moves
    at the memory bandwidth when that is slower: its weights once per pass (backward: read W, write dW;
    a frozen expert writes no dW) and its activations in and out (backward: twice)."""
    if active <= 0 or batch.tokens <= 0:
        return 0.0
    m = batch.tokens / active
    weights = sum(k * n for k, n in shapes)
    flops = 2.0 * m * weights * (2 if backward else 1)
    reads = (2 if trainable else 1) if backward else 1
    act = sum(m * (k + n) for k, n in shapes) * (2 if backward else 1)
    nbytes = (weights * reads + act) * elem
    gemm = rates.gemm if rates.gemm is not None else rates
    # one grouped launch over the active experts: their tiles share the waves (efficiency.wave_efficiency)
    wave = (_weighted_wave(tuple(shapes), max(int(round(m)), 1), backward, rates.compute_units,
                           rates.efficiency.matmul_tiles, max(int(round(active)), 1)) if rates.compute_units else 1.0)
    return active * gemm.matmul_time(flops, nbytes, wave)


# ---------------------------------------------------------------------------------------------------
# Where the expert-parallel group lands
# ---------------------------------------------------------------------------------------------------

def ep_group(ep: int, etp: int, devices_per_node: int) -> Group:
    """The placed expert-parallel group: `ep` members `etp` ranks apart. Megatron-Core, which runs expert
    parallelism, orders ranks tp-cp-ep-dp-pp by default (pipeline outermost: parallel_state.py,
    `initialize_model_parallel(order=...)`) and regroups each stage's tp*cp*dp ranks as the expert grid etp
    innermost, then ep, then edp (the expert RankGenerator "tp-ep-dp-pp"), so a stage's ranks are consecutive
    and an ep group fills min(ep, devices_per_node / etp) devices of a node before it leaves the node (the
    README's advice "ensure EP x TP within the NVLink domain" holds at ep x etp <= 8). llmsim's dense groups
    keep their own order (costmodel.cluster: tp, cp, pp, dp). On a TPU slice the slice is the node."""
    if ep <= 1:
        return Group(size=1, per_node=1, nodes=1)
    per_node = max(1, min(ep, devices_per_node // max(etp, 1)))
    return Group(size=ep, per_node=per_node, nodes=math.ceil(ep / per_node))


def etp_group(etp: int, devices_per_node: int) -> Group:
    """The placed expert-tensor-parallel group: `etp` consecutive ranks (innermost in Megatron-Core's expert
    grid "tp-ep-dp-pp", `ep_group`), filling a node before it leaves it."""
    if etp <= 1:
        return Group(size=1, per_node=1, nodes=1)
    per_node = max(1, min(etp, devices_per_node))
    return Group(size=etp, per_node=per_node, nodes=math.ceil(etp / per_node))


# ---------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpertMemory:
    """Bytes of the routed experts on one device: weights, gradients, optimizer state."""

    params: Num
    grads: Num
    optimizer: Num


def expert_memory(expert_params_here: float, elem: float, grad_elem: int, state_bytes: int, zero: Num,
                  edp: Num, train: bool) -> ExpertMemory:
    """Memory of the routed experts one device holds (`expert_params_here` parameters: its E/ep experts of
    its stage's MoE layers, 1/etp of each), with ZeRO over the expert-data-parallel group of `edp` ranks
    (Megatron-Core's distributed optimizer shards expert parameters over the expert-data-parallel group:
    megatron/core/distributed/ buckets expert parameters apart, `expert_data_parallel_group`): stage 1 the
    optimizer state, 2 also the gradients, 3 also the weights; the ZeRO paper's bytes per parameter
    (memory.ADAM_STATE_BYTES_*). `zero` and `edp` may be columns over candidates (costmodel.arrays)."""
    shard = maximum(edp, 1)
    params = expert_params_here * elem / pick(zero >= 3, shard, 1)
    if not train:
        return ExpertMemory(params, 0.0, 0.0)
    return ExpertMemory(params, expert_params_here * grad_elem / pick(zero >= 2, shard, 1),
                        expert_params_here * state_bytes / pick(zero >= 1, shard, 1))


# ---------------------------------------------------------------------------------------------------
# One MoE layer of a case: what costmodel.work adds to a layer
# ---------------------------------------------------------------------------------------------------

# Kernels of the routed experts per MoE layer and pass beyond the layer's own (compute.KERNELS_PER_LAYER_*),
# as Megatron-Core runs them with grouped GEMMs (megatron/core/transformer/moe/experts.py TEGroupedMLP,
# moe_utils.permute / unpermute): forward = permute, grouped fc1, activation, grouped fc2, unpermute (5);
# backward = the conjugates of permute, activation and unpermute, and a data- and a weight-gradient grouped
# GEMM for each of fc1 and fc2 (7). The router and shared experts are part of the layer's own kernels.
KERNELS_PER_MOE_LAYER_FORWARD = 5
KERNELS_PER_MOE_LAYER_BACKWARD = 7


def ep_inside_tp(plan: "Plan") -> bool:
    """Whether, at inference, every expert-parallel group lies inside one tensor-parallel group (ep > 1 dividing
    tp): its ranks then hold the same tokens after the attention block's all-reduce, each applies its own experts
    to the tokens routed to them, and the MoE block's tp all-reduce sums the partial outputs, so no token is
    exchanged (vLLM's FusedMoEParallelConfig.use_all2all_kernels needs dp_size > 1; SGLang's StandardDispatcher and
    TensorRT-LLM without attention DP move no data: the sources above `costmodel.iteration._experts`). An ep wider
    than tp spans ranks of other replicas, whose tokens differ: that exchange is an all-to-all."""
    return plan.ep > 1 and plan.tp % plan.ep == 0


def tokens_per_rank(workload: "Workload", plan: "Plan", phase: str) -> float:
    """Tokens one rank routes per micro-batch and MoE layer: micro-batch x sequence / cp, split over tp (the
    sequence-parallel layout Megatron-Core requires for MoE with tp > 1; at inference a tensor-parallel
    group routes its replicated tokens once). A decode step routes one token per sequence."""
    spec = workload.model
    tokens = plan.micro_batch * (1 if phase == "decode" else spec.seq_len // plan.cp)
    return tokens / plan.tp


@dataclass(frozen=True)
class ExpertTokenCosts:
    """What one routed (token, expert) pass costs, from the profile's "experts" region of one phase, per
    token of the whole model's MoE layers (tp = 1, balanced routing: every token's top-k): GEMM FLOPs,
    GEMM activation bytes (the traced weights taken out), other bytes, and operators per MoE layer."""

    mm_flops: float = 0.0
    mm_bytes: float = 0.0
    other_bytes: float = 0.0
    ops_per_layer: float = 0.0


def expert_token_costs(profile: "WorkloadProfile", workload: "Workload", phase: str, tokens: float,
                       steps: int = 1, compiled: bool = False) -> ExpertTokenCosts:
    """Per-token expert costs of `phase` in a profile whose traced pass(es) ran `tokens` tokens over `steps`
    decode steps (the weights of every expert, read once per traced pass and MoE layer, are taken out of
    the GEMM bytes: `experts_time` puts the rank's own back). `compiled`: the elementwise bytes fused
    (OpTotals.traffic)."""
    spec = workload.model
    moe = spec.moe
    moe_layers = getattr(profile, "moe_layers", 0)
    if moe is None or not moe_layers or tokens <= 0:
        return ExpertTokenCosts()
    mm = profile.ops.get((phase, "experts", "matmul"))
    ot = profile.ops.get((phase, "experts", "other"))
    elem = DTYPE_BYTES[workload.dtype]
    gated = spec.activation in ("swiglu", "geglu")
    trainable = profile.trainable_params > 0.5 * profile.params
    reads = (2 if trainable else 1) if phase == "backward" else 1
    traced_weights = reads * moe.experts * expert_weight_params(spec.hidden, spec.expert_ffn, gated) * elem \
        * moe_layers * steps
    count = (mm.count if mm is not None else 0) + (ot.count if ot is not None else 0)
    return ExpertTokenCosts(mm_flops=(mm.flops if mm is not None else 0.0) / tokens,
                            mm_bytes=max((mm.bytes if mm is not None else 0.0) - traced_weights, 0.0) / tokens,
                            other_bytes=(ot.traffic(compiled) if ot is not None else 0.0) / tokens,
                            ops_per_layer=count / moe_layers / steps)


def experts_time(workload: "Workload", plan: "Plan", rates: Rates, costs: ExpertTokenCosts, tokens: float,
                 moe_layers: int, phase: str, trainable: bool = True) -> float:
    """Seconds of one MoE layer's routed experts on the busiest rank of the ep group, for `tokens` tokens of
    one micro-batch (or serving pass) on one pipeline replica.

    Each rank computes its own tokens' expert work, tokens / (tp*cp) (ep is carved out of data parallelism,
    so the FLOPs divide as a dense MLP's do), times the busiest rank's load factor (`expert_batch`, from
    `tokens_per_rank`); the per-token costs are one MoE layer's (1/moe_layers of `costs`). Weights: each
    active local expert's, 1/etp of it, read once per pass (backward: read W, write dW). The GEMMs run at the
    shape efficiency of the per-expert batch (compute._weighted_wave); other ops (activation, permutation,
    gate scaling) are memory-bound. An eager host pays its per-operator cost for the local experts' ops (1/ep
    of the traced ones); an accelerator its kernel latency for the grouped-GEMM kernels."""
    moe = workload.model.moe
    if moe is None or not moe_layers or tokens <= 0:
        return 0.0
    spec = workload.model
    backward = phase == "backward"
    rank_tokens = tokens / (plan.tp * plan.cp)
    batch = expert_batch(rank_tokens * plan.etp, moe.experts, moe.top_k, plan.ep, moe.load_imbalance,
                         moe.capacity_factor)
    active = active_local_experts(batch, moe.experts, moe.top_k, plan.ep, rank_tokens * plan.etp)
    per_layer = rank_tokens * batch.rank_factor / moe_layers
    gated = spec.activation in ("swiglu", "geglu")
    shapes = expert_shapes(spec.hidden, spec.expert_ffn, gated, plan.etp)
    reads = (2 if trainable else 1) if backward else 1
    weights = reads * active * sum(k * n for k, n in shapes) * expert_weight_elem(workload)
    m = max(int(round(batch.tokens / active)), 1) if active else 1
    # the active experts' GEMMs run as one grouped launch whose tiles share the waves (SGLang's / vLLM's fused_moe
    # grid over every expert's rows, Megatron-Core's grouped GEMM: efficiency.wave_efficiency `problems`), not
    # one launch per expert, which would leave most SMs idle once an expert's m rows reach a full tile
    wave = (_weighted_wave(shapes, m, backward, rates.compute_units, rates.efficiency.matmul_tiles,
                           max(int(round(active)), 1))
            if rates.compute_units else 1.0)
    gemm = rates.gemm if rates.gemm is not None else rates
    seconds = gemm.matmul_time(costs.mm_flops * per_layer, costs.mm_bytes * per_layer + weights, wave)
    seconds += rates.memory_time(costs.other_bytes * per_layer)
    if rates.efficiency.op_overhead_s:
        seconds += rates.efficiency.op_overhead_s * costs.ops_per_layer / max(plan.ep, 1)
    if rates.efficiency.kernel_latency_s:
        seconds += rates.efficiency.kernel_latency_s * (KERNELS_PER_MOE_LAYER_BACKWARD if backward
                                                         else KERNELS_PER_MOE_LAYER_FORWARD)
    return seconds


def experts_layer_time(profile: "WorkloadProfile", workload: "Workload", plan: "Plan", rates: Rates, phase: str,
                       steps: int = 1, compiled: bool = False) -> float:
    """`experts_time` of one micro-batch of a traced phase (train forward/backward, prefill, one decode step
    of the `steps` traced): the profile's per-token expert costs, the micro-batch's tokens."""
    spec = workload.model
    decode = phase == "decode"
    traced_tokens = profile.batch * (steps if decode else profile.seq_len)
    costs = expert_token_costs(profile, workload, phase, traced_tokens, steps, compiled)
    tokens = plan.micro_batch * (1 if decode else spec.seq_len)
    trainable = profile.trainable_params > 0.5 * profile.params
    return experts_time(workload, plan, rates, costs, tokens, getattr(profile, "moe_layers", 0), phase, trainable)


def moe_layer_share(workload: "Workload") -> float:
    """The MoE layers' share of the whole model's layers (1 when every layer is MoE; 0 for a dense model)."""
    spec = workload.model
    return spec.moe_layers / spec.layers if spec.moe is not None else 0.0


# a pure function of hashable values that every stage of every candidate asks for: cached
@functools.lru_cache(maxsize=4096)
def stage_moe_layers(workload: "Workload", plan: "Plan") -> tuple[int, ...]:
    """MoE layers each pipeline stage holds (all its chunks): the MoE layers among the layer indices the
    stage holds (llmsim.stages.stage_layer_ranges: Megatron-LM's order, the plan's split), counted with the
    model's pattern (ModelSpec.is_moe_layer: every layer_freq-th from first_dense_layers on). With uneven
    stages or a pattern that is not uniform (DeepSeek-V3's 3 dense layers first) the stages' counts differ
    from a proportional share of the model's MoE layers. All 0 for a dense model."""
    spec = workload.model
    counts = plan.layers_per_stage(spec.layers)
    if spec.moe is None:
        return tuple(0 for _ in counts)
    return tuple(sum(spec.moe_layers_in(r) for r in ranges) for ranges in stage_layer_ranges(counts, plan.v))


def stage_moe_share(workload: "Workload", plan: "Plan", stage: int) -> float:
    """The MoE layers' share of pipeline stage `stage`'s layers (`stage_moe_layers` over its layer count; 0
    for a stage without layers or a dense model). costmodel.work prices a stage's mean layer: the dense part
    of a layer plus this share of one MoE layer's routed experts and all-to-alls."""
    layers = plan.layers_per_stage(workload.model.layers)[stage]
    return stage_moe_layers(workload, plan)[stage] / layers if layers else 0.0


def expert_activation_bytes(workload: "Workload", plan: "Plan", share: float | None = None) -> float:
    """Bytes the routed experts of the mean layer keep for their backward per micro-batch on the busiest
    rank (`share` of one MoE layer's: default the model's share of MoE layers, `moe_layer_share`; a stage's
    own is `stage_moe_share`): per routed (token, expert) copy the permuted input
    (hidden, gathered over etp), the fc1 output (2 x expert width when gated, 1/etp of it) and the
    activation's output (expert width / etp), as a dense MLP keeps them (costmodel.activations.layer_saves)
    for top_k x the rank's tokens x its load factor (Megatron-Core GroupedMLP; the permutation's indices
    and the router's probabilities, a few bytes per token, are left out). Full recomputation keeps none."""
    spec = workload.model
    moe = spec.moe
    if moe is None or plan.recompute == "full":
        return 0.0
    tokens = tokens_per_rank(workload, plan, "forward")
    batch = expert_batch(tokens * plan.etp, moe.experts, moe.top_k, plan.ep, moe.load_imbalance,
                         moe.capacity_factor)
    gated = spec.activation in ("swiglu", "geglu")
    f = spec.expert_ffn / plan.etp
    per_copy = spec.hidden + (2 if gated else 1) * f + f
    share = moe_layer_share(workload) if share is None else share
    return (share * tokens * plan.etp * moe.top_k * batch.rank_factor * per_copy
            * DTYPE_BYTES[workload.dtype])


def edp_equivalent_share(plan: "Plan") -> float:
    """The routed experts' gradients are reduced (and with ZeRO gathered) over the expert-data-parallel
    group of edp ranks, not the dp x cp group the rest of the model uses (Plan.dp_cp; Megatron-Core keeps
    expert parameters in their own buckets over `expert_data_parallel_group`). costmodel.work prices them as
    part of the data-parallel traffic, overlapped with the backward like the rest, at this share of their
    bytes: a ring over edp moves (edp-1)/edp of a buffer per rank, over dp x cp (n-1)/n (Patarasuk & Yuan
    2009), so the share is their ratio on the same links (0 when edp = 1: each expert lives on one rank of
    the stage). With dp x cp = 1 there is no data-parallel reduction to join; an edp > 1 there
    (etp*ep < tp) is left out."""
    if plan.dp_cp <= 1 or plan.edp <= 1:
        return 0.0
    return ((plan.edp - 1) / plan.edp) / ((plan.dp_cp - 1) / plan.dp_cp)


def data_parallel_params(plan: "Plan", params: float, experts: float) -> float:
    """Parameters whose gradients (or, ZeRO 1/2, updated weights) go over the data-parallel group, in dp x cp
    ring-equivalents: the routed experts (`experts` of `params`) at `edp_equivalent_share`."""
    if not experts:  # a dense stage: params - 0 x (1 - share), without asking the share
        return params - 0.0
    return params - experts * (1 - edp_equivalent_share(plan))


def optimizer_params(plan: "Plan", trainable: float, experts: float, experts_trainable: bool) -> float:
    """Parameters the optimizer step updates on one device, in units the step divides by dp x cp under ZeRO
    (costmodel.work.optimizer_time, Plan.dp_cp): ZeRO shards the routed experts' state over edp, not dp x cp,
    so they count dp*cp/edp times (`experts` of `trainable`; frozen experts, LoRA, count nothing extra)."""
    if plan.zero >= 1 and experts_trainable:
        return trainable + experts * (plan.dp_cp / plan.edp - 1)
    return trainable


def assumed_imbalance(workload: "Workload", plan: "Plan") -> float | None:
    """The busiest expert's tokens over the mean that the model assumed for one micro-batch of the case
    (moe.load_imbalance, or the default of `expert_batch` for the case's tokens): the modeled rows'
    `expert_load_imbalance`; None for a dense model. Decode: one token step of the whole batch."""
    moe = workload.model.moe
    if moe is None:
        return None
    phase = "decode" if workload.mode == "decode" else "forward"
    tokens = tokens_per_rank(workload, plan, phase) * plan.etp
    return expert_batch(tokens, moe.experts, moe.top_k, plan.ep, moe.load_imbalance, moe.capacity_factor).imbalance
