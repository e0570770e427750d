"""The `cpu` backend: runs the workload for real on this machine's CPU and measures it.

Clock: time.perf_counter around each step (CPU work is synchronous). After `warmup` untimed steps,
`steps` timed steps give p50/p99 latency; tokens/s and step_time_s use the mean. Achieved FLOP/s come
from the workload profile (the same module traced on the meta device); MFU is against this host's
peak, measured once per machine, dtype and thread count by a matmul probe and cached with three more
probes (streaming bandwidth over activation- and vocabulary-sized operands, per-operator cost;
`llmsim_plugins.host_probes`) that the row reports for `llmsim calibrate`.
Energy: a RAPL (or plugin) meter where readable, else modeled from the `cpu-host` catalog entry.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.energy import EnergyMeter, RaplMeter, find_meter
from llmsim.results import fill_derived
from llmsim.workload.profile import profile_workload
from llmsim.workload.step import WorkloadStep
from llmsim_plugins.host_probes import HostRates, host_peak_flops, host_rates

__all__ = ["CpuBackend", "CpuSettings", "host_peak_flops", "host_rates"]

class CpuSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(5, ge=1, description="timed steps")
    warmup: int = Field(2, ge=0, description="untimed steps first (allocator, caches, lazy init)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: torch's own "
                                                        "(several processes: cores / processes each)")
    timeout_s: float = Field(600.0, gt=0, description="several processes: wall-clock limit of one case")
    profile_comm: bool = Field(True, description="several processes: one extra profiled step to measure "
                                                 "exposed communication")


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
    description = ("runs the Transformer on this machine's CPU: one process, or one per device of the strategy "
                   "through torch.distributed (gloo)")
    Settings = CpuSettings

    def _meter(self) -> EnergyMeter | None:
        meter = find_meter(self.context.manager, "cpu", [RaplMeter])
        return meter() if meter is not None else None

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
            return self._run_distributed(case, settings)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        threads = torch.get_num_threads()
        profile = profile_workload(case.workload, case.sharing)
        rss = PeakRss()
        base_rss = rss._status("VmRSS") if rss.method == "vmhwm" else 0
        step = WorkloadStep(case.workload, case.sharing, seed=case.seed,
                                micro_batch=case.layout.micro_batch)
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
        rates = host_rates(case.workload.dtype)
        peak = rates.peak_flops_per_s
        values["mfu"] = profile.model_flops_per_step / step_time / peak
        if energy_total is not None and meter is not None:
            values.update(energy_j_per_step=energy_total / len(times), energy_source=meter.name)
        else:
            values.update(energy_j_per_step=self._modeled_power_w(threads) * step_time, energy_source="modeled")
        values["extra"] = {**_probe_extra(rates), "threads": threads, "memory_method": rss.method,
                           "step_times_s": json.dumps([round(t, 6) for t in times])}
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)

    # -- several processes (torch.distributed, gloo) ---------------------------------------------
    def _run_distributed(self, case: Case, settings: CpuSettings) -> Result:
        """One process per device of the strategy on this host (llmsim.distributed); docs/distributed.md.

        step_time_s: per timed step the slowest rank's time (each rank starts after a barrier), averaged.
        C (c_per_submodel_s): the single-process step of the same global batch, measured here in the
        parent with one rank's thread count, divided by m = tp*pp. Exposed communication and the
        pipeline's send/recv waits (bubble) come from one profiled step per rank, as fractions of
        that step applied to step_time_s.
        """
        from llmsim.distributed.launch import launch
        from llmsim.distributed.spec import WorkerSpec, unsupported_reason

        world = case.layout.world
        threads = settings.threads or max(1, (os.cpu_count() or 1) // world)
        spec = WorkerSpec.from_layout(case.workload, case.sharing, case.strategy, case.layout,
                                      seed=case.seed, steps=settings.steps, warmup=settings.warmup, threads=threads,
                                      device_type="cpu", profile_comm=settings.profile_comm)
        base = dict(hardware="cpu-host", nodes=1)
        reason = unsupported_reason(spec)
        if reason:
            return case.result(self, status="skipped", error=reason, **base)
        log_dir = None
        if self.context.run_dir is not None:
            log_dir = self.context.run_dir / "distributed" / case.name.replace("/", "_")
        outcome = launch(spec, timeout_s=settings.timeout_s, log_dir=log_dir)
        if not outcome.ok:
            return case.result(self, status="failed", error=outcome.error, **base,
                               extra={"worker_pids": json.dumps(outcome.pids)})
        records = outcome.records
        profile = profile_workload(case.workload, case.sharing)
        single_s = self._single_process_step_s(case, settings, threads)

        steps = len(records[0].step_times_s)
        times = [max(r.step_times_s[i] for r in records) for i in range(steps)]
        step_time = statistics.fmean(times)
        quantiles = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99

        def share(field: str) -> float:
            """Mean over ranks of a profiled component as a fraction of that rank's profiled step."""
            parts = [getattr(r, field) / r.profiled_step_s for r in records
                     if getattr(r, field) is not None and r.profiled_step_s]
            return min(statistics.fmean(parts), 1.0) if parts else 0.0

        comm = share("comm_exposed_s") * step_time
        bubble = share("p2p_exposed_s") * step_time if case.layout.pp > 1 else 0.0
        other = statistics.fmean(statistics.fmean(r.optimizer_times_s) for r in records) \
            if records[0].optimizer_times_s else 0.0
        # The parts come from different clocks (timed steps, one profiled step): keep their sum the step.
        other = min(other, step_time)
        rest = step_time - other
        if comm + bubble > rest:
            comm, bubble = comm * rest / (comm + bubble), bubble * rest / (comm + bubble)
        compute = rest - comm - bubble
        m = case.strategy.m_submodels
        values: dict = dict(params=profile.params, trainable_params=profile.trainable_params,
                            step_time_s=step_time, latency_p50_s=statistics.median(times),
                            latency_p99_s=quantiles[98], model_flops_per_step=profile.model_flops_per_step,
                            peak_memory_bytes_per_device=max(r.peak_memory_bytes for r in records),
                            c_per_submodel_s=single_s / m, comm_time_s=comm, bubble_time_s=bubble,
                            other_time_s=other, compute_time_s=compute)
        first = [max(r.first_token_times_s[i] for r in records) for i in range(len(records[0].first_token_times_s))]
        if first:
            ttft = statistics.fmean(first)
            values.update(ttft_s=ttft, tpot_s=(step_time - ttft) / max(case.workload.decode_tokens - 1, 1))
        rates = self._rates_with_threads(case.workload.dtype, threads)
        peak = rates.peak_flops_per_s
        values["mfu"] = profile.model_flops_per_step / step_time / world / peak
        values.update(energy_j_per_step=self._modeled_power_w(threads * world) * step_time, energy_source="modeled")
        values["extra"] = {
            **_probe_extra(rates), "threads": threads, "processes": world, "memory_method": records[0].memory_method,
            "single_process_step_s": single_s, "comm_method": "torch.profiler: gloo ops not covered by compute",
            "step_times_s": json.dumps([round(t, 6) for t in times]),
            "peak_memory_bytes_per_rank": json.dumps([r.peak_memory_bytes for r in records]),
            "comm_busy_s": statistics.fmean(r.comm_busy_s or 0.0 for r in records),
            "losses": json.dumps(records[0].losses), "torch_parallelism": json.dumps(records[0].notes),
            "launch_wall_s": round(outcome.wall_s, 3)}
        if outcome.teardown:
            values["extra"]["teardown"] = outcome.teardown
        return fill_derived(case.result(self, **base, **values), case.workload.tokens_per_step)

    @staticmethod
    def _single_process_step_s(case: Case, settings: CpuSettings, threads: int) -> float:
        """The whole step on one process with one rank's threads: m*C of T = m*C/n."""
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            step = WorkloadStep(case.workload, case.sharing, seed=case.seed,
                                micro_batch=case.layout.micro_batch)
            for _ in range(settings.warmup):
                step.step()
            times = []
            for _ in range(settings.steps):
                start = time.perf_counter()
                step.step()
                times.append(time.perf_counter() - start)
            del step
            return statistics.fmean(times)
        finally:
            torch.set_num_threads(previous)
            release_freed_memory()

    @staticmethod
    def _rates_with_threads(dtype: str, threads: int) -> HostRates:
        """This host's probed rates with one rank's thread count (its peak is the per-device peak of MFU)."""
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return host_rates(dtype)
        finally:
            torch.set_num_threads(previous)


def _probe_extra(rates: HostRates) -> dict[str, float]:
    """The probed rates as row columns: `llmsim calibrate` reads them (peak FLOP/s also feeds MFU)."""
    return {"peak_flops_per_s": rates.peak_flops_per_s, "stream_bytes_per_s": rates.stream_bytes_per_s,
            "stream_large_bytes_per_s": rates.stream_large_bytes_per_s, "op_overhead_s": rates.op_overhead_s}


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [CpuBackend]
