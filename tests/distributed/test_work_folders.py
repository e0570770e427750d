"""The launcher's work folders in the temporary directory: a SIGKILLed launcher cannot remove its own (nothing of it
runs after the signal), so the next launch removes the folders whose launcher is gone, and only those."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmsim.distributed.launch import LAUNCHER_FILE, NODES_PREFIX, WORK_PREFIX, sweep_orphaned_work


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _folder(tmp: Path, name: str, pid: object | None, prefix: str = WORK_PREFIX) -> Path:
    folder = tmp / f"{prefix}{name}"
    folder.mkdir()
    (folder / "spec.json").write_text("{}")
    if pid is not None:
        (folder / LAUNCHER_FILE).write_text(str(pid))
    return folder


def test_only_the_folders_of_launchers_that_are_gone_are_swept(tmp_path: Path) -> None:
    orphan = _folder(tmp_path, "killed", _dead_pid())
    mine = _folder(tmp_path, "in-use", os.getpid())              # this process: a launch under way
    parent = _folder(tmp_path, "parent", os.getppid())           # another live process
    kept = _folder(tmp_path, "failed-logs", None)                # kept on purpose for a failure's message
    garbled = _folder(tmp_path, "garbled", "not a pid")
    other = tmp_path / "unrelated-dir"
    other.mkdir()
    (other / LAUNCHER_FILE).write_text(str(_dead_pid()))

    # launch_nodes' folders too (trial 37: they were never swept)
    nodes_orphan = _folder(tmp_path, "killed", _dead_pid(), NODES_PREFIX)
    nodes_mine = _folder(tmp_path, "in-use", os.getpid(), NODES_PREFIX)

    assert sweep_orphaned_work(tmp_path) == [orphan, nodes_orphan]
    assert not orphan.exists() and not nodes_orphan.exists()
    assert all(p.exists() for p in (mine, parent, kept, garbled, other, nodes_mine))
    assert sweep_orphaned_work(tmp_path) == []
