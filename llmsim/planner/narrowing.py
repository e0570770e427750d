"""What a plan's `search` narrowing does beyond one axis at a time: the settings that contradict each other or
the device limit (errors, checked by planner.run.check_plan before any search), those that are legal but narrow
the search in a way a reader would not expect (notes, planner.run.plan_notes), and the one line plan.md's header
gives them (`narrowed_axes`).

The rule for error against note is the one a single axis follows (space.search_axis_problem): a setting none of
whose values can take effect in any configuration is an error naming its key and what is allowed (a fresh user's
report: `schedule: [interleaved]` with `virtual_stages: [99]` on 80 layers, or with `pp: [1]`, validated as ok and
planned without a single interleaved pipeline); a setting that takes effect, only not where the reader expects, or
that leaves the plan as meaningful without it (an inference plan's virtual stages), is a note.
"""

from __future__ import annotations

import math

from llmsim.divisors import divisors
from llmsim.planner.config import PlanFile, SearchSpace
from llmsim.planner.space import (ALL_SCHEDULES, DEFAULT_CP, DEFAULT_VIRTUAL_STAGES, axis_left_out,
                                  default_pp, shape_problem, shown_values)

SELECTIVE_IS_NONE = ("with the flash-attention kernel the planner prices, selective recompute keeps and recomputes "
                     "what none does (only the s x s scores, which flash never stores)")


def _listed(values: list) -> str:
    return "[" + ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values) + "]"


def _pipelines(plan: PlanFile) -> list[int]:
    """The searched pipeline depths that form a pipeline (pp > 1): search.pp, else the defaults."""
    w = plan.workload
    return [p for p in (plan.search.pp or default_pp(w.model.layers))
            if p > 1 and shape_problem(w, 1, p, 1, False, "1f1b", 1) is None]


def _no_pipeline(plan: PlanFile) -> str:
    """Why no configuration of the plan has a pipeline, in the words of the key that says so."""
    if plan.search.pp:
        return f"search.pp {_listed(plan.search.pp)} forms no pipeline"
    return f"a {plan.workload.model.layers}-layer model forms no pipeline"


def _interleaves(plan: PlanFile, v: int, pps: list[int]) -> bool:
    """Whether `v` virtual stages split the model's layers for some searched depth (the scenario's rule,
    check_strategy_shape: v divides the layers, each stage runs v equal chunks, pp x v <= layers)."""
    return any(shape_problem(plan.workload, 1, p, 1, False, "interleaved", v) is None for p in pps)


def pipeline_search_problem(plan: PlanFile) -> tuple[str, str] | None:
    """(key, message) when search.schedule and search.virtual_stages (with search.pp and the model's layers) can
    form none of the pipelines they ask for, else None. Serving plans refuse both keys (config.PlanFile)."""
    s, w = plan.search, plan.workload
    if plan.serving is not None or (s.schedule is None and s.virtual_stages is None):
        return None
    train = w.mode == "train"
    pps = _pipelines(plan)
    if not train:   # inference runs 1f1b: a stated schedule without it forms no pipeline (virtual stages: a note)
        if s.schedule is not None and "1f1b" not in s.schedule:
            return "search.schedule", (f"{_listed(s.schedule)}: a {w.mode} plan's pipelines run 1f1b (inference has "
                                       f"no backward to schedule); allowed: [1f1b], or leave search.schedule out")
        return None
    if s.schedule == ["interleaved"] and not pps:
        return "search.schedule", (f"[interleaved] needs a pipeline (pp > 1), and {_no_pipeline(plan)}; allowed: a "
                                   f"search.pp with a value above 1, or another schedule")
    schedules = s.schedule or ALL_SCHEDULES
    if s.virtual_stages is not None:
        given = _listed(s.virtual_stages)
        if "interleaved" not in schedules:
            return "search.virtual_stages", (f"{given}: virtual stages are the interleaved schedule's, and "
                                             f"search.schedule is {_listed(s.schedule or [])}; allowed: add "
                                             f"interleaved to search.schedule, or leave search.virtual_stages out")
        if not pps:
            return "search.virtual_stages", (f"{given}: virtual stages split a pipeline's stages, and "
                                             f"{_no_pipeline(plan)}; allowed: a search.pp with a value above 1, or "
                                             f"leave search.virtual_stages out")
    if s.virtual_stages is None and s.schedule != ["interleaved"]:
        return None
    stated = s.virtual_stages or list(DEFAULT_VIRTUAL_STAGES)
    if any(_interleaves(plan, v, pps) for v in stated):
        return _interleaved_count_problem(plan, [p for p in pps if any(_interleaves(plan, v, [p]) for v in stated)])
    # the first stated value's problem at the shallowest pipeline searched (the most room for chunks)
    problem = shape_problem(w, 1, min(pps), 1, False, "interleaved", stated[0]) or ""
    why = problem.split(": ", 1)[-1].split(" (allowed", 1)[0]
    usable = [v for v in range(2, w.model.layers + 1) if _interleaves(plan, v, pps)]
    shown = shown_values(usable)
    if s.virtual_stages is not None:
        return "search.virtual_stages", (f"{_listed(s.virtual_stages)} forms no interleaved pipeline of "
                                         f"{w.model.layers} layers ({why}); allowed values: "
                                         f"{shown or 'none (too few layers for 2 chunks per stage)'}")
    return "search.schedule", (f"[interleaved] forms no pipeline of {w.model.layers} layers with the default "
                               f"virtual stages {_listed(stated)} ({why}); allowed: "
                               + (f"search.virtual_stages from {shown}" if usable else
                                  "gpipe or 1f1b (too few layers for 2 chunks per stage)"))


def _microbatch_counts(plan: PlanFile) -> set[int]:
    """The micro-batch counts the plan's search can form: batch / (dp x micro_batch), over search.dp and
    search.micro_batch (each default: every divisor)."""
    batch, s = plan.workload.batch, plan.search
    dps = [d for d in (s.dp or divisors(batch)) if batch % d == 0]
    return {batch // (d * m) for d in dps for m in (s.micro_batch or divisors(batch // d)) if (batch // d) % m == 0}


def _interleaved_count_problem(plan: PlanFile, pps: list[int]) -> tuple[str, str] | None:
    """(key, message) when the interleaved pipelines asked for (schedule [interleaved], or stated virtual stages)
    have no micro-batch count that is a multiple of their depth at any of `pps` (the scenario's rule,
    resolve_layout: interleaved needs the micro-batches a multiple of pp; docs/scenario.md), else None. Trial 46:
    pp [7] interleaved on a batch of 1,024 (counts are powers of two) validated as ok and then planned nothing."""
    s, w = plan.search, plan.workload
    counts = _microbatch_counts(plan)
    if not pps or any(m % p == 0 for p in pps for m in counts):
        return None
    key = "search.schedule" if s.schedule == ["interleaved"] else "search.virtual_stages"
    if key == "search.virtual_stages" and s.virtual_stages is None:
        return None
    given = _listed(s.schedule if key == "search.schedule" else s.virtual_stages)
    stated = s.virtual_stages or list(DEFAULT_VIRTUAL_STAGES)
    usable = [p for p in default_pp(w.model.layers) if p > 1 and any(m % p == 0 for m in counts)
              and any(_interleaves(plan, v, [p]) for v in stated)]
    narrowed = " and ".join(k for k in ("search.dp", "search.micro_batch") if getattr(s, k.split(".")[1]))
    return key, (f"{given}: an interleaved pipeline needs a micro-batch count that is a multiple of pp, and no count "
                 f"the batch {w.batch:,} forms{f' with {narrowed}' if narrowed else ''} "
                 f"({shown_values(sorted(counts))}) is a multiple of search.pp {_listed(s.pp or pps)}; allowed: "
                 + (f"search.pp from {shown_values(usable)}" if usable else "a batch with such a count")
                 + ", or another schedule")


def search_value_problem(plan: PlanFile) -> tuple[str, str] | None:
    """(key, message) when a search axis's values can take effect in no configuration because of the plan's mode
    or another axis, else None: an inference plan's search.zero without 0 or search.recompute without none (it
    runs ZeRO-0 without recompute, as its search.schedule runs 1f1b), search.sp [true] with search.tp [1]
    (sequence parallelism splits the tensor-parallel group's activations). Serving plans refuse these keys."""
    s, w = plan.search, plan.workload
    if plan.serving is not None:
        return None
    if w.mode != "train":
        if s.zero is not None and 0 not in s.zero:
            return "search.zero", (f"{_listed(s.zero)}: a {w.mode} plan runs ZeRO-0 (inference keeps no gradients "
                                   f"or optimizer state to shard); allowed: [0], or leave search.zero out")
        if s.recompute is not None and not {"none", "selective"} & set(s.recompute):
            return "search.recompute", (f"{_listed(s.recompute)}: a {w.mode} plan runs without recompute (inference "
                                        f"has no backward to recompute for); allowed: [none], or leave "
                                        f"search.recompute out")
    if s.sp == [True] and s.tp is not None and max(s.tp) == 1:
        return "search.sp", (f"[true]: sequence parallelism splits the tensor-parallel group's activations and needs "
                             f"tp > 1, and search.tp is {_listed(s.tp)}; allowed: a search.tp with a value above 1, "
                             f"or search.sp [false]")
    return None


def device_ceiling_problem(plan: PlanFile) -> tuple[str, str] | None:
    """(key, message) when the largest degrees the plan's search can form take fewer devices than
    limits.min_devices, else None: known where search.tp is stated (its default follows each hardware choice's
    node); pp, cp and dp are their stated values or defaults (every divisor of the batch for dp). A serving plan
    searches replicas, so it has no ceiling. Trial 46: tp, pp, cp, dp [1] with min_devices 2 validated as ok."""
    s, w, floor = plan.search, plan.workload, plan.limits.min_devices
    if plan.serving is not None or s.tp is None or floor <= 1:
        return None
    most = {"tp": max(s.tp), "pp": max(s.pp or default_pp(w.model.layers)),
            "cp": max(s.cp or ([1] if w.mode == "decode" else DEFAULT_CP)),
            "dp": max(d for d in (s.dp or [w.batch]) if w.batch % d == 0) if any(
                w.batch % d == 0 for d in (s.dp or [w.batch])) else 1}
    ceiling = math.prod(most.values())
    if ceiling >= floor:
        return None
    parts = " x ".join(f"{a} {n}" for a, n in most.items())
    narrow = [f"search.{a}" for a in most if getattr(s, a) is not None]
    return "limits.min_devices", (f"{floor:,} is more than the largest degrees searched form ({parts}: {ceiling:,} "
                                  f"device{'s' if ceiling > 1 else ''}, tp x pp x cp x dp); allowed: min_devices up "
                                  f"to {ceiling:,}, or larger "
                                  f"values in {', '.join(narrow)}")


def device_floor_problem(plan: PlanFile) -> tuple[str, str] | None:
    """(key, message) when the smallest degrees the plan's search states need more devices than
    limits.max_devices, one axis alone (search.tp: [8] under max_devices 4) or together (tp x pp x cp, with ep
    inside cp x dp: ep x etp, etp = tp, divides a stage's tp x cp x dp ranks), else None. A serving replica is
    tp x pp (its ep inside tp). A fresh user's report: validate said ok, and the plan then said why nothing
    formed."""
    s, cap = plan.search, plan.limits.max_devices
    serving = plan.serving is not None
    axes = ("tp", "pp", "ep") if serving else ("tp", "pp", "cp", "ep")
    least = {a: min(getattr(s, a)) for a in axes if getattr(s, a)}
    for axis, n in least.items():
        if n > cap:
            return f"search.{axis}", (f"{_listed(getattr(s, axis))} takes at least {n:,} devices, more than "
                                      f"limits.max_devices={cap:,}; allowed: values up to {cap:,}, or a larger "
                                      f"limits.max_devices")
    tp, pp, cp, ep = (least.get(a, 1) for a in ("tp", "pp", "cp", "ep"))
    floor = tp * pp * (1 if serving else math.lcm(cp, ep))
    if floor <= cap:
        return None
    parts = " x ".join(f"{a} {n}" for a, n in least.items() if n > 1 and not (serving and a == "ep"))
    what = "a replica, tp x pp" if serving else "tp x pp x cp, with ep inside cp x dp"
    return "search", (f"the smallest degrees searched ({parts}) take {floor:,} devices ({what}), more than "
                      f"limits.max_devices={cap:,}; allowed: degrees whose product is at most {cap:,}, or a larger "
                      f"limits.max_devices")


def narrowing_notes(plan: PlanFile) -> list[str]:
    """What a plan's search or limits narrow that a reader would not expect, and that is no error: virtual stages
    in an inference plan (a training plan's left in it: not searched), a schedule stated for a plan without a
    pipeline (it runs none: every configuration is listed 1f1b), and a null max_devices (the default ceiling, not
    "no limit")."""
    s, out = plan.search, []
    if plan.serving is None and plan.workload.mode != "train" and s.virtual_stages is not None:
        out.append(f"search.virtual_stages {_listed(s.virtual_stages)}: a {plan.workload.mode} plan's pipelines run "
                   f"1f1b, so virtual stages (the interleaved schedule's, a training schedule) are not searched")
    if plan.serving is None and s.schedule is not None and s.schedule != ["1f1b"] and not _pipelines(plan):
        out.append(f"search.schedule {_listed(s.schedule)} narrows the pipelines' schedules, and "
                   f"{_no_pipeline(plan)}: every configuration runs without one (listed as 1f1b)")
    if plan.serving is None and s.recompute is not None and "selective" in s.recompute:
        out.append(f"search.recompute {_listed(s.recompute)}: {SELECTIVE_IS_NONE}, so selective is searched as "
                   f"none (configurations listed with recompute none)")
    if plan.serving is None and plan.workload.mode != "train":
        mode = plan.workload.mode
        if s.zero is not None and s.zero != [0] and 0 in s.zero:
            out.append(f"search.zero {_listed(s.zero)}: a {mode} plan runs ZeRO-0 (no gradients or optimizer state "
                       f"to shard), so only 0 is searched")
        if s.recompute is not None and set(s.recompute) - {"none", "selective"} and {"none", "selective"} & set(
                s.recompute):
            out.append(f"search.recompute {_listed(s.recompute)}: a {mode} plan runs without recompute (no "
                       f"backward), so only none is searched")
    if plan.serving is None and s.sp is not None and True in s.sp and False in s.sp and s.tp is not None \
            and max(s.tp) == 1:
        out.append(f"search.sp [true, false]: sequence parallelism needs tp > 1, and search.tp is {_listed(s.tp)}: "
                   f"only sp false is searched")
    if "max_devices" in plan.limits._given_null:
        out.append(f"limits.max_devices: null is the default, {plan.limits.max_devices:,} devices (a ceiling the "
                   f"search needs, not 'no limit'); set a number to search beyond it")
    return out


def pipeline_left_out(plan: PlanFile) -> dict[str, dict[int, str]]:
    """The stated values of search.virtual_stages and search.pp that form no interleaved pipeline beside values that
    do (pipeline_search_problem refuses a setting with none), axis -> {value: why}: a virtual-stage count that
    interleaves no searched pp (it does not divide the layers, or pp x v exceeds them, or the only pp it interleaves
    has no micro-batch count that is a multiple of it), and, under `schedule: [interleaved]` alone, a pp > 1 that
    no stated virtual-stage count interleaves or whose micro-batch counts are never a multiple of it (the scenario's
    rules, check_strategy_shape and resolve_layout). The search leaves them out as any invalid configuration; a
    fresh user's report: `pp: [4], virtual_stages: [40, 5]` on 80 layers searched 5 alone without a word, the
    header listing 40."""
    s, w = plan.search, plan.workload
    if plan.serving is not None or w.mode != "train" or pipeline_search_problem(plan) is not None:
        return {}
    if "interleaved" not in (s.schedule or ALL_SCHEDULES):
        return {}
    counts = _microbatch_counts(plan)
    pps = _pipelines(plan)
    stated = s.virtual_stages or list(DEFAULT_VIRTUAL_STAGES)
    shown_counts = shown_values(sorted(counts))

    def counted(p: int) -> bool:
        return any(m % p == 0 for m in counts)

    def no_count(p: int) -> str:
        return (f"an interleaved pipeline needs a micro-batch count that is a multiple of pp, and none the batch "
                f"{w.batch:,} forms ({shown_counts}) is a multiple of {p}")

    out: dict[str, dict[int, str]] = {}
    if s.schedule == ["interleaved"] and s.pp:
        pp_out: dict[int, str] = {}
        for p in pps:
            if not any(_interleaves(plan, v, [p]) for v in stated):
                problem = shape_problem(w, 1, p, 1, False, "interleaved", stated[0]) or ""
                why = problem.split(": ", 1)[-1].split(" (allowed", 1)[0]
                pp_out[p] = (f"no virtual stages of {_listed(stated)} interleave {p} stages "
                             f"(v {stated[0]}: {why}), and search.schedule is [interleaved]")
            elif not counted(p):
                pp_out[p] = f"{no_count(p)}, and search.schedule is [interleaved]"
        if pp_out:
            out["pp"] = pp_out
    if s.virtual_stages:
        usable = [p for p in pps if counted(p)]
        v_out: dict[int, str] = {}
        for v in s.virtual_stages:
            if _interleaves(plan, v, usable):
                continue
            shaped = [p for p in pps if _interleaves(plan, v, [p])]
            if shaped:   # it interleaves only pipelines no micro-batch count fills
                v_out[v] = f"it interleaves only pp {_listed(shaped)}, and {no_count(shaped[0])}"
                continue
            problem = shape_problem(w, 1, min(pps), 1, False, "interleaved", v) or ""
            key, _, why = problem.partition(": ")
            why = why.split(" (allowed", 1)[0]
            v_out[v] = f"at pp {min(pps)}, {why}" if key == "pp" else why
        if v_out:
            out["virtual_stages"] = v_out
    return out


def left_out(plan: PlanFile) -> dict[str, dict[int, str]]:
    """Every stated search value the search leaves out beside values of its axis it searches, axis -> {value:
    why}: those the model cannot use (space.axis_left_out) and those that form no interleaved pipeline
    (pipeline_left_out), in SearchSpace's order."""
    axis, pipeline = axis_left_out(plan), pipeline_left_out(plan)
    out = {}
    for key in SearchSpace.model_fields:
        merged = {**axis.get(key, {}), **pipeline.get(key, {})}
        if merged:   # in the order the plan states them
            out[key] = {v: merged[v] for v in getattr(plan.search, key) if v in merged}
    return out


def left_out_note(plan: PlanFile) -> str | None:
    """One note naming each left-out value (left_out) and why, and what is searched, e.g. "search.tp [3, 4]: 3 is
    left out (3 does not divide heads=64); searched: [4]"; None when every stated value is searched."""
    parts = []
    for key, dropped in left_out(plan).items():
        given = getattr(plan.search, key)
        kept = [v for v in given if v not in dropped]
        whys = "; ".join(why if len(dropped) == 1 or why.startswith(f"{v} ") else f"{v}: {why}"
                         for v, why in dropped.items())
        parts.append(f"search.{key} {_listed(given)}: {', '.join(map(str, dropped))} "
                     f"{'is' if len(dropped) == 1 else 'are'} left out ({whys}); searched: {_listed(kept)}")
    return "; ".join(parts) or None


def narrowed_axes(plan: PlanFile) -> str:
    """plan.md's header line of the search axes the plan narrows, with the values searched (a stated value left
    out, left_out, is not listed: `left_out_note` names it), e.g. "tp [4, 8]; schedule [1f1b]"; "none" where it
    narrows none (every value the model and batch allow)."""
    search, parts = plan.search, []
    dropped = left_out(plan)
    for key in SearchSpace.model_fields:
        value = getattr(search, key)
        if value is None:
            continue
        if key == "disaggregation":
            parts.append(f"disaggregation prefill {_listed(value.prefill)}, decode {_listed(value.decode)}")
        else:
            parts.append(f"{key} {_listed([v for v in value if v not in dropped.get(key, {})])}")
    return "; ".join(parts) if parts else "none: every value the model and batch allow"
