"""FP8 attention (workload.fp8.attention / fp4.attention: float8): Transformer Engine's FP8 dot-product attention
priced at the FP8 peak times the FP8 kernel's measured share of it, its casts as memory passes, its q, k, v (and
under delayed scaling O) kept in FP8 (costmodel.precision, costmodel.compute, costmodel.activations)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmsim.config import ModelSpec, SharingChoice, Workload, parse_scenario
from llmsim.costmodel import Options, Plan
from llmsim.costmodel import precision
from llmsim.costmodel.compute import device_rates, phase_times
from llmsim.costmodel.memory import memory_breakdown
from llmsim.errors import ScenarioError
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload

SPEC = dict(layers=2, hidden=1024, heads=16, kv_heads=4, ffn_hidden=4096, vocab=32000, seq_len=1024,
            activation="swiglu", norm="rmsnorm", positions="rotary", bias=False)
SHARING = SharingChoice(tie_embeddings=False)
CATALOG = load_catalog()
PLAN = Plan(micro_batch=2, microbatches=1)


def _w(dtype: str = "float8", attention: str = "bfloat16", recipe: str | None = None) -> Workload:
    block = {"attention": attention} | ({"recipe": recipe} if recipe else {})
    extra = {"fp8": block} if dtype == "float8" else {"fp4": block}
    return Workload(model=ModelSpec(**SPEC), mode="train", batch=2, dtype=dtype, **extra)


def _times(w: Workload, hardware: str, phase: str, kernel: str = "cudnn"):
    cluster = CATALOG.cluster(hardware, nodes=1, devices_per_node=1)
    rates = device_rates(cluster, w.dtype)
    return phase_times(profile_workload(w, SHARING), w, PLAN, Options(attention=kernel), rates, phase, "layers",
                       1)


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_fp8_attention_runs_at_the_fp8_peak_times_cudnns_measured_fp8_share(phase: str) -> None:
    """By hand: cuDNN forward on H100, head dim 128, seq 8k, no causal mask (FlashAttention-3 paper): FP8 971 of
    1978.9 TFLOP/s, BF16 600 of 989.4. FP8 attention takes the kernel's 16-bit fraction times (971/1978.9) /
    (600/989.4) of the FP8 peak: the time scales by 989.4 / (1978.9 x that ratio) = 0.618 (1.62x faster)."""
    bf, f8 = _times(_w(), "h100-sxm", phase), _times(_w(attention="float8"), "h100-sxm", phase)
    ratio = (971 / 1978.9) / (600 / 989.4)
    expected = (989.4e12 / (1978.9e12 * ratio))
    assert f8.attention / bf.attention == pytest.approx(expected, rel=1e-3)
    assert f8.attention / bf.attention == pytest.approx(0.618, abs=1e-3)
    assert f8.matmul == bf.matmul                     # the layer GEMMs are untouched


def test_fp8_attention_casts_are_memory_passes_by_hand() -> None:
    """Forward: Q, K, V quantized (read 2, write 1 byte; current scaling reads once more for its amax) and,
    under delayed scaling, the FP8 output dequantized (read 1, write 2). Backward: dO quantized."""
    tokens = PLAN.micro_batch * SPEC["seq_len"]
    q, kv, o = 16 * 64, 2 * 4 * 64, 16 * 64
    rates = device_rates(CATALOG.cluster("h100-sxm", nodes=1, devices_per_node=1), "float8")
    per = rates.memory_bw * rates.efficiency.memory
    delayed = (q + kv) * 3 + o * 3
    assert precision.attention_cast_bytes(_w(attention="float8"), PLAN, "forward", tokens) == tokens * delayed
    fwd = _times(_w(attention="float8"), "h100-sxm", "forward").other - _times(_w(), "h100-sxm", "forward").other
    assert fwd == pytest.approx(tokens * delayed / per * SPEC["layers"], rel=1e-9)
    current = (q + kv) * 5                             # + the amax read; O stays 16-bit (NVTE_DPA_FP8CS_O_in_F16)
    assert precision.attention_cast_bytes(_w(attention="float8", recipe="current"), PLAN, "forward",
                                          tokens) == tokens * current
    assert precision.attention_cast_bytes(_w(attention="float8"), PLAN, "backward", tokens) == tokens * o * 3
    assert precision.attention_cast_bytes(_w(), PLAN, "forward", tokens) == 0.0


@pytest.mark.parametrize("recipe, o_bytes", [("delayed", 1), ("current", 2)])
def test_fp8_attention_keeps_q_k_v_and_under_delayed_scaling_o_in_fp8(recipe: str, o_bytes: int) -> None:
    """TE's FusedAttnFunc saves q_fp8, k_fp8, v_fp8 and out_fp8 (delayed) or the 16-bit out (current): per token
    and layer, q (16 x 64) + k, v (2 x 4 x 64) shrink from 2 bytes to 1, O (16 x 64) to o_bytes."""
    mem = {a: memory_breakdown(w, profile_workload(w, SHARING), SHARING, PLAN, Options(attention="cudnn"),
                               device=CATALOG.devices["h100-sxm"]).activations
           for a, w in (("bf", _w(recipe=recipe)), ("f8", _w(attention="float8", recipe=recipe)))}
    tokens = PLAN.micro_batch * SPEC["seq_len"]
    saved = tokens * SPEC["layers"] * ((16 * 64 + 2 * 4 * 64) * (2 - 1) + 16 * 64 * (2 - o_bytes))
    assert mem["bf"] - mem["f8"] == pytest.approx(saved, rel=1e-9)


def test_fp4_workloads_take_fp8_attention_under_current_scaling_on_blackwell() -> None:
    bf, f8 = _times(_w("float4"), "gb200", "forward", "flash"), _times(_w("float4", "float8"), "gb200", "forward",
                                                                        "flash")
    ratio = (971 / 1978.9) / (600 / 989.4)
    gb200 = CATALOG.devices["gb200"].peak_flops
    assert f8.attention / bf.attention == pytest.approx(gb200["bfloat16"] / (gb200["float8"] * ratio), rel=1e-3)
    assert precision.attention_recipe(_w("float4", "float8")) == "current"
    assert precision.fp8_attention_saved_bytes(_w("float4", "float8")) == (1.0, 2.0)


def test_attention_float8_needs_a_quantized_workload_and_names_its_allowed_values() -> None:
    with pytest.raises(ValidationError, match="fp8 needs dtype: float8"):
        Workload(model=ModelSpec(**SPEC), dtype="bfloat16", fp8={"attention": "float8"})
    with pytest.raises(ValidationError, match="fp4 needs dtype: float4"):
        Workload(model=ModelSpec(**SPEC), dtype="bfloat16", fp4={"attention": "float8"})
    base = {"name": "x", "workload": {"model": {"preset": "tiny"}, "dtype": "float8",
                                      "fp8": {"attention": "float16"}}}
    with pytest.raises(ScenarioError, match=r"workload.fp8.attention: 'float16' is not one of the allowed values "
                                            r"\(allowed: bfloat16, float8\)"):
        parse_scenario(base)


def test_attention_float8_is_refused_in_inference_and_on_a_device_without_fp8() -> None:
    base = {"name": "x", "workload": {"model": {"preset": "tiny"}, "mode": "decode", "dtype": "float8",
                                      "fp8": {"attention": "float8"}}}
    with pytest.raises(ScenarioError, match="workload.fp8.attention: .*training only.*allowed here: bfloat16"):
        parse_scenario(base)
    assert parse_scenario({**base, "workload": {**base["workload"], "mode": "train"}}).workload.fp8.attention \
        == "float8"
    problem = precision.device_problem(_w(attention="float8"), CATALOG.devices["a100-80gb"])
    assert problem is not None and "no FP8 tensor cores" in problem
