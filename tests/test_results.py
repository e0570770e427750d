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


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    # Session 24's trial: a run on a full disk left .results.csv.l86k43i5 beside results.csv.
    import errno

    import pytest

    path = tmp_path / "results.csv"
    path.write_text("old\n")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new\n")
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]
    assert path.read_text() == "old\n"  # the file before the failed write stays whole


def test_a_folder_in_the_way_is_named_not_the_temporary_file(tmp_path: Path) -> None:
    """Session 29's trial: a folder named report.md was said as '.report.md.ff6oyfdq: Is a directory'."""
    (tmp_path / "report.md").mkdir()
    try:
        write_atomic(tmp_path / "report.md", "# report\n")
    except IsADirectoryError as exc:
        assert exc.filename == str(tmp_path / "report.md")
    else:
        raise AssertionError("a folder was overwritten by a file")
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
