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
