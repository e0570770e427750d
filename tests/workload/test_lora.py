"""LoRA adapters: exactly the targeted projections carry them, counted by hand from the LoRA definition.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1: a frozen W0 (out x in)
gets the update B A with B (out x r) and A (r x in), so each adapted Linear(in, out) adds r * (in + out)
trainable parameters and nothing else trains. The targets name the projections of a Transformer block:
`qkv` the fused query/key/value projection, `out` the attention output projection, `mlp` BOTH MLP
projections (fc and proj; with swiglu the fused gate/up projection and the down projection).
"""

from __future__ import annotations

import pytest
import torch

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.workload.model import build_model, count_parameters
from llmsim.workload.profile import profile_workload

RANK = 4
TARGET_SETS = [("mlp",), ("qkv",), ("out",), ("qkv", "out", "mlp")]


def _spec(activation: str) -> ModelSpec:
    # Grouped-query attention (kv_heads < heads) and ffn != 4*hidden, so that every dimension is distinct.
    return ModelSpec(layers=3, hidden=32, heads=4, kv_heads=2, ffn_hidden=48, vocab=64, seq_len=8,
                     activation=activation)


def _adapter_params(spec: ModelSpec, targets: tuple[str, ...], rank: int) -> int:
    """Trainable parameters by hand: r * (in + out) per adapted Linear(in, out), per layer."""
    h, ffn, hd = spec.hidden, spec.ffn_hidden, spec.head_dim
    qkv_out = (spec.heads + 2 * spec.kv_heads) * hd       # q heads + k and v heads
    fc_out = 2 * ffn if spec.activation == "swiglu" else ffn  # swiglu fuses gate and up
    linears = {"qkv": [(h, qkv_out)], "out": [(h, h)], "mlp": [(h, fc_out), (ffn, h)]}
    per_layer = sum(rank * (n_in + n_out) for t in targets for n_in, n_out in linears[t])
    return spec.layers * per_layer


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("targets", TARGET_SETS, ids="+".join)
def test_lora_trainable_parameters_are_rank_times_in_plus_out_per_adapted_linear(
        activation: str, targets: tuple[str, ...]) -> None:
    spec = _spec(activation)
    lora = LoraSpec(rank=RANK, alpha=8, targets=targets)
    with torch.device("meta"):
        base, _ = count_parameters(build_model(spec, tie_embeddings=True))
        total, trainable = count_parameters(build_model(spec, tie_embeddings=True, lora=lora))
    expected = _adapter_params(spec, targets, RANK)
    assert trainable == expected
    assert total == base + expected  # the base is all there, frozen
    # the profile the cost model reads counts the same
    profile = profile_workload(Workload(model=spec, mode="train", batch=1, dtype="float32"),
                               SharingChoice(True, lora=lora))
    assert profile.trainable_params == expected
    assert profile.trainable_param_bytes == expected * 4


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_mlp_target_wraps_both_mlp_projections(activation: str) -> None:
    spec = _spec(activation)
    with torch.device("meta"):
        model = build_model(spec, tie_embeddings=True, lora=LoraSpec(rank=RANK, targets=("mlp",)))
    for block in model.blocks:
        trainable = {n for n, p in block.named_parameters() if p.requires_grad}
        assert trainable == {"mlp.fc.lora_a", "mlp.fc.lora_b", "mlp.proj.lora_a", "mlp.proj.lora_b"}
        assert block.mlp.fc.lora_a.shape == (RANK, spec.hidden)
        assert block.mlp.proj.lora_b.shape == (spec.hidden, RANK)
