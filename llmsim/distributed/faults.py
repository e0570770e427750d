"""Faults injected into one rank on purpose, so tests can check that a failing, hanging or crashing rank
ends the case cleanly (a `failed` row, no process left behind) or, after the results, not at all.

LLMSIM_DIST_FAULT="RANK:WHAT": `kill` (SIGKILL itself), `raise`, `hang` once the process group is up;
`abort-at-exit` aborts the rank after the process group is torn down, once rank 0 wrote the results (in the
rank's own output folder; at most 30 s, or the seconds given after it, "1:abort-at-exit:3": a rank on another
node of a multi-node launch never sees rank 0's folder, and would wait the whole 30 s).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FAULT_ENV = "LLMSIM_DIST_FAULT"


def _wanted(rank: int) -> str:
    who, _, what = os.environ.get(FAULT_ENV, "").partition(":")
    return what.partition(":")[0] if who and int(who) == rank else ""


def _wait_s(default: float) -> float:
    """The seconds given after the fault's name ("1:abort-at-exit:3"), else `default`."""
    given = os.environ.get(FAULT_ENV, "").split(":")[2:]
    return float(given[0]) if given else default


def inject_fault(rank: int) -> None:
    """Make this rank die (SIGKILL), raise, or hang, when the environment asks for it."""
    what = _wanted(rank)
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif what == "raise":
        raise RuntimeError(f"injected fault on rank {rank} ({FAULT_ENV}={os.environ[FAULT_ENV]})")
    elif what == "hang":
        time.sleep(3600)


def abort_at_exit(rank: int, result: Path, wait_s: float = 30.0) -> None:
    """A crash in teardown after the results: wait for rank 0's `result` file, then abort, when asked."""
    if _wanted(rank) != "abort-at-exit":
        return
    deadline = time.monotonic() + _wait_s(wait_s)
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.abort()
