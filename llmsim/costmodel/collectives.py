"""Collective communication as the algorithms run it: ring and tree, flat or hierarchical over nodes.

Written once, as *phases*: each collective is a short sequence of stretches on one rank's port (bytes it
serializes, then hops in flight). The roofline sums a collective's phases (`phases_time`); the SimPy
cluster (llmsim.sim) plays the very same phases on links that other transfers may share. So the two
agree wherever nothing contends, by construction.

Every function is pure: sizes in bytes, bandwidths in bytes/s per device per direction, latencies in
seconds per step. `size` is always the full buffer one rank holds before the collective (the whole
gradient for an all-reduce or reduce-scatter, the whole gathered result for an all-gather).

Ring algorithms (Patarasuk & Yuan 2009; NCCL's default for large messages): an all-reduce of S bytes
over p ranks is a reduce-scatter then an all-gather, 2(p-1) steps each moving S/p, so each rank sends
2 S (p-1)/p bytes. A reduce-scatter or all-gather alone is half of that.
Tree (NCCL's double binary tree, Sanders et al. 2009): 2 log2(p) latency steps and about 2 S bytes
per rank; it wins for small messages on many ranks. A flat all-reduce takes the faster of the two
(uncontended), as NCCL's tuner does.
Hierarchical (2D) over nodes: reduce-scatter inside the node, the 1/per_node shard across nodes (each
local rank on its own port, in parallel), all-gather inside; reduce-scatter and all-gather alone are
the corresponding halves.
vLLM's custom all-reduce (`custom_all_reduce_phases`): an engine's own kernel over peer-mapped buffers
inside one node instead of NCCL, for the tensor-parallel all-reduces of an engine that runs it
(`AllReduceAlgorithm` "vllm"); where vLLM would not use it, the NCCL algorithms above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Op = Literal["all-reduce", "reduce-scatter", "all-gather"]
Tier = Literal["intra", "inter"]  # the fabric inside a node / between nodes

# NCCL's fixed cost per collective launch, ring/simple protocol: baseLat = 8.4 us
# (NCCL src/graph/tuning.cc, Latencies in us, "Ring { LL, LL128, Simple }").
COLLECTIVE_BASE_LATENCY_S = 8.4e-6


OPS: tuple[Op, ...] = ("all-reduce", "reduce-scatter", "all-gather")

# Which library runs an engine's tensor-parallel all-reduces: "nccl" (the ring/tree above), or "vllm": vLLM's
# choice, its custom all-reduce where it would use it and NCCL elsewhere (`custom_all_reduce_kind`).
AllReduceAlgorithm = Literal["nccl", "vllm"]
ALL_REDUCE_ALGORITHMS: tuple[AllReduceAlgorithm, ...] = ("nccl", "vllm")
CustomKind = Literal["one-shot", "two-shot"]

# vLLM's custom all-reduce, as of the releases of late 2024 to 2026 (v0.6.x ... : the rules below are unchanged
# over them). vllm/distributed/device_communicators/custom_all_reduce.py, class CustomAllreduce:
# `_SUPPORTED_WORLD_SIZES = [2, 4, 6, 8]`; disabled when the group spans nodes (`in_the_same_node_as`) and, for
# more than 2 GPUs, when they are not fully connected ("not supported on more than two PCIe-only GPUs");
# `max_size=8192 * 1024`, and `should_custom_ar` takes an input of fewer bytes than that, a multiple of 16.
CUSTOM_AR_WORLD_SIZES = (2, 4, 6, 8)
CUSTOM_AR_MAX_BYTES = 8192 * 1024
CUSTOM_AR_BYTE_MULTIPLE = 16
# csrc/custom_all_reduce.cuh, CustomAllreduce::allreduce: 2 GPUs always run the one-stage kernel; fully
# connected, `(world_size <= 4 && bytes < 512 * 1024) || (world_size <= 8 && bytes < 256 * 1024)` runs
# one-stage (one-shot), anything larger the two-stage kernel (two-shot).
CUSTOM_AR_ONE_SHOT_BELOW: tuple[tuple[int, int], ...] = ((4, 512 * 1024), (8, 256 * 1024))
# Its launch (CustomAllreduce::allreduce, unchanged from v0.6 to 2026): `threads = 512` per block and
# `blocks = std::min(block_limit, (size + threads - 1) / threads)` with `block_limit = 36` on CUDA
# (`defaultBlockLimit`), `size` counted in 16-byte packs (`packed_t<T>::P`, "goal: generate ld.128 and st.128").
# Each thread walks its elements in a grid-stride loop (`idx += gridDim.x * blockDim.x`): one round of the grid
# covers at most 36 x 512 packs = 288 KiB of what the kernel's loop walks.
CUSTOM_AR_THREADS = 512
CUSTOM_AR_BLOCK_LIMIT = 36
CUSTOM_AR_PACK_BYTES = 16


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
    # GPUs load and store each other's memory over it (peer access); every device pair of a node is linked
    # directly (NVSwitch, a full xGMI mesh); the latency of one flag store seen by a spinning peer (a kernel's
    # barrier; None = `latency`): what a custom all-reduce uses.
    peer_access: bool = False
    fully_connected: bool = False
    flag_latency: float | None = None

    def bandwidth_for(self, op: Op) -> float:
        return self.bandwidth * self.efficiency_of(op)

    def efficiency_of(self, op: Op) -> float:
        return self.op_efficiency[OPS.index(op)]


@dataclass(frozen=True)
class Fabric:
    """The two channels one rank sees: inside its node and between nodes (ClusterSpec.fabric)."""

    intra: Channel
    inter: Channel
    # The fixed time of one kernel of a pass on the device (Efficiency.kernel_latency_s): what a collective that
    # runs as one kernel of the engine's own (a custom all-reduce) costs beyond its syncs and bytes.
    kernel_latency_s: float = 0.0
    # The one-shot custom all-reduce kernel's own fixed time, measured in a CUDA graph on this device
    # (Efficiency.custom_all_reduce_one_shot_s); None = no measurement, `kernel_latency_s` (`custom_fixed_s`).
    one_shot_fixed_s: float | None = None
    # The two-shot kernel's, measured the same way (Efficiency.custom_all_reduce_two_shot_s, ..._round_s): its
    # fixed time and the time each round of its grid-stride loops costs beyond its bytes; None = no measurement
    # (`kernel_latency_s`, no round term).
    two_shot_fixed_s: float | None = None
    two_shot_round_s: float | None = None

    def __post_init__(self) -> None:
        # Collective prices are cached per (collective, fabric): hash the two channels once, not per lookup.
        object.__setattr__(self, "_hash", hash((self.intra, self.inter, self.kernel_latency_s, self.one_shot_fixed_s,
                                                self.two_shot_fixed_s, self.two_shot_round_s)))

    def custom_fixed_s(self, kind: "CustomKind") -> float:
        """The fixed time of vLLM's custom all-reduce kernel `kind` on this device: the kernel's own, measured in a
        CUDA graph, where the device has it, else one kernel of the pass (`kernel_latency_s`)."""
        measured = self.one_shot_fixed_s if kind == "one-shot" else self.two_shot_fixed_s
        return self.kernel_latency_s if measured is None else measured

    def custom_round_s(self, kind: "CustomKind") -> float:
        """Seconds each grid-stride round of the custom all-reduce kernel `kind` costs beyond its bytes: the
        two-shot kernel's measured figure where the device has one, else 0 (the one-shot kernel's published
        times are its bytes at the link's rate: docs/costmodel.md)."""
        return (self.two_shot_round_s or 0.0) if kind == "two-shot" else 0.0

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]

    def channel(self, tier: Tier) -> Channel:
        return self.intra if tier == "intra" else self.inter


@dataclass(frozen=True)
class Phase:
    """One stretch of a collective on one rank's port: `nbytes` serialized, then `latency_s` in flight.

    `nbytes` is counted at the channel's full bandwidth: an implementation that reaches only a share e of
    it (Channel.op_efficiency) occupies the port as long as 1/e times its bytes would.
    """

    tier: Tier
    nbytes: float
    latency_s: float
    # On a TPU torus: the dimension (0 = x) whose links carry this phase (costmodel.torus); each dimension
    # has its own links, so the cluster simulation gives each its own port. None: the tier's one port.
    link: int | None = None

    def time(self, ch: Channel) -> float:
        """Seconds on an uncontended port of channel `ch`."""
        return self.nbytes / ch.bandwidth + self.latency_s


Phases = tuple[Phase, ...]
NO_PHASES: Phases = ()


def phases_time(phases: Iterable[Phase], fabric: Fabric) -> float:
    """What a sequence of phases takes alone on its ports: the roofline's time of a collective."""
    return sum(ph.time(fabric.channel(ph.tier)) for ph in phases)


def repeat(phases: Phases, k: int) -> Phases:
    """k identical collectives back to back, merged phase-wise: the same time alone, fewer simulated events."""
    if k <= 0 or not phases:
        return NO_PHASES
    return tuple(Phase(ph.tier, ph.nbytes * k, ph.latency_s * k, ph.link) for ph in phases) if k > 1 else phases


def ring_bytes_per_rank(op: Op, size: float, p: int) -> float:
    """Bytes each rank sends in a ring collective over p ranks."""
    if p <= 1:
        return 0.0
    factor = 2.0 if op == "all-reduce" else 1.0
    return factor * size * (p - 1) / p


def ring_phase(op: Op, size: float, p: int, ch: Channel, tier: Tier = "intra") -> Phase:
    """Ring: (p-1) steps (2(p-1) for all-reduce), each a hop latency, plus the launch; the ring share of bytes."""
    steps = (2 if op == "all-reduce" else 1) * (p - 1)
    return Phase(tier, ring_bytes_per_rank(op, size, p) / ch.efficiency_of(op),
                 COLLECTIVE_BASE_LATENCY_S + steps * ch.latency)


def tree_phase(size: float, p: int, ch: Channel, tier: Tier = "intra") -> Phase:
    """Double binary tree all-reduce: reduce up and broadcast down, pipelined: 2 log2(p) hops, ~2S per rank."""
    return Phase(tier, 2 * size / ch.efficiency_of("all-reduce"),
                 COLLECTIVE_BASE_LATENCY_S + 2 * math.ceil(math.log2(p)) * ch.latency)


def flat_phases(op: Op, size: float, p: int, ch: Channel, tier: Tier = "intra") -> Phases:
    """One-level collective over p ranks on one channel; an all-reduce runs as ring or tree, the faster alone."""
    if p <= 1 or size <= 0:
        return NO_PHASES
    ring = ring_phase(op, size, p, ch, tier)
    if op == "all-reduce":
        tree = tree_phase(size, p, ch, tier)
        if tree.time(ch) < ring.time(ch):
            return (tree,)
    return (ring,)


def hierarchical_phases(op: Op, size: float, per_node: int, nodes: int, fabric: Fabric) -> Phases:
    """A group of `per_node` ranks on each of `nodes` nodes: the 2D algorithm (module docstring)."""
    if nodes <= 1:
        return flat_phases(op, size, per_node, fabric.intra, "intra")
    if per_node <= 1:
        return flat_phases(op, size, nodes, fabric.inter, "inter")
    if size <= 0:
        return NO_PHASES
    shard = size / per_node
    if op == "all-reduce":
        return (ring_phase("reduce-scatter", size, per_node, fabric.intra, "intra"),
                *flat_phases("all-reduce", shard, nodes, fabric.inter, "inter"),
                ring_phase("all-gather", size, per_node, fabric.intra, "intra"))
    return (ring_phase(op, size, per_node, fabric.intra, "intra"),
            *flat_phases(op, shard, nodes, fabric.inter, "inter"))


def p2p_phases(size: float, ch: Channel, tier: Tier = "intra") -> Phases:
    """One point-to-point message (pipeline activations, context-parallel KV blocks): its bytes, one hop."""
    if size <= 0:
        return NO_PHASES
    return (Phase(tier, size, ch.latency),)


def custom_all_reduce_kind(size: float, p: int, nodes: int, ch: Channel) -> CustomKind | None:
    """Which kernel vLLM's custom all-reduce runs for `size` bytes over p ranks on `nodes` nodes whose intra-node
    channel is `ch`, or None where vLLM uses NCCL instead (constants CUSTOM_AR_* above: p in 2, 4, 6, 8, one
    node, GPU peer access (`_can_p2p`; vLLM on a CPU host has no custom kernel), fully connected beyond 2 ranks,
    fewer than 8 MiB, a multiple of 16 bytes)."""
    if p not in CUSTOM_AR_WORLD_SIZES or nodes > 1 or not 0 < size < CUSTOM_AR_MAX_BYTES or not ch.peer_access:
        return None
    if size % CUSTOM_AR_BYTE_MULTIPLE or (p > 2 and not ch.fully_connected):
        return None
    if p == 2 or any(p <= ranks and size < below for ranks, below in CUSTOM_AR_ONE_SHOT_BELOW):
        return "one-shot"
    return "two-shot"


def custom_two_shot_rounds(size: float, p: int) -> int:
    """Rounds of the grid-stride loop in each stage of vLLM's two-shot kernel (`cross_device_reduce_2stage`)
    for `size` bytes over p ranks: the kernel's grid (CUSTOM_AR_BLOCK_LIMIT blocks at most, CUSTOM_AR_THREADS
    threads, one 16-byte pack per thread and round) walks the rank's part, `part = size / ngpus` packs (the last
    rank's `largest_part` adds the remainder), in both stages: reduce-scatter (`idx` from `start + tid` below
    `end`) and all-gather (`idx` from `tid` below `largest_part`)."""
    packs = int(size) // CUSTOM_AR_PACK_BYTES
    if packs <= 0 or p <= 0:
        return 0
    blocks = min(CUSTOM_AR_BLOCK_LIMIT, -(-packs // CUSTOM_AR_THREADS))
    largest_part = packs // p + packs % p
    return -(-largest_part // (blocks * CUSTOM_AR_THREADS))


def custom_all_reduce_phases(kind: CustomKind, size: float, p: int, ch: Channel, kernel_latency_s: float,
                             tier: Tier = "intra", round_s: float = 0.0) -> Phases:
    """vLLM's custom all-reduce of `size` bytes over p fully connected ranks, as one phase on a rank's port.

    From its kernels (csrc/custom_all_reduce.cuh). One-shot (`cross_device_reduce_1stage`): a start barrier
    (each rank writes a flag into every peer's signal buffer and spins on its own: "Latency = 1 p2p write"),
    every rank loads the whole buffer of each of its p-1 peers and sums, an end barrier (another flag): (p-1)·S
    bytes into each rank. Two-shot (`cross_device_reduce_2stage`): start barrier, each rank loads its 1/p of
    every peer's buffer and reduces it (reduce-scatter), a barrier, then loads the other ranks' reduced parts
    (all-gather); the kernel's exit needs no third barrier: 2·S·(p-1)/p bytes, a ring's volume, over two load
    rounds. Time = the kernel's fixed time (`kernel_latency_s`, Fabric.custom_fixed_s: the kernel's own as
    measured in a CUDA graph where the device has it, else one kernel of the pass; in place of NCCL's launch
    latency) + the two
    barriers and each round of loads one flag latency of the link (`Channel.flag_latency`) + the bytes at the
    channel's bandwidth; the two-shot kernel also `round_s` (Fabric.custom_round_s: measured on H100, 0
    elsewhere) for each grid-stride round of each of its two stages (`custom_two_shot_rounds`). Seconds on an
    uncontended port; sizes in bytes."""
    if p <= 1 or size <= 0:
        return NO_PHASES
    flag = ch.latency if ch.flag_latency is None else ch.flag_latency
    barriers, rounds = 2, (1 if kind == "one-shot" else 2)
    nbytes = (p - 1) * size if kind == "one-shot" else 2 * size * (p - 1) / p
    grid = 2 * custom_two_shot_rounds(size, p) * round_s if kind == "two-shot" and round_s else 0.0
    return (Phase(tier, nbytes / ch.efficiency_of("all-reduce"),
                  kernel_latency_s + (barriers + rounds) * flag + grid),)


# -- the same algorithms as seconds on an uncontended channel ------------------------------------------
def ring_time(op: Op, size: float, p: int, ch: Channel) -> float:
    """Ring collective alone on `ch`: (p-1) steps (2(p-1) for all-reduce), latency plus its share of bytes."""
    if p <= 1 or size <= 0:
        return 0.0
    return ring_phase(op, size, p, ch).time(ch)


def tree_all_reduce_time(size: float, p: int, ch: Channel) -> float:
    """Double binary tree all-reduce alone on `ch`."""
    if p <= 1 or size <= 0:
        return 0.0
    return tree_phase(size, p, ch).time(ch)


def flat_time(op: Op, size: float, p: int, ch: Channel) -> float:
    """One-level collective alone on `ch`; all-reduce takes the faster of ring and tree."""
    return phases_time(flat_phases(op, size, p, ch), Fabric(ch, ch))


def hierarchical_time(op: Op, size: float, per_node: int, nodes: int, intra: Channel, inter: Channel) -> float:
    """The 2D algorithm alone on its two channels."""
    return phases_time(hierarchical_phases(op, size, per_node, nodes, Fabric(intra, inter)), Fabric(intra, inter))


def p2p_time(size: float, ch: Channel) -> float:
    """One point-to-point message alone on `ch`."""
    return phases_time(p2p_phases(size, ch), Fabric(ch, ch))
