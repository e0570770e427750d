"""with_layers: a profile traced with 2 layers, scaled to L, equals the L-layer traced profile field by field.

Every layer of a Transformer without cross-layer sharing has the same shapes, so parameters, FLOPs,
bytes, saved activations and the KV cache (2 x b x kv_heads x T x head_dim per layer, K and V: Pope et
al. 2022, "Efficiently Scaling Transformer Inference", Sec. 2.1) grow linearly with depth while the
embedding and head stay. The planner and the GPT-3 175B tests rely on this. Where the first layers differ (LoRA in
training, layer_groups), workload.profile.profile_at_depth extrapolates two depths instead; its profile equals the
traced one too.
"""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.costmodel.scaling import with_layers
from llmsim.workload.profile import WorkloadProfile, profile_at_depth, profile_workload, slice_depths

SHORT, LONG = 2, 5
SHARINGS = {"tied": SharingChoice(True), "untied": SharingChoice(False),
            "lora": SharingChoice(True, lora=LoraSpec(rank=4))}


def _workload(mode: str, layers: int, **model: object) -> Workload:
    spec = ModelSpec(preset="gpt2-small", **{"layers": layers, "seq_len": 64, **model})
    return Workload(model=spec, mode=mode, batch=2, decode_tokens=5)


def _pair(mode: str, sharing: SharingChoice, **model: object) -> tuple[WorkloadProfile, WorkloadProfile]:
    """(2-layer profile scaled to LONG layers, LONG-layer traced profile)."""
    scaled = with_layers(profile_workload(_workload(mode, SHORT, **model), sharing), LONG)
    return scaled, profile_workload(_workload(mode, LONG, **model), sharing)


def _scalar_fields(p: WorkloadProfile) -> dict[str, object]:
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "ops"}


@pytest.mark.parametrize("sharing", list(SHARINGS), ids=str)
@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_scaled_inference_profile_equals_the_traced_one(mode: str, sharing: str) -> None:
    scaled, traced = _pair(mode, SHARINGS[sharing])
    assert _scalar_fields(scaled) == _scalar_fields(traced)
    spec = _workload(mode, LONG).model
    cache_len = spec.seq_len + (5 if mode == "decode" else 0)
    assert traced.kv_cache_bytes == 2 * LONG * 2 * spec.kv_heads * cache_len * spec.head_dim * 2  # K+V, bf16
    assert scaled.ops == traced.ops


def test_scaled_grouped_query_decode_cache_equals_the_traced_one() -> None:
    """GQA (Ainslie et al. 2023): the cache holds kv_heads, not heads, per layer."""
    scaled, traced = _pair("decode", SHARINGS["untied"], kv_heads=4, positions="rotary")
    spec = _workload("decode", LONG, kv_heads=4).model
    cache_len = spec.seq_len + 5  # the prompt and the generated tokens
    assert scaled.kv_cache_bytes == traced.kv_cache_bytes == 2 * LONG * 2 * 4 * cache_len * spec.head_dim * 2
    assert _scalar_fields(scaled) == _scalar_fields(traced)


@pytest.mark.parametrize("sharing", ["tied", "untied"])
def test_scaled_training_profile_equals_the_traced_one(sharing: str) -> None:
    scaled, traced = _pair("train", SHARINGS[sharing])
    assert _scalar_fields(scaled) == _scalar_fields(traced)
    assert scaled.ops.keys() == traced.ops.keys()
    for key in traced.ops:
        if key[0] != "optimizer":
            assert scaled.ops[key] == traced.ops[key], key
    # AdamW's bytes follow the parameters it updates (up to its per-tensor scalars, the step counters);
    # its operator count follows the number of tensors, which with_layers does not track (not asserted).
    opt = ("optimizer", "head", "other")
    assert scaled.ops[opt].bytes == pytest.approx(traced.ops[opt].bytes, rel=1e-6)


def test_prefill_head_bytes_do_not_depend_on_depth() -> None:
    """The prefill's KV cache is allocated outside every module (model.new_cache: two aten.empty per layer, region
    `head`); an allocation moves no byte and runs no kernel (trace._ALLOCATION_OPS), so the head costs the same at
    any depth and with_layers, which keeps the head, stays exact. Once they counted as bytes moved."""
    short, long = (profile_workload(_workload("prefill", n), SHARINGS["tied"]) for n in (SHORT, LONG))
    head = [key for key in long.ops if key[1] == "head"]
    assert head and {key: short.ops[key] for key in head} == {key: long.ops[key] for key in head}
    scaled, traced = _pair("prefill", SHARINGS["tied"])
    assert scaled.ops[("prefill", "head", "other")] == traced.ops[("prefill", "head", "other")]


def test_an_allocation_is_no_operator() -> None:
    """torch.empty under the recorder: no FLOPs, bytes or count (uninitialised memory: no kernel); a fill is one."""
    import torch
    from torch.utils.module_tracker import ModuleTracker

    from llmsim.workload.trace import _OpRecorder

    tracker = ModuleTracker()
    recorder = _OpRecorder(tracker)
    with tracker, recorder:
        torch.empty(4, 8, device="meta")
        torch.empty_like(torch.empty(2, device="meta"))
    assert all(t.bytes == 0 and t.count == 0 and not t.fused_bytes for t in recorder.ops.values())
    with tracker, recorder:
        torch.zeros(4, 8, device="meta")
    assert sum(t.bytes for t in recorder.ops.values()) == 4 * 8 * 4


# LoRA in training (layer 0's input needs no gradient) and layer_groups (k weight sets at any depth; gradients
# summed over a block's uses) are taken from two depths (profile.slice_depths); deep enough that they are.
DEEP = 7
TWO_DEPTHS = {"lora": SharingChoice(True, lora=LoraSpec(rank=4)),
              "groups": SharingChoice(True, layer_groups=1),
              "groups-untied": SharingChoice(False, layer_groups=2),
              "lora-groups": SharingChoice(True, layer_groups=1, lora=LoraSpec(rank=4))}


@pytest.mark.parametrize("sharing", list(TWO_DEPTHS))
@pytest.mark.parametrize("mode", ["train", "decode"])
def test_profile_at_depth_equals_the_traced_one_where_layers_differ(mode: str, sharing: str) -> None:
    """Field by field and op by op (AdamW's included: two depths follow its tensors too)."""
    workload, choice = _workload(mode, DEEP), TWO_DEPTHS[sharing]
    two = choice.layer_groups is not None or mode == "train"
    assert slice_depths(workload, choice) == ((2, 3) if two else (2,))
    scaled, traced = profile_at_depth(workload, choice), profile_workload(workload, choice)
    assert _scalar_fields(scaled) == _scalar_fields(traced)
    assert scaled.ops == traced.ops


def test_scaled_lora_training_profile_equals_the_traced_one() -> None:
    """LoRA's first layer saves less and computes no input gradient for the frozen base: one 2-layer trace
    scaled misses that (it counts it L/2 times), two depths extrapolated keep it once, in the edges."""
    workload, lora = _workload("train", DEEP), SHARINGS["lora"]
    traced = profile_workload(workload, lora)
    one = with_layers(profile_workload(_workload("train", SHORT), lora), DEEP)
    two = profile_at_depth(workload, lora)
    backward = ("backward", "layers", "matmul")
    assert one.ops[backward] != traced.ops[backward]           # the inexactness two depths remove
    assert two.activation_bytes_per_layer == traced.activation_bytes_per_layer
    assert two.activation_bytes == traced.activation_bytes
    assert two.ops[backward] == traced.ops[backward]


def test_mixed_moe_lora_training_keeps_the_first_layer_difference_once() -> None:
    """Dense layer 0, then MoE every other layer, LoRA: two depths of each kind, the first layer's difference
    taken once (from the slice of layer 0's kind; with adapters on attention only, as an MoE layer's MLP takes
    none, it is the same for both kinds)."""
    spec = ModelSpec(preset="tiny-moe", layers=12, seq_len=16)
    assert spec.moe is not None
    spec = spec.model_copy(update={"moe": spec.moe.model_copy(update={"first_dense_layers": 1, "layer_freq": 2})})
    workload = Workload(model=spec, mode="train", batch=2)
    lora = SharingChoice(False, lora=LoraSpec(rank=4, targets=("qkv", "out")))  # an MoE layer's MLP: no adapter
    assert 0 < workload.model.moe_layers < 12 and slice_depths(workload, lora) == (2, 3)
    scaled, traced = profile_at_depth(workload, lora), profile_workload(workload, lora)
    assert _scalar_fields(scaled) == _scalar_fields(traced)
    assert scaled.ops == traced.ops


def test_scaled_lora_training_parameters_equal_the_traced_ones() -> None:
    scaled, traced = _pair("train", SHARINGS["lora"])
    for name in ("params", "trainable_params", "param_bytes", "trainable_param_bytes", "layer_params",
                 "embed_params", "layers", "tokens_per_step"):
        assert getattr(scaled, name) == getattr(traced, name), name


def _hand_made(trainable: int, kv: int = 0) -> WorkloadProfile:
    """2 layers of 1000 parameters each, 500 embedding parameters, bf16; round op totals per region."""
    from llmsim.workload.profile import OpTotals

    ops = {("forward", "layers", "matmul"): OpTotals(flops=100.0, bytes=10.0, count=7),
           ("forward", "head", "other"): OpTotals(flops=0.0, bytes=30.0, count=5),
           ("optimizer", "head", "other"): OpTotals(flops=0.0, bytes=250.0, count=10)}
    return WorkloadProfile(mode="train", dtype="bfloat16", batch=2, seq_len=8, layers=2, tokens_per_step=16,
                           params=2500, trainable_params=trainable, param_bytes=5000,
                           trainable_param_bytes=2 * trainable, layer_params=2000, embed_params=500,
                           activation_bytes=2 * 40 + 9, activation_bytes_per_layer=40, kv_cache_bytes=kv, ops=ops)


def test_with_layers_scales_the_layers_by_hand() -> None:
    from llmsim.workload.profile import OpTotals

    p = with_layers(_hand_made(trainable=2500, kv=30), 5)       # factor 5/2
    assert (p.layers, p.layer_params, p.params, p.param_bytes) == (5, 5000, 5500, 11000)
    assert (p.trainable_params, p.trainable_param_bytes) == (5500, 11000)
    assert p.activation_bytes == 9 + 5 * 40 and p.activation_bytes_per_layer == 40
    assert p.kv_cache_bytes == 75 and p.embed_params == 500 and p.batch == 2
    assert p.ops[("forward", "layers", "matmul")] == OpTotals(flops=250.0, bytes=25.0, count=18)   # 17.5 -> 18
    assert p.ops[("forward", "head", "other")] == OpTotals(flops=0.0, bytes=30.0, count=5)
    # the optimizer updates 5500 parameters instead of 2500
    assert p.ops[("optimizer", "head", "other")] == OpTotals(flops=0.0, bytes=pytest.approx(250.0 * 5500 / 2500),
                                                             count=22)


def test_with_layers_of_a_frozen_base_scales_only_the_adapters() -> None:
    """LoRA: the trainable parameters are all adapters inside the layers (the embedding is frozen)."""
    p = with_layers(_hand_made(trainable=300), 4)
    assert p.trainable_params == 600 and p.trainable_param_bytes == 1200
    assert p.params == 4500
    assert p.ops[("optimizer", "head", "other")].bytes == pytest.approx(250.0 * 2)
    assert p.ops[("optimizer", "head", "other")].count == 20
