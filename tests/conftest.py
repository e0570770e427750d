"""Shared fixtures: scenario files written to tmp_path, and a fresh plugin manager per test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_SCENARIO: dict[str, Any] = {
    "name": "tiny-test",
    "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 2, "dtype": "float32"},
    "strategies": [{"name": "single"}],
    "backends": {"cpu": {"steps": 2, "warmup": 1}},
}


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    """Write a scenario dict (default: the tiny one, with `changes` merged at the top level) to a file."""

    def write(data: dict[str, Any] | None = None, name: str = "scenario.yaml", **changes: Any) -> Path:
        content = dict(TINY_SCENARIO if data is None else data)
        content.update(changes)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the host-probe cache of tests out of the user's home, but share it across tests, and across
    pytest-xdist's workers (each has its own basetemp, popen-gwN, under the session's: the probes run once;
    the cache file is replaced atomically, so two workers probing at once are safe)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "cache"))
