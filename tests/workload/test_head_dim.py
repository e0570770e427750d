"""A head width stated apart from hidden/heads (issue 14, item 3), and Qwen3's per-head q/k RMSNorm.

Qwen3-4B (Hugging Face Qwen/Qwen3-4B config.json): 36 layers, hidden 2560, 32 query / 8 KV heads of 128
(32 x 128 = 4096 != 2560), FFN 9728, vocabulary 151,936, tied, RMSNorm, SwiGLU, rotary, no bias.
"""

from __future__ import annotations

import pytest
import torch

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.workload.model import build_model, count_parameters
from llmsim.workload.profile import profile_workload

KV_BYTES_PER_TOKEN = 2 * 36 * 8 * 128 * 2    # K and V, layers, KV heads, head_dim, bf16 = 147,456


def _meta(spec: ModelSpec) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(spec, tie_embeddings=spec.tie_embeddings)


def test_qwen3_4b_projections_have_the_stated_head_width() -> None:
    spec = ModelSpec(preset="qwen3-4b")
    assert spec.head_dim == 128 and spec.attention_width == 4096
    attn = _meta(spec).blocks[0].attn
    assert tuple(attn.qkv.weight.shape) == ((32 + 2 * 8) * 128, 2560)
    assert tuple(attn.out.weight.shape) == (2560, 4096)
    assert tuple(attn.q_norm.weight.shape) == tuple(attn.k_norm.weight.shape) == (128,)


def test_qwen3_4b_parameters_with_and_without_qk_norm() -> None:
    """4,022,468,096 published; the 2 x 128 q/k norm weights of each of 36 layers are part of it."""
    h, hd, layers = 2560, 128, 36
    per_layer = h * 32 * hd + 2 * h * 8 * hd + 32 * hd * h + 3 * h * 9728 + 2 * h + 2 * hd
    assert layers * per_layer + 151936 * h + h == 4_022_468_096
    assert count_parameters(_meta(ModelSpec(preset="qwen3-4b")))[0] == 4_022_468_096
    assert count_parameters(_meta(ModelSpec(preset="qwen3-4b", qk_norm=False)))[0] == 4_022_468_096 - 36 * 2 * 128


def test_qwen3_4b_kv_cache_is_147456_bytes_per_token() -> None:
    """2 x 36 x 8 x 128 x 2 B = 147,456 B per token: 603,979,776 B for 4096 tokens (not hidden/heads = 80)."""
    assert KV_BYTES_PER_TOKEN == 147_456
    cache = _meta(ModelSpec(preset="qwen3-4b")).new_cache(1, 4096, torch.bfloat16, "meta")
    assert sum(c.k.numel() + c.v.numel() for c in cache) * 2 == 603_979_776
    w = Workload(model=ModelSpec(preset="qwen3-4b", seq_len=60), mode="decode", batch=2, decode_tokens=4)
    profile = profile_workload(w, SharingChoice(True))
    assert profile.kv_cache_bytes == 2 * 64 * KV_BYTES_PER_TOKEN
    assert profile.params == 4_022_468_096


def test_qwen3_runs_forward_and_decode_on_cpu() -> None:
    """A small Qwen3-shaped model (head_dim 16 with hidden 48 and 4 heads, q/k norm) runs for real."""
    spec = ModelSpec(preset="qwen3-4b", layers=2, hidden=48, heads=4, kv_heads=2, head_dim=16, ffn_hidden=64,
                     vocab=100, seq_len=8)
    model = build_model(spec, tie_embeddings=True).eval()
    idx = torch.randint(0, 100, (2, 8))
    with torch.inference_mode():
        full = model(idx)
        cache = model.new_cache(2, 8, torch.float32, "cpu")
        model(idx[:, :7], cache, 0)
        step = model(idx[:, 7:], cache, 7)
    assert full.shape == (2, 8, 100)
    torch.testing.assert_close(step[:, 0], full[:, 7], rtol=1e-4, atol=1e-4)


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    assert ModelSpec(preset="llama3-8b").head_dim == 128
    assert ModelSpec(preset="gpt2-small").head_dim == 64
    with pytest.raises(ValueError, match="hidden=100 must be divisible by heads=3 \\(allowed heads: 1, 2, 4, 5, 10, "
                                         "20, 25, 50, 100; or state head_dim\\)"):
        ModelSpec(layers=1, hidden=100, heads=3, vocab=10, seq_len=4)
    assert ModelSpec(layers=1, hidden=100, heads=3, head_dim=32, vocab=10, seq_len=4).attention_width == 96


def test_gemma_7b_heads_of_256_and_a_geglu_mlp() -> None:
    """Gemma 7B: 16 heads of 256 with d_model 3072; GeGLU (tanh-GELU gate, Shazeer 2020) of 24576."""
    spec = ModelSpec(preset="gemma-7b")
    assert spec.head_dim == 256 and spec.attention_width == 4096
    per_layer = 4 * 3072 * 4096 + 3 * 3072 * 24576 + 2 * 3072
    assert 28 * per_layer + 3072 == 7_751_248_896                       # Gemma Team 2024, Table 2
    assert count_parameters(_meta(spec))[0] == 7_751_248_896 + 256000 * 3072
    small = ModelSpec(preset="gemma-7b", layers=1, hidden=8, heads=2, kv_heads=2, head_dim=4, ffn_hidden=6,
                      vocab=10, seq_len=4)
    mlp = build_model(small, tie_embeddings=True).blocks[0].mlp
    x = torch.randn(3, 8)
    gate, up = mlp.fc(x).chunk(2, dim=-1)
    torch.testing.assert_close(mlp(x), mlp.proj(torch.nn.functional.gelu(gate, approximate="tanh") * up))
