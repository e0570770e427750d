"""The compute roofline of one micro-batch (costmodel.compute), on a hand-made profile with round numbers.

    t = max(FLOPs / (peak * sustained * efficiency_kind * wave), bytes / (bandwidth * efficiency_memory))

Device: 1e15 FLOP/s held at half the clock (sustained 0.5), GEMMs at 0.8 of that, fused attention at 0.25,
2e12 B/s streamed at 0.5: a GEMM runs at 4e14 FLOP/s, flash attention at 1.25e14, memory at 1e12 B/s.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from llmsim.config import ModelSpec, Workload
from llmsim.costmodel import CostModelError, Options, Plan
from llmsim.costmodel.compute import (CAUSAL_FLOP_SHARE, gemm_weight_bytes, DROPOUT_MASK_BYTES, DROPOUT_PASSES_BACKWARD,
                                      DROPOUT_PASSES_FORWARD, FLASH_BACKWARD_FLOP_RATIO, SOFTMAX_PASSES_BACKWARD,
                                      SOFTMAX_PASSES_FORWARD, PhaseTimes, Rates, _linear_shapes, device_rates,
                                      gemm_wave, phase_times)
from llmsim.costmodel.efficiency import (DEFAULT_MATMUL_TILES as DEFAULT_TILES, MMA_ROWS, Efficiency,
                                         gemm_efficiency, wave_efficiency)
from llmsim.workload.profile import OpTotals, WorkloadProfile
from tests.costmodel.helpers import Device, Link

EFF = Efficiency(matmul=0.8, attention=0.25, memory=0.5, sustained=0.5)
RATES = Rates(peak_flops=1e15, memory_bw=2e12, efficiency=EFF)
GEMM, FLASH, STREAM = 4e14, 1.25e14, 1e12

# GPT-2 small's shape at a short context: 12 heads of 64, 2 layers; batch 8
SPEC = dict(preset="gpt2-small", layers=2, seq_len=128)


def _workload(mode: str = "train", **model: object) -> Workload:
    return Workload(model=ModelSpec(**{**SPEC, **model}), mode=mode, batch=8, decode_tokens=9)


def _profile(ops: dict, layers: int = 2, batch: int = 8, kv_cache_bytes: int = 0) -> WorkloadProfile:
    return WorkloadProfile(mode="train", dtype="bfloat16", batch=batch, seq_len=128, layers=layers,
                           tokens_per_step=batch * 128, params=1, trainable_params=1, param_bytes=2,
                           trainable_param_bytes=2, layer_params=1, embed_params=0, activation_bytes=0,
                           activation_bytes_per_layer=0, kv_cache_bytes=kv_cache_bytes, ops=ops)


def _times(ops: dict, phase: str = "forward", region: str = "layers", plan: Plan = Plan(micro_batch=2),
           options: Options = Options(), rates: Rates = RATES, workload: Workload | None = None,
           divide: int = 1, steps: int = 1, **profile: object) -> PhaseTimes:
    return phase_times(_profile(ops, **profile), workload or _workload(), plan, options, rates, phase, region,
                       divide, steps)


# A micro-batch of 2 of the 8 traced sequences: a quarter of every traced total.
def test_a_gemm_is_compute_bound_or_memory_bound_whichever_is_slower() -> None:
    compute_bound = _times({("forward", "layers", "matmul"): OpTotals(flops=8e12, bytes=4e8)})
    assert compute_bound == PhaseTimes(matmul=pytest.approx(8e12 / 4 / GEMM, rel=1e-12))
    memory_bound = _times({("forward", "layers", "matmul"): OpTotals(flops=8e9, bytes=4e10)})
    # the 2 layers' weights are read whole by the micro-batch (gemm_weight_bytes); the rest is its quarter
    weights = 2 * gemm_weight_bytes(_workload(), Plan(micro_batch=2), "layers")
    assert memory_bound == PhaseTimes(matmul=pytest.approx(((4e10 - weights) / 4 + weights) / STREAM, rel=1e-12))
    # bytes alone (a GEMM the counter gives no FLOPs) still take their memory time
    assert _times({("forward", "layers", "matmul"): OpTotals(bytes=4e10)}).matmul == \
        pytest.approx(((4e10 - weights) / 4 + weights) / STREAM, rel=1e-12)


def test_other_ops_are_memory_bound_and_only_the_asked_phase_and_region_count() -> None:
    ops = {("forward", "layers", "other"): OpTotals(flops=1e15, bytes=8e9),
           ("backward", "layers", "other"): OpTotals(bytes=1e12), ("forward", "head", "other"): OpTotals(bytes=1e12)}
    assert _times(ops) == PhaseTimes(other=pytest.approx(8e9 / 4 / STREAM, rel=1e-12))
    assert _times({}) == PhaseTimes()


def test_the_share_is_the_micro_batch_over_the_batch_over_the_devices_and_the_steps() -> None:
    ops = {("decode", "layers", "other"): OpTotals(bytes=96e9)}
    t = _times(ops, "decode", plan=Plan(tp=2, pp=3, micro_batch=2), divide=6, steps=4)
    assert t.other == pytest.approx(96e9 * 2 / 8 / 6 / 4 / STREAM, rel=1e-12)


def test_a_host_pays_a_fixed_cost_per_operator_for_every_stage_it_runs() -> None:
    """op_overhead_s: every device launches all ops of its own layers (1/pp of them) for every micro-batch,
    and all of an edge region's; a phase traced over several decode steps is divided into one."""
    host = dataclasses.replace(RATES, efficiency=EFF.model_copy(update={"op_overhead_s": 1e-3}))
    ops = {("forward", "layers", "matmul"): OpTotals(count=40), ("forward", "layers", "attention"): OpTotals(count=8),
           ("forward", "layers", "other"): OpTotals(bytes=16e9, count=12),
           ("forward", "head", "other"): OpTotals(count=6)}
    plan = Plan(tp=2, pp=4, cp=2, micro_batch=2)
    streamed = 16e9 * 2 / 8 / 16 / STREAM           # the layers' other bytes: a quarter of the batch, 1/16 each
    assert _times(ops, plan=plan, rates=host, divide=16).other == pytest.approx(streamed + 60 / 4 * 1e-3, rel=1e-12)
    assert _times(ops, plan=plan, rates=host, divide=16, steps=3).other == pytest.approx(
        streamed / 3 + 60 / 4 / 3 * 1e-3, rel=1e-12)
    assert _times(ops, region="head", plan=plan, rates=host, divide=4).other == pytest.approx(6e-3, rel=1e-12)
    assert _times(ops, plan=plan, divide=16).other == pytest.approx(streamed, rel=1e-12)   # an accelerator hides it


class TestAttention:
    """The profile traces the math SDPA path; each kernel (plan.Options) prices those FLOPs its own way."""

    FLOPS = 16e12      # the traced attention FLOPs of the batch's 8 sequences, 2 layers
    OPS = {("forward", "layers", "attention"): OpTotals(flops=FLOPS, bytes=1e9),
           ("backward", "layers", "attention"): OpTotals(flops=2 * FLOPS, bytes=2e9)}

    def test_math_is_the_traced_ops_at_gemm_efficiency_without_waves(self) -> None:
        t = _times(self.OPS, options=Options(attention="math"))
        assert t.attention == pytest.approx(self.FLOPS / 4 / GEMM, rel=1e-12)
        tiny = {("forward", "layers", "attention"): OpTotals(flops=1e3, bytes=4e9)}
        assert _times(tiny, options=Options(attention="math")).attention == pytest.approx(1e-3, rel=1e-12)

    def test_flash_skips_the_masked_half_and_recomputes_in_backward(self) -> None:
        causal = _times(self.OPS)
        assert causal.attention == pytest.approx(self.FLOPS / 4 * CAUSAL_FLOP_SHARE / FLASH, rel=1e-12)
        backward = _times(self.OPS, "backward")
        assert backward.attention == pytest.approx(
            2 * self.FLOPS / 4 * CAUSAL_FLOP_SHARE * FLASH_BACKWARD_FLOP_RATIO / FLASH, rel=1e-12)
        encoder = _times(self.OPS, workload=_workload(causal=False))
        assert encoder.attention == pytest.approx(self.FLOPS / 4 / FLASH, rel=1e-12)
        assert (CAUSAL_FLOP_SHARE, FLASH_BACKWARD_FLOP_RATIO) == (0.5, 1.25)
        # bytes alone (no FLOPs traced) cost nothing in a fused kernel that keeps them on chip
        assert _times({("forward", "layers", "attention"): OpTotals(bytes=1e9)}).attention == 0.0

    @pytest.mark.parametrize("phase,passes", [("forward", 4), ("backward", 6)])
    def test_fused_softmax_is_the_gemms_plus_passes_over_the_score_matrix(self, phase: str, passes: int) -> None:
        """Per layer and micro-batch the s x s matrix of every local head: b (h/tp) (s/cp) s elements."""
        plan = Plan(tp=2, pp=2, cp=2, micro_batch=2)
        t = _times(self.OPS, phase, plan=plan, options=Options(attention="fused-softmax"), divide=8)
        flops = (self.FLOPS if phase == "forward" else 2 * self.FLOPS) * 2 / 8 / 8
        matrix = 2 * (12 / 2) * (128 / 2) * 128 * 2        # bf16
        layers_here = 2 / 2                                   # this stage's share of the 2 layers
        assert passes == (SOFTMAX_PASSES_FORWARD if phase == "forward" else SOFTMAX_PASSES_BACKWARD)
        assert t.attention == pytest.approx(flops / GEMM + passes * matrix * layers_here / STREAM, rel=1e-12)
        # one stage (divide = tp cp): both layers
        alone = _times(self.OPS, phase, plan=Plan(tp=2, cp=2, micro_batch=2),
                       options=Options(attention="fused-softmax"), divide=4)
        assert alone.attention == pytest.approx(2 * flops / GEMM + passes * matrix * 2 / STREAM, rel=1e-12)

    @pytest.mark.parametrize("phase,passes", [("forward", DROPOUT_PASSES_FORWARD), ("backward",
                                                                                    DROPOUT_PASSES_BACKWARD)])
    def test_fused_softmax_adds_the_probability_dropout_in_training(self, phase: str, passes: int) -> None:
        fused = Options(attention="fused-softmax")
        plain = _times(self.OPS, phase, options=fused)
        dropped = _times(self.OPS, phase, options=fused, workload=_workload(dropout=0.1))
        matrix = 2 * 12 * 128 * 128 * 2
        assert dropped.attention - plain.attention == pytest.approx(
            (passes * matrix + DROPOUT_MASK_BYTES * matrix / 2) * 2 / STREAM, rel=1e-9)
        # serving runs no dropout: a prefill with dropout > 0 prices like one without
        prefill = {("prefill", "layers", "attention"): OpTotals(flops=self.FLOPS, bytes=1e9)}
        assert _times(prefill, "prefill", options=fused, workload=_workload("prefill", dropout=0.1)) == \
            _times(prefill, "prefill", options=fused, workload=_workload("prefill"))

    def test_a_decode_step_reads_the_kv_cache_at_its_mean_length(self) -> None:
        """One query row per sequence against the cache: K and V of every cached position, read once.
        The cache of the batch holds seq_len + decode_tokens positions; the n = decode_tokens - 1 traced steps
        see seq_len + 1 ... seq_len + n of them, on average seq_len + decode_tokens / 2."""
        kv_bytes = 2 * 2 * 8 * (128 + 9) * 768 * 2          # K, V x layers x batch x positions x hidden, bf16
        ops = {("decode", "layers", "attention"): OpTotals(flops=1e6, bytes=1e6)}
        mean = (128 + 9 / 2) / (128 + 9)
        for kernel in ("flash", "fused-softmax"):
            t = _times(ops, "decode", options=Options(attention=kernel), kv_cache_bytes=kv_bytes)
            assert t.attention == pytest.approx(kv_bytes * 2 / 8 * mean / STREAM, rel=1e-12)
        # tp = 4 splits the heads, pp = 2 the layers: a stage's device reads 1/8 of the micro-batch's cache
        split = _times(ops, "decode", plan=Plan(tp=4, pp=2, micro_batch=2), kv_cache_bytes=kv_bytes, divide=8,
                       steps=8)
        assert split.attention == pytest.approx(kv_bytes * 2 / 8 * mean / 4 / 2 / STREAM, rel=1e-12)
        # grouped-query attention: 2 KV heads are replicated beyond tp = 2, so tp = 4 still reads half
        gqa = _workload("decode", kv_heads=2)
        replicated = _times(ops, "decode", plan=Plan(tp=4, micro_batch=2), workload=gqa, kv_cache_bytes=kv_bytes,
                            divide=4)
        assert replicated.attention == pytest.approx(kv_bytes * 2 / 8 * mean / 2 / STREAM, rel=1e-12)
        # FLOP-bound when the cache is tiny: the fused kernel's attention efficiency
        heavy = {("decode", "layers", "attention"): OpTotals(flops=4e12)}
        assert _times(heavy, "decode", kv_cache_bytes=8).attention == pytest.approx(4e12 / 4 / FLASH, rel=1e-12)

    def test_math_decode_is_the_traced_ops(self) -> None:
        ops = {("decode", "layers", "attention"): OpTotals(flops=1e6, bytes=4e9)}
        t = _times(ops, "decode", options=Options(attention="math"), kv_cache_bytes=10**12)
        assert t.attention == pytest.approx(4e9 / 4 / STREAM, rel=1e-12)


def test_layer_gemm_shapes_per_tensor_parallel_rank() -> None:
    """(in, out) of QKV (heads/tp query heads plus the K and V heads), the attention output (row-parallel),
    the MLP up (column-parallel; SwiGLU's two) and down (row-parallel) projections."""
    llama = Workload(model=ModelSpec(preset="llama3-8b", layers=2, seq_len=128), batch=1)   # 32 heads, 8 KV, 128 each
    assert _linear_shapes(llama, Plan(tp=4)) == [(4096, (8 + 2 * 2) * 128), (1024, 4096), (4096, 2 * 14336 // 4),
                                                 (14336 // 4, 4096)]
    # tp = 16 > 8 KV heads: each rank keeps one (replicated) K and V head
    assert _linear_shapes(llama, Plan(tp=16))[0] == (4096, (2 + 2 * 1) * 128)
    gpt = _workload()
    assert _linear_shapes(gpt, Plan(tp=2)) == [(768, (6 + 2 * 6) * 64), (384, 768), (768, 3072 // 2), (1536, 768)]
    assert _linear_shapes(gpt, Plan()) == [(768, 3 * 768), (768, 768), (768, 3072), (3072, 768)]


def test_a_model_without_ffn_hidden_has_the_published_four_times_hidden_mlp() -> None:
    """`ffn_hidden` left out means 4·hidden (Vaswani et al. 2017; GPT-2/3), in the cost model as in the module."""
    spec = dict(layers=2, hidden=256, heads=4, vocab=1000, seq_len=64)
    implicit = Workload(model=ModelSpec(**spec), batch=1)
    explicit = Workload(model=ModelSpec(**spec, ffn_hidden=1024), batch=1)
    assert _linear_shapes(implicit, Plan(tp=2)) == _linear_shapes(explicit, Plan(tp=2))
    assert _linear_shapes(implicit, Plan())[2:] == [(256, 1024), (1024, 256)]


def test_gemm_wave_is_the_flop_weighted_wave_efficiency_of_the_regions_gemms() -> None:
    """Each output tile grid runs in waves over the SMs; the region's efficiency is total FLOPs over the sum of
    each GEMM's FLOPs / its efficiency. Backward computes the data gradient (tokens x in) and the weight
    gradient (in x out) of each."""
    sms = Rates(peak_flops=1e15, memory_bw=2e12, efficiency=EFF, compute_units=108)
    gpt, plan, tokens = _workload(), Plan(tp=2), 256

    def weighted(outputs: list[tuple[int, int, float]]) -> float:
        return sum(w for _, _, w in outputs) / sum(w / wave_efficiency(r, c, 108) for r, c, w in outputs)

    shapes = [(768, 1152), (384, 768), (768, 1536), (1536, 768)]
    forward = weighted([(tokens, n, tokens * k * n) for k, n in shapes])
    backward = weighted([out for k, n in shapes for out in ((tokens, k, tokens * k * n), (k, n, tokens * k * n))])
    assert gemm_wave(gpt, plan, tokens, "layers", False, sms) == pytest.approx(forward, rel=1e-12)
    assert gemm_wave(gpt, plan, tokens, "layers", True, sms) == pytest.approx(backward, rel=1e-12)
    assert forward < 1 and backward < 1 and forward != backward
    head = wave_efficiency(tokens, math.ceil(50257 / 2), 108)            # the vocab-parallel LM head
    assert gemm_wave(gpt, plan, tokens, "head", False, sms) == pytest.approx(head, rel=1e-12)
    assert gemm_wave(gpt, plan, tokens, "layers", False, RATES) == 1.0  # no SM count: no wave model
    # phase_times applies it to the GEMMs of b x s/cp tokens (here 2 x 128)
    ops = {("forward", "layers", "matmul"): OpTotals(flops=8e12)}
    assert _times(ops, plan=Plan(tp=2, micro_batch=2), rates=sms).matmul == pytest.approx(
        8e12 / 4 / (GEMM * forward), rel=1e-12)
    assert _times(ops, plan=Plan(tp=2, cp=2, micro_batch=2), rates=sms).matmul == pytest.approx(
        8e12 / 4 / (GEMM * gemm_wave(gpt, Plan(tp=2, cp=2), 128, "layers", False, sms)), rel=1e-12)
    decode = {("decode", "layers", "matmul"): OpTotals(flops=8e12)}
    assert _times(decode, "decode", plan=Plan(tp=2, micro_batch=2), rates=sms).matmul == pytest.approx(
        8e12 / 4 / (GEMM * gemm_wave(gpt, Plan(tp=2), 2, "layers", False, sms)), rel=1e-12)


def test_rates_are_the_catalog_ceilings_and_the_clusters_efficiency() -> None:
    from llmsim.costmodel.cluster import ClusterSpec

    device = Device(peak_flops={"bfloat16": 1e15, "float32": 6e13}, memory_bw_bytes_per_s=2e12, compute_units=132,
                    efficiency=EFF)
    cluster = ClusterSpec(device=device, intra=Link(), inter=Link())
    assert device_rates(cluster, "float32") == Rates(peak_flops=6e13, memory_bw=2e12, efficiency=EFF,
                                                     compute_units=132)
    assert RATES.sustained_flops == 5e14
    assert RATES.matmul_time(4e14, 0.0) == pytest.approx(1.0) and RATES.matmul_time(4e14, 0.0, 0.5) == 2.0
    assert RATES.memory_time(1e12) == 1.0 and RATES.memory_time(0.0) == 0.0 and RATES.memory_time(-5.0) == 0.0
    assert RATES.memory_time(1.0) == 1e-12        # a single byte still takes its time
    with pytest.raises(CostModelError, match=r"device 'dev' has no peak FLOP/s for float16; it has: bfloat16, "
                                             r"float32"):
        device_rates(cluster, "float16")
    host = ClusterSpec(device=Device(name="cpu-host", peak_flops={}), intra=Link(), inter=Link())
    with pytest.raises(CostModelError, match=r"it has: none \(measured at run time: run `llmsim calibrate` first\)"):
        device_rates(host, "bfloat16")
    # another entry without peaks left the key out of its file: calibrating would not give it one (trial 31)
    bare = ClusterSpec(device=Device(peak_flops={}), intra=Link(), inter=Link())
    with pytest.raises(CostModelError, match=r"it has: none \(its catalog entry gives no peak_flops: add the "
                                             r"datasheet's dense peaks per dtype\)"):
        device_rates(bare, "bfloat16")
    no_bw = ClusterSpec(device=Device(memory_bw_bytes_per_s=0.0), intra=Link(), inter=Link())
    with pytest.raises(CostModelError, match=r"device 'dev' has no memory bandwidth in the catalog"):
        device_rates(no_bw, "bfloat16")


def test_phase_times_total_is_the_sum_of_its_kinds() -> None:
    assert PhaseTimes(matmul=1.0, attention=2.0, other=4.0).total == 7.0


@pytest.mark.parametrize("m,n,units,tiles,expected", [
    (256, 128, 1, ((256, 128),), 1.0),              # one exact tile
    (128, 256, 1, ((256, 128),), 1.0),              # ... found in the transposed orientation
    (128, 384, 3, ((256, 128),), 0.5),              # 256-row tiles half empty
    (128, 384, 3, ((256, 128), (128, 128)), 1.0),   # the 128 x 128 tiling fits exactly: the best is taken
    (128, 640, 4, ((128, 128),), 5 / 8),            # 5 tiles on 4 units: 2 waves, 3 slots idle
    (100, 128, 1, ((128, 128),), 100 / 128),        # a partly empty edge tile
])
def test_wave_efficiency_is_the_useful_share_of_the_best_tilings_slots(m: int, n: int, units: int,
                                                                         tiles: tuple, expected: float) -> None:
    """ceil(tiles / units) waves of units x tile slots hold the m x n output (NVIDIA's wave quantization)."""
    assert wave_efficiency(m, n, units, tiles) == pytest.approx(expected, rel=1e-12)


def test_no_wave_model_without_units_or_an_output() -> None:
    for m, n, units in ((0, 128, 108), (128, 0, 108), (-1, 128, 108), (128, 128, None), (128, 128, 0)):
        assert wave_efficiency(m, n, units) == 1.0
    sms = Rates(peak_flops=1e15, memory_bw=2e12, efficiency=EFF, compute_units=108)
    assert gemm_wave(_workload(), Plan(), 0, "layers", False, sms) == 1.0      # no rows: nothing to weigh


@pytest.mark.parametrize("m,n,units,tiles,expected", [
    (1, 4096, 108, DEFAULT_TILES, 1 / 16),          # a GEMV: one row padded to the MMA's 16
    (4096, 1, 108, DEFAULT_TILES, 1 / 16),          # ... whichever side is the short one
    (20, 4096, 108, DEFAULT_TILES, 20 / 32),        # 20 rows: two 16-row MMA blocks
    (64, 12288, 108, DEFAULT_TILES, 1.0),           # 64 rows: exact (the tiles: 96 on 108 SMs, 0.444)
    (127, 12288, 108, DEFAULT_TILES, 127 / 128),    # still below the smallest tile side
    (20, 128, 1, ((24, 128),), 20 / 24),            # a tile that wastes less than the MMA padding wins
])
def test_skinny_gemms_run_split_k_with_the_short_side_padded_to_the_mma_rows(m: int, n: int, units: int,
                                                                             tiles: tuple, expected: float) -> None:
    """Few output rows: a GEMV / split-K kernel (CUTLASS "Split K"; Stream-K) spreads the reduction over the
    SMs, so only the padding of the short side to the 16-row tensor-core MMA (PTX m16n8k16) is lost."""
    assert MMA_ROWS == 16
    assert gemm_efficiency(m, n, units, tiles) == pytest.approx(expected, rel=1e-12)


def test_large_gemms_keep_the_tile_wave_quantization() -> None:
    for m, n in ((128, 12288), (2048, 4096), (4096, 2304), (256 * 27, 128 * 4)):
        assert gemm_efficiency(m, n, 108) == wave_efficiency(m, n, 108)
    assert gemm_efficiency(128, 12288, 108) == pytest.approx(128 * 12288 / (108 * 128 * 128), rel=1e-12)
    for m, n, units in ((1, 4096, None), (1, 4096, 0), (0, 4096, 108)):
        assert gemm_efficiency(m, n, units) == 1.0


def test_decode_gemms_are_priced_at_the_mma_padding_not_at_128_row_tiles() -> None:
    """One token per sequence: every GEMM of the layers and the LM head has `micro_batch` rows. The old tile
    model gave one row 1/(128 x SMs / columns) of peak, e.g. 0.0069 for 12288 columns on 108 SMs."""
    sms = Rates(peak_flops=1e15, memory_bw=2e12, efficiency=EFF, compute_units=108)
    gpt, plan = _workload(), Plan(tp=2)
    for rows, expected in ((1, 1 / 16), (2, 2 / 16), (16, 1.0), (20, 20 / 32)):
        assert gemm_wave(gpt, plan, rows, "layers", False, sms) == pytest.approx(expected, rel=1e-12)
        assert gemm_wave(gpt, plan, rows, "head", False, sms) == pytest.approx(expected, rel=1e-12)
    decode = {("decode", "layers", "matmul"): OpTotals(flops=8e12)}
    assert _times(decode, "decode", plan=Plan(tp=2, micro_batch=1), rates=sms).matmul == pytest.approx(
        8e12 / 8 / (GEMM / 16), rel=1e-12)


@pytest.mark.parametrize("mode, model", [
    ("decode", dict(preset="gpt2-small", layers=2, seq_len=64)),
    ("train", dict(preset="gpt2-small", layers=2, seq_len=64)),
    ("decode", dict(preset="llama2-7b", layers=2, seq_len=32, hidden=512, heads=8, kv_heads=2, ffn_hidden=1376,
                    vocab=1000)),
    ("train", dict(preset="llama2-7b", layers=2, seq_len=32, hidden=512, heads=8, kv_heads=2, ffn_hidden=1376,
                   vocab=1000)),
])
def test_the_weight_bytes_a_pass_reads_once_are_the_traced_bytes_that_do_not_grow_with_the_batch(
        mode: str, model: dict) -> None:
    """gemm_weight_bytes: the part of the traced GEMM bytes that does not depend on the batch (2 b(1) - b(2)),
    per phase: forward/prefill/decode read W once per layer and step, backward reads W and writes dW.
    Biases (one row per GEMM, forward only) are the only difference: < 0.2%."""
    from llmsim.config import SharingChoice
    from llmsim.workload.profile import profile_workload

    one, two = (profile_workload(Workload(model=ModelSpec(**model), mode=mode, batch=b, decode_tokens=3),
                                 SharingChoice(tie_embeddings=False)) for b in (1, 2))
    workload = Workload(model=ModelSpec(**model), mode=mode, batch=1, decode_tokens=3)
    phases = {"decode": ["decode"], "train": ["forward", "backward"]}[mode]
    for phase in phases:
        for region, count in (("layers", 2), ("head", 1)):
            fixed = 2 * one.ops[(phase, region, "matmul")].bytes - two.ops[(phase, region, "matmul")].bytes
            steps = 2 if phase == "decode" else 1
            reads = 2 if phase == "backward" else 1
            expected = reads * gemm_weight_bytes(workload, Plan(), region) * count * steps
            assert fixed == pytest.approx(expected, rel=2e-3), (phase, region)



def test_the_phase_memo_answers_as_phase_times_does_for_plans_that_differ_in_what_its_key_drops() -> None:
    """Inside phase_memo, phase_times keys a plan by phase_plan_key (tp, cp, micro_batch; float8: m); plans that
    differ in that key and in everything else (pp, schedule, recompute, sp, dp, ZeRO) get the numbers
    computed without the memo, whatever the order they are asked in; so does phase_times_of (several questions,
    one look-up). A key missing a field phase_times reads fails here (the first plan asked would answer for the
    others)."""
    import random

    from llmsim.config import SharingChoice
    from llmsim.costmodel.compute import phase_memo, phase_times_of
    from llmsim.hardware import load_catalog
    from llmsim.workload.profile import profile_workload

    rng = random.Random(3)
    model = ModelSpec(layers=2, hidden=512, heads=8, kv_heads=2, ffn_hidden=1024, vocab=1000, seq_len=256,
                      activation="swiglu", norm="rmsnorm", positions="rotary", bias=False)
    cases = []
    for dtype in ("bfloat16", "float8"):
        w = Workload(model=model, mode="train", batch=16, dtype=dtype)
        profile = profile_workload(w, SharingChoice(tie_embeddings=False))
        rates = device_rates(load_catalog().cluster("h100-sxm", nodes=1, devices_per_node=8), dtype)
        for _ in range(150):
            plan = Plan(dp=rng.choice([1, 2, 4]), tp=rng.choice([1, 2, 4]), pp=rng.choice([1, 2]),
                        cp=rng.choice([1, 2]), micro_batch=rng.choice([1, 2, 4]), microbatches=rng.choice([1, 2, 8]),
                        sp=rng.choice([False, True]), zero=rng.choice([0, 1, 3]),
                        schedule=rng.choice(["gpipe", "1f1b"]), recompute=rng.choice(["none", "full"]))
            phase, region = rng.choice([("forward", "layers"), ("backward", "layers"), ("forward", "embed"),
                                        ("backward", "head")])
            divide = plan.tp * plan.cp * (model.layers if region == "layers" else 1)
            args = (profile, w, plan, Options(), rates, phase, region, divide)
            cases.append((args, phase_times(*args)))
    rng.shuffle(cases)
    with phase_memo():
        for args, want in cases:
            assert phase_times(*args) == want, args[2]
            # phase_times_of: the same question among others, answered by one look-up of them all
            profile, w, plan, options, rates, phase, region, divide = args
            questions = (("forward", "embed", plan.tp * plan.cp), (phase, region, divide))
            assert phase_times_of(profile, w, plan, options, rates, questions)[1] == want, args[2]
    assert phase_times_of(profile, w, plan, options, rates, questions) == tuple(
        phase_times(profile, w, plan, options, rates, *q) for q in questions)  # outside the memo too


def test_a_grouped_launchs_problems_share_the_waves() -> None:
    """Equal GEMMs launched as one grouped kernel (a MoE layer's experts: SGLang's / vLLM's fused_moe grid over
    every expert's rows) fill ceil(problems x tiles / units) waves together, not one launch's waves each."""
    alone = wave_efficiency(128, 512, 148, ((128, 128),))
    assert alone == pytest.approx(4 / 148, rel=1e-12)                       # one expert's 4 tiles on 148 SMs
    grouped = wave_efficiency(128, 512, 148, ((128, 128),), problems=256)
    assert grouped == pytest.approx(1024 / (7 * 148), rel=1e-12)             # 1,024 tiles in 7 waves
    assert wave_efficiency(128, 512, 148, ((128, 128),), problems=1) == alone
    assert gemm_efficiency(128, 512, 148, ((128, 128),), problems=256) == grouped
