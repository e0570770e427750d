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
