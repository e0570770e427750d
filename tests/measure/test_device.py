"""Device objects: the CPU's clock, a rank's device, and no torch_xla or NVML at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmsim.measure.device import CpuDevice, CudaDevice, rank_device
from tests.conftest import REPO


def test_cpu_device_reads_perf_counter_and_binds_no_process_group_device() -> None:
    device = CpuDevice()
    start = device.now()
    end = device.now()
    assert device.seconds(start, end) >= 0.0
    assert device.process_group_device is None and device.kind == "cpu"
    assert [a.name for a in device.profiler_activities()] == ["CPU"]


def test_rank_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert isinstance(rank_device("cpu", 3), CpuDevice)
    chosen: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    gpu = rank_device("cuda", 1)
    assert isinstance(gpu, CudaDevice) and gpu.torch_device == torch.device("cuda", 1) and chosen == [gpu.torch_device]
    assert gpu.process_group_device == gpu.torch_device and gpu.clock == "synchronize + perf_counter"
    with pytest.raises(ValueError, match="allowed: cpu, cuda"):
        rank_device("xla", 0)


def test_measure_imports_neither_torch_xla_nor_nvml() -> None:
    code = ("import sys, llmsim.measure.device, llmsim.measure.loop, llmsim.measure.row, llmsim.measure.host_probes; "
            "bad = [m for m in ('torch_xla', 'pynvml') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
