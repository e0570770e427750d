"""costmodel.iteration: a serving iteration's price and the KV cache's share of a device.

The iteration pricing must be the cost model's one path: a pure prefill (or a pure decode step) of the
traced shape costs exactly what costmodel.work's forward_work prices for it, at every tp and pp; a mixed
iteration costs more than either part and less than both apart (the weights are read once).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, memory_breakdown
from llmsim.costmodel.iteration import (IterationModel, Mix, iteration_work, ServingPriceError, forward_workspace_bytes,
                                        iteration_time, iteration_times, kv_capacity, lora_layer_kernels, token_costs)
from llmsim.costmodel.step import _per_microbatch, price
from llmsim.costmodel.work import forward_work
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG, a100_cluster

UNTIED = SharingChoice(tie_embeddings=False)


def _llama(batch: int = 1, seq_len: int = 64, layers: int = 4, dtype: str = "bfloat16") -> Workload:
    """A 4-layer slice of Llama 3 8B (GQA: 32 heads, 8 KV heads), traced as serving traces it."""
    return Workload(model=ModelSpec(preset="llama3-8b", layers=layers, seq_len=seq_len), mode="decode",
                    batch=batch, decode_tokens=3, dtype=dtype)


@pytest.mark.parametrize("tp,pp,batch,dtype,split,device", [
    (1, 1, 1, "bfloat16", None, "a100-80gb"), (2, 1, 1, "bfloat16", None, "a100-80gb"),
    (2, 2, 4, "bfloat16", None, "a100-80gb"), (8, 1, 2, "bfloat16", None, "a100-80gb"),
    (16, 1, 1, "bfloat16", None, "a100-80gb"), (2, 2, 2, "bfloat16", (3, 1), "a100-80gb"),
    (2, 1, 2, "float8", None, "h100-sxm")])
def test_a_pure_prefill_and_a_pure_decode_step_cost_what_forward_work_prices(tp: int, pp: int, batch: int, dtype: str,
                                                                             split: tuple[int, ...] | None,
                                                                             device: str) -> None:
    """tp 16 > kv_heads 8: replicated KV heads; pp 2 with 4 sequences: two micro-batches fill the pipeline;
    3 + 1 layers: an uneven split; float8: FP8 GEMMs and the casts of their inputs, on an H100. A serving
    engine's layers run fused elementwise kernels: forward_work prices them so with `compile: true`
    (iteration.SERVING_FUSED_REGIONS is compute.COMPILED_REGIONS)."""
    w = _llama(batch, dtype=dtype)
    profile = profile_workload(w, UNTIED)
    cluster = replace(a100_cluster(2, 8), device=CATALOG.device(device))
    plan = Plan(tp=tp, pp=pp, micro_batch=batch, stage_layers=split)
    # forward_work's pipeline fills and drains every pass: the iteration of an engine that does the same
    model = IterationModel(token_costs(w, profile), w, Plan(tp=tp, pp=pp, stage_layers=split), cluster,
                           pipeline_in_flight=False)
    prefill = sum((Mix.prefill(64) for _ in range(batch)), Mix())
    # forward_work prices a decode step at the mean cache length: prompt + decode_tokens / 2 keys.
    decode = sum((Mix.decode(64 + 1.5) for _ in range(batch)), Mix())
    fused = Options(compile=True)
    expected_prefill = price(forward_work(w, profile, plan, cluster, fused, "prefill"), cluster.fabric).step
    expected_decode = price(forward_work(w, profile, plan, cluster, fused, "decode", 2), cluster.fabric).step
    assert iteration_time(model, prefill) == pytest.approx(expected_prefill, rel=1e-12)
    assert iteration_time(model, decode) == pytest.approx(expected_decode, rel=1e-12)


def test_per_token_costs_do_not_depend_on_the_traced_shape_for_gemms_and_attention() -> None:
    """GEMM FLOPs per token and attention FLOPs per query-key pair are the same from any traced shape, and a
    decode step's traced attention FLOPs are the prefill's per-pair cost times the keys it attends over."""
    a = token_costs(_llama(1, 64), profile_workload(_llama(1, 64), UNTIED))
    b = token_costs(_llama(2, 32), profile_workload(_llama(2, 32), UNTIED))
    assert a.mm_flops_prefill == b.mm_flops_prefill == a.mm_flops_decode
    assert a.attention_flops_per_pair == b.attention_flops_per_pair
    spec = _llama().model
    # 2 GEMMs (QK^T, PV) x 2 FLOPs per multiply-add x heads x head_dim, per layer
    assert a.attention_flops_per_pair == 4 * spec.heads * spec.head_width * spec.layers
    profile = profile_workload(_llama(1, 64), UNTIED)
    traced = profile.ops[("decode", "layers", "attention")].flops   # 2 steps: 65 and 66 keys
    assert traced == pytest.approx(a.attention_flops_per_pair * (65 + 66))
    # K and V of one token: 2 x kv_heads x head_dim x layers x 2 bytes
    assert a.kv_bytes_per_token == 2 * 8 * 128 * spec.layers * 2


def test_a_serving_iteration_prices_the_layers_elementwise_ops_as_fused_kernels() -> None:
    """vLLM's and SGLang's Llama layer runs its norms, rotary, SiLU-and-mul and cache write as fused kernels
    (iteration.SERVING_FUSED_REGIONS): the per-token elementwise bytes are the profile's fused traffic, about a
    quarter of eager PyTorch's for Llama 3 8B (fp32 norm upcasts, separate SiLU and multiply never reach HBM),
    while the embedding and the LM head keep their traced bytes."""
    w = _llama(1, 64)
    profile = profile_workload(w, UNTIED)
    costs = token_costs(w, profile)
    for phase, tokens, per_token in (("prefill", 64, costs.other_bytes_prefill), ("decode", 2, costs.other_bytes_decode)):
        other = profile.ops[(phase, "layers", "other")]
        assert per_token == pytest.approx(other.traffic(True) / tokens, rel=1e-12)
        assert per_token < 0.4 * other.bytes / tokens
    assert costs.embed_bytes_prefill == pytest.approx(profile.ops[("prefill", "embed", "other")].bytes / 64, rel=1e-12)


ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def test_a_served_lora_loses_its_scale_and_add_passes_and_nothing_else() -> None:
    """A serving engine folds LoRA's alpha/r into B at load and its expand GEMM adds into the base projection's
    output in place (vLLM: LoRALayerWeights.optimize, Punica's expand with add_inputs; trace._OpRecorder.
    _record_engine). So a served Llama layer with adapters on all seven projections moves exactly the base
    model's elementwise bytes, and its GEMMs move the base GEMMs' bytes plus the adapters' shrink and expand
    (as traced) plus one read of each adapted output slice (the expand's read of the tile it adds to), while
    the eager and fused profiles (training, `compile: true`) keep the scale and add as traced."""
    w = _llama(2, 64)
    base = profile_workload(w, UNTIED)
    lora = profile_workload(w, SharingChoice(tie_embeddings=False, lora=LoraSpec(rank=16, targets=ALL_TARGETS)))
    cb, cl = token_costs(w, base), token_costs(w, lora)
    hidden, kv, ffn = 4096, 8 * 128, 14336                  # Llama 3 8B: 8 KV heads of 128, SwiGLU width 14336
    outputs = hidden + kv + kv + hidden + ffn + ffn + hidden   # q k v o gate up down
    rmw = outputs * 2 * w.model.layers                      # bf16 output slices read by the expand, per token
    assert cl.other_bytes_prefill == cb.other_bytes_prefill
    assert cl.other_bytes_decode == cb.other_bytes_decode
    assert cl.mm_flops_decode > cb.mm_flops_decode        # the shrink and expand GEMMs stay
    for phase, tokens in (("prefill", 2 * 64), ("decode", 2 * 2)):
        gemms = lora.ops[(phase, "layers", "matmul")]
        assert gemms.served() == gemms.bytes + rmw * tokens
        other = lora.ops[(phase, "layers", "other")]
        assert other.served() == base.ops[(phase, "layers", "other")].traffic(True) < other.traffic(True)
        assert other.bytes > base.ops[(phase, "layers", "other")].bytes   # eager: PEFT's scale and add as traced
    assert all(t.engine_bytes is None for t in base.ops.values())   # no LoRA: every serving number as before


def test_a_served_loras_adapters_are_weights_read_once_per_pass() -> None:
    """The adapters' A and B are GEMM weights: a pass reads them once whatever its tokens, so the per-token GEMM
    bytes leave them out (as the base weights) and the iteration adds one layer's on each rank per pass."""
    w = _llama(2, 64)
    base = profile_workload(w, UNTIED)
    lora = profile_workload(w, SharingChoice(tie_embeddings=False, lora=LoraSpec(rank=16, targets=ALL_TARGETS)))
    cb, cl = token_costs(w, base), token_costs(w, lora)
    adapters = lora.trainable_param_bytes                  # r (in + out) per adapter, bf16, all layers
    assert adapters == 2 * 16 * (4096 + 4096 + 2 * (4096 + 1024) + 4096 + 4096 + 2 * (4096 + 14336)
                                 + 14336 + 4096) * w.model.layers
    assert cb.adapter_weight_bytes == 0 and cl.adapter_weight_bytes == adapters
    rmw = (4096 * 3 + 1024 * 2 + 14336 * 2) * 2 * w.model.layers
    for phase, passes, tokens, per_token in (("prefill", 1, 2 * 64, cl.mm_bytes_prefill),
                                             ("decode", 2, 2 * 2, cl.mm_bytes_decode)):
        activations = (lora.ops[(phase, "layers", "matmul")].bytes - base.ops[(phase, "layers", "matmul")].bytes
                       - passes * adapters) / tokens
        base_per_token = cb.mm_bytes_prefill if phase == "prefill" else cb.mm_bytes_decode
        assert per_token == pytest.approx(base_per_token + activations + rmw, rel=1e-12)
    for tp in (1, 2):
        model = IterationModel(cl, w, Plan(tp=tp), a100_cluster())
        assert model.layer_adapter_bytes == adapters / w.model.layers / tp


def test_a_served_lora_launches_punicas_kernels_in_every_layer() -> None:
    """vLLM wraps every supported linear of a layer (qkv, o, gate_up, down) when LoRA is on, whatever the adapter
    targets, and each wrapped linear launches 3 kernels (a zeroed buffer, lora_shrink, lora_expand): a served
    LoRA adds 12 kernels to each layer of every pass, each at the device's fixed time per kernel; an MoE model
    (LoRA on the attention only) 6; no LoRA none."""
    w = _llama(2, 64)
    base = token_costs(w, profile_workload(w, UNTIED))
    lora = token_costs(w, profile_workload(w, SharingChoice(tie_embeddings=False, lora=LoraSpec(rank=16,
                                                                                                  targets=("q", "v")))))
    assert (base.adapter_layer_kernels, lora.adapter_layer_kernels) == (0, 12)
    assert lora_layer_kernels(ModelSpec(preset="mixtral-8x7b")) == 6
    cluster = a100_cluster()
    kernel_s = cluster.device.efficiency.kernel_latency_s
    for mix in (Mix.decode(300), Mix.prefill(512)):
        with_kernels = iteration_time(IterationModel(lora, w, Plan(), cluster), mix)
        without = iteration_time(IterationModel(replace(lora, adapter_layer_kernels=0), w, Plan(), cluster), mix)
        assert with_kernels - without == pytest.approx(12 * w.model.layers * kernel_s, rel=1e-9)


def test_a_profile_not_traced_for_serving_is_refused() -> None:
    w = Workload(model=ModelSpec(preset="tiny"), mode="prefill", batch=1)
    with pytest.raises(ServingPriceError, match="decode profile"):
        token_costs(w, profile_workload(w, SharingChoice(tie_embeddings=True)))


def _model(tp: int = 1, pp: int = 1) -> IterationModel:
    w = _llama()
    return IterationModel(token_costs(w, profile_workload(w, UNTIED)), w, Plan(tp=tp, pp=pp), a100_cluster())


def test_a_mixed_iteration_reads_the_weights_once() -> None:
    """Prefill and decodes in one pass cost more than either alone and less than the two passes apart."""
    model = _model(tp=2)
    prefill, decodes = Mix.prefill(512), sum((Mix.decode(300) for _ in range(32)), Mix())
    both = iteration_time(model, prefill + decodes)
    apart = iteration_time(model, prefill) + iteration_time(model, decodes)
    assert max(iteration_time(model, prefill), iteration_time(model, decodes)) < both < apart


def test_each_decoding_sequence_counts_at_its_own_cache_length() -> None:
    """Two sequences at 100 and 900 keys read what two at 500 read (the sums are what the kernel sees), and
    more keys cost more."""
    model = _model()
    assert iteration_time(model, Mix.decode(100) + Mix.decode(900)) == pytest.approx(
        iteration_time(model, Mix.decode(500) + Mix.decode(500)), rel=1e-12)
    assert iteration_time(model, Mix.decode(100) + Mix.decode(2000)) > iteration_time(model, Mix.decode(100)
                                                                                      + Mix.decode(900))


def test_a_chunk_after_a_cached_prefix_pays_for_its_attention_to_the_prefix() -> None:
    """Chunk c after p cached tokens: c*p + c*c/2 query-key pairs (the causal half of its own square)."""
    model = _model()
    costs = model.costs
    cold, warm = iteration_times(model, Mix.prefill(4096)), iteration_times(model, Mix.prefill(4096, 4096))
    assert warm.step > cold.step
    rates = model.rates
    pairs_time = costs.attention_flops_per_pair * 4096 * 4096 / (rates.sustained_flops * rates.efficiency.attention)
    assert warm.compute - cold.compute == pytest.approx(pairs_time, rel=1e-9)


def test_pipeline_parallel_iterations_fill_and_drain_the_pipeline() -> None:
    """pp stages, an engine that drains its pipeline every iteration (a static batch): a pass of at least pp
    sequences splits into pp micro-batches; the critical stage waits one pass of the other stage per micro-batch
    (GPipe order, costmodel.step.price); one sequence runs whole."""
    model = replace(_model(pp=2), pipeline_in_flight=False)
    fabric = model.cluster.fabric
    for mix, m in ((sum((Mix.decode(200) for _ in range(8)), Mix()), 2), (Mix.decode(200), 1)):
        t, work = iteration_times(model, mix), iteration_work(model, mix)
        assert work.microbatches == m
        other = work.stages[1 - t.critical_stage]
        other_mb = sum(_per_microbatch(work, other, fabric)[:2])
        assert t.bubble == pytest.approx(other_mb, rel=1e-12)  # the other stage's pass of one micro-batch
    assert t.bubble < t.compute + t.comm  # the LM head makes the last stage the slower one


def test_an_engine_with_pp_batches_in_flight_never_drains_its_pipeline() -> None:
    """vLLM, SGLang, Sarathi-Serve keep pp batches in flight (Scheduler.pipeline_in_flight): an iteration of m = pp
    micro-batches takes the longer of the bottleneck stage's m micro-batches and one micro-batch's pass through
    every stage, max(m x stage_c, stage_c + stage_other): here the bottleneck's, no bubble. A single sequence (one
    micro-batch) still passes every stage, as when draining. A weight-bound decode step then costs about what it
    costs on one device (each stage reads its half of the weights twice), where draining costs ~(2p - 1)/p of it."""
    full, drains = _model(pp=2), replace(_model(pp=2), pipeline_in_flight=False)
    batch = sum((Mix.decode(200) for _ in range(8)), Mix())
    t_full, t_drain = iteration_times(full, batch), iteration_times(drains, batch)
    assert (t_full.compute, t_full.comm) == (t_drain.compute, t_drain.comm)
    stage_c = (t_drain.compute + t_drain.comm) / 2
    assert t_full.step == pytest.approx(max(2 * stage_c, stage_c + t_drain.bubble), rel=1e-12)
    assert t_full.bubble == 0.0 < t_drain.bubble
    one = Mix.decode(200)
    assert iteration_times(full, one) == iteration_times(drains, one)
    # Llama 3 8B's 32 layers (its LM head, on the last stage, then a small share of a stage): pp 2 within 10% of one
    # device, draining ~1.5x
    deep = _llama(layers=32)
    costs = token_costs(deep, profile_workload(deep, UNTIED))
    single, pp2 = (IterationModel(costs, deep, Plan(pp=pp), a100_cluster()) for pp in (1, 2))
    t1, t2, t2_drain = (iteration_time(model, batch) for model in (single, pp2, replace(pp2, pipeline_in_flight=False)))
    assert t2 < 1.1 * t1 and t2_drain > 1.4 * t1


def test_a_prompt_is_not_split_across_micro_batches() -> None:
    """With pp batches in flight a pass is no shorter than its longest prompt chunk's own pass through every stage
    (a chunk is one sequence, in one micro-batch), whatever the equal split of the mix would give."""
    model = _model(pp=2)
    chunk = Mix.prefill(2048, 512)
    mixed = chunk + sum((Mix.decode(300) for _ in range(8)), Mix())
    assert (mixed.longest_chunk, mixed.longest_prefix) == (2048, 512)
    assert mixed.share(2).longest_chunk == 2048
    assert (Mix.prefill(16) + chunk).longest_chunk == 2048
    alone = iteration_times(model, chunk).step                # one sequence: one micro-batch, every stage
    t = iteration_times(model, mixed)
    assert t.step >= alone
    assert t.step < iteration_times(replace(model, pipeline_in_flight=False), mixed).step + alone


def test_only_the_static_batch_drains_the_pipeline() -> None:
    from llmsim.serving.schedulers import BUILTIN
    assert {kind: cls.pipeline_in_flight for kind, cls in BUILTIN.items()} == {
        "static": False, "continuous": True, "chunked-prefill": True, "prefill-first": True, "tgi": True,
        "sglang": True}


@pytest.mark.parametrize("pp", [1, 2])
def test_an_engines_own_kernels_cost_the_devices_fixed_time_per_kernel(pp: int) -> None:
    """Mix.layer_kernels adds that many kernels to every layer of the pass and Mix.pass_kernels that many after the
    LM head (an engine policy's own count, e.g. TGI 2.1's), each at the device's kernel_latency_s and nothing else;
    0 of both prices exactly what a Mix without them does. With pp 2 and one sequence the pass runs whole."""
    model = _model(pp=pp)
    base = Mix.decode(300)
    lat = model.rates.efficiency.kernel_latency_s
    assert lat > 0
    t0 = iteration_times(model, base)
    assert iteration_times(model, replace(base, layer_kernels=0, pass_kernels=0)) == t0
    t = iteration_times(model, replace(base, layer_kernels=3, pass_kernels=40))
    layers = model.costs.layers
    assert t.step - t0.step == pytest.approx(lat * (3 * layers + 40), rel=1e-9)


def test_mixes_add_an_engines_kernels_per_pass_and_share_them_per_micro_batch() -> None:
    """`+` of two parts of one pass: the per-layer count is the pass's (max), the kernels after the head add up;
    a micro-batch's share keeps the per-layer count and takes its share of the rest."""
    a, b = replace(Mix.decode(10), layer_kernels=2, pass_kernels=5), replace(Mix.decode(20), layer_kernels=2, pass_kernels=7)
    both = a + b
    assert (both.layer_kernels, both.pass_kernels) == (2, 12)
    assert (both + Mix.decode(5)).layer_kernels == 2
    half = both.share(2)
    assert (half.layer_kernels, half.pass_kernels, half.rows) == (2, 6, 1)


def test_kv_capacity_is_the_memory_models_leftover() -> None:
    """capacity = memory x utilisation - the busiest stage's parameters (costmodel.memory) - workspace, in
    whole blocks of the per-device bytes of a token (its layers, its KV heads)."""
    w = Workload(model=ModelSpec(preset="llama3-8b", seq_len=128), mode="decode", batch=1, decode_tokens=3)
    profile = profile_workload(w, UNTIED)
    costs = token_costs(w, profile)
    cluster = replace(a100_cluster(), device=CATALOG.device("h100-sxm"))
    for tp, pp in [(1, 1), (2, 2), (16, 1)]:
        plan = Plan(tp=tp, pp=pp)
        cap = kv_capacity(w, profile, UNTIED, plan, cluster, costs, 0.9, 16, 8192, 256)
        stages = ["first"] if pp == 1 else ["first", "last"]
        weights = max(memory_breakdown(w, profile, UNTIED, plan, Options(), s).params for s in stages)
        workspace = forward_workspace_bytes(w, plan, 8192, 256)
        left = cluster.device.memory_bytes * 0.9 - weights - workspace
        assert cap.kv_bytes == pytest.approx(left, rel=1e-12)
        per_token = 2 * 32 // pp * 8 // min(tp, 8) * 128 * 2   # K and V, its layers, its KV heads, bf16
        assert cap.bytes_per_token == per_token
        assert cap.blocks == math.floor(left / (per_token * 16))
    # Llama 3 8B on one H100 at 0.9: 77.3 GB - 16.1 GB of weights - 0.8 GB of workspace = 60.4 GB, ~461k tokens
    one = kv_capacity(w, profile, UNTIED, Plan(), cluster, costs, 0.9, 16, 8192, 256)
    assert one.weights_bytes == pytest.approx(2 * 8_030_261_248, rel=1e-9)
    assert 450_000 < one.tokens < 470_000


def test_the_workspace_is_the_larger_of_an_mlp_working_set_and_the_logits() -> None:
    w = _llama()
    h, ffn, vocab = 4096, 14336, 128256
    # swiglu: input + residual (2h), gate, up and their product (3 ffn), bf16
    assert forward_workspace_bytes(w, Plan(), 8192, 1) == 8192 * (2 * h + 3 * ffn) * 2
    # 4096 sequences of one token: fp32 logits over the vocabulary dominate
    assert forward_workspace_bytes(w, Plan(), 4096, 4096) == 4096 * vocab * 4 + 4096 * h * 2


@pytest.mark.parametrize("tp", [2, 4])
def test_a_vllm_serving_iteration_prices_its_all_reduces_as_forward_work_does(tp: int) -> None:
    """Options.all_reduce "vllm" (vLLM's custom all-reduce) reaches the serving iteration exactly as the
    roofline's decode and prefill, and only makes the tensor-parallel iteration cheaper than NCCL's."""
    w = _llama(2)
    profile = profile_workload(w, UNTIED)
    cluster = replace(a100_cluster(1, 8), device=CATALOG.device("h100-sxm"))
    plan = Plan(tp=tp, micro_batch=2)
    vllm = Options(all_reduce="vllm")
    model = IterationModel(token_costs(w, profile), w, Plan(tp=tp), cluster, vllm)
    nccl = IterationModel(token_costs(w, profile), w, Plan(tp=tp), cluster)
    prefill = Mix.prefill(64) + Mix.prefill(64)
    decode = Mix.decode(64 + 1.5) + Mix.decode(64 + 1.5)
    fused = replace(vllm, compile=True)   # a serving engine's fused elementwise kernels (SERVING_FUSED_REGIONS)
    assert iteration_time(model, prefill) == pytest.approx(
        price(forward_work(w, profile, plan, cluster, fused, "prefill"), cluster.fabric).step, rel=1e-12)
    assert iteration_time(model, decode) == pytest.approx(
        price(forward_work(w, profile, plan, cluster, fused, "decode", 2), cluster.fabric).step, rel=1e-12)
    assert iteration_time(model, decode) < iteration_time(nccl, decode)


def test_the_fused_attention_kernel_prices_a_prompts_attention_and_a_device_without_its_figure_is_an_error() -> None:
    """Options.attention reaches the serving iteration: FlashAttention-3 (what vLLM's FLASH_ATTN backend runs on
    Hopper) prices a long prompt chunk's attention at its own fraction of peak: the same price as FlashAttention-2
    on a device whose two fractions are equal, a lower one at the H100's catalog fractions; a decode step, bound by
    reading the cache, prices the same; an A100 (no FlashAttention-3 figure) cannot price it (CostModelError)."""
    from llmsim.costmodel import CostModelError
    w = _llama(1, seq_len=8192)
    costs = token_costs(w, profile_workload(w, UNTIED))
    h100 = replace(a100_cluster(1, 1), device=CATALOG.device("h100-sxm"))
    eff = h100.device.efficiency
    alike = replace(h100, device=h100.device.model_copy(update={"efficiency": eff.model_copy(
        update={"attention_flash3": eff.attention})}))

    def seconds(cluster, kernel: str, mix: Mix) -> float:
        return iteration_time(IterationModel(costs, w, Plan(), cluster, Options(attention=kernel)), mix)

    chunk, decode = Mix.prefill(8192), Mix.decode(4096)
    assert seconds(alike, "flash3", chunk) == pytest.approx(seconds(alike, "flash", chunk), rel=1e-12)
    assert eff.attention_flash3 > eff.attention
    assert seconds(h100, "flash3", chunk) < seconds(h100, "flash", chunk)
    assert seconds(h100, "flash3", decode) == pytest.approx(seconds(h100, "flash", decode), rel=1e-12)
    with pytest.raises(CostModelError, match="flash3"):
        seconds(a100_cluster(1, 1), "flash3", chunk)


def _verify(seqs: int, keys: int, k: int) -> Mix:
    """`seqs` decoding sequences at `keys` keys, each verifying k drafts (what serving.scheduling.mix_of gives)."""
    return Mix(decode_seqs=seqs, decode_keys=seqs * keys, rows=seqs, verify_tokens=seqs * k,
               verify_pairs=seqs * (k * keys + k * (k + 1) // 2))


def test_a_speculative_verify_is_a_k_plus_1_token_query_reading_each_cache_once() -> None:
    """Verifying k drafts costs more than one decode token and less than k + 1 decode steps (the weights and the
    cache read once); its GEMMs and LM head price (k + 1) x the rows: at a batch where the decode GEMMs are
    weight-bound, 4 rows per sequence are nearly free, and a pure verify of n sequences with k drafts prices the
    GEMM and head work of n (k + 1) decode rows."""
    model = _model()
    one = iteration_time(model, _verify(8, 1000, 0))
    assert one == pytest.approx(iteration_time(model, sum((Mix.decode(1000) for _ in range(8)), Mix())), rel=1e-12)
    verify = iteration_time(model, _verify(8, 1000, 3))
    assert one < verify < 4 * one
    assert verify < 1.3 * one       # memory-bound decode: the 24 more rows cost little beside the weights and caches
    # the GEMMs see the rows: 32 verify rows of 8 sequences price as the GEMMs of 32 decoding sequences (the
    # attention apart: 32 sequences would read 32 caches)
    wide = iteration_times(model, _verify(8, 1, 3))
    rows = iteration_times(model, sum((Mix.decode(1) for _ in range(32)), Mix()))
    assert wide.step == pytest.approx(rows.step, rel=0.02)


def test_draft_passes_are_k_decode_steps_of_the_draft_head() -> None:
    """An EAGLE / MTP head of 1 layer of a 4-layer model: k passes of one layer + embedding + LM head over the
    decoding sequences, between 1/4 of and a whole target decode step each; nothing without decoding sequences."""
    from llmsim.costmodel.iteration import draft_head_model, draft_pass_mix, draft_times
    model = _model()
    head = draft_head_model(model, 1)
    mix = _verify(8, 1000, 3)
    draft = draft_times(head, mix, 3)
    pass_mix = draft_pass_mix(mix, 3)
    assert pass_mix.decode_keys == 8 * 1000 + 8 * 1.0            # the mean of the 3 passes' keys: + (3 - 1) / 2 each
    assert draft.step == pytest.approx(3 * iteration_time(head, pass_mix), rel=1e-12)
    target = iteration_time(model, pass_mix)
    assert target / 4 < iteration_time(head, pass_mix) < target
    assert draft_times(head, Mix.prefill(100), 3).step == 0.0
    with pytest.raises(ValueError, match="pp 1"):
        draft_head_model(_model(pp=2), 1)


def test_a_drafts_memory_comes_off_the_kv_cache() -> None:
    """with_draft_memory: the draft's weights leave fewer bytes for the cache and its own K and V per token take a
    share of every block."""
    from llmsim.costmodel.iteration import KVCapacity, with_draft_memory
    cap = KVCapacity(device_bytes=80e9, weights_bytes=16e9, workspace_bytes=2e9, kv_bytes=54e9,
                     bytes_per_token=131072, block_tokens=16, blocks=math.floor(54e9 / (131072 * 16)))
    same = with_draft_memory(cap, 0.0, 0.0)
    assert same.blocks == cap.blocks
    eagle = with_draft_memory(cap, 0.5e9, 131072 / 32)
    assert eagle.weights_bytes == 16.5e9 and eagle.kv_bytes == 53.5e9
    assert eagle.blocks == pytest.approx(53.5e9 / (131072 * (1 + 1 / 32) * 16), abs=2)
