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
    """(in, out) features of one layer's GEMMs on one tensor-parallel rank: the attention's input projections
    (`attention_input_gemms` of them: QKV fused, or multi-head latent attention's), attention out, MLP up,
    MLP down."""
    spec = workload.model
    tp = plan.tp
    if spec.mla is not None:
        return mla_input_shapes(spec, tp) + _out_and_mlp(spec, tp)
    kv = spec.kv_heads or spec.heads
    kv_local = kv // tp if tp <= kv else 1
    qkv = (spec.heads // tp + 2 * kv_local) * spec.head_width
    return [(spec.hidden, qkv)] + _out_and_mlp(spec, tp)


def _out_and_mlp(spec: "ModelSpec", tp: int) -> list[tuple[int, int]]:
    """(in, out) of the attention-out, MLP up and MLP down GEMMs on one tensor-parallel rank."""
    ffn = mlp_width(spec)
    up = ffn * (2 if spec.activation in ("swiglu", "geglu") else 1) // tp  # gated: gate and up
    return [(spec.attention_width // tp, spec.hidden), (spec.hidden, up), (ffn // tp, spec.hidden)]


def mla_input_shapes(spec: "ModelSpec", tp: int) -> list[tuple[int, int]]:
    """(in, out) of multi-head latent attention's input projections on one tensor-parallel rank
    (llmsim.workload.model.MLAttention): the query down-projection hidden -> q_lora_rank (none without
    q_lora_rank), the query up-projection (q_lora_rank or hidden) -> heads/tp x (nope + rope), the key-value
    down-projection hidden -> kv_lora_rank + rope and the key-value up-projection kv_lora_rank -> heads/tp x
    (nope + v). The two down-projections are replicated on every rank (vLLM's and SGLang's deepseek_v2.py
    ReplicatedLinear for q_a_proj and kv_a_proj_with_mqa; Megatron-Core MLA's linear_q_down_proj /
    linear_kv_down_proj with parallel_mode 'duplicated'); the up-projections are column-parallel by heads."""
    assert spec.mla is not None
    m, heads = spec.mla, spec.heads // tp
    shapes = [] if m.q_lora_rank is None else [(spec.hidden, m.q_lora_rank)]
    shapes.append((m.q_lora_rank or spec.hidden, heads * m.qk_head_dim))
    shapes.append((spec.hidden, m.cache_width))
    shapes.append((m.kv_lora_rank, heads * (m.qk_nope_head_dim + m.v_head_dim)))
    return shapes


def attention_input_gemms(spec: "ModelSpec") -> int:
    """How many GEMMs `linear_shapes` lists before the attention-out projection: 1 (the fused QKV), or multi-
    head latent attention's down- and up-projections (`mla_input_shapes`: 4, or 3 without q_lora_rank)."""
    if spec.mla is None:
        return 1
    return 4 if spec.mla.q_lora_rank is not None else 3


def mla_replicated_weights(spec: "ModelSpec") -> int:
    """Weights of multi-head latent attention's down-projections in one layer, which every tensor-parallel
    rank holds and runs whole (`mla_input_shapes`): hidden x (q_lora_rank + kv_lora_rank + rope); 0 without
    mla."""
    if spec.mla is None:
        return 0
    m = spec.mla
    return spec.hidden * ((m.q_lora_rank or 0) + m.cache_width)


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
