"""Tests of the `example` plugin, with a fresh llmsim plugin manager (no installation needed)."""

from __future__ import annotations

import llmsim_example
from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.hardware import load_catalog
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases

SCENARIO = {
    "name": "plugin-test",
    "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 4, "dtype": "bfloat16"},
    "strategies": [{"name": "dp2"}, {"name": "tp2", "tp": 2}],
    "backends": {"example": {"devices": 2}},
}


def _manager():
    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(llmsim_example, name="example")
    return manager


def test_backend_and_device_are_registered() -> None:
    manager = _manager()
    assert BackendRegistry.from_manager(manager).names == ["example"]
    entries = [(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es]
    assert "example-npu" in load_catalog(plugin_entries=entries).devices


def test_dp_case_is_predicted_and_tp_is_skipped() -> None:
    manager = _manager()
    registry = BackendRegistry.from_manager(manager)
    entries = [(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es]
    context = RunContext(catalog=load_catalog(plugin_entries=entries))
    backend = registry.get("example")(context)
    dp, tp = (backend.run(p.case, p.settings) for p in plan_cases(parse_scenario(SCENARIO), registry))
    assert dp.status == "ok" and dp.n_devices == 2 and dp.step_time_s > 0
    assert dp.scaling_efficiency == 1.0  # no communication modeled: ideal data parallelism
    assert tp.status == "skipped" and "data parallelism only" in tp.error
    # a dtype the device has no peak for: a skipped row that says so
    fp8 = plan_cases(parse_scenario({**SCENARIO, "workload": {**SCENARIO["workload"], "dtype": "float8"}}), registry)[0]
    row = backend.run(fp8.case, fp8.settings)
    assert row.status == "skipped" and "no peak FLOP/s for float8" in row.error
