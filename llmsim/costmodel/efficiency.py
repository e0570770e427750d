"""Achievable fractions of a device's peak, with the measurements they come from.

A roofline needs two ceilings per device (peak FLOP/s, peak memory bandwidth); real kernels reach a
fraction of each. Those fractions are named here once, each with its source, and a hardware entry may
carry its own (`efficiency:` in the catalog YAML; `llmsim calibrate` writes one from measured runs).
A device without an `efficiency:` block gets `DEFAULT_EFFICIENCY`.

Pure pydantic: importing this module must stay cheap and torch-free (the hardware catalog imports it).
"""

from __future__ import annotations

import functools
import math

from typing import Annotated

from pydantic import ConfigDict, Field

from llmsim.strict import BooleansAreNotNumbers

# Maximum achievable matmul FLOPS (MAMF), BF16, best shape found by a shape search, divided by the
# datasheet peak (S. Bekman, "Machine Learning Engineering", compute/accelerator/README.md, "Maximum
# Achievable Matmul FLOPS comparison table"): A100 SXM 267.9/312 = 0.859 (CUDA 12.1), H100 SXM
# 792.1/989 = 0.801 (CUDA 12.1), GH200 821.0/989 = 0.830 (CUDA 12.5).
MAMF_A100_SXM = 267.9 / 312
MAMF_H100_SXM = 792.1 / 989
MAMF_GH200 = 821.0 / 989
# MAMF is a boost-clock burst (idle, then a short run). A training step keeps every GPU of a node at its
# power limit, where the SM clock settles lower: the same finder's sustained figure (MSMF: thermal soak,
# then repeated runs; every other GPU of the node running a matmul meanwhile) over its MAMF, measured on a
# full 8 x H200 node (bf16, torch 2.14, 40 GPU-runs): 698.6 / 823.9 TFLOP/s = 0.848 (Bekman, ml-engineering,
# compute/accelerator/benchmarks/README.md, "What we measured: alone vs all-8 concurrent"; a B200 node
# gave 1426.4 / 1751.2 = 0.815). No A100 or H100 MSMF is published: the H200 ratio is applied to the other
# NVIDIA boards of the catalog as an estimate, said in each entry's source.
SUSTAINED_OVER_BURST_H200_NODE = 698.6 / 823.9
# The generic default is the lower of the NVIDIA measurements: a device without its own number is not
# assumed to be better than the H100.
DEFAULT_MATMUL = MAMF_H100_SXM

# Fused attention kernels run below GEMM efficiency (softmax and masking sit between two small
# matmuls). FlashAttention-2 (Dao 2023, arXiv:2307.08691, abstract and Sec. 4.1) reaches 50-73% of the
# theoretical maximum FLOP/s on A100 in the forward pass, less in the backward pass: we take the lower
# end, 0.50, for forward and backward alike.
FLASH_ATTENTION_A100 = 0.50
DEFAULT_ATTENTION = FLASH_ATTENTION_A100
# On H100 the same FlashAttention-2 kernel reaches much less of the (3x larger) peak. FlashAttention-3
# (Shah et al. 2024, arXiv:2407.08608, Fig. 5 and 6: H100 80GB SXM5, bf16, batch x seq = 16k tokens, 16 heads
# of 128) measures FA2 at head dim 128 and sequence 8k: forward with causal mask 333 TFLOP/s, backward
# 318 TFLOP/s (the paper plots the backward without causal mask only), of the 989 TFLOP/s datasheet peak;
# its abstract: "FlashAttention-2 achieving only 35% utilization on H100". These are the kernel torch's SDPA
# runs on Hopper in the training rows: `_scaled_dot_product_flash_attention` is FlashAttention-2 (vendored in
# aten/src/ATen/native/transformers/cuda/flash_attn), and cuDNN attention has been opt-in since torch 2.5.1
# (pytorch/pytorch#138522: the lowest priority in sdp_utils.cpp's order; torchtitan 820504e/e7c0cae
# models/attention.py put CUDNN_ATTENTION first only on compute capability 10.0, B200).
FLASH_ATTENTION2_H100_FORWARD = 333 / 989.4
FLASH_ATTENTION2_H100_BACKWARD = 318 / 989.4
# The same figures of the FlashAttention-3 paper (H100 80GB SXM5, bf16, head dim 128, sequence 8k) measure the
# two other fused kernels that run on Hopper: cuDNN's fused attention (Fig. 5d forward with causal mask 529,
# Fig. 6 backward 518 TFLOP/s) and FlashAttention-3 itself (602 and 559 TFLOP/s). cuDNN's is the kernel
# Transformer Engine's DotProductAttention (Megatron-Core's core attention, TEDotProductAttention) runs on
# Hopper: its backend selection prefers FusedAttention's F16_arbitrary_seqlen (cuDNN) sub-backend over
# FlashAttention on compute capability 9.0 "for performance reasons" (NVIDIA/TransformerEngine
# transformer_engine/pytorch/attention.py, v1.7 through v1.11, get_attention_backend / the v1.7 selection).
CUDNN_ATTENTION_H100_FORWARD = 529 / 989.4
CUDNN_ATTENTION_H100_BACKWARD = 518 / 989.4
FLASH_ATTENTION3_H100_FORWARD = 602 / 989.4
FLASH_ATTENTION3_H100_BACKWARD = 559 / 989.4

# Streaming kernels reach about 88% of HBM bandwidth: 1.80 of 2.04 TB/s on A100 80GB SXM, confirmed by
# Nsight Compute, with "around 90%" the best of any kernel in NVIDIA's GTC 2025 memory talk (NVIDIA
# developer forum, "Trouble to Reach Peak Bandwidth of A100", 2025).
HBM_STREAM_A100 = 1.80 / 2.04
DEFAULT_MEMORY = HBM_STREAM_A100

# A decode step's attention kernel streams the cached K and V of every decoding sequence: memory-bound, but its
# own kernel, whose achieved bandwidth is measured apart from a plain stream's. TensorRT-LLM's Skip Softmax
# Attention blog (NVIDIA/TensorRT-LLM docs/source/blogs/tech_blog/
# blog16_Accelerating_Long_Context_Inference_with_Skip_Softmax_Attention.md at 0cedc792, "Decode Baseline (we
# report memory bandwidth in TB/s)": q_heads 64, kv_heads 4, head_dim 128, batch 64; Hopper = the XQA kernel,
# Blackwell = trtllm-gen) gives, at seqlen 16k (64k in brackets): H200 BF16 4.31 (4.37), FP8 4.03 (4.10) TB/s;
# B200 BF16 7.08 (7.10), FP8 5.46 (5.68) TB/s. With a 16-bit cache the kernel streams like any copy (0.90 of the
# H200's 4.8 TB/s, the A100 stream's 0.88 within 2%); with an FP8 cache it reaches less: each byte read is one
# element to convert and scale before the 16-bit (Hopper XQA) math, twice the elements per byte, so the kernel
# is no longer at the memory ceiling alone (H200 -6.5%, B200 -23%). Taken at 16k, the shorter of the two
# lengths (served caches are shorter still), as fractions of the catalog's peak bandwidth. The B200 FP8 figure is
# not used by the catalog: measured at 16 query heads per KV head, it disagrees with the -8% that vLLM's
# fp8-kvcache post implies on B200 at Llama 3.1 8B's 4 (the group moves the kernel's work per byte on
# Blackwell), while on Hopper the two engines agree (XQA -6.5% at 16; vLLM's FlashAttention-3 on H100 -8% at 4).
XQA_DECODE_H200_BF16 = 4.31e12 / 4.8e12
XQA_DECODE_H200_FP8 = 4.03e12 / 4.8e12
TRTLLM_GEN_DECODE_B200_BF16 = 7.08e12 / 8.0e12
TRTLLM_GEN_DECODE_B200_FP8 = 5.46e12 / 8.0e12

# cuBLAS splits a GEMM's output into thread-block tiles; one wave runs one tile per SM. The largest
# Ampere/Hopper tiles are 256x128, with 128x128 chosen when that quantizes better (NVIDIA Deep Learning
# Performance Guide, "Matrix Multiplication Background", sections on tile and wave quantization).
DEFAULT_MATMUL_TILES: tuple[tuple[int, int], ...] = ((256, 128), (128, 128))
# A side of a GEMM output tile: a whole number of rows or columns (a quoted '128' refused, as any quoted number). The
# largest tiles of Hopper's and Blackwell's GEMM libraries are 256 x 256 (CUTLASS 3 sm90/sm100 tile shapes); 4,096
# leaves room for any tiling without letting a typo (0, -5, 100000) price every GEMM as one wave.
MAX_TILE_SIDE = 4096
TileSide = Annotated[int, Field(ge=1, le=MAX_TILE_SIDE, strict=True)]

# A skinny GEMM (few output rows: decode at small batch, a short prefill) does not run in those tiles:
# cuBLAS/CUTLASS pick a GEMV or split-K kernel, which parallelises the reduction (K) across thread blocks
# when the output's tiles are too few to occupy the GPU (CUTLASS docs, efficient_gemm.md, "Parallelized
# Reductions: Split K"; Osama et al. 2023, "Stream-K", PPoPP '23, for the work-centric split that leaves
# no partial wave). What it cannot avoid is padding the short side to the tensor-core instruction's row
# count: 16 rows for f16/bf16 (PTX ISA, warp-level `mma.sync.aligned.m16n8k16`).
MMA_ROWS = 16


# A fixed time per kernel, launch or hop above this is a unit slip (a millisecond or microsecond figure written as
# seconds: `kernel_latency_s: 10`), not a device: the built-in entries' largest is a 165 us link hop, the largest
# per-kernel figure 35 us (eager_launch_s). Priced, a slip gives 1,000-second steps in `ok` rows (trial 35).
MAX_FIXED_TIME_S = 1e-2


class Efficiency(BooleansAreNotNumbers):
    """Fractions of peak a device reaches: calibratable, and carried by a catalog entry if it has its own.

    `matmul` is the large-GEMM fraction of the dtype's peak FLOP/s at the best shape (MAMF); the cost
    model multiplies it by the wave quantization of the actual GEMM shapes when the device declares
    `compute_units`. `attention` is the fraction the default fused attention kernel (`flash`:
    FlashAttention-2) reaches (forward, and backward unless `attention_backward` gives the backward kernel's
    own); `attention_cudnn` and `attention_flash3` (each with its `_backward`) are the other fused kernels'
    fractions, set only where a measurement exists (`attention_fractions`). `memory` is the
    fraction of peak memory bandwidth a streaming (memory-bound) kernel reaches; `decode_attention_memory` and
    `decode_attention_memory_float8` the decode attention kernel's own, reading a 16-bit or an FP8 KV cache, set
    only where measured (`decode_kv_memory`). `op_overhead_s` is a
    fixed cost per operator (Python and dispatcher time in eager PyTorch): it adds up when the host runs
    the ops itself (CPU) and hides behind queued kernels on an accelerator, hence 0 by default; the
    calibration fits it for a host. `kernel_latency_s` is the accelerator's counterpart: the time each
    kernel of a pass takes beyond its roofline (launch, ramp-up and drain of a kernel that waits for the
    previous one), counted over a fused engine's kernels per layer (compute.KERNELS_PER_LAYER_*); it is
    what decode of a small model at small batch mostly consists of. 0 by default (TPU: one compiled XLA
    program per step; CPU: op_overhead_s instead). `kernel_latency_cycles` states that time in SM clock cycles,
    the unit of the latencies a small kernel is bound by (`kernel_latency_seconds`); the catalog loader turns
    it into `kernel_latency_s` with the device's `sm_clock_hz`. `custom_all_reduce_one_shot_s` is the fixed time of one
    kernel measured on its own: vLLM's one-shot custom all-reduce in a CUDA graph, where a device has a published
    timing of it (`Fabric.custom_fixed_s`); elsewhere one kernel of the pass. `custom_all_reduce_two_shot_s` and
    `custom_all_reduce_two_shot_round_s` are the two-shot kernel's, from the same published timings: its fixed
    time and what each grid-stride round of its two stages costs beyond its bytes (`Fabric.custom_round_s`,
    collectives.custom_two_shot_rounds); elsewhere one kernel of the pass and no round term.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # `.inf` cycles passed (trial 37)

    matmul: float = Field(DEFAULT_MATMUL, gt=0, le=1, description="large-GEMM fraction of peak FLOP/s")
    attention: float = Field(DEFAULT_ATTENTION, gt=0, le=1, description="fused attention fraction of peak FLOP/s")
    attention_backward: float | None = Field(None, gt=0, le=1, description="fused attention backward's fraction "
                                             "of peak FLOP/s; None = the same as `attention`")
    attention_cudnn: float | None = Field(None, gt=0, le=1, description="cuDNN fused attention's forward fraction "
                                          "of peak FLOP/s (attention kernel `cudnn`); None = no figure")
    attention_cudnn_backward: float | None = Field(None, gt=0, le=1, description="cuDNN fused attention's "
                                                   "backward fraction; None = the same as `attention_cudnn`")
    attention_flash3: float | None = Field(None, gt=0, le=1, description="FlashAttention-3's forward fraction of "
                                           "peak FLOP/s (attention kernel `flash3`); None = no figure")
    attention_flash3_backward: float | None = Field(None, gt=0, le=1, description="FlashAttention-3's backward "
                                                    "fraction; None = the same as `attention_flash3`")
    memory: float = Field(DEFAULT_MEMORY, gt=0, le=1, description="streaming fraction of peak memory bandwidth")
    decode_attention_memory: float | None = Field(None, gt=0, le=1, description="fraction of peak memory "
                                                  "bandwidth a decode step's attention kernel reaches reading a "
                                                  "16-bit KV cache; None = `memory`")
    decode_attention_memory_float8: float | None = Field(None, gt=0, le=1, description="the same reading an FP8 "
                                                         "KV cache; None = `decode_attention_memory`")
    matmul_float8: float | None = Field(None, gt=0, le=1, description="large-GEMM fraction of the float8 "
                                        "peak (FP8 MAMF); None = the same fraction as `matmul`")
    sustained: float = Field(1.0, gt=0, le=1, description="share of the burst FLOP rate held under sustained load")
    op_overhead_s: float = Field(0.0, ge=0, le=MAX_FIXED_TIME_S,
                                 description="serial host cost per operator launch (eager CPU)")
    kernel_latency_s: float = Field(0.0, ge=0, le=MAX_FIXED_TIME_S, description="fixed time of each kernel of a pass on an "
                                    "accelerator, beyond its bytes and FLOPs (compute.KERNELS_PER_LAYER_*); "
                                    "where 0 and `kernel_latency_cycles` is set, the device's SM clock gives it")
    kernel_latency_cycles: float = Field(0.0, ge=0, description="the same fixed time counted in SM clock cycles "
                                         "(kernel_latency_s = cycles / the device's sm_clock_hz, "
                                         "kernel_latency_seconds); an explicit kernel_latency_s takes precedence")
    custom_all_reduce_one_shot_s: float | None = Field(
        None, ge=0, le=MAX_FIXED_TIME_S, description="fixed time of vLLM's one-shot custom all-reduce kernel as a CUDA graph runs it, "
                                "beyond its flag latencies and bytes (collectives.custom_all_reduce_phases), "
                                "measured on this device; None = no measurement: `kernel_latency_s`")
    custom_all_reduce_two_shot_s: float | None = Field(
        None, ge=0, le=MAX_FIXED_TIME_S, description="fixed time of vLLM's two-shot custom all-reduce kernel as a CUDA graph runs it, "
                                "beyond its flag latencies, grid rounds and bytes (collectives."
                                "custom_all_reduce_phases), measured on this device; None = `kernel_latency_s`")
    custom_all_reduce_two_shot_round_s: float | None = Field(
        None, ge=0, le=MAX_FIXED_TIME_S, description="seconds each grid-stride round of each of the two-shot kernel's two stages costs "
                                "beyond its bytes (collectives.custom_two_shot_rounds), measured on this device; "
                                "None = no round term")
    matmul_tiles: tuple[tuple[TileSide, TileSide], ...] = Field(
        DEFAULT_MATMUL_TILES, min_length=1, description=f"GEMM output tiles (rows, cols) for wave quantization, "
                                                        f"each side a whole number from 1 to {MAX_TILE_SIDE}")
    source: str | None = Field(None, description="where these fractions come from (measurement, fit)")


    def attention_fractions(self, kernel: str) -> tuple[float, float] | None:
        """(forward, backward) fractions of peak FLOP/s of the fused attention `kernel` (`flash`, `cudnn`,
        `flash3`, `trtllm-mmha`: costmodel.plan.FUSED_ATTENTION) on this device; None when the entry has no figure
        for it. `trtllm-mmha` (TensorRT-LLM's context FMHA and generation MMHA) has no measured figure of its own:
        FlashAttention-2's (costmodel.plan.Options)."""
        forward, backward = {"flash": (self.attention, self.attention_backward),
                             "trtllm-mmha": (self.attention, self.attention_backward),
                             "cudnn": (self.attention_cudnn, self.attention_cudnn_backward),
                             "flash3": (self.attention_flash3, self.attention_flash3_backward)}[kernel]
        if forward is None:
            return None
        return forward, backward or forward

    def decode_kv_memory(self, kv_float8: bool) -> float:
        """Fraction of peak memory bandwidth a decode step's attention kernel reaches streaming the KV cache:
        `decode_attention_memory_float8` for an FP8 cache (`kv_float8`), else `decode_attention_memory`, each
        falling back to the next (the FP8 one to the 16-bit one, that to `memory`, a plain stream's), so an entry
        without a measured decode kernel prices its cache reads as any stream (XQA_DECODE_H200_* for the
        measurements). Dimensionless."""
        sixteen = self.decode_attention_memory or self.memory
        if kv_float8:
            return self.decode_attention_memory_float8 or sixteen
        return sixteen


DEFAULT_EFFICIENCY = Efficiency(source="llmsim defaults: MAMF H100 SXM (matmul), FlashAttention-2 on A100 "
                                       "(attention), A100 HBM stream (memory)")


@functools.lru_cache(maxsize=4096)  # pure, and called for the same few shapes by every case of a sweep
def wave_efficiency(m: int, n: int, compute_units: int | None,
                    tiles: tuple[tuple[int, int], ...] = DEFAULT_MATMUL_TILES, problems: int = 1) -> float:
    """Useful fraction of the tile slots a GEMM with an m x n output occupies, best tiling.

    A GEMM runs in ceil(tiles / units) waves; the last wave is partly idle, and edge tiles are partly
    empty. Returns 1.0 when the device does not declare compute units (no wave model).

    `problems`: that many equal m x n GEMMs launched as one grouped kernel, whose tiles share the waves (a MoE
    layer's experts: SGLang's and vLLM's fused_moe Triton kernel launches one grid of cdiv(EM, BLOCK_SIZE_M) x
    cdiv(N, BLOCK_SIZE_N) blocks over every expert's padded rows, sglang python/sglang/srt/layers/moe/
    fused_moe_triton/fused_moe_triton_kernels.py `invoke_fused_moe_kernel` at 018e2ed1; Megatron-Core's
    GroupedMLP one grouped GEMM): ceil(problems x tiles / units) waves for them all, not `problems` launches of
    ceil(tiles / units) each.
    """
    if not compute_units or m <= 0 or n <= 0:
        return 1.0
    problems = max(int(problems), 1)
    best = 0.0
    for tm, tn in tiles:
        for a, b in ((m, n), (n, m)):
            count = problems * math.ceil(a / tm) * math.ceil(b / tn)
            waves = math.ceil(count / compute_units)
            best = max(best, (problems * a * b) / (waves * compute_units * tm * tn))
    return best


@functools.lru_cache(maxsize=4096)
def gemm_efficiency(m: int, n: int, compute_units: int | None,
                    tiles: tuple[tuple[int, int], ...] = DEFAULT_MATMUL_TILES, problems: int = 1) -> float:
    """Shape efficiency of a GEMM with an m x n output: the better of the tiled and the skinny kernel.

    A GEMM whose short side is below the smallest tile side (m = 1..127 rows with 128-wide tiles: decode
    at small batch, a short prefill) runs as a GEMV / split-K kernel: the reduction is split across the
    SMs (no partial wave) and the short side is padded to `MMA_ROWS` (16), so its efficiency is
    short / (16 * ceil(short / 16)): 1/16 for one row, 1.0 from 16 rows on. Larger GEMMs keep the tile
    wave quantization (`wave_efficiency`) unchanged. Returns 1.0 when the device declares no compute units.
    `problems`: equal GEMMs of one grouped launch sharing the waves (`wave_efficiency`).
    """
    wave = wave_efficiency(m, n, compute_units, tiles, problems)
    short = min(m, n)
    if not compute_units or short <= 0 or short >= min(min(tile) for tile in tiles):
        return wave
    return max(wave, short / (MMA_ROWS * math.ceil(short / MMA_ROWS)))


# A kernel too small to be bound by bandwidth or FLOPs is bound by latencies: the launch of its thread blocks,
# the chain of dependent instructions and barriers each block runs (a row reduction, a serial loop over the
# context), the drain before the next kernel in the stream may start. On-chip latencies are fixed numbers of SM
# clock cycles (instruction, shared-memory and barrier latencies are published in cycles: Jia et al. 2018,
# "Dissecting the NVIDIA Volta GPU Architecture via Microbenchmarking", and its Turing/Ampere/Hopper
# successors), so the time such a kernel takes beyond its roofline scales with 1 / the SM clock.
def kernel_latency_seconds(cycles: float, sm_clock_hz: float) -> float:
    """Seconds of a kernel's fixed time: `cycles` SM clock cycles at `sm_clock_hz` (the datasheet boost clock,
    Hz). 19,100 cycles are 13.5 us on an A100 SXM (1,410 MHz) and 9.6 us on an H100/H200 SXM (1,980 MHz)."""
    if cycles < 0 or sm_clock_hz <= 0:
        raise ValueError(f"cycles must be >= 0 and the clock > 0 (got {cycles:g} cycles at {sm_clock_hz:g} Hz)")
    return cycles / sm_clock_hz
