"""What a comparison of runs compares: the metrics, which direction is better, and percent changes.

Shared by the comparison tables (compare.py) and its figures (compare_figures.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmsim.report.units import missing

NOISE_PCT = 0.5  # changes smaller than this are not coloured better or worse


@dataclass(frozen=True)
class Metric:
    """A result column compared across runs, how to format it, and whether more of it is better."""

    column: str
    title: str
    how: str  # a units.FORMATS key
    higher_better: bool
    statuses: tuple[str, ...] = ("ok",)  # rows whose value counts (memory of a does-not-fit row does)


METRICS: list[Metric] = [
    Metric("tokens_per_s", "Throughput (tokens/s)", "rate", True),
    Metric("step_time_s", "Step time", "seconds", False),
    Metric("mfu", "MFU", "percent", True),
    Metric("peak_memory_bytes_per_device", "Peak memory per device", "bytes", False, ("ok", "does-not-fit")),
    Metric("joules_per_token", "Energy per token", "joules", False),
    Metric("scaling_efficiency", "Scaling efficiency", "percent", True),
]
SUMMARY_METRICS = ("tokens_per_s", "joules_per_token", "peak_memory_bytes_per_device")


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
