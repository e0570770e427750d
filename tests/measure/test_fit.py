"""A measured case that cannot fit is a `does-not-fit` row with the bytes needed and available, decided before
anything is allocated (a 70B model on the cpu backend used to end as `failed` inside the allocator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llmsim_plugins.cpu as cpu_plugin
from llmsim.backend import Case, RunContext
from llmsim.config import parse_scenario
from llmsim.measure.fit import (Need, allocation_failure, device_need, fit_problem, host_available_bytes,
                               host_need)
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim.workload import step as workload_step
from llmsim.workload.profile import profile_workload
from llmsim_plugins.cpu import CpuBackend, CpuSettings
from tests.conftest import TINY_SCENARIO


def _case(model: dict[str, Any], mode: str = "train", dtype: str = "float32", **strategy: Any) -> Case:
    workload = dict(TINY_SCENARIO["workload"], model=model, mode=mode, dtype=dtype)
    scenario = parse_scenario(dict(TINY_SCENARIO, workload=workload, strategies=[dict(name="s", **strategy)],
                                   backends={"cpu": {}}))
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    return plan_cases(scenario, registry)[0].case


def _never_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is never built on a real device (the profile's trace on the meta device allocates nothing). The
    plugin imports WorkloadStep where a case runs (plugins/cpu.py: no torch at import), from its module: patched
    there."""
    built = workload_step.WorkloadStep

    def refuse(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("device") == "meta":
            return built(*args, **kwargs)
        raise AssertionError("the model was built although it cannot fit")
    monkeypatch.setattr(workload_step, "WorkloadStep", refuse)


def test_a_70b_model_on_the_cpu_backend_does_not_fit_before_allocating(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\n")
    monkeypatch.setattr(cpu_plugin, "host_available_bytes",
                        lambda: host_available_bytes(meminfo, tmp_path / "no-cgroup"))
    _never_built(monkeypatch)
    case = _case({"preset": "llama2-70b", "seq_len": 16}, dtype="bfloat16")
    row = CpuBackend(RunContext()).run(case, CpuSettings(steps=1, warmup=0))
    profile = profile_workload(case.workload, case.sharing)
    need = profile.param_bytes * 4  # bf16 parameters + gradients + AdamW's two moments, each 2 bytes a parameter
    assert row.status == "does-not-fit"
    assert row.error == (f"needs at least {need / 1e9:.1f} GB on this host (parameters {need / 4e9:.1f} GB + "
                         f"gradients {need / 4e9:.1f} GB + AdamW moments {need / 2e9:.1f} GB) > 20.5 GB available "
                         f"(MemAvailable of this host); checked before allocating, activations not counted")
    assert row.peak_memory_bytes_per_device == need and row.params == profile.params > 6e10


def test_inference_needs_the_parameters_only_and_a_case_that_fits_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    case = _case({"preset": "tiny"}, mode="prefill")
    param_bytes = profile_workload(case.workload, case.sharing).param_bytes
    monkeypatch.setattr(cpu_plugin, "host_available_bytes", lambda: (param_bytes - 1.0, "a test's host"))
    row = CpuBackend(RunContext()).run(case, CpuSettings(steps=1, warmup=0))
    assert row.status == "does-not-fit" and f"(parameters {param_bytes / 1e9:.1f} GB)" in row.error
    monkeypatch.setattr(cpu_plugin, "host_available_bytes", lambda: (float(param_bytes), "a test's host"))
    assert CpuBackend(RunContext()).run(case, CpuSettings(steps=1, warmup=0)).status == "ok"


@pytest.mark.parametrize("message", [
    "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "4398046509056 bytes. Error code 12 (Cannot allocate memory)",
    "DefaultCPUAllocator: not enough memory: you tried to allocate 4398046509056 bytes."])
def test_a_step_the_allocator_refuses_is_a_does_not_fit_row(monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """Trial 34: batch 2**31 passed the parameters' check and failed with the allocator's RuntimeError as a raw
    `failed` row; the allocator's words (torch's alloc_cpu.cpp, either version's) make it a does-not-fit row."""
    def allocator_refuses(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(message)
    monkeypatch.setattr(workload_step, "WorkloadStep", allocator_refuses)
    monkeypatch.setattr(cpu_plugin, "host_available_bytes", lambda: (2.0e10, "a test's host"))
    row = CpuBackend(RunContext()).run(_case({"preset": "tiny"}), CpuSettings(steps=1, warmup=0))
    assert row.status == "does-not-fit"
    assert row.error.startswith("the step could not allocate 4398.0 GB with 20.0 GB available (a test's host)")
    assert allocation_failure(MemoryError()) is not None
    assert allocation_failure(RuntimeError("shape mismatch")) is None    # any other error stays a failure


def test_several_processes_count_every_replica_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    case = _case({"preset": "tiny"}, dp=2)
    profile = profile_workload(case.workload, case.sharing)
    replicas = 2 * profile.param_bytes * 4  # two data-parallel copies of parameters, gradients, moments
    monkeypatch.setattr(cpu_plugin, "host_available_bytes", lambda: (replicas - 1.0, "a test's host"))
    _never_built(monkeypatch)
    monkeypatch.setattr("llmsim.distributed.launch.launch", lambda *a, **k: pytest.fail("processes were started"))
    row = CpuBackend(RunContext()).run(case, CpuSettings(steps=1, warmup=0))
    assert row.status == "does-not-fit" and "on this host for 2 processes" in row.error
    assert row.peak_memory_bytes_per_device == replicas / 2


@pytest.mark.parametrize("zero, copies", [(0, (2, 2, 2)), (1, (2, 2, 1)), (2, (2, 1, 1)), (3, (1, 1, 1))])
def test_zero_stages_shard_what_the_replicas_hold(zero: int, copies: tuple[int, int, int]) -> None:
    profile = profile_workload(_case({"preset": "tiny"}).workload, _case({"preset": "tiny"}).sharing)
    p = profile.param_bytes
    assert host_need(profile, 2, zero, train=True) == Need(p * copies[0], p * copies[1], 2 * p * copies[2])
    assert host_need(profile, 2, zero, train=False) == Need(p * (1 if zero >= 3 else 2))
    layout = _case({"preset": "tiny"}, dp=2, zero=zero).layout
    assert device_need(profile, layout, zero, train=True).total == host_need(profile, 2, zero, True).total / 2


def test_available_memory_is_the_smaller_of_the_host_and_its_cgroup(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:   1000 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("max\n")
    assert host_available_bytes(meminfo, cgroup) == (1024000.0, "MemAvailable of this host")
    (cgroup / "memory.max").write_text("600000\n")
    (cgroup / "memory.current").write_text("100000\n")
    assert host_available_bytes(meminfo, cgroup) == (500000.0, "this container's memory limit (cgroup memory.max) "
                                                               "left")
    assert host_available_bytes(tmp_path / "absent", cgroup) is None
    assert fit_problem(Need(1e9), None, "x") is None and fit_problem(Need(1e9), (1e9, "y"), "x") is None
