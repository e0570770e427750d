"""What `llmsim plan` writes: plan.csv, the Pareto figure, plan.md / plan.html, and best.yaml.

plan.parquet has one row per evaluated configuration, ranked by the objective (feasible first), with the
strategy columns of results.csv plus `hardware, n_devices, feasible, reason, step_time_s,
time_to_goal_s, cost_usd, energy_j` (contract) and the breakdown behind them; plan.csv has the same
columns for the rows worth reading (`compact_frame`: the feasible Pareto front and the best `csv_top`
of each hardware choice), so that a plan of 10^5 to 10^6 configurations stays a file to open in a
spreadsheet. best.yaml is a scenario
that `llmsim run` accepts and that reproduces the winner on the roofline and the cluster backends.
The report is a llmsim.report Document, rendered by the same markdown and HTML renderers as run reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from llmsim.engine_options import TRAINING_ONLY_OPTIONS
from llmsim.planner.config import PlanFile
from llmsim.planner.explain import (Explanation, describe, fmt_duration, fmt_energy, fmt_usd, latency_name,
                                   sensitivity_rows)
from llmsim.planner.narrowing import narrowed_axes
from llmsim.planner.precisions import workload_for
from llmsim.planner.search import Evaluation, Hardware, Rows, SearchStats
from llmsim.planner.space import Config
from llmsim.report.units import fmt_bytes
from llmsim.results import write_atomic
from llmsim.stages import describe_split

CONTRACT_COLUMNS = ["hardware", "n_devices", "feasible", "reason", "step_time_s", "time_to_goal_s", "cost_usd",
                    "energy_j"]
STRATEGY_COLUMNS = ["strategy", "dp", "tp", "pp", "cp", "ep", "sp", "zero", "micro_batch", "microbatches",
                    "schedule", "virtual_stages", "recompute", "stage_layers", "dtype", "fp8_recipe"]
EXTRA_COLUMNS = ["nodes", "tokens_per_s", "latency_s", "mfu", "peak_memory_bytes_per_device",
                 "memory_capacity_bytes", "compute_time_s", "comm_time_s", "bubble_time_s", "other_time_s",
                 "power_w", "usd_per_device_hour", "sim_step_time_s", "sim_time_to_goal_s", "sim_cost_usd",
                 "sim_energy_j", "sim_feasible", "topology", "slices", "mesh"]
NOT_SIMULATED = (None,) * 5  # the sim_ columns of a row the cluster simulation did not re-check
NOT_PLACED = (None,) * 3     # topology, slices, mesh of a row off a TPU torus


def plan_frame(rows: Sequence[Evaluation], hardware: list[Hardware], layers: int | None = None,
               plan: PlanFile | None = None, top: list[Evaluation] | None = None,
               simulated: bool = False) -> pd.DataFrame:
    """The ranked rows as plan.csv's table. `layers`: the model's, to write each row's layers per stage
    (stage_layers, as in results.csv) also where the split is the default one. `plan`: to write each row's
    precision (dtype, and fp8_recipe for float8: planner.precisions) where a row's label is "".

    Two orders, said apart: `rank` (1 = best) and `pareto_front` are the analytic ones, by the roofline cost
    model's numbers, over every row; `top` is the plan's final order of its best (the printed table; top[0]
    is the winner best.yaml holds), which a `simulated` plan re-ordered by the cluster simulation
    (search.simulate_top). `rechecked_rank` is a row's place in that re-checked order (empty where the row
    was not re-checked, or the plan was not simulated) and `chosen` marks the winner.

    `rows`: search.Rows (their columns are read; `top` must be rows read from them) or a list of Evaluations.
    A number no row has (every row unpriced) is a column of None, as a table of Python records makes it."""
    table = rows if isinstance(rows, Rows) else Rows.from_evaluations(rows)
    configs, col, n = table.configs, table.columns, len(table)
    price = {h.name: h.usd_per_device_hour for h in hardware}
    per_node = {h.name: h.devices_per_node for h in hardware}

    def split_of(c: Config) -> str | None:
        split = c.stage_layers or (c.plan().layers_per_stage(layers) if layers else ())
        return describe_split(split) if split else None

    def precision_of(label: str) -> tuple[str | None, str | None]:
        w = workload_for(plan, label) if plan is not None else None
        return (w.dtype, w.fp8.recipe if w.fp8 is not None else None) if w is not None else (None, None)
    # the configurations' fields, a column at a time (Rows.field: the Python values, as records held them); the
    # columns that follow from a few distinct values (the split, the precision, the hardware's node size and price)
    # worked out once per distinct value
    field = table.field
    n_devices = field("n_devices")
    split_first, split_at = _distinct(field("stage_layers"), field("pp"), field("schedule"), field("virtual_stages"))
    stage_layers = _taken([split_of(configs[i]) for i in split_first.tolist()], split_at)
    label_first, label_at = _distinct(field("precision"))
    dtypes, recipes = zip(*(precision_of(configs[i].precision) for i in label_first.tolist())) if n else ((), ())
    hw_names, hw_at = _hardware_at(table)
    priced = col["priced"]

    def number(name: str, present: np.ndarray | None = None) -> Any:
        return _number(col, name, priced if present is None else present)

    def own(name: str) -> np.ndarray:
        """A field the frame holds as it is: a copy, so that writing into the frame (made with copy=False, below)
        never writes into the rows' own columns."""
        return field(name).copy()
    made = table.made()
    sims = {i: e.sim for i, e in made.items() if e.sim}
    sim_columns = [_sparse(n, {i: sim.get(k) for i, sim in sims.items()})
                   for k in ("step_time_s", "time_to_goal_s", "cost_usd", "energy_j", "feasible")]
    placed = any(map(bool, field("topology"))) or any(map(bool, field("mesh")))
    places = ([(("x".join(map(str, shape)) or None, n_slices if shape else None,
                 " ".join(f"{axis}:{dims}" for axis, dims in pins) or None) if shape or pins else NOT_PLACED)
               for shape, n_slices, pins in zip(field("topology").tolist(), field("slices").tolist(),
                                             field("mesh").tolist())] if placed else [])
    topology, slices, mesh = (list(x) for x in zip(*places)) if places else (_sparse(n, {}),) * 3
    everyone = np.ones(n, dtype=bool)
    data = {"strategy": table.names(), "dp": own("dp"), "tp": own("tp"), "pp": own("pp"), "cp": own("cp"),
            "ep": own("ep"), "sp": own("sp"), "zero": own("zero"), "micro_batch": own("micro_batch"),
            "microbatches": own("microbatches"), "schedule": _few(field("schedule")),
            "virtual_stages": own("virtual_stages"), "recompute": _few(field("recompute")),
            "stage_layers": stage_layers, "dtype": _taken(dtypes, label_at), "fp8_recipe": _taken(recipes, label_at),
            "hardware": _taken(hw_names, hw_at),
            "n_devices": own("n_devices"), "feasible": col["feasible"].copy(), "reason": table.reasons,
            "step_time_s": number("step_time_s"), "time_to_goal_s": number("time_to_goal_s"),
            "cost_usd": number("cost_usd"), "energy_j": number("energy_j"),
            "nodes": -(-n_devices // np.array([per_node[h] for h in hw_names], dtype=np.int64)[hw_at]),
            "tokens_per_s": number("tokens_per_s"), "latency_s": number("latency_s"),
            "mfu": number("mfu", priced & ~np.isnan(col["mfu"])),
            "peak_memory_bytes_per_device": number("memory_bytes", everyone),
            "memory_capacity_bytes": number("capacity_bytes", everyone),
            "compute_time_s": number("compute_time_s"), "comm_time_s": number("comm_time_s"),
            "bubble_time_s": number("bubble_time_s"), "other_time_s": number("other_time_s"),
            "power_w": number("power_w", everyone),
            "usd_per_device_hour": np.array([price[h] for h in hw_names], dtype=float)[hw_at],
            **dict(zip(("sim_step_time_s", "sim_time_to_goal_s", "sim_cost_usd", "sim_energy_j", "sim_feasible"),
                       sim_columns)),
            "topology": topology, "slices": slices, "mesh": mesh}
    names = STRATEGY_COLUMNS + CONTRACT_COLUMNS + EXTRA_COLUMNS
    # copy=False: each column stays the array made for it here (`own`, `number`, ...), not copied again into one
    # block per dtype (~100 MB of floats for the 70B plan's 404,694 rows, 0.1-0.3 s)
    frame = (pd.DataFrame({k: data[k] for k in names}, index=pd.RangeIndex(n), copy=False) if n else
             pd.DataFrame.from_records([], columns=names))  # no row: every column of objects, as records make it
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    rechecked = pd.arrays.IntegerArray(np.zeros(len(frame), dtype=np.int64), np.ones(len(frame), dtype=bool))  # <NA>s
    chosen = np.zeros(len(frame), dtype=bool)
    place = {id(e): i for i, e in made.items()}  # the top rows' places: rows read from `table`
    for k, e in enumerate(top or [], start=1):
        if simulated:
            rechecked[place[id(e)]] = k
        chosen[place[id(e)]] = k == 1
    frame.insert(1, "rechecked_rank", rechecked)
    frame.insert(2, "chosen", chosen)
    return mark_pareto_front(frame)


def _hardware_at(table: Rows) -> tuple[list[str], np.ndarray]:
    """(the hardware choices' names, in the order rows first have them; each row's index into those)."""
    first, at = _distinct(table.field("hardware"))
    return [table.configs[i].hardware for i in first.tolist()], at


def _number(col: dict[str, np.ndarray], name: str, present: np.ndarray) -> Any:
    """A float column of Rows.columns (NaN where not `present`); None throughout where no row has the number."""
    return np.where(present, col[name], np.nan) if present.any() else [None] * len(present)


def _taken(distinct: Sequence[Any], at: np.ndarray) -> Any:
    """The column pandas makes of the list [distinct[i] for i in at], built from the distinct values: pandas infers
    a column's dtype from the kinds of value present (text, None, numbers), which are those of `distinct` when
    each is taken at least once, and the rows are then taken at once (for text, an arrow take)."""
    return pd.Series(list(distinct), dtype=None if len(distinct) else object).array.take(at)


def _few(values: np.ndarray) -> Any:
    """The column pandas makes of `values` (objects, few of them distinct), as _taken."""
    at, distinct = pd.factorize(values, use_na_sentinel=False)
    return _taken(list(distinct), at)


def _sparse(n: int, values: dict[int, Any]) -> Any:
    """The column pandas makes of a list of n Nones with `values` (row -> value) at their rows: inferred from None
    and the values, as from the whole list (re-checked rows' simulated numbers: float; their verdicts: objects)."""
    if len(values) == n:
        return [values[i] for i in range(n)]
    at = np.zeros(n, dtype=np.int64)
    at[list(values)] = np.arange(1, len(values) + 1)
    return _taken([None, *values.values()], at)


def _distinct(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each distinct combination of the columns' values, each row's combination as an index
    into those), for columns of few distinct values."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:
        codes, uniques = pd.factorize(column, use_na_sentinel=False)
        key = key * len(uniques) + codes
    _, first, at = np.unique(key, return_index=True, return_inverse=True)
    return first, at


def compact_frame(frame: pd.DataFrame, per_hardware: int) -> pd.DataFrame:
    """plan.csv's rows: the Pareto front of the feasible configurations (cost against time to goal, over all
    hardware), the first `per_hardware` rows of each hardware choice (by rank) and the rows re-checked by
    simulation (so the chosen one is always there), in rank order."""
    keep = frame.groupby("hardware", sort=False).head(per_hardware).index
    return frame.loc[frame.index.isin(keep) | frame["pareto_front"] | frame["rechecked_rank"].notna() | frame["chosen"]]


def mark_pareto_front(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a boolean column `pareto_front`: the feasible rows no other feasible row beats on both
    cost and time to goal."""
    feasible = frame.index[frame["feasible"].astype(bool) & frame["step_time_s"].notna()]
    on = np.zeros(len(frame), dtype=bool)
    if len(feasible):
        sub = frame.loc[feasible]
        front = pareto_front(sub["cost_usd"].to_numpy(float), sub["time_to_goal_s"].to_numpy(float))
        on[frame.index.get_indexer(feasible[front])] = True
    frame["pareto_front"] = on
    return frame


def pareto_front(cost: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both cost and time (lower is better), by time."""
    order = np.lexsort((cost, time))
    front, best = [], np.inf
    for i in order:
        if cost[i] < best:
            front.append(i)
            best = cost[i]
    return np.array(front, dtype=int)


FIGURE_COLUMNS = ["hardware", "feasible", "time_to_goal_s", "cost_usd"]  # what the Pareto figure reads


@dataclass(frozen=True)
class ParetoTask:
    """What figures/pareto.png is drawn from (planner.figure), picklable: it crosses to the worker that draws it."""

    points: pd.DataFrame       # pareto_points of the plan's table
    plan: PlanFile
    winner: int | None         # the chosen row's index in the table, starred; None: nothing meets the goal


def pareto_points(rows: Rows) -> pd.DataFrame:
    """The rows of plan_frame(rows, ...) that the Pareto figure draws, the priced ones (a step time), and only the
    columns it reads, made from `rows` as plan_frame makes them: a copy of every column costs more than the
    drawing, and these are what the worker that draws it is sent, before the table is built."""
    col, n = rows.columns, len(rows)
    if not n:
        return pd.DataFrame(columns=FIGURE_COLUMNS)
    names, at = _hardware_at(rows)
    priced = col["priced"]
    points = pd.DataFrame({"hardware": _taken(names, at), "feasible": col["feasible"],
                           "time_to_goal_s": _number(col, "time_to_goal_s", priced),
                           "cost_usd": _number(col, "cost_usd", priced)}, index=pd.RangeIndex(n), copy=False)
    return points.loc[pd.notna(_number(col, "step_time_s", priced)), FIGURE_COLUMNS]


def pareto_task(rows: Rows, plan: PlanFile, top: Sequence[Evaluation]) -> ParetoTask:
    """The figure of `rows` (`top[0]`, the winner, starred: a row read from them)."""
    winner = next(i for i, e in rows.made().items() if e is top[0]) if top else None
    return ParetoTask(pareto_points(rows), plan, winner)


# plan.parquet's columns of few distinct values (the strategy fields, the hardware's, the reasons), which Parquet
# stores as a dictionary of their values; the others (a number per configuration, its name) plainly, which for
# them is smaller and faster to write than a dictionary tried on every column and given up (booleans are
# run-length encoded either way).
DICTIONARY_COLUMNS = ([c for c in STRATEGY_COLUMNS if c not in ("strategy", "sp")]
                      + ["rechecked_rank", "hardware", "n_devices", "reason", "nodes", "memory_capacity_bytes",
                         "power_w", "usd_per_device_hour", "topology", "slices", "mesh"])


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """The whole table as Parquet (pyarrow; `pandas.read_parquet(path)` reads it back). `sim_feasible`, empty
    but for the re-checked rows, is written as a nullable boolean; DICTIONARY_COLUMNS dictionary-encoded."""
    out = frame.assign(sim_feasible=frame["sim_feasible"].astype("boolean"))  # the other columns not copied
    out.to_parquet(path, index=False, engine="pyarrow", use_dictionary=DICTIONARY_COLUMNS)


def best_scenario(plan: PlanFile, e: Evaluation, hw: Hardware) -> dict[str, Any]:
    """A scenario (plain data) that reproduces configuration `e` with `llmsim run` (roofline and cluster)."""
    c = e.config
    spec = hw.cluster_of(c)
    cluster: dict[str, Any] = {"hardware": hw.name, "nodes": spec.nodes, "devices_per_node": spec.devices_per_node,
                               "intra_node": spec.intra.name, "inter_node": spec.inter.name}
    chosen = plan.options.model_dump(mode="json", exclude_defaults=True)  # the plan's options, as settings keys
    if c.topology:  # a TPU: its slices' shape and the mapping, devices per node following from the shape
        del cluster["devices_per_node"]
        cluster["topology"] = "x".join(map(str, c.topology))
        if c.mesh:
            cluster["mesh"] = dict(c.mesh)
    strategy = c.strategy().model_dump(mode="json", exclude_defaults=True)
    strategy = {"name": c.name, **{k: v for k, v in strategy.items() if k != "name"}}
    return {
        "name": f"{plan.name}-best",
        **hw.catalog_key(),
        "workload": workload_for(plan, c.precision).model_dump(mode="json"),  # the precision the plan priced
        "sharing": plan.sharing.model_dump(mode="json", exclude_none=True),
        "strategies": [strategy],
        "backends": {"roofline": dict(cluster, **chosen), "cluster": dict(cluster, **chosen, trace=False)},
    }


def best_yaml(plan: PlanFile, e: Evaluation, hw: Hardware) -> str:
    head = (f"# The winner of plan {plan.name!r} ({plan.objective}): {describe(e)}.\n"
            f"# Modeled: {fmt_duration(e.time_to_goal_s)}, {fmt_usd(e.cost_usd)}, {fmt_energy(e.energy_j)}.\n"
            f"#   llmsim run best.yaml\n")
    return head + yaml.safe_dump(best_scenario(plan, e, hw), sort_keys=False, default_flow_style=None, width=110)


def meets_goal(e: Evaluation, simulated: bool) -> str:
    """A row's "meets goal": yes, or the limits it breaks, compared exactly (search.judge, no tolerance); a row the
    cluster simulation re-checked meets it only if its simulated numbers do too, the table showing both (trial 48:
    a row was "yes" beside a simulated time 0.3% past the deadline)."""
    if not e.feasible:
        return e.reason or "no"
    if simulated and e.sim and not e.sim.get("feasible", True):
        return f"no, as simulated: {e.sim.get('reason') or 'a limit broken'} (as estimated: yes)"
    return "yes"


_UNITS = {"days": 86400.0, "h": 3600.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6}


def duration_against(seconds: float | None, bound_s: float | None) -> str:
    """fmt_duration of `seconds`, with as many more decimals (up to 6) as it takes to read on the same side of
    `bound_s` (the deadline, the latency limit) as it is: 17.152 days under a deadline of 17.17 is "17.15 days",
    not "17.2 days" (trial 48: the table seemed to call a time past the goal "yes")."""
    text = fmt_duration(seconds)
    if seconds is None or bound_s is None or not math.isfinite(seconds) or " " not in text:
        return text
    number, unit = text.rsplit(" ", 1)
    scale = _UNITS.get(unit)
    if scale is None or "e" in number:
        return text
    digits = len(number.split(".")[1]) if "." in number else 0
    value, bound = seconds / scale, bound_s / scale
    for d in range(digits, max(digits, 6) + 1):
        shown = f"{value:,.{d}f}"
        if (float(shown.replace(",", "")) > bound) == (value > bound):
            return f"{shown} {unit}"
    return text


def rate_against(rate: float | None, bound: float | None) -> str:
    """A tokens/s figure, with decimals where whole tokens would read on the other side of the goal's rate."""
    if rate is None:
        return "–"
    for d in range(0, 4):
        shown = f"{rate:,.{d}f}"
        if bound is None or (float(shown.replace(",", "")) < bound) == (rate < bound):
            return shown
    return shown


def _table(rows: list[Evaluation], plan: PlanFile, simulated: bool) -> Any:
    from llmsim.report.document import Cell, Table

    train = plan.workload.mode == "train"
    bound = plan.goal.deadline_s if train else plan.goal.max_step_latency_s
    cols = ["#", "configuration", "time to goal" if train else latency_name(plan)] + ([] if train else ["tokens/s"]) \
        + ["cost" if train else "cost / hour", "energy" if train else "energy / hour", "devices", "memory/device",
           "meets goal"]
    if simulated:
        cols += ["simulated time" if train else f"simulated {latency_name(plan)}", "simulated cost"]
    out = []
    for i, e in enumerate(rows, 1):
        # the numbers the goal is judged on, each written on the side of the goal it is (meets_goal)
        rate = [] if train else [Cell(rate_against(e.tokens_per_s, plan.goal.tokens_per_s), e.tokens_per_s)]
        cells = [Cell(str(i), i), Cell(describe(e)), Cell(duration_against(e.time_to_goal_s, bound), e.time_to_goal_s),
                 *rate,
                 Cell(fmt_usd(e.cost_usd), e.cost_usd), Cell(fmt_energy(e.energy_j), e.energy_j),
                 Cell(f"{e.config.n_devices:,}", e.config.n_devices), Cell(fmt_bytes(e.memory_bytes), e.memory_bytes),
                 Cell(meets_goal(e, simulated))]
        if simulated:
            cells += [Cell(duration_against(e.sim.get("time_to_goal_s"), bound),  # type: ignore[arg-type]
                           e.sim.get("time_to_goal_s")),  # type: ignore[arg-type]
                      Cell(fmt_usd(e.sim.get("cost_usd")), e.sim.get("cost_usd"))]  # type: ignore[arg-type]
        out.append(cells)
    numeric = [True, False, True] + ([] if train else [True]) + [True, True, True, True, False] \
        + ([True, True] if simulated else [])
    return Table(cols, out, numeric)


def choice_section(explanation: Explanation) -> Any:
    """What limits the winner and the runner-up, the one change that would move each most, and the ±20%
    sensitivity table (explain.limit_of, explain.training_sensitivity / serving_sensitivity)."""
    from llmsim.report.document import Bullets, Cell, Paragraph, Section, Table

    blocks: list[Any] = [Bullets(explanation.choice)] if explanation.choice else []
    s = explanation.sensitivity
    if s is not None:
        blocks.append(Paragraph(f"Sensitivity: the winner ({s.winner}) and the runner-up ({s.runner_up}) "
                                f"re-priced by {s.priced_by} with one hardware number moved by ±20%; the "
                                f"{s.metric} of each, and which would rank first."))
        rows = [[Cell(c) for c in r] for r in sensitivity_rows(s)]
        blocks.append(Table(["what-if", "winner", "runner-up", "ranks first"], rows, [False, True, True, False]))
    return Section("Limits and sensitivity", blocks or [Paragraph("Only one configuration meets the goal.")])


def plan_document(plan: PlanFile, explanation: Explanation, top: list[Evaluation], closest: list[Evaluation],
                  stats: SearchStats, hardware: list[Hardware], figure_png: bytes | None, simulated: bool) -> Any:
    from llmsim.report.document import Bullets, Document, Figure, Paragraph, Point, Section

    g = plan.goal
    goal = (f"{g.tokens:,.3g} tokens" + (f" within {g.deadline_days:g} days" if g.deadline_days else "")
            if plan.workload.mode == "train" else
            f"{g.tokens_per_s:,.0f} tokens/s" + (f", {latency_name(plan)} at most {g.max_step_latency_s * 1e3:g} ms"
                                                 if g.max_step_latency_s else ""))
    summary = [Point(explanation.headline, explanation.winner or explanation.limiting)]
    sections = []
    if top:
        sections.append(Section("Best configurations", [
            Paragraph(f"The first {len(top)} configurations that meet the goal, by {plan.objective}"
                      + (", re-checked by the SimPy cluster simulation and ordered by its numbers; \"meets goal\" "
                         "is yes where both the estimate and the simulation meet it, each compared exactly (no "
                         "tolerance)." if simulated else " (roofline cost model); \"meets goal\" compares exactly "
                                                        "(no tolerance).")),
            _table(top, plan, simulated)]))
        sections.append(Section("Why", [Paragraph("Winner: " + describe(top[0])), Bullets(explanation.winner)]
                                + [b for rank, (name, lines) in enumerate(explanation.runners_up, start=2)
                                   # "#2", not "Runner-up": a tied row is listed too, and the runner-up of the
                                   # limits and the sensitivity is the best that prices differently
                                   for b in (Paragraph(f"#{rank}: " + name), Bullets(lines))]))
        sections.append(choice_section(explanation))
    else:
        sections.append(Section("What limits", [Bullets(explanation.limiting)]))
        if closest:  # none fits in memory: no row to list (an empty table said nothing), "What limits" says why
            sections.append(Section("Closest configurations", [_table(closest, plan, False)]
                                    + [b for name, lines in explanation.closest
                                       for b in (Paragraph(name), Bullets(lines))]))
    sections.append(Section("Cost against time", [Figure(
        "pareto", "Cost against time to goal", "each dot a priced configuration; coloured: meets the goal, grey: misses it",
        png=figure_png, skipped=None if figure_png else "no configuration could be priced")]))
    limits = ", ".join(f"{k}: {v:,}" for k, v in sorted(explanation.limit_counts.items(), key=lambda kv: -kv[1]))
    prices = [f"{h.name}: ${h.usd_per_device_hour:g} per device-hour"
              + (" (an example price, not a quote — set usd_per_device_hour)" if h.example_price else "")
              + f", {h.devices_per_node} per node" for h in hardware]
    sections.append(Section("Search", [Bullets([
        # trial 41: "3,980 priced" beside the terminal's "pricing 34,758" and "63,420 screened", and "in 0.4 s" of
        # a 23 s plan, did not add up: each count is named by what happened to it, and the seconds by what they time
        f"{stats.screened:,} configurations screened in {stats.seconds:.1f} s of search "
        f"({stats.screened / max(stats.seconds, 1e-9):,.0f}/s; tracing the workload and the re-checks come on top): "
        f"{stats.pruned_by_group:,} skipped whole because weights and optimizer state alone overflow; of the rest, "
        f"{stats.priced:,} priced within memory, {stats.memory_rejected:,} priced and over memory, "
        f"{stats.pruned_by_micro_batch:,} dropped because a smaller micro-batch already overflows; "
        f"{stats.feasible:,} meet the goal.",
        f"limits broken (a configuration may break several): {limits or 'none'}.",
        *prices,
        *(f"no candidates: {note}" for note in explanation.precision_notes),
        f"plan.csv lists the feasible Pareto front and the best {plan.csv_top} of each hardware choice; "
        "plan.parquet every configuration evaluated one by one, ranked (pandas.read_parquet)"
        + ("; best.yaml reproduces the winner with `llmsim run best.yaml`." if top else
           "; no best.yaml: nothing meets the goal.")])]))
    meta = plan_meta(plan, f"{plan.workload.mode}, batch {plan.workload.batch}", goal)
    return Document(f"llmsim plan: {plan.name}", summary, sections, meta)


def scheduler_settings(scheduler: Any) -> str:
    """A serving plan's scheduler as plan.md's header states it: its kind and every key set away from its
    default ("continuous, fuse_allreduce_rms: true"), so a report says what its engine was priced with (trial 48:
    vLLM's all-reduce + RMSNorm fusion showed in best.yaml only)."""
    chosen = scheduler.model_dump(mode="json", exclude_defaults=True)
    kind = chosen.pop("kind", scheduler.kind)
    return ", ".join([str(kind)] + [f"{k}: {str(v).lower() if isinstance(v, bool) else v}"
                                    for k, v in chosen.items()])


def plan_meta(plan: PlanFile, what: str, goal: str) -> list[tuple[str, str]]:
    """The report's header lines of a plan (training, inference or serving: `what` says which)."""
    model = plan.workload.model.preset or "custom"
    dtypes = f"{plan.workload.dtype}" if not plan.search.dtype else \
        f"precision searched: {', '.join(plan.search.dtype)}"
    if plan.serving is not None and plan.serving.kv_cache_dtype != "auto":
        dtypes += f", KV cache {plan.serving.kv_cache_dtype}"
    # the options the plan was priced with (plan.yaml's `options:`; best.yaml carries them into its backends), so
    # that two plans' reports say when they priced different recipes or kernels
    chosen = plan.options.model_dump(mode="json", exclude_defaults=True)
    options = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in chosen.items())
    unpriced = [k for k in chosen if k in TRAINING_ONLY_OPTIONS] if plan.workload.mode != "train" else []
    if unpriced:   # a training recipe in an inference or serving plan prices nothing (runner.training_option_notes)
        options += f" ({', '.join(unpriced)}: not priced, this plan has no optimizer step)"
    return [("plan", plan.name), ("workload", f"{model} {what}, {dtypes}"),
            ("goal", goal), ("objective", plan.objective),
            ("limits", (f"min_devices {plan.limits.min_devices:,}, " if plan.limits.min_devices > 1 else "")
             + f"max_devices {plan.limits.max_devices:,}" + (
                f", max_power_w {plan.limits.max_power_w:,.0f}" if plan.limits.max_power_w else "")),
            # a fresh user's report: the header did not say which axes the plan's search narrowed
            ("search narrowed to", narrowed_axes(plan)),
            ("options", options or "none: the cost model's defaults"),
            *([("serving scheduler", scheduler_settings(plan.serving.scheduler))] if plan.serving is not None else []),
            # trial 41: a plan's absolute figure (176 days) carried no error bar
            ("accuracy", "how close the cost model comes to published runs of this kind: llmsim's docs/validation.md, "
                         "section 'Result now' (median |error| per dev table)")]


def write_outputs(run_dir: Path, plan: PlanFile, frame: pd.DataFrame, explanation: Explanation,
                  top: list[Evaluation], closest: list[Evaluation], stats: SearchStats, hardware: list[Hardware],
                  simulated: bool, figure: Callable[[], bytes]) -> list[Path]:
    """plan.parquet (every row), plan.csv (`compact_frame`), best.yaml (when something is feasible), plan.yaml,
    figures/pareto.png (when a configuration was priced), plan.md and plan.html. `figure()`: the PNG's bytes (`run.pareto_png`), asked for once the
    tables are written (run.py draws it meanwhile beside this process: Executor.beside)."""
    from llmsim.report.html import render_html
    from llmsim.report.markdown import render_markdown
    table, csv = run_dir / "plan.parquet", run_dir / "plan.csv"
    write_parquet(frame, table)
    compact_frame(frame, plan.csv_top).to_csv(csv, index=False)  # full precision: the numbers the terminal and plan.parquet show
    written = [table, csv]
    if top:
        hw = {h.name: h for h in hardware}[top[0].config.hardware]
        write_atomic(run_dir / "best.yaml", best_yaml(plan, top[0], hw))
    write_atomic(run_dir / "plan.yaml", yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False))
    png = figure()   # b"": no configuration was priced, no point to draw (run.pareto_png); plan.md says so
    if png:
        (run_dir / "figures").mkdir(exist_ok=True)
        (run_dir / "figures" / "pareto.png").write_bytes(png)
        written.append(run_dir / "figures" / "pareto.png")
    doc = plan_document(plan, explanation, top, closest, stats, hardware, png or None, simulated)
    write_atomic(run_dir / "plan.md", render_markdown(doc))
    write_atomic(run_dir / "plan.html", render_html(doc))
    written += [run_dir / "plan.md", run_dir / "plan.html"] + ([run_dir / "best.yaml"] if top else [])
    return written
