"""A cluster's channels and where each parallel group lands (Megatron rank order), with round numbers."""

from __future__ import annotations

import pytest

from llmsim.costmodel.cluster import (ClusterSpec, Group, collective_phases, collective_time, neighbour_p2p_phases,
                                      neighbour_p2p_time, place_group)
from llmsim.costmodel.collectives import COLLECTIVE_BASE_LATENCY_S, Channel, Fabric, Phase, ring_phase
from llmsim.costmodel.efficiency import DEFAULT_EFFICIENCY, Efficiency
from tests.costmodel.helpers import Device, Link


NVLINK = Link("fast", bandwidth_bytes_per_s=200e9, latency_s=2e-6, efficiency=0.75)
NIC = Link("slow", bandwidth_bytes_per_s=40e9, latency_s=5e-6, efficiency=0.5)


def cluster(nodes: int = 2, devices_per_node: int = 4, inter: Link = NIC) -> ClusterSpec:
    return ClusterSpec(device=Device(), intra=NVLINK, inter=inter, nodes=nodes, devices_per_node=devices_per_node)


def test_a_channel_is_the_links_efficient_bandwidth_and_its_latency() -> None:
    c = cluster()
    assert c.intra_channel == Channel(bandwidth=200e9 * 0.75, latency=2e-6, op_efficiency=(1.0, 1.0, 1.0))
    assert c.inter_channel == Channel(bandwidth=40e9 * 0.5, latency=5e-6, op_efficiency=(1.0, 1.0, 1.0))
    assert c.fabric == Fabric(intra=c.intra_channel, inter=c.inter_channel)
    assert c.world == 8


def test_a_shared_port_is_divided_among_the_node_devices_that_use_it() -> None:
    shared = Link("eth", bandwidth_bytes_per_s=12.5e9, latency_s=1e-5, efficiency=0.8, shared_per_node=True)
    c = cluster(devices_per_node=4, inter=shared)
    assert c.inter_channel.bandwidth == pytest.approx(12.5e9 * 0.8 / 4, rel=1e-12)
    assert c.channel(shared, 2).bandwidth == pytest.approx(12.5e9 * 0.8 / 2, rel=1e-12)
    assert c.channel(shared, 0).bandwidth == pytest.approx(12.5e9 * 0.8, rel=1e-12)   # nobody else: all of it
    assert c.channel(shared).bandwidth == pytest.approx(12.5e9 * 0.8, rel=1e-12)
    assert c.channel(NIC, 4).bandwidth == pytest.approx(40e9 * 0.5, rel=1e-12)         # a port per device


def test_a_links_collective_efficiency_lands_in_the_channel_per_op_and_missing_ones_are_one() -> None:
    link = Link("gloo", collective_efficiency={"reduce-scatter": 0.25, "all-gather": 0.5})
    assert cluster().channel(link).op_efficiency == (1.0, 0.25, 0.5)


def test_the_efficiency_is_the_devices_own_or_the_default() -> None:
    own = Efficiency(matmul=0.5)
    assert cluster().efficiency is DEFAULT_EFFICIENCY
    c = ClusterSpec(device=Device(efficiency=own), intra=NVLINK, inter=NIC)
    assert c.efficiency is own


@pytest.mark.parametrize("n,nodes,per_node", [(1, 1, 1), (3, 1, 3), (4, 1, 4), (8, 2, 4), (16, 4, 4)])
def test_with_devices_keeps_whole_nodes_or_part_of_one(n: int, nodes: int, per_node: int) -> None:
    c = cluster(nodes=8, devices_per_node=4).with_devices(n)
    assert (c.nodes, c.devices_per_node, c.world) == (nodes, per_node, n)
    assert c.device == Device() and c.intra == NVLINK and c.inter == NIC


@pytest.mark.parametrize("size,stride,dpn,expected", [
    (1, 1, 8, Group(1, 1, 1)),
    (0, 1, 8, Group(1, 1, 1)),          # no group is a group of one
    (8, 1, 8, Group(8, 8, 1)),          # tp = 8 fills a node
    (4, 8, 8, Group(4, 1, 4)),          # dp outside tp = 8: one member per node
    (16, 2, 8, Group(16, 4, 4)),        # dp outside tp = 2: 4 per node, 4 nodes
    (2, 2, 8, Group(2, 2, 1)),          # fewer members than the node holds
    (4, 16, 8, Group(4, 1, 4)),         # stride beyond a node: one per node, never zero
    (4, 0, 8, Group(4, 4, 1)),          # stride 0 reads as consecutive ranks
    (6, 1, 4, Group(6, 4, 2)),          # a partial last node still counts
    (4, 3, 8, Group(4, 2, 2)),          # stride 3 in nodes of 8: whole members per node only
])
def test_place_group(size: int, stride: int, dpn: int, expected: Group) -> None:
    assert place_group(size, stride, dpn) == expected
    assert expected.crosses_nodes is (expected.nodes > 1)


def test_a_collective_over_a_group_is_flat_in_a_node_and_hierarchical_across_nodes() -> None:
    c = cluster()
    f = c.fabric
    size = 64e6
    inside = Group(4, 4, 1)
    assert collective_phases("all-gather", size, inside, f) == (ring_phase("all-gather", size, 4, f.intra),)
    across = Group(8, 4, 2)
    assert collective_phases("reduce-scatter", size, across, f) == (
        ring_phase("reduce-scatter", size, 4, f.intra, "intra"), ring_phase("reduce-scatter", size / 4, 2, f.inter,
                                                                             "inter"))
    assert collective_phases("all-gather", size, Group(1, 1, 1), f) == ()
    assert collective_phases("all-gather", 0.0, inside, f) == ()
    assert collective_phases("all-gather", 0.5, Group(2, 2, 1), f) != ()
    # alone on its ports: ring all-gather over 4 ranks, 3 hops, S 3/4 bytes at 150 GB/s
    assert collective_time("all-gather", size, inside, c) == pytest.approx(
        COLLECTIVE_BASE_LATENCY_S + 3 * 2e-6 + size * 3 / 4 / 150e9, rel=1e-12)


def test_a_message_to_a_neighbour_crosses_the_slowest_hop_of_its_group() -> None:
    c = cluster()
    f = c.fabric
    assert neighbour_p2p_phases(10e6, Group(4, 4, 1), f) == (Phase("intra", 10e6, 2e-6),)
    assert neighbour_p2p_phases(10e6, Group(8, 4, 2), f) == (Phase("inter", 10e6, 5e-6),)
    assert neighbour_p2p_phases(10e6, Group(2, 1, 2), f) == (Phase("inter", 10e6, 5e-6),)
    assert neighbour_p2p_phases(10e6, Group(1, 1, 1), f) == ()
    assert neighbour_p2p_phases(10e6, Group(0, 1, 1), f) == ()
    assert neighbour_p2p_time(10e6, Group(4, 4, 1), c) == pytest.approx(10e6 / 150e9 + 2e-6, rel=1e-12)
    assert neighbour_p2p_time(10e6, Group(8, 4, 2), c) == pytest.approx(10e6 / 20e9 + 5e-6, rel=1e-12)
    assert neighbour_p2p_time(10e6, Group(1, 1, 1), c) == 0.0
