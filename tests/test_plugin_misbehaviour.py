"""A third-party backend that misbehaves (trial 49): whatever its run() returns or raises, and whatever its
availability() does, becomes that backend's failed or skipped row with the reason; the run goes on, its other rows
are kept, and results.jsonl stays readable. An abstract backend is a broken plugin, not an available backend."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from llmsim import Backend, Case, hookimpl
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import Result, fill_derived, read_rows
from llmsim.runner import availability_of, plan_cases, run_scenario
from tests.conftest import TINY_SCENARIO


class Misbehaving(Backend):
    """Behaves as the case's strategy name says: good, none, dict, negative, nan, inf, zero, exit, status."""

    name = "misbehaving"
    kind = "modeled"

    def run(self, case: Case, settings: Any) -> Any:
        how = case.strategy.name
        if how == "none":
            return None
        if how == "dict":
            return {"step_time_s": 1.0}
        if how == "exit":
            raise SystemExit(3)
        if how == "status":
            return case.result(self, status="weird")
        step = {"negative": -5.0, "nan": math.nan, "inf": math.inf, "zero": 0.0}.get(how, 1.0)
        return fill_derived(case.result(self, step_time_s=step, c_per_submodel_s=1.0), case.workload.tokens_per_step)


class Unavailable(Backend):
    name = "unavailable"
    kind = "modeled"

    @classmethod
    def availability(cls) -> str | None:
        raise RuntimeError("probe crashed")

    def run(self, case: Case, settings: Any) -> Result:
        raise AssertionError("never run")


class Abstract(Backend):   # no run(): abstract
    name = "abstract"
    kind = "modeled"


class Plugin:
    @hookimpl
    def llmsim_backends(self):
        return [Misbehaving, Unavailable]


class AbstractPlugin:
    @hookimpl
    def llmsim_backends(self):
        return [Abstract]


HOW = ["good", "none", "dict", "negative", "nan", "inf", "zero", "exit", "status"]


def _registry() -> tuple[Any, BackendRegistry]:
    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(Plugin(), name="misbehaving")
    manager.register(AbstractPlugin(), name="abstract")
    return manager, BackendRegistry.from_manager(manager)


def test_every_misbehaviour_of_run_is_its_own_failed_row_and_the_file_stays_readable(tmp_path: Path) -> None:
    manager, registry = _registry()
    scenario = parse_scenario(dict(TINY_SCENARIO, strategies=[{"name": h} for h in HOW],
                                   backends={"misbehaving": {}, "unavailable": {}}))
    outcome = run_scenario(scenario, registry, plan_cases(scenario, registry), tmp_path, manager=manager)
    assert not outcome.interrupted
    rows = {(r["case"], r["backend"]): r for r in read_rows(outcome.run_dir)}   # refuses a damaged file
    assert len(rows) == 2 * len(HOW)
    mine = {how: rows[(how, "misbehaving")] for how in HOW}
    assert mine["good"]["status"] == "ok"
    expected = {
        "none": "backend 'misbehaving' returned NoneType, not a llmsim Result",
        "dict": "backend 'misbehaving' returned dict, not a llmsim Result",
        "negative": "backend 'misbehaving' returned a row llmsim cannot keep: step_time_s is -5.0, not a number >= 0",
        "nan": "backend 'misbehaving' returned a row llmsim cannot keep: an ok row with step_time_s nan",
        "inf": "backend 'misbehaving' returned a row llmsim cannot keep: an ok row with step_time_s inf",
        "zero": "backend 'misbehaving' returned a row llmsim cannot keep: an ok row with step_time_s 0.0",
        "exit": "SystemExit: 3 (at test_plugin_misbehaviour.py:",
        "status": "ValidationError: status: Input should be 'ok', 'skipped', 'failed' or 'does-not-fit'",
    }
    for how, words in expected.items():
        assert mine[how]["status"] == "failed" and words in mine[how]["error"], (how, mine[how]["error"])
    for how in HOW:
        row = rows[(how, "unavailable")]
        assert row["status"] == "skipped"
        assert row["error"] == ("backend 'unavailable' cannot run here: availability() raised RuntimeError: probe "
                                "crashed")


def test_an_abstract_backend_is_a_broken_plugin_and_availability_that_raises_is_a_reason() -> None:
    _, registry = _registry()
    assert "abstract" not in registry.names
    assert registry.broken["abstract"] == ("backend 'abstract' (Abstract) does not implement run, which every "
                                           "Backend must (docs/plugins.md)")
    assert availability_of(Unavailable) == "availability() raised RuntimeError: probe crashed"


def test_llmsim_backends_lists_a_backend_whose_availability_raises(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from llmsim import cli

    manager, _ = _registry()
    monkeypatch.setattr(cli, "get_plugin_manager", lambda: manager)
    assert cli.main(["backends"]) == 0
    out = " ".join(capsys.readouterr().out.split())   # the table wraps the reason over lines
    assert "no: availability()" in out and "raised" in out and "probe crashed" in out


class BadHardware:
    @hookimpl
    def llmsim_hardware(self):
        return [{"type": "device", "name": "good-npu", "peak_flops": {"bfloat16": 1.0e15}, "memory_bytes": 6.4e10,
                 "memory_bw_bytes_per_s": 2.0e12, "idle_power_w": 50, "max_power_w": 500, "source": "a sheet"},
                {"type": "device", "name": "bad-npu"}]   # required keys missing


def test_a_plugins_malformed_hardware_is_left_out_with_a_warning_and_other_scenarios_run(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 49: a plugin's invalid llmsim_hardware entry failed every scenario, even one that used none of it.
    Now its entries (the good one too: the plugin's list is one source) are left out, with one warning."""
    from llmsim import cli
    from llmsim.hardware import load_catalog
    from tests.conftest import REPO

    manager = get_plugin_manager()
    manager.register(BadHardware(), name="badhw")
    monkeypatch.setattr(cli, "get_plugin_manager", lambda: manager)
    assert cli.main(["validate", str(REPO / "scenarios" / "quickstart.yaml")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "llmsim: warning: plugin 'badhw''s hardware entries are left out: plugin badhw: entries[1]" in err, err
    catalog = load_catalog([], [("badhw", e) for e in BadHardware().llmsim_hardware()])
    assert "good-npu" not in catalog.devices and "a100-80gb" in catalog.devices
    assert list(catalog.broken_plugins) == ["badhw"]
