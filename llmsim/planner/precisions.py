"""Precision as a search dimension: which dtypes (and FP8 recipes) each hardware choice is planned with.

A plan searches the precisions of `search.dtype` (default: the workload's own dtype). A float8 candidate
runs the workload's FP8 recipe when the plan states one (`workload.fp8.recipe`), else the recipe a framework
picks on that device (costmodel.precision.default_recipe: MXFP8 on Blackwell, delayed scaling elsewhere,
as Transformer Engine's `get_default_fp8_recipe`). A device that cannot run a precision (no float8 peak:
A100, TPU v4/v5e; no MX units for mxfp8: Hopper, CDNA3, TPUs) has no candidates of it: the plan summary
says so once, and the plan is refused only when no hardware choice has any candidate.

A configuration names its precision by a label (`Config.precision`): "" for the plan's own workload as
written (so plans that do not search precision keep their configurations and names), else the dtype, or
"float8-<recipe>" for FP8. `workload_for(plan, label)` is the workload a label stands for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from llmsim.config import Fp4Spec, Fp8Spec, Workload
from llmsim.costmodel import precision
from llmsim.hardware import DeviceSpec


class PlanFile(Protocol):
    """What these functions read of a plan (planner.config.PlanFile, which imports this module: no cycle)."""

    workload: Workload
    search: Any
    serving: Any        # a serving goal (its iterations are inference whatever workload.mode) or None


@dataclass(frozen=True)
class Candidate:
    """One precision a hardware choice is planned with: its label and the workload it stands for."""

    label: str          # Config.precision: "" = the plan's workload as written
    workload: Workload


def plan_dtypes(plan: PlanFile) -> list[str]:
    """The dtypes the plan searches: `search.dtype`, or the workload's own."""
    return list(plan.search.dtype) if plan.search.dtype else [plan.workload.dtype]


def _recipe(plan: PlanFile, device: DeviceSpec) -> str:
    """The FP8 recipe of a float8 candidate on `device`: the plan's stated one, else the device's default."""
    w = plan.workload
    stated = w.fp8 is not None and "fp8" in w.model_fields_set and "recipe" in w.fp8.model_fields_set
    return w.fp8.recipe if stated and w.fp8 is not None else precision.default_recipe(device)


def label_of(dtype: str, recipe: str | None) -> str:
    return f"float8-{recipe}" if dtype == "float8" else dtype


def workload_for(plan: PlanFile, label: str) -> Workload:
    """The workload a configuration's precision label stands for ("" = the plan's own)."""
    w = plan.workload
    if not label:
        return w
    dtype, _, recipe = label.partition("-")
    if dtype == "float4":  # the plan's fp4 recipe where it states one, else nvfp4 (Fp4Spec's default)
        return w if w.dtype == dtype else w.model_copy(update={"dtype": dtype, "fp8": None, "fp4": w.fp4 or Fp4Spec()})
    if dtype != "float8":
        return w if w.dtype == dtype else w.model_copy(update={"dtype": dtype, "fp8": None, "fp4": None})
    fp8 = (w.fp8 or Fp8Spec()).model_copy(update={"recipe": recipe})
    return w.model_copy(update={"dtype": "float8", "fp8": fp8, "fp4": None})


def candidates(plan: PlanFile, device: DeviceSpec) -> tuple[list[Candidate], list[str]]:
    """The precisions `device` is planned with, and why each other searched precision is not (one reason
    per dtype: no float8 peak, or no MX units for mxfp8; a dtype without a catalog peak)."""
    out: list[Candidate] = []
    dropped: list[str] = []
    for dtype in plan_dtypes(plan):
        label = label_of(dtype, _recipe(plan, device) if dtype == "float8" else None)
        w = workload_for(plan, label)
        if w == plan.workload:  # the workload as written: unlabeled (names as before precision was searched)
            w, label = plan.workload, ""
        problem = precision.device_problem(w, device, serving=plan.serving is not None)
        if problem is None and dtype not in ("float8", "float4") \
                and not device.peak_flops.get(dtype):  # type: ignore[call-overload]
            problem = f"device {device.name!r} has no catalog peak FLOP/s for {dtype}"
        if problem is not None:
            dropped.append(problem)
            continue
        out.append(Candidate(label, w))
    return out, dropped


def describe_label(plan: PlanFile, label: str) -> str:
    """'bfloat16', 'float8 (delayed scaling)': what precision a configuration assumes, for the report."""
    w = workload_for(plan, label)
    if w.dtype == "float4" and w.fp4 is not None:
        return f"float4 ({w.fp4.recipe})"
    if w.dtype != "float8" or w.fp8 is None:
        return w.dtype
    return f"float8 ({w.fp8.recipe})"
