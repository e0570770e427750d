"""Context parallelism shards ZeRO/FSDP state and reduces gradients over dp x cp (Plan.dp_cp).

Every context-parallel rank holds the whole model and computes a full gradient for its part of the
sequence, so the frameworks reduce and shard over the data- and context-parallel ranks together:
Megatron-Core's `get_data_parallel_group(with_context_parallel=True)` (megatron/core/parallel_state.py,
used by DistributedDataParallel's grad buffers and the distributed optimizer) and torchtitan's FSDP mesh
dimension `fsdp = dp_shard * cp` (torchtitan/distributed/parallel_dims.py). Hand-computed values; each
assertion on a cp > 1 plan fails where ZeRO and the gradient reduction span dp only."""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.costmodel import Options, Plan, memory_breakdown
from llmsim.costmodel.cluster import Group
from llmsim.costmodel.collectives import ring_bytes_per_rank
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel import moe
from llmsim.costmodel.work import Comm, optimizer_time, train_work
from tests.costmodel.helpers import a100_cluster, gpt2, profiled

H, VOCAB, POSITIONS, LAYERS = 768, 50257, 1024, 12
BLOCK = 12 * H * H + 13 * H                  # QKV, out, fc, proj weights + biases, 2 layernorms
EMBEDDING = (VOCAB + POSITIONS) * H          # token + position tables (the head is tied to the token table)
PARAMS = EMBEDDING + LAYERS * BLOCK + 2 * H  # GPT-2 small, final layernorm included: 124,439,808


def test_gpt2_small_parameter_count() -> None:
    workload = gpt2()
    profile, sharing = profiled(workload)
    assert PARAMS == 124_439_808
    assert memory_breakdown(workload, profile, sharing, Plan()).params == 2 * PARAMS   # bf16


@pytest.mark.parametrize("dp, cp", [(2, 4), (1, 8)])
def test_zero_shards_over_dp_times_cp(dp: int, cp: int) -> None:
    """FSDP 2 x CP 4 and FSDP 1 x CP 8 (torchtitan's F04/F05 layouts): 8 replicas of the weights, so ZeRO
    divides by 8, and ZeRO-3 gathers the largest unit (the embedding) plus the prefetched block."""
    workload = gpt2()
    profile, sharing = profiled(workload)
    base = Plan(dp=dp, cp=cp, microbatches=1)
    z = {k: memory_breakdown(workload, profile, sharing, dataclasses.replace(base, zero=k)) for k in range(4)}
    assert z[0].optimizer == 12 * PARAMS                                     # fp32 master + Adam m, v
    assert z[1].optimizer == pytest.approx(12 * PARAMS / 8, rel=1e-12)
    assert z[2].grads == pytest.approx(2 * PARAMS / 8, rel=1e-12)
    assert z[3].params == pytest.approx(2 * PARAMS / 8 + 2 * (EMBEDDING + BLOCK), rel=1e-12)
    assert z[3].grads == pytest.approx(2 * PARAMS / 8 + 2 * EMBEDDING, rel=1e-12)
    assert z[3].optimizer == pytest.approx(12 * PARAMS / 8, rel=1e-12)
    assert base.dp_cp == 8 and base.zero_dp == 8


@pytest.mark.parametrize("dp, cp, zero, op", [(2, 4, 0, "all-reduce"), (1, 8, 0, "all-reduce"),
                                              (2, 4, 3, "reduce-scatter"), (1, 8, 3, "reduce-scatter")])
def test_gradients_are_reduced_over_dp_times_cp(dp: int, cp: int, zero: int, op: str) -> None:
    """The step's gradient collective: 2 * PARAMS bf16 bytes per rank over the 8 ranks of one node, a ring
    moving 2 * 7/8 (all-reduce) or 7/8 (reduce-scatter) of the buffer per rank (Patarasuk & Yuan 2009)."""
    workload = gpt2(batch=dp)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(nodes=1, devices_per_node=8)
    work = train_work(workload, profile, sharing, Plan(dp=dp, cp=cp, zero=zero, microbatches=1), cluster)
    assert work.dp_group == Group(size=8, per_node=8, nodes=1)
    assert work.dp_op == op
    (stage,) = work.stages
    assert work.grad_bytes(stage) == 2 * PARAMS
    phases = Comm(op, work.grad_bytes(stage), work.dp_group).phases(cluster.fabric)
    sent = sum(ph.nbytes * cluster.fabric.intra.efficiency_of(op) for ph in phases)
    factor = 2 * 7 / 8 if op == "all-reduce" else 7 / 8
    assert sent == pytest.approx(factor * 2 * PARAMS, rel=1e-12)
    assert sent == pytest.approx(ring_bytes_per_rank(op, 2 * PARAMS, 8), rel=1e-12)


def test_gradient_group_across_nodes_keeps_cp_inside_the_node() -> None:
    """dp 4 x cp 4 x tp 2 on nodes of 8: a rank's cp peers are 2 apart (in its node), its dp peers
    tp*cp = 8 apart (other nodes): 4 members per node on 4 nodes."""
    workload = gpt2(batch=4)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(nodes=4, devices_per_node=8)
    work = train_work(workload, profile, sharing, Plan(dp=4, cp=4, tp=2, zero=1, microbatches=1), cluster)
    assert work.dp_group == Group(size=16, per_node=4, nodes=4)


def test_optimizer_step_is_divided_over_dp_times_cp() -> None:
    rates = device_rates(a100_cluster(), "bfloat16")
    one = optimizer_time(rates, 1e9, Plan(zero=1), "bfloat16", Options())
    assert optimizer_time(rates, 1e9, Plan(dp=1, cp=8, zero=1), "bfloat16", Options()) == pytest.approx(one / 8)
    assert optimizer_time(rates, 1e9, Plan(dp=1, cp=8, zero=0), "bfloat16", Options()) == pytest.approx(one)


def test_expert_share_of_the_gradient_reduction_is_against_dp_times_cp() -> None:
    """Routed experts reduce over edp = tp*cp*dp/(etp*ep) ranks, the rest over dp*cp: with dp 1, cp 4, ep 2
    the experts' ring over 2 ranks moves 1/2 of a buffer, the dense ring over 4 moves 3/4: share 2/3."""
    plan = Plan(dp=1, cp=4, ep=2, zero=1)
    assert plan.edp == 2
    assert moe.edp_equivalent_share(plan) == pytest.approx((1 / 2) / (3 / 4), rel=1e-12)
    # ZeRO shards the experts over edp = 2, the rest over dp*cp = 4: experts count 4/2 = 2 times
    assert moe.optimizer_params(plan, 10.0, 4.0, True) == pytest.approx(10.0 + 4.0 * (4 / 2 - 1))


def test_on_a_torus_the_gradient_group_runs_cp_segments_then_dp_segments() -> None:
    """cp 4 x dp 32 on a 4x4x8 v5p slice: cp takes x, dp y and z (axes innermost first, costmodel.torus), so
    the gradient group is the whole slice, the same rings as dp 128 alone."""
    from llmsim.costmodel.cluster import collective_time, torus_groups
    from llmsim.costmodel.work import Groups
    from llmsim.hardware import load_catalog

    cluster = load_catalog().cluster("tpu-v5p", topology="4x4x8")
    grads = Groups.on(Plan(dp=32, cp=4, zero=3), cluster).dp
    alone = torus_groups({"dp": 128}, cluster)["dp"]
    assert grads.size == 128 and [(r.dim, r.size) for r in grads.rings] == [(0, 4), (1, 4), (2, 8)]
    assert collective_time("reduce-scatter", 1e9, grads, cluster) == pytest.approx(
        collective_time("reduce-scatter", 1e9, alone, cluster), rel=1e-12)
