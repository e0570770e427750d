"""The `llmsim` command's entry point (llmsim.entry): a Ctrl-C while the CLI is still importing is one line."""

from __future__ import annotations

import builtins
import subprocess
import sys

import pytest

from llmsim import entry
from llmsim.errors import EXIT_INTERRUPTED


def test_a_ctrl_c_while_the_cli_imports_is_one_line_and_exit_130(monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "llmsim.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert entry.main(["--help"]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err == "llmsim: interrupted while starting; nothing was run\n"


def test_the_entry_runs_the_cli() -> None:
    with pytest.raises(SystemExit) as stop:
        entry.main(["--help"])
    assert stop.value.code == 0


def test_importing_llmsim_does_not_import_torch_and_the_public_names_resolve() -> None:
    code = ("import sys, llmsim; assert 'torch' not in sys.modules, 'torch imported'; "
            "from llmsim import Backend, Case, Result, hookimpl, load_scenario; import llmsim.backend as b; "
            "assert llmsim.Backend is b.Backend; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import llmsim
        llmsim.nope  # noqa: B018
