"""The core does not depend on the built-in plugins: nothing under llmsim/ imports llmsim_plugins.

Built-in backends are plugins like any third-party one (docs/plugins.md); what they share lives in the
core (llmsim.measure for the measured ones), so the dependency points from plugins/ to llmsim/ only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import llmsim

CORE = Path(llmsim.__file__).parent
# The planner still runs the cluster simulation through llmsim_plugins.cluster; drop this exclusion once
# the simulation engine has moved into the core.
NOT_YET = ("planner",)


def _imported_modules(path: Path) -> list[str]:
    """Every module an import statement names, at any depth (functions, TYPE_CHECKING blocks too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_scan_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from llmsim_plugins.cpu import CpuBackend\n    import llmsim_plugins\n")
    assert _imported_modules(module) == ["llmsim_plugins.cpu", "llmsim_plugins"]


def test_core_modules_do_not_import_the_builtin_plugins() -> None:
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(CORE)
        if relative.parts[0] in NOT_YET:
            continue
        bad = [name for name in _imported_modules(path) if name.split(".")[0] == "llmsim_plugins"]
        if bad:
            offenders[str(relative)] = bad
    assert offenders == {}, f"the core imports built-in plugins: {offenders}"
