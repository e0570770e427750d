"""What-if hardware: the same cluster with one of its efficiencies moved, for the planner's sensitivity tables.

Three knobs (issue 18, "search that explains itself"), each a multiplier on what the cost model reads:
* `link`: the line rate of both link tiers (intra-node and inter-node `bandwidth_bytes_per_s`);
* `gemm`: the device's large-GEMM fraction of peak (`Efficiency.matmul`, and `matmul_float8` when set);
* `memory`: the device's streaming fraction of peak memory bandwidth (`Efficiency.memory`, and the decode attention
  kernel's own, `decode_attention_memory` / `decode_attention_memory_float8`, when set).

The factor is applied as given, also where it lifts a fraction above 1 (0.88 x 1.2 = 1.06 of the HBM peak):
a sensitivity asks how the choice moves with the number, not whether the device could reach it. Pure: no
torch, nothing cached on the inputs (the copies are new objects).
"""

from __future__ import annotations

from dataclasses import replace

from llmsim.costmodel import ClusterSpec
from llmsim.costmodel.efficiency import DEFAULT_EFFICIENCY

KNOBS: dict[str, str] = {"link": "link bandwidth", "gemm": "GEMM efficiency", "memory": "memory efficiency"}
# The swing of the sensitivity tables: +-20%, as issue 18 asks (a setting, not a measured uncertainty).
SENSITIVITY_FACTORS: tuple[float, ...] = (0.8, 1.2)


def perturb_cluster(cluster: ClusterSpec, knob: str, factor: float) -> ClusterSpec:
    """`cluster` with `knob` (KNOBS) multiplied by `factor`; factor 1 returns it unchanged."""
    if factor == 1.0 or not knob:
        return cluster
    if knob == "link":
        def scaled(link):  # noqa: ANN001, ANN202 - a catalog LinkSpec (pydantic)
            return link.model_copy(update={"bandwidth_bytes_per_s": link.bandwidth_bytes_per_s * factor})
        return replace(cluster, intra=scaled(cluster.intra), inter=scaled(cluster.inter))
    eff = cluster.device.efficiency or DEFAULT_EFFICIENCY  # type: ignore[attr-defined]
    if knob == "gemm":
        update = {"matmul": eff.matmul * factor}
        if eff.matmul_float8 is not None:
            update["matmul_float8"] = eff.matmul_float8 * factor
    elif knob == "memory":
        update = {"memory": eff.memory * factor}
        for field in ("decode_attention_memory", "decode_attention_memory_float8"):   # the decode kernel's own
            if getattr(eff, field) is not None:
                update[field] = getattr(eff, field) * factor
    else:
        raise ValueError(f"unknown knob {knob!r}; allowed: {', '.join(KNOBS)}")
    device = cluster.device.model_copy(update={"efficiency": eff.model_copy(update=update)})  # type: ignore[attr-defined]
    return replace(cluster, device=device)


def knob_label(knob: str, factor: float) -> str:
    """'link bandwidth -20%'."""
    return f"{KNOBS[knob]} {factor - 1:+.0%}"
