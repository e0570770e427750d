"""Activation memory: the tensors one Transformer layer keeps for its backward pass, derived from its shape.

Each op of the layer keeps what its backward reads (PyTorch `tools/autograd/derivatives.yaml`; Megatron-LM's
custom autograd functions). The inventory below lists them for llmsim's pre-norm block (workload/model.py)
as a 16-bit training stack runs it on an accelerator; per token of a micro-batch, before parallelism, with
e = bytes of the workload dtype (2 for bfloat16/float16), h = hidden, a = heads, g = kv_heads, d = head_dim,
f = ffn_hidden, s = seq_len, r = LoRA rank:

    op                      keeps                                          elements        bytes  split
    norm1                   its input (the layer input)                    h               e      sequence
                            mean and rstd (LayerNorm) / rstd (RMSNorm)     2 / 1           4      sequence
    QKV linear              its input (norm1's output)                     h               e      sequence
    q/k norm (qk_norm)      pre-norm q, k and their rstd                   (a+g)d, a+g     e, 4   tensor / kv
    core attention          the attention kernel's set (below)
    out linear              its input (the attention output O)             a d             e      tensor
    hidden dropout          1-byte mask                                    h               1      sequence
    norm2                   its input, statistics                          h; 2 / 1        e; 4   sequence
    fc linear               its input (norm2's output)                     h               e      sequence
    gelu / swiglu, geglu    its input (the fc output)                      f / 2f          e      tensor
    proj linear             its input (the activation output)              f               e      tensor
    hidden dropout          1-byte mask                                    h               1      sequence

The attention kernel (Options.attention):
* flash, cudnn, flash3 (FlashAttention-2, Dao 2023, PyTorch `_scaled_dot_product_flash_attention`; cuDNN's
  fused attention, Transformer Engine's FusedAttention and `_scaled_dot_product_cudnn_attention`;
  FlashAttention-3), the fused kernels, keep alike: Q (a d), K and V
  (g d each: grouped-query attention natively), the output O (the out linear's input, the same tensor) and
  the fp32 logsumexp of each query row (a per token); attention dropout regenerates its mask from the
  Philox RNG state (two 8-byte integers per layer). No s x s tensor.
* fused-softmax (Megatron-LM's unfused core attention, megatron/core/transformer/dot_product_attention.py:
  baddbmm, FusedScaleMaskSoftmax, attention dropout, bmm): Q and K for Q K^T, the softmax output (a s per
  token, e bytes), with dropout its 1-byte mask and the dropped probabilities (a s, e), and V for the second
  bmm. Grouped-query K and V are expanded to a heads first (`repeat_interleave`), so the bmms keep a d each.
* math (PyTorch's eager `_scaled_dot_product_attention_math`, aten/src/ATen/native/transformers/attention.cpp):
  16-bit q, k, v are upcast to fp32 (unless `allowFP16BF16ReductionMathSDP`), q and the (expanded) k are
  scaled by sqrt(scale) into new tensors, so it keeps fp32 q, k, v (a d each), the fp32 softmax output
  (a s), and with dropout the mask (at::dropout on CUDA is `native_dropout`, a bool mask:
  aten/src/ATen/native/Dropout.cpp `is_fused_kernel_acceptable`) and the fp32 dropped probabilities.

Recomputation (Plan.recompute): `selective` checkpoints the core attention (Megatron-LM
`recompute_granularity=selective`): its inputs Q, K, V are kept, everything else it saved is recomputed
during the backward; `full` keeps only each layer's input and rebuilds the layer's whole set during its
backward. `selective-op` is torchtitan's op-level selective activation checkpointing
(`activation_checkpoint.mode = "selective"`, `selective_ac_option = "op"`; torchtitan 9dec370
torchtitan/parallelisms/parallelize_llama.py `_save_list` and `_custom_policy`, unchanged at 820504e in
torchtitan/models/llama3/parallelize_llama.py): each block runs under torch.utils.checkpoint with a policy
that caches the outputs of `aten.mm` (except every second one: the 2nd, 4th, ... mm of the block),
`_scaled_dot_product_flash_attention` / `_efficient_attention`, `_c10d_functional.reduce_scatter_tensor`
and `max` (abs/max: FP8 scales, scalars, left out), and recomputes every other op in the backward. The
block's mm order is torchtitan's Llama (models/llama/model.py: wq, wk, wv, then wo; FeedForward
w2(silu(w1(x)) * w3(x)): w1, w3, w2), so `OP_SAC_ORDER` q k v o gate up down (GELU: q k v o up down)
keeps q, v, gate, down (GELU: q, v, up) and recomputes k, o, up (GELU: k, o, down). Kept: the block's
input (the checkpoint's input), those outputs (a row-parallel projection's output is the partial sum over
tensor parallelism, h per token on every rank, whole), the flash kernel's outputs (O, logsumexp, RNG state)
and, with sequence parallelism, the reduce-scatters' outputs after wo and w2 (h per token, sequence
split). While one layer's backward runs, its recomputed forward rebuilds what `none` keeps.
`selective-dots` is JAX's `jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims` (MaxText
`remat_policy: minimal`, MaxText/layers/models.py at 76bd53b0): inside each scanned, rematerialized layer
only the outputs of dots without batch dimensions are saved, i.e. the weight projections' outputs the backward
reads (q, k, v, MLP up (gate and up when gated), attention-out in a sequential block; `dots_inventory`), plus the
layer's input (the scan carry); the
attention (its QK^T and PV are batched dots, a flash kernel is no dot at all) and every elementwise op
(norms, rotary, activation, residual adds) are recomputed in the backward (`dots_inventory`). The
projections' outputs lie in the sharding MaxText constrains them to: q, k, v and the MLP hidden split over
the tensor axis (`activation_heads`, `activation_mlp`), attention-out and down on the residual stream
(`activation_embed` on the tensor axis: `sequence` here, split with sp). While one layer's backward runs,
its recomputed forward rebuilds the rest of what `none` keeps.

Splits over tensor parallelism t (Shoeybi et al. 2019, Megatron-LM): `tensor` tensors lie inside the
column/row-parallel region and divide by t; `kv` tensors divide by min(t, g) (a rank keeps a whole KV head
once t > g); `sequence` tensors (the residual stream, the norms, the hidden-dropout masks, the inputs of the
column-parallel QKV and fc linears) are whole on every rank, and divide by t with sequence parallelism
(Megatron's `LinearWithGradAccumulationAndAsyncCommunication` keeps its sequence-parallel shard of the input
and all-gathers it again in the backward, megatron/core/tensor_parallel/layers.py); `whole` tensors never
divide. Context parallelism divides every token's share by cp.

For a GPT layer (LayerNorm, GELU MLP with f = 4h, a d = h, dropout) in 16-bit this gives, per micro-batch of
b sequences and before parallelism: fused-softmax 34 s b h + 5 a s^2 b bytes (2 s b h + 3 a s^2 b of them
dropout's), selective 34 s b h, flash 34 s b h + 4 a s b, plus 16 s b bytes of LayerNorm statistics in each;
with t and without sequence parallelism the 10 s b h of the `sequence` tensors stay whole (tests/costmodel/
test_activations.py checks every combination against these closed forms).

A parallel block (`parallel_block`: attention and MLP read norm1's output, their outputs summed) has no norm2:
no norm2 input, statistics or output, the fc linear keeps norm1's output (the same tensor as the QKV linear's),
and one hidden-dropout mask on the branches' sum instead of two.

Not modeled: storage aliasing (eager PyTorch keeping a whole fused QKV output alive through a view of V),
RoPE's cos/sin tables (constants, not per layer), and the memory a framework frees and reuses during the
backward; the traced module (WorkloadProfile.activation_bytes_per_layer) is the cross-check of the math
kernel's inventory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llmsim.config import lora_adapters
from llmsim.costmodel.gemms import mlp_width
from llmsim.costmodel.plan import FUSED_ATTENTION

if TYPE_CHECKING:
    from llmsim.config import LoraSpec, ModelSpec
    from llmsim.costmodel.plan import AttentionKernel, Plan

Split = Literal["sequence", "tensor", "kv", "whole"]
Per = Literal["token", "position", "layer"]
Recompute = Literal["none", "selective", "selective-op", "selective-dots", "full"]

# Normalization statistics, flash attention's logsumexp and the loss's log-probabilities are fp32 whatever the
# workload dtype (aten native_layer_norm / _fused_rms_norm return them in the accumulate type; FlashAttention-2's
# softmax_lse is float; Megatron's vocab_parallel_cross_entropy and llmsim's step upcast the logits).
FP32_BYTES = 4
# A dropout mask is one bool per element (aten native_dropout's second output; Megatron-LM's fused
# bias-dropout-add keeps the same mask).
MASK_BYTES = 1
# A linear's FP8 input copy under Transformer Engine (E4M3, Micikevicius et al. 2022; costmodel.precision).
FP8_INPUT_BYTES = 1
# Token, position and target ids are int64 (torch.long), kept by the embedding and the loss for their backward.
INDEX_BYTES = 8
# Flash attention with dropout keeps the Philox seed and offset instead of a mask: two 8-byte integers
# (PyTorch _scaled_dot_product_flash_attention's philox_seed and philox_offset; FlashAttention-2's rng_state).
RNG_STATE_BYTES = 2 * 8
# torchtitan's Llama block issues its linear projections as separate aten.mm calls in this order (wq, wk, wv,
# wo; w1 = gate, w3 = up, w2 = down), and its op-level SAC policy keeps the 1st, 3rd, 5th, ... of them
# (parallelize_llama.py `_custom_policy`: `to_save = func in _save_list and not (func == mm and count % 2 == 0)`
# with the count incremented before the test). A GELU MLP (up = fc, down = proj) has one mm fewer.
OP_SAC_ORDER_GATED = ("q", "k", "v", "o", "gate", "up", "down")
OP_SAC_ORDER_PLAIN = ("q", "k", "v", "o", "up", "down")


@dataclass(frozen=True)
class SavedTensor:
    """One tensor kept for the backward pass: `elements` per token (or per position of the sequence, or per
    layer), `bytes_per_element` each, and how tensor parallelism splits it (`split`, module docstring)."""

    name: str
    elements: float
    bytes_per_element: float
    split: Split
    per: Per = "token"

    def bytes(self, spec: "ModelSpec", plan: "Plan") -> float:
        """Bytes of this tensor on one device for one micro-batch of `plan.micro_batch` sequences."""
        if self.per == "layer":
            return float(self.elements * self.bytes_per_element)
        count = spec.seq_len * (plan.micro_batch if self.per == "token" else 1) / plan.cp
        divisor = {"sequence": plan.tp if plan.sp else 1, "tensor": plan.tp,
                   "kv": min(plan.tp, spec.kv_heads or spec.heads), "whole": 1}[self.split]
        return count * self.elements * self.bytes_per_element / divisor


@dataclass(frozen=True)
class Save:
    """`op` keeps `tensor` for its backward; `in_core`: the op is part of the core attention (what selective
    recomputation checkpoints)."""

    op: str
    tensor: SavedTensor
    in_core: bool = False


def _norm_stats(spec: "ModelSpec", name: str) -> SavedTensor:
    """LayerNorm keeps mean and rstd per token, RMSNorm rstd only (derivatives.yaml: native_layer_norm's
    result1, result2; _fused_rms_norm's result1)."""
    return SavedTensor(f"{name}.stats", 2 if spec.norm == "layernorm" else 1, FP32_BYTES, "sequence")


def _core_saves(spec: "ModelSpec", kernel: "AttentionKernel", e: int,
                fp8_attention: tuple[float, float] | None = None) -> list[Save]:
    """What the core attention (softmax(q k^T / sqrt(d)) v, with attention dropout) keeps, by kernel.
    `fp8_attention`: (bytes of q, k, v; bytes of O) a fused kernel keeps under FP8 attention (Transformer Engine's
    FusedAttnFunc saves q_fp8, k_fp8, v_fp8 and O as out_fp8 or 16-bit: costmodel.precision); None = `e`."""
    a, g, d, s = spec.heads, spec.kv_heads or spec.heads, spec.head_width, spec.seq_len
    vd = spec.mla.v_head_dim if spec.mla is not None else d   # mla: q/k of nope + rope, v of v_head_dim
    dropout = spec.dropout > 0
    q, k, v = (SavedTensor("q", a * d, e, "tensor"), SavedTensor("k", g * d, e, "kv"),
               SavedTensor("v", g * vd, e, "kv"))
    if kernel in FUSED_ATTENTION:  # FlashAttention-2/3 and cuDNN's fused attention keep the same tensors
        op = f"{kernel} attention"
        o_bytes: float = e
        if fp8_attention is not None:
            qkv_bytes, o_bytes = fp8_attention
            q, k, v = (SavedTensor("q.fp8", a * d, qkv_bytes, "tensor"), SavedTensor("k.fp8", g * d, qkv_bytes, "kv"),
                       SavedTensor("v.fp8", g * vd, qkv_bytes, "kv"))
        saves = [q, k, v, SavedTensor("attn.output", a * vd, o_bytes, "tensor"),
                 SavedTensor("attn.logsumexp", a, FP32_BYTES, "tensor")]
        if dropout:
            saves.append(SavedTensor("attn.rng_state", RNG_STATE_BYTES, 1, "whole", per="layer"))
        return [Save(op, t, in_core=True) for t in saves]
    if kernel == "fused-softmax":
        op = "fused-softmax attention"
        k_used = k if g == a else SavedTensor("k.expanded", a * d, e, "tensor")
        v_used = v if g == a else SavedTensor("v.expanded", a * vd, e, "tensor")
        saves = [q, k_used, SavedTensor("attn.probs", a * s, e, "tensor")]
        if dropout:
            saves += [SavedTensor("attn.dropout_mask", a * s, MASK_BYTES, "tensor"),
                      SavedTensor("attn.dropped_probs", a * s, e, "tensor")]
        return [Save(op, t, in_core=True) for t in [*saves, v_used]]
    op = "math attention"
    up = max(e, FP32_BYTES)  # the math path's fp32 upcast of 16-bit q, k, v
    saves = [SavedTensor("attn.q_scaled", a * d, up, "tensor"), SavedTensor("attn.k_scaled", a * d, up, "tensor"),
             v if (up == e and g == a) else SavedTensor("attn.v_math", a * vd, up, "tensor"),
             SavedTensor("attn.probs", a * s, up, "tensor")]
    if dropout:
        saves += [SavedTensor("attn.dropout_mask", a * s, MASK_BYTES, "tensor"),
                  SavedTensor("attn.dropped_probs", a * s, up, "tensor")]
    return [Save(op, t, in_core=True) for t in saves]


def layer_saves(spec: "ModelSpec", kernel: "AttentionKernel", dtype_bytes: int,
                lora: "LoraSpec | None" = None, fp8_inputs: float = False,
                fp8_attention: tuple[float, float] | None = None) -> list[Save]:
    """Every (op, tensor) pair of one training layer without recomputation, in forward order.

    With LoRA (a frozen base, Hu et al. 2021) a base linear keeps nothing (its weight takes no gradient and
    its input gradient needs only the weight); an adapted projection's A keeps the linear's input and its
    B keeps A's output (r per token, whole on every tensor-parallel rank: A is replicated on column-parallel
    projections and all-reduced on row-parallel ones). Norms, the activation, the attention kernel and the
    dropout masks keep theirs either way: the input gradient still flows through them.
    """
    e, h = dtype_bytes, spec.hidden
    a, g, d = spec.heads, spec.kv_heads or spec.heads, spec.head_width
    f = mlp_width(spec)  # a MoE model's mean dense MLP (shared experts); the routed ones: costmodel.moe
    gated = spec.activation in ("swiglu", "geglu")
    dropout = spec.dropout > 0
    adapted = {adapter.name for adapter in lora_adapters(spec, lora.targets)} if lora is not None else set()

    def linear(op: str, tensor: SavedTensor, projections: tuple[str, ...]) -> list[Save]:
        if lora is None and fp8_inputs:
            # fp8_inputs: True = FP8_INPUT_BYTES, or the bytes of the kept copy (precision.saved_input_bytes)
            return [Save(op, SavedTensor(tensor.name + ".fp8", tensor.elements, fp8_inputs * FP8_INPUT_BYTES,
                                         tensor.split))]
        if lora is None:
            return [Save(op, tensor)]
        ours = [p for p in projections if p in adapted]
        return ([Save(f"lora {p} A", tensor) for p in ours]
                + [Save(f"lora {p} B", SavedTensor(f"lora.{p}.a_output", lora.rank, e, "whole")) for p in ours])

    saves = [Save("norm1", SavedTensor("layer.input", h, e, "sequence")), Save("norm1", _norm_stats(spec, "norm1"))]
    if spec.mla is not None:
        saves += _mla_projection_saves(spec, e, linear)
    else:
        saves += linear("qkv linear", SavedTensor("norm1.output", h, e, "sequence"), ("q", "k", "v"))
    if spec.qk_norm:
        saves += [Save("q norm", SavedTensor("q.pre_norm", a * d, e, "tensor")),
                  Save("q norm", SavedTensor("q_norm.stats", a, FP32_BYTES, "tensor")),
                  Save("k norm", SavedTensor("k.pre_norm", g * d, e, "kv")),
                  Save("k norm", SavedTensor("k_norm.stats", g, FP32_BYTES, "kv"))]
    saves += _core_saves(spec, kernel, e, fp8_attention)
    saves += linear("out linear", SavedTensor("attn.output", spec.attention_width, e, "tensor"), ("o",))
    if spec.parallel_block:  # the MLP reads norm1's output: the same tensor, kept once (_unique)
        saves += linear("fc linear", SavedTensor("norm1.output", h, e, "sequence"), ("gate", "up"))
    else:
        if dropout:
            saves.append(Save("attention-out dropout",
                              SavedTensor("attn_out.dropout_mask", h, MASK_BYTES, "sequence")))
        saves += [Save("norm2", SavedTensor("norm2.input", h, e, "sequence")),
                  Save("norm2", _norm_stats(spec, "norm2"))]
        saves += linear("fc linear", SavedTensor("norm2.output", h, e, "sequence"), ("gate", "up"))
    # GELU keeps its input; a gated unit keeps gate and up (the fc output) and recomputes act(gate) in its
    # backward (Megatron-LM megatron/core/fusions/fused_bias_swiglu.py SwiGLUFunction saves its input only).
    saves.append(Save("activation", SavedTensor("fc.output", (2 if gated else 1) * f, e, "tensor")))
    saves += linear("proj linear", SavedTensor("activation.output", f, e, "tensor"), ("down",))
    if dropout:  # a parallel block drops the branches' sum once: this mask (MaxText's DecoderLayer)
        saves.append(Save("mlp-out dropout", SavedTensor("mlp_out.dropout_mask", h, MASK_BYTES, "sequence")))
    return saves


def _mla_projection_saves(spec: "ModelSpec", e: int, linear: Any) -> list[Save]:
    """What multi-head latent attention's projections keep (llmsim.workload.model.MLAttention; Megatron-Core
    multi_latent_attention.py): the two down-projections read norm1's output (one tensor, kept once); each
    latent RMSNorm keeps its input and its rstd, and each up-projection its input (the normed latent): q_lora
    and kv_lora elements per token, whole on every tensor-parallel rank (the down-projections are replicated).
    The rotary parts keep nothing (their backward reads only the cos/sin tables); the decompressed q, k, v are
    the core attention's (_core_saves, q and k of nope + rope per head, v of v_head_dim)."""
    assert spec.mla is not None
    m, h = spec.mla, spec.hidden
    saves = linear("q/kv down linear", SavedTensor("norm1.output", h, e, "sequence"), ())
    latents = ([("q_a", m.q_lora_rank)] if m.q_lora_rank is not None else []) + [("kv_a", m.kv_lora_rank)]
    for name, width in latents:
        saves += [Save(f"{name} norm", SavedTensor(f"{name}.output", width, e, "whole")),
                  Save(f"{name} norm", SavedTensor(f"{name}_norm.stats", 1, FP32_BYTES, "whole"))]
        saves += linear(f"{name[0]}{'v' if name == 'kv_a' else ''} up linear",
                        SavedTensor(f"{name}_norm.output", width, e, "whole"), ())
    return saves


def _unique(saves: list[Save]) -> tuple[SavedTensor, ...]:
    """The distinct tensors (one storage however many ops keep it), in first-use order."""
    seen: dict[str, SavedTensor] = {}
    for save in saves:
        seen.setdefault(save.tensor.name, save.tensor)
    return tuple(seen.values())


def op_sac_projections(spec: "ModelSpec") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, recomputed) linear projections of one block under torchtitan's op-level SAC (`selective-op`),
    each in block order: the odd-numbered mm calls of `OP_SAC_ORDER_*` are kept, the even ones recomputed."""
    order = OP_SAC_ORDER_GATED if spec.activation in ("swiglu", "geglu") else OP_SAC_ORDER_PLAIN
    return order[0::2], order[1::2]


def op_sac_inventory(spec: "ModelSpec", kernel: "AttentionKernel", dtype_bytes: int,
                     reduce_scatters: bool = False) -> tuple[SavedTensor, ...]:
    """What one block keeps under torchtitan's op-level SAC (module docstring): its input, the kept mm
    outputs, the flash kernel's outputs and, when `reduce_scatters` (tp > 1 with sequence parallelism), the
    two reduce-scatters' outputs. Per token, e = dtype_bytes: h + a d (q) + g d (v) + a d (O) + f (gate; GELU:
    f of the fc) + h (down; GELU: none) elements of e bytes, a fp32 logsumexp, + 2 h with the reduce-scatters.
    A kernel other than a fused one (plan.FUSED_ATTENTION) keeps no attention output (the policy caches the
    SDPA flash, efficient and cuDNN ops)."""
    e, h = dtype_bytes, spec.hidden
    a, g, d = spec.heads, spec.kv_heads or spec.heads, spec.head_width
    f = mlp_width(spec)
    outputs = {"q": SavedTensor("q.proj_output", a * d, e, "tensor"),
               "k": SavedTensor("k.proj_output", g * d, e, "kv"),
               "v": SavedTensor("v", g * d, e, "kv"),  # V is not rotated: the tensor the kernel keeps
               "o": SavedTensor("o.partial_output", h, e, "whole"),
               "gate": SavedTensor("gate.output", f, e, "tensor"),
               "up": SavedTensor("up.output", f, e, "tensor"),
               "down": SavedTensor("down.partial_output", h, e, "whole")}
    kept, _ = op_sac_projections(spec)
    items = [SavedTensor("layer.input", h, e, "sequence")] + [outputs[p] for p in kept]
    if kernel in FUSED_ATTENTION:
        items += [t.tensor for t in _core_saves(spec, kernel, e) if t.tensor.name.startswith("attn.")]
    if reduce_scatters:
        items += [SavedTensor("o.reduce_scatter_output", h, e, "sequence"),
                  SavedTensor("down.reduce_scatter_output", h, e, "sequence")]
    return tuple(items)


def dots_inventory(spec: "ModelSpec", dtype_bytes: int) -> tuple[SavedTensor, ...]:
    """What one layer keeps under JAX's checkpoint_dots_with_no_batch_dims (`selective-dots`, module
    docstring): its input and the weight projections' outputs that the backward reads. Per token,
    e = dtype_bytes: h (input) + a d (q) + 2 g d (k, v) + f (MLP up; gated: 2 f, gate and up) + h (attention-out,
    sequential block only) elements of e bytes; no attention output, no norm statistics (recomputed).

    The policy only says which values *may* be saved; JAX keeps those its backward uses (jax/_src/
    ad_checkpoint.py `remat_partial_eval`: the staged jaxpr is dead-code eliminated, `used_res`, and the
    residuals it does not read are discarded). A dot output whose only consumer is a residual add is not read:
    the add's derivative needs no operand. So the MLP-down output is never kept (it only joins the residual
    stream; the next layer's input is that layer's own carry), and the attention-out output only in a
    sequential block, where norm2's backward reads its input x + attention-out, rebuilt from it. In a parallel
    block (`spec.parallel_block`) both projections only feed the sum. LoRA adapters' own r-wide outputs are left
    out."""
    e, h = dtype_bytes, spec.hidden
    a, g, d = spec.heads, spec.kv_heads or spec.heads, spec.head_width
    f = mlp_width(spec)
    mlp = ([SavedTensor("gate.output", f, e, "tensor"), SavedTensor("up.output", f, e, "tensor")]
           if spec.activation in ("swiglu", "geglu") else [SavedTensor("fc.output", f, e, "tensor")])
    out = () if spec.parallel_block else (SavedTensor("o.output", h, e, "sequence"),)
    return (SavedTensor("layer.input", h, e, "sequence"), SavedTensor("q.proj_output", a * d, e, "tensor"),
            SavedTensor("k.proj_output", g * d, e, "kv"),
            SavedTensor("v", g * d, e, "kv"),  # V is not rotated: the very tensor `none` keeps for the kernel
            *out, *mlp)


def layer_inventory(spec: "ModelSpec", kernel: "AttentionKernel", recompute: Recompute, dtype_bytes: int,
                    lora: "LoraSpec | None" = None, fp8_inputs: float = False,
                    reduce_scatters: bool = False,
                    fp8_attention: tuple[float, float] | None = None) -> tuple[SavedTensor, ...]:
    """The tensors one layer holds between its forward and its backward under `recompute`.

    none: every saved tensor. selective: the core attention's own saves are dropped and its checkpointed
    inputs Q, K, V kept (Megatron-LM `CheckpointFunction` over the core attention). full: the layer input
    only (each layer checkpointed whole, Megatron-LM `recompute_granularity=full`). selective-op:
    `op_sac_inventory` (torchtitan's op-level SAC; `reduce_scatters` = tp > 1 with sequence parallelism;
    it keeps op outputs, not the ops' own saves, so FP8 inputs change nothing; LoRA adapters' own small mm
    calls, which would shift the count, are not modeled). selective-dots: `dots_inventory` (JAX's
    checkpoint_dots_with_no_batch_dims, MaxText's remat `minimal`).
    """
    if recompute == "selective-op":
        return op_sac_inventory(spec, kernel, dtype_bytes, reduce_scatters)
    if recompute == "selective-dots":
        return dots_inventory(spec, dtype_bytes)
    saves = layer_saves(spec, kernel, dtype_bytes, lora, fp8_inputs, fp8_attention)
    if recompute == "full":
        return (saves[0].tensor,)
    if recompute == "selective":
        a, g, d = spec.heads, spec.kv_heads or spec.heads, spec.head_width
        vd = spec.mla.v_head_dim if spec.mla is not None else d
        checkpoint = [SavedTensor("q", a * d, dtype_bytes, "tensor"), SavedTensor("k", g * d, dtype_bytes, "kv"),
                      SavedTensor("v", g * vd, dtype_bytes, "kv")]
        core_at = next(i for i, s in enumerate(saves) if s.in_core)
        saves = ([s for s in saves[:core_at] if not s.in_core] + [Save("attention checkpoint", t) for t in checkpoint]
                 + [s for s in saves[core_at:] if not s.in_core])
    return _unique(saves)


def edge_inventory(spec: "ModelSpec", dtype_bytes: int, side: Literal["input", "output"],
                   trainable: bool = True) -> tuple[SavedTensor, ...]:
    """What the model keeps outside its layers, per micro-batch: the first pipeline stage's embeddings
    (`input`) or the last stage's final norm, LM head and loss (`output`).

    input: the ids each trainable embedding's backward scatters into (token ids, the learned position ids
    0..s-1 once per micro-batch, token-type ids); a frozen embedding (LoRA) keeps nothing.
    output: the final norm's input and statistics, the LM head's input (unless frozen), the fp32
    log-probabilities of the loss (vocabulary-parallel over tp: Megatron-LM vocab_parallel_cross_entropy
    keeps its fp32 softmax, llmsim's step the fp32 log_softmax) and the int64 targets.
    """
    e, h = dtype_bytes, spec.hidden
    if side == "input":
        if not trainable:
            return ()
        items = [SavedTensor("embed.token_ids", 1, INDEX_BYTES, "whole")]
        if spec.positions == "learned":
            items.append(SavedTensor("embed.position_ids", 1, INDEX_BYTES, "whole", per="position"))
        if spec.type_vocab:
            items.append(SavedTensor("embed.type_ids", 1, INDEX_BYTES, "whole"))
        return tuple(items)
    items = [SavedTensor("final_norm.input", h, e, "sequence"), _norm_stats(spec, "final_norm")]
    if trainable:
        items.append(SavedTensor("head.input", h, e, "sequence"))
    items += [SavedTensor("loss.log_probs", spec.vocab, FP32_BYTES, "tensor"),
              SavedTensor("loss.targets", 1, INDEX_BYTES, "whole")]
    return tuple(items)


def inventory_bytes(items: tuple[SavedTensor, ...], spec: "ModelSpec", plan: "Plan") -> float:
    """Bytes of `items` on one device for one micro-batch (plan.micro_batch, tp, sp, cp)."""
    return sum(t.bytes(spec, plan) for t in items)
