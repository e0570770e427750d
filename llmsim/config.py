"""The scenario file (contract: docs/scenario.md) as pydantic models, and its loader.

Loading is two-phase so nothing runs half-validated:
1. `load_scenario` parses YAML safely, applies `--set` overrides and validates the schema plus the
   rules that need only the file (heads divisible by tp, ...).
   Those rules (`check_strategy_shape`, `check_sharing`) live here, beside the models they validate.
2. `runner.plan_cases` checks each strategy against each backend's world size (`strategy.resolve_layout`)
   and settings.
Every failure is a `ScenarioError` naming the file, the key path and what is allowed.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator


from llmsim.divisors import shown_divisors
from llmsim.errors import KeyedValueError, ScenarioError, format_key_path
from llmsim.serving.spec import Lengths, ServingSpec, arrival_count_problem, length_bounds
from llmsim.serving.disagg_spec import SIDE_STRATEGY_KEYS
from llmsim.stages import SplitError, split_layers
from llmsim.strict import MAX_DIMENSION, Count, Seed, StrictModel, field_range
from llmsim.userinput import override_path, parse_yaml, read_yaml
from llmsim.wording import count, literal_choices, literal_error, number_error, shown_input, shown_value
from llmsim.workload.presets import PRESETS

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
# A scenario, plan or strategy name becomes part of file names (the run folder, requests/BACKEND-CASE@...csv):
# Linux allows 255 bytes a component, so a name is kept well under it, leaving room for the sweep suffixes.
NAME_MAX_LENGTH = 64
PositiveInt = Count   # >= 1 and <= strict.MAX_DIMENSION: every size and count of a scenario
NonNegativeInt = Annotated[int, Field(ge=0)]


_KeyedError = KeyedValueError  # a model rule that names its own key (llmsim.errors)


class _Strict(StrictModel):
    """Unknown keys refused, values frozen, no boolean for a number (llmsim.strict)."""


# Stored element types of routed-expert weights other than the workload's (MoeSpec.expert_weight_dtype).
EXPERT_WEIGHT_DTYPES: tuple[str, ...] = ("mxfp4",)


class MoeSpec(_Strict):
    """Mixture-of-experts layers (docs/moe.md): a router picks `top_k` of `experts` routed expert MLPs per
    token (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021; GShard, Lepikhin et al. 2020)."""

    experts: int = Field(ge=2, description="routed experts per MoE layer")
    top_k: PositiveInt = Field(2, description="experts per token (1 <= top_k <= experts)")
    expert_ffn_hidden: PositiveInt | None = Field(None, description="width of each routed expert's (gated) MLP; "
                                                                    "default the model's ffn_hidden")
    shared_experts: NonNegativeInt = Field(0, description="always-active experts per MoE layer (DeepSeekMoE)")
    shared_expert_ffn_hidden: PositiveInt | None = Field(None, description="width of each shared expert; "
                                                                           "default expert_ffn_hidden")
    layer_freq: PositiveInt = Field(1, description="layer i is MoE when i % layer_freq == 0 (Megatron "
                                                   "--moe-layer-freq)")
    first_dense_layers: NonNegativeInt = Field(0, description="the first n layers are dense (DeepSeek "
                                                              "first_k_dense_replace)")
    norm_topk_prob: bool = Field(True, description="renormalise the top-k gate weights to sum to 1 "
                                                   "(Mixtral, Qwen3: true; OLMoE: false)")
    aux_loss_coeff: float = Field(0.01, ge=0, description="Switch/GShard load-balancing loss coefficient "
                                                          "(0 = none)")
    capacity_factor: float | None = Field(None, gt=0, description="null = dropless; a number caps each expert "
                                          "at ceil(cf * tokens * top_k / experts) tokens (dropped ones pass "
                                          "through the residual)")
    load_imbalance: float | None = Field(None, ge=1, description="cost model only: busiest expert's tokens / "
                                         "mean; null = derived from routing statistics")
    expert_weight_dtype: str | None = Field(None, description="the routed experts' stored weights: null = the "
                                            "workload dtype; mxfp4 = OCP MX FP4 (E2M1 values, one E8M0 scale "
                                            "per 32: 4.25 bits a weight; gpt-oss checkpoints), run weight-only "
                                            "(read 4-bit, computed at the 16-bit rate)")

    @field_validator("expert_weight_dtype", mode="before")
    @classmethod
    def _expert_weight_dtype_choice(cls, value: Any) -> Any:
        if value is None or value in EXPERT_WEIGHT_DTYPES:
            return value
        raise ValueError(f"{value!r}: allowed: null (the workload dtype), {', '.join(EXPERT_WEIGHT_DTYPES)}")

    @model_validator(mode="after")
    def _check(self) -> "MoeSpec":
        if self.top_k > self.experts:
            raise _KeyedError("top_k", f"top_k={self.top_k} exceeds experts={self.experts} "
                                       f"(allowed: 1..{self.experts})")
        most = self.experts / self.top_k  # every token of the batch at one expert: its load over the mean
        if self.load_imbalance is not None and self.load_imbalance > most:
            raise _KeyedError("load_imbalance", f"load_imbalance={self.load_imbalance:g} exceeds experts/top_k = "
                                                f"{most:g}, the busiest expert taking every token (allowed: "
                                                f"1..{most:g})")
        return self


class MlaSpec(_Strict):
    """Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434 Sec. 2.1, eqs. 37-47; the names are Hugging
    Face DeepseekV2Config / DeepseekV3Config's): queries through a low-rank latent of `q_lora_rank` (null: a
    direct hidden -> heads x (nope + rope) projection, DeepSeek-V2-Lite), keys and values through a shared
    latent c_kv of `kv_lora_rank` plus one decoupled rotary key of `qk_rope_head_dim` shared by all heads. A
    decode step caches c_kv and that key only: kv_lora_rank + qk_rope_head_dim elements per token and layer
    (the paper's Table 1: (d_c + d_h^R) l)."""

    kv_lora_rank: PositiveInt = Field(description="width of the compressed key-value latent c_kv (d_c; "
                                                  "DeepSeek-V2/V3: 512); what the KV cache holds per token")
    q_lora_rank: PositiveInt | None = Field(None, description="width of the compressed query latent (d_c'; "
                                                              "V2/V3: 1536); null = a direct query projection "
                                                              "(DeepSeek-V2-Lite)")
    qk_nope_head_dim: PositiveInt = Field(128, description="per-head query/key width without rotary (d_h)")
    qk_rope_head_dim: PositiveInt = Field(64, description="per-head width of the decoupled rotary query and of "
                                                          "the one rotary key shared by all heads (d_h^R)")
    v_head_dim: PositiveInt = Field(128, description="per-head value width (d_h)")

    @model_validator(mode="after")
    def _check(self) -> "MlaSpec":
        if self.qk_rope_head_dim % 2:
            raise _KeyedError("qk_rope_head_dim", f"qk_rope_head_dim={self.qk_rope_head_dim} must be even "
                                                  f"(rotary rotates pairs; allowed: 2, 4, ..., DeepSeek: 64)")
        return self

    @property
    def cache_width(self) -> int:
        """Elements one token caches per layer: the latent c_kv and the shared rotary key (d_c + d_h^R)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        """Query/key width of one head in the decompressed form: nope + rope."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class ModelSpec(_Strict):
    """The Transformer's shape. A `preset` fills every field; explicit fields override it."""

    preset: str | None = None
    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt | None = Field(None, description="< heads = grouped-query attention; default heads")
    head_dim: PositiveInt | None = Field(None, description="width of one attention head; default hidden/heads "
                                                           "(Qwen3, Gemma state a different one)")
    qk_norm: bool | Literal["head", "projection"] = Field(
        False, description="RMSNorm of queries and keys: true or head = over each head (weights of head_dim, "
                           "Qwen3); projection = over the whole q and k projections (weights of heads*head_dim "
                           "and kv_heads*head_dim, OLMoE)")
    ffn_hidden: PositiveInt | None = Field(None, description="default 4*hidden")
    vocab: PositiveInt
    seq_len: PositiveInt
    activation: Literal["gelu", "swiglu", "geglu"] = Field("gelu", description="swiglu / geglu: gated MLP "
                                                                      "(silu / tanh-gelu gate, Shazeer 2020)")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    causal: bool = Field(True, description="false = bidirectional encoder (BERT-style)")
    positions: Literal["learned", "rotary"] = "learned"
    max_positions: PositiveInt | None = Field(None, description="learned position table size; default what "
                                              "the workload reads: seq_len (+ decode_tokens when decoding)")
    type_vocab: int = Field(0, ge=0, description="token-type (segment) embeddings, 2 for BERT")
    bias: bool = True
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = Field(True, description="the published convention; sharing.tie_embeddings overrides")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="training only: attention probabilities and the "
                                                            "attention-out and MLP-out residual branches")
    moe: MoeSpec | None = Field(None, description="mixture-of-experts layers (docs/moe.md); null = dense")
    mla: MlaSpec | None = Field(None, description="multi-head latent attention (DeepSeek-V2/V3; docs/scenario.md); "
                                                  "null = multi-head / grouped-query attention")
    parallel_block: bool = Field(False, description="true = the attention and the MLP read the same normed input "
                                                    "and their outputs are summed (GPT-J, PaLM Sec. 2, MaxText's "
                                                    "decoder of 2023): one norm per layer, one tensor-parallel "
                                                    "reduction per layer and pass instead of two")
    sliding_window: PositiveInt | None = Field(
        None, description="tokens a windowed (local) attention layer attends to: each query sees itself and the "
                          "window - 1 tokens before it (Hugging Face `sliding_window`; gpt-oss 128, Gemma 2 "
                          "4096, Gemma 3 1024); null = every layer attends to the whole context")
    full_attention_every: PositiveInt | None = Field(
        None, description="with sliding_window: layer i (0-based) attends to the whole context when (i + 1) % k "
                          "== 0, the others are windowed (gpt-oss, Gemma 2: 2 = sliding, full, sliding, ...; "
                          "Gemma 3: 6 = five local, one global); null = every layer windowed (Mistral 7B v0.1)")
    attention_sinks: bool = Field(False, description="one learned logit per head added to the softmax "
                                                     "denominator (gpt-oss): heads parameters a layer, no GEMM")

    @field_validator("qk_norm", mode="before")
    @classmethod
    def _qk_norm_choice(cls, value: Any) -> Any:
        if value is True or value is False or value in ("head", "projection"):
            return value
        raise ValueError(f"{value!r}: allowed: false, true (= head), head, projection")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in PRESETS:
                raise _KeyedError("preset", f"unknown preset {shown_value(name)}; allowed: {', '.join(PRESETS)}")
            merged = {**PRESETS[name], **data}
            if isinstance(PRESETS[name].get("moe"), dict) and isinstance(data.get("moe"), dict):
                merged["moe"] = {**PRESETS[name]["moe"], **data["moe"]}  # moe keys override one by one
            if isinstance(PRESETS[name].get("mla"), dict) and isinstance(data.get("mla"), dict):
                merged["mla"] = {**PRESETS[name]["mla"], **data["mla"]}  # mla keys override one by one
            data = merged
        return data

    @model_validator(mode="after")
    def _fill_defaults(self) -> "ModelSpec":
        fill: dict[str, Any] = {}
        if self.mla is not None:
            self._check_mla(self.mla)
            fill["head_dim"] = self.mla.qk_head_dim
        if self.kv_heads is None:
            fill["kv_heads"] = self.heads
        if self.ffn_hidden is None:
            fill["ffn_hidden"] = 4 * self.hidden
        if self.max_positions is None:
            fill["max_positions"] = self.seq_len
        if self.head_dim is None and "head_dim" not in fill:
            if self.hidden % self.heads:
                divisors = ", ".join(str(d) for d in range(1, min(self.hidden, 128) + 1) if self.hidden % d == 0)
                raise _KeyedError("heads", f"hidden={self.hidden} must be divisible by heads={self.heads} "
                                           f"(allowed heads: {divisors}; or state head_dim)")
            fill["head_dim"] = self.hidden // self.heads
        if self.moe is not None and self.moe.expert_ffn_hidden is None:
            fill["moe"] = self.moe.model_copy(update={"expert_ffn_hidden": fill.get("ffn_hidden", self.ffn_hidden)})
        for k, v in fill.items():
            object.__setattr__(self, k, v)
        if self.heads % self.kv_heads:  # type: ignore[operator]
            raise _KeyedError("kv_heads", f"kv_heads={self.kv_heads} must divide heads={self.heads} "
                             f"(allowed: {', '.join(str(d) for d in range(1, self.heads + 1) if self.heads % d == 0)})")
        if self.full_attention_every is not None and self.sliding_window is None:
            raise _KeyedError("full_attention_every", f"full_attention_every={self.full_attention_every} needs "
                                                      f"sliding_window (allowed: null without a sliding_window)")
        if self.full_attention_every == 1:
            raise _KeyedError("full_attention_every", "full_attention_every=1 makes every layer full (allowed: "
                                                      "2 or more, or null = every layer windowed; for no window "
                                                      "drop sliding_window)")
        if self.sliding_window is not None and not self.causal:
            raise _KeyedError("sliding_window", f"sliding_window={self.sliding_window} needs a causal decoder "
                                                f"(allowed: null with causal: false)")
        if self.moe is not None and not self.moe_layers:
            raise _KeyedError("moe.first_dense_layers", f"no layer is a mixture of experts (first_dense_layers="
                             f"{self.moe.first_dense_layers} with layers={self.layers}; allowed: first_dense_layers "
                             f"< {self.layers})")
        return self

    def _check_mla(self, mla: MlaSpec) -> None:
        """The rules of an `mla` model: every head has its own decompressed K and V (no grouped KV heads),
        head_dim is nope + rope, the decoupled key is rotary, and the block is sequential without q/k norms."""
        if self.kv_heads is not None and self.kv_heads != self.heads:
            raise _KeyedError("kv_heads", f"kv_heads={self.kv_heads} with mla: multi-head latent attention "
                                          f"decompresses keys and values for every head (allowed: omit kv_heads, "
                                          f"or {self.heads} = heads)")
        if self.head_dim is not None and self.head_dim != mla.qk_head_dim:
            raise _KeyedError("head_dim", f"head_dim={self.head_dim} with mla: it is qk_nope_head_dim + "
                                          f"qk_rope_head_dim (allowed: omit head_dim, or {mla.qk_head_dim})")
        if self.positions != "rotary":
            raise _KeyedError("positions", f"positions={self.positions} with mla: its decoupled key is rotary "
                                           f"(allowed: rotary)")
        if self.qk_norm:
            raise _KeyedError("qk_norm", f"qk_norm={self.qk_norm} with mla: the latents have their own RMSNorms "
                                         f"(allowed: false)")
        if self.parallel_block:
            raise _KeyedError("parallel_block", "parallel_block=true with mla is not modelled (allowed: false)")
        if self.sliding_window is not None:
            raise _KeyedError("sliding_window", f"sliding_window={self.sliding_window} with mla is not modelled "
                                                f"(allowed: null)")
        if self.attention_sinks:
            raise _KeyedError("attention_sinks", "attention_sinks=true with mla is not modelled (allowed: false)")

    def kv_split(self, tp: int) -> int:
        """Ways one tensor-parallel group splits the KV cache (and the K/V projections): min(tp, kv_heads),
        the KV heads replicated once tp exceeds them (Megatron-LM GQA); 1 for multi-head latent attention,
        whose latent cache and down-projections every rank holds whole (vLLM/SGLang ReplicatedLinear for
        kv_a_proj_with_mqa; SGLang's DP attention exists because the latent does not split over tp)."""
        if self.mla is not None:
            return 1
        return min(tp, self.kv_heads or self.heads)

    def window_note(self) -> str | None:
        """A note where `sliding_window` spans the whole context (seq_len): every windowed layer then attends to
        every token, as a full layer does, so the window changes nothing priced or run. Not an error: a short
        seq_len under a preset's window (gpt-oss at seq_len 64) is a fair test."""
        if self.sliding_window is None or self.sliding_window < self.seq_len:
            return None
        return (f"sliding_window={self.sliding_window} is not below seq_len={self.seq_len}: no layer's window cuts "
                f"anything, every layer attends to the whole context (a window limits attention when it is "
                f"1..{self.seq_len - 1})")

    def is_moe_layer(self, layer: int) -> bool:
        """Layer `layer` (0-based) is a mixture of experts: layer >= first_dense_layers and layer % layer_freq
        == 0 (DeepSeek-V3's modeling code: first_k_dense_replace and moe_layer_freq; Megatron-Core's
        --moe-layer-freq k is the pattern [1 if i % k == 0 else 0])."""
        m = self.moe
        return m is not None and layer >= m.first_dense_layers and layer % m.layer_freq == 0

    def moe_layers_in(self, layers: range) -> int:
        """How many of the 0-based layer indices `layers` (a step-1 range) are MoE layers (`is_moe_layer`),
        in closed form: the multiples of layer_freq in [max(start, first_dense_layers), stop)."""
        m = self.moe
        if m is None:
            return 0
        lo, hi, f = max(layers.start, m.first_dense_layers), layers.stop, m.layer_freq
        return max((hi + f - 1) // f - (lo + f - 1) // f, 0) if hi > lo else 0

    def is_windowed_layer(self, layer: int) -> bool:
        """Layer `layer` (0-based) attends to the last `sliding_window` tokens only: a sliding_window is set and
        the layer is not one of every `full_attention_every`-th ((layer + 1) % k == 0 is full, as Hugging Face's
        `layer_types` of gpt-oss and Gemma 2 (sliding first, alternating) and Gemma 3 (5 sliding : 1 full))."""
        if self.sliding_window is None:
            return False
        k = self.full_attention_every
        return k is None or (layer + 1) % k != 0

    def windowed_layers_in(self, layers: range) -> int:
        """How many of the 0-based layer indices `layers` (a step-1 range) are windowed (`is_windowed_layer`)."""
        if self.sliding_window is None or layers.stop <= layers.start:
            return 0
        n = layers.stop - layers.start
        k = self.full_attention_every
        if k is None:
            return n
        full = layers.stop // k - layers.start // k    # i + 1 in (start, stop] divisible by k
        return n - full

    @property
    def windowed_layers(self) -> int:
        """Windowed (sliding-window) layers in the full depth (0 without a sliding_window)."""
        return self.windowed_layers_in(range(self.layers))

    @property
    def moe_layers(self) -> int:
        """MoE layers in the full depth (0 for a dense model)."""
        return self.moe_layers_in(range(self.layers))

    @property
    def expert_ffn(self) -> int:
        """Width of one routed expert (moe.expert_ffn_hidden, filled by validation)."""
        assert self.moe is not None and self.moe.expert_ffn_hidden is not None
        return self.moe.expert_ffn_hidden

    @property
    def shared_expert_ffn(self) -> int:
        """Width of one shared expert (moe.shared_expert_ffn_hidden, default the routed experts' width)."""
        assert self.moe is not None
        return self.moe.shared_expert_ffn_hidden or self.expert_ffn

    @property
    def head_width(self) -> int:
        """The width of one attention head: `head_dim`, which validation fills with hidden/heads when the
        file does not state it (the one place that default lives)."""
        assert self.head_dim is not None, "filled by _fill_defaults"
        return self.head_dim

    @property
    def attention_width(self) -> int:
        """heads * head_dim: the query (and attention output) width, = hidden unless head_dim is stated.
        With mla: heads * v_head_dim, the attention output (the out projection's input)."""
        if self.mla is not None:
            return self.heads * self.mla.v_head_dim
        return self.heads * self.head_width

    @property
    def cache_elements_per_layer(self) -> int:
        """Elements one token caches in one layer: K and V of every KV head (2 x kv_heads x head_dim), or the
        latent and the shared rotary key of multi-head latent attention (kv_lora_rank + qk_rope_head_dim,
        DeepSeek-V2 Table 1)."""
        if self.mla is not None:
            return self.mla.cache_width
        return 2 * (self.kv_heads or self.heads) * self.head_width


def mla_tp_problem(spec: ModelSpec, tp: int) -> str | None:
    """Why the real backends cannot run this model at this tensor-parallel degree, or None: multi-head latent
    attention is not sharded here (its replicated down-projections need the shared rotary key's gradient summed
    over the ranks, Megatron-Core MLA's duplicated linears; not written). The modeled backends price it."""
    if spec.mla is None or tp <= 1:
        return None
    return (f"tensor parallelism (tp={tp}) of a multi-head latent attention model (workload.model.mla) is not "
            f"implemented in the real backends (allowed: tp 1; the roofline / cluster backends model any tp)")


class Fp8Spec(_Strict):
    """How a `dtype: float8` workload runs its FP8 GEMMs (docs/scenario.md; costmodel.precision prices it)."""

    recipe: Literal["delayed", "current", "mxfp8"] = Field(
        "delayed", description="scaling recipe: delayed (per-tensor scale from an amax history, Transformer "
                               "Engine's default), current (per-tensor scale from this tensor's amax), mxfp8 "
                               "(a shared E8M0 scale per 32 elements, Blackwell)")
    saved_activations: Literal["float8", "bfloat16"] = Field(
        "float8", description="what a linear keeps for its backward: its FP8 input (Transformer Engine) or "
                              "its bf16 input, cast again in the backward (torchao float8)")
    param_all_gather: bool = Field(False, description="ZeRO-3/FSDP all-gathers the GEMM weights in FP8 "
                                                     "(torchao `enable_fsdp_float8_all_gather`)")
    frozen_weights: Literal["bfloat16", "float8"] = Field(
        "bfloat16", description="how the frozen base's layer GEMM weights are kept under LoRA: bfloat16 (a bf16 "
                                "weight beside its FP8 copies) or float8 (the FP8 copies only, no bf16 weight: "
                                "Transformer Engine's fp8_model_init, NeMo's fp8_params); refused unless a strategy "
                                "has sharing.lora")
    attention: Literal["bfloat16", "float8"] = Field(
        "bfloat16", description="the precision of the core attention's matmuls (QK^T, PV) in training: bfloat16, "
                                "or float8 (Transformer Engine's FP8 dot-product attention, fp8_dpa / NVTE_FP8_DPA: "
                                "cuDNN's FP8 fused attention at the FP8 peak, Q, K, V kept in FP8); training only")


class Fp4Spec(_Strict):
    """How a `dtype: float4` workload stores and runs its layer GEMMs (docs/scenario.md; costmodel.precision)."""

    recipe: Literal["nvfp4", "mxfp4"] = Field(
        "nvfp4", description="block-scaled FP4 format: nvfp4 (E2M1 values, an E4M3 scale per 16 elements and an "
                             "FP32 per-tensor scale: 4.5 bits; NVIDIA) or mxfp4 (E2M1, an E8M0 scale per 32: "
                             "4.25 bits; OCP MX v1.0). Training runs nvfp4 only (Transformer Engine's "
                             "NVFP4BlockScaling; it has no MXFP4 recipe)")
    attention: Literal["bfloat16", "float8"] = Field(
        "bfloat16", description="the precision of the core attention's matmuls in training: bfloat16, or float8 "
                                "(Transformer Engine's FP8 dot-product attention beside the FP4 GEMMs, its own FP8 "
                                "recipe current scaling: NVTE_DPA_FP8_RECIPE=Float8CurrentScaling); training only")
    layers: Literal["all", "mlp"] = Field(
        "all", description="which layer GEMMs run in FP4: all (QKV or MLA's projections, attention out, MLP up and "
                           "down: ModelOpt's NVFP4 export of the Llama checkpoints) or mlp (the MLP and expert GEMMs; "
                           "the attention projections stay in the 16-bit dtype: nvidia/DeepSeek-R1-FP4 as "
                           "TensorRT-LLM runs it, its tech blog 1's precision table); mlp is priced for prefill, "
                           "decode and serving")


class Workload(_Strict):
    model: ModelSpec
    mode: Literal["train", "prefill", "decode"] = "train"
    batch: PositiveInt = Field(8, le=MAX_DIMENSION, description="global batch, in sequences (at most 2^31 - 1: it "
                                                          "is a tensor dimension of the traced step)")
    decode_tokens: PositiveInt = Field(64, description="decode: tokens generated per sequence after the prompt")
    dtype: Literal["float32", "bfloat16", "float16", "float8", "float4"] = Field(
        "bfloat16", description="float8: bf16 mixed precision with FP8 GEMMs in the transformer layers (`fp8`); "
                                "float4: the same with block-scaled FP4 (W4A4) layer GEMMs (`fp4`)")
    fp8: Fp8Spec | None = Field(None, description="the FP8 recipe of a `dtype: float8` workload; default "
                                                  "{recipe: delayed}")
    fp4: Fp4Spec | None = Field(None, description="the FP4 format of a `dtype: float4` workload; default "
                                                  "{recipe: nvfp4}")

    @model_validator(mode="after")
    def _check(self) -> "Workload":
        if self.fp8 is not None and self.dtype != "float8":
            raise _KeyedError("fp8", f"fp8 is set but dtype is {self.dtype}; fp8 needs dtype: float8")
        if self.dtype == "float8" and self.fp8 is None:
            object.__setattr__(self, "fp8", Fp8Spec())
        if self.fp4 is not None and self.dtype != "float4":
            raise _KeyedError("fp4", f"fp4 is set but dtype is {self.dtype}; fp4 needs dtype: float4")
        if self.dtype == "float4" and self.fp4 is None:
            object.__setattr__(self, "fp4", Fp4Spec())
        if (self.mode == "decode" and self.model.positions == "learned"
                and "max_positions" not in self.model.model_fields_set):
            # No table size given (explicitly or by a preset, whose published size is kept): size it for what
            # this workload reads, the prompt and the generated tokens (positions 0..seq_len+decode_tokens-1).
            model = self.model.model_copy(update={"max_positions": self.model.seq_len + self.decode_tokens})
            model.__pydantic_fields_set__.discard("max_positions")  # still a default: a re-validation re-derives it
            object.__setattr__(self, "model", model)
        if self.mode == "decode" and not self.model.causal:
            raise _KeyedError("mode", "mode 'decode' needs a causal decoder; this model has causal: false "
                             "(allowed for encoders: train, prefill)")
        if self.model.positions == "learned" and self.model.seq_len > (self.model.max_positions or 0):
            raise _KeyedError("model.seq_len", f"seq_len={self.model.seq_len} exceeds the learned position table "
                             f"max_positions={self.model.max_positions} (allowed: seq_len <= "
                             f"{self.model.max_positions}, or a larger model.max_positions, or positions: rotary)")
        if (self.mode == "decode" and self.model.positions == "learned"
                and self.model.seq_len + self.decode_tokens > (self.model.max_positions or 0)):
            raise _KeyedError("decode_tokens", f"seq_len + decode_tokens = "
                                               f"{self.model.seq_len + self.decode_tokens} exceeds "
                             f"max_positions={self.model.max_positions} of the learned position table (allowed: "
                             f"decode_tokens <= {max(0, (self.model.max_positions or 0) - self.model.seq_len)}, a "
                             f"shorter seq_len, or a larger model.max_positions)")
        return self

    @property
    def tokens_per_step(self) -> int:
        """Tokens a step processes (train, prefill) or generates (decode)."""
        if self.mode == "decode":
            return self.batch * self.decode_tokens
        return self.batch * self.model.seq_len


# LoRA targets are per projection, as PEFT's `target_modules` name them for Llama (q_proj, k_proj, v_proj,
# o_proj, gate_proj, up_proj, down_proj; Hugging Face PEFT docs, LoraConfig). The model fuses q, k, v into
# one Linear (attn.qkv) and gate, up into one (mlp.fc, swiglu); an adapter on one projection of a fused
# Linear adapts only that projection's output slice. The old names are aliases for their projections.
LORA_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
LORA_ALIASES = {"qkv": ("q", "k", "v"), "out": ("o",), "mlp": ("gate", "up", "down")}
LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down", "qkv", "out", "mlp"]


class LoraSpec(_Strict):
    rank: PositiveInt = 16
    alpha: float = Field(32.0, gt=0)
    targets: tuple[LoraTarget, ...] = Field(("qkv", "out", "mlp"), min_length=1,
                                            description="projections q, k, v, o, gate, up, down (PEFT's); "
                                                        "aliases qkv = q,k,v; out = o; mlp = the MLP's")


LORA_ATTENTION = ("q", "k", "v", "o")


def lora_allowed_projections(activation: str, moe: bool = False) -> tuple[str, ...]:
    """The projections a block of this MLP activation has: a GELU MLP has no gate (its fc is `up`, its
    proj `down`, as in PEFT's naming of a plain two-layer MLP's up/down projections). In a mixture-of-experts
    model (`moe`) only the attention's: adapters on the routed experts' MLPs (one per expert, or shared across
    them) are not modelled (llmsim.workload.moe has no single MLP projection to adapt)."""
    if moe:
        return LORA_ATTENTION
    return LORA_PROJECTIONS if activation == "swiglu" else tuple(p for p in LORA_PROJECTIONS if p != "gate")


def lora_projections(targets: tuple[str, ...], activation: str, moe: bool = False) -> tuple[str, ...]:
    """Targets with the aliases expanded, deduplicated, in block order (q k v o gate up down).

    `mlp` means the MLP's projections of this activation (gate, up, down; GELU: up, down; none in a mixture of
    experts). Raises ValueError naming the allowed targets for a projection the block does not have (`gate`
    with GELU, any MLP projection of an MoE model) or where the targets name no projection at all."""
    allowed = lora_allowed_projections(activation, moe)
    block = "mixture-of-experts" if moe else activation
    wanted: set[str] = set()
    for target in targets:
        if target in LORA_ALIASES:
            wanted.update(p for p in LORA_ALIASES[target] if p in allowed)
        elif target in allowed:
            wanted.add(target)
        else:
            raise ValueError(f"target {target!r} is not a projection of a {block} block LoRA can adapt (allowed: "
                             f"{', '.join(allowed)}; aliases {', '.join(LORA_ALIASES)})")
    if not wanted:
        raise ValueError(f"{', '.join(targets)} names no projection of a {block} block LoRA can adapt (allowed: "
                         f"{', '.join(allowed)}; aliases {', '.join(LORA_ALIASES)})")
    return tuple(p for p in LORA_PROJECTIONS if p in wanted)


@dataclass(frozen=True)
class LoraAdapter:
    """One PEFT adapter B A (B: out_features x r, A: r x in_features) on projection `name`, which is output
    columns [start, start + out_features) of the model's Linear `module` (attn.qkv, attn.out, mlp.fc,
    mlp.proj). `split`: how Megatron tensor parallelism splits that projection (Shoeybi et al. 2019, Sec. 3):
    'column' (q, k, v, gate, up: the output dimension, so each rank holds a slice of B and all of A) or
    'row' (o, down: the input dimension, so each rank holds a slice of A and all of B)."""

    name: str
    module: str
    start: int
    in_features: int
    out_features: int
    split: Literal["column", "row"]


def lora_adapters(spec: ModelSpec, targets: tuple[str, ...]) -> list[LoraAdapter]:
    """The adapters one block carries for these targets, with the fused modules' slice offsets."""
    h, hd, ffn = spec.hidden, spec.head_dim, spec.ffn_hidden or 4 * spec.hidden
    q, kv = spec.heads * hd, (spec.kv_heads or spec.heads) * hd
    swiglu = spec.activation == "swiglu"
    table = {"q": ("attn.qkv", 0, h, q, "column"), "k": ("attn.qkv", q, h, kv, "column"),
             "v": ("attn.qkv", q + kv, h, kv, "column"), "o": ("attn.out", 0, h, h, "row"),
             "gate": ("mlp.fc", 0, h, ffn, "column"), "up": ("mlp.fc", ffn if swiglu else 0, h, ffn, "column"),
             "down": ("mlp.proj", 0, ffn, h, "row")}
    names = lora_projections(targets, spec.activation, spec.moe is not None)
    return [LoraAdapter(name, *table[name]) for name in names]  # type: ignore[arg-type]


def lora_params_per_block(spec: ModelSpec, lora: LoraSpec, tp: int = 1) -> int:
    """Trainable adapter parameters of one block on one tensor-parallel rank: r * (in + out) per adapter at
    tp = 1 (Hu et al. 2021, Sec. 4.1); with tp, a column-parallel projection's B and a row-parallel one's A
    split over the ranks and the other factor is replicated. K and V of grouped-query attention split over
    min(tp, kv_heads) ranks (replicated KV heads beyond that, as Megatron-LM does)."""
    kv = spec.kv_heads or spec.heads
    total = 0
    for a in lora_adapters(spec, lora.targets):
        if a.split == "row":
            total += lora.rank * (a.in_features // tp + a.out_features)
        else:
            ways = min(tp, kv) if a.name in ("k", "v") else tp
            total += lora.rank * (a.in_features + a.out_features // ways)
    return total


class Sharing(_Strict):
    tie_embeddings: bool | None = Field(None, description="default: the preset's published convention")
    layer_groups: PositiveInt | None = Field(None, description="k distinct layer weight sets, round-robin")
    lora: LoraSpec | None = None


@dataclass(frozen=True)
class SharingChoice:
    """Parameter sharing as the model builder and the cost model need it: the scenario's (or plan's)
    `sharing` block with the tie resolved against the preset's published convention."""

    tie_embeddings: bool
    layer_groups: int | None = None
    lora: LoraSpec | None = None

    @classmethod
    def resolve(cls, sharing: Sharing, model: ModelSpec) -> SharingChoice:
        """The one way a sharing block becomes a choice: an unset tie takes the model's own."""
        tie = model.tie_embeddings if sharing.tie_embeddings is None else sharing.tie_embeddings
        return cls(tie, sharing.layer_groups, sharing.lora)


class Strategy(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)] = "single"
    dp: PositiveInt | None = Field(None, description="omitted = fill the world")
    tp: PositiveInt = 1
    pp: PositiveInt = 1
    cp: PositiveInt = 1
    sp: bool = False
    zero: Literal[0, 1, 2, 3] = 0
    micro_batch: PositiveInt = 1
    schedule: Literal["gpipe", "1f1b", "interleaved"] = "1f1b"
    virtual_stages: PositiveInt = 1
    recompute: Literal["none", "selective", "selective-op", "selective-dots", "full"] = "none"
    overlap_grad_reduce: bool = Field(True, description=(
        "data-parallel gradient reduction bucket by bucket under the backward (Megatron-Core "
        "--overlap-grad-reduce; its command line defaults to off, llmsim's scenario contract to on)"))
    overlap_param_gather: bool = Field(False, description=(
        "ZeRO 1/2 parameter all-gather after the optimizer overlapped with the next step's forward "
        "(Megatron-Core --overlap-param-gather, default off; needs zero >= 1 and overlap_grad_reduce)"))
    tp_comm_overlap: bool = Field(False, description=(
        "tensor-parallel all-gathers and reduce-scatters split into chunks and pipelined with their GEMMs "
        "(Megatron-Core --tp-comm-overlap through Transformer Engine userbuffers, default off; needs sp)"))
    overlap_p2p: bool | None = Field(None, description=(
        "pipeline sends and receives overlapped with the next chunk's compute; null = Megatron-Core's "
        "default: on with the interleaved schedule, off otherwise (--no-overlap-p2p-communication)"))
    stage_layers: tuple[NonNegativeInt, ...] | None = Field(
        None, description="layers of each pipeline stage, pp counts adding up to layers (Megatron-LM's "
                          "pipeline layout); the first and last may be 0, a middle stage holds at least one")
    first_stage_layers: PositiveInt | None = Field(
        None, description="layers of the first pipeline stage; the rest split evenly over the others "
                          "(Megatron-LM --decoder-first-pipeline-num-layers)")
    last_stage_layers: PositiveInt | None = Field(
        None, description="layers of the last pipeline stage; the rest split evenly over the others "
                          "(Megatron-LM --decoder-last-pipeline-num-layers)")
    embedding_as_layer: bool = Field(False, description="count the embedding as a layer in the even split: the "
                                     "first stage holds one layer fewer (Megatron-LM "
                                     "--account-for-embedding-in-pipeline-split)")
    loss_as_layer: bool = Field(False, description="count the LM head and loss as a layer in the even split: the "
                                "last stage holds one layer fewer (Megatron-LM --account-for-loss-in-pipeline-split)")
    ep: PositiveInt = Field(1, description="expert parallelism: routed experts split over ep ranks, carved out "
                                           "of the dp x cp (x tp) ranks as Megatron-Core does; MoE models only")
    etp: PositiveInt | None = Field(None, description="expert tensor parallelism: each expert's MLP split over "
                                    "etp ranks; null = tp (Megatron-Core's default); MoE models only")
    ep_comm_overlap: bool = Field(False, description=(
        "the dispatch/combine all-to-all overlapped with computation (Megatron-Core "
        "--overlap-moe-expert-parallel-comm, DeepSeek's dual micro-batch overlap); needs ep > 1"))
    attention_dp: PositiveInt = Field(1, description=(
        "attention data parallelism inside one serving replica of tp devices: attention_dp ranks each run their own "
        "requests through attention (tp / attention_dp devices each, own KV cache and scheduler), the routed experts "
        "expert-parallel over all tp devices in lockstep (SGLang --dp N --enable-dp-attention, TensorRT-LLM "
        "enable_attention_dp); divides tp; MoE models, serving only; 1 = off"))
    sharing: Sharing | None = Field(None, description="override the scenario's sharing for this strategy "
                                                      "(keys given here replace the scenario's)")

    @property
    def model_parallel(self) -> int:
        """Devices one model replica spans (tp*pp*cp)."""
        return self.tp * self.pp * self.cp

    @property
    def expert_tp(self) -> int:
        """The expert tensor-parallel size: etp, or tp when unset (Megatron-Core's default)."""
        return self.etp if self.etp is not None else self.tp

    @property
    def m_submodels(self) -> int:
        """m in T = m*C/n: the model partitions (tp*pp)."""
        return self.tp * self.pp


Problem = tuple[str, str] | None


def check_strategy_shape(s: Strategy, w: Workload, serving: bool = False) -> Problem:
    """Rules that depend only on the model and the strategy, not on the device count. `serving`: the strategy
    describes a serving replica, whose expert grid is carved from its own tp ranks (the ep it may take divides tp).

    None when valid, else (key inside the strategy, message naming what is allowed); the caller prefixes
    the path."""
    m = w.model
    if m.heads % s.tp:
        return "tp", f"{s.tp} does not divide heads={m.heads} (allowed: {shown_divisors(m.heads)})"
    kv = m.kv_heads or m.heads
    if kv % s.tp and s.tp % kv:
        return "tp", (f"{s.tp} and kv_heads={kv} must divide one another (KV heads are split when tp <= kv_heads, "
                      f"replicated when tp > kv_heads)")
    if (m.ffn_hidden or 0) % s.tp:
        return "tp", f"{s.tp} does not divide ffn_hidden={m.ffn_hidden}"
    if s.sp and s.tp == 1:
        return "sp", "sequence parallelism shards activations across the tensor-parallel group; it needs tp > 1"
    if s.sp and m.seq_len % s.tp:
        return "sp", f"seq_len={m.seq_len} is not divisible by tp={s.tp}"
    if s.tp_comm_overlap and not s.sp:
        return "tp_comm_overlap", ("overlaps the all-gathers and reduce-scatters of sequence parallelism with the "
                                   "GEMMs; it needs sp: true (Megatron-Core asserts --sequence-parallel)")
    if s.overlap_param_gather and s.zero == 0:
        return "overlap_param_gather", ("overlaps the all-gather of the parameters the distributed optimizer "
                                        "updated in shards; it needs zero >= 1")
    if s.overlap_param_gather and not s.overlap_grad_reduce:
        return "overlap_param_gather", ("needs overlap_grad_reduce: true (Megatron-Core asserts "
                                        "--overlap-grad-reduce with --overlap-param-gather)")
    if s.overlap_p2p and s.schedule != "interleaved":
        return "overlap_p2p", (f"Megatron-Core overlaps pipeline sends and receives only in the interleaved "
                               f"schedule (got {s.schedule}; leave overlap_p2p unset or false)")
    if s.virtual_stages > 1 and s.schedule != "interleaved":
        return "virtual_stages", f"{s.virtual_stages} needs schedule: interleaved (got {s.schedule})"
    if s.schedule == "interleaved" and s.pp == 1:
        return "schedule", "interleaved needs pp > 1"
    try:
        stage_layer_counts(s, m.layers)
    except SplitError as e:
        return e.key, e.message
    if m.seq_len % s.cp:
        return "cp", f"{s.cp} does not divide seq_len={m.seq_len} (allowed: {shown_divisors(m.seq_len)})"
    problem = check_expert_parallel(s, m, serving)
    if problem:
        return problem
    if s.cp > 1 and w.mode == "decode":
        return "cp", "context parallelism splits a long prompt; decode generates one token at a time (use cp: 1)"
    return None


def check_expert_parallel(s: Strategy, m: ModelSpec, serving: bool = False) -> Problem:
    """Expert-parallel rules that need only the file: ep and etp on a dense model, ep dividing the experts,
    etp dividing the expert widths; in `serving`, the ep values offered also divide tp (a serving replica's
    experts live on its own tp ranks: runner.serving_expert_grid_problem). That ep*etp divides the tp*cp*dp ranks it is carved from needs dp: it is
    checked with the device count (llmsim.strategy.resolve_layout)."""
    if m.moe is None:
        if s.ep > 1:
            return "ep", (f"{s.ep}: expert parallelism needs a mixture-of-experts model (workload.model.moe); "
                          f"this one is dense (allowed: 1)")
        if s.etp is not None:
            return "etp", (f"{s.etp}: expert tensor parallelism needs a mixture-of-experts model "
                           f"(workload.model.moe); omit etp for a dense model")
    if s.ep_comm_overlap and s.ep == 1:
        return "ep_comm_overlap", "overlaps the expert-parallel all-to-all; it needs ep > 1"
    if s.attention_dp > 1:
        if m.moe is None:
            return "attention_dp", (f"{s.attention_dp}: attention data parallelism is modeled for a "
                                    f"mixture-of-experts model only (this one is dense; allowed: 1)")
        if s.tp % s.attention_dp:
            return "attention_dp", f"{s.attention_dp} does not divide tp={s.tp} (allowed: {shown_divisors(s.tp)})"
        if s.pp > 1:
            return "attention_dp", (f"{s.attention_dp} with pp={s.pp} is not modeled (allowed: pp 1, or "
                                    f"attention_dp 1)")
    if m.moe is None:
        return None
    if m.moe.experts % s.ep:
        if serving:   # offer only what the replica can also take: ep dividing both the experts and tp
            allowed = ", ".join(str(d) for d in range(1, min(m.moe.experts, s.tp) + 1)
                                if m.moe.experts % d == 0 and s.tp % d == 0)
            return "ep", (f"{s.ep} does not divide experts={m.moe.experts} (allowed in a serving replica of "
                          f"tp={s.tp}: {allowed})")
        return "ep", f"{s.ep} does not divide experts={m.moe.experts} (allowed: {shown_divisors(m.moe.experts)})"
    if m.expert_ffn % s.expert_tp:
        return ("etp" if s.etp is not None else "tp"), (f"{s.expert_tp} (the expert tensor-parallel size) does not "
                                                        f"divide moe.expert_ffn_hidden={m.expert_ffn}")
    # Shared experts are a dense MLP of the tensor-parallel group (Megatron-Core SharedExpertMLP).
    if m.moe.shared_experts and (m.moe.shared_experts * m.shared_expert_ffn) % s.tp:
        return "tp", (f"{s.tp} does not divide the shared experts' width moe.shared_experts * "
                      f"shared_expert_ffn_hidden = {m.moe.shared_experts * m.shared_expert_ffn}")
    return None


def stage_layer_counts(s: Strategy, layers: int) -> tuple[int, ...]:
    """The layers each of the strategy's pp stages holds (llmsim.stages: its split keys, or the default
    split). Raises llmsim.stages.SplitError naming the key and what is allowed."""
    return split_layers(layers, s.pp, s.virtual_stages if s.schedule == "interleaved" else 1,
                        stage_layers=s.stage_layers, first_stage_layers=s.first_stage_layers,
                        last_stage_layers=s.last_stage_layers, embedding_as_layer=s.embedding_as_layer,
                        loss_as_layer=s.loss_as_layer)


def check_sharing(sharing: Sharing, m: ModelSpec) -> Problem:
    """Cross-layer sharing must split the layers evenly: None, or (key inside the sharing block, message)."""
    if sharing.lora is not None and m.mla is not None:
        return "lora", ("LoRA on a multi-head latent attention model (workload.model.mla) is not modelled: its "
                        "adapters target the fused q/k/v projection (allowed: no lora with mla)")
    if sharing.lora is not None:
        try:
            adapters = lora_adapters(m, sharing.lora.targets)
        except ValueError as e:
            return "lora.targets", str(e)
        smallest = min(min(a.in_features, a.out_features) for a in adapters)
        if sharing.lora.rank > smallest:  # B A of rank r has rank min(r, in, out): a larger r adds only parameters
            return "lora.rank", (f"{sharing.lora.rank} exceeds the smallest dimension of an adapted projection "
                                 f"({smallest}); allowed: 1 ... {smallest}")
    if sharing.layer_groups is not None and m.layers % sharing.layer_groups:
        return "layer_groups", (f"{sharing.layer_groups} does not divide layers={m.layers} "
                                f"(allowed: {shown_divisors(m.layers)})")
    if sharing.layer_groups is not None and m.sliding_window is not None:
        return "layer_groups", (f"{sharing.layer_groups} with workload.model.sliding_window: a shared block would "
                                f"serve windowed and full layers alike (allowed: null with a sliding_window)")
    if sharing.layer_groups is not None and m.moe is not None:
        k = sharing.layer_groups
        mixed = next((i for i in range(m.layers) if m.is_moe_layer(i) != m.is_moe_layer(i % k)), None)
        if mixed is not None:
            return "layer_groups", (f"{k}: layer {mixed} would reuse block {mixed % k}, but one is a mixture of "
                                    f"experts and the other dense (moe.layer_freq / first_dense_layers); allowed: "
                                    f"a k whose round-robin keeps every layer's kind")
    return None


def _lengths_past_context(lengths: Lengths, seq_len: int) -> str | None:
    """Why every request of the lengths block would be rejected, as vLLM rejects prompt + max_tokens >
    max_model_len (None when some fit): its shortest pair is longer than the context, or, for an unbounded
    form, none of the probe's pairs (serving.requests.probe_pairs) that pass the filter fits."""
    if isinstance(lengths.input, int) and isinstance(lengths.output, int):
        if lengths.input + lengths.output <= seq_len:
            return None
        return (f"input {lengths.input} + output {lengths.output} tokens exceed the model's context "
                f"seq_len={seq_len}: every request would be rejected (allowed: input + output <= {seq_len}, or "
                f"raise workload.model.seq_len)")
    from llmsim.serving.requests import PROBE_DRAWS, probe_pairs

    shortest = length_bounds(lengths.input)[0] + length_bounds(lengths.output)[0]
    if shortest <= seq_len:
        pairs = [p for p in probe_pairs(lengths) if lengths.passes(*p)]
        if not pairs or any(a + b <= seq_len for a, b in pairs):
            return None
        shortest = min(a + b for a, b in pairs)
        what = f"none of {PROBE_DRAWS:,} drawn requests fits (the shortest is {shortest:,} tokens)"
    else:
        what = f"the shortest request the forms can draw is {shortest:,} tokens"
    return (f"{what}, more than the model's context seq_len={seq_len}: every request would be rejected "
            f"(allowed: shorter lengths, a max_total filter, or a larger workload.model.seq_len)")


def _draft_shortfall(name: str, seq_len: int) -> str | None:
    """What keeps preset `name` from drafting for a served context of `seq_len` tokens (draft_model_problem)."""
    draft = ModelSpec.model_validate({"preset": name})
    if not draft.causal:
        return f"{name!r} is not a causal decoder (a draft proposes the next tokens)"
    if draft.positions == "learned" and (draft.max_positions or draft.seq_len) < seq_len:
        return (f"{name!r} holds {draft.max_positions or draft.seq_len} positions, fewer than the served context "
                f"seq_len={seq_len}")
    return None


def draft_model_problem(name: str, seq_len: int) -> str | None:
    """Why preset `name` cannot be the draft model of a served context of `seq_len` tokens, with the presets that
    can, or None: a draft proposes the next tokens, so it is a causal decoder, and it runs on the same sequences,
    so its context holds seq_len (a learned position table of max_positions; the draft is priced at the target's
    seq_len: modeled_serving.speculative_draft). The draft's tokenizer matching the target's is not checked."""
    shortfall = _draft_shortfall(name, seq_len)
    if shortfall is None:
        return None
    return f"{shortfall}; allowed: {', '.join(n for n in PRESETS if _draft_shortfall(n, seq_len) is None)}"


def check_serving(serving: ServingSpec, w: Workload, mode_given: bool) -> Problem:
    """A serving block needs a decoder that generates (key path from the top of the file, message)."""
    if not w.model.causal:
        return "workload.model.causal", "serving generates tokens: it needs a causal decoder (causal: true)"
    if mode_given and w.mode == "train":
        return "workload.mode", ("'train' cannot be served; with a serving: block leave mode out (the request list "
                                 "sets the batches and lengths) or write decode")
    rates = [] if serving.arrival.kind == "trace" else serving.arrival.rates   # a trace sends its rows
    few = arrival_count_problem(serving.requests, serving.duration_s, rates, at_least_one=True)
    if few is not None:
        return f"serving.{few[0]}", few[1]
    speculative = serving.speculative
    if speculative is not None:
        budget = serving.scheduler.max_batched_tokens
        if speculative.num_draft_tokens + 1 > budget:   # one decoding sequence verifies k + 1 tokens in one step
            return "serving.speculative.num_draft_tokens", (
                f"{speculative.num_draft_tokens}: a decoding sequence verifies num_draft_tokens + 1 tokens in one "
                f"step, more than serving.scheduler.max_batched_tokens={budget}; allowed: 1 ... {budget - 1}")
        if speculative.head_layers > w.model.layers:
            return "serving.speculative.draft_layers", (
                f"{speculative.head_layers}: a draft head of more layers than the model's {w.model.layers}; "
                f"allowed: 1 ... {w.model.layers}")
    if speculative is not None and speculative.method == "draft":   # the draft is a preset model
        if speculative.draft_model is None:
            return "serving.speculative.draft_model", (f"method draft needs draft_model, a model preset (allowed: "
                                                       f"{', '.join(PRESETS)})")
        if speculative.draft_model not in PRESETS:
            return "serving.speculative.draft_model", (f"unknown preset {shown_value(speculative.draft_model)} "
                                                       f"(allowed: {', '.join(PRESETS)})")
        problem = draft_model_problem(speculative.draft_model, w.model.seq_len)
        if problem is not None:
            return "serving.speculative.draft_model", problem
    lengths = serving.lengths
    if lengths is not None:
        from llmsim.serving.requests import filter_problem  # the drawing side of the serving block

        unpassable = filter_problem(lengths)
        if unpassable is not None:
            return f"serving.lengths.{unpassable[0]}", unpassable[1]
        problem = _lengths_past_context(lengths, w.model.seq_len)
        if problem is not None:
            return "serving.lengths", problem
    if serving.kv_block_tokens > w.model.seq_len:
        # a block holds the tokens of one sequence: one larger than the context is never filled
        return "serving.kv_block_tokens", (
            f"{serving.kv_block_tokens} exceeds the model's context seq_len={w.model.seq_len}: a cache block holds "
            f"one sequence's tokens, so every sequence would hold a block it can never fill (allowed: 1 ... "
            f"{w.model.seq_len}; vLLM's GPU block sizes are 1 ... 256)")
    sched = serving.scheduler
    if sched.kind in ("static", "continuous", "prefill-first") and sched.max_batched_tokens < w.model.seq_len:
        # vLLM (vllm/config/scheduler.py; V0's SchedulerConfig._verify_args likewise) refuses
        # max_num_batched_tokens < max_model_len without chunked prefill: a prompt (or a preempted request's
        # recompute) up to the context must fit one iteration.
        return "serving.scheduler.max_batched_tokens", (
            f"{sched.max_batched_tokens} is below the model's context seq_len={w.model.seq_len}; without chunked "
            f"prefill ({sched.kind}) a whole prompt must fit one iteration (allowed: >= {w.model.seq_len}, or "
            f"kind: chunked-prefill)")
    if sched.kind == "tgi":
        # TGI 2.1's launcher (launcher/src/main.rs): max_batch_prefill_tokens >= max_input_tokens, the longest
        # prompt, at most max_total_tokens - 1 (the context less one answer token); and max_total_tokens <=
        # max_batch_total_tokens, so that one request fits the running batch alone.
        if sched.max_batched_tokens < w.model.seq_len - 1:
            return "serving.scheduler.max_batched_tokens", (
                f"{sched.max_batched_tokens} is below the longest prompt, seq_len - 1 = {w.model.seq_len - 1}; TGI "
                f"prefills a whole prompt in one pass (max_batch_prefill_tokens >= max_input_tokens; allowed: >= "
                f"{w.model.seq_len - 1})")
        if sched.max_batch_total_tokens is not None and sched.max_batch_total_tokens < w.model.seq_len:
            return "serving.scheduler.max_batch_total_tokens", (
                f"{sched.max_batch_total_tokens} is below the model's context seq_len={w.model.seq_len}; TGI needs "
                f"max_total_tokens <= max_batch_total_tokens (allowed: >= {w.model.seq_len}, or leave it out: the "
                f"KV cache's tokens)")
    return None


def unused_workload_notes(w: Workload, serving: ServingSpec) -> list[tuple[str, str]]:
    """(key path, note) for each workload key a serving scenario states that its run does not read: the requests
    in flight come from the arrivals and the scheduler's limits, their lengths from the request list
    (modeled_serving.reference_workload traces one sequence whatever batch and decode_tokens say; the vllm backend
    maps the scheduler's keys). Not errors: a plan's best.yaml keeps the keys its plan stated. A value equal to the
    key's default is not noted: a run folder's scenario.yaml states every default (runner.saved_scenario), and the
    rerun of it must read as quietly as the run did. decode_tokens is read where mode: decode sizes a learned
    position table (Workload._check: seq_len + decode_tokens positions), so it is noted only elsewhere."""
    given = w.model_fields_set
    default = Workload.model_fields
    notes: list[tuple[str, str]] = []
    if "mode" in given and w.mode == "prefill":   # 'train' is refused (check_serving); 'decode' is what a server does
        notes.append(("workload.mode", "'prefill' is not used with a serving: block: every request is prefilled and "
                                       "then decoded (leave mode out, or write decode)"))
    if "batch" in given and w.batch != default["batch"].default:
        sched = serving.scheduler
        notes.append(("workload.batch", f"{w.batch} is not used with a serving: block: the sequences in flight are the "
                                        f"requests the arrivals bring, at most serving.scheduler.max_num_seqs="
                                        f"{sched.max_num_seqs} a replica and max_batched_tokens="
                                        f"{sched.max_batched_tokens} tokens an iteration"))
    sizes_positions = w.mode == "decode" and w.model.positions == "learned" and \
        "max_positions" not in w.model.model_fields_set
    if "decode_tokens" in given and w.decode_tokens != default["decode_tokens"].default and not sizes_positions:
        source = "serving.lengths.output" if serving.lengths is not None else "the trace's output_tokens"
        notes.append(("workload.decode_tokens", f"{w.decode_tokens} is not used with a serving: block: each request "
                                                f"generates the tokens {source} gives it"))
    return notes


def check_serving_strategy(s: Strategy, serving: ServingSpec) -> Problem:
    """One replica is tp x pp devices; data parallelism is `serving.replicas` (key inside the strategy, message)."""
    if s.dp is not None and s.dp != serving.replicas:
        return "dp", (f"{s.dp}: with a serving: block the data-parallel copies are serving.replicas "
                      f"({serving.replicas}); omit dp")
    if s.cp > 1:
        return "cp", "serving runs one model replica per tp x pp devices, without context parallelism (use cp: 1)"
    if s.zero:
        return "zero", "ZeRO shards training state; a serving replica holds its whole tp x pp share (use zero: 0)"
    if s.schedule == "interleaved":
        return "schedule", "interleaved is a training pipeline schedule; serving fills the pipeline in order (1f1b)"
    if serving.speculative is not None and s.pp > 1:
        # the draft passes and the verify are priced as passes of one pipeline stage (costmodel.iteration
        # draft_times); no engine's pipelined speculative schedule was read, so pp > 1 is refused, not guessed
        return "pp", (f"{s.pp}: speculative decoding (serving.speculative) is modeled at pp 1 only "
                      f"(allowed: pp 1, or no serving.speculative)")
    if serving.disaggregation is not None:   # llmsim.serving.disaggregation prices pp 1
        if s.pp > 1:
            return "pp", f"{s.pp}: pipeline parallelism is not modeled with serving.disaggregation (allowed: 1)"
    return None


def side_problem(side: str, index: int, strategy: Strategy, problem: tuple[str, str]) -> tuple[str, str]:
    """(key path, message) of a problem of one disaggregated side's strategy (Disaggregation.side_strategy): a key
    the side can set (tp, ep, etp, attention_dp) is named under serving.disaggregation.<side>, where setting it
    mends the problem; any other is the strategy's own key, named under strategies[index]."""
    key, message = problem
    if key in SIDE_STRATEGY_KEYS:
        return f"serving.disaggregation.{side}.{key}", f"{message} (strategy {strategy.name!r})"
    return f"strategies[{index}].{key}", f"{message} (in the serving.disaggregation.{side} instances)"


class Scenario(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]
    workload: Workload
    sharing: Sharing = Field(default_factory=Sharing)
    strategies: list[Strategy] = Field(default_factory=lambda: [Strategy()], min_length=1)
    backends: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"cpu": {}}, min_length=1)
    hardware_catalog: list[str] = Field(default_factory=list,
                                        description="extra hardware YAML files, relative to this file")
    seed: Seed = 0
    serving: ServingSpec | None = Field(None, description="a request-level serving run (arrivals, lengths, "
                                                          "scheduler, KV cache, replicas, SLO): docs/serving.md")

    @field_validator("backends", mode="before")
    @classmethod
    def _none_settings_are_empty(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        names = [s.name for s in self.strategies]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise _KeyedError(f"strategies[{i}].name", f"duplicate strategy name {name!r}")
        for i, strategy in enumerate(self.strategies):
            if strategy.attention_dp > 1 and self.serving is None:   # before its shape: the reason that stays
                raise _KeyedError(f"strategies[{i}].attention_dp", f"{strategy.attention_dp}: attention data "
                                  f"parallelism is modeled for serving (a serving: block) only (allowed: 1)")
            if (strategy.attention_dp > 1 and self.serving is not None
                    and self.serving.scheduler.recv_interval > 1):
                # SGLang's recv skipper asserts `not server_args.enable_dp_attention` (sglang 0.5.6.post1, python/
                # sglang/srt/managers/scheduler_recv_skipper.py `SchedulerRecvSkipper.__init__`)
                raise _KeyedError("serving.scheduler.recv_interval", f"{self.serving.scheduler.recv_interval} with "
                                  f"strategies[{i}].attention_dp={strategy.attention_dp}: SGLang skips its reads only "
                                  f"without attention data parallelism (allowed: 1, or attention_dp 1)")
            problem = check_strategy_shape(strategy, self.workload, self.serving is not None)
            if problem:
                raise _KeyedError(f"strategies[{i}].{problem[0]}", problem[1])
        problem = check_sharing(self.sharing, self.workload.model)
        if problem:
            raise _KeyedError(f"sharing.{problem[0]}", problem[1])
        for i, strategy in enumerate(self.strategies):
            if strategy.sharing is not None:
                problem = check_sharing(self.sharing_for(strategy), self.workload.model)
                if problem:
                    raise _KeyedError(f"strategies[{i}].sharing.{problem[0]}", problem[1])
        fp4 = self.workload.fp4
        if fp4 is not None and fp4.recipe != "nvfp4" and self.workload.mode == "train" and self.serving is None:
            # Transformer Engine's FP4 training recipe is NVFP4BlockScaling only (transformer_engine/common/recipe
            # /__init__.py at NVIDIA/TransformerEngine@d0067d0: DelayedScaling, Float8CurrentScaling,
            # MXFP8BlockScaling, Float8BlockScaling, NVFP4BlockScaling; no MXFP4 recipe)
            raise _KeyedError("workload.fp4.recipe", f"fp4 recipe {fp4.recipe} is not a training recipe (Transformer "
                              "Engine trains FP4 as NVFP4BlockScaling only); allowed in training: nvfp4; mxfp4 "
                              "is priced for prefill, decode and serving")
        quantized = self.workload.fp8 or self.workload.fp4
        if quantized is not None and quantized.attention == "float8" and (
                self.workload.mode != "train" or self.serving is not None):
            # Transformer Engine's FP8 dot-product attention is a training feature; in inference an engine runs
            # its attention in FP8 with an FP8 KV cache (serving.kv_cache_dtype), which prices that cache's reads
            block = "fp8" if self.workload.fp8 is not None else "fp4"
            raise _KeyedError(f"workload.{block}.attention", "float8 (Transformer Engine's FP8 dot-product "
                              "attention) is priced for training only; in prefill, decode and serving the "
                              "attention follows the KV cache (serving.kv_cache_dtype); allowed here: bfloat16")
        if fp4 is not None and fp4.layers == "mlp" and self.workload.mode == "train" and self.serving is None:
            # Transformer Engine's recipe quantizes every Linear of its fp8_autocast region; a training script that
            # keeps attention out of FP4 is not priced (its casts and copies differ)
            raise _KeyedError("workload.fp4.layers", "mlp (FP4 MLP GEMMs beside 16-bit attention projections) is "
                              "priced for prefill, decode and serving; allowed in training: all")
        fp8 = self.workload.fp8
        if (fp8 is not None and fp8.frozen_weights == "float8"
                and all(self.sharing_for(s).lora is None for s in self.strategies)):
            # only a LoRA base is frozen: without one the setting would be ignored, silently
            raise _KeyedError("workload.fp8.frozen_weights", "float8 keeps a frozen base's weights in FP8 only, and "
                             "no strategy freezes a base (set sharing.lora, or omit frozen_weights)")
        if self.serving is not None:
            problem = check_serving(self.serving, self.workload, "mode" in self.workload.model_fields_set)
            if problem:
                raise _KeyedError(*problem)
            for i, strategy in enumerate(self.strategies):
                problem = check_serving_strategy(strategy, self.serving)
                if problem:
                    raise _KeyedError(f"strategies[{i}].{problem[0]}", problem[1])
                disagg = self.serving.disaggregation
                for side in ("prefill", "decode") if disagg is not None else ():
                    side_strategy = disagg.side_strategy(side, strategy)
                    if side_strategy is not strategy:   # the side's own tp / experts, checked as a strategy's
                        problem = check_strategy_shape(side_strategy, self.workload, serving=True)
                        if problem:
                            raise _KeyedError(*side_problem(side, i, strategy, problem))
        return self

    def sharing_for(self, strategy: Strategy) -> Sharing:
        """The scenario's sharing with the keys the strategy sets itself replaced."""
        if strategy.sharing is None:
            return self.sharing
        return self.sharing.model_copy(update={k: getattr(strategy.sharing, k)
                                               for k in strategy.sharing.model_fields_set})

    def sharing_choice(self, strategy: Strategy) -> SharingChoice:
        """The sharing this strategy runs: its own keys over the scenario's, the tie resolved."""
        return SharingChoice.resolve(self.sharing_for(strategy), self.workload.model)

    def serving_notes(self) -> list[tuple[str, str]]:
        """(key path, note) for what a serving scenario states that is legal but surprising: the workload keys its
        run does not read (unused_workload_notes) and a KV block size vLLM does not take (ServingSpec.block_note).
        Empty without a serving: block. `llmsim validate` and `run` print them as notes."""
        if self.serving is None:
            return []
        notes = unused_workload_notes(self.workload, self.serving)
        block = self.serving.block_note()
        return notes + ([("serving.kv_block_tokens", block)] if block else [])


def apply_overrides(data: dict[str, Any], overrides: list[str], file: str,
                    created: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply `--set a.b[0].c=value` overrides; the value is parsed as YAML (so 4, true, [1, 2] work). A top-level
    block the file lacks is created, at any depth; `created` (if given) gets {the block's key path: the --set that
    created it}, so an error inside that block can say where it came from (load_file_model)."""
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(file, None, f"--set {item!r}: expected KEY=VALUE, e.g. workload.batch=16")
        key, raw = item.split("=", 1)
        parts = override_path(key, file)
        value = parse_yaml(raw, file, key, what=f"--set value {raw!r} is not valid YAML")
        node: Any = data
        for i, index in enumerate(parts):
            last = i == len(parts) - 1
            where = format_key_path(tuple(parts[:i]))
            if isinstance(index, int):
                if not isinstance(node, list):
                    raise ScenarioError(file, key, f"--set: [{index}]: {where} is not a list")
                if index < 0:  # Python's "from the end" would be a guess at what the user meant
                    hint = f"; the last element of {where} is [{len(node) - 1}]" if node else f"; {where} is empty"
                    raise ScenarioError(file, key, f"--set: [{index}]: a list index counts from [0] at the start, "
                                                   f"negative indices are not supported{hint}")
                if index >= len(node):
                    raise ScenarioError(file, key, f"--set: no list element [{index}]: {where} has "
                                                   f"{count(len(node), 'element')} (allowed: [0] to [{len(node) - 1}])"
                                        if node else f"--set: no list element [{index}]: {where} is empty")
            elif isinstance(node, list) and re.fullmatch(r"\d+", index):
                # `hardware.0.name`: an index written as a dotted name; say the key in brackets, as errors name it
                meant = format_key_path(tuple(parts[:i]) + (int(index),) + tuple(parts[i + 1:]))
                raise ScenarioError(file, key, f"--set: {where} is a list: its elements are written with the index "
                                               f"in brackets, {meant}")
            elif not isinstance(node, dict):
                what = "a list: give an index, [0]" if isinstance(node, list) else f"{node!r}, not a mapping of keys"
                raise ScenarioError(file, key, f"--set: {index!r} is not inside a mapping ({where} is {what})")
            if last:
                node[index] = value
            else:
                if isinstance(node, dict) and node.get(index) is None:
                    node[index] = {}
                    if created is not None:
                        created.setdefault(format_key_path(tuple(parts[:i + 1])), item)
                node = node[index]
    return data


MISSING_KEY = "required key is missing"  # a required key's error, as every file's reader prints it
_shown = shown_value


_ONE_VALUE = {"int_type": "integer", "int_parsing": "integer", "float_type": "number", "float_parsing": "number",
              "string_type": "string", "bool_type": "boolean", "bool_parsing": "boolean", "literal_error": "value"}


def one_value_expected(err: dict[str, Any]) -> str | None:
    """A list or mapping given where one value belongs (`tp: [2, 4]`, `mesh: {tp: [x, y]}`): pydantic says
    only 'Input should be a valid integer'; this says a single value is expected and what was given. None
    for any other error."""
    value = err.get("input")
    what = _ONE_VALUE.get(err["type"])
    if what is None or not isinstance(value, (list, tuple, dict)):
        return None
    given = "a mapping" if isinstance(value, dict) else "a list"
    allowed = literal_choices(err) if err["type"] == "literal_error" else (err.get("ctx") or {}).get("expected")
    return f"{_shown(value)}: expected one {what}, not {given}" + (f"; allowed: {allowed}" if allowed else "")


def wrong_kind(err: dict[str, Any]) -> str | None:
    """Null, a number or a boolean where another kind of single value belongs (`kv_lora_rank: null`): pydantic
    says 'Input should be a valid integer' after Python's None; this says `null: expected an integer`. None for
    any other error (text is strict.py's, a list or mapping one_value_expected's)."""
    what = _ONE_VALUE.get(err["type"])
    value = err.get("input")
    if what is None or err["type"] == "literal_error" or isinstance(value, (str, list, tuple, dict)):
        return None
    # trial 40: `--set name=` read as null said only 'expected a string'
    empty = "; a key with nothing after it (`KEY:` in a file, `--set KEY=`) is null: write the value" if value is None else ""
    return f"{_shown(value)}: expected {'an' if what[0] in 'aeiou' else 'a'} {what}{empty}"


def describe_error(err: dict[str, Any]) -> str:
    """One readable sentence from one pydantic error."""
    kind, msg = err["type"], err["msg"]
    single = one_value_expected(err)
    if single is not None:
        return single
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return MISSING_KEY
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{_shown(err.get('input'))}: expected a mapping of keys"
    if kind in ("list_type", "tuple_type"):   # a tuple field is a list in YAML (matmul_tiles: [[128, 128], ...])
        return f"{_shown(err.get('input'))}: expected a list"
    if kind == "too_short":
        least = (err.get("ctx") or {}).get("min_length", 1)
        return f"{_shown(err.get('input'))}: needs at least {count(least, 'item')}"
    given = err.get("input")
    if kind == "float_type" and isinstance(given, int) and not isinstance(given, bool):
        return f"{_shown(given)}: too large for a number (at most ~1.8e308)"   # an integer no float can hold
    wrong = wrong_kind(err)
    if wrong is not None:
        return wrong
    if kind == "literal_error":
        return literal_error(err)
    if kind == "int_from_float":   # pydantic: 'Input should be a valid integer, got a number with a fractional part'
        return f"{_shown(err.get('input'))}: expected a whole number"
    if kind == "int_parsing_size":  # 1e30: 'Unable to parse input string as an integer, exceeded maximum size'
        return f"{_shown(err.get('input'))}: too large for a whole number"
    if kind == "int_parsing":   # 'x': 'Input should be a valid integer, unable to parse string as an integer'
        return f"{_shown(err.get('input'))}: expected a whole number"
    if kind == "float_parsing":  # 'x': 'Input should be a valid number, unable to parse string as a number'
        return f"{_shown(err.get('input'))}: expected a number"
    ctx = err.get("ctx") or {}
    if kind == "string_pattern_mismatch":  # a name: 'String should match pattern ...' (a regex)
        if ctx.get("pattern") == NAME_PATTERN:
            return (f"{_shown(err.get('input'))}: not a name; allowed: lowercase letters, digits and '-', starting "
                    f"with a letter or digit (e.g. tp8-pp2)")
        return f"{_shown(err.get('input'))}: does not match; allowed: the pattern {ctx.get('pattern')}"
    if kind == "string_too_short":  # 'String should have at least 3 characters'
        return f"{_shown(err.get('input'))}: too short; allowed: at least {count(ctx.get('min_length', 1), 'character')}"
    if kind == "string_too_long":  # a name longer than NAME_MAX_LENGTH: it becomes part of file names
        return f"{_shown(err.get('input'))}: too long; allowed: at most {count(ctx.get('max_length', 1), 'character')}"
    bounded = number_error(err)  # .nan / .inf; a bound where the field's model is not at hand (out_of_range: all)
    if bounded is not None:
        return bounded
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{_shown(err.get('input'))}: {msg}" if kind.startswith(("literal", "int", "greater", "less", "string_pattern",
                                                              "bool", "float", "too_short", "finite")) else msg


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> Any:
    """The pydantic model that holds the keys at `path` (list indexes skipped; the first model in a union or
    a list's items); None where the path leaves the models."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        ann, holder = field.annotation, None
        for candidate in getattr(ann, "__args__", ()) + (ann,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                holder = candidate
                break
            holder = next((inner for inner in getattr(candidate, "__args__", ())
                           if isinstance(inner, type) and issubclass(inner, BaseModel)), None)
            if holder is not None:
                break
        if holder is None:   # a field of plain values or a free mapping (`backends`): no model holds its keys
            return None
        current = holder
    return current


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The keys allowed where an unknown key was found, for the error message."""
    fields = getattr(_model_at(model, loc[:-1]), "model_fields", None)
    return f"; allowed: {', '.join(fields)}" if fields else ""


# annotated_types' bound classes (what pydantic's Field(gt=..., le=...) stores) and how a message writes them
def allowed_range(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """'; allowed: > 0 and <= 1' for a number out of its field's bounds: pydantic's message names only the
    bound that was broken ('Input should be greater than 0'), this names them all. '' where the field or its
    bounds cannot be found (a union of differently bounded types names the bounds of all its members)."""
    while loc and isinstance(loc[-1], int):  # an item of a list: its field's bounds (stage_layers[1])
        loc = loc[:-1]
    parent = _model_at(model, tuple(loc[:-1]))
    field = getattr(parent, "model_fields", {}).get(loc[-1]) if loc else None
    if field is None and len(loc) >= 2:   # a mapping's value (peak_flops.bfloat16): the bounds of its values
        holder = _model_at(model, tuple(loc[:-2]))
        mapping = getattr(holder, "model_fields", {}).get(loc[-2])
        if mapping is not None and typing.get_origin(mapping.annotation) is dict:
            field = mapping
    return field_range(field) if field is not None else ""


def out_of_range(model: type[BaseModel], err: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """A number outside its field's bounds, with every bound (`0: out of range; allowed: >= 1`); pydantic's own
    sentence where the field's bounds cannot be found."""
    allowed = allowed_range(model, loc)
    return f"{shown_input(err.get('input'))}: out of range{allowed}" if allowed else describe_error(err)


# The names pydantic puts in an error's location for the member of a union it tried (`rate.constrained-float`,
# `input.list[constrained-int]`) or a validator function it ran: no key of a user's file is spelt so.
_UNION_MEMBER = re.compile(r"^(constrained-(int|float|str)|int|float|str|bool|none|"
                           r"(list|dict|tuple|set|nullable|tagged-union|literal|function-(after|before|wrap|plain))"
                           r"\[.*\])$")


def user_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location as the user's keys: pydantic's union members and validator functions left out."""
    return tuple(p for p in loc if not (isinstance(p, str) and _UNION_MEMBER.match(p)))


# pydantic's error types for a value where a number belongs (text, 2.5 for an integer, 1e30, .inf, null): their
# messages add the key's range, wherever the key is (a scenario's, a backend setting's, a catalog entry's).
NUMBER_WANTED = ("int_from_float", "int_parsing_size", "int_parsing", "float_parsing", "finite_number", "float_type",
                 "int_type")


def validation_error(model: type[BaseModel], exc: ValidationError, file: str) -> ScenarioError:
    """Convert pydantic's error list to the first error, as a one-line ScenarioError (the other errors named by
    their keys; a union's other members' errors at the same key are the same problem, not counted again)."""
    err = exc.errors(include_url=False)[0]
    loc = user_loc(err["loc"])
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _KeyedError):
        prefix = format_key_path(loc)
        message = ctx_err.message   # strict's own words already name the key's range
        return ScenarioError(file, f"{prefix}.{ctx_err.key}" if prefix else ctx_err.key, message)
    message = describe_error(err)
    if one_value_expected(err) is not None and loc[:1] == ("strategies",) and len(loc) == 3:
        message += f" (to compare several values of {loc[2]}, list one strategy per value)"
    if err["type"] == "extra_forbidden":
        message += allowed_keys(model, loc)
    elif err["type"].startswith(("greater_than", "less_than")):
        message = out_of_range(model, err, loc)
    elif err["type"] in ("int_from_float", "int_parsing_size", "int_parsing"):   # 2.5, 1e30, 'x': what the field takes
        message += allowed_range(model, loc) or "; allowed: an integer"
    elif err["type"] == "float_parsing":
        message += allowed_range(model, loc) or "; allowed: a number"
    elif err["type"] in NUMBER_WANTED and not isinstance(err.get("input"), (list, dict)):
        message += allowed_range(model, loc)   # .nan / .inf / null: what the key takes, as for any number it refuses
    elif err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        message += allowed_keys(model, (*loc, ""))  # the keys of the mapping expected here
    others = [format_key_path(user_loc(e["loc"])) or "the file" for e in exc.errors(include_url=False)[1:]
              if user_loc(e["loc"]) != loc]
    if others:  # where the others are, so that the user need not fix one to learn of the next
        named = ", ".join(dict.fromkeys(others[:3])) + (", ..." if len(others) > 3 else "")
        message += f" (and {count(len(others), 'more problem')}: {named})"
    return ScenarioError(file, format_key_path(loc) or None, message)


FileModel = TypeVar("FileModel", bound=BaseModel)


def parse_file_model(model: type[FileModel], data: Any, file: str) -> FileModel:
    """Validate a user file's content against `model`; the first problem as a one-line ScenarioError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(model, exc, file) from None


def load_file_model(model: type[FileModel], path: str | Path, overrides: list[str] | None = None,
                    other_kind: tuple[str, str] | None = None) -> FileModel:
    """Safe YAML, then `--set` overrides, then validation: how every user file (scenario, plan) is read.

    `other_kind` = (a top-level key only the other kind of file has, the command that reads that kind): a
    file that has it, given to the wrong command, is told so in one line instead of a list of unknown keys.
    """
    file = str(path)
    data = read_yaml(path)
    if other_kind is not None and other_kind[0] in data and other_kind[0] not in model.model_fields:
        key, command = other_kind
        raise ScenarioError(file, key, f"this file has {key}: and is read by `llmsim {command}`; run "
                                       f"`llmsim {command} {file}`")
    created: dict[str, str] = {}
    data = apply_overrides(data, overrides or [], file, created)
    try:
        return parse_file_model(model, data, file)
    except ScenarioError as exc:
        key = exc.key or ""
        block = next((path for path in sorted(created, key=len, reverse=True)
                      if key.startswith(path) and key[len(path):len(path) + 1] in (".", "[")), None)
        if block is None or exc.message != MISSING_KEY:
            raise  # an error of the value itself reads as it is
        raise ScenarioError(exc.file, exc.key, f"{exc.message} (this file has no {block}: block; --set "
                                               f"{created[block]} created one, which needs its other keys too: "
                                               f"add the block to the file)") from None


def parse_scenario(data: dict[str, Any], file: str = "<scenario>") -> Scenario:
    return parse_file_model(Scenario, data, file)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Load and validate a scenario file (phase 1: everything that needs no backend)."""
    return load_file_model(Scenario, path, overrides, other_kind=("goal", "plan"))
