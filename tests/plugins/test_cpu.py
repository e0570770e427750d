"""The cpu backend measures real steps of the tiny preset in every mode."""

from __future__ import annotations

import pytest

from llmsim.backend import Case, RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim_plugins.cpu import CpuBackend, CpuSettings
from tests.conftest import TINY_SCENARIO


def _case(mode: str = "train", **strategy) -> Case:
    workload = dict(TINY_SCENARIO["workload"], mode=mode, decode_tokens=4)
    scenario = parse_scenario(dict(TINY_SCENARIO, workload=workload, strategies=[dict(name="s", **strategy)]))
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    return plan_cases(scenario, registry)[0].case


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_tiny_preset_runs_in_each_mode(mode: str) -> None:
    case = _case(mode)
    r = CpuBackend(RunContext()).run(case, CpuSettings(steps=2, warmup=1))
    assert r.status == "ok" and r.kind == "measured" and r.hardware == "cpu-host"
    assert r.step_time_s > 0 and r.latency_p50_s > 0 and r.latency_p99_s >= r.latency_p50_s
    assert r.tokens_per_s == pytest.approx(case.workload.tokens_per_step / r.step_time_s)
    assert r.model_flops_per_step > 0 and 0 < r.mfu < 2
    assert r.peak_memory_bytes_per_device is not None and r.peak_memory_bytes_per_device >= 0
    assert r.energy_source in ("modeled", "rapl") and r.energy_j_per_step > 0
    assert (r.m_submodels, r.n_devices, r.scaling_efficiency) == (1, 1, 1.0)
    assert r.compute_time_s + r.comm_time_s + r.bubble_time_s + r.other_time_s == pytest.approx(r.step_time_s)
    if mode == "decode":
        assert 0 < r.ttft_s < r.step_time_s and r.tpot_s > 0
    else:
        assert r.ttft_s is None
    if mode == "train":
        assert r.other_time_s > 0  # the optimizer step
    # the probes `llmsim calibrate` takes as measured
    assert r.extra["peak_flops_per_s"] > 0 and r.extra["stream_bytes_per_s"] > 0 and r.extra["op_overhead_s"] > 0
    # the attention kernel torch's SDPA ran, watched in the warm-up step (llmsim.measure.sdpa): the CPU's fused loop
    assert r.attention_kernel == "flash-cpu"


def test_multi_device_strategy_torch_cannot_run_here_is_skipped_with_the_reason() -> None:
    # Several processes run through llmsim.distributed (tests/distributed); context parallelism does not.
    r = CpuBackend(RunContext()).run(_case(cp=2), CpuSettings())
    assert r.status == "skipped"
    assert "context parallelism" in r.error


def test_modeled_energy_uses_the_catalog_power() -> None:
    backend = CpuBackend(RunContext())
    host = backend.context.catalog.device("cpu-host")
    import os

    cores = os.cpu_count()
    assert backend._modeled_power_w(cores) == pytest.approx(cores * host.max_power_w)


def test_an_explicit_dimension_decode_scenario_validates_and_runs() -> None:
    """No preset, learned positions, no max_positions: the table defaults to seq_len + decode_tokens rows, so
    the decode validates and the generated tokens find their positions."""
    model = {"layers": 2, "hidden": 64, "heads": 4, "vocab": 512, "seq_len": 16}
    workload = dict(TINY_SCENARIO["workload"], model=model, mode="decode", decode_tokens=8)
    scenario = parse_scenario(dict(TINY_SCENARIO, workload=workload))
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    case = plan_cases(scenario, registry)[0].case
    assert case.workload.model.max_positions == 16 + 8
    r = CpuBackend(RunContext()).run(case, CpuSettings(steps=2, warmup=1))
    assert r.status == "ok" and r.tpot_s > 0
