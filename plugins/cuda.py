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
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.config import mla_tp_problem
from llmsim.energy import EnergyMeter, find_meter
from llmsim.hardware import CATALOG_DEVICE, Catalog
from llmsim.measure.fit import device_need, fit_problem
from llmsim.measure.loop import time_steps
from llmsim.measure.row import measured_result
from llmsim.measure.summary import Energy, MeasuredSplit, slowest, summarize
from llmsim.nvml import EnergyReading, Nvml, NvmlEnergy, NvmlUnavailable, catalog_name_for, mig_reason
from llmsim.wording import count
from llmsim.workload.profile import profile_workload
from llmsim.strict import StrictModel

NO_CUDA = "no GPU: no CUDA device (torch.cuda.is_available() is False)"
# The energy window's ceiling: the wall-clock limit of a case (timeout_s's default). Beyond it the window is a unit
# slip (2000 meant as milliseconds would run untimed steps for 33 minutes), not a measurement.
MAX_ENERGY_WINDOW_S = 600.0

# Replaced by tests to inject a fake NVML module (recorded sequences, error classes).
nvml_factory: Callable[[], Nvml] = Nvml


class CudaSettings(StrictModel):
    """Unknown keys, a YAML boolean or a quoted number for a number are errors (StrictModel), as in a scenario."""


    steps: int = Field(5, ge=1, description="timed steps")
    warmup: int = Field(2, ge=0, description="untimed steps first (cuBLAS/cuDNN autotuning, allocator, "
                                             "torch.compile's compilation)")
    device: int = Field(0, ge=0, description="CUDA device index (one process)")
    compile: bool = Field(False, description="run the model through torch.compile (compiled during warm-up)")
    autocast: bool = Field(False, description="float32 weights + torch.autocast in the scenario dtype, "
                                              "instead of casting the model to it")
    hardware: str | None = Field(None, description="catalog device for MFU and modeled energy; default: "
                                                   "matched from the name NVML reports",
                                 json_schema_extra=CATALOG_DEVICE)
    power_sampling: bool = Field(True, description="also integrate sampled power next to the energy counter")
    sample_interval_s: float = Field(0.02, gt=0, description="power sampling period")
    energy_window_s: float = Field(2.0, ge=0, le=MAX_ENERGY_WINDOW_S, description=(
        "least seconds the energy meter runs: after the timed steps, untimed steps run under it until this "
        "much has passed. NVML updates its energy counter about every 100 ms (ML.ENERGY, \"Thermally Stable "
        "Profiling for Accurate GPU Energy Measurement\"), so over 2 s one missed update is about 5% of the "
        "reading; 0: the timed steps alone; at most 600 (a case's own limit: a larger value is a unit slip)"))
    timeout_s: float = Field(600.0, gt=0, description="several processes: wall-clock limit of one case")
    profile_comm: bool = Field(True, description="several processes: one extra profiled step")


def _torch() -> Any:
    import torch

    return torch


def cuda_unavailable_reason() -> str | None:
    """Why no CUDA device can be used here, in plain words, or None. Never raises: the commonest state of a
    laptop or CI box is a CUDA build of torch without an NVIDIA driver, where torch.cuda.is_available() is
    False and most other torch.cuda calls raise RuntimeError('Found no NVIDIA driver ...')."""
    torch = _torch()
    try:
        available = torch.cuda.is_available() and torch.cuda.device_count() > 0
    except RuntimeError as exc:  # a driver that is there but broken (version mismatch, ...)
        return f"{NO_CUDA}: {' '.join(str(exc).split())}"
    if not available:
        if torch.version.cuda is None:
            return f"{NO_CUDA}: torch {torch.__version__} is a CPU-only build"
        return (f"{NO_CUDA}: torch {torch.__version__} is a CUDA {torch.version.cuda} build, but no NVIDIA driver "
                f"or GPU is visible")
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
        mig = mig_reason(nvml_name)   # a MIG instance: a slice of a board, never priced as the board
        if mig is not None:
            return None, mig
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

    def _does_not_fit(self, case: Case, workload: Any, devices: list[int],
                      hardware: str | None = None) -> Result | None:
        """A does-not-fit row when the GPU with the least free memory among `devices` cannot hold even one
        rank's share of the parameters, gradients and AdamW moments (in the dtype they are built in: float32
        under autocast; llmsim.measure.fit), before the model is built; None to go ahead (also when the free
        memory cannot be read)."""
        torch = _torch()
        try:
            free = min((float(torch.cuda.mem_get_info(d)[0]), d) for d in devices)
        except (RuntimeError, AssertionError):  # a driver that cannot answer; torch asserts on a CPU-only build
            return None
        profile = profile_workload(workload, case.sharing)
        need = device_need(profile, case.layout, case.strategy.zero, workload.mode == "train")
        problem = fit_problem(need, (free[0], f"free on GPU {free[1]}, torch.cuda.mem_get_info"), "per GPU")
        if problem is None:
            return None
        return case.result(self, status="does-not-fit", error=problem, nodes=1, params=profile.params,
                           hardware=hardware, peak_memory_bytes_per_device=need.total,
                           extra={"memory_needed_at_least_bytes": need.total, "memory_free_bytes": free[0]})

    # -- one GPU ----------------------------------------------------------------------------
    def run(self, case: Case, settings: CudaSettings) -> Result:
        reason = cuda_unavailable_reason()
        if reason:
            return case.result(self, status="skipped", error=reason)
        unsharded = mla_tp_problem(case.workload.model, case.layout.tp)
        if unsharded:
            return case.result(self, status="skipped", error=unsharded)
        if case.layout.world > 1:
            return self._run_distributed(case, settings)
        torch = _torch()
        from llmsim.measure.device import CudaEventDevice  # torch's: imported where a case runs (as torch)
        from llmsim.measure.sdpa import attention_kernel_watch, watching_first_call
        from llmsim.workload.step import TORCH_DTYPES, WorkloadStep

        device = CudaEventDevice(settings.device)
        nvml = nvml_factory().init()
        props = torch.cuda.get_device_properties(device.torch_device)
        handle = nvml.handle(settings.device, str(getattr(props, "uuid", "") or "") or None)
        gpu_name = nvml.name(handle)
        hardware, mfu_reason = self._catalog_device(gpu_name, settings)

        workload = case.workload
        if settings.autocast and workload.dtype != "float32":
            workload = workload.model_copy(update={"dtype": "float32"})
        refused = self._does_not_fit(case, workload, [settings.device], hardware or gpu_name)
        if refused is not None:
            return refused
        memory = device.memory()
        step = WorkloadStep(workload, case.sharing, seed=case.seed, device=device.torch_device,
                            micro_batch=case.layout.micro_batch)
        memory.forget_peak()  # the built model counts, the float32 copy it was cast from does not
        if settings.compile:
            step.model = torch.compile(step.model)  # type: ignore[assignment]

        precision: Any = contextlib.nullcontext()
        if settings.autocast and case.workload.dtype != "float32":
            precision = torch.autocast("cuda", dtype=TORCH_DTYPES[case.workload.dtype])
        meter = self._meter(nvml, handle, settings)
        watch = attention_kernel_watch(settings.warmup, settings.compile)   # which SDPA kernel the step runs
        run = watching_first_call(step.step, watch) if watch is not None else step.step
        with precision:
            timings = time_steps(run, device, steps=settings.steps, warmup=settings.warmup, meter=meter,
                                 energy_window_s=settings.energy_window_s,
                                 keep="timed" if workload.mode == "train" else "none")
        reading = getattr(meter, "reading", None)
        peak_memory = memory.peak_bytes()
        losses = [float(x) for x in timings.outputs]
        del step
        timings.outputs.clear()
        device.release_freed_memory()

        summary = timings.summary(case.workload.decode_tokens)
        extra: dict[str, Any] = {
            "gpu_name": gpu_name, "compile": settings.compile, "autocast": settings.autocast,
            "precision": "autocast" if settings.autocast else "model cast", "warmup_s": round(timings.warmup_s, 6),
            "memory_method": memory.method, "clock": device.clock}
        if losses:
            extra["losses"] = json.dumps(losses)
        peak = None
        if hardware is not None:
            peak = self.context.catalog.device(hardware).peak_flops.get(case.workload.dtype)
            if peak is None:
                mfu_reason = f"catalog device {hardware!r} has no {case.workload.dtype} peak"
        if peak:
            extra["peak_flops_per_s"] = peak
        if mfu_reason:
            extra["mfu_reason"] = mfu_reason
        energy = timings.metered_energy(meter)
        if energy is None and hardware is not None:
            max_w = self.context.catalog.device(hardware).max_power_w
            energy = Energy.modeled(max_w, summary.step_time_s)
            extra["energy_model"] = f"catalog max power {max_w:g} W x step time"
        if reading is not None:
            extra.update(_reading_extra(reading, timings.energy_steps or len(summary.step_times_s)))
            extra.update(energy_steps=timings.energy_steps, energy_metered_s=round(timings.energy_metered_s, 6))
        return measured_result(self, case, summary, hardware=hardware or gpu_name, peak_memory_bytes=peak_memory,
                               peak_flops_per_s=peak, breakdown=MeasuredSplit.one_device(summary), energy=energy,
                               extra=extra, attention_kernel=watch.kernel if watch is not None else None)

    # -- several GPUs (torch.distributed, NCCL) ------------------------------------------------
    def _run_distributed(self, case: Case, settings: CudaSettings) -> Result:
        """One process per GPU through llmsim.distributed with device_type='cuda' (NCCL).

        The ranks time their steps with torch.cuda.synchronize() + perf_counter (llmsim.measure's
        CudaDevice, the same loop as the cpu backend's ranks), and report torch.cuda.max_memory_allocated.
        Energy is not measured here: the parent cannot bracket the ranks' timed steps, so the energy
        columns stay empty and `energy_note` says why.
        """
        torch = _torch()
        from llmsim.distributed.launch import launch
        from llmsim.distributed.spec import WorkerSpec, unsupported_reason
        from llmsim.measure.device import CudaDevice

        world = case.layout.world
        have = torch.cuda.device_count()
        if have < world:
            return case.result(self, status="skipped",
                               error=f"strategy needs {count(world, 'GPU')}, this host has {have} (one process per GPU)")
        spec = WorkerSpec.from_layout(case.workload, case.sharing, case.strategy, case.layout,
                                      seed=case.seed, steps=settings.steps, warmup=settings.warmup,
                                      device_type="cuda", profile_comm=settings.profile_comm)
        reason = unsupported_reason(spec)
        if reason:
            return case.result(self, status="skipped", error=reason, nodes=1)
        refused = self._does_not_fit(case, case.workload, list(range(world)))
        if refused is not None:
            return refused
        log_dir = None
        if self.context.run_dir is not None:
            log_dir = self.context.run_dir / "distributed" / case.name.replace("/", "_")
        outcome = launch(spec, timeout_s=settings.timeout_s, log_dir=log_dir)
        if outcome.timed_out_s is not None:
            return case.timed_out(self, outcome.error or "", "timeout_s", outcome.timed_out_s, nodes=1)
        if not outcome.ok:
            return case.result(self, status="failed", error=outcome.error, nodes=1)
        records = outcome.records
        # The slowest rank per step; TTFT and the compute/communication split are not reported here yet.
        summary = summarize(slowest([r.step_times_s for r in records]))
        nvml = nvml_factory().init()
        gpu_name = nvml.name(nvml.handle(0))
        hardware, mfu_reason = self._catalog_device(gpu_name, settings)
        extra: dict[str, Any] = {"gpu_name": gpu_name, "processes": world, "clock": CudaDevice.clock,
                                 "memory_method": records[0].memory_method,
                                 "losses": json.dumps(records[0].losses),
                                 "energy_note": "not measured for several processes",
                                 "launch_wall_s": round(outcome.wall_s, 3)}
        if outcome.teardown:
            extra["teardown"] = outcome.teardown
        peak = self.context.catalog.device(hardware).peak_flops.get(case.workload.dtype) if hardware else None
        if not peak and mfu_reason:
            extra["mfu_reason"] = mfu_reason
        return measured_result(self, case, summary, hardware=hardware or gpu_name,
                               peak_memory_bytes=max(r.peak_memory_bytes for r in records), peak_flops_per_s=peak,
                               extra=extra)


def _reading_extra(reading: EnergyReading, steps: int) -> dict[str, Any]:
    """How NVML measured the energy: method and samples, counter and sampled energy per step, notes."""
    extra: dict[str, Any] = dict(energy_method=reading.method, energy_samples=reading.samples)
    if reading.counter_j is not None:
        extra["energy_counter_j_per_step"] = reading.counter_j / steps
    if reading.sampled_j is not None:
        extra["energy_sampled_j_per_step"] = reading.sampled_j / steps
    if reading.notes:
        extra["energy_note"] = "; ".join(reading.notes)
    return extra


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [CudaBackend]


@hookimpl
def llmsim_energy_meters() -> list[type[EnergyMeter]]:
    return [NvmlMeter]
