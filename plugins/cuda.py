"""The `cuda` backend: runs the workload for real on an NVIDIA GPU and measures it.

Clock: CUDA events. Before each timed step the host waits for the GPU (`torch.cuda.synchronize()`),
then an event is recorded before and after the step (and at the step's marks: end of backward, first
token); elapsed times are read after a final synchronize. Events time the GPU stream, so host-side
launch overhead counts only where it leaves the GPU idle between the two events — what a user waits.

Precision: the model is cast to the scenario's dtype (the same WorkloadStep the cpu backend runs, so
parameter count, memory and FLOPs match the meta-device profile); `autocast: true` instead keeps
float32 weights and runs the step under `torch.autocast` in the scenario's dtype (mixed precision).
Memory: `torch.cuda.max_memory_allocated`, reset per case, above what was allocated before the case.
Energy: NVML's total-energy counter around the timed steps (`energy_source: nvml`); where the counter
is missing, NVML power samples integrated by the trapezoid rule (still `nvml`, method in
`energy_method`); where NVML has neither, modeled from the catalog's max power. See llmsim/nvml.py.
MFU: against the catalog peak of the device NVML names (docs/accelerators.md), else empty with the reason.
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.energy import EnergyMeter, find_meter
from llmsim.hardware import Catalog
from llmsim.nvml import EnergyReading, Nvml, NvmlEnergy, NvmlUnavailable, catalog_name_for
from llmsim.results import fill_derived
from llmsim.workload.profile import profile_workload

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"

# Replaced by tests to inject a fake NVML module (recorded sequences, error classes).
nvml_factory: Callable[[], Nvml] = Nvml


class CudaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(5, ge=1, description="timed steps")
    warmup: int = Field(2, ge=0, description="untimed steps first (cuBLAS/cuDNN autotuning, allocator, "
                                             "torch.compile's compilation)")
    device: int = Field(0, ge=0, description="CUDA device index (one process)")
    compile: bool = Field(False, description="run the model through torch.compile (compiled during warm-up)")
    autocast: bool = Field(False, description="float32 weights + torch.autocast in the scenario dtype, "
                                              "instead of casting the model to it")
    hardware: str | None = Field(None, description="catalog device for MFU and modeled energy; default: "
                                                   "matched from the name NVML reports")
    power_sampling: bool = Field(True, description="also integrate sampled power next to the energy counter")
    sample_interval_s: float = Field(0.02, gt=0, description="power sampling period")
    timeout_s: float = Field(600.0, gt=0, description="several processes: wall-clock limit of one case")
    profile_comm: bool = Field(True, description="several processes: one extra profiled step")


def _torch() -> Any:
    import torch

    return torch


def cuda_unavailable_reason() -> str | None:
    """Why no CUDA device can be used here, in plain words, or None."""
    torch = _torch()
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"{NO_CUDA}: torch {torch.__version__} is a CPU-only build"
        return NO_CUDA
    return None


class NvmlMeter(EnergyMeter):
    """Energy of all visible GPUs (or the given NVML handles) through NVML: counter, else power sampling."""

    name = "nvml"
    device_kind = "cuda"

    def __init__(self, handles: list[Any] | None = None, nvml: Nvml | None = None,
                 sampling: bool = True, interval_s: float = 0.02) -> None:
        self.nvml = (nvml or nvml_factory()).init()
        if handles is None:
            handles = [self.nvml.handle(i) for i in range(self.nvml.device_count())]
        self.energy = NvmlEnergy(self.nvml, handles, sampling=sampling, interval_s=interval_s)
        self.reading: EnergyReading | None = None

    @classmethod
    def available(cls) -> str | None:
        try:
            nvml = nvml_factory().init()
            if nvml.device_count() == 0:
                return "NVML sees no GPU"
            handle = nvml.handle(0)
            if nvml.total_energy_mj(handle) is None and nvml.power_w(handle) is None:
                return "NVML reports neither a total-energy counter nor power usage for GPU 0"
        except NvmlUnavailable as exc:
            return str(exc)
        return None

    def start(self) -> None:
        self.reading = None
        self.energy.start()

    def stop(self) -> float:
        self.reading = self.energy.stop()
        if self.reading.joules is None:
            raise RuntimeError("NVML gave no energy: " + "; ".join(self.reading.notes))
        return self.reading.joules


class CudaBackend(Backend):
    name = "cuda"
    kind = "measured"
    description = "runs the Transformer on an NVIDIA GPU (CUDA events, NVML energy); several GPUs through NCCL"
    Settings = CudaSettings

    @classmethod
    def availability(cls) -> str | None:
        reason = cuda_unavailable_reason()
        if reason:
            return reason
        try:
            nvml_factory().init()
        except NvmlUnavailable as exc:
            return str(exc)
        return None

    @classmethod
    def check_settings(cls, settings: BaseModel, catalog: Catalog) -> tuple[str, str] | None:
        assert isinstance(settings, CudaSettings)
        if settings.hardware is not None and settings.hardware not in catalog.devices:
            return "hardware", f"unknown device {settings.hardware!r}; allowed: {', '.join(catalog.devices)}"
        return None

    # -- identification ---------------------------------------------------------------------
    def _catalog_device(self, nvml_name: str, settings: CudaSettings) -> tuple[str | None, str | None]:
        """(catalog name, None) or (None, why MFU is empty)."""
        if settings.hardware:
            return settings.hardware, None
        name = catalog_name_for(nvml_name)
        if name is None or name not in self.context.catalog.devices:
            return None, (f"GPU {nvml_name!r} is not in the hardware catalog; set backends.cuda.hardware "
                          f"to a catalog device or add one (docs/hardware.md)")
        return name, None

    def _meter(self, nvml: Nvml, handle: Any, settings: CudaSettings) -> EnergyMeter:
        """A cuda meter from the energy-meter hook where a plugin gives one, else NVML on this GPU."""
        meter = find_meter(self.context.manager, "cuda", exclude=[NvmlMeter])
        if meter is not None:
            return meter()
        return NvmlMeter([handle], nvml=nvml, sampling=settings.power_sampling,
                         interval_s=settings.sample_interval_s)

    # -- one GPU ----------------------------------------------------------------------------
    def run(self, case: Case, settings: CudaSettings) -> Result:
        reason = cuda_unavailable_reason()
        if reason:
            return case.result(self, status="skipped", error=reason)
        if case.layout.world > 1:
            return self._run_distributed(case, settings)
        torch = _torch()
        from llmsim.workload.step import TORCH_DTYPES, WorkloadStep

        device = torch.device("cuda", settings.device)
        torch.cuda.set_device(device)
        nvml = nvml_factory().init()
        props = torch.cuda.get_device_properties(device)
        handle = nvml.handle(settings.device, str(getattr(props, "uuid", "") or "") or None)
        gpu_name = nvml.name(handle)
        hardware, mfu_reason = self._catalog_device(gpu_name, settings)
        profile = profile_workload(case.workload, case.sharing)

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)

        workload = case.workload
        if settings.autocast and workload.dtype != "float32":
            workload = workload.model_copy(update={"dtype": "float32"})
        step = WorkloadStep(workload, case.sharing, seed=case.seed, device=device)
        if settings.compile:
            step.model = torch.compile(step.model)  # type: ignore[assignment]

        @contextlib.contextmanager
        def precision() -> Iterator[None]:
            if settings.autocast and case.workload.dtype != "float32":
                with torch.autocast("cuda", dtype=TORCH_DTYPES[case.workload.dtype]):
                    yield
            else:
                yield

        warm_start = time.perf_counter()
        with precision():
            for _ in range(settings.warmup):
                step.step()
        torch.cuda.synchronize(device)
        warmup_s = time.perf_counter() - warm_start

        meter = self._meter(nvml, handle, settings)
        starts, ends = [], []
        marks: list[dict[str, Any]] = []
        losses = []
        torch.cuda.synchronize(device)
        meter.start()
        with precision():
            for _ in range(settings.steps):
                torch.cuda.synchronize(device)
                step_marks: dict[str, Any] = {}

                def mark(label: str, into: dict[str, Any] = step_marks) -> None:
                    event = torch.cuda.Event(enable_timing=True)
                    event.record()
                    into[label] = event

                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = step.step(mark)
                end.record()
                starts.append(start)
                ends.append(end)
                marks.append(step_marks)
                if workload.mode == "train":
                    losses.append(out)
        torch.cuda.synchronize(device)
        try:
            energy_j: float | None = meter.stop()
        except RuntimeError:  # NVML had neither counter nor power for this span: model it below
            energy_j = None
        reading = getattr(meter, "reading", None)
        peak_mem = torch.cuda.max_memory_allocated(device) - base_alloc

        times = [s.elapsed_time(e) / 1000.0 for s, e in zip(starts, ends)]
        first_token = [s.elapsed_time(m["first_token"]) / 1000.0 for s, m in zip(starts, marks) if "first_token" in m]
        optimizer = [m["backward_done"].elapsed_time(e) / 1000.0 for e, m in zip(ends, marks) if "backward_done" in m]
        loss_values = [float(x) for x in losses]
        del step, losses
        gc.collect()
        torch.cuda.empty_cache()

        step_time = statistics.fmean(times)
        quantiles = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
        values: dict[str, Any] = dict(
            hardware=hardware or gpu_name, nodes=1, params=profile.params, trainable_params=profile.trainable_params,
            step_time_s=step_time, latency_p50_s=statistics.median(times), latency_p99_s=quantiles[98],
            model_flops_per_step=profile.model_flops_per_step, peak_memory_bytes_per_device=float(max(peak_mem, 0)),
            c_per_submodel_s=step_time, comm_time_s=0.0, bubble_time_s=0.0)
        other = statistics.fmean(optimizer) if optimizer else 0.0
        values.update(compute_time_s=step_time - other, other_time_s=other)
        if first_token:
            ttft = statistics.fmean(first_token)
            values.update(ttft_s=ttft, tpot_s=(step_time - ttft) / max(case.workload.decode_tokens - 1, 1))
        extra: dict[str, Any] = {
            "gpu_name": gpu_name, "compile": settings.compile, "autocast": settings.autocast,
            "precision": "autocast" if settings.autocast else "model cast", "warmup_s": round(warmup_s, 6),
            "memory_method": "cuda_max_memory_allocated", "clock": "cuda events",
            "step_times_s": json.dumps([round(t, 6) for t in times])}
        if loss_values:
            extra["losses"] = json.dumps(loss_values)
        peak = None
        if hardware is not None:
            peak = self.context.catalog.device(hardware).peak_flops.get(case.workload.dtype)
            if peak is None:
                mfu_reason = f"catalog device {hardware!r} has no {case.workload.dtype} peak"
        if peak:
            values["mfu"] = profile.model_flops_per_step / step_time / peak
            extra["peak_flops_per_s"] = peak
        if mfu_reason:
            extra["mfu_reason"] = mfu_reason
        if energy_j is not None:
            values.update(energy_j_per_step=energy_j / len(times), energy_source=meter.name)
        elif hardware is not None:
            max_w = self.context.catalog.device(hardware).max_power_w
            values.update(energy_j_per_step=max_w * step_time, energy_source="modeled")
            extra["energy_model"] = f"catalog max power {max_w:g} W x step time"
        if reading is not None:
            extra.update(energy_method=reading.method, energy_samples=reading.samples)
            if reading.counter_j is not None:
                extra["energy_counter_j_per_step"] = reading.counter_j / len(times)
            if reading.sampled_j is not None:
                extra["energy_sampled_j_per_step"] = reading.sampled_j / len(times)
            if reading.notes:
                extra["energy_note"] = "; ".join(reading.notes)
        values["extra"] = extra
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)

    # -- several GPUs (torch.distributed, NCCL) ------------------------------------------------
    def _run_distributed(self, case: Case, settings: CudaSettings) -> Result:
        """One process per GPU through llmsim.distributed with device_type='cuda' (NCCL).

        The ranks time their steps with torch.cuda.synchronize() + perf_counter (the distributed
        worker's clock, shared with the cpu backend), and report torch.cuda.max_memory_allocated.
        Energy is not measured here: the parent cannot bracket the ranks' timed steps, so the energy
        columns stay empty and `energy_note` says why.
        """
        torch = _torch()
        from llmsim.distributed.launch import launch
        from llmsim.distributed.spec import WorkerSpec, unsupported_reason

        world = case.layout.world
        have = torch.cuda.device_count()
        if have < world:
            return case.result(self, status="skipped",
                               error=f"strategy needs {world} GPUs, this host has {have} (one process per GPU)")
        spec = WorkerSpec.from_layout(case.workload, case.sharing, case.strategy, case.layout,
                                      seed=case.seed, steps=settings.steps, warmup=settings.warmup,
                                      device_type="cuda", profile_comm=settings.profile_comm)
        reason = unsupported_reason(spec)
        if reason:
            return case.result(self, status="skipped", error=reason, nodes=1)
        log_dir = None
        if self.context.run_dir is not None:
            log_dir = self.context.run_dir / "distributed" / case.name.replace("/", "_")
        outcome = launch(spec, timeout_s=settings.timeout_s, log_dir=log_dir)
        if not outcome.ok:
            return case.result(self, status="failed", error=outcome.error, nodes=1)
        records = outcome.records
        profile = profile_workload(case.workload, case.sharing)
        steps = len(records[0].step_times_s)
        times = [max(r.step_times_s[i] for r in records) for i in range(steps)]
        step_time = statistics.fmean(times)
        quantiles = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
        nvml = nvml_factory().init()
        gpu_name = nvml.name(nvml.handle(0))
        hardware, mfu_reason = self._catalog_device(gpu_name, settings)
        values: dict[str, Any] = dict(
            hardware=hardware or gpu_name, nodes=1, params=profile.params, trainable_params=profile.trainable_params,
            step_time_s=step_time, latency_p50_s=statistics.median(times), latency_p99_s=quantiles[98],
            model_flops_per_step=profile.model_flops_per_step,
            peak_memory_bytes_per_device=max(r.peak_memory_bytes for r in records))
        extra: dict[str, Any] = {"gpu_name": gpu_name, "processes": world, "clock": "synchronize + perf_counter",
                                 "memory_method": records[0].memory_method,
                                 "step_times_s": json.dumps([round(t, 6) for t in times]),
                                 "losses": json.dumps(records[0].losses),
                                 "energy_note": "not measured for several processes",
                                 "launch_wall_s": round(outcome.wall_s, 3)}
        if outcome.teardown:
            extra["teardown"] = outcome.teardown
        peak = self.context.catalog.device(hardware).peak_flops.get(case.workload.dtype) if hardware else None
        if peak:
            values["mfu"] = profile.model_flops_per_step / step_time / world / peak
        elif mfu_reason:
            extra["mfu_reason"] = mfu_reason
        values["extra"] = extra
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [CudaBackend]


@hookimpl
def llmsim_energy_meters() -> list[type[EnergyMeter]]:
    return [NvmlMeter]
