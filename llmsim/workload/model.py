"""The one Transformer every backend runs, built from a ModelSpec with random weights.

Decoder (GPT, Llama, Qwen3) or bidirectional encoder (BERT) via `causal`; learned or rotary positions;
layernorm or rmsnorm; heads of any stated width (`head_dim`, default hidden/heads: the q/k/v projections
map hidden -> heads*head_dim and the output projection heads*head_dim -> hidden) with optional per-head
q/k RMSNorm (`qk_norm`: per head as Qwen3, or over the whole projection as OLMoE); gelu, swiglu or geglu (Gemma) MLP; grouped-query attention through
`scaled_dot_product_attention(enable_gqa=True)`; dropout (training mode only) on the attention
probabilities and on the attention-out and MLP-out residual branches, as in Megatron-LM; and the parameter-sharing variants: tied embeddings,
ALBERT-style layer groups (k distinct blocks reused round-robin), and LoRA adapters over a frozen base.
Mixture-of-experts layers (`moe`) replace the MLP of the layers ModelSpec.is_moe_layer names by a router,
routed and shared experts (llmsim.workload.moe); their auxiliary load-balancing loss joins the training loss
through `Transformer.pop_aux_loss`.

Pre-norm blocks (x + attn(norm(x)); x + mlp(norm(x))) with a final norm. For BERT (post-norm in the
paper) this keeps the same parameter count: the embedding LayerNorm is replaced by the final one.

FLOPs per token of the forward pass, N non-embedding parameters, context T (Kaplan et al. 2020, Table 1):
    2*N + 2*layers*T*hidden   (causal attention halves the second term in practice)
and a training step is about three times the forward (backward = 2x forward).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmsim.config import LoraSpec, ModelSpec, lora_adapters
from llmsim.workload.moe import MoELayer

INIT_STD = 0.02  # GPT-2 / BERT initializer range


LORA_MERGE_MARK = ".lora_merge"  # module path of a LoRALinear's scale-and-add (LoRAMerge), which the trace reads


class LoRAMerge(nn.Module):
    """y[..., start:stop] += (alpha/r) * delta: LoRA's scale and add, as PEFT runs them (two elementwise passes
    over [tokens, stop - start] after the expand GEMM). A module of its own (no parameters) only so that the trace
    can tell these ops apart: a serving engine folds the scale into B and adds inside the expand GEMM
    (trace._OpRecorder._record_engine), training runs them as written."""

    def __init__(self, scaling: float) -> None:
        super().__init__()
        self.scaling = scaling

    def forward(self, y: torch.Tensor, delta: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        delta = delta * self.scaling
        if start == 0 and stop == y.shape[-1]:
            return y + delta  # the whole output (an unfused projection): PEFT's own add
        y[..., start:stop] += delta  # only this projection's columns of the fused output
        return y


class LoRALinear(nn.Module):
    """y = base(x) + (alpha/r) * x A_p^T B_p^T on the output slice of each adapted projection p, with `base`
    frozen (Hu et al. 2021, "LoRA"; one adapter per projection, as PEFT's target_modules).

    `slices` maps a projection name to its output columns [start, stop) of `base` (a fused Linear holds
    several projections: q, k, v in attn.qkv, gate and up in mlp.fc). Each adapter has A_p (r x in) and
    B_p ((stop - start) x r): r * (in + stop - start) parameters and, per token, 2 r (in + stop - start)
    forward FLOPs, exactly those of a PEFT adapter on the unfused projection. B starts at zero, so the
    adapted model starts equal to the base model.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, slices: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.slices = dict(slices)
        self.lora_a = nn.ParameterDict({p: nn.Parameter(torch.empty(rank, base.in_features)) for p in slices})
        self.lora_b = nn.ParameterDict({p: nn.Parameter(torch.zeros(stop - start, rank))
                                        for p, (start, stop) in slices.items()})
        for a in self.lora_a.values():
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.lora_merge = LoRAMerge(self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for p, (start, stop) in self.slices.items():
            y = self.lora_merge(y, F.linear(F.linear(x, self.lora_a[p]), self.lora_b[p]), start, stop)
        return y


def _norm(spec: ModelSpec) -> nn.Module:
    if spec.norm == "rmsnorm":
        return nn.RMSNorm(spec.hidden, eps=spec.norm_eps)
    return nn.LayerNorm(spec.hidden, eps=spec.norm_eps, bias=spec.bias)


class Dropout(nn.Dropout):
    """nn.Dropout through `aten.native_dropout`, the one kernel CUDA's nn.Dropout runs (read x, write y
    and a 1-byte mask; the backward reads the gradient and the mask). On CPU and on the meta device
    F.dropout decomposes into empty_like + bernoulli_ + div_ + mul instead, so calling the fused op
    directly makes the traced profile move the bytes a GPU moves. Same semantics: identity in eval mode.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return torch.native_dropout(x, self.p, True)[0]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), half-split layout as in Llama / GPT-NeoX."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)  # (T, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        # x: (B, nh, T, hs)
        t = x.shape[-2]
        cos = self.cos[start:start + t].to(x.dtype)
        sin = self.sin[start:start + t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


@dataclass
class KVCache:
    """Preallocated keys and values of one layer: (B, n_kv, T_max, hs) each. Multi-head latent attention
    (MLAttention) caches its latent instead: `k` holds c_kv (B, 1, T_max, kv_lora_rank) and `v` the shared
    rotary key k_pe (B, 1, T_max, qk_rope_head_dim), DeepSeek-V3 inference/model.py's kv_cache and pe_cache."""

    k: torch.Tensor
    v: torch.Tensor


class CoreAttention(nn.Module):
    """dropout(softmax(q k^T / sqrt(hs))) v, as its own module so that profilers can attribute its cost.

    Dropout on the attention probabilities applies in training mode only (as nn.Dropout does).

    `window` (a sliding-window layer, ModelSpec.sliding_window): a prompt's query at position i attends to keys
    i - window + 1 .. i only (Hugging Face's sliding_window mask; Beltagy et al. 2020, "Longformer"; Mistral 7B,
    Jiang et al. 2023, Sec. 2). A single decoding query gets the cached keys already cut to the window
    (Attention.forward). On the meta device (the profile's trace: shapes only) the prompt runs the causal kernel
    unmasked: a band mask would be a T x T tensor that a windowed flash kernel never reads (FlashAttention's
    `window_size`), and the trace caps the windowed layers' attention FLOPs at the window itself
    (workload.trace, `_OpRecorder.window_share`).

    `sinks` (gpt-oss's attention sinks, one learned logit per head): softmax over [q k^T / sqrt(hs), sink], the
    sink's column dropped after the softmax (transformers' GptOssAttention, eager_attention_forward), computed
    here as one extra key of zeros whose score is the sink through an additive mask column and whose value is
    zero. Cost: one more key per query and a per-head scalar, under 1% of a layer's attention at a 128-token
    window; on the meta device it is left out (not traced, not priced: say so in docs/costmodel.md).
    """

    def __init__(self, grouped: bool, dropout: float = 0.0, sink_heads: int = 0) -> None:
        super().__init__()
        self.grouped = grouped
        self.dropout = dropout
        # gpt-oss's attention sinks: one learned logit per head (transformers' GptOssAttention.sinks); a parameter
        # of this module, not an argument (a module tracker hooks the gradients of tensor arguments)
        self.sinks = nn.Parameter(torch.zeros(sink_heads)) if sink_heads else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                window: int | None = None) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        sinks = self.sinks
        tq, tk = q.shape[-2], k.shape[-2]
        banded = window is not None and is_causal and tk > window
        if q.is_meta or (not banded and sinks is None):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=p,
                                                  enable_gqa=self.grouped)
        # an explicit additive mask: causal (and the band) over the keys, then the sinks' column
        qpos = torch.arange(tk - tq, tk, device=q.device)[:, None]
        kpos = torch.arange(tk, device=q.device)[None, :]
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=q.device)
        if is_causal:
            allowed &= kpos <= qpos
        if window is not None:
            allowed &= kpos > qpos - window
        mask = torch.zeros(tq, tk, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        mask = mask.expand(q.shape[0], q.shape[1], tq, tk)
        if sinks is not None:
            zeros = k.new_zeros(*k.shape[:-2], 1, k.shape[-1])
            k, v = torch.cat((k, zeros), dim=-2), torch.cat((v, zeros), dim=-2)
            sink = sinks.to(q.dtype).view(1, -1, 1, 1).expand(q.shape[0], q.shape[1], tq, 1)
            mask = torch.cat((mask, sink), dim=-1)   # SDPA adds the mask after scaling q k^T
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, enable_gqa=self.grouped)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.heads, self.kv_heads = spec.heads, spec.kv_heads or spec.heads
        self.head_dim = spec.head_width
        self.causal = spec.causal
        self.qkv = nn.Linear(spec.hidden, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=spec.bias)
        self.out = nn.Linear(self.heads * self.head_dim, spec.hidden, bias=spec.bias)
        # Qwen3: RMSNorm over each query and each key head before rotary, one head_dim weight shared by all
        # heads (transformers' Qwen3Attention q_norm / k_norm). OLMoE: RMSNorm over the whole q and k
        # projections, weights of heads*head_dim and kv_heads*head_dim (transformers' OlmoeAttention).
        self.qk_norm_over = "projection" if spec.qk_norm == "projection" else "head"
        q_width, k_width = ((self.heads * self.head_dim, self.kv_heads * self.head_dim)
                            if self.qk_norm_over == "projection" else (self.head_dim, self.head_dim))
        self.q_norm = nn.RMSNorm(q_width, eps=spec.norm_eps) if spec.qk_norm else None
        self.k_norm = nn.RMSNorm(k_width, eps=spec.norm_eps) if spec.qk_norm else None
        self.core = CoreAttention(grouped=self.kv_heads != self.heads, dropout=spec.dropout,
                                  sink_heads=self.heads if spec.attention_sinks else 0)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding | None, cache: KVCache | None,
                start: int, window: int | None = None) -> torch.Tensor:
        """`window`: this layer's sliding window (None = the whole context). Its KV cache (KVCache, made by
        Transformer.new_cache) then holds min(length, window) slots, a ring: position p lives in slot p % slots,
        so a decoding query finds exactly the last `window` tokens there (their order does not matter to the
        softmax; rotary is applied before they are cached)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1)
        if self.qk_norm_over == "projection" and self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # (B, T, nh*hs), (B, T, n_kv*hs)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm_over == "head" and self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q, start), rope(k, start)
        is_causal = self.causal and t > 1
        if is_causal and start > 0:
            raise NotImplementedError("chunked prefill (several new tokens after a cached prefix) is not modeled")
        if cache is not None and cache.k.shape[-2] < start + t:   # a windowed layer's ring of slots
            _ring_write(cache, k, v, start)
            if not is_causal:   # one decoding token: every slot filled so far (at most the window's tokens)
                filled = min(start + t, cache.k.shape[-2])
                k, v = cache.k[:, :, :filled], cache.v[:, :, :filled]
        elif cache is not None:
            cache.k[:, :, start:start + t] = k
            cache.v[:, :, start:start + t] = v
            k, v = cache.k[:, :, :start + t], cache.v[:, :, :start + t]
            if window is not None and not is_causal and start + t > window:   # cache of the whole length
                k, v = k[:, :, -window:], v[:, :, -window:]
        # A single new token attends to every cached one (a windowed layer's: the last `window`): no mask. A
        # prompt from position 0 is causal (windowed: banded).
        y = self.core(q, k, v, is_causal, window)  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class LatentCoreAttention(CoreAttention):
    """Core attention of multi-head latent attention: the decompressed form (CoreAttention's SDPA, q and k of
    d_n + d_r per head, v of d_v) for training and prefill, and for decoding the absorbed form (DeepSeek-V2
    Sec. 2.1.2: W^UK folded into the query, W^UV applied after the weighted sum; deepseek-ai/DeepSeek-V3
    inference/model.py MLA with attn_impl "absorb"): every head scores against the one cached latent c_kv and
    shared rotary key k_pe and sums the latent rows, so the cache is read once per sequence for all heads
    (MQA-like).

    Absorbed: q_lat (B, nh, T, d_c), q_pe (B, nh, T, d_r), c_kv (B, 1, S, d_c), k_pe (B, 1, S, d_r) ->
    (B, nh, T, d_c). FLOPs per head, query row and cached token: 2 (d_c + d_r) for the scores and 2 d_c for the
    weighted sum. One module named `core` for both, so the trace counts their ops as attention."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,  # type: ignore[override]
                q_pe: torch.Tensor | None = None, k_pe: torch.Tensor | None = None,
                scale: float | None = None) -> torch.Tensor:
        if q_pe is None or k_pe is None or scale is None:
            return super().forward(q, k, v, is_causal)
        scores = (torch.matmul(q, k.transpose(-1, -2)) + torch.matmul(q_pe, k_pe.transpose(-1, -2))) * scale
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434 Sec. 2.1, eqs. 37-47; Hugging Face
    modeling_deepseek.py DeepseekV2Attention; Megatron-Core multi_latent_attention.py). With d_c = kv_lora_rank,
    d_c' = q_lora_rank, d_n = qk_nope_head_dim, d_r = qk_rope_head_dim, d_v = v_head_dim, n_h = heads:

      queries   c_q = RMSNorm(x W^DQ) (hidden -> d_c'), q = c_q W^UQ (d_c' -> n_h (d_n + d_r));
                without q_lora_rank one direct projection hidden -> n_h (d_n + d_r) (DeepSeek-V2-Lite)
      keys/vals [c_kv, k_pe] = x W^DKV (hidden -> d_c + d_r; k_pe one rotary key shared by all heads),
                c_kv = RMSNorm(c_kv), [k_nope, v] = c_kv W^UKV (d_c -> n_h (d_n + d_v))
      attention q and k of d_n + d_r per head (k_pe broadcast to every head), v of d_v; out n_h d_v -> hidden.

    Training and prefill run this decompressed form (q_b / kv_b are plain GEMMs, then SDPA); a prefill writes
    only [c_kv, k_pe] to the cache. A decode step (one new token against the cache) runs the absorbed form
    (LatentCoreAttention): q_nope W^UK per head into the latent, attention over the latent, then W^UV and the
    out projection. Biases follow HF's attention_bias on the down- and out projections (none on q_b, kv_b)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        assert spec.mla is not None
        m = spec.mla
        self.heads, self.kv_heads = spec.heads, spec.heads
        self.nope, self.rope_dim, self.v_dim, self.kv_lora = (m.qk_nope_head_dim, m.qk_rope_head_dim,
                                                              m.v_head_dim, m.kv_lora_rank)
        self.scale = m.qk_head_dim ** -0.5
        q_width = self.heads * m.qk_head_dim
        if m.q_lora_rank is None:
            self.q_a = self.q_a_norm = None
            self.q_b = nn.Linear(spec.hidden, q_width, bias=spec.bias)
        else:
            self.q_a = nn.Linear(spec.hidden, m.q_lora_rank, bias=spec.bias)
            self.q_a_norm = nn.RMSNorm(m.q_lora_rank, eps=spec.norm_eps)
            self.q_b = nn.Linear(m.q_lora_rank, q_width, bias=False)
        self.kv_a = nn.Linear(spec.hidden, m.cache_width, bias=spec.bias)
        self.kv_a_norm = nn.RMSNorm(m.kv_lora_rank, eps=spec.norm_eps)
        self.kv_b = nn.Linear(m.kv_lora_rank, self.heads * (m.qk_nope_head_dim + m.v_head_dim), bias=False)
        self.out = nn.Linear(self.heads * m.v_head_dim, spec.hidden, bias=spec.bias)
        self.core = LatentCoreAttention(grouped=False, dropout=spec.dropout)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding | None, cache: KVCache | None,
                start: int, window: int | None = None) -> torch.Tensor:
        """`window`: always None (config refuses sliding_window with mla); taken for Block's call."""
        b, t, _ = x.shape
        h = self.heads
        q = self.q_b(x if self.q_a is None or self.q_a_norm is None else self.q_a_norm(self.q_a(x)))
        q = q.view(b, t, h, self.nope + self.rope_dim).transpose(1, 2)            # (B, nh, T, d_n + d_r)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        c_kv, k_pe = self.kv_a(x).split([self.kv_lora, self.rope_dim], dim=-1)
        c_kv = self.kv_a_norm(c_kv).unsqueeze(1)                                   # (B, 1, T, d_c)
        k_pe = k_pe.unsqueeze(1)                                                   # (B, 1, T, d_r)
        if rope is not None:
            q_pe, k_pe = rope(q_pe, start), rope(k_pe, start)
        if cache is not None:
            cache.k[:, :, start:start + t] = c_kv
            cache.v[:, :, start:start + t] = k_pe
        if cache is not None and start > 0:
            if t > 1:
                raise NotImplementedError("chunked prefill (several new tokens after a cached prefix) is not "
                                          "modeled")
            # absorbed decode: W^UK into the query, attention over the latent, W^UV after the weighted sum
            w = self.kv_b.weight.view(h, self.nope + self.v_dim, self.kv_lora)
            q_lat = torch.einsum("bhtd,hdc->bhtc", q_nope, w[:, :self.nope])
            c_kv_all = cache.k[:, :, :start + t]
            lat = self.core(q_lat, c_kv_all, c_kv_all, False, q_pe, cache.v[:, :, :start + t], self.scale)
            y = torch.einsum("bhtc,hvc->bhtv", lat, w[:, self.nope:])              # (B, nh, T, d_v)
        else:
            kv = self.kv_b(c_kv.squeeze(1)).view(b, t, h, self.nope + self.v_dim).transpose(1, 2)
            k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
            k = torch.cat((k_nope, k_pe.expand(b, h, t, self.rope_dim)), dim=-1)
            y = self.core(torch.cat((q_nope, q_pe), dim=-1), k, v, t > 1)          # causal: every MLA is a decoder
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


def _ring_write(cache: KVCache, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
    """Store the K and V of positions start .. start + t - 1 into a ring of `slots` slots (slot = position %
    slots): only the last `slots` of them survive, written as at most two contiguous slices."""
    slots, t = cache.k.shape[-2], k.shape[-2]
    first = max(start, start + t - slots)        # the oldest position kept
    src = first - start
    n = start + t - first
    s0 = first % slots
    head = min(n, slots - s0)
    cache.k[:, :, s0:s0 + head] = k[:, :, src:src + head]
    cache.v[:, :, s0:s0 + head] = v[:, :, src:src + head]
    if n > head:
        cache.k[:, :, :n - head] = k[:, :, src + head:src + n]
        cache.v[:, :, :n - head] = v[:, :, src + head:src + n]


class MLP(nn.Module):
    """The block's MLP of width `ffn` (default the model's ffn_hidden; an expert's own width in MoE layers)."""

    def __init__(self, spec: ModelSpec, ffn: int | None = None) -> None:
        super().__init__()
        ffn = ffn or spec.ffn_hidden or 4 * spec.hidden
        # Gated MLPs (Shazeer 2020, "GLU Variants Improve Transformer"): swiglu (Llama, Qwen) gates with SiLU,
        # geglu (Gemma) with tanh-approximated GELU. Gate and up projections are fused into one matmul
        # (same parameters as Llama's w1, w3 / Gemma's gate_proj, up_proj).
        self.gated = spec.activation in ("swiglu", "geglu")
        self.gate_act = F.silu if spec.activation == "swiglu" else functools.partial(F.gelu, approximate="tanh")
        self.fc = nn.Linear(spec.hidden, 2 * ffn if self.gated else ffn, bias=spec.bias)
        self.proj = nn.Linear(ffn, spec.hidden, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.gate_act(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.proj(h)


class Block(nn.Module):
    """x + dropout(attn(norm(x))), then x + dropout(mlp(norm(x))): Megatron-LM's hidden dropout on both
    residual branches. With dropout 0 (every preset) there are no dropout modules and no ops. `moe`: the
    MLP is a mixture of experts (llmsim.workload.moe.MoELayer).

    `spec.parallel_block`: x + dropout(attn(norm(x)) + mlp(norm(x))) with one norm, the same normed input for
    both branches (Wang & Komatsuzaki 2021, GPT-J; Chowdhery et al. 2022, PaLM Sec. 2 "Parallel Layers";
    MaxText MaxText/layers/models.py DecoderLayer at 76bd53b0: one dropout on the sum)."""

    def __init__(self, spec: ModelSpec, moe: bool = False) -> None:
        super().__init__()
        self.norm1 = _norm(spec)
        self.attn: nn.Module = MLAttention(spec) if spec.mla is not None else Attention(spec)
        self.norm2 = None if spec.parallel_block else _norm(spec)
        self.mlp: nn.Module = MoELayer(spec, MLP) if moe else MLP(spec)
        # No modules at all without dropout: the traced module tree (and every profile) stays as it was.
        self.drop_attn = Dropout(spec.dropout) if spec.dropout > 0 else None
        self.drop_mlp = Dropout(spec.dropout) if spec.dropout > 0 and not spec.parallel_block else None

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding | None, cache: KVCache | None,
                start: int, window: int | None = None) -> torch.Tensor:
        if self.norm2 is None:  # parallel block: both branches read one normed input, summed
            h = self.norm1(x)
            y = self.attn(h, rope, cache, start, window=window) + self.mlp(h)
            return x + (self.drop_attn(y) if self.drop_attn is not None else y)
        y = self.attn(self.norm1(x), rope, cache, start, window=window)
        x = x + (self.drop_attn(y) if self.drop_attn is not None else y)
        y = self.mlp(self.norm2(x))
        return x + (self.drop_mlp(y) if self.drop_mlp is not None else y)


class Transformer(nn.Module):
    """Embeddings, `layers` applications of (possibly shared) blocks, final norm, LM head."""

    def __init__(self, spec: ModelSpec, *, tie_embeddings: bool, layer_groups: int | None = None,
                 lora: LoraSpec | None = None, max_positions: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.tok_emb = nn.Embedding(spec.vocab, spec.hidden)
        self.pos_emb = nn.Embedding(spec.max_positions or spec.seq_len, spec.hidden) \
            if spec.positions == "learned" else None
        self.type_emb = nn.Embedding(spec.type_vocab, spec.hidden) if spec.type_vocab else None
        rope_width = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.head_width
        self.rope = RotaryEmbedding(rope_width, max_positions or spec.seq_len) \
            if spec.positions == "rotary" else None
        distinct = layer_groups or spec.layers
        self.blocks = nn.ModuleList(Block(spec, moe=spec.is_moe_layer(i)) for i in range(distinct))
        self.norm_f = _norm(spec)
        self.lm_head = nn.Linear(spec.hidden, spec.vocab, bias=False)
        self.apply(_init_weights)
        if tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if lora is not None:
            self._add_lora(lora)

    def _add_lora(self, lora: LoraSpec) -> None:
        """Freeze every base weight, then wrap each Linear holding targeted projections with one trainable
        adapter per projection (`lora_adapters`: q, k, v slices of attn.qkv; gate, up slices of mlp.fc)."""
        self.requires_grad_(False)
        by_module: dict[str, dict[str, tuple[int, int]]] = {}
        for a in lora_adapters(self.spec, lora.targets):  # ValueError naming the allowed targets
            by_module.setdefault(a.module, {})[a.name] = (a.start, a.start + a.out_features)
        for block in self.blocks:
            for module, slices in by_module.items():
                parent_name, child = module.split(".")
                parent = getattr(block, parent_name)
                setattr(parent, child, LoRALinear(getattr(parent, child), lora.rank, lora.alpha, slices))

    def moe_modules(self) -> list[MoELayer]:
        """The distinct MoE layers (a shared block's counts once)."""
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def pop_aux_loss(self, keep_last: int | None = None) -> float:
        """The values of the auxiliary load-balancing losses of the MoE forwards since the last call, summed
        (0 for a dense model, in eval mode and on the meta device), and forgotten: the training step reports
        them with its loss (their gradient enters through the layers: moe.AuxLossAutoScaler). `keep_last`: of
        each layer only its last n forwards (MoELayer.settle)."""
        return sum(m.settle(keep_last) for m in self.moe_modules())

    def set_aux_grad_scale(self, scale: float) -> None:
        """The gradient every MoE layer's aux loss gets in backward (1 / micro-batches, as the main loss)."""
        for m in self.moe_modules():
            m.aux_grad_scale = scale

    def block_for_layer(self, layer: int) -> Block:
        """Layer i uses block i mod k: round-robin sharing of k distinct weight sets (k = layers: none)."""
        return self.blocks[layer % len(self.blocks)]  # type: ignore[return-value]

    def new_cache(self, batch: int, length: int, dtype: torch.dtype, device: torch.device | str,
                  kv_heads: int | None = None) -> list[KVCache]:
        """Empty KV caches of every layer for `length` positions. `kv_heads`: the KV heads one device holds
        (a tensor-parallel rank's share); default all of the model's. A windowed layer (ModelSpec.
        is_windowed_layer) keeps min(length, sliding_window) slots, a ring (Attention.forward): a serving engine
        keeps only the window's tokens for it (vLLM V1's SlidingWindowManager.remove_skipped_blocks). Multi-head
        latent attention: the latent c_kv and the shared rotary key of every token (KVCache), whole on every rank
        whatever `kv_heads`."""
        mla = self.spec.mla
        if mla is not None:
            return [KVCache(torch.empty(batch, 1, length, mla.kv_lora_rank, dtype=dtype, device=device),
                            torch.empty(batch, 1, length, mla.qk_rope_head_dim, dtype=dtype, device=device))
                    for _ in range(self.spec.layers)]
        kv = kv_heads or self.spec.kv_heads or self.spec.heads
        hs = self.spec.head_width
        caches = []
        for layer in range(self.spec.layers):
            window = self.layer_window(layer)
            n = length if window is None else min(length, window)
            caches.append(KVCache(torch.empty(batch, kv, n, hs, dtype=dtype, device=device),
                                  torch.empty(batch, kv, n, hs, dtype=dtype, device=device)))
        return caches

    def layer_window(self, layer: int) -> int | None:
        """The sliding window layer `layer` attends over (None: the whole context)."""
        return self.spec.sliding_window if self.spec.is_windowed_layer(layer) else None

    # -- the forward in pieces: a pipeline stage runs some of them (llmsim.distributed.parallelize) ----
    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token ids (B, T) at positions start.. -> the residual stream (B, T, hidden): token embeddings plus
        learned position and token-type embeddings where the model has them."""
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            positions = torch.arange(start, start + idx.shape[1], device=idx.device)
            x = x + self.pos_emb(positions)
        if self.type_emb is not None:
            x = x + self.type_emb(torch.zeros_like(idx))
        return x

    def run_layers(self, x: torch.Tensor, layers: range, cache: list[KVCache] | None = None,
                   start: int = 0) -> torch.Tensor:
        """The residual stream through layers `layers` (indices 0..spec.layers-1; shared blocks repeat)."""
        for layer in layers:
            x = self.block_for_layer(layer)(x, self.rope, cache[layer] if cache else None, start,
                                            self.layer_window(layer))
        return x

    def final(self, x: torch.Tensor, head: Literal["all", "last", "none"] = "all",
              lm_head: nn.Module | None = None) -> torch.Tensor:
        """Final norm, then the LM head on every position ('all'), the last one ('last') or none (hidden
        states). `lm_head`: another head module to apply (a pipeline stage's copy of a tied head)."""
        x = self.norm_f(x)
        if head == "none":
            return x
        return (self.lm_head if lm_head is None else lm_head)(x[:, -1:] if head == "last" else x)

    def forward(self, idx: torch.Tensor, cache: list[KVCache] | None = None, start: int = 0,
                head: Literal["all", "last", "none"] = "all") -> torch.Tensor:
        """Token ids idx (B, T) from position `start` -> logits (B, T, vocab) with head='all'; the last
        position's logits (B, 1, vocab) with head='last' (serving); final hidden states with head='none'."""
        x = self.run_layers(self.embed(idx, start), range(self.spec.layers), cache, start)
        return self.final(x, head)


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation (normal, std INIT_STD; zero biases). Nothing on the meta device: a meta tensor holds
    no values to draw, and drawing them anyway runs torch's reference decomposition of normal_ per tensor (14 of
    the 24 s that DeepSeek-V3's 44,544 expert projections took to build there, measured)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_meta:
        return
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, CoreAttention) and module.sinks is not None:
        # transformers' GptOssPreTrainedModel._init_weights: the sinks drawn like the weights (initializer_range)
        nn.init.normal_(module.sinks, mean=0.0, std=INIT_STD)


def build_model(spec: ModelSpec, *, tie_embeddings: bool, layer_groups: int | None = None,
                lora: LoraSpec | None = None, max_positions: int | None = None) -> Transformer:
    """The one constructor every backend and the profiler use. Build under `torch.device('meta')` to trace."""
    return Transformer(spec, tie_embeddings=tie_embeddings, layer_groups=layer_groups, lora=lora,
                       max_positions=max_positions)


def count_active_parameters(model: Transformer) -> int:
    """Parameters one token touches: every unique parameter but the routed experts it is not sent to, i.e.
    total - sum over MoE layers of (E - k)/E of their routed-expert parameters (non-expert, top-k routed and
    shared experts remain; Mixtral's "12.9B active of 46.7B"). = the total for a dense model."""
    total, _ = count_parameters(model)
    for m in model.moe_modules():
        total -= m.expert_params() * (m.num_experts - m.top_k) // m.num_experts
    return total


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(unique, trainable) parameter counts; shared tensors count once."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    return total, trainable
