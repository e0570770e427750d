"""The cost model stays pure: no torch, no profile tracing, no catalog loading inside llmsim.costmodel."""

from __future__ import annotations

import ast
from pathlib import Path

import llmsim.costmodel

FORBIDDEN = ("torch", "llmsim.workload", "llmsim.hardware", "llmsim.backend")


def _runtime_imports(path: Path) -> list[str]:
    """Modules imported outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def test_costmodel_modules_import_neither_torch_nor_the_profiler() -> None:
    package = Path(llmsim.costmodel.__file__).parent
    for module in package.glob("*.py"):
        bad = [n for n in _runtime_imports(module) if n.startswith(FORBIDDEN)]
        assert bad == [], f"{module.name} imports {bad}"
