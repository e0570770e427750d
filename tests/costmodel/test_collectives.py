"""Collective algorithms: the textbook volumes and the choices NCCL makes."""

from __future__ import annotations

import pytest

from llmsim.costmodel.cluster import ClusterSpec, collective_time, place_group
from llmsim.costmodel.collectives import (COLLECTIVE_BASE_LATENCY_S, Channel, flat_time, hierarchical_time,
                                          ring_bytes_per_rank, ring_time, tree_all_reduce_time)
from llmsim.hardware import load_catalog

GB = 1e9


@pytest.mark.parametrize("p", [2, 4, 8, 64])
def test_ring_all_reduce_moves_2S_p_minus_1_over_p_per_rank(p: int) -> None:
    size = 3 * GB
    assert ring_bytes_per_rank("all-reduce", size, p) == pytest.approx(2 * size * (p - 1) / p)
    assert ring_bytes_per_rank("reduce-scatter", size, p) == pytest.approx(size * (p - 1) / p)
    assert ring_bytes_per_rank("all-gather", size, p) == pytest.approx(size * (p - 1) / p)


def test_ring_time_is_steps_times_latency_plus_bytes_over_bandwidth() -> None:
    ch = Channel(bandwidth=100 * GB, latency=1e-5)
    p, size = 8, 1 * GB
    expected = COLLECTIVE_BASE_LATENCY_S + 2 * (p - 1) * 1e-5 + 2 * size * (p - 1) / p / (100 * GB)
    assert ring_time("all-reduce", size, p, ch) == pytest.approx(expected)
    assert ring_time("all-reduce", size, 1, ch) == 0.0


def test_tree_wins_small_messages_on_many_ranks_and_ring_large_ones() -> None:
    ch = Channel(bandwidth=25 * GB, latency=1e-5)
    assert tree_all_reduce_time(1e3, 512, ch) < ring_time("all-reduce", 1e3, 512, ch)
    assert ring_time("all-reduce", 1e10, 8, ch) < tree_all_reduce_time(1e10, 8, ch)
    assert flat_time("all-reduce", 1e3, 512, ch) == tree_all_reduce_time(1e3, 512, ch)


def test_hierarchical_reduces_inter_node_bytes_by_ranks_per_node() -> None:
    fast, slow = Channel(bandwidth=300 * GB, latency=0), Channel(bandwidth=25 * GB, latency=0)
    size = 8 * GB
    hier = hierarchical_time("all-reduce", size, per_node=8, nodes=4, intra=fast, inter=slow)
    flat_over_slow = flat_time("all-reduce", size, 32, slow)
    assert hier < flat_over_slow / 4
    # by hand: ring reduce-scatter and all-gather over the node's 8 ranks (S (p-1)/p each on the fast link),
    # and a ring all-reduce of the S/8 shard over the 4 nodes (2 (S/8) (4-1)/4 on the slow one)
    intra = COLLECTIVE_BASE_LATENCY_S + size * 7 / 8 / (300 * GB)
    inter = COLLECTIVE_BASE_LATENCY_S + 2 * (size / 8) * 3 / 4 / (25 * GB)
    assert hier == pytest.approx(2 * intra + inter, rel=1e-12)
    assert hierarchical_time("all-reduce", size, 8, 1, fast, slow) == flat_time("all-reduce", size, 8, fast)
    assert hierarchical_time("all-reduce", size, 1, 4, fast, slow) == flat_time("all-reduce", size, 4, slow)


def test_groups_are_placed_tp_innermost() -> None:
    assert place_group(8, 1, 8).nodes == 1                     # tp=8 fills a node
    dp = place_group(4, 8, 8)                                  # dp outside tp=8: one member per node
    assert (dp.per_node, dp.nodes) == (1, 4)
    dp = place_group(16, 2, 8)                                 # dp outside tp=2: 4 per node, 4 nodes
    assert (dp.per_node, dp.nodes) == (4, 4)


def test_a_shared_node_port_is_split_between_the_node_devices() -> None:
    catalog = load_catalog()
    base = dict(device=catalog.device("a100-80gb"), intra=catalog.link("nvlink3"), nodes=2, devices_per_node=8)
    own = ClusterSpec(inter=catalog.link("roce400x8"), **base)
    shared = ClusterSpec(inter=catalog.link("ethernet-100g"), **base)
    group = place_group(2, 8, 8)
    # 100 Gb/s shared by 8 devices against 400 Gb/s each: 32x less bandwidth per device
    assert collective_time("all-reduce", 1 * GB, group, shared) > 10 * collective_time("all-reduce", 1 * GB, group, own)
    # by hand: a 2-rank ring all-reduce sends 2 S (2-1)/2 = S per rank, in 2 hops, over the link's efficient
    # bandwidth, divided among the node's 8 devices when the port is shared
    for cluster, sharers in ((own, 1), (shared, 8)):
        link = cluster.inter
        assert not link.collective_efficiency and link.shared_per_node is (sharers > 1)
        bandwidth = link.bandwidth_bytes_per_s * link.efficiency / sharers
        expected = COLLECTIVE_BASE_LATENCY_S + 2 * link.latency_s + 1 * GB / bandwidth
        assert collective_time("all-reduce", 1 * GB, group, cluster) == pytest.approx(expected, rel=1e-12)


def test_a_collective_that_reaches_less_of_the_link_takes_proportionally_longer() -> None:
    """gloo's reduce-scatter on a CPU host runs at a fraction of what its all-reduce reaches: the link's
    collective_efficiency scales that op's bandwidth term only."""
    size, p = 64e6, 4
    plain = Channel(bandwidth=1e9, latency=0.0)
    slow = Channel(bandwidth=1e9, latency=0.0, op_efficiency=(1.0, 0.25, 1.0))
    assert ring_time("reduce-scatter", size, p, slow) == pytest.approx(
        COLLECTIVE_BASE_LATENCY_S + 4 * (ring_time("reduce-scatter", size, p, plain) - COLLECTIVE_BASE_LATENCY_S))
    assert ring_time("all-gather", size, p, slow) == ring_time("all-gather", size, p, plain)
    assert ring_time("all-reduce", size, p, slow) == ring_time("all-reduce", size, p, plain)


def test_the_catalog_link_carries_its_collective_efficiency_into_the_channel() -> None:
    catalog = load_catalog()
    link = catalog.link("loopback").model_copy(update={"collective_efficiency": {"reduce-scatter": 0.5}})
    cluster = ClusterSpec(device=catalog.device("cpu-host"), intra=link, inter=link, nodes=1, devices_per_node=2)
    assert cluster.intra_channel.bandwidth_for("reduce-scatter") == pytest.approx(
        0.5 * cluster.intra_channel.bandwidth_for("all-reduce"))
