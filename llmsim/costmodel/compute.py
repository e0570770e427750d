"""Time of the traced ops on one device: a roofline per (phase, region, kind) of the workload profile.

    t = max(FLOPs / (peak * efficiency_kind * wave), bytes / (bandwidth * efficiency_memory))

`matmul` ops use the device's GEMM efficiency times the wave quantization of the model's actual GEMM
shapes (when the device declares compute units); `other` ops (norms, activations, residual adds,
softmax outside attention, cross-entropy) move bytes and do no counted FLOPs, so they are memory-bound.
`attention` follows Options.attention, because the profile traces PyTorch's math SDPA path, which
materialises the s x s scores: a fused kernel moves none of those bytes (see plan.Options). Dropout
(ModelSpec.dropout, training only) is traced: on the residual branches as `aten.native_dropout` (an
`other` op: its bytes, no FLOPs), on the attention probabilities inside the attention core, which
`fused-softmax` prices as a separate pass over the s x s matrix and `flash` as fused (free).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from llmsim.costmodel.memo import scoped_memo
from llmsim.costmodel import precision
from llmsim.costmodel.arrays import Num, is_array
from llmsim.costmodel.efficiency import Efficiency, gemm_efficiency
from llmsim.costmodel.activations import op_sac_projections
from llmsim.costmodel.gemms import (attention_input_gemms, linear_shapes as _linear_shapes, mla_replicated_weights,
                                    mlp_width)
from llmsim.costmodel.plan import DTYPE_BYTES, FUSED_ATTENTION, Options, Plan
from llmsim.costmodel.power import device_clock_share

if TYPE_CHECKING:
    from llmsim.config import Workload
    from llmsim.costmodel.cluster import ClusterSpec
    from llmsim.costmodel.cluster import DeviceSpec
    from llmsim.workload.profile import WorkloadProfile

# Fused scale-mask-softmax between the two attention GEMMs, passes over the s x s matrix:
# forward  = GEMM writes scores, softmax reads them and writes probabilities, the P.V GEMM reads them (4);
# backward = dV GEMM reads P, dP GEMM writes dP, softmax backward reads P and dP and writes dS, dQ and dK
#            GEMMs read dS (6).
SOFTMAX_PASSES_FORWARD = 4
SOFTMAX_PASSES_BACKWARD = 6
# Attention-probability dropout (training, ModelSpec.dropout > 0) was not part of that kernel in Megatron-LM
# 2021: ParallelAttention ran `self.attention_dropout(attention_probs)`, a torch.nn.Dropout, after
# FusedScaleMaskSoftmax (megatron/model/transformer.py and fused_softmax.py, v2.x). CUDA nn.Dropout is one
# native_dropout kernel: forward reads P, writes the dropped P (which the P.V GEMM then reads instead of P)
# and a 1-byte mask; backward (native_dropout_backward) reads the gradient and the mask and writes dP (the
# dV GEMM reads the saved dropped P instead of P). Korthikanti et al. 2022, Sec. 4.1 / Table 2, list the
# same tensors: softmax output 2as^2b, dropout mask as^2b, dropout output 2as^2b bytes per layer.
# Passes in element units, plus one mask byte per element, in each direction; a full recompute repeats
# the forward's. FlashAttention fuses dropout into its kernel (mask regenerated from the RNG state): free.
DROPOUT_PASSES_FORWARD = 2
DROPOUT_PASSES_BACKWARD = 2
DROPOUT_MASK_BYTES = 1
# A causal flash kernel skips the fully masked blocks, about half of the s x s FLOPs the profile counts
# (torch's flop counter counts the full matrix) (Dao 2023, Sec. 3.1.1 "Causal masking").
CAUSAL_FLOP_SHARE = 0.5
# Flash backward recomputes the scores: 5 matmuls to the math path's 4 (Dao 2023, Sec. 3.1.2).
FLASH_BACKWARD_FLOP_RATIO = 5 / 4


# Kernels of one Transformer layer in a fused engine, per pass (Efficiency.kernel_latency_s). Forward: 4 GEMMs
# (QKV, attention output, MLP up, MLP down), the attention kernel and 4 elementwise ones. FasterTransformer
# v5's GPT decoder layer (ParallelGptDecoderLayer.cc): layernorm, QKV GEMM, masked multi-head attention
# (bias and rotary fused), output GEMM, add-bias-residual-layernorm, FC1 GEMM, add-bias-GeLU, FC2 GEMM,
# add-bias-residual; vLLM's LlamaDecoderLayer (vllm/model_executor/models/llama.py): fused add-RMSNorm,
# QKV GEMM, rotary, attention, output GEMM, fused add-RMSNorm, gate-up GEMM, SiLU-and-mul, down GEMM. Both 9.
# Backward: an input- and a weight-gradient GEMM for each of the 4, the attention backward and the 4
# elementwise backward kernels. The tensor-parallel collectives are priced by the communication model.
KERNELS_PER_LAYER_FORWARD = 9
KERNELS_PER_LAYER_BACKWARD = 13
# Outside the layers, per pass: the embedding lookup; the final norm and the LM head GEMM.
KERNELS_EMBED = 1
KERNELS_HEAD = 2


def kernels_per_pass(phase: str, region: str) -> int:
    """Kernels one pass of one micro-batch launches per layer ('layers') or in all ('embed', 'head')."""
    if region == "layers":
        return KERNELS_PER_LAYER_BACKWARD if phase == "backward" else KERNELS_PER_LAYER_FORWARD
    return {"embed": KERNELS_EMBED, "head": KERNELS_HEAD}.get(region, 0)


@dataclass(frozen=True)
class _Zero:
    flops: float = 0.0
    bytes: float = 0.0
    count: int = 0

    def traffic(self, compiled: bool) -> float:
        return 0.0


_NONE = _Zero()


@dataclass(frozen=True)
class Rates:
    """A device's ceilings for one dtype and its efficiency fractions."""

    peak_flops: float
    memory_bw: float
    efficiency: Efficiency
    compute_units: int | None = None
    gemm: "Rates | None" = None  # float8: the rates the layers' GEMMs run at (the FP8 peak); None = these
    compiled: bool = False       # the device runs compiled programs only (DeviceSpec.compiled: TPU/XLA)
    clock_share: float = 1.0     # clock held under a power limit below the rated power (costmodel.power)
    fp8_any_layout: bool = False  # FP8 GEMMs take any operand layout (DeviceSpec.fp8_gemm_any_layout: Blackwell)
    fp8_peak_flops: float = 0.0   # float8/float4: the device's float8 peak, for FP8 attention (0: none)

    @property
    def sustained_flops(self) -> float:
        """The FLOP/s ceiling under continuous load: the datasheet peak at the clock the device holds
        (Efficiency.sustained at its rated power, times `clock_share` under a lower power limit)."""
        return self.peak_flops * self.efficiency.sustained * self.clock_share

    def matmul_time(self, flops: float, nbytes: float, wave: float = 1.0) -> float:
        return max(flops / (self.sustained_flops * self.efficiency.matmul * wave), self.memory_time(nbytes))

    def memory_time(self, nbytes: "Num") -> "Num":
        """Seconds to move `nbytes` (0 for none); a numpy column of byte counts gives a column."""
        if is_array(nbytes):
            return np.where(nbytes > 0, nbytes / (self.memory_bw * self.efficiency.memory), 0.0)
        if nbytes <= 0:
            return 0.0
        return nbytes / (self.memory_bw * self.efficiency.memory)

    def decode_kv_time(self, nbytes: float, kv_float8: bool = False) -> float:
        """Seconds a decode step's attention kernel takes to stream `nbytes` of cached K and V (0 for none), at
        the decode kernel's own fraction of peak bandwidth for a 16-bit or an FP8 (`kv_float8`) cache
        (Efficiency.decode_kv_memory; a plain stream's where the device has no measurement)."""
        if nbytes <= 0:
            return 0.0
        return nbytes / (self.memory_bw * self.efficiency.decode_kv_memory(kv_float8))


class CostModelError(ValueError):
    """The case cannot be priced on this hardware (no peak for the dtype, an uncalibrated device...)."""


def attention_fractions(efficiency: Efficiency, kernel: str) -> tuple[float, float]:
    """(forward, backward) fractions of peak FLOP/s the fused attention `kernel` reaches on a device
    (Efficiency.attention_fractions); CostModelError when its catalog entry has no figure for that kernel
    (FlashAttention-3 runs on Hopper only; cuDNN's fused attention is measured on H100 only)."""
    fractions = efficiency.attention_fractions(kernel)
    if fractions is None:
        raise CostModelError(attention_problem(efficiency, kernel))
    return fractions


# Decode kernels that read a grouped-query model's cache once per query head, not once per KV head:
# TensorRT-LLM's masked multi-head attention (MMHA) generation kernel before XQA. Its template
# (cpp/tensorrt_llm/kernels/decoderMaskedMultiheadAttention/decoderMaskedMultiheadAttentionTemplate.h, read at
# 02519b0c and in the file index's older const-auto version of late 2023) says "The different kernels assign a
# threadblock for B x H pair. The grid has size (1, B, H)": `batch_beam_idx = blockIdx.y`, `hi = blockIdx.x`,
# `hi_kv = hi / qhead_per_kv`, and each block loops over all `kv_loop_length` cached keys and values of head
# `hi_kv` ("For MQA/GQA mode, write only with the first Q head of each group per KV head" is its only GQA
# branch: the new token's K/V write). XQA (v0.7+, docs/source/blogs/XQA-kernel.md at 585c7565: "optimization
# for MQA and GQA during generation phase ... reducing data loading") is NVIDIA's kernel that shares them.
PER_QUERY_HEAD_DECODE: tuple[str, ...] = ("trtllm-mmha",)


def decode_kv_reads(kernel: str, heads: int, kv_heads: int, tp: int = 1, latent: bool = False) -> float:
    """How many times a decode step's attention kernel reads each cached K and V element one tensor-parallel
    rank holds: 1 for the flash-style kernels (FlashAttention, FlashInfer, paged attention: a KV head's cache
    is loaded once for its group of query heads), or query heads per KV head on the rank for a kernel in
    PER_QUERY_HEAD_DECODE (TensorRT-LLM's MMHA, one thread block per (sequence, query head), each loading its
    KV head's whole cache). A rank holds heads/tp query heads and kv_heads/min(tp, kv_heads) KV heads (K/V
    replicated once tp exceeds them, as costmodel.memory's kv_cache), so the factor is
    heads x min(tp, kv_heads) / (tp x kv_heads): heads / kv_heads at tp <= kv_heads, 1 for MHA. Dimensionless.
    `latent` (multi-head latent attention): 1 for every kernel, the absorbed decode reads the one latent of a
    sequence once for all its heads (FlashMLA, vLLM's and SGLang's MLA backends; DeepSeek-V3 inference/model.py
    attn_impl "absorb")."""
    if latent or kernel not in PER_QUERY_HEAD_DECODE:
        return 1.0
    return heads * min(tp, kv_heads) / (tp * kv_heads)


def attention_problem(efficiency: Efficiency, kernel: str) -> str | None:
    """Why a device with `efficiency` cannot price the fused attention `kernel` (its catalog entry has no figure
    for it), in the words a skipped row gives; None when it can."""
    if efficiency.attention_fractions(kernel) is not None:
        return None
    have = ", ".join(k for k in FUSED_ATTENTION if efficiency.attention_fractions(k) is not None)
    return (f"attention kernel {kernel!r} has no measured efficiency on this device (its catalog entry sets no "
            f"efficiency.attention_{kernel}); kernels it has: {have}")


def workload_rates(cluster: "ClusterSpec", workload: "Workload") -> Rates:
    """device_rates for the workload's dtype and, for float4, its fp4 recipe (nvfp4 needs NVFP4 units)."""
    return device_rates(cluster, workload.dtype, precision.fp4_recipe_of(workload))


def rates_problem(device: "DeviceSpec", dtype: str) -> str | None:
    """Why device_rates cannot give `device`'s ceilings for `dtype` (the catalog entry lacks the peak FLOP/s, or
    the memory bandwidth), or None. A pure look-up of the entry, so `llmsim validate` can say before a run which
    rows a modeled backend will skip (Backend.known_skip)."""
    if dtype == "float8":
        if not device.peak_flops.get("float8"):
            return (f"device {device.name!r} has no float8 peak FLOP/s (no FP8 units in the catalog); it has: "
                    f"{', '.join(device.peak_flops) or 'none'}")
        dtype = "bfloat16"   # the rest of a float8 step runs at the bf16 ceilings
    if dtype == "float4":    # FP4 GEMMs at the float4 peak where there is one, else weight-only (precision)
        dtype = "bfloat16"
    if not device.peak_flops.get(dtype):  # type: ignore[call-overload]
        # an empty peak_flops is the measured host's (cpu-host: probed, then `llmsim calibrate`); on another entry it
        # is a catalog file that left the key out (trial 31: a GPU entry was told to calibrate)
        have = ", ".join(device.peak_flops) or (
            "none (measured at run time: run `llmsim calibrate` first)" if device.name.startswith("cpu-host")
            else "none (its catalog entry gives no peak_flops: add the datasheet's dense peaks per dtype)")
        return f"device {device.name!r} has no peak FLOP/s for {dtype}; it has: {have}"
    if not device.memory_bw_bytes_per_s:
        return (f"device {device.name!r} has no memory bandwidth in the catalog (memory_bw_bytes_per_s: 0, unknown): "
                f"give it in the device's hardware file, or run `llmsim calibrate` on measured runs to make an "
                f"entry that has one")
    return None


def device_rates(cluster: "ClusterSpec", dtype: str, fp4_recipe: str = "nvfp4") -> Rates:
    """The cluster device's ceilings for `dtype`; CostModelError when the catalog entry lacks one.

    float8: the bf16 ceilings (attention, elementwise ops, the LM head, MFU's denominator) with `gemm` at the
    device's float8 peak and FP8 MAMF (`Efficiency.matmul_float8`, else the bf16 fraction); a device
    without a float8 peak (no FP8 units: A100, TPU v4/v5e) cannot price it.
    float4: the same with `gemm` at the device's float4 peak and FP4 MAMF. No published FP4 MAMF (a large
    dense GEMM's achieved fraction) was found for B200/GB200, so FP4 takes the FP8 fraction
    (`Efficiency.matmul_float8`, else the bf16 one): an estimate. A device without a float4 peak (Hopper,
    Ampere, CDNA3), or nvfp4 on one whose FP4 units take MX scales only (CDNA4), runs a float4 workload
    weight-only (precision.weight_only): the bf16 ceilings, no `gemm`. `fp4_recipe`: the workload's fp4 recipe
    (workload_rates passes it)."""
    device = cluster.device
    problem = rates_problem(device, dtype)
    if problem is not None:
        raise CostModelError(problem)
    if dtype == "float4":
        base = device_rates(cluster, "bfloat16")
        if not precision.has_fp4_units(device, fp4_recipe):
            return base
        eff = base.efficiency
        fp4_eff = eff.model_copy(update={"matmul": eff.matmul_float8 or eff.matmul})
        return replace(base, gemm=replace(base, peak_flops=device.peak_flops["float4"], efficiency=fp4_eff),
                       fp8_peak_flops=device.peak_flops.get("float8") or 0.0)
    if dtype == "float8":
        base = device_rates(cluster, "bfloat16")
        eff = base.efficiency
        fp8_eff = eff.model_copy(update={"matmul": eff.matmul_float8 or eff.matmul})
        return replace(base, gemm=replace(base, peak_flops=device.peak_flops["float8"], efficiency=fp8_eff),
                       fp8_peak_flops=device.peak_flops["float8"])
    peak = device.peak_flops[dtype]  # type: ignore[index]
    return Rates(peak_flops=peak, memory_bw=device.memory_bw_bytes_per_s, efficiency=cluster.efficiency,
                 compute_units=device.compute_units, compiled=device.compiled,
                 clock_share=device_clock_share(device), fp8_any_layout=precision.any_layout(device))


# What `compile: true` compiles on an eagerly-run device: the Transformer blocks, one torch.compile per block,
# as torchtitan's apply_compile does ("Apply torch.compile to each TransformerBlock, which makes compilation
# efficient due to repeated structure", pytorch/torchtitan@004b3148 torchtitan/parallelisms/parallelize_llama.py);
# the embedding, final norm, LM head and loss stay eager. A compiled-only device (XLA on TPU: jax.jit of the whole train step) fuses every region.
COMPILED_REGIONS = ("layers", "experts")


def runs_compiled(options: Options, rates: Rates, region: str) -> bool:
    """Whether `region`'s elementwise ops run fused: everywhere on a compiled-only device (unless
    Options.compile is False), in the Transformer blocks (COMPILED_REGIONS) with Options.compile True."""
    if options.compile is None:
        return rates.compiled
    if options.compile and not rates.compiled:
        return region in COMPILED_REGIONS
    return options.compile


def gemm_weight_bytes(workload: "Workload", plan: Plan, region: str, traced: bool = False) -> float:
    """Bytes of the GEMM weights of one transformer layer ('layers') or of the LM head ('head') on one
    tensor-parallel rank: what one pass of one micro-batch reads, whatever its number of rows.

    A GEMM reads its whole weight matrix once per call (in x out elements), so a step that runs m
    micro-batches reads each stage's weights m times: the traced bytes of a batch cannot simply be split
    in proportion to the micro-batch. Layers: the (in, out) shapes of `_linear_shapes` (QKV with K and V
    over min(tp, kv_heads), attention output, gated or plain MLP up, MLP down); head: hidden x vocab/tp.
    Biases (a row per GEMM, < 0.1%) stay with the batch-proportional part. Other regions: 0.
    The layers of a float8 workload read their FP8 weight copies (1 byte, costmodel.precision), a float4
    one its FP4 weights (4.5 or 4.25 bits, costmodel.precision.FP4_BYTES), unless
    `traced` asks for what the profile traced (the storage dtype).
    """
    spec = workload.model
    elem = DTYPE_BYTES[workload.dtype]
    if region == "layers":
        if traced:
            return sum(k * n for k, n in _linear_shapes(workload, plan)) * elem
        quantized, kept = precision.layer_gemm_split(workload, plan)   # kept: fp4.layers mlp's attention
        return quantized * precision.layer_weight_elem(workload) + kept * elem
    if region == "head":
        return spec.hidden * -(-spec.vocab // plan.tp) * elem
    return 0.0


def layer_matmul_time(workload: "Workload", plan: Plan, rates: Rates, flops: float, activation_bytes: float,
                      weight_bytes: float, wave: float) -> float:
    """Seconds of one layer region's GEMMs (`flops`, their activations in and out `activation_bytes`, the weights
    they read `weight_bytes`, gemm_weight_bytes' mix) at the quantized rates (`rates.gemm`) where the workload
    quantizes them. Under `fp4.layers: mlp` the attention projections run at the 16-bit rates
    (precision.kept_16bit_share of the FLOPs and activations, their 16-bit weights' share of the bytes); a
    weight-only or unquantized workload has no `gemm` rates and runs all at the 16-bit ones."""
    gemm = rates.gemm if rates.gemm is not None else rates
    kept = precision.kept_16bit_share(workload, plan) if rates.gemm is not None else 0.0
    if not kept:
        return gemm.matmul_time(flops, activation_bytes + weight_bytes, wave)
    quantized_w, kept_w = precision.layer_gemm_split(workload, plan)
    quantized_b = quantized_w * precision.layer_weight_elem(workload)
    kept_b = kept_w * DTYPE_BYTES[workload.dtype]
    weights_kept = weight_bytes * kept_b / (quantized_b + kept_b)
    return (gemm.matmul_time(flops * (1 - kept), activation_bytes * (1 - kept) + weight_bytes - weights_kept, wave)
            + rates.matmul_time(flops * kept, activation_bytes * kept + weights_kept, wave))


def _weight_reads(phase: str, trainable: bool) -> int:
    """Weight-sized GEMM operands per pass: forward reads W; backward reads W for the input gradient and
    writes dW for the weight gradient (no dW for a frozen weight). Checked against the trace (tests)."""
    if phase == "backward":
        return 2 if trainable else 1
    return 1


def layer_gemm_shares(workload: "Workload", plan: Plan) -> tuple[float, float, float, float]:
    """Each of a layer's four GEMMs' share of its matmul FLOPs on one tensor-parallel rank, in the order
    (QKV, attention out, MLP up, MLP down): in x out of each (2 FLOPs per weight per token, the tokens
    cancel). The same shares hold for the backward's data- and weight-gradient GEMMs."""
    weights = [k * n for k, n in _linear_shapes(workload, plan)]
    inputs = attention_input_gemms(workload.model)  # multi-head latent attention: its projections are "QKV"
    weights = [sum(weights[:inputs])] + weights[inputs:]
    total = sum(weights)
    return tuple(w / total for w in weights)  # type: ignore[return-value]


def op_sac_recomputed_share(workload: "Workload", plan: Plan) -> float:
    """Share of a layer's forward GEMM FLOPs on one tensor-parallel rank that torchtitan's op-level SAC
    (`recompute: selective-op`) runs again in the backward: the projections activations.op_sac_projections
    recomputes (k, o, up; GELU: k, o, down), each in x out (2 FLOPs per weight per token, the tokens
    cancel). Llama 3 8B (h 4096, 8 KV heads of 128, f 14336): (4096 x 1024 + 4096 x 4096 + 4096 x 14336)
    / (2 x 4096 x 4096 + 2 x 4096 x 1024 + 3 x 4096 x 14336) = 0.365."""
    spec = workload.model
    tp = plan.tp
    kv = spec.kv_heads or spec.heads
    kv_width = (kv // tp if tp <= kv else 1) * spec.head_width
    ffn = mlp_width(spec) // tp
    weights = {"q": spec.hidden * spec.heads // tp * spec.head_width, "k": spec.hidden * kv_width,
               "v": spec.hidden * kv_width, "o": spec.attention_width // tp * spec.hidden,
               "gate": spec.hidden * ffn, "up": spec.hidden * ffn, "down": ffn * spec.hidden}
    kept, recomputed = op_sac_projections(spec)
    total = sum(weights[p] for p in kept + recomputed)
    return sum(weights[p] for p in recomputed) / total if total else 0.0


def replicated_kv_projection(workload: "Workload", plan: Plan, tokens: int) -> tuple[float, float]:
    """(FLOPs, bytes) one tensor-parallel rank spends on one layer's K and V projections for `tokens` rows
    in one forward pass beyond its 1/tp share of the model's, because with tp > kv_heads each rank holds
    a whole KV head replicated on tp/kv_heads ranks (Megatron-LM GQA; costmodel.memory.tp_block_params).

    FLOPs: 2 x tokens x (2 x hidden x kv_heads x head_dim) x (1/min(tp, kv_heads) - 1/tp) (Kaplan et al.
    2020: 2 FLOPs per weight per token); bytes: those extra weights read once. Zero when tp <= kv_heads.
    Multi-head latent attention: its down-projections (gemms.mla_replicated_weights), which every rank runs
    whole: 2 x tokens x weights x (1 - 1/tp).
    """
    spec = workload.model
    if spec.mla is not None:
        excess = mla_replicated_weights(spec) * (1 - 1 / plan.tp)
        return 2 * tokens * excess, excess * DTYPE_BYTES[workload.dtype]
    kv = spec.kv_heads or spec.heads
    if plan.tp <= kv:
        return 0.0, 0.0
    weights = 2 * spec.hidden * kv * spec.head_width
    excess = weights * (1 / kv - 1 / plan.tp)
    return 2 * tokens * excess, excess * DTYPE_BYTES[workload.dtype]


def gemm_wave(workload: "Workload", plan: Plan, tokens: int, region: str, backward: bool,
              rates: Rates) -> float:
    """FLOP-weighted shape efficiency (efficiency.gemm_efficiency) of a region's GEMMs for `tokens` rows.

    Tile wave quantization for large GEMMs; the GEMV / split-K efficiency for skinny ones (few rows).
    """
    if not rates.compute_units:
        return 1.0
    spec = workload.model
    shapes = (_linear_shapes(workload, plan) if region == "layers"
              else [(spec.hidden, -(-spec.vocab // plan.tp))])
    return _weighted_wave(tuple(shapes), tokens, backward, rates.compute_units, rates.efficiency.matmul_tiles)


@functools.lru_cache(maxsize=4096)
def _weighted_wave(shapes: tuple[tuple[int, int], ...], tokens: int, backward: bool, units: int,
                   tiles: tuple[tuple[int, int], ...], problems: int = 1) -> float:
    """FLOP-weighted gemm_efficiency of `shapes` ((k, n) weights) for `tokens` rows (backward: the data and the
    weight gradient). `problems`: that many equal GEMMs of each shape in one grouped launch, sharing its waves (a
    MoE layer's active experts: efficiency.wave_efficiency)."""
    outputs: list[tuple[int, int, int]] = []  # (rows, cols, flops weight)
    for k, n in shapes:
        weight = tokens * k * n
        if backward:  # data gradient (tokens x in) and weight gradient (in x out)
            outputs += [(tokens, k, weight), (k, n, weight)]
        else:
            outputs.append((tokens, n, weight))
    total = sum(w for _, _, w in outputs)
    slowed = sum(w / gemm_efficiency(r, c, units, tiles, problems) for r, c, w in outputs)
    return total / slowed if slowed else 1.0


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds for one micro-batch on one device, by kind."""

    matmul: float = 0.0
    attention: float = 0.0
    other: float = 0.0

    @property
    def total(self) -> float:
        return self.matmul + self.attention + self.other


class _PhaseMemo:
    """phase_memo's table: phase_times results by (objects, phase, region, divide, steps, the plan fields it
    reads), and the objects keyed by id() in it, kept alive so that no id is reused while the memo lives."""

    def __init__(self) -> None:
        self.results: dict[tuple, PhaseTimes] = {}
        self.many: dict[tuple, tuple[PhaseTimes, ...]] = {}  # phase_times_of
        self.alive: dict[int, object] = {}


# The open memo of this thread / task, if any: a context variable scopes it to the `with phase_memo()` block
# that opened it (as decimal.localcontext scopes a context), so two threads pricing tables never share one.
_PHASE_MEMO: ContextVar[_PhaseMemo | None] = ContextVar("llmsim_phase_memo", default=None)


@contextmanager
def phase_memo() -> Iterator[None]:
    """Within this block, `phase_times` computes each distinct question once: calls whose arguments agree on
    the objects (profile, workload), the options, the rates, phase, region, divide, steps and the plan fields
    it reads (`phase_plan_key`) share one result. The planner prices thousands of plans that differ in
    fields phase_times never reads (pp, the schedule, the split, recompute, sp, dp, ZeRO); the numbers are
    the same as without the block. Nested blocks share the outer one's table."""
    with scoped_memo(_PHASE_MEMO, _PhaseMemo):
        yield


def phase_plan_key(workload: "Workload", plan: Plan) -> tuple:
    """The fields of `plan` that `phase_times` reads (directly and through gemm_weight_bytes, gemm_wave,
    replicated_kv_projection, the float8 casts, _kv_read_bytes): tp, cp, micro_batch, and the micro-batch
    count where a float8 workload spreads its weight casts over it. tests/costmodel/test_compute.py checks
    that plans agreeing on these price alike."""
    return (plan.tp, plan.cp, plan.micro_batch, plan.microbatches if precision.is_quantized(workload) else 0)


def phase_times(profile: "WorkloadProfile", workload: "Workload", plan: Plan, options: Options, rates: Rates,
                phase: str, region: str, divide: int, steps: int = 1) -> PhaseTimes:
    """One micro-batch's share of `phase` ops in `region` on one device.

    `divide` is how many devices share the region's work of one micro-batch (tp*cp, times pp for the
    layers). `steps` divides a phase traced over several decode steps into one step. Inside `phase_memo`,
    a question asked before is answered from its table.
    """
    memo = _PHASE_MEMO.get()
    if memo is None:
        return _phase_times(profile, workload, plan, options, rates, phase, region, divide, steps)
    key = (id(profile), id(workload), options, _rates_key(rates), phase, region, divide, steps,
           *phase_plan_key(workload, plan))
    out = memo.results.get(key)
    if out is None:
        out = memo.results[key] = _phase_times(profile, workload, plan, options, rates, phase, region, divide, steps)
        for obj in (profile, workload, rates.efficiency, rates.gemm and rates.gemm.efficiency):
            memo.alive[id(obj)] = obj
    return out


def phase_times_of(profile: "WorkloadProfile", workload: "Workload", plan: Plan, options: Options, rates: Rates,
                   questions: tuple[tuple[str, str, int], ...], steps: int = 1) -> tuple[PhaseTimes, ...]:
    """`phase_times` of each (phase, region, divide) of `questions`, in their order: the same numbers. Inside
    `phase_memo` the questions of one call are answered by one look-up (its key built once, not once per
    question: a training step asks six of every plan, work.train_work)."""
    memo = _PHASE_MEMO.get()
    if memo is None:
        return tuple(_phase_times(profile, workload, plan, options, rates, phase, region, divide, steps)
                     for phase, region, divide in questions)
    key = (id(profile), id(workload), options, _rates_key(rates), questions, steps, *phase_plan_key(workload, plan))
    out = memo.many.get(key)
    if out is None:
        out = memo.many[key] = tuple(phase_times(profile, workload, plan, options, rates, phase, region, divide, steps)
                                     for phase, region, divide in questions)
    return out


def _rates_key(rates: Rates | None) -> tuple | None:
    """Rates as a memo key: its numbers and its efficiency's identity (a pydantic model hashes slowly)."""
    if rates is None:
        return None
    return (rates.peak_flops, rates.memory_bw, id(rates.efficiency), rates.compute_units, rates.clock_share,
            rates.fp8_any_layout, rates.fp8_peak_flops, _rates_key(rates.gemm))


def _phase_times(profile: "WorkloadProfile", workload: "Workload", plan: Plan, options: Options, rates: Rates,
                 phase: str, region: str, divide: int, steps: int = 1) -> PhaseTimes:
    spec = workload.model
    share = plan.micro_batch / profile.batch / divide / steps
    elem = DTYPE_BYTES[workload.dtype]
    backward = phase == "backward"
    decode = phase == "decode"
    tokens = plan.micro_batch * (1 if decode else spec.seq_len // plan.cp)

    # the layers this device runs of the traced ones (divide = tp*cp*stages for the layers region)
    layers_here = profile.layers / (divide // (plan.tp * plan.cp) or 1)

    ops = profile.ops
    mm = ops.get((phase, region, "matmul"), _NONE)
    at = ops.get((phase, region, "attention"), _NONE)
    ot = ops.get((phase, region, "other"), _NONE)
    mm_flops, mm_bytes = mm.flops * share, mm.bytes * share
    weights_read = 0.0   # of mm_bytes, the weights (layer_matmul_time splits them by precision)
    if region in ("layers", "head") and (mm.flops or mm.bytes):
        # Weights are read once per pass of each micro-batch, whatever its size (gemm_weight_bytes): take
        # the traced whole-model weights (tp = 1, every traced layer and decode step) out of the traced
        # bytes, split the rest (activations in and out) by the micro-batch's share, and add this rank's
        # own weights once per pass over its layers (with tp > kv_heads they include the replicated K/V).
        count = profile.layers if region == "layers" else 1
        here = layers_here if region == "layers" else 1
        trainable = profile.trainable_params > 0.5 * profile.params  # frozen base (LoRA): no dW
        reads = _weight_reads(phase, trainable)
        traced_weights = reads * gemm_weight_bytes(workload, replace(plan, tp=1), region, traced=True) * count * steps
        weights_read = reads * gemm_weight_bytes(workload, plan, region) * here
        mm_bytes = max(mm.bytes - traced_weights, 0.0) * share + weights_read
    if region == "layers" and (mm_flops or mm_bytes):
        # The profile traces one device's whole model; its 1/tp share misses the K/V projections that
        # every rank repeats when tp > kv_heads. The backward repeats them twice (input and weight grads).
        extra_flops, _ = replicated_kv_projection(workload, plan, tokens)
        passes = 2 if backward else 1
        mm_flops += extra_flops * layers_here * passes
    wave = gemm_wave(workload, plan, tokens, region, backward, rates) if mm_flops or mm_bytes else 1.0
    if not (mm_flops or mm_bytes):
        matmul = 0.0
    elif region == "layers":
        matmul = layer_matmul_time(workload, plan, rates, mm_flops, mm_bytes - weights_read, weights_read, wave)
    else:
        matmul = rates.matmul_time(mm_flops, mm_bytes, wave)
    other = rates.memory_time(ot.traffic(runs_compiled(options, rates, region)) * share)
    if region == "layers" and precision.is_quantized(workload) and rates.gemm is not None and (mm_flops or mm_bytes):
        # FP8/FP4 casts of the GEMM inputs (and, once per step, of the weights): memory-bound passes, writing the
        # copies the device's FP8 GEMMs need (precision.copies); none for weight-only FP4 (no `gemm` rates)
        casts = precision.activation_cast_bytes(workload, plan, phase, tokens, rates.fp8_any_layout) * layers_here
        # a frozen base kept in FP8 (`frozen_weights: float8`) is never cast: its weights never change
        frozen_fp8 = precision.frozen_fp8(workload) and profile.trainable_params <= 0.5 * profile.params
        if phase == "forward" and not frozen_fp8:
            casts += (precision.weight_cast_bytes(workload, plan, rates.fp8_any_layout) * layers_here
                      / plan.microbatches)
        other += rates.memory_time(casts)
    if region == "layers" and (at.flops or at.bytes) and precision.fp8_attention(workload):
        # FP8 attention's quantize / dequantize passes around the fused kernel (precision.attention_cast_bytes)
        other += rates.memory_time(precision.attention_cast_bytes(workload, plan, phase, tokens) * layers_here)
    if rates.efficiency.op_overhead_s:  # every device launches all ops of its layers for every micro-batch
        stages = divide // (plan.tp * plan.cp) if region == "layers" else 1
        other += rates.efficiency.op_overhead_s * (mm.count + at.count + ot.count) / stages / steps
    if rates.efficiency.kernel_latency_s and (mm.count or at.count or ot.count):
        # every pass of every micro-batch runs each kernel of the device's layers once
        other += (rates.efficiency.kernel_latency_s * kernels_per_pass(phase, region)
                  * (layers_here if region == "layers" else 1))

    attention = 0.0
    at_flops, at_bytes = at.flops * share, at.bytes * share
    if at_flops or at_bytes:
        if options.attention == "math":
            attention = rates.matmul_time(at_flops, at_bytes)
        elif decode:
            # One query row against the cache: reading K and V dominates for every kernel.
            forward_fraction = (attention_fractions(rates.efficiency, options.attention)[0]
                                if options.attention in FUSED_ATTENTION else rates.efficiency.attention)
            attention = max(at_flops / (rates.sustained_flops * forward_fraction),
                            rates.decode_kv_time(_kv_read_bytes(profile, workload, plan, divide, steps, options)))
        elif options.attention in FUSED_ATTENTION:
            flops = at_flops * (CAUSAL_FLOP_SHARE if spec.causal else 1.0)
            forward_fraction, backward_fraction = attention_fractions(rates.efficiency, options.attention)
            sustained = rates.sustained_flops
            if precision.fp8_attention(workload) and rates.fp8_peak_flops:
                # FP8 attention (Transformer Engine fp8_dpa): the FP8 peak at the FP8 kernel's share of it
                sustained = rates.fp8_peak_flops * rates.efficiency.sustained * rates.clock_share
                forward_fraction, backward_fraction = precision.fp8_attention_fractions(forward_fraction,
                                                                                        backward_fraction)
            fraction = forward_fraction
            if backward:
                flops *= FLASH_BACKWARD_FLOP_RATIO
                fraction = backward_fraction
            attention = flops / (sustained * fraction)
        else:  # fused-softmax
            heads_local = spec.heads / plan.tp
            matrix = plan.micro_batch * heads_local * (spec.seq_len / plan.cp) * spec.seq_len * elem
            passes = SOFTMAX_PASSES_BACKWARD if backward else SOFTMAX_PASSES_FORWARD
            nbytes = passes * matrix
            if spec.dropout > 0 and phase in ("forward", "backward"):  # training mode only
                nbytes += ((DROPOUT_PASSES_BACKWARD if backward else DROPOUT_PASSES_FORWARD) * matrix
                           + DROPOUT_MASK_BYTES * matrix / elem)
            attention = (at_flops / (rates.sustained_flops * rates.efficiency.matmul)
                         + rates.memory_time(nbytes * layers_here))
    return PhaseTimes(matmul=matmul, attention=attention, other=other)


def _kv_read_bytes(profile: "WorkloadProfile", workload: "Workload", plan: Plan, divide: int, steps: int,
                   options: Options = Options()) -> float:
    """K and V bytes one decode step reads on one device, at the mean cache length of the generation (times
    decode_kv_reads for a kernel that reads them once per query head)."""
    spec = workload.model
    cache_len = spec.seq_len + workload.decode_tokens
    mean_len = spec.seq_len + workload.decode_tokens / 2
    kv = spec.kv_heads or spec.heads
    kv_split = spec.kv_split(plan.tp)   # 1 for multi-head latent attention: every rank reads the whole latent
    per_micro_batch = profile.kv_cache_bytes * plan.micro_batch / profile.batch * mean_len / cache_len
    window, n_win = spec.sliding_window, spec.windowed_layers_in(range(profile.layers))
    if window is not None and n_win:   # a windowed layer caches and reads min(length, W) tokens (costmodel.window)
        n_full = profile.layers - n_win
        per_micro_batch = (profile.kv_cache_bytes * plan.micro_batch / profile.batch
                           * (n_full * mean_len + n_win * min(mean_len, window))
                           / (n_full * cache_len + n_win * min(cache_len, window)))
    reads = decode_kv_reads(options.attention, spec.heads, kv, plan.tp,   # TensorRT-LLM's MMHA: per query head
                            spec.mla is not None)
    return per_micro_batch * reads / kv_split / (divide // (plan.tp * plan.cp) or 1)
