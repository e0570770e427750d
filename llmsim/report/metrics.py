"""What a comparison of runs compares: the metrics, which direction is better, and percent changes.

Shared by the comparison tables (compare.py) and its figures (compare_figures.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmsim.report.units import missing

NOISE_PCT = 0.5  # changes smaller than this are not coloured better or worse (modeled rows: float noise only)


@dataclass(frozen=True)
class Metric:
    """A result column compared across runs, how to format it, and whether more of it is better."""

    column: str
    title: str
    how: str  # a units.FORMATS key
    higher_better: bool
    statuses: tuple[str, ...] = ("ok",)  # rows whose value counts (memory of a does-not-fit row does)
    timed: bool = True  # follows from the step time, so the step's measured spread is its noise


METRICS: list[Metric] = [
    Metric("tokens_per_s", "Throughput (tokens/s)", "rate", True),
    Metric("step_time_s", "Step time", "seconds", False),
    Metric("mfu", "MFU", "percent", True),
    Metric("peak_memory_bytes_per_device", "Peak memory per device", "bytes", False, ("ok", "does-not-fit"),
           timed=False),
    Metric("joules_per_token", "Energy per token", "joules", False),
    Metric("scaling_efficiency", "Scaling efficiency", "percent", True),
]
# A serving row's own columns (docs/results.md): a latency or a rate of requests, not a step; no step-time spread
SERVING_METRICS: list[Metric] = [
    Metric("requests_per_s", "Requests per second", "rate", True, timed=False),
    Metric("output_tokens_per_s", "Output tokens per second", "rate", True, timed=False),
    Metric("ttft_p50_s", "TTFT p50", "seconds", False, timed=False),
    Metric("ttft_p99_s", "TTFT p99", "seconds", False, timed=False),
    Metric("tpot_p50_s", "TPOT p50", "seconds", False, timed=False),
    Metric("tpot_p99_s", "TPOT p99", "seconds", False, timed=False),
    Metric("goodput_rps", "Goodput (requests/s meeting the SLO)", "rate", True, timed=False),
    Metric("slo_attainment", "SLO attainment", "percent", True, timed=False),
]
METRICS += SERVING_METRICS
SUMMARY_METRICS = ("tokens_per_s", "joules_per_token", "peak_memory_bytes_per_device")
# what a comparison of serving runs summarises and draws instead (comparison_document picks by the rows)
SERVING_SUMMARY_METRICS = ("requests_per_s", "ttft_p99_s", "tpot_p99_s", "goodput_rps")


def pct_change(base: Any, new: Any) -> float | None:
    """(new − base) / base in percent; None where either is missing or the base is zero."""
    if missing(base) or missing(new) or float(base) == 0:
        return None
    return 100.0 * (float(new) - float(base)) / abs(float(base))


def tone(pct: float | None, metric: Metric) -> str | None:
    """'better' or 'worse' for a change of `pct` percent in `metric`; None when missing or within the noise."""
    if pct is None or abs(pct) < NOISE_PCT:
        return None
    return "better" if (pct > 0) == metric.higher_better else "worse"


def spread(row: Any) -> tuple[float, float] | None:
    """(p10, p90) of a measured row's timed steps; None for a modeled row or an unknown spread."""
    if row is None:
        return None
    lo, hi = row.get("step_time_p10_s"), row.get("step_time_p90_s")
    if missing(lo) or missing(hi):
        return None
    return float(lo), float(hi)


def noise(a: Any, b: Any) -> bool:
    """True when the step times of rows `a` and `b` differ by less than their measured noise: both are
    measured with a spread and their p10–p90 ranges overlap (each range holds 80% of a row's timed steps;
    overlapping ranges mean the steps of one are also steps the other could take). A modeled row has no
    noise: it is a deterministic number, held to NOISE_PCT for float error only."""
    sa, sb = spread(a), spread(b)
    if sa is None or sb is None:
        return False
    return sa[0] <= sb[1] and sb[0] <= sa[1]


def tone_rows(pct: float | None, metric: Metric, a: Any, b: Any) -> str | None:
    """tone() that also says nothing ('within noise' to the reader) when the rows' spreads overlap."""
    if metric.timed and noise(a, b):
        return None
    return tone(pct, metric)
