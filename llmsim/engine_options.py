"""The software choices of the modeled stack as a user writes them (costmodel.plan.Options at the edge): the
same keys in a modeled backend's settings (`backends.roofline.attention`) and in a plan file's `options:` block,
declared once here."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from llmsim.config import shown_value as shown
from llmsim.costmodel import Options
from llmsim.costmodel.plan import FUSED_ATTENTION, AttentionKernel, OptimizerKernel
from llmsim.strict import StrictModel


class EngineOptions(StrictModel):
    """Software choices the cost model cannot read off the workload (costmodel.plan.Options documents each)."""

    attention: AttentionKernel = Field(
        "flash", description="attention kernel modeled: flash (FlashAttention-2), cudnn (cuDNN fused attention, "
                             "Transformer Engine's default on Hopper), flash3 (FlashAttention-3), trtllm-mmha "
                             "(TensorRT-LLM before XQA: prefill as flash, a decode step reads the KV cache once per "
                             "query head), fused-softmax, math (costmodel.plan.Options)")
    main_grads_fp32: bool = Field(False, description="accumulate and reduce gradients in fp32 (Megatron-LM)")
    grad_accumulation_fusion: bool = Field(
        False, description="the weight-gradient GEMMs add into the gradient accumulator themselves (Megatron-LM "
                           "--gradient-accumulation-fusion, NeMo gradient_accumulation_fusion): no accumulation "
                           "pass over the layers' weights (costmodel.plan.Options)")
    params_fp32: bool = Field(False, description="training: fp32 parameters cast to the workload dtype inside each "
                                                 "layer, no 16-bit copy, no separate master (JAX/Flax, MaxText): "
                                                 "16 B per parameter with Adam; gradients reduced in the workload "
                                                 "dtype (costmodel.plan.Options)")
    master_weights: bool = Field(True, description="training in a 16-bit dtype: an fp32 master copy and fp32 Adam m "
                                                   "and v (mixed precision, 12 B per parameter); false: neither, m "
                                                   "and v in the workload dtype (torch AdamW on a model cast to "
                                                   "bf16, as the measured cpu and cuda backends run: 4 B) "
                                                   "(costmodel.plan.Options)")
    optimizer: OptimizerKernel = Field(
        "fused", description="training on an accelerator: fused (one Adam kernel over the state, FusedAdam) or "
                             "foreach (torch AdamW's default on CUDA: one pass per operation, the traced loop's "
                             "bytes; pair with master_weights: false, as the measured cuda backend runs) "
                             "(costmodel.plan.Options)")
    compile: bool | None = Field(None, description="the model runs compiled (torch.compile / XLA): elementwise ops "
                                                   "between GEMMs fuse; default: the device's (TPU compiled, "
                                                   "GPU and CPU eager)")
    sampler: Literal["none", "sort-top-p"] = Field(
        "none", description="inference: what choosing each generated token costs after the LM head: none, or "
                            "sort-top-p (FasterTransformer v5's top-p sampling; costmodel.sampling)")
    all_reduce: Literal["nccl", "vllm"] = Field(
        "nccl", description="library of the tensor-parallel all-reduces of inference passes (decode, prefill, "
                            "serving iterations): nccl, or vllm (vLLM's custom all-reduce where vLLM uses it: "
                            "2, 4, 6 or 8 GPUs of one node, fully connected beyond 2, under 8 MiB; NCCL "
                            "otherwise)")

    @property
    def options(self) -> Options:
        return engine_options(self)


OPTION_KEYS = ("attention", "main_grads_fp32", "grad_accumulation_fusion", "params_fp32", "master_weights", "optimizer",
               "compile", "sampler", "all_reduce")
# the keys of OPTION_KEYS that price only a training step's optimizer and its state: an inference or serving case
# (and, for master_weights, an fp32 workload) ignores them (runner.training_option_notes, the plan report's header)
TRAINING_ONLY_OPTIONS = ("optimizer", "master_weights")


def engine_options(settings: object) -> Options:
    """costmodel.plan.Options from any settings object carrying the OPTION_KEYS (EngineOptions, a modeled
    backend's settings)."""
    return Options(**{key: getattr(settings, key) for key in OPTION_KEYS})


def option_fields():  # noqa: ANN201 - dict[str, pydantic FieldInfo]
    """The FieldInfo of each option key, for a settings model that declares them among its own fields (in its
    own order) without restating their defaults and descriptions: `attention: AttentionKernel =
    option_fields()["attention"]`."""
    return {key: EngineOptions.model_fields[key] for key in OPTION_KEYS}


def serving_attention_problem(kernel: object) -> str | None:
    """Why a serving run or plan cannot price attention kernel `kernel`, or None: a serving iteration prices a
    fused kernel (costmodel.iteration: FlashAttention-2 `flash`, FlashAttention-3 `flash3`, cuDNN's `cudnn`,
    TensorRT-LLM's pre-XQA `trtllm-mmha`), as the engines run, not an unfused one (`fused-softmax`, `math`); a
    value that names no kernel at all, or a list or mapping where one value belongs, gets the same allowed list (a
    serving block's, not every kernel's), in the words of every other key's (config.one_value_expected)."""
    allowed = f"allowed with serving: {', '.join(FUSED_ATTENTION)}"
    if isinstance(kernel, (list, tuple, dict)):  # as config.one_value_expected words it for every other key
        given = "a mapping" if isinstance(kernel, dict) else "a list"
        return f"{shown(kernel)}: expected one value, not {given}; {allowed}"
    if kernel in FUSED_ATTENTION:
        return None
    if kernel not in get_args(AttentionKernel):
        return f"{shown(kernel)}: unknown attention kernel; {allowed}"
    return f"{kernel!r}: a serving run prices a fused attention kernel, as vLLM runs; {allowed}"
