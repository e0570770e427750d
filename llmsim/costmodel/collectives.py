"""Collective communication time: ring and tree algorithms, flat or hierarchical over nodes.

Every function is pure: sizes in bytes, bandwidths in bytes/s per device per direction, latencies in
seconds per step. `size` is always the full buffer one rank holds before the collective (the whole
gradient for an all-reduce or reduce-scatter, the whole gathered result for an all-gather).

Ring algorithms (Patarasuk & Yuan 2009; NCCL's default for large messages): an all-reduce of S bytes
over p ranks is a reduce-scatter then an all-gather, 2(p-1) steps each moving S/p, so each rank sends
2 S (p-1)/p bytes. A reduce-scatter or all-gather alone is half of that.
Tree (NCCL's double binary tree, Sanders et al. 2009): 2 log2(p) latency steps and about 2 S bytes
per rank; it wins for small messages on many ranks. `all_reduce_time` takes the faster, as NCCL's
tuner does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Op = Literal["all-reduce", "reduce-scatter", "all-gather"]

# NCCL's fixed cost per collective launch, ring/simple protocol: baseLat = 8.4 us
# (NCCL src/graph/tuning.cc, Latencies in us, "Ring { LL, LL128, Simple }").
COLLECTIVE_BASE_LATENCY_S = 8.4e-6


OPS: tuple[Op, ...] = ("all-reduce", "reduce-scatter", "all-gather")


@dataclass(frozen=True)
class Channel:
    """What one rank sees of a link while a collective runs: effective bandwidth and per-step latency.

    `op_efficiency` (all-reduce, reduce-scatter, all-gather): the share of `bandwidth` each collective's
    implementation reaches (a library may run one of them less well: gloo's reduce-scatter on a CPU host
    is slower than its all-reduce); 1 for all by default.
    """

    bandwidth: float   # bytes/s per device per direction, after protocol efficiency and port sharing
    latency: float     # seconds per ring step / message
    op_efficiency: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def bandwidth_for(self, op: Op) -> float:
        return self.bandwidth * self.op_efficiency[OPS.index(op)]


def ring_bytes_per_rank(op: Op, size: float, p: int) -> float:
    """Bytes each rank sends in a ring collective over p ranks."""
    if p <= 1:
        return 0.0
    factor = 2.0 if op == "all-reduce" else 1.0
    return factor * size * (p - 1) / p


def ring_time(op: Op, size: float, p: int, ch: Channel) -> float:
    """Ring collective: (p-1) steps (2(p-1) for all-reduce), each a latency plus its share of bytes."""
    if p <= 1 or size <= 0:
        return 0.0
    steps = (2 if op == "all-reduce" else 1) * (p - 1)
    return COLLECTIVE_BASE_LATENCY_S + steps * ch.latency + ring_bytes_per_rank(op, size, p) / ch.bandwidth_for(op)


def tree_all_reduce_time(size: float, p: int, ch: Channel) -> float:
    """Double binary tree all-reduce: reduce up and broadcast down, pipelined: 2 log2(p) hops, ~2S per rank."""
    if p <= 1 or size <= 0:
        return 0.0
    return (COLLECTIVE_BASE_LATENCY_S + 2 * math.ceil(math.log2(p)) * ch.latency
            + 2 * size / ch.bandwidth_for("all-reduce"))


def flat_time(op: Op, size: float, p: int, ch: Channel) -> float:
    """One-level collective; all-reduce takes the faster of ring and tree."""
    ring = ring_time(op, size, p, ch)
    if op == "all-reduce":
        return min(ring, tree_all_reduce_time(size, p, ch))
    return ring


def hierarchical_time(op: Op, size: float, per_node: int, nodes: int, intra: Channel, inter: Channel) -> float:
    """A group of per_node ranks on each of `nodes` nodes (2D/hierarchical algorithm).

    all-reduce = reduce-scatter inside the node, all-reduce of the 1/per_node shard across nodes (each
    of the per_node ranks runs its own inter-node ring in parallel, on its own port), all-gather inside.
    reduce-scatter and all-gather are the corresponding halves.
    """
    if nodes <= 1:
        return flat_time(op, size, per_node, intra)
    if per_node <= 1:
        return flat_time(op, size, nodes, inter)
    shard = size / per_node
    if op == "all-reduce":
        return (ring_time("reduce-scatter", size, per_node, intra) + flat_time("all-reduce", shard, nodes, inter)
                + ring_time("all-gather", size, per_node, intra))
    return ring_time(op, size, per_node, intra) + ring_time(op, shard, nodes, inter)


def p2p_time(size: float, ch: Channel) -> float:
    """One point-to-point message (pipeline activations, context-parallel KV blocks)."""
    if size <= 0:
        return 0.0
    return ch.latency + size / ch.bandwidth
