"""One small object per device type: its clock, how to wait for it, and how to measure its memory.

The timing loop (llmsim.measure.loop) and the distributed ranks are written once against this
interface; what differs between a CPU, a GPU and an XLA device lives here (design: each backend owns
its clock):

* CPU: work is synchronous, `time.perf_counter` is the clock; memory is the resident-set peak.
* CUDA, synchronising (the distributed ranks): `torch.cuda.synchronize()`, then `perf_counter`.
* CUDA, events (the single-GPU backend): a CUDA event recorded on the stream per stamp, read after a
  final synchronize, so host-side launch overhead counts only where it leaves the GPU idle.
* XLA: `torch_xla.sync()` (cut and launch the traced graph) and `xm.wait_device_ops()` before reading
  `perf_counter`; without the wait only the tracing would be timed.

torch_xla is imported when an XlaDevice is made, never at import time; NVML is not used here at all.
"""

from __future__ import annotations

import gc
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from llmsim.measure.memory import CudaPeak, PeakMemory, PeakRss, XlaPeak, release_freed_memory


class MeasuredDevice(ABC):
    """The device a measured step runs on, as the timing loop sees it."""

    kind: ClassVar[str]   # the device type: cpu | cuda | xla
    clock: ClassVar[str]  # how a time stamp is taken, in words (a row's `clock` extra)
    torch_device: Any     # what tensors and modules are moved to

    def wait(self) -> None:
        """Block until the device has finished the work queued so far (nothing to do on a CPU)."""

    def now(self) -> Any:
        """A time stamp of this point in the device's work."""
        self.wait()
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two stamps of `now` (valid once `wait` returned after the later one)."""
        return float(end - start)

    def release_freed_memory(self) -> None:
        """Give memory freed by earlier work back, so that it does not count in the next span."""
        release_freed_memory()

    @abstractmethod
    def memory(self) -> PeakMemory:
        """Start measuring peak memory (after releasing what earlier work freed)."""

    def profiler_activities(self) -> list[Any]:
        """The torch.profiler activities whose events show this device's compute and communication."""
        from torch.profiler import ProfilerActivity

        return [ProfilerActivity.CPU]

    @property
    def process_group_device(self) -> torch.device | None:
        """init_process_group's `device_id`: the device a rank's communicator binds to (None: gloo on CPU)."""
        return None


class CpuDevice(MeasuredDevice):
    """This machine's CPU: synchronous work, `time.perf_counter`, the resident-set peak."""

    kind = "cpu"
    clock = "perf_counter"

    def __init__(self) -> None:
        self.torch_device = torch.device("cpu")

    def memory(self) -> PeakRss:
        return PeakRss()  # releases freed memory first


class CudaDevice(MeasuredDevice):
    """One GPU (made the current one), timed by `torch.cuda.synchronize()` + `perf_counter`."""

    kind = "cuda"
    clock = "synchronize + perf_counter"

    def __init__(self, index: int = 0) -> None:
        self.torch_device = torch.device("cuda", index)
        torch.cuda.set_device(self.torch_device)

    def wait(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def release_freed_memory(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()

    def memory(self) -> CudaPeak:
        self.release_freed_memory()
        return CudaPeak(self.torch_device)

    def profiler_activities(self) -> list[Any]:
        from torch.profiler import ProfilerActivity

        return [ProfilerActivity.CPU, ProfilerActivity.CUDA]

    @property
    def process_group_device(self) -> torch.device:
        return self.torch_device


class CudaEventDevice(CudaDevice):
    """One GPU timed by CUDA events: a stamp records an event on the stream (no host wait), the
    elapsed time between two is read after a synchronize. The loop waits before each step's first stamp."""

    clock = "cuda events"

    def now(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0


class XlaDevice(MeasuredDevice):
    """The torch_xla (PJRT) device of this process; PJRT_DEVICE must be set before it is made."""

    kind = "xla"
    clock = "perf_counter after sync + wait_device_ops"

    def __init__(self) -> None:
        import torch_xla
        import torch_xla.core.xla_model as xm

        self.torch_xla, self.xm = torch_xla, xm
        self.torch_device = torch_xla.device()

    def wait(self) -> None:
        self.torch_xla.sync()
        self.xm.wait_device_ops()

    def memory(self) -> XlaPeak:
        return XlaPeak(self.xm, self.torch_device)


def rank_device(kind: str, local_rank: int) -> MeasuredDevice:
    """The device of one distributed rank: the CPU, or GPU `local_rank` (synchronising clock)."""
    if kind == "cuda":
        return CudaDevice(local_rank)
    if kind == "cpu":
        return CpuDevice()
    raise ValueError(f"no measured device for device type {kind!r} (allowed: cpu, cuda)")
