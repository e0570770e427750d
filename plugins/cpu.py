"""The `cpu` backend: runs the workload for real on this machine's CPU and measures it.

Clock: time.perf_counter around each step (CPU work is synchronous). After `warmup` untimed steps,
`steps` timed steps give p50/p99 latency; tokens/s and step_time_s use the mean. Achieved FLOP/s come
from the workload profile (the same module traced on the meta device); MFU is against this host's
peak, measured once per machine, dtype and thread count by a matmul probe and cached.
Energy: a RAPL (or plugin) meter where readable, else modeled from the `cpu-host` catalog entry.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.energy import EnergyMeter, RaplMeter
from llmsim.environment import cpu_model
from llmsim.results import fill_derived
from llmsim.workload.profile import profile_workload
from llmsim.workload.step import TORCH_DTYPES, WorkloadStep

PROBE_SIZE = 1024          # square matmul edge; large enough to reach the BLAS plateau on a few cores
PROBE_SECONDS = 0.3        # per dtype, once per machine
MULTI_DEVICE_REASON = ("strategy needs {n} devices (dp*tp*pp*cp); the cpu backend runs one process — "
                       "multi-process strategies come with the distributed backend")


class CpuSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(5, ge=1, description="timed steps")
    warmup: int = Field(2, ge=0, description="untimed steps first (allocator, caches, lazy init)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: torch's own")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmsim"


def measure_peak_flops(dtype: torch.dtype, threads: int) -> float:
    """FLOP/s of a square matmul in `dtype`: the best of repeated runs over about PROBE_SECONDS."""
    a = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    deadline = time.perf_counter() + PROBE_SECONDS
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * PROBE_SIZE**3 / best


def host_peak_flops(dtype: str, cache_dir: Path | None = None) -> float:
    """This host's matmul peak for `dtype` with the current thread count, cached on disk per machine."""
    threads = torch.get_num_threads()
    key = f"{cpu_model()}|{os.cpu_count()}|{threads}|{torch.__version__}|{dtype}"
    path = (cache_dir or _cache_dir()) / f"peak-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    try:
        return float(json.loads(path.read_text())["peak_flops_per_s"])
    except (OSError, ValueError, KeyError):
        pass
    peak = measure_peak_flops(TORCH_DTYPES[dtype], threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "peak_flops_per_s": peak}))
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return peak


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise), so that
    one case's peak memory does not depend on what the case before it left in the allocator."""
    gc.collect()
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

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def peak(self) -> int:
        if self.method == "vmhwm":
            return self._status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CpuBackend(Backend):
    name = "cpu"
    kind = "measured"
    description = "runs the Transformer on this machine's CPU (single process)"
    Settings = CpuSettings

    def _meter(self) -> EnergyMeter | None:
        meters: list[type[EnergyMeter]] = [RaplMeter]
        if self.context.manager is not None:
            for _, found in self.context.manager.call_each("llmsim_energy_meters"):
                meters = list(found) + meters
        for meter in meters:
            if meter.device_kind == "cpu" and meter.available() is None:
                return meter()
        return None

    def _modeled_power_w(self, threads: int) -> float:
        """Busy cores at the catalog's full-load power, the others at idle."""
        host = self.context.catalog.device("cpu-host")
        cores = os.cpu_count() or threads
        busy = min(threads, cores)
        if host.power_per_core:
            return busy * host.max_power_w + (cores - busy) * host.idle_power_w
        return host.idle_power_w + (host.max_power_w - host.idle_power_w) * busy / cores

    def run(self, case: Case, settings: CpuSettings) -> Result:
        if case.layout.world > 1:
            return case.result(self, hardware="cpu-host", nodes=1, status="skipped",
                               error=MULTI_DEVICE_REASON.format(n=case.layout.world))
        if settings.threads:
            torch.set_num_threads(settings.threads)
        threads = torch.get_num_threads()
        profile = profile_workload(case.workload, case.sharing_choice)
        rss = PeakRss()
        base_rss = rss._status("VmRSS") if rss.method == "vmhwm" else 0
        step = WorkloadStep(case.workload, case.sharing_choice, seed=case.seed)
        for _ in range(settings.warmup):
            step.step()

        meter = self._meter()
        times: list[float] = []
        first_token: list[float] = []
        optimizer: list[float] = []
        marks: dict[str, float] = {}
        if meter:
            meter.start()
        for _ in range(settings.steps):
            marks.clear()
            start = time.perf_counter()
            step.step(lambda label: marks.__setitem__(label, time.perf_counter()))
            end = time.perf_counter()
            times.append(end - start)
            if "first_token" in marks:
                first_token.append(marks["first_token"] - start)
            if "backward_done" in marks:
                optimizer.append(end - marks["backward_done"])
        energy_total = meter.stop() if meter else None
        peak_rss = rss.peak() - base_rss
        del step

        step_time = statistics.fmean(times)
        quantiles = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
        values: dict = dict(hardware="cpu-host", nodes=1, params=profile.params,
                            trainable_params=profile.trainable_params, step_time_s=step_time,
                            latency_p50_s=statistics.median(times), latency_p99_s=quantiles[98],
                            model_flops_per_step=profile.model_flops_per_step,
                            peak_memory_bytes_per_device=float(max(peak_rss, 0)),
                            c_per_submodel_s=step_time, comm_time_s=0.0, bubble_time_s=0.0)
        # One device: all of the step is compute except the optimizer update, reported as "other".
        other = statistics.fmean(optimizer) if optimizer else 0.0
        values.update(compute_time_s=step_time - other, other_time_s=other)
        if first_token:
            ttft = statistics.fmean(first_token)
            values.update(ttft_s=ttft, tpot_s=(step_time - ttft) / max(case.workload.decode_tokens - 1, 1))
        peak = host_peak_flops(case.workload.dtype)
        values["mfu"] = profile.model_flops_per_step / step_time / peak
        if energy_total is not None and meter is not None:
            values.update(energy_j_per_step=energy_total / len(times), energy_source=meter.name)
        else:
            values.update(energy_j_per_step=self._modeled_power_w(threads) * step_time, energy_source="modeled")
        values["extra"] = {"peak_flops_per_s": peak, "threads": threads, "memory_method": rss.method,
                           "step_times_s": json.dumps([round(t, 6) for t in times])}
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [CpuBackend]
