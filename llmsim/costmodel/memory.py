"""Memory per device: parameters, gradients, optimizer state, activations, KV cache.

Mixed precision with Adam (Rajbhandari et al. 2020, "ZeRO", Sec. 3.1): 16-bit parameters and gradients
(2 + 2 bytes per parameter) plus an fp32 master copy and Adam's m and v (12 bytes). ZeRO stage 1 divides
the optimizer state by dp x cp, stage 2 also the gradients, stage 3 also the parameters (context-parallel
ranks replicate the weights, so ZeRO/FSDP shards over both: Plan.dp_cp). An fp32 workload
keeps 4-byte parameters and gradients and 8 bytes of Adam state.

Parameters on one tensor-parallel rank (tp_block_params): the column/row-parallel weights and the vocabulary
divide by tp; the K and V projections by min(tp, kv_heads), since with tp > kv_heads every rank keeps a whole
replicated KV head; norms, row-parallel biases, q/k head norms, the final norm and learned position/type
tables stay whole on every rank (Megatron-LM). Gradients and optimizer state follow the parameters.

Activations are a derived inventory of the tensors each layer keeps for its backward (costmodel.activations):
per tensor its size from the model's shape, its dtype, and whether tensor parallelism, sequence
parallelism and context parallelism divide it; recomputation drops what it rebuilds. The traced module's
saved bytes (WorkloadProfile) are the cross-check of that inventory, not its source.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from llmsim.costmodel.memo import scoped_memo
from llmsim.config import lora_params_per_block
from llmsim.costmodel.activations import edge_inventory, inventory_bytes, layer_inventory
from llmsim.costmodel.pipeline import in_flight_microbatches
from llmsim.costmodel import moe, precision
from llmsim.costmodel.arrays import Num, is_array, pick
from llmsim.costmodel.plan import DTYPE_BYTES, Options, Plan

if TYPE_CHECKING:
    from llmsim.config import ModelSpec, SharingChoice, Workload
    from llmsim.hardware import DeviceSpec
    from llmsim.workload.profile import WorkloadProfile

ADAM_STATE_BYTES_MIXED = 12   # fp32 master + m + v (ZeRO paper, "K = 12")
ADAM_STATE_BYTES_FP32 = 8     # m + v; the fp32 parameters are the master copy
ADAM_MOMENTS = 2              # m and v, each one element per parameter (Options.master_weights False: 16-bit)
FP32_BYTES = 4


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes on the busiest device, by kind."""

    params: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    stage: str = "all"
    notes: tuple[str, ...] = field(default_factory=tuple)
    stage_index: int = 0

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.kv_cache

    def fits(self, capacity: float) -> bool:
        """Whether this fits in `capacity` bytes per device (exactly full fits; 0 = unknown: assumed to fit)."""
        return not capacity or self.total <= capacity

    def as_dict(self) -> dict[str, float]:
        return {"params": self.params, "grads": self.grads, "optimizer": self.optimizer,
                "activations": self.activations, "kv_cache": self.kv_cache}

    def describe(self, capacity: float | None = None) -> str:
        """'needs 412.3 GB/device (params 87.5, grads ..., ...) > 80 GB' (decimal GB)."""
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.1f}" for k, v in self.as_dict().items() if v > 0)
        text = f"needs {self.total / 1e9:.1f} GB/device ({parts})"
        if capacity:
            text += f" > {capacity / 1e9:.1f} GB"
        return text


Stage = str | int  # a pipeline stage: its index (0 .. pp-1), or a kind: first | middle | last


def stage_of(plan: Plan, stage: Stage) -> tuple[str, int]:
    """(kind, index) of a pipeline stage given by index or by kind. 'middle' is stage 1, or with pp <= 2
    (no middle stage) the layers of stage 0 without its embedding."""
    if isinstance(stage, int):
        if not 0 <= stage < plan.pp:
            raise ValueError(f"stage {stage} of a {plan.pp}-stage pipeline")
        kind = "first" if stage == 0 else "last" if stage == plan.pp - 1 else "middle"
        return kind, stage
    index = {"first": 0, "last": plan.pp - 1, "middle": 1 if plan.pp > 2 else 0}[stage]
    return stage, index


def layers_per_device(layers: int, plan: Plan, stage: int = 0) -> int:
    """Layers pipeline stage `stage` holds, every chunk of it: the plan's split (Plan.layers_per_stage)."""
    return plan.layers_per_stage(layers)[stage]


def distinct_blocks_on_device(layers: int, layer_groups: int | None, plan: Plan, stage: int = 0) -> int:
    """Distinct weight sets a pipeline stage holds: its layers, or fewer when layers share blocks.

    Layer i uses block i mod k, so n consecutive layers (the stage's n, interleaved or not: the union
    of a device's chunks is n layers of a round-robin) touch min(k, n) distinct blocks.
    """
    local = layers_per_device(layers, plan, stage)
    return min(layer_groups, local) if layer_groups else local


def kv_projection_params(spec: "ModelSpec") -> int:
    """Parameters of one layer's K and V projections: 2 x hidden x kv_heads x head_dim weights (+ biases).
    Multi-head latent attention: what every tensor-parallel rank holds whole instead (ModelSpec.kv_split = 1),
    its down-projections hidden -> q_lora_rank and hidden -> kv_lora_rank + rope (+ their biases) and the two
    latent RMSNorms (q_lora_rank + kv_lora_rank weights): vLLM/SGLang deepseek_v2.py ReplicatedLinear, Megatron-
    Core MLA's 'duplicated' down-projections."""
    if spec.mla is not None:
        m = spec.mla
        down = (m.q_lora_rank or 0) + m.cache_width
        return spec.hidden * down + (down if spec.bias else 0) + (m.q_lora_rank or 0) + m.kv_lora_rank
    kv = spec.kv_heads or spec.heads
    width = kv * spec.head_width
    return 2 * width * spec.hidden + (2 * width if spec.bias else 0)


def _norm_params(spec: "ModelSpec") -> int:
    """One hidden-size norm: a LayerNorm's weight and bias (h + h; h without bias) or an RMSNorm's weight (h)
    (workload.model._norm: torch.nn.LayerNorm / torch.nn.RMSNorm)."""
    return spec.hidden * (2 if spec.norm == "layernorm" and spec.bias else 1)


def tp_replicated_layer_params(spec: "ModelSpec") -> int:
    """Parameters of one layer every tensor-parallel rank holds whole (Shoeybi et al. 2019, Sec. 3; Megatron-LM
    `ColumnParallelLinear` / `RowParallelLinear`): the two norms (one in a parallel block; their inputs are
    replicated), the biases of the row-parallel attention-out and MLP-out projections (added after the
    all-reduce), and the q/k head norms (`qk_norm`, one head_dim weight each, shared by all heads)."""
    qk = 2 * spec.head_width if spec.qk_norm else 0
    norms = 1 if spec.parallel_block else 2
    return norms * _norm_params(spec) + (2 * spec.hidden if spec.bias else 0) + qk


def tp_replicated_input_params(spec: "ModelSpec") -> int:
    """Parameters of the input side every tensor-parallel rank holds whole: the learned position and
    token-type tables (Megatron-LM's `Embedding` splits only the word embeddings over the vocabulary;
    llmsim.distributed.parallelize does the same)."""
    positions = (spec.max_positions or spec.seq_len) * spec.hidden if spec.positions == "learned" else 0
    return positions + spec.type_vocab * spec.hidden


def tp_block_params(spec: "ModelSpec", per_block: float, tp: int) -> float:
    """Parameters of one block (`per_block` in all) on one tensor-parallel rank.

    The column/row-parallel weights divide by tp; the K and V projections divide by min(tp, kv_heads): with
    tp > kv_heads each rank keeps its whole KV head, replicated on tp/kv_heads ranks (Megatron-LM GQA,
    `num_query_groups` < tp; llmsim.distributed.parallelize); norms and row-parallel biases stay whole
    (tp_replicated_layer_params). tp = 1 gives `per_block`.
    """
    if tp <= 1:
        return per_block
    kv, replicated = kv_projection_params(spec), tp_replicated_layer_params(spec)
    kv_split = spec.kv_split(tp)
    return (per_block - kv - replicated) / tp + kv / kv_split + replicated


def _expert_params(profile: "WorkloadProfile") -> int:
    """Parameters of all routed experts of the profile (0 for a dense model)."""
    return getattr(profile, "expert_params", 0) or 0


def stage_expert_params(workload: "Workload", profile: "WorkloadProfile", plan: Plan, stage: Stage) -> float:
    """Routed-expert parameters on one device of `stage`: the experts of the MoE layers the stage holds
    (moe.stage_moe_layers: which layers it holds, the model's pattern), its E/ep experts of each, 1/etp of
    every expert (costmodel.moe). 0 for a dense model."""
    experts = _expert_params(profile)
    spec = workload.model
    if not experts or not spec.moe_layers:
        return 0.0
    _, index = stage_of(plan, stage)
    return experts * moe.stage_moe_layers(workload, plan)[index] / spec.moe_layers / (plan.ep * plan.etp)


def mlp_params(spec: "ModelSpec", ffn: int) -> int:
    """Parameters of one MLP of width `ffn` (workload.model.MLP): fc (gate and up fused when gated) and proj,
    with their biases when the model has them."""
    up = ffn * (2 if spec.activation in ("swiglu", "geglu") else 1)
    return spec.hidden * up + ffn * spec.hidden + ((up + spec.hidden) if spec.bias else 0)


def dense_layer_excess_params(spec: "ModelSpec") -> int:
    """How many more parameters a dense layer holds than a MoE layer's non-expert part (routed experts left
    out): its MLP of width ffn_hidden, against the router (hidden x experts, no bias) and the shared experts
    (one MLP of width shared_experts x their width: workload.moe.MoELayer). Attention and norms are alike.
    DeepSeek-style first dense layers make it large (a wide dense MLP against a narrow shared expert)."""
    m = spec.moe
    if m is None:
        return 0
    shared = mlp_params(spec, m.shared_experts * spec.shared_expert_ffn) if m.shared_experts else 0
    return mlp_params(spec, spec.ffn_hidden) - spec.hidden * m.experts - shared


def stage_dense_layer_correction(workload: "Workload", plan: Plan, index: int) -> float:
    """Parameters to add to a stage's `layers x the mean layer's non-expert part` for the dense layers it
    really holds (moe.stage_moe_layers) instead of the model's share of them, on one tensor-parallel rank:
    (dense layers here - layers here x dense layers / layers) x `dense_layer_excess_params` / tp. Adds up to
    0 over the stages; 0 for a dense model or an all-MoE one. The whole difference is split over tp, as
    tp_block_params splits the mean layer's MLP and router."""
    spec = workload.model
    if spec.moe is None or spec.moe_layers == spec.layers:
        return 0.0
    n = plan.layers_per_stage(spec.layers)[index]
    dense_here = n - moe.stage_moe_layers(workload, plan)[index]
    dense_share = (spec.layers - spec.moe_layers) / spec.layers
    return (dense_here - n * dense_share) * dense_layer_excess_params(spec) / max(plan.tp, 1)


def _split(params: float, replicated: float, tp: int) -> float:
    """`params` on one tensor-parallel rank when `replicated` of them stay whole on every rank."""
    return params if tp <= 1 else (params - replicated) / tp + replicated


def edge_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice") -> tuple[float, float]:
    """(input side, output side) parameters outside the blocks, before tensor parallelism.

    The input side is what the first pipeline stage holds: token, position and type embeddings. The output
    side is what the last stage holds: the final norm and the LM head, its own matrix or a copy of the tied
    embedding (Megatron-LM keeps a copy of the word embedding on the last stage, Narayanan et al. 2021).
    The profile's embed_params counts everything outside the blocks once (the final norm and an untied head
    included).
    """
    spec = workload.model
    untied_head = 0 if sharing.tie_embeddings else spec.vocab * spec.hidden
    norm = _norm_params(spec)
    return profile.embed_params - untied_head - norm, spec.vocab * spec.hidden + norm


def stage_edge_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                      stage: Stage) -> tuple[float, float]:
    """(input side, output side) parameters outside the blocks on one device of `stage` (first | middle |
    last, or its index): the word embeddings and the LM head split over tp, the position/type tables and the
    final norm whole on every rank. With pp = 1 the one stage holds both sides, the tied embedding once."""
    spec = workload.model
    stage, _ = stage_of(plan, stage)
    input_side, output_side = edge_params(workload, profile, sharing)
    tables, norm = tp_replicated_input_params(spec), _norm_params(spec)
    if stage == "middle":
        return 0.0, 0.0
    if plan.pp == 1:
        head = output_side - norm if not sharing.tie_embeddings else 0.0  # a tied head is the embedding
        return _split(input_side, tables, plan.tp), _split(head + norm, norm, plan.tp)
    if stage == "first":
        return _split(input_side, tables, plan.tp), 0.0
    return 0.0, _split(output_side, norm, plan.tp)


class _ParamsMemo:
    """params_memo's table: stage parameter counts by (function, objects, stage, the plan fields they read),
    and the objects keyed by id() in it, kept alive so that no id is reused while the memo lives."""

    def __init__(self) -> None:
        self.results: dict[tuple, tuple[float, float]] = {}
        self.counts: dict[tuple, "StageParamCounts"] = {}  # stage_param_counts
        self.alive: dict[int, object] = {}


# The open memo of this thread / task, if any: scoped to the `with params_memo()` block that opened it (as
# compute.phase_memo), so two threads pricing tables never share one.
_PARAMS_MEMO: ContextVar[_ParamsMemo | None] = ContextVar("llmsim_params_memo", default=None)


@contextmanager
def params_memo() -> Iterator[None]:
    """Within this block, `stage_block_params` and `stage_params` (and accumulated_params, which asks it) count
    each distinct question once: calls whose arguments agree on the objects (workload, profile, sharing), the
    stage and the plan fields the counts read (`params_plan_key`) share one result. The planner prices
    thousands of plans that differ in fields a parameter count never reads (dp, cp, the micro-batch and its
    count, recompute, sp, ZeRO, the overlaps); the numbers are the same as without the block. Nested blocks
    share the outer one's table."""
    with scoped_memo(_PARAMS_MEMO, _ParamsMemo):
        yield


def params_plan_key(plan: Plan) -> tuple:
    """The fields of `plan` the stage parameter counts read (stage_block_params, stage_edge_params,
    stage_expert_params, stage_dense_layer_correction, lora_tp_share and moe.stage_moe_layers through them): tp,
    pp, the split (stage_layers, or the default one of pp and the chunks per device: Plan.layers_per_stage,
    Plan.v), ep and etp. tests/costmodel/test_memory.py checks that plans agreeing on these count alike."""
    return (plan.tp, plan.pp, plan.stage_layers, plan.v, plan.ep, plan.etp)


def _memoized(kind: str, count, workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice",
              plan: Plan, stage: Stage) -> tuple[float, float]:
    """`count(workload, profile, sharing, plan, stage)`, answered from the open params_memo if any."""
    memo = _PARAMS_MEMO.get()
    if memo is None:
        return count(workload, profile, sharing, plan, stage)
    key = (kind, id(workload), id(profile), id(sharing), stage, *params_plan_key(plan))
    out = memo.results.get(key)
    if out is None:
        out = memo.results[key] = count(workload, profile, sharing, plan, stage)
        for obj in (workload, profile, sharing):
            memo.alive[id(obj)] = obj
    return out


def stage_block_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                       stage: Stage) -> tuple[float, float]:
    """(parameters, trainable parameters) of the Transformer blocks on one device of `stage`, before ZeRO:
    its distinct blocks (`distinct_blocks_on_device`) ÷ tp as `tp_block_params` splits them. Inside
    `params_memo`, a question asked before is answered from its table."""
    return _memoized("block", _stage_block_params, workload, profile, sharing, plan, stage)


def _stage_block_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                        stage: Stage) -> tuple[float, float]:
    spec = workload.model
    _, index = stage_of(plan, stage)
    k = sharing.layer_groups or spec.layers
    experts = stage_expert_params(workload, profile, plan, index)
    per_block = (profile.layer_params - _expert_params(profile)) / k
    blocks = distinct_blocks_on_device(spec.layers, sharing.layer_groups, plan, index)
    layer_params = tp_block_params(spec, per_block, plan.tp) * blocks + experts
    if not sharing.layer_groups:  # the dense layers this stage holds, not the model's share of them
        layer_params += stage_dense_layer_correction(workload, plan, index)
    if sharing.lora is not None:  # a frozen base: only the adapters (all inside the blocks) train
        # The traced adapters of one block, times the share one tensor-parallel rank holds (B of q/k/v/gate/up
        # and A of o/down split, the other factor replicated: `lora_params_per_block`).
        return layer_params, profile.trainable_params / k * blocks * lora_tp_share(spec, sharing, plan.tp)
    return layer_params, layer_params


def _stage_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                  stage: Stage) -> tuple[float, float]:
    """`_count_stage_params`, inside `params_memo` answered from its table."""
    return _memoized("stage", _count_stage_params, workload, profile, sharing, plan, stage)


def _count_stage_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                        stage: Stage) -> tuple[float, float]:
    """(parameters, trainable parameters) on one device of `stage` (an index, or first | middle | last),
    before ZeRO.

    A middle stage (pp > 2) holds only its layers; the first the embeddings, the last the final norm and
    the LM head (`edge_params`); a single stage all of them. Each stage holds its own share of the layers
    (Plan.layers_per_stage); the simulated cluster prices every stage separately.
    """
    kind, _ = stage_of(plan, stage)
    layer_params, layer_trainable = stage_block_params(workload, profile, sharing, plan, stage)
    edge = sum(stage_edge_params(workload, profile, sharing, plan, kind))
    trainable = layer_trainable if sharing.lora is not None else layer_trainable + edge
    return layer_params + edge, trainable


def stage_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                 stage: Stage) -> tuple[float, float]:
    """Public name of the per-stage parameter count: (parameters, trainable) on one device of `stage`."""
    return _stage_params(workload, profile, sharing, plan, stage)


@dataclass(frozen=True)
class StageParamCounts:
    """What a training step reads of one device's parameters on a stage, before ZeRO: `stage_params`
    (params, trainable), `stage_block_params` (layer_params, layer_trainable: the Transformer blocks'),
    `stage_expert_params` (experts: the routed experts among them) and `accumulated_params` (accumulated)."""

    params: float
    trainable: float
    layer_params: float
    layer_trainable: float
    experts: float
    accumulated: float


def stage_param_counts(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                       stage: Stage, options: Options) -> StageParamCounts:
    """The four counts a step reads of `stage` (StageParamCounts), the same functions' numbers. Inside
    `params_memo` one look-up answers them all: they read the plan's `params_plan_key` fields, and
    accumulated_params only `Options.grad_accumulation_fusion` of the options (work.train_work and the
    planner's table ask them of every stage of thousands of plans)."""
    memo = _PARAMS_MEMO.get()
    if memo is None:
        return _stage_param_counts(workload, profile, sharing, plan, stage, options)
    key = (id(workload), id(profile), id(sharing), stage, options.grad_accumulation_fusion, *params_plan_key(plan))
    out = memo.counts.get(key)
    if out is None:
        out = memo.counts[key] = _stage_param_counts(workload, profile, sharing, plan, stage, options)
        for obj in (workload, profile, sharing):
            memo.alive[id(obj)] = obj
    return out


def _stage_param_counts(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                        stage: Stage, options: Options) -> StageParamCounts:
    return StageParamCounts(*stage_params(workload, profile, sharing, plan, stage),
                            *stage_block_params(workload, profile, sharing, plan, stage),
                            stage_expert_params(workload, profile, plan, stage),
                            accumulated_params(workload, profile, sharing, plan, stage, options))


def accumulated_params(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                       stage: Stage, options: Options) -> float:
    """Trainable parameters on one device of `stage` whose gradients a separate pass adds into the
    accumulator each micro-batch (work.accumulate_time): all of them, or with
    `Options.grad_accumulation_fusion` only those whose weight gradient no GEMM computes.

    Fusion (Megatron-LM `--gradient-accumulation-fusion`, on by default in its arguments.py and set by NeMo's
    `gradient_accumulation_fusion: True`): the weight-gradient GEMM of every Linear adds its product into the
    `main_grad` buffer in its own epilogue (cuBLAS beta = 1: Transformer Engine's `fuse_wgrad_accumulation`,
    megatron/core/extensions/transformer_engine.py; megatron/core/tensor_parallel/layers.py
    `LinearWithGradAccumulationAndAsyncCommunication` with `fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_*`),
    so the Transformer blocks' weights and the LM head (Megatron's output layer is a ColumnParallelLinear)
    take no pass of their own. Left to the pass: the input side (the word embedding's gradient, added by
    the DDP hook `main_grad.add_(grad)`); the blocks' norm weights are counted as fused (2h per layer, under
    1e-4 of a block). Under LoRA every trainable parameter is an adapter Linear inside a block."""
    _, trainable = _stage_params(workload, profile, sharing, plan, stage)
    if not options.grad_accumulation_fusion:
        return trainable
    _, block_trainable = stage_block_params(workload, profile, sharing, plan, stage)
    if sharing.lora is not None:
        return max(trainable - block_trainable, 0.0)
    _, output_side = stage_edge_params(workload, profile, sharing, plan, stage)
    return max(trainable - block_trainable - output_side, 0.0)


def lora_tp_share(spec: "ModelSpec", sharing: "SharingChoice", tp: int) -> float:
    """The share of one block's LoRA adapters that one tensor-parallel rank holds: B of q/k/v/gate/up and A
    of o/down split over tp, the other factor replicated (`config.lora_params_per_block`); 1.0 at tp = 1."""
    assert sharing.lora is not None
    return lora_params_per_block(spec, sharing.lora, tp) / lora_params_per_block(spec, sharing.lora)


def zero3_gathered(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                   options: Options, stage: Stage) -> tuple[float, float]:
    """(parameter bytes, gradient bytes) that ZeRO-3 holds unsharded on one device of `stage` for the units
    in flight, on top of its 1/(dp x cp) shards (Plan.dp_cp); (0, 0) without ZeRO-3 or data or context
    parallelism.

    A unit is what one all-gather materializes: a Transformer block (FSDP's transformer auto-wrap, and the
    per-layer gathers costmodel.work prices), or the stage's embedding or LM head (with the final norm).
    * DeepSpeed's estimate_zero3_model_states_mem_needs (deepspeed/runtime/zero/stage3.py) adds
      `largest_layer_memory = 4 * largest_layer_params`: the 16-bit parameters and gradient of the largest
      layer. Here: the largest unit on the stage at the workload dtype, and its gradient before the
      reduce-scatter at the gradient dtype (training only; LoRA: the adapters only).
    * Prefetch adds the next block: FSDP's default BackwardPrefetch.BACKWARD_PRE all-gathers the next unit
      while the current one computes (limit_all_gathers keeps at most two in flight; PyTorch FSDP docs),
      as DeepSpeed's stage3_prefetch_bucket_size does. One more block's parameters, never its gradient.
    Sizes are per device: ÷tp (each tensor-parallel rank gathers its own slice). A stage that holds no
    layer (an embedding-only first stage, a head-only last stage) gathers only its edge unit.
    """
    if plan.zero < 3 or plan.dp_cp == 1:
        return 0.0, 0.0
    return zero3_unit_bytes(workload, profile, sharing, plan, options, stage)


def zero3_unit_bytes(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                     options: Options, stage: Stage) -> tuple[float, float]:
    """`zero3_gathered`'s (parameter bytes, gradient bytes) as if the plan ran ZeRO-3 with dp > 1 (they
    depend on neither the ZeRO stage nor dp beyond that switch)."""
    spec = workload.model
    elem = DTYPE_BYTES[workload.dtype]
    k = sharing.layer_groups or spec.layers
    has_layers = layers_per_device(spec.layers, plan, stage_of(plan, stage)[1]) > 0
    block = tp_block_params(spec, profile.layer_params / k, plan.tp) if has_layers else 0.0
    block_trainable = (profile.trainable_params / k * lora_tp_share(spec, sharing, plan.tp)
                       if sharing.lora is not None and has_layers else block)
    edge = max(stage_edge_params(workload, profile, sharing, plan, stage))
    largest, largest_trainable = (block, block_trainable) if block >= edge else \
        (edge, 0.0 if sharing.lora is not None else edge)
    params = (largest + block) * elem
    grads = 0.0
    if workload.mode == "train":  # params_fp32: the 16-bit cotangent, reduce-scattered before its upcast
        grads = largest_trainable * (FP32_BYTES if options.main_grads_fp32 and not options.params_fp32 else elem)
    return params, grads


def activation_plan_key(workload: "Workload", plan: Plan) -> Plan:
    """The plan with only the fields the activation sizes read (activation_bytes_per_layer,
    edge_activation_bytes): a dense model's saved tensors are sized by micro_batch, tp, sp and cp
    (activations.SavedTensor.bytes) and chosen by recompute (activations.layer_inventory); dp, pp, the split,
    the schedule, ZeRO and the overlaps never enter. A mixture of experts' routed tokens follow more of the
    plan (moe.expert_activation_bytes): its plan is kept whole. tests/costmodel/test_memory.py checks that
    plans agreeing on these fields size alike."""
    if workload.model.moe is not None:
        return plan
    return Plan(tp=plan.tp, cp=plan.cp, micro_batch=plan.micro_batch, sp=plan.sp, recompute=plan.recompute)


def activation_bytes_per_layer(workload: "Workload", sharing: "SharingChoice", plan: Plan,
                               options: Options) -> tuple[float, float]:
    """(bytes one layer keeps per micro-batch, working set of one layer while it is recomputed) on one device.

    The layer's saved-tensor inventory (costmodel.activations.layer_inventory) for the attention kernel
    `options.attention` and `plan.recompute`, sized for `plan.micro_batch` sequences and split over
    plan.tp / sp / cp. Full recomputation keeps each layer's input and, while one layer is recomputed,
    that layer's whole inventory (the second number; 0 otherwise); op-level selective recomputation
    (`selective-op`) and JAX's dots policy (`selective-dots`) keep their op outputs and, while one layer is
    recomputed, the rest of that layer's inventory (the tensors of `none` it does not already keep).
    Cached per `activation_plan_key` (the planner asks for thousands of plans that differ elsewhere).
    """
    return _activation_bytes_per_layer(workload, sharing, activation_plan_key(workload, plan), options)


# Every pipeline stage of a plan asks for the same layer inventory (and the planner for thousands of plans):
# a pure function of hashable values (pydantic models, frozen dataclasses), cached.
@functools.lru_cache(maxsize=4096)
def _activation_bytes_per_layer(workload: "Workload", sharing: "SharingChoice", plan: Plan,
                                options: Options) -> tuple[float, float]:
    spec, elem = workload.model, DTYPE_BYTES[workload.dtype]
    fp8 = precision.saved_input_bytes(workload)   # bytes of a kept quantized GEMM input (0: bf16)
    fp8_core = precision.fp8_attention_saved_bytes(workload)   # FP8 attention's kept q, k, v and O
    items = layer_inventory(spec, options.attention, plan.recompute, elem, sharing.lora, fp8,
                            reduce_scatters=plan.sp and plan.tp > 1, fp8_attention=fp8_core)
    kept = inventory_bytes(items, spec, plan) + moe.expert_activation_bytes(workload, plan)
    if plan.recompute not in ("full", "selective-op", "selective-dots"):
        return kept, 0.0
    rebuilt = layer_inventory(spec, options.attention, "none", elem, sharing.lora, fp8, fp8_attention=fp8_core)
    # selective-op, selective-dots: what the recomputation rebuilds beside what the layer already keeps
    if plan.recompute in ("selective-op", "selective-dots"):
        names = {t.name for t in items}
        rebuilt = tuple(t for t in rebuilt if t.name not in names)
    # selective-op: the routed experts keep what they keep without recomputation (moe.expert_activation_bytes)
    working = inventory_bytes(rebuilt, spec, plan) + (
        moe.expert_activation_bytes(workload, replace(plan, recompute="none")) if plan.recompute == "full" else 0.0)
    return kept, working


def edge_activation_bytes(workload: "Workload", sharing: "SharingChoice", plan: Plan) -> tuple[float, float]:
    """(first stage, last stage) bytes kept outside the layers per micro-batch on one device: the embeddings'
    ids, and the final norm, LM head input and fp32 log-probabilities of the loss (vocabulary-parallel over
    tp); costmodel.activations.edge_inventory. A frozen base (LoRA) keeps no embedding ids nor head input.
    Cached per `activation_plan_key`."""
    return _edge_activation_bytes(workload, sharing, activation_plan_key(workload, plan))


@functools.lru_cache(maxsize=4096)  # as _activation_bytes_per_layer
def _edge_activation_bytes(workload: "Workload", sharing: "SharingChoice", plan: Plan) -> tuple[float, float]:
    spec, elem = workload.model, DTYPE_BYTES[workload.dtype]
    trainable = sharing.lora is None
    return (inventory_bytes(edge_inventory(spec, elem, "input", trainable), spec, plan),
            inventory_bytes(edge_inventory(spec, elem, "output", trainable), spec, plan))


def memory_stages(workload: "Workload", plan: Plan) -> list[int]:
    """The stages whose memory can be the largest: the first, the last, and of the middle stages holding the
    same number of layers the earliest one (they hold the same parameters, and no schedule keeps more
    micro-batches in flight on a later stage: pipeline.in_flight_microbatches). Every stage with an even
    split is covered by the first and the last."""
    counts = plan.layers_per_stage(workload.model.layers)
    moe_counts = moe.stage_moe_layers(workload, plan)  # MoE layers hold more: stages alike hold as many
    out = [0] if plan.pp == 1 else [0, plan.pp - 1]
    seen: set[tuple[int, int]] = set()
    for i in range(1, plan.pp - 1):
        if (counts[i], moe_counts[i]) not in seen:
            seen.add((counts[i], moe_counts[i]))
            out.append(i)
    return sorted(out)


def memory_breakdown(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                     options: Options = Options(), stage: Stage | None = None,
                     device: "DeviceSpec | None" = None) -> MemoryBreakdown:
    """Memory of the busiest device: every pipeline stage is checked (`memory_stages`), the one that needs
    the most is returned. `stage` (an index, or first | middle | last): that stage's instead. `device`: the
    device it runs on, for what its kind changes (float8's weight copies: stage_memory_terms); None = a
    device without those traits (FP8 GEMMs in the TN layout only, as on Hopper)."""
    if stage is None:
        return max((memory_breakdown(workload, profile, sharing, plan, options, st, device)
                    for st in memory_stages(workload, plan)), key=lambda mb: mb.total)
    t = stage_memory_terms(workload, profile, sharing, plan, options, stage, device=device)
    held = in_flight_microbatches(plan.schedule, plan.pp, plan.microbatches, plan.v, t.index)
    return MemoryBreakdown(**stage_memory(t, plan.zero, plan.dp_cp, plan.zero_dp, held, plan.edp), stage=t.kind,
                           stage_index=t.index)


@dataclass(frozen=True)
class StageMemoryTerms:
    """What one device of a pipeline stage holds before ZeRO and the pipeline schedule divide or multiply
    it (`stage_memory` combines them): counts of parameters, bytes otherwise."""

    kind: str
    index: int
    params: float               # parameters on the device (tp split), before ZeRO
    trainable: float
    elem: int                   # bytes per parameter (workload dtype; 4 with Options.params_fp32)
    grad_elem: int              # bytes per gradient element
    state_bytes: int            # Adam state bytes per trainable parameter
    zero3_params: float         # zero3_unit_bytes: what ZeRO-3 (dp > 1) gathers unsharded
    zero3_grads: float
    fp8_copy: float             # FP8 weight copies, unsharded (ZeRO-3 shards them: stage_memory; float8 only)
    layers: int                 # layers of the stage
    per_layer_activation: float  # bytes one layer keeps per micro-batch
    working: float              # full recompute's working set of one layer
    edge_activation: float      # embeddings / head and loss kept per micro-batch
    kv_cache: float = 0.0
    train: bool = True
    expert_params: float = 0.0  # routed-expert parameters on the device (not in params): ZeRO over edp
    experts_trainable: bool = True  # False under LoRA: the experts are frozen base weights
    expert_elem: float | None = None  # bytes of one stored expert weight (moe.expert_weight_elem); None = elem


def stage_memory_terms(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                       options: Options, stage: Stage, activations: bool = True,
                       device: "DeviceSpec | None" = None) -> StageMemoryTerms:
    """The terms of one stage's memory that neither the ZeRO stage, dp nor the micro-batch count change
    (except inference's `kv_cache`, which follows dp).
    `activations` False leaves the activation terms at 0 (the planner's lower bound of a group). `device`: the
    device's FP8 GEMM layouts (DeviceSpec.fp8_gemm_any_layout) fix how many FP8 weight copies float8 training
    keeps (precision.copies); None = TN only, two copies."""
    kind, index = stage_of(plan, stage)
    elem = DTYPE_BYTES[workload.dtype]
    params, trainable = _stage_params(workload, profile, sharing, plan, stage)
    train = workload.mode == "train"
    # routed experts apart: ZeRO shards them over the expert-data-parallel group (stage_memory, moe.expert_memory)
    experts = stage_expert_params(workload, profile, plan, index)
    params -= experts
    trainable -= experts if sharing.lora is None else 0.0
    z3_params, z3_grads = zero3_unit_bytes(workload, profile, sharing, plan, options, stage)
    layers_here = layers_per_device(workload.model.layers, plan, index)
    fp8_copy = 0.0
    if precision.is_quantized(workload):  # FP8 (or FP4) weight copies of the layers' GEMMs (costmodel.precision)
        # ZeRO-3 shards them like the weights (stage_memory): they are made from the gathered weights
        # (torchao float8 FSDP2)
        # under LoRA the layers' GEMM weights are the frozen base (`frozen_weights: float8`: FP8 only)
        fp8_copy = precision.fp8_weight_copy_bytes(workload,   # the GEMMs it quantizes (fp4.layers)
                                                   layers_here * precision.layer_gemm_split(workload, plan)[0],
                                                   precision.any_layout(device), frozen=sharing.lora is not None)
    grad_elem = FP32_BYTES if options.main_grads_fp32 else elem
    state = ADAM_STATE_BYTES_MIXED if elem < FP32_BYTES else ADAM_STATE_BYTES_FP32
    if elem < FP32_BYTES and not options.master_weights:  # no fp32 master; m and v in the workload dtype
        state = ADAM_MOMENTS * elem
    param_elem = elem
    if train and options.params_fp32:  # fp32 parameters are their own master: Options.params_fp32
        param_elem, grad_elem, state = FP32_BYTES, FP32_BYTES, ADAM_STATE_BYTES_FP32
    per_layer = working = edge = kv = 0.0
    if train and activations:
        per_layer, working, edge = stage_activation_terms(workload, sharing, plan, options, stage)
    elif not train:
        # KV heads are replicated once tp exceeds them; a latent (mla) cache is whole on every rank
        kv_split = workload.model.kv_split(plan.tp)
        # the stage's layers' share of the cache (1/pp with an even split)
        kv = profile.kv_cache_bytes * layers_here / workload.model.layers / (plan.dp * kv_split)
    expert_elem = None if train else moe.expert_weight_elem(workload)   # MXFP4 experts served weight-only
    return StageMemoryTerms(kind, index, params, trainable, param_elem, grad_elem, state, z3_params, z3_grads, fp8_copy,
                            layers_here, per_layer, working, edge, kv, train, experts, sharing.lora is None,
                            expert_elem)


def stage_activation_terms(workload: "Workload", sharing: "SharingChoice", plan: Plan, options: Options,
                           stage: Stage) -> tuple[float, float, float]:
    """A training stage's activation terms of `StageMemoryTerms`, bytes on one device: (per_layer_activation,
    working, edge_activation). They follow `activation_plan_key` (and for a mixture of experts the stage's share
    of MoE layers); the other terms do not read the micro-batch, recompute, sp or cp (the planner prices
    them apart: planner.table)."""
    kind, index = stage_of(plan, stage)
    per_layer, working = activation_bytes_per_layer(workload, sharing, plan, options)
    if workload.model.moe is not None:  # the stage's own share of MoE layers, not the model's
        one_moe_layer = moe.expert_activation_bytes(workload, plan, 1.0)
        per_layer += one_moe_layer * (moe.stage_moe_share(workload, plan, index) - moe.moe_layer_share(workload))
    # The embeddings live on the first stage, the final norm, head and loss on the last (both with pp = 1);
    # each micro-batch in flight keeps its own until its backward.
    first, last = edge_activation_bytes(workload, sharing, plan)
    edge = ((first if kind == "first" or plan.pp == 1 else 0.0)
            + (last if kind == "last" or plan.pp == 1 else 0.0))
    return per_layer, working, edge


def stage_memory(t: StageMemoryTerms, zero: Num, dp: Num, zero_dp: Num, held: Num, edp: Num = 1) -> dict[str, Num]:
    """Bytes on one device of the stage, by kind, for a ZeRO stage, `dp` the ranks that replicate the weights
    (Plan.dp_cp: dp x cp) of which ZeRO shards over `zero_dp`, and `held` micro-batches in flight
    (pipeline.in_flight_microbatches): numbers or columns.

    ZeRO-1 divides the optimizer state, ZeRO-2 also the gradients, ZeRO-3 also the parameters, and ZeRO-3
    with dp > 1 adds the units it gathers whole (`zero3_gathered`). Activations: `held` micro-batches of
    the stage's layers and edges, plus one layer's working set under full or op-level selective recomputation. Routed experts are
    sharded by ZeRO over the `edp` ranks of their expert-data-parallel group instead (moe.expert_memory)."""
    gathered = (zero >= 3) & (dp > 1) if is_array(zero, dp) else zero >= 3 and dp > 1
    params = ((t.params * t.elem + t.fp8_copy) / pick(zero >= 3, zero_dp, 1)
              + pick(gathered, t.zero3_params, 0.0))
    grads = optimizer = activations = 0.0
    if t.train:
        grads = t.trainable * t.grad_elem / pick(zero >= 2, zero_dp, 1) + pick(gathered, t.zero3_grads, 0.0)
        optimizer = t.trainable * t.state_bytes / pick(zero >= 1, zero_dp, 1)
        activations = held * t.layers * t.per_layer_activation + pick(t.layers != 0, t.working, 0.0)
        activations = activations + held * t.edge_activation
    if is_array(t.expert_params) or t.expert_params:
        experts = moe.expert_memory(t.expert_params, t.elem if t.expert_elem is None else t.expert_elem,
                                    t.grad_elem, t.state_bytes, zero, edp,
                                    t.train and t.experts_trainable)
        params, grads, optimizer = params + experts.params, grads + experts.grads, optimizer + experts.optimizer
    return {"params": params, "grads": grads, "optimizer": optimizer, "activations": activations,
            "kv_cache": t.kv_cache}
