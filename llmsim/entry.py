"""The `llmsim` command's entry point: the CLI imported under a Ctrl-C guard.

Importing the CLI imports torch, pandas and the plugins (5-12 s on a busy 2-core host), so a Ctrl-C then is
common. Raised inside an import, Python's KeyboardInterrupt would print a traceback from whatever module was
loading; here it is one line and exit code 130, as a Ctrl-C anywhere later (README "Exit codes"). As the
program, it handles SIGTERM and SIGHUP as Ctrl-C (llmsim.interrupt.stop_on_termination).
"""

from __future__ import annotations

import os
import signal
import sys

from llmsim import interrupt  # light modules: only the CLI's import is guarded
from llmsim.errors import EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    if argv is None:   # the program's own streams: a character the terminal's encoding lacks (llmsim's "—", "×" under
        _replace_unencodable()   # PYTHONIOENCODING=ascii or a C locale) prints as "?" instead of a traceback
        interrupt.stop_on_termination()  # SIGTERM, SIGHUP: as Ctrl-C (rows kept, the --resume line, exit 130)
    try:
        from llmsim.cli import main as cli_main
    except KeyboardInterrupt:
        print("llmsim: interrupted while starting; nothing was run", file=sys.stderr)
        return EXIT_INTERRUPTED
    code = cli_main(argv)
    if argv is None:  # the program ends now: a Ctrl-C in the interpreter's shutdown would print a traceback
        signal.signal(signal.SIGINT, _interrupted_at_exit)
    return code


def _interrupted_at_exit(signum: int, frame: object) -> None:
    """Ctrl-C after the command has finished (its rows written; the interpreter joining threads, running atexit
    hooks, freeing torch): one line and exit code 130 at once, instead of a KeyboardInterrupt traceback from
    whatever shutdown code was running (trial 23)."""
    os.write(2, b"llmsim: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def _replace_unencodable() -> None:
    """Let stdout and stderr write "?" for what their encoding cannot (errors="replace"), as the CLI's text has
    dashes and signs outside ASCII (trial 24: `PYTHONIOENCODING=ascii llmsim validate` ended in UnicodeEncodeError)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="replace")
            except (OSError, ValueError):   # a stream that cannot change now: leave it as it is
                pass
