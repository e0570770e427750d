"""Small plans and a brute-force evaluator that shares none of the planner's pruning."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from llmsim.costmodel import Options, estimate
from llmsim.hardware import Catalog, load_catalog
from llmsim.planner.config import PlanFile, parse_plan
from llmsim.planner.search import Hardware, goal_metrics, judge, resolve_hardware, sharing_choice, workload_profile
from llmsim.planner.space import Axes, Config, axes_of, is_candidate, split_candidates

BASE = load_catalog()


def small_catalog(memory_bytes: float = 3e6) -> Catalog:
    """The built-in catalog plus `small-gpu`: an A100 with `memory_bytes` of memory, so small models overflow."""
    small = BASE.devices["a100-80gb"].model_copy(update={"name": "small-gpu", "memory_bytes": memory_bytes})
    return Catalog(devices={**BASE.devices, "small-gpu": small}, links=BASE.links)


def small_plan(**over: Any) -> PlanFile:
    data: dict[str, Any] = {
        "name": "small",
        "workload": {"model": {"preset": "tiny", "layers": 4}, "mode": "train", "batch": 8},
        "goal": {"tokens": 5e5, "deadline_days": 1.0},
        "hardware": [{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4},
                     {"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 4}],
        "limits": {"max_devices": 16, "memory_headroom": 0.0},  # exact capacities: the search is under test
        "objective": "cost", "top_k": 3, "simulate": False,
        "search": {"cp": [1, 2], "virtual_stages": [2]},
    }
    for key, value in over.items():
        data[key] = value
    return parse_plan(data)


def full_product(plan: PlanFile, hardware: str, devices_per_node: int, axes: Axes) -> Iterator[Config]:
    """Every point of the axes' product, valid or not (for brute-force checks of the pruning); the layer
    splits of each pipeline depth are the default and the searched Megatron-LM first/last counts; ep for a
    mixture-of-experts workload."""
    w = plan.workload
    for tp, pp, cp, dp, zero, sp, recompute, schedule, v, ep in itertools.product(
            axes.tp, axes.pp, axes.cp, axes.dp, axes.zero, axes.sp, axes.recompute,
            tuple(dict.fromkeys((*axes.schedule, "1f1b"))), (1,) + axes.virtual_stages, axes.ep):
        if pp > 1 and schedule not in axes.schedule:   # pp 1 runs "1f1b" whatever the search narrows to
            continue
        for split in [(), *split_candidates(w.model.layers, pp)]:
            for mb in axes.micro_batch or [d for d in range(1, w.batch + 1) if w.batch % d == 0]:
                m = w.batch // (dp * mb) if w.batch % (dp * mb) == 0 else 0
                yield Config(hardware, dp * tp * pp * cp, dp, tp, pp, cp, sp, zero, mb, m, recompute, schedule, v,
                             split, ep)


def brute_force(plan: PlanFile, catalog: Catalog) -> dict[Config, tuple[bool, Any]]:
    """Every valid configuration of the full product, priced by `estimate` alone: config -> (feasible, metrics)."""
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    out: dict[Config, tuple[bool, Any]] = {}
    for hw in resolve_hardware(plan, catalog):
        for c in full_product(plan, hw.name, hw.devices_per_node, axes_of(plan, hw.devices_per_node)):
            if is_candidate(plan, hw.devices_per_node, c) is not None:
                continue
            est = estimate(plan.workload, profile, sharing, c.plan(), hw.cluster(c.n_devices), Options())
            fits = est.memory.total <= hw.capacity
            metrics = goal_metrics(plan, c.n_devices, hw.usd_per_device_hour, est.step_time_s, est.energy_j,
                                   est.tpot_s)
            limits, _, _ = judge(plan, metrics, c.n_devices * hw.device.max_power_w)
            out[c] = (fits and not limits, metrics)
    return out


def hardware(plan: PlanFile, catalog: Catalog) -> list[Hardware]:
    return resolve_hardware(plan, catalog)
