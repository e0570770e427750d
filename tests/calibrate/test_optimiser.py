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
