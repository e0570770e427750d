"""Read a Chrome trace-event file (`trace.json` in a run folder) into spans for a Gantt chart.

The format is the one chrome://tracing and Perfetto open: a JSON list of events, or an object with
`traceEvents`. Complete events (`ph: "X"`, with `dur`) and begin/end pairs (`ph: "B"`/`"E"`) become
spans; `ph: "M"` metadata events name processes and threads. Timestamps are microseconds.

A lane is one (pid, tid). Events may carry `args.replica` (or `args.dp_rank`): the data-parallel replica
they belong to. A pipeline Gantt shows one replica — every replica of a synchronous step looks alike,
and a thousand lanes would be unreadable — so `replica_spans` keeps the lowest replica only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPLICA_KEYS = ("replica", "dp_rank")


@dataclass(frozen=True)
class Span:
    lane: str
    name: str
    category: str
    start_s: float
    dur_s: float
    replica: int | None = None


class TraceError(ValueError):
    """The file is not a trace-event file we can read; the message says what is wrong."""


def _events(data: Any) -> list[dict[str, Any]]:
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise TraceError("expected a list of events or an object with 'traceEvents'")
    return [e for e in events if isinstance(e, dict)]


def _replica(event: dict[str, Any]) -> int | None:
    args = event.get("args") or {}
    for key in REPLICA_KEYS:
        if isinstance(args, dict) and isinstance(args.get(key), (int, float)):
            return int(args[key])
    return None


def load_trace(path: Path) -> list[Span]:
    """All spans of a trace file, in start order."""
    try:
        events = _events(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path.name}: {exc}") from None
    names: dict[tuple[Any, Any], str] = {}
    procs: dict[Any, str] = {}
    for e in events:
        if e.get("ph") == "M":
            label = str((e.get("args") or {}).get("name", ""))
            if e.get("name") == "process_name":
                procs[e.get("pid")] = label
            elif e.get("name") == "thread_name":
                names[(e.get("pid"), e.get("tid"))] = label

    def lane(e: dict[str, Any]) -> str:
        pid, tid = e.get("pid"), e.get("tid")
        thread = names.get((pid, tid), f"tid {tid}" if tid is not None else "")
        proc = procs.get(pid, f"pid {pid}" if pid is not None else "")
        return " / ".join(p for p in (proc, thread) if p) or "trace"

    spans: list[Span] = []
    stacks: dict[tuple[Any, Any], list[dict[str, Any]]] = {}  # an E closes the latest open B of its thread
    for e in events:
        ph = e.get("ph")
        try:
            ts = float(e["ts"]) / 1e6
        except (KeyError, TypeError, ValueError):
            continue
        if ph == "X":
            dur = float(e.get("dur") or 0) / 1e6
            spans.append(Span(lane(e), str(e.get("name", "")), str(e.get("cat", "")), ts, dur, _replica(e)))
        elif ph == "B":
            stacks.setdefault((e.get("pid"), e.get("tid")), []).append(e)
        elif ph == "E" and stacks.get((e.get("pid"), e.get("tid"))):
            b = stacks[(e.get("pid"), e.get("tid"))].pop()
            start = float(b["ts"]) / 1e6
            spans.append(Span(lane(b), str(b.get("name", "")), str(b.get("cat", "")), start, ts - start,
                              _replica(b)))
    spans.sort(key=lambda s: (s.start_s, s.lane))
    return spans


def replica_spans(spans: list[Span]) -> list[Span]:
    """The spans of one pipeline replica: the lowest `replica` present, or all spans if none is marked."""
    marked = [s.replica for s in spans if s.replica is not None]
    if not marked:
        return spans
    first = min(marked)
    return [s for s in spans if s.replica in (None, first)]
