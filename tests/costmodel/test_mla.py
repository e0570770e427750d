"""Multi-head latent attention in the cost model: the latent KV cache (bytes per token, not split by tensor
parallelism), the absorbed decode's attention FLOPs and cache reads, the replicated down-projections (weights,
FLOPs, GEMM shapes), the activation inventory against the traced module, and a serving iteration costing what
forward_work prices."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, memory_breakdown, moe, precision
from llmsim.costmodel.compute import decode_kv_reads, layer_gemm_shares, replicated_kv_projection
from llmsim.costmodel.gemms import linear_shapes
from llmsim.costmodel.iteration import (IterationModel, Mix, iteration_time, kv_bytes_per_token, kv_capacity,
                                        token_costs)
from llmsim.costmodel.memory import activation_bytes_per_layer, kv_projection_params, tp_block_params
from llmsim.costmodel.step import price
from llmsim.costmodel.work import forward_work
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG, a100_cluster, profiled

UNTIED = SharingChoice(tie_embeddings=False)
FP32 = 4


def _v3_slice(layers: int = 2, seq_len: int = 64, batch: int = 2, dtype: str = "bfloat16",
              moe: bool = False) -> Workload:
    """DeepSeek-V3's attention (128 heads, q_lora 1536, kv_lora 512, nope 128, rope 64, v 128) in a few
    layers, dense unless `moe`, traced as serving traces it."""
    model = ModelSpec(preset="deepseek-v3", layers=layers, seq_len=seq_len,
                      **({"moe": {"first_dense_layers": 1}} if moe else {"moe": None}))
    return Workload(model=model, mode="decode", batch=batch, decode_tokens=3, dtype=dtype)


def test_kv_bytes_per_token_are_the_latent_and_tp_does_not_split_them() -> None:
    """DeepSeek-V2 Table 1: (d_c + d_h^R) l elements per token; every tensor-parallel rank holds the whole
    latent (vLLM/SGLang), unlike a GQA model's KV heads."""
    w = _v3_slice()
    costs = token_costs(w, profile_workload(w, UNTIED))
    assert costs.kv_bytes_per_token == 2 * (512 + 64) * 2
    for tp in (1, 2, 8):
        assert kv_bytes_per_token(costs, w, Plan(tp=tp)) == 2 * (512 + 64) * 2
    assert kv_bytes_per_token(costs, w, Plan(tp=8, pp=2)) == (512 + 64) * 2
    gqa = Workload(model=ModelSpec(preset="llama3-8b", layers=2, seq_len=64), mode="decode", batch=2,
                   decode_tokens=3)
    gqa_costs = token_costs(gqa, profile_workload(gqa, UNTIED))
    assert kv_bytes_per_token(gqa_costs, gqa, Plan(tp=8)) == gqa_costs.kv_bytes_per_token / 8


def test_the_decode_prices_the_absorbed_form_and_the_prefill_the_decompressed_one() -> None:
    """Per (query, key) pair and layer, all heads: prefill 2 (nope + rope) + 2 v = 640 per head (the math SDPA's
    whole square), decode 2 (kv_lora + rope) + 2 kv_lora = 2176 per head (2.19 GFLOP per 1k cached tokens and
    layer at 128 heads). The decode reads the latent once for all heads, for every kernel."""
    w = _v3_slice()
    costs = token_costs(w, profile_workload(w, UNTIED))
    assert costs.attention_flops_per_pair == pytest.approx(2 * 128 * 640)
    assert costs.decode_attention_flops_per_pair == pytest.approx(2 * 128 * 2176)
    for kernel in ("flash", "trtllm-mmha"):
        assert decode_kv_reads(kernel, 128, 128, 8, latent=True) == 1.0
    assert decode_kv_reads("trtllm-mmha", 32, 8, 1) == 4.0       # a GQA model's MMHA: per query head


def test_kv_capacity_per_device_does_not_grow_with_the_latent_split() -> None:
    """The planner's and serving's KV capacity: tp 8 holds the whole latent on each rank, so a device's tokens
    are what its weights leave over the whole per-token latent."""
    w = _v3_slice(layers=4)
    profile = profile_workload(w, UNTIED)
    costs = token_costs(w, profile)
    cluster = replace(a100_cluster(1, 8), device=CATALOG.device("h200"))
    caps = {tp: kv_capacity(w, profile, UNTIED, Plan(tp=tp), cluster, costs, 0.9, 64, 8192, 256)
            for tp in (1, 8)}
    for tp, cap in caps.items():
        assert cap.bytes_per_token == 4 * 576 * 2
        assert cap.blocks == int(cap.kv_bytes // (cap.bytes_per_token * 64))
    # tp 8 frees weight (and workspace) memory only: the tokens grow by what that frees, not 8x as a
    # multi-head model's would (its cache splits over the heads)
    freed = (caps[1].weights_bytes + caps[1].workspace_bytes) - (caps[8].weights_bytes + caps[8].workspace_bytes)
    assert caps[8].kv_bytes - caps[1].kv_bytes == pytest.approx(freed, rel=1e-9)
    assert caps[8].tokens < 8 * caps[1].tokens


def test_the_down_projections_are_replicated_over_tp() -> None:
    spec = ModelSpec(preset="deepseek-v3")
    h = 7168
    down = h * (1536 + 576) + 1536 + 512                          # q_a, kv_a and the two latent norms
    assert kv_projection_params(spec) == down
    per_block = 1_000_000_000
    replicated = 2 * h                                           # the block's two RMSNorms
    assert tp_block_params(spec, per_block, 8) == pytest.approx((per_block - down - replicated) / 8 + down
                                                               + replicated)
    w = Workload(model=spec, mode="prefill", batch=1)
    flops, nbytes = replicated_kv_projection(w, Plan(tp=8), 10)
    assert flops == 2 * 10 * h * (1536 + 576) * 7 / 8 and nbytes == h * (1536 + 576) * 7 / 8 * 2
    assert replicated_kv_projection(w, Plan(tp=1), 10) == (0.0, 0.0)


def test_the_gemm_shapes_of_one_rank() -> None:
    """q_a (replicated), q_b (heads/tp x 192), kv_a (replicated), kv_b (heads/tp x 256), out, MLP up and down;
    the four attention-input GEMMs are the 'QKV' share of the tp overlap."""
    w = Workload(model=ModelSpec(preset="deepseek-v3", moe=None), mode="prefill", batch=1)
    shapes = linear_shapes(w, Plan(tp=8))
    assert shapes[:5] == [(7168, 1536), (1536, 16 * 192), (7168, 576), (512, 16 * 256), (16 * 128, 7168)]
    assert len(shapes) == 7
    qkv, out, up, down = layer_gemm_shares(w, Plan(tp=8))
    total = sum(k * n for k, n in shapes)
    assert qkv == pytest.approx(sum(k * n for k, n in shapes[:4]) / total)
    assert qkv + out + up + down == pytest.approx(1.0)
    lite = Workload(model=ModelSpec(preset="deepseek-v2-lite", moe=None), mode="prefill", batch=1)
    assert linear_shapes(lite, Plan(tp=2))[:3] == [(2048, 8 * 192), (2048, 576), (512, 8 * 256)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("q_lora", [48, None])
def test_the_math_inventory_is_what_the_traced_mla_module_saves(q_lora: int | None, dtype: str) -> None:
    """As test_activations' cross-check: the traced eager module keeps the inventory plus the named eager
    extras: the RMSNorm composite of both block norms and of each latent norm (fp32 input and x * rstd,
    2 x 4 - e bytes per element), SwiGLU's act(gate), and in fp32 a view of kv_a's output whose storage also
    holds k_pe (rope elements)."""
    spec = ModelSpec(layers=2, hidden=96, heads=4, vocab=500, seq_len=48, positions="rotary", norm="rmsnorm",
                     activation="swiglu", bias=False,
                     mla=dict(kv_lora_rank=32, q_lora_rank=q_lora, qk_nope_head_dim=16, qk_rope_head_dim=8,
                              v_head_dim=16))
    b, s, h = 3, 48, 96
    w = Workload(model=spec, mode="train", batch=b, dtype=dtype)
    profile, sharing = profiled(w, tie=True)
    e = 2 if dtype == "bfloat16" else 4
    derived, _ = activation_bytes_per_layer(w, sharing, Plan(micro_batch=b), Options(attention="math"))
    extras = 2 * (2 * FP32 - e) * h * s * b + e * (spec.ffn_hidden or 0) * s * b
    extras += (2 * FP32 - e) * ((q_lora or 0) + 32) * s * b
    if e == FP32:
        extras += e * 8 * s * b
    assert profile.activation_bytes_per_layer == derived + extras


@pytest.mark.parametrize("tp,moe", [(1, False), (2, False), (8, False), (8, True)])
def test_a_pure_prefill_and_a_pure_decode_step_cost_what_forward_work_prices(tp: int, moe: bool) -> None:
    """The serving iteration (costmodel.iteration) and the step pricing (costmodel.compute) agree on an MLA
    model: the latent cache read whole by every rank, the absorbed decode's FLOPs, the replicated
    down-projections."""
    w = _v3_slice(moe=moe)
    profile = profile_workload(w, UNTIED)
    cluster = replace(a100_cluster(1, 8), device=CATALOG.device("h200"))
    batch = w.batch
    plan = Plan(tp=tp, micro_batch=batch)
    model = IterationModel(token_costs(w, profile), w, Plan(tp=tp), cluster, pipeline_in_flight=False)
    prefill = sum((Mix.prefill(64) for _ in range(batch)), Mix())
    decode = sum((Mix.decode(64 + 1.5) for _ in range(batch)), Mix())
    fused = Options(compile=True)
    expected_prefill = price(forward_work(w, profile, plan, cluster, fused, "prefill"), cluster.fabric).step
    expected_decode = price(forward_work(w, profile, plan, cluster, fused, "decode", 2), cluster.fabric).step
    assert iteration_time(model, prefill) == pytest.approx(expected_prefill, rel=1e-9)
    assert iteration_time(model, decode) == pytest.approx(expected_decode, rel=1e-9)


def test_the_decode_memory_holds_the_whole_latent_on_every_rank() -> None:
    """What the decode planner (costmodel.memory) counts: the latent cache whole at any tp, where a multi-head
    model's splits over its heads."""
    w = _v3_slice()
    profile = profile_workload(w, UNTIED)
    for tp in (1, 2, 8):
        assert memory_breakdown(w, profile, UNTIED, Plan(tp=tp)).kv_cache == profile.kv_cache_bytes
    mha = Workload(model=ModelSpec(preset="llama2-7b", layers=2, seq_len=64), mode="decode", batch=2, decode_tokens=3)
    mha_profile = profile_workload(mha, UNTIED)
    assert memory_breakdown(mha, mha_profile, UNTIED, Plan(tp=8)).kv_cache == mha_profile.kv_cache_bytes / 8


def test_float8_serving_keeps_the_routed_experts_in_fp8() -> None:
    """float8 inference stores the routed experts' weights at 1 byte (moe.expert_weight_elem), as the layer
    GEMM weights; training keeps them in the workload dtype."""
    bf16, fp8 = _v3_slice(layers=3, moe=True), _v3_slice(layers=3, moe=True, dtype="float8")
    params = {w.dtype: memory_breakdown(w, profile_workload(w, UNTIED), UNTIED, Plan(tp=8, etp=8)).params
              for w in (bf16, fp8)}
    profile = profile_workload(bf16, UNTIED)
    experts = profile.expert_params / 8                      # each expert split over the 8 ranks (etp = tp)
    layer_gemms = 3 * precision.layer_gemm_params(fp8, Plan(tp=8))   # FP8 before: 1 byte saved each
    assert experts > 0
    assert params["bfloat16"] - params["float8"] == pytest.approx(layer_gemms + experts * (2 - 1), rel=1e-12)
    train = Workload(model=fp8.model, mode="train", batch=2, dtype="float8")
    assert moe.expert_weight_elem(train) == 2 and moe.expert_weight_elem(fp8) == 1
