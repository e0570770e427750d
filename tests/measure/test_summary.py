"""Step time, latency quantiles, TTFT/TPOT and the breakdown of a step, on known inputs."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pytest

from llmsim.measure.summary import (Energy, MeasuredSplit, rank_breakdown, slowest, summarize,
                                    summarize_ranks)


def test_mean_median_and_the_inclusive_99th_percentile() -> None:
    times = [float(t) for t in range(1, 101)]  # 1 .. 100 s
    s = summarize(times)
    assert s.step_time_s == 50.5 and s.latency_p50_s == 50.5
    assert s.latency_p99_s == pytest.approx(99.01)  # inclusive: 99 + 0.01 * (100 - 99)
    assert s.latency_p99_s == statistics.quantiles(times, n=100, method="inclusive")[98]
    assert s.other_time_s == 0.0 and s.ttft_s is None and s.tpot_s is None
    assert set(s.columns()) == {"step_time_s", "latency_p50_s", "latency_p99_s", "step_time_p10_s", "step_time_p90_s"}
    # the spread: inclusive deciles, 1 + 0.1 * 99 and 1 + 0.9 * 99
    assert (s.step_time_p10_s, s.step_time_p90_s) == (pytest.approx(10.9), pytest.approx(90.1))


def test_one_timed_step_has_no_spread() -> None:
    s = summarize([0.25])
    assert s.step_time_p10_s is None and s.step_time_p90_s is None
    assert "step_time_p10_s" not in s.columns()


def test_one_step_is_its_own_p99() -> None:
    s = summarize([0.25])
    assert (s.step_time_s, s.latency_p50_s, s.latency_p99_s) == (0.25, 0.25, 0.25)


def test_ttft_is_the_mean_first_token_and_tpot_the_rest_per_token() -> None:
    s = summarize([10.0, 12.0], first_token=[2.0, 4.0], decode_tokens=5)
    assert s.ttft_s == 3.0 and s.tpot_s == pytest.approx((11.0 - 3.0) / 4)
    assert s.columns()["ttft_s"] == 3.0
    # one generated token: there is no token *after the first*, so TPOT is undefined, not 6 s (issue 15 item 12)
    one = summarize([10.0], first_token=[4.0], decode_tokens=1)
    assert one.ttft_s == 4.0 and one.tpot_s is None
    assert one.columns()["tpot_s"] is None


def test_the_optimizer_update_is_other_and_the_rest_of_one_device_is_compute() -> None:
    s = summarize([4.0, 6.0], optimizer=[1.0, 2.0])
    assert s.other_time_s == 1.5
    b = MeasuredSplit.one_device(s)
    assert (b.c_per_submodel_s, b.compute_time_s, b.comm_time_s, b.bubble_time_s, b.other_time_s) == \
        (5.0, 3.5, 0.0, 0.0, 1.5)
    assert Energy.modeled(100.0, 5.0) == Energy(500.0, "modeled")


@dataclass
class Rank:
    step_times_s: list[float]
    first_token_times_s: list[float] = field(default_factory=list)
    optimizer_times_s: list[float] = field(default_factory=list)
    comm_exposed_s: float | None = None
    p2p_exposed_s: float | None = None
    profiled_step_s: float | None = None


def test_a_step_of_several_ranks_is_its_slowest_rank() -> None:
    assert slowest([[1.0, 5.0], [2.0, 3.0]]) == [2.0, 5.0]
    ranks = [Rank([1.0, 5.0], [0.5, 0.5], [0.2, 0.4]), Rank([2.0, 3.0], [1.0, 0.25], [0.1, 0.1])]
    s = summarize_ranks(ranks, decode_tokens=3)
    assert s.step_times_s == (2.0, 5.0) and s.step_time_s == 3.5
    assert s.ttft_s == 0.75 and s.tpot_s == pytest.approx((3.5 - 0.75) / 2)
    assert s.other_time_s == pytest.approx((0.3 + 0.1) / 2)  # the ranks' mean optimizer time


def test_profiled_shares_of_communication_and_bubble_scale_to_the_step() -> None:
    ranks = [Rank([10.0], optimizer_times_s=[1.0], comm_exposed_s=1.0, p2p_exposed_s=2.0, profiled_step_s=10.0),
             Rank([10.0], optimizer_times_s=[1.0], comm_exposed_s=3.0, p2p_exposed_s=None, profiled_step_s=10.0)]
    s = summarize_ranks(ranks)
    b = rank_breakdown(ranks, s, c_per_submodel_s=4.0, pipeline=True)
    assert b.comm_time_s == pytest.approx(2.0)    # shares 0.1 and 0.3 -> 0.2 of 10 s
    assert b.bubble_time_s == pytest.approx(2.0)  # share 0.2 (the rank with no p2p does not count)
    assert b.other_time_s == 1.0 and b.c_per_submodel_s == 4.0
    assert b.compute_time_s + b.comm_time_s + b.bubble_time_s + b.other_time_s == pytest.approx(10.0)
    assert rank_breakdown(ranks, s, c_per_submodel_s=4.0, pipeline=False).bubble_time_s == 0.0


def test_parts_from_the_profiled_step_never_exceed_the_timed_step() -> None:
    ranks = [Rank([1.0], optimizer_times_s=[0.5], comm_exposed_s=0.6, p2p_exposed_s=0.6, profiled_step_s=1.0)]
    b = rank_breakdown(ranks, summarize_ranks(ranks), c_per_submodel_s=1.0, pipeline=True)
    assert b.compute_time_s == pytest.approx(0.0)
    assert (b.comm_time_s, b.bubble_time_s) == (pytest.approx(0.25), pytest.approx(0.25))


def test_compute_is_never_negative_when_the_shares_fill_the_step() -> None:
    """Rescaled shares that fill the rest leave rest - comm - bubble at 0 up to rounding: a measured FSDP row
    once read compute_time_s = -1.4e-17 (the distributed test's `compute_time_s >= 0` caught it)."""
    ranks = [Rank([0.343], optimizer_times_s=[0.219], comm_exposed_s=0.3, p2p_exposed_s=0.0, profiled_step_s=0.31)]
    b = rank_breakdown(ranks, summarize_ranks(ranks), c_per_submodel_s=1.0, pipeline=False)
    assert b.compute_time_s >= 0.0
    assert b.compute_time_s + b.comm_time_s + b.other_time_s == pytest.approx(0.343)
