"""The element type of a serving engine's KV cache (`serving.kv_cache_dtype`): its bytes and its attention rate.

`auto` keeps the cache in the workload's traced 16-bit type (vLLM's `--kv-cache-dtype auto` = the model dtype;
for a `dtype: float8` workload, whose activations stay bf16, the cache is bf16: vLLM and TensorRT-LLM keep the KV
cache 16-bit unless asked). `float8` stores K and V as FP8 E4M3, one byte per element, with a per-tensor (or
per-head) scale: vLLM `--kv-cache-dtype fp8` (= fp8_e4m3), TensorRT-LLM's FP8 KV cache, SGLang
`--kv-cache-dtype fp8_e4m3`. What changes, each from a mechanism:

* bytes per cached token: 1 per element instead of the traced dtype's (`kv_bytes_scale`), so the memory model's
  leftover holds 2x the tokens (costmodel.iteration.kv_capacity: capacity = leftover / bytes per token) and a
  decode step reads half the K and V bytes (costmodel.iteration._stage_work's kv_read). The cache write
  (vLLM csrc/cache_kernels.cu, `reshape_and_cache_flash`: with kv_cache_dtype fp8 it scales and converts each
  element while it stores it, `fp8::scaled_convert`, in the same kernel) adds no kernel and no pass: it is the
  16-bit write of the traced profile, priced as is (over by kv_heads x head_dim x 2 bytes per token and layer
  written, 64 KB a token for Llama 3 8B, below 0.1% of a decode step's weight reads: not worth a term).
* the attention math: where the engine runs FP8 attention, QK^T and PV run on the FP8 tensor cores (vLLM's
  FLASH_ATTN backend with FlashAttention-3 quantizes the query to FP8 too and calls the FP8 kernel:
  vllm/v1/attention/backends/flash_attn.py; only with FA3 on compute capability 9.x,
  vllm/v1/attention/utils/fa_utils.py `flash_attn_supports_fp8`), which is the `flash3` attention kernel
  here. Its rate: the FlashAttention-3 paper's FP8 forward over its FP16 forward (Shah et al. 2024,
  arXiv:2407.08608, abstract: "FP16 reaching up to 740 TFLOPs/s (75% utilization), and with FP8 reaching close
  to 1.2 PFLOPs/s"), `FA3_FP8_SPEEDUP`, times the catalog's bf16 flash3 fraction. Every other kernel
  (FlashAttention-2, FlashInfer's and Triton's paged attention, cuDNN, TPU kernels) dequantizes the cached
  K and V to 16 bits inside the kernel: the bytes halve, the math stays 16-bit (`fp8_attention_math` False).
  The query quantization is fused into the ops before attention (vLLM PR #24914, torch.compile): no kernel.
  Not priced: the two-level FP32 accumulation vLLM's FA3 fork turns on for FP8 (vllm-project/flash-attention
  #104), which the fp8-kvcache blog (2026-04-22) says slows FP8 prefill (below bf16 at head_dim 256): the
  FP8 prefill here is the paper kernel's speed, an upper bound.
"""

from __future__ import annotations

from typing import Literal

from llmsim.costmodel.plan import DTYPE_BYTES

KVCacheDtype = Literal["auto", "float8"]
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "float8")
FP8_ELEMENT_BYTES = 1                      # E4M3 / E5M2: one byte per K or V element
FA3_BF16_FORWARD_FLOPS = 740e12            # FlashAttention-3 paper, abstract: FP16 forward up to 740 TFLOP/s on H100
FA3_FP8_FORWARD_FLOPS = 1.2e15             # same: FP8 forward "close to 1.2 PFLOPs/s"
FA3_FP8_SPEEDUP = FA3_FP8_FORWARD_FLOPS / FA3_BF16_FORWARD_FLOPS   # 1.62: FP8 over 16-bit attention, same kernel
FP8_ATTENTION_KERNELS = ("flash3",)        # kernels that run QK^T and PV in FP8 (vLLM: FA3 on sm90 only)


def kv_element_bytes(workload_dtype: str, kv_cache_dtype: str) -> int:
    """Bytes of one cached K or V element: 1 for float8, else the workload's traced element (plan.DTYPE_BYTES:
    bf16 for a float8 workload, whose cache `auto` keeps 16-bit)."""
    if kv_cache_dtype == "float8":
        return FP8_ELEMENT_BYTES
    return DTYPE_BYTES[workload_dtype]


def kv_bytes_scale(workload_dtype: str, kv_cache_dtype: str) -> float:
    """Cached bytes per token over the traced profile's (which holds K and V in the workload's dtype): 1.0 for
    auto, 1/2 for float8 over a 16-bit workload, 1/4 over float32."""
    return kv_element_bytes(workload_dtype, kv_cache_dtype) / DTYPE_BYTES[workload_dtype]


def fp8_attention_math(kv_cache_dtype: str, attention_kernel: str, has_fp8_units: bool) -> bool:
    """Whether attention runs its QK^T and PV on FP8 tensor cores: a float8 cache, a kernel with an FP8 path
    (FP8_ATTENTION_KERNELS) and a device with FP8 units (a catalog float8 peak)."""
    return kv_cache_dtype == "float8" and attention_kernel in FP8_ATTENTION_KERNELS and has_fp8_units


def attention_rate_scale(kv_cache_dtype: str, attention_kernel: str, has_fp8_units: bool) -> float:
    """The attention kernel's rate over its 16-bit rate: FA3_FP8_SPEEDUP with FP8 math, else 1.0."""
    return FA3_FP8_SPEEDUP if fp8_attention_math(kv_cache_dtype, attention_kernel, has_fp8_units) else 1.0
