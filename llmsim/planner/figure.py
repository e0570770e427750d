"""The plan's Pareto figure (matplotlib): cost against time to goal of every priced configuration, per hardware.

A module of its own, imported only where the figure is drawn (run.pareto_png): `llmsim plan` draws it in a
worker forked beside its own work (executor.Executor.beside), so the plan's process neither imports matplotlib
(~0.3 s) nor draws and rasterises (~0.7 s for the 70B plan's ~80,000 points).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.legend import Legend

from llmsim.planner.config import PlanFile
from llmsim.planner.explain import latency_name
from llmsim.planner.report import ParetoTask, pareto_front
from llmsim.report.figures import new_figure
from llmsim.report.raster import png


PARETO_SAMPLE = 20000  # at most this many non-front points are drawn (the front always is)
MISS_COLOR = "#9a9a9a"   # pareto_figure: configurations that miss the goal


def pareto_figure(priced: pd.DataFrame, plan: PlanFile, winner: int | None = None) -> tuple[Any, Any]:
    """Cost against time to goal (inference: cost per hour against step latency), log-log, per hardware,
    feasible points in the hardware's colour, misses in grey, the Pareto front of the feasible ones drawn as a line.

    `priced`: report.pareto_points of the plan's table (its priced rows, the columns drawn); `winner`: the chosen
    row's index in that table, starred."""
    fig, axes = new_figure(8.0, 5.2)
    ax = axes[0][0]
    train = plan.workload.mode == "train"
    scale = 86400.0 if train else 1e-3
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    for i, (name, part) in enumerate(priced.groupby("hardware", sort=False)):
        color = colors[i % len(colors)]
        ok, miss = part[part["feasible"]], part[~part["feasible"]]
        if len(miss) > PARETO_SAMPLE:
            miss = miss.sample(PARETO_SAMPLE, random_state=0)
        if len(ok) > PARETO_SAMPLE:
            ok = ok.sample(PARETO_SAMPLE, random_state=0)
        # the misses in grey, whatever their hardware: thousands of faint dots of a hardware's colour read as
        # solid ones, and those past the deadline looked as if they met the goal
        ax.scatter(miss["time_to_goal_s"] / scale, miss["cost_usd"], s=4, color=MISS_COLOR, alpha=0.12,
                   linewidths=0, label="misses the goal (any hardware)" if i == 0 and len(miss) else None)
        ax.scatter(ok["time_to_goal_s"] / scale, ok["cost_usd"], s=7, color=color, alpha=0.5, linewidths=0,
                   label=f"{name} (meets the goal)")
    feasible = priced[priced["feasible"]]
    if len(feasible):
        idx = pareto_front(feasible["cost_usd"].to_numpy(float), feasible["time_to_goal_s"].to_numpy(float))
        front = feasible.iloc[idx]
        ax.plot(front["time_to_goal_s"] / scale, front["cost_usd"], "-o", color="#1d2330", ms=3, lw=1.2,
                label="Pareto front")
    if winner is not None and winner in priced.index:
        row = priced.loc[winner]
        ax.scatter([row["time_to_goal_s"] / scale], [row["cost_usd"]], s=120, marker="*", color="#C44E52",
                   zorder=5, label="chosen")
    if train and plan.goal.deadline_days:
        ax.axvline(plan.goal.deadline_days, color="#C44E52", ls="--", lw=1, label="deadline")
    if not train and plan.goal.max_step_latency_s:
        ax.axvline(plan.goal.max_step_latency_s * 1e3, color="#C44E52", ls="--", lw=1, label="latency limit")
    if len(priced):
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("time to goal (days)" if train else f"{latency_name(plan)} latency (ms)")
    ax.set_ylabel("cost (USD)" if train else "cost (USD per hour of serving)")
    ax.set_title(f"{plan.name}: cost against time, {len(priced):,} priced configurations")
    ax.grid(True, which="both", alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # ax.legend(fontsize=8, loc="best"), placed on the points as one array
        ax.legend_ = PointsLegend(ax, handles, labels, fontsize=8, loc="best")
    return fig, ax


class PointsLegend(Legend):
    """matplotlib's Legend, placed at loc="best" as matplotlib places it, its placement handed the scatter points
    as one array: Legend._find_best_position counts the points inside each of nine candidate boxes and converts
    the list of points it gathers (an entry per point) anew for each box, at each of the six times a
    constrained-layout savefig asks. One array gives the same counts, so the same place and the same pixels
    (tests/planner/test_outputs.py), ~10x sooner: it was 0.45 s of the 70B plan's 0.9 s figure (~80,000 points)."""

    def _auto_legend_data(self, *args: Any, **kwargs: Any) -> Any:
        data = super()._auto_legend_data(*args, **kwargs)
        if isinstance(data, tuple) and len(data) == 3 and isinstance(data[2], list):  # (bboxes, lines, points)
            return data[0], data[1], np.asarray(data[2], dtype=float).reshape(-1, 2)
        return data


def draw_png(task: ParetoTask) -> bytes:
    """figures/pareto.png's bytes (llmsim.report.raster: a 128-colour palette, no metadata)."""
    fig, _ = pareto_figure(task.points, task.plan, task.winner)
    return png(fig)
