"""Peak memory of a span: the resident set's high-water mark above its start; the CUDA allocator's peak."""

from __future__ import annotations

import pytest
import torch

from llmsim.measure.device import CudaDevice
from llmsim.measure.memory import CudaPeak, PeakRss, release_freed_memory


def test_peak_rss_sees_memory_touched_in_the_span() -> None:
    release_freed_memory()
    rss = PeakRss()
    assert rss.method in ("vmhwm", "ru_maxrss")
    block = bytearray(64 << 20)  # 64 MiB, zero-filled: every page touched
    del block
    if rss.method == "vmhwm":
        assert 60 << 20 <= rss.peak_bytes() < 1 << 30
        again = PeakRss()  # the mark is reset: the earlier block is not this span's
        assert again.peak_bytes() < 60 << 20
    else:  # ru_maxrss never goes down: at least the block
        assert rss.peak() >= 64 << 20


def test_cuda_peak_is_above_what_was_allocated_at_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    allocated = {"now": 1_000, "max": 1_000}
    calls: list[str] = []
    for name, value in dict(set_device=lambda d: None, synchronize=lambda d=None: calls.append("sync"),
                            empty_cache=lambda: calls.append("empty"),
                            reset_peak_memory_stats=lambda d=None: calls.append("reset"),
                            memory_allocated=lambda d=None: allocated["now"],
                            max_memory_allocated=lambda d=None: allocated["max"]).items():
        monkeypatch.setattr(torch.cuda, name, value)
    memory = CudaDevice(0).memory()
    assert isinstance(memory, CudaPeak) and memory.method == "cuda_max_memory_allocated"
    assert calls == ["empty", "sync", "reset"]  # freed blocks released, then the peak reset
    allocated["max"] = 51_000
    assert memory.peak_bytes() == 50_000
