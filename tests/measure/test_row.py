"""A measured row: the profile's counts, the summary's columns, MFU, energy, the breakdown, the extras."""

from __future__ import annotations

import json

import pytest

from llmsim.backend import Case, RunContext
from llmsim.config import parse_scenario
from llmsim.measure.row import measured_result
from llmsim.measure.summary import Energy, MeasuredSplit, summarize
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim.workload.profile import profile_workload
from llmsim_plugins.cpu import CpuBackend
from tests.conftest import TINY_SCENARIO


def _case(mode: str = "decode", **strategy: object) -> Case:
    workload = dict(TINY_SCENARIO["workload"], mode=mode, decode_tokens=4)
    scenario = parse_scenario(dict(TINY_SCENARIO, workload=workload, strategies=[dict(name="s", **strategy)]))
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    return plan_cases(scenario, registry)[0].case


def test_one_device_row() -> None:
    case = _case()
    summary = summarize([2.0, 4.0], first_token=[1.0, 1.0], decode_tokens=4)
    r = measured_result(CpuBackend(RunContext()), case, summary, hardware="cpu-host", peak_memory_bytes=123.0,
                        peak_flops_per_s=1e9, breakdown=MeasuredSplit.one_device(summary),
                        energy=Energy(5.0, "rapl"), extra={"threads": 2})
    profile = profile_workload(case.workload, case.sharing)
    assert r.status == "ok" and r.kind == "measured" and (r.hardware, r.nodes) == ("cpu-host", 1)
    assert (r.params, r.model_flops_per_step) == (profile.params, profile.model_flops_per_step)
    assert (r.step_time_s, r.latency_p50_s, r.ttft_s, r.tpot_s) == (3.0, 3.0, 1.0, pytest.approx(2 / 3))
    assert r.mfu == pytest.approx(profile.model_flops_per_step / 3.0 / 1e9)
    assert (r.peak_memory_bytes_per_device, r.energy_j_per_step, r.energy_source) == (123.0, 5.0, "rapl")
    assert (r.c_per_submodel_s, r.compute_time_s, r.comm_time_s, r.other_time_s) == (3.0, 3.0, 0.0, 0.0)
    # derived by fill_derived
    assert r.tokens_per_s == pytest.approx(case.workload.tokens_per_step / 3.0)
    assert r.scaling_efficiency == 1.0 and r.joules_per_token == pytest.approx(5.0 / case.workload.tokens_per_step)
    assert r.extra == {"threads": 2, "step_times_s": json.dumps([2.0, 4.0])}


def test_several_devices_divide_mfu_and_leave_what_is_not_known_empty() -> None:
    case = _case("train", dp=2)
    r = measured_result(CpuBackend(RunContext()), case, summarize([1.0]), hardware="h200", peak_memory_bytes=None,
                        peak_flops_per_s=1e12)
    profile = profile_workload(case.workload, case.sharing)
    assert r.n_devices == 2 and r.mfu == pytest.approx(profile.model_flops_per_step / 1.0 / 2 / 1e12)
    assert r.ttft_s is None and r.compute_time_s is None and r.c_per_submodel_s is None
    assert r.energy_j_per_step is None and r.energy_source is None
    no_peak = measured_result(CpuBackend(RunContext()), case, summarize([1.0]), hardware="x", peak_memory_bytes=1.0)
    assert no_peak.mfu is None
