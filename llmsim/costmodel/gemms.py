"""The GEMMs of one transformer layer on one tensor-parallel rank: their (in, out) feature shapes.

Shared by costmodel.compute (time, weight reads, wave quantization) and costmodel.precision (FP8 casts and
copies), so neither imports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmsim.config import ModelSpec, Workload
    from llmsim.costmodel.plan import Plan


def linear_shapes(workload: "Workload", plan: "Plan") -> list[tuple[int, int]]:
    """(in, out) features of one layer's GEMMs on one tensor-parallel rank."""
    spec = workload.model
    tp = plan.tp
    kv = spec.kv_heads or spec.heads
    kv_local = kv // tp if tp <= kv else 1
    qkv = (spec.heads // tp + 2 * kv_local) * spec.head_width
    ffn = mlp_width(spec)
    up = ffn * (2 if spec.activation in ("swiglu", "geglu") else 1) // tp  # gated: gate and up
    return [(spec.hidden, qkv), (spec.attention_width // tp, spec.hidden), (spec.hidden, up),
            (ffn // tp, spec.hidden)]


def mlp_width(spec: "ModelSpec") -> int:
    """Width of the mean layer's dense MLP: ffn_hidden; in a mixture-of-experts model the dense layers'
    ffn_hidden and the MoE layers' shared experts (shared_experts x their width, a dense MLP of the tensor-
    parallel group: Megatron-Core SharedExpertMLP) averaged over the layers. The routed experts are priced
    apart (costmodel.moe); the router (hidden x experts, < 0.1% of a layer's weights) is left out."""
    ffn = spec.ffn_hidden or 4 * spec.hidden
    moe = spec.moe
    if moe is None:
        return ffn
    shared = moe.shared_experts * spec.shared_expert_ffn
    return round(((spec.layers - spec.moe_layers) * ffn + spec.moe_layers * shared) / spec.layers)
