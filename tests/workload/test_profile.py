"""The meta-device profile agrees with closed forms and with what sharing really changes."""

from __future__ import annotations

from llmsim.config import LoraSpec, ModelSpec, Workload
from llmsim.workload.profile import profile_workload
from llmsim.config import SharingChoice


def _gpt2(mode: str = "train", **model) -> Workload:
    return Workload(model=ModelSpec(preset="gpt2-small", **model), mode=mode, batch=8)


def test_train_flops_match_6NT_plus_attention_within_2_percent() -> None:
    w = _gpt2()
    p = profile_workload(w, SharingChoice(True))
    m = w.model
    tokens = w.batch * m.seq_len
    # N: every parameter that multiplies activations (layers + LM head; embeddings are lookups).
    n_matmul = p.layer_params + m.vocab * m.hidden
    attention = 3 * 4 * m.layers * m.seq_len * m.hidden * tokens  # QK^T and AV, fwd + 2x bwd
    closed_form = 6 * n_matmul * tokens + attention
    assert abs(p.model_flops_per_step - closed_form) / closed_form < 0.02
    assert p.flops(phase="backward") > 1.9 * p.flops(phase="forward")


def test_prefill_flops_are_2NT() -> None:
    w = _gpt2("prefill")
    p = profile_workload(w, SharingChoice(True))
    tokens = w.batch * w.model.seq_len
    assert abs(p.flops(kind="matmul", region="layers") - 2 * p.layer_params * tokens) / p.flops() < 0.02
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
    assert long.flops(phase="decode", kind="attention") > 2 * short.flops(phase="decode", kind="attention")


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
    assert lora.trainable_params < full.trainable_params / 50
    # Full backward = 2x forward (input + weight gradients); with frozen weights, roughly 1x.
    ratio = lora.flops(phase="backward", kind="matmul") / full.flops(phase="backward", kind="matmul")
    assert 0.45 < ratio < 0.6
    assert lora.flops(phase="forward") >= full.flops(phase="forward")
    assert lora.activation_bytes >= full.activation_bytes * 0.9  # activations stay


def test_175b_profiles_on_meta_without_allocating() -> None:
    w = Workload(model=ModelSpec(preset="gpt3-175b"), mode="train", batch=8)
    p = profile_workload(w, SharingChoice(True))
    assert p.params > 174e9
    assert p.activation_bytes > 0
    assert 1.0e16 < p.model_flops_per_step < 2.5e16


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
