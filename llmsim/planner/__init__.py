"""Capacity planning (`llmsim plan PLAN.yaml`): which hardware, how many devices and which parallel
strategy meet a training or serving goal at the least cost, time, energy or devices.

Modules: config (the plan file), space (the configurations and their validity rules), search
(screen, price with the roofline cost model, rank, re-check with the cluster simulation), explain
(why the winner wins, what limits when nothing meets the goal), report (plan.csv, figure, report,
best.yaml), run (all of it, for the CLI), profiling (the plan's workload profile, begun early).

`run_plan` and `PlanOutcome` are imported from planner.run when first asked for (PEP 562): reading a plan file
(planner.config) then imports neither pandas nor the search, so `llmsim plan` can fork its profile's worker
first (planner.profiling).
"""

from typing import Any

from llmsim.planner.config import PlanFile, load_plan, parse_plan

__all__ = ["PlanFile", "PlanOutcome", "load_plan", "parse_plan", "run_plan"]


def __getattr__(name: str) -> Any:
    if name in ("PlanOutcome", "run_plan"):
        from llmsim.planner import run

        return getattr(run, name)
    raise AttributeError(f"module 'llmsim.planner' has no attribute {name!r}")
