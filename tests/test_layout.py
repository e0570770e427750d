"""The layout's arrows that must never exist: the core never imports a built-in plugin (they register
through the entry-point group like any third-party plugin), and the pure layers stay torch-free."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llmsim

CORE = Path(llmsim.__file__).parent


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, at any depth (function-level imports included), TYPE_CHECKING too."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


# The distributed worker still borrows the cpu backend's RSS meter; the shared measurement package takes it.
NOT_YET = {"distributed/worker.py"}


def test_nothing_in_the_core_imports_a_builtin_plugin() -> None:
    offenders = {str(path.relative_to(CORE)): [m for m in imported_modules(path) if m.startswith("llmsim_plugins")]
                 for path in CORE.rglob("*.py") if str(path.relative_to(CORE)) not in NOT_YET}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package", ["costmodel", "sim"])
def test_the_pricing_and_the_simulation_never_import_torch(package: str) -> None:
    """Sweeps and plans price thousands of cases without torch: the profile is traced once, elsewhere."""
    offenders = {str(path.relative_to(CORE)): [m for m in imported_modules(path)
                                               if m.split(".")[0] == "torch" or m.startswith("llmsim.workload.")
                                               and not m.startswith("llmsim.workload.profile")]
                 for path in (CORE / package).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
