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


def test_forgetting_the_peak_keeps_what_is_held_and_drops_a_transient() -> None:
    release_freed_memory()
    rss = PeakRss()
    if rss.method != "vmhwm":
        pytest.skip("this host refuses /proc/self/clear_refs: the peak cannot be reset")
    transient = bytearray(b"\x01") * (96 << 20)  # 96 MiB touched, then freed: the cast-from float32 copy
    del transient
    held = bytearray(b"\x01") * (32 << 20)  # 32 MiB kept: the built model
    rss.forget_peak()
    assert 28 << 20 <= rss.peak_bytes() < 90 << 20  # the held block counts, the transient does not
    del held


def test_forgetting_the_cuda_peak_resets_the_allocator_peak_but_not_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    allocated = {"now": 1_000, "max": 1_000}
    for name, value in dict(set_device=lambda d: None, synchronize=lambda d=None: None, empty_cache=lambda: None,
                            reset_peak_memory_stats=lambda d=None: allocated.update(max=allocated["now"]),
                            memory_allocated=lambda d=None: allocated["now"],
                            max_memory_allocated=lambda d=None: allocated["max"]).items():
        monkeypatch.setattr(torch.cuda, name, value)
    memory = CudaDevice(0).memory()
    allocated.update(now=17_000, max=33_000)  # built: 16,000 held after a 32,000 float32 transient
    memory.forget_peak()
    assert memory.peak_bytes() == 16_000
    allocated["max"] = 20_000  # the step's own peak
    assert memory.peak_bytes() == 19_000
