"""dtype float4 (fp4: nvfp4 | mxfp4): FP4 weights at their bits, W4A4 GEMMs at the float4 peak on Blackwell,
weight-only elsewhere in inference, NVFP4 training's two FP4 copies (costmodel.precision, costmodel.compute)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmsim.config import ModelSpec, SharingChoice, Workload, parse_scenario
from llmsim.costmodel import Options, Plan, estimate
from llmsim.costmodel import precision
from llmsim.costmodel.compute import device_rates, gemm_weight_bytes
from llmsim.costmodel.memory import memory_breakdown
from llmsim.costmodel.moe import expert_weight_elem
from llmsim.errors import ScenarioError
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload

SPEC = dict(layers=2, hidden=1024, heads=16, ffn_hidden=4096, vocab=32000, seq_len=1024, activation="swiglu",
            norm="rmsnorm", positions="rotary", bias=False)
SHARING = SharingChoice(tie_embeddings=False)
CATALOG = load_catalog()
ONE = Plan(micro_batch=1, microbatches=1)


def _w(dtype: str, mode: str = "decode", **extra) -> Workload:
    more = {"decode_tokens": 8} if mode == "decode" else {}
    return Workload(model=ModelSpec(**SPEC), mode=mode, batch=8, dtype=dtype, **more, **extra)


def _price(w: Workload, hardware: str, plan: Plan = ONE):
    cluster = CATALOG.cluster(hardware, nodes=1, devices_per_node=plan.world)
    return estimate(w, profile_workload(w, SHARING), SHARING, plan, cluster, Options())


def test_fp4_needs_dtype_float4_and_defaults_to_nvfp4() -> None:
    with pytest.raises(ValidationError, match="fp4 needs dtype: float4"):
        Workload(model=ModelSpec(**SPEC), dtype="float8", fp4={"recipe": "nvfp4"})
    assert Workload(model=ModelSpec(**SPEC), dtype="float4").fp4.recipe == "nvfp4"
    with pytest.raises(ValidationError):
        Workload(model=ModelSpec(**SPEC), dtype="float4", fp4={"recipe": "fp4"})


def test_fp4_element_sizes_from_the_formats() -> None:
    # NVFP4: 4-bit E2M1 + an E4M3 byte per 16 = 4.5 bits; MXFP4: + an E8M0 byte per 32 = 4.25 bits
    assert precision.FP4_BYTES["nvfp4"] * 8 == 4.5
    assert precision.FP4_BYTES["mxfp4"] * 8 == 4.25


@pytest.mark.parametrize("recipe, bits", [("nvfp4", 4.5), ("mxfp4", 4.25)])
def test_float4_layer_weights_are_read_at_the_formats_bits(recipe: str, bits: float) -> None:
    bf16 = gemm_weight_bytes(_w("bfloat16"), ONE, "layers")
    fp4 = gemm_weight_bytes(_w("float4", fp4={"recipe": recipe}), ONE, "layers")
    assert fp4 == pytest.approx(bf16 * bits / 16)
    # the LM head stays 16-bit (the FP4 checkpoints exclude lm_head)
    assert gemm_weight_bytes(_w("float4"), ONE, "head") == gemm_weight_bytes(_w("bfloat16"), ONE, "head")


def test_float4_gemms_run_at_the_float4_peak_on_b200_and_weight_only_on_h100() -> None:
    b200 = device_rates(CATALOG.cluster("b200", nodes=1, devices_per_node=1), "float4")
    assert b200.gemm is not None and b200.gemm.peak_flops == CATALOG.devices["b200"].peak_flops["float4"]
    assert b200.peak_flops == CATALOG.devices["b200"].peak_flops["bfloat16"]   # the rest of the step: bf16
    h100 = device_rates(CATALOG.cluster("h100-sxm", nodes=1, devices_per_node=1), "float4")
    assert h100.gemm is None and h100.peak_flops == CATALOG.devices["h100-sxm"].peak_flops["bfloat16"]
    w = _w("float4")
    assert precision.weight_only_note(w, CATALOG.devices["b200"]) is None
    note = precision.weight_only_note(w, CATALOG.devices["h100-sxm"])
    assert note is not None and "weight-only" in note and "4.5 bits" in note


def test_float4_prefill_is_faster_than_float8_on_b200_and_at_the_16_bit_rate_on_h100() -> None:
    big = dict(mode="prefill")
    b = {d: _price(_w(d, **big), "b200") for d in ("bfloat16", "float8", "float4")}
    assert b["float4"].compute_time_s < b["float8"].compute_time_s < b["bfloat16"].compute_time_s
    h = {d: _price(_w(d, **big), "h100-sxm") for d in ("bfloat16", "float4")}
    # weight-only: the same 16-bit GEMM FLOP rate, fewer weight bytes, no activation casts: never slower than bf16
    # and far from the W4A4 speed-up
    assert h["float4"].compute_time_s <= h["bfloat16"].compute_time_s
    assert h["float4"].compute_time_s > 0.5 * h["bfloat16"].compute_time_s


def test_float4_decode_reads_fewer_bytes_everywhere() -> None:
    for hw in ("b200", "h100-sxm"):
        assert _price(_w("float4"), hw).step_time_s < _price(_w("bfloat16"), hw).step_time_s


def test_float4_inference_stores_the_layer_weights_at_4_5_bits() -> None:
    w4, wb = _w("float4"), _w("bfloat16")
    mem4 = memory_breakdown(w4, profile_workload(w4, SHARING), SHARING, ONE, Options())
    memb = memory_breakdown(wb, profile_workload(wb, SHARING), SHARING, ONE, Options())
    gemm = SPEC["layers"] * precision.layer_gemm_params(w4, ONE)
    assert mem4.params == pytest.approx(memb.params - gemm * (2 - 4.5 / 8))


def test_nvfp4_training_keeps_two_fp4_copies_and_fp4_inputs() -> None:
    plan = Plan(micro_batch=4, microbatches=2)
    w4, w8, wb = _w("float4", mode="train"), _w("float8", mode="train", fp8={"recipe": "mxfp8"}), _w("bfloat16", mode="train")
    b200 = CATALOG.devices["b200"]
    mem = {k: memory_breakdown(w, profile_workload(w, SHARING), SHARING, plan, Options(), device=b200)
           for k, w in (("fp4", w4), ("fp8", w8), ("bf", wb))}
    gemm = SPEC["layers"] * precision.layer_gemm_params(w4, plan)
    # row-wise and column-wise NVFP4 copies of every layer GEMM weight (TE NVFP4BlockScaling), beside bf16
    assert mem["fp4"].params == pytest.approx(mem["bf"].params + 2 * gemm * 4.5 / 8)
    # the saved GEMM inputs at 4.5 bits: below FP8's 1 byte
    assert mem["fp4"].activations < mem["fp8"].activations < mem["bf"].activations
    assert precision.copies(w4, any_layout=True) == 2
    # a cast: read bf16, read it again for the per-tensor amax, write two 4.5-bit copies
    assert precision.cast_bytes_per_element(w4, True) == pytest.approx(2 + 2 + 2 * 4.5 / 8)
    assert precision.saved_input_bytes(w4) == pytest.approx(4.5 / 8)
    trained = _price(w4, "b200", plan)
    assert trained.step_time_s < _price(w8, "b200", plan).step_time_s


def test_float4_training_needs_fp4_tensor_cores_and_nvfp4() -> None:
    w = _w("float4", mode="train")
    assert precision.device_problem(w, CATALOG.devices["h100-sxm"]) is not None
    assert precision.device_problem(w, CATALOG.devices["gb200"]) is None
    assert precision.device_problem(_w("float4"), CATALOG.devices["h100-sxm"]) is None     # inference: weight-only
    assert precision.device_problem(w, CATALOG.devices["h100-sxm"], serving=True) is None  # served: inference
    base = {"name": "x", "workload": {"model": {"preset": "tiny"}, "dtype": "float4", "fp4": {"recipe": "mxfp4"}}}
    with pytest.raises(ScenarioError, match="workload.fp4.recipe: .*allowed in training: nvfp4"):
        parse_scenario(base)
    decode = {**base, "workload": {**base["workload"], "mode": "decode"}}
    assert parse_scenario(decode).workload.fp4.recipe == "mxfp4"


def test_float4_serving_stores_the_experts_in_fp4() -> None:
    moe = dict(SPEC, moe={"experts": 8, "top_k": 2})
    w = Workload(model=ModelSpec(**moe), mode="decode", batch=8, decode_tokens=8, dtype="float4")
    assert expert_weight_elem(w) == pytest.approx(4.5 / 8)
    assert expert_weight_elem(w.model_copy(update={"mode": "train"})) == 2


def test_nvfp4_needs_nvfp4_units_and_mxfp4_runs_on_any_float4_peak() -> None:
    """MI355X (CDNA4) has a float4 peak for OCP MX scales (E8M0 per 32) only: mxfp4 runs there at the float4 peak,
    nvfp4 (E4M3 per 16) weight-only with a note saying why; Blackwell runs both; training nvfp4 is refused there."""
    mi355x, b200 = CATALOG.device("mi355x"), CATALOG.device("b200")
    nv, mx = _w("float4"), _w("float4", fp4={"recipe": "mxfp4"})
    assert precision.has_fp4_units(b200, "nvfp4") and precision.has_fp4_units(b200, "mxfp4")
    assert precision.has_fp4_units(mi355x, "mxfp4") and not precision.has_fp4_units(mi355x, "nvfp4")
    assert precision.weight_only(nv, mi355x) and not precision.weight_only(mx, mi355x)
    assert "OCP MX scales only" in (precision.weight_only_note(nv, mi355x) or "")
    cluster = CATALOG.cluster("mi355x", nodes=1, devices_per_node=1)
    assert device_rates(cluster, "float4", "mxfp4").gemm.peak_flops == mi355x.peak_flops["float4"]
    assert device_rates(cluster, "float4", "nvfp4").gemm is None   # the 16-bit ceilings: weight-only
    assert _price(nv, "mi355x").step_time_s > _price(mx, "mi355x").step_time_s
    train = _w("float4", mode="train")
    assert "takes OCP MX scales only" in (precision.device_problem(train, mi355x) or "")
    assert precision.device_problem(train, b200) is None
    assert "mi355x" not in precision.capable_devices(train, CATALOG.devices.values())


# ---------------------------------------------------------------------------------------------------
# fp4.layers: mlp — the attention projections kept 16-bit (nvidia/DeepSeek-R1-FP4 as TensorRT-LLM runs it)
# ---------------------------------------------------------------------------------------------------

def _mlp(mode: str = "decode") -> Workload:
    return _w("float4", mode=mode, fp4={"layers": "mlp"})


def test_fp4_layers_mlp_keeps_the_attention_projections_16_bit_in_weights_and_casts() -> None:
    # SPEC: hidden 1024, 16 heads (multi-head: QKV 1024 -> 3072), attention out 1024 -> 1024, gated MLP 1024 ->
    # 8192 and 4096 -> 1024: attention 4 M weights of 16 M
    attention, mlp = 1024 * 3072 + 1024 * 1024, 1024 * 8192 + 4096 * 1024
    w = _mlp()
    assert precision.layer_gemm_split(w, ONE) == (mlp, attention)
    assert precision.kept_16bit_share(w, ONE) == pytest.approx(attention / (attention + mlp))
    assert precision.kept_16bit_share(_w("float4"), ONE) == 0.0
    assert gemm_weight_bytes(w, ONE, "layers") == pytest.approx(mlp * 4.5 / 8 + attention * 2)
    # only the MLP GEMMs' inputs are cast to FP4 (up's fused into the norm, down's into the activation)
    fused = precision.fused_cast_bytes_per_element(w, False)
    assert precision.activation_cast_bytes(w, ONE, "prefill", 10, False) == pytest.approx(10 * (1024 + 4096) * fused)
    # and stored so: the attention projections at 2 bytes, the MLP at 4.5 bits
    mem_mlp = memory_breakdown(w, profile_workload(w, SHARING), SHARING, ONE, Options())
    w_all = _w("float4")
    mem_all = memory_breakdown(w_all, profile_workload(w_all, SHARING), SHARING, ONE, Options())
    assert mem_mlp.params - mem_all.params == pytest.approx(SPEC["layers"] * attention * (2 - 4.5 / 8))


def test_fp4_layers_mlp_runs_the_attention_projections_at_the_16_bit_rate() -> None:
    """On B200's FP4 tensor cores a prefill of fp4.layers mlp sits between all-FP4 and bf16; on H100 (weight-only,
    every GEMM at the 16-bit rate) only the attention weights' bytes differ."""
    big = dict(mode="prefill")
    b = {k: _price(w, "b200") for k, w in (("all", _w("float4", **big)), ("mlp", _mlp("prefill")),
                                              ("bf16", _w("bfloat16", **big)))}
    assert b["all"].compute_time_s < b["mlp"].compute_time_s < b["bf16"].compute_time_s
    h_all, h_mlp = _price(_w("float4"), "h100-sxm"), _price(_mlp(), "h100-sxm")
    assert h_mlp.step_time_s > h_all.step_time_s       # decode reads the 16-bit attention weights


def test_fp4_layers_is_checked_and_mlp_is_priced_for_inference_only() -> None:
    with pytest.raises(ValidationError, match="'all' or 'mlp'"):
        Workload(model=ModelSpec(**SPEC), dtype="float4", fp4={"layers": "attention"})
    data = {"name": "t", "workload": {"model": {"preset": "tiny"}, "dtype": "float4", "fp4": {"layers": "mlp"}},
            "strategies": [{"tp": 1}], "backends": {"roofline": {"hardware": "b200"}}}
    with pytest.raises(ScenarioError, match="workload.fp4.layers: mlp .* allowed in training: all"):
        parse_scenario(data, "t.yaml")
    data["workload"]["mode"] = "prefill"
    assert parse_scenario(data, "t.yaml").workload.fp4.layers == "mlp"
