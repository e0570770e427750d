"""FP8 training and inference (`dtype: float8`): what a recipe costs beyond its GEMMs at the FP8 peak.

A float8 workload is bf16 mixed precision whose transformer-layer GEMMs (QKV, attention out, MLP up and
down) take FP8 operands: Transformer Engine's `fp8_autocast` over its Linear modules, torchao's Float8Linear.
Attention, norms, elementwise ops, the embedding and the LM head stay in bf16 (TE: FP8 attention is opt-in,
NVTE_FP8_DPA; torchtitan's float8 converter skips the output layer), as do the kept tensors
(plan.DTYPE_BYTES), the fp32 master weights and Adam state of mixed precision, and the gradients.

What the recipe adds, per GEMM operand (Micikevicius et al. 2022, "FP8 Formats for Deep Learning",
arXiv:2209.05433, Sec. 3-4: per-tensor scaling, E4M3 forward / E5M2 gradients; Transformer Engine docs,
"Using FP8 with Transformer Engine" and `transformer_engine/common/recipe`):

* a cast of each GEMM input (forward: the layer input X; backward: the output gradient dY) from bf16 to FP8:
  one pass that reads 2 bytes and writes 1 byte per copy (`copies`). Training writes two copies, row-wise for
  the GEMM of its own pass and column-wise (transposed) for the weight-gradient GEMM: TE's `cast_transpose`
  on Hopper, whose FP8 GEMMs take only the TN layout, and MXFP8's separate row and column scales
  everywhere (TE docs, "MXFP8": "both rowwise and columnwise quantized copies"). On a device whose FP8 GEMMs
  take any operand layout (`DeviceSpec.fp8_gemm_any_layout`: Blackwell, SM 10.x) the per-tensor recipes
  (delayed, current) write one: Transformer Engine makes the transposed copy only where the GPU cannot run
  non-TN FP8 GEMMs (transformer_engine/pytorch/csrc/quantizer.cpp, Float8Quantizer::create_tensor:
  `create_transpose = columnwise_usage && !nvte_is_non_tn_fp8_gemm_supported()`; the row-wise data serves the
  column-wise use, common/gemm/cublaslt_gemm.cpp). Inference writes one.
* `delayed`: the scale comes from an amax history (TE DelayedScaling, amax_history_len): the amax is
  reduced inside the cast kernel, no extra pass.
* `current`: the scale comes from the tensor itself (TE Float8CurrentScaling; torchao "tensorwise"): the
  amax is a reduction over the tensor before the cast can start, one more read of it.
* `mxfp8`: one E8M0 scale byte per block of 32 elements (OCP Microscaling Formats v1.0, Sec. 5.3, block
  size 32) per copy, computed inside the cast.
* the weights are cast once per optimizer step (TE caches the FP8 weights over the micro-batches of a step,
  `is_first_microbatch`), and training keeps those FP8 copies (1 byte per weight per copy, `copies` of them:
  one on Blackwell under the per-tensor recipes) beside the bf16 weights.
* `saved_activations: bfloat16` (torchao) keeps the bf16 input and casts it again in the backward;
  `float8` (TE) keeps the FP8 copy (costmodel.activations sizes the saved linear inputs at 1 byte).
* `param_all_gather` (torchao float8 FSDP2): ZeRO-3 all-gathers the GEMM weights in FP8, 1 byte each.
* `frozen_weights: float8` (LoRA): the frozen base's layer GEMM weights exist only as FP8 tensors, created in
  FP8 at model construction (Transformer Engine `fp8_model_init`: its modules' weights are Float8Tensors, no
  higher-precision copy; NeMo `fp8_params`; the MLPerf Llama 2 70B LoRA submissions build the model under
  `te.fp8_model_init()`, custom_llama.py). Memory: `copies` bytes per frozen GEMM weight instead of 2 + copies
  (the FP8 copies a training GEMM needs: row-wise, and on Hopper the transposed one for the data-gradient
  GEMM); no per-step weight cast (a frozen weight never changes). The adapters, norms, embedding and head stay
  bf16.
* Transformer Engine fuses the cast of a GEMM input into the kernel that produces it where it can (the norm of
  LayerNormLinear / LayerNormMLP, the MLP activation, the dgelu of the backward): `fused_inputs`,
  `fused_cast_bytes_per_element`.
* delayed scaling's amax all-reduce and history update once per pass of a micro-batch
  (`delayed_amax_buffer_bytes`, `amax_history_update_bytes`; priced by costmodel.work), and current scaling's
  per-tensor amax all-reduce over tp for the tensors sequence parallelism gathers in FP8 (`sp_amax_reductions`).

Inference keeps the weights in FP8 (vLLM/TensorRT-LLM FP8 checkpoints): the GEMMs read 1 byte per weight.

FP8 attention (`fp8.attention: float8`, or `fp4.attention: float8` beside FP4 GEMMs; training only): Transformer
Engine's FP8 dot-product attention (DotProductAttention under fp8_autocast with the recipe's fp8_dpa, NeMo's
fp8_dot_product_attention / the MLPerf configs' FP8_DPA=1, NVTE_FP8_DPA_BWD=1 by default) runs the core attention
as cuDNN's FP8 fused attention (FusedAttnBackend "FP8"), forward and backward. What it changes, read in
NVIDIA/TransformerEngine transformer_engine/pytorch/attention/dot_product_attention/backends.py, FusedAttnFunc
(the version with NVTE_DPA_FP8CS_O_in_F16):

* the attention core's matmul FLOPs (QK^T, PV and the backward's five) run at the FP8 peak, at the FP8 kernel's own
  share of it (`fp8_attention_fractions`, FP8_ATTENTION_SPEEDUP_RATIO below); softmax, masking and the rest of
  the kernel stay inside the fused kernel as in 16-bit (costmodel.compute).
* the casts around the kernel, priced as memory-bound passes (`attention_cast_bytes`): forward, Q, K and V are
  quantized before the kernel (`combine_and_quantize(qkv_layout, q, k, v, QKV_quantizer)` unless they arrive in
  FP8), and under delayed scaling the FP8 output is dequantized for the out projection (`out_.dequantize()`); under
  current scaling the kernel writes O in 16-bit and keeps it so (`NVTE_DPA_FP8CS_O_in_F16`, default "1"): no pass.
  Backward: the incoming dO is quantized (`ctx.dO_quantizer(d_out)`). Each pass reads 2 bytes and writes 1 per
  element (+ one more read for current scaling's amax); the dequantize reads 1 and writes 2.
* the saved activations (`ctx.save_for_backward`): q_fp8, k_fp8, v_fp8 at 1 byte instead of 16-bit, and O
  as out_fp8 (1 byte) under delayed scaling, in 16-bit under current scaling (costmodel.activations).
* the recipe of the attention's casts: the workload's fp8 recipe (delayed, current; mxfp8 priced as current, its
  amax pass); beside FP4 GEMMs Transformer Engine takes a separate FP8 recipe for attention (NVTE_DPA_FP8_RECIPE;
  the MLPerf v5.1 NVFP4 configs set Float8CurrentScaling, config_common_fp4.sh): current.

FP4 (`dtype: float4`, `fp4.recipe`): the same mechanism with block-scaled E2M1 operands (W4A4) in the same
layer GEMMs. Element sizes from the formats' definitions, the block scales included: NVFP4 = 4-bit E2M1 values
+ one E4M3 scale byte per 16 elements (+ one FP32 per-tensor scale, negligible) = 4.5 bits (NVIDIA,
"Introducing NVFP4 for Efficient and Accurate Low-Precision Inference", developer blog 2025; Transformer
Engine transformer_engine/common/recipe/__init__.py NVFP4BlockScaling, NVIDIA/TransformerEngine@d0067d0);
MXFP4 = E2M1 + one E8M0 scale per 32 = 4.25 bits (OCP Microscaling Formats v1.0, Sec. 5.3 / 6.3).
The embedding, the LM head, attention and the kept tensors stay 16-bit, as the released FP4 checkpoints
leave them (TensorRT Model Optimizer's NVFP4 export, hf_quant_config.json: quant_algo NVFP4, group_size 16,
exclude_modules [lm_head]; nvidia/DeepSeek-R1-FP4's model card: only the weights and activations of the linear
operators within transformer blocks are quantized; the KV cache follows serving.kv_cache_dtype).

* inference on a device with FP4 tensor cores (a catalog float4 peak: Blackwell): W4A4, the GEMMs at the
  float4 peak (costmodel.compute.device_rates), the weights read at the format's bits, each GEMM input
  quantized by one cast (bf16 read, 0.5 byte + its scales written; nvfp4 reads the input once more for the
  per-tensor amax its global scale needs, as `current`).
* inference elsewhere (Hopper, Ampere, CDNA3): weight-only, as vLLM runs an NVFP4/MXFP4 checkpoint there
  (the Marlin FP4 kernels, vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py: bf16
  activations, the FP4 weights dequantized inside the GEMM): the weights read at the format's bits, the GEMM
  at the 16-bit rate, no activation casts (`weight_only`; the run says so).
* training (nvfp4 only; TE has no MXFP4 recipe): Transformer Engine's NVFP4BlockScaling runs fprop, dgrad and
  wgrad in FP4 (recipe docstring; Abecassis et al., "Pretraining Large Language Models with NVFP4",
  arXiv:2509.25149, Sec. 4). Its scales run along one direction, so "when Transformer Engine needs both the
  tensor and its transpose ... both versions are computed from the high precision input": two copies of
  every operand, as mxfp8, on every device, weights included (2 x 4.5 bits beside the bf16 weight), and the
  saved GEMM inputs at 4.5 bits. The random Hadamard transform on the wgrad inputs (16x16, applied inside the
  cast kernel: 16 multiply-adds per element on a memory-bound pass) and stochastic rounding add no bytes and
  are not priced. Layers the paper keeps in BF16 (its first and last few blocks) are a knob of the training
  script (NeMo first_last_layers_bf16 / num_layers_at_{start,end}_in_bf16, default off, not set by the
  MLPerf v5.1 NVFP4 configs), so every layer runs FP4 here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmsim.costmodel.gemms import attention_input_gemms, linear_shapes
from llmsim.costmodel.plan import DTYPE_BYTES

if TYPE_CHECKING:
    from collections.abc import Iterable

    from llmsim.config import Workload
    from llmsim.costmodel.plan import Plan
    from llmsim.hardware import DeviceSpec

FP8_BYTES = 1                 # E4M3 / E5M2 (Micikevicius et al. 2022)
E2M1_BYTES = 0.5              # FP4 E2M1 value (OCP MX v1.0, Sec. 5.3.3; NVFP4 uses the same element)
NVFP4_BLOCK = 16              # elements per E4M3 scale (TE NVFP4BlockScaling docstring: "each group of 16")
MXFP4_BLOCK = 32              # elements per E8M0 scale (OCP MX v1.0, Sec. 5.3)
# Bytes per FP4 element, its block scale included: nvfp4 0.5 + 1/16 = 4.5 bits, mxfp4 0.5 + 1/32 = 4.25 bits
FP4_BYTES: dict[str, float] = {"nvfp4": E2M1_BYTES + 1 / NVFP4_BLOCK, "mxfp4": E2M1_BYTES + 1 / MXFP4_BLOCK}
HIGH_BYTES = 2                # the bf16 the casts read
MX_BLOCK = 32                 # elements per shared scale (OCP MX v1.0, Sec. 5.3)
MX_SCALE_BYTES = 1            # E8M0 scale
TRAINING_COPIES = 2           # row-wise + column-wise FP8 copy of each operand (see module docstring)
INFERENCE_COPIES = 1
# Recipes with one scale per tensor, whose row-wise FP8 data serves the column-wise (transposed) use where the
# FP8 GEMMs take any layout (TE quantizer.cpp: Float8Quantizer = delayed, Float8CurrentScalingQuantizer =
# current, both `create_transpose = columnwise_usage && !nvte_is_non_tn_fp8_gemm_supported()`). MXFP8's scales
# run along rows for one copy and along columns for the other, so it needs both on every device.
PER_TENSOR_RECIPES = frozenset({"delayed", "current"})
# Transformer Engine's fused casts (fused_inputs): which layer GEMMs' forward inputs come out of the kernel
# before them quantized (QKV: LayerNormLinear's norm; attention out: no; MLP up: LayerNormMLP's norm; MLP down:
# the activation), and the activations with a dbias+dact+quantize backward kernel (layernorm_mlp.py
# `_get_act_func_supported_list`: gelu, qgelu, relu, srelu, silu for delayed and mxfp8; llmsim's gelu).
FUSED_FORWARD_INPUTS = (True, False, True, True)
TE_FUSED_DACT = frozenset({"gelu"})
# Delayed scaling's per-pass amax bookkeeping (Transformer Engine): each FP8 module keeps an fp32 amax history
# of amax_history_len entries per FP8 tensor (transformer_engine/common/recipe DelayedScaling:
# amax_history_len = 1024, reduce_amax = True), 3 tensors per GEMM in the forward (input, weight, output) and
# 2 in the backward (grad output, grad input) (module/base.py: num_gemms * 3 if fwd else num_gemms * 2).
AMAX_BYTES = 4
AMAX_HISTORY_LEN = 1024
AMAX_TENSORS_PER_GEMM = {"forward": 3, "backward": 2}
GEMMS_PER_LAYER = 4           # QKV, attention out, MLP up, MLP down (gemms.linear_shapes)
# Current scaling with sequence parallelism: the inputs all-gathered in FP8 take one amax all-reduce over tp
# each, per layer: forward the column-parallel inputs (QKV, MLP up), backward the row-parallel grad outputs
# (attention out, MLP down) (linear.py / layernorm_linear.py / layernorm_mlp.py set_quantizer_amax_reduction_group).
SP_AMAX_REDUCTIONS_PER_LAYER = 2


def is_fp8(workload: "Workload") -> bool:
    return workload.dtype == "float8"


def is_fp4(workload: "Workload") -> bool:
    return workload.dtype == "float4"


def is_quantized(workload: "Workload") -> bool:
    """Whether the layer GEMMs take quantized operands (float8 or float4): the casts, copies and weight bytes
    of this module apply."""
    return workload.dtype in ("float8", "float4")


def recipe(workload: "Workload") -> str:
    """The workload's FP8 recipe or FP4 format (delayed, current, mxfp8, nvfp4, mxfp4)."""
    if is_fp4(workload):
        assert workload.fp4 is not None
        return workload.fp4.recipe
    assert workload.fp8 is not None
    return workload.fp8.recipe


def has_fp4_units(device: "DeviceSpec", fp4_recipe: str = "nvfp4") -> bool:
    """Whether `device`'s tensor cores run `fp4_recipe`'s block-scaled FP4 GEMMs: a catalog float4 peak, and for
    nvfp4 (E4M3 scales per 16) NVFP4 units (DeviceSpec.nvfp4: NVIDIA Blackwell). mxfp4 (E8M0 scales per 32, the
    OCP MX format) runs on any float4 peak (Blackwell; AMD CDNA4, MI355X)."""
    return bool(device.peak_flops.get("float4")) and (fp4_recipe != "nvfp4" or device.nvfp4)


def fp4_recipe_of(workload: "Workload") -> str:
    """The fp4 recipe of a float4 workload (nvfp4 when unset), for has_fp4_units."""
    return workload.fp4.recipe if workload.fp4 is not None else "nvfp4"


def weight_only(workload: "Workload", device: "DeviceSpec") -> bool:
    """A float4 prefill/decode/serving workload on a device without FP4 tensor cores: the FP4 weights are read
    at their bits and dequantized inside a 16-bit GEMM (vLLM's Marlin FP4 path; module docstring)."""
    return is_fp4(workload) and not has_fp4_units(device, fp4_recipe_of(workload))


def weight_only_note(workload: "Workload", device: "DeviceSpec") -> str | None:
    """The run note for a weight-only float4 workload (`weight_only`), else None."""
    if not weight_only(workload, device):
        return None
    assert workload.fp4 is not None
    units = ("no FP4 tensor cores (no float4 peak in the catalog)" if not device.peak_flops.get("float4") else
             "FP4 tensor cores for OCP MX scales only (MXFP4), not NVFP4's E4M3 scales per 16")
    return (f"device {device.name!r} has {units}: {workload.fp4.recipe} "
            f"is priced weight-only (weights stored and read at {8 * FP4_BYTES[workload.fp4.recipe]:g} bits, "
            f"GEMMs at the 16-bit rate, as vLLM's Marlin FP4 kernels run it)")


def device_problem(workload: "Workload", device: "DeviceSpec", serving: bool = False) -> str | None:
    """Why `device` cannot run this workload's FP8 GEMMs (None: it can, or the workload is not float8).

    FP8 needs FP8 tensor cores, i.e. a catalog float8 peak (H100 and later, CDNA3, TPU v6e and later; not A100,
    TPU v4/v5e). The `mxfp8` recipe also needs MX block-scaled tensor cores (`DeviceSpec.microscaling`:
    Blackwell, SM 10.0+; Transformer Engine docs, "MXFP8": "native hardware acceleration on Blackwell GPUs")."""
    if is_fp4(workload):  # `serving`: a serving scenario, whose iterations are inference whatever workload.mode
        if fp8_attention(workload) and not device.peak_flops.get("float8"):  # a float8 workload: below
            return (f"fp4.attention: float8 needs FP8 tensor cores; device {device.name!r} has no float8 peak "
                    f"FLOP/s in the catalog (allowed there: attention: bfloat16)")
        if workload.mode == "train" and not serving and not has_fp4_units(device, fp4_recipe_of(workload)):
            if device.peak_flops.get("float4"):  # FP4 units for MX scales only (CDNA4): not NVFP4's
                return (f"float4 training (recipe nvfp4) needs NVFP4 tensor cores (E4M3 scales per 16: NVIDIA "
                        f"Blackwell); device {device.name!r} takes OCP MX scales only (mxfp4, not a training recipe)")
            return (f"float4 training needs FP4 tensor cores (a float4 peak FLOP/s in the catalog); device "
                    f"{device.name!r} has none")
        return None          # inference without FP4 units: weight-only (weight_only)
    if not is_fp8(workload):
        return None
    if not device.peak_flops.get("float8"):
        return f"device {device.name!r} has no FP8 tensor cores (no float8 peak FLOP/s in the catalog)"
    assert workload.fp8 is not None
    if workload.fp8.recipe == "mxfp8" and not device.microscaling:
        return (f"fp8 recipe mxfp8 needs MX block-scaled tensor cores (Blackwell, SM 10.0+); device "
                f"{device.name!r} has none (its recipes: delayed, current)")
    return None


def capable_devices(workload: "Workload", devices: "Iterable[DeviceSpec]") -> list[str]:
    """The names of `devices` that can run this workload's FP8 (FP4) GEMMs (device_problem is None)."""
    if is_fp4(workload):
        return [d.name for d in devices if has_fp4_units(d, fp4_recipe_of(workload))]
    return [d.name for d in devices if d.peak_flops and device_problem(workload, d) is None]


def default_recipe(device: "DeviceSpec") -> str:
    """The FP8 recipe a framework picks on `device` when the user names none: MXFP8 where the tensor cores
    take MX operands, else delayed scaling (Transformer Engine 2.x, `get_default_fp8_recipe`,
    transformer_engine/pytorch/fp8.py: MXFP8BlockScaling when check_mxfp8_support(), else DelayedScaling)."""
    return "mxfp8" if device.microscaling else "delayed"


def any_layout(device: "DeviceSpec | None") -> bool:
    """Whether `device`'s FP8 GEMMs take any operand layout (DeviceSpec.fp8_gemm_any_layout); None: no."""
    return bool(device is not None and device.fp8_gemm_any_layout)


def copies(workload: "Workload", any_layout: bool) -> int:
    """FP8 copies a cast writes and training keeps of each GEMM operand (module docstring): inference 1;
    training 2 (row-wise + transposed), except 1 for the per-tensor recipes on a device whose FP8 GEMMs take
    any layout (`any_layout`, DeviceSpec.fp8_gemm_any_layout; TE quantizer.cpp `create_transpose`)."""
    if workload.mode != "train":
        return INFERENCE_COPIES
    if is_fp4(workload):   # NVFP4's scales run along rows or columns: both copies on every device
        return TRAINING_COPIES
    assert workload.fp8 is not None
    if any_layout and workload.fp8.recipe in PER_TENSOR_RECIPES:
        return 1
    return TRAINING_COPIES


def cast_bytes_per_element(workload: "Workload", any_layout: bool) -> float:
    """Bytes one cast of one bf16 element to FP8 moves: read 2, write 1 per copy (+ an MX scale byte per 32
    elements per copy), + one more read of the input for `current` scaling's amax pass. `any_layout`:
    DeviceSpec.fp8_gemm_any_layout of the device (`copies`). float4: FP4_BYTES per copy, and nvfp4's amax
    pass (its FP32 per-tensor scale comes from the tensor's amax, as `current`)."""
    out = copies(workload, any_layout) * quantized_element_bytes(workload)
    amax = HIGH_BYTES if amax_pass(workload) else 0.0
    return HIGH_BYTES + out + amax


def quantized_element_bytes(workload: "Workload") -> float:
    """Bytes one quantized copy of one element takes, its block scale included: FP8 1 (+ 1/32 for mxfp8),
    FP4 FP4_BYTES."""
    if is_fp4(workload):
        return FP4_BYTES[recipe(workload)]
    return FP8_BYTES + (MX_SCALE_BYTES / MX_BLOCK if recipe(workload) == "mxfp8" else 0.0)


def amax_pass(workload: "Workload") -> bool:
    """Whether a cast reads its input once more for a per-tensor amax first: `current` scaling and nvfp4 (its
    second-level FP32 per-tensor scale, TE NVFP4BlockScaling docstring)."""
    return recipe(workload) in ("current", "nvfp4")


def fused_cast_bytes_per_element(workload: "Workload", any_layout: bool) -> float:
    """Bytes a cast fused into the kernel that produces its input moves per element, beyond that kernel's own.

    delayed / mxfp8 (TE's FULLY_FUSED norm and activation kernels, normalization.cpp / activation.cpp): the
    producer writes the FP8 copies in place of its bf16 output, so no read of it and no more than the bytes it
    wrote (n copies of 1 byte, + MX scales, against 2): max(n + scales - 2, 0). current (FUSED_NORM_AMAX_FP8,
    FUSED_ACTIVATION_AMAX_FP8): the producer writes bf16 and its amax in one pass, then one quantize pass
    reads the bf16 once and writes the copies: the separate amax read is gone. nvfp4 as current (its amax
    first), mxfp4 as mxfp8. `any_layout`: as `copies`."""
    out = copies(workload, any_layout) * quantized_element_bytes(workload)
    if amax_pass(workload):
        return HIGH_BYTES + out
    return max(out - HIGH_BYTES, 0.0)


def fused_inputs(workload: "Workload", phase: str) -> tuple[bool, ...]:
    """Per layer GEMM (linear_shapes order: QKV, attention out, MLP up, MLP down), whether the cast of its
    input (forward: X; backward: dY) is fused into the kernel that produces it.

    Transformer Engine (`saved_activations: float8`): QKV's and MLP up's X leave the norm of LayerNormLinear /
    LayerNormMLP already quantized (layernorm_linear.py / layernorm_mlp.py, `apply_normalization` with the
    input quantizer, `with_quantized_norm`); MLP down's X leaves the activation quantized
    (`activation_func(fc1_out, fc2_input_quantizer)`); the attention output is cast apart (FP8 attention is
    opt-in). Backward: MLP up's dY leaves dbias+dact+quantize where TE has that kernel, the gelu family
    under delayed or mxfp8 scaling (`_act_func(...)[2]`; none for swiglu/geglu or current scaling); every
    other dY is cast apart (cast_transpose of the incoming gradient). Inference prices the same forward
    fusion (vLLM's compile passes fuse RMSNorm + quant and SiLU-and-mul + quant: vllm/compilation/fusion.py,
    activation_quant_fusion.py). torchao (`saved_activations: bfloat16`): every cast apart. float4 as
    Transformer Engine (no dact fusion for nvfp4, as current; mxfp4 is inference only)."""
    inputs = attention_input_gemms(workload.model)   # mla: its down- and up-projections, each as QKV
    if not saves_fp8_inputs(workload):
        return (False,) * (3 + inputs)
    if phase == "backward":
        dact = workload.model.activation in TE_FUSED_DACT and not amax_pass(workload)
        return (False,) * inputs + (False, dact, False)
    return FUSED_FORWARD_INPUTS[:1] * inputs + FUSED_FORWARD_INPUTS[1:]


def activation_cast_bytes(workload: "Workload", plan: "Plan", phase: str, tokens: int, any_layout: bool) -> float:
    """Bytes the casts of one layer's GEMM inputs move for `tokens` rows on one tensor-parallel rank.

    forward / prefill / decode: each GEMM's input X (tokens x in). backward: each output gradient dY
    (tokens x out), plus X again when the forward kept it in bf16 (`saved_activations: bfloat16`). A cast fused
    into the kernel that produces its input (`fused_inputs`) moves `fused_cast_bytes_per_element`, any other
    `cast_bytes_per_element`. `any_layout`: DeviceSpec.fp8_gemm_any_layout of the device (`copies`).
    """
    if not is_quantized(workload):
        return 0.0
    shapes = linear_shapes(workload, plan)
    apart, fused = cast_bytes_per_element(workload, any_layout), fused_cast_bytes_per_element(workload, any_layout)
    quantized = quantized_gemms(workload)   # a GEMM kept 16-bit (fp4.layers: mlp) casts nothing
    if phase == "backward":
        total = sum(n * (fused if f else apart) * q
                    for (_, n), f, q in zip(shapes, fused_inputs(workload, phase), quantized))
        if not saves_fp8_inputs(workload):
            total += sum(k * q for (k, _), q in zip(shapes, quantized)) * apart
    else:
        total = sum(k * (fused if f else apart) * q
                    for (k, _), f, q in zip(shapes, fused_inputs(workload, phase), quantized))
    return tokens * total


def delayed_amax_buffer_bytes(workload: "Workload", layers: int, phase: str) -> float:
    """Bytes of the amaxes one pass of `layers` layers reduces at once under delayed scaling (TE concatenates
    every module's amax into one buffer and all-reduces it with MAX when the autocast exits, forward, and
    once in the backward: quantization.py reduce_and_update_fp8_tensors); 0 for other recipes."""
    if not is_fp8(workload) or workload.fp8 is None or workload.fp8.recipe != "delayed":
        return 0.0
    return float(AMAX_BYTES * AMAX_TENSORS_PER_GEMM[phase] * GEMMS_PER_LAYER * layers)


def amax_history_update_bytes(workload: "Workload", layers: int, phase: str) -> float:
    """Bytes the fused amax-and-scale update after that reduction moves (TE
    fused_amax_and_scale_update_after_reduction: reads and rolls every tensor's history of AMAX_HISTORY_LEN
    fp32 entries: read + write)."""
    return 2 * AMAX_HISTORY_LEN * delayed_amax_buffer_bytes(workload, layers, phase)


def sp_amax_reductions(workload: "Workload", plan: "Plan") -> int:
    """One-amax all-reduces over tp per layer and pass: current scaling with sequence parallelism (tp > 1)."""
    if (not is_fp8(workload) or workload.fp8 is None or workload.fp8.recipe != "current"
            or not plan.sp or plan.tp <= 1):
        return 0
    return SP_AMAX_REDUCTIONS_PER_LAYER


def weight_cast_bytes(workload: "Workload", plan: "Plan", any_layout: bool) -> float:
    """Bytes casting one layer's GEMM weights to FP8 moves on one tensor-parallel rank (training: once per
    optimizer step; inference: never, the weights are stored in FP8); `any_layout` as `copies`. float4 alike
    (two FP4 copies)."""
    if not is_quantized(workload) or workload.mode != "train":
        return 0.0
    return sum(k * n for k, n in linear_shapes(workload, plan)) * cast_bytes_per_element(workload, any_layout)


def layer_gemm_params(workload: "Workload", plan: "Plan") -> float:
    """GEMM weights of one layer on one tensor-parallel rank (QKV, attention out, MLP up, MLP down)."""
    return float(sum(k * n for k, n in linear_shapes(workload, plan)))


def attention_kept_16bit(workload: "Workload") -> bool:
    """Whether a float4 workload keeps its attention projections out of FP4 (`fp4.layers: mlp`): nvidia/
    DeepSeek-R1-FP4 quantizes the MoE and dense FFN layers, and TensorRT-LLM runs its attention modules in bf16
    (docs/source/blogs/tech_blog/blog1_Pushing_Latency_Boundaries_Optimizing_DeepSeek-R1_Performance_on_NVIDIA_
    B200_GPUs.md, "Precision Strategy": 64x Attention Modules bf16, 3x Dense FFN Layers nvfp4, 58x MoE FFN
    Layers nvfp4; blog3_...: "The MoE layers inside this checkpoint have been quantized into FP4")."""
    return is_fp4(workload) and workload.fp4 is not None and workload.fp4.layers == "mlp"


def quantized_gemms(workload: "Workload") -> tuple[bool, ...]:
    """Per layer GEMM (linear_shapes order: the attention's input projections, attention out, MLP up, MLP down),
    whether it runs quantized: every one, but the attention's (inputs and out) under `fp4.layers: mlp`."""
    inputs = attention_input_gemms(workload.model)
    if attention_kept_16bit(workload):
        return (False,) * (inputs + 1) + (True, True)
    return (True,) * (inputs + 3)


def layer_gemm_split(workload: "Workload", plan: "Plan") -> tuple[float, float]:
    """(quantized, 16-bit) GEMM weights of one layer on one tensor-parallel rank: all quantized for a float8 or
    float4 workload, but the attention projections under `fp4.layers: mlp` (`quantized_gemms`)."""
    quantized = kept = 0.0
    for (k, n), q in zip(linear_shapes(workload, plan), quantized_gemms(workload)):
        if q:
            quantized += k * n
        else:
            kept += k * n
    return quantized, kept


def kept_16bit_share(workload: "Workload", plan: "Plan") -> float:
    """The share of one layer's GEMM FLOPs (2 per weight and token: Kaplan et al. 2020) that runs at the 16-bit
    rate under `fp4.layers: mlp`: the attention projections' weights over all; 0 otherwise."""
    if not attention_kept_16bit(workload):
        return 0.0
    quantized, kept = layer_gemm_split(workload, plan)
    return kept / (quantized + kept) if kept else 0.0


def layer_weight_elem(workload: "Workload") -> float:
    """Bytes per weight a layer GEMM reads: the FP8 copy (1) for float8, the FP4 one (FP4_BYTES: 4.5 bits
    nvfp4, 4.25 mxfp4) for float4, else the workload dtype's."""
    if is_fp4(workload):
        return FP4_BYTES[recipe(workload)]
    return FP8_BYTES if is_fp8(workload) else DTYPE_BYTES[workload.dtype]


def fp8_weight_copy_bytes(workload: "Workload", layer_gemm_params: float, any_layout: bool,
                          frozen: bool = False) -> float:
    """Memory of the FP8 weight copies training keeps beside the bf16 weights (`copies` bytes per GEMM
    weight: 2 on Hopper, 1 under the per-tensor recipes where `any_layout`, DeviceSpec.fp8_gemm_any_layout);
    inference stores the weights in FP8 instead: 1 - 2 = -1 byte per GEMM weight. `frozen`: the weights are
    a frozen base (LoRA); with `frozen_weights: float8` training keeps the FP8 copies instead of the bf16
    weight too: copies - 2 bytes per GEMM weight (-1 on Blackwell, 0 on Hopper), added to the 2 bytes the
    memory model counts per parameter. float4: FP4_BYTES per copy (two in training; inference stores them
    instead of bf16: FP4_BYTES - 2 per GEMM weight). Bytes."""
    if not is_quantized(workload):
        return 0.0
    if workload.mode == "train":
        held = layer_gemm_params * copies(workload, any_layout) * layer_weight_elem(workload)
        return held - layer_gemm_params * HIGH_BYTES if frozen and frozen_fp8(workload) else held
    return -layer_gemm_params * (HIGH_BYTES - layer_weight_elem(workload))


def frozen_fp8(workload: "Workload") -> bool:
    """Whether a frozen base's layer GEMM weights are kept in FP8 only (`frozen_weights: float8`)."""
    return is_fp8(workload) and workload.fp8 is not None and workload.fp8.frozen_weights == "float8"


def saves_fp8_inputs(workload: "Workload") -> bool:
    """Whether a training layer keeps its GEMM inputs quantized (Transformer Engine: FP8, or FP4 under
    NVFP4BlockScaling) rather than bf16."""
    if is_fp4(workload):
        return True
    return is_fp8(workload) and workload.fp8 is not None and workload.fp8.saved_activations == "float8"


def saved_input_bytes(workload: "Workload") -> float:
    """Bytes per element of a GEMM input a training layer keeps quantized (`saves_fp8_inputs`): 1 for FP8, the
    FP4 copy's FP4_BYTES for float4 (the column-wise copy the wgrad GEMM reads); 0 when it keeps bf16."""
    if not saves_fp8_inputs(workload):
        return 0.0
    return FP4_BYTES[recipe(workload)] if is_fp4(workload) else float(FP8_BYTES)


def gathered_layer_bytes(workload: "Workload", plan: "Plan", layer_params: float, elem: int) -> float:
    """Bytes of one layer's parameters a ZeRO-3 all-gather moves: `elem` each, except the GEMM weights at 1
    byte when the framework gathers them in FP8 (`param_all_gather`). `layer_params` is this rank's share."""
    fp8 = param_gather_elem(workload)
    if fp8 is None:
        return layer_params * elem
    gemm = min(layer_gemm_params(workload, plan), layer_params)
    return gemm * fp8 + (layer_params - gemm) * elem


def param_gather_elem(workload: "Workload") -> float | None:
    """Bytes per GEMM weight a ZeRO-3 all-gather moves when the framework gathers them in FP8, else None."""
    if is_fp8(workload) and workload.fp8 is not None and workload.fp8.param_all_gather:
        return FP8_BYTES
    return None


# FP8 attention's speed relative to the FP8 peak, as a ratio to the same kernel's 16-bit fraction of the 16-bit
# peak, measured on one device with one kernel and one shape: cuDNN's fused attention forward on H100 80GB SXM5,
# head dim 128, sequence 8k, no causal mask, 16k tokens per batch (FlashAttention-3 paper, Shah et al. 2024,
# arXiv:2407.08608, Sec. 4: its FP16/BF16 forward figure, cuDNN 600 TFLOP/s, and its FP8 forward figure, cuDNN
# 971 TFLOP/s; the panels without causal mask, whose 512-token bars are the higher ones of each pair, 497 and
# 617). FP8 fraction 971 / 1978.9 = 0.491 of the FP8 peak against 600 / 989.4 = 0.606 of the BF16 peak: ratio
# 0.809, FP8 attention 1.62x the 16-bit kernel's throughput. It scales the catalog's 16-bit fraction of whatever
# fused kernel a row names (compute.attention_fractions), forward and backward: no FP8 backward throughput is
# published (the paper has no FP8 backward; cuDNN publishes none), so the backward takes the forward's ratio, an
# estimate; so do devices other than the H100 (Blackwell: no published FP8 attention figure), marked estimates.
FP8_ATTENTION_FORWARD_H100 = 971 / 1978.9
BF16_ATTENTION_FORWARD_H100_NONCAUSAL = 600 / 989.4
FP8_ATTENTION_SPEEDUP_RATIO = FP8_ATTENTION_FORWARD_H100 / BF16_ATTENTION_FORWARD_H100_NONCAUSAL
# The attention recipe beside FP4 GEMMs (TE's separate DPA recipe; MLPerf v5.1 config_common_fp4.sh
# NVTE_DPA_FP8_RECIPE="Float8CurrentScaling").
FP4_ATTENTION_RECIPE = "current"


def fp8_attention(workload: "Workload") -> bool:
    """Whether the core attention runs in FP8 (`fp8.attention` / `fp4.attention: float8`; training only)."""
    spec = workload.fp8 if is_fp8(workload) else workload.fp4 if is_fp4(workload) else None
    return spec is not None and spec.attention == "float8"


def attention_recipe(workload: "Workload") -> str:
    """The FP8 recipe of the attention's casts: the workload's fp8 recipe, current beside FP4 GEMMs."""
    if is_fp4(workload):
        return FP4_ATTENTION_RECIPE
    assert workload.fp8 is not None
    return workload.fp8.recipe


def fp8_attention_fractions(forward: float, backward: float) -> tuple[float, float]:
    """(forward, backward) fractions of the FP8 peak FP8 attention reaches, from a fused kernel's 16-bit
    fractions of the 16-bit peak (FP8_ATTENTION_SPEEDUP_RATIO; the backward's an estimate)."""
    return forward * FP8_ATTENTION_SPEEDUP_RATIO, backward * FP8_ATTENTION_SPEEDUP_RATIO


def attention_output_fp8(workload: "Workload") -> bool:
    """Whether FP8 attention keeps its output O in FP8 (delayed scaling's out_fp8) rather than 16-bit (current
    scaling with NVTE_DPA_FP8CS_O_in_F16, its default)."""
    return fp8_attention(workload) and attention_recipe(workload) == "delayed"


def attention_cast_bytes(workload: "Workload", plan: "Plan", phase: str, tokens: int) -> float:
    """Bytes FP8 attention's casts move around the kernel for `tokens` rows of one layer on one tensor-parallel
    rank (module docstring): forward, Q, K, V quantized (+ the FP8 O dequantized under delayed scaling);
    backward, dO quantized. 0 without FP8 attention."""
    if not fp8_attention(workload) or phase not in ("forward", "backward"):
        return 0.0
    spec = workload.model
    d = spec.head_width
    vd = spec.mla.v_head_dim if spec.mla is not None else d
    q = spec.heads * d / plan.tp
    kv = (spec.kv_heads or spec.heads) * (d + vd) / spec.kv_split(plan.tp) if spec.mla is None else \
        spec.heads * (d + vd) / plan.tp
    o = spec.heads * vd / plan.tp
    quantize = HIGH_BYTES + FP8_BYTES + (HIGH_BYTES if attention_recipe(workload) != "delayed" else 0.0)
    if phase == "backward":
        return tokens * o * quantize
    out = o * (FP8_BYTES + HIGH_BYTES) if attention_output_fp8(workload) else 0.0
    return tokens * ((q + kv) * quantize + out)


def fp8_attention_saved_bytes(workload: "Workload") -> tuple[float, float] | None:
    """(bytes per element of the q, k, v a fused FP8 attention keeps; of its output O): FP8 for q, k, v, and O in
    FP8 under delayed scaling or 16-bit (module docstring); None without FP8 attention."""
    if not fp8_attention(workload):
        return None
    return float(FP8_BYTES), float(FP8_BYTES if attention_output_fp8(workload) else HIGH_BYTES)
