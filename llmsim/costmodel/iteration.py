"""One serving iteration priced for its real mix, and the memory a replica leaves for its KV cache.

A serving engine (vLLM, Orca, Sarathi-Serve) runs one forward pass per iteration over whatever its
scheduler put in the batch: chunks of prompts being prefilled (each after the part of its prompt already
in the cache) and decoding sequences (one new token each, every one at its own cache length). This module
prices that pass on one model replica (tp x pp devices) with the cost model's one path:

* per-token costs come from the traced profile (`token_costs`: the same module the real backends run,
  traced once in decode mode and divided by its token and pair counts);
* each pipeline stage's work is a `costmodel.work.StageWork` (seconds per layer, embedding, head, the
  tensor-parallel all-reduces and the pipeline message, with `work`'s own helpers), and the iteration is
  the roofline's closed-form sum of that `StepWork` (`costmodel.step.price`), so the roofline, the
  cluster simulation and the serving simulation price a forward pass alike.

The mix enters as sums (`Mix`), which is exact because every term is a sum over sequences: GEMMs are
linear in the tokens (plus the weights, read once per pass: `compute.gemm_weight_bytes`); attention of a
prefill chunk of c tokens after p cached ones covers c*p + c*c/2 query-key pairs (causal; the flash kernel
skips the masked half, compute.CAUSAL_FLOP_SHARE) and reads the prefix's K and V; a decoding sequence
attending over k keys does k pairs and reads k tokens' K and V. The only non-linear terms are the
roofline's max(compute, memory) per kind and the GEMM shape efficiency, both functions of the sums.

Pure and torch-free: profile, plan and cluster in, seconds and bytes out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from llmsim.costmodel.cluster import ClusterSpec
from llmsim.costmodel import kv_dtype, precision
from llmsim.costmodel.compute import (CAUSAL_FLOP_SHARE, COMPILED_REGIONS, KERNELS_EMBED, KERNELS_HEAD,
                                      KERNELS_PER_LAYER_FORWARD, Rates, attention_fractions, decode_kv_reads,
                                      workload_rates, gemm_wave, gemm_weight_bytes, layer_matmul_time,
                                      replicated_kv_projection)
from llmsim.costmodel.memory import memory_breakdown, memory_stages
from llmsim.costmodel.plan import DTYPE_BYTES, Options, Plan
from llmsim.costmodel.step import StepTimes, price
from llmsim.costmodel import moe
from llmsim.costmodel.moe import ExpertTokenCosts, expert_token_costs
from llmsim.costmodel.window import KVLayout, causal_window_share, window_kept_tokens, window_pairs
from llmsim.costmodel.work import (Comm, Groups, Overlapped, StageWork, StepWork,
                                   _pipeline_message, _stage_kinds, _tp_collectives, tp_collectives_per_layer)

if TYPE_CHECKING:
    from llmsim.config import ModelSpec, SharingChoice, Workload
    from llmsim.workload.profile import WorkloadProfile

FP32_LOGIT_BYTES = 4
# vLLM's sampler turns the logits to float32 before sampling (vllm/v1/sample/sampler.py, `Sampler.forward`:
# `logits = logits.to(torch.float32)`), so its profile run holds max_num_seqs x vocab/tp fp32 logits.


# A serving engine runs a layer's elementwise ops as fused kernels, not as eager PyTorch: vLLM's Llama layer
# (vllm/model_executor/models/llama.py, LlamaDecoderLayer) is fused_add_rms_norm, QKV GEMM, rotary_embedding
# (in place on q and k), attention with its reshape_and_cache write, output GEMM, fused_add_rms_norm, gate-up
# GEMM, silu_and_mul, down GEMM: each elementwise step one CUDA kernel (csrc/layernorm_kernels.cu,
# pos_encoding_kernels.cu, activation_kernels.cu, cache_kernels.cu) that reads its inputs once and writes its
# outputs once; SGLang calls the same ops from sgl-kernel / FlashInfer, TGI its own fused RMSNorm and SiLU, and
# the fused-MoE kernel does the experts' SiLU-and-mul. Those are the 9 fused kernels per layer that the kernel
# latency already counts (compute.KERNELS_PER_LAYER_FORWARD). So a serving iteration prices the `layers` and
# `experts` regions' elementwise bytes as their fused traffic (workload.profile.OpTotals.traffic(True): what
# crosses each group of ops between two GEMMs), exactly as `compile: true` prices those regions on a GPU
# (compute.COMPILED_REGIONS); the embedding and the LM head keep their traced bytes. Llama 3 8B: a layer's
# elementwise traffic 0.24 of eager, ~200 KB a token.
SERVING_FUSED_REGIONS = COMPILED_REGIONS


class ServingPriceError(ValueError):
    """A profile that cannot give per-token serving costs (not traced in decode mode with two decode steps)."""


@dataclass(frozen=True)
class TokenCosts:
    """What one token, one query-key pair and one sampled row cost in one forward pass of the whole model on
    one device (tp = pp = 1), read off a traced decode profile (`token_costs`). FLOPs and bytes.

    `*_prefill` are per prompt token in a prefill pass, `*_decode` per generated token in a decode step
    (the two differ a little: a prompt pass also builds per-sequence tables). Layer figures cover all layers.
    """

    layers: int
    mm_flops_prefill: float          # layer GEMMs, per token (2 x layer weights: Kaplan et al. 2020)
    mm_flops_decode: float
    mm_bytes_prefill: float          # layer GEMM activations in and out, per token (weights apart)
    mm_bytes_decode: float
    other_bytes_prefill: float       # norms, rotary, activations, residual adds, cache writes, per token (fused)
    other_bytes_decode: float
    attention_flops_per_pair: float  # QK^T and PV over one (query, key) pair, all layers (4 heads hd L)
    kv_bytes_per_token: float        # K and V of one cached token, all layers, whole model
    embed_bytes_prefill: float       # the embedding lookup, per token
    embed_bytes_decode: float
    head_flops_per_row: float        # LM head GEMM, per sampled row
    head_bytes_per_row: float        # its activations in and out per row (the weight apart)
    head_other_per_token: float      # final norm over every token of the pass
    head_other_per_row: float        # the sampled rows' argmax / copies
    ops_prefill: tuple[int, int, int]  # operators of one pass: (embed, layers, head), for op_overhead_s
    ops_decode: tuple[int, int, int]
    # routed experts of a mixture-of-experts model (the profile's "experts" region: costmodel.moe)
    moe_layers: int = 0
    experts_prefill: ExpertTokenCosts = ExpertTokenCosts()
    experts_decode: ExpertTokenCosts = ExpertTokenCosts()
    # the cache's element type (serving.kv_cache_dtype, costmodel.kv_dtype): kv_bytes_per_token is already its
    # bytes; the attention kernel reads it for its FP8 path (IterationModel.attention_rate_scale)
    kv_cache_dtype: str = "auto"
    # LoRA's adapters (A and B of every adapted projection, all layers, tp = 1, bytes): GEMM weights like the
    # base ones, read once per pass whatever its tokens (a served adapter: vLLM's shrink and expand read each
    # active adapter's A and B once per kernel); 0 without LoRA
    adapter_weight_bytes: float = 0.0
    # kernels a served LoRA adds to every layer of every pass (lora_layer_kernels); 0 without LoRA
    adapter_layer_kernels: int = 0
    # a decode step's attention FLOPs per (query, cached key) pair, all layers, when they differ from the
    # prompt's: multi-head latent attention decodes in the absorbed form (workload.model.LatentCoreAttention:
    # 2 (kv_lora + rope) + 2 kv_lora per head instead of 2 (nope + rope) + 2 v); None = attention_flops_per_pair
    decode_attention_flops_per_pair: float | None = None
    # sliding-window layers (ModelSpec.sliding_window): their window W and how many of the `layers` they are.
    # attention_flops_per_pair and kv_bytes_per_token are then what every layer would cost attending to (and
    # caching) the whole context; a windowed layer's pairs and cached tokens are the Mix's window_* sums
    window: int | None = None
    windowed_layers: int = 0


# A served LoRA's kernels, read in vLLM's source (vllm/lora/punica_wrapper/punica_gpu.py, V1):
# `PunicaWrapperGPU.add_lora_linear` allocates its rank-r buffer with `torch.zeros` (a fill kernel), then launches
# one `lora_shrink` and one `lora_expand` Triton kernel over all of the module's slices: 3 kernels per wrapped
# linear. vLLM wraps every linear the model supports, whatever the adapter targets
# (vllm/lora/models.py `LoRAModelManager._create_lora_modules` matches `supported_lora_modules`, the model's
# packed modules): a dense layer's qkv_proj, o_proj, gate_up_proj and down_proj (fc1 / fc2 without a gate).
LORA_KERNELS_PER_LINEAR = 3
LORA_LINEARS_DENSE_LAYER = 4
LORA_LINEARS_ATTENTION = 2       # qkv_proj, o_proj: llmsim adapts only the attention of a mixture of experts


def lora_layer_kernels(spec: "ModelSpec") -> int:
    """Kernels a served LoRA adds to each layer of a pass: 3 per linear vLLM wraps, 4 linears in a dense layer,
    the attention's 2 in a mixture of experts (llmsim's LoRA on an MoE model adapts the attention only:
    config.check_sharing; vLLM's expert LoRA kernels are not counted). Each is priced at the device's fixed time
    per kernel (efficiency.kernel_latency_s), as every kernel of the pass is."""
    linears = LORA_LINEARS_ATTENTION if spec.moe is not None else LORA_LINEARS_DENSE_LAYER
    return LORA_KERNELS_PER_LINEAR * linears


def token_costs(workload: "Workload", profile: "WorkloadProfile", kv_cache_dtype: str = "auto") -> TokenCosts:
    """Per-token costs from a profile traced in decode mode (a prompt of S tokens for B sequences, then
    n = decode_tokens - 1 >= 2 token steps, traced at the first and last position and scaled: profile.py).

    Prefill totals divide by B*S tokens (the attention's by B*S*S pairs: the traced math SDPA counts the
    whole score matrix), decode totals by n*B tokens. The traced weights of the layer GEMMs (tp = 1, read
    once per pass: compute.gemm_weight_bytes) are taken out of the GEMM bytes; the pricing adds each
    device's own weights back once per pass. The head's final norm runs over every token and its GEMM over
    one row per sequence: the two unknowns follow from the prefill pass (S tokens per row) and a decode
    step (one). The layers' and experts' elementwise bytes are the fused engine's (SERVING_FUSED_REGIONS).
    `kv_cache_dtype` (serving.kv_cache_dtype): the traced K and V bytes per token times
    kv_dtype.kv_bytes_scale (float8: 1 byte an element instead of the traced 2).
    Raises ServingPriceError for a profile not traced that way.
    """
    spec = workload.model
    n = workload.decode_tokens - 1
    if profile.mode != "decode" or n < 2 or profile.seq_len < 2:
        raise ServingPriceError(f"serving prices need a decode profile with a prompt of >= 2 tokens and >= 2 decode "
                                f"steps (got mode {profile.mode}, seq_len {profile.seq_len}, {n} steps)")
    b, s = profile.batch, profile.seq_len
    ops = profile.ops

    def get(phase: str, region: str, kind: str) -> tuple[float, float, int]:
        """FLOPs, bytes and op count; a fused region's elementwise bytes as fused (SERVING_FUSED_REGIONS), and a
        fused region's bytes as the engine runs LoRA (scale and add inside the adapter's GEMMs: OpTotals.served)."""
        t = ops.get((phase, region, kind))
        if t is None:
            return 0.0, 0.0, 0
        if region in SERVING_FUSED_REGIONS and kind != "attention":
            return t.flops, t.served(), t.count
        return t.flops, t.traffic(kind == "other" and region in SERVING_FUSED_REGIONS), t.count

    one = Plan()
    # a LoRA model trains its adapters only (workload.model.LoRALinear freezes every base weight): its trainable
    # parameters are the adapters; a model without LoRA has every parameter trainable (no adapter)
    adapters = float(profile.trainable_param_bytes) if profile.trainable_params < profile.params else 0.0
    w_layers = gemm_weight_bytes(workload, one, "layers", traced=True) * profile.layers + adapters
    w_head = gemm_weight_bytes(workload, one, "head", traced=True)
    pf, pb, pc = get("prefill", "layers", "matmul")
    df, db, dc = get("decode", "layers", "matmul")
    pa_f, _, pa_c = get("prefill", "layers", "attention")
    _, po, po_c = get("prefill", "layers", "other")
    _, do, do_c = get("decode", "layers", "other")
    da_f, da_b, da_c = get("decode", "layers", "attention")
    _, pe, pe_c = get("prefill", "embed", "other")
    _, de, de_c = get("decode", "embed", "other")
    phf, phb, phc = get("prefill", "head", "matmul")
    dhf, dhb, dhc = get("decode", "head", "matmul")
    _, pho, pho_c = get("prefill", "head", "other")
    _, dho, dho_c = get("decode", "head", "other")
    prompt, steps = b * s, n * b
    per_row_prefill, per_row_decode = pho / b, dho / steps     # = S x + y and x + y
    per_token = max((per_row_prefill - per_row_decode) / (s - 1), 0.0)
    cache_len = s + workload.decode_tokens                      # workload.step: the cache holds the prompt + output
    # sliding-window layers: the trace capped their prompt pairs at causal_window_share and their caches at W
    # slots (workload.trace, workload.model.Transformer.new_cache); undo both to the full-context figures of every
    # layer, so that the Mix's window_* sums price the windowed layers exactly
    window, n_win = spec.sliding_window, spec.windowed_layers_in(range(profile.layers))
    n_full = profile.layers - n_win
    pair_layers = (n_full + n_win * causal_window_share(s, window)) / profile.layers
    cached_layers = (n_full * cache_len + n_win * window_kept_tokens(cache_len, window)) / (profile.layers * cache_len)
    return TokenCosts(
        layers=profile.layers,
        mm_flops_prefill=pf / prompt, mm_flops_decode=df / steps,
        mm_bytes_prefill=max(pb - w_layers, 0.0) / prompt, mm_bytes_decode=max(db - n * w_layers, 0.0) / steps,
        other_bytes_prefill=po / prompt, other_bytes_decode=do / steps,
        attention_flops_per_pair=pa_f / (b * s * s) / pair_layers,
        kv_bytes_per_token=_kv_bytes_per_token(profile.kv_cache_bytes / (b * cache_len) / cached_layers,
                                               workload.dtype, kv_cache_dtype),
        embed_bytes_prefill=pe / prompt, embed_bytes_decode=de / steps,
        head_flops_per_row=phf / b, head_bytes_per_row=max(phb - w_head, 0.0) / b,
        head_other_per_token=per_token, head_other_per_row=max(per_row_decode - per_token, 0.0),
        ops_prefill=(pe_c, pc + pa_c + po_c, phc + pho_c),
        ops_decode=(round(de_c / n), round((dc + da_c + do_c) / n), round((dhc + dho_c) / n)),
        moe_layers=getattr(profile, "moe_layers", 0),
        experts_prefill=expert_token_costs(profile, workload, "prefill", prompt, compiled=True),
        experts_decode=expert_token_costs(profile, workload, "decode", steps, n, compiled=True),
        kv_cache_dtype=kv_cache_dtype, adapter_weight_bytes=adapters,
        adapter_layer_kernels=lora_layer_kernels(spec) if adapters else 0,
        window=window if n_win else None, windowed_layers=n_win,
        # the n traced steps attend s+1 .. s+n keys each (affine in the position: the mean s + (n+1)/2)
        decode_attention_flops_per_pair=(da_f / (steps * (s + (n + 1) / 2)) if spec.mla is not None else None))


def _kv_bytes_per_token(traced: float, workload_dtype: str, kv_cache_dtype: str) -> float:
    """One cached token's K and V bytes in the cache's own type (the traced figure untouched for auto)."""
    if kv_cache_dtype == "auto":
        return traced
    return traced * kv_dtype.kv_bytes_scale(workload_dtype, kv_cache_dtype)


@dataclass(frozen=True)
class Mix:
    """What one iteration of one replica runs, as sums over its sequences (all counts in tokens).

    prefill_tokens   sum of c, the prompt-chunk tokens computed (a whole prompt is one chunk at p = 0)
    prefill_pairs    sum of c*p: each chunk's queries against the p tokens already cached before it
    prefill_square   sum of c*c: each chunk's queries against its own tokens (causal: half are masked)
    prefix_tokens    sum of p: cached tokens the chunks read (K and V)
    decode_seqs      sequences generating one token each
    decode_keys      sum of k: the keys each decoding sequence attends over (its cache + the new token)
    rows             sequences whose last position goes through the LM head this pass (vLLM samples every
                     scheduled request, a partial prefill's token is discarded: gpu_model_runner's
                     `logits_indices` is one per request)
    layer_kernels    kernels each layer launches in this pass beyond the fused engine's KERNELS_PER_LAYER_FORWARD
                     (an engine policy's own count, e.g. TGI 2.1's unfused ones: policies/tgi.py); 0 by default;
                     negative where the engine fuses some of them away (vLLM's all-reduce + RMSNorm fusion:
                     costmodel.eager.fused_allreduce_rms_sites)
    pass_kernels     kernels the pass launches after the LM head beyond KERNELS_HEAD (an engine's sampler and
                     input bookkeeping, e.g. TGI 2.1's); each at the device's fixed time per kernel; 0 by default
    longest_chunk    c of the pass's longest prompt chunk and the p tokens cached before it (one sequence: an
    longest_prefix   engine puts it in one micro-batch whole; iteration_times with pp batches in flight)
    window_pairs     the same sums as a sliding-window layer of window W (ModelSpec.sliding_window) sees them:
    window_prefix    sum of costmodel.window.window_pairs(c, p, W) (each query's min(i + 1, W) keys), sum of
    window_keys      min(p, W - 1) (the prefix tokens its chunk reads), sum of min(k, W); 0 without windowed
                     layers (TokenCosts.windowed_layers 0: never read)
    verify_tokens    speculative decoding (serving.speculative): the draft tokens the decoding sequences verify
    verify_pairs     beside their own token (sum of m, m drafts each), and the query-key pairs those m queries add
                     (sum of m k + m (m + 1) / 2 over a sequence of k keys: draft j attends k + j keys). A
                     decoding sequence with m drafts is one (m + 1)-token query over its cache: its GEMMs see m + 1
                     rows at the decode per-token costs, its LM head m + 1 rows, and its cache is read once (the
                     flash kernels take a query of several tokens per sequence: vLLM V1 runs every request as
                     a varlen query, FlashAttention's `flash_attn_varlen_func`; FlashInfer's and FlashMLA's decode
                     kernels take q_len = m + 1 for speculative verification; TensorRT-LLM's MTP runs the K + 1
                     tokens through the FP8 FlashMLA generation kernel on Hopper under a causal mask: blog2,
                     "Attention for MTP"); 0 without speculation
    """

    prefill_tokens: float = 0          # counts, fractional only in one micro-batch's share (`share`)
    prefill_pairs: float = 0
    prefill_square: float = 0
    prefix_tokens: float = 0
    decode_seqs: float = 0
    decode_keys: float = 0
    rows: float = 0
    layer_kernels: float = 0           # per layer, the same in every micro-batch and sum of a pass: `__add__` takes the max
    pass_kernels: float = 0
    longest_chunk: float = 0           # not split by `share`; `__add__` keeps the longer chunk
    longest_prefix: float = 0
    window_pairs: float = 0
    window_prefix: float = 0
    window_keys: float = 0
    verify_tokens: float = 0
    verify_pairs: float = 0

    @property
    def tokens(self) -> float:
        return self.prefill_tokens + self.decode_seqs + self.verify_tokens


    def __add__(self, other: "Mix") -> "Mix":
        return Mix(self.prefill_tokens + other.prefill_tokens, self.prefill_pairs + other.prefill_pairs,
                   self.prefill_square + other.prefill_square, self.prefix_tokens + other.prefix_tokens,
                   self.decode_seqs + other.decode_seqs, self.decode_keys + other.decode_keys,
                   self.rows + other.rows, max(self.layer_kernels, other.layer_kernels),
                   self.pass_kernels + other.pass_kernels,
                   *max((self.longest_chunk, self.longest_prefix), (other.longest_chunk, other.longest_prefix)),
                   self.window_pairs + other.window_pairs, self.window_prefix + other.window_prefix,
                   self.window_keys + other.window_keys, self.verify_tokens + other.verify_tokens,
                   self.verify_pairs + other.verify_pairs)

    @staticmethod
    def prefill(chunk: int, prefix: int = 0, window: int | None = None) -> "Mix":
        """One prompt chunk of `chunk` tokens after `prefix` cached ones, its last position sampled; `window`: the
        model's sliding window (the window_* sums), None without windowed layers."""
        return Mix(prefill_tokens=chunk, prefill_pairs=chunk * prefix, prefill_square=chunk * chunk,
                   prefix_tokens=prefix, rows=1, longest_chunk=chunk, longest_prefix=prefix,
                   **_window_prefill(chunk, prefix, window))

    @staticmethod
    def decode(keys: float, window: int | None = None) -> "Mix":
        """One sequence generating a token while attending over `keys` keys (its cache + the new token)."""
        return Mix(decode_seqs=1, decode_keys=keys, rows=1,
                   window_keys=0 if window is None else min(keys, window))

    def share(self, parts: int) -> "Mix":
        """1/parts of every sum: one of `parts` equal micro-batches (pipeline parallel inference); each
        micro-batch launches every layer's kernels, so `layer_kernels` is kept whole, and the longest chunk is
        one sequence's, not split."""
        if parts == 1:
            return self
        return Mix(self.prefill_tokens / parts, self.prefill_pairs / parts, self.prefill_square / parts,
                   self.prefix_tokens / parts, self.decode_seqs / parts, self.decode_keys / parts, self.rows / parts,
                   self.layer_kernels, self.pass_kernels / parts, self.longest_chunk, self.longest_prefix,
                   self.window_pairs / parts, self.window_prefix / parts, self.window_keys / parts,
                   self.verify_tokens / parts, self.verify_pairs / parts)


def _window_prefill(chunk: int, prefix: int, window: int | None) -> dict[str, float]:
    """A prompt chunk's window_pairs and window_prefix (Mix) for a model with windowed layers of `window`."""
    if window is None:
        return {}
    return {"window_pairs": window_pairs(chunk, prefix, window), "window_prefix": min(prefix, window - 1)}


@dataclass(frozen=True)
class IterationModel:
    """Everything fixed while a replica serves: its costs per token, plan, cluster and the traced workload.

    `workload` is the traced reference (its model and dtype are the served ones); `plan` one replica's
    tp x pp (dp = 1).
    """

    costs: TokenCosts
    workload: "Workload"
    plan: Plan
    cluster: ClusterSpec
    options: Options = Options()
    # with pp > 1: the engine keeps pp batches in flight, its pipeline full between iterations (the scheduler's
    # `pipeline_in_flight`; iteration_times), or it fills and drains the pipeline every iteration (static batches)
    pipeline_in_flight: bool = True
    # speculative decoding's draft head (serving.speculative, methods mtp and eagle): a model of this many of the
    # target's mean layers, with its embedding lookup and its LM head, at the target's width and plan (pp 1); None:
    # the target itself (draft_head_model)
    draft_layers: int | None = None

    # What every iteration reads, computed once per replica (a serving run prices ~10^5 iterations).
    @functools.cached_property
    def rates(self) -> Rates:
        return workload_rates(self.cluster, self.workload)

    @functools.cached_property
    def attention_fraction(self) -> float:
        """The fused attention kernel's forward fraction of peak FLOP/s (Options.attention: flash =
        FlashAttention-2, the default; flash3 = FlashAttention-3, what vLLM's FLASH_ATTN backend runs on Hopper,
        vllm/v1/attention/backends/fa_utils.py get_flash_attn_version; cudnn). CostModelError when the device's
        catalog entry has no figure for it (compute.attention_fractions)."""
        return attention_fractions(self.rates.efficiency, self.options.attention)[0]

    @functools.cached_property
    def attention_rate_scale(self) -> float:
        """The attention kernel's rate over its 16-bit one: FlashAttention-3's FP8 path with a float8 KV cache
        on a device with FP8 units (kv_dtype.attention_rate_scale), else 1.0 (a float8 cache dequantized in
        the kernel: the bytes halve, the math stays 16-bit)."""
        return kv_dtype.attention_rate_scale(self.costs.kv_cache_dtype, self.options.attention,
                                             bool(self.cluster.device.peak_flops.get("float8")))

    @functools.cached_property
    def groups(self) -> Groups:
        """Where tp and pp land (work.Groups.on: nodes, or the axes of a TPU torus)."""
        return Groups.on(self.plan, self.cluster)

    @functools.cached_property
    def stage_layers(self) -> tuple[int, ...]:
        """Layers of each pipeline stage (Plan.layers_per_stage: the strategy's split, even by default); a draft
        head's own layers (draft_layers) on its one stage."""
        if self.draft_layers is not None:
            return (self.draft_layers,)
        return self.plan.layers_per_stage(self.workload.model.layers)

    @functools.cached_property
    def stage_moe_shares(self) -> tuple[float, ...]:
        """Each pipeline stage's share of MoE layers (moe.stage_moe_share; 0 for a dense model)."""
        if self.workload.model.moe is None:
            return tuple(0.0 for _ in self.stage_layers)
        return tuple(moe.stage_moe_share(self.workload, self.plan, i) for i in range(self.plan.pp))

    @functools.cached_property
    def layer_weight_bytes(self) -> float:
        """One layer's GEMM weights on one tensor-parallel rank (compute.gemm_weight_bytes)."""
        return gemm_weight_bytes(self.workload, self.plan, "layers")

    @functools.cached_property
    def layer_adapter_bytes(self) -> float:
        """One layer's LoRA adapters on one tensor-parallel rank, read once per pass (TokenCosts.adapter_weight_bytes
        over layers and tp). Exact at tp = 1; at tp > 1 vLLM slices one of A and B and replicates the other (its
        column-parallel LoRA layers slice B, its row-parallel ones A: "RowParallelLinearWithShardedLoRA ... differs
        from RowParallelLinearWithLoRA by slicing the LoRA B's also", vllm/lora/fully_sharded_layers.py), so this
        undercounts by the replicated part's (tp - 1)/tp, bounded by the adapters' own 0.6% of a Llama 3 8B
        layer's weights at r = 16 (1.31 M of 218 M parameters)."""
        return self.costs.adapter_weight_bytes / self.costs.layers / self.plan.tp

    @functools.cached_property
    def head_weight_bytes(self) -> float:
        return gemm_weight_bytes(self.workload, self.plan, "head")

    @functools.cached_property
    def replicated_kv_flops_per_token(self) -> float:
        """FLOPs per token and layer a rank spends on replicated K/V heads (compute.replicated_kv_projection)."""
        return replicated_kv_projection(self.workload, self.plan, 1)[0]

    @functools.cached_property
    def _waves(self) -> dict[tuple[str, int], float]:
        return {}

    def wave(self, region: str, rows: int) -> float:
        """compute.gemm_wave of the region's GEMMs for `rows` rows, remembered (iterations repeat sizes)."""
        key = (region, rows)
        hit = self._waves.get(key)
        if hit is None:
            hit = self._waves[key] = gemm_wave(self.workload, self.plan, rows, region, False, self.rates)
        return hit

    @functools.cached_property
    def rank_model(self) -> "IterationModel":
        """With attention data parallelism: one attention rank's model (attention_rank_plan), whose stages price
        a rank's own work (attention_dp_times); the model itself without it."""
        if self.plan.attention_dp <= 1:
            return self
        return replace(self, plan=attention_rank_plan(self.plan))

    @functools.cached_property
    def activation_bytes_per_token(self) -> int:
        """One token's hidden state: what a tensor-parallel all-reduce and a pipeline message carry per token."""
        return self.workload.model.hidden * DTYPE_BYTES[self.workload.dtype]


def inference_microbatches(plan: Plan, sequences: int) -> int:
    """Micro-batches one forward pass splits into: pp when it has at least pp sequences, else 1.

    As costmodel.work.inference_plan: with pp stages a server keeps pp micro-batches in flight (vLLM runs
    `pipeline_parallel_size` batches at once), each one filling and draining the pipeline; a pass with
    fewer sequences than stages runs whole.
    """
    return plan.pp if plan.pp > 1 and sequences >= plan.pp else 1


def _stage_work(model: IterationModel, mix: Mix, rates: Rates, kind: str, layers: int,
                moe_share: float = 0.0, experts: tuple[float, tuple[Comm, ...]] | None = None) -> StageWork:
    """One pipeline stage of `layers` layers running `mix` (already one micro-batch's share) on one
    tensor-parallel rank; the per-layer terms follow compute.phase_times. `moe_share`: the stage's share of
    MoE layers (moe.stage_moe_share), of which its mean layer runs the routed experts. `experts`: the mean
    layer's routed-expert seconds and exchange when they are not this mix's own (attention data parallelism:
    the experts run every rank's tokens, `attention_dp_times`); None = `_experts` of `mix`."""
    c, plan, w = model.costs, model.plan, model.workload
    spec = w.model
    eff = rates.efficiency
    tp = plan.tp
    div = tp * c.layers                            # a rank computes 1/tp of one layer of the model's L
    # a decoding sequence's verified drafts run the decode step's per-token costs (Mix.verify_tokens)
    pre, dec = mix.prefill_tokens, mix.decode_seqs + mix.verify_tokens
    tokens = pre + dec
    rows_int = max(1, math.ceil(tokens))
    kv_split = spec.kv_split(tp)                   # 1 for multi-head latent attention: the latent is whole
    # GEMMs: FLOPs and activations per token, this rank's weights once per pass (phase_times' rule), and
    # the K/V projections a rank repeats when tp > kv_heads; float8 layers at their own rates.
    mm_flops = (pre * c.mm_flops_prefill + dec * c.mm_flops_decode) / div + tokens * model.replicated_kv_flops_per_token
    mm_bytes = (pre * c.mm_bytes_prefill + dec * c.mm_bytes_decode) / div
    if c.adapter_weight_bytes:              # LoRA's A and B, read once per pass like the base weights
        mm_bytes += model.layer_adapter_bytes
    matmul = layer_matmul_time(w, model.plan, rates, mm_flops, mm_bytes, model.layer_weight_bytes,
                               model.wave("layers", rows_int)) if tokens else 0.0
    # Attention, one fused kernel per layer (FlashAttention / paged attention): the prompt chunks are
    # compute-bound (causal half of their own square), the prefix and the decoding sequences' caches are read,
    # at the fused kernel's fraction of peak (IterationModel.attention_fraction).
    attention_rate = rates.sustained_flops * model.attention_fraction
    if model.attention_rate_scale != 1.0:    # FP8 attention math (float8 KV cache, FA3 on Hopper: kv_dtype)
        attention_rate *= model.attention_rate_scale
    per_pair = c.attention_flops_per_pair / div
    kv_read = c.kv_bytes_per_token / c.layers / kv_split
    prefill_att = max((mix.prefill_pairs + CAUSAL_FLOP_SHARE * mix.prefill_square) * per_pair / attention_rate,
                      rates.memory_time(mix.prefix_tokens * kv_read))
    # the decoding sequences' caches, read once per KV head (flash-style kernels) or once per query head
    # (TensorRT-LLM's MMHA generation kernel: compute.decode_kv_reads); the prompt's prefix as above
    decode_read = kv_read * decode_kv_reads(model.options.attention, spec.heads, spec.kv_heads or spec.heads, tp,
                                            spec.mla is not None)
    decode_pair = per_pair if c.decode_attention_flops_per_pair is None else c.decode_attention_flops_per_pair / div
    # the decode kernel's own achieved bandwidth, lower for an FP8 cache (Efficiency.decode_kv_memory)
    kv_float8 = c.kv_cache_dtype == "float8"
    decode_att = max((mix.decode_keys + mix.verify_pairs) * decode_pair / attention_rate,
                     rates.decode_kv_time(mix.decode_keys * decode_read, kv_float8))
    if c.windowed_layers:   # the mean layer: the windowed layers' share at their capped pairs and reads (Mix.window_*)
        share = c.windowed_layers / c.layers
        window_prefill = max(mix.window_pairs * per_pair / attention_rate, rates.memory_time(mix.window_prefix * kv_read))
        window_decode = max(mix.window_keys * decode_pair / attention_rate, rates.decode_kv_time(mix.window_keys * decode_read, kv_float8))
        prefill_att = (1 - share) * prefill_att + share * window_prefill
        decode_att = (1 - share) * decode_att + share * window_decode
    other_bytes = (pre * c.other_bytes_prefill + dec * c.other_bytes_decode) / div
    if precision.is_quantized(w) and rates.gemm is not None:   # casts of the GEMM inputs to FP8/FP4 (weights stored so)
        other_bytes += (precision.activation_cast_bytes(w, plan, "prefill", rows_int, rates.fp8_any_layout)
                        * tokens / rows_int)
    other = rates.memory_time(other_bytes)
    ops = c.ops_prefill if pre else c.ops_decode
    if eff.op_overhead_s:
        other += eff.op_overhead_s * ops[1] / c.layers
    # one pass launches every kernel of the layer (and an engine's own beyond the fused count: Mix.layer_kernels;
    # a served LoRA's: TokenCosts.adapter_layer_kernels)
    other += eff.kernel_latency_s * (KERNELS_PER_LAYER_FORWARD + mix.layer_kernels + c.adapter_layer_kernels)
    experts_s, exchange = (_experts(model, mix, rates, moe_share), ()) if experts is None else experts
    first, last = kind == "first", kind == "last" or plan.pp == 1
    embed = head = 0.0
    if first:
        embed = (rates.memory_time((pre * c.embed_bytes_prefill + dec * c.embed_bytes_decode) / tp)
                 + eff.op_overhead_s * ops[0] + eff.kernel_latency_s * KERNELS_EMBED)
    if last:
        rows = mix.rows + mix.verify_tokens       # speculative verification samples every verified position
        head_flops = rows * c.head_flops_per_row / tp
        head_bytes = rows * c.head_bytes_per_row / tp + model.head_weight_bytes
        head = (rates.matmul_time(head_flops, head_bytes, model.wave("head", max(1, math.ceil(rows))))
                + rates.memory_time((tokens * c.head_other_per_token + rows * c.head_other_per_row) / tp)
                + eff.op_overhead_s * ops[2] + eff.kernel_latency_s * (KERNELS_HEAD + mix.pass_kernels))
    activation = tokens * model.activation_bytes_per_token
    groups = model.groups
    _, recv_gather = _pipeline_message(activation, plan, model.options, groups)
    layer_s = matmul + prefill_att + decode_att + other + experts_s
    algorithm = model.options.all_reduce
    tp_fwd = _tp_collectives(activation, plan, groups.tp, tp_collectives_per_layer(model.workload.model), algorithm)
    overlap: tuple[Overlapped, ...] = ()
    if exchange and plan.ep_comm_overlap and model.cluster.device.overlaps_communication:
        overlap = (Overlapped(hidden=exchange, gemm_s=layer_s),)
    else:
        tp_fwd += exchange
    return StageWork(layers=layers, fwd_layer_s=layer_s,
                     embed_fwd_s=embed, head_fwd_s=head,
                     tp_fwd=tp_fwd, tp_fwd_overlap=overlap,
                     tp_embed=_tp_collectives(activation, plan, groups.tp, 1, algorithm) if first else (),
                     recv_gather=recv_gather)


# Expert parallelism inside a serving replica's tensor-parallel group exchanges no tokens. The serving engines
# run ep over the tp ranks on tokens every rank already holds (the attention block's all-reduce leaves the whole
# batch on each), each rank applying only its local experts (the others masked), and the MoE block's output
# all-reduce over tp sums the ranks' partial outputs — the same single all-reduce a tensor-parallel MLP ends with:
# * vLLM: vllm/model_executor/layers/fused_moe/config.py, FusedMoEParallelConfig.use_all2all_kernels =
#   `dp_size > 1 and use_ep`: with one data-parallel rank (tp 8 --enable-expert-parallel) no dispatch/combine
#   kernel runs, the FusedMoE layer maps global to local expert ids (expert_map) and reduces over tp;
# * SGLang: python/sglang/srt/layers/moe/token_dispatcher/standard.py, StandardDispatcher (the dispatcher when
#   --moe-a2a-backend is none, its default): dispatch and combine move no data, the ids outside the rank's
#   experts are masked, and the model's MoE block all-reduces over tp (models/deepseek_v2.py forward_normal);
# * TensorRT-LLM: tensorrt_llm/_torch/modules/fused_moe/communication/communication_factory.py (at 03c36d62),
#   CommunicationFactory.create_strategy: "If attention does not use data parallelism (either uses TP or single
#   card), no MoE communication is needed" (returns no method); the moe_ep_size x moe_tp_size = tp ranks reduce
#   with the layer's all-reduce.
# Training (costmodel.work) is unchanged: Megatron-Core's dispatcher exchanges sequence-parallel shards.


def _experts(model: IterationModel, mix: Mix, rates: Rates, share: float) -> float:
    """Seconds of a mixture-of-experts model's routed experts in the mean layer of one pass of `mix` (one
    micro-batch's share) on the busiest rank of a stage whose layers are `share` MoE layers: the mix's prompt
    and decode tokens at their own per-token costs; the expert weights read are those of the experts the pass's
    tokens touch (moe.expected_distinct_experts), which is what makes MoE decode memory-bound differently from a
    dense model's.

    No token exchange is priced here. A serving replica's experts live on its own tensor-parallel ranks (ep
    divides tp: config's serving expert grid), and after the attention block's all-reduce every one of those
    ranks holds every token of the pass, so each runs its local experts on the tokens routed to them and the
    layer's tensor-parallel all-reduce, priced with every layer's (`_tp_collectives`), sums the ranks' partial
    outputs (the sources: the comment above). Only attention data parallelism, whose ranks hold different tokens,
    exchanges them (`attention_dp_times`)."""
    c, plan, w = model.costs, model.plan, model.workload
    spec = w.model
    tokens = mix.prefill_tokens + mix.decode_seqs + mix.verify_tokens
    if spec.moe is None or not c.moe_layers or tokens <= 0 or share <= 0:
        return 0.0
    pre, dec = mix.prefill_tokens / tokens, (mix.decode_seqs + mix.verify_tokens) / tokens
    a, b = c.experts_prefill, c.experts_decode
    costs = ExpertTokenCosts(mm_flops=pre * a.mm_flops + dec * b.mm_flops, mm_bytes=pre * a.mm_bytes + dec * b.mm_bytes,
                             other_bytes=pre * a.other_bytes + dec * b.other_bytes,
                             ops_per_layer=a.ops_per_layer if mix.prefill_tokens else b.ops_per_layer)
    return share * moe.experts_time(w, plan, rates, costs, tokens, c.moe_layers, "prefill" if pre else "decode",
                                    trainable=False)


def iteration_work(model: IterationModel, mix: Mix,
                   experts: tuple[float, tuple[Comm, ...]] | None = None) -> StepWork:
    """The iteration as one forward-only step of the replica's pipeline (costmodel.work's data): with pp > 1,
    `inference_microbatches` equal shares of the mix fill and drain the stages (GPipe order). `experts`: the
    routed experts' seconds and exchange of every stage's mean layer when another mix sets them (attention data
    parallelism, pp 1: `attention_dp_times`)."""
    plan = model.plan
    rates = model.rates
    m = inference_microbatches(plan, math.ceil(mix.rows))
    part = mix.share(m)
    keys = list(zip(_stage_kinds(plan.pp), model.stage_layers, model.stage_moe_shares))
    stages = {key: _stage_work(model, part, rates, *key, experts=experts)  # alike stages priced once
              for key in dict.fromkeys(keys)}
    p2p, _ = _pipeline_message(part.tokens * model.activation_bytes_per_token, plan, model.options, model.groups)
    return StepWork(stages=tuple(stages[key] for key in keys), microbatches=m, schedule="gpipe",
                    forward_only=True, p2p=p2p, comm_shares_cores=not model.cluster.device.overlaps_communication)


def iteration_times(model: IterationModel, mix: Mix, ranks: tuple[Mix, ...] = ()) -> StepTimes:
    """Where one iteration's time goes (costmodel.step.price of `iteration_work`): compute, exposed
    tensor- and pipeline-parallel communication, and the pipeline's fill and drain (bubble). Seconds.

    With pp > 1 the mix runs as m micro-batches over p stages. An engine that drains its pipeline every
    iteration (a static batch: `IterationModel.pipeline_in_flight` False) waits the flow shop's makespan, m
    times the bottleneck stage plus one pass of every other stage (`price`; (2p - 1) stage times at m = p). An
    engine that keeps its pp batches in flight (vLLM, SGLang, Sarathi-Serve: Scheduler.pipeline_in_flight) never
    drains: in the steady state each micro-batch is back at the first stage after the longer of the bottleneck
    stage's m micro-batches and its own pass through every stage, so an iteration of the whole running set
    takes max(m x stage_c, sum over s of stage_s), i.e. the bubble shrinks by (m - 1) stage_c (to 0 for equal
    stages at m = p: a weight-bound decode step then costs one device's read of all the weights, as at pp = 1,
    while the cache holds pp times the tokens). The micro-batches hold whole sequences, so the pass is also no
    shorter than its longest prompt chunk's own pass through every stage (`Mix.longest_chunk`): the two lower
    bounds of a flow shop's makespan, its bottleneck machine's load and its longest job (Pinedo, "Scheduling",
    Ch. 6).

    With attention data parallelism (plan.attention_dp = D > 1) `ranks` are the D ranks' own mixes and `mix` their
    sum (`attention_dp_times`); without `ranks` the mix is taken as D equal shares."""
    if model.plan.attention_dp > 1:
        return attention_dp_times(model, ranks or (mix.share(model.plan.attention_dp),) * model.plan.attention_dp)
    fabric = model.cluster.fabric
    times = price(iteration_work(model, mix), fabric)
    m = inference_microbatches(model.plan, math.ceil(mix.rows))
    if not model.pipeline_in_flight or model.plan.pp <= 1 or m <= 1:
        return times
    busy = times.compute + times.comm          # the critical (bottleneck) stage: m micro-batches
    longest = busy / m + times.bubble          # one equal micro-batch through every stage
    if mix.longest_chunk > 0:                  # the longest chunk's micro-batch: the chunk alone, one micro-batch
        chunk = replace(Mix.prefill(mix.longest_chunk, mix.longest_prefix, model.costs.window),
                        layer_kernels=mix.layer_kernels)
        longest = max(longest, price(iteration_work(model, chunk), fabric).step)
    return replace(times, bubble=max(0.0, longest - busy))


# ---------------------------------------------------------------------------------------------------
# Attention data parallelism (Strategy.attention_dp)
# ---------------------------------------------------------------------------------------------------
#
# SGLang --enable-dp-attention (python/sglang/srt/layers/dp_attention.py), TensorRT-LLM enable_attention_dp
# (docs/source/blogs/tech_blog/blog4_Scaling_Expert_Parallelism_in_TensorRT-LLM.md), vLLM --data-parallel-size
# with --enable-expert-parallel: the replica's tp devices form D attention ranks of tp/D devices; each rank runs
# its own requests through attention (and the dense MLPs, shared experts, embedding and LM head, replicated per
# rank: TensorRT-LLM's tensorrt_llm/_torch/models/modeling_deepseekv3.py, DeepseekV3DecoderLayer._compute_mlp_tp_size:
# "If using attention DP, the MLP also uses DP instead of TP", mlp_tp_size = 1), with its own KV cache;
# at every MoE layer the ranks' tokens meet: each device gathers every rank's hidden states, runs its 1/ep of
# the experts on all of them, and reduce-scatters the outputs back (TensorRT-LLM's AllGatherReduceScatter,
# tensorrt_llm/_torch/modules/fused_moe/communication/allgather_reducescatter.py at 0f39b2d7, the fallback
# "that always works" and the only method without MNNVL or DeepEP: communication_factory.py; SGLang's
# dp_gather / dp_scatter in dp_attention.py alike). So the ranks run in lockstep, layer by layer, and one
# iteration takes the slowest rank's own work plus the experts over all ranks' tokens plus the exchange
# (TensorRT-LLM's docs/source/blogs/tech_blog/blog10_ADP_Balance_Strategy.md at 011cfc2c: "the execution time for
# the Attention module in any given iteration is bounded by the rank with the highest workload").

EXCHANGE_COMBINE_BYTES = 2
# the reduce-scatter carries the experts' outputs in the activation type, bfloat16 (TensorRT-LLM's combine of
# `final_hidden_states`); the gather carries the inputs in the layer GEMMs' type (post-quant dispatch: FP8 for a
# float8 model, allgather_reducescatter.py: "AllGather ALWAYS supports post-quant dispatch")


def attention_rank_plan(plan: Plan) -> Plan:
    """One attention-DP rank's plan: tp / attention_dp devices, the attention_dp ranks as dp, the experts' ep and
    etp as the replica's (Megatron-Core's expert grid carved from tp x dp, which is what the replica is)."""
    d = plan.attention_dp
    return replace(plan, tp=plan.tp // d, dp=d, attention_dp=1, zero=0)


def exchange_bytes(tokens: float, hidden: int, dispatch_elem: float, combine_elem: float = EXCHANGE_COMBINE_BYTES
                   ) -> tuple[float, float]:
    """The gathered buffer of one MoE layer's dispatch all-gather and the buffer its combine reduce-scatters, bytes
    (the whole buffer, collectives' convention): every rank's `tokens` (summed over the attention-DP ranks) x hidden,
    at dispatch_elem and combine_elem bytes an element."""
    return tokens * hidden * dispatch_elem, tokens * hidden * combine_elem


def dispatch_element_bytes(workload: "Workload", rates: Rates) -> float:
    """Bytes of one element the exchange's all-gather carries: post-quant dispatch, the experts' GEMM inputs as
    quantized (FP8 1 byte, NVFP4 4.5 bits with its scales: precision.quantized_element_bytes) where the device runs
    the quantized GEMMs (`rates.gemm`), else the activation type (a weight-only float4 runs 16-bit GEMMs)."""
    if precision.is_quantized(workload) and rates.gemm is not None:
        return precision.quantized_element_bytes(workload)
    return DTYPE_BYTES[workload.dtype]


def attention_dp_times(model: IterationModel, ranks: tuple[Mix, ...]) -> StepTimes:
    """One lockstep iteration of the D attention-DP ranks (their mixes `ranks`, D of them): the slowest rank's own
    work (attention, dense layers, head on tp/D devices: `attention_rank_plan`) with, in every MoE layer, the
    routed experts of all ranks' tokens on the replica's plan (`_experts` of the sum: tp x ep devices share them)
    and the exchange (an all-gather and a reduce-scatter of all ranks' tokens over the tp devices,
    `exchange_bytes`). Seconds; one pricing path: each rank is costmodel.step.price of its `iteration_work`."""
    plan = model.plan
    if plan.pp != 1 or len(ranks) != plan.attention_dp:
        raise ValueError(f"attention data parallelism prices pp 1 and attention_dp={plan.attention_dp} rank mixes "
                         f"(got pp {plan.pp}, {len(ranks)} mixes)")
    total = functools.reduce(lambda a, b: a + b, ranks)
    share = model.stage_moe_shares[0]
    seconds = _experts(model, total, model.rates, share)
    comms: tuple[Comm, ...] = ()
    spec = model.workload.model
    if spec.moe is not None and share > 0 and total.tokens > 0:
        gather, scatter = exchange_bytes(total.tokens, spec.hidden, dispatch_element_bytes(model.workload, model.rates))
        comms = (Comm("all-gather", gather * share, model.groups.tp), Comm("reduce-scatter", scatter * share,
                                                                           model.groups.tp))
    rank_model = model.rank_model
    fabric = model.cluster.fabric
    worst: StepTimes | None = None
    for mix in dict.fromkeys(ranks):          # alike ranks priced once
        times = price(iteration_work(rank_model, mix, (seconds, comms)), fabric)
        if worst is None or times.step > worst.step:
            worst = times
    assert worst is not None
    return worst


# ---------------------------------------------------------------------------------------------------
# Speculative decoding's draft passes (serving.speculative; llmsim.serving.speculative draws the acceptance)
# ---------------------------------------------------------------------------------------------------

def draft_head_model(model: IterationModel, layers: int) -> IterationModel:
    """The draft head of MTP or EAGLE on the target's replica: `layers` transformer layers of the target's width
    (its mean layer: the target's per-token costs per layer, the same plan), the shared embedding lookup and the
    shared LM head. DeepSeek-V3's MTP module is one transformer block with the main model's embedding and output
    head (DeepSeek-V3 report, Sec. 2.2: "the embedding layer and the output head ... shared with the main model");
    EAGLE's draft is one decoder layer over the target's features with the target's LM head (Li et al. 2024, EAGLE,
    Sec. 3; vLLM's vllm/model_executor/models/llama_eagle.py `EagleLlamaForCausalLM`: num_hidden_layers 1,
    lm_head shared); TensorRT-LLM's "MTP Eagle", its default path for DeepSeek-V3/R1, calls the one MTP module K
    times for K draft tokens, embedding and output head shared with the main model
    (docs/source/blogs/tech_blog/blog2_DeepSeek_R1_MTP_Implementation_and_Optimization.md, "MTP Eagle", "MTP
    Modules"). pp 1 only (the spec block refuses pp > 1)."""
    if model.plan.pp != 1:
        raise ValueError(f"a draft head is priced at pp 1 (got pp {model.plan.pp})")
    return replace(model, draft_layers=layers)


def draft_pass_mix(mix: Mix, k: int) -> Mix:
    """One of the k draft passes over the decoding sequences of `mix`, each one new token per sequence attending
    its cache: the keys at the mean of the k passes (pass j, 0-based, attends j more keys than the sequence's
    decode_keys, so the mean adds (k - 1) / 2 per sequence; attention is linear in the keys apart from the
    roofline's max). The draft proposes one chain (SGLang --speculative-eagle-topk 1, vLLM's EAGLE proposer)."""
    seqs = mix.decode_seqs
    if seqs <= 0:
        return Mix()
    more = seqs * (k - 1) / 2
    return Mix(decode_seqs=seqs, decode_keys=mix.decode_keys + more, rows=seqs,
               window_keys=mix.window_keys + more if mix.window_keys else 0)


def draft_times(draft: IterationModel, mix: Mix, k: int, ranks: tuple[Mix, ...] = ()) -> StepTimes:
    """The k sequential draft passes of one speculative iteration (seconds, StepTimes's parts each k times one
    pass): every decoding sequence of `mix` proposes k tokens one after the other, each pass a decode step of the
    draft (`draft_pass_mix`) on `draft`, a draft head (draft_head_model) or a draft model's own IterationModel.
    `ranks`: the attention-DP ranks' mixes (attention_dp_times). A mix with no decoding sequence drafts nothing."""
    if mix.decode_seqs <= 0:
        return StepTimes(0.0, 0.0, 0.0, 0.0)
    one = iteration_times(draft, draft_pass_mix(mix, k), tuple(draft_pass_mix(r, k) for r in ranks) if ranks else ())
    return StepTimes(k * one.compute, k * one.comm, k * one.bubble, k * one.other)


def with_draft_memory(capacity: "KVCapacity", weight_bytes: float, bytes_per_token: float) -> "KVCapacity":
    """A replica's KV cache when a speculative draft lives beside the target on every device: the draft's weights
    (`weight_bytes` per device) come off the cache's memory and its own K and V (`bytes_per_token` per token per
    device) share the pool's blocks with the target's (vLLM puts the draft's attention layers in the same KV cache
    groups: vllm/v1/worker/gpu_model_runner.py `get_kv_cache_spec` walks every Attention layer of the loaded
    models, the drafter's included), so each block holds fewer tokens' worth of bytes."""
    left = capacity.kv_bytes - weight_bytes
    per_token = capacity.bytes_per_token + bytes_per_token
    blocks = capacity.blocks
    if capacity.bytes_per_token > 0 and capacity.kv_bytes > 0:
        blocks = max(0, math.floor(capacity.blocks * (left / capacity.kv_bytes)
                                   * (capacity.bytes_per_token / per_token)))
    return replace(capacity, weights_bytes=capacity.weights_bytes + weight_bytes, kv_bytes=left,
                   bytes_per_token=per_token, blocks=blocks)


def iteration_time(model: IterationModel, mix: Mix) -> float:
    """Seconds of one iteration of `mix` on the replica (0 for an empty mix)."""
    if mix.rows <= 0:
        return 0.0
    return iteration_times(model, mix).step


# ---------------------------------------------------------------------------------------------------
# The KV cache's share of a device
# ---------------------------------------------------------------------------------------------------

def forward_workspace_bytes(workload: "Workload", plan: Plan, tokens: int, rows: int) -> float:
    """Transient memory of the largest forward pass a replica runs, on one device: bytes.

    vLLM sizes its KV cache after a profile run: a dummy forward of max_num_batched_tokens tokens and a
    sampler pass over max_num_seqs rows, whose torch peak it counts with the weights as `non_kv_cache_memory`
    (vllm/v1/worker/gpu_worker.py, `determine_available_memory`; gpu_model_runner.py, `profile_run`).
    Modelled as the larger of
    * one layer's MLP working set for `tokens` rows: its input and the residual (2 x hidden), the up (and
      gate) projection's output and the activated product (ffn/tp each, gated MLPs 3 of them);
    * the logits of `rows` sequences in fp32 (FP32_LOGIT_BYTES) over vocab/tp, plus the hidden states.
    """
    spec = workload.model
    elem = DTYPE_BYTES[workload.dtype]
    ffn = (spec.ffn_hidden or 4 * spec.hidden) / plan.tp
    gated = spec.activation in ("swiglu", "geglu")
    layer = tokens * (2 * spec.hidden + (3 if gated else 2) * ffn) * elem
    logits = rows * -(-spec.vocab // plan.tp) * FP32_LOGIT_BYTES + tokens * spec.hidden * elem
    return max(layer, logits)


@dataclass(frozen=True)
class KVCapacity:
    """The KV cache of one replica: bytes per device, blocks, tokens, and what it is the leftover of."""

    device_bytes: float        # memory_bytes x memory_utilization
    weights_bytes: float       # parameters on the busiest device (costmodel.memory)
    workspace_bytes: float     # forward_workspace_bytes
    kv_bytes: float            # what is left for the cache on that device
    bytes_per_token: float     # K and V of one token on one device (its layers, its KV heads), every layer full
    block_tokens: int
    blocks: int
    layout: KVLayout = KVLayout()   # full and sliding-window layers' groups (costmodel.window.KVLayout)

    @property
    def tokens(self) -> int:
        """The longest sequence the cache holds (blocks x block_tokens without windowed layers)."""
        if self.layout.window is None:
            return self.blocks * self.block_tokens
        return self.layout.tokens_in(self.blocks, self.block_tokens)

    def misses_context(self, context_tokens: int) -> str | None:
        """Why this cache cannot serve one request of the whole context (`context_tokens`, the engine's
        max_model_len), or None when it can. An engine refuses to start then: vLLM checks at start-up that one
        max_model_len request's KV fits the cache (vllm/v1/core/kv_cache_utils.py, `check_enough_kv_cache_memory`:
        "Try increasing `gpu_memory_utilization` or decreasing `max_model_len`"), rather than reject every long
        request at run time."""
        if self.blocks == 0 or self.tokens >= context_tokens:
            return None
        return (f"the KV cache holds {self.tokens:,} tokens ({self.blocks:,} blocks of {self.block_tokens}), fewer "
                f"than one request of the model's context ({context_tokens:,} tokens): {self.kv_bytes / 1e9:.2f} GB "
                f"per device left after weights and workspace, {self.bytes_per_token * context_tokens / 1e9:.2f} GB "
                f"needed (vLLM refuses to start with such a cache); raise serving.memory_utilization, shard wider "
                f"(a strategy's tp or pp), store it in float8 (serving.kv_cache_dtype) or lower workload.model.seq_len")


def kv_bytes_per_token(costs: TokenCosts, workload: "Workload", plan: Plan) -> float:
    """K and V of one cached token on one device: its 1/pp of the layers and its KV heads (1/min(tp,
    kv_heads): replicated once tp exceeds them, as costmodel.memory's kv_cache). Multi-head latent attention:
    the whole latent on every tensor-parallel rank (ModelSpec.kv_split = 1), so tp does not grow the capacity
    in tokens beyond what its smaller weights leave."""
    spec = workload.model
    return costs.kv_bytes_per_token / plan.pp / spec.kv_split(plan.tp)


def kv_capacity(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                cluster: ClusterSpec, costs: TokenCosts, memory_utilization: float, block_tokens: int,
                max_batched_tokens: int, max_num_seqs: int, options: Options = Options()) -> KVCapacity:
    """capacity = device memory x memory_utilization - weights - workspace, on the device with the most
    weights (the stages of costmodel.memory.memory_stages), in blocks of `block_tokens` tokens.

    Weights: costmodel.memory.memory_breakdown's parameters of that stage (dp = 1: a replica). Workspace:
    forward_workspace_bytes of the largest pass the scheduler may form. vLLM: num_gpu_blocks = available
    memory // (block_size x per-token KV bytes of the worker's layers), the minimum over the workers
    (vllm/v1/core/kv_cache_utils.py). `blocks` is 0 when nothing is left (the replica cannot serve).
    """
    device = cluster.device.memory_bytes * memory_utilization
    # with attention data parallelism, one attention rank's device (its attention and dense weights over tp /
    # attention_dp, the experts over ep) holds one rank's cache: the capacity is per rank
    replica = attention_rank_plan(plan) if plan.attention_dp > 1 else replace(plan, dp=1, zero=0)
    weights = max(memory_breakdown(workload, profile, sharing, replica, options, stage, cluster.device).params
                  for stage in memory_stages(workload, replica))
    workspace = forward_workspace_bytes(workload, replica, max_batched_tokens, max_num_seqs)
    left = device - weights - workspace
    per_token = kv_bytes_per_token(costs, workload, replica)
    layout = KVLayout.of(costs.layers, costs.windowed_layers, costs.window)
    # one pool block holds block_tokens tokens of one group of layers (KVLayout: all of them without a window)
    block_bytes = per_token * block_tokens * (layout.group_layers / costs.layers if layout.group_layers else 1.0)
    blocks = max(0, math.floor(left / block_bytes)) if per_token > 0 else 0
    return KVCapacity(device_bytes=device, weights_bytes=weights, workspace_bytes=workspace, kv_bytes=left,
                      bytes_per_token=per_token, block_tokens=block_tokens, blocks=blocks, layout=layout)


def prefill_rate_bound(model: IterationModel, max_tokens: int) -> float:
    """Prompt tokens per second one replica prefills at best, an upper bound for the serving simulation's
    iterations (planner.serve uses it to prove a probe rate misses without simulating it).

    An iteration computes at most `max_tokens` prompt tokens (the scheduler's budget, or the batch of whole
    prompts a policy takes whole: the caller says which); pricing c of them
    with nothing else (no attention over their own or cached keys, one sampled row, no decodes) is a lower
    bound on any iteration that computes c prompt tokens, since every other term of `iteration_times` only adds
    time. The best c / time over c = the powers of two up to `max_tokens` and `max_tokens` itself is taken; the
    wave quantization of the GEMMs makes the per-token time wiggle between those sizes by a few percent, far
    inside the margin its caller applies (serve.PREFILL_BOUND_MARGIN). Tokens/s; ServingPriceError/
    CostModelError as iteration_times."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 (got {max_tokens})")
    sizes = {2 ** k for k in range(max_tokens.bit_length()) if 2 ** k <= max_tokens}
    sizes.add(max_tokens)
    return max(c / iteration_times(model, Mix(prefill_tokens=c, rows=1)).step for c in sorted(sizes))
