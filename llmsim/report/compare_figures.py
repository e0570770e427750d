"""Comparison figures: each RETURNS (fig, axes) from a comparison frame and never saves.

The frame is `compare.comparison_frame`: one row per (case, backend), metrics suffixed @A, @B, …, and
changes against the baseline A as `<metric>_change_pct@B`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.ticker import FuncFormatter

from llmsim.report.figures import NoData, new_figure
from llmsim.report.frames import any_value
from llmsim.report.metrics import Metric, tone
from llmsim.report.units import FORMATS, fmt_change, missing

BETTER, WORSE, SAME = "#55A868", "#C44E52", "#9AA3B5"


def _label(row: pd.Series) -> str:
    return f"{row['case']} ({row['backend']})"


def changes(frame: pd.DataFrame, letters: list[str], metrics: list[Metric]) -> tuple[Any, Any]:
    """Percent change of each matched case against the baseline, one panel per metric, cases aligned."""
    others = letters[1:]
    panels = [m for m in metrics if any(f"{m.column}_change_pct@{x}" in frame for x in others)]
    cols = [f"{m.column}_change_pct@{x}" for m in panels for x in others]
    rows = frame[any_value(frame, cols)]
    panels = [m for m in panels if rows[[f"{m.column}_change_pct@{x}" for x in others]].notna().any().any()]
    if rows.empty or not panels:
        raise NoData("no case has a value in the baseline and in another run")
    fig, axes = new_figure(3.6 * len(panels) + 2.0, 1.2 + 0.3 * len(rows) * len(others), 1, len(panels),
                           sharey=True)
    bar = 0.8 / len(others)
    for ax, m in zip(axes[0], panels):
        biggest = 5.0
        for j, x in enumerate(others):
            for i, v in enumerate(rows[f"{m.column}_change_pct@{x}"]):
                if missing(v):
                    continue
                p, y = float(v), i + (j - (len(others) - 1) / 2) * bar
                biggest = max(biggest, abs(p))
                ax.barh(y, p, height=bar * 0.9, color={"better": BETTER, "worse": WORSE}.get(tone(p, m) or "", SAME))
                label = fmt_change(p) + (f" ({x})" if len(others) > 1 else "")
                ax.annotate(label, (p, y), xytext=(3 if p >= 0 else -3, 0), textcoords="offset points",
                            ha="left" if p >= 0 else "right", va="center", fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(-biggest * 1.6, biggest * 1.6)
        ax.set_title(f"{m.title}\n({'higher' if m.higher_better else 'lower'} is better)", fontsize=9, loc="left")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+.3g}%" if v else "0"))
        ax.grid(axis="x", alpha=0.3)
    first = axes[0][0]
    first.set_yticks(range(len(rows)), [_label(r) for _, r in rows.iterrows()], fontsize=8)
    first.set_ylim(len(rows) - 0.5, -0.5)
    return fig, axes[0]


def grouped(frame: pd.DataFrame, letters: list[str], metric: Metric) -> tuple[Any, Any]:
    """A metric of every case, one bar per run, one panel per backend (each on its own scale)."""
    cols = [f"{metric.column}@{x}" for x in letters]
    rows = frame[any_value(frame, cols)]
    if rows.empty:
        raise NoData(f"no run reports {metric.column}")
    backends = list(dict.fromkeys(rows["backend"]))
    heights = [1.0 + 0.28 * len(letters) * (rows["backend"] == b).sum() for b in backends]
    fig, axes = new_figure(8.5, sum(heights) + 0.4, len(backends), 1, gridspec_kw={"height_ratios": heights})
    fmt = FORMATS[metric.how]
    bar = 0.8 / len(letters)
    for ax, backend in zip(axes[:, 0], backends):
        g = rows[rows["backend"] == backend]
        top = 0.0
        for j, x in enumerate(letters):
            vals = [float(v) if not missing(v) else 0.0 for v in g[f"{metric.column}@{x}"]]
            ys = [i + (j - (len(letters) - 1) / 2) * bar for i in range(len(g))]
            ax.barh(ys, vals, height=bar * 0.9, color=f"C{j}", label=x)
            for y, v in zip(ys, vals):
                if v:
                    ax.annotate(fmt(v), (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
            top = max([top, *vals])
        ax.set_xlim(0, (top or 1) * 1.3)
        ax.set_yticks(range(len(g)), [str(c) for c in g["case"]], fontsize=8)
        ax.set_ylim(len(g) - 0.5, -0.5)
        ax.set_title(backend, fontsize=10, loc="left")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v) if v else "0"))
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", title="run", title_fontsize=8)
    axes[-1, 0].set_xlabel(metric.title)
    return fig, axes[:, 0]
