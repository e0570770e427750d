"""Memory per device on a hand-made profile with round numbers (costmodel.memory's docstring, by hand).

GPT-2 small's shape (hidden 768, 12 heads, vocab 50257) at seq_len 128; the profile's counts are invented
round numbers, so each expected value below is the docstring's formula applied to them. Activations come from
the model's shape (costmodel.activations), not from the profile: its traced activation bytes are set to
numbers that would show if they leaked in.
"""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, memory_breakdown
from llmsim.costmodel.memory import (MemoryBreakdown, activation_bytes_per_layer, distinct_blocks_on_device,
                                     layers_per_device, stage_params)
from llmsim.workload.profile import WorkloadProfile

H, VOCAB, SEQ, HEADS = 768, 50257, 128, 12
LAYER_PARAMS = 8 * 1_000_000        # 8 blocks of a million parameters
EMBED = 60_000_000                  # token + position embeddings and final norm (tied: no separate head)
NORM = 2 * H                        # the final LayerNorm's weight and bias: with the head, on the last stage
BATCH = 16
PER_LAYER_ACT = 40_000_000          # traced saved bytes per layer for the whole batch: a cross-check only
EDGE_ACT = 9_000_000                # traced bytes saved outside the layers: a cross-check only
# Per token of GPT-2 small (h 768, 12 heads, GELU f 4h, no dropout) in bfloat16, the activation inventory
# (costmodel.activations) by hand. `sequence`: the layer input, norm1 output, norm2 input and output (2 bytes
# x h each) and the two LayerNorms' fp32 mean and rstd; `tensor`: Q, K, V, the attention output and the fc and
# activation outputs (2 x h each, 2 x 4h each), plus the kernel's own: flash's fp32 logsumexp per head,
# fused-softmax's 16-bit softmax output (heads x s), math's fp32 q, k, v and softmax output instead.
SEQUENCE = 4 * 2 * H + 2 * 2 * 4
TENSOR = 2 * (4 * H) + 2 * (2 * 4 * H)
FLASH = TENSOR + 4 * HEADS
FUSED = TENSOR + 2 * HEADS * SEQ
MATH = TENSOR - 3 * 2 * H + 3 * 4 * H + 4 * HEADS * SEQ
# Outside the layers: the first stage's token and position ids (int64; positions once per sequence), the
# last stage's final-norm input and statistics, head input and the loss's fp32 log-probabilities and targets.
FIRST_EDGE_PER_TOKEN, POSITION_IDS = 8, 8
LAST_SEQUENCE, LAST_TENSOR, TARGETS = 2 * H + 2 * 4 + 2 * H, 4 * VOCAB, 8


def _workload(mode: str = "train", dtype: str = "bfloat16", **model: object) -> Workload:
    return Workload(model=ModelSpec(preset="gpt2-small", layers=8, seq_len=SEQ, **model), mode=mode, batch=BATCH,
                    dtype=dtype)


def _profile(trainable: int | None = None, kv_cache_bytes: int = 0,
             layer_params: int = LAYER_PARAMS) -> WorkloadProfile:
    params = layer_params + EMBED
    return WorkloadProfile(mode="train", dtype="bfloat16", batch=BATCH, seq_len=SEQ, layers=8,
                           tokens_per_step=BATCH * SEQ, params=params,
                           trainable_params=params if trainable is None else trainable, param_bytes=2 * params,
                           trainable_param_bytes=2 * params, layer_params=layer_params, embed_params=EMBED,
                           activation_bytes=8 * PER_LAYER_ACT + EDGE_ACT, activation_bytes_per_layer=PER_LAYER_ACT,
                           kv_cache_bytes=kv_cache_bytes)


TIED = SharingChoice(True)
# Whole on every tensor-parallel rank (Megatron-LM): per layer the two layernorms (weight + bias) and the
# biases of the row-parallel out and proj projections; outside the layers the learned position table (the
# preset's 1024 positions) and the final layernorm.
WHOLE_LAYER = 2 * 2 * H + 2 * H
WHOLE_INPUT = 1024 * H                # the position table: whole on every tp rank (the final norm too)


def _tp(params: float, whole: float, tp: int) -> float:
    """`params` on one rank of `tp`: `whole` of them replicated, the rest split."""
    return (params - whole) / tp + whole


def test_layers_and_distinct_blocks_per_device() -> None:
    assert layers_per_device(8, Plan(pp=4)) == 2
    assert distinct_blocks_on_device(8, None, Plan(pp=2)) == 4
    assert distinct_blocks_on_device(8, 2, Plan(pp=2)) == 2        # layer i uses block i mod 2
    assert distinct_blocks_on_device(8, 8, Plan(pp=4)) == 2
    assert distinct_blocks_on_device(8, 1, Plan(pp=4)) == 1


def test_stage_parameters_tied_and_untied() -> None:
    w, p = _workload(), _profile()
    plan = Plan(tp=2, pp=4)
    layers = 2 * _tp(1_000_000, WHOLE_LAYER, 2)                   # 2 layers of the stage, over tp
    edge = _tp(EMBED - NORM, WHOLE_INPUT, 2)                      # the final norm is the last stage's
    assert stage_params(w, p, TIED, plan, "middle") == (layers, layers)
    assert stage_params(w, p, TIED, plan, "first") == (layers + edge, layers + edge)
    assert stage_params(w, p, TIED, plan, "last") == (layers + VOCAB * H / 2 + NORM,) * 2
    # untied: the head's vocab x hidden is part of embed_params and lives on the last stage only
    untied = SharingChoice(False)
    assert stage_params(w, p, untied, plan, "first") == (layers + _tp(EMBED - VOCAB * H - NORM, WHOLE_INPUT, 2),) * 2
    assert stage_params(w, p, untied, plan, "last") == (layers + VOCAB * H / 2 + NORM,) * 2
    # one stage: all of it
    # pp = 1: one stage holds the embeddings, the final norm and the head (tied: the embedding itself)
    assert stage_params(w, p, untied, Plan(tp=2), "first") == (8 * _tp(1_000_000, WHOLE_LAYER, 2)
                                                               + _tp(EMBED, WHOLE_INPUT + NORM, 2),) * 2
    # shared blocks: a stage holds the distinct blocks its layers use
    shared = _profile(layer_params=2 * 1_000_000)
    assert stage_params(w, shared, SharingChoice(True, layer_groups=2), Plan(pp=2), "middle") == (2e6, 2e6)


def test_lora_stages_train_only_their_blocks_adapters() -> None:
    w = _workload()
    p = _profile(trainable=800_000)                                 # 100k adapter parameters per block
    lora = SharingChoice(True, lora=LoraSpec(rank=4))
    params, trainable = stage_params(w, p, lora, Plan(tp=2, pp=4), "first")
    assert params == 2 * _tp(1e6, WHOLE_LAYER, 2) + _tp(EMBED - NORM, WHOLE_INPUT, 2)
    # gpt2-small's default targets (q, k, v, o, up, down) at tp=2: B of q, k, v, up and A of o, down split,
    # r (6h + 12h/2) of the r 18 h per block on each device (`lora_params_per_block`)
    assert trainable == pytest.approx(800_000 / 8 * 2 * (6 + 6) / 18, rel=1e-12)


@pytest.mark.parametrize("dtype,elem,state", [("bfloat16", 2, 12), ("float32", 4, 8)])
def test_training_memory_of_one_stage_by_zero_stage(dtype: str, elem: int, state: int) -> None:
    """ZeRO (Rajbhandari et al. 2020): stage 1 divides the optimizer state by dp, 2 also the gradients,
    3 also the parameters; mixed precision keeps 12 bytes of Adam state, fp32 8. ZeRO-3 also holds the
    units in flight whole (memory.zero3_gathered): here the largest is the embedding (EMBED less the final
    norm, the last stage's), with its gradient, plus the next block prefetched."""
    w, p = _workload(dtype=dtype), _profile()
    total = LAYER_PARAMS + EMBED
    largest, block = EMBED - NORM, 1_000_000
    for zero in range(4):
        mem = memory_breakdown(w, p, TIED, Plan(dp=4, micro_batch=2, microbatches=2, zero=zero))
        assert mem.stage == "first"
        gathered = (zero == 3) * (largest + block) * elem
        assert mem.params == pytest.approx(total * elem / (4 if zero >= 3 else 1) + gathered, rel=1e-12)
        assert mem.grads == pytest.approx(total * elem / (4 if zero >= 2 else 1) + (zero == 3) * largest * elem,
                                          rel=1e-12)
        assert mem.optimizer == pytest.approx(total * state / (4 if zero >= 1 else 1), rel=1e-12)
        assert mem.kv_cache == 0.0
    fp32_grads = memory_breakdown(w, p, TIED, Plan(dp=4, zero=2), Options(main_grads_fp32=True))
    assert fp32_grads.grads == pytest.approx(total * 4 / 4, rel=1e-12)
    fp32_z3 = memory_breakdown(w, p, TIED, Plan(dp=4, zero=3), Options(main_grads_fp32=True))
    assert fp32_z3.grads == pytest.approx(total * 4 / 4 + largest * 4, rel=1e-12)


def test_fp32_parameters_are_their_own_master() -> None:
    """Options.params_fp32 (JAX/Flax as MaxText runs it: fp32 kernels cast to bf16 inside each layer; optax's
    Adam state in the parameters' dtype): 4 B of parameters, 4 B of gradients, 8 B of m and v per parameter,
    16 B in all against mixed precision's 2 + 4 (fp32 main grads) + 12 = 18. ZeRO-3's gathered units stay
    16-bit (the cast is gathered) and so does the in-flight unit's gradient (reduce-scattered before its upcast:
    the old model held it in fp32)."""
    w, p = _workload(), _profile()
    total = LAYER_PARAMS + EMBED
    largest, block = EMBED - NORM, 1_000_000
    options = Options(main_grads_fp32=True, params_fp32=True)
    whole = memory_breakdown(w, p, TIED, Plan(dp=4, micro_batch=2, microbatches=2), options)
    assert (whole.params, whole.grads, whole.optimizer) == pytest.approx((total * 4, total * 4, total * 8), rel=1e-12)
    z3 = memory_breakdown(w, p, TIED, Plan(dp=4, micro_batch=2, microbatches=2, zero=3), options)
    assert z3.params == pytest.approx(total * 4 / 4 + (largest + block) * 2, rel=1e-12)
    assert z3.grads == pytest.approx(total * 4 / 4 + largest * 2, rel=1e-12)
    assert z3.optimizer == pytest.approx(total * 8 / 4, rel=1e-12)
    mixed = memory_breakdown(w, p, TIED, Plan(dp=4, micro_batch=2, microbatches=2, zero=3),
                             Options(main_grads_fp32=True))
    assert mixed.total - z3.total == pytest.approx(total * (2 + 4 + 12 - 16) / 4 + largest * 2, rel=1e-12)
    inference = memory_breakdown(_workload(mode="prefill"), p, TIED, Plan(), options)
    assert inference.params == pytest.approx(total * 2, rel=1e-12)  # training only: a served model is 16-bit


def test_without_master_weights_a_16_bit_adam_keeps_its_moments_in_the_workload_dtype() -> None:
    """Options.master_weights False (torch AdamW on a model cast to bf16, the measured backends' default): 2 B of
    parameters, 2 B of gradients, 2 x 2 B of m and v per parameter, no fp32 master: 8 B against mixed precision's
    2 + 2 + 12 = 16. ZeRO-1 shards the moments as it shards the mixed state. fp32 parameters (params_fp32, or an
    fp32 workload) are their own master either way."""
    w, p = _workload(), _profile()
    total = LAYER_PARAMS + EMBED
    plan = Plan(dp=4, micro_batch=2, microbatches=2)
    none = memory_breakdown(w, p, TIED, plan, Options(master_weights=False))
    mixed = memory_breakdown(w, p, TIED, plan, Options())
    assert (none.params, none.grads, none.optimizer) == pytest.approx((total * 2, total * 2, total * 4), rel=1e-12)
    assert mixed.optimizer == pytest.approx(total * 12, rel=1e-12)
    z1 = memory_breakdown(w, p, TIED, Plan(dp=4, micro_batch=2, microbatches=2, zero=1), Options(master_weights=False))
    assert z1.optimizer == pytest.approx(total * 4 / 4, rel=1e-12)
    own = memory_breakdown(w, p, TIED, plan, Options(params_fp32=True, master_weights=False))
    assert own.optimizer == pytest.approx(total * 8, rel=1e-12)
    fp32 = memory_breakdown(_workload(dtype="float32"), p, TIED, plan, Options(master_weights=False))
    assert fp32.optimizer == pytest.approx(total * 8, rel=1e-12)


def test_activations_from_the_inventory() -> None:
    """Per layer and micro-batch: `sequence` tensors whole on every rank without sp, the rest over tp; sp
    splits everything; cp splits the sequence; the kernel adds its own (module constants above)."""
    w, p = _workload(), _profile()
    b = 2
    tokens = b * SEQ
    flash = Options()
    assert activation_bytes_per_layer(w, TIED, Plan(micro_batch=b), flash) == (tokens * (SEQUENCE + FLASH), 0.0)
    assert activation_bytes_per_layer(w, TIED, Plan(tp=4, micro_batch=b), flash)[0] == tokens * (
        SEQUENCE + FLASH / 4)
    assert activation_bytes_per_layer(w, TIED, Plan(tp=4, sp=True, micro_batch=b), flash)[0] == tokens * (
        SEQUENCE + FLASH) / 4
    assert activation_bytes_per_layer(w, TIED, Plan(tp=4, sp=True, cp=2, micro_batch=b), flash)[0] == tokens * (
        SEQUENCE + FLASH) / 4 / 2
    fused, math = Options(attention="fused-softmax"), Options(attention="math")
    assert activation_bytes_per_layer(w, TIED, Plan(tp=2, sp=True, micro_batch=b), fused)[0] == tokens * (
        SEQUENCE + FUSED) / 2
    assert activation_bytes_per_layer(w, TIED, Plan(tp=2, sp=True, micro_batch=b), math)[0] == tokens * (
        SEQUENCE + MATH) / 2
    # selective: every kernel keeps its checkpointed 16-bit Q, K, V and nothing else of the core attention
    for kernel in (fused, math):
        assert activation_bytes_per_layer(w, TIED, Plan(tp=2, sp=True, micro_batch=b, recompute="selective"),
                                          kernel)[0] == tokens * (SEQUENCE + TENSOR) / 2
    # full recompute: each layer's input (b s h, split by cp, and by tp with sp), plus one layer's set
    kept, working = activation_bytes_per_layer(w, TIED, Plan(tp=2, sp=True, cp=2, micro_batch=b, recompute="full"),
                                               flash)
    assert kept == tokens * 2 * H / 2 / 2
    assert working == tokens * (SEQUENCE + FLASH) / 2 / 2
    kept, _ = activation_bytes_per_layer(w, TIED, Plan(tp=2, cp=2, micro_batch=b, recompute="full"), flash)
    assert kept == tokens * 2 * H / 2


def test_the_first_and_last_pipeline_stage_hold_what_their_schedule_keeps_in_flight() -> None:
    """1F1B: the first stage holds p micro-batches of its layers' activations and of the embeddings' ids,
    the last one micro-batch of its layers' and of the final norm, head input and loss (log-probabilities
    vocabulary-parallel over tp, the rest whole without sp)."""
    w, p = _workload(), _profile()
    plan = Plan(tp=2, pp=4, micro_batch=2, microbatches=8)
    per_layer, _ = activation_bytes_per_layer(w, TIED, plan, Options())
    tokens = 2 * SEQ
    first_edge = tokens * FIRST_EDGE_PER_TOKEN + SEQ * POSITION_IDS
    last_edge = tokens * (LAST_SEQUENCE + LAST_TENSOR / 2 + TARGETS)
    first = memory_breakdown(w, p, TIED, plan, stage="first")
    last = memory_breakdown(w, p, TIED, plan, stage="last")
    assert first.activations == pytest.approx(4 * (2 * per_layer + first_edge), rel=1e-12)
    assert last.activations == pytest.approx(1 * (2 * per_layer + last_edge), rel=1e-12)
    assert (first.stage, last.stage) == ("first", "last")
    assert last.params == pytest.approx((2 * _tp(1e6, WHOLE_LAYER, 2) + VOCAB * H / 2 + NORM) * 2, rel=1e-12)
    # context parallelism splits every token's share; sp also the final norm's and head's inputs
    cp2 = Plan(tp=2, pp=4, cp=2, sp=True, micro_batch=2, microbatches=8)
    per_layer_cp, _ = activation_bytes_per_layer(w, TIED, cp2, Options())
    assert memory_breakdown(w, p, TIED, cp2, stage="last").activations == pytest.approx(
        1 * (2 * per_layer_cp + tokens / 2 * (LAST_SEQUENCE / 2 + LAST_TENSOR / 2 + TARGETS)), rel=1e-12)
    busiest = memory_breakdown(w, p, TIED, plan)
    assert busiest == max(first, last, key=lambda m: m.total)
    # one stage holds one micro-batch of every layer and both edges
    alone = memory_breakdown(w, p, TIED, Plan(micro_batch=2, microbatches=8))
    assert alone.activations == pytest.approx(8 * activation_bytes_per_layer(w, TIED, Plan(micro_batch=2), Options())[0]
                                              + first_edge + tokens * (LAST_SEQUENCE + LAST_TENSOR + TARGETS),
                                              rel=1e-12)
    # GPipe keeps all m micro-batches in flight, the last stage's log-probabilities included
    gpipe = Plan(pp=2, micro_batch=2, microbatches=8, schedule="gpipe")
    layer = activation_bytes_per_layer(w, TIED, Plan(micro_batch=2), Options())[0]
    assert memory_breakdown(w, p, TIED, gpipe, stage="first").activations == pytest.approx(
        8 * (4 * layer + first_edge), rel=1e-12)
    assert memory_breakdown(w, p, TIED, gpipe, stage="last").activations == pytest.approx(
        8 * (4 * layer + tokens * (LAST_SEQUENCE + LAST_TENSOR + TARGETS)), rel=1e-12)


def test_the_traced_activation_bytes_do_not_enter_the_memory() -> None:
    """The profile's traced saved bytes are a cross-check (tests/costmodel/test_activations.py), not a source:
    changing them changes nothing."""
    w = _workload()
    plan = Plan(pp=2, micro_batch=2, microbatches=8)
    other = dataclasses.replace(_profile(), activation_bytes=5, activation_bytes_per_layer=1)
    assert memory_breakdown(w, other, TIED, plan) == memory_breakdown(w, _profile(), TIED, plan)


def test_the_last_stage_is_reported_when_it_needs_more() -> None:
    """A huge vocabulary makes the last stage's LM head outweigh everything on the first."""
    w = _workload(vocab=2_000_000)
    p = _profile()
    plan = Plan(pp=2, micro_batch=2, microbatches=2)
    mem = memory_breakdown(w, p, SharingChoice(True), plan)
    assert mem.stage == "last"
    assert mem.params == pytest.approx((4e6 + 2_000_000 * H + NORM) * 2, rel=1e-12)


def test_inference_holds_the_kv_cache_split_over_replicas_stages_and_kv_heads() -> None:
    kv = 2 * 8 * BATCH * SEQ * H * 2
    w, p = _workload("prefill"), _profile(kv_cache_bytes=kv)
    mem = memory_breakdown(w, p, TIED, Plan(dp=2, tp=4, pp=2, microbatches=1, micro_batch=8))
    assert mem.kv_cache == pytest.approx(kv / (2 * 2 * 4), rel=1e-12)
    assert mem.grads == mem.optimizer == mem.activations == 0.0
    assert mem.params == pytest.approx((4 * _tp(1e6, WHOLE_LAYER, 4) + _tp(EMBED - NORM, WHOLE_INPUT, 4)) * 2,
                                       rel=1e-12)
    gqa = _workload("prefill", kv_heads=3)
    assert memory_breakdown(gqa, p, TIED, Plan(tp=6)).kv_cache == pytest.approx(kv / 3, rel=1e-12)


def test_a_breakdown_sums_its_parts_and_fits_up_to_its_capacity() -> None:
    mem = MemoryBreakdown(params=1.0, grads=2.0, optimizer=4.0, activations=8.0, kv_cache=16.0)
    assert mem.total == 31.0
    assert mem.as_dict() == {"params": 1.0, "grads": 2.0, "optimizer": 4.0, "activations": 8.0, "kv_cache": 16.0}
    assert mem.fits(31.0) and not mem.fits(30.0) and mem.fits(0)
    assert mem.stage == "all" and mem.notes == ()


def test_zero3_holds_the_gradient_of_a_gathered_block_s_adapters_at_their_tensor_parallel_share() -> None:
    """With LoRA the gradient in flight of a gathered block is its adapters' on this rank: at tp = 2 the
    r (6h + 12h/2) of r 18 h per block (`lora_params_per_block`), not a 1/tp split of them."""
    from llmsim.costmodel.memory import zero3_gathered

    w = _workload()
    p = _profile(trainable=800_000)                                 # 100k adapter parameters per block
    lora = SharingChoice(True, lora=LoraSpec(rank=4))
    _, grads = zero3_gathered(w, p, lora, Plan(dp=2, tp=2, pp=4, zero=3), Options(), "middle")
    assert grads == pytest.approx(800_000 / 8 * (6 + 6) / 18 * 2, rel=1e-12)
