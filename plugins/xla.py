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
from collections.abc import Callable
from glob import glob
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.measure.loop import time_steps
from llmsim.measure.row import measured_result
from llmsim.measure.summary import Energy, MeasuredSplit
from llmsim.strict import StrictModel

if TYPE_CHECKING:  # torch's modules (as torch itself) are imported where a case runs, not with this module:
    # every command loads the installed plugins, and `llmsim plan` needs no torch (plugins/cpu.py)
    from llmsim.workload.step import Mark, WorkloadStep

XLA_VERSION = "2.9.0"
NOT_INSTALLED = (f"torch_xla is not installed (pip install 'llmsim[xla]' in a separate environment with "
                 f"torch {XLA_VERSION})")


class XlaSettings(StrictModel):
    """Unknown keys, a YAML boolean or a quoted number for a number are errors (StrictModel), as in a scenario."""


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
    try:
        xla_version = importlib.metadata.version("torch_xla")
    except importlib.metadata.PackageNotFoundError:
        return None  # a source build: trust it
    import torch

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


def build_step(case: Case, device: Any, cut: Callable[[], None]) -> WorkloadStep:
    """The case's WorkloadStep, built on the CPU from the scenario seed (the cpu backend's weights and
    inputs) with the strategy's micro-batches, then moved to `device`. Decode calls `cut` after every
    generated token (torch_xla.sync: one small graph per position). Needs no torch_xla itself."""
    import torch

    from llmsim.workload.step import ADAMW_LR, WorkloadStep

    step = WorkloadStep(case.workload, case.sharing, seed=case.seed, micro_batch=case.layout.micro_batch)
    step.model.to(device)
    step.device = torch.device(device)
    step.tokens, step.targets = step.tokens.to(device), step.targets.to(device)
    # Moving to XLA makes new Parameter objects: the optimizer must hold the moved ones.
    step.trainable = [p for p in step.model.parameters() if p.requires_grad]
    if step.optimizer is not None:
        step.optimizer = torch.optim.AdamW(step.trainable, lr=ADAMW_LR)
    decode_one = step.decode_one

    def decode_and_cut(token: Any, cache: list, position: int) -> Any:
        out = decode_one(token, cache, position)
        cut()
        return out

    step.decode_one = decode_and_cut  # type: ignore[method-assign]
    return step


def run_step(step: WorkloadStep, mark: Mark) -> Any:
    """One step as the xla backend runs it: prefill/decode under torch.no_grad instead of inference_mode
    (torch_xla 2.9 fails on inference tensors: "Cannot set version_counter for inference tensor"), and
    only `first_token` marked (the optimizer stays in the training step's graph: no cut at backward_done)."""
    def first_token_only(label: str) -> None:
        if label == "first_token":
            mark(label)

    import torch

    if step.workload.mode == "train":
        return step.step(first_token_only)
    with torch.no_grad():
        return step.serve(first_token_only)


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
        from llmsim.measure.device import XlaDevice

        device = XlaDevice()
        step = build_step(case, device.torch_device, cut=device.torch_xla.sync)
        compiled0, compile_s0 = _compile_metric()
        warm: dict[str, int] = {}  # graphs compiled by the end of the warm-up
        timings = time_steps(lambda mark: run_step(step, mark), device, steps=settings.steps, warmup=settings.warmup,
                             after_warmup=lambda: warm.update(graphs=_compile_metric()[0]), keep="all")
        compiled2, compile_s2 = _compile_metric()
        host = [o.cpu() for o in timings.outputs]  # after the clock: a transfer per step would be timed otherwise

        hardware, peak, mfu_reason = self._peak(case, wanted, device.xm, device.torch_device)
        memory = device.memory().peak_bytes()
        summary = timings.summary(case.workload.decode_tokens)
        power = self._modeled_energy_w(hardware)
        extra: dict[str, Any] = {
            "pjrt_device": wanted, "xla_device_hw": device.xm.xla_device_hw(device.torch_device),
            "torch_xla": device.torch_xla.__version__, "compile_time_s": round(compile_s2 - compile_s0, 6),
            "graphs_compiled": compiled2 - compiled0, "graphs_compiled_timed": compiled2 - warm["graphs"],
            "warmup_s": round(timings.warmup_s, 6), "clock": device.clock}
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
        return measured_result(self, case, summary, hardware=hardware, peak_memory_bytes=memory, peak_flops_per_s=peak,
                               breakdown=MeasuredSplit.one_device(summary),
                               energy=Energy.modeled(power, summary.step_time_s) if power is not None else None,
                               extra=extra)

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
