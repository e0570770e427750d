"""The search space: every (hardware, precision, device count, tp, pp, dp, cp, sp, zero, micro-batch, recompute,
schedule, virtual stages, layers per stage, and ep for a mixture-of-experts model) a plan may choose, and
the rules that make a point of it a valid configuration.

The layer split is a dimension where the layers do not divide over the stages: besides the default split
(llmsim.stages.default_split) the planner tries Megatron-LM's first/last-stage counts (`split_candidates`).

Validity is the scenario's own rules (`config.check_strategy_shape`, `strategy.resolve_layout`), so a
configuration the planner proposes is one `llmsim run` accepts, plus three of the planner's own:
* a configuration spans whole nodes, or fits inside one node (the device count is what is rented);
* no duplicates: selective recompute is none under flash attention (what the planner prices),
  ZeRO needs dp > 1 (with dp = 1 every stage is ZeRO-0), the schedule is 1f1b without a
  pipeline, and inference runs ZeRO-0, no recompute, 1f1b (the cost model ignores them there), and
  micro_batch 1 without a pipeline (a server runs its whole share at once);
* at least `limits.min_devices` and at most `limits.max_devices` devices (rented: whole nodes).

`is_candidate` states these rules for one point (tests enumerate the full product with it);
`enumerate_space` walks the same space as nested loops, so that a whole subtree can be skipped when
its weights and optimizer state alone overflow the device (search.py), and yields only valid points.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from llmsim.config import Strategy, Workload, check_strategy_shape
from llmsim.divisors import divisors
from llmsim.costmodel import Plan
from llmsim.costmodel.torus import SliceShapes, TorusError, dim_sets, map_axes, wraps
from llmsim.planner.config import PlanFile
from llmsim.stages import compact_split, default_split, split_keys
from llmsim.strategy import Layout, resolve_layout

DEFAULT_CP = (1, 2, 4, 8)
DEFAULT_VIRTUAL_STAGES = (2, 3, 4)
ALL_RECOMPUTE = ("none", "selective", "selective-op", "selective-dots", "full")
ALL_SCHEDULES = ("gpipe", "1f1b", "interleaved")


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration: a strategy placed on `n_devices` devices of `hardware`."""

    hardware: str
    n_devices: int
    dp: int
    tp: int
    pp: int
    cp: int
    sp: bool
    zero: int
    micro_batch: int
    microbatches: int
    recompute: str
    schedule: str
    virtual_stages: int
    stage_layers: tuple[int, ...] = ()  # the layers of each stage; () = the default split of the schedule
    ep: int = 1                         # expert parallel (MoE workloads); expert tensor parallel = tp
    precision: str = ""                 # planner.precisions label: "" = the plan's workload as written
    topology: tuple[int, ...] = ()      # TPU: one slice's shape (costmodel.torus); () = not a torus
    slices: int = 1                     # TPU: slices joined by the data-center network
    mesh: tuple[tuple[str, str], ...] = ()  # TPU: mesh axes pinned to torus dimensions ((("tp", "z"),))

    @property
    def v(self) -> int:
        return self.virtual_stages if self.schedule == "interleaved" else 1

    def split_keys(self) -> dict[str, object]:
        """The strategy keys that state the split (none for the default)."""
        return split_keys(self.stage_layers, sum(self.stage_layers), self.v) if self.stage_layers else {}

    @property
    def name(self) -> str:
        """A scenario strategy name ([a-z0-9-]) that says what the configuration is."""
        before, after = self.name_around_micro_batch()
        return f"{before}{self.micro_batch}{after}"

    def name_around_micro_batch(self) -> tuple[str, str]:
        """`name` = before + str(micro_batch) + after: the two parts, which the members of a chain (space.chains:
        they differ only in the micro-batch and its count) share, so the planner builds them once per chain
        (columns.ChainedConfigs.names) for the name of every row of plan.parquet."""
        # one f-string for the fields every name has
        parts = [f"dp{self.dp}-tp{self.tp}{'-sp' if self.sp else ''}-pp{self.pp}"
                 f"{f'-cp{self.cp}' if self.cp > 1 else ''}{f'-ep{self.ep}' if self.ep > 1 else ''}"
                 f"-z{self.zero}-mb", self.recompute]
        if self.pp > 1:
            parts.append(self.schedule + (f"{self.virtual_stages}" if self.schedule == "interleaved" else ""))
        if self.stage_layers:
            parts += _split_name(self.stage_layers, self.v)
        if self.precision:  # a searched precision (planner.precisions): one strategy on one device, two names
            parts.append(self.precision)
        if self.topology:
            parts.append("t" + "x".join(map(str, self.topology)) + (f"-s{self.slices}" if self.slices > 1 else ""))
            parts += [f"{axis}-on-{dims}" for axis, dims in self.mesh]
        return parts[0], "-" + "-".join(parts[1:])

    def describe_slices(self) -> str:
        """'2 slices of 4x4x4, tp on z' for a TPU configuration, else ''."""
        if not self.topology:
            return ""
        shape = "x".join(map(str, self.topology))
        where = f"{self.slices} slices of {shape}" if self.slices > 1 else f"slice {shape}"
        pins = ", ".join(f"{axis} on {dims}" for axis, dims in self.mesh) or "default mapping"
        return f"{where}, {pins}"

    def strategy(self, name: str | None = None) -> Strategy:
        return Strategy(name=name or self.name, dp=self.dp, tp=self.tp, pp=self.pp, cp=self.cp, sp=self.sp,
                        zero=self.zero, micro_batch=self.micro_batch, schedule=self.schedule,
                        virtual_stages=self.virtual_stages, recompute=self.recompute,
                        **({"ep": self.ep} if self.ep > 1 else {}), **self.split_keys())  # type: ignore[arg-type]

    def plan(self) -> Plan:
        return Plan(dp=self.dp, tp=self.tp, pp=self.pp, cp=self.cp, micro_batch=self.micro_batch,
                    microbatches=self.microbatches, virtual_stages=self.virtual_stages, sp=self.sp, zero=self.zero,
                    schedule=self.schedule, recompute=self.recompute,  # type: ignore[arg-type]
                    stage_layers=self.stage_layers or None, ep=self.ep, etp=self.tp,
                    dcn_replicas=self.dcn_replicas)

    @property
    def dcn_replicas(self) -> int:
        """Several TPU slices with ZeRO: shards inside a slice, the slices replicas (cluster.plan_on)."""
        return self.slices if self.slices > 1 and self.zero >= 1 and self.dp > 1 else 1

    def describe_split(self) -> str:
        """'layers per stage 6, 8 x 15' when the split is not the default one, else ''."""
        return f"layers per stage {compact_split(self.stage_layers)}" if self.split_keys() else ""


class _ConfigSlots:
    """Config's slots, in its order, without its frozen __setattr__: make_config fills one, then makes it a Config."""

    __slots__ = Config.__slots__


assert Config.__slots__ == tuple(f.name for f in dataclasses.fields(Config)), "make_config sets every field of Config"


def make_config(hardware: str, n_devices: int, dp: int, tp: int, pp: int, cp: int, sp: bool, zero: int,
                micro_batch: int, microbatches: int, recompute: str, schedule: str, virtual_stages: int,
                stage_layers: tuple[int, ...] = (), ep: int = 1, precision: str = "", topology: tuple[int, ...] = (),
                slices: int = 1, mesh: tuple[tuple[str, str], ...] = ()) -> Config:
    """Config(...) with the same arguments, made about six times faster (chains makes one per candidate, ~700,000
    for the 70B plan): the frozen dataclass's __init__ sets each field through object.__setattr__ by name, and
    even each slot's descriptor called directly is 3.5x slower than plain attribute stores, which the
    interpreter specialises. So the fields are stored into a _ConfigSlots, a class of exactly Config's slots,
    and its class then set to Config (Python allows it between classes of the same slots and base: the object's
    memory layout is the same), which from then on is frozen. Equal to, and hashing as, Config(...)."""
    c = object.__new__(_ConfigSlots)
    c.hardware = hardware
    c.n_devices = n_devices
    c.dp = dp
    c.tp = tp
    c.pp = pp
    c.cp = cp
    c.sp = sp
    c.zero = zero
    c.micro_batch = micro_batch
    c.microbatches = microbatches
    c.recompute = recompute
    c.schedule = schedule
    c.virtual_stages = virtual_stages
    c.stage_layers = stage_layers
    c.ep = ep
    c.precision = precision
    c.topology = topology
    c.slices = slices
    c.mesh = mesh
    c.__class__ = Config  # type: ignore[assignment]
    return c  # type: ignore[return-value]


@functools.lru_cache(maxsize=4096)
def _split_name(stage_layers: tuple[int, ...], v: int) -> tuple[str, ...]:
    """The parts of Config.name that state a split (`split_keys`: 'layers7-8-8', or 'first6' / 'last8'). Cached:
    few distinct splits, and split_keys tries Megatron-LM's first/last counts each time."""
    keys = split_keys(stage_layers, sum(stage_layers), v)
    parts = ["layers" + "-".join(str(n) for n in stage_layers)] if "stage_layers" in keys else []
    return (*parts, *(f"{k.split('_')[0]}{keys[k]}" for k in ("first_stage_layers", "last_stage_layers") if k in keys))


@dataclass(frozen=True)
class _LayoutQuery:
    """The few Strategy fields resolve_layout reads, without building a pydantic model per point."""

    dp: int
    tp: int
    pp: int
    cp: int
    micro_batch: int
    schedule: str
    virtual_stages: int = 1
    stage_layers: tuple[int, ...] | None = None
    first_stage_layers: None = None
    last_stage_layers: None = None
    embedding_as_layer: bool = False
    loss_as_layer: bool = False
    ep: int = 1
    etp: int | None = None

    @property
    def model_parallel(self) -> int:
        return self.tp * self.pp * self.cp

    @property
    def expert_tp(self) -> int:
        return self.etp if self.etp is not None else self.tp


def default_pp(layers: int) -> list[int]:
    """The pipeline depths searched by default: the divisors of the layers and the powers of two up to the
    layers (the stage counts clusters of 2^k nodes are built with; those that do not divide the layers are
    split unevenly, `split_candidates`)."""
    powers = [2**k for k in range(layers.bit_length()) if 2**k <= layers]
    return sorted(set(divisors(layers)) | set(powers))


def split_candidates(layers: int, pp: int) -> list[tuple[int, ...]]:
    """The uneven splits the planner tries besides the default one where `layers` % `pp` != 0: Megatron-LM's
    first/last-stage counts (--decoder-first/last-pipeline-num-layers) around middle stages of
    ceil(layers / pp) layers each (the fewest the busiest middle stage can hold), the deficit taken off the
    first and the last stage in every proportion, each keeping at least one layer. 126 layers on 16
    stages: 6 | 8 x 14 | 8 and 8 | 8 x 14 | 6 (7 | 8 x 14 | 7 is the default)."""
    if pp < 2 or layers % pp == 0:
        return []
    mid = -(-layers // pp)
    deficit = pp * mid - layers
    out = []
    for off_first in range(deficit + 1):
        first, last = mid - off_first, mid - (deficit - off_first)
        counts = (first,) + (mid,) * (pp - 2) + (last,)
        if first >= 1 and last >= 1 and counts != default_split(layers, pp):
            out.append(counts)
    return out


@dataclass(frozen=True)
class Axes:
    """The values each degree takes for one plan (the plan's `search` or the defaults)."""

    tp: tuple[int, ...]
    pp: tuple[int, ...]
    cp: tuple[int, ...]
    dp: tuple[int, ...]
    zero: tuple[int, ...]
    micro_batch: tuple[int, ...] | None  # None = every divisor of the per-replica batch
    recompute: tuple[str, ...]
    schedule: tuple[str, ...]
    virtual_stages: tuple[int, ...]
    sp: tuple[bool, ...]
    ep: tuple[int, ...] = (1,)


def default_ep(w: Workload) -> list[int]:
    """The expert-parallel sizes searched by default for a mixture-of-experts workload: the divisors of the
    routed experts (llmsim's rule: ep divides them); (1,) for a dense model."""
    moe = w.model.moe
    return divisors(moe.experts) if moe is not None else [1]


def axes_of(plan: PlanFile, devices_per_node: int) -> Axes:
    """The plan's search axes, defaults filled in (see SearchSpace for what the defaults are)."""
    w, s = plan.workload, plan.search
    train = w.mode == "train"
    tp_default = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= max(devices_per_node, 1)]
    pick = lambda given, default: tuple(sorted(set(given if given is not None else default)))  # noqa: E731
    return Axes(
        tp=pick(s.tp, tp_default),
        pp=pick(s.pp, default_pp(w.model.layers)),
        cp=pick(s.cp, [1] if w.mode == "decode" else DEFAULT_CP),
        dp=pick(s.dp, divisors(w.batch)),
        zero=pick(s.zero, [0, 1, 2, 3] if train else [0]),
        micro_batch=pick(s.micro_batch, []) if s.micro_batch is not None else None,
        recompute=tuple(r for r in ALL_RECOMPUTE if r in searched_recompute(s.recompute, train)),
        schedule=tuple(x for x in ALL_SCHEDULES if x in (s.schedule or (ALL_SCHEDULES if train else ["1f1b"]))),
        virtual_stages=pick(s.virtual_stages, DEFAULT_VIRTUAL_STAGES),
        sp=pick(s.sp, [False, True]),
        ep=pick(s.ep, default_ep(w)) if w.model.moe is not None else (1,),
    )


def searched_recompute(given: list[str] | None, train: bool) -> tuple[str, ...]:
    """The recompute modes searched for search.recompute `given` (None: the default): selective stands for none, the
    configuration it prices as (duplicate_problem: under the flash-attention kernel the planner prices it keeps and
    recomputes what none does), so `[selective]` searches none rather than nothing (trial 46)."""
    if given is None:
        return ("none", "selective-op", "full") if train else ("none",)
    return tuple(dict.fromkeys("none" if r == "selective" else r for r in given))


@functools.lru_cache(maxsize=65536)
def shape_problem(w: Workload, tp: int, pp: int, cp: int, sp: bool, schedule: str, v: int,
                  stage_layers: tuple[int, ...] = ()) -> str | None:
    """llmsim.strategy.check_strategy_shape for these degrees, as a message (None = valid). Cached."""
    try:
        s = Strategy(tp=tp, pp=pp, cp=cp, sp=sp, schedule=schedule, virtual_stages=v,  # type: ignore[arg-type]
                     stage_layers=stage_layers or None)
    except ValueError as exc:  # a degree the Strategy model itself rejects
        return str(exc).splitlines()[0]
    problem = check_strategy_shape(s, w)
    return None if problem is None else f"{problem[0]}: {problem[1]}"


@functools.lru_cache(maxsize=65536)
def layout_problem(w: Workload, dp: int, tp: int, pp: int, cp: int, mb: int, schedule: str, v: int = 1,
                   stage_layers: tuple[int, ...] = (), ep: int = 1) -> Layout | str:
    """llmsim.strategy.resolve_layout for these degrees (the split already checked by shape_problem): the
    Layout, or why not. Cached (the groups of ZeRO stages ask the same)."""
    query = _LayoutQuery(dp, tp, pp, cp, mb, schedule, v, stage_layers or None, ep=ep)
    out = resolve_layout(query, w, None, "plan")  # type: ignore[arg-type]
    return out if isinstance(out, Layout) else f"{out[0]}: {out[1]}"


def node_problem(n: int, devices_per_node: int, max_devices: int, min_devices: int = 1) -> str | None:
    """Whole nodes (or part of one), and within the device limits."""
    if n > max_devices:
        return f"devices: {n} > max_devices={max_devices}"
    if n < min_devices:
        return f"devices: {n} < min_devices={min_devices}"
    if n > devices_per_node and n % devices_per_node:
        return f"devices: {n} is not a whole number of {devices_per_node}-device nodes"
    return None


def duplicate_problem(w: Workload, c: Config) -> str | None:
    """Points that the cost model prices identically to a canonical one are left out as duplicates."""
    if c.zero > 0 and c.dp == 1:
        return "duplicate: ZeRO with dp=1 is ZeRO-0"
    if c.pp == 1 and c.schedule != "1f1b":
        return "duplicate: without a pipeline the schedule is 1f1b"
    if c.schedule == "interleaved" and c.virtual_stages == 1:
        return "duplicate: interleaved with one model chunk per device is 1f1b (the planner tries 2 or more)"
    if c.recompute == "selective":
        return ("duplicate: with the flash-attention kernel the planner prices, selective recompute keeps and "
                "recomputes what none does (only the s x s scores, which flash never stores)")
    if w.mode != "train" and (c.zero, c.recompute, c.schedule) != (0, "none", "1f1b"):
        return "duplicate: inference runs ZeRO-0, no recompute, 1f1b"
    if w.mode != "train" and c.pp == 1 and c.micro_batch != 1:
        return "duplicate: inference without a pipeline runs its whole share at once (micro_batch 1)"
    if c.stage_layers and not c.split_keys():
        return "duplicate: the split is this schedule's default one (stated without keys)"
    return None


def is_candidate(plan: PlanFile, devices_per_node: int, c: Config) -> str | None:
    """None when `c` is a configuration of the plan's space, else why not (the rules, for one point)."""
    w = plan.workload
    return (node_problem(c.n_devices, devices_per_node, plan.limits.max_devices, plan.limits.min_devices)
            or shape_problem(w, c.tp, c.pp, c.cp, c.sp, c.schedule, c.virtual_stages, c.stage_layers)
            or _ep_problem(w, c.ep, c.tp, c.cp, c.dp)
            or _split_problem(w, c)
            or _layout_mismatch(w, c)
            or duplicate_problem(w, c))


def _ep_problem(w: Workload, ep: int, tp: int, cp: int, dp: int) -> str | None:
    """Expert parallelism needs a MoE model whose experts ep divides, and ep*etp (etp = tp) dividing the
    tp*cp*dp ranks of a stage (config.check_expert_parallel, strategy.resolve_layout)."""
    moe = w.model.moe
    if ep == 1:
        return None
    if moe is None:
        return f"ep: {ep} needs a mixture-of-experts model"
    if moe.experts % ep:
        return f"ep: {ep} does not divide experts={moe.experts}"
    if (tp * cp * dp) % (ep * tp):
        return f"ep: ep*etp = {ep}*{tp} does not divide tp*cp*dp = {tp * cp * dp}"
    return None


def _split_problem(w: Workload, c: Config) -> str | None:
    """A stated split must be one the planner searches (split_candidates)."""
    if c.stage_layers and c.stage_layers not in split_candidates(w.model.layers, c.pp):
        return f"stage_layers: {c.stage_layers} is not one of the splits searched for pp={c.pp}"
    return None


def _layout_mismatch(w: Workload, c: Config) -> str | None:
    out = layout_problem(w, c.dp, c.tp, c.pp, c.cp, c.micro_batch, c.schedule, c.virtual_stages, c.stage_layers,
                         c.ep)
    if isinstance(out, str):
        return out
    if out.microbatches != c.microbatches or out.world != c.n_devices:
        return "layout: microbatches or n_devices do not follow from the degrees"
    return None


def schedules(axes: Axes, pp: int) -> list[tuple[str, int]]:
    """(schedule, virtual stages) pairs to try for a pipeline of pp stages. Without a pipeline (pp 1) the schedule
    is a no-op, labelled 1f1b, whatever search.schedule narrows to (trial 44: `schedule: [gpipe]` dropped every pp-1
    configuration, a feasible winner among them; search.pp leaves pp 1 out)."""
    if pp == 1:
        return [("1f1b", 1)]
    out = [(s, 1) for s in axes.schedule if s != "interleaved"]
    if "interleaved" in axes.schedule:
        out += [("interleaved", v) for v in axes.virtual_stages]
    return out


def micro_batches(axes: Axes, per_replica: int) -> list[int]:
    if axes.micro_batch is None:
        return divisors(per_replica)
    return [m for m in axes.micro_batch if per_replica % m == 0]


@dataclass(frozen=True)
class Group:
    """Points sharing (tp, pp, cp, dp, zero) and the layer split: their weights and optimizer state are the
    same (with the default split, `stage_layers` (), up to the schedule's: search.static_lower_bound)."""

    hardware: str
    n_devices: int
    tp: int
    pp: int
    cp: int
    dp: int
    zero: int
    stage_layers: tuple[int, ...] = ()
    ep: int = 1
    precision: str = ""


def groups(plan: PlanFile, hardware: str, devices_per_node: int, axes: Axes,
           precision: str = "") -> Iterator[Group]:
    """The (tp, pp, cp, dp, zero, split) groups within the device limit, whole nodes, ZeRO only with dp > 1,
    of one precision (`plan` is then the plan with that precision's workload: planner.precisions)."""
    limit = plan.limits.max_devices
    layers = plan.workload.model.layers
    for tp in axes.tp:
        for cp in axes.cp:
            for pp in axes.pp:
                mp = tp * pp * cp
                if mp > limit:
                    continue
                splits: list[tuple[int, ...]] = [(), *split_candidates(layers, pp)]
                for dp in axes.dp:
                    n = dp * mp
                    if node_problem(n, devices_per_node, limit, plan.limits.min_devices):
                        continue
                    for zero in axes.zero:
                        if zero > 0 and dp == 1:
                            continue
                        for ep in axes.ep:
                            if _ep_problem(plan.workload, ep, tp, cp, dp):
                                continue
                            for split in splits:
                                yield Group(hardware, n, tp, pp, cp, dp, zero, split, ep, precision)


def chains(plan: PlanFile, g: Group, axes: Axes,
           shapes: dict[tuple, list[tuple[bool, str, int, list[tuple[int, int]]]]] | None = None
           ) -> Iterator[list[Config]]:
    """The valid configurations of one group, in chains that differ only in micro_batch, ascending.

    Within a chain memory never shrinks as the micro-batch grows (activations per micro-batch are
    linear in it; micro-batches in flight times their size is B/dp for GPipe and min(m, p) x micro_batch
    for 1F1B and interleaved), so search.py may stop a chain at its first configuration that overflows.

    `shapes` (one dict per plan and axes) keeps the valid (sp, schedule, v, [(micro_batch, micro-batch
    count)]) of each group shape, which the groups of every ZeRO stage and hardware ask alike (`_shapes`).
    """
    w = plan.workload
    train = w.mode == "train"
    hardware, n, dp, tp, pp, cp, zero, split, ep, label = (g.hardware, g.n_devices, g.dp, g.tp, g.pp, g.cp, g.zero,
                                                          g.stage_layers, g.ep, g.precision)
    for first, layouts in chain_heads(plan, g, axes, shapes):
        sp, recompute, schedule, v = first.sp, first.recompute, first.schedule, first.virtual_stages
        chain = [first] + [make_config(hardware, n, dp, tp, pp, cp, sp, zero, mb, m, recompute, schedule, v, split,
                                       ep, label) for mb, m in layouts[1:]]
        if not train:
            chain = [c for c in chain if duplicate_problem(w, c) is None]
        if chain:
            yield chain


def member_count(plan: PlanFile, g: Group, axes: Axes,
                 shapes: dict[tuple, list[tuple[bool, str, int, list[tuple[int, int]]]]] | None = None) -> int:
    """How many configurations `chains` gives (`members`), for a training plan without making any but each
    chain's first (its members are all kept or all duplicates): search counts the members of the groups it
    prunes, ~100,000 of the 70B plan's."""
    if plan.workload.mode != "train":
        return sum(map(len, chains(plan, g, axes, shapes)))
    return sum(len(layouts) for _, layouts in chain_heads(plan, g, axes, shapes))


def chain_heads(plan: PlanFile, g: Group, axes: Axes,
                  shapes: dict[tuple, list[tuple[bool, str, int, list[tuple[int, int]]]]] | None
                  ) -> Iterator[tuple[Config, list[tuple[int, int]]]]:
    """Each chain of `chains` as its first configuration and the (micro_batch, micro-batch count) of all its
    members, in order (a list kept per group shape: do not change it). Training: a chain whose first is a
    duplicate is left out (duplicate_problem does not read the micro-batch there, so one verdict per chain),
    the chains exactly as `chains` gives them, without a Config per member (search prices them as
    columns.ChainedConfigs); inference: every chain with a member (`chains` checks each)."""
    w = plan.workload
    if w.batch % g.dp:
        return
    train = w.mode == "train"
    hardware, n, dp, tp, pp, cp, zero, split, ep, label = (g.hardware, g.n_devices, g.dp, g.tp, g.pp, g.cp, g.zero,
                                                          g.stage_layers, g.ep, g.precision)
    for sp, schedule, v, layouts in _shapes(plan, g, axes, shapes):
        for recompute in axes.recompute:
            if not layouts:
                continue
            mb, m = layouts[0]
            first = make_config(hardware, n, dp, tp, pp, cp, sp, zero, mb, m, recompute, schedule, v, split, ep, label)
            if train and duplicate_problem(w, first) is not None:
                continue
            yield first, layouts


def warm_shapes(plan: PlanFile, g: Group, axes: Axes,
                cache: dict[tuple, list[tuple[bool, str, int, list[tuple[int, int]]]]]) -> None:
    """Put in `cache` the shapes `chain_heads` (and so `chains` and `member_count`) will read for group `g`
    (`_shapes`; none for a dp that does not divide the batch, which chain_heads never asks): work that needs no
    workload profile, done while one is traced (search.prepare_search)."""
    if plan.workload.batch % g.dp == 0:
        _shapes(plan, g, axes, cache)


def _shapes(plan: PlanFile, g: Group, axes: Axes,
            cache: dict[tuple, list[tuple[bool, str, int, list[tuple[int, int]]]]] | None
            ) -> list[tuple[bool, str, int, list[tuple[int, int]]]]:
    """The (sp, schedule, v, [(micro_batch, micro-batch count), ...]) a group's members run: the shapes the
    scenario's rules accept (`shape_problem`, `layout_problem`). They depend on dp, tp, pp, cp, the split and
    ep only (not the hardware, the device count or ZeRO); they are kept under those and the precision in
    `cache`."""
    key = (g.dp, g.tp, g.pp, g.cp, g.stage_layers, g.ep, g.precision)
    if cache is not None and key in cache:
        return cache[key]
    w = plan.workload
    mbs = micro_batches(axes, w.batch // g.dp)
    out = []
    for sp in axes.sp:
        if sp and g.tp == 1:
            continue
        for schedule, v in schedules(axes, g.pp):
            if shape_problem(w, g.tp, g.pp, g.cp, sp, schedule, v, g.stage_layers):
                continue
            layouts = [(mb, layout_problem(w, g.dp, g.tp, g.pp, g.cp, mb, schedule, v, g.stage_layers, g.ep))
                       for mb in mbs]
            out.append((sp, schedule, v, [(mb, lay.microbatches) for mb, lay in layouts
                                          if not isinstance(lay, str)]))
    if cache is not None:
        cache[key] = out
    return out


@functools.lru_cache(maxsize=4096)
def slice_layouts(shapes: SliceShapes, dims: int, wrap_multiple: int, dp: int, tp: int, pp: int, cp: int,
                  dcn: bool) -> tuple[tuple[tuple[int, ...], int, tuple[tuple[str, str], ...]], ...]:
    """The TPU placements of n = dp*tp*pp*cp chips the planner tries: (slice shape, slices, mesh pins).

    Slices: every s dividing dp (data parallelism spans the slices: cluster.torus_groups) whose n / s chips
    form an offered slice shape (`shapes`, most even first), more than one only over a data-center network
    (`dcn`). Mappings: the default one (innermost axis first, costmodel.torus.map_axes) and each tp, cp or pp
    pinned to every set of dimensions holding exactly its degree; a mapping that lays the axes onto the same
    rings as an earlier one of the same shape, up to swapping two dimensions of equal length and wrap-around,
    is priced the same and left out. Cached: every ZeRO stage and layer split of a group asks the same."""
    out = []
    n = dp * tp * pp * cp
    for slices in [s for s in range(1, dp + 1) if dp % s == 0 and (s == 1 or dcn)]:
        inside = {"tp": tp, "cp": cp, "pp": pp, "dp": dp // slices}
        for shape in shapes.shapes_of(n // slices, dims):
            wrap = wraps(shape, wrap_multiple)
            seen: set = set()
            pins: list[dict[str, str]] = [{}]
            for axis in ("tp", "cp", "pp"):
                if inside[axis] > 1:
                    pins += [{axis: letters} for letters in dim_sets(shape, inside[axis])]
            for pin in pins:
                try:
                    rings = map_axes(shape, wrap, inside, pin)
                except TorusError:
                    continue
                # the same rings up to swapping dimensions of one length and wrap-around: one candidate
                key = tuple(sorted((shape[d], wrap[d], tuple(sorted((axis, r.size, r.stride, r.wrap)
                                                                     for axis, segs in rings.items() for r in segs
                                                                     if r.dim == d)))
                                   for d in range(len(shape))))
                if key not in seen:
                    seen.add(key)
                    out.append((shape, slices, tuple(sorted(pin.items()))))
    return tuple(out)


def members(plan: PlanFile, g: Group, axes: Axes) -> Iterator[Config]:
    """The valid configurations of one group."""
    for chain in chains(plan, g, axes):
        yield from chain


def shown_values(values: list[int], most: int = 16) -> str:
    """`values` for a message: all of them, or the first ones, "...", and the last, so that a cut list says how far
    it goes ("1, 2, 4, ..., 1024 (24 values)")."""
    if len(values) <= most:
        return ", ".join(map(str, values))
    return f"{', '.join(map(str, values[:most - 1]))}, ..., {values[-1]} ({len(values)} values)"


def _axis_problem(w: Workload, axis: str, value: int) -> str | None:
    """Why `value` of search axis `axis` cannot appear in any configuration of this model, whatever the other
    degrees (None = it can): the shape rules with every other degree 1, batch divisibility, the experts."""
    if axis in ("tp", "pp", "cp"):
        degrees = {"tp": 1, "pp": 1, "cp": 1, axis: value}
        return shape_problem(w, degrees["tp"], degrees["pp"], degrees["cp"], False, "1f1b", 1)
    if axis in ("dp", "micro_batch") and w.batch % value:
        return f"{axis}: {value} does not divide the batch {w.batch}"
    if axis == "ep":
        return _ep_problem(w, value, 1, 1, value)
    return None


def search_axis_problem(plan: PlanFile) -> tuple[str, str] | None:
    """(key, message) when a search axis the plan states has no value this model can use, e.g. search.tp = [3]
    for 64 heads; the message names the allowed values up to the largest stated one (at least 64). None when
    every stated axis keeps a usable value: values the model cannot use are left out like any other
    invalid configuration."""
    w, s = plan.workload, plan.search
    for axis in ("tp", "pp", "cp", "dp", "micro_batch", "ep"):
        given = getattr(s, axis)
        if not given:
            continue
        problems = [_axis_problem(w, axis, v) for v in given]
        if all(problems):
            first = problems[0].removeprefix(f"{axis}: ")  # the key names the axis already: "search.tp: 5 does ..."
            # the strategy rules' own list of divisors is cut short past llmsim.divisors.ALLOWED_SHOWN values:
            # the planner lists its own, every value up to what the axis divides (trial 48)
            cut = re.search(r" \(allowed: [\d, .]+\)$", first)
            if cut:
                first = first[:cut.start()]
            if "allowed" in first:   # a rule, not a list ("allowed pp: 1 to 80")
                return f"search.{axis}", first
            return f"search.{axis}", f"{first}; allowed values: {shown_values(_allowed(w, axis, given)) or 'none'}"
    return None


def _allowed(w: Workload, axis: str, given: list[int]) -> list[int]:
    """Every value of search axis `axis` this model can use: dp and micro_batch up to the batch (trial 46: dp [3]
    on 1,024 was shown 1 to 64 alone), cp up to seq_len (which it divides), tp up to the heads, the others up to
    the largest stated value (at least 64)."""
    upto = {"dp": w.batch, "micro_batch": w.batch, "cp": w.model.seq_len,
            "tp": max(w.model.heads, *given)}.get(axis, max(64, *given))
    if axis in ("dp", "micro_batch", "cp"):   # each divides what it is bounded by: its divisors alone are tried
        tried = divisors(upto)
    else:
        tried = list(range(1, upto + 1))
    return [v for v in tried if _axis_problem(w, axis, v) is None]


def axis_left_out(plan: PlanFile) -> dict[str, dict[int, str]]:
    """The values of search axes the model cannot use beside values it can (search_axis_problem refuses an axis
    with none), axis -> {value: why}: they are left out like any invalid configuration (trial 46: tp [3, 4]
    searched 4 alone without a word). narrowing.left_out adds the pipelines' and says them in one note."""
    w, s = plan.workload, plan.search
    out: dict[str, dict[int, str]] = {}
    for axis in ("tp", "pp", "cp", "dp", "micro_batch", "ep"):
        given = getattr(s, axis) or []
        problems = {v: _axis_problem(w, axis, v) for v in given}
        dropped = {v: p.removeprefix(f"{axis}: ").split(" (allowed", 1)[0] for v, p in problems.items() if p}
        if dropped and len(dropped) < len(given):
            out[axis] = dropped
    return out
