"""Capacity planning (`llmsim plan PLAN.yaml`): which hardware, how many devices and which parallel
strategy meet a training or serving goal at the least cost, time, energy or devices.

Modules: config (the plan file), space (the configurations and their validity rules), search
(screen, price with the roofline cost model, rank, re-check with the cluster simulation), explain
(why the winner wins, what limits when nothing meets the goal), report (plan.csv, figure, report,
best.yaml), run (all of it, for the CLI).
"""

from llmsim.planner.config import PlanFile, load_plan, parse_plan
from llmsim.planner.run import PlanOutcome, run_plan

__all__ = ["PlanFile", "PlanOutcome", "load_plan", "parse_plan", "run_plan"]
