"""TPU slices as tori: a slice's shape, mesh axes mapped onto its dimensions, collectives as per-axis rings.

A TPU slice is a 2D (v5e) or 3D (v4, v5p) grid of chips, each joined to its two neighbours along every
dimension by one ICI link; a dimension long enough gets wrap-around links and is a ring (Cloud TPU docs:
v4 "3D torus on slices where ... each dimension is a multiple of 4", v5p "all 4x4x4 and larger slices have
full 3D torus", v5e a 2D torus of the 256-chip pod). Slices of a multi-slice job talk over the data-center
network (DCN), one ClusterSpec node per slice.

Mesh axes (tp, cp, pp, dp; fsdp = dp with ZeRO-3) are laid onto the torus dimensions as JAX device meshes
are (jax.experimental.mesh_utils.create_device_mesh, used by MaxText): innermost axis first (tp, then cp,
pp, dp, Megatron's rank order), each taking whole dimensions in x, y, z order; an axis smaller than the
dimension it lands on takes a contiguous stretch of it, and the next axis the rest with a stride. A user
mapping (`mesh: {tp: z, dp: xy}`) pins axes to named dimensions first.

One axis of a group on one dimension is a `Ring` segment: `size` members `stride` chips apart. A collective
over the segment runs as a ring along the dimension (the ring algorithm of costmodel.collectives):
* wrap-around (the segment spans a whole dimension that has it): two counter-rotating rings, each on its
  own direction of every link, carry half the data each: the ring's bytes at twice the link bandwidth;
* a line (no wrap-around): one bidirectional ring folded onto the line uses both directions of each link:
  the ring's bytes at the link bandwidth;
* stride s > 1: the s interleaved groups of the axis cross the same links (s hops per ring step), so each
  gets 1/s of the link bandwidth and every step takes s hops of latency.
An all-reduce over several segments runs as per-axis phases (reduce-scatter along each dimension in turn
with the shard shrinking, the DCN all-reduce of the remaining shard across slices, all-gathers back); a
reduce-scatter or all-gather is the corresponding half. All functions are pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from llmsim.costmodel.collectives import NO_PHASES, Channel, Fabric, Op, Phase, Phases, flat_phases, ring_bytes_per_rank

DIM_NAMES = "xyz"
# Mesh axes innermost first: the order their ranks are laid out (Megatron-LM: tp, cp, pp, dp).
AXIS_ORDER: tuple[str, ...] = ("tp", "cp", "pp", "dp")
AXIS_ALIASES = {"fsdp": "dp", "data": "dp", "tensor": "tp", "stage": "pp", "sequence": "cp"}


class TorusError(ValueError):
    """A slice shape or axis mapping that cannot exist (one line: what is wrong and what is allowed); pricing
    turns it into a CostModelError (costmodel.work.Groups.on), the catalog into a ScenarioError."""


@dataclass(frozen=True)
class Ring:
    """One mesh axis's stretch of one torus dimension: `size` members `stride` chips apart on dimension
    `dim`; `wrap` when the stretch closes into a ring over wrap-around links."""

    dim: int
    size: int
    stride: int = 1
    wrap: bool = False

    @property
    def bandwidth_factor(self) -> float:
        """The share of one link's bandwidth (per direction) this segment's ring sees per member."""
        return (2.0 if self.wrap else 1.0) / self.stride


def parse_topology(text: str, dims: int | None = None) -> tuple[int, ...]:
    """'4x4x8' -> (4, 4, 8). TorusError for anything else, or for a count of dimensions other than `dims`."""
    parts = str(text).lower().split("x")
    if not all(p.isdigit() and int(p) >= 1 for p in parts) or len(parts) > len(DIM_NAMES):
        raise TorusError(f"{text!r} is not a slice shape; allowed: AxB or AxBxC with positive integers (e.g. 4x4x8)")
    shape = tuple(int(p) for p in parts)
    if dims is not None and len(shape) != dims:
        raise TorusError(f"{text!r} has {len(shape)} dimension(s); this device's slices are {dims}D tori "
                         f"(e.g. {'x'.join(['4'] * dims)})")
    return shape


@dataclass(frozen=True)
class SliceShapes:
    """The slice shapes a TPU generation offers (the catalog's torus block; Cloud TPU docs, cited there).

    A shape is offered when, sides in any order, it is one of `listed`, or (`multiple` set) every dimension is
    a multiple of `multiple` (the 4x4x4 cube of v4/v5p: slices above one cube are built of whole cubes) and
    at most `max_dim`, with at most `max_chips` chips. Empty rules (nothing listed, no multiple) offer every
    shape: a user's catalog entry without the block stays as permissive as before."""

    listed: tuple[tuple[int, ...], ...] = ()
    multiple: int | None = None
    max_dim: int | None = None
    max_chips: int | None = None

    @property
    def any_shape(self) -> bool:
        return not self.listed and self.multiple is None

    def offers(self, shape: tuple[int, ...]) -> bool:
        if self.max_chips is not None and math.prod(shape) > self.max_chips:
            return False
        if self.any_shape:
            return True
        if tuple(sorted(shape)) in {tuple(sorted(s)) for s in self.listed}:
            return True
        return (self.multiple is not None and all(d % self.multiple == 0 for d in shape)
                and (self.max_dim is None or max(shape) <= self.max_dim))

    def describe(self, dims: int) -> str:
        """The allowed forms in one line, e.g. '2x2x1, 2x2x2, 2x2x4, 2x4x4, or AxBxC with each side a
        multiple of 4 up to 16, at most 4096 chips'."""
        if self.any_shape:
            return "any " + "x".join("ABC"[:dims]) + " shape" + (f" of at most {self.max_chips} chips"
                                                                 if self.max_chips is not None else "")
        forms = [_text(s) for s in self.listed]
        if self.multiple is not None:
            up_to = f" up to {self.max_dim}" if self.max_dim is not None else ""
            forms.append(f"{'or ' if forms else ''}{'x'.join('ABC'[:dims])} with each side a multiple of "
                         f"{self.multiple}{up_to}")
        limit = f", at most {self.max_chips} chips" if self.max_chips is not None else ""
        return ", ".join(forms) + limit

    def shapes_of(self, chips: int, dims: int) -> list[tuple[int, ...]]:
        """Every offered shape of exactly `chips` chips, sorted ascending, most even first (smallest longest
        side, then largest shortest side): the candidates a planner searches."""
        out = {tuple(sorted(s)) for s in self.listed if math.prod(s) == chips and len(s) == dims}
        if self.multiple is not None or self.any_shape:
            step = self.multiple or 1
            top = min(self.max_dim or chips, chips)
            out |= {s for s in _factorizations(chips, dims, step, top) if self.offers(s)}
        if self.max_chips is not None and chips > self.max_chips:
            out = set()
        return sorted(out, key=lambda s: (max(s), -min(s), s))


def _factorizations(chips: int, dims: int, step: int, top: int) -> list[tuple[int, ...]]:
    """Sorted ascending tuples of `dims` sides, each a multiple of `step` and at most `top`, product `chips`."""
    if dims == 1:
        return [(chips,)] if chips % step == 0 and chips <= top else []
    out = []
    for side in range(step, top + 1, step):
        if chips % side == 0 and side ** dims <= chips:
            out += [(side, *rest) for rest in _factorizations(chips // side, dims - 1, step, top) if rest[0] >= side]
    return out


def _text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def check_shape(shape: tuple[int, ...], rules: SliceShapes, device: str) -> None:
    """TorusError naming the allowed forms when `device` offers no slice of this shape."""
    if not rules.offers(shape):
        raise TorusError(f"{_text(shape)} ({math.prod(shape)} chips) is not a {device} slice; allowed: "
                         f"{rules.describe(len(shape))}")


def default_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The most even `dims`-dimensional shape of `chips` chips, sorted ascending: each prime factor, largest
    first, multiplies the shortest dimension (Cloud TPU's standard shapes: 64 -> 4x4x4, 128 -> 4x4x8,
    256 -> 16x16 in 2D)."""
    shape = [1] * dims
    n, factors, p = chips, [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    for f in sorted(factors, reverse=True):
        shape[shape.index(min(shape))] *= f
    return tuple(sorted(shape))


def wraps(shape: tuple[int, ...], wrap_multiple: int) -> tuple[bool, ...]:
    """Which dimensions have wrap-around links: those whose length is a multiple of `wrap_multiple`."""
    return tuple(d >= wrap_multiple and d % wrap_multiple == 0 for d in shape)


def _dims_of(text: str, shape: tuple[int, ...], axis: str) -> list[int]:
    dims = []
    for letter in str(text).lower():
        if letter not in DIM_NAMES[:len(shape)]:
            raise TorusError(f"mesh.{axis}: {letter!r} is not a dimension of a {'x'.join(map(str, shape))} slice; "
                             f"allowed: {', '.join(DIM_NAMES[:len(shape)])}")
        dims.append(DIM_NAMES.index(letter))
    if len(set(dims)) != len(dims):
        raise TorusError(f"mesh.{axis}: {text!r} names a dimension twice")
    return dims


def check_mesh(mapping: Mapping[str, str], dims: int) -> None:
    """A user mapping's own errors, before any strategy is known: an axis llmsim does not know, a letter that
    is no dimension of a `dims`-dimensional slice, a dimension named twice (by one axis or by two). TorusError
    'mesh.AXIS: what is wrong; allowed: ...'."""
    letters = DIM_NAMES[:dims]
    known = [*AXIS_ORDER, *AXIS_ALIASES]
    holder: dict[str, str] = {}
    for raw, text in mapping.items():
        axis = AXIS_ALIASES.get(raw, raw)
        if axis not in AXIS_ORDER:
            raise TorusError(f"mesh.{raw}: unknown mesh axis; allowed: {', '.join(known)}")
        text = str(text).lower()
        bad = [c for c in text if c not in letters]
        if bad or not text:
            raise TorusError(f"mesh.{raw}: {text!r} is not a set of this slice's dimensions; allowed: letters of "
                             f"{', '.join(letters)}, each once (e.g. {letters[-1]!r} or {letters[:2]!r})")
        for c in text:
            if c in holder:
                whom = "twice" if holder[c] == raw else f"and mesh.{holder[c]} both"
                raise TorusError(f"mesh.{raw}: {text!r} names dimension {c!r} {whom}; allowed: each dimension "
                                 f"held by one axis ({', '.join(letters)})")
            holder[c] = raw
    aliased = [AXIS_ALIASES.get(raw, raw) for raw in mapping]
    for axis in set(aliased):
        if aliased.count(axis) > 1:
            names = [raw for raw in mapping if AXIS_ALIASES.get(raw, raw) == axis]
            raise TorusError(f"mesh.{names[1]}: the same axis as mesh.{names[0]}; allowed: one entry per axis")


def map_axes(shape: tuple[int, ...], wrap: tuple[bool, ...], degrees: Mapping[str, int],
             mapping: Mapping[str, str] | None = None) -> dict[str, tuple[Ring, ...]]:
    """Lay mesh axes of the given in-slice `degrees` onto a slice of `shape` (module docstring).

    `mapping` pins axes to dimension letters ({"tp": "z"}); its axes must fill those dimensions exactly
    (an axis of degree 1 is not laid anywhere: its pin is ignored, so one mapping serves several strategies).
    The rest take the remaining dimensions innermost axis first. TorusError when the degrees do not tile
    the slice. Returns, per axis, its segments innermost first (empty for a degree of 1).
    """
    total = math.prod(degrees.values())
    if total != math.prod(shape):
        raise TorusError(f"the mesh {' x '.join(f'{a}{d}' for a, d in degrees.items())} = {total} devices does not "
                         f"fill a {'x'.join(map(str, shape))} slice of {math.prod(shape)} chips")
    out: dict[str, tuple[Ring, ...]] = {axis: () for axis in degrees}
    left = list(shape)        # chips of each dimension not yet given to an axis
    stride = [1] * len(shape)  # chips between consecutive members of the next axis on that dimension
    mapping = {raw: text for raw, text in (mapping or {}).items()
               if degrees.get(AXIS_ALIASES.get(raw, raw), 0) != 1}  # a pinned axis a strategy does not use
    for raw, text in mapping.items():
        axis = AXIS_ALIASES.get(raw, raw)
        if axis not in degrees:
            raise TorusError(f"mesh.{raw}: unknown mesh axis; allowed: {', '.join(degrees)}")
        dims = _dims_of(text, shape, raw)
        if any(left[d] != shape[d] for d in dims):
            raise TorusError(f"mesh.{raw}: {text!r} names a dimension another axis already holds")
        chips = math.prod(shape[d] for d in dims)
        if chips != degrees[axis]:
            fits = dim_sets(shape, degrees[axis])
            allowed = " or ".join(repr(f) for f in fits) if fits else "no set of its whole dimensions"
            raise TorusError(f"mesh.{raw}: dimensions {text!r} hold {chips} chips but {axis} = {degrees[axis]}; "
                             f"allowed for {axis} = {degrees[axis]} on {'x'.join(map(str, shape))}: {allowed}")
        out[axis] = tuple(Ring(d, shape[d], 1, wrap[d]) for d in dims if shape[d] > 1)
        for d in dims:
            left[d] = 1
    pinned = {AXIS_ALIASES.get(a, a) for a in mapping}
    for axis in [a for a in degrees if a not in pinned]:
        k, segments = degrees[axis], []
        for d in range(len(shape)):
            if k == 1:
                break
            if left[d] == 1:
                continue
            take = math.gcd(k, left[d])
            if take == 1:
                continue
            whole = take * stride[d] == shape[d]
            segments.append(Ring(d, take, stride[d], wrap[d] and whole))
            stride[d] *= take
            left[d] //= take
            k //= take
        if k != 1:
            raise TorusError(f"{axis} = {degrees[axis]} cannot be laid onto the {'x'.join(map(str, shape))} slice's "
                             f"dimensions left after the axes inside it; choose degrees that divide its dimensions")
        out[axis] = tuple(segments)
    return out


def dim_sets(shape: tuple[int, ...], chips: int) -> list[str]:
    """The sets of whole dimensions (letters, in x, y, z order) of a slice of `shape` holding exactly `chips`
    chips: where an axis of that degree can be pinned ('z', 'xy', ...)."""
    out = []
    for mask in range(1, 2 ** len(shape)):
        dims = [d for d in range(len(shape)) if mask >> d & 1]
        if math.prod(shape[d] for d in dims) == chips:
            out.append("".join(DIM_NAMES[d] for d in dims))
    return sorted(out, key=lambda t: (len(t), t))


def ring_segment_phase(op: Op, size: float, ring: Ring, ch: Channel) -> Phase:
    """A ring collective of `size` bytes along one segment (module docstring), on the intra (ICI) tier and
    the links of the segment's dimension (`Phase.link`: the cluster simulation's port for that dimension).
    (p-1) ring steps (2(p-1) for an all-reduce), each `stride` hops of link latency; no launch latency
    beyond the hops (XLA issues collectives inside one compiled program)."""
    steps = (2 if op == "all-reduce" else 1) * (ring.size - 1)
    nbytes = ring_bytes_per_rank(op, size, ring.size) / ring.bandwidth_factor / ch.efficiency_of(op)
    return Phase("intra", nbytes, steps * ring.stride * ch.latency, link=ring.dim)


def torus_phases(op: Op, size: float, rings: tuple[Ring, ...], slices: int, fabric: Fabric) -> Phases:
    """A collective over a group laid on `rings` inside each of `slices` slices (DCN across them)."""
    if size <= 0:
        return NO_PHASES
    down: list[Phase] = []
    shard = size
    first = "all-gather" if op == "all-gather" else "reduce-scatter"
    for ring in rings:
        if ring.size > 1:
            down.append(ring_segment_phase(first, shard, ring, fabric.intra))
            shard /= ring.size
    across = flat_phases(op, shard, slices, fabric.inter, "inter") if slices > 1 else NO_PHASES
    if op != "all-reduce":
        return (*down, *across)
    up = [ring_segment_phase("all-gather", ph_size, ring, fabric.intra)
          for ring, ph_size in zip(rings, _shards(size, rings)) if ring.size > 1]
    return (*down, *across, *reversed(up))


def _shards(size: float, rings: tuple[Ring, ...]) -> list[float]:
    out, shard = [], size
    for ring in rings:
        out.append(shard)
        shard /= max(ring.size, 1)
    return out
