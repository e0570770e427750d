"""Bounds on a serving run's SLO attainment that need no simulation.

A rate search (planner.serve) probes one replica at rates that may be far above what it can serve; such a
probe misses the SLO, and simulating it costs the most (the longest queues, the most requests in flight).
`ttft_attainment_bound` proves a miss from the request list alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from llmsim.serving.requests import Request


def ttft_attainment_bound(requests: Sequence[Request], prefill_tokens_per_s: float, ttft_s: float,
                          overhead_s: float = 0.0) -> float:
    """An upper bound on the share of `requests` whose first token comes within `ttft_s` seconds of arrival,
    when one replica prefills at most `prefill_tokens_per_s` prompt tokens per second (shape: len(requests)
    requests; units: seconds, tokens/s; returns a share in [0, 1], 1.0 for no requests).

    A request's first token needs its whole prompt prefilled: `input_tokens / prefill_tokens_per_s` seconds of
    the replica, done by its deadline arrival_s + ttft_s - overhead_s (the request path's constant time,
    serving.simulate's request_overhead_s, comes on top). Dropping the arrival times (a job may then run before
    it arrives) only lets more requests meet their deadlines, and on one machine without release times the
    largest number of jobs that meet their deadlines is what Moore and Hodgson's rule finds (Moore 1968, "An n
    job, one machine sequencing algorithm for minimizing the number of late jobs", Management Science 15(1),
    with Hodgson's form: take the jobs by deadline, and whenever the running total passes the current deadline
    drop the longest job taken so far). Preemption does not change that count. So the share returned is at
    least the attainment any scheduler reaches. ValueError for a non-positive rate or a negative bound."""
    if not prefill_tokens_per_s > 0 or not ttft_s >= 0 or not overhead_s >= 0:
        raise ValueError(f"need prefill_tokens_per_s > 0, ttft_s >= 0, overhead_s >= 0 (got {prefill_tokens_per_s!r}, "
                         f"{ttft_s!r}, {overhead_s!r})")
    if not requests:
        return 1.0
    jobs = sorted((r.arrival_s + ttft_s - overhead_s, r.input_tokens / prefill_tokens_per_s) for r in requests)
    taken: list[float] = []   # a max-heap of the processing times kept (negated)
    total = 0.0
    for deadline, seconds in jobs:
        heapq.heappush(taken, -seconds)
        total += seconds
        if total > deadline:
            total += heapq.heappop(taken)   # drop the longest kept job (its negated time)
    return len(taken) / len(requests)
