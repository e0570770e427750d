"""The activation inventory (costmodel.activations) against closed forms derived by hand from it, the issue's
cases, and what the traced module really saves.

Closed forms per layer and micro-batch in a 16-bit GPT layer (LayerNorm, GELU with f = 4h, a d = h, attention
dropout and hidden dropout; s = seq_len, b = micro-batch, h = hidden, a = heads, t = tp), counted from the
inventory's table: whole on every rank without sequence parallelism are the two norm inputs, the two norm
outputs (the inputs of the column-parallel QKV and fc linears) and the two hidden-dropout masks,
2 + 2 + 2 + 2 + 1 + 1 = 10 bytes per element of s b h; inside the tensor-parallel region are Q, K, V, the
attention output, the fc output and the activation output, 2 + 2 + 2 + 2 + 8 + 8 = 24, and with the
fused-softmax kernel the softmax output, its dropout mask and the dropped probabilities, 2 + 1 + 2 = 5 bytes
per element of a s^2 b. Both norms also keep an fp32 mean and rstd per token: 16 s b bytes, whole without
sequence parallelism. So:
    none       sbh (10 + 24/t + 5 a s / (h t)) + 16 s b          sp: sbh/t (34 + 5 a s / h) + 16 s b / t
    selective  sbh (10 + 24/t)              + 16 s b          sp: 34 sbh / t              + 16 s b / t
    full       2 sbh kept per layer (/t with sp), plus one layer's `none` set while it is recomputed.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, memory_breakdown
from llmsim.costmodel.activations import (FP32_BYTES, INDEX_BYTES, MASK_BYTES, RNG_STATE_BYTES, edge_inventory,
                                          inventory_bytes, layer_inventory, layer_saves)
from llmsim.costmodel.memory import activation_bytes_per_layer, edge_activation_bytes
from tests.costmodel.helpers import profiled

# GPT-3 175B's layer (Brown et al. 2020, Table 2.1): the shape of the issue's cases.
H, A, S = 12288, 96, 2048
LN_STATS = 2 * 2 * FP32_BYTES     # two LayerNorms, mean and rstd each, fp32, per token
FUSED = Options(attention="fused-softmax")


def _gpt(dropout: float = 0.1, **model: object) -> ModelSpec:
    return ModelSpec(**{"preset": "gpt3-175b", "layers": 2, "dropout": dropout, **model})


def _workload(spec: ModelSpec, batch: int = 1, dtype: str = "bfloat16") -> Workload:
    return Workload(model=spec, mode="train", batch=batch, dtype=dtype)


def _closed_form(recompute: str, t: int, sp: bool, b: int, dropout: bool = True) -> tuple[Fraction, Fraction]:
    """(kept, working set) per layer from the closed forms of the module docstring, exact."""
    sbh, s2 = Fraction(S * b * H), Fraction(A * S * S * b)
    sequence = (10 if dropout else 8) * sbh + LN_STATS * S * b
    tensor = 24 * sbh + (5 if dropout else 2) * s2
    if sp:
        sequence /= t
    none = sequence + tensor / t
    if recompute == "none":
        return none, Fraction(0)
    if recompute == "selective":
        return sequence + 24 * sbh / t, Fraction(0)
    return 2 * sbh / (t if sp else 1), none


# (tp, sp): sequence parallelism needs tp > 1
PARALLEL = [(1, False), (2, False), (4, False), (8, False), (2, True), (4, True), (8, True)]


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
@pytest.mark.parametrize("tp,sp", PARALLEL)
@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_fused_softmax_gpt_layer_matches_the_closed_forms(recompute: str, tp: int, sp: bool, b: int,
                                                          dropout: float) -> None:
    """Without dropout the two hidden-dropout masks (2 sbh) and the attention dropout's mask and output
    (3 a s^2 b) go: 8 sbh whole and 24 sbh + 2 a s^2 b split."""
    w = _workload(_gpt(dropout))
    plan = Plan(tp=tp, sp=sp, micro_batch=b, recompute=recompute)  # type: ignore[arg-type]
    kept, working = activation_bytes_per_layer(w, SharingChoice(True), plan, FUSED)
    assert (Fraction(kept), Fraction(working)) == _closed_form(recompute, tp, sp, b, dropout > 0)


def test_the_issue_cases_have_their_closed_form_values() -> None:
    """Issue 14: gpt3-175b, 2 layers, dropout 0.1, batch 1, micro_batch 1, fused-softmax. The closed forms
    34 sbh + 5 a s^2 b, 34 sbh and (no dropout) 32 sbh + 2 a s^2 b, plus the 16 s b bytes of LayerNorm
    statistics they leave out (mean and rstd in fp32, aten native_layer_norm)."""
    stats = LN_STATS * S
    none, _ = activation_bytes_per_layer(_workload(_gpt()), SharingChoice(True), Plan(), FUSED)
    selective, _ = activation_bytes_per_layer(_workload(_gpt()), SharingChoice(True), Plan(recompute="selective"),
                                              FUSED)
    no_dropout, _ = activation_bytes_per_layer(_workload(_gpt(0.0)), SharingChoice(True), Plan(), FUSED)
    assert 34 * S * H + 5 * A * S * S == 2_868_903_936 and none == 2_868_903_936 + stats
    assert 34 * S * H == 855_638_016 and selective == 855_638_016 + stats
    assert 32 * S * H + 2 * A * S * S == 1_610_612_736 and no_dropout == 1_610_612_736 + stats
    # the old trace-minus-correction model gave 5,033,197,568 / 4,227,891,200 / 1,761,640,448 here


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_issue_workload_keeps_its_layers_and_edges(dropout: float) -> None:
    """The activations of the issue's workload: its two layers and the edges (token and position ids; final
    norm input and statistics, head input, fp32 log-probabilities and targets)."""
    w = _workload(_gpt(dropout))
    profile, sharing = profiled(w)
    mem = memory_breakdown(w, profile, sharing, Plan(), FUSED)
    per_layer, _ = activation_bytes_per_layer(w, sharing, Plan(), FUSED)
    first, last = edge_activation_bytes(w, sharing, Plan())
    assert first == S * INDEX_BYTES + S * INDEX_BYTES                   # token ids, position ids 0..s-1
    assert last == S * (2 * H + 2 * FP32_BYTES + 2 * H + 50257 * FP32_BYTES + INDEX_BYTES)
    assert mem.activations == 2 * per_layer + first + last


@pytest.mark.parametrize("tp,sp", PARALLEL)
def test_flash_keeps_q_k_v_o_and_the_logsumexp(tp: int, sp: bool) -> None:
    """Flash attention (Dao 2023): no s x s tensor; Q, K, V, O (2 bytes x h each) and the fp32 logsumexp
    per head and token inside the tensor-parallel region, and the Philox state (16 bytes per layer) for its
    dropout. Selective recomputation drops only the logsumexp and the RNG state (Q, K, V are the checkpoint's
    inputs and O is the out linear's input)."""
    w, b = _workload(_gpt()), 2
    sbh = Fraction(S * b * H)
    sequence = 10 * sbh + LN_STATS * S * b
    if sp:
        sequence /= tp
    none, _ = activation_bytes_per_layer(w, SharingChoice(True), Plan(tp=tp, sp=sp, micro_batch=b), Options())
    assert Fraction(none) == sequence + (24 * sbh + FP32_BYTES * A * S * b) / tp + RNG_STATE_BYTES
    selective, _ = activation_bytes_per_layer(w, SharingChoice(True), Plan(tp=tp, sp=sp, micro_batch=b,
                                                                            recompute="selective"), Options())
    assert Fraction(selective) == sequence + 24 * sbh / tp


def test_math_attention_keeps_fp32_q_k_v_and_scores() -> None:
    """PyTorch's math SDPA in 16-bit upcasts q, k, v to fp32 and keeps fp32 scaled q, scaled k, v and softmax
    output, and with dropout a bool mask (CUDA's native_dropout) and the fp32 dropped probabilities:
    12 sbh + 9 a s^2 b inside the tensor-parallel region instead of fused-softmax's 6 sbh + 5 a s^2 b."""
    w, b, tp = _workload(_gpt()), 1, 4
    plan = Plan(tp=tp, micro_batch=b)
    math, _ = activation_bytes_per_layer(w, SharingChoice(True), plan, Options(attention="math"))
    fused, _ = activation_bytes_per_layer(w, SharingChoice(True), plan, FUSED)
    assert math - fused == pytest.approx((6 * S * b * H + 4 * A * S * S * b) / tp, rel=0, abs=0)


def test_context_parallelism_divides_every_token_share() -> None:
    w = _workload(_gpt())
    one, _ = activation_bytes_per_layer(w, SharingChoice(True), Plan(tp=2, sp=True), FUSED)
    cp4, _ = activation_bytes_per_layer(w, SharingChoice(True), Plan(tp=2, sp=True, cp=4), FUSED)
    assert cp4 == one / 4


def test_a_llama_layer_by_hand() -> None:
    """llama2-70b's layer (h 8192, 64 heads of 128, 8 KV heads, SwiGLU f 28672, RMSNorm, rotary, no bias, no
    dropout), flash, tp 16 > kv_heads: K and V split only 8 ways (each rank keeps a whole KV head). Per token:
    sequence (whole): layer input, norm1 output, norm2 input and output 4 x 2h, two rstd 2 x 4;
    tensor (/16): Q, O 2 x 2 x 64 x 128, logsumexp 4 x 64, gate + up 2 x 2f, activation output 2f;
    kv (/8): K, V 2 x 2 x 8 x 128. Without the gated unit's act(gate), which the fused SwiGLU recomputes."""
    spec = ModelSpec(preset="llama2-70b", layers=2, seq_len=4096)
    h, f, s = 8192, 28672, 4096
    w = _workload(spec)
    per_layer, _ = activation_bytes_per_layer(w, SharingChoice(False), Plan(tp=16), Options())
    per_token = (4 * 2 * h + 2 * 4) + Fraction(2 * 2 * 64 * 128 + 4 * 64 + 2 * 2 * f + 2 * f, 16) \
        + Fraction(2 * 2 * 8 * 128, 8)
    assert Fraction(per_layer) == s * per_token


def test_fused_softmax_expands_grouped_kv_and_selective_keeps_the_checkpointed_inputs() -> None:
    """Megatron-LM's unfused core attention repeats K and V to every query head before its bmms
    (dot_product_attention.py, repeat_interleave): a d each instead of g d; selective recomputation keeps the
    checkpoint's inputs at g d."""
    spec = _gpt(0.0, kv_heads=8)
    d = H // A
    saved = {t.name: t for t in layer_inventory(spec, "fused-softmax", "none", 2)}
    assert saved["k.expanded"].elements == saved["v.expanded"].elements == A * d and "k" not in saved
    kept = {t.name: t for t in layer_inventory(spec, "fused-softmax", "selective", 2)}
    assert kept["k"].elements == kept["v"].elements == 8 * d and "k.expanded" not in kept
    assert "attn.probs" not in kept


def test_lora_keeps_only_what_the_adapters_and_the_input_gradient_need() -> None:
    """A frozen base linear keeps nothing; an adapted projection's A keeps the linear's input and its B keeps
    A's r-wide output. With adapters on q and v only, the QKV input is kept (once) and two r-wide outputs;
    the out, fc and proj inputs are not (flash keeps O itself)."""
    spec = _gpt(0.0)
    lora = LoraSpec(rank=16, targets=("q", "v"))
    names = [t.name for t in layer_inventory(spec, "fused-softmax", "none", 2, lora)]
    assert "norm1.output" in names and "lora.q.a_output" in names and "lora.v.a_output" in names
    assert not {"attn.output", "norm2.output", "activation.output", "lora.k.a_output"} & set(names)
    assert "attn.output" in [t.name for t in layer_inventory(spec, "flash", "none", 2, lora)]
    # the frozen embedding and head keep no ids nor head input
    assert edge_inventory(spec, 2, "input", trainable=False) == ()
    assert "head.input" not in [t.name for t in edge_inventory(spec, 2, "output", trainable=False)]


def test_every_saved_tensor_is_named_once_and_sized_from_the_shape() -> None:
    spec = ModelSpec(preset="llama3-8b", layers=2, qk_norm=True, dropout=0.1)
    for kernel in ("flash", "fused-softmax", "math"):
        for recompute in ("none", "selective", "full"):
            items = layer_inventory(spec, kernel, recompute, 2, LoraSpec())  # type: ignore[arg-type]
            assert len({t.name for t in items}) == len(items)
            assert all(t.elements > 0 and t.bytes_per_element in (MASK_BYTES, 2, FP32_BYTES) for t in items)
    assert {s.op for s in layer_saves(spec, "flash", 2) if s.in_core} == {"flash attention"}


# -- the cross-check: the traced module (WorkloadProfile) against the math kernel's inventory ---------------
# The profile traces llmsim's module on the meta device in eager PyTorch, whose math SDPA path is the `math`
# kernel. Where eager PyTorch on meta keeps something a 16-bit stack on an accelerator does not, the
# difference is exact and named:
def _eager_extras(spec: ModelSpec, b: int, e: int) -> int:
    """Bytes per layer the traced eager module keeps beyond the inventory (micro-batch b, dtype bytes e)."""
    s, h, f = spec.seq_len, spec.hidden, spec.ffn_hidden or 4 * spec.hidden
    a, g, d = spec.heads, spec.kv_heads or spec.heads, spec.head_width
    extra = 0
    if spec.dropout > 0:
        # at::dropout on meta (and CPU) is not `native_dropout` (aten/src/ATen/native/Dropout.cpp,
        # is_fused_kernel_acceptable: CUDA/XPU/lazy only): it keeps an fp32 keep-mask instead of a bool one.
        extra += (FP32_BYTES - MASK_BYTES) * a * s * s * b
    if spec.norm == "rmsnorm":
        # rms_norm off CUDA runs the composite (aten rms_norm_composite): fp32 input and fp32 x * rstd
        # (8 bytes per element) instead of _fused_rms_norm's 16-bit input, for both norms.
        extra += 2 * (2 * FP32_BYTES - e) * h * s * b
    if spec.qk_norm:
        extra += (2 * FP32_BYTES - e) * (a + g) * d * s * b      # the same composite over q and k heads
    if spec.qk_norm and e == FP32_BYTES:
        # in fp32 the composite's upcast is a no-op, so it keeps views of the fused QKV output, whose one storage
        # also holds V (storage aliasing, which the inventory leaves out)
        extra += e * g * d * s * b
    if spec.activation in ("swiglu", "geglu"):
        extra += e * f * s * b                                    # eager keeps act(gate) for the product
    return extra


ARCHITECTURES = {
    "gpt": dict(),
    "gpt-dropout": dict(dropout=0.1),
    "gqa-rope-rmsnorm-swiglu": dict(kv_heads=2, positions="rotary", norm="rmsnorm", activation="swiglu",
                                    bias=False),
    "qk-norm-geglu": dict(qk_norm=True, activation="geglu", head_dim=24, kv_heads=2, dropout=0.1),
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_the_math_inventory_is_what_the_traced_module_saves(arch: str, dtype: str) -> None:
    spec = ModelSpec(**{"layers": 2, "hidden": 96, "heads": 4, "vocab": 500, "seq_len": 48, **ARCHITECTURES[arch]})
    b = 3
    w = _workload(spec, batch=b, dtype=dtype)
    profile, sharing = profiled(w, tie=True)
    e = 2 if dtype == "bfloat16" else 4
    derived, _ = activation_bytes_per_layer(w, sharing, Plan(micro_batch=b), Options(attention="math"))
    assert profile.activation_bytes_per_layer == derived + _eager_extras(spec, b, e)
    # outside the layers: the same, plus NLL's 0-dim fp32 total_weight, and the final norm's composite
    first, last = edge_activation_bytes(w, sharing, Plan(micro_batch=b))
    final_norm = (2 * FP32_BYTES - e) * spec.hidden * spec.seq_len * b if spec.norm == "rmsnorm" else 0
    edge = profile.activation_bytes - profile.layers * profile.activation_bytes_per_layer
    assert edge == first + last + FP32_BYTES + final_norm


def test_the_traced_lora_module_saves_the_adapter_inputs_and_outputs() -> None:
    """With LoRA the trace keeps what the inventory lists (each adapter's input and r-wide A output, no base
    linear's input), except that the first layer's norm1 keeps nothing: its input comes from the frozen
    embedding and needs no gradient, so autograd records no node. The inventory counts that layer like the
    others (one layer input and its statistics per micro-batch more on the first stage: conservative)."""
    spec = ModelSpec(layers=2, hidden=96, heads=4, vocab=500, seq_len=48)
    lora, b, layers = LoraSpec(rank=4), 3, 2
    w = _workload(spec, batch=b)
    profile, sharing = profiled(w, lora=lora)
    derived, _ = activation_bytes_per_layer(w, sharing, Plan(micro_batch=b), Options(attention="math"))
    first_norm = (2 * spec.hidden + LN_STATS // 2) * spec.seq_len * b
    assert profile.activation_bytes_per_layer == derived - first_norm // layers
    first, last = edge_activation_bytes(w, sharing, Plan(micro_batch=b))
    assert first == 0
    assert profile.activation_bytes - profile.layers * profile.activation_bytes_per_layer == last + FP32_BYTES


def test_inventory_bytes_sum_the_tensors() -> None:
    spec = _gpt()
    items = layer_inventory(spec, "fused-softmax", "none", 2)
    assert inventory_bytes(items, spec, Plan()) == sum(t.bytes(spec, Plan()) for t in items)
