"""serving.bounds: the attainment bound that lets a rate search skip probes it can prove missed."""

from __future__ import annotations

import itertools
import random

import pytest

from llmsim.serving.bounds import ttft_attainment_bound
from llmsim.serving.requests import Request


def _brute_force_on_time(jobs: list[tuple[float, float]]) -> int:
    """The most (deadline, seconds) jobs one machine finishes by their deadlines (no release times): a set is
    feasible exactly when earliest-deadline-first meets every deadline in it."""
    for size in range(len(jobs), 0, -1):
        for subset in itertools.combinations(sorted(jobs), size):
            t, ok = 0.0, True
            for deadline, seconds in subset:
                t += seconds
                ok = ok and t <= deadline
            if ok:
                return size
    return 0


@pytest.mark.parametrize("seed", range(40))
def test_the_bound_is_the_largest_number_of_prefills_that_meet_their_deadlines(seed: int) -> None:
    """Moore-Hodgson's count equals the brute force over every subset of up to 8 requests."""
    rng = random.Random(seed)
    requests = [Request(i, rng.uniform(0, 2), rng.randint(1, 400), 1) for i in range(rng.randint(1, 8))]
    rate, ttft = rng.uniform(100, 1000), rng.uniform(0.05, 1.0)
    jobs = [(r.arrival_s + ttft, r.input_tokens / rate) for r in requests]
    assert ttft_attainment_bound(requests, rate, ttft) == pytest.approx(_brute_force_on_time(jobs) / len(requests))


def test_an_overloaded_replica_is_proven_to_miss_and_a_light_load_is_not() -> None:
    """1,000 requests of 500 prompt tokens, 1 ms apart, on a replica that prefills 50,000 tokens/s (100 prompts
    a second): the last deadline is 1.2 s, by which 120 prompts of 10 ms can be prefilled, 12%; at 100x the spacing
    all fit."""
    fast = [Request(i, i * 0.001, 500, 10) for i in range(1000)]
    assert ttft_attainment_bound(fast, 50_000, 0.2) == pytest.approx(0.12, abs=0.002)
    slow = [Request(i, i * 0.1, 500, 10) for i in range(100)]
    assert ttft_attainment_bound(slow, 50_000, 0.2) == 1.0
    assert ttft_attainment_bound([], 50_000, 0.2) == 1.0
    # the request path's constant time comes out of every deadline: the last one is 1.1 s, 110 prompts
    assert ttft_attainment_bound(fast, 50_000, 0.2, overhead_s=0.1) == pytest.approx(0.11, abs=0.002)


@pytest.mark.parametrize("args", [(0.0, 0.2, 0.0), (1e4, -1.0, 0.0), (1e4, 0.2, -0.1), (float("nan"), 0.2, 0.0)])
def test_bad_arguments_are_refused(args: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError, match="need prefill_tokens_per_s > 0"):
        ttft_attainment_bound([Request(0, 0.0, 10, 1)], *args)
