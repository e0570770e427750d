"""Memory per device against hand computations (ZeRO, the activation inventory, parameter sharing)."""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.config import LoraSpec, ModelSpec, Workload
from llmsim.costmodel import Options, Plan, memory_breakdown
from llmsim.costmodel.memory import activation_bytes_per_layer, stage_params
from tests.costmodel.helpers import gpt2, gpt3_175b, profiled


def test_gpt3_175b_tp8_pp16_matches_a_hand_computation() -> None:
    workload, profile, sharing = gpt3_175b()
    plan = Plan(dp=1, tp=8, pp=16, microbatches=1536, recompute="full")
    mem = memory_breakdown(workload, profile, sharing, plan)
    h, layers, vocab, seq = 12288, 96, 50257, 2048
    per_layer = 12 * h * h + 13 * h                     # QKV, out, fc, proj weights + biases, 2 layernorms
    # Whole on every TP rank (Megatron-LM): 2 layernorms (weight + bias) and the out/proj biases per layer,
    # and the position table; the rest (and the word embeddings) splits 8 ways. The final norm is the last
    # stage's.
    whole_layer, whole_edge = 6 * h, seq * h
    first_stage = ((layers // 16 * (per_layer - whole_layer) + vocab * h) / 8
                   + layers // 16 * whole_layer + whole_edge)
    assert mem.stage == "first"
    assert mem.params == pytest.approx(2 * first_stage, rel=1e-6)       # bf16
    assert mem.grads == pytest.approx(2 * first_stage, rel=1e-6)        # bf16
    assert mem.optimizer == pytest.approx(12 * first_stage, rel=1e-6)   # fp32 master + Adam m, v
    # Full recomputation keeps each layer's input (s*b*h bf16) for the p micro-batches in flight on
    # the first 1F1B stage, plus one layer's working set while it is recomputed.
    inputs = 16 * (layers // 16) * seq * h * 2
    # The working set (costmodel.activations, flash, no dropout), per token: whole on each tensor-parallel
    # rank the layer input, the norm1 output, the norm2 input and output (2h bytes each) and the two
    # LayerNorms' fp32 mean and rstd; split over tp=8 Q, K, V, the attention output (2h each), the fc and GELU
    # outputs (2 x 4h each) and the fp32 logsumexp of the 96 heads.
    working = seq * (4 * 2 * h + 2 * 2 * 4 + (4 * 2 * h + 2 * 2 * 4 * h + 4 * 96) / 8)
    # and the first stage's embedding ids for each micro-batch in flight: token and position ids (int64)
    ids = 16 * (seq * 8 + seq * 8)
    assert mem.activations == pytest.approx(inputs + working + ids, rel=1e-12)
    assert mem.total == pytest.approx((2 + 2 + 12) * first_stage + inputs + working + ids, rel=1e-9)


def test_last_stage_holds_the_final_norm_and_the_head_the_first_the_embeddings() -> None:
    # GPT-3 175B, tp=8, pp=16 (tied embedding: the last stage keeps its copy as the LM head, Narayanan et al.
    # 2021): exact parameter counts per device. The final LayerNorm (weight + bias, 2h) feeds the head.
    workload, profile, sharing = gpt3_175b()
    plan = Plan(dp=1, tp=8, pp=16, microbatches=1536, recompute="full")
    h, vocab, seq = 12288, 50257, 2048
    block = 12 * h * h + 13 * h
    first, _ = stage_params(workload, profile, sharing, plan, "first")
    middle, _ = stage_params(workload, profile, sharing, plan, "middle")
    last, trainable = stage_params(workload, profile, sharing, plan, "last")
    # what stays whole on every tp rank (Megatron-LM): per block the 2 layernorms and 2 row-parallel biases
    # (6h), the position table (first stage) and the final norm (last stage)
    whole = 6 * h
    assert first == (6 * (block - whole) + vocab * h) / 8 + 6 * whole + seq * h
    assert middle == 6 * (block - whole) / 8 + 6 * whole
    assert last == (6 * (block - whole) + vocab * h) / 8 + 6 * whole + 2 * h
    assert trainable == last
    # an RMSNorm without bias (Llama-style) is h parameters; an untied head is the last stage's own matrix
    spec = ModelSpec(layers=4, hidden=64, heads=4, vocab=100, seq_len=16, norm="rmsnorm", bias=False,
                     positions="rotary")
    untied = Workload(model=spec, batch=2)
    prof, shr = profiled(untied, tie=False)
    two = Plan(pp=2, microbatches=2)
    block = 2 * 64 + 64 * 3 * 64 + 64 * 64 + 64 * 256 + 256 * 64       # 2 norms, QKV, out, fc, proj
    assert stage_params(untied, prof, shr, two, "first")[0] == 2 * block + 100 * 64
    assert stage_params(untied, prof, shr, two, "last")[0] == 2 * block + 100 * 64 + 64
    assert stage_params(untied, prof, shr, Plan(), "first")[0] == 4 * block + 2 * 100 * 64 + 64


def test_zero_stages_divide_the_right_parts_by_dp() -> None:
    workload = gpt2()
    profile, sharing = profiled(workload)
    base = Plan(dp=8, microbatches=1)
    z = {k: memory_breakdown(workload, profile, sharing, dataclasses.replace(base, zero=k)) for k in range(4)}
    assert z[1].optimizer == pytest.approx(z[0].optimizer / 8)
    assert z[1].grads == z[0].grads and z[1].params == z[0].params
    assert z[2].grads == pytest.approx(z[0].grads / 8)
    assert z[2].params == z[0].params
    # ZeRO-3 also holds the units in flight unsharded (memory.zero3_gathered): GPT-2 small's largest unit is
    # its token + position embedding (the tied head: the same matrix), plus the next block prefetched
    h = 768
    embedding, block = (50257 + 1024) * h, 12 * h * h + 13 * h
    assert z[3].params == pytest.approx(z[0].params / 8 + (embedding + block) * 2, rel=1e-12)
    assert z[3].grads == pytest.approx(z[0].grads / 8 + embedding * 2, rel=1e-12)
    assert z[3].activations == z[0].activations


def test_zero3_holds_the_largest_unit_and_the_prefetched_block_unsharded() -> None:
    """DeepSpeed's estimate_zero3_model_states_mem_needs adds the largest layer's 16-bit parameters and
    gradient (4 bytes per parameter); FSDP's BACKWARD_PRE prefetch adds the next block's parameters."""
    workload, profile, sharing = gpt3_175b()
    h, vocab = 12288, 50257
    block = (12 * h * h + 7 * h) / 8 + 6 * h              # one block on a tp=8 rank (norms, row biases whole)
    plan = Plan(dp=8, tp=8, pp=16, zero=3, microbatches=192, recompute="full")
    last = memory_breakdown(workload, profile, sharing, plan, stage="last")
    params, trainable = stage_params(workload, profile, sharing, plan, "last")
    # the last stage's head vocab x h / 8 + 2h is smaller than a block: the block is the largest unit
    assert vocab * h / 8 + 2 * h < block
    assert last.params == pytest.approx(params * 2 / 8 + 2 * block * 2, rel=1e-12)
    assert last.grads == pytest.approx(trainable * 2 / 8 + block * 2, rel=1e-12)
    # without data parallelism nothing is gathered; ZeRO-2 gathers nothing either
    alone = memory_breakdown(workload, profile, sharing, dataclasses.replace(plan, dp=1), stage="last")
    assert alone.params == pytest.approx(params * 2, rel=1e-12)
    two = memory_breakdown(workload, profile, sharing, dataclasses.replace(plan, zero=2), stage="last")
    assert two.params == pytest.approx(params * 2, rel=1e-12)
    # inference holds the parameters in flight, no gradient
    prefill = Workload(model=workload.model, mode="prefill", batch=1536)
    inf = memory_breakdown(prefill, profile, sharing, plan, stage="last")
    assert inf.params == pytest.approx(params * 2 / 8 + 2 * block * 2, rel=1e-12) and inf.grads == 0.0


def test_sequence_parallelism_divides_all_activations_by_tp() -> None:
    workload = gpt2()
    _, sharing = profiled(workload)
    alone, _ = activation_bytes_per_layer(workload, sharing, Plan(), Options())
    tp4, _ = activation_bytes_per_layer(workload, sharing, Plan(tp=4), Options())
    sp4, _ = activation_bytes_per_layer(workload, sharing, Plan(tp=4, sp=True), Options())
    assert sp4 == pytest.approx(alone / 4)
    assert sp4 < tp4 < alone
    # without sp the norms' b x s x h inputs and outputs (4 of them) and their fp32 statistics (mean and rstd,
    # two norms) stay whole on every rank and only the rest is split over tp
    m = workload.model
    replicated = m.seq_len * (4 * m.hidden * 2 + 2 * 2 * 4)
    assert tp4 == pytest.approx(replicated + (alone - replicated) / 4, rel=1e-12)


def test_selective_recompute_drops_the_core_attention_and_full_keeps_inputs_only() -> None:
    workload = gpt2()
    _, sharing = profiled(workload)
    math = Options(attention="math")
    none, _ = activation_bytes_per_layer(workload, sharing, Plan(), math)
    selective, _ = activation_bytes_per_layer(workload, sharing, Plan(recompute="selective"), math)
    full, working = activation_bytes_per_layer(workload, sharing, Plan(recompute="full"), math)
    m = workload.model
    # the math kernel keeps fp32 q, k, v and the fp32 softmax output; the checkpoint its 16-bit Q, K, V
    core = m.seq_len * (3 * 4 * m.hidden + 4 * m.heads * m.seq_len)
    assert none - selective == core - m.seq_len * 3 * 2 * m.hidden
    assert full == m.seq_len * m.hidden * 2
    assert working == none


def test_math_sdpa_saves_one_fp32_score_matrix_per_head() -> None:
    """The traced module grows by one fp32 s x s tensor per head (the softmax output, which the second bmm
    reads too), as the math kernel's inventory does."""
    def per_layer(heads: int) -> tuple[int, float]:
        w = Workload(model=ModelSpec(preset="gpt2-small", layers=1, heads=heads, seq_len=256), batch=2)
        profile, sharing = profiled(w)
        return profile.activation_bytes_per_layer, activation_bytes_per_layer(
            w, sharing, Plan(micro_batch=2), Options(attention="math"))[0]

    (traced12, derived12), (traced6, derived6) = per_layer(12), per_layer(6)
    assert traced12 - traced6 == derived12 - derived6 == 4 * 2 * 6 * 256 ** 2


def test_layer_groups_shrink_parameters_and_optimizer_state_but_not_flops() -> None:
    workload = gpt2()
    plain, plain_sharing = profiled(workload)
    shared, shared_sharing = profiled(workload, layer_groups=1)
    plan = Plan(microbatches=8)
    a = memory_breakdown(workload, plain, plain_sharing, plan)
    b = memory_breakdown(workload, shared, shared_sharing, plan)
    # 12 blocks of 7.1M parameters become 1 (Lan et al. 2020, ALBERT); the embeddings and final norm stay
    h = workload.model.hidden
    per_block = 12 * h * h + 13 * h
    edge = (50257 + 1024 + 2) * h
    for mem, blocks in ((a, 12), (b, 1)):
        assert mem.params == pytest.approx(2 * (blocks * per_block + edge), rel=1e-12)       # bf16
        assert mem.optimizer == pytest.approx(12 * (blocks * per_block + edge), rel=1e-12)   # ZeRO's K = 12
    assert b.activations == a.activations
    assert shared.model_flops_per_step == pytest.approx(plain.model_flops_per_step)


def test_kv_cache_is_split_over_data_pipeline_and_kv_heads() -> None:
    workload = Workload(model=ModelSpec(preset="llama2-70b", layers=8, seq_len=512), mode="decode", batch=8,
                        decode_tokens=16)
    profile, sharing = profiled(workload, tie=False)
    one = memory_breakdown(workload, profile, sharing, Plan(microbatches=8))
    assert one.kv_cache == profile.kv_cache_bytes and one.grads == 0 and one.optimizer == 0
    # 8 KV heads: tp=16 replicates them, so the cache splits 8 ways, not 16
    tp16 = memory_breakdown(workload, profile, sharing, Plan(tp=16, microbatches=8))
    assert tp16.kv_cache == pytest.approx(profile.kv_cache_bytes / 8)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("main_grads_fp32", [False, True])
def test_lora_gradients_and_optimizer_state_are_the_adapters_split_over_tp(tp: int, main_grads_fp32: bool) -> None:
    """A frozen base trains only its adapters (Hu et al. 2021), all inside the blocks. Tensor parallelism
    splits each adapter as it splits its projection (Shoeybi et al. 2019, Sec. 3): column-parallel q, k, v,
    up (GELU: no gate) split B (out x r) and replicate A (r x in); row-parallel o, down split A and replicate
    B. gpt2-small, r = 8, per block and device: q, k, v, o r (h + h/tp) each, up r (h + 4h/tp), down
    r (4h/tp + h) = r (6h + 12h/tp); 16-bit (or fp32 main) gradients and 12 bytes of mixed-precision Adam
    state each (Rajbhandari et al. 2020, K=12). The frozen base still counts in full (over tp, but for what stays whole on each rank)."""
    workload = gpt2()
    profile, sharing = profiled(workload, lora=LoraSpec(rank=8))
    h, r, layers = 768, 8, 12
    assert profile.trainable_params == layers * r * 18 * h
    plan = Plan(tp=tp, microbatches=4)
    mem = memory_breakdown(workload, profile, sharing, plan, Options(main_grads_fp32=main_grads_fp32))
    trainable = layers * r * (6 * h + 12 * h // tp)
    assert mem.grads == pytest.approx(trainable * (4 if main_grads_fp32 else 2), rel=1e-12)
    assert mem.optimizer == pytest.approx(trainable * 12, rel=1e-12)
    h, layers, positions = 768, 12, 1024
    whole = layers * 6 * h + positions * h + 2 * h if tp > 1 else 0  # norms, row biases, positions, final norm
    assert mem.params == pytest.approx(((profile.params - whole) / tp + whole) * 2, rel=1e-12)
    # pp=2 splits the adapters over the stages as well: each holds half of the layers' adapters
    staged = memory_breakdown(workload, profile, sharing, Plan(tp=tp, pp=2, microbatches=4))
    assert staged.grads == pytest.approx(trainable / 2 * 2, rel=1e-12)
    assert staged.optimizer == pytest.approx(trainable / 2 * 12, rel=1e-12)


def test_lora_adapters_of_grouped_query_kv_split_over_at_most_kv_heads_ranks() -> None:
    """llama2-70b (64 heads, 8 KV heads of 128), r = 16 on q, k, v, o, tp = 16: q's B splits 16 ways, k's
    and v's only 8 (Megatron-LM replicates a KV head over tp/kv_heads ranks), o's A 16 ways."""
    from llmsim.config import lora_params_per_block

    spec = ModelSpec(preset="llama2-70b")
    lora = LoraSpec(rank=16, targets=("q", "k", "v", "o"))
    h, kv = 8192, 8 * 128
    assert lora_params_per_block(spec, lora) == 16 * ((h + h) + 2 * (h + kv) + (h + h))
    assert lora_params_per_block(spec, lora, 16) == 16 * ((h + h // 16) + 2 * (h + kv // 8) + (h // 16 + h))


def test_the_description_lists_the_nonzero_parts_in_decimal_gigabytes() -> None:
    from llmsim.costmodel.memory import MemoryBreakdown

    mem = MemoryBreakdown(params=80e9, grads=0.0, optimizer=2.25e9, activations=0.5, kv_cache=1.5e9)
    assert mem.describe(24e9) == ("needs 83.8 GB/device (params 80.0, optimizer 2.2, activations 0.0, "
                                  "kv cache 1.5) > 24.0 GB")
    without = "needs 83.8 GB/device (params 80.0, optimizer 2.2, activations 0.0, kv cache 1.5)"
    assert mem.describe() == mem.describe(0) == without
    # 1e18 bytes = 1e9 GB: a divisor off by one byte would show in the last digits
    huge = MemoryBreakdown(params=1e18)
    assert huge.describe(1e18) == "needs 1000000000.0 GB/device (params 1000000000.0) > 1000000000.0 GB"


def test_the_params_memo_counts_as_the_functions_do_for_plans_that_differ_in_what_its_key_drops() -> None:
    """Inside params_memo, stage_block_params and stage_params key a plan by params_plan_key (tp, pp, the split,
    the chunks per device, ep, etp); plans that differ in that key and in everything else (dp, cp, the
    micro-batch and its count, sp, ZeRO, recompute, the schedule where it leaves v alone) get the counts made
    without the memo, whatever the order they are asked in, for a dense model with LoRA or shared layers
    and for a mixture of experts with dense first layers; so does stage_param_counts (the four counts a step
    reads, one look-up keyed by params_plan_key and Options.grad_accumulation_fusion), asked with and without
    fused gradient accumulation. A key missing a field the counts read fails here (the first plan asked would
    answer for the others)."""
    import random

    from llmsim.costmodel.memory import (StageParamCounts, accumulated_params, params_memo, stage_block_params,
                                         stage_expert_params, stage_param_counts)

    rng = random.Random(5)
    dense = gpt2()
    moe_w = Workload(model=ModelSpec(preset="tiny-moe", layers=8, seq_len=64, moe={"first_dense_layers": 1}),
                     mode="train", batch=8)
    cases = []
    for w, sharings in ((dense, [dict(), dict(tie=False, layer_groups=4), dict(lora=LoraSpec(rank=8))]),
                        (moe_w, [dict(), dict(tie=False)])):
        for kw in sharings:
            profile, sharing = profiled(w, **kw)
            for _ in range(120):
                pp = rng.choice([1, 2, 4])
                schedule = rng.choice(["gpipe", "1f1b", "interleaved"]) if pp > 1 else "1f1b"
                v = rng.choice([1, 2]) if schedule == "interleaved" else 1
                split = rng.choice([None, None, (w.model.layers - pp + 1, *([1] * (pp - 1)))])
                plan = Plan(dp=rng.choice([1, 2, 4]), tp=rng.choice([1, 2, 4]), pp=pp, cp=rng.choice([1, 2]),
                            micro_batch=rng.choice([1, 2, 4]), microbatches=rng.choice([1, 2, 8]),
                            sp=rng.choice([False, True]), zero=rng.choice([0, 1, 3]), schedule=schedule,
                            virtual_stages=v if schedule == "interleaved" else 1,
                            recompute=rng.choice(["none", "full"]), stage_layers=split,
                            ep=rng.choice([1, 2]) if w is moe_w else 1, etp=rng.choice([1, 2]) if w is moe_w else 1)
                stage = rng.choice([*range(pp), "first", "middle", "last"])
                args = (w, profile, sharing, plan, stage)
                options = Options(grad_accumulation_fusion=rng.choice([False, True]))
                counts = StageParamCounts(*stage_params(*args), *stage_block_params(*args),
                                          stage_expert_params(w, profile, plan, stage),
                                          accumulated_params(*args, options))
                assert stage_param_counts(*args, options) == counts  # the same functions, outside the memo
                cases.append((args, options, stage_block_params(*args), stage_params(*args), counts))
    rng.shuffle(cases)
    with params_memo():
        for args, options, block, whole, counts in cases:
            assert stage_block_params(*args) == block, args[3:]
            assert stage_params(*args) == whole, args[3:]
            assert stage_param_counts(*args, options) == counts, (args[3:], options)


def test_activation_sizes_keyed_by_activation_plan_key_are_those_of_the_whole_plan() -> None:
    """activation_bytes_per_layer and edge_activation_bytes are cached per activation_plan_key (micro_batch, tp,
    sp, cp, recompute of a dense model; a mixture of experts' whole plan): for random plans that differ in
    everything (dp, pp, the schedule, ZeRO, the split, ep ...), each equals the uncached function asked with the
    whole plan, for a dense model (plain, LoRA, shared layers, float8) and a mixture of experts. A key missing a
    field the sizes read fails here (the key's default would be sized instead)."""
    import random

    from llmsim.costmodel import memory

    rng = random.Random(7)
    dense = gpt2()
    fp8 = dense.model_copy(update={"dtype": "float8"})
    moe_w = Workload(model=ModelSpec(preset="tiny-moe", layers=8, seq_len=64, moe={"first_dense_layers": 1}),
                     mode="train", batch=8)
    checked = 0
    for w, sharings in ((dense, [dict(), dict(tie=False, layer_groups=4), dict(lora=LoraSpec(rank=8))]),
                        (fp8, [dict()]), (moe_w, [dict()])):
        for kw in sharings:
            _, sharing = profiled(w, **kw)
            for _ in range(60):
                pp = rng.choice([1, 2, 4])
                plan = Plan(dp=rng.choice([1, 2, 4]), tp=rng.choice([1, 2, 4]), pp=pp, cp=rng.choice([1, 2]),
                            micro_batch=rng.choice([1, 2, 4]), microbatches=rng.choice([1, 2, 8]),
                            sp=rng.choice([False, True]), zero=rng.choice([0, 1, 3]),
                            schedule=rng.choice(["gpipe", "1f1b"]),
                            recompute=rng.choice(["none", "selective", "selective-op", "full"]),
                            ep=rng.choice([1, 2]) if w is moe_w else 1, etp=rng.choice([1, 2]) if w is moe_w else 1)
                options = Options()
                assert memory.activation_bytes_per_layer(w, sharing, plan, options) == \
                    memory._activation_bytes_per_layer.__wrapped__(w, sharing, plan, options), plan
                assert memory.edge_activation_bytes(w, sharing, plan) == \
                    memory._edge_activation_bytes.__wrapped__(w, sharing, plan), plan
                checked += 1
    assert checked == 300
