"""The optimiser finds a known minimum within bounds, stops at a bound, and knows nothing of llmsim."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

import llmsim.calibrate.optimiser as optimiser
from llmsim.calibrate import fit


def test_it_finds_a_minimum_across_orders_of_magnitude() -> None:
    target = [0.05, 3e9, 2e-5]

    def objective(x: list[float]) -> float:
        return sum(math.log(v / t) ** 2 for v, t in zip(x, target))

    found = fit(objective, [0.5, 1e10, 1e-6], [(1e-3, 1.0), (1e8, 1e13), (1e-7, 1e-2)])
    assert found == pytest.approx(target, rel=1e-3)


def test_a_minimum_outside_the_bounds_ends_at_the_bound() -> None:
    found = fit(lambda x: math.log(x[0] / 10.0) ** 2, [0.5], [(0.1, 1.0)])
    assert found[0] == pytest.approx(1.0, rel=1e-6)


def test_it_imports_nothing_of_llmsim() -> None:
    tree = ast.parse(Path(optimiser.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("llmsim")]


def test_least_squares_recovers_a_roofline_like_model_in_few_calls() -> None:
    """Levenberg-Marquardt on log parameters: times max(flops / a, bytes / b) + k of shapes on both sides of
    the ridge point are matched exactly, in tens of residual calls (the serving calibration simulates per
    call); a parameter no residual sees stays where it started."""
    from llmsim.calibrate.optimiser import least_squares

    true = (2e12, 5e11, 3e-5)
    shapes = [(1e9, 1e8), (1e12, 1e9), (1e10, 1e10), (5e11, 2e8), (1e8, 5e9)]

    def times(theta: list[float]) -> list[float]:
        a, b, k = theta[:3]
        return [max(f / a, m / b) + k for f, m in shapes]

    measured = times(list(true))
    calls = []

    def residuals(theta: list[float]) -> list[float]:
        calls.append(theta)
        return [math.log(t / m) for t, m in zip(times(theta), measured)]

    bounds = [(1e9, 1e15), (1e9, 1e13), (1e-8, 1e-2), (0.1, 10.0)]
    fitted = least_squares(residuals, [1e13, 1e12, 1e-5, 2.0], bounds)
    for got, want in zip(fitted, true):
        assert got == pytest.approx(want, rel=1e-3)
    assert fitted[3] == 2.0                  # unseen: stays
    assert len(calls) < 150, len(calls)     # 65 when written


def _staircase(theta: list[float]) -> list[float]:
    """Residuals of a narrow valley (log a + log b = log 6, a / b near 3/2 by a weak second residual) that move
    in steps of 0.02 in log units, as a median of simulated requests does: a 1% finite difference sees zero."""
    la, lb = (round(math.log(v) / 0.02) * 0.02 for v in theta)
    return [10 * (la + lb - math.log(6.0)), 0.1 * (la - lb - math.log(1.5))]


def test_polish_walks_a_stepped_valley_least_squares_stops_in() -> None:
    bounds = [(1e-3, 1e3), (1e-3, 1e3)]
    start = [6.0, 1.0]  # on the valley's floor, far along it from the minimum (3, 2)
    stalled = optimiser.least_squares(_staircase, start, bounds, fd_steps=(0.01,))
    cost = lambda t: sum(r * r for r in _staircase(t))  # noqa: E731
    polished = optimiser.polish(_staircase, stalled, bounds)
    assert stalled == start and cost(polished) < 0.3 * cost(stalled)  # LM saw a flat Jacobian and never moved
    assert polished[0] == pytest.approx(3.0, rel=0.1) and polished[1] == pytest.approx(2.0, rel=0.1)


def test_polish_keeps_a_start_it_cannot_better() -> None:
    assert optimiser.polish(lambda t: [math.log(t[0])], [1.0], [(0.1, 10.0)]) == [1.0]
