"""`llmsim plan`, end to end: load, search, re-check the best by simulation, explain, write the folder.

Kept apart from the CLI so tests and notebooks get the same outcome object the command prints from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmsim import interrupt
from llmsim.errors import ScenarioError
from llmsim.config import SharingChoice
from llmsim.executor import Executor, LocalExecutor, Progress
from llmsim.hardware import Catalog
from llmsim.planner.collector import collector_paused
from llmsim.planner.config import PlanFile, check_hardware
from llmsim.planner.precisions import candidates
from llmsim.planner.explain import (Explanation, choice_lines, distinct_runner_up, explain, limit_of, tie_line,
                                    training_sensitivity)
from llmsim.planner.report import ParetoTask, pareto_task, plan_frame, write_outputs
from llmsim.planner.search import (Evaluation, Hardware, Rows, SearchCaches, SearchStats, dropped_precisions,
                                   first_rows, precision_contexts, prepare_search, resolve_hardware, search,
                                   sharing_choice, simulate_top)
from llmsim.planner.profiling import PlanProfile
from llmsim.planner.serve import Mapper
from llmsim.planner.narrowing import (device_ceiling_problem, device_floor_problem, left_out_note,
                                     narrowing_notes, pipeline_search_problem, search_value_problem)
from llmsim.planner.space import search_axis_problem
from llmsim.planner.serve_report import ServingPlanOutcome, run_serving_plan
from llmsim.workload.profile import WorkloadProfile
from llmsim.results import new_run_dir


@dataclass
class PlanOutcome:
    run_dir: Path
    rows: Rows                   # every row, ranked: a sequence of Evaluations over columns (search.Rows)
    stats: SearchStats
    top: list[Evaluation]        # the best feasible (re-checked by simulation when it ran), best first
    closest: list[Evaluation]    # when nothing is feasible: the nearest misses
    explanation: Explanation
    hardware: list[Hardware]
    simulated: bool


def run_plan(plan: PlanFile, catalog: Catalog, out: Path, file: str = "<plan>", simulate: bool | None = None,
             progress: Callable[[str], None] | None = None, executor: Executor | None = None,
             task_progress: Progress | None = None, profile: PlanProfile | None = None,
             live: Callable[[str], None] | None = None) -> PlanOutcome | ServingPlanOutcome:
    """Search the plan's space and write plan.parquet, plan.csv, figures/pareto.png, plan.md, plan.html, best.yaml.

    `executor` runs the cluster-simulation re-checks (llmsim.executor; default: in this process), with
    task_progress(done, total) after each, and, through its `few_heavy()`, the search's pricing of each hardware
    choice and precision (under `auto` or `ray`: in forked workers, one per core; the same rows). A serving plan (a `serving:` block) is searched by simulation
    instead (planner.serve): the executor runs its candidates' rate searches and the sensitivity's what-ifs,
    and it returns a ServingPlanOutcome. `profile`: the plan's workload profile begun by the caller
    (planner.profiling.PlanProfile of the plan's workload and sharing choice, on the same executor: `llmsim plan`
    starts it as soon as the plan is read); default: begun here. A serving plan does not read it. `live`: the
    lines said while each hardware choice is priced (search's `live`: a module-level function, pickled into
    forked workers)."""
    hardware = check_plan(plan, catalog, file)
    if plan.serving is not None:
        run_dir, made_out = _new_plan_folder(out, plan)
        mapper: Mapper = map if executor is None else \
            (lambda fn, tasks: executor.map(fn, list(tasks), task_progress))  # noqa: E731
        # the precisions of search.dtype (or the workload's own) each device can run: devices that can run none
        # (float8 without FP8 units) are left out, as a training plan leaves out their candidates
        runnable = [h for h in hardware if candidates(plan, h.device)[0]]
        with _removed_if_left_empty(run_dir, made_out):
            search = plan.search.disaggregation
            link = search.kv_transfer.link if search is not None else None
            return run_serving_plan(plan, runnable, run_dir, progress, mapper, dropped_precisions(plan, hardware),
                                    catalog.links[link] if link is not None else None)
    with collector_paused(), (profile or PlanProfile(plan.workload, sharing_choice(plan), executor)) as begun:
        return _run_search_plan(plan, hardware, out, simulate, progress, executor, task_progress, begun, live)


def check_plan(plan: PlanFile, catalog: Catalog, file: str = "<plan>") -> list[Hardware]:
    """Every check a plan gets before its search (`llmsim plan` and `llmsim validate PLAN.yaml`): its devices and
    links in the catalog, priceable (check_hardware), its search axes one by one and together (narrowing: schedules
    and virtual stages that form no pipeline, degrees that take more than max_devices), and a serving plan's expert
    layouts;
    the resolved hardware choices. Raises ScenarioError naming the file and key."""
    check_hardware(plan, catalog, file)
    for problem in (search_axis_problem(plan), search_value_problem(plan), pipeline_search_problem(plan),
                    device_floor_problem(plan), device_ceiling_problem(plan)):
        if problem is not None:
            raise ScenarioError(file, *problem)
    hardware = resolve_hardware(plan, catalog)
    device_range = device_range_problem(plan, [h.node.devices_per_node for h in hardware])
    if device_range is not None:
        raise ScenarioError(file, "limits.min_devices", device_range)
    if plan.serving is not None:
        from llmsim.planner.serve import disaggregation_device_problem, expert_search_problem
        expert_problem = expert_search_problem(plan, max(h.devices_per_node for h in hardware))
        if expert_problem is not None:
            raise ScenarioError(file, *expert_problem)
        unit_problem = disaggregation_device_problem(plan, [h.devices_per_node for h in hardware])
        if unit_problem is not None:
            raise ScenarioError(file, *unit_problem)
    return hardware


def device_range_problem(plan: PlanFile, nodes: list[int]) -> str | None:
    """Why no device count from limits.min_devices to max_devices can be rented on any hardware choice (its
    devices_per_node in `nodes`: part of one node, or whole nodes: space.node_problem), else None. Trial 44:
    min = max = 12 on 8-device nodes validated as ok, and the plan then blamed memory."""
    lo, hi = plan.limits.min_devices, plan.limits.max_devices
    if lo <= 1 or any(lo <= per_node or (hi // per_node) * per_node >= lo for per_node in nodes):
        return None
    near = sorted({n for per_node in nodes for n in ((lo // per_node) * per_node, -(-hi // per_node) * per_node)
                   if n >= 1})
    per = ", ".join(str(n) for n in dict.fromkeys(nodes))
    return (f"no device count from {lo:,} to max_devices={hi:,} is part of one node or whole nodes of "
            f"{per} devices; allowed: a range holding one, e.g. {' or '.join(f'{n:,}' for n in near)}")


def plan_notes(plan: PlanFile, hardware: list[Hardware]) -> list[tuple[str, str]]:
    """(level, text) of what a plan's reader should know that is not an error, said by `llmsim plan` after its
    table and by `llmsim validate` before any search: an example price, a searched tp beyond a node, float4
    without FP4 tensor cores, a span too short to judge an SLO (a warning), instance counts no unit can use, a
    precision some hardware cannot run, a serving-only key (rate_tolerance) in another plan, and a search or limit
    that narrows the plan unexpectedly (narrowing.narrowing_notes: a schedule without a pipeline, a null
    max_devices)."""
    from llmsim.planner.search import tp_span_notes, weight_only_notes
    from llmsim.planner.serve import short_span_note, unused_counts_note

    out = [("note", f"{h.name} is priced at the example ${h.usd_per_device_hour:g}/device-hour; set "
                    f"hardware[].usd_per_device_hour to your own price") for h in hardware if h.example_price]
    if plan.serving is None and "rate_tolerance" in plan.model_fields_set:   # trial 43: accepted without a word
        out.append(("note", "rate_tolerance: read by serving plans only (their search over request rates); this "
                            f"{'training' if plan.workload.mode == 'train' else plan.workload.mode} plan does not "
                            f"use it"))
    out += [("note", note) for note in tp_span_notes(plan, hardware) + weight_only_notes(plan, hardware)
            + narrowing_notes(plan)]
    dropped = left_out_note(plan)
    if dropped:
        out.append(("note", dropped))
    if plan.serving is not None and plan.serving.block_note():   # as `llmsim validate` of a scenario says it
        out.append(("note", f"serving.kv_block_tokens: {plan.serving.block_note()}"))
    short = short_span_note(plan)
    if short:
        out.append(("warning", short))
    unused = unused_counts_note(plan, [h.devices_per_node for h in hardware])
    if unused:
        out.append(("note", unused))
    out += [("note", f"no candidates of that precision: {why}") for h in hardware
            for why in candidates(plan, h.device)[1]]
    fusion = fusion_note(plan, hardware)
    if fusion:
        out.append(("note", fusion))
    return out


def fusion_note(plan: PlanFile, hardware: list[Hardware]) -> str | None:
    """Where a serving plan asks for vLLM's all-reduce + RMSNorm fusion (serving.scheduler.fuse_allreduce_rms): the
    candidates priced without it, as vLLM runs them (costmodel.eager.fused_allreduce_rms_sites): tp 1, a pipeline,
    attention data parallelism, and hardware without a fusion limit (`llmsim run` notes the same per case)."""
    if plan.serving is None or not plan.serving.scheduler.fuse_allreduce_rms:
        return None
    without = [h.name for h in hardware if not getattr(h.device, "allreduce_rms_fusion_max_bytes", None)]
    where = "candidates at tp 1, pp > 1 or attention_dp > 1" + (
        f", and every candidate on {', '.join(without)} (no fusion limit in its catalog entry: vLLM runs the fusion "
        f"on Hopper and Blackwell only)" if without else "")
    return f"serving.scheduler.fuse_allreduce_rms: {where} are priced without it, as vLLM runs them"


def _new_plan_folder(out: Path, plan: PlanFile) -> tuple[Path, Path | None]:
    """The plan's folder out/plan-NAME/STAMP, made now, and `out` itself where this made it too (an --out, or
    reports/, that did not exist): `_removed_if_left_empty` takes it away with the run folder."""
    made_out = None if Path(out).exists() else Path(out)
    return new_run_dir(Path(out), f"plan-{plan.name}"), made_out


@contextmanager
def _removed_if_left_empty(run_dir: Path, made_out: Path | None = None) -> Iterator[None]:
    """A plan stopped before it writes (Ctrl-C, an error) leaves no empty run folder behind: the folder made
    first (so that an unusable --out fails before the search) is removed if nothing was written in it, and its
    out/plan-NAME parent too if that is left empty, and `made_out`, the --out folder the plan itself made (trial
    31: an empty reports/ was left). A folder with any file in it is kept."""
    try:
        yield
    except BaseException:
        for folder in (run_dir, run_dir.parent, *([made_out] if made_out is not None else [])):
            try:
                folder.rmdir()          # only an empty folder
            except OSError:
                break
        raise


def _run_search_plan(plan: PlanFile, hardware: list[Hardware], out: Path, simulate: bool | None,
                     progress: Callable[[str], None] | None, executor: Executor | None,
                     task_progress: Progress | None, begun: PlanProfile,
                     live: Callable[[str], None] | None = None) -> PlanOutcome:
    """run_plan of a training or inference plan: search, re-check, explain, write."""
    sharing = sharing_choice(plan)
    # a profile not yet stored is traced in a forked worker while this process readies the search (prepare_search)
    profile, caches = prepare_search(plan, hardware, begun)
    run_dir, made_out = _new_plan_folder(out, plan)  # before the search: an unusable --out fails first
    with _removed_if_left_empty(run_dir, made_out):
        return _search_and_write(plan, hardware, sharing, profile, caches, run_dir, simulate, progress, executor,
                                 task_progress, live)


def _search_and_write(plan: PlanFile, hardware: list[Hardware], sharing: SharingChoice, profile: WorkloadProfile,
                      caches: SearchCaches, run_dir: Path, simulate: bool | None,
                      progress: Callable[[str], None] | None,
                      executor: Executor | None, task_progress: Progress | None,
                      live: Callable[[str], None] | None) -> PlanOutcome:
    """The search, the re-check, the explanation and the files of a training or inference plan in `run_dir`."""
    rows, stats = search(plan, hardware, sharing, profile, progress, executor=executor, caches=caches, live=live)
    simulated = plan.simulate if simulate is None else simulate
    if simulated and len(rows) and bool(rows.columns["feasible"][0]):
        if progress:
            progress(f"re-checking the best {plan.top_k} with the cluster simulation")
        top = simulate_top(plan, rows, hardware, profile, sharing, plan.top_k, executor, task_progress)
    else:
        simulated = False
        top = first_rows(rows, plan.top_k)
    closest = [] if top else first_rows(rows, plan.top_k, feasible=False)
    # a Ctrl-C whose KeyboardInterrupt was lost on the way still stops the plan here, before anything is written
    # (under interrupt.handling(), as `llmsim plan` runs it). One landing in the first instants of the re-check was
    # seen lost, 2 of ~20 tries; where is not pinned down (interrupt.py lists how an exception can be lost; a SimPy
    # process also takes an exception raised in it as its own failure)
    interrupt.check()
    # the Pareto figure (matplotlib's import, the drawing, the PNG: ~1 s for the 70B plan) is drawn in a worker
    # forked now, while this process builds the table, explains the choice (its what-ifs are simulations) and
    # writes the files; under --executor local, here, when the report asks for it
    here = executor or LocalExecutor()
    with here.few_heavy().beside(pareto_png, pareto_task(rows, plan, top)) as figure:
        frame = plan_frame(rows, hardware, plan.workload.model.layers, plan, top, simulated)
        explanation = _explanation(plan, rows, stats, top, hardware, sharing, profile, simulated)
        write_outputs(run_dir, plan, frame, explanation, top, closest, stats, hardware, simulated, figure.result)
    return PlanOutcome(run_dir, rows, stats, top, closest, explanation, hardware, simulated)


def pareto_png(task: ParetoTask) -> bytes:
    """figures/pareto.png's bytes: planner.figure, and matplotlib with it, imported only where this runs (in the
    worker `beside` forks, or here under --executor local). Here, not in planner.report, which planner.figure
    reads its ParetoTask from: the modules import one way (tests/test_layout.py, no import cycle). b"" when no
    configuration was priced (every one over memory): no figure is drawn, and plan.md says why (a fresh user's
    report: an empty pair of axes was drawn)."""
    if not len(task.points):
        return b""
    from llmsim.planner.figure import draw_png

    return draw_png(task)


def _explanation(plan: PlanFile, rows: Rows, stats: SearchStats, top: list[Evaluation], hardware: list[Hardware],
                 sharing: SharingChoice, profile: WorkloadProfile, simulated: bool) -> Explanation:
    """Why the winner wins, what limits it and the runner-up, and how its choice stands the what-ifs."""
    explanation = explain(rows, stats, plan, top)
    explanation.precision_notes = dropped_precisions(plan, hardware)
    if top:
        contexts = {(h.name, label): ctx for h, label, ctx in precision_contexts(plan, hardware, sharing, profile)}
        # the runner-up the limits and the what-ifs compare: the best that does not price exactly as the winner
        runner_up, ties = distinct_runner_up(top, rows)
        sensitivity = (training_sensitivity(plan, top[0], runner_up, contexts, simulated) if runner_up is not None
                       else None)
        explanation.limits = [limit_of(e, who, rows, plan, contexts, sensitivity)
                              for e, who in zip((top[0], runner_up), ("winner", "runner-up")) if e is not None]
        explanation.sensitivity = sensitivity
        tie = tie_line(ties, runner_up, top[0])
        explanation.choice = ([tie] if tie else []) + choice_lines(explanation.limits, sensitivity)
    return explanation
