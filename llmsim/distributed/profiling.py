"""Exposed communication of one profiled step, from torch.profiler's events.

A rank runs one extra step under torch.profiler (its time is not a timed step: the profiler slows
what it watches). Within that step's window, communication intervals are the process group's own op
events (gloo: `gloo:*` on its worker threads; NCCL: `nccl*` GPU kernels) and compute intervals are
the aten ops on the step's thread (CPU) or the other GPU kernels (CUDA). Exposed communication is
communication time not covered by compute (interval arithmetic); pipeline send/recv is kept apart
(`p2p`): on a pipeline it is mostly the wait for the neighbour stage, i.e. the bubble.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmsim.measure.device import MeasuredDevice

STEP_LABEL = "llmsim::step"

Interval = tuple[float, float]


def _union(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _length(intervals: list[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def _minus(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Parts of the (unioned) intervals `a` not covered by the (unioned) intervals `b`."""
    out: list[Interval] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def communication_ops(events: Any) -> dict[str, int]:
    """Communication ops of the profiled step by name and count (what the strategy actually sent)."""
    counts: dict[str, int] = {}
    for e in events:
        lowered = e.name.lower()
        if lowered.startswith("gloo:") or lowered.startswith("nccl"):
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def exposed_communication(events: Any, device_type: str) -> dict[str, float]:
    """Exposed communication of one profiled step, in seconds, from torch.profiler events (the RankRecord
    fields comm_exposed_s, p2p_exposed_s, comm_busy_s, profiled_step_s); empty without the step's label.
    `device_type`: cpu (compute = aten ops on the step's thread) or cuda (compute = GPU kernels)."""
    step = [e for e in events if e.name == STEP_LABEL]
    if not step:
        return {}
    window = (step[0].time_range.start, step[0].time_range.end)
    main = step[0].thread

    def clip(start: float, end: float) -> Interval | None:
        start, end = max(start, window[0]), min(end, window[1])
        return (start, end) if end > start else None

    comm, p2p, busy = [], [], []
    for e in events:
        name = e.name
        span = clip(e.time_range.start, e.time_range.end)
        if span is None:
            continue
        lowered = name.lower()
        on_gpu = str(getattr(e, "device_type", "")).endswith("CUDA")
        is_comm = lowered.startswith("gloo:") or (device_type == "cuda" and "nccl" in lowered and on_gpu)
        if is_comm:
            if "barrier" in lowered:
                continue
            (p2p if any(k in lowered for k in ("send", "recv")) else comm).append(span)
        elif device_type == "cpu" and e.thread == main and name.startswith("aten::"):
            busy.append(span)
        elif device_type == "cuda" and on_gpu:
            busy.append(span)
    busy_u = _union(busy)
    comm_u, p2p_u = _union(comm), _union(p2p)
    p2p_only = _minus(p2p_u, comm_u)
    return {"comm_exposed_s": _length(_minus(comm_u, busy_u)) / 1e6,
            "p2p_exposed_s": _length(_minus(p2p_only, busy_u)) / 1e6,
            "comm_busy_s": _length(_union(comm + p2p)) / 1e6,
            "profiled_step_s": (window[1] - window[0]) / 1e6}


def profile_step(run: Callable[[], Any], device: MeasuredDevice) -> tuple[dict[str, float], dict[str, int]]:
    """Run one step under torch.profiler: (its exposed communication, the communication ops it sent)."""
    from torch.profiler import profile, record_function

    with profile(activities=device.profiler_activities()) as prof:
        with record_function(STEP_LABEL):
            run()
            device.wait()
    events = prof.events()
    return exposed_communication(events, device.kind), communication_ops(events)
