"""A serving plan end to end: the candidates' searches (planner.serve), the winner's and runner-up's limits and
±20% sensitivity, and the run folder: plan.csv, plan.md / plan.html, best.yaml (a runnable serving scenario)
and plan.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from llmsim.planner.config import PlanFile
from llmsim.planner.precisions import workload_for
from llmsim.planner.explain import (Explanation, Limit, Sensitivity, SensitivityRow, choice_lines, fmt_duration,
                                    fmt_energy, fmt_usd, strongest_whatif)
from llmsim.planner.report import plan_meta
from llmsim.planner.search import Hardware
from llmsim.wording import count
from llmsim.planner.serve import (CandidateResult, Mapper, ServingTask, plan_serving, unused_counts_note, what_if,
                                  what_if_key, with_headroom)
from llmsim.planner.whatif import KNOBS, SENSITIVITY_FACTORS, knob_label
from llmsim.results import write_atomic

SERVING_PLAN_COLUMNS = ["rank", "hardware", "tp", "pp", "ep", "etp", "attention_dp", "dtype", "fp8_recipe", "replicas", "n_devices", "devices_used", "feasible", "reason",
                        "sustained_rate_rps", "sustained_at_least", "step_time_s", "time_to_goal_s", "cost_usd",
                        "energy_j", "ttft_p99_s", "tpot_p99_s", "slo_attainment", "goodput_rps", "preemptions",
                        "kv_blocks_per_replica", "simulations", "rate_probes"]
# plan.csv's columns of a disaggregated unit (search.disaggregation), after `replicas`: present only in a plan
# that searches units (so a plan without the key writes the same plan.csv), blank on a colocated replica's row
UNIT_COLUMNS = ["prefill_instances", "prefill_tp", "decode_instances", "decode_tp"]
# and, in a plan of a mixture of experts, each side's expert layout (serving.disaggregation.<side>'s keys)
UNIT_EXPERT_COLUMNS = ["prefill_ep", "prefill_etp", "prefill_attention_dp", "decode_ep", "decode_etp",
                       "decode_attention_dp"]
OBJECTIVE_METRIC = {"cost": "cost_usd", "devices": "n_devices", "energy": "energy_j", "time": "e2e_p99_s"}


def describe_candidate(c: CandidateResult) -> str:
    """'2 x h100-sxm (tp1, pp1, 2 replicas)'; with a searched precision '... (tp1, pp1, float8-delayed, 2 replicas)';
    a disaggregated unit '8 x h100-sxm (1P-tp2+3D-tp2, 2 units)'."""
    precision = f", {c.precision}" if c.precision else ""
    if c.unit is not None:
        units = f"{c.replicas} unit" + ("" if c.replicas == 1 else "s") if c.replicas else "–"
        return f"{c.n_devices or c.unit.devices} x {c.hardware} ({c.unit.label()}{precision}, {units})"
    reps = f"{c.replicas} replica" + ("" if c.replicas == 1 else "s") if c.replicas else "–"
    n = c.n_devices or c.tp * c.pp
    experts = "".join(f", {key} {value}" for key, value in c.experts.keys().items() if key != "etp")
    return f"{n} x {c.hardware} (tp{c.tp}, pp{c.pp}{experts}{precision}, {reps})"


def describe_rate(c: CandidateResult, per: bool = True, cap: bool = True) -> str:
    """'27.1 requests/s per replica'; '≥ 40 requests/s per replica' where the search stopped at the goal, still
    meeting the SLO; and where the winner's headroom search stopped at its cap, the cap:
    '≥ 2,560 requests/s per replica (the search's cap, 64x the goal)'. `per=False` leaves out ' per replica',
    `cap=False` the cap."""
    if not c.sustained_rate:
        return "–"
    unit = "unit" if getattr(c, "unit", None) is not None else "replica"
    capped = getattr(c, "headroom_cap", None) if cap else None
    rate = f"{c.sustained_rate:,.0f}" if c.sustained_rate >= 1000 else f"{c.sustained_rate:.3g}"  # not '2.56e+03'
    return (("≥ " if c.sustained_at_least else "") + f"{rate} requests/s"
            + (f" per {unit}" if per else "") + (f" (the search's cap, {capped:g}x the goal)" if capped else ""))


def serving_tie_text(c: CandidateResult, best: CandidateResult, objective: str) -> str | None:
    """None unless `c` ties the winner on the objective; else what they tie on and the tie-break that ranks the
    winner first (planner.serve.objective_key: the objective, then cost, devices, the higher sustained rate),
    e.g. "ties the winner on cost ($7.00 per hour each) and devices (2 each); ranked below it by the tie-break,
    the rate one replica sustains: 27.1 against ≥ 40 requests/s"."""
    def same(a: float | None, b: float | None) -> bool:
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    e2e = {k: (r.at_goal.row.get("e2e_p99_s") if r.at_goal else None) for k, r in (("c", c), ("best", best))}
    measures = [("cost", c.cost_usd, best.cost_usd, lambda v: f"{fmt_usd(v)} per hour"),
                ("devices", c.n_devices, best.n_devices, lambda v: f"{v:,.0f}"),
                ("sustained rate", c.sustained_rate, best.sustained_rate, None)]
    first = {"cost": 0, "devices": 1}.get(objective)
    if objective == "energy":
        measures.insert(0, ("energy", c.energy_j, best.energy_j, lambda v: f"{v / 3.6e6:,.2f} kWh per hour"))
    elif objective == "time":
        measures.insert(0, ("e2e p99", e2e["c"], e2e["best"], lambda v: f"{v * 1e3:,.1f} ms"))
    if first is not None:  # the objective itself leads the order (objective_key: metric, then cost, devices)
        measures.insert(0, measures.pop(first))
    tied: list[str] = []
    for name, mine, theirs, shown in measures:
        if name == "sustained rate" and same(mine, theirs):
            break
        if shown is None or not same(mine, theirs):
            if not tied:
                return None
            decided = (f"the rate one replica sustains: {describe_rate(c, per=False)} against "
                       f"{describe_rate(best, per=False)}" if name == "sustained rate"
                       else f"{name}: {shown(mine) if mine is not None else '–'} against "
                            f"{shown(theirs) if theirs is not None else '–'}")
            return f"ties the winner on {' and '.join(tied)}; ranked below it by the tie-break, {decided}"
        tied.append(f"{name} ({shown(theirs)} each)")
    return f"ties the winner on {' and '.join(tied)}: the names order them only, so either is as good"


# Why a candidate's rate search did not run, by its limit (planner.serve.rate_search stops before any probe)
NOT_SEARCHED = {"memory": "no room for a KV cache, so it serves no request at any rate",
                "error": "not priced (the error before), so no rate was searched",
                "devices": "one replica alone needs more devices than max_devices"}


def probe_csv(c: CandidateResult) -> str:
    """plan.csv's rate_probes: `rate:attainment:met|missed` per probe, in search order, after the rates a bound
    proved missed (`rate:<=bound:missed (bound, not simulated)`); a probe stopped early once its SLO was
    certainly missed gives its attainment's upper bound and what the stop knew (planner.serve.RunSummary)."""
    parts = [f"{r:.4g}:<={a:.3f}:missed (bound, not simulated)" for r, a in c.proven_misses]
    for i, (r, a, m) in enumerate(c.probes):
        stop = c.stopped_probes.get(i)
        if stop is None:
            parts.append(f"{r:.4g}:{a:.3f}:{'met' if m else 'missed'}")
        else:
            parts.append(f"{r:.4g}:<={a:.3f}:missed (stopped early at {stop.time_s:.4g} s: {stop.misses} of "
                         f"{stop.requests} requests missed, {stop.allowed} allowed; >={stop.attainment_at_least:.3f} "
                         f"met; {stop.output_tokens_per_s:.4g} output tokens/s)")
    return ";".join(parts)


def probe_marks(c: CandidateResult) -> str:
    """The probes as the terminal and plan.md show them: "2,000✗ (bound), 125✗ (stopped early), 40✓" (rates to
    four significant digits, thousands separated: "2e+03" read as an exponent, not a request rate)."""
    return ", ".join([f"{r:,.4g}✗ (bound)" for r, _ in c.proven_misses]
                     + [f"{r:,.4g}{'✓' if m else '✗'}" + (" (stopped early)" if i in c.stopped_probes else "")
                        for i, (r, _, m) in enumerate(c.probes)])


def probe_line(c: CandidateResult) -> str:
    """What the candidate's rate search found, with its probes; or why it was not searched."""
    one = "one unit" if c.unit is not None else "one replica"
    if c.sustained_rate and c.headroom_cap:   # trial 43: '(the search's cap, 64x the goal) (SLO met up to ...)'
        return (f"{one} sustains {describe_rate(c, per=False, cap=False)}: the SLO was met at every rate probed up to "
                f"the search's cap, {c.headroom_cap:g}x the goal (probes: {probe_marks(c)})")
    if c.sustained_rate:
        return (f"{one} sustains {describe_rate(c, per=False)} (SLO met up to that "
                f"rate; probes: {probe_marks(c)})")
    if c.first_miss is not None:
        stop = c.first_miss.stopped
        known = (f"attainment ≤ {c.first_miss.attainment:.3f} there, stopped early once {stop.misses:,} of "
                 f"{stop.requests:,} requests missed" if stop is not None
                 else f"attainment {c.first_miss.attainment:.3f} there")
        return (f"{one} sustains no rate down to {c.first_miss.rate:,.4g} requests/s ({known}; probes: "
                f"{probe_marks(c)})")
    limit = c.limits[0] if c.limits else "error"
    return f"{one} not searched: {NOT_SEARCHED.get(limit, c.reason)}"


def dropped_note(results: list[CandidateResult]) -> str | None:
    """One line for the candidates the cost model cannot price (limit `error`, e.g. an attention kernel the
    device's catalog entry has no figure for): how many of all, which, and why; None when there are none."""
    dropped = [c for c in results if c.limits and c.limits[0] == "error"]
    if not dropped:
        return None
    by_reason: dict[str, list[str]] = {}
    for c in dropped:
        by_reason.setdefault(c.reason.removeprefix("error: "), []).append(f"{c.hardware} {c.name}")
    why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
    return (f"{len(dropped)} of {len(results)} candidate{'' if len(results) == 1 else 's'} dropped, the cost model "
            f"cannot price {'it' if len(dropped) == 1 else 'them'} ({why})")


def metric(c: CandidateResult, objective: str) -> float | None:
    if objective == "time":
        return c.at_goal.row.get("e2e_p99_s") if c.at_goal else None
    value = getattr(c, OBJECTIVE_METRIC[objective])
    return None if value is None else float(value)


def serving_limit(c: CandidateResult, who: str, sensitivity: Sensitivity | None, objective: str) -> Limit:
    """What stops one replica of `c` from sustaining a higher rate, and the one change that would move the
    objective most.

    The run judged is the lowest rate that missed the SLO (else the sustained one): `memory` when its KV cache
    ran out (preemptions or requests rejected for the cache), else the largest of the compute, exposed
    communication and pipeline-bubble shares of its replicas' busy time. The change is the ±20% hardware
    what-if (sensitivity table) that lowers the objective most; the SLO bound that broke is named."""
    run = c.first_miss or c.at_sustained or c.at_goal
    if run is None:
        return Limit(who, "memory" if "memory" in c.limits else "compute", {}, c.reason or "–", None)
    total = sum(run.time_split.values()) or 1.0
    shares = {k: v / total for k, v in run.time_split.items()}
    memory = bool(run.row.get("preemptions")) or run.rejected > 0
    factor = "memory" if memory else max(("compute", "communication", "bubble"), key=lambda k: shares[k])
    why = "its KV cache ran out: requests preempted or rejected" if memory else "its largest share of the busy time"
    # The compute share is kernel time, FLOP-bound or bandwidth-bound alike (explain.KNOB_FACTOR): when +20% of
    # memory efficiency lowers the objective more than +20% of GEMM efficiency (a decode-heavy replica reading
    # its weights and KV cache), the limit is named memory bandwidth, as a training plan's is.
    strongest = strongest_whatif(sensitivity, 0 if who == "winner" else 1) if factor == "compute" else None
    if strongest is not None and strongest[0] == "memory":
        factor = "memory bandwidth"
        why = "memory efficiency +20% lowers its objective most; kernel time is its largest share"
    busy = "busy time"  # Limit.shares_of: the replicas' busy time, not one step
    broke = ""
    if c.first_miss is not None:
        broke = (f"; at {run.rate:.3g} requests/s per replica {run.misses_ttft} requests miss the TTFT bound and "
                 f"{run.misses_tpot} the TPOT bound")
    base = metric(c, objective)
    best: tuple[float, str] | None = None
    for r in (sensitivity.rows if sensitivity else []):
        value = r.winner if who == "winner" else r.runner_up
        ok = r.winner_feasible if who == "winner" else r.runner_up_feasible
        if ok and value is not None and base and value < base and (best is None or value < best[0]):
            best = (value, knob_label(r.knob, r.factor))
    if best is None or not base:
        change = "no ±20% hardware what-if lowers its " + objective + broke
        return Limit(who, factor, shares, change, None, why, busy)
    gain = best[0] / base - 1
    return Limit(who, factor, shares, f"{best[1]}: {objective} {gain:+.1%}{broke}", gain, why, busy)


def serving_sensitivity(plan: PlanFile, tasks: dict[tuple[Any, ...], ServingTask], winner: CandidateResult,
                        runner_up: CandidateResult, mapper: Mapper = map) -> Sensitivity:
    """The winner and the runner-up re-sized (planner.serve.what_if: the fewest replicas from the chosen count
    that meet the SLO at the goal rate) on hardware with each knob at -20% and +20%; `flips` where the
    runner-up would then rank first on what the what-if prices (serve.what_if_key: equal cost and devices tie,
    and a tie keeps the order)."""
    key = what_if_key(plan.objective)
    jobs = [(knob, factor, c) for knob in KNOBS for factor in SENSITIVITY_FACTORS for c in (winner, runner_up)]
    results = list(mapper(_what_if_job, [(tasks[c.shape], c, knob, factor)
                                         for knob, factor, c in jobs]))
    out = Sensitivity(plan.objective, describe_candidate(winner), describe_candidate(runner_up),
                      (metric(winner, plan.objective), metric(runner_up, plan.objective)),
                      priced_by="the serving simulation (replicas re-sized at the goal rate)",
                      base_note=f"{_sized(winner, winner.replicas)}|{_sized(runner_up, runner_up.replicas)}")
    for i in range(0, len(results), 2):
        knob, factor, _ = jobs[i]
        w, r = results[i], results[i + 1]
        out.rows.append(SensitivityRow(knob, factor, metric(w, plan.objective), metric(r, plan.objective),
                                       w.feasible, r.feasible, key(r) < key(w),
                                       note=f"{_sized(winner, w.replicas)}|{_sized(runner_up, r.replicas)}",
                                       limits=(w.limits, r.limits), reasons=(w.reason, r.reason)))
    return out


def _sized(c: CandidateResult, n: int) -> str:
    """'2 rep.' of a colocated candidate, '2 units' of a disaggregated one ('–' for none): the sensitivity's notes."""
    if c.unit is None:
        return f"{n or '–'} rep."
    return f"{n or '–'} unit{'' if n == 1 else 's'}"


def _what_if_job(job: tuple[ServingTask, CandidateResult, str, float]) -> CandidateResult:
    """Top-level (picklable) wrapper of planner.serve.what_if for a mapper."""
    return what_if(*job)


def serving_frame(plan: PlanFile, results: list[CandidateResult]) -> pd.DataFrame:
    """plan.csv of a serving plan: one row per candidate (replica shape x precision), ranked; `dtype` and
    `fp8_recipe` say what precision each assumes (as a training plan's plan.csv does)."""
    units = plan.search.disaggregation is not None
    unit_experts = units and plan.workload.model.moe is not None
    unit_columns = UNIT_COLUMNS + (UNIT_EXPERT_COLUMNS if unit_experts else [])
    columns = SERVING_PLAN_COLUMNS
    if units:
        at = columns.index("replicas") + 1
        columns = columns[:at] + unit_columns + columns[at:]
    records = []
    for i, c in enumerate(results, 1):
        row = c.at_goal.row if c.at_goal else {}
        probes = probe_csv(c)
        w = workload_for(plan, c.precision)
        strategy = c.experts.strategy(c.tp, c.pp)
        u = c.unit
        unit = ([u.prefill, u.prefill_tp, u.decode, u.decode_tp] if u is not None else [None] * 4) if units else []
        if unit_experts:
            unit += [v for side in ("prefill", "decode") for s in [u.side_strategy(side)]
                     for v in (s.ep, s.expert_tp, s.attention_dp)] if u is not None else [None] * 6
        # a unit's row: tp and pp blank (each side's tp is in its own column), replicas counts units
        shape = [None, None, None, None, None] if u is not None else \
            [c.tp, c.pp, strategy.ep, strategy.expert_tp, strategy.attention_dp]
        goodput = row.get("goodput_rps")
        if u is not None and goodput is not None and c.replicas:  # one unit's run: the deployment's is replicas x it,
            goodput *= c.replicas                                 # as a colocated row's is (and as the terminal says)
        records.append([i, c.hardware, *shape, w.dtype, w.fp8.recipe if w.fp8 is not None else None,
                        c.replicas or None, *unit, c.n_devices or None, c.devices_used or None,
                        c.feasible, c.reason, c.sustained_rate or None, c.sustained_at_least,
                        row.get("tpot_p50_s"), row.get("e2e_p99_s"), c.cost_usd, c.energy_j, row.get("ttft_p99_s"),
                        row.get("tpot_p99_s"), row.get("slo_attainment"), goodput,
                        row.get("preemptions"), c.kv_blocks, c.simulations, probes])
    frame = pd.DataFrame.from_records(records, columns=columns)
    # counts are integers, blank where not applicable (a unit's tp, a replica's unit columns): pandas would write
    # a column holding a blank as floats ("2.0"), so those columns are nullable integers
    for name in ["tp", "pp", "ep", "etp", "attention_dp", "replicas", *unit_columns, "n_devices", "devices_used"]:
        if name in frame.columns and frame[name].notna().any() and \
                all(float(v).is_integer() for v in frame[name].dropna()):
            frame[name] = frame[name].astype("Int64")
    return frame


def best_scenario(plan: PlanFile, c: CandidateResult, hw: Hardware, spec: Any) -> dict[str, Any]:
    """A serving scenario (plain data) that `llmsim run` accepts and that re-simulates the winner: its replica
    shape, its replicas, the goal rate and the plan's span of arrivals (`spec`: serve.span_spec's block). A
    disaggregated unit: ONE unit (the simulation refuses serving.replicas > 1 with serving.disaggregation) at its
    share of the goal, goal / units, on the devices one unit rents (best_yaml's header says how many units)."""
    if c.unit is not None:
        return _unit_scenario(plan, c, hw, spec)
    cluster_spec = hw.cluster(c.n_devices)
    cluster = {"hardware": hw.name, "nodes": cluster_spec.nodes, "devices_per_node": cluster_spec.devices_per_node,
               "intra_node": cluster_spec.intra.name, "inter_node": cluster_spec.inter.name}
    chosen = plan.options.model_dump(mode="json", exclude_defaults=True)  # the plan's options, as settings keys
    workload = _served_workload(plan, c)
    serving = spec.model_copy(update={"replicas": c.replicas}).model_dump(mode="json", exclude_none=True)
    if serving.get("kv_cache_dtype") == "auto":  # the default is left out, as before the key existed
        del serving["kv_cache_dtype"]
    return {
        "name": f"{plan.name}-best",
        **hw.catalog_key(),
        "workload": workload,
        "sharing": plan.sharing.model_dump(mode="json", exclude_none=True),
        "strategies": [{"name": c.name, "tp": c.tp, "pp": c.pp, **c.experts.keys()}],
        "serving": serving,
        "backends": {"roofline": dict(cluster, **chosen), "cluster": dict(cluster, **chosen, trace=False)},
        "seed": spec.seed if spec.seed is not None else 0,
    }


# Workload keys a serving scenario does not read unless the plan's own workload states them: its request list sets
# the batches and lengths, and a serving scenario leaves mode out (trial 41: best.yaml carried `batch: 8` and
# `decode_tokens: 64`, the defaults, which meant nothing there)
_UNSERVED_WORKLOAD_KEYS = ("mode", "batch", "decode_tokens")


def _served_workload(plan: PlanFile, c: CandidateResult) -> dict[str, Any]:
    """best.yaml's workload block of candidate `c`: at the precision the plan priced it (workload_for), without the
    keys a serving scenario does not read (_UNSERVED_WORKLOAD_KEYS) unless the plan gave them, and without an empty
    fp8 / fp4 recipe."""
    workload = workload_for(plan, c.precision).model_dump(mode="json")
    for key in _UNSERVED_WORKLOAD_KEYS:
        if key not in plan.workload.model_fields_set:
            workload.pop(key)
    for key in ("fp8", "fp4"):
        if workload.get(key) is None:
            workload.pop(key, None)
    return workload


def _unit_scenario(plan: PlanFile, c: CandidateResult, hw: Hardware, spec: Any) -> dict[str, Any]:
    """best_scenario of a disaggregated unit: one unit, serving.disaggregation stating its two sides, arrivals at
    goal / units (planner.serve._size_replicas simulated exactly that run)."""
    from llmsim.planner.serve import rented_devices
    unit = c.unit
    assert unit is not None and c.replicas
    cluster_spec = hw.cluster(rented_devices(unit.devices, hw.node.devices_per_node))
    cluster = {"hardware": hw.name, "nodes": cluster_spec.nodes, "devices_per_node": cluster_spec.devices_per_node,
               "intra_node": cluster_spec.intra.name, "inter_node": cluster_spec.inter.name}
    chosen = plan.options.model_dump(mode="json", exclude_defaults=True)
    workload = _served_workload(plan, c)
    share = spec.at_rate(float(plan.goal.request_rate) / c.replicas)
    serving = share.model_copy(update={"disaggregation": None}).model_dump(mode="json", exclude_none=True)
    serving.pop("replicas", None)
    if serving.get("kv_cache_dtype") == "auto":
        del serving["kv_cache_dtype"]
    serving["disaggregation"] = unit.block()
    name = (f"{unit.prefill}p-tp{unit.prefill_tp}{unit.prefill_experts.label()}-{unit.decode}d-tp{unit.decode_tp}"
            f"{unit.decode_experts.label()}")
    return {
        "name": f"{plan.name}-best",
        **hw.catalog_key(),
        "workload": workload,
        "sharing": plan.sharing.model_dump(mode="json", exclude_none=True),
        "strategies": [{"name": name, "tp": unit.prefill_tp, "pp": 1}],
        "serving": serving,
        "backends": {"roofline": dict(cluster, **chosen), "cluster": dict(cluster, **chosen, trace=False)},
        "seed": spec.seed if spec.seed is not None else 0,
    }


def best_yaml(plan: PlanFile, c: CandidateResult, hw: Hardware, spec: Any) -> str:
    row = c.at_goal.row if c.at_goal else {}
    units = ""
    if c.unit is not None:
        goal = float(plan.goal.request_rate)  # type: ignore[arg-type]
        units = (f"# units: {c.replicas}. This file is ONE of the {c.replicas} disaggregated units ({c.unit.label()}, "
                 f"{c.unit.devices} devices) behind a router,\n# at its share of the goal, {goal:g} / {c.replicas} = "
                 f"{goal / c.replicas:.6g} requests/s (llmsim runs one disaggregated unit: serving.replicas > 1 is "
                 f"refused with\n# serving.disaggregation). Every unit is this one.\n") if c.replicas > 1 else (
                 f"# units: 1. This file is the whole deployment: one disaggregated unit ({c.unit.label()}, "
                 f"{c.unit.devices} devices) at the goal rate.\n")
    head = (f"# The winner of serving plan {plan.name!r} ({plan.objective}): {describe_candidate(c)}.\n" + units +
            f"# Simulated at {plan.goal.request_rate:g} requests/s{' (one unit at its share)' if units else ''}: TTFT p99 {fmt_duration(row.get('ttft_p99_s'))}, "
            f"TPOT p99 {fmt_duration(row.get('tpot_p99_s'))}, SLO attainment {row.get('slo_attainment', 0):.3f}; "
            f"{fmt_usd(c.cost_usd)} per hour.\n#   llmsim run best.yaml\n")
    return head + yaml.safe_dump(best_scenario(plan, c, hw, spec), sort_keys=False, default_flow_style=None,
                                 width=110)


def candidate_lines(plan: PlanFile, c: CandidateResult) -> list[str]:
    """The lines under a feasible candidate: its sustained rate and probes, its replicas at the goal rate (with why
    replicas x one replica's rate may fall short of the goal, and why goodput may be below the rate at attainment 1),
    and its devices, cost and energy."""
    row = c.at_goal.row if c.at_goal else {}
    goal = plan.goal.request_rate
    lines = [probe_line(c)]
    if c.at_goal and c.sustained_rate and c.replicas * c.sustained_rate < goal and c.unit is not None:
        lines.append(f"{c.replicas} x {c.sustained_rate:.4g} = {c.replicas * c.sustained_rate:.3g} requests/s is "
                     f"below the goal, yet one unit meets the SLO at its share {goal / c.replicas:.4g} requests/s by "
                     f"simulation: one unit's rate is a lower bound (its search stops within rate_tolerance "
                     f"{plan.rate_tolerance:.0%})")
    elif c.at_goal and c.sustained_rate and c.replicas * c.sustained_rate < goal:
        lines.append(f"{c.replicas} x {c.sustained_rate:.4g} = {c.replicas * c.sustained_rate:.3g} requests/s is "
                     f"below the goal, yet the {c.replicas} replicas meet the SLO at {goal:g} requests/s by "
                     f"simulation: one replica's rate is a lower bound (its search stops within rate_tolerance "
                     f"{plan.rate_tolerance:.0%}), and the router spreads one arrival stream's bursts over "
                     f"{c.replicas} replicas")
    goodput = row.get("goodput_rps") or 0
    if c.unit is not None and c.replicas:   # one unit's run: the units' goodput is replicas times it
        goodput *= c.replicas
    drain = ""
    if c.at_goal and (row.get("slo_attainment") or 0) >= 0.999 and goodput < 0.95 * goal:
        drain = (f" (requests meeting the SLO per second of the run's {c.at_goal.duration_s:.3g} s, first arrival "
                 f"to last token: the drain after the last arrival counts, as in vLLM's benchmark_duration, so "
                 f"it is below the offered {goal:g} even when every request meets the SLO)")
    elif c.at_goal and (row.get("slo_attainment") or 0) >= 0.999 and goodput < goal:
        drain = " (per second of the run's whole duration, the drain after the last arrival included)"
    at = f"{c.replicas} replica{'' if c.replicas == 1 else 's'} at {goal:g} requests/s"
    if c.unit is not None:
        at = (f"{c.replicas} unit{'' if c.replicas == 1 else 's'} at {goal:g} requests/s (one unit simulated at its "
              f"share, {goal / c.replicas:.4g} requests/s)")
    lines += [f"{at}: TTFT p99 "
              f"{fmt_duration(row.get('ttft_p99_s'))}, TPOT p99 {fmt_duration(row.get('tpot_p99_s'))}, SLO "
              f"attainment {row.get('slo_attainment') or 0:.3f}, goodput {goodput:.3g} requests/s{drain}",
              f"{count(c.n_devices, 'device')} rented ({c.devices_used} in use): {fmt_usd(c.cost_usd)} and "
              f"{fmt_energy(c.energy_j)} per hour" + _idle_note(c, plan.limits.min_devices)]
    return lines


def _idle_note(c: CandidateResult, min_devices: int = 1) -> str:
    """Where whole nodes (or limits.min_devices) rent devices enough for more replicas than the fewest that meet the
    SLO, say that they would cost nothing more (trial 44: '16 rented (12 in use)' under min_devices=16 left it to
    the reader). The plan keeps the fewest (with min_devices, the fewest that also rent that many: trial 45 read
    'the fewest that meet the SLO' of 3 replicas where 2 would): the idle devices draw idle power, not a
    replica's."""
    size = c.unit.devices if c.unit is not None else c.tp * c.pp
    spare = (c.n_devices - c.devices_used) // size if size else 0
    if spare < 1:
        return ""
    what = ("unit" if c.unit is not None else "replica") + ("" if spare == 1 else "s")
    kept = "the fewest that meet the SLO" + (f" and rent at least min_devices={min_devices:,}" if min_devices > 1
                                             else "")
    return (f"; the {c.n_devices - c.devices_used} idle devices have room for {spare} more {what} at no extra rent "
            f"(lower latency, more energy: the plan keeps {kept})")


def serving_explanation(plan: PlanFile, results: list[CandidateResult], sensitivity: Sensitivity | None
                        ) -> Explanation:
    """Headline, the winner's lines, the runners-up, and the limits and sensitivity of the first two."""
    feasible = [c for c in results if c.feasible]
    counts: dict[str, int] = {}
    for c in results:
        for k in c.limits:
            counts[k] = counts.get(k, 0) + 1
    if not feasible:
        lines = [f"{describe_candidate(c)}: {c.reason}; {probe_line(c)}" for c in results[:max(plan.top_k, 1)]]
        kind = results[0].limits[0] if results and results[0].limits else "slo"
        return Explanation(f"no candidate sustains {plan.goal.request_rate:g} requests/s under the SLO within the "
                           f"limits; what limits it: {'the SLO' if kind == 'slo' else kind}", limiting=lines,
                           limit_counts=counts)
    best = feasible[0]

    headline = (f"best by {plan.objective}: {describe_candidate(best)} — sustains {plan.goal.request_rate:g} "
                f"requests/s under the SLO for {fmt_usd(best.cost_usd)} per hour")
    runners = [(describe_candidate(c), [t for t in [serving_tie_text(c, best, plan.objective)] if t]
                + candidate_lines(plan, c)) for c in feasible[1:plan.top_k]]
    out = Explanation(headline, candidate_lines(plan, best), runners, limit_counts=counts)
    out.limits = [serving_limit(c, who, sensitivity, plan.objective)
                  for c, who in zip(feasible[:2], ("winner", "runner-up"))]
    out.sensitivity = sensitivity
    out.choice = choice_lines(out.limits, sensitivity)
    return out


def slo_words(slo: Any) -> str:
    """The SLO in words: its per-request bounds for a share of the requests, and its run-level bounds."""
    per_request = [f"{name} ≤ {bound:g} s" for name, bound in (("TTFT", slo.ttft_s), ("TPOT", slo.tpot_s))
                   if bound is not None]
    parts = [f"{' and '.join(per_request)} for {slo.percentile:g}% of the requests"] if per_request else []
    if slo.itl_s is not None:
        parts.append(f"ITL p{slo.itl_percentile:g} ≤ {slo.itl_s:g} s")
    if slo.queue_s is not None:
        parts.append(f"queueing delay p{slo.queue_percentile:g} ≤ {slo.queue_s:g} s")
    return ", ".join(parts)


def serving_document(plan: PlanFile, explanation: Explanation, results: list[CandidateResult], seconds: float,
                     hardware: list[Hardware], spec: Any) -> Any:
    from llmsim.planner.report import choice_section
    from llmsim.report.document import Bullets, Cell, Document, Paragraph, Point, Section, Table

    slo = spec.slo
    goal = f"{plan.goal.request_rate:g} requests/s ({spec.arrival.kind}) under {slo_words(slo)}"
    cols = ["#", "candidate", "sustained rate", "replicas / units" if plan.search.disaggregation is not None
            else "replicas", "devices", "cost / hour", "TTFT p99", "TPOT p99",
            "SLO attainment", "meets goal"]
    rows = []
    for i, c in enumerate(results[:max(plan.top_k, 1) * 3], 1):
        row = c.at_goal.row if c.at_goal else {}
        shape = (f"{c.hardware} {c.unit.label()}" if c.unit is not None else
                 f"{c.hardware} tp{c.tp} pp{c.pp}" + "".join(f" {k} {v}" for k, v in c.experts.keys().items()
                                                             if k != "etp"))
        # a disaggregated unit's count is its units, not replicas (the column says which)
        count = f"{c.replicas} unit{'' if c.replicas == 1 else 's'}" if c.unit is not None and c.replicas else \
            str(c.replicas or "–")
        rows.append([Cell(str(i), i), Cell(shape + (f" {c.precision}" if c.precision else "")),
                     Cell(describe_rate(c), c.sustained_rate), Cell(count, c.replicas),
                     Cell(str(c.n_devices or "–"), c.n_devices),
                     Cell(fmt_usd(c.cost_usd), c.cost_usd), Cell(fmt_duration(row.get("ttft_p99_s")), row.get("ttft_p99_s")),
                     Cell(fmt_duration(row.get("tpot_p99_s")), row.get("tpot_p99_s")),
                     Cell(f"{row['slo_attainment']:.3f}" if row.get("slo_attainment") is not None else "–",
                          row.get("slo_attainment")),
                     Cell("yes" if c.feasible else c.reason)])
    sections = [Section("Candidates", [
        Paragraph(("Each replica shape's (or disaggregated unit's) highest rate under the SLO, found by bisection on "
                   "the serving simulation (docs/planning.md, 'Serving plans'), the replicas (units) the goal rate "
                   "needs and their cost.") if plan.search.disaggregation is not None else
                  ("Each replica shape's highest rate under the SLO, found by bisection on the serving simulation "
                   "(docs/planning.md, 'Serving plans'), the replicas the goal rate needs and their cost.")),
        Table(cols, rows, [True, False, True, True, True, True, True, True, True, False])])]
    feasible = [c for c in results if c.feasible]
    if feasible:
        sections.append(Section("Why", [Paragraph("Winner: " + describe_candidate(feasible[0])),
                                        Bullets(explanation.winner)]
                                + [b for rank, (name, lines) in enumerate(explanation.runners_up, start=2)
                                   for b in (Paragraph(f"#{rank}: " + name), Bullets(lines))]))
        sections.append(choice_section(explanation))
    else:
        sections.append(Section("What limits", [Bullets(explanation.limiting)]))
    sims = sum(c.simulations for c in results)
    prices = [f"{h.name}: ${h.usd_per_device_hour:g} per device-hour"
              + (" (an example price, not a quote — set usd_per_device_hour)" if h.example_price else "")
              + f", {h.devices_per_node} per node" for h in hardware]
    sections.append(Section("Search", [Bullets([
        f"{len(results)} candidates (hardware x precision x replica shape), {sims} simulations in {seconds:.1f} s; every simulation spans "
        f"{spec.duration_s:g} s of arrivals.",
        "A rate is sustained when the run meets the SLO (attainment ≥ percentile); the search stops when the "
        f"highest rate that met and the lowest that missed are within {plan.rate_tolerance:.0%}.",
        *prices,
        *(f"no candidates: {note}" for note in explanation.precision_notes),
        *([note] if (note := dropped_note(results)) else []),
        *([note] if (note := unused_counts_note(plan, [h.devices_per_node for h in hardware])) else []),
        "plan.csv lists every candidate, ranked; best.yaml re-simulates the winner with `llmsim run best.yaml`."])]))
    meta = plan_meta(plan, "serving", goal)
    return Document(f"llmsim plan: {plan.name}", [Point(explanation.headline, explanation.winner
                                                        or explanation.limiting)], sections, meta)


def write_serving_outputs(run_dir: Path, plan: PlanFile, results: list[CandidateResult], explanation: Explanation,
                          seconds: float, hardware: list[Hardware], spec: Any) -> list[Path]:
    """plan.csv, plan.md, plan.html, plan.yaml and (when a candidate meets the goal) best.yaml."""
    from llmsim.report.html import render_html
    from llmsim.report.markdown import render_markdown
    serving_frame(plan, results).to_csv(run_dir / "plan.csv", index=False)  # full precision, as plan.parquet
    doc = serving_document(plan, explanation, results, seconds, hardware, spec)
    write_atomic(run_dir / "plan.md", render_markdown(doc))
    write_atomic(run_dir / "plan.html", render_html(doc))
    written = [run_dir / "plan.csv", run_dir / "plan.md", run_dir / "plan.html"]
    feasible = [c for c in results if c.feasible]
    if feasible:
        hw = {h.name: h for h in hardware}[feasible[0].hardware]
        write_atomic(run_dir / "best.yaml", best_yaml(plan, feasible[0], hw, spec))
        written.append(run_dir / "best.yaml")
    # the resolved plan, in a form that loads again: the serving block as written (its rate is the goal's,
    # filled in on loading; replicas are searched), and no workload mode where none was given
    resolved = plan.model_dump(mode="json")
    resolved["serving"] = plan.serving.model_dump(mode="json", exclude_unset=True)  # type: ignore[union-attr]
    resolved["serving"]["arrival"].pop("rate", None)
    if "mode" not in plan.workload.model_fields_set:
        resolved["workload"].pop("mode")
    write_atomic(run_dir / "plan.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return written + [run_dir / "plan.yaml"]


@dataclass
class ServingPlanOutcome:
    run_dir: Path
    results: list[CandidateResult]     # ranked, feasible first
    explanation: Explanation
    hardware: list[Hardware]
    seconds: float

    @property
    def top(self) -> list[CandidateResult]:
        return [c for c in self.results if c.feasible]


def run_serving_plan(plan: PlanFile, hardware: list[Hardware], run_dir: Path,
                     progress: Callable[[str], None] | None = None, mapper: Mapper = map,
                     precision_notes: list[str] | None = None, kv_link: Any = None) -> ServingPlanOutcome:
    """Search every candidate (through `mapper`), explain the first two, write the run folder.
    `precision_notes`: why a hardware choice has no candidates of a searched precision (plan.md's Search).
    `kv_link`: the catalog entry of search.disaggregation.kv_transfer.link (serve.serving_tasks)."""
    import time

    from llmsim.planner.search import sharing_choice
    from llmsim.planner.serve import serving_tasks
    start = time.perf_counter()
    sharing = sharing_choice(plan)
    tasks = serving_tasks(plan, hardware, sharing, kv_link)
    if progress:
        units = sum(t.unit is not None for t in tasks)
        of_units = f" ({units} of them disaggregated units)" if units else ""
        progress(f"searching the highest rate under the SLO of {len(tasks)} candidate replica shapes{of_units} by "
                 f"simulation")
    results = plan_serving(tasks, plan.objective, mapper)
    by_shape = {t.shape: t for t in tasks}
    if any(c.feasible and c.sustained_at_least for c in results) and progress:
        progress("searching the winner's headroom (and its ties'): the highest rate one replica sustains above the goal")
    results = with_headroom(tasks, results, plan.objective)
    feasible = [c for c in results if c.feasible]
    sensitivity = None
    if len(feasible) > 1:
        if progress:
            progress("re-sizing the winner and the runner-up under ±20% link bandwidth, GEMM and memory efficiency")
        sensitivity = serving_sensitivity(plan, by_shape, feasible[0], feasible[1], mapper)
    explanation = serving_explanation(plan, results, sensitivity)
    explanation.precision_notes = list(precision_notes or [])
    seconds = time.perf_counter() - start
    write_serving_outputs(run_dir, plan, results, explanation, seconds, hardware, tasks[0].spec if tasks else
                          plan.serving)
    return ServingPlanOutcome(run_dir, results, explanation, hardware, seconds)


