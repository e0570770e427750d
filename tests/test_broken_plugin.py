"""A plugin whose entry point fails to import (issue 15 leftovers: its backend was reported as unknown, next
to a warning). Now one line: the backend, that its plugin failed to load, and the exception (exit 2)."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from llmsim import cli, plugins
from llmsim.errors import EXIT_BAD_INPUT
from tests.conftest import REPO

QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
MODULE = "llmsim_test_plugin_that_fails_to_import"


@pytest.fixture
def broken_roofline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed plugins, with the roofline entry point pointing at a module that raises on import."""
    (tmp_path / f"{MODULE}.py").write_text("raise ImportError('libfoo.so.1: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    installed = [ep for ep in importlib.metadata.entry_points(group=plugins.ENTRY_POINT_GROUP) if ep.name != "roofline"]
    eps = installed + [importlib.metadata.EntryPoint("roofline", MODULE, plugins.ENTRY_POINT_GROUP)]
    real = plugins.get_plugin_manager
    monkeypatch.setattr(cli, "get_plugin_manager", lambda: real(eps, environ={}))


@pytest.mark.parametrize("argv", [["validate", str(QUICKSTART)], ["run", str(QUICKSTART), "--backend", "roofline"]])
def test_a_backend_whose_plugin_fails_to_import_is_one_line_with_the_exception(broken_roofline, capsys,
                                                                               argv: list[str]) -> None:
    assert cli.main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err == (f"llmsim: error: {QUICKSTART}: backends.roofline: backend 'roofline' is not usable: its plugin failed to load: "
                   f"ImportError: libfoo.so.1: cannot open shared object file"), err


def test_an_unknown_backend_names_the_plugins_that_failed_to_load(broken_roofline, capsys) -> None:
    assert cli.main(["validate", str(QUICKSTART), "--backend", "gpu9000"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"llmsim: error: {QUICKSTART}: --backend: unknown backend 'gpu9000'; allowed: "), err
    assert err.endswith("; plugins that failed to load (one may provide it): roofline (ImportError: libfoo.so.1: "
                        "cannot open shared object file)"), err


def test_the_other_backends_still_run_and_the_broken_plugin_is_a_warning(broken_roofline, capsys) -> None:
    assert cli.main(["validate", str(QUICKSTART), "--set", "backends={cpu: {steps: 1, warmup: 0}}"]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps a long warning
    assert "llmsim: warning: plugin 'roofline' is not usable: import failed: ImportError: libfoo.so.1" in err
