"""llmsim plugin `example`: a modeled backend for a made-up accelerator, `example-npu`.

It shows the two hooks most plugins need:
* `llmsim_hardware` adds the accelerator to the catalog (every number needs a `source`),
* `llmsim_backends` adds a backend that predicts a step on it.

The model is deliberately small: each traced op of the workload profile costs
max(FLOPs / (peak x efficiency), bytes / memory bandwidth), data parallelism divides the batch, and
the gradient all-reduce is not modeled. Replace `predict_step_s` with your own model.
"""

from __future__ import annotations

from pydantic import Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.results import fill_derived
from llmsim.strict import StrictModel
from llmsim.workload.profile import WorkloadProfile, profile_workload

DEVICE = "example-npu"


class Settings(StrictModel):
    """The `backends: {example: ...}` block of a scenario: unknown keys, a YAML boolean or a quoted number
    for a number are errors, as in the rest of a scenario (StrictModel)."""

    devices: int = Field(1, ge=1, description="accelerators in the (data-parallel) group")
    efficiency: float = Field(0.5, gt=0, le=1, description="fraction of peak FLOP/s the kernels reach")


def predict_step_s(profile: WorkloadProfile, peak_flops: float, memory_bw: float, efficiency: float) -> float:
    """Sum over the traced op groups of a per-group roofline, for the whole batch on one device."""
    return sum(max(ops.flops / (peak_flops * efficiency), ops.bytes / memory_bw) for ops in profile.ops.values())


class ExampleBackend(Backend):
    name = "example"
    kind = "modeled"
    description = "modeled example-npu accelerator (plugin example)"
    Settings = Settings

    @classmethod
    def world_size(cls, settings: Settings) -> int:
        return settings.devices

    def run(self, case: Case, settings: Settings) -> Result:
        if case.strategy.model_parallel > 1:
            return case.result(self, hardware=DEVICE, status="skipped",
                               error="this example models data parallelism only (tp = pp = cp = 1)")
        device = self.context.catalog.device(DEVICE)
        peak = device.peak_flops.get(case.workload.dtype)
        if not peak:   # a skipped row says why, where a KeyError would fail the row
            return case.result(self, hardware=DEVICE, status="skipped",
                               error=f"example-npu has no peak FLOP/s for {case.workload.dtype} (its catalog entry's "
                                     f"peak_flops: {', '.join(device.peak_flops)})")
        profile = profile_workload(case.workload, case.sharing)
        one_device_s = predict_step_s(profile, peak, device.memory_bw_bytes_per_s, settings.efficiency)
        step_s = one_device_s / case.layout.dp
        energy_j = device.max_power_w * step_s * case.layout.world
        result = case.result(
            self, hardware=DEVICE, nodes=1, params=profile.params, trainable_params=profile.trainable_params,
            step_time_s=step_s, latency_p50_s=step_s, latency_p99_s=step_s,
            model_flops_per_step=profile.model_flops_per_step,
            mfu=profile.model_flops_per_step / step_s / case.layout.world / peak,
            energy_j_per_step=energy_j, energy_source="modeled",
            c_per_submodel_s=one_device_s, compute_time_s=step_s, comm_time_s=0.0, bubble_time_s=0.0,
            other_time_s=0.0)
        return fill_derived(result, case.workload.tokens_per_step)


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [ExampleBackend]


@hookimpl
def llmsim_hardware() -> list[dict]:
    return [{
        "name": DEVICE, "type": "device",
        "peak_flops": {"bfloat16": 100e12, "float16": 100e12, "float32": 25e12},
        "memory_bytes": 32e9, "memory_bw_bytes_per_s": 1.0e12, "idle_power_w": 40, "max_power_w": 250,
        "source": "made-up accelerator for the llmsim plugin tutorial (not real hardware)",
    }]
