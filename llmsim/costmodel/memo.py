"""The one way the cost model opens a memo for a block: a context variable holds the open table, so it is
scoped to the `with` block that opened it (as decimal.localcontext scopes a context) and two threads pricing
tables never share one. Used by compute.phase_memo, memory.params_memo and work.stage_step_memo."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def scoped_memo(var: ContextVar[T | None], make: Callable[[], T]) -> Iterator[None]:
    """Open a new table `make()` in `var` for the block, unless one is open already (nested blocks share the
    outer one's table); the variable is reset when the block that opened it ends."""
    if var.get() is not None:
        yield
        return
    token = var.set(make())
    try:
        yield
    finally:
        var.reset(token)
