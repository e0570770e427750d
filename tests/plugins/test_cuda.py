"""The cuda backend: the NVML seam against recorded counter sequences, catalog matching, clean
`skipped` rows where there is no GPU, and (marked `gpu`) real runs where there is one.

The fake NVML below mimics pynvml's surface: functions named like pynvml's and error classes named
NVMLError_<kind>, so the tests need neither nvidia-ml-py nor a GPU.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

import llmsim_plugins.cuda as cuda_plugin
from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.nvml import (LIBRARY_NOT_FOUND, NOT_INSTALLED, Nvml, NvmlEnergy, NvmlUnavailable, catalog_name_for,
                         counter_delta_mj, load_pynvml, trapezoid_j)
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases, run_scenario
from llmsim_plugins.cuda import CudaBackend, CudaSettings, NvmlMeter, cuda_unavailable_reason
from tests.conftest import TINY_SCENARIO


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's names
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


class FakeNvml:
    """Replays recorded readings: each call pops the next value; an exception instance is raised."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound

    def __init__(self, energy_mj: Iterable[Any] = (), power_mw: Iterable[Any] = (), name: str = "NVIDIA H200",
                 init_error: Exception | None = None, count: int = 1) -> None:
        self.energy = list(energy_mj)
        self.power = list(power_mw)
        self._name = name
        self.init_error = init_error
        self.count = count

    @staticmethod
    def _next(seq: list[Any]) -> Any:
        value = seq.pop(0) if len(seq) > 1 else seq[0]
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:  # noqa: N802
        raise NVMLError_NotSupported()

    def nvmlDeviceGetName(self, handle: int) -> bytes:  # noqa: N802
        return self._name.encode()

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:  # noqa: N802
        return self._next(self.energy)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:  # noqa: N802
        return self._next(self.power)


class Clock:
    """A clock that advances by `step` seconds per read."""

    def __init__(self, step: float = 1.0) -> None:
        self.t, self.step = -step, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _energy(fake: FakeNvml, **kw: Any) -> NvmlEnergy:
    return NvmlEnergy(Nvml(fake).init(), [0], clock=Clock(), thread=False, **kw)


# -- the seam against recorded sequences --------------------------------------------------------
def test_counter_difference_is_the_energy() -> None:
    # energy reads at start and stop; power 100 W throughout; clock ticks 1 s per read.
    meter = _energy(FakeNvml(energy_mj=[1_000, 401_000], power_mw=[100_000]))
    meter.start()
    meter.sample()
    reading = meter.stop()
    assert reading.method == "counter"
    assert reading.joules == pytest.approx(400.0)
    assert reading.sampled_j is not None and reading.samples == 3


def test_counter_wrap_around_is_one_modulus() -> None:
    assert counter_delta_mj(2**64 - 500, 1_000) == 1_500
    meter = _energy(FakeNvml(energy_mj=[2**64 - 500, 1_000], power_mw=[1_000]))
    meter.start()
    assert meter.stop().joules == pytest.approx(1.5)


def test_counter_reset_is_rejected_for_power_sampling() -> None:
    # The counter went down by a lot (driver reload): the modular difference is ~1.8e16 J, impossible.
    meter = _energy(FakeNvml(energy_mj=[10**12, 5], power_mw=[100_000, 200_000, 300_000]))
    meter.start()
    meter.sample()
    reading = meter.stop()
    assert reading.method == "power-sampling"
    assert reading.joules == pytest.approx(trapezoid_j([(1, 100), (2, 200), (3, 300)])) == pytest.approx(400.0)
    assert "counter reset" in reading.notes[0]


def test_a_counter_that_did_not_advance_is_not_a_reading_of_zero_joules() -> None:
    # Seen on an H200: three tiny steps (~3 ms) between two reads of the same counter value gave 0 J.
    meter = _energy(FakeNvml(energy_mj=[5_000, 5_000], power_mw=[100_000, 200_000, 300_000]))
    meter.start()
    meter.sample()
    reading = meter.stop()
    assert reading.method == "power-sampling" and reading.counter_j is None
    assert reading.joules == pytest.approx(400.0)
    assert "did not advance" in reading.notes[0]


def test_missing_counter_falls_back_to_power_sampling() -> None:
    fake = FakeNvml(energy_mj=[NVMLError_NotSupported()], power_mw=[50_000, 150_000, 250_000, 250_000])
    meter = _energy(fake, sampling=False)  # sampling starts anyway because the counter is missing
    assert not meter.counter_supported()
    meter.start()
    meter.sample()
    meter.sample()
    reading = meter.stop()
    assert reading.method == "power-sampling" and reading.counter_j is None
    # samples at t = 1, 2, 3, 4 s: 50, 150, 250, 250 W
    assert reading.joules == pytest.approx(100 + 200 + 250)
    assert "NotSupported" in reading.notes[0]


def test_device_with_neither_counter_nor_power_gives_no_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(energy_mj=[NVMLError_NotSupported()], power_mw=[NVMLError_NotSupported()])
    meter = _energy(fake)
    meter.start()
    reading = meter.stop()
    assert reading.joules is None and reading.method == "none"
    monkeypatch.setattr(cuda_plugin, "nvml_factory", lambda: Nvml(fake))
    assert "neither a total-energy counter nor power" in NvmlMeter.available()


def test_background_sampling_thread_integrates_power() -> None:
    fake = FakeNvml(energy_mj=[NVMLError_NotSupported()], power_mw=[120_000])
    meter = NvmlEnergy(Nvml(fake).init(), [0], interval_s=0.001)
    meter.start()
    while meter._samples[0][-1][0] - meter._samples[0][0][0] < 0.02:  # wait for some samples, not a time
        pass
    reading = meter.stop()
    assert reading.method == "power-sampling" and reading.samples >= 3
    span = meter._samples[0][-1][0] - meter._samples[0][0][0]
    assert reading.joules == pytest.approx(120.0 * span)


def test_library_not_found_is_a_plain_reason() -> None:
    with pytest.raises(NvmlUnavailable, match="NVML library not found"):
        Nvml(FakeNvml(init_error=NVMLError_LibraryNotFound())).init()


def test_pynvml_not_installed_is_a_plain_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NvmlUnavailable) as err:
        load_pynvml()
    assert str(err.value) == NOT_INSTALLED


def test_availability_names_the_missing_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert CudaBackend.availability().startswith("no GPU: no CUDA device (torch.cuda.is_available() is False)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cuda_plugin, "nvml_factory", lambda: Nvml(FakeNvml(init_error=NVMLError_LibraryNotFound())))
    assert CudaBackend.availability() == LIBRARY_NOT_FOUND
    monkeypatch.setattr(cuda_plugin, "nvml_factory", lambda: Nvml(FakeNvml()))
    assert CudaBackend.availability() is None


# -- which catalog device -----------------------------------------------------------------------
@pytest.mark.parametrize(("nvml_name", "catalog"), [
    ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"), ("NVIDIA A100-PCIE-80GB", "a100-80gb-pcie"),
    ("NVIDIA A100 PCIe 80GB", "a100-80gb-pcie"),
    ("NVIDIA A100-PCIE-40GB", "a100-40gb"), ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", None), ("NVIDIA H200 NVL", None), ("NVIDIA GeForce RTX 4090", None), ("Tesla T4", None),
    # a MIG instance is a slice of its board's compute and memory: never the board's entry
    ("NVIDIA A100 80GB PCIe MIG 1g.10gb", None), ("NVIDIA A100-SXM4-40GB MIG 3g.20gb", None),
    ("NVIDIA A100-SXM4-80GB MIG 7g.80gb", None), ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", None)])
def test_nvml_names_map_to_catalog_devices(nvml_name: str, catalog: str | None) -> None:
    assert catalog_name_for(nvml_name) == catalog


def test_a_mig_instance_leaves_mfu_empty_saying_it_is_a_slice_of_the_board() -> None:
    """New-user trial: "A100 80GB PCIe MIG 1g.10gb" was matched to a100-80gb-pcie, so a seventh of the board was
    priced as all of it. Now no device: MFU and modeled energy stay empty, the reason names the part and the key."""
    backend = CudaBackend(RunContext())
    name, reason = backend._catalog_device("NVIDIA A100 80GB PCIe MIG 1g.10gb", CudaSettings())
    assert name is None and reason == (
        "GPU 'NVIDIA A100 80GB PCIe MIG 1g.10gb' is a MIG instance (1g.10gb: 1 compute slice and 10 GB of the "
        "board's memory), not a whole board; the catalog prices whole boards, so MFU and modeled energy are left "
        "empty (backends.cuda.hardware names a whole board: setting it would price this part as the board)")
    # the user's own entry (a catalog file's device for the slice) is theirs to name
    assert backend._catalog_device("NVIDIA A100 80GB PCIe MIG 1g.10gb", CudaSettings(hardware="a100-40gb")) == \
        ("a100-40gb", None)


def test_unknown_gpu_leaves_mfu_empty_with_the_reason() -> None:
    backend = CudaBackend(RunContext())
    assert backend._catalog_device("NVIDIA H200", CudaSettings()) == ("h200", None)
    name, reason = backend._catalog_device("NVIDIA GeForce RTX 4090", CudaSettings())
    assert name is None and "RTX 4090" in reason and "backends.cuda.hardware" in reason
    assert backend._catalog_device("NVIDIA GeForce RTX 4090", CudaSettings(hardware="a100-40gb"))[0] == "a100-40gb"


def test_energy_meter_hook_provides_the_nvml_meter() -> None:
    assert cuda_plugin.llmsim_energy_meters() == [NvmlMeter]
    assert (NvmlMeter.name, NvmlMeter.device_kind) == ("nvml", "cuda")


# -- through the runner: skipped rows with the reason -------------------------------------------
def test_runner_writes_skipped_rows_with_the_reason_without_a_gpu(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    manager = get_plugin_manager(environ={"LLMSIM_PLUGINS": "cuda"})
    registry = BackendRegistry.from_manager(manager)
    scenario = parse_scenario(dict(TINY_SCENARIO, strategies=[{"name": "single"}, {"name": "dp2", "dp": 2}],
                                   backends={"cuda": {"steps": 2, "warmup": 1}}))
    planned = plan_cases(scenario, registry)
    outcome = run_scenario(scenario, registry, planned, tmp_path, manager=manager)
    rows = [r for r in (outcome.run_dir / "results.jsonl").read_text().splitlines() if r]
    assert len(rows) == 2
    for row in rows:
        assert '"status": "skipped"' in row and "no GPU: no CUDA device (torch.cuda.is_available() is False)" in row
    # The backend itself also refuses cleanly when called directly.
    r = CudaBackend(RunContext()).run(planned[0].case, CudaSettings())
    assert r.status == "skipped" and "no CUDA device" in r.error


def test_a_cuda_build_without_a_driver_runs_everything_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15 item 1: a plain `pip install` gives a CUDA build of torch; on a laptop or CI box without an
    NVIDIA driver torch.cuda.is_available() is False, device_count() 0, and the other torch.cuda calls
    raise. Simulated here (whatever build is installed): the cuda backend says 'no GPU' and skips, the
    cpu backend and the report run, `llmsim backends` lists the reason, and nothing calls into CUDA."""
    import torch

    from llmsim.cli import main

    touched: list[str] = []

    def no_driver(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            touched.append(name)
            raise RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU "
                               "and installed a driver from http://www.nvidia.com/Download/index.aspx")
        return call

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for name in ("current_device", "current_stream", "synchronize", "set_device", "get_device_properties",
                 "get_device_name", "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats",
                 "empty_cache", "init", "Event"):
        monkeypatch.setattr(torch.cuda, name, no_driver(name))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    reason = cuda_unavailable_reason()
    assert reason is not None and reason.startswith("no GPU: ")
    assert "is a CUDA 12.8 build, but no NVIDIA driver or GPU is visible" in reason

    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(dict(TINY_SCENARIO, backends={"cpu": {"steps": 1, "warmup": 0},
                                                                     "cuda": {"steps": 1}})))
    assert main(["backends"]) == 0
    assert "no: no GPU: no CUDA device" in " ".join(capsys.readouterr().out.split())
    assert main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["backend"]: r for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    assert rows["cpu"]["status"] == "ok"
    assert rows["cuda"]["status"] == "skipped" and "cannot run here: no GPU: " in rows["cuda"]["error"]
    assert (run_dir / "report.html").is_file()
    assert json.loads((run_dir / "environment.json").read_text())["cuda_available"] is False
    assert touched == []


# -- on a real GPU ------------------------------------------------------------------------------
NO_GPU = cuda_unavailable_reason()
gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs an NVIDIA GPU: {NO_GPU}")


def _case(mode: str = "train", dtype: str = "float32", **strategy: Any) -> Any:
    workload = dict(TINY_SCENARIO["workload"], mode=mode, decode_tokens=4, dtype=dtype)
    scenario = parse_scenario(dict(TINY_SCENARIO, workload=workload, strategies=[dict(name="s", **strategy)],
                                   backends={"cuda": {}}))
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cuda"}))
    return plan_cases(scenario, registry)[0].case


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_tiny_preset_runs_on_the_gpu(mode: str) -> None:
    case = _case(mode, dtype="bfloat16")
    r = CudaBackend(RunContext()).run(case, CudaSettings(steps=3, warmup=1))
    assert r.status == "ok", r.error
    assert r.step_time_s > 0 and r.latency_p99_s >= r.latency_p50_s
    assert r.peak_memory_bytes_per_device > 0
    assert r.energy_source in ("nvml", "modeled") and r.energy_j_per_step > 0
    assert r.mfu is not None or "mfu_reason" in r.extra
    # the fused attention kernel torch's SDPA ran (llmsim.measure.sdpa; an H200 with torch 2.11 ran cudnn)
    assert r.attention_kernel in ("cudnn", "flash", "efficient"), r.attention_kernel
    if mode == "decode":
        assert 0 < r.ttft_s < r.step_time_s
    if mode == "train":
        assert r.other_time_s > 0
        import json
        import math

        assert all(math.isfinite(x) for x in json.loads(r.extra["losses"]))


@pytest.mark.gpu
@gpu
def test_two_gpus_run_data_parallel_through_nccl() -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, this host has {torch.cuda.device_count()}")
    r = CudaBackend(RunContext()).run(_case(dp=2), CudaSettings(steps=2, warmup=1))
    assert r.status == "ok", r.error
    assert r.n_devices == 2 and r.step_time_s > 0


# -- the run path without a GPU: torch.cuda stubbed onto the CPU, NVML faked ----------------------
class _Event:
    """torch.cuda.Event stand-in: records host time (the real one records on the GPU stream)."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self) -> None:
        import time

        self.t = time.perf_counter()

    def elapsed_time(self, end: "_Event") -> float:
        return (end.t - self.t) * 1000.0


def _no_accelerator_for_the_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulated GPU below runs the model on the CPU. torch's optimizer asks torch.accelerator whether an
    accelerator is available (Optimizer._accelerator_graph_capture_health_check) and, on a CUDA build told
    that CUDA is, reads the current CUDA stream: without a driver that raises 'Found no NVIDIA driver'
    (issue 15 item 1). The optimizer steps on the CPU here, so it is told the truth: no accelerator
    (torch 2.13 asks torch.accelerator.current_accelerator, torch 2.9 torch.cuda.is_current_stream_capturing)."""
    import torch

    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)


def test_run_assembles_a_row_from_events_memory_and_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a measurement: checks that one case's row is put together as documented (units, energy
    method, MFU against the matched catalog device, losses) on a simulated H200."""
    import json
    import types

    import torch

    import llmsim.workload.step as step_module

    cuda = torch.cuda
    for name, value in dict(is_available=lambda: True, device_count=lambda: 1, set_device=lambda d: None, synchronize=lambda d=None: None,
                            empty_cache=lambda: None, reset_peak_memory_stats=lambda d=None: None,
                            memory_allocated=lambda d=None: 1_000, max_memory_allocated=lambda d=None: 51_000,
                            mem_get_info=lambda d=None: (80e9, 80e9),
                            get_device_properties=lambda d: types.SimpleNamespace(uuid="abc"),
                            Event=_Event).items():
        monkeypatch.setattr(cuda, name, value)
    _no_accelerator_for_the_optimizer(monkeypatch)
    real_step = step_module.WorkloadStep
    monkeypatch.setattr(step_module, "WorkloadStep", lambda *a, device=None, **kw: real_step(*a, **kw))
    fake = FakeNvml(energy_mj=[0, 30_000], power_mw=[100_000], name="NVIDIA H200")
    monkeypatch.setattr(cuda_plugin, "nvml_factory", lambda: Nvml(fake))

    # A 0.2 s energy window: untimed steps run under the meter after the 3 timed ones until 0.2 s have passed
    # (none where the timed ones took that long: a loaded host), and the counter's 30 J are divided by all of them.
    r = CudaBackend(RunContext()).run(_case("train"), CudaSettings(steps=3, warmup=1, power_sampling=False,
                                                                   energy_window_s=0.2))
    assert r.status == "ok", r.error
    assert r.hardware == "h200" and r.energy_source == "nvml"
    steps = r.extra["energy_steps"]
    assert steps >= 3 and r.extra["energy_metered_s"] >= 0.2
    assert r.extra["energy_method"] == "counter" and r.energy_j_per_step == pytest.approx(30.0 / steps)
    assert r.extra["energy_counter_j_per_step"] == pytest.approx(30.0 / steps)
    assert r.peak_memory_bytes_per_device == 50_000
    assert r.mfu == pytest.approx(r.model_flops_per_step / r.step_time_s / 66.9e12)  # float32 peak of h200
    assert len(json.loads(r.extra["losses"])) == 3 and r.other_time_s > 0

    fake_unknown = FakeNvml(energy_mj=[NVMLError_NotSupported()], power_mw=[NVMLError_NotSupported()],
                            name="NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(cuda_plugin, "nvml_factory", lambda: Nvml(fake_unknown))
    r = CudaBackend(RunContext()).run(_case("decode"), CudaSettings(steps=2, warmup=0, energy_window_s=0))
    assert r.status == "ok" and r.mfu is None and "RTX 4090" in r.extra["mfu_reason"]
    assert r.hardware == "NVIDIA GeForce RTX 4090" and r.energy_j_per_step is None and r.ttft_s > 0


@pytest.mark.parametrize(("micro_batch", "passes"), [(1, 2), (2, 1)])
def test_a_training_step_runs_batch_over_micro_batch_passes(micro_batch: int, passes: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The strategy's micro_batch means on the GPU what it means on the CPU: batch / (dp * micro_batch)
    forward/backward passes per step, gradients accumulated (it used to run the whole batch in one)."""
    import types

    import torch

    import llmsim.workload.step as step_module

    for name, value in dict(is_available=lambda: True, device_count=lambda: 1, set_device=lambda d: None, synchronize=lambda d=None: None,
                            empty_cache=lambda: None, reset_peak_memory_stats=lambda d=None: None,
                            memory_allocated=lambda d=None: 0, max_memory_allocated=lambda d=None: 0,
                            mem_get_info=lambda d=None: (80e9, 80e9),
                            get_device_properties=lambda d: types.SimpleNamespace(uuid=""), Event=_Event).items():
        monkeypatch.setattr(torch.cuda, name, value)
    _no_accelerator_for_the_optimizer(monkeypatch)
    built: list[Any] = []
    forwards: list[int] = []
    real_step = step_module.WorkloadStep

    def on_cpu(*args: Any, device: Any = None, **kw: Any) -> Any:
        step = real_step(*args, **kw)
        step.model.register_forward_hook(lambda *_: forwards.append(1))
        built.append(step)
        return step

    monkeypatch.setattr(step_module, "WorkloadStep", on_cpu)
    monkeypatch.setattr(cuda_plugin, "nvml_factory", lambda: Nvml(FakeNvml(energy_mj=[0, 1_000], power_mw=[1_000])))
    case = _case("train", micro_batch=micro_batch)  # the tiny scenario's batch is 2
    r = CudaBackend(RunContext()).run(case, CudaSettings(steps=2, warmup=1, power_sampling=False,
                                                         energy_window_s=0))
    assert r.status == "ok", r.error
    assert r.micro_batch == built[0].micro_batch == micro_batch
    assert len(forwards) == passes * 3  # warm-up + 2 timed steps


def test_a_model_larger_than_the_free_gpu_memory_does_not_fit_before_it_is_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cuda side of issue 15's trial: an allocation failure half-way was a `failed` row; now the free memory
    of the GPU (torch.cuda.mem_get_info) against the parameters, gradients and AdamW moments decides first."""
    import types

    import torch

    import llmsim.workload.step as step_module
    from llmsim.workload.profile import profile_workload

    for name, value in dict(is_available=lambda: True, device_count=lambda: 1, set_device=lambda d: None,
                            get_device_properties=lambda d: types.SimpleNamespace(uuid="abc"),
                            mem_get_info=lambda d=None: (1e6, 141e9)).items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(step_module, "WorkloadStep", lambda *a, **k: pytest.fail("the model was built"))
    monkeypatch.setattr(cuda_plugin, "nvml_factory", lambda: Nvml(FakeNvml(name="NVIDIA H200")))
    case = _case("train")
    row = CudaBackend(RunContext()).run(case, CudaSettings(steps=1, warmup=0))
    need = profile_workload(case.workload, case.sharing).param_bytes * 4  # float32: params, grads, 2 moments
    assert row.status == "does-not-fit" and row.hardware == "h200"
    assert row.error.startswith(f"needs at least {need / 1e9:.1f} GB per GPU (parameters ")
    assert "> 0.0 GB available (free on GPU 0, torch.cuda.mem_get_info)" in row.error
    assert row.extra["memory_free_bytes"] == 1e6 and row.peak_memory_bytes_per_device == need
