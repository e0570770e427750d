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


@pytest.mark.parametrize("package", ["costmodel", "sim", "serving"])
def test_the_pricing_and_the_simulation_never_import_torch(package: str) -> None:
    def bad(module: str) -> bool:
        return module.split(".")[0] == "torch" or (module.startswith("llmsim.workload.")
                                                   and module != "llmsim.workload.profile")  # types only
    assert _offenders(list((CORE / package).rglob("*.py")), bad) == {}


def _module_name(path: Path) -> str:
    parts = ("llmsim",) + path.relative_to(CORE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """llmsim module -> the llmsim modules it imports (a `from pkg import name` edge goes to pkg.name when
    that is a module, else to pkg's __init__)."""
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path a -> b -> ... -> a, or [] when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_core_has_no_import_cycle() -> None:
    """Not even through TYPE_CHECKING or function-level imports: each module can be read bottom-up."""
    assert find_cycle(import_graph()) == []


def test_every_core_package_is_installed_by_pyproject() -> None:
    """setuptools installs only the packages pyproject.toml lists: an editable install finds the others on the
    source path, a wheel or `pip install .` silently leaves them out (llmsim.serving was missing)."""
    import tomllib

    listed = set(tomllib.loads((CORE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(CORE.parent).parts) for p in CORE.rglob("__init__.py")}
    assert packages - listed == set()
