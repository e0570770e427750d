"""The meta-device profile agrees with closed forms and with what sharing really changes."""

from __future__ import annotations

import pytest

from llmsim.config import LoraSpec, ModelSpec, Workload
from llmsim.workload.profile import profile_workload
from llmsim.config import SharingChoice


def _gpt2(mode: str = "train", **model) -> Workload:
    return Workload(model=ModelSpec(preset="gpt2-small", **model), mode=mode, batch=8)


def _forward_flops(m: ModelSpec, tokens: int) -> int:
    """Forward FLOPs by hand (Kaplan et al. 2020, Table 1, with QK^T and AV both counted, full s x s matrix
    as torch's counter does): 2 per multiply-add of every weight matrix (per layer qkv h x 3h, out h x h,
    fc h x 4h, proj 4h x h = 12 h^2; the LM head h x vocab; embeddings are lookups, biases and norms are not
    matmuls) per token, and 2 x 2 x seq x hidden per token and layer for the two attention products."""
    h = m.hidden
    return 2 * tokens * (12 * h * h * m.layers + m.vocab * h) + 4 * m.layers * m.seq_len * h * tokens


def test_train_flops_are_exactly_3_times_the_forward_of_6NT_plus_attention() -> None:
    w = _gpt2()
    p = profile_workload(w, SharingChoice(True))
    forward = _forward_flops(w.model, w.batch * w.model.seq_len)
    assert p.flops(phase="forward") == forward
    # backward = the data and the weight gradient of every matmul: 2x the forward (Kaplan et al. 2020, Sec. 2.1)
    assert p.flops(phase="backward") == 2 * forward
    assert p.model_flops_per_step == 3 * forward


def test_prefill_flops_are_2NT() -> None:
    w = _gpt2("prefill")
    p = profile_workload(w, SharingChoice(True))
    tokens = w.batch * w.model.seq_len
    h = w.model.hidden
    assert p.flops(kind="matmul", region="layers") == 2 * 12 * h * h * w.model.layers * tokens
    assert p.flops(kind="attention") == 4 * w.model.layers * w.model.seq_len * h * tokens
    assert p.flops(kind="matmul", region="head") == 2 * w.batch * w.model.vocab * h  # the last position only
    assert p.kv_cache_bytes == 2 * w.model.layers * tokens * w.model.hidden * 2  # K and V, bf16


def test_decode_totals_scale_with_generated_tokens() -> None:
    base = dict(seq_len=128)
    short = profile_workload(Workload(model=ModelSpec(preset="gpt2-small", **base), mode="decode", batch=2,
                                      decode_tokens=9), SharingChoice(True))
    long = profile_workload(Workload(model=ModelSpec(preset="gpt2-small", **base), mode="decode", batch=2,
                                     decode_tokens=17), SharingChoice(True))
    per_step_short = short.flops(phase="decode", kind="matmul") / 8
    per_step_long = long.flops(phase="decode", kind="matmul") / 16
    assert abs(per_step_short - per_step_long) / per_step_long < 1e-9  # matmuls don't grow with the cache
    # the token at position t attends to the t+1 cached keys: QK^T and AV are 2 x 2 x (t+1) x hidden FLOPs
    # per sequence and layer; the decode_tokens-1 fed-back tokens sit at positions seq_len, seq_len+1, ...
    m = ModelSpec(preset="gpt2-small", **base)
    # three generated tokens: two fed back, the first and the last position traced, nothing scaled
    three = profile_workload(Workload(model=m, mode="decode", batch=2, decode_tokens=3), SharingChoice(True))
    for p, n in ((short, 9), (long, 17), (three, 3)):
        expected = sum(4 * 2 * m.hidden * (t + 1) * m.layers for t in range(m.seq_len, m.seq_len + n - 1))
        assert p.flops(phase="decode", kind="attention") == expected
        # and every fed-back token goes through the weight matrices and the LM head once (2 sequences)
        assert p.flops(phase="decode", kind="matmul") == (n - 1) * 2 * 2 * (12 * m.hidden**2 * m.layers
                                                                             + m.vocab * m.hidden)


def test_layer_sharing_reduces_unique_parameters_not_flops() -> None:
    w = _gpt2()
    full = profile_workload(w, SharingChoice(True))
    albert = profile_workload(w, SharingChoice(True, layer_groups=1))
    assert albert.layer_params * w.model.layers == full.layer_params
    assert albert.params == full.params - full.layer_params + albert.layer_params
    assert albert.model_flops_per_step == full.model_flops_per_step


def test_lora_cuts_trainable_parameters_and_frozen_weight_gradient_flops() -> None:
    w = _gpt2()
    full = profile_workload(w, SharingChoice(True))
    lora = profile_workload(w, SharingChoice(True, lora=LoraSpec(rank=8)))
    m = w.model
    h, r, tokens = m.hidden, 8, w.batch * m.seq_len
    # Hu et al. 2021: r*(in+out) per adapted projection, PEFT's q, k, v (h, h) each, o (h, h), up (h, 4h), down
    # (4h, h) = 18 h r
    assert lora.trainable_params == m.layers * 18 * h * r
    # Forward: the base's matmuls plus the adapters' (2 FLOPs per multiply-add, x A^T then (x A^T) B^T).
    base = full.flops(phase="forward", kind="matmul", region="layers")
    adapters = 2 * tokens * m.layers * 18 * h * r
    assert lora.flops(phase="forward", kind="matmul", region="layers") == base + adapters
    # Backward: a frozen weight needs no weight gradient, so each base matmul costs 1x its forward (the input
    # gradient) instead of 2x; the adapters, trained, 2x theirs. Except in the first layer: its input comes from
    # the frozen embedding and needs no gradient, so its qkv base matmul and the q, k, v A's input gradients are
    # skipped.
    first_qkv, first_qkv_a_input = 2 * tokens * h * 3 * h, 3 * 2 * tokens * r * h
    assert lora.flops(phase="backward", kind="matmul", region="layers") == \
        base - first_qkv + 2 * adapters - first_qkv_a_input
    # the tied LM head is frozen too: its input gradient only
    assert lora.flops(phase="backward", region="head") == lora.flops(phase="forward", region="head")
    assert lora.activation_bytes >= full.activation_bytes * 0.9  # activations stay


def test_175b_profiles_on_meta_without_allocating() -> None:
    w = Workload(model=ModelSpec(preset="gpt3-175b"), mode="train", batch=8)
    p = profile_workload(w, SharingChoice(True))
    assert p.params > 174e9
    assert p.activation_bytes > 0
    assert p.params == 96 * (12 * 12288**2 + 13 * 12288) + (50257 + 2048 + 2) * 12288  # Brown et al. 2020, 175.0B
    assert p.model_flops_per_step == 3 * _forward_flops(w.model, 8 * 2048)


def test_dropout_adds_bytes_but_no_flops_and_only_in_training() -> None:
    def prof(mode: str, dropout: float):
        return profile_workload(Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=128,
                                                         dropout=dropout), mode=mode, batch=2), SharingChoice(True))

    plain, dropped = prof("train", 0.0), prof("train", 0.1)
    assert dropped.flops() == plain.flops()
    for phase in ("forward", "backward"):
        # hidden dropout on both residual branches: memory-bound `other` ops in the layers
        assert dropped.bytes(phase=phase, kind="other", region="layers") > \
            plain.bytes(phase=phase, kind="other", region="layers")
        # attention-probability dropout: inside the attention core
        assert dropped.bytes(phase=phase, kind="attention") > plain.bytes(phase=phase, kind="attention")
    assert dropped.activation_bytes > plain.activation_bytes  # the masks are saved for backward
    # eval mode (serving): dropout is the identity, the profile is unchanged
    assert prof("prefill", 0.1).ops == prof("prefill", 0.0).ops


def _synthetic() -> "WorkloadProfile":
    from llmsim.workload.profile import OpTotals, WorkloadProfile

    ops = {("forward", "layers", "matmul"): OpTotals(1.0, 10.0, 1),
           ("forward", "layers", "other"): OpTotals(0.0, 20.0, 2),
           ("forward", "head", "matmul"): OpTotals(4.0, 40.0, 3),
           ("backward", "layers", "matmul"): OpTotals(16.0, 80.0, 4),
           ("backward", "embed", "attention"): OpTotals(64.0, 160.0, 5)}
    return WorkloadProfile(mode="train", dtype="bfloat16", batch=1, seq_len=1, layers=1, tokens_per_step=1,
                           params=1, trainable_params=1, param_bytes=2, trainable_param_bytes=2, layer_params=1,
                           embed_params=0, activation_bytes=0, activation_bytes_per_layer=0, kv_cache_bytes=0,
                           ops=ops)


def test_profile_queries_sum_exactly_the_entries_that_match_every_given_key() -> None:
    p = _synthetic()
    assert p.flops() == 85.0 and p.bytes() == 310.0
    assert p.flops(phase="forward") == 5.0 and p.bytes(phase="forward") == 70.0
    assert p.flops(kind="matmul") == 21.0 and p.bytes(kind="matmul") == 130.0
    assert p.flops(region="layers") == 17.0 and p.bytes(region="layers") == 110.0
    assert p.flops(phase="forward", kind="matmul") == 5.0 and p.bytes(phase="forward", kind="matmul") == 50.0
    assert p.flops(phase="backward", region="layers") == 16.0 and p.bytes(phase="backward", region="layers") == 80.0
    assert p.flops(kind="matmul", region="head") == 4.0 and p.bytes(kind="other", region="layers") == 20.0
    assert p.flops(phase="forward", kind="matmul", region="layers") == 1.0
    assert p.bytes(phase="backward", kind="attention", region="embed") == 160.0
    assert p.bytes(phase="optimizer") == 0 and p.flops(phase="forward", kind="attention") == 0
    assert p.model_flops_per_step == 85.0
    assert p.flops_by_kind() == {"matmul": 21.0, "attention": 64.0, "other": 0.0}


def test_op_totals_add_scaled_and_round_the_count() -> None:
    from llmsim.workload.profile import OpTotals

    t = OpTotals(1.0, 2.0, 3)
    t.add(OpTotals(10.0, 20.0, 5), 1.5)
    assert t == OpTotals(16.0, 32.0, 3 + 8)   # 7.5 rounds to 8
    t.add(OpTotals(1.0, 1.0, 1))
    assert t == OpTotals(17.0, 33.0, 12)


def test_an_embedding_lookup_moves_the_rows_it_returns_and_its_indices() -> None:
    """Region `embed` holds the lookups alone: each reads the rows it returns, writes them (2 x output) and
    reads its int64 indices; no FLOPs. GPT-2 looks up tokens (B, T) and positions (T,); BERT also token
    types (B, T)."""
    b, t, h = 2, 64, 768
    gpt = profile_workload(Workload(model=ModelSpec(preset="gpt2-small", layers=1, seq_len=t), batch=b),
                           SharingChoice(True))
    tokens = 2 * b * t * h * 2 + b * t * 8
    positions = 2 * t * h * 2 + t * 8
    fwd = gpt.ops[("forward", "embed", "other")]
    assert (fwd.flops, fwd.bytes, fwd.count) == (0, tokens + positions, 2)
    assert gpt.flops(region="embed") == 0
    assert {k for k in gpt.ops if k[1] == "embed"} <= {("forward", "embed", "other"), ("backward", "embed", "other")}
    bert = profile_workload(Workload(model=ModelSpec(preset="bert-base", layers=1, seq_len=t), batch=b),
                            SharingChoice(True))
    types = 2 * b * t * h * 2 + b * t * 8
    fwd = bert.ops[("forward", "embed", "other")]
    assert (fwd.bytes, fwd.count) == (tokens + positions + types, 3)


def test_saved_activations_scale_exactly_with_the_batch_so_no_parameter_is_counted() -> None:
    """Autograd saves weights for the input gradients; the profile excludes them. Every saved tensor in the
    layers is then a per-sequence activation, and doubling the batch doubles the bytes exactly."""
    def per_layer(batch: int) -> tuple[int, int]:
        p = profile_workload(Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=64), batch=batch),
                             SharingChoice(True))
        return p.activation_bytes_per_layer, p.activation_bytes

    (one, total_one), (two, total_two) = per_layer(1), per_layer(2)
    assert one > 0 and two == 2 * one
    # the layers' share of the whole: the rest lies at the edges (embedding output, final norm, logits, loss)
    assert total_one > 2 * one and total_two > 2 * two


def test_a_matmul_moves_its_inputs_and_its_output() -> None:
    """Bytes moved = sizes of the tensor inputs plus outputs. The tied LM head of a training step is one
    GEMM (B T, h) x (h, vocab): 2 B T h vocab FLOPs, (B T h + h vocab + B T vocab) bf16 elements."""
    b, t, h, v = 2, 64, 768, 50257
    p = profile_workload(Workload(model=ModelSpec(preset="gpt2-small", layers=1, seq_len=t), batch=b),
                         SharingChoice(True))
    head = p.ops[("forward", "head", "matmul")]
    assert (head.flops, head.bytes, head.count) == (2 * b * t * h * v, (b * t * h + h * v + b * t * v) * 2, 1)


@pytest.mark.parametrize("dtype,elem", [("bfloat16", 2), ("float32", 4)])
def test_parameter_bytes_are_the_counts_in_the_workload_dtype(dtype: str, elem: int) -> None:
    w = Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=64), batch=2, dtype=dtype)
    full = profile_workload(w, SharingChoice(True))
    assert full.param_bytes == elem * full.params and full.trainable_param_bytes == elem * full.trainable_params
    assert full.params == 2 * (12 * 768**2 + 13 * 768) + (50257 + 1024 + 2) * 768
    assert full.layer_params == 2 * (12 * 768**2 + 13 * 768) and full.embed_params == full.params - full.layer_params
    lora = profile_workload(w, SharingChoice(True, lora=LoraSpec(rank=4)))
    # per layer PEFT's q, k, v, o (h, h), up (h, 4h), down (4h, h): r * 18 h
    assert lora.trainable_param_bytes == elem * lora.trainable_params == elem * 2 * 18 * 768 * 4


def test_one_generated_token_has_no_decode_steps_and_two_have_one() -> None:
    """decode_tokens = 1: the prefill produces the only token. decode_tokens = 2: one fed-back token at
    position seq_len, attending to seq_len + 1 cached keys (4 h (t + 1) FLOPs per sequence and layer)."""
    m = ModelSpec(preset="gpt2-small", layers=2, seq_len=64)
    one = profile_workload(Workload(model=m, mode="decode", batch=2, decode_tokens=1), SharingChoice(True))
    assert not [k for k in one.ops if k[0] == "decode"]
    assert one.kv_cache_bytes == 2 * 2 * 2 * (64 + 1) * 768 * 2
    two = profile_workload(Workload(model=m, mode="decode", batch=2, decode_tokens=2), SharingChoice(True))
    assert two.flops(phase="decode", kind="attention") == 2 * 4 * 768 * (64 + 1) * 2
    assert two.flops(phase="decode", kind="matmul") == 2 * 2 * (12 * 768**2 * 2 + 50257 * 768)
    assert two.tokens_per_step == 2 * 2 and one.tokens_per_step == 2


def test_a_weight_broadcast_over_the_batch_is_counted_once() -> None:
    """The prefill's LM head runs on the last position of each sequence, a strided (b, 1, h) slice whose
    matmul may decompose into a bmm against the weight expanded over the batch: a stride-0 view of the
    same memory, read once (it had been counted b times: 64 x 77 MB for a GPT-2 prefill of 64)."""
    from llmsim.config import ModelSpec, SharingChoice, Workload
    from llmsim.workload.profile import profile_workload

    def head_bytes(batch: int) -> float:
        workload = Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=64), mode="prefill", batch=batch)
        return profile_workload(workload, SharingChoice(tie_embeddings=False)).ops[("prefill", "head", "matmul")].bytes

    weight = 768 * 50257 * 2
    one, four = head_bytes(1), head_bytes(4)
    assert one == pytest.approx(weight, rel=2e-3)
    assert four - one == pytest.approx(3 * (768 + 50257) * 2, rel=1e-9)  # 3 more rows in, 3 more rows of logits out


def test_a_step_whose_tensors_torch_cannot_address_is_one_line_naming_the_keys() -> None:
    """Logits of 2^28 sequences x 8 tokens x a 2^31 - 1 vocabulary overflow torch's storage size: one
    ScenarioError naming the sizes, not a RuntimeError. Every size is within validation's bound (2^31 - 1, a
    signed 32-bit index; a 10^10 embedding, which reached this before, is now refused there): their products are
    what overflow."""
    from llmsim.config import ModelSpec, SharingChoice, Workload
    from llmsim.errors import ScenarioError
    from llmsim.workload.profile import profile_workload

    workload = Workload(model=ModelSpec(layers=2, hidden=64, heads=4, vocab=2**31 - 1, seq_len=8, max_positions=8),
                        mode="train", batch=2**28)
    with pytest.raises(ScenarioError, match=r"^workload: a tensor of this step exceeds what torch can address "
                                            r"\(2\^63 bytes\): batch=268435456, seq_len=8, hidden=64, ffn_hidden=256, "
                                            r"vocab=2147483647") as info:
        profile_workload(workload, SharingChoice(tie_embeddings=True))
    assert "\n" not in str(info.value)


def test_an_op_with_a_kernel_of_its_own_is_traced_as_that_one_kernel() -> None:
    """silu_backward has a CPU and a CUDA kernel and also a composite decomposition for other backends; torch runs
    the kernel, so the trace records one op (its gradient and input read, its result written), not the seven
    passes of the decomposition. SwiGLU and GeGLU (gelu_backward has no decomposition) then trace alike: same
    shapes, one activation op each way. linear has no kernel of its own (composite only): still decomposed."""
    from llmsim.workload.trace import _own_kernel

    assert _own_kernel("aten::silu_backward") and not _own_kernel("aten::linear")

    def ops(activation: str) -> dict:
        spec = ModelSpec(preset="tiny", layers=1, seq_len=64, activation=activation, norm="rmsnorm",
                         positions="rotary")
        p = profile_workload(Workload(model=spec, batch=2), SharingChoice(True))
        return {k: (v.bytes, v.count, v.fused_bytes) for k, v in p.ops.items() if k[2] == "other"}

    swiglu, geglu = ops("swiglu"), ops("geglu")
    assert swiglu[("backward", "layers", "other")] == geglu[("backward", "layers", "other")]
    assert swiglu == geglu
