"""From measured step times to the result's timing columns, for one process or for several ranks.

* step_time_s: the mean of the timed steps; latency_p50_s their median and latency_p99_s the 99th
  percentile (`statistics.quantiles(..., n=100, method="inclusive")[98]`; one step is its own p99).
* step_time_p10_s, step_time_p90_s: the 10th and 90th percentiles (inclusive method), the spread that
  comparisons hold a difference against (llmsim.report.metrics.noise); None with one timed step, whose
  spread is unknown.
* ttft_s (decode): the mean time from a step's start to its `first_token` mark (the prefill);
  tpot_s = (step_time_s - ttft_s) / (decode_tokens - 1), None (undefined) for one generated token.
* other_time_s: the optimizer update, from the `backward_done` mark to the step's end (0 without).
* Several ranks: per timed step the slowest rank's time (every rank starts after a barrier), then as
  above; the communication and bubble shares come from one profiled step per rank.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StepSummary:
    step_times_s: tuple[float, ...]
    step_time_s: float
    latency_p50_s: float
    latency_p99_s: float
    other_time_s: float
    ttft_s: float | None = None
    tpot_s: float | None = None
    step_time_p10_s: float | None = None
    step_time_p90_s: float | None = None

    def columns(self) -> dict[str, float | None]:
        """The result columns it fills: step time, its spread and latencies, and TTFT/TPOT where measured."""
        cols: dict[str, float | None] = dict(step_time_s=self.step_time_s, latency_p50_s=self.latency_p50_s,
                                             latency_p99_s=self.latency_p99_s)
        if self.step_time_p10_s is not None:
            cols.update(step_time_p10_s=self.step_time_p10_s, step_time_p90_s=self.step_time_p90_s)
        if self.ttft_s is not None:
            cols.update(ttft_s=self.ttft_s, tpot_s=self.tpot_s)
        return cols


def summarize(step_times: Sequence[float], first_token: Sequence[float] = (), optimizer: Sequence[float] = (),
              decode_tokens: int = 1, other: float | None = None) -> StepSummary:
    """The summary of timed steps; `other` overrides the mean of `optimizer` (the ranks' own mean)."""
    times = list(step_times)
    step = statistics.fmean(times)
    quantiles = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
    if other is None:
        other = statistics.fmean(optimizer) if optimizer else 0.0
    ttft = tpot = None
    if first_token:
        ttft = statistics.fmean(first_token)
        # after the first token there are decode_tokens - 1 more; with none, TPOT is undefined (None)
        tpot = (step - ttft) / (decode_tokens - 1) if decode_tokens > 1 else None
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else None
    return StepSummary(step_times_s=tuple(times), step_time_s=step, latency_p50_s=statistics.median(times),
                       latency_p99_s=quantiles[98], other_time_s=other, ttft_s=ttft, tpot_s=tpot,
                       step_time_p10_s=deciles[0] if deciles else None, step_time_p90_s=deciles[8] if deciles else None)


@dataclass(frozen=True)
class MeasuredSplit:
    """T = m*C/n: C, and where the step went (compute, exposed communication, bubble, other: they add
    up to the step time)."""

    c_per_submodel_s: float
    compute_time_s: float
    comm_time_s: float = 0.0
    bubble_time_s: float = 0.0
    other_time_s: float = 0.0

    @classmethod
    def one_device(cls, summary: StepSummary) -> "MeasuredSplit":
        """One device alone: C is the whole step, nothing is communication or bubble, and all of the step
        is compute except the optimizer update, reported as other."""
        return cls(c_per_submodel_s=summary.step_time_s, compute_time_s=summary.step_time_s - summary.other_time_s,
                   other_time_s=summary.other_time_s)


@dataclass(frozen=True)
class Energy:
    """The energy columns: joules per step and where they come from (a meter's name, or modeled)."""

    j_per_step: float
    source: str

    @classmethod
    def modeled(cls, power_w: float, step_time_s: float) -> "Energy":
        return cls(power_w * step_time_s, "modeled")


# -- several ranks ---------------------------------------------------------------------------------
class RankTimes(Protocol):
    """What the aggregation reads of one rank's record (llmsim.distributed.spec.RankRecord)."""

    step_times_s: list[float]
    first_token_times_s: list[float]
    optimizer_times_s: list[float]
    comm_exposed_s: float | None
    p2p_exposed_s: float | None
    profiled_step_s: float | None


def slowest(per_rank: Sequence[Sequence[float]]) -> list[float]:
    """Per timed step the largest value over the ranks: a step is as slow as its slowest rank."""
    return [max(values[i] for values in per_rank) for i in range(len(per_rank[0]))]


def summarize_ranks(records: Sequence[RankTimes], decode_tokens: int = 1) -> StepSummary:
    """The summary over the slowest rank per step; other_time_s is the ranks' mean optimizer time."""
    other = statistics.fmean(statistics.fmean(r.optimizer_times_s) for r in records) \
        if records[0].optimizer_times_s else 0.0
    return summarize(slowest([r.step_times_s for r in records]),
                     slowest([r.first_token_times_s for r in records]), decode_tokens=decode_tokens, other=other)


def _share(records: Sequence[RankTimes], field: str) -> float:
    """Mean over ranks of a profiled component as a fraction of that rank's profiled step (at most 1)."""
    parts = [getattr(r, field) / r.profiled_step_s for r in records
             if getattr(r, field) is not None and r.profiled_step_s]
    return min(statistics.fmean(parts), 1.0) if parts else 0.0


def rank_breakdown(records: Sequence[RankTimes], summary: StepSummary, *, c_per_submodel_s: float,
                   pipeline: bool) -> MeasuredSplit:
    """Exposed communication and the pipeline's send/recv waits (bubble) as their profiled shares of the
    step time. The parts come from different clocks (timed steps, one profiled step): they are scaled
    down where needed so that compute + comm + bubble + other is the step time."""
    step_time = summary.step_time_s
    comm = _share(records, "comm_exposed_s") * step_time
    bubble = _share(records, "p2p_exposed_s") * step_time if pipeline else 0.0
    other = min(summary.other_time_s, step_time)
    rest = step_time - other
    if comm + bubble > rest:
        comm, bubble = comm * rest / (comm + bubble), bubble * rest / (comm + bubble)
    # When the shares filled the whole rest, rest - comm - bubble is 0 up to rounding (-1e-17 was seen).
    return MeasuredSplit(c_per_submodel_s=c_per_submodel_s, compute_time_s=max(rest - comm - bubble, 0.0),
                         comm_time_s=comm, bubble_time_s=bubble, other_time_s=other)
