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


def test_a_ctrl_c_after_the_command_finished_is_one_line_and_exit_130() -> None:
    """The program's shutdown (threads joined, atexit hooks, torch freed) ran under Python's default SIGINT
    handler: a Ctrl-C there printed a KeyboardInterrupt traceback (trial 23). Once the command has returned, the
    entry point's handler says one line and exits 130; a call from Python (argv given) keeps its own handler."""
    code = ("import os, signal, sys; from llmsim import entry; sys.argv = ['llmsim', 'backends']; "
            "code = entry.main(); assert code == 0, code; "
            "assert signal.getsignal(signal.SIGINT) is entry._interrupted_at_exit; "
            "os.kill(os.getpid(), signal.SIGINT); import time; time.sleep(5); print('not stopped')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == EXIT_INTERRUPTED, out.stderr
    assert out.stderr.endswith("llmsim: interrupted\n") and "Traceback" not in out.stderr
    assert "not stopped" not in out.stdout


def test_a_call_from_python_keeps_its_sigint_handler() -> None:
    import signal

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit):
        entry.main(["--help"])
    assert signal.getsignal(signal.SIGINT) is before


def _in_a_fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)


def test_sigterm_and_sighup_are_a_ctrl_c_for_the_program() -> None:
    """Trial 32: SIGTERM or SIGHUP during `plan` left its empty folder, and during `run` no --resume line: only
    SIGINT was handled. The program passes both to SIGINT's handler: recorded within `interrupt.handling()` and
    raised as KeyboardInterrupt, the path every Ctrl-C takes. SIGHUP starts at its default here: a test run under
    `nohup` hands its children SIGHUP ignored, which the program rightly leaves ignored (the next test)."""
    code = ("import os, signal; from llmsim import interrupt\n"
            "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
            "interrupt.stop_on_termination()\n"
            "for sig in (signal.SIGTERM, signal.SIGHUP):\n"
            "    try:\n"
            "        with interrupt.handling():\n"
            "            os.kill(os.getpid(), sig)\n"
            "            for _ in range(10 ** 8): pass\n"
            "    except KeyboardInterrupt:\n"
            "        print(sig.name, 'interrupted')\n")
    out = _in_a_fresh_python(code)
    assert out.returncode == 0 and out.stdout.split("\n")[:2] == ["SIGTERM interrupted", "SIGHUP interrupted"], \
        out.stderr


def test_an_ignored_sighup_stays_ignored_and_a_forked_worker_gets_the_defaults_back() -> None:
    """`nohup llmsim run` must outlive its terminal: SIGHUP ignored before stays so. A forked worker, which its
    parent stops with SIGTERM, dies of it again instead of raising a KeyboardInterrupt of its own."""
    code = ("import signal; from llmsim import interrupt\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "interrupt.stop_on_termination()\n"
            "assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN\n"
            "assert signal.getsignal(signal.SIGTERM) is interrupt._terminated\n"
            "from llmsim.executor import _forked_worker; _forked_worker()  # a fork worker's initializer\n"
            "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n"
            "assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN\n"
            "print('ok')")
    out = _in_a_fresh_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_call_from_python_keeps_its_sigterm_handler() -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        entry.main(["--help"])
    assert signal.getsignal(signal.SIGTERM) is before
