"""`llmsim plan`, end to end: load, search, re-check the best by simulation, explain, write the folder.

Kept apart from the CLI so tests and notebooks get the same outcome object the command prints from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmsim.hardware import Catalog
from llmsim.planner.config import PlanFile, check_hardware
from llmsim.planner.explain import Explanation, explain
from llmsim.planner.report import plan_frame, write_outputs
from llmsim.planner.search import (Evaluation, Hardware, SearchStats, resolve_hardware, search, sharing_choice,
                                   simulate_top, workload_profile)
from llmsim.results import new_run_dir


@dataclass
class PlanOutcome:
    run_dir: Path
    rows: list[Evaluation]
    stats: SearchStats
    top: list[Evaluation]        # the best feasible (re-checked by simulation when it ran), best first
    closest: list[Evaluation]    # when nothing is feasible: the nearest misses
    explanation: Explanation
    hardware: list[Hardware]
    simulated: bool


def run_plan(plan: PlanFile, catalog: Catalog, out: Path, file: str = "<plan>", simulate: bool | None = None,
             progress: Callable[[str], None] | None = None) -> PlanOutcome:
    """Search the plan's space and write plan.parquet, plan.csv, figures/pareto.png, plan.md, plan.html, best.yaml."""
    check_hardware(plan, catalog, file)
    hardware = resolve_hardware(plan, catalog)
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    run_dir = new_run_dir(Path(out), f"plan-{plan.name}")  # before the search: an unusable --out fails first
    rows, stats = search(plan, hardware, sharing, profile, progress)
    simulated = plan.simulate if simulate is None else simulate
    if simulated and any(e.feasible for e in rows[:1]):
        if progress:
            progress(f"re-checking the best {plan.top_k} with the cluster simulation")
        top = simulate_top(plan, rows, hardware, profile, sharing, plan.top_k)
    else:
        simulated = False
        top = [e for e in rows if e.feasible][:plan.top_k]
    closest = [] if top else [e for e in rows if not e.feasible][:plan.top_k]
    explanation = explain(rows, stats, plan, top)
    frame = plan_frame(rows, hardware, plan.workload.model.layers)
    write_outputs(run_dir, plan, frame, explanation, top, closest, stats, hardware, simulated)
    return PlanOutcome(run_dir, rows, stats, top, closest, explanation, hardware, simulated)
