"""Pipeline schedules (Narayanan et al. 2021, Sec. 2.2; Korthikanti et al. 2022, Sec. 4.2.3)."""

from __future__ import annotations

import pytest

from llmsim.costmodel.pipeline import bubble_fraction, in_flight_microbatches


@pytest.mark.parametrize("p,m", [(2, 8), (4, 4), (8, 64), (16, 1)])
def test_1f1b_and_gpipe_bubble_is_p_minus_1_over_m_of_the_ideal_step(p: int, m: int) -> None:
    assert bubble_fraction("1f1b", p, m) == (p - 1) / m
    assert bubble_fraction("gpipe", p, m) == (p - 1) / m


def test_interleaving_divides_the_bubble_by_the_chunks() -> None:
    assert bubble_fraction("interleaved", 8, 32, v=4) == pytest.approx(bubble_fraction("1f1b", 8, 32) / 4)
    assert bubble_fraction("1f1b", 1, 32) == 0.0


def test_activations_in_flight() -> None:
    assert in_flight_microbatches("gpipe", 4, 32) == 32
    assert in_flight_microbatches("1f1b", 4, 32) == 4               # first stage holds p
    assert in_flight_microbatches("1f1b", 4, 32, stage=3) == 1      # last stage holds one
    assert in_flight_microbatches("1f1b", 4, 2) == 2                # never more than m
    assert in_flight_microbatches("interleaved", 4, 32, v=2) == pytest.approx(4 * (1 + 3 / 8))


def test_only_the_interleaved_schedule_divides_by_its_chunks() -> None:
    assert bubble_fraction("1f1b", 4, 8, v=2) == 3 / 8
    assert bubble_fraction("gpipe", 4, 8, v=2) == 3 / 8
    assert bubble_fraction("interleaved", 4, 8, v=2) == 3 / 16
    assert bubble_fraction("interleaved", 1, 8, v=2) == 0.0
    assert bubble_fraction("interleaved", 2, 8, v=2) == 1 / 16


def test_without_a_pipeline_one_micro_batch_is_in_flight_whatever_the_schedule() -> None:
    for schedule in ("gpipe", "1f1b", "interleaved"):
        assert in_flight_microbatches(schedule, 1, 32, v=2) == 1.0
    assert in_flight_microbatches("gpipe", 2, 32) == 32.0


def test_1f1b_stages_hold_p_minus_their_index_and_only_the_first_interleaved_stage_holds_more() -> None:
    assert [in_flight_microbatches("1f1b", 4, 32, stage=s) for s in range(4)] == [4.0, 3.0, 2.0, 1.0]
    assert in_flight_microbatches("interleaved", 4, 32, v=2, stage=1) == 3.0
    assert in_flight_microbatches("interleaved", 4, 32, v=4, stage=0) == pytest.approx(4 * (1 + 3 / 16))
    assert in_flight_microbatches("interleaved", 2, 32, v=2, stage=0) == pytest.approx(2 * (1 + 1 / 4))
    assert in_flight_microbatches("interleaved", 4, 2, v=2, stage=0) == pytest.approx(2 * (1 + 3 / 8))


def test_one_chunk_per_device_by_default() -> None:
    """v defaults to 1: an interleaved schedule without chunks is plain 1F1B."""
    assert bubble_fraction("interleaved", 4, 8) == 3 / 8
    assert in_flight_microbatches("interleaved", 4, 32) == pytest.approx(4 * (1 + 3 / 4))
