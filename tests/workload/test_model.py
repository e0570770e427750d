"""The one Transformer: published sizes, sharing variants, and every mode running for real on CPU."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from llmsim.config import LoraSpec, ModelSpec, Workload
from llmsim.workload.model import build_model, count_parameters
from llmsim.workload.presets import PRESETS, PUBLISHED_PARAMS
from llmsim.config import SharingChoice
from llmsim.workload.step import WorkloadStep


def _meta_model(spec: ModelSpec, **sharing) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(spec, tie_embeddings=sharing.pop("tie", spec.tie_embeddings), **sharing)


@pytest.mark.parametrize("preset", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_counts_match_the_published_models(preset: str) -> None:
    total, trainable = count_parameters(_meta_model(ModelSpec(preset=preset)))
    assert total == PUBLISHED_PARAMS[preset]
    assert trainable == total


def test_gpt3_175b_is_175b() -> None:
    """Brown et al. 2020, Table 2.1: 96 layers, d_model 12288, context 2048, the GPT-2 vocabulary (50257).
    Per layer qkv, out, fc, proj weights (12 h^2) and biases (3h + h + 4h + h) plus two layernorms (4h);
    token and position embeddings (tied with the head) and the final layernorm (2h): 174.6B."""
    total, _ = count_parameters(_meta_model(ModelSpec(preset="gpt3-175b")))
    h = 12288
    assert total == 96 * (12 * h * h + 13 * h) + (50257 + 2048) * h + 2 * h


def _layer_kinds(spec: ModelSpec) -> set[tuple[bool, bool]]:
    """(mixture of experts, windowed) of each layer: the kinds of block a model builds."""
    return {(spec.is_moe_layer(i), spec.is_windowed_layer(i)) for i in range(spec.layers)}


def test_every_preset_builds() -> None:
    """Every preset builds, cut to the fewest layers that still hold every kind of layer it has (DeepSeek-V3's
    dense first layers and its MoE ones, gpt-oss's windowed and full ones): its whole depth took 100 s of CI
    (thousands of expert modules); the whole models' totals are the published-count tests' (below, test_mla.py,
    test_moe.py)."""
    def cut_to(name: str, layers: int) -> ModelSpec | None:
        try:
            return ModelSpec(preset=name, layers=layers)
        except ValidationError:  # too few for the preset (DeepSeek's 3 dense layers and no MoE one)
            return None

    for name in PRESETS:
        full = ModelSpec(preset=name)
        cut = next(spec for n in range(1, full.layers + 1)
                   if (spec := cut_to(name, n)) is not None and _layer_kinds(spec) == _layer_kinds(full))
        assert count_parameters(_meta_model(cut))[0] > 0, name


def test_weights_are_drawn_on_a_real_device_and_not_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2's normal init (model._init_weights) draws every Linear and Embedding weight of a real build; on the
    meta device (the profiler's and the planner's builds) there are no values to draw, and drawing them anyway
    took 14 of the 24 s DeepSeek-V3 took to build there. A seeded real build is the same model every time."""
    from llmsim.workload import model as model_module

    drawn: list[torch.Tensor] = []
    real_normal = torch.nn.init.normal_

    def normal_(*args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(args[0] if args else kwargs["tensor"])
        return real_normal(*args, **kwargs)

    for device in ("meta", "cpu"):
        layers = [torch.nn.Linear(8, 4, device=device), torch.nn.Embedding(16, 8, device=device)]
        drawn.clear()
        with monkeypatch.context() as patch:
            patch.setattr(torch.nn.init, "normal_", normal_)
            for layer in layers:
                model_module._init_weights(layer)
        assert drawn == ([] if device == "meta" else [layer.weight for layer in layers]), device
    spec = ModelSpec(preset="tiny")
    torch.manual_seed(0)
    model = build_model(spec, tie_embeddings=True)
    torch.manual_seed(0)
    again = build_model(spec, tie_embeddings=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert float(model.tok_emb.weight.detach().std()) == pytest.approx(model_module.INIT_STD, rel=0.1)


def test_untying_adds_exactly_one_vocab_by_hidden_matrix() -> None:
    spec = ModelSpec(preset="gpt2-small")
    tied, _ = count_parameters(_meta_model(spec, tie=True))
    untied, _ = count_parameters(_meta_model(spec, tie=False))
    assert untied - tied == spec.vocab * spec.hidden


def test_layer_groups_share_blocks_round_robin() -> None:
    spec = ModelSpec(preset="gpt2-small")
    model = _meta_model(spec, layer_groups=3)
    assert len(model.blocks) == 3
    assert model.block_for_layer(4) is model.blocks[1]
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    full, _ = count_parameters(_meta_model(spec))
    assert count_parameters(model)[0] == full - (spec.layers - 3) * per_block


def test_lora_freezes_the_base_and_trains_only_adapters() -> None:
    spec = ModelSpec(preset="gpt2-small")
    lora = LoraSpec(rank=8, alpha=16, targets=("qkv",))
    total, trainable = count_parameters(_meta_model(spec, lora=lora))
    h = spec.hidden
    assert trainable == spec.layers * 3 * 8 * (h + h)  # q, k, v each: A r x in, B out x r (PEFT's adapters)
    assert total == PUBLISHED_PARAMS["gpt2-small"] + trainable


def _tiny(mode: str, **model) -> Workload:
    return Workload(model=ModelSpec(preset="tiny", **model), mode=mode, batch=2, decode_tokens=4, dtype="float32")


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_each_mode_runs_on_cpu(mode: str) -> None:
    out = WorkloadStep(_tiny(mode), SharingChoice(True), seed=0).step()
    if mode == "train":
        assert out.dim() == 0 and torch.isfinite(out)
    else:
        assert out.shape == (2, 1)


def test_training_steps_lower_the_loss_of_a_fixed_batch() -> None:
    step = WorkloadStep(_tiny("train"), SharingChoice(True), seed=0)
    step.optimizer.param_groups[0]["lr"] = 3e-3
    first = step.step().item()
    for _ in range(10):
        last = step.step().item()
    assert last < first


def test_decode_with_kv_cache_matches_full_recompute() -> None:
    """Greedy tokens from the cache equal those from re-running the whole prefix (no cache bug)."""
    for model in ({}, {"positions": "rotary", "norm": "rmsnorm", "activation": "swiglu", "kv_heads": 2}):
        step = WorkloadStep(_tiny("decode", **model), SharingChoice(True), seed=0)
        with torch.inference_mode():
            token, cache = step.prefill(step.cache_len)
            generated = [token]
            for i in range(3):
                token = step.decode_one(token, cache, step.spec.seq_len + i)
                generated.append(token)
            seq = step.tokens
            for expected in generated:
                logits = step.model(seq, head="last")
                assert torch.equal(logits.argmax(-1), expected)
                seq = torch.cat([seq, expected], dim=1)


def test_encoder_is_bidirectional() -> None:
    """Changing the last token changes the first position's output of an encoder, not of a decoder."""
    for causal in (False, True):
        step = WorkloadStep(_tiny("prefill", causal=causal), SharingChoice(True), seed=0)
        with torch.inference_mode():
            a = step.model(step.tokens, head="none")
            changed = step.tokens.clone()
            changed[:, -1] = (changed[:, -1] + 1) % step.spec.vocab
            b = step.model(changed, head="none")
        assert torch.allclose(a[:, 0], b[:, 0]) is causal


def test_lora_step_updates_only_adapters() -> None:
    step = WorkloadStep(_tiny("train"), SharingChoice(True, lora=LoraSpec(rank=4)), seed=0)
    before = {n: p.detach().clone() for n, p in step.model.named_parameters()}
    step.step()
    step.step()  # B starts at zero, so A only moves from the second step on
    changed = {n for n, p in step.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


def _dropout_spec(dropout: float | None) -> ModelSpec:
    extra = {} if dropout is None else {"dropout": dropout}
    return ModelSpec(layers=2, hidden=32, heads=4, vocab=64, seq_len=16, **extra)


def _outputs(spec: ModelSpec, training: bool, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(spec, tie_embeddings=True)
    model.train(training)
    tokens = torch.randint(0, spec.vocab, (2, spec.seq_len), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(seed)  # the dropout masks
    with torch.no_grad():
        return model(tokens)


def test_dropout_changes_training_output_but_not_eval_output() -> None:
    plain, dropped = _dropout_spec(None), _dropout_spec(0.1)
    assert not torch.equal(_outputs(plain, True), _outputs(dropped, True))
    assert not torch.equal(_outputs(dropped, True, seed=1), _outputs(dropped, True, seed=2))  # random masks
    assert torch.equal(_outputs(plain, False), _outputs(dropped, False))  # eval: identity


def test_zero_dropout_is_exactly_no_dropout() -> None:
    assert _dropout_spec(None).dropout == 0.0
    assert torch.equal(_outputs(_dropout_spec(None), True), _outputs(_dropout_spec(0.0), True))
    # and no extra modules (the traced module tree, and so every profile, is unchanged)
    assert [n for n, _ in build_model(_dropout_spec(0.0), tie_embeddings=True).named_modules()] == \
        [n for n, _ in build_model(_dropout_spec(None), tie_embeddings=True).named_modules()]


def test_dropout_outside_zero_to_one_is_rejected() -> None:
    import pydantic
    for p in (-0.1, 1.0):
        with pytest.raises(pydantic.ValidationError):
            _dropout_spec(p)


def test_a_training_step_with_dropout_runs_on_cpu() -> None:
    w = Workload(model=_dropout_spec(0.1), mode="train", batch=2, dtype="float32")
    loss = WorkloadStep(w, SharingChoice(True)).train_step()
    assert torch.isfinite(loss)


def test_micro_batch_accumulation_equals_one_pass() -> None:
    """batch/micro_batch forward-backward passes give the whole batch's loss and update."""
    whole = WorkloadStep(_tiny("train"), SharingChoice(True), seed=0)
    accumulated = WorkloadStep(_tiny("train"), SharingChoice(True), seed=0, micro_batch=1)
    assert accumulated.micro_batch == 1 and whole.micro_batch == 2
    assert torch.allclose(whole.step(), accumulated.step(), atol=1e-6)
    for a, b in zip(whole.model.parameters(), accumulated.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_micro_batch_must_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="not divisible by micro_batch=3"):
        WorkloadStep(Workload(model=ModelSpec(preset="tiny"), batch=4, dtype="float32"), SharingChoice(True),
                     micro_batch=3)


def test_decode_runs_at_exactly_the_learned_position_limit() -> None:
    """seq_len + decode_tokens == max_positions (the largest decode validation accepts) runs on the real
    model: the prompt takes positions 0..seq_len-1 and the generated tokens fed back take the positions
    after it, all inside the table of max_positions rows; one position past the table is an error."""
    w = Workload(model=ModelSpec(preset="tiny", seq_len=8, max_positions=16), mode="decode", batch=2,
                 decode_tokens=8, dtype="float32")
    step = WorkloadStep(w, SharingChoice(True), seed=0)
    assert step.model.pos_emb.num_embeddings == 16 == w.model.seq_len + w.decode_tokens
    assert step.cache_len == 16
    out = step.step()
    assert out.shape == (2, 1)
    with torch.inference_mode():
        token, cache = step.prefill(step.cache_len)
        token = step.decode_one(token, cache, 15)  # the table's last row and the cache's last slot
        assert token.shape == (2, 1)
        with pytest.raises(IndexError):
            step.decode_one(token, cache, 16)


# -- sliding-window attention and attention sinks on the real (cpu) backend ----------------------------------------
def _windowed(**model) -> ModelSpec:
    return ModelSpec(preset="tiny-moe", seq_len=24, max_positions=64, sliding_window=6, full_attention_every=2,
                     attention_sinks=True, bias=True, **model)


def test_a_windowed_model_decodes_token_by_token_as_its_full_forward() -> None:
    """The windowed layers' ring caches (min(length, W) slots) and the band mask agree: prefill 12 tokens, decode
    8 more one at a time, and every logit equals the uncached forward's; the window matters (a full model differs)
    and the windowed layers' caches hold W slots."""
    torch.manual_seed(0)
    model = build_model(_windowed(), tie_embeddings=False).eval()
    for m in model.modules():
        if getattr(m, "sinks", None) is not None:
            torch.nn.init.normal_(m.sinks)
    idx = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        whole = model(idx)
        cache = model.new_cache(2, 20, torch.float32, "cpu")
        assert [c.k.shape[-2] for c in cache] == [6, 20]
        steps = [model(idx[:, :12], cache, head="last")[:, -1]]
        steps += [model(idx[:, i:i + 1], cache, start=i)[:, -1] for i in range(12, 20)]
        full = build_model(_windowed(), tie_embeddings=False).eval()
        full.load_state_dict(model.state_dict())
        full.spec = full.spec.model_copy(update={"sliding_window": None, "full_attention_every": None})
        unwindowed = full(idx)
    for i, logits in enumerate(steps):
        assert torch.allclose(logits, whole[:, 11 + i], atol=1e-5)
    assert not torch.allclose(unwindowed[:, -1], whole[:, -1], atol=1e-3)


@pytest.mark.parametrize("mode", ["train", "decode"])
def test_a_tiny_windowed_model_trains_and_decodes_on_the_cpu(mode: str) -> None:
    workload = Workload(model=_windowed(), mode=mode, batch=2, decode_tokens=12)
    step = WorkloadStep(workload, SharingChoice(tie_embeddings=False), device="cpu")
    out = step.step()
    assert torch.isfinite(out.float()).all()
    if mode == "train":
        assert step.model.blocks[0].attn.core.sinks.grad is None   # zero_grad(set_to_none) after the step
