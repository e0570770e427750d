"""costmodel.moe: the all-to-all volume, routing statistics, the experts' GEMMs at their real batch, memory."""

from __future__ import annotations

import math

import pytest

from llmsim.costmodel.cluster import Group
from llmsim.costmodel.collectives import COLLECTIVE_BASE_LATENCY_S, Channel, Fabric, phases_time
from llmsim.costmodel.compute import Rates
from llmsim.costmodel.efficiency import Efficiency
from llmsim.costmodel import moe

FABRIC = Fabric(intra=Channel(bandwidth=100e9, latency=1e-6), inter=Channel(bandwidth=10e9, latency=5e-6))


def test_a2a_volume_by_hand() -> None:
    # Mixtral: 4096 tokens per rank (micro-batch 1 x 4096), top-2, hidden 4096, bf16, ep 8:
    # 4096 x 2 x 4096 x 2 bytes x 7/8 = 58,720,256 bytes each way per all-to-all
    assert moe.a2a_bytes_per_rank(4096, 2, 4096, 2, 8) == 4096 * 2 * 4096 * 2 * 7 / 8 == 58_720_256
    assert moe.a2a_bytes_per_rank(4096, 2, 4096, 2, 1) == 0.0
    # the phases of one all-to-all inside a node carry exactly that volume
    size = moe.a2a_buffer_bytes(4096, 2, 4096, 2)
    (ph,) = moe.all_to_all_phases(size, 8, 1, FABRIC)
    assert ph.tier == "intra" and ph.nbytes == pytest.approx(58_720_256)
    assert ph.latency_s == pytest.approx(COLLECTIVE_BASE_LATENCY_S + 1e-6)


def test_a2a_across_nodes_splits_the_volume_by_tier() -> None:
    size = 1e9
    # 16 ranks, 8 per node: 8/16 of the buffer to the other node, 7/16 stays inside, 1/16 to itself
    inter, intra = moe.all_to_all_phases(size, 8, 2, FABRIC)
    assert inter.tier == "inter" and inter.nbytes == pytest.approx(size * 8 / 16)
    assert intra.tier == "intra" and intra.nbytes == pytest.approx(size * 7 / 16)
    assert inter.nbytes + intra.nbytes == pytest.approx(moe.a2a_bytes_per_rank(1, 1, 1, 1, 16) * size)
    # leaving the node is slower than the same group inside one node
    one_node = phases_time(moe.all_to_all_phases(size, 16, 1, FABRIC), FABRIC)
    two_nodes = phases_time(moe.all_to_all_phases(size, 8, 2, FABRIC), FABRIC)
    assert two_nodes > 4 * one_node
    # one rank per node: everything but its own 1/p crosses the inter-node link
    (only,) = moe.all_to_all_phases(size, 1, 4, FABRIC)
    assert only.tier == "inter" and only.nbytes == pytest.approx(size * 3 / 4)


def test_default_imbalance_follows_balls_into_bins() -> None:
    # Raab & Steger: max load = N/E + sqrt(2 (N/E) ln E); over the mean N/E: 1 + sqrt(2 E ln E / N)
    n, e = 65536, 8
    assert moe.default_imbalance(e, 2, n) == pytest.approx(1 + math.sqrt(2 * e * math.log(e) / n))
    # more tokens, closer to balanced; never beyond E/k (no expert gets a token twice)
    assert moe.default_imbalance(8, 2, 1e6) < moe.default_imbalance(8, 2, 1e3)
    assert moe.default_imbalance(64, 8, 8) == 64 / 8
    assert moe.default_imbalance(8, 2, 0) == 1.0


def test_default_imbalance_matches_uniform_routing_samples() -> None:
    """The formula against a sampled uniform router (deterministic seed): within 10% of the mean excess."""
    import random

    rng = random.Random(0)
    e, k, tokens, trials = 8, 2, 2048, 200
    excess = []
    for _ in range(trials):
        counts = [0] * e
        for _ in range(tokens):
            for x in rng.sample(range(e), k):
                counts[x] += 1
        excess.append(max(counts) / (tokens * k / e) - 1)
    measured = sum(excess) / trials
    modeled = moe.default_imbalance(e, k, tokens * k) - 1
    # the asymptotic formula is an upper estimate of the expected maximum for small E
    assert 0.6 * modeled < measured < 1.1 * modeled


def test_rank_load_factor() -> None:
    assert moe.rank_load_factor(1.5, 8, 1) == 1.0                      # one rank runs everything
    assert moe.rank_load_factor(1.5, 8, 8) == pytest.approx(1.5)       # one expert per rank
    mid = moe.rank_load_factor(1.5, 64, 8)
    assert 1.0 < mid < 1.5
    assert mid == pytest.approx(1 + 0.5 * math.sqrt(8 * math.log(8) / (64 * math.log(64))))


def test_expected_distinct_experts() -> None:
    assert moe.expected_distinct_experts(8, 2, 1) == pytest.approx(2.0)   # one token touches its top-k
    assert moe.expected_distinct_experts(8, 2, 2) == pytest.approx(8 * (1 - 0.75 ** 2))
    assert moe.expected_distinct_experts(128, 8, 10_000) == pytest.approx(128)
    assert moe.expected_distinct_experts(8, 2, 0) == 0.0


def test_expert_batch_and_capacity() -> None:
    b = moe.expert_batch(4096, experts=8, top_k=2, ep=8, load_imbalance=1.25)
    assert b.local_experts == 1 and b.imbalance == 1.25 and b.rank_factor == pytest.approx(1.25)
    assert b.per_expert_tokens == pytest.approx(4096 * 2 * 8 / 8 * 1.25)
    capped = moe.expert_batch(4096, experts=8, top_k=2, ep=8, load_imbalance=1.25, capacity_factor=1.1)
    assert capped.imbalance == 1.1
    default = moe.expert_batch(4096, experts=8, top_k=2, ep=8)
    assert default.imbalance == pytest.approx(moe.default_imbalance(8, 2, 4096 * 2 * 8))


RATES = Rates(peak_flops=1e15, memory_bw=2e12, efficiency=Efficiency(matmul=1.0, memory=1.0), compute_units=132)
SHAPES = moe.expert_shapes(4096, 14336, gated=True, etp=1)


def test_expert_shapes_and_params() -> None:
    assert SHAPES == ((4096, 2 * 14336), (14336, 4096))
    assert moe.expert_weight_params(4096, 14336, True) == 3 * 4096 * 14336   # Mixtral's w1, w2, w3
    assert moe.expert_shapes(4096, 14336, True, 2) == ((4096, 14336), (7168, 4096))


def test_expert_gemm_large_batch_is_compute_bound() -> None:
    b = moe.ExpertBatch(local_experts=1, per_expert_tokens=8192, imbalance=1.0, rank_factor=1.0)
    t = moe.expert_gemm_time(RATES, b, SHAPES, 2, active=1)
    flops = 2 * 8192 * 3 * 4096 * 14336
    assert t == pytest.approx(flops / 1e15, rel=0.02)   # wave efficiency close to 1 for these shapes


def test_expert_gemm_small_batch_is_memory_bound_on_weights() -> None:
    b = moe.ExpertBatch(local_experts=8, per_expert_tokens=2, imbalance=1.0, rank_factor=1.0)
    t = moe.expert_gemm_time(RATES, b, SHAPES, 2, active=8)
    weights = 8 * 3 * 4096 * 14336 * 2
    assert t == pytest.approx(weights / 2e12, rel=0.01)
    # fewer experts touched, fewer weights read
    assert moe.expert_gemm_time(RATES, b, SHAPES, 2, active=4) == pytest.approx(t / 2, rel=0.01)


def test_active_local_experts_decode() -> None:
    # decode, 1 token per rank, ep 1, Mixtral: 2 of 8 experts touched
    b = moe.expert_batch(1, 8, 2, 1)
    assert moe.active_local_experts(b, 8, 2, 1, 1) == pytest.approx(2.0)
    big = moe.expert_batch(4096, 8, 2, 8)
    assert moe.active_local_experts(big, 8, 2, 8, 4096) == pytest.approx(1.0)


def test_ep_group_placement() -> None:
    # Mixtral at etp 1, ep 8 on 8-GPU nodes: inside one node (Megatron-Core's order, pipeline outermost)
    assert moe.ep_group(8, 1, 8) == Group(size=8, per_node=8, nodes=1)
    # ep 16 spans two nodes
    assert moe.ep_group(16, 1, 8) == Group(size=16, per_node=8, nodes=2)
    # etp 2: ep members two ranks apart, 4 per node
    assert moe.ep_group(8, 2, 8) == Group(size=8, per_node=4, nodes=2)
    assert moe.ep_group(1, 8, 8) == Group(size=1, per_node=1, nodes=1)


def test_expert_memory_zero_over_edp() -> None:
    m = moe.expert_memory(1e9, elem=2, grad_elem=2, state_bytes=12, zero=1, edp=4, train=True)
    assert (m.params, m.grads, m.optimizer) == (2e9, 2e9, 3e9)
    m3 = moe.expert_memory(1e9, elem=2, grad_elem=2, state_bytes=12, zero=3, edp=4, train=True)
    assert (m3.params, m3.grads, m3.optimizer) == (0.5e9, 0.5e9, 3e9)
    inf = moe.expert_memory(1e9, elem=2, grad_elem=2, state_bytes=12, zero=0, edp=4, train=False)
    assert (inf.params, inf.grads, inf.optimizer) == (2e9, 0.0, 0.0)
