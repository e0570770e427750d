"""The `llmsim` command's entry point: the CLI imported under a Ctrl-C guard.

Importing the CLI imports torch, pandas and the plugins (5-12 s on a busy 2-core host), so a Ctrl-C then is
common. Raised inside an import, Python's KeyboardInterrupt would print a traceback from whatever module was
loading; here it is one line and exit code 130, as a Ctrl-C anywhere later (README "Exit codes").
"""

from __future__ import annotations

import sys

from llmsim.errors import EXIT_INTERRUPTED  # a light module: only the CLI's import is guarded


def main(argv: list[str] | None = None) -> int:
    try:
        from llmsim.cli import main as cli_main
    except KeyboardInterrupt:
        print("llmsim: interrupted while starting; nothing was run", file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli_main(argv)
