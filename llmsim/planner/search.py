"""Screen, price and rank every configuration of a plan; re-check the best with the cluster simulation.

For each hardware choice the workload is profiled once (planner.profiling: traced short where that is exact,
workload.profile.profile_at_depth), then the space is walked
group by group (space.py). Pruning is safe by construction, never by heuristics:
* a group (tp, pp, cp, dp, zero) whose weights, gradients and optimizer state alone — computed by
  the cost model's own `memory_breakdown` per pipeline stage, activations left out — exceed the device
  cannot hold any of its members, since activations are never negative: the whole group is skipped;
* every other configuration gets its exact memory from `memory_breakdown`; one that overflows is a row
  (feasible false, reason memory) and is not timed; configurations that differ from it only by a larger
  micro-batch overflow too (memory never shrinks with the micro-batch: space.chains) and are counted;
* every configuration that fits is priced by `estimate` — none is dropped for being slow, so the
  closest misses are there to explain when nothing meets the goal.
The ranking puts the feasible configurations first, by the objective (ties: time, cost, devices), then
the ones that run but miss the goal or a limit, by how far (the largest ratio of need to limit), then
the ones that do not fit in memory, by how far.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar, overload
from dataclasses import dataclass, field, replace

import numpy as np

from llmsim.config import SharingChoice, Workload
from llmsim.costmodel import ClusterSpec, CostModelError, Options, Plan, estimate, memory_breakdown
from llmsim.costmodel.memory import memory_stages, stage_memory, stage_memory_terms
from llmsim.costmodel.power import busy_power_w
from llmsim.executor import Executor, LocalExecutor, Progress
from llmsim.hardware import Catalog, DeviceSpec
from llmsim.planner.config import PlanFile, price_of
from llmsim.planner.columns import CONFIG_FIELDS, ChainedConfigs, ConfigColumns, config_columns
from llmsim.planner.precisions import candidates, workload_for
from llmsim.planner.table import HOUR_S, MEMORY_PARTS, PRICED, PricedTable, goal_metrics, price_table  # noqa: F401
from llmsim.planner.space import (Axes, Config, Group, axes_of, chain_heads, chains, groups, member_count, schedules,
                                  slice_layouts, warm_shapes)
from llmsim.costmodel.cluster import tp_span_note
from llmsim.costmodel.torus import wraps
from llmsim.report.units import fmt_bytes, fmt_watts
from llmsim.sim import simulate_case
from llmsim.stages import SplitError, default_split
from llmsim.planner.profiling import PlanProfile, sharing_choice, workload_profile  # noqa: F401 (re-exported)
from llmsim.workload.profile import WorkloadProfile
from llmsim.wording import count

UNPLACED = (((), 1, ()),)  # Hardware.placements off a torus: no slice shape, one slice, no mesh pins


@dataclass(frozen=True)
class Hardware:
    """One hardware choice, resolved against the catalog: its node (Catalog.cluster) and its price."""

    name: str
    node: ClusterSpec                  # one node of the choice: device, links, devices per node
    usd_per_device_hour: float
    example_price: bool
    memory_headroom: float = 0.0       # resolve_hardware passes the plan's limits.memory_headroom
    catalog_files: tuple[str, ...] = ()  # the user hardware files of its device and links (best.yaml names them)

    @property
    def device(self) -> DeviceSpec:
        return self.node.device  # type: ignore[return-value]

    def catalog_key(self) -> dict[str, list[str]]:
        """A scenario's `hardware_catalog` for this choice (best.yaml): the absolute paths of the plan's --hardware
        files that define its device and links; none ({}) for built-in entries (trial 34: a best.yaml of a device
        from --hardware named it but not its file, and `llmsim run best.yaml` said 'unknown device')."""
        return {"hardware_catalog": list(self.catalog_files)} if self.catalog_files else {}

    @property
    def devices_per_node(self) -> int:
        return self.node.devices_per_node

    def cluster(self, n: int) -> ClusterSpec:
        """n devices as whole nodes (or part of one node)."""
        return self.node.with_devices(n)

    def cluster_of(self, c: Config) -> ClusterSpec:
        """The cluster configuration `c` runs on: its n devices as nodes, or on a TPU its slices of
        `c.topology` joined by the data-center network, axes pinned by `c.mesh`."""
        if not c.topology:
            return self.cluster(c.n_devices)
        torus = self.device.torus
        assert torus is not None, "only a torus device's configurations carry a topology"
        return replace(self.node, nodes=c.slices, devices_per_node=math.prod(c.topology), topology=c.topology,
                       wrap=wraps(c.topology, torus.wrap_multiple), mesh=c.mesh)

    @property
    def dcn(self) -> bool:
        """Whether slices of this TPU choice can be joined (a data-center link other than the ICI)."""
        return self.node.is_torus and self.node.inter.name != self.node.intra.name

    def placements(self, g: Group) -> tuple[tuple[tuple[int, ...], int, tuple[tuple[str, str], ...]], ...]:
        """A TPU group's slice shapes, slice counts and mappings (space.slice_layouts); [((), 1, ())] off a torus."""
        torus = self.device.torus
        if not self.node.is_torus or torus is None:
            return UNPLACED
        return slice_layouts(torus.slice_shapes, torus.dims, torus.wrap_multiple, g.dp, g.tp, g.pp, g.cp, self.dcn)

    @property
    def capacity(self) -> float:
        """Usable bytes per device: the catalog's capacity less the plan's headroom (0 = unknown: unlimited)."""
        return self.device.memory_bytes * (1 - self.memory_headroom)


def resolve_hardware(plan: PlanFile, catalog: Catalog) -> list[Hardware]:
    """Each hardware choice's node through Catalog.cluster, the one route every caller takes."""
    out = []
    for h in plan.hardware:
        price, example = price_of(h)
        node = catalog.cluster(h.name, 1, h.devices_per_node, h.intra_node, h.inter_node)
        files = tuple(catalog.files_for(h.name, node.intra.name, node.inter.name))
        out.append(Hardware(h.name, node, price, example, plan.limits.memory_headroom, files))
    return out


def weight_only_notes(plan: PlanFile, hardware: list[Hardware]) -> list[str]:
    """Per hardware choice without FP4 tensor cores for a float4 precision it is planned with: that it is priced
    weight-only (precision.weight_only_note, the words `llmsim run` says it in; trial 34: a plan said nothing)."""
    from llmsim.costmodel import precision
    from llmsim.planner.precisions import candidates

    notes = []
    for hw in hardware:
        for candidate in candidates(plan, hw.device)[0]:
            note = precision.weight_only_note(candidate.workload, hw.device)
            if note is not None:
                notes.append(f"hardware {hw.name}: {note}")
    return list(dict.fromkeys(notes))


def tp_span_notes(plan: PlanFile, hardware: list[Hardware]) -> list[str]:
    """Per hardware choice whose node holds fewer devices than the largest tp of the plan's `search.tp`: that
    tp's all-reduces cross the inter-node link (costmodel.cluster.tp_span_note, named with its bandwidth), as
    its candidates are priced. The default tp axis stays inside a node (space.axes_of, serve.candidate_shapes),
    so only a tp the plan names is said. One note per hardware choice."""
    notes = []
    for hw in hardware:
        wide = [tp for tp in plan.search.tp or () if tp > hw.devices_per_node]
        note = tp_span_note(max(wide), hw.cluster(max(wide))) if wide and not hw.node.is_torus else None
        if note is not None:
            notes.append(f"search.tp: {hw.name}: {note}")
    return notes


def prepare_search(plan: PlanFile, hardware: list[Hardware], profile: PlanProfile) -> tuple[WorkloadProfile,
                                                                                           "SearchCaches"]:
    """The plan's workload profile (`profile.result()`) and the search's caches, the shapes of every group filled
    in first (`warm_shapes`: they read no profile, and are the same for every hardware choice).

    A profile being traced in a forked worker (planner.profiling.PlanProfile: the store had none) is waited for
    after the shapes, which this process fills meanwhile (~0.4 s of each hardware choice's search otherwise, and
    again in each forked search worker, which now gets them with its task); under --executor local it is traced
    here, after them. The caches are caches only: a search given empty ones (`search`'s default) fills what it
    reads, to the same rows."""
    caches = SearchCaches()
    for hw, label, pplan in _precision_plans(plan, hardware):
        axes = axes_of(plan, hw.devices_per_node)
        for g in groups(pplan, hw.name, hw.devices_per_node, axes, label):
            warm_shapes(pplan, g, axes, caches.shapes)
            if pplan is not plan:  # member_count of its pruned groups reads the plan as written's, kept apart
                warm_shapes(plan, g, axes, caches.counted)
    return profile.result(), caches


@dataclass
class Evaluation:
    """One configuration, priced: the plan.csv row. Times in s, money in USD, energy in J, bytes."""

    config: Config
    feasible: bool
    reason: str                      # "" when feasible; else the limits it breaks, "; "-joined
    limits: tuple[str, ...]          # memory | deadline | latency | throughput | power | error
    shortfall: float                 # largest need/limit ratio (1 or less when feasible)
    memory_bytes: float
    capacity_bytes: float
    step_time_s: float | None = None
    time_to_goal_s: float | None = None
    cost_usd: float | None = None
    energy_j: float | None = None
    tokens_per_s: float | None = None
    latency_s: float | None = None
    compute_time_s: float | None = None
    comm_time_s: float | None = None
    bubble_time_s: float | None = None
    other_time_s: float | None = None
    mfu: float | None = None
    power_w: float = 0.0
    memory_detail: dict[str, float] = field(default_factory=dict)
    sim: dict[str, float | bool | None] = field(default_factory=dict)  # the cluster re-check, top-k only


@dataclass
class Context:
    """What pricing a configuration needs, built once per hardware choice."""

    plan: PlanFile
    hardware: Hardware
    profile: WorkloadProfile
    sharing: SharingChoice
    options: Options = Options()
    bound_terms: dict = field(default_factory=dict)  # static_lower_bound's stage terms, per (tp, pp, split, stage)


def _group_splits(layers: int, g: Group, axes: Axes) -> frozenset[tuple[int, ...]]:
    """The layer splits the members of a group run: its stated one, or the default split of each schedule
    the axes try (interleaving splits in chunks of v layers, so its default may differ)."""
    return frozenset((g.stage_layers,)) if g.stage_layers else _default_splits(layers, g.pp, axes)


@functools.lru_cache(maxsize=1024)
def _default_splits(layers: int, pp: int, axes: Axes) -> frozenset[tuple[int, ...]]:
    """_group_splits of a group without a stated split. Cached: the thousands of groups of a plan have a few
    pipeline depths."""
    out = set()
    for schedule, v in schedules(axes, pp) or [("1f1b", 1)]:
        try:
            out.add(default_split(layers, pp, v if schedule == "interleaved" else 1))
        except SplitError:  # such members are invalid (space.shape_problem)
            continue
    return frozenset(out)


def static_lower_bound(ctx: Context, g: Group, axes: Axes) -> float:
    """Bytes per device of weights, gradients, optimizer state and KV cache (no activations): a true
    lower bound of `memory_breakdown(...).total` for every member of the group (the least, over the splits
    its members run, of the busiest stage's). The stage terms are memory_breakdown's own
    (`stage_memory_terms` without activations, combined by `stage_memory`), cached per (tp, pp, split, stage)
    where they depend on nothing else (not inference, whose KV cache follows dp)."""
    w = ctx.plan.workload
    pinned = (g.dp, g.zero) if w.mode != "train" else ()
    bounds = []
    for split in _group_splits(w.model.layers, g, axes):
        plan = Plan(dp=g.dp, tp=g.tp, pp=g.pp, cp=g.cp, zero=g.zero, microbatches=max(w.batch // g.dp, 1),
                    stage_layers=split, ep=g.ep, etp=g.tp)
        need = 0.0
        for st in memory_stages(w, plan):
            key = (g.tp, g.pp, g.cp, g.ep, split, st, *pinned)
            terms = ctx.bound_terms.get(key)
            if terms is None:
                terms = ctx.bound_terms[key] = stage_memory_terms(w, ctx.profile, ctx.sharing, plan, ctx.options, st,
                                                                  activations=False, device=ctx.hardware.device)
            mb = stage_memory(terms, plan.zero, plan.dp_cp, plan.zero_dp, 0.0, plan.edp)
            need = max(need, mb["params"] + mb["grads"] + mb["optimizer"] + mb["kv_cache"])
        bounds.append(need)
    return min(bounds, default=0.0)


Check = tuple[str, str, bool, float, Callable[[float], str]]


def _past(value: float, bound: float, digits: int, upper: bool = True) -> str:
    """`value`, which breaks `bound` (above it if `upper`, else below), with `digits` decimals, or a few more, or as
    many significant digits as it takes to read as breaking it: a miss by 0.1% is not written "30.0 days > 30 days"
    (trial 48), nor a deadline of seconds "0.0 days > 1.4e-05 days"."""
    texts = [f"{value:,.{d}f}" for d in range(digits, digits + 3)] + [f"{value:,.{d}g}" for d in range(3, 16)]
    for text in texts:
        shown = float(text.replace(",", ""))
        if (shown > bound) if upper else (shown < bound):
            return text
    return texts[0]


def _checks(plan: PlanFile) -> list[Check]:
    """The goals and limits the plan sets, in the order `judge` lists them: (limit, the metric it reads
    ("power_w": the configuration's power), upper (True: broken above the bound, need/limit = value/bound;
    False: broken below it, bound/value), bound, the reason line of a value)."""
    g, lim = plan.goal, plan.limits
    out: list[Check] = []
    # each reason line's bound written once (judge_columns writes a line for each of 10^5 rows)
    if plan.workload.mode == "train":
        if g.deadline_s is not None:
            days = f"{g.deadline_days:g}"
            out.append(("deadline", "time_to_goal_s", True, g.deadline_s,
                        lambda t: f"deadline: {_past(t / 86400, g.deadline_days, 1)} days > {days} days"))
    else:
        if g.tokens_per_s is not None:
            rate = f"{g.tokens_per_s:,.0f}"
            out.append(("throughput", "tokens_per_s", False, g.tokens_per_s,
                        lambda tps: f"throughput: {_past(tps, g.tokens_per_s, 0, False)} tokens/s < {rate}"))
        if g.max_step_latency_s is not None:
            ms = f"{g.max_step_latency_s * 1e3:g}"
            out.append(("latency", "latency_s", True, g.max_step_latency_s,
                        lambda s: f"latency: {_past(s * 1e3, g.max_step_latency_s * 1e3, 1)} ms > {ms} ms"))
    if lim.max_power_w is not None:
        limit = fmt_watts(lim.max_power_w)
        out.append(("power", "power_w", True, lim.max_power_w,
                    lambda w: f"power: {fmt_watts(w)} > {limit}"))
    return out


def judge(plan: PlanFile, metrics: dict[str, float], power_w: float) -> tuple[tuple[str, ...], list[str], float]:
    """(limits broken, their reasons, shortfall = largest need/limit ratio) against the goal and limits."""
    broken: list[tuple[str, str, float]] = []
    for limit, metric, upper, bound, reason in _checks(plan):
        value = power_w if metric == "power_w" else metrics[metric]
        if value > bound if upper else value < bound:
            broken.append((limit, reason(value), value / bound if upper else bound / value))
    return tuple(b[0] for b in broken), [b[1] for b in broken], max((b[2] for b in broken), default=1.0)


def judge_columns(plan: PlanFile, metrics: dict[str, np.ndarray], power_w: np.ndarray
                  ) -> tuple[list[tuple[str, ...]], list[str], np.ndarray]:
    """`judge` of every row of columns (metrics as goal_metrics names them, power_w: numpy arrays of n):
    (each row's limits broken, its reasons "; "-joined, its shortfall column). The same checks (`_checks`),
    reason lines and ratios as judge row by row (tests/planner/test_search.py); a NaN metric breaks nothing."""
    n = len(power_w)
    code = np.zeros(n, dtype=np.int64)
    shortfall = np.ones(n)
    reasons = np.full(n, "", dtype=object)
    checks = _checks(plan)
    for k, (limit, metric, upper, bound, reason) in enumerate(checks):
        value = np.asarray(power_w if metric == "power_w" else metrics[metric], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            broken = value > bound if upper else value < bound
            ratio = value / bound if upper else bound / value
        at = np.flatnonzero(broken)
        code[at] |= 1 << k
        shortfall[at] = np.maximum(shortfall[at], ratio[at])
        lines = list(map(reason, value[at].tolist()))
        reasons[at] = lines if k == 0 else [f"{before}; {line}" if before else line
                                            for before, line in zip(reasons[at].tolist(), lines)]
    names = [tuple(checks[k][0] for k in range(len(checks)) if c >> k & 1) for c in range(1 << len(checks))]
    return [names[c] for c in code.tolist()], reasons.tolist(), shortfall


def evaluate(ctx: Context, c: Config) -> Evaluation:
    """Memory first (exact); the step only when it fits; then the goal and the limits."""
    w, hw = ctx.plan.workload, ctx.hardware
    plan = c.plan()
    mem = memory_breakdown(w, ctx.profile, ctx.sharing, plan, ctx.options, device=ctx.hardware.device)
    cap = hw.capacity
    power = c.n_devices * busy_power_w(hw.device)
    detail = mem.as_dict()
    if not mem.fits(cap):
        reason = f"memory: needs {fmt_bytes(mem.total)}/device > {fmt_bytes(cap)} usable"
        return Evaluation(c, False, reason, ("memory",), mem.total / cap, mem.total, cap, power_w=power,
                          memory_detail=detail)
    try:
        est = estimate(w, ctx.profile, ctx.sharing, plan, hw.cluster_of(c), ctx.options)
    except CostModelError as exc:
        return Evaluation(c, False, f"error: {exc}", ("error",), math.inf, mem.total, cap, power_w=power,
                          memory_detail=detail)
    metrics = goal_metrics(ctx.plan, c.n_devices, hw.usd_per_device_hour, est.step_time_s, est.energy_j, est.tpot_s)
    limits, reasons, shortfall = judge(ctx.plan, metrics, power)
    return Evaluation(c, not limits, "; ".join(reasons), limits, shortfall, mem.total, cap,
                      step_time_s=est.step_time_s, compute_time_s=est.compute_time_s, comm_time_s=est.comm_time_s,
                      bubble_time_s=est.bubble_time_s, other_time_s=est.other_time_s, mfu=est.mfu, power_w=power,
                      memory_detail=detail, **metrics)


def table_evaluations(ctx: Context, table: PricedTable) -> Callable[[int], Evaluation]:
    """Row i of a priced table as `evaluate` makes it: the memory verdict, a cost-model error, or the goal
    and limits judged (`judge`) on the priced numbers."""
    cols = {k: v.tolist() for k, v in table.columns.items()}
    cap = ctx.hardware.capacity
    judged = judge_columns(ctx.plan, table.columns, table.columns["power_w"])  # judge, over the columns
    limits_of, reasons_of, shortfall_of = judged[0], judged[1], judged[2].tolist()

    def row(i: int) -> Evaluation:
        c = table.configs[i]
        total, power = cols["memory_bytes"][i], cols["power_w"][i]
        detail = {k: cols[k][i] for k in MEMORY_PARTS}
        if not cols["fits"][i]:
            reason = f"memory: needs {fmt_bytes(total)}/device > {fmt_bytes(cap)} usable"
            return Evaluation(c, False, reason, ("memory",), total / cap, total, cap, power_w=power,
                              memory_detail=detail)
        if table.error[i]:
            return Evaluation(c, False, f"error: {table.error[i]}", ("error",), math.inf, total, cap, power_w=power,
                              memory_detail=detail)
        metrics = {k: cols[k][i] for k in ("time_to_goal_s", "cost_usd", "energy_j", "tokens_per_s", "latency_s")}
        limits = limits_of[i]
        return Evaluation(c, not limits, reasons_of[i], limits, shortfall_of[i], total, cap,
                          step_time_s=cols["step_time_s"][i], compute_time_s=cols["compute_time_s"][i],
                          comm_time_s=cols["comm_time_s"][i], bubble_time_s=cols["bubble_time_s"][i],
                          other_time_s=cols["other_time_s"][i], mfu=cols["mfu"][i], power_w=power,
                          memory_detail=detail, **metrics)
    return row


# Row columns of `Rows` (numpy float arrays over the rows; NaN where a row has no such number).
ROW_NUMBERS = ("memory_bytes", *MEMORY_PARTS, "power_w", "capacity_bytes", "shortfall", *PRICED)
_EVAL_PRICED = ("step_time_s", "compute_time_s", "comm_time_s", "bubble_time_s", "other_time_s", "mfu")
_EVAL_METRICS = ("time_to_goal_s", "cost_usd", "energy_j", "tokens_per_s", "latency_s")


class Rows(Sequence[Evaluation]):
    """Evaluated configurations as columns: what `search` returns, ranked. A sequence of `Evaluation`s to its
    readers (`rows[i]`, iteration, slices), each made from the columns when first read and kept (the same
    object every time: `simulate_top` writes its `sim` into it, `plan_frame` reads it back); the planner's own
    passes over every row (ranking, plan_frame, explain's counts and neighbours) read the columns and make an
    `Evaluation` only for the rows they keep.

    `configs[i]`: row i's Config; `columns`: `ROW_NUMBERS` (float) and `fits`, `priced` (a step price: the
    Evaluation's step_time_s is not None), `feasible` (bool), numpy arrays of len(configs); `limits`,
    `reasons`, `errors` (the cost model's message where it could not price the row, else ""): lists.
    `field(name)`: a Config field over the rows as a numpy array, and `names()`: each row's Config.name, read
    from the configurations once and carried through `take` and `concat` (the ranking, plan_frame and
    explain read them).

    `configs` None: the configurations are the fields' columns in `fields` (every Config field:
    planner.columns.ConfigColumns), a Config made for a row when read. Rows pickle so (`__reduce__`): a forked
    worker's rows cross the pipe as columns (llmsim.executor.ForkExecutor)."""

    def __init__(self, configs: Sequence[Config] | None, columns: dict[str, np.ndarray],
                 limits: list[tuple[str, ...]], reasons: list[str], errors: list[str],
                 made: dict[int, Evaluation] | None = None, fields: dict[str, np.ndarray] | None = None) -> None:
        self._configs = configs
        self.columns = columns
        self.limits = limits
        self.reasons = reasons
        self.errors = errors
        self._made: dict[int, Evaluation] = made if made is not None else {}
        self._fields: dict[str, np.ndarray] = fields if fields is not None else {}  # field name (or NAMES) -> array
        self._as_columns = ConfigColumns(self._fields) if configs is None else None

    @property
    def configs(self) -> Sequence[Config]:
        """Row i's Config at [i]: the Configs given, or ConfigColumns over the fields."""
        return self._configs if self._configs is not None else self._as_columns  # type: ignore[return-value]

    def __reduce__(self) -> tuple:
        """Pickled as columns: every Config field and the names (read from the Configs here if not yet), the
        numbers, the limits, reasons and errors, the Evaluations made so far; unpickled with configs None. The
        70B plan's rows of one hardware choice: ~60 MB, ~0.1 s each way, against ~4 s with their Configs."""
        self._read_config_fields()
        self.names()
        return Rows, (None, self.columns, self.limits, self.reasons, self.errors, self._made, self._fields)

    def _read_config_fields(self) -> None:
        """Every Config field into `_fields` (those not read yet, from the Configs)."""
        missing = [name for name in CONFIG_FIELDS if name not in self._fields]
        if missing:
            self._fields.update(config_columns(self.configs, missing))

    def field(self, name: str) -> np.ndarray:
        """The Config field `name` of every row (an int or bool field as int64 or bool, any other as objects:
        the Python values), read from the configurations once."""
        got = self._fields.get(name)
        if got is None:
            got = self._fields[name] = _config_column(self.configs, name)
        return got

    def names(self) -> np.ndarray:
        """Each row's Config.name (objects), built once: the ranking's tie-break and plan.parquet's strategy."""
        return self.field(NAMES)

    @classmethod
    def from_evaluations(cls, rows: Sequence[Evaluation]) -> "Rows":
        """Rows over Evaluations made one by one (search.evaluate: inference, pricing="scalar"): the same
        objects, read back as they are; their numbers as columns (None as NaN)."""
        def column(get: Callable[[Evaluation], object]) -> np.ndarray:
            return np.fromiter((math.nan if (v := get(e)) is None else v for e in rows), dtype=float, count=len(rows))
        columns = {k: column(operator.attrgetter(k)) for k in ROW_NUMBERS if k not in MEMORY_PARTS}
        for k in MEMORY_PARTS:
            columns[k] = column(lambda e, k=k: e.memory_detail.get(k))
        columns["fits"] = np.fromiter((e.limits != ("memory",) for e in rows), dtype=bool, count=len(rows))
        columns["priced"] = np.fromiter((e.step_time_s is not None for e in rows), dtype=bool, count=len(rows))
        columns["feasible"] = np.fromiter((e.feasible for e in rows), dtype=bool, count=len(rows))
        return cls([e.config for e in rows], columns, [e.limits for e in rows], [e.reason for e in rows],
                   [e.reason.removeprefix("error: ") if e.limits == ("error",) else "" for e in rows],
                   dict(enumerate(rows)))

    @classmethod
    def concat(cls, parts: Sequence["Rows"]) -> "Rows":
        """The rows of `parts`, one after the other."""
        if not parts:
            return cls.from_evaluations([])
        made, at = {}, 0
        for part in parts:
            made.update({at + i: e for i, e in part._made.items()})
            at += len(part)
        as_columns = any(part._configs is None for part in parts)  # then all are: Configs are not remade
        if as_columns:
            for part in parts:
                part._read_config_fields()
        read = set.intersection(*(set(part._fields) for part in parts))  # the fields every part has read
        return cls(None if as_columns else [c for part in parts for c in part.configs],
                   {k: np.concatenate([part.columns[k] for part in parts]) for k in parts[0].columns},
                   [x for part in parts for x in part.limits], [x for part in parts for x in part.reasons],
                   [x for part in parts for x in part.errors], made,
                   {k: np.concatenate([part._fields[k] for part in parts]) for k in read})

    def take(self, order: Sequence[int] | np.ndarray) -> "Rows":
        """The rows at `order` (positions), in that order; the Evaluations made so far go with them."""
        order = np.asarray(order, dtype=np.int64)
        made = {}
        if self._made:  # the new positions of the rows made so far, in the new order
            for new in np.flatnonzero(np.isin(order, list(self._made))).tolist():
                made[new] = self._made[int(order[new])]
        return Rows(None if self._configs is None else _gather(self._configs, order),
                    {k: v[order] for k, v in self.columns.items()},
                    _gather(self.limits, order), _gather(self.reasons, order), _gather(self.errors, order), made,
                    {k: v[order] for k, v in self._fields.items()})

    def __len__(self) -> int:
        return len(self.configs)

    @overload
    def __getitem__(self, i: int) -> Evaluation: ...

    @overload
    def __getitem__(self, i: slice) -> list[Evaluation]: ...

    def __getitem__(self, i: int | slice) -> Evaluation | list[Evaluation]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        i = i % n if n else i
        e = self._made.get(i)
        if e is None:
            e = self._made[i] = self._evaluation(i)
        return e

    def __iter__(self) -> Iterator[Evaluation]:
        return (self[i] for i in range(len(self)))

    def _evaluation(self, i: int) -> Evaluation:
        """Row i as table_evaluations made it: the memory verdict, a cost-model error, or the judged price."""
        col = self.columns
        c, total, cap, power = (self.configs[i], float(col["memory_bytes"][i]), float(col["capacity_bytes"][i]),
                                float(col["power_w"][i]))
        detail = {k: float(col[k][i]) for k in MEMORY_PARTS}
        if not col["priced"][i]:
            return Evaluation(c, False, self.reasons[i], self.limits[i], float(col["shortfall"][i]), total, cap,
                              power_w=power, memory_detail=detail)
        return Evaluation(c, bool(col["feasible"][i]), self.reasons[i], self.limits[i], float(col["shortfall"][i]),
                          total, cap, power_w=power, memory_detail=detail,
                          **{k: float(col[k][i]) for k in (*_EVAL_PRICED, *_EVAL_METRICS)})

    def index_of(self, e: Evaluation) -> int:
        """The position of an Evaluation read from these rows (by identity)."""
        for i, made in self._made.items():
            if made is e:
                return i
        raise ValueError("not a row of these rows")

    def made(self) -> dict[int, Evaluation]:
        """The rows made into Evaluations so far, by position."""
        return dict(self._made)

    def first(self, k: int, feasible: bool = True) -> list[Evaluation]:
        """The first k rows whose feasibility is `feasible`, as Evaluations."""
        return [self[i] for i in np.flatnonzero(self.columns["feasible"] == feasible)[:max(k, 0)].tolist()]

    def limit_counts(self) -> Counter:
        """How many rows break each limit (a row may break several)."""
        per_tuple = Counter(self.limits)
        out: Counter = Counter()
        for limits, n in per_tuple.items():
            for k in limits:
                out[k] += n
        return out


def _gather(values: Sequence, order: np.ndarray) -> list:
    """[values[i] for i in order], the same objects (a numpy gather: faster over 10^5 rows)."""
    return np.fromiter(values, dtype=object, count=len(values))[order].tolist()


NAMES = "name"  # Rows.field's key of Config.name, a property read like a field


def _config_column(configs: Sequence[Config], name: str) -> np.ndarray:
    """Config attribute `name` of each configuration as a numpy array (columns.config_columns' types)."""
    return config_columns(configs, (name,))[name]


def first_rows(rows: Sequence[Evaluation], k: int, feasible: bool = True) -> list[Evaluation]:
    """The first k rows whose feasibility is `feasible` (Rows: found on their columns)."""
    if isinstance(rows, Rows):
        return rows.first(k, feasible)
    return [e for e in rows if e.feasible == feasible][:max(k, 0)]


def table_rows(ctx: Context, table: PricedTable, keep: np.ndarray) -> Rows:
    """The rows `keep` (positions) of a priced table as Rows: the numbers of `table_evaluations`, as columns.
    A row over memory: reason memory, shortfall memory / capacity; one the cost model could not price: reason
    error, shortfall infinite; the others judged on their price (`judge_columns`). The configurations as
    columns (ConfigColumns): every Config field and the names read from the table's chains
    (columns.ChainedConfigs: a field the members of a chain share once per chain), a Config made for a row
    only when read."""
    cols = {k: v[keep] for k, v in table.columns.items()}
    n = len(keep)
    cap = ctx.hardware.capacity
    errors = _gather(table.error, keep)
    fits = cols["fits"].astype(bool)
    failed = np.fromiter(map(bool, errors), dtype=bool, count=n)
    priced = fits & ~failed
    limits, reasons, shortfall = judge_columns(ctx.plan, cols, cols["power_w"])
    over = np.flatnonzero(~fits)
    bytes_text: dict[float, str] = {}  # fmt_bytes of the distinct totals (many rows share one)

    def text(x: float) -> str:
        t = bytes_text.get(x)
        if t is None:
            t = bytes_text[x] = fmt_bytes(x)
        return t
    usable = fmt_bytes(cap)
    totals = cols["memory_bytes"][over]
    for i, total in zip(over.tolist(), totals.tolist()):
        limits[i] = ("memory",)
        reasons[i] = f"memory: needs {text(total)}/device > {usable} usable"
    shortfall[over] = totals / cap if len(over) else totals
    for i in np.flatnonzero(fits & failed).tolist():
        limits[i], reasons[i] = ("error",), f"error: {errors[i]}"
        shortfall[i] = math.inf
    columns = {k: cols[k] for k in ("memory_bytes", *MEMORY_PARTS, "power_w", *PRICED)}
    columns["capacity_bytes"] = np.full(n, cap)
    columns["shortfall"] = shortfall
    columns["fits"], columns["priced"] = fits, priced
    columns["feasible"] = priced & np.fromiter(map(operator.not_, limits), dtype=bool, count=n)
    kept = table.configs.take(keep)
    fields = kept.columns()
    fields[NAMES] = kept.names()
    return Rows(None, columns, limits, reasons, errors, fields=fields)


def chain_kept(fits: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Which rows of chains laid end to end (`lengths`, in the order of `fits`) are evaluated one by one: a
    chain's rows up to and including its first that does not fit (the larger micro-batches after it overflow
    too: space.chains)."""
    n = len(fits)
    start = np.repeat(np.cumsum([0, *lengths[:-1]]).astype(np.int64), lengths) if n else np.zeros(0, np.int64)
    bad = (~fits).astype(np.int64)
    before = np.cumsum(bad) - bad  # rows that do not fit before each row, over all chains
    return before - before[start] == 0 if n else np.zeros(0, dtype=bool)


@dataclass
class SearchStats:
    """How much of the space each stage handled (the report shows it; the benchmark times it)."""

    screened: int = 0          # configurations counted: pruned by group + memory-checked + priced
    pruned_by_group: int = 0   # members of groups whose weights alone overflow (not listed one by one)
    pruned_need: float = math.inf  # smallest lower bound / capacity among the pruned groups
    largest_devices: int = 0   # the most devices of any group formed (whole nodes, the axes, max_devices)
    groups_pruned: int = 0
    pruned_by_micro_batch: int = 0  # larger micro-batches than one that overflows (not listed one by one)
    memory_rejected: int = 0
    priced: int = 0
    feasible: int = 0
    seconds: float = 0.0
    per_hardware: dict[str, int] = field(default_factory=dict)


def objective_key(objective: str) -> Callable[[Evaluation], tuple]:
    """Sort key: feasible first by the objective (ties: time, cost, devices); then misses by shortfall."""
    fields = {"cost": ("cost_usd", "time_to_goal_s", "n_devices"),
              "time": ("time_to_goal_s", "cost_usd", "n_devices"),
              "energy": ("energy_j", "time_to_goal_s", "cost_usd"),
              "devices": ("n_devices", "cost_usd", "time_to_goal_s")}[objective]
    first, second, third = ((lambda e: e.config.n_devices) if f == "n_devices" else operator.attrgetter(f)
                            for f in fields)

    def metric(e: Evaluation) -> tuple:
        return first(e), second(e), third(e)

    def key(e: Evaluation) -> tuple:
        if e.feasible:
            return (0, *metric(e), e.config.name)
        priced = e.step_time_s is not None  # a configuration that runs is closer than one that cannot
        return (1, 0 if priced else 1, e.shortfall, *(m if m is not None else math.inf for m in metric(e)),
                e.config.name)
    return key


RowsT = TypeVar("RowsT", list[Evaluation], Rows)


def rank(rows: RowsT, objective: str) -> RowsT:
    """`sorted(rows, key=objective_key(objective))`, with numpy: a stable lexsort of the key's numbers as
    columns, then, only where two rows tie on all of them, their names (the key's last element), which
    are costly to build. The same order (tests/planner/test_search.py); Python's sort where a number is NaN,
    whose tuple order numpy cannot copy. A list of Evaluations gives a list; `Rows` give Rows, ranked on
    their columns (no Evaluation made)."""
    if isinstance(rows, Rows):
        return rows.take(_rank_rows(rows, objective))
    n = len(rows)
    feasible = np.fromiter((e.feasible for e in rows), dtype=bool, count=n)
    unpriced = np.fromiter((e.step_time_s is None for e in rows), dtype=bool, count=n)
    shortfall = np.fromiter((e.shortfall for e in rows), dtype=float, count=n)
    def column(f: str) -> np.ndarray:  # as objective_key: a row without the number ranks it as infinite
        values = ((e.config.n_devices if f == "n_devices" else getattr(e, f)) for e in rows)
        return np.fromiter((math.inf if v is None else v for v in values), dtype=float, count=n)
    metrics = [column(f) for f in RANK_FIELDS[objective]]
    if any(np.isnan(col).any() for col in (shortfall, *metrics)):
        return sorted(rows, key=objective_key(objective))
    return [rows[r] for r in _rank_order(feasible, unpriced, shortfall, metrics,
                                         lambda at: [rows[r].config.name for r in at])]


RANK_FIELDS = {"cost": ("cost_usd", "time_to_goal_s", "n_devices"),
               "time": ("time_to_goal_s", "cost_usd", "n_devices"),
               "energy": ("energy_j", "time_to_goal_s", "cost_usd"),
               "devices": ("n_devices", "cost_usd", "time_to_goal_s")}  # objective_key's numbers, in its order


def _rank_rows(rows: Rows, objective: str) -> list[int]:
    """rank's order (positions) of Rows, from their columns: an unpriced row's numbers as infinite (the
    Evaluation's None, as objective_key reads it)."""
    col = rows.columns
    priced = col["priced"]
    n = len(rows)

    def column(f: str) -> np.ndarray:
        if f == "n_devices":
            return rows.field("n_devices").astype(float)
        return np.where(priced, col[f], math.inf)
    metrics = [column(f) for f in RANK_FIELDS[objective]]
    shortfall = col["shortfall"]
    if any(np.isnan(c).any() for c in (shortfall, *metrics)):  # as rank: Python's sort of the Evaluations
        key = objective_key(objective)
        return sorted(range(n), key=lambda i: key(rows[i]))
    return _rank_order(col["feasible"], ~priced, shortfall, metrics, rows.names().__getitem__)


def _rank_order(feasible: np.ndarray, unpriced: np.ndarray, shortfall: np.ndarray, metrics: list[np.ndarray],
                names: Callable[[np.ndarray], Sequence[str]]) -> list[int]:
    """The positions in objective_key's order of rows given as columns (no NaN): a stable lexsort of the
    numbers, then names (`names(positions)`: the names of the rows at an array of positions) only among rows
    tied on all of them (`_by_name_within_runs`)."""
    n = len(feasible)
    columns = [np.where(feasible, 0.0, col) for col in (unpriced.astype(float), shortfall)]
    keys = (*metrics[::-1], *columns[::-1], (~feasible).astype(float))  # lexsort: the last key is the first
    order = np.lexsort(keys)
    same = np.ones(max(n - 1, 0), dtype=bool)  # sorted row i + 1 ties row i on every number
    for k in keys:
        ranked = k[order]
        same &= ranked[1:] == ranked[:-1]
    edges = np.diff(np.concatenate(([0], same.view(np.int8), [0])))  # runs of ties: +1 where one starts, -1 after
    _by_name_within_runs(order, np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), names)
    return order.tolist()


def _by_name_within_runs(order: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                         names: Callable[[np.ndarray], Sequence[str]]) -> None:
    """Sort each run order[start:stop + 1] by its rows' names, stably, in place: what
    `sorted(run, key=name)` does to each run, done for all the runs of one length at once (a stable numpy
    argsort along the rows of a (runs, length) array of names, which compares them with `<` as sorted does). The
    70B plan's ~119,000 runs of 2 to 16 tied rows took ~0.3 s as one Python sort each, ~0.05 s so."""
    lengths = stops - starts + 1
    for length in np.unique(lengths).tolist():
        at = starts[lengths == length][:, None] + np.arange(length)   # (runs, length): positions in order
        members = order[at]
        named = np.empty(members.shape, dtype=object)
        named.ravel()[:] = names(members.ravel())
        by_name = np.argsort(named, axis=1, kind="stable")
        order[at] = np.take_along_axis(members, by_name, axis=1)


def search(plan: PlanFile, hardware: list[Hardware], sharing: SharingChoice | None = None,
           profile: WorkloadProfile | None = None,
           progress: Callable[[str], None] | None = None,
           pricing: Literal["table", "scalar"] = "table", executor: Executor | None = None,
           caches: SearchCaches | None = None, live: Callable[[str], None] | None = None) -> tuple[Rows, SearchStats]:
    """Every configuration of the plan's space, evaluated and ranked (pruned groups are only counted), as
    `Rows`: a sequence of Evaluations to read, columns underneath (an Evaluation is made for a row when read).

    `pricing`: "table" prices each hardware's candidates at once (planner.table, numpy columns); "scalar"
    one by one (`evaluate`). The two give the same rows (tests/planner/test_table.py).

    Each (hardware, precision) is enumerated and priced on its own (`price_context`), on `executor.few_heavy()`
    (llmsim.executor; default: in this process, one after another; under `auto` or `ray`, in workers forked
    from this process, one per core). The rows, the counts and the progress lines ("a100-80gb: N
    configurations screened", in the order of the choices) are the same whatever runs them
    (tests/planner/test_search_parallel.py). `caches`: prepare_search's (default: empty; the same rows).
    `live`: lines said while a context is priced, from whichever process prices it ("h100-sxm: pricing 950,364
    configurations", then every table.PROGRESS_EVERY_S seconds "h100-sxm: 120,000 of 950,364 configurations priced":
    `PricingLines`); pickled into forked workers, so a module-level function (llmsim.cli's); not among
    `progress`'s ordered lines, since their timing and process vary."""
    start = time.perf_counter()
    sharing = sharing or sharing_choice(plan)
    profile = profile or workload_profile(plan.workload, sharing)
    stats = SearchStats(per_hardware={hw.name: 0 for hw in hardware})
    parts: list[Rows] = []            # table pricing: each hardware and precision's rows, as columns
    evaluated: list[Evaluation] = []  # pricing one by one
    contexts = precision_contexts(plan, hardware, sharing, profile)
    tasks = [(plan, hw, label, ctx, ctx.plan is plan, pricing) for hw, label, ctx in contexts]
    done: dict[int, ContextPrice] = {}  # finished, not yet added: the contexts are added and reported in order
    reported = 0
    runner = (executor or LocalExecutor()).few_heavy()
    price = functools.partial(price_context, caches or SearchCaches(), **({"live": live} if live else {}))
    for i, result in runner.as_completed(price, tasks):
        done[i] = result
        while reported in done:
            hw, label, _ = contexts[reported]
            got = done.pop(reported)
            reported += 1
            _add_stats(stats, got.stats, hw.name)
            if got.part is not None:
                parts.append(got.part)
            evaluated.extend(got.evaluated)
            if progress:
                progress(f"{hw.name}{' ' + label if label else ''}: "
                         f"{count(got.stats.screened, 'configuration')} screened")
    rows = rank(Rows.concat(parts), plan.objective) if parts else \
        Rows.from_evaluations(rank(evaluated, plan.objective))
    stats.seconds = time.perf_counter() - start
    return rows, stats


@dataclass
class SearchCaches:
    """What the contexts of one search share in one process, to be filled once: price_table's stage memory
    terms per precision label (`shared`: they follow the workload's dtype, and per FP8 GEMM layout trait of the
    device, which keys them inside), space.chains' valid shapes of each group (`shapes`: the same for every
    hardware choice), and, apart, those member_count reads for the pruned groups of a precision other than the
    plan's as written (`counted`). Caches only: a context priced with them empty (in a forked worker, which
    fills its own) gives the same rows; the 70B plan's second hardware choice costs ~0.5 s more so."""

    shared: dict[str, dict[tuple, object]] = field(default_factory=dict)
    shapes: dict[tuple, list] = field(default_factory=dict)
    counted: dict[tuple, list] = field(default_factory=dict)


@dataclass
class ContextPrice:
    """One (hardware, precision)'s share of a search: its rows (table pricing: Rows, pickled as columns) or its
    Evaluations (one by one), and its counts (per_hardware left to the search)."""

    part: Rows | None
    evaluated: list[Evaluation]
    stats: SearchStats


# (the plan as written, the hardware, the precision label, its Context, whether the context's plan is the plan as
# written, pricing): one task of search's map
ContextTask = tuple[PlanFile, Hardware, str, Context, bool, str]


@dataclass(frozen=True)
class PricingLines:
    """price_table's progress(done, total) as the lines `say` prints for one context (search's `live`); picklable
    where `say` is."""

    name: str                      # the hardware choice and its precision label
    say: Callable[[str], None]

    def start(self, total: int) -> None:
        # every micro-batch of every chain, as table columns: those after one that overflows are dropped later, and
        # the groups skipped whole are not among them (the report's Search section counts each)
        self.say(f"{self.name}: pricing {count(total, 'configuration')} (the groups whose weights fit, every "
                 f"micro-batch)")

    def __call__(self, done: int, total: int) -> None:
        self.say(f"{self.name}: {done:,} of {count(total, 'configuration')} priced")


def price_context(caches: SearchCaches, task: ContextTask, live: Callable[[str], None] | None = None
                  ) -> ContextPrice:
    """Screen, enumerate and price one (hardware, precision) of a plan: the groups whose weights alone overflow
    counted (member_count), the others' configurations priced (table: price_table over the chains as
    columns.ChainedConfigs, each chain cut after its first overflow; scalar: evaluate one by one). A
    module-level function of its task and caches (see SearchCaches), so that search can run it in a forked
    worker. `live`: search's (PricingLines)."""
    plan, hw, label, ctx, as_written, pricing = task
    lines = PricingLines(f"{hw.name}{' ' + label if label else ''}", live) if live else None
    stats = SearchStats()
    axes: Axes = axes_of(plan, hw.devices_per_node)
    kept = _screened_groups(caches, task, axes, stats)
    if pricing == "table" and plan.workload.mode == "train":  # inference: row by row (planner.table)
        found = chained_configs(ctx.plan, kept, axes, caches.shapes)
        if lines:
            lines.start(len(found))
        table = price_table(ctx, found, caches.shared.setdefault(label, {}), lines)
        keep = np.flatnonzero(chain_kept(table.columns["fits"].astype(bool), found.lengths().tolist()))
        part = table_rows(ctx, table, keep)
        over = int((~part.columns["fits"]).sum())
        stats.screened += len(table)
        stats.feasible += int(part.columns["feasible"].sum())
        stats.memory_rejected += over
        stats.pruned_by_micro_batch += len(table) - len(part)
        stats.priced += len(part) - over
        return ContextPrice(part, [], stats)
    evaluated: list[Evaluation] = []
    for g, places in kept:
        for chain in chains(ctx.plan, g, axes, caches.shapes):
            for placed in ([chain] if places == UNPLACED else
                           [[replace(c, topology=shape, slices=slices, mesh=mesh) for c in chain]
                            for shape, slices, mesh in places]):
                _evaluate_chain(ctx, placed, stats, evaluated)
    return ContextPrice(None, evaluated, stats)


def chained_configs(plan: PlanFile, kept: Sequence[tuple[Group, tuple]], axes: Axes,
                    shapes: dict[tuple, list] | None = None) -> ChainedConfigs:
    """The configurations of the groups `kept` (each with its placements: Hardware.placements) as chains, in the
    order of `chains` (a TPU chain once per placement, one after the other), without a Config per member:
    space.chain_heads' first configuration of each chain (placed) and its members' micro-batch sizes and
    counts (columns.ChainedConfigs). Training plans (inference's chains are checked member by member)."""
    heads: list[Config] = []
    layouts: list[list[tuple[int, int]]] = []
    for g, places in kept:
        for first, layout in chain_heads(plan, g, axes, shapes):
            if places == UNPLACED:  # off a torus: the chain as chain_heads gives it
                heads.append(first)
                layouts.append(layout)
                continue
            for shape, slices, mesh in places:
                heads.append(replace(first, topology=shape, slices=slices, mesh=mesh))
                layouts.append(layout)
    return ChainedConfigs.of_chains(heads, layouts)


def _screened_groups(caches: SearchCaches, task: ContextTask, axes: Axes, stats: SearchStats
                     ) -> list[tuple[Group, tuple]]:
    """The groups of one context whose weights and optimizer state fit (static_lower_bound), with their
    placements (Hardware.placements); the members of the others counted in `stats` on the plan as written
    (member_count: its precision's valid shapes are those of `caches.shapes`, another precision's kept apart)."""
    plan, hw, label, ctx, as_written, _ = task
    out = []
    for g in groups(ctx.plan, hw.name, hw.devices_per_node, axes, label):
        stats.largest_devices = max(stats.largest_devices, g.n_devices)
        bound = static_lower_bound(ctx, g, axes) if hw.capacity else 0.0
        if hw.capacity and bound > hw.capacity:
            stats.pruned_need = min(stats.pruned_need, bound / hw.capacity)
            skipped = member_count(plan, g, axes, caches.shapes if as_written else caches.counted)
            stats.pruned_by_group += skipped
            stats.screened += skipped
            stats.groups_pruned += 1
            continue
        out.append((g, hw.placements(g)))
    return out


def _evaluate_chain(ctx: Context, chain: list[Config], stats: SearchStats, evaluated: list[Evaluation]) -> None:
    """Evaluate a chain's configurations one by one (`evaluate`) up to its first that overflows memory; the
    larger micro-batches after it counted, not evaluated (space.chains)."""
    for i, c in enumerate(chain):
        e = evaluate(ctx, c)
        stats.screened += 1
        stats.feasible += e.feasible
        evaluated.append(e)
        if e.limits == ("memory",):
            stats.memory_rejected += 1
            rest = len(chain) - i - 1
            stats.pruned_by_micro_batch += rest
            stats.screened += rest
            return
        stats.priced += 1


def _add_stats(stats: SearchStats, part: SearchStats, hardware: str) -> None:
    """Add one context's counts (price_context) to the search's."""
    for name in ("screened", "pruned_by_group", "groups_pruned", "pruned_by_micro_batch", "memory_rejected",
                 "priced", "feasible"):
        setattr(stats, name, getattr(stats, name) + getattr(part, name))
    stats.pruned_need = min(stats.pruned_need, part.pruned_need)
    stats.largest_devices = max(stats.largest_devices, part.largest_devices)
    stats.per_hardware[hardware] = stats.per_hardware.get(hardware, 0) + part.screened


def precision_contexts(plan: PlanFile, hardware: list[Hardware], sharing: SharingChoice,
                       profile: WorkloadProfile | None = None) -> list[tuple[Hardware, str, Context]]:
    """(hardware, precision label, Context) for every precision each hardware choice is planned with
    (planner.precisions); the context's plan carries that precision's workload. `profile` is the plan's own
    workload's (a precision whose workload differs is profiled on its own)."""
    out = []
    profiles: dict[Workload, WorkloadProfile] = {}
    if profile is not None:
        profiles[plan.workload] = profile
    for hw, label, pplan in _precision_plans(plan, hardware):
        w = pplan.workload
        if w not in profiles:
            profiles[w] = workload_profile(w, sharing)
        out.append((hw, label, Context(pplan, hw, profiles[w], sharing, options=plan.options.options)))
    return out


def _precision_plans(plan: PlanFile, hardware: list[Hardware]) -> Iterator[tuple[Hardware, str, PlanFile]]:
    """(hardware, precision label, the plan with that precision's workload: `plan` itself for the workload as
    written) for every precision each hardware choice is planned with (planner.precisions)."""
    for hw in hardware:
        found, _ = candidates(plan, hw.device)
        for cand in found:
            w = cand.workload
            yield hw, cand.label, plan if w is plan.workload else plan.model_copy(update={"workload": w})


def dropped_precisions(plan: PlanFile, hardware: list[Hardware]) -> list[str]:
    """Why a hardware choice has no candidates of a searched precision, one line each (the plan summary)."""
    return [why for hw in hardware for why in candidates(plan, hw.device)[1]]


def simulate_candidate(task: tuple) -> tuple[float, float, float | None]:
    """(step s, energy J, tpot s or None) of one candidate on the cluster simulation: the picklable task the
    re-check maps over (task = workload, profile, sharing, plan, cluster, options; llmsim.executor)."""
    workload, profile, sharing, cplan, cluster, options = task
    sim = simulate_case(workload, profile, sharing, cplan, cluster, options)
    return sim.step_s, sim.energy_j, sim.tpot_s


def simulate_top(plan: PlanFile, rows: Sequence[Evaluation], hardware: list[Hardware], profile: WorkloadProfile,
                 sharing: SharingChoice, k: int, executor: Executor | None = None,
                 progress: Progress | None = None) -> list[Evaluation]:
    """Re-check the first k feasible rows with the SimPy cluster simulation (llmsim.sim, healthy cluster,
    the framework's defaults), one task per row on `executor` (default: in this process; the results do not
    depend on it); reorder those k by the simulated objective (still-feasible first). Returns the re-checked
    rows in their new order. progress(done, k) after each simulation."""
    by_name = {h.name: h for h in hardware}
    top = first_rows(rows, k)
    profiles = {(h.name, label): ctx.profile for h, label, ctx in precision_contexts(plan, hardware, sharing, profile)}
    tasks = [(workload_for(plan, e.config.precision), profiles[(e.config.hardware, e.config.precision)], sharing,
              e.config.plan(), by_name[e.config.hardware].cluster_of(e.config), plan.options.options) for e in top]
    sims = (executor or LocalExecutor()).map(simulate_candidate, tasks, progress)
    for e, (step_s, energy_j, tpot_s) in zip(top, sims):
        hw = by_name[e.config.hardware]
        metrics = goal_metrics(plan, e.config.n_devices, hw.usd_per_device_hour, step_s, energy_j, tpot_s)
        limits, reasons, _ = judge(plan, metrics, e.power_w)
        e.sim = dict(step_time_s=step_s, time_to_goal_s=metrics["time_to_goal_s"], cost_usd=metrics["cost_usd"],
                     energy_j=metrics["energy_j"], feasible=not limits, reason="; ".join(reasons))
    key = objective_key(plan.objective)

    def sim_key(e: Evaluation) -> tuple:
        as_sim = replace(e, feasible=bool(e.sim["feasible"]), time_to_goal_s=e.sim["time_to_goal_s"],
                         cost_usd=e.sim["cost_usd"], energy_j=e.sim["energy_j"])
        return key(as_sim)
    return sorted(top, key=sim_key)
