"""The `xla` backend: runs the workload through torch_xla (PJRT) on a TPU, or on the PJRT CPU device.

torch_xla traces ops lazily and compiles each distinct graph once. So that compilation is not timed,
the warm-up steps run first (the first training step and the second — AdamW's state appears after the
first — are different graphs; decode compiles the prefill and one graph per generated position), and
the compile time and graph count are reported separately from `torch_xla.debug.metrics`
(`CompileTime`): `compile_time_s`, `graphs_compiled`, and `graphs_compiled_timed` (should be 0; more
means a timed step recompiled and its time includes compilation).

Clock: `time.perf_counter`, read only after the device finished: each step ends with
`torch_xla.sync()` (cut and launch the graph) and `xm.wait_device_ops()`; without the wait only the
tracing would be timed. Decode cuts the graph after every generated token (one small graph per
position instead of one unrolled graph of the whole generation).

The model and inputs are built on the CPU from the scenario seed and then moved to the XLA device,
so the weights equal those of the cpu backend (XLA's own RNG would draw different ones).

torch_xla is imported lazily: this module imports without it, and `availability()` says how to get it.
The pair is pinned (torch_xla 2.9.0 needs torch 2.9.0), in an environment of its own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import statistics
import time
from glob import glob
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.results import fill_derived
from llmsim.workload.profile import profile_workload

XLA_VERSION = "2.9.0"
NOT_INSTALLED = (f"torch_xla is not installed (pip install 'llmsim[xla]' in a separate environment with "
                 f"torch {XLA_VERSION})")


class XlaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(5, ge=1, description="timed steps")
    warmup: int = Field(2, ge=0, description="untimed steps first; they compile the graphs (train needs 2: "
                                             "the step before AdamW has state and the steps after it differ)")
    device: Literal["auto", "TPU", "CPU"] = Field(
        "auto", description="PJRT device; auto = PJRT_DEVICE if set, else TPU where one is present, else CPU")


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:2])


def xla_unavailable_reason() -> str | None:
    """Why torch_xla cannot run here, or None. Does not import torch_xla (that starts its runtime)."""
    if importlib.util.find_spec("torch_xla") is None:
        return NOT_INSTALLED
    import torch

    try:
        xla_version = importlib.metadata.version("torch_xla")
    except importlib.metadata.PackageNotFoundError:
        return None  # a source build: trust it
    if _minor(xla_version) != _minor(torch.__version__):
        return (f"torch_xla {xla_version} needs the matching torch ({'.'.join(map(str, _minor(xla_version)))}.x); "
                f"this environment has torch {torch.__version__} (pip install 'llmsim[xla]' pins the pair)")
    return None


def tpu_present() -> bool:
    """A TPU VM exposes its chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5e and later)."""
    return bool(glob("/dev/accel*") or glob("/dev/vfio/[0-9]*"))


def pjrt_device(setting: str) -> str:
    """The PJRT device this process will use; set PJRT_DEVICE before torch_xla's runtime starts."""
    if setting != "auto":
        return setting
    return os.environ.get("PJRT_DEVICE") or ("TPU" if tpu_present() else "CPU")


# TPU device kinds as the runtime reports them -> catalog names.
TPU_KINDS: tuple[tuple[str, str], ...] = (("v5 lite", "tpu-v5e"), ("v5e", "tpu-v5e"), ("v5p", "tpu-v5p"),
                                          ("v4", "tpu-v4"))


def serve_step(step: Any, mark: Any) -> Any:
    """WorkloadStep.step for prefill/decode under torch.no_grad instead of torch.inference_mode:
    torch_xla 2.9 fails on inference tensors ("Cannot set version_counter for inference tensor")."""
    import torch

    with torch.no_grad():
        if step.workload.mode == "prefill":
            return step.prefill()[0]
        token, cache = step.prefill(step.cache_len)
        mark("first_token")
        for i in range(step.workload.decode_tokens - 1):
            token = step.decode_one(token, cache, step.spec.seq_len + i)
        return token


def _compile_metric() -> tuple[int, float]:
    """(graphs compiled so far, seconds spent compiling) in this process."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    if not data:
        return 0, 0.0
    return int(data[0]), float(data[1]) / 1e9


class XlaBackend(Backend):
    name = "xla"
    kind = "measured"
    description = "runs the Transformer through torch_xla (PJRT): a TPU where present, else the PJRT CPU device"
    Settings = XlaSettings

    @classmethod
    def availability(cls) -> str | None:
        return xla_unavailable_reason()

    def run(self, case: Case, settings: XlaSettings) -> Result:
        reason = xla_unavailable_reason()
        if reason:
            return case.result(self, status="skipped", error=reason)
        if case.layout.world > 1:
            return case.result(self, status="skipped",
                               error="several XLA devices (SPMD / multi-process PJRT) are not run by the xla backend "
                                     "yet; run one device, or model the cluster with roofline / cluster")
        wanted = pjrt_device(settings.device)
        current = os.environ.get("PJRT_DEVICE")
        if current and current != wanted:
            return case.result(self, status="skipped",
                               error=f"PJRT_DEVICE={current} in this process but device {wanted} requested "
                                     f"(the runtime is chosen once per process)")
        os.environ["PJRT_DEVICE"] = wanted

        import torch
        import torch_xla
        import torch_xla.core.xla_model as xm

        from llmsim.workload.step import ADAMW_LR, WorkloadStep

        device = torch_xla.device()
        profile = profile_workload(case.workload, case.sharing)
        step = WorkloadStep(case.workload, case.sharing, seed=case.seed)  # on the CPU: same weights
        step.model.to(device)
        step.device = device
        step.tokens, step.targets = step.tokens.to(device), step.targets.to(device)
        # Moving to XLA makes new Parameter objects: the optimizer must hold the moved ones.
        step.trainable = [p for p in step.model.parameters() if p.requires_grad]
        if step.optimizer is not None:
            step.optimizer = torch.optim.AdamW(step.trainable, lr=ADAMW_LR)
        cut_per_token = step.decode_one

        def decode_one(token: Any, cache: list, position: int) -> Any:
            out = cut_per_token(token, cache, position)
            torch_xla.sync()
            return out

        step.decode_one = decode_one  # type: ignore[method-assign]

        def done() -> float:
            torch_xla.sync()
            xm.wait_device_ops()
            return time.perf_counter()

        marks: dict[str, float] = {}

        def mark(label: str) -> None:
            if label == "first_token":  # the optimizer is left in the step's graph: no cut at backward_done
                marks[label] = done()

        def run_step() -> Any:
            return step.step(mark) if case.workload.mode == "train" else serve_step(step, mark)

        outputs: list[Any] = []
        compiled0, compile_s0 = _compile_metric()
        warm_start = time.perf_counter()
        for _ in range(settings.warmup):
            outputs.append(run_step())
            done()
        warmup_s = time.perf_counter() - warm_start
        compiled1, compile_s1 = _compile_metric()

        times: list[float] = []
        first_token: list[float] = []
        for _ in range(settings.steps):
            marks.clear()
            start = done()
            outputs.append(run_step())
            end = done()
            times.append(end - start)
            if "first_token" in marks:
                first_token.append(marks["first_token"] - start)
        compiled2, compile_s2 = _compile_metric()
        host = [o.cpu() for o in outputs]  # after the clock: a transfer per step would be timed otherwise

        hardware, peak, mfu_reason = self._peak(case, wanted, xm, device)
        memory = None
        try:
            info = xm.get_memory_info(device)
            memory = float(info.get("peak_bytes_used") or info.get("bytes_used"))
        except Exception:  # noqa: BLE001 - the PJRT CPU client has no allocator stats
            pass

        step_time = statistics.fmean(times)
        quantiles = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
        values: dict[str, Any] = dict(
            hardware=hardware, nodes=1, params=profile.params, trainable_params=profile.trainable_params,
            step_time_s=step_time, latency_p50_s=statistics.median(times), latency_p99_s=quantiles[98],
            model_flops_per_step=profile.model_flops_per_step, peak_memory_bytes_per_device=memory,
            c_per_submodel_s=step_time, comm_time_s=0.0, bubble_time_s=0.0, compute_time_s=step_time,
            other_time_s=0.0)
        if first_token:
            ttft = statistics.fmean(first_token)
            values.update(ttft_s=ttft, tpot_s=(step_time - ttft) / max(case.workload.decode_tokens - 1, 1))
        if peak:
            values["mfu"] = profile.model_flops_per_step / step_time / peak
        energy = self._modeled_energy_w(hardware)
        if energy is not None:
            values.update(energy_j_per_step=energy * step_time, energy_source="modeled")
        extra: dict[str, Any] = {
            "pjrt_device": wanted, "xla_device_hw": xm.xla_device_hw(device), "torch_xla": torch_xla.__version__,
            "compile_time_s": round(compile_s2 - compile_s0, 6), "graphs_compiled": compiled2 - compiled0,
            "graphs_compiled_timed": compiled2 - compiled1, "warmup_s": round(warmup_s, 6),
            "clock": "perf_counter after sync + wait_device_ops",
            "step_times_s": json.dumps([round(t, 6) for t in times])}
        if memory is None:
            extra["memory_note"] = "the PJRT device reports no allocator statistics"
        if peak:
            extra["peak_flops_per_s"] = peak
        if mfu_reason:
            extra["mfu_reason"] = mfu_reason
        if case.workload.mode == "train":
            extra["losses"] = json.dumps([float(x) for x in host])  # warm-up and timed steps, in order
        elif case.workload.mode == "decode":
            extra["decode_last_tokens"] = json.dumps(host[-1].flatten().tolist())
        values["extra"] = extra
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)

    def _peak(self, case: Case, pjrt: str, xm: Any, device: Any) -> tuple[str, float | None, str | None]:
        """(hardware column, peak FLOP/s or None, why MFU is empty)."""
        dtype = case.workload.dtype
        if pjrt == "CPU":
            from llmsim.measure.host_probes import host_peak_flops

            return "cpu-host", host_peak_flops(dtype), None
        kind = ""
        try:
            import torch_xla.runtime as xr

            kind = str(xr.global_runtime_device_attributes()[0].get("type", "")).lower()
        except Exception:  # noqa: BLE001 - older runtimes: fall back to the hw name only
            kind = str(xm.xla_device_hw(device)).lower()
        name = next((n for pattern, n in TPU_KINDS if pattern in kind), None)
        if name is None or name not in self.context.catalog.devices:
            return kind or pjrt, None, f"XLA device {kind or pjrt!r} is not matched to the hardware catalog"
        peak = self.context.catalog.device(name).peak_flops.get(dtype)
        return name, peak, None if peak else f"catalog device {name!r} has no {dtype} peak"

    def _modeled_energy_w(self, hardware: str) -> float | None:
        """Power for modeled energy: the catalog's max power (all host cores for cpu-host)."""
        if hardware not in self.context.catalog.devices:
            return None
        spec = self.context.catalog.device(hardware)
        if spec.power_per_core:
            return (os.cpu_count() or 1) * spec.max_power_w
        return spec.max_power_w


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [XlaBackend]
