"""A cluster (device, nodes, links) and where each parallel group lands on it.

Placement follows Megatron-LM's rank order: tensor parallel innermost (consecutive ranks, so it stays
inside a node whenever tp <= devices per node), then context parallel, then pipeline, data parallel
outermost. A group of `size` ranks with rank stride `stride` therefore has min(size, devices_per_node //
stride) members per node; when that is less than `size` the group spans nodes and its collectives run
hierarchically (costmodel.collectives.hierarchical_time).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmsim.costmodel.collectives import OPS, Channel, Op, flat_time, hierarchical_time, p2p_time
from llmsim.costmodel.efficiency import DEFAULT_EFFICIENCY, Efficiency

if TYPE_CHECKING:  # the catalog imports this package; keep the runtime import graph one-way
    from llmsim.hardware import DeviceSpec, LinkSpec


@dataclass(frozen=True)
class ClusterSpec:
    """`nodes` x `devices_per_node` identical devices, `intra` links inside a node, `inter` between nodes."""

    device: "DeviceSpec"
    intra: "LinkSpec"
    inter: "LinkSpec"
    nodes: int = 1
    devices_per_node: int = 8

    @property
    def world(self) -> int:
        return self.nodes * self.devices_per_node

    @property
    def efficiency(self) -> Efficiency:
        return self.device.efficiency or DEFAULT_EFFICIENCY

    @functools.cached_property
    def intra_channel(self) -> Channel:
        return self.channel(self.intra, self.devices_per_node)

    @functools.cached_property
    def inter_channel(self) -> Channel:
        return self.channel(self.inter, self.devices_per_node)

    def channel(self, link: "LinkSpec", sharers: int = 1) -> Channel:
        """Effective bandwidth of `link` for one device while `sharers` devices of a node use a shared port."""
        bandwidth = link.bandwidth_bytes_per_s * link.efficiency
        if link.shared_per_node:
            bandwidth /= max(sharers, 1)
        ops = tuple(link.collective_efficiency.get(op, 1.0) for op in OPS)
        return Channel(bandwidth=bandwidth, latency=link.latency_s, op_efficiency=ops)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Group:
    """One parallel group as placed: members per node and nodes spanned."""

    size: int
    per_node: int
    nodes: int

    @property
    def crosses_nodes(self) -> bool:
        return self.nodes > 1


def place_group(size: int, stride: int, devices_per_node: int) -> Group:
    """Where a group of `size` ranks, consecutive members `stride` ranks apart, lands."""
    if size <= 1:
        return Group(size=max(size, 1), per_node=1, nodes=1)
    per_node = max(1, min(size, devices_per_node // max(stride, 1)))
    return Group(size=size, per_node=per_node, nodes=math.ceil(size / per_node))


def collective_time(op: Op, size: float, group: Group, cluster: ClusterSpec) -> float:
    """Time of one collective over a placed group: flat inside a node, hierarchical across nodes.

    On a port shared by a node (shared_per_node), all devices of the node are assumed to communicate at
    once (the usual case: every data-parallel group reduces at the same time).
    """
    if group.size <= 1 or size <= 0:
        return 0.0
    if not group.crosses_nodes:
        return flat_time(op, size, group.size, cluster.intra_channel)
    return hierarchical_time(op, size, group.per_node, group.nodes, cluster.intra_channel, cluster.inter_channel)


def neighbour_p2p_time(size: float, group: Group, cluster: ClusterSpec) -> float:
    """A message between neighbouring members of a group; the slowest hop when the group spans nodes."""
    if group.size <= 1:
        return 0.0
    return p2p_time(size, cluster.inter_channel if group.crosses_nodes else cluster.intra_channel)
