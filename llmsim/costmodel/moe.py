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

import math
from dataclasses import dataclass

from llmsim.costmodel.cluster import Group
from llmsim.costmodel.collectives import COLLECTIVE_BASE_LATENCY_S, NO_PHASES, Fabric, Phase, Phases
from llmsim.costmodel.compute import Rates, _weighted_wave

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
    wave = (_weighted_wave(tuple(shapes), max(int(round(m)), 1), backward, rates.compute_units,
                           rates.efficiency.matmul_tiles) if rates.compute_units else 1.0)
    return active * gemm.matmul_time(flops, nbytes, wave)


# ---------------------------------------------------------------------------------------------------
# Where the expert-parallel group lands
# ---------------------------------------------------------------------------------------------------

def ep_group(ep: int, etp: int, tp: int, cp: int, pp: int, devices_per_node: int) -> Group:
    """The placed expert-parallel group. Megatron-Core orders the expert grid of a pipeline stage etp
    innermost, then ep, then edp, over the same ranks as tp x cp x dp (parallel_state.py, the expert
    RankGenerator "tp-ep-dp" over the stage's ranks). In llmsim's dense order (costmodel.cluster: tp, cp,
    pp, dp) the stage's tp*cp ranks are consecutive and its dp replicas tp*cp*pp ranks apart, so the ep
    group's members lie `etp` apart inside a block of tp*cp ranks and, when ep*etp exceeds tp*cp, in the
    blocks of ep*etp/(tp*cp) data-parallel replicas. On a TPU slice the same count per node is used with
    the slice as the node (the all-to-all on the slice's links, no per-axis routing)."""
    if ep <= 1:
        return Group(size=1, per_node=1, nodes=1)
    block = tp * cp
    if ep * etp <= block:
        per_node = max(1, min(ep, devices_per_node // max(etp, 1)))
    else:
        in_block = max(block // max(etp, 1), 1)
        replicas_per_node = max(1, devices_per_node // (block * pp)) if block * pp <= devices_per_node else 1
        per_node = max(1, min(ep, in_block * replicas_per_node, devices_per_node))
    return Group(size=ep, per_node=per_node, nodes=math.ceil(ep / per_node))


# ---------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpertMemory:
    """Bytes of the routed experts on one device: weights, gradients, optimizer state."""

    params: float
    grads: float
    optimizer: float


def expert_memory(expert_params_here: float, elem: int, grad_elem: int, state_bytes: int, zero: int,
                  edp: int, train: bool) -> ExpertMemory:
    """Memory of the routed experts one device holds (`expert_params_here` parameters: its E/ep experts of
    its stage's MoE layers, 1/etp of each), with ZeRO over the expert-data-parallel group of `edp` ranks
    (Megatron-Core's distributed optimizer shards expert parameters over the expert-data-parallel group:
    megatron/core/distributed/ buckets expert parameters apart, `expert_data_parallel_group`): stage 1 the
    optimizer state, 2 also the gradients, 3 also the weights; the ZeRO paper's bytes per parameter
    (memory.ADAM_STATE_BYTES_*)."""
    shard = max(edp, 1)
    params = expert_params_here * elem / (shard if zero >= 3 else 1)
    if not train:
        return ExpertMemory(params, 0.0, 0.0)
    return ExpertMemory(params, expert_params_here * grad_elem / (shard if zero >= 2 else 1),
                        expert_params_here * state_bytes / (shard if zero >= 1 else 1))
