"""The load a measured row records (llmsim.measure.host_load)."""

from __future__ import annotations

import os

import pytest

from llmsim.measure import host_load


def test_load_per_core_is_the_one_minute_load_average_over_the_cores(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (6.0, 1.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert host_load.load_per_core() == 1.5


def test_no_load_average_on_this_platform_gives_none(monkeypatch: pytest.MonkeyPatch):
    def absent() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", absent)
    assert host_load.load_per_core() is None
