"""What the cost model is asked to price: parallel degrees, schedule, sharing and software choices.

`Plan` flattens a Strategy placed by a Layout into the numbers the formulas use; `Options` holds the
software choices that are not part of the scenario contract (attention kernel, gradient precision),
with defaults that describe a current Megatron-LM / PyTorch stack.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from llmsim.costmodel.collectives import AllReduceAlgorithm
from llmsim.stages import SplitError, default_split

if TYPE_CHECKING:
    from llmsim.config import Strategy
    from llmsim.strategy import Layout

# Bytes of the tensors a workload keeps (parameters, activations, gradients, KV cache). A float8 workload keeps
# them in bf16: FP8 is a GEMM precision (Transformer Engine's fp8_autocast and torchao's Float8Linear wrap bf16
# modules); the FP8 copies and what the recipe changes are priced by costmodel.precision.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 2, "float4": 2}


def master_weights_apply(dtype: str, params_fp32: bool) -> bool:
    """Whether Options.master_weights prices anything for a workload in `dtype`: only 16-bit weights have an fp32
    master copy to keep or not; fp32 weights (an fp32 workload, or `params_fp32`) are their own master."""
    return DTYPE_BYTES.get(dtype, 4) < 4 and not params_fp32
AttentionKernel = Literal["flash", "cudnn", "flash3", "trtllm-mmha", "fused-softmax", "math"]
# The fused (flash-style) kernels: they price alike (causal half of the FLOPs, no s x s tensor kept) and
# differ only in the fraction of peak each reaches on a device (Efficiency.attention_fractions), and, for
# trtllm-mmha, in how often a decode step reads the cache (compute.decode_kv_reads).
FUSED_ATTENTION: tuple[str, ...] = ("flash", "cudnn", "flash3", "trtllm-mmha")
Sampler = Literal["none", "sort-top-p"]
OptimizerKernel = Literal["fused", "foreach"]


@dataclass(frozen=True)
class Plan:
    """Resolved degrees of one case: dp x tp x pp x cp devices, m micro-batches of `micro_batch` sequences,
    and which communication overlaps the framework runs (Megatron-Core's options: docs/scenario.md).

    `stage_layers`: the layers each pipeline stage holds (all its chunks), pp counts; None = the default
    split (llmsim.stages.default_split: layers/pp when that divides).
    """

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    micro_batch: int = 1
    microbatches: int = 1
    virtual_stages: int = 1
    sp: bool = False
    zero: int = 0
    schedule: Literal["gpipe", "1f1b", "interleaved"] = "1f1b"
    recompute: Literal["none", "selective", "selective-op", "selective-dots", "full"] = "none"
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False
    tp_comm_overlap: bool = False
    overlap_p2p: bool | None = None     # None = Megatron-Core's default: on with the interleaved schedule
    stage_layers: tuple[int, ...] | None = None
    # Data-parallel replicas ZeRO does not shard across: TPU slices joined by the data-center network, each
    # holding a whole ZeRO-sharded copy (MaxText's dcn_data_parallelism x ici_fsdp_parallelism); 1 = ZeRO
    # shards over all of dp. Set from the cluster (costmodel.cluster.plan_on).
    dcn_replicas: int = 1
    # Expert parallelism (mixture-of-experts models; costmodel.moe): routed experts split over ep ranks and
    # each expert over etp ranks, carved out of the stage's tp*cp*dp ranks (Megatron-Core's expert grid);
    # ep_comm_overlap hides the dispatch/combine all-to-all under computation.
    ep: int = 1
    etp: int = 1
    ep_comm_overlap: bool = False
    # Attention data parallelism of a serving replica (Strategy.attention_dp): its tp devices run attention as
    # attention_dp ranks of tp / attention_dp each, the experts over all tp (costmodel.iteration); 1 = off.
    attention_dp: int = 1

    @property
    def edp(self) -> int:
        """Expert data parallel: the replicas of each expert per stage, tp*cp*dp / (ep*etp), the group its
        gradients are reduced and ZeRO-sharded over."""
        return max(self.tp * self.cp * self.dp // (self.ep * self.etp), 1)

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def dp_cp(self) -> int:
        """The ranks that hold a replica of each weight and reduce its gradient: dp x cp. Every context-parallel
        rank computes a full gradient for its shard of the sequence, so the frameworks reduce gradients and
        shard ZeRO/FSDP state over data and context parallelism together: Megatron-Core's
        `get_data_parallel_group(with_context_parallel=True)` (megatron/core/parallel_state.py, the "dp-cp"
        ranks; used by the DDP grad buffers and the distributed optimizer), torchtitan's FSDP mesh dimension
        `fsdp = dp_shard * cp` (torchtitan/distributed/parallel_dims.py)."""
        return self.dp * self.cp

    @property
    def zero_dp(self) -> int:
        """The ranks ZeRO shards over: dp x cp (`dp_cp`), less the data-parallel replicas across slices."""
        return max(self.dp * self.cp // self.dcn_replicas, 1)

    @property
    def v(self) -> int:
        """Model chunks per device (1 unless interleaved)."""
        return self.virtual_stages if self.schedule == "interleaved" else 1

    @property
    def p2p_overlapped(self) -> bool:
        """Pipeline sends and receives overlapped with compute: `overlap_p2p`, or Megatron-Core's default
        when unset, on for the interleaved schedule only (megatron/training/arguments.py turns
        overlap_p2p_comm off without a virtual pipeline; --no-overlap-p2p-communication turns it off)."""
        if self.overlap_p2p is None:
            return self.schedule == "interleaved" and self.pp > 1
        return self.overlap_p2p

    def layers_per_stage(self, layers: int) -> tuple[int, ...]:
        """Layers of each pipeline stage (every chunk of it) for a model of `layers` layers."""
        if self.stage_layers is not None:
            assert len(self.stage_layers) == self.pp and sum(self.stage_layers) == layers, \
                f"stage_layers {self.stage_layers} is not a split of {layers} layers over pp={self.pp}"
            return self.stage_layers
        return default_split(layers, self.pp, self.v)

    def single_device(self) -> "Plan":
        """The same step on one device: same micro-batch, all of the global batch's micro-batches; the
        overlaps of communication that one device does not have are off."""
        return replace(self, dp=1, tp=1, pp=1, cp=1, sp=False, zero=0, schedule="1f1b", virtual_stages=1,
                       microbatches=self.microbatches * self.dp, overlap_param_gather=False,
                       ep=1, etp=1, ep_comm_overlap=False,
                       tp_comm_overlap=False, overlap_p2p=None, stage_layers=None, dcn_replicas=1)

    @classmethod
    def of(cls, strategy: "Strategy", layout: "Layout") -> "Plan":
        return cls(dp=layout.dp, tp=layout.tp, pp=layout.pp, cp=layout.cp, micro_batch=layout.micro_batch,
                   microbatches=layout.microbatches, virtual_stages=strategy.virtual_stages, sp=strategy.sp,
                   zero=strategy.zero, schedule=strategy.schedule, recompute=strategy.recompute,
                   overlap_grad_reduce=strategy.overlap_grad_reduce,
                   overlap_param_gather=strategy.overlap_param_gather, tp_comm_overlap=strategy.tp_comm_overlap,
                   overlap_p2p=strategy.overlap_p2p,
                   ep=layout.ep, etp=layout.etp, ep_comm_overlap=strategy.ep_comm_overlap,
                   attention_dp=strategy.attention_dp,
                   stage_layers=_stated_split(layout.stage_layers, strategy.virtual_stages
                                              if strategy.schedule == "interleaved" else 1))


def _stated_split(counts: tuple[int, ...], v: int) -> tuple[int, ...] | None:
    """A layout's split as a Plan holds it: None when it is the default one (so that equal plans compare
    equal however they were stated)."""
    if not counts:
        return None
    try:
        return None if counts == default_split(sum(counts), len(counts), v) else counts
    except SplitError:  # e.g. more stages than layers, possible only when stated
        return counts


@dataclass(frozen=True)
class Options:
    """Software choices of the modeled stack.

    attention:
      flash          FlashAttention-2 (torch SDPA's flash backend, the flash-attn 2.x package): compute-bound
                     at the device's attention efficiency, skips the masked half of a causal score matrix,
                     backward does 5 matmuls to the forward's 2 (Dao 2023), saves no s x s tensor.
      cudnn          cuDNN's fused attention (Transformer Engine's FusedAttention, Megatron-Core's default on
                     Hopper; torch SDPA's cuDNN backend): priced as flash at the device's
                     `attention_cudnn` efficiency (CostModelError where the catalog has none).
      flash3         FlashAttention-3 (Hopper only): priced as flash at `attention_flash3`.
      trtllm-mmha    TensorRT-LLM's attention before its XQA kernel (v0.5/v0.6): the context phase's fused
                     MHA priced as flash (at `attention`, FlashAttention-2's fraction: no figure of its own);
                     the generation phase's masked multi-head attention kernel runs one thread block per
                     (sequence, query head), each reading its KV head's whole cache, so a decode step reads
                     a grouped-query model's cache heads / kv_heads times (compute.decode_kv_reads). An
                     inference engine's kernels: a training run prices it as flash.
      fused-softmax  two batched GEMMs around a fused scale-mask-softmax kernel (Megatron-LM before flash
                     attention): full s x s FLOPs at matmul efficiency plus the score matrix's memory
                     traffic (SOFTMAX_PASSES_*); saves the s x s probabilities for backward.
      math           the profile as traced (PyTorch's unfused math SDPA path): upper bound. Its memory keeps
                     fp32 copies of q, k, v and the fp32 s x s scores.
    What each kernel keeps for the backward: costmodel.activations.
    main_grads_fp32: gradients accumulated and reduced in fp32 (Megatron-LM's `main_grad` buffers,
      `accumulate_allreduce_grads_in_fp32`) instead of in the workload dtype (the ZeRO paper's 2-byte
      gradients, PyTorch DDP/FSDP defaults).
    params_fp32: the parameters themselves are fp32 and each layer casts them to the workload dtype where it
      uses them (JAX/Flax as MaxText runs it: DenseGeneral's kernel is `self.param(..., jnp.float32)`, then
      `jnp.asarray(kernel, self.dtype)`, MaxText/layers.py at e47fa1b5; optax.adamw keeps m and v in the
      parameters' dtype). No 16-bit copy and no separate master: 4 B of parameters, 4 B of their gradients and
      8 B of Adam state per parameter (16 B, not the mixed-precision 2 + 4 + 12). The gradient a layer's GEMMs
      produce is in the workload dtype (the cast's transpose, jax convert_element_type, brings it to fp32
      only after the data-parallel reduction), so gradient reductions move 16-bit bytes and ZeRO-3's
      in-flight unit gradient is 16-bit; the ZeRO-3 all-gather moves the 16-bit cast. Training only.
    master_weights: training in a 16-bit dtype keeps an fp32 master copy of the parameters and fp32 Adam m and v
      (the mixed-precision recipe: ZeRO's K = 12 bytes, Megatron-LM, DeepSpeed, apex). False = none of it: the
      16-bit parameters are updated in place and Adam's m and v are in the workload dtype, as torch.optim.AdamW
      keeps them for a model cast to bfloat16 (`_init_group`: `torch.zeros_like(p)`), which is what llmsim's
      measured cpu and cuda backends run by default (`precision: model cast`): 2 + 2 + 4 = 8 B per parameter.
      Ignored with params_fp32 (fp32 parameters are their own master) and for an fp32 workload.
    optimizer: how an accelerator runs the Adam step (an eager CPU host always runs the traced loop:
      Efficiency.op_overhead_s).
      fused    one kernel over the parameters and their state (apex/Megatron FusedAdam, torch AdamW(fused=True)):
               each byte of the state read and written once (work.optimizer_step_time).
      foreach  torch.optim.AdamW's default on CUDA (`_default_to_fused_or_foreach`: foreach, not fused): one
               multi-tensor kernel per operation of the update (lerp, mul, addcmul, sqrt, div, add, addcdiv), each
               a pass over its tensors. Priced as the bytes of the loop the profile traced (llmsim's own
               AdamW, the single-tensor loop with the same operations: 50 B a parameter for a bf16 model, against
               the fused 14 or 28 B), at the device's memory rate; the launches' own fixed time is not counted.
               The trace is of the cast model's AdamW (m and v in its dtype): with an fp32 master
               (master_weights, params_fp32) the same loop runs over fp32 tensors, FP32_BYTES / elem times
               the bytes, plus the 16-bit copy of the weights. The measured cuda backend runs it with
               master_weights: false.
    p2p_scatter_gather: with tp > 1, send 1/tp of a pipeline activation between stages and all-gather it
      over the tensor-parallel group (Narayanan 2021, Sec. 4.1).
    all_reduce: the library of an inference pass's tensor-parallel all-reduces (decode, prefill, serving
      iterations): "nccl" (NCCL's ring or tree; FasterTransformer, Megatron, TensorRT-LLM's NCCL path), or
      "vllm": vLLM's engine, which runs its custom all-reduce (one-shot / two-shot over peer-mapped buffers)
      where it would and NCCL elsewhere (costmodel.collectives.custom_all_reduce_kind). Training passes keep
      NCCL.
    compile: the model runs compiled (torch.compile's Inductor, XLA): the elementwise ops between two GEMMs
      fuse and move only the bytes that cross the fused region (workload.trace._FusionTracker,
      OpTotals.fused_bytes) instead of eager PyTorch's per-op reads and writes. None = the device's way
      (DeviceSpec.compiled: TPUs always run XLA programs; GPUs and CPU hosts run eagerly).
    grad_accumulation_fusion: the weight-gradient GEMMs add into the gradient accumulator in their epilogue
      (Megatron-LM `--gradient-accumulation-fusion`, its default; NeMo `gradient_accumulation_fusion`;
      Transformer Engine `fuse_wgrad_accumulation`), so only the parameters no GEMM's weight gradient covers
      (the word embedding) take the per-micro-batch accumulation pass (memory.accumulated_params). False =
      every gradient is added by a pass of its own (PyTorch autograd's AccumulateGrad, DDP/FSDP).
    sampler: what choosing each generated token costs after the LM head (costmodel.sampling), inference only.
      none        nothing (a greedy argmax fused into the head; the default).
      sort-top-p  FasterTransformer v5's top-p sampling: fp32 logits (all-gathered and transposed over tensor
                  parallelism), softmax and a segmented radix sort of the whole padded vocabulary per
                  sequence, on every rank, for every generated token.
    """

    attention: AttentionKernel = "flash"
    main_grads_fp32: bool = False
    grad_accumulation_fusion: bool = False
    compile: bool | None = None
    params_fp32: bool = False
    master_weights: bool = True
    optimizer: OptimizerKernel = "fused"
    p2p_scatter_gather: bool = True
    all_reduce: AllReduceAlgorithm = "nccl"
    sampler: Sampler = "none"
