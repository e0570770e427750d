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
    assert precision.cast_bytes_per_element(w) == 2 + 2 * 1          # read bf16, write row + column copies
    w = Workload(model=ModelSpec(**SPEC), dtype="float8", fp8={"recipe": "current"})
    assert precision.cast_bytes_per_element(w) == 2 + 2 + 2 * 1      # + the amax pass
    w = Workload(model=ModelSpec(**SPEC), dtype="float8", fp8={"recipe": "mxfp8"})
    assert precision.cast_bytes_per_element(w) == 2 + 2 * (1 + 1 / 32)


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
        apart = precision.cast_bytes_per_element(te)
        assert precision.fused_cast_bytes_per_element(te) == pytest.approx(fused)
        assert precision.activation_cast_bytes(te, plan, "forward", 1) == pytest.approx(
            out * apart + (qkv + up + down) * fused)
        ao = _w(recipe=recipe, saved_activations="bfloat16")
        assert precision.activation_cast_bytes(ao, plan, "forward", 1) == pytest.approx(
            (qkv + out + up + down) * apart)
    # inference writes one copy: the fused cast costs nothing beyond the norm's own (bf16) write
    infer = Workload(model=ModelSpec(**SPEC), mode="prefill", dtype="float8")
    assert precision.fused_cast_bytes_per_element(infer) == 0.0


def test_te_fuses_the_backward_cast_only_after_a_gelu_dact_under_delayed_or_mxfp8() -> None:
    plan = Plan(micro_batch=1, microbatches=1)
    gelu = Workload(model=ModelSpec(**{**SPEC, "activation": "gelu"}), dtype="float8")
    assert precision.fused_inputs(gelu, "backward") == (False, False, True, False)   # dbias_dgelu + quantize
    assert precision.fused_inputs(_w(), "backward") == (False,) * 4                     # swiglu: none in TE
    current = Workload(model=ModelSpec(**{**SPEC, "activation": "gelu"}), dtype="float8", fp8={"recipe": "current"})
    assert precision.fused_inputs(current, "backward") == (False,) * 4
    shapes = precision.linear_shapes(gelu, plan)
    apart = precision.cast_bytes_per_element(gelu)
    assert precision.activation_cast_bytes(gelu, plan, "backward", 1) == pytest.approx(
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
