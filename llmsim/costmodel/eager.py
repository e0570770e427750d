"""The host time to launch a forward pass eagerly from Python, and the time of a pass that is launched so.

An engine that does not replay a pass from a captured CUDA graph launches every kernel of it from Python:
vLLM V0 runs only decode through its graphs (vllm/worker/model_runner.py, `ModelRunner.execute_model`: the
graph runner only when `prefill_meta is None`), so every pass that holds a prompt is eager; the sarathi-serve
code base (microsoft/sarathi-serve@02d2567e) captures no graph at all. Each launch costs the host the Python
module code around it, the dispatcher and the driver's launch call. The host runs ahead of the GPU (launches are
asynchronous), so the GPU waits only where the host launches more slowly than the GPU runs: an eager pass takes
max(device time, host launch time) (`eager_pass_seconds`), a graph replay its device time.

The host time is counted per launched kernel (`eager_launch_seconds`): the device entry's `eager_launch_s` (host
seconds per kernel, its source in the catalog) times the kernels the pass launches on one rank's host
(`pass_launches`): every layer's fused kernels (compute.KERNELS_PER_LAYER_FORWARD, and an engine policy's own
beyond them: Mix.layer_kernels), the KV-cache write the attention backends launch apart from the attention kernel
(KV_WRITE_KERNELS), one kernel per tensor-parallel collective (vLLM's custom all-reduce), the embedding and the
LM head. This is the count the GPU-side fixed time per kernel (Efficiency.kernel_latency_s) is priced over, plus
the cache write and the collectives; the two constants are not the same time: kernel_latency_s is what a kernel
takes on the GPU beyond its bytes (it holds with CUDA graphs too), eager_launch_s what its launch takes on the
host, and only the larger of the two sums bounds an eager pass.

Pure and torch-free.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING

from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD
from llmsim.costmodel.iteration import inference_microbatches
from llmsim.costmodel.work import tp_collectives_per_layer

if TYPE_CHECKING:
    from llmsim.config import ModelSpec
    from llmsim.costmodel.iteration import IterationModel, Mix

# vLLM's attention backends write the new tokens' K and V into the paged cache with a kernel of their own before
# the attention kernel (vllm/attention/backends/flash_attn.py: `reshape_and_cache_flash`, then
# `flash_attn_varlen_func`; csrc/cache_kernels.cu), which KERNELS_PER_LAYER_FORWARD's 9 leave out (their GPU
# time is priced as the attention's bytes).
KV_WRITE_KERNELS = 1

# Whose model code launches a pass's kernels (serving.scheduler.engine_kernels): "fused" = the fused engine's count
# above (vLLM's model code; KERNELS_PER_LAYER_FORWARD); "sglang" = SGLang's model code on CUDA, "sglang-rocm" the same
# on ROCm, which launch more kernels for some models in a pass that extends prompts (`engine_layer_kernels`).
ENGINE_KERNELS = ("fused", "sglang", "sglang-rocm")

# vLLM's all-reduce + RMSNorm fusion (serving.scheduler.fuse_allreduce_rms; PassConfig.fuse_allreduce_rms, the
# AllReduceFusionPass of vllm/compilation/passes/fusion/allreduce_rms_fusion.py, a default at -O2 from vLLM 0.16 on
# Hopper and Blackwell at tp > 1: vLLM PR #34299, `enable_allreduce_rms_fusion` in vllm/config/vllm.py) replaces
# each tensor-parallel all-reduce and the fused residual-add + RMSNorm after it with one FlashInfer kernel
# (trtllm_allreduce_fusion, the kARResidualRMSNorm pattern): one kernel fewer per all-reduce site. It applies to a
# pass whose all-reduce input (tokens x hidden x the residual stream's element bytes) is at most the device's
# limit for the tp size (the catalog's allreduce_rms_fusion_max_bytes, vLLM's FI_ALLREDUCE_FUSION_MAX_SIZE_MB: the
# pass compiles a fused graph for the token range up to it), only for a bf16 or fp16 residual stream
# (_FI_SUPPORTED_DTYPES), and vLLM turns it off with data parallelism or pipeline parallelism at tp > 1 (issues
# #34458 and #35426, `enable_allreduce_rms_fusion`'s data_parallel_size == 1 and pipeline_parallel_size == 1).
# The fused kernel's own time is priced as the all-reduce it replaces (no separate measurement of it: the norm's
# bytes are a few KB a token).
FUSED_ALLREDUCE_RMS_ELEMENT_BYTES = 2   # a 16-bit residual stream (an FP8 or FP4 checkpoint computes it in bf16)

# SGLang's DeepSeek-V3 extend ("prefill") pass, counted in its source, one host launch per Python-level op that
# starts GPU work (a C++ op launching several kernels counts once; allocations, views and splits none). Path:
# python/sglang/srt/models/deepseek_v2.py, an MLA model with q_lora (DeepSeek-V3/R1 and V3.1: 61 layers, the
# first 3 dense) and FP8 block-scaled weights, tensor parallel, no DP attention, its prompt without a cached
# prefix (AttnForwardMethod.MHA_CHUNKED_KV on CUDA with trtllm_mla, .MHA on ROCm with aiter: both go through
# `forward_normal_prepare` / `forward_normal_core`).
#
# CUDA, sglang 0.5.6.post1 (PyPI wheel sglang-0.5.6.post1-py3-none-any.whl; B200 defaults for
# DeepseekV3ForCausalLM: attention trtllm_mla, MoE runner flashinfer_trtllm, which sets
# disable_shared_experts_fusion, and enable_flashinfer_allreduce_fusion at one node: server_args.py), per layer:
#   before attention: the previous layer's all-reduce fused with the residual add and RMSNorm (flashinfer
#     trtllm_allreduce_fusion, layers/communicator.py `prepare_attn` / `forward_with_allreduce_fusion`) 1;
#   fused_qkv_a_proj_with_mqa 2 (every FP8 block linear is 2: sglang_per_token_group_quant_fp8 and the GEMM,
#     layers/quantization/fp8_utils.py, any of its GEMM backends); q_a_layernorm 1; q_b_proj 2; kv_a_layernorm 1;
#     kv_b_proj 2 x 2 (0.5.6.post1's `forward_normal_prepare` calls it twice, once inside the non-gfx95 branch
#     and once after; 0.5.7 calls it once); the rotary embedding 1 (sgl-kernel apply_rope_with_cos_sin_cache_
#     inplace, layers/rotary_embedding.py `forward_cuda`); `q[..., nope:] = q_pe` 1; set_mla_kv_buffer 1;
#     concat_and_cast_mha_k_triton 1 (16 heads a rank, not the 128-head concat_mla_k); flashinfer
#     trtllm_ragged_attention_deepseek 1 (layers/attention/trtllm_mla_backend.py `forward_extend`); o_proj 2;
#   before the MLP: the o_proj all-reduce fused with the add and RMSNorm 1: 19 for the attention side;
#   MoE layer: shared experts (not fused into the routed ones under flashinfer_trtllm) gate_up 2, silu_and_mul 1,
#     down 2; the router gate F.linear 1; the routed experts (quantization/fp8.py `apply_with_router_logits`):
#     per_token_group_quant_fp8 1, the scales' transpose `.t().contiguous()` 1, the correction bias cast 1, the
#     logits cast to float32 1, flashinfer trtllm_fp8_block_scale_moe 1 (routing, permute, both GEMMs and the
#     finalize in one call); the shared output added 1: 12, so 31 a MoE layer; its all-reduce is fused into the
#     next layer's norm (DeepseekV2MoE.forward_normal with should_allreduce_fusion);
#   dense layer: gate_up 2, silu_and_mul 1, down 2: 5, so 24.
#   Above FUSE_ALLREDUCE_MAX_BATCH_SIZE = 2048 tokens in the pass (layers/communicator.py) the flashinfer fusion
#   is off at both sites: the all-reduce and fused_add_rmsnorm launch apart, one more kernel at each (+2).
SGLANG_DSV3_CUDA_ATTENTION_KERNELS = 19
SGLANG_DSV3_CUDA_MOE_KERNELS = 12
SGLANG_DSV3_CUDA_DENSE_MLP_KERNELS = 5
SGLANG_FUSED_ALLREDUCE_MAX_TOKENS = 2048      # layers/communicator.py FUSE_ALLREDUCE_MAX_BATCH_SIZE (0.5.6.post1)
SGLANG_UNFUSED_ALLREDUCE_EXTRA_KERNELS = 2    # the two all-reduce + norm sites, each one kernel more unfused
#
# CUDA, the same release and B200 path, an NVFP4 checkpoint of ModelOpt (--quantization modelopt_fp4, dtype float4
# with fp4 recipe nvfp4: nvidia/DeepSeek-R1-0528-FP4-v2 and its kin), per layer, what differs from the FP8 count:
#   a linear ModelOpt excludes (the checkpoint's hf_quant_config.json exclude_modules; quantization/modelopt_quant.py
#     `ModelOptFp4Config.is_layer_excluded` also matches the fused fused_qkv_a_proj_with_mqa to an excluded q_a_proj
#     or kv_a_proj_with_mqa) runs UnquantizedLinearMethod, F.linear: 1 (quantization/unquant.py `apply`; the
#     bf16 dsv3_fused_a_gemm only at <= 16 tokens, deepseek_v2.py `prepare_qkv_latent`); SGLANG_NVFP4_CKPT_FP8_
#     GEMM_IN_ATTN, which would put q_b_proj on FP8 blocks, is off by default (srt/environ.py);
#   an NVFP4 linear is 2 (`ModelOptFp4LinearMethod.apply`: fp4_quantize of the input, then the FP4 GEMM; the
#     weight's `.T` a view), as an FP8 block linear: so with every attention projection quantized (fp4.layers
#     all) the attention side is the FP8 count's 19; with them kept 16-bit (fp4.layers mlp: nvidia/DeepSeek-R1-
#     FP4's recipe, the attention modules bf16) fused_qkv_a, q_b_proj, kv_b_proj twice and o_proj lose their
#     quantization launch each: 19 - 5 = 14;
#   MoE layer (FlashInferFP4MoE, the class layers/moe/ep_moe/layer.py `get_moe_impl_class` picks for
#     modelopt_fp4 under flashinfer_trtllm; layers/moe/fused_moe_triton/layer.py `FlashInferFP4MoE.forward`):
#     shared experts (unfused: server_args.py sets disable_shared_experts_fusion for flashinfer_trtllm) in NVFP4
#     gate_up 2, silu_and_mul 1, down 2; the router gate F.linear 1 (deepseek_v2.py `MoEGate.forward` above 16
#     tokens); the routed experts: fp4_quantize of the hidden states 1, the logits cast to float32 1 (routing
#     DeepSeekV3), the correction bias cast to bfloat16 none (MoEGate creates it bfloat16 for modelopt_fp4 under
#     flashinfer_trtllm, so `.to` returns it), flashinfer trtllm_fp4_block_scale_moe 1 (routing, both GEMMs
#     and the finalize); the shared output added 1: 10;
#   dense layer: gate_up 2, silu_and_mul 1, down 2 in NVFP4 (the dense FFN layers quantized): 5, as FP8.
SGLANG_DSV3_CUDA_FP4_16BIT_ATTENTION_KERNELS = 14
SGLANG_DSV3_CUDA_FP4_MOE_KERNELS = 10
#   With an FP8 KV cache (serving.kv_cache_dtype float8, --kv-cache-dtype fp8_e4m3), either checkpoint:
#   mem_cache/memory_pool.py `MLATokenToKVPool.set_mla_kv_buffer` casts the latent and the rope key to the cache's
#   dtype (`.to(self.dtype)`, one launch each) before set_mla_kv_buffer_triton: 2 more; the extend's ragged
#   attention reads its bf16 q, k, v (layers/attention/trtllm_mla_backend.py `forward_extend`, no prefix).
SGLANG_FP8_KV_WRITE_CASTS = 2
#
# ROCm, sglang 0.5.7 (PyPI wheel sglang-0.5.7-py3-none-any.whl; MI300X = gfx942, not gfx95; SGLANG_USE_AITER as
# in SGLang's ROCm images: attention aiter, aiter block-FP8 linears and fused MoE; no flashinfer fusion; shared
# experts fused into the routed ones, DeepseekV2ForCausalLM.determine_num_fused_shared_experts), per layer:
#   before attention fused_add_rmsnorm 1; fused_qkv_a 2 (aiter_per1x128_quant and gemm_a8w8_blockscale,
#     fp8_utils.py `aiter_w8a8_block_fp8_linear`); q_a_layernorm 1; q_b_proj 2; kv_a_layernorm 1; the rotary
#     embedding in PyTorch ops 13 (DeepseekScalingRotaryEmbedding re-dispatches to `forward_native` on HIP:
#     the cos/sin gather 1, two repeat_interleave 2, and for each of q and k the GPT-J rotation's negation and
#     stack and the multiply, multiply, add: 5 + 5); `q[..., nope:] = q_pe` 1; the latent written into
#     latent_cache in two slices and set_kv_buffer 3 (`_set_mla_kv_buffer`, neither CUDA nor gfx95); kv_b_proj 2;
#     concat_and_cast_mha_k_triton 1; aiter flash_attn_varlen_func 1 (layers/attention/aiter_backend.py
#     `forward_extend`, no prefix); o_proj 2; before the MLP the all-reduce 1 and fused_add_rmsnorm 1: 32;
#   MoE layer: the gate F.linear 1, aiter_biased_grouped_topk 1 (layers/moe/topk.py), fused_append_shared_experts
#     1, aiter fused_moe 1 (quantization/fp8.py `maybe_apply_hip_fused_experts`), the all-reduce 1: 5, so 37;
#   dense layer: gate_up 2, the activation 1, down 2 and its all-reduce 1: 6, so 38.
SGLANG_DSV3_ROCM_ATTENTION_KERNELS = 32
SGLANG_DSV3_ROCM_MOE_KERNELS = 5
SGLANG_DSV3_ROCM_DENSE_MLP_KERNELS = 6

# Where a serving engine runs its passes eagerly (serving.scheduler.eager): "none" = every pass replays a captured
# graph; "prompt" = the passes that hold a prompt (chunk) run eagerly, pure-decode passes replay graphs (vLLM V0);
# "all" = every pass is eager (no CUDA graphs: the sarathi-serve code base, vLLM's --enforce-eager).
EAGER_PASSES = ("none", "prompt", "all")


def layer_launches(layer_kernels: float, tp: int, tp_collectives: int) -> float:
    """Kernels one layer launches on one rank's host in one pass: the fused layer's (KERNELS_PER_LAYER_FORWARD),
    an engine's own beyond them (`layer_kernels`, Mix.layer_kernels), the KV-cache write (KV_WRITE_KERNELS) and,
    at tp > 1, one per tensor-parallel collective (`tp_collectives`, work.tp_collectives_per_layer)."""
    return KERNELS_PER_LAYER_FORWARD + layer_kernels + KV_WRITE_KERNELS + (tp_collectives if tp > 1 else 0)


def pass_launches(model: "IterationModel", mix: "Mix") -> float:
    """Kernels the busiest pipeline stage's host launches for one pass of `mix`: its layers' (`layer_launches`, with
    a served LoRA's Punica kernels: TokenCosts.adapter_layer_kernels),
    plus the embedding (KERNELS_EMBED, and its all-reduce at tp > 1) on the first stage and the LM head
    (KERNELS_HEAD, and an engine's own sampler kernels, Mix.pass_kernels) on the last, once per micro-batch
    (costmodel.iteration.inference_microbatches). Each rank's host launches its own kernels, in parallel with the
    other ranks' (one worker process per GPU), so the count is per rank, not per replica."""
    plan = model.plan
    per_layer = layer_launches(mix.layer_kernels + model.costs.adapter_layer_kernels, plan.tp,
                               tp_collectives_per_layer(model.workload.model))
    stages = model.stage_layers
    busiest = 0.0
    for i, layers in enumerate(stages):
        kernels = layers * per_layer
        if i == 0:
            kernels += KERNELS_EMBED + (1 if plan.tp > 1 else 0)
        if i == len(stages) - 1:
            kernels += KERNELS_HEAD + mix.pass_kernels
        busiest = max(busiest, kernels)
    return busiest * inference_microbatches(plan, max(1, round(mix.rows)))


def sglang_dsv3_layer_launches(spec: "ModelSpec", rocm: bool, tp: int, pass_tokens: int, dtype: str = "float8",
                               fp4_layers: str = "all", kv_cache_dtype: str = "auto") -> float:
    """Kernels one layer of a DeepSeek-V3-shaped model (MLA with a query latent, MoE) launches on one rank's host in
    an extend pass of SGLang's model code, averaged over the layers (the first `first_dense_layers` dense, the rest
    MoE): the counts of the constants above, read in SGLang 0.5.6.post1 (CUDA) and 0.5.7 (ROCm). `pass_tokens`: the
    tokens of the pass (SGLang fuses each all-reduce with its RMSNorm on CUDA up to 2,048 of them); at tp 1 the
    two all-reduces of the ROCm path are not launched (the CUDA path's fused kernels are then the norms alone).
    `dtype` float8 (FP8 block weights) or, on CUDA, float4 (ModelOpt's NVFP4 checkpoint; `fp4_layers` mlp: its
    attention projections 16-bit); `kv_cache_dtype` float8 adds the CUDA cache write's two casts."""
    assert spec.moe is not None
    layers = spec.layers
    dense = min(spec.moe.first_dense_layers, layers)
    if rocm:
        attention = SGLANG_DSV3_ROCM_ATTENTION_KERNELS - (1 if tp <= 1 else 0)
        moe = SGLANG_DSV3_ROCM_MOE_KERNELS - (1 if tp <= 1 else 0)
        mlp = SGLANG_DSV3_ROCM_DENSE_MLP_KERNELS - (1 if tp <= 1 else 0)
    else:
        unfused = tp > 1 and pass_tokens > SGLANG_FUSED_ALLREDUCE_MAX_TOKENS
        attention = SGLANG_DSV3_CUDA_ATTENTION_KERNELS
        moe, mlp = SGLANG_DSV3_CUDA_MOE_KERNELS, SGLANG_DSV3_CUDA_DENSE_MLP_KERNELS
        if dtype == "float4":
            moe = SGLANG_DSV3_CUDA_FP4_MOE_KERNELS
            if fp4_layers == "mlp":
                attention = SGLANG_DSV3_CUDA_FP4_16BIT_ATTENTION_KERNELS
        attention += SGLANG_UNFUSED_ALLREDUCE_EXTRA_KERNELS if unfused else 0
        attention += SGLANG_FP8_KV_WRITE_CASTS if kv_cache_dtype == "float8" else 0
    return attention + (dense * mlp + (layers - dense) * moe) / layers


def sglang_counted(spec: "ModelSpec", dtype: str, rocm: bool = False, fp4_recipe: str = "nvfp4") -> bool:
    """Whether SGLang's kernel counts (`sglang_dsv3_layer_launches`) were counted for this model: a DeepSeek-V3-
    shaped model (MLA with a query latent, MoE) with FP8 block weights, or on CUDA an NVFP4 checkpoint (ModelOpt's,
    --quantization modelopt_fp4; not the ROCm path, not mxfp4)."""
    shaped = spec.mla is not None and spec.mla.q_lora_rank is not None and spec.moe is not None
    return shaped and (dtype == "float8" or (dtype == "float4" and not rocm and fp4_recipe == "nvfp4"))


def engine_layer_kernels(engine_kernels: str, spec: "ModelSpec", dtype: str, tp: int, prefill_tokens: int,
                         pass_tokens: int, fp4_recipe: str = "nvfp4", fp4_layers: str = "all",
                         kv_cache_dtype: str = "auto") -> float:
    """Kernels each layer of a pass launches beyond the fused engine's (`layer_launches` with no engine kernels:
    KERNELS_PER_LAYER_FORWARD, the KV write, the tensor-parallel collectives), in the model code `engine_kernels`
    names (ENGINE_KERNELS), for a pass computing `prefill_tokens` prompt tokens of `pass_tokens` in all.
    "sglang" / "sglang-rocm": a pass that extends prompts of a DeepSeek-V3-shaped model (MLA with a query latent,
    MoE) with FP8 block weights or (CUDA) an NVFP4 checkpoint (`sglang_counted`, `sglang_dsv3_layer_launches`, with
    the workload's `fp4_recipe` and `fp4_layers` and the cache's `kv_cache_dtype`); 0 for a decode pass (SGLang
    replays a CUDA graph of another path, the absorbed MLA, not counted here) and for other models (a dense Llama
    layer in SGLang launches the fused count: not re-counted). "fused": 0."""
    if engine_kernels not in ("sglang", "sglang-rocm") or prefill_tokens <= 0:
        return 0.0
    rocm = engine_kernels == "sglang-rocm"
    if not sglang_counted(spec, dtype, rocm, fp4_recipe):
        return 0.0
    fused = layer_launches(0.0, tp, tp_collectives_per_layer(spec))
    return max(0.0, sglang_dsv3_layer_launches(spec, rocm, tp, pass_tokens, dtype, fp4_layers, kv_cache_dtype)
               - fused)


def allreduce_rms_fusion_max_tokens(device: object, tp: int, hidden: int) -> int:
    """The most tokens a pass may hold for vLLM's all-reduce + RMSNorm fusion to apply on `device` at tensor
    parallelism `tp` on a model of hidden size `hidden`: the device entry's allreduce_rms_fusion_max_bytes for `tp`
    (vLLM's FI_ALLREDUCE_FUSION_MAX_SIZE_MB; 0 where it has none: not Hopper or Blackwell, or a tp FlashInfer does
    not take) over a token's hidden_size x 2 B (`_max_token_num` in vLLM's allreduce_rms_fusion.py)."""
    limits = getattr(device, "allreduce_rms_fusion_max_bytes", None) or {}
    max_bytes = limits.get(tp, 0)
    return int(max_bytes // (hidden * FUSED_ALLREDUCE_RMS_ELEMENT_BYTES)) if max_bytes else 0


def allreduce_rms_fusion_problem(tp: int, pp: int, attention_dp: int, dtype: str, device: object) -> str | None:
    """Why vLLM's all-reduce + RMSNorm fusion runs in no pass of a replica of `tp` x `pp` devices (`attention_dp`
    attention data-parallel ranks) for a `dtype` workload on `device`, or None where it runs in the passes within
    the device's limit (`allreduce_rms_fusion_max_tokens`): tp 1 (no all-reduce), a pipeline or attention data
    parallelism (vLLM turns it off), an fp32 residual stream (FlashInfer's kernel takes bf16 and fp16), or a
    device without a limit for the tp size. The one rule `fused_allreduce_rms_sites` prices and `llmsim validate`
    notes (runner.allreduce_rms_fusion_notes)."""
    limits = getattr(device, "allreduce_rms_fusion_max_bytes", None) or {}
    if tp <= 1:
        return "tp 1 has no all-reduce to fuse"
    if pp > 1:
        return f"vLLM does not fuse with pipeline parallelism (pp {pp})"
    if attention_dp > 1:
        return f"vLLM does not fuse with data parallelism (attention_dp {attention_dp})"
    if dtype == "float32":
        return "an fp32 residual stream is not one FlashInfer's fused kernel takes (bf16 or fp16)"
    if tp not in limits:
        sizes = ", ".join(str(t) for t in sorted(limits))
        name = getattr(device, "name", "the device")
        return (f"{name} has no fusion limit for tp {tp} (allreduce_rms_fusion_max_bytes: "
                + (f"tp {sizes} only)" if sizes else "none; vLLM runs it on Hopper and Blackwell only)"))
    return None


def fused_allreduce_rms_sites(model: "IterationModel", pass_tokens: float) -> int:
    """All-reduce sites per layer that vLLM's all-reduce + RMSNorm fusion folds into one kernel with the norm after
    them in a pass of `pass_tokens` tokens, each one kernel fewer (the comment above
    FUSED_ALLREDUCE_RMS_ELEMENT_BYTES): every tensor-parallel all-reduce of the layer
    (work.tp_collectives_per_layer) where tp > 1, pp = 1, no attention data parallelism (plan.attention_dp 1:
    vLLM's data_parallel_size 1), a 16-bit residual stream (the workload's dtype, or bf16 for an 8- or 4-bit
    checkpoint) and the pass at most `allreduce_rms_fusion_max_tokens` tokens; else 0."""
    plan, workload = model.plan, model.workload
    if allreduce_rms_fusion_problem(plan.tp, plan.pp, plan.attention_dp, workload.dtype,
                                    model.cluster.device) is not None:
        return 0
    limit = allreduce_rms_fusion_max_tokens(model.cluster.device, plan.tp, workload.model.hidden)
    if pass_tokens <= 0 or pass_tokens > limit:
        return 0
    return tp_collectives_per_layer(workload.model)


def with_engine_kernels(model: "IterationModel", mix: "Mix", engine_kernels: str,
                        fuse_allreduce_rms: bool = False) -> "Mix":
    """`mix` with the kernels the engine's model code launches beyond the fused count added to its layer_kernels
    (`engine_layer_kernels`), and, where the engine fuses each all-reduce with the RMSNorm after it
    (`fuse_allreduce_rms`: serving.scheduler.fuse_allreduce_rms, vLLM's pass; `fused_allreduce_rms_sites` decides
    per pass), one kernel fewer per fused site: priced on the GPU at the device's fixed time per kernel
    (iteration_times) and, in an eager pass, at the host's launch time (`pass_launches`). Unchanged for "fused"
    without the fusion."""
    workload = model.workload
    fp4 = workload.fp4
    pass_tokens = mix.prefill_tokens + mix.decode_seqs + mix.verify_tokens
    extra = engine_layer_kernels(engine_kernels, workload.model, workload.dtype, model.plan.tp,
                                 int(mix.prefill_tokens), int(round(mix.prefill_tokens + mix.decode_seqs)),
                                 fp4.recipe if fp4 is not None else "nvfp4", fp4.layers if fp4 is not None else "all",
                                 model.costs.kv_cache_dtype)
    if fuse_allreduce_rms:
        extra -= fused_allreduce_rms_sites(model, pass_tokens)
    return replace(mix, layer_kernels=mix.layer_kernels + extra) if extra != 0 else mix


def engine_iteration(model: "IterationModel", mix: "Mix | tuple[Mix, ...]", engine_kernels: str,
                     fuse_allreduce_rms: bool = False) -> "tuple[Mix, tuple[Mix, ...]]":
    """One serving iteration as the engine launches it: `mix` is one replica's Mix, or (attention data parallelism)
    the ranks' mixes of one lockstep iteration; each pass gets its engine's kernels (`with_engine_kernels`, with
    vLLM's all-reduce + RMSNorm fusion where `fuse_allreduce_rms` and it applies). Returns the iteration's whole mix
    (the ranks' summed) and the ranks' own (empty without attention DP), the two arguments iteration_times takes."""
    if isinstance(mix, tuple):
        ranks = tuple(with_engine_kernels(model, r, engine_kernels, fuse_allreduce_rms) for r in mix)
        return functools.reduce(lambda a, b: a + b, ranks), ranks
    return with_engine_kernels(model, mix, engine_kernels, fuse_allreduce_rms), ()


def eager_launch_seconds(kernels: float, per_kernel_s: float) -> float:
    """Host seconds to launch `kernels` kernels eagerly at `per_kernel_s` host seconds each (the device entry's
    eager_launch_s)."""
    return kernels * per_kernel_s


def eager_pass_seconds(device_s: float, host_s: float) -> float:
    """Seconds of an eagerly launched pass whose kernels take `device_s` on the GPU and `host_s` to launch: the
    host runs ahead asynchronously, so the GPU waits only when the host is slower (max of the two)."""
    return max(device_s, host_s)


def past_graph_capture(mix: "Mix", graph_max_batch: int | None) -> bool:
    """Whether `mix` is a pure-decode pass of more sequences than the engine captured a CUDA graph for
    (serving.scheduler.graph_max_batch; None = no limit), which the engine then runs without a graph, from Python:
    vLLM V0 only when the batch is at most its largest captured size (vllm/worker/model_runner.py
    `use_captured_graph = decode_only and not enforce_eager and batch_size <= _BATCH_SIZES_TO_CAPTURE[-1]`, 256 in
    0.4-0.6); vLLM V1 pads a pass of up to the largest capture size to a captured one and runs a larger one with
    CUDA graphs off (v1/worker/gpu_model_runner.py: `num_scheduled_tokens <= self.cudagraph_batch_sizes[-1]`, else
    unpadded, and the cudagraph dispatcher returns CUDAGraphMode.NONE for a size it has no key for; the torch.compile'd
    pieces then launch from Python); SGLang replays its decode graph only when `CudaGraphRunner.can_run` (the batch
    at most its max_bs, --cuda-graph-max-bs) and calls `forward_decode` eagerly otherwise (model_executor/
    model_runner.py `_forward_raw`, 0.5.3 and 0.5.4)."""
    return (graph_max_batch is not None and mix.prefill_tokens <= 0
            and mix.decode_seqs > graph_max_batch)


def runs_eagerly(eager: str, mix: "Mix", graph_max_batch: int | None = None) -> bool:
    """Whether an engine whose eager passes are `eager` (EAGER_PASSES) launches the pass of `mix` eagerly: every
    pass ("all"), the passes that compute prompt tokens ("prompt"), or none ("none"); and, whatever `eager` says, a
    pure-decode pass of more sequences than `graph_max_batch`, the largest batch the engine captured a graph for
    (`past_graph_capture`)."""
    if eager == "all" or past_graph_capture(mix, graph_max_batch):
        return True
    if eager == "prompt":
        return mix.prefill_tokens > 0
    return False


def priced_pass_seconds(model: "IterationModel", mix: "Mix", device_s: float, eager: str,
                        per_kernel_s: float, graph_max_batch: int | None = None) -> float:
    """The seconds of one pass of `mix` whose device time is `device_s`, in an engine whose eager passes are
    `eager` and whose largest captured decode graph holds `graph_max_batch` sequences (None = no limit), on a host
    that launches a kernel in `per_kernel_s`: max(device, host launch) for an eager pass (`eager_pass_seconds`),
    the device time for a graph replay (or where per_kernel_s is 0: not modeled)."""
    if per_kernel_s <= 0 or not runs_eagerly(eager, mix, graph_max_batch):
        return device_s
    return eager_pass_seconds(device_s, eager_launch_seconds(pass_launches(model, mix), per_kernel_s))
