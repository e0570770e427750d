"""Every hook is documented (docstring and a section in docs/plugins.md) and tested."""

from __future__ import annotations

import inspect

import pytest

from llmsim import hookspecs
from tests.conftest import REPO

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("llmsim_"))


def test_there_are_hooks() -> None:
    assert HOOKS == ["llmsim_backends", "llmsim_energy_meters", "llmsim_hardware", "llmsim_serving_schedulers"]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    assert len(inspect.getdoc(getattr(hookspecs, hook)) or "") > 80


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_plugins_md(hook: str) -> None:
    assert f"`{hook}" in (REPO / "docs" / "plugins.md").read_text()


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    """Some test implements the hook (``def llmsim_x(``) and so exercises it through a plugin manager."""
    tests = [p for p in (REPO / "tests").rglob("test_*.py") if p.name != "test_docs.py"]
    assert any(f"def {hook}(" in p.read_text() for p in tests), f"no test implements {hook}"


def test_every_cli_verb_is_in_the_readme() -> None:
    from llmsim.cli import build_parser

    readme = (REPO / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for verb in sub.choices:
        assert f"llmsim {verb}" in readme, verb
