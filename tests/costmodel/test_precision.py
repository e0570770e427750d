"""dtype float8: GEMMs at the FP8 peak, the recipe's casts, FP8 weight copies and activations, FP8 all-gather."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import CostModelError, Options, Plan, estimate
from llmsim.costmodel import precision
from llmsim.costmodel.memory import memory_breakdown
from llmsim.costmodel.work import train_work
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload

SPEC = dict(layers=2, hidden=1024, heads=16, ffn_hidden=4096, vocab=32000, seq_len=1024, activation="swiglu",
            norm="rmsnorm", positions="rotary", bias=False)
SHARING = SharingChoice(tie_embeddings=False)
HOPPER = False  # any_layout (DeviceSpec.fp8_gemm_any_layout) of H100: FP8 GEMMs in the TN layout only


def _price(dtype: str, fp8: dict | None = None, hardware: str = "h100-sxm", mode: str = "train",
           plan: Plan = Plan(micro_batch=4, microbatches=2)):
    extra = {"decode_tokens": 8} if mode == "decode" else {}
    w = Workload(model=ModelSpec(**SPEC), mode=mode, batch=8, dtype=dtype, fp8=fp8, **extra)
    cluster = load_catalog().cluster(hardware, nodes=1, devices_per_node=plan.world)
    return w, estimate(w, profile_workload(w, SHARING), SHARING, plan, cluster, Options())


def test_fp8_needs_dtype_float8_and_defaults_to_delayed() -> None:
    with pytest.raises(ValidationError, match="fp8 needs dtype: float8"):
        Workload(model=ModelSpec(**SPEC), dtype="bfloat16", fp8={"recipe": "current"})
    assert Workload(model=ModelSpec(**SPEC), dtype="float8").fp8.recipe == "delayed"


def test_a_device_without_fp8_units_cannot_price_float8() -> None:
    with pytest.raises(CostModelError, match="no float8 peak"):
        _price("float8", hardware="a100-80gb")


def test_fp8_gemms_are_faster_than_bf16_and_current_scaling_costs_more_than_delayed() -> None:
    _, bf16 = _price("bfloat16")
    _, delayed = _price("float8", {"recipe": "delayed"})
    _, current = _price("float8", {"recipe": "current"})
    assert delayed.step_time_s < bf16.step_time_s
    assert current.step_time_s > delayed.step_time_s


def test_cast_bytes_by_recipe() -> None:
    w = Workload(model=ModelSpec(**SPEC), dtype="float8", fp8={"recipe": "delayed"})
    assert precision.cast_bytes_per_element(w, HOPPER) == 2 + 2 * 1          # read bf16, write row + column copies
    w = Workload(model=ModelSpec(**SPEC), dtype="float8", fp8={"recipe": "current"})
    assert precision.cast_bytes_per_element(w, HOPPER) == 2 + 2 + 2 * 1      # + the amax pass
    w = Workload(model=ModelSpec(**SPEC), dtype="float8", fp8={"recipe": "mxfp8"})
    assert precision.cast_bytes_per_element(w, HOPPER) == 2 + 2 * (1 + 1 / 32)


def test_saved_fp8_inputs_take_less_memory_than_bf16_inputs() -> None:
    plan = Plan(micro_batch=4, microbatches=2)
    te, _ = _price("float8", {"saved_activations": "float8"})
    ao, _ = _price("float8", {"saved_activations": "bfloat16"})
    bf, _ = _price("bfloat16")
    mem = {k: memory_breakdown(w, profile_workload(w, SHARING), SHARING, plan, Options())
           for k, w in (("te", te), ("ao", ao), ("bf", bf))}
    assert mem["te"].activations < mem["ao"].activations == mem["bf"].activations
    # training keeps two FP8 copies (1 byte each) of every layer GEMM weight beside the bf16 weights
    copies = 2 * SPEC["layers"] * precision.layer_gemm_params(te, plan)
    assert mem["te"].params == pytest.approx(mem["bf"].params + copies)


def test_fp8_all_gather_halves_the_gemm_weights_zero3_gathers() -> None:
    plan = Plan(dp=4, zero=3, micro_batch=1, microbatches=2)
    cluster = load_catalog().cluster("h100-sxm", nodes=1, devices_per_node=4)
    gathered = {}
    for flag in (False, True):
        w = Workload(model=ModelSpec(**SPEC), batch=8, dtype="float8", fp8={"param_all_gather": flag})
        gathered[flag] = train_work(w, profile_workload(w, SHARING), SHARING, plan, cluster).stages[0].param_bytes_layer
    gemm = precision.layer_gemm_params(w, plan)
    assert gathered[False] - gathered[True] == pytest.approx(gemm * (2 - 1))


def test_fp8_decode_reads_one_byte_weights() -> None:
    _, bf16 = _price("bfloat16", mode="decode", plan=Plan(micro_batch=1, microbatches=1))
    _, fp8 = _price("float8", mode="decode", plan=Plan(micro_batch=1, microbatches=1))
    assert fp8.step_time_s < bf16.step_time_s


def _w(**fp8) -> Workload:
    return Workload(model=ModelSpec(**SPEC), dtype="float8", fp8=fp8)


def test_te_fuses_the_casts_of_norm_and_activation_outputs() -> None:
    """Transformer Engine quantizes QKV's and MLP up's inputs in the norm (LayerNormLinear / LayerNormMLP) and
    MLP down's in the activation; only the attention output is a separate cast pass. torchao casts apart."""
    plan = Plan(micro_batch=1, microbatches=1)
    (qkv, _), (out, _), (up, _), (down, _) = precision.linear_shapes(_w(), plan)
    for recipe, fused in (("delayed", 0.0), ("mxfp8", 2 * (1 + 1 / 32) - 2), ("current", 2 + 2)):
        te = _w(recipe=recipe)
        apart = precision.cast_bytes_per_element(te, HOPPER)
        assert precision.fused_cast_bytes_per_element(te, HOPPER) == pytest.approx(fused)
        assert precision.activation_cast_bytes(te, plan, "forward", 1, HOPPER) == pytest.approx(
            out * apart + (qkv + up + down) * fused)
        ao = _w(recipe=recipe, saved_activations="bfloat16")
        assert precision.activation_cast_bytes(ao, plan, "forward", 1, HOPPER) == pytest.approx(
            (qkv + out + up + down) * apart)
    # inference writes one copy: the fused cast costs nothing beyond the norm's own (bf16) write
    infer = Workload(model=ModelSpec(**SPEC), mode="prefill", dtype="float8")
    assert precision.fused_cast_bytes_per_element(infer, HOPPER) == 0.0


def test_te_fuses_the_backward_cast_only_after_a_gelu_dact_under_delayed_or_mxfp8() -> None:
    plan = Plan(micro_batch=1, microbatches=1)
    gelu = Workload(model=ModelSpec(**{**SPEC, "activation": "gelu"}), dtype="float8")
    assert precision.fused_inputs(gelu, "backward") == (False, False, True, False)   # dbias_dgelu + quantize
    assert precision.fused_inputs(_w(), "backward") == (False,) * 4                     # swiglu: none in TE
    current = Workload(model=ModelSpec(**{**SPEC, "activation": "gelu"}), dtype="float8", fp8={"recipe": "current"})
    assert precision.fused_inputs(current, "backward") == (False,) * 4
    shapes = precision.linear_shapes(gelu, plan)
    apart = precision.cast_bytes_per_element(gelu, HOPPER)
    assert precision.activation_cast_bytes(gelu, plan, "backward", 1, HOPPER) == pytest.approx(
        sum(n for _, n in shapes) * apart - shapes[2][1] * apart)


def test_delayed_scaling_reduces_and_updates_the_amax_history_once_per_pass() -> None:
    """One blocking all-reduce of the chunk's amaxes over tp and one fused history update per micro-batch
    and pass (TE reduce_and_update_fp8_tensors): in the layer times, larger with tp; none for current."""
    w = _w()
    assert precision.delayed_amax_buffer_bytes(w, 2, "forward") == 4 * 3 * 4 * 2
    assert precision.delayed_amax_buffer_bytes(w, 2, "backward") == 4 * 2 * 4 * 2
    assert precision.amax_history_update_bytes(w, 2, "forward") == 2 * 1024 * 4 * 3 * 4 * 2
    assert precision.delayed_amax_buffer_bytes(_w(recipe="current"), 2, "forward") == 0.0
    plan = Plan(tp=2, micro_batch=1, microbatches=1)
    cluster = load_catalog().cluster("h100-sxm", nodes=1, devices_per_node=2)
    layer = {}
    for recipe in ("delayed", "current"):
        wr = _w(recipe=recipe)
        work = train_work(wr, profile_workload(wr, SHARING), SHARING, plan, cluster)
        layer[recipe] = work.stages[0].fwd_layer_s
    from llmsim.costmodel.work import Comm, Groups, _delayed_amax_time
    from llmsim.costmodel.compute import device_rates
    rates = device_rates(cluster, "float8")
    reduce = Comm("all-reduce", precision.delayed_amax_buffer_bytes(w, 2, "forward"),
                  Groups.on(plan, cluster).tp).time(cluster.fabric)
    amax = _delayed_amax_time(w, plan, Groups.on(plan, cluster), cluster, rates, 2, "forward")
    assert amax == pytest.approx(reduce + rates.efficiency.kernel_latency_s
                                 + rates.memory_time(precision.amax_history_update_bytes(w, 2, "forward")))
    assert reduce > 0


def test_current_scaling_with_sequence_parallelism_reduces_each_gathered_amax_over_tp() -> None:
    cluster = load_catalog().cluster("h100-sxm", nodes=1, devices_per_node=2)
    for recipe, sp, expected in (("current", True, 2), ("current", False, 0), ("delayed", True, 0)):
        w = _w(recipe=recipe)
        plan = Plan(tp=2, sp=sp, micro_batch=1, microbatches=1)
        work = train_work(w, profile_workload(w, SHARING), SHARING, plan, cluster)
        amax = [c for c in work.stages[0].tp_fwd if c.size == precision.AMAX_BYTES]
        assert sum(c.count for c in amax) == expected
        assert sum(c.count for c in work.stages[0].tp_bwd if c.size == precision.AMAX_BYTES) == expected


def test_blackwell_per_tensor_recipes_keep_one_fp8_copy_in_training() -> None:
    """Transformer Engine makes no transposed FP8 copy where the GPU runs non-TN FP8 GEMMs (quantizer.cpp:
    create_transpose = columnwise_usage && !nvte_is_non_tn_fp8_gemm_supported(); SM 10.x = B200/GB200):
    delayed and current scaling write and keep one copy there; MXFP8 keeps a row-wise and a column-wise copy."""
    catalog = load_catalog()
    assert [precision.any_layout(catalog.devices[d]) for d in ("h100-sxm", "h200", "b200", "gb200")] == \
        [False, False, True, True]
    assert precision.any_layout(None) is False
    blackwell = True
    for recipe, hopper_copies, blackwell_copies in (("delayed", 2, 1), ("current", 2, 1), ("mxfp8", 2, 2)):
        w = _w(recipe=recipe)
        assert precision.copies(w, HOPPER) == hopper_copies
        assert precision.copies(w, blackwell) == blackwell_copies
        infer = Workload(model=ModelSpec(**SPEC), mode="prefill", dtype="float8", fp8={"recipe": recipe})
        assert precision.copies(infer, HOPPER) == precision.copies(infer, blackwell) == 1
    assert precision.cast_bytes_per_element(_w(), blackwell) == 2 + 1                 # read bf16, write one copy
    assert precision.cast_bytes_per_element(_w(recipe="current"), blackwell) == 2 + 2 + 1
    mx = _w(recipe="mxfp8")
    assert precision.cast_bytes_per_element(mx, blackwell) == precision.cast_bytes_per_element(mx, HOPPER) \
        == 2 + 2 * (1 + 1 / 32)
    assert precision.fused_cast_bytes_per_element(mx, blackwell) == pytest.approx(2 * (1 + 1 / 32) - 2)


def test_a_b200_delayed_scaling_layer_by_hand() -> None:
    """One swiglu layer of SPEC (hidden 1024, ffn 4096, 16 heads, tp 1), delayed scaling, TE-saved FP8 inputs.
    GEMM shapes (in, out): QKV 1024 x 3072, attention out 1024 x 1024, MLP up 1024 x 8192 (gated), MLP down
    4096 x 1024: 16,777,216 weights. Per token, forward: only attention out's input (1024) is cast apart (the
    norms and the activation quantize in place, fused: 0 bytes beyond theirs) at 2 + copies bytes; backward:
    every dY (3072 + 1024 + 8192 + 1024 = 13,312) at 2 + copies. H100: 2 copies; B200: 1."""
    plan = Plan(micro_batch=1, microbatches=1)
    w = _w(recipe="delayed")
    assert precision.linear_shapes(w, plan) == [(1024, 3072), (1024, 1024), (1024, 8192), (4096, 1024)]
    catalog = load_catalog()
    for device, forward, backward, weights, copy_bytes in (
            ("h100-sxm", 1024 * 4, 13_312 * 4, 16_777_216 * 4, 16_777_216 * 2),
            ("b200", 1024 * 3, 13_312 * 3, 16_777_216 * 3, 16_777_216 * 1)):
        flag = precision.any_layout(catalog.devices[device])
        assert precision.activation_cast_bytes(w, plan, "forward", 1, flag) == forward
        assert precision.activation_cast_bytes(w, plan, "backward", 1, flag) == backward
        assert precision.weight_cast_bytes(w, plan, flag) == weights
        assert precision.fp8_weight_copy_bytes(w, precision.layer_gemm_params(w, plan), flag) == copy_bytes


def test_b200_prices_the_one_copy_in_cast_time_and_memory() -> None:
    """The modeled step reads the device: the layers' cast passes (compute.phase_times) move the bytes of one
    copy on a B200, and its memory keeps one FP8 copy of each GEMM weight (delayed) or two (mxfp8)."""
    from dataclasses import replace

    from llmsim.costmodel.compute import device_rates, phase_times

    plan = Plan(micro_batch=4, microbatches=2)
    w = _w(recipe="delayed")
    profile = profile_workload(w, SHARING)
    rates = device_rates(load_catalog().cluster("b200", nodes=1, devices_per_node=1), "float8")
    assert rates.fp8_any_layout
    tn_only = replace(rates, fp8_any_layout=False, gemm=replace(rates.gemm, fp8_any_layout=False))
    tokens, layers = 4 * SPEC["seq_len"], SPEC["layers"]
    for phase, saved in (("forward", (1024 * (4 - 3) * tokens + 16_777_216 * (4 - 3) / 2) * layers),
                         ("backward", 13_312 * (4 - 3) * tokens * layers)):
        b200, hopper_like = (phase_times(profile, w, plan, Options(), r, phase, "layers", 1) for r in (rates, tn_only))
        assert hopper_like.matmul == b200.matmul
        assert hopper_like.other - b200.other == pytest.approx(rates.memory_time(saved))
    gemm = SPEC["layers"] * precision.layer_gemm_params(w, plan)
    params = {}
    for recipe in ("delayed", "current", "mxfp8", None):
        for hw in ("h100-sxm", "b200"):
            _, est = _price("float8" if recipe else "bfloat16", {"recipe": recipe} if recipe else None, hw)
            params[(recipe, hw)] = est.memory.params
    for recipe in ("delayed", "current"):
        assert params[(recipe, "b200")] == pytest.approx(params[(None, "b200")] + 1 * gemm)
        assert params[(recipe, "h100-sxm")] == pytest.approx(params[(None, "h100-sxm")] + 2 * gemm)
    assert params[("mxfp8", "b200")] == pytest.approx(params[(None, "b200")] + 2 * gemm)
