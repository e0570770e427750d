"""The layout's arrows that must never exist (docs/architecture.md).

* The core never imports a built-in plugin: built-in backends register through the entry-point group
  like any third-party plugin, and what they share lives in the core (llmsim.measure for the measured
  ones, llmsim.modeled and llmsim.sim for the modeled ones), so dependencies point from plugins/ to llmsim/.
* The pricing and the simulation stay torch-free: sweeps and plans price thousands of cases from a
  profile traced once, elsewhere.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

import llmsim

CORE = Path(llmsim.__file__).parent


def imported_modules(path: Path) -> list[str]:
    """Every module an import statement names, at any depth (functions, TYPE_CHECKING blocks too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _offenders(paths: list[Path], bad: Callable[[str], bool]) -> dict[str, list[str]]:
    found = {str(p.relative_to(CORE)): [m for m in imported_modules(p) if bad(m)] for p in sorted(paths)}
    return {k: v for k, v in found.items() if v}


def test_the_scan_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from llmsim_plugins.cpu import CpuBackend\n    import llmsim_plugins\n")
    assert imported_modules(module) == ["llmsim_plugins.cpu", "llmsim_plugins"]


def test_nothing_in_the_core_imports_a_builtin_plugin() -> None:
    assert _offenders(list(CORE.rglob("*.py")), lambda m: m.split(".")[0] == "llmsim_plugins") == {}


@pytest.mark.parametrize("package", ["costmodel", "sim"])
def test_the_pricing_and_the_simulation_never_import_torch(package: str) -> None:
    def bad(module: str) -> bool:
        return module.split(".")[0] == "torch" or (module.startswith("llmsim.workload.")
                                                   and module != "llmsim.workload.profile")  # types only
    assert _offenders(list((CORE / package).rglob("*.py")), bad) == {}
