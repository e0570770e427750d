"""The files a run read, by content: a run folder's inputs.json.

A saved scenario names its files by path (runner.saved_scenario: `hardware_catalog`, `serving.arrival.path`), so
`--resume` compared paths only: a trace edited between a Ctrl-C and the resume gave the resumed cases another
request list than the finished ones, in one folder. The run folder keeps each file's SHA-256 and size
(`INPUTS_FILE`); a resume whose file differs is refused, naming the key and the file (`changed_input`).

Pure but for reading the files; a file that cannot be read is recorded without a digest (its reader says why,
later, in its own words).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmsim.userinput import not_a_regular_file

INPUTS_FILE = "inputs.json"
_CHUNK_BYTES = 1 << 20


def _file_slots(saved: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """(key path, container, index) of every file a saved scenario names: `hardware_catalog[i]` and
    `serving.arrival.path`. The one list of a scenario's file-valued keys (runner.saved_scenario makes them
    absolute through `map_input_paths`)."""
    catalogs = saved.get("hardware_catalog")
    if isinstance(catalogs, list):
        yield from ((f"hardware_catalog[{i}]", catalogs, i) for i, f in enumerate(catalogs) if isinstance(f, str))
    serving = saved.get("serving")
    arrival = serving.get("arrival") if isinstance(serving, dict) else None
    if isinstance(arrival, dict) and isinstance(arrival.get("path"), str) and arrival["path"]:
        yield "serving.arrival.path", arrival, "path"


def input_paths(saved: dict[str, Any]) -> dict[str, str]:
    """{key path: file} of the files a saved scenario (runner.saved_scenario: its paths absolute) reads."""
    return {key: container[index] for key, container, index in _file_slots(saved)}


def map_input_paths(saved: dict[str, Any], change: Callable[[str], str]) -> None:
    """Each file path of a saved scenario replaced by change(path), in place."""
    for _, container, index in list(_file_slots(saved)):
        container[index] = change(container[index])


def digest(path: str) -> dict[str, Any]:
    """{"path", "bytes", "sha256"} of one file; without bytes and sha256 where it cannot be read."""
    record: dict[str, Any] = {"path": path}
    if not_a_regular_file(path):   # a FIFO would be waited on (trial 32): its reader refuses it in its own words
        return record
    try:
        sha, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                sha.update(chunk)
                size += len(chunk)
    except OSError:
        return record
    record.update(bytes=size, sha256=sha.hexdigest())
    return record


def input_digests(saved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{key path: digest} of every file the saved scenario reads (inputs.json's content)."""
    return {key: digest(path) for key, path in input_paths(saved).items()}


def changed_input(run_dir: Path, saved: dict[str, Any]) -> str | None:
    """Why `run_dir`'s files differ from those the resumed scenario reads now, or None: the first key whose file's
    content (SHA-256) is not the one the run read. A folder without inputs.json (written before it existed), an
    unreadable one, or a file unread then or now compares nothing."""
    if not_a_regular_file(run_dir / INPUTS_FILE):
        return None
    try:
        then = json.loads((run_dir / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(then, dict):
        return None
    for key, path in input_paths(saved).items():
        before = then.get(key)
        if not isinstance(before, dict) or not isinstance(before.get("sha256"), str) or before.get("path") != path:
            continue   # another path is the saved scenario's own difference (runner.check_resumable)
        now = digest(path)
        if "sha256" in now and now["sha256"] != before["sha256"]:
            size = before.get("bytes")
            then_size = f"{size:,} bytes, " if isinstance(size, int) else ""
            return (f"{key}: {path} changed since the run read it: {then_size}sha256 {before['sha256'][:12]}... "
                    f"then, {now['bytes']:,} bytes, sha256 {now['sha256'][:12]}... now")
    return None
