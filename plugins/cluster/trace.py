"""The simulated timeline as a Chrome trace (open in Perfetto / chrome://tracing) and as a Gantt chart.

Figures follow the project rule: a function returns (fig, ax) and never saves; the backend saves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmsim_plugins.cluster.entities import Span

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

US_PER_S = 1e6  # trace-event timestamps are microseconds
LANES = ("compute", "comm", "p2p")
COLORS = {"forward": "#4C72B0", "backward": "#55A868", "optimizer": "#C44E52", "dp": "#8172B2",
          "zero": "#CCB974", "p2p": "#64B5CD", "sync": "#DD8452"}


def trace_events(spans: Sequence[Span], title: str = "cluster") -> dict[str, Any]:
    """Chrome trace-event JSON: one process per pipeline stage, one thread per lane, complete events."""
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0,
                                     "args": {"name": title}}]
    stages = sorted({s.stage for s in spans})
    for stage in stages:
        events.append({"name": "process_name", "ph": "M", "pid": stage + 1, "tid": 0,
                       "args": {"name": f"stage {stage}"}})
        for tid, lane in enumerate(LANES):
            events.append({"name": "thread_name", "ph": "M", "pid": stage + 1, "tid": tid,
                           "args": {"name": lane}})
    for s in spans:
        events.append({"name": s.name, "cat": s.category, "ph": "X", "pid": s.stage + 1,
                       "tid": LANES.index(s.lane), "ts": s.start * US_PER_S, "dur": (s.end - s.start) * US_PER_S})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(spans: Sequence[Span], path: Path, title: str = "cluster") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace_events(spans, title)))
    return path


def gantt_figure(spans: Sequence[Span], title: str = "", lanes: Sequence[str] = ("compute", "comm")
                 ) -> tuple["Figure", "Axes"]:
    """One pipeline replica over the step: a row per (stage, lane), bars colored by what ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    stages = sorted({s.stage for s in spans})
    rows = [(st, lane) for st in stages for lane in lanes]
    index = {row: i for i, row in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(12, max(2.0, 0.35 * len(rows) + 1)))
    by_cat: dict[str, list[tuple[float, float, int]]] = {}
    for s in spans:
        lane = "comm" if s.lane == "p2p" else s.lane
        if (s.stage, lane) in index:
            by_cat.setdefault(s.category, []).append((s.start, s.end - s.start, index[(s.stage, lane)]))
    for cat, bars in by_cat.items():
        for row in {r for _, _, r in bars}:
            ax.broken_barh([(x, w) for x, w, r in bars if r == row], (row - 0.4, 0.8),
                           facecolors=COLORS.get(cat, "#999999"))
    ax.set_yticks(range(len(rows)), [f"stage {st} {lane}" for st, lane in rows])
    ax.invert_yaxis()
    ax.set_xlabel("simulated time (s)")
    ax.set_title(title or "simulated step, one pipeline replica")
    ax.legend(handles=[Patch(color=COLORS.get(c, "#999999"), label=c) for c in sorted(by_cat)],
              loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig, ax
