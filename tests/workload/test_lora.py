"""LoRA adapters: one per targeted projection, counted by hand from the LoRA definition and PEFT's naming.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Sec. 4.1: a frozen W0 (out x in)
gets the update B A with B (out x r) and A (r x in), so each adapted projection adds r * (in + out)
trainable parameters and nothing else trains. Targets are PEFT's per-projection names (Hugging Face PEFT,
LoraConfig target_modules for Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj): q, k,
v, o, gate, up, down. The model fuses q, k, v into one Linear and gate, up into one; an adapter on one of
them adapts only that projection's output slice. Aliases: qkv = q, k, v; out = o; mlp = the MLP's
projections (swiglu: gate, up, down; gelu: up, down, a GELU MLP has no gate).
"""

from __future__ import annotations

import pytest
import torch

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload, lora_params_per_block
from llmsim.workload.model import build_model, count_parameters
from llmsim.workload.profile import profile_workload

RANK = 4
TARGET_SETS = [("mlp",), ("qkv",), ("out",), ("qkv", "out", "mlp"), ("q",), ("k", "v"), ("o", "down"),
               ("up",), ("q", "qkv")]


def _spec(activation: str) -> ModelSpec:
    # Grouped-query attention (kv_heads < heads) and ffn != 4*hidden, so that every dimension is distinct.
    return ModelSpec(layers=3, hidden=32, heads=4, kv_heads=2, ffn_hidden=48, vocab=64, seq_len=8,
                     activation=activation)


def _projections(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection of a block, unfused, as PEFT sees them."""
    h, ffn, hd = spec.hidden, spec.ffn_hidden, spec.head_dim
    shapes = {"q": (h, spec.heads * hd), "k": (h, spec.kv_heads * hd), "v": (h, spec.kv_heads * hd),
              "o": (h, h), "up": (h, ffn), "down": (ffn, h)}
    if spec.activation == "swiglu":
        shapes["gate"] = (h, ffn)
    return shapes


def _expand(targets: tuple[str, ...], spec: ModelSpec) -> set[str]:
    mlp = ["gate", "up", "down"] if spec.activation == "swiglu" else ["up", "down"]
    aliases = {"qkv": ["q", "k", "v"], "out": ["o"], "mlp": mlp}
    return {p for t in targets for p in aliases.get(t, [t])}


def _adapter_params(spec: ModelSpec, targets: tuple[str, ...], rank: int) -> int:
    """Trainable parameters by hand: r * (in + out) per adapted projection, per layer."""
    shapes = _projections(spec)
    return spec.layers * sum(rank * sum(shapes[p]) for p in _expand(targets, spec))


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("targets", TARGET_SETS, ids="+".join)
def test_lora_trainable_parameters_are_rank_times_in_plus_out_per_adapted_projection(
        activation: str, targets: tuple[str, ...]) -> None:
    spec = _spec(activation)
    lora = LoraSpec(rank=RANK, alpha=8, targets=targets)
    with torch.device("meta"):
        base, _ = count_parameters(build_model(spec, tie_embeddings=True))
        total, trainable = count_parameters(build_model(spec, tie_embeddings=True, lora=lora))
    expected = _adapter_params(spec, targets, RANK)
    assert trainable == expected
    assert total == base + expected  # the base is all there, frozen
    assert spec.layers * lora_params_per_block(spec, lora) == expected  # the cost model's own count
    # the profile the cost model reads counts the same
    profile = profile_workload(Workload(model=spec, mode="train", batch=1, dtype="float32"),
                               SharingChoice(True, lora=lora))
    assert profile.trainable_params == expected
    assert profile.trainable_param_bytes == expected * 4


@pytest.mark.parametrize("targets,expected", [
    (("q", "k", "v", "o"), 16_777_216),                           # 32 x 4 x 16 x (4096 + 4096)
    (("qkv", "out"), 16_777_216),                                 # the aliases: the same adapters
    (("q", "k", "v", "o", "gate", "up", "down"), 39_976_960),     # + 32 x 3 x 16 x (4096 + 11008)
    (("qkv", "out", "mlp"), 39_976_960),
])
def test_llama2_7b_rank_16_has_exactly_pefts_trainable_count(targets: tuple[str, ...], expected: int) -> None:
    spec = ModelSpec(preset="llama2-7b")
    with torch.device("meta"):
        _, trainable = count_parameters(build_model(spec, tie_embeddings=False,
                                                    lora=LoraSpec(rank=16, targets=targets)))
    assert trainable == expected


def test_gelu_has_no_gate_and_says_which_targets_it_has() -> None:
    with pytest.raises(ValueError, match=r"target 'gate' is not a projection of a gelu block LoRA can adapt \(allowed: q, k, v, "
                                         r"o, up, down; aliases qkv, out, mlp\)"):
        build_model(_spec("gelu"), tie_embeddings=True, lora=LoraSpec(rank=RANK, targets=("gate",)))


def _moe_spec() -> ModelSpec:
    return ModelSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn_hidden=48, vocab=64, seq_len=8,
                     activation="swiglu", moe={"experts": 4, "top_k": 2, "expert_ffn_hidden": 16})


def test_a_mixture_of_experts_adapts_its_attention_only() -> None:
    """The routed experts have no single MLP projection to adapt (workload.moe): the default targets (qkv, out,
    mlp) adapt q, k, v, o; a target on the MLP is refused by name (it was an AttributeError in the model)."""
    with torch.device("meta"):
        model = build_model(_moe_spec(), tie_embeddings=True, lora=LoraSpec(rank=RANK))
    for block in model.blocks:
        trainable = {n for n, p in block.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith("attn.") for n in trainable), trainable
    for targets in (("gate",), ("mlp",), ("down", "q")):
        with pytest.raises(ValueError, match=r"mixture-of-experts block LoRA can adapt \(allowed: q, k, v, o;"):
            build_model(_moe_spec(), tie_embeddings=True, lora=LoraSpec(rank=RANK, targets=targets))


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_mlp_alias_adapts_each_mlp_projection(activation: str) -> None:
    spec = _spec(activation)
    with torch.device("meta"):
        model = build_model(spec, tie_embeddings=True, lora=LoraSpec(rank=RANK, targets=("mlp",)))
    mlp = ["gate", "up"] if activation == "swiglu" else ["up"]
    for block in model.blocks:
        trainable = {n for n, p in block.named_parameters() if p.requires_grad}
        assert trainable == {f"mlp.fc.lora_{ab}.{p}" for p in mlp for ab in "ab"} | \
            {"mlp.proj.lora_a.down", "mlp.proj.lora_b.down"}
        assert block.mlp.fc.lora_a["up"].shape == (RANK, spec.hidden)
        assert block.mlp.fc.lora_b["up"].shape == (spec.ffn_hidden, RANK)
        assert block.mlp.proj.lora_b["down"].shape == (spec.hidden, RANK)


def test_an_adapter_on_a_fused_projection_changes_only_its_slice() -> None:
    """PEFT's forward on q_proj alone: q = W_q x + (alpha/r) B_q A_q x; k and v stay the base's."""
    spec = _spec("swiglu")
    torch.manual_seed(0)
    model = build_model(spec, tie_embeddings=True, lora=LoraSpec(rank=RANK, alpha=8, targets=("q", "v", "up")))
    qkv, fc = model.blocks[0].attn.qkv, model.blocks[0].mlp.fc
    for module in (qkv, fc):
        for b in module.lora_b.values():
            torch.nn.init.normal_(b)  # B starts at zero; make the update visible
    x = torch.randn(2, 5, spec.hidden)
    scale = 8 / RANK
    q_out, kv_out = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    base = qkv.base(x)
    expected = base.clone()
    expected[..., :q_out] += x @ qkv.lora_a["q"].T @ qkv.lora_b["q"].T * scale
    expected[..., q_out + kv_out:] += x @ qkv.lora_a["v"].T @ qkv.lora_b["v"].T * scale
    torch.testing.assert_close(qkv(x), expected)
    assert torch.equal(qkv(x)[..., q_out:q_out + kv_out], base[..., q_out:q_out + kv_out])  # k untouched
    ffn = spec.ffn_hidden
    h = fc(x)
    torch.testing.assert_close(h[..., :ffn], fc.base(x)[..., :ffn])  # gate untouched
    torch.testing.assert_close(h[..., ffn:], fc.base(x)[..., ffn:]
                               + x @ fc.lora_a["up"].T @ fc.lora_b["up"].T * scale)
    # and it trains: gradients reach exactly the adapters
    model(torch.randint(0, spec.vocab, (2, 5))).sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("targets", [("q",), ("qkv", "out", "mlp")], ids="+".join)
def test_adapter_forward_flops_are_pefts(targets: tuple[str, ...]) -> None:
    """Per token and adapted projection, PEFT's forward does x A^T (2 r in FLOPs) then (x A^T) B^T (2 r out):
    the traced forward adds exactly 2 r (in + out) per projection per token, nothing for the unadapted slices."""
    spec = _spec("swiglu")
    w = Workload(model=spec, mode="train", batch=2, dtype="float32")
    full = profile_workload(w, SharingChoice(True))
    lora = profile_workload(w, SharingChoice(True, lora=LoraSpec(rank=RANK, targets=targets)))
    tokens = 2 * spec.seq_len
    adapters = 2 * tokens * _adapter_params(spec, targets, RANK)
    assert lora.flops(phase="forward", kind="matmul", region="layers") == \
        full.flops(phase="forward", kind="matmul", region="layers") + adapters


def test_training_keeps_pefts_scale_and_add_and_only_inference_traces_an_engines_bytes() -> None:
    """LoRA's scale and add run in a LoRAMerge submodule (no parameters: the state dict is PEFT's): a training
    profile has no engine_bytes (PEFT's eager ops as traced); a decode profile's serving bytes differ from its fused
    ones in the layers' GEMMs and elementwise ops only."""
    spec = ModelSpec(preset="tiny")
    sharing = SharingChoice(tie_embeddings=True, lora=LoraSpec(rank=4, targets=["qkv", "out", "mlp"]))
    model = build_model(spec, tie_embeddings=True, lora=sharing.lora)
    assert not any("lora_merge" in name for name in model.state_dict())
    train = profile_workload(Workload(model=spec, mode="train", batch=2), sharing)
    assert all(t.engine_bytes is None for t in train.ops.values())
    decode = profile_workload(Workload(model=spec, mode="decode", batch=2, decode_tokens=3), sharing)
    differ = {key for key, t in decode.ops.items() if t.served() != t.traffic(True)}
    assert differ == {(phase, "layers", kind) for phase in ("prefill", "decode") for kind in ("matmul", "other")}
