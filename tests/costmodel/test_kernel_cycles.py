"""A kernel's fixed time in SM clock cycles (Efficiency.kernel_latency_cycles, DeviceSpec.sm_clock_hz).

The fixed time a kernel of a pass takes beyond its roofline is a count of SM cycles: the catalog states the
count and the device's clock turns it into seconds, so the same kernel is shorter on a faster-clocked GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmsim.config import ModelSpec, Workload
from llmsim.costmodel import Plan, estimate
from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD
from llmsim.costmodel.efficiency import kernel_latency_seconds
from llmsim.errors import ScenarioError
from llmsim.hardware import load_catalog

from tests.costmodel.helpers import profiled

CLOCK_HZ = 1.0e9          # a made-up 1 GHz GPU: 10,000 cycles are 10 us
CYCLES = 10_000


def _device(name: str, cycles: float | None, clock: float | None, seconds: float | None = None) -> dict:
    """An A100 80GB entry under another name, with the kernel's fixed time stated as given."""
    entry = load_catalog().device("a100-80gb").model_dump(mode="json", exclude_none=True)
    entry["name"] = name
    entry.pop("sm_clock_hz", None)
    if clock is not None:
        entry["sm_clock_hz"] = clock
    eff = entry["efficiency"]
    eff.pop("kernel_latency_cycles", None)
    eff["kernel_latency_s"] = seconds or 0.0
    if cycles is not None:
        eff["kernel_latency_cycles"] = cycles
    return entry


def _catalog(tmp_path: Path, *entries: dict):
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump({"entries": list(entries)}))
    return load_catalog([path])


def test_cycles_become_seconds_at_the_devices_clock() -> None:
    assert kernel_latency_seconds(CYCLES, CLOCK_HZ) == pytest.approx(10e-6)
    catalog = load_catalog()
    # the built-in entries: 18,300 cycles at the A100's 1,410 MHz and at the 1,830 MHz of the H100/H200 peak
    a100, h100, h200 = (catalog.device(n) for n in ("a100-80gb", "h100-sxm", "h200"))
    assert a100.efficiency.kernel_latency_s == pytest.approx(18300 / 1.41e9)   # 12.98 us
    assert h100.efficiency.kernel_latency_s == pytest.approx(18300 / 1.83e9)   # 10.0 us
    assert h200.efficiency.kernel_latency_s == h100.efficiency.kernel_latency_s
    # same cycles, shorter kernel on the faster clock
    assert a100.efficiency.kernel_latency_s / h100.efficiency.kernel_latency_s == pytest.approx(1.83 / 1.41)
    # the clocks are those of the datasheet peaks: SMs x dense FLOP per clock per SM x clock = peak
    assert 108 * 2048 * a100.sm_clock_hz == pytest.approx(a100.peak_flops["bfloat16"], rel=1e-3)
    assert 132 * 4096 * h100.sm_clock_hz == pytest.approx(h100.peak_flops["bfloat16"], rel=1e-3)
    # Blackwell: the same cycles at the clock of its peak, 148 SMs x 8,192 dense FLOP per clock (an estimate)
    for name in ("b200", "gb200"):
        blackwell = catalog.device(name)
        assert 148 * 8192 * blackwell.sm_clock_hz == pytest.approx(blackwell.peak_flops["bfloat16"], rel=1e-3)
        assert blackwell.efficiency.kernel_latency_s == pytest.approx(18300 / blackwell.sm_clock_hz)


def test_each_kernel_of_a_decode_pass_pays_its_cycles(tmp_path: Path) -> None:
    """Hand count: GPT-2 small (12 layers) decoding one sequence. Each pass (the prefill, every token step)
    runs 12 x 9 layer kernels + 1 embedding lookup + 2 (final norm, LM head) = 111 kernels, each 10,000
    cycles = 10 us at 1 GHz beyond its roofline: 1.11 ms more per pass than the same GPU without them."""
    catalog = _catalog(tmp_path, _device("slow-clock-gpu", CYCLES, CLOCK_HZ), _device("no-latency-gpu", None, None))
    workload = Workload(model=ModelSpec(preset="gpt2-small", seq_len=64), mode="decode", batch=1, decode_tokens=8)
    profile, sharing = profiled(workload)
    kernels = 12 * KERNELS_PER_LAYER_FORWARD + KERNELS_EMBED + KERNELS_HEAD
    assert kernels == 111
    with_latency, without = (estimate(workload, profile, sharing, Plan(), catalog.cluster(name, 1, 1))
                             for name in ("slow-clock-gpu", "no-latency-gpu"))
    assert with_latency.tpot_s - without.tpot_s == pytest.approx(kernels * 10e-6, rel=1e-9)
    assert with_latency.ttft_s - without.ttft_s == pytest.approx(kernels * 10e-6, rel=1e-9)


def test_a_stated_kernel_latency_in_seconds_takes_precedence(tmp_path: Path) -> None:
    """A calibrated entry states seconds (llmsim calibrate); they win over the cycles it inherited."""
    catalog = _catalog(tmp_path, _device("calibrated-gpu", CYCLES, CLOCK_HZ, seconds=3e-5))
    assert catalog.device("calibrated-gpu").efficiency.kernel_latency_s == 3e-5


def test_cycles_without_a_clock_are_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="kernel_latency_cycles needs sm_clock_hz") as info:
        _catalog(tmp_path, _device("clockless-gpu", CYCLES, None))
    assert "\n" not in str(info.value)
