"""The simulated timeline as a Chrome trace: open it in Perfetto or chrome://tracing.

The report reads the same file back (llmsim.report.trace) and draws its Gantt chart from it
(llmsim.report.figures.gantt), so one timeline has one picture.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmsim.sim.entities import Span

US_PER_S = 1e6  # trace-event timestamps are microseconds
LANES = ("compute", "comm", "p2p")


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
