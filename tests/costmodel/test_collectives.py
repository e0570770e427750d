"""Collective algorithms: the textbook volumes and the choices NCCL makes."""

from __future__ import annotations

import pytest

from llmsim.costmodel.cluster import ClusterSpec, collective_time, place_group
from llmsim.costmodel.collectives import (COLLECTIVE_BASE_LATENCY_S, Channel, Fabric, Phase, flat_time,
                                          hierarchical_time, phases_time,
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


# -- exact edge cases of every algorithm (each number by hand from the formulas in the module docstring) -------
LAT = 1e-5                                   # seconds per hop
CH = Channel(bandwidth=4e9, latency=LAT)     # 4 GB/s per direction


def test_a_point_to_point_message_is_its_bytes_on_one_hop_of_the_given_tier() -> None:
    from llmsim.costmodel.collectives import p2p_phases, p2p_time

    (phase,) = p2p_phases(0.5, CH)                        # half a byte still travels: only size <= 0 is nothing
    assert phase == Phase("intra", 0.5, LAT)              # the default tier is the node's fabric
    assert p2p_phases(8.0, CH, "inter") == (Phase("inter", 8.0, LAT),)
    assert p2p_phases(0.0, CH) == () and p2p_phases(-1.0, CH) == ()
    assert p2p_time(4e6, CH) == pytest.approx(4e6 / 4e9 + LAT, rel=1e-12)
    assert p2p_time(0.0, CH) == 0.0


@pytest.mark.parametrize("op,steps,factor", [("all-reduce", 2, 2), ("reduce-scatter", 1, 1), ("all-gather", 1, 1)])
def test_ring_time_of_every_op_on_two_ranks_and_on_tiny_buffers(op: str, steps: int, factor: int) -> None:
    """p = 2: (p-1) = 1 step per half, S (p-1)/p = S/2 bytes per half."""
    for size in (0.5, 4e6):
        expected = COLLECTIVE_BASE_LATENCY_S + steps * 1 * LAT + factor * size / 2 / 4e9
        assert ring_time(op, size, 2, CH) == pytest.approx(expected, rel=1e-12)
    assert ring_time(op, 0.0, 4, CH) == 0.0       # nothing to send, even on several ranks
    assert ring_time(op, 4e6, 1, CH) == 0.0       # alone: nothing to exchange
    assert ring_time(op, 4e6, 0, CH) == 0.0


@pytest.mark.parametrize("p,hops", [(2, 1), (4, 2), (5, 3), (8, 3), (9, 4)])
def test_tree_all_reduce_is_two_ceil_log2_p_hops_and_twice_the_buffer(p: int, hops: int) -> None:
    for size in (0.5, 4e6):
        expected = COLLECTIVE_BASE_LATENCY_S + 2 * hops * LAT + 2 * size / 4e9
        assert tree_all_reduce_time(size, p, CH) == pytest.approx(expected, rel=1e-12)
    assert tree_all_reduce_time(4e6, 1, CH) == 0.0
    assert tree_all_reduce_time(0.0, 8, CH) == 0.0


def test_the_tree_pays_its_link_efficiency_like_the_ring() -> None:
    half = Channel(bandwidth=4e9, latency=LAT, op_efficiency=(0.5, 1.0, 1.0))
    assert tree_all_reduce_time(4e6, 4, half) == pytest.approx(
        COLLECTIVE_BASE_LATENCY_S + 2 * 2 * LAT + 2 * 4e6 / 0.5 / 4e9, rel=1e-12)


def test_a_flat_all_reduce_takes_the_ring_when_it_is_faster_and_the_other_ops_always_ring() -> None:
    from llmsim.costmodel.collectives import flat_phases, ring_phase, tree_phase

    big = 1e9
    assert flat_phases("all-reduce", big, 8, CH) == (ring_phase("all-reduce", big, 8, CH),)
    assert flat_phases("all-reduce", 1e3, 512, CH) == (tree_phase(1e3, 512, CH),)
    # the reduce-scatter never considers the tree, even where the tree would be faster
    assert flat_phases("reduce-scatter", 1e3, 512, CH) == (ring_phase("reduce-scatter", 1e3, 512, CH),)
    assert flat_phases("all-reduce", 0.5, 2, CH) != ()
    assert flat_phases("all-reduce", 0.0, 8, CH) == () and flat_phases("all-reduce", 1e6, 1, CH) == ()
    assert flat_phases("all-gather", 1e6, 4, CH, "inter")[0].tier == "inter"
    assert flat_phases("all-gather", 1e6, 4, CH)[0].tier == "intra"


def test_equal_ring_and_tree_times_keep_the_ring() -> None:
    """The tree replaces the ring only when strictly faster. On 4 ranks the ring pays 6 hops and 2 S 3/4
    bytes, the tree 4 hops and 2 S: they tie where 2 L = S / (2 B), i.e. S = 4 L B (powers of two: exact)."""
    from llmsim.costmodel.collectives import flat_phases, ring_phase, tree_phase

    hop, bandwidth = 2.0**-16, 2.0**32
    ch = Channel(bandwidth=bandwidth, latency=hop)
    size = 4 * hop * bandwidth
    assert ring_phase("all-reduce", size, 4, ch).time(ch) == tree_phase(size, 4, ch).time(ch)
    assert flat_phases("all-reduce", size, 4, ch) == (ring_phase("all-reduce", size, 4, ch),)


def test_ring_phase_carries_tier_latency_and_efficiency() -> None:
    from llmsim.costmodel.collectives import ring_phase

    slow_gather = Channel(bandwidth=4e9, latency=LAT, op_efficiency=(1.0, 1.0, 0.25))
    phase = ring_phase("all-gather", 8e6, 4, slow_gather, "inter")
    assert phase == Phase("inter", 8e6 * 3 / 4 / 0.25, COLLECTIVE_BASE_LATENCY_S + 3 * LAT)
    assert ring_phase("all-reduce", 8e6, 4, CH).latency_s == pytest.approx(COLLECTIVE_BASE_LATENCY_S + 6 * LAT)
    assert ring_phase("all-reduce", 8e6, 4, CH).tier == "intra"      # the default: the node's fabric


def test_tree_phase_carries_its_tier() -> None:
    from llmsim.costmodel.collectives import flat_phases, tree_phase

    assert tree_phase(1e3, 512, CH).tier == "intra"
    assert tree_phase(1e3, 512, CH, "inter").tier == "inter"
    # a flat all-reduce that picks the tree keeps the tier it was asked for
    assert flat_phases("all-reduce", 1e3, 512, CH, "inter") == (tree_phase(1e3, 512, CH, "inter"),)
    assert flat_phases("all-reduce", 1e3, 512, CH, "inter")[0].tier == "inter"


def test_repeat_merges_k_collectives_into_k_times_the_bytes_and_latency() -> None:
    from llmsim.costmodel.collectives import NO_PHASES, repeat

    one = (Phase("intra", 10.0, 1e-6), Phase("inter", 3.0, 2e-6))
    assert repeat(one, 1) is one
    assert repeat(one, 3) == (Phase("intra", 30.0, 3e-6), Phase("inter", 9.0, 6e-6))
    assert repeat(one, 0) == NO_PHASES and repeat(one, -2) == NO_PHASES
    assert repeat(NO_PHASES, 4) == NO_PHASES


def test_phases_time_reads_each_phase_on_its_own_tier() -> None:
    fabric = Fabric(intra=Channel(bandwidth=8e9, latency=1e-6), inter=Channel(bandwidth=1e9, latency=5e-6))
    phases = (Phase("intra", 8e6, 1e-6), Phase("inter", 1e6, 5e-6))
    assert phases_time(phases, fabric) == pytest.approx(8e6 / 8e9 + 1e-6 + 1e6 / 1e9 + 5e-6, rel=1e-12)
    assert fabric.channel("intra") is fabric.intra and fabric.channel("inter") is fabric.inter
    assert Phase("intra", 8e6, 1e-6).time(fabric.intra) == pytest.approx(1e-3 + 1e-6, rel=1e-12)


def test_equal_fabrics_hash_alike_so_the_price_cache_finds_them() -> None:
    a = Fabric(intra=Channel(1e9, 1e-6), inter=Channel(2e9, 1e-6))
    b = Fabric(intra=Channel(1e9, 1e-6), inter=Channel(2e9, 1e-6))
    assert a == b and hash(a) == hash(b) == hash((a.intra, a.inter, a.kernel_latency_s, a.one_shot_fixed_s,
                                                  a.two_shot_fixed_s, a.two_shot_round_s))
    assert hash(Fabric(intra=Channel(2e9, 1e-6), inter=Channel(1e9, 1e-6))) != hash(a)
    # the device's kernel latency prices a custom all-reduce: fabrics that differ in it are different keys
    assert Fabric(a.intra, a.inter, kernel_latency_s=12e-6) != a
    assert Fabric(a.intra, a.inter, a.kernel_latency_s, one_shot_fixed_s=3.8e-6) != a
    assert Fabric(a.intra, a.inter, a.kernel_latency_s, two_shot_fixed_s=7.4e-6) != a
    assert hash(Fabric(a.intra, a.inter, a.kernel_latency_s, two_shot_round_s=1.86e-6)) != hash(a)


def test_hierarchical_reduce_scatter_and_all_gather_are_the_intra_ring_then_the_inter_shard() -> None:
    from llmsim.costmodel.collectives import hierarchical_phases, ring_phase

    fast, slow = Channel(bandwidth=8e9, latency=1e-6), Channel(bandwidth=1e9, latency=5e-6)
    fabric = Fabric(fast, slow)
    size = 32e6
    for op in ("reduce-scatter", "all-gather"):
        assert hierarchical_phases(op, size, 4, 2, fabric) == (
            ring_phase(op, size, 4, fast, "intra"), ring_phase(op, size / 4, 2, slow, "inter"))
    assert hierarchical_phases("all-reduce", size, 4, 2, fabric) == (
        ring_phase("reduce-scatter", size, 4, fast, "intra"), ring_phase("all-reduce", size / 4, 2, slow, "inter"),
        ring_phase("all-gather", size, 4, fast, "intra"))
    # one node: flat on the fast fabric; one rank per node: flat on the slow one, tier "inter"
    assert hierarchical_phases("all-gather", size, 4, 1, fabric) == (ring_phase("all-gather", size, 4, fast),)
    assert hierarchical_phases("all-gather", size, 1, 4, fabric) == (
        ring_phase("all-gather", size, 4, slow, "inter"),)
    assert hierarchical_phases("all-gather", 0.0, 4, 2, fabric) == ()
    assert hierarchical_phases("all-gather", 0.5, 4, 2, fabric) != ()
    assert hierarchical_time("reduce-scatter", size, 4, 2, fast, slow) == pytest.approx(
        COLLECTIVE_BASE_LATENCY_S + 3 * 1e-6 + size * 3 / 4 / 8e9
        + COLLECTIVE_BASE_LATENCY_S + 1 * 5e-6 + size / 4 / 2 / 1e9, rel=1e-12)


def test_channel_efficiency_is_looked_up_per_op() -> None:
    ch = Channel(bandwidth=1e9, latency=0.0, op_efficiency=(0.5, 0.25, 0.75))
    assert [ch.efficiency_of(op) for op in ("all-reduce", "reduce-scatter", "all-gather")] == [0.5, 0.25, 0.75]
    assert ch.bandwidth_for("all-gather") == pytest.approx(0.75e9)
    assert Channel(bandwidth=1e9, latency=0.0).op_efficiency == (1.0, 1.0, 1.0)


def test_a_single_rank_sends_nothing() -> None:
    for op in ("all-reduce", "reduce-scatter", "all-gather"):
        assert ring_bytes_per_rank(op, 3 * GB, 1) == 0.0


def test_two_ranks_per_node_still_run_the_two_level_algorithm() -> None:
    from llmsim.costmodel.collectives import hierarchical_phases, ring_phase

    fast, slow = Channel(bandwidth=8e9, latency=1e-6), Channel(bandwidth=1e9, latency=5e-6)
    size = 32e6
    assert hierarchical_phases("all-reduce", size, 2, 2, Fabric(fast, slow)) == (
        ring_phase("reduce-scatter", size, 2, fast, "intra"), ring_phase("all-reduce", size / 2, 2, slow, "inter"),
        ring_phase("all-gather", size, 2, fast, "intra"))
