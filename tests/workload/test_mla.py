"""Multi-head latent attention in the torch module (llmsim.workload.model.MLAttention): the DeepSeek presets'
published sizes, the absorbed decode computing what the decompressed attention computes, and the traced profile
(the latent KV cache, the decompressed prefill's and the absorbed decode's attention FLOPs)."""

from __future__ import annotations

import functools

import pytest
import torch

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.workload.model import MLAttention, build_model, count_active_parameters, count_parameters
from llmsim.workload.presets import PUBLISHED_MLA_PARAMS
from llmsim.workload.profile import _trace

# a tiny MLA of its own dimensions, dense (no experts), both latents
SMALL = dict(layers=2, hidden=96, heads=4, vocab=500, seq_len=16, positions="rotary", norm="rmsnorm",
             activation="swiglu", bias=False,
             mla=dict(kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12))


@functools.lru_cache(maxsize=None)
def _meta_preset(preset: str) -> torch.nn.Module:
    """A preset's whole model on the meta device, built once per test process: DeepSeek-V3's 14,848 expert modules
    take ~3 s to build here (24 s while the meta weights were still drawn: model._init_weights), and two tests
    count them (kept on one xdist worker by their group)."""
    spec = ModelSpec(preset=preset)
    with torch.device("meta"):
        return build_model(spec, tie_embeddings=spec.tie_embeddings)


@pytest.mark.xdist_group("deepseek-models")
@pytest.mark.parametrize("preset", sorted(PUBLISHED_MLA_PARAMS))
def test_deepseek_presets_match_their_published_totals(preset: str) -> None:
    spec = ModelSpec(preset=preset)
    model = _meta_preset(preset)
    total, active = count_parameters(model)[0], count_active_parameters(model)
    published_total, published_active, precision = PUBLISHED_MLA_PARAMS[preset]
    assert abs(total - published_total) <= precision
    # DeepSeek's activated counts leave the input embedding table out (presets.PUBLISHED_MLA_PARAMS)
    assert abs(active - spec.vocab * spec.hidden - published_active) <= precision


@pytest.mark.xdist_group("deepseek-models")
def test_deepseek_v3_counts_by_hand() -> None:
    """Per layer: q_a 7168 x 1536 + q_a_norm 1536 + q_b 1536 x 128 x 192 + kv_a 7168 x 576 + kv_a_norm 512
    + kv_b 512 x 128 x 256 + out 128 x 128 x 7168 = 187,107,328 attention parameters, two RMSNorms; 3 dense
    SwiGLU MLPs of 18432, 58 MoE layers of 256 routed + 1 shared expert of 2048 and a 7168 x 256 router;
    untied 129,280 x 7168 embedding and head, final norm: 671,026,404,352 (the checkpoint's 685B less the
    multi-token prediction module)."""
    h, v, f, fe = 7168, 129280, 18432, 2048
    attention = h * 1536 + 1536 + 1536 * 128 * 192 + h * 576 + 512 + 512 * 128 * 256 + 128 * 128 * h
    assert attention == 187_107_328
    dense, moe = 3 * h * f, 257 * 3 * h * fe + h * 256
    total = 61 * (attention + 2 * h) + 3 * dense + 58 * moe + 2 * v * h + h
    assert ModelSpec(preset="deepseek-v3").tie_embeddings is False
    assert count_parameters(_meta_preset("deepseek-v3"))[0] == total == 671_026_404_352


def test_no_query_latent_is_a_direct_projection() -> None:
    spec = ModelSpec(preset="deepseek-v2-lite")
    attn = MLAttention(spec)
    assert attn.q_a is None and attn.q_b.in_features == 2048 and attn.q_b.out_features == 16 * 192
    assert attn.kv_a.out_features == 512 + 64 and attn.kv_b.out_features == 16 * (128 + 128)


def test_the_absorbed_decode_computes_the_decompressed_attention() -> None:
    """A prompt prefilled into the latent cache, then one token decoded in the absorbed form (W^UK into the
    query, W^UV after the sum), gives the logits a full decompressed forward over prompt + token gives."""
    torch.manual_seed(0)
    spec = ModelSpec(**SMALL)
    model = build_model(spec, tie_embeddings=False, max_positions=32).double().eval()
    ids = torch.randint(0, spec.vocab, (2, 9))
    with torch.no_grad():
        full = model(ids)[:, -1]
        cache = model.new_cache(2, 16, torch.float64, "cpu")
        model(ids[:, :8], cache=cache, start=0, head="last")
        decoded = model(ids[:, 8:], cache=cache, start=8, head="last")[:, -1]
    assert cache[0].k.shape == (2, 1, 16, 32) and cache[0].v.shape == (2, 1, 16, 8)
    torch.testing.assert_close(decoded, full, rtol=1e-9, atol=1e-9)


def test_the_traced_cache_is_the_latent_and_decode_attends_in_the_absorbed_form() -> None:
    """KV bytes = batch x cache length x layers x (kv_lora + rope) x dtype bytes (DeepSeek-V2 Table 1), not
    2 x heads x head_dim; prefill attention FLOPs per head and (query, key) pair 2 (nope + rope) + 2 v (the
    math SDPA counts the whole square); each decode step's 2 (kv_lora + rope) + 2 kv_lora per cached key."""
    spec = ModelSpec(**SMALL)
    b, s, n = 2, spec.seq_len, 5                       # n decode steps traced at the first and last position
    w = Workload(model=spec, mode="decode", batch=b, decode_tokens=n + 1, dtype="bfloat16")
    profile = _trace(w, SharingChoice(tie_embeddings=False))
    cache_len = s + n + 1
    assert profile.kv_cache_bytes == b * cache_len * spec.layers * (32 + 8) * 2
    heads, layers = spec.heads, spec.layers
    prefill = profile.ops[("prefill", "layers", "attention")].flops
    assert prefill == b * heads * s * s * (2 * (16 + 8) + 2 * 12) * layers
    decode = profile.ops[("decode", "layers", "attention")].flops
    keys = sum(s + 1 + i for i in range(n))            # step i attends the prompt and i + 1 new tokens
    assert decode == pytest.approx(b * heads * keys * (2 * (32 + 8) + 2 * 32) * layers)
    # the absorbed projections are GEMMs: q_nope W^UK and the latent W^UV cost what kv_b costs per token
    mm = profile.ops[("decode", "layers", "matmul")].flops / (n * b * layers)
    weights = 96 * 48 + 48 * 4 * 24 + 96 * 40 + 32 * 4 * (16 + 12) + 4 * 12 * 96 + 3 * 96 * spec.ffn_hidden
    assert mm == pytest.approx(2 * weights)
