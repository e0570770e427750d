"""A float8 KV cache (serving.kv_cache_dtype, costmodel.kv_dtype): half the bytes per cached token, so twice the
tokens in the memory model's leftover and half the K and V a decode step reads; FP8 attention math only on
FlashAttention-3 over a device with FP8 units; nothing changes with `auto`."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan
from llmsim.costmodel import kv_dtype
from llmsim.costmodel.iteration import IterationModel, Mix, iteration_time, kv_capacity, token_costs
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG, a100_cluster

UNTIED = SharingChoice(tie_embeddings=False)


def _llama(seq_len: int = 128, layers: int = 32, dtype: str = "bfloat16") -> Workload:
    return Workload(model=ModelSpec(preset="llama3-8b", layers=layers, seq_len=seq_len), mode="decode", batch=1,
                    decode_tokens=3, dtype=dtype)


def _on(device: str):
    return replace(a100_cluster(1, 1), device=CATALOG.device(device))


def test_bytes_per_element_follow_the_cache_type_not_the_weights() -> None:
    """float8: 1 byte; auto: the traced element (bf16 for a float8 workload, whose cache stays 16-bit)."""
    assert kv_dtype.kv_element_bytes("bfloat16", "float8") == 1
    assert kv_dtype.kv_element_bytes("bfloat16", "auto") == 2
    assert kv_dtype.kv_element_bytes("float8", "auto") == 2
    assert kv_dtype.kv_element_bytes("float32", "auto") == 4
    assert kv_dtype.kv_bytes_scale("bfloat16", "float8") == 0.5
    assert kv_dtype.kv_bytes_scale("float32", "float8") == 0.25
    assert kv_dtype.kv_bytes_scale("float8", "auto") == 1.0


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2), (16, 1)])
def test_a_float8_cache_holds_twice_the_tokens_of_the_memory_models_leftover(tp: int, pp: int) -> None:
    """Same leftover (weights and workspace do not change), half the bytes per token: blocks =
    floor(leftover / (bytes per token / 2 x block)), i.e. 2x the bf16 blocks or 2x + 1."""
    w = _llama()
    profile = profile_workload(w, UNTIED)
    cluster = _on("h100-sxm")
    plan = Plan(tp=tp, pp=pp)
    bf16 = kv_capacity(w, profile, UNTIED, plan, cluster, token_costs(w, profile), 0.9, 16, 8192, 256)
    fp8 = kv_capacity(w, profile, UNTIED, plan, cluster, token_costs(w, profile, "float8"), 0.9, 16, 8192, 256)
    assert fp8.kv_bytes == bf16.kv_bytes and fp8.weights_bytes == bf16.weights_bytes
    assert fp8.bytes_per_token == bf16.bytes_per_token / 2
    assert fp8.bytes_per_token == 2 * 32 // pp * 8 // min(tp, 8) * 128 * 1   # K and V, its layers and heads, 1 byte
    assert fp8.blocks == math.floor(bf16.kv_bytes / (bf16.bytes_per_token / 2 * 16))
    assert fp8.blocks in (2 * bf16.blocks, 2 * bf16.blocks + 1)


def test_a_decode_step_reads_half_the_cached_bytes() -> None:
    """A memory-bound decode step's attention: keys x bytes per key; the float8 step's extra time over a
    1-key step is half the bf16 one's (the weights and everything else are the same bytes)."""
    w = _llama()
    profile = profile_workload(w, UNTIED)
    cluster = _on("a100-80gb")                 # no FP8 units: dequantized in the kernel, the math stays 16-bit
    bf16 = IterationModel(token_costs(w, profile), w, Plan(), cluster)
    fp8 = IterationModel(token_costs(w, profile, "float8"), w, Plan(), cluster)
    assert fp8.costs.kv_bytes_per_token == bf16.costs.kv_bytes_per_token / 2
    assert fp8.attention_rate_scale == 1.0
    long, short = Mix.decode(100_001), Mix.decode(1)
    extra_bf16 = iteration_time(bf16, long) - iteration_time(bf16, short)
    extra_fp8 = iteration_time(fp8, long) - iteration_time(fp8, short)
    assert extra_fp8 == pytest.approx(extra_bf16 / 2, rel=1e-9)
    assert iteration_time(fp8, short) < iteration_time(bf16, short)        # its one key: half the bytes too


def test_fp8_attention_math_runs_only_on_flashattention3_over_fp8_units() -> None:
    """A prompt chunk's attention (compute-bound) on an H100: FlashAttention-3 with a float8 cache at the FA3
    paper's FP8 / FP16 rate (1.2 PFLOP/s / 740 TFLOP/s); FlashAttention-2 with the same cache dequantizes and
    prices the chunk as bf16 does (its prefix reads are the only bytes, none here)."""
    assert kv_dtype.FA3_FP8_SPEEDUP == pytest.approx(1.2e15 / 740e12)
    w = _llama(seq_len=8192, layers=4)
    profile = profile_workload(w, UNTIED)
    h100 = _on("h100-sxm")

    def model(kind: str, kernel: str) -> IterationModel:
        return IterationModel(token_costs(w, profile, kind), w, Plan(), h100, Options(attention=kernel))

    chunk = Mix.prefill(8192)
    assert model("float8", "flash3").attention_rate_scale == pytest.approx(kv_dtype.FA3_FP8_SPEEDUP)
    assert model("float8", "flash").attention_rate_scale == 1.0
    assert model("auto", "flash3").attention_rate_scale == 1.0
    assert iteration_time(model("float8", "flash3"), chunk) < iteration_time(model("auto", "flash3"), chunk)
    assert iteration_time(model("float8", "flash"), chunk) == pytest.approx(
        iteration_time(model("auto", "flash"), chunk), rel=1e-12)
    assert not kv_dtype.fp8_attention_math("float8", "flash3", has_fp8_units=False)


def test_auto_prices_exactly_as_before_the_key() -> None:
    """token_costs without the argument and with "auto" give the same costs, the same iteration times."""
    w = _llama(layers=4)
    profile = profile_workload(w, UNTIED)
    assert token_costs(w, profile) == token_costs(w, profile, "auto")
    h100 = _on("h100-sxm")
    a = IterationModel(token_costs(w, profile), w, Plan(), h100, Options(attention="flash3"))
    b = IterationModel(token_costs(w, profile, "auto"), w, Plan(), h100, Options(attention="flash3"))
    mix = Mix.prefill(512, 100) + Mix.decode(300)
    assert iteration_time(a, mix) == iteration_time(b, mix)


def test_a_float8_workloads_cache_stays_16_bit_unless_asked() -> None:
    """dtype float8 (FP8 weights): auto keeps the bf16 cache; float8 halves it."""
    w = _llama(layers=4, dtype="float8")
    ref = _llama(layers=4)
    profile, ref_profile = profile_workload(w, UNTIED), profile_workload(ref, UNTIED)
    assert token_costs(w, profile).kv_bytes_per_token == token_costs(ref, ref_profile).kv_bytes_per_token
    assert token_costs(w, profile, "float8").kv_bytes_per_token == token_costs(w, profile).kv_bytes_per_token / 2
