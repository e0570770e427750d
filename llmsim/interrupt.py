"""Ctrl-C during `llmsim run`: stop promptly, keep the rows already computed (README "Exit codes": 130).

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be. Most of the
time that unwinds to the runner, which keeps the finished rows. But the exception can be lost on the way:
raised inside a `__del__`, a weakref or garbage-collector callback, Python prints "Exception ignored in
..." and carries on; raised inside a library's callback (a torch dispatch mode, a hook) it can come back
as another exception type, which the runner turns into a `failed` row before going on to the next case.
Either way the run continued, as if Ctrl-C had not been pressed.

So the handler installed here also *records* the request. The runner asks `requested()` after every
case and stops (a case that ended in an exception after the request is the interrupt, not a failure), and
the timing loop and the distributed launcher call `check()` between steps and polls, so a lost
KeyboardInterrupt still stops the run at the next step. A second Ctrl-C raises again, as the first did.

The `llmsim` program also stops so on SIGTERM and SIGHUP (`kill`, a job scheduler's stop, a closed terminal):
`stop_on_termination` passes them to SIGINT's handler, so the rows are kept, `run` prints its --resume line and
`plan` removes the folder it made, as after Ctrl-C (exit 130). A SIGHUP ignored when the program started
(`nohup`) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_requested = False


def requested() -> bool:
    """Whether Ctrl-C was pressed while `handling()` was active."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed (a safe point: between steps, between polls)."""
    if _requested:
        raise KeyboardInterrupt


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


TERMINATION = (signal.SIGTERM, signal.SIGHUP)


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP: whatever SIGINT does now (`_handler` within `handling()`, the entry point's one line
    after the command), else a KeyboardInterrupt as Python's default SIGINT handler raises."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    raise KeyboardInterrupt


def stop_on_termination() -> None:
    """Handle SIGTERM and SIGHUP as Ctrl-C from now on, in the main thread of the `llmsim` program only (a
    Python caller keeps its own handlers: llmsim.entry installs this where it runs as the program). A signal
    ignored when this is called stays ignored."""
    for sig in TERMINATION:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _terminated)


def forget_termination() -> None:
    """Python's default back for the signals `stop_on_termination` took (in a forked worker, which the parent
    stops with SIGTERM: a KeyboardInterrupt there would print the worker's traceback instead of ending it)."""
    for sig in TERMINATION:
        if signal.getsignal(sig) is _terminated:
            signal.signal(sig, signal.SIG_DFL)


@contextmanager
def handling() -> Iterator[None]:
    """Record Ctrl-C (and raise KeyboardInterrupt, as Python's default does) until the block ends; the
    previous handler is restored after. Outside the main thread signals cannot be handled: a no-op."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = False
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        # The request belongs to this block: left set, it would stop the next launch or timing loop run outside
        # one (a backend called directly, the next test in the same process) with a KeyboardInterrupt.
        _requested = False
