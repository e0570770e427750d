"""results.py: files written whole, with the mode a plain open() gives them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from llmsim.results import write_atomic


def test_an_atomic_write_gets_the_umask_mode_not_owner_only(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "report.md", "# report\n")
    finally:
        os.umask(previous)
    path = tmp_path / "report.md"
    assert path.read_text() == "# report\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left
