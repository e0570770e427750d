"""Peak memory of one measured span: the resident set on a CPU, the caching allocator on a GPU.

Each span reports its peak above what was in use when it started, so that a case's number does not
depend on the cases before it; `method` names how it was measured (the row's `memory_method`).
"""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path
from typing import Any, Protocol

import torch


class PeakMemory(Protocol):
    """A started span; `peak_bytes()` is its peak above the start (None where the device reports none)."""

    method: str | None

    def peak_bytes(self) -> float | None: ...

    def forget_peak(self) -> None:
        """Drop the peak so far, keep the start: a later `peak_bytes()` counts what is held now and what comes
        after. Called once the model is built, so that a transient of building it (the float32 copy a
        bfloat16 model is cast from: 2x its weights) is not reported as the step's memory."""


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise), so that
    one case's peak memory does not depend on what the case before it left in the allocator."""
    gc.collect()
    return_freed_pages()


def return_freed_pages() -> None:
    """Hand the heap pages already freed back to the OS (glibc's malloc_trim), without a garbage collection
    (~0.1 s in a test process): what a cast frees is freed at once, by reference counting."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline is then only approximately clean


class PeakRss:
    """Peak resident memory of this process during a span, in bytes.

    Linux lets a process reset its high-water mark (write 5 to /proc/self/clear_refs); where that is
    not allowed we fall back to ru_maxrss, which never goes down (then a case can only report at least
    the peak of an earlier, larger case; the result says which method was used).
    """

    def __init__(self) -> None:
        release_freed_memory()
        self.method = "vmhwm"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "ru_maxrss"
        self.start = self._status("VmRSS") if self.method == "vmhwm" else 0

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def forget_peak(self) -> None:
        return_freed_pages()
        if self.method == "vmhwm":
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass  # allowed at the start, refused now: the peak keeps the transient (rare; method says vmhwm)

    def peak(self) -> int:
        """The high-water mark itself (since the reset, or since the process started)."""
        if self.method == "vmhwm":
            return self._status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_bytes(self) -> float:
        """The high-water mark above the resident set at the start."""
        return float(max(self.peak() - self.start, 0))


class CudaPeak:
    """The CUDA caching allocator's peak (`max_memory_allocated`, reset at the start) above what was
    allocated at the start. Allocator reserve and the CUDA context are not counted."""

    method = "cuda_max_memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        self.start = torch.cuda.memory_allocated(device)

    def peak_bytes(self) -> float:
        return float(max(torch.cuda.max_memory_allocated(self.device) - self.start, 0))

    def forget_peak(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)


class XlaPeak:
    """What the XLA runtime reports (`xm.get_memory_info`: peak bytes, else bytes in use) when asked;
    None where the PJRT client keeps no allocator statistics (the CPU client)."""

    method = None

    def __init__(self, xm: Any, device: Any) -> None:
        self.xm, self.device = xm, device

    def peak_bytes(self) -> float | None:
        try:
            info = self.xm.get_memory_info(self.device)
            return float(info.get("peak_bytes_used") or info.get("bytes_used"))
        except Exception:  # noqa: BLE001 - the PJRT CPU client has no allocator stats
            return None

    def forget_peak(self) -> None:
        """Nothing to reset: the runtime's peak is its own (the xla backend reads it as a whole)."""
