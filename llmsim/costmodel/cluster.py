"""A cluster (device, nodes, links) and where each parallel group lands on it.

Placement follows Megatron-LM's rank order: tensor parallel innermost (consecutive ranks, so it stays
inside a node whenever tp <= devices per node), then context parallel, then pipeline, data parallel
outermost. A group of `size` ranks with rank stride `stride` therefore has min(size, devices_per_node //
stride) members per node; when that is less than `size` the group spans nodes and its collectives run
hierarchically (costmodel.collectives.hierarchical_phases).

A TPU slice (ClusterSpec.topology set) is a torus instead: one node per slice, its groups laid onto the
torus dimensions (costmodel.torus.map_axes) and their collectives run as per-axis rings; slices are joined by
the `inter` link (the data-center network).

`collective_phases` is the one place a collective over a placed group becomes port phases: the roofline
takes their time (`collective_time`), the cluster simulation plays them on its links.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from llmsim.costmodel.collectives import (NO_PHASES, OPS, AllReduceAlgorithm, Channel, Fabric, Op, Phases,
                                          custom_all_reduce_kind, custom_all_reduce_phases, hierarchical_phases,
                                          p2p_phases, phases_time)
from llmsim.costmodel.efficiency import DEFAULT_EFFICIENCY, Efficiency
from llmsim.costmodel.torus import AXIS_ORDER, Ring, default_shape, map_axes, torus_phases, wraps

if TYPE_CHECKING:
    from llmsim.costmodel.plan import Plan


class DeviceSpec(Protocol):
    """What the cost model reads of a device: a hardware catalog entry (llmsim.hardware.DeviceSpec).

    Declared here so that the cost model never depends on the catalog: the catalog is built on the cost
    model's concepts (efficiency, clusters), not the other way round."""

    name: str
    peak_flops: Mapping[str, float]
    memory_bytes: float
    memory_bw_bytes_per_s: float
    idle_power_w: float
    max_power_w: float
    power_limit_w: float | None  # enforced board power limit below max_power_w (costmodel.power); None = none
    compute_units: int | None
    efficiency: Efficiency | None
    overlaps_communication: bool
    request_overhead_s: float  # per served request, outside the engine's passes (read by the serving simulation)
    step_overhead_s: float  # host seconds per engine iteration, not overlapped (read by the serving simulation)
    step_overhead_per_seq_s: float  # host seconds per iteration per sequence it runs (the same)
    eager_launch_s: float  # host seconds to launch one kernel of an eager pass (read by the serving simulation)
    allreduce_rms_fusion_max_bytes: Mapping[int, float]  # tp -> vLLM's all-reduce + RMSNorm fusion limit (costmodel.eager)


class LinkSpec(Protocol):
    """What the cost model reads of a link (llmsim.hardware.LinkSpec)."""

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float
    efficiency: float
    shared_per_node: bool
    collective_efficiency: Mapping[str, float]
    peer_access: bool
    fully_connected: bool
    flag_latency_s: float | None


@dataclass(frozen=True)
class ClusterSpec:
    """`nodes` x `devices_per_node` identical devices, `intra` links inside a node, `inter` between nodes.

    With `topology` (a TPU slice's shape, e.g. (4, 4, 8)) a node is one slice of prod(topology) chips joined
    by a torus of `intra` links (one link per neighbour and dimension; `wrap` says which dimensions close
    into rings), `inter` is the data-center network between slices, and `mesh` pins mesh axes to torus
    dimensions ((("tp", "z"),): costmodel.torus.map_axes)."""

    device: DeviceSpec
    intra: LinkSpec
    inter: LinkSpec
    nodes: int = 1
    devices_per_node: int = 8
    topology: tuple[int, ...] = ()
    wrap: tuple[bool, ...] = ()
    mesh: tuple[tuple[str, str], ...] = ()

    @property
    def is_torus(self) -> bool:
        return bool(self.topology)

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

    @functools.cached_property
    def fabric(self) -> Fabric:
        """What one device sees of the two fabrics when nothing else uses them, and the device's fixed times of
        a custom all-reduce kernel (Fabric.custom_fixed_s)."""
        eff = self.efficiency
        return Fabric(intra=self.intra_channel, inter=self.inter_channel, kernel_latency_s=eff.kernel_latency_s,
                      one_shot_fixed_s=eff.custom_all_reduce_one_shot_s,
                      two_shot_fixed_s=eff.custom_all_reduce_two_shot_s,
                      two_shot_round_s=eff.custom_all_reduce_two_shot_round_s)

    def with_devices(self, n: int) -> "ClusterSpec":
        """The same hardware with n devices: whole nodes, or part of one node when n fits in one."""
        if self.is_torus and n != self.world:
            # TPU: n chips as one slice of the most even shape (torus.default_shape); the same wrap-around
            # rule as the catalog's (the torus block's wrap_multiple)
            torus = getattr(self.device, "torus", None)
            shape = default_shape(n, len(self.topology))
            multiple = torus.wrap_multiple if torus is not None else max(self.topology) + 1
            return replace(self, nodes=1, devices_per_node=n, topology=shape, wrap=wraps(shape, multiple), mesh=())
        if n <= self.devices_per_node:
            return replace(self, nodes=1, devices_per_node=n)
        return replace(self, nodes=n // self.devices_per_node)

    def channel(self, link: LinkSpec, sharers: int = 1) -> Channel:
        """Effective bandwidth of `link` for one device while `sharers` devices of a node use a shared port."""
        bandwidth = link.bandwidth_bytes_per_s * link.efficiency
        if link.shared_per_node and not self.is_torus:  # a slice's DCN figures are per chip already
            bandwidth /= max(sharers, 1)
        ops = tuple(link.collective_efficiency.get(op, 1.0) for op in OPS)
        return Channel(bandwidth=bandwidth, latency=link.latency_s, op_efficiency=ops,  # type: ignore[arg-type]
                       peer_access=getattr(link, "peer_access", False),
                       fully_connected=getattr(link, "fully_connected", False),
                       flag_latency=getattr(link, "flag_latency_s", None))


@dataclass(frozen=True)
class Group:
    """One parallel group as placed: members per node and nodes spanned; on a TPU slice, the torus
    segments its members lie on inside each slice (`rings`, costmodel.torus)."""

    size: int
    per_node: int
    nodes: int
    rings: tuple[Ring, ...] = ()

    def __hash__(self) -> int:
        # a collective's price is cached per (collective, fabric) (work._comm_time) and a collective hashes its
        # group: hashed once, when first asked (the value the dataclass's own __hash__ gives)
        try:
            return self._hash  # type: ignore[attr-defined, no-any-return]
        except AttributeError:
            value = hash((self.size, self.per_node, self.nodes, self.rings))
            object.__setattr__(self, "_hash", value)
            return value

    def __reduce__(self) -> tuple:
        return Group, (self.size, self.per_node, self.nodes, self.rings)  # the hash is made again where unpickled

    @property
    def crosses_nodes(self) -> bool:
        return self.nodes > 1


def place_group(size: int, stride: int, devices_per_node: int) -> Group:
    """Where a group of `size` ranks, consecutive members `stride` ranks apart, lands."""
    if size <= 1:
        return Group(size=max(size, 1), per_node=1, nodes=1)
    per_node = max(1, min(size, devices_per_node // max(stride, 1)))
    return Group(size=size, per_node=per_node, nodes=math.ceil(size / per_node))


def tp_span_note(tp: int, cluster: ClusterSpec) -> str | None:
    """Why a tensor-parallel group of `tp` ranks on `cluster` is slower than one inside a node, as a note, or
    None: with tp innermost in the rank order (`place_group`, stride 1) it spans nodes when tp exceeds the
    devices per node, and each of its all-reduces (per layer, forward and backward, or per decode step) then
    crosses the `inter` link between nodes (costmodel.collectives.hierarchical_phases prices it so). A note, not
    a price: the user may not have meant it (a100-80gb-pcie's node is one NVLink-bridged pair). None on a TPU
    slice (its tensor-parallel axis lies on the torus inside a slice, `torus_groups`). Bandwidths in GB/s per
    device per direction, the catalog's `bandwidth_bytes_per_s` (docs/hardware.md)."""
    if cluster.is_torus:
        return None
    group = place_group(tp, 1, cluster.devices_per_node)
    if not group.crosses_nodes:
        return None
    return (f"tp = {tp} spans {group.nodes} nodes of {cluster.devices_per_node} {cluster.device.name} "
            f"(devices_per_node {cluster.devices_per_node}): each tensor-parallel all-reduce crosses the inter-node "
            f"link {cluster.inter.name} ({cluster.inter.bandwidth_bytes_per_s / 1e9:g} GB/s per device per "
            f"direction) besides {cluster.intra.name} ({cluster.intra.bandwidth_bytes_per_s / 1e9:g} GB/s) inside "
            f"a node; for tp inside one node keep tp <= {cluster.devices_per_node}")


def place_grid(axes: tuple[tuple[int, int], ...], devices_per_node: int) -> Group:
    """Where a group spanning several mesh axes lands: `axes` = (size, stride) of each axis, innermost first,
    its members every combination of one member per axis (e.g. Megatron-Core's data-parallel group with
    context parallelism: cp ranks `tp` apart times dp ranks `tp*cp*pp` apart in llmsim's rank order). Its
    members per node are the product of each axis's (`place_group`); with one axis of size > 1 it is that
    axis's placement, and with the axes adjacent (each stride the previous one's times its size) it equals
    `place_group` of the whole size at the innermost stride (power-of-two sizes)."""
    parts = [place_group(size, stride, devices_per_node) for size, stride in axes if size > 1]
    if len(parts) <= 1:
        return parts[0] if parts else Group(size=1, per_node=1, nodes=1)
    return Group(size=math.prod(g.size for g in parts), per_node=math.prod(g.per_node for g in parts),
                 nodes=math.prod(g.nodes for g in parts))


def with_cp(dp: Group, cp: Group) -> Group:
    """A TPU slice's data-parallel group joined with its context-parallel axis (both from `torus_groups`): the
    gradient and ZeRO group of dp x cp ranks, reduced over the cp axis's torus segments, then dp's (one
    collective phase per segment, costmodel.torus.torus_phases), across slices over DCN as dp alone."""
    if cp.size <= 1:
        return dp
    return Group(size=dp.size * cp.size, per_node=dp.per_node * cp.per_node, nodes=dp.nodes,
                 rings=cp.rings + dp.rings)


def torus_groups(degrees: Mapping[str, int], cluster: ClusterSpec) -> dict[str, Group]:
    """Each mesh axis of `degrees` (tp, cp, pp, dp: whole-job degrees) as placed on a TPU slice cluster: the
    inner axes inside each slice, data parallelism across `cluster.nodes` slices over DCN for its outer part.
    Raises torus.TorusError when the degrees do not tile the slices."""
    from llmsim.costmodel.torus import TorusError

    slices = cluster.nodes
    dp = degrees.get("dp", 1)
    if dp % slices:
        raise TorusError(f"dp = {dp} is not a multiple of the {slices} slices (data parallelism spans the slices)")
    inside = {axis: degrees.get(axis, 1) for axis in AXIS_ORDER}
    inside["dp"] = dp // slices
    rings = map_axes(cluster.topology, cluster.wrap or (False,) * len(cluster.topology), inside, dict(cluster.mesh))
    out = {axis: Group(size=inside[axis], per_node=inside[axis], nodes=1, rings=rings[axis]) for axis in AXIS_ORDER}
    out["dp"] = Group(size=dp, per_node=inside["dp"], nodes=slices, rings=rings["dp"])
    return out


def plan_on(plan: "Plan", cluster: ClusterSpec) -> "Plan":
    """`plan` as it runs on `cluster`: on several TPU slices ZeRO shards inside a slice and the slices are
    data-parallel replicas over DCN (Plan.dcn_replicas); elsewhere unchanged."""
    if cluster.is_torus and cluster.nodes > 1 and plan.zero >= 1 and plan.dp > 1 and plan.dcn_replicas == 1:
        return replace(plan, dcn_replicas=cluster.nodes)
    return plan


def collective_phases(op: Op, size: float, group: Group, fabric: Fabric,
                      algorithm: AllReduceAlgorithm = "nccl") -> Phases:
    """One collective of `size` bytes (the full buffer per rank) over a placed group, as port phases:
    flat inside a node, hierarchical across nodes (costmodel.collectives). With `algorithm` "vllm" an
    all-reduce runs vLLM's custom kernel where vLLM would (collectives.custom_all_reduce_kind), NCCL's
    algorithms elsewhere."""
    if group.size <= 1 or size <= 0:
        return NO_PHASES
    if algorithm == "vllm" and op == "all-reduce" and not group.rings:
        kind = custom_all_reduce_kind(size, group.size, group.nodes, fabric.intra)
        if kind is not None:
            return custom_all_reduce_phases(kind, size, group.size, fabric.intra, fabric.custom_fixed_s(kind),
                                            round_s=fabric.custom_round_s(kind))
    if group.rings:
        return torus_phases(op, size, group.rings, group.nodes, fabric)
    return hierarchical_phases(op, size, group.per_node, group.nodes, fabric)


def neighbour_p2p_phases(size: float, group: Group, fabric: Fabric) -> Phases:
    """A message between neighbouring members of a group, on the slowest hop when the group spans nodes."""
    if group.size <= 1:
        return NO_PHASES
    tier = "inter" if group.crosses_nodes else "intra"
    return p2p_phases(size, fabric.channel(tier), tier)


def collective_time(op: Op, size: float, group: Group, cluster: ClusterSpec) -> float:
    """Time of one collective over a placed group, alone on its ports.

    On a port shared by a node (shared_per_node), all devices of the node are assumed to communicate at
    once (the usual case: every data-parallel group reduces at the same time).
    """
    return phases_time(collective_phases(op, size, group, cluster.fabric), cluster.fabric)


def neighbour_p2p_time(size: float, group: Group, cluster: ClusterSpec) -> float:
    """A message between neighbouring members of a group; the slowest hop when the group spans nodes."""
    return phases_time(neighbour_p2p_phases(size, group, cluster.fabric), cluster.fabric)
