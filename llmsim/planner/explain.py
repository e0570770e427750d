"""Why a configuration wins, why the others lose, and — when nothing meets the goal — what limits.

Pure functions of evaluated rows: sentences for the report, the terminal and the tests. A winner is
explained by where its step goes (compute, exposed communication, pipeline bubble), its memory
headroom and its largest memory item; a runner-up additionally by what it costs against the winner.
When no configuration is feasible, the closest misses are listed with the limits they break, and the
plan as a whole is diagnosed: no configuration fits in memory; the deadline (or latency, throughput)
cannot be met within the device limit; or only the power limit stands in the way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from llmsim.planner.config import PlanFile
from llmsim.planner.search import Evaluation, Rows, SearchStats, first_rows
from llmsim.planner.whatif import KNOBS, SENSITIVITY_FACTORS, knob_label, perturb_cluster
from llmsim.report.units import fmt_bytes

LIMIT_WORDS = {"memory": "memory (does not fit)", "deadline": "deadline", "latency": "step latency",
               "throughput": "throughput", "power": "power limit", "devices": "device limit",
               "error": "cannot be priced"}


def _pct(x: float) -> str:
    return f"{x:.0%}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds >= 86400 * 365 * 1000:   # a goal no run reaches: '5.08e+18 days', not nineteen digits and '.0'
        return f"{seconds / 86400:.3g} days"
    if seconds >= 86400:
        return f"{seconds / 86400:,.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"  # not '0.0 ms': a small model's token step


def fmt_usd(x: float | None) -> str:
    return "–" if x is None else f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def fmt_energy(j: float | None) -> str:
    if j is None:
        return "–"
    return f"{j / 3.6e9:,.1f} MWh" if j >= 3.6e9 else f"{j / 3.6e6:,.1f} kWh"


def describe(e: Evaluation) -> str:
    """'h100-sxm x 2048: dp1024 tp2 sp pp1 zero3 mb1 none'."""
    c = e.config
    parts = [f"dp{c.dp}", f"tp{c.tp}" + (" sp" if c.sp else ""), f"pp{c.pp}"]
    if c.cp > 1:
        parts.append(f"cp{c.cp}")
    if getattr(c, "ep", 1) > 1:
        parts.append(f"ep{c.ep}")
    parts += [f"ZeRO-{c.zero}", f"micro-batch {c.micro_batch}", f"recompute {c.recompute}"]
    if c.pp > 1:
        parts.append(c.schedule + (f" v={c.virtual_stages}" if c.schedule == "interleaved" else ""))
    if c.describe_split():
        parts.append(c.describe_split())
    if getattr(c, "precision", ""):  # a searched precision (planner.precisions); "" = the plan's workload dtype
        parts.append(c.precision.replace("-", " ", 1))
    if getattr(c, "topology", ()):
        parts.append(c.describe_slices())
    return f"{c.n_devices} x {c.hardware} ({', '.join(parts)})"


def latency_name(plan: PlanFile) -> str:
    """What an inference plan's latency is a latency of: decode 'token step' (one generated token for every
    sequence in flight, what max_step_latency_s limits), prefill 'prefill step'; training 'step'."""
    return {"decode": "token step", "prefill": "prefill step"}.get(plan.workload.mode, "step")


def step_name(plan: PlanFile) -> str:
    """What step_time_s is: decode 'generation' (the prompt's prefill and every generated token of a batch),
    else the latency's name."""
    w = plan.workload
    if w.mode == "decode":
        return (f"generation ({w.batch} sequences: a {w.model.seq_len}-token prompt, then {w.decode_tokens} "
                f"tokens each)")
    return latency_name(plan)


def fmt_rate(tokens_per_s: float | None) -> str:
    return "–" if tokens_per_s is None else f"{tokens_per_s:,.0f} tokens/s"


def step_shares(e: Evaluation) -> dict[str, float]:
    """Shares of the step: compute, exposed communication, bubble, other (optimizer)."""
    step = e.step_time_s or 0.0
    if step <= 0:
        return {}
    return {"compute": (e.compute_time_s or 0) / step, "communication": (e.comm_time_s or 0) / step,
            "bubble": (e.bubble_time_s or 0) / step, "other": (e.other_time_s or 0) / step}


def why(e: Evaluation, plan: PlanFile) -> list[str]:
    """Where the step goes and how much memory is left, in sentences."""
    out: list[str] = []
    shares = step_shares(e)
    if shares:
        if plan.workload.mode == "decode":
            out.append(f"{latency_name(plan)} {fmt_duration(e.latency_s)} ({fmt_rate(e.tokens_per_s)}); one "
                       f"{step_name(plan)} takes {fmt_duration(e.step_time_s)}")
        out.append(f"{step_name(plan).split(' (')[0]} {fmt_duration(e.step_time_s)}: compute "
                   f"{_pct(shares['compute'])}, exposed communication {_pct(shares['communication'])}, pipeline "
                   f"bubble {_pct(shares['bubble'])}, optimizer/other {_pct(shares['other'])}"
                   + (f"; MFU {e.mfu:.0%}" if e.mfu else ""))
    if e.capacity_bytes:
        kept = plan.limits.memory_headroom
        largest = max(e.memory_detail.items(), key=lambda kv: kv[1], default=("", 0.0))
        usable = (f"{fmt_bytes(e.capacity_bytes)} usable: {fmt_bytes(e.capacity_bytes / (1 - kept))} less the "
                  f"{_pct(kept)} memory_headroom" if kept else f"{fmt_bytes(e.capacity_bytes)} (memory_headroom 0)")
        out.append(f"memory {fmt_bytes(e.memory_bytes)} per device of {usable}; "
                   f"{fmt_bytes(max(e.capacity_bytes - e.memory_bytes, 0.0))} to spare; largest: "
                   f"{largest[0].replace('_', ' ')} {fmt_bytes(largest[1])}")
    if shares:
        dominant = max(("communication", "bubble"), key=lambda k: shares[k])
        if shares[dominant] >= 0.15:
            comm = ("more tensor parallelism inside a node or less ZeRO traffic would shorten it"
                    if plan.workload.mode == "train" else
                    "fewer devices per replica (less tensor parallelism, more dp) would shorten it")
            hint = {"communication": comm,
                    "bubble": "more micro-batches or an interleaved schedule would shrink it"}[dominant]
            out.append(f"{dominant} is {_pct(shares[dominant])} of the {step_name(plan).split(' (')[0]}: {hint}")
    if e.reason:
        out.append("misses: " + e.reason)
    return out


# The ranking's order of measures per objective (planner.search.objective_key: the objective, then its ties).
RANK_ORDER = {"cost": ("cost", "time", "devices"), "time": ("time", "cost", "devices"),
              "energy": ("energy", "time", "cost"), "devices": ("devices", "cost", "time")}


def _measure(e: Evaluation, name: str) -> float | None:
    return {"cost": e.cost_usd, "time": e.time_to_goal_s, "energy": e.energy_j,
            "devices": float(e.config.n_devices)}[name]


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def tie_text(e: Evaluation, best: Evaluation, objective: str, time_name: str = "time to goal",
             rate_goal: bool = False) -> str | None:
    """None unless `e` ties the winner on the objective; else what they tie on and what ranks the winner
    first: 'ties the winner on cost ($72.00 each); ranked second by token step: 7.5 ms against 7.2 ms', or,
    equal on every measure, that only the configurations' names order them (either is as good).

    `rate_goal`: an inference plan, whose goal is a tokens/s floor: a tie that serves more tokens/s than the
    winner says so, as the ranking (objective_key) does not count a rate past the goal."""
    order = RANK_ORDER[objective]
    if not _same(_measure(e, order[0]), _measure(best, order[0])):
        return None
    label = {"time": time_name, "cost": "cost", "energy": "energy", "devices": "devices"}
    shown = {"cost": fmt_usd, "time": fmt_duration, "energy": fmt_energy, "devices": lambda x: f"{x:,.0f}"}
    tied = list(order)
    for i, m in enumerate(order):  # the measures they tie on, in the ranking's order, up to the one that decides
        if not _same(_measure(e, m), _measure(best, m)):
            tied = list(order[:i])
            break
    first = [m for m in order if m not in tied]
    ties = " and ".join(label[m] for m in tied)
    values = "; ".join(f"{label[m]} {shown[m](_measure(best, m))} each" for m in tied)
    if not first:
        return (f"ties the winner on {ties} ({values}): the configurations' names order them only, so either is "
                f"as good")
    m = first[0]
    more = ""
    rate, best_rate = getattr(e, "tokens_per_s", None), getattr(best, "tokens_per_s", None)
    if rate_goal and rate and best_rate and rate > best_rate and not _same(rate, best_rate):
        more = (f"; it serves more tokens/s ({rate:,.0f} against {best_rate:,.0f}), which the ranking does not "
                f"count once the goal's rate is met")
    return (f"ties the winner on {ties} ({values}); ranked below it by the tie-break, {label[m]}: "
            f"{shown[m](_measure(e, m))} against the winner's {shown[m](_measure(best, m))}{more}")


# The numbers two configurations must share to price alike: what the plan ranks on and shows (step, time to
# goal, cost, energy; an inference plan's rate and latency), and, when the plan re-checked them, the simulation's.
PRICE_FIELDS = ("step_time_s", "time_to_goal_s", "cost_usd", "energy_j", "tokens_per_s", "latency_s")
SIM_PRICE_FIELDS = ("step_time_s", "time_to_goal_s", "cost_usd", "energy_j")


def prices_alike(a: Evaluation, b: Evaluation) -> bool:
    """Whether two configurations price alike: the same device count and every PRICE_FIELDS number equal to a
    relative 1e-9 (a reordering of float operations, not a difference of the model; None only with None), and
    the same for the simulation's numbers when both were re-checked. Such configurations differ only in how
    the same work is arranged (e.g. dp 512 x micro-batch 1 against dp 128 x cp 4 x micro-batch 4: the same
    tokens per device, the context-parallel exchange hidden under attention), so neither tells the other
    anything."""
    if a.config.n_devices != b.config.n_devices:
        return False
    pairs = [(getattr(a, f), getattr(b, f)) for f in PRICE_FIELDS]
    if a.sim and b.sim:
        pairs += [(a.sim.get(f), b.sim.get(f)) for f in SIM_PRICE_FIELDS]
    return all((x is None and y is None) or _same(x, y) for x, y in pairs)


def _alike_mask(rows: Rows, winner: Evaluation) -> np.ndarray:
    """prices_alike(row, winner) over every row of `rows`, on their columns (table prices only)."""
    alike = rows.field("n_devices") == winner.config.n_devices
    for f in PRICE_FIELDS:
        column, value = rows.columns[f], getattr(winner, f)
        alike &= (np.isnan(column) if value is None
                  else np.abs(column - value) <= 1e-9 * np.maximum(np.abs(column), abs(value)))
    return alike


def distinct_runner_up(top: list[Evaluation], rows: Sequence[Evaluation]) -> tuple[Evaluation | None, list[Evaluation]]:
    """The runner-up that the limits and the sensitivity compare with the winner `top[0]`, and the feasible
    configurations that price alike with the winner (prices_alike), best-ranked first.

    The runner-up is the best-ranked feasible configuration that does not price alike: among the re-checked
    `top` first, then among the other rows in their (table) order. A configuration that prices alike would tie
    the winner in every what-if too, and the sensitivity would say nothing. None when every feasible row prices
    alike. The ties are counted over `rows` (on their columns for search.Rows) and listed in rank order."""
    winner = top[0]
    runner = next((e for e in top[1:] if not prices_alike(e, winner)), None)
    if isinstance(rows, Rows):
        alike = _alike_mask(rows, winner) & rows.columns["feasible"]
        try:
            alike[rows.index_of(winner)] = False
        except ValueError:
            pass
        if runner is None:
            others = np.flatnonzero(rows.columns["feasible"] & ~alike)
            mine = {id(e) for e in top}
            runner = next((rows[i] for i in others.tolist() if id(rows[i]) not in mine), None)
        ties = [rows[i] for i in np.flatnonzero(alike).tolist()]
        # a re-checked row ties only if the simulation prices it alike too
        return runner, [e for e in ties if not e.sim or prices_alike(e, winner)]
    ties = [e for e in rows if e.feasible and e is not winner and prices_alike(e, winner)]
    if runner is None:
        mine = {id(e) for e in top}   # by identity: two rows can be equal as dataclasses
        runner = next((e for e in rows if e.feasible and id(e) not in mine and not prices_alike(e, winner)), None)
    return runner, ties


def tie_line(ties: list[Evaluation], runner_up: Evaluation | None, winner: Evaluation | None = None,
             shown: int = 3) -> str | None:
    """The sentence that says which configurations price exactly as the winner, in which strategy fields they
    differ from it (given the winner), and which one the runner-up is instead; None without ties."""
    if not ties:
        return None
    names = "; ".join(describe(e) for e in ties[:shown]) + (f"; {len(ties) - shown:,} more" if len(ties) > shown else "")
    fields = [f.replace("_", "-") for f in CHANGE_FIELDS
              if winner is not None and any(getattr(e.config, f) != getattr(winner.config, f) for e in ties)]
    apart = (f"they differ from it only in {', '.join(fields)}: the same step, whatever these change hidden under "
             f"it or cancelling out" if fields else "the same work per device, arranged otherwise")
    head = (f"{len(ties):,} other configuration{'s' if len(ties) != 1 else ''} price{'' if len(ties) != 1 else 's'} "
            f"exactly as the winner ({apart}): {names}")
    return head + (f"; the runner-up is the best that prices differently: {describe(runner_up)}" if runner_up
                   else "; every other feasible configuration prices alike, so there is no runner-up to compare")


def versus(e: Evaluation, best: Evaluation, objective: str, time_name: str = "time to goal",
           rate_goal: bool = False) -> str:
    """How a runner-up compares to the winner on the objective and on time; a tie on the objective says so
    and names the measure that ranks them (tie_text)."""
    def rel(a: float | None, b: float | None) -> str:
        if a is None or b is None or b == 0:
            return "–"
        change = a / b - 1
        # a difference under half a percent would print as "+0%", which reads as a tie: show its digits
        if change == 0 or abs(change) >= 0.005:
            return f"{change:+.0%}"
        return f"{change * 100:+.2f}%" if abs(change) >= 1e-4 else ("+" if change > 0 else "-") + "<0.01%"
    tie = tie_text(e, best, objective, time_name, rate_goal)
    return ((f"{tie}; " if tie else "")
            + f"against the winner: cost {rel(e.cost_usd, best.cost_usd)}, time "
            f"{rel(e.time_to_goal_s, best.time_to_goal_s)}, energy {rel(e.energy_j, best.energy_j)}, devices "
            f"{e.config.n_devices} vs {best.config.n_devices}")


@dataclass
class Explanation:
    headline: str
    winner: list[str] = field(default_factory=list)
    runners_up: list[tuple[str, list[str]]] = field(default_factory=list)
    limiting: list[str] = field(default_factory=list)     # no feasible configuration: what limits
    closest: list[tuple[str, list[str]]] = field(default_factory=list)
    limit_counts: dict[str, int] = field(default_factory=dict)
    limits: list["Limit"] = field(default_factory=list)          # the winner's and the runner-up's
    sensitivity: "Sensitivity | None" = None                   # +-20% what-ifs on the two
    choice: list[str] = field(default_factory=list)             # choice_lines of the two above
    precision_notes: list[str] = field(default_factory=list)    # searched precisions a hardware cannot run


def diagnose(rows: Sequence[Evaluation], stats: SearchStats, plan: PlanFile) -> list[str]:
    """What keeps the goal out of reach, most fundamental first (memory, then device limit / goal, power)."""
    priced = [e for e in rows if e.step_time_s is not None]
    if not rows and stats.screened == 0:   # nothing formed at all: the device range, not memory (trial 44)
        lo, hi = plan.limits.min_devices, plan.limits.max_devices
        between = f"from min_devices={lo:,} to max_devices={hi:,}" if lo > 1 else f"up to max_devices={hi:,}"
        return [f"devices: the search forms no configuration {between}: only whole nodes (or part of one node) are "
                "planned, and the product of the search's degrees (dp dividing the batch, pp the layers, tp within "
                "a node) must land in that range. Widen the range (a multiple of devices_per_node), or the search "
                "axes."]
    if not priced:
        smallest = min((e.memory_bytes / e.capacity_bytes for e in rows if e.capacity_bytes),
                       default=stats.pruned_need)  # every group pruned: its weights and optimizer state alone
        # rows: the members of the groups that were priced (each overflows); the pruned groups' members are
        # counted apart, so "more" only when some were priced, else every one of them overflowed by the bound
        pruned = (f"{stats.pruned_by_group:,} more" if rows else f"all {stats.pruned_by_group:,}")
        head = (f"memory: no configuration fits in device memory (the smallest needs {smallest:.4g}x the "
                f"capacity; {pruned} overflow on weights and optimizer state alone). ")
        limit = plan.limits.max_devices
        if 0 < stats.largest_devices and 2 * stats.largest_devices <= limit:
            # max_devices does not bind: whole nodes and the search axes (dp divides the batch, pp the layers,
            # tp within a node) form no larger configuration (space.groups, space.node_problem)
            return [head + f"The largest configuration the search can form uses {stats.largest_devices:,} "
                    f"devices, under max_devices={limit:,}: only whole nodes are planned, and no product of the "
                    "search's degrees (dp dividing the batch, pp the layers, tp within a node) fills more of them. "
                    "Choose devices_per_node or search axes (search.dp, search.pp, search.tp) whose products are "
                    "whole nodes, or a device with more memory."]
        return [head + "Allow more devices (max_devices), ZeRO or pipeline stages, or choose a device with more "
                "memory."]
    out = []
    goal_limits = [e for e in priced if set(e.limits) - {"power"}]
    if len(goal_limits) == len(priced):
        # the goal limits every configuration misses (throughput and latency, say), else the most common one
        ranked = [k for k, _ in Counter(k for e in goal_limits for k in e.limits if k != "power").most_common()]
        shared = [k for k in ranked if all(k in e.limits for e in goal_limits)]
        kind = " and ".join(shared) if shared else ranked[0]
        if plan.workload.mode == "train":
            fastest = min(priced, key=lambda e: e.time_to_goal_s or math.inf)
            n, limit = fastest.config.n_devices, plan.limits.max_devices
            head = (f"{kind}: the fastest configuration, {describe(fastest)}, takes "
                    f"{fmt_duration(fastest.time_to_goal_s)} against {plan.goal.deadline_days:g} days")
            if 2 * n > limit:
                need = n * (fastest.time_to_goal_s or 0) / (plan.goal.deadline_s or 1)
                out.append(f"{head}; it uses {n:,} of max_devices={limit:,} and at ideal scaling the goal needs "
                           f"about {math.ceil(need):,} devices: the device limit binds.")
            else:
                out.append(f"{head}; more devices do not make it faster here (it uses {n:,} of max_devices="
                           f"{limit:,}; the global batch of {plan.workload.batch} sequences bounds data "
                           f"parallelism): a larger batch, a faster device or a later deadline would.")
        else:
            best = min(priced, key=lambda e: e.shortfall)
            out.append(f"{kind}: the closest configuration, {describe(best)}, serves "
                       f"{best.tokens_per_s or 0:,.0f} tokens/s at {fmt_duration(best.latency_s)} per "
                       f"{latency_name(plan)} "
                       f"(goal: {plan.goal.tokens_per_s:,.0f} tokens/s"
                       + (f", at most {plan.goal.max_step_latency_s * 1e3:g} ms" if plan.goal.max_step_latency_s else "")
                       + f"); the device limit is max_devices={plan.limits.max_devices:,}.")
    elif plan.limits.max_power_w is not None:
        out.append("power: configurations meet the goal, but every one of them draws more than max_power_w="
                   f"{plan.limits.max_power_w:,.0f} W at full load.")
    else:
        out.append("none: some configurations meet the goal.")
    return out


def explain(rows: Sequence[Evaluation], stats: SearchStats, plan: PlanFile, top: list[Evaluation]) -> Explanation:
    """The explanation of a ranked search; `top` = the re-checked (or first) top_k feasible rows. `rows`: a
    list of Evaluations or search.Rows (whose limits are counted on their columns)."""
    counts = rows.limit_counts() if isinstance(rows, Rows) else Counter(k for e in rows for k in e.limits)
    if stats.pruned_by_group or stats.pruned_by_micro_batch:
        counts["memory"] += stats.pruned_by_group + stats.pruned_by_micro_batch
    if top:
        best = top[0]
        if plan.workload.mode == "train":
            headline = (f"best by {plan.objective}: {describe(best)} — {fmt_duration(best.time_to_goal_s)}, "
                        f"{fmt_usd(best.cost_usd)}, {fmt_energy(best.energy_j)}")
        else:
            headline = (f"best by {plan.objective}: {describe(best)} — {latency_name(plan)} "
                        f"{fmt_duration(best.latency_s)}, {fmt_rate(best.tokens_per_s)}, {fmt_usd(best.cost_usd)} "
                        f"and {fmt_energy(best.energy_j)} per hour")
        time_name = "time to goal" if plan.workload.mode == "train" else latency_name(plan)
        runners = [(describe(e), [versus(e, best, plan.objective, time_name, plan.workload.mode != "train")]
                    + why(e, plan)) for e in top[1:]]
        return Explanation(headline, why(best, plan), runners, limit_counts=dict(counts))
    closest = first_rows(rows, max(plan.top_k, 1), feasible=False)
    limiting = diagnose(rows, stats, plan)
    headline = "nothing meets the goal within the limits; what limits it: " + limiting[0].split(":")[0]
    return Explanation(headline, limiting=limiting,
                       closest=[(describe(e), [e.reason] + why(e, plan)[:2]) for e in closest],
                       limit_counts=dict(counts))


# ---------------------------------------------------------------------------------------------------
# What limits the winner and the runner-up, the one change that would move each most, and how robust the
# choice between them is (issue 18 item 5). Training and inference plans here; serving plans in
# `serving_choice` below.
# ---------------------------------------------------------------------------------------------------

FACTORS = ("memory", "memory bandwidth", "communication", "bubble", "compute")
# The strategy fields a single change moves (one at a time); the derived ones (n_devices, microbatches) follow.
CHANGE_FIELDS = ("dp", "tp", "pp", "cp", "sp", "zero", "micro_batch", "recompute", "schedule", "virtual_stages",
                 "precision")
OBJECTIVE_METRIC = {"cost": "cost_usd", "time": "time_to_goal_s", "energy": "energy_j", "devices": "n_devices"}


@dataclass
class SensitivityRow:
    """One what-if: the winner and the runner-up re-priced with `knob` x `factor` (planner.whatif)."""

    knob: str
    factor: float
    winner: float | None           # the objective's metric (cost, time, energy or devices)
    runner_up: float | None
    winner_feasible: bool
    runner_up_feasible: bool
    flips: bool                    # the runner-up would rank first
    note: str = ""                 # serving: the replicas each needs ('winner|runner-up')
    times: tuple[float | None, float | None] = (None, None)  # the tie-break: time to goal (inference: latency)
    # what each breaks where it misses (search.Evaluation.limits, serve.CandidateResult.limits): the table names
    # the criterion, so "misses" under -20% bandwidth reads as the deadline or memory, not a guess
    limits: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    # the same with the figures that break them ("throughput: 18,230 tokens/s < 20,000"; Evaluation.reason,
    # CandidateResult.reason): trial 40 read "7.5 ms (misses: throughput)" beside "7.5 ms" as a contradiction
    reasons: tuple[str, str] = ("", "")


@dataclass
class Sensitivity:
    metric: str                    # what the numbers are: 'cost (USD)', ...
    winner: str
    runner_up: str
    base: tuple[float | None, float | None]
    rows: list[SensitivityRow] = field(default_factory=list)
    base_times: tuple[float | None, float | None] = (None, None)
    base_note: str = ""
    priced_by: str = "the roofline cost model"
    # the winner and the runner-up as the table prices them (by the simulation when the plan re-checked): the
    # step split limit_of reads, so that the limiting factor and the what-ifs come from one pricing
    priced: tuple[Evaluation | None, Evaluation | None] = (None, None)

    @property
    def flips(self) -> list[SensitivityRow]:
        return [r for r in self.rows if r.flips]


@dataclass
class Limit:
    """What limits one configuration and the one change that would move its objective most."""

    who: str                       # 'winner' | 'runner-up'
    factor: str                    # one of FACTORS
    shares: dict[str, float]       # compute, communication, bubble, other: fractions of the step (or of busy time)
    change: str                    # the change, in words, with its effect and what blocks it
    gain: float | None             # relative change of the objective's metric (negative = better)
    why: str = ""                  # why `factor` is the limit, in words (choice_lines says it beside the factor)
    shares_of: str = "step time"   # what `shares` divide: "step time", or a serving replica's "busy time"


def _metric(e: Evaluation, objective: str) -> float | None:
    return float(e.config.n_devices) if objective == "devices" else getattr(e, OBJECTIVE_METRIC[objective])


def _one_field_apart(a: Any, b: Any) -> str | None:
    """The one CHANGE_FIELDS field in which two configurations of the same hardware and split differ, else None."""
    if a.hardware != b.hardware or a.stage_layers != b.stage_layers:
        return None
    diff = None
    for f in CHANGE_FIELDS:  # stops at a second difference (limit_of asks this of every row)
        if getattr(a, f) != getattr(b, f):
            if diff is not None:
                return None
            diff = f
    if diff is None or (diff == "virtual_stages" and a.schedule != "interleaved"):
        return None
    return diff


def _one_apart_candidates(c: Any, rows: Sequence[Evaluation]) -> list[int]:
    """The positions of the rows whose configuration differs from `c` in exactly one CHANGE_FIELDS field, in
    order: every row `_one_field_apart` can name a field for (Rows: counted on their field columns)."""
    if not isinstance(rows, Rows):
        return list(range(len(rows)))
    differ = np.zeros(len(rows), dtype=np.int64)
    for f in CHANGE_FIELDS:
        differ += rows.field(f) != getattr(c, f)
    return np.flatnonzero(differ == 1).tolist()


def _price_ignoring_memory(ctx: Any, e: Evaluation) -> Evaluation:
    """A row rejected for memory, priced as if it fitted (to say what memory costs the plan)."""
    from llmsim.planner.search import evaluate
    roomy = replace(ctx.hardware, memory_headroom=-1e12)  # capacity x 1e12: every configuration fits
    priced = evaluate(replace(ctx, hardware=roomy), e.config)
    return replace(priced, capacity_bytes=e.capacity_bytes, reason=e.reason, limits=e.limits, feasible=False)


def limit_of(e: Evaluation, who: str, rows: Sequence[Evaluation], plan: PlanFile, contexts: dict[tuple[str, str], Any],
             sensitivity: Sensitivity | None) -> Limit:
    """The limiting factor of `e` and the one change that would move its objective most.

    Changes considered: every configuration of the search one strategy field away (same hardware; one of
    CHANGE_FIELDS), those rejected for memory priced as if they fitted, and the +20% hardware what-ifs of
    the sensitivity table. The change is the one with the best objective; since `e` wins among the feasible
    ones, a better neighbour is blocked by a limit, which the sentence names. The factor is `memory` when
    that best change is blocked by memory alone; else the factor of the hardware what-if (+20%) that moves
    the objective most, when one moves it by more than `WHATIF_DECIDES` (link bandwidth: communication; GEMM
    or memory efficiency: compute) and it disagrees with the larger of compute and communication: with
    ZeRO-3 or overlapped collectives communication runs beside the compute, and the step's shares understate
    it; else the largest of the step's compute, exposed
    communication and pipeline bubble shares. The shares are of the step as the sensitivity table prices it
    (`Sensitivity.priced`: by the cluster simulation when the plan re-checked its best), so the two agree."""
    index = 0 if who == "winner" else 1
    priced = sensitivity.priced[index] if sensitivity is not None else None
    shares = step_shares(priced if priced is not None else e)
    base = _metric(e, plan.objective)
    best: tuple[float, str, tuple[str, ...]] | None = None   # (relative change of the metric, change, its limits)
    configs = rows.configs if isinstance(rows, Rows) else [other.config for other in rows]
    for i in _one_apart_candidates(e.config, rows):  # an Evaluation only for the neighbours (Rows make them)
        config = configs[i]
        what = _one_field_apart(e.config, config)
        if what is None or not base:
            continue
        other = rows[i]
        ctx = contexts.get((other.config.hardware, other.config.precision))
        if other.step_time_s is None and other.limits == ("memory",) and ctx is not None:
            other = _price_ignoring_memory(ctx, other)
        value = _metric(other, plan.objective)
        if value is None:
            continue
        gain = value / base - 1
        if best is None or gain < best[0]:
            before, after = (getattr(c, what) or plan.workload.dtype for c in (e.config, other.config))
            best = (gain, f"{what.replace('_', ' ')} {before} -> {after}", other.limits)
    if sensitivity is not None:  # against the sensitivity's own base (it may be priced by the simulation)
        own = sensitivity.base[0 if who == "winner" else 1]
        for r in sensitivity.rows:
            value = r.winner if who == "winner" else r.runner_up
            if r.factor > 1 and value is not None and own and (best is None or value / own - 1 < best[0]):
                best = (value / own - 1, knob_label(r.knob, r.factor), ())
    largest = max(("compute", "communication", "bubble"), key=lambda k: shares.get(k, 0.0))
    # what the shares divide: step_time_s, which a decode plan calls the generation (step_name)
    shares_of = "generation time" if plan.workload.mode == "decode" else f"{latency_name(plan)} time"
    if priced is not None and sensitivity is not None and "simulation" in sensitivity.priced_by:
        shares_of = f"simulated {shares_of}"
    largest_why = f"its largest share of the {shares_of}"
    knob, moved = strongest_whatif(sensitivity, index), plan.objective
    if knob is None:  # the objective does not move (a cost set by the device count): what moves the step does
        knob, moved = strongest_whatif(sensitivity, index, "time"), shares_of.removeprefix("simulated ")
    if knob is not None and largest in ("compute", "communication") and KNOB_FACTOR[knob[0]] != largest:
        largest, largest_why = KNOB_FACTOR[knob[0]], (f"{knob_label(knob[0], knob[2])} moves its {moved} "
                                                      f"most: {knob[1]:+.1%}")
    if best is None:
        return Limit(who, largest, shares, "no single change improves it", None, largest_why, shares_of)
    blocked = f" (blocked: {', '.join(LIMIT_WORDS.get(k, k) for k in best[2])})" if best[2] else ""
    memory = best[2] == ("memory",)
    return Limit(who, "memory" if memory else largest, shares, f"{best[1]}: {plan.objective} {best[0]:+.1%}{blocked}",
                 best[0], "the change that would help it most does not fit in memory" if memory else largest_why,
                 shares_of)


# What each hardware what-if (planner.whatif.KNOBS) speeds up: the limiting factor it stands for.
# The compute share is the time kernels run, FLOP-bound or bandwidth-bound alike (costmodel roofline): when memory
# efficiency moves a step more than GEMM efficiency does (a decode step reading the weights and the KV cache),
# its limit is memory bandwidth, not compute.
KNOB_FACTOR = {"link": "communication", "gemm": "compute", "memory": "memory bandwidth"}
# A what-if names the limiting factor when +20% of it moves the objective by more than this (relative): a
# threshold of reading, not of the model (below it the what-ifs are all noise against the step's shares).
WHATIF_DECIDES = 0.01


def strongest_whatif(sensitivity: Sensitivity | None, index: int,
                      by: Literal["objective", "time"] = "objective") -> tuple[str, float, float] | None:
    """(knob, relative change, factor) of the +20% what-if that lowers configuration `index`'s objective (or, by
    "time", its step time or latency) most, if it does by more than WHATIF_DECIDES; else None."""
    if sensitivity is None:
        return None
    own = sensitivity.base[index] if by == "objective" else sensitivity.base_times[index]
    if not own:
        return None
    best: tuple[str, float, float] | None = None
    for r in sensitivity.rows:
        value = (r.winner if index == 0 else r.runner_up) if by == "objective" else r.times[index]
        if r.factor > 1 and value is not None and own:
            gain = value / own - 1
            if gain < -WHATIF_DECIDES and (best is None or gain < best[1]):
                best = (r.knob, gain, r.factor)
    return best


def _simulated(ctx: Any, e: Evaluation) -> Evaluation:
    """`e` re-priced by the SimPy cluster simulation on ctx's hardware, as search.simulate_top does."""
    from llmsim.planner.search import goal_metrics, judge
    from llmsim.sim import simulate_case
    hw = ctx.hardware
    sim = simulate_case(ctx.plan.workload, ctx.profile, ctx.sharing, e.config.plan(), hw.cluster_of(e.config),
                        ctx.options)
    metrics = goal_metrics(ctx.plan, e.config.n_devices, hw.usd_per_device_hour, sim.step_s, sim.energy_j, sim.tpot_s)
    limits, reasons, shortfall = judge(ctx.plan, metrics, e.power_w)
    t = sim.times
    mfu = e.mfu * e.step_time_s / sim.step_s if e.mfu and e.step_time_s and sim.step_s else e.mfu
    return replace(e, feasible=e.feasible and not limits, limits=limits, reason="; ".join(reasons),
                   shortfall=shortfall, step_time_s=sim.step_s, compute_time_s=t.compute, comm_time_s=t.comm,
                   bubble_time_s=t.bubble, other_time_s=t.other, mfu=mfu, **metrics)


def training_sensitivity(plan: PlanFile, winner: Evaluation, runner_up: Evaluation, contexts: dict[tuple[str, str], Any],
                         simulated: bool = False) -> Sensitivity:
    """The winner and the runner-up re-priced with each knob at -20% and +20% (planner.whatif); `flips` where
    the runner-up would then rank first (planner.search.objective_key: feasible first). Priced as they were
    ranked: by the roofline, or by the cluster simulation when the plan re-checked its best by simulation
    (`simulated`; the base numbers are then the simulated ones), so that a flip is the what-if's doing and
    not a difference between the two pricers."""
    from llmsim.planner.search import evaluate, objective_key
    key = objective_key(plan.objective)

    def price(ctx: Any, e: Evaluation) -> Evaluation:
        priced = evaluate(ctx, e.config)
        return _simulated(ctx, priced) if simulated and priced.step_time_s is not None else priced
    base = [price(contexts[(e.config.hardware, e.config.precision)], e) for e in (winner, runner_up)] if simulated \
        else [winner, runner_up]
    out = Sensitivity(f"{plan.objective}", describe(winner), describe(runner_up),
                      (_metric(base[0], plan.objective), _metric(base[1], plan.objective)),
                      base_times=(base[0].time_to_goal_s, base[1].time_to_goal_s),
                      priced_by="the SimPy cluster simulation" if simulated else "the roofline cost model",
                      priced=(base[0], base[1]))
    for knob in KNOBS:
        for factor in SENSITIVITY_FACTORS:
            again = []
            for e in (winner, runner_up):
                ctx = contexts[(e.config.hardware, e.config.precision)]
                hw = replace(ctx.hardware, node=perturb_cluster(ctx.hardware.node, knob, factor))
                again.append(price(replace(ctx, hardware=hw), e))
            w, r = again
            out.rows.append(SensitivityRow(knob, factor, _metric(w, plan.objective), _metric(r, plan.objective),
                                           w.feasible, r.feasible, key(r) < key(w),
                                           times=(w.time_to_goal_s, r.time_to_goal_s), limits=(w.limits, r.limits),
                                           reasons=(w.reason, r.reason)))
    return out


def _hidden_note(row: SensitivityRow, move: float, limits: list[Limit]) -> str:
    """Why slower links move the winner more than its exposed communication can: with the link at `row.factor`
    (< 1) the exposed share would grow at most by 1/factor - 1 of itself; a larger move means collectives that ran
    hidden under compute (ZeRO-3's gathers, overlapped gradient reduction) no longer fit under it."""
    if row.knob != "link" or row.factor >= 1 or not limits:
        return ""
    exposed = limits[0].shares.get("communication", 0.0)
    if move <= 2 * exposed * (1 / row.factor - 1):
        return ""
    return (f" (its exposed communication, {_pct(exposed)} of the step, explains far less: collectives that "
            f"overlap compute stop hiding under it)")


def choice_lines(limits: list[Limit], sensitivity: Sensitivity | None) -> list[str]:
    """The sentences the report and the terminal show under the winner: per configuration, each clause says
    what it is — the limit and why it is the limit, the shares of its step time (or busy time), and the one
    change that would move the objective most — e.g. "winner: limited by memory (the change that would help
    it most does not fit in memory); step time: compute 96%, communication 3%, bubble 1%; the one change that
    would move it most: tp 8 -> 4: cost -12.0% (blocked: memory)"."""
    out = []
    for lim in limits:
        clauses = [f"{lim.who}: limited by {lim.factor}" + (f" ({lim.why})" if lim.why else "")]
        shares = ", ".join(f"{k} {_pct(v)}" for k, v in lim.shares.items() if k != "other")
        if shares:
            clauses.append(f"{lim.shares_of}: {shares}")
        clauses.append(f"the one change that would move it most: {lim.change}")
        out.append("; ".join(clauses))
    if sensitivity is not None:
        flips = sensitivity.flips
        # equal on the objective as priced and in every what-if: the tie-break, not the price, keeps the order
        tied = sensitivity.base[0] == sensitivity.base[1] and all(r.winner == r.runner_up for r in sensitivity.rows)
        steady = ("robust (the winner and the runner-up tie in every case; the tie-break keeps the order)" if tied
                  else "robust (the winner stays ahead in every case)")
        # the order of the two can hold while the goal itself does not: say where the winner misses it
        missed = [r for r in sensitivity.rows if not r.winner_feasible]
        # and how far the winner's own objective moves: a step near the knee where overlapped communication
        # stops hiding under compute moves far more at -20% than its exposed share says
        base = sensitivity.base[0]
        moves = [(abs(r.winner / base - 1), r) for r in sensitivity.rows if r.winner is not None and base]
        largest = max(moves, key=lambda m: m[0], default=None)
        out.append("choice under ±20% link bandwidth, GEMM efficiency, memory efficiency: "
                   + (steady if not flips else
                      "flips under " + ", ".join(knob_label(r.knob, r.factor) for r in flips))
                   + ("; the winner misses the goal under " + ", ".join(knob_label(r.knob, r.factor) for r in missed)
                      if missed else "")
                   + (f"; the winner's {sensitivity.metric} moves most under {knob_label(largest[1].knob, largest[1].factor)}:"
                      f" {largest[1].winner / base - 1:+.1%}" + _hidden_note(largest[1], largest[0], limits)
                      if largest is not None and largest[0] > 0 else ""))
    return out


def sensitivity_rows(s: Sensitivity) -> list[list[str]]:
    """The sensitivity table as text cells: what-if, winner, runner-up, first. A configuration that misses
    says which limits it breaks and by how much, e.g. "(misses deadline: 31.2 days > 30 days)"
    (SensitivityRow.reasons; the limits' names alone where no reason was kept)."""
    def fmt(v: float | None, ok: bool, t: float | None, note: str, broken: tuple[str, ...] = (),
            reason: str = "") -> str:
        missed = "" if ok else (f" (misses {reason})" if reason else
                                " (misses" + (": " + ", ".join(broken) if broken else "") + ")")
        if v is None:
            return "–" + missed
        text = fmt_usd(v) if s.metric.startswith("cost") else fmt_duration(v) if s.metric.startswith("time") else \
            fmt_energy(v) if s.metric.startswith("energy") else f"{v:,.0f}"
        if t is not None and not s.metric.startswith("time"):
            text += f", {fmt_duration(t)}"
        return text + (f", {note}" if note else "") + missed

    def notes(note: str) -> tuple[str, str]:
        a, _, b = note.partition("|")
        return a, b
    bw, br = notes(s.base_note)
    rows = [["as priced", fmt(s.base[0], True, s.base_times[0], bw), fmt(s.base[1], True, s.base_times[1], br),
             "winner"]]
    for r in s.rows:
        nw, nr = notes(r.note)
        rows.append([knob_label(r.knob, r.factor),
                     fmt(r.winner, r.winner_feasible, r.times[0], nw, r.limits[0], r.reasons[0]),
                     fmt(r.runner_up, r.runner_up_feasible, r.times[1], nr, r.limits[1], r.reasons[1]),
                     ("runner-up (flips; both miss)" if not (r.winner_feasible or r.runner_up_feasible)
                      else "runner-up (flips)") if r.flips else "winner"])
    return rows
