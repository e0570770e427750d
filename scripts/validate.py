#!/usr/bin/env python
"""Every dev table against the roofline: per-row predicted vs published time and the median |error| per table.

Usage (from the repository root):
    python scripts/validate.py                      # every table
    python scripts/validate.py --table torchtitan   # one table (repeat --table for more)
    python scripts/validate.py --table vllm --path FILE   # one table read from another CSV

Tables (validation/README.md lists their sources and assumptions; docs/validation.md the results):
  training   narayanan     Megatron-LM on DGX A100, Narayanan et al. 2021 Table 1 (../shared/validation)
             torchtitan    torchtitan's published Llama 3.1 8B/70B runs on H100 (validation/)
             maxtext       MaxText's published TFLOP/s per chip on TPU v4, v5e, v5p (validation/)
             fp8-for-later FP8 rows of the same sources, kept for when the model has FP8 (all skipped)
             mlperf        MLPerf Training (v4.0, v4.1, v5.0) NVIDIA/NeMo submissions in FP8: GPT-3 175B and
                           Llama 3.1 405B on H100, B200, GB200 (validation/)
             moe-train     mixture-of-experts training: Megatron-Core's MoE README (Mixtral 8x7B on 64 H100),
                           the DeepSeek-V3 report (validation/)
  inference  fastertransformer  FasterTransformer GPT latencies on DGX A100 (../shared/validation)
             vllm          vLLM's CI latency tests (batch 8, 32 in / 128 out) on A100, H100, H200
             moe-serve     the same CI's Mixtral 8x7B latency tests (validation/)
  serving    serving       request-level serving runs: vLLM's CI throughput tests (200 ShareGPT prompts at once) and
                           serving tests (Poisson arrivals), TGI in vLLM's nightly comparison; TTFT, ITL and
                           throughput per metric, priced by the serving simulation (validation/serving_online.csv)
             trtllm-blog   TensorRT-LLM's blog tables (v0.5-v0.7, late 2023): offline static batches of fixed
                           lengths (gptSessionBenchmark), FP8 weights and KV cache on H100/H200, FP16 on A100; output
                           tokens/s per GPU and the first token's latency (validation/serving_trtllm_blog.csv)
             deepseek-serve  DeepSeek (multi-head latent attention, MoE) served: the SGLang cookbook's R1-0528 on 8
                           B200 and V3.1 on 8 MI300X (tp 8, FP8, fixed-length random prompts at 1-100 clients),
                           vLLM and SGLang PRs on H100/H200 (validation/serving_deepseek.csv)
             capacity      published serving capacity: the highest request rate one replica sustains under a latency
                           SLO (Sarathi-Serve's capacity search, DistServe's goodput), priced by the serving planner's
                           rate search, llmsim.planner.serve.rate_search (validation/serving_capacity.csv)
             capacity-ratios  ratios of capacities a paper's text states ("up to 2.6x higher serving capacity than
                           vLLM"), priced from the capacity rows' rate searches, each run once and shared with the
                           capacity table (validation/serving_capacity_ratios.csv)

Every row is priced by the roofline (llmsim.costmodel.estimate) on the configuration the source published (a
serving row by the request-level serving simulation of the scenario it describes, `serving_scenario`; a capacity
row by the serving planner's rate search over that simulation, `capacity_task`);
nothing is fitted, per table or at all. The published measure of each row is turned into seconds per step
(training) or per batch (inference) by the rule of its `metric` column (PUBLISHED_SECONDS), and the error is
predicted / published - 1. A row the model cannot price as published (hardware or link missing from the
catalog, FP8, mixture of experts, async tensor parallelism, ...) carries a `skip_reason` and is listed as
skipped; it never enters a median. The two older tables keep their own scripts (validate_narayanan.py,
validate_fastertransformer.py): their rows are read and priced by those scripts' functions.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import statistics
import sys
import time
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from pydantic import ValidationError

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.costmodel import CostModelError, Options, Plan, StepBreakdown, estimate
from llmsim.costmodel.cluster import plan_on
from llmsim.errors import LLMSimError, ScenarioError
from llmsim.wording import count
from llmsim.config import parse_scenario
from llmsim.hardware import load_catalog
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import read_rows
from llmsim.runner import plan_cases, run_scenario
from llmsim.serving.requests import draw_lengths
from llmsim.serving.spec import Lengths
from llmsim.workload.profile import profile_at_depth

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_fastertransformer as ft  # noqa: E402  (the older dev tables' scripts, beside this one)
import validate_narayanan as nara  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "validation"
SHARED = ROOT.parent / "shared" / "validation"
Kind = Literal["training", "inference", "serving"]


# --------------------------------------------------------------------------- rows and their outcome

@dataclass(frozen=True)
class Case:
    """One published row: what was measured, in seconds, and how to price it (None when skipped)."""

    row_id: str
    label: str
    published_s: float
    price: Callable[[object], StepBreakdown] | None
    skip_reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    case: Case
    result: StepBreakdown | None = None
    failure: str | None = None          # the cost model refused the row (a one-line reason)

    @property
    def predicted_s(self) -> float | None:
        return None if self.result is None else self.result.step_time_s

    @property
    def error(self) -> float | None:
        """predicted / published - 1 (signed; + = the model is slower than the run)."""
        return None if self.predicted_s is None else self.predicted_s / self.case.published_s - 1


def median_abs_error(outcomes: list[Outcome]) -> float | None:
    """Median of |error| over the priced rows (None when none is priced)."""
    errors = [abs(o.error) for o in outcomes if o.error is not None]
    return statistics.median(errors) if errors else None


def mean_error(outcomes: list[Outcome]) -> float | None:
    errors = [o.error for o in outcomes if o.error is not None]
    return statistics.fmean(errors) if errors else None


def run_case(case: Case, catalog) -> Outcome:
    if case.price is None:
        return Outcome(case)
    try:
        return Outcome(case, result=case.price(catalog))
    except CostModelError as exc:            # the model cannot price this configuration: said, not hidden
        return Outcome(case, failure=str(exc))


# --------------------------------------------------------------------------- published measure -> seconds

def maxtext_flops_per_device(r: dict[str, object], attention_share: float) -> float:
    """FLOPs per device per step as MaxText counted them when it logged the published TFLOP/s/chip.

    MaxText/train.py, calculate_training_tflops (PaLM, Chowdhery et al. 2022, Appendix B):
        6 * N * seq * per_device_batch  +  attention_share * 12 * heads * layers * head_dim * seq^2 * per_device_batch
    with attention_share 0 before 2023-06-02 (0e650131c added the attention term), 1 until 2023-11-08 and
    1/2 after (64ee4e938, "due to causality"). N is the parameter count of MaxText's decoder of the time
    (calculate_num_params_from_pytree): the tied vocab x emb embedding, per layer q, k, v, o (emb x heads x
    head_dim each), the MLP's wi and wo (emb x mlp each: a single non-gated activation) and one RMSNorm scale
    (parallel block), and the final RMSNorm. The T5 relative position biases of the 2023 versions (32 buckets
    x heads per layer) are left out: below 1e-6 of N.
    """
    emb, layers, heads, head_dim = r["hidden"], r["layers"], r["heads"], r["head_dim"]
    n_params = (r["vocab"] * emb + layers * (4 * emb * heads * head_dim + 2 * emb * r["ffn_hidden"] + emb) + emb)
    per_device_batch = r["global_batch"] / r["n_devices"]
    seq = r["seq_len"]
    return (6 * n_params * seq * per_device_batch
            + attention_share * 12 * heads * layers * head_dim * seq ** 2 * per_device_batch)


def megatron_flops_per_step(r: dict[str, object]) -> float:
    """FLOPs of one step as Megatron-LM counted them when it logged its TFLOP/s per GPU (MCore v0.8,
    megatron/training/training.py num_floating_point_operations at fbdc916731, 2024-10-09):

        12 B s L h^2 [ (1 + g/a + s/h) q/h  +  (f/h) k (3/2 if swiglu)  +  (f_shared/h)(3/2)  +  V / (2 L h) ]

    (Narayanan et al. 2021's appendix count: 3 GEMM passes, no recompute, the full s x s attention), with g
    the query groups (kv_heads), a the heads, q = heads x kv_channels (head_dim), f the routed expert's FFN
    width (--ffn-hidden-size), k top_k (1 without experts), f_shared the shared experts' total width and V the
    vocabulary padded to a multiple of 128 x tp (--make-vocab-size-divisible-by 128)."""
    h, layers, heads = r["hidden"], r["layers"], r["heads"]
    groups = r["kv_heads"] or heads
    head_dim = r["head_dim"] or h // heads
    ffn = r.get("expert_ffn_hidden") or r["ffn_hidden"]
    k = r.get("top_k") or 1
    gated = 1.5 if r["activation"] in ("swiglu", "geglu") else 1.0
    shared = (r.get("shared_experts") or 0) * (r.get("expert_ffn_hidden") or 0)
    multiple = 128 * r["tp"]
    vocab = -(-r["vocab"] // multiple) * multiple
    seq = r["seq_len"]
    return (12 * r["global_batch"] * seq * layers * h * h
            * ((1 + groups / heads + seq / h) * heads * head_dim / h + ffn / h * k * gated + shared / h * gated
               + vocab / (2 * layers * h)))


# metric -> the published value in seconds per step (training) or per batch (inference).
PUBLISHED_SECONDS: dict[str, Callable[[dict[str, object], float], float]] = {
    # torchtitan train.py: tps = tokens on this rank since the last log / (seconds * tp*pp*cp), i.e. the
    # global batch's tokens per second over all devices.
    "tokens_per_s_per_device": lambda r, v: r["global_batch"] * r["seq_len"] / (v * r["n_devices"]),
    # MaxText's logged TFLOP/s per device, with its FLOP count of the time (maxtext_flops_per_device).
    "maxtext_tflops_6n": lambda r, v: maxtext_flops_per_device(r, 0.0) / (v * 1e12),
    "maxtext_tflops_noncausal": lambda r, v: maxtext_flops_per_device(r, 1.0) / (v * 1e12),
    "maxtext_tflops_causal": lambda r, v: maxtext_flops_per_device(r, 0.5) / (v * 1e12),
    # Megatron-LM's logged TFLOP/s per GPU with its FLOP count (megatron_flops_per_step).
    "megatron_tflops": lambda r, v: megatron_flops_per_step(r) / (v * 1e12 * r["n_devices"]),
    # MLPerf Training result logs: seconds per optimizer step, the median over the runs' logged steps or
    # timed blocks (scripts/mlperf_step_time.py reads them from the MLLOG files the row's source names).
    "mlperf_step_s": lambda r, v: v,
    # vLLM benchmark_latency.py: wall time of one llm.generate() over the batch, in ms.
    "latency_ms": lambda r, v: v / 1e3,
}


# --------------------------------------------------------------------------- reading the CSV tables

MODEL_COLUMNS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "vocab", "activation", "norm",
                 "positions", "tie_embeddings")
COMMON = ("row_id", "run", "preset", *MODEL_COLUMNS, "dtype", "hardware", "n_devices", "intra_node", "inter_node",
          "attention", "metric", "published", "skip_reason", "assumptions", "source")
TRAINING = COMMON + ("seq_len", "global_batch", "micro_batch", "dp", "tp", "pp", "cp", "sp", "zero", "recompute",
                     "grads_fp32", "devices_per_node")
INFERENCE = COMMON + ("batch", "input_len", "output_len", "tp", "pp")
# Optional (blank or absent = a cluster of nodes): a TPU slice's shape and the number of slices over DCN.
TOPOLOGY_COLUMNS = ("topology", "slices")
# Optional model columns (blank or absent = the ModelSpec default): the parallel attention + MLP block.
MODEL_OPTIONAL_COLUMNS = ("parallel_block",)
# Optional training column (blank or absent = false): fp32 parameters as their own master (Options.params_fp32).
PARAMS_COLUMNS = ("params_fp32",)
INTS = {"layers", "hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "vocab", "n_devices", "seq_len",
        "global_batch", "micro_batch", "dp", "tp", "pp", "cp", "zero", "devices_per_node", "batch", "input_len",
        "output_len", "slices", "lora_rank", "experts", "top_k", "expert_ffn_hidden", "shared_experts",
        "first_dense_layers", "ep", "etp", "virtual_stages", "attention_dp"}
NONNEGATIVE = {"zero", "shared_experts", "first_dense_layers"}   # the other integers are >= 1
BOOLS = {"tie_embeddings", "sp", "grads_fp32", "fp8_all_gather", "ep_comm_overlap", "overlap_param_gather",
         "compile", "tp_comm_overlap", "grad_accum_fusion", "parallel_block", "params_fp32", "async_output"}
# Columns a priced row must fill (a skipped row may leave what the model would need blank).
REQUIRED = {"training": ("seq_len", "global_batch", "micro_batch", "dp", "tp", "pp", "cp", "zero", "recompute",
                         "n_devices", "devices_per_node", "hardware", "published"),
            "inference": ("batch", "input_len", "output_len", "tp", "pp", "n_devices", "hardware", "published")}
CHOICES = {"recompute": ("none", "selective", "selective-op", "selective-dots", "full"),
           "attention": ("flash", "cudnn", "flash3", "trtllm-mmha", "fused-softmax", "math"),
           "dtype": ("float32", "bfloat16", "float16", "float8", "float4"), "zero": (0, 1, 2, 3),
           "fp8_recipe": ("delayed", "current", "mxfp8"), "fp8_saved": ("float8", "bfloat16"),
           "fp8_frozen": ("bfloat16", "float8"), "fp8_attention": ("bfloat16", "float8"),
           "schedule": ("gpipe", "1f1b", "interleaved"), "all_reduce": ("nccl", "vllm")}
# Optional columns of a training table (blank or absent = the default): a float8 row's recipe
# (config.Fp8Spec: recipe, saved_activations, param_all_gather, frozen_weights), and of a float8 or float4 row
# the precision of its core attention (Fp8Spec.attention / Fp4Spec.attention: float8 = Transformer Engine's FP8
# dot-product attention, the MLPerf configs' FP8_DPA=1; blank = bfloat16).
FP8_COLUMNS = ("fp8_recipe", "fp8_saved", "fp8_all_gather", "fp8_frozen", "fp8_attention")
# Optional column of either table: the run was compiled (torch.compile); blank = the device's way
# (costmodel.plan.Options.compile: TPU rows are XLA-compiled, GPU rows eager).
COMPILE_COLUMNS = ("compile",)
# Optional columns of either table (blank or absent = a dense model / the default): a mixture of experts
# (workload.model.moe) and its expert parallelism, the pipeline schedule (training).
MOE_COLUMNS = ("experts", "top_k", "expert_ffn_hidden", "shared_experts", "first_dense_layers", "ep", "etp",
               "ep_comm_overlap", "schedule", "virtual_stages", "overlap_param_gather")
# Optional column of a training table (blank or absent = off, Plan's default): tensor-parallel communication
# overlapped with the GEMMs (Megatron-Core / Transformer Engine userbuffers, NeMo's `ub_tp_comm_overlap`,
# set by TP_COMM_OVERLAP=True in the MLPerf submissions): Plan.tp_comm_overlap.
OVERLAP_COLUMNS = ("tp_comm_overlap",)
# Optional column of a training table (blank or absent = false, Options' default): the weight-gradient GEMMs
# accumulate into the gradient buffer themselves (Megatron-LM / NeMo `gradient_accumulation_fusion`):
# Options.grad_accumulation_fusion.
FUSION_COLUMNS = ("grad_accum_fusion",)
# Optional columns of a training table (blank or absent = full training): parameter-efficient fine-tuning,
# LoRA adapters over a frozen base (sharing.lora, config.LoraSpec): rank, alpha (blank = 32) and the
# projections, space-separated (qkv, out, mlp or q k v o gate up down; blank = qkv out mlp).
LORA_COLUMNS = ("lora_rank", "lora_alpha", "lora_targets")
# Optional column of an inference table (blank or absent = nccl): the library of the engine's tensor-parallel
# all-reduces (costmodel.plan.Options.all_reduce; vllm = vLLM's custom all-reduce where vLLM uses it).
ENGINE_COLUMNS = ("all_reduce", "async_output")
# `async_output` (blank or absent = false): vLLM V0's asynchronous output processor (0.6.0 on, with CUDA graphs) was
# on. It learns that a request is finished only when it processes the last token, during the next step, so it
# decodes once more and discards the result ("an extra decode run is done", V0 scheduler): a batch's wall time
# is one decode step longer (the serving table's rows price the same step through serving.scheduler.async_output).



def _value(column: str, text: str) -> object:
    if column in INTS:
        number = int(text)
        if column not in NONNEGATIVE and number < 1:
            raise ValueError("must be >= 1")
        value: object = number
    elif column in BOOLS:
        if text.lower() not in ("true", "false"):
            raise ValueError("must be true or false")
        value = text.lower() == "true"
    elif column == "lora_alpha":
        value = float(text)
        if not value > 0 or math.isinf(value):
            raise ValueError("must be a positive number")
    elif column == "lora_targets":
        value = tuple(text.split())
    elif column == "published":
        value = float(text)
        if not value > 0 or math.isinf(value):
            raise ValueError("must be a positive number")
    else:
        value = text
    if column in CHOICES and value not in CHOICES[column]:
        raise ValueError(f"allowed: {', '.join(map(str, CHOICES[column]))}")
    return value


def _csv_rows(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """A dev table's raw rows (header -> cell text). Raises ScenarioError naming the file when a `required`
    column is missing or the file is not UTF-8."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise ScenarioError(str(path), None, f"missing column(s) {', '.join(missing)} ({what})")
            return list(reader)
    except UnicodeDecodeError:
        raise ScenarioError(str(path), None, "not UTF-8 text") from None


def read_runs(path: Path, kind: Kind) -> list[dict[str, object]]:
    """The rows of a dev table, typed; blank cells are None. Raises ScenarioError (file, row.column, what)."""
    columns = TRAINING if kind == "training" else INFERENCE
    raw_rows = _csv_rows(path, columns, f"{kind} table")
    rows = []
    for n, raw in enumerate(raw_rows, start=2):           # line 1 is the header
        where = raw.get("row_id") or f"line {n}"
        row: dict[str, object] = {}
        for column in (columns + TOPOLOGY_COLUMNS + MODEL_OPTIONAL_COLUMNS + MOE_COLUMNS + COMPILE_COLUMNS
                       + (FP8_COLUMNS + OVERLAP_COLUMNS + FUSION_COLUMNS + LORA_COLUMNS + PARAMS_COLUMNS
                          if kind == "training" else ENGINE_COLUMNS)):
            text = (raw.get(column) or "").strip()
            try:
                row[column] = _value(column, text) if text else None
            except ValueError as exc:
                raise ScenarioError(str(path), f"{where}.{column}", f"{text!r}: {exc}") from None
        if not row["source"]:
            raise ScenarioError(str(path), f"{where}.source", "every row names its source")
        if row["metric"] not in PUBLISHED_SECONDS:
            raise ScenarioError(str(path), f"{where}.metric",
                                f"{row['metric']!r}; allowed: {', '.join(PUBLISHED_SECONDS)}")
        if not row["skip_reason"]:
            blank = [c for c in REQUIRED[kind] if row[c] is None]
            if blank:
                raise ScenarioError(str(path), f"{where}.{blank[0]}", "required for a priced row")
            _check_priced(row, kind, str(path), where)
        rows.append(row)
    return rows


def _check_priced(r: dict[str, object], kind: Kind, file: str, where: str) -> None:
    """A priced row must be a configuration the model can be asked about: else one line naming the cell."""
    world = r["tp"] * r["pp"] * (r["dp"] * r["cp"] if kind == "training" else 1)
    if world != r["n_devices"]:
        raise ScenarioError(file, f"{where}.n_devices", f"{r['n_devices']} != the product of the parallel degrees "
                                                       f"({world})")
    if kind == "training" and r["global_batch"] % (r["dp"] * r["micro_batch"]):
        raise ScenarioError(file, f"{where}.global_batch",
                            f"{r['global_batch']} is not a multiple of dp x micro_batch = {r['dp'] * r['micro_batch']}")
    if r.get("fp8_attention") == "float8" and r.get("dtype") not in ("float8", "float4"):
        raise ScenarioError(file, f"{where}.fp8_attention", f"float8 attention needs dtype float8 or float4 "
                                                           f"(got {r.get('dtype') or 'bfloat16'})")
    catalog = _catalog()
    catalog.device(r["hardware"], key=f"{where}.hardware", file=file)
    for key in ("intra_node", "inter_node"):
        if r[key] is not None:
            catalog.link(r[key], key=f"{where}.{key}", file=file)
    try:
        model_spec(r, r["seq_len"] if kind == "training" else r["input_len"])
        lora_spec(r)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        column = ".".join(str(p) for p in err["loc"]) or "model"
        raise ScenarioError(file, f"{where}.{column}", err["msg"]) from None


@functools.lru_cache(maxsize=1)
def _catalog():
    return load_catalog()


def model_fields(r: dict[str, object], seq_len: int, layers: int | None = None) -> dict[str, object]:
    """The row's Transformer as `workload.model` keys: its preset with the row's explicit dimensions on top."""
    fields: dict[str, object] = {c: r[c] for c in MODEL_COLUMNS + MODEL_OPTIONAL_COLUMNS if r.get(c) is not None}
    if r["preset"]:
        fields["preset"] = r["preset"]
    if r.get("experts"):
        fields["moe"] = {key: r[key] for key in ("experts", "top_k", "expert_ffn_hidden", "shared_experts",
                                                   "first_dense_layers") if r.get(key) is not None}
    fields.update(seq_len=seq_len)
    if layers is not None:
        fields["layers"] = layers
    return fields


def model_spec(r: dict[str, object], seq_len: int, layers: int | None = None) -> ModelSpec:
    """The row's Transformer: its preset with the row's explicit dimensions on top."""
    return ModelSpec(**model_fields(r, seq_len, layers))


def lora_spec(r: dict[str, object]) -> LoraSpec | None:
    """The row's LoRA adapters (None = every weight trains)."""
    if not r.get("lora_rank"):
        return None
    fields: dict[str, object] = {"rank": r["lora_rank"]}
    if r.get("lora_alpha") is not None:
        fields["alpha"] = r["lora_alpha"]
    if r.get("lora_targets"):
        fields["targets"] = r["lora_targets"]
    return LoraSpec(**fields)




def _cluster(r: dict[str, object], catalog, devices_per_node: int):
    n = r["n_devices"]
    if r.get("topology"):  # a TPU job: `slices` slices of this torus, joined by the data-center network
        return catalog.cluster(r["hardware"], nodes=r["slices"] or 1, topology=r["topology"],
                               intra_node=r["intra_node"], inter_node=r["inter_node"])
    return catalog.cluster(r["hardware"], nodes=-(-n // devices_per_node), devices_per_node=min(n, devices_per_node),
                           intra_node=r["intra_node"], inter_node=r["inter_node"])


def training_price(r: dict[str, object]) -> Callable[[object], StepBreakdown]:
    """The roofline of one published training run: one optimizer step of the global batch."""
    def price(catalog) -> StepBreakdown:
        spec = model_spec(r, r["seq_len"])
        dtype = r["dtype"] or "bfloat16"
        fp8 = None
        if dtype == "float8":
            fp8 = {"recipe": r.get("fp8_recipe") or "delayed", "saved_activations": r.get("fp8_saved") or "float8",
                   "param_all_gather": bool(r.get("fp8_all_gather")),
                   "frozen_weights": r.get("fp8_frozen") or "bfloat16",
                   "attention": r.get("fp8_attention") or "bfloat16"}
        fp4 = {"attention": r.get("fp8_attention") or "bfloat16"} if dtype == "float4" else None
        workload = Workload(model=spec, mode="train", batch=r["global_batch"], dtype=dtype, fp8=fp8, fp4=fp4)
        sharing = SharingChoice(tie_embeddings=spec.tie_embeddings, lora=lora_spec(r))
        replicas = r["dp"] * r["micro_batch"]      # divides the global batch (read_runs checked it)
        plan = Plan(dp=r["dp"], tp=r["tp"], pp=r["pp"], cp=r["cp"], micro_batch=r["micro_batch"],
                    microbatches=r["global_batch"] // replicas, sp=bool(r["sp"]), zero=r["zero"],
                    recompute=r["recompute"], **_moe_plan(r))
        options = Options(attention=r["attention"] or "flash", main_grads_fp32=bool(r["grads_fp32"]),
                          grad_accumulation_fusion=bool(r.get("grad_accum_fusion")), compile=r.get("compile"),
                          params_fp32=bool(r.get("params_fp32")))
        cluster = _cluster(r, catalog, r["devices_per_node"])
        return estimate(workload, profile_at_depth(workload, sharing), sharing, plan_on(plan, cluster),
                        cluster, options)
    return price


def _moe_plan(r: dict[str, object]) -> dict[str, object]:
    """The Plan keys of a row's optional columns: expert parallelism (etp blank = tp, Megatron-Core's default)
    and, for training, the schedule, the parameter-gather and the tensor-parallel communication overlaps."""
    out: dict[str, object] = {"ep": r.get("ep") or 1, "etp": r.get("etp") or r["tp"],
                              "ep_comm_overlap": bool(r.get("ep_comm_overlap"))}
    if r.get("schedule"):
        out.update(schedule=r["schedule"], virtual_stages=r.get("virtual_stages") or 1)
    if r.get("overlap_param_gather") is not None:
        out["overlap_param_gather"] = bool(r["overlap_param_gather"])
    if r.get("tp_comm_overlap") is not None:
        out["tp_comm_overlap"] = bool(r["tp_comm_overlap"])
    return out


def inference_price(r: dict[str, object]) -> Callable[[object], StepBreakdown]:
    """The roofline of one published batch: prefill of input_len tokens, then output_len tokens in all
    (the first from the prefill), as `mode: decode` prices it (step_time = TTFT + (output_len - 1) x TPOT); with
    `async_output` one more decode step, the one V0 runs before it knows the batch finished (ENGINE_COLUMNS)."""
    def price(catalog) -> StepBreakdown:
        spec = model_spec(r, r["input_len"])
        tokens = r["output_len"] + (1 if r.get("async_output") else 0)
        workload = Workload(model=spec, mode="decode", batch=r["batch"], decode_tokens=tokens,
                            dtype=r["dtype"] or "bfloat16")
        sharing = SharingChoice(tie_embeddings=spec.tie_embeddings)
        plan = Plan(dp=1, tp=r["tp"], pp=r["pp"], micro_batch=r["batch"], microbatches=1, **_moe_plan(r))
        # The GPUs the row ran on, inside one node (every published row fits one 8-GPU node).
        cluster = _cluster(r, catalog, max(r["n_devices"], 1))
        return estimate(workload, profile_at_depth(workload, sharing), sharing, plan, cluster,
                        Options(attention=r["attention"] or "flash", compile=r.get("compile"),
                                all_reduce=r.get("all_reduce") or "nccl"))
    return price


def run_cases(path: Path, kind: Kind) -> list[Case]:
    cases = []
    for r in read_runs(path, kind):
        skip = r["skip_reason"]
        published_s = PUBLISHED_SECONDS[r["metric"]](r, r["published"]) if not skip or _complete(r, kind) else math.nan
        price = None if skip else (training_price(r) if kind == "training" else inference_price(r))
        cases.append(Case(str(r["row_id"]), str(r["run"] or ""), published_s, price, skip))
    return cases


def _complete(r: dict[str, object], kind: Kind) -> bool:
    return all(r[c] is not None for c in REQUIRED[kind])


# --------------------------------------------------------------------------- the two older tables

def _read_with(read_table: Callable[[Path], list], path: Path) -> list:
    """An older script's reader, its KeyError/ValueError on a foreign CSV turned into the one-line error."""
    try:
        return read_table(path)
    except KeyError as exc:
        raise ScenarioError(str(path), None, f"missing column {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), None, str(exc).splitlines()[0]) from None


def narayanan_cases(path: Path) -> list[Case]:
    """Narayanan et al. 2021 Table 1, priced by scripts/validate_narayanan.py (its launch configurations)."""
    return [Case(row.model, f"tp {row.tp} pp {row.pp} dp {row.dp}", row.published_s,
                 lambda catalog, row=row: nara.predict(row, catalog)[1]) for row in _read_with(nara.read_table, path)]


def fastertransformer_cases(path: Path) -> list[Case]:
    """FasterTransformer's GPT latencies, priced by scripts/validate_fastertransformer.py."""
    return [Case(row.row_id, f"{row.model} tp {row.tp} batch {row.batch} {row.input_len}/{row.output_len}",
                 row.published_s, lambda catalog, row=row: ft.predict(row, catalog))
            for row in _read_with(ft.read_table, path)]


# --------------------------------------------------------------------------- the serving table (request level)
#
# A serving row is one published figure of a serving benchmark (vLLM's `bench serve` at a request rate, or its
# offline throughput benchmark): the model, the hardware and tp x pp of one replica, the engine's scheduler
# settings, the request rate and the request lengths. It is priced by the cluster backend's serving simulation
# (llmsim.modeled_serving, docs/serving.md) as `llmsim run` would price the scenario the row describes
# (`serving_scenario`), through the `roofline` backend: the same simulation without the cluster backend's faults
# and jitter. The simulated row's column that the metric names is compared with the published value.

SERVING = ("row_id", "run", "preset", *MODEL_COLUMNS, "dtype", "hardware", "n_devices", "tp", "pp", "intra_node",
           "inter_node", "request_rate", "context", "requests", "input_len", "output_len", "scheduler",
           "max_num_seqs", "max_batched_tokens", "kv_block_tokens", "memory_utilization", "metric", "published",
           "skip_reason", "assumptions", "source")
# Optional (blank or absent = dense / NCCL): a mixture of experts and the engine's all-reduce (as the inference
# tables: ENGINE_COLUMNS).
SERVING_OPTIONAL = ("experts", "top_k", "expert_ffn_hidden", "shared_experts", "first_dense_layers", "ep", "etp",
                    "all_reduce", "lengths", *("delay_factor", "waiting_served_ratio", "max_waiting_tokens",
                                    "max_batch_total_tokens", "async_output", "overlap_schedule"), "concurrency", "attention",
                    "kv_cache_dtype", "attention_dp", "router", "engine_kernels", "eager", "fp4_layers",
                    "recv_interval", "graph_max_batch", "fuse_allreduce_rms", *MODEL_OPTIONAL_COLUMNS)
# `fp4_layers` (optional; blank = all): a float4 row's workload.fp4.layers (all | mlp: the attention projections
# kept 16-bit, nvidia/DeepSeek-R1-FP4 as TensorRT-LLM runs it); the scenario's rules refuse any other value.
# `attention_dp` (optional; blank = 1): the replica's attention data-parallel ranks, Strategy.attention_dp (SGLang
# --dp N --enable-dp-attention, TensorRT-LLM enable_attention_dp with tp N). `router` (optional; blank = the
# scenario's default, round-robin): serving.router, which also assigns a replica's requests to its attention-DP ranks.
# `parallel_block` (optional; blank = false): the attention and the MLP off one norm (GPT-J's block; ModelSpec).
# `kv_cache_dtype` (optional; blank = auto): the engine's KV-cache element type, serving.kv_cache_dtype (auto |
# float8: vLLM --kv-cache-dtype fp8); the scenario's rules refuse any other value, naming the row.
# `concurrency` (optional; blank = an open loop): a run measured with N clients, vLLM's `bench serve
# --max-concurrency N` at `--request-rate inf` (its request_rate cell `inf`): priced as the closed loop of
# serving.arrival kind concurrency (docs/serving.md, "Closed loop"), every request queued at t = 0 and N in flight.
# The engine policies' own keys (serving.scheduler.<column>, docs/scenario.md), passed through when a row gives
# them (blank or absent = the policy's default, which is the engine's): numbers here, their ranges and the kind
# they belong to are the scenario's rules (a bad one is refused naming the row and the key).
SERVING_SCHEDULER_KEYS = {"delay_factor": float, "waiting_served_ratio": float, "max_waiting_tokens": int,
                          "max_batch_total_tokens": int, "recv_interval": int, "graph_max_batch": int}
# `recv_interval` (optional; blank = 1): serving.scheduler.recv_interval, SGLang's --scheduler-recv-interval N (the
# engine reads new requests every N decode iterations; llmsim.serving.replica), as the row's launch command sets it.
# `graph_max_batch` (optional; blank = no limit, every decode pass replays a graph): serving.scheduler.graph_max_batch,
# the largest decode batch the engine captured a CUDA graph for, a larger pure-decode pass priced as an eager pass
# (costmodel.eager.past_graph_capture); set only from the row's own engine version's default (its assumptions).
# The scheduler's flags (serving.scheduler.<column>: true or false; blank or absent = false): `async_output`, the
# engine's output processing overlapped with the next iteration (vLLM V0 >= 0.6.0, docs/serving.md);
# `overlap_schedule`, the next iteration formed while the current one runs (SGLang >= 0.4's overlap scheduler).
# `fuse_allreduce_rms`, each tensor-parallel all-reduce folded with the RMSNorm after it (vLLM >= 0.16's default on
# Hopper and Blackwell at tp > 1: costmodel.eager), set where the row's engine version and launch say it ran.
SERVING_SCHEDULER_FLAGS = ("async_output", "overlap_schedule", "fuse_allreduce_rms")
# `engine_kernels` (optional; blank = the policy's default, fused for prefill-first): serving.scheduler.engine_kernels,
# whose model code launches a pass's kernels (fused | sglang | sglang-rocm; costmodel.eager): the SGLang rows of a
# DeepSeek-V3-shaped float8 model, whose extend pass SGLang launches from Python with more kernels a layer.
# `eager` (optional; blank = the policy's default): serving.scheduler.eager (none | prompt | all), the passes the engine
# launches from Python instead of replaying a CUDA graph: `all` for a run served with vLLM's --enforce-eager, or an
# engine path that captured no graph (costmodel.eager), as the row's assumptions state.
SERVING_SCHEDULER_WORDS = ("engine_kernels", "eager")
SERVING_INTS = {"context", "requests", "max_num_seqs", "max_batched_tokens", "kv_block_tokens", "concurrency"}
SERVING_REQUIRED = ("hardware", "n_devices", "tp", "pp", "request_rate", "context", "requests", "scheduler", "max_num_seqs", "max_batched_tokens", "kv_block_tokens",
                    "memory_utilization", "published")
# request_rate words for "every request at t = 0": `offline` (vLLM benchmark_throughput.py: one LLM.generate over
# every prompt) and `inf` (vLLM bench serve's --request-rate inf: every request sent at once).
ALL_AT_ONCE = ("offline", "inf")
SERVING_SEED = 0   # the request list's seed (the arrival gaps of a Poisson row and the lengths a `lengths` row draws)

# Named request-length distributions: a serving row gives one in its `lengths` column (its input_len and
# output_len blank) when the benchmark drew its requests' lengths from a dataset, instead of one prompt and one
# output length for every request. Each is the `serving.lengths` block of the scenario the row describes
# (docs/scenario.md), drawn with SERVING_SEED: the same lengths for every row that names it.
#
# The ShareGPT samplers: vLLM's benchmarks/benchmark_throughput.py (read at 018efffd, the stored version nearest
#   the rows' 9ddbe888, whose throughput-tests.json sets no --output-len and leaves --seed at 0;
#   benchmark_serving.py's `sample_sharegpt_requests` is the same sampler) takes the first two turns of each
#   conversation, shuffled; prompt = the human turn, output = the token count of the answer, asked as max_tokens
#   (the throughput benchmark with ignore_eos; the serving one on random `load_format dummy` weights, where an
#   early EOS is rare), so a request makes that many tokens; a pair with prompt or output < 4 tokens, prompt > 1024
#   or prompt + output > 2048 is skipped and the next conversation taken: the filter, as `min`, `max_input`,
#   `max_total` (SHAREGPT_FILTER). The token counts depend on the model's tokenizer, so there is one distribution
#   per tokenizer family, each from the sampler's own printed token totals (the benchmark's deterministic sample
#   statistics, not a performance figure):
# sharegpt-vllm-llama3 (Llama 3's 128k-entry tokenizer; the Llama 3 8B and 70B rows): the rows' prompt count and
#   seed, 200 prompts at seed 0 (presumably the rows' very sample: the same sampler, seed and tokenizer, if neither
#   changed between the rows' mid-2024 build and vLLM 0.6.6, not checked line by line; the serving benchmark's
#   sampler was aligned to the throughput one in vLLM PR #4279), as vLLM 0.6.6's benchmark_throughput.py printed it
#   for Llama-3.3-70B-Instruct in
#   vllm-project/vllm issue #12315 (2025-01-22): "Throughput: 3.28 requests/s, 1414.42 total tokens/s, 714.48
#   output tokens/s" (and 3.47 / 1496.33 / 755.85 in a second run), so 431.2 tokens a request, 217.83 of them
#   output, 213.40 prompt. A 1000-prompt sample (vllm-project/vllm PR #14036, Llama-3.1-8B: 39.72 req/s, 16360.76
#   total and 7468.34 output tok/s) gives 223.9 / 188.0: the spread of the sample means.
# sharegpt-vllm-mistral (the Mistral 32k SentencePiece tokenizer; the Mixtral 8x7B rows): lmdeploy's
#   benchmark/profile_throughput.py, the same sampler and filter with ignore_eos (read at 01143d5a), printed for
#   Mixtral-8x22B-v0.1 (InternLM/lmdeploy PR #1515, 3000 prompts): 741,804 prompt and 712,850 completion tokens,
#   247.27 / 237.62 a request (a completion may count one token past its max_new_tokens: < 0.5%).
#   Mixtral 8x22B's Mistral SentencePiece tokenizer has 32,768 entries to 8x7B's 32,000: taken as counting
#   ShareGPT's text alike (an assumption); a 3000-prompt sample, not the rows' 200.
# Only means are published, so each length is the exponential distribution (the largest-entropy distribution on
#   the positive reals with a given mean; the histograms of Kwon et al. 2023, PagedAttention, Fig. 11 have their
#   mode at the short end and a long right tail), its mean before the filter chosen so that the mean after the
#   filter is the published one (exponential_means_before_filter: exact, no draws). NOT reproduced: the tail
#   beyond the mean (the longest answer of 200 sets the end of an offline run), and the benchmark's own 200
#   prompts (ShareGPT is not downloadable here): 200 draws of the distribution with llmsim's seed.
# Before 2026-12-01 one distribution stood for both tokenizers, with the only means then found, Kwon et al. 2023
#   Fig. 11 (161.31 / 337.99, the whole conversations' turns counted with OPT/LLaMA tokenizers): the answers 1.5x
#   too long for this sampler (docs/validation.md, "the ShareGPT sample's own means").
# sharegpt-sglang-llama3 (Llama 3's tokenizer; the SM rows): SGLang 0.3.0's bench_serving (sglang/bench_serving.py
#   sample_sharegpt_requests: the same first-two-turns pairs, shuffled after random.seed(1), the same filter; both
#   of its backends, sglang and vllm, ask max_tokens = the answer's length with ignore_eos) for the 5,000 prompts of
#   sgl-project/sglang benchmark/benchmark_vllm_060/README.md. Output: that README's four offline runs divide to
#   194.35, 194.28, 194.36 and 194.36 output tokens a request (output tok/s over req/s; the req/s printed to two
#   decimals, so each ratio is known to about +-0.05): their common interval is 194.31-194.33, taken as 194.32.
#   Prompt: the README prints no input total; the mean of the largest published Llama 3 sample is taken instead,
#   2,000 prompts of vLLM's sampler at its seed 0 (sgl-project/sglang issue #1639, maintainer zhyncs, 2024-10-17:
#   "Total input tokens: 453502", "Total generated tokens: 376493"): 226.75 (its output mean, 188.25, shows the
#   spread between samples: the SGLang 5,000 sample's own 194.32 is used for the output). An assumption.
SHAREGPT_FILTER: dict[str, int] = {"min": 4, "max_input": 1024, "max_total": 2048}
SHAREGPT_MEANS: dict[str, tuple[float, float]] = {   # published (prompt, output) means after the filter
    "sharegpt-vllm-llama3": (1414.42 / 3.28 - 714.48 / 3.28, 714.48 / 3.28),
    "sharegpt-vllm-mistral": (741_804 / 3000, 712_850 / 3000),
    "sharegpt-sglang-llama3": (453_502 / 2000, 194.32),
    # SGLang PR #1060 (DeepSeek-V2-Lite with --enable-mla, 1,000 ShareGPT prompts at once): its printed totals
    # "Total input tokens: 236142", "Total generated tokens: 215614" (rows DS03/DS04 of serving_deepseek.csv)
    "sharegpt-sglang-deepseek": (236_142 / 1000, 215_614 / 1000),
    # vLLM 0.11's `bench serve --dataset-name sharegpt` (vllm/benchmarks/datasets.py ShareGPTDataset: the same
    # first-two-turns pairs and filter) for 1,000 prompts, as GPUStack's Performance Lab printed it
    # (serving_ep_pairs.csv): sharegpt-vllm-glm (GLM-4.5/4.6's 151,552-entry tokenizer): "Total input tokens:
    # 214465", "Total generated tokens: 199904" (every SGLang run of the GLM pages); sharegpt-vllm-qwen3 (Qwen3's
    # tokenizer; 984 requests succeeded): the two Qwen3-235B H100 runs' totals, 212,992 + 214,311 input and
    # 194,446 + 192,752 output tokens over 2 x 984 requests.
    "sharegpt-vllm-glm": (214_465 / 1000, 199_904 / 1000),
    "sharegpt-vllm-qwen3": ((212_992 + 214_311) / 1968, (194_446 + 192_752) / 1968),
}


def _rounded_exponential_pmf(mean: float, largest: int) -> list[float]:
    """P(L = k), k = 1..largest, of llmsim's exponential length (requests.draw_length: max(1, round(mean * E)))."""
    return [math.exp(-(0.0 if k == 1 else k - 0.5) / mean) - math.exp(-(k + 0.5) / mean)
            for k in range(1, largest + 1)]


def filtered_exponential_means(mean_in: float, mean_out: float, minimum: int, max_input: int,
                               max_total: int) -> tuple[float, float]:
    """Mean prompt and output tokens of the pairs an exponential `lengths` block keeps after its filter (prompt
    and output >= minimum, prompt <= max_input, prompt + output <= max_total; a refused pair drawn again): the
    exact expectation over the rounded-exponential probabilities, O(max_input) after a prefix sum."""
    p_in = _rounded_exponential_pmf(mean_in, max_input)
    p_out = _rounded_exponential_pmf(mean_out, max_total)
    mass, weighted = [0.0], [0.0]    # prefix sums of P(o) and o * P(o) over o = 1..k
    for k, p in enumerate(p_out, start=1):
        mass.append(mass[-1] + (p if k >= minimum else 0.0))
        weighted.append(weighted[-1] + (k * p if k >= minimum else 0.0))
    total = sum_in = sum_out = 0.0
    for i in range(minimum, max_input + 1):
        room = max_total - i             # the longest output a prompt of i tokens may have
        kept = p_in[i - 1] * mass[room]
        total += kept
        sum_in += i * kept
        sum_out += p_in[i - 1] * weighted[room]
    if not total > 0:
        raise ValueError(f"no pair of exponential lengths with means {mean_in:.4g} / {mean_out:.4g} passes the filter")
    return sum_in / total, sum_out / total


def exponential_means_before_filter(target_in: float, target_out: float, minimum: int, max_input: int,
                                    max_total: int) -> tuple[float, float]:
    """The exponential means (prompt, output) whose pairs, after the filter, have the published means
    (target_in, target_out): fixed-point iteration m <- m * target / filtered_mean(m), to 1e-9 relative.
    ValueError when it does not converge (a target the filter cannot reach: a prompt mean past max_input)."""
    mean_in, mean_out = target_in, target_out
    for _ in range(500):
        try:
            got_in, got_out = filtered_exponential_means(mean_in, mean_out, minimum, max_input, max_total)
        except ValueError:
            break
        if abs(got_in / target_in - 1) < 1e-9 and abs(got_out / target_out - 1) < 1e-9:
            return mean_in, mean_out
        mean_in, mean_out = mean_in * target_in / got_in, mean_out * target_out / got_out
    raise ValueError(f"no exponential lengths reach means {target_in} / {target_out} after the filter")


def _sharegpt_lengths(name: str) -> dict[str, object]:
    """The `serving.lengths` block of a ShareGPT distribution (SHAREGPT_MEANS)."""
    f = SHAREGPT_FILTER
    mean_in, mean_out = exponential_means_before_filter(*SHAREGPT_MEANS[name], f["min"], f["max_input"],
                                                        f["max_total"])
    return {"input": {"kind": "exponential", "mean": round(mean_in, 4)},
            "output": {"kind": "exponential", "mean": round(mean_out, 4)}, **f}


# vLLM's random dataset (`bench serve --dataset-name random`): each request's prompt and output length drawn
#   uniformly from the integers of a range around --random-input-len / --random-output-len, with ignore_eos, so a
#   request makes exactly its drawn output. The range is vLLM's RandomDataset.get_sampling_params
#   (vllm/benchmarks/datasets.py, the rule read in vllm-project/vllm's stored copies of 2025-2026): the prompt's
#   tokens less the tokenizer's special tokens (real = input - special) from floor(real (1 - r)) to
#   ceil(real (1 + r)), the output from max(1, floor(output (1 - r))) to max(1, ceil(output (1 + r))), r the
#   --random-range-ratio; the server adds the special tokens back (a Llama 3 BOS), so the engine sees `special`
#   more prompt tokens. (Name, --random-input-len, --random-output-len, r, special tokens of the tokenizer):
# vllm-random-20k-2k-r0.15: the vLLM blog's FP8 KV-cache post (2026-04-22), "~20k input tokens and ~2k output
#   tokens (±15% variance)" for Llama-3.1-8B (its BOS the one special token), taken as 20000 / 2000 at r 0.15.
VLLM_RANDOM_DATASETS: tuple[tuple[str, int, int, float, int], ...] = (
    ("vllm-random-20k-2k-r0.15", 20_000, 2_000, 0.15, 1),
)


def vllm_random_lengths(input_len: int, output_len: int, range_ratio: float, special_tokens: int) -> dict[str, object]:
    """The `serving.lengths` block of vLLM's random dataset (VLLM_RANDOM_DATASETS): uniform integer ranges, the
    prompt's counted as the engine sees it (special tokens included)."""
    real = max(0, input_len - special_tokens)
    low_in, high_in = math.floor(real * (1 - range_ratio)), math.ceil(real * (1 + range_ratio))
    low_out = max(1, math.floor(output_len * (1 - range_ratio)))
    high_out = max(1, math.ceil(output_len * (1 + range_ratio)))
    return {"input": {"kind": "uniform", "min": low_in + special_tokens, "max": high_in + special_tokens},
            "output": {"kind": "uniform", "min": low_out, "max": high_out}}


# SGLang's random dataset (`python -m sglang.bench_serving --dataset-name random`, ignore_eos by default): the
#   prompt uniform on the integers max(int(input r), 1)..input, the output's max_new_tokens on int(output r)..output
#   (sglang/bench_serving.py `sample_random_requests`, numpy's global generator seeded with --seed, default 1), r
#   the --random-range-ratio (default 0.0 in the runs here). Every run of the SGLang cookbook's Llama 3.1 page
#   printed as "Total input tokens" exactly the sum of those prompt draws (numpy seed 1) and as "Total generated
#   tokens" that of the output draws plus one a request (e.g. 10 prompts of 1000 / 1000: 6,101 and 4,220 = 4,210 +
#   10), so a request generates its draw + 1 tokens: the output range here is one higher. (Name, --random-input-len,
#   --random-output-len, r):
# sglang-random-1k-1k-r0 and sglang-random-8k-1k-r0: the cookbook's "standard" and "summarization" scenarios.
SGLANG_RANDOM_DATASETS: tuple[tuple[str, int, int, float], ...] = (
    ("sglang-random-1k-1k-r0", 1_000, 1_000, 0.0),
    ("sglang-random-8k-1k-r0", 8_000, 1_000, 0.0),
    # the cookbook's DeepSeek-V3.1 page (MI300X) 1k / 8k scenario (serving_deepseek.csv DS41-DS76)
    ("sglang-random-1k-8k-r0", 1_000, 8_000, 0.0),
)


def sglang_random_lengths(input_len: int, output_len: int, range_ratio: float) -> dict[str, object]:
    """The `serving.lengths` block of SGLang's random dataset (SGLANG_RANDOM_DATASETS): uniform integer ranges,
    the output one token past the drawn max_new_tokens (what the published totals count)."""
    return {"input": {"kind": "uniform", "min": max(int(input_len * range_ratio), 1), "max": input_len},
            "output": {"kind": "uniform", "min": int(output_len * range_ratio) + 1, "max": output_len + 1}}


# SGLang's random dataset as its 2024 bench_serving drew it (0.2.x, before the + 1 of the rows above): the same
#   prompt range, the output's max_new_tokens on int(output r)..output with nothing added. SGLang PR #1262 (H100 SXM,
#   2024-08-30) printed 5,000 prompts of 32 / 128 at r 0 as "Total input tokens: 82922" and "Total generated
#   tokens: 321605": exactly numpy's draws at seed 1, randint(1, 33) and randint(0, 129) over 5,000 requests (the
#   output total is the requested lengths'; + 1 a request would print 326,605). A draw of 0 asks no token; llmsim's
#   lengths start at 1, so the output is priced on 1..output (the 0 draws, ~1 in 129, priced as 1 token: +0.8% of
#   the output tokens). (Name, --random-input-len, --random-output-len, r):
# sglang-v02-random-32-128-r0: SGLang PR #1262's offline run.
SGLANG_V02_RANDOM_DATASETS: tuple[tuple[str, int, int, float], ...] = (
    ("sglang-v02-random-32-128-r0", 32, 128, 0.0),
    # the SGLang cookbook's DeepSeek-R1 page (8 B200, SGLang 0.5.6.post1): its printed totals equal numpy's draws at
    #   seed 1 with nothing added (serving_deepseek.csv DS05-DS40; checked by the rows' author for all nine runs)
    ("sglang-v02-random-1k-1k-r0", 1_000, 1_000, 0.0),
    ("sglang-v02-random-1k-8k-r0", 1_000, 8_000, 0.0),
    ("sglang-v02-random-8k-1k-r0", 8_000, 1_000, 0.0),
)


def sglang_v02_random_lengths(input_len: int, output_len: int, range_ratio: float) -> dict[str, object]:
    """The `serving.lengths` block of SGLang 0.2's random dataset (SGLANG_V02_RANDOM_DATASETS): the prompt as
    `sglang_random_lengths`, the output the drawn max_new_tokens itself, at least 1."""
    return {"input": {"kind": "uniform", "min": max(int(input_len * range_ratio), 1), "max": input_len},
            "output": {"kind": "uniform", "min": max(int(output_len * range_ratio), 1), "max": output_len}}


# InferenceX's (formerly InferenceMAX) random dataset: its own copy of vLLM's old benchmark_serving.py
#   (SemiAnalysisAI/InferenceX utils/bench_serving/benchmark_serving.py, sample_random_requests: sample_uniform draws
#   np.random.randint(int(seq_len * range_ratio), seq_len + 1) for the prompt and for the answer alike, each prompt
#   re-encoded to exactly its drawn length, the answer forced to its drawn length by --ignore-eos), launched by
#   benchmarks/benchmark_lib.sh run_benchmark_serving with --random-range-ratio 0.8 in every InferenceX workflow
#   (RANDOM_RANGE_RATIO "0.8"): prompt and answer each uniform on 80-100% of the nominal length, SGLang 0.2's rule
#   (sglang_v02_random_lengths) exactly. (Name, --random-input-len, --random-output-len, r); serving_inferencex.csv.
INFERENCEX_RANDOM_DATASETS: tuple[tuple[str, int, int, float], ...] = (
    ("inferencex-random-1k-1k-r0.8", 1_024, 1_024, 0.8),
    ("inferencex-random-1k-8k-r0.8", 1_024, 8_192, 0.8),
    ("inferencex-random-8k-1k-r0.8", 8_192, 1_024, 0.8),
)


LENGTH_DISTRIBUTIONS: dict[str, dict[str, object]] = {
    **{name: _sharegpt_lengths(name) for name in SHAREGPT_MEANS},
    **{name: vllm_random_lengths(i, o, r, special) for name, i, o, r, special in VLLM_RANDOM_DATASETS},
    **{name: sglang_random_lengths(i, o, r) for name, i, o, r in SGLANG_RANDOM_DATASETS},
    **{name: sglang_v02_random_lengths(i, o, r) for name, i, o, r in SGLANG_V02_RANDOM_DATASETS},
    **{name: sglang_v02_random_lengths(i, o, r) for name, i, o, r in INFERENCEX_RANDOM_DATASETS}}

# metric -> (the serving row's column, docs/results.md; the published unit in SI units of that column).
# The names are vLLM bench serve's (vllm/benchmarks/serve.py, calculate_metrics: Tput = completed / duration,
# TTFT, ITL = every gap between consecutive tokens pooled, TPOT = (e2e - ttft) / (output - 1) per request),
# which docs/serving.md, "Metrics and the SLO", follows.
SERVING_METRICS: dict[str, tuple[str, float]] = {
    "requests_per_s": ("requests_per_s", 1.0),
    "output_tokens_per_s": ("output_tokens_per_s", 1.0),
    # output tokens/s per GPU of the replica (TensorRT-LLM's blogs: out_tps = output_seqlen x batch_size /
    # total_latency / tp): the simulated row's tokens_per_s_per_device, output_tokens_per_s / n_devices
    "output_tokens_per_s_per_device": ("tokens_per_s_per_device", 1.0),
    "ttft_mean_ms": ("ttft_mean_s", 1e-3),
    "ttft_p50_ms": ("ttft_p50_s", 1e-3),
    "ttft_p99_ms": ("ttft_p99_s", 1e-3),
    "tpot_mean_ms": ("tpot_mean_s", 1e-3),
    "tpot_p50_ms": ("tpot_p50_s", 1e-3),
    "tpot_p99_ms": ("tpot_p99_s", 1e-3),
    "itl_mean_ms": ("itl_mean_s", 1e-3),
    "itl_p50_ms": ("itl_p50_s", 1e-3),
    "itl_p99_ms": ("itl_p99_s", 1e-3),
}


def _serving_value(column: str, text: str) -> object:
    if column == "request_rate":
        if text in ALL_AT_ONCE:
            return text
        try:
            rate = float(text)
        except ValueError:
            rate = math.nan
        if not 0 < rate < math.inf:
            raise ValueError(f"allowed: a rate > 0 in requests/s, or {' or '.join(ALL_AT_ONCE)} (every request at once)")
        return rate
    if column == "memory_utilization":
        value = float(text)
        if not 0 < value <= 1:
            raise ValueError("allowed: 0 < memory_utilization <= 1")
        return value
    if column in SERVING_SCHEDULER_FLAGS:
        if text.lower() not in ("true", "false"):
            raise ValueError("allowed: true, false (or blank: false)")
        return text.lower() == "true"
    if column in SERVING_SCHEDULER_KEYS:
        number = SERVING_SCHEDULER_KEYS[column](text)
        if not math.isfinite(number):
            raise ValueError("allowed: a finite number")
        return number
    if column in SERVING_INTS:
        value = int(text)
        if value < 1:
            raise ValueError("must be >= 1")
        return value
    if column == "metric" and text not in SERVING_METRICS:
        raise ValueError(f"allowed: {', '.join(SERVING_METRICS)}")
    if column == "lengths":
        if text not in LENGTH_DISTRIBUTIONS:
            raise ValueError(f"allowed: {', '.join(LENGTH_DISTRIBUTIONS)} (a named length distribution), or blank "
                             "with input_len and output_len")
        return text
    return _value(column, text)


def _typed_row(path: Path, where: str, raw: dict[str, str], columns: Sequence[str],
               value: Callable[[str, str], object], named: Sequence[str],
               required: Sequence[str]) -> dict[str, object]:
    """One row of a serving or capacity table, typed by `value(column, text)` (blank cells None). Every row names
    the `named` columns; a priced row (no skip_reason) fills every `required` one. ScenarioError (file,
    row.column, what) on the first problem."""
    row: dict[str, object] = {}
    for column in columns:
        text = (raw.get(column) or "").strip()
        try:
            row[column] = value(column, text) if text else None
        except ValueError as exc:
            raise ScenarioError(str(path), f"{where}.{column}", f"{text!r}: {exc}") from None
    for column in named:
        if not row[column]:
            raise ScenarioError(str(path), f"{where}.{column}",
                                f"every row names its {', '.join(named[:-1])} and {named[-1]}")
    if not row["skip_reason"]:
        blank = [c for c in required if row[c] is None]
        if blank:
            raise ScenarioError(str(path), f"{where}.{blank[0]}", "required for a priced row")
    return row


def read_serving_runs(path: Path) -> list[dict[str, object]]:
    """The rows of a serving dev table, typed; blank cells are None. Raises ScenarioError (file, row.column, what)."""
    raw_rows = _csv_rows(path, SERVING, "serving table")
    rows = []
    for n, raw in enumerate(raw_rows, start=2):           # line 1 is the header
        where = raw.get("row_id") or f"line {n}"
        row = _typed_row(path, where, raw, SERVING + SERVING_OPTIONAL, _serving_value, ("source", "metric"),
                         SERVING_REQUIRED)
        if not row["skip_reason"]:
            given = [c for c in ("input_len", "output_len") if row[c] is not None]
            if row["lengths"] is not None and given:
                raise ScenarioError(str(path), f"{where}.{given[0]}",
                                    f"blank with lengths {row['lengths']!r} (the distribution gives the lengths)")
            if row["lengths"] is None and len(given) < 2:
                missing = "output_len" if given else "input_len"
                names = ", ".join(LENGTH_DISTRIBUTIONS)
                raise ScenarioError(str(path), f"{where}.{missing}",
                                    f"required for a priced row (or a lengths distribution: {names})")
            if row.get("concurrency") is not None and row["request_rate"] != "inf":
                raise ScenarioError(str(path), f"{where}.concurrency",
                                    f"{row['concurrency']} clients with request_rate {row['request_rate']!r}: a closed "
                                    f"loop is priced at request_rate inf only (vLLM --max-concurrency with "
                                    f"--request-rate inf)")
            if row["tp"] * row["pp"] != row["n_devices"]:
                raise ScenarioError(str(path), f"{where}.n_devices",
                                    f"{row['n_devices']} != tp x pp = {row['tp'] * row['pp']} (one replica)")
        rows.append(row)
    return rows


def serving_scenario(r: dict[str, object]) -> tuple[dict[str, Any], str | None]:
    """The scenario a serving row describes, as `llmsim run` reads it, and the text of its trace file (every
    request at t = 0, for an offline or `inf` row; None for a Poisson row). One replica of tp x pp devices on
    one node of the row's hardware, priced by the roofline backend; the row's context is the model's seq_len
    (vLLM's max_model_len)."""
    strategy: dict[str, object] = {"name": f"tp{r['tp']}-pp{r['pp']}", "tp": r["tp"], "pp": r["pp"]}
    for key in ("ep", "etp", "attention_dp"):
        if r.get(key) is not None:
            strategy[key] = r[key]
    serving: dict[str, object] = {
        "requests": r["requests"],
        "scheduler": {"kind": r["scheduler"], "max_num_seqs": r["max_num_seqs"],
                      "max_batched_tokens": r["max_batched_tokens"],
                      **{key: r[key] for key in SERVING_SCHEDULER_KEYS if r.get(key) is not None},
                      **{key: True for key in SERVING_SCHEDULER_FLAGS if r.get(key)},
                      **{key: r[key] for key in SERVING_SCHEDULER_WORDS if r.get(key)}},
        "kv_block_tokens": r["kv_block_tokens"], "memory_utilization": r["memory_utilization"]}
    if r.get("kv_cache_dtype"):   # blank = the scenario's default, auto (the block as before the key existed)
        serving["kv_cache_dtype"] = r["kv_cache_dtype"]
    if r.get("router"):           # blank = the scenario's default (the block as before the column existed)
        serving["router"] = r["router"]
    trace = None
    lengths: dict[str, object] = (dict(LENGTH_DISTRIBUTIONS[str(r["lengths"])]) if r.get("lengths") is not None
                                  else {"input": r["input_len"], "output": r["output_len"]})
    if r.get("concurrency") is not None:
        # N clients over the request list (vLLM's semaphore at request rate inf): the closed loop
        serving["arrival"] = {"kind": "concurrency", "clients": r["concurrency"]}
        serving["lengths"] = lengths
    elif r["request_rate"] in ALL_AT_ONCE:
        # every request at t = 0: a trace of the lengths llmsim's sampler draws for this seed (the same pairs a
        # Poisson row with this lengths block gets, in order)
        n_requests = int(r["requests"])  # type: ignore[call-overload]
        pairs = draw_lengths(Lengths.model_validate(lengths), n_requests, SERVING_SEED)
        serving["arrival"] = {"kind": "trace", "path": "all-at-once.csv"}
        trace = "arrival_s,input_tokens,output_tokens\n" + "".join(f"0,{i},{o}\n" for i, o in pairs)
    else:
        serving["arrival"] = {"kind": "poisson", "rate": r["request_rate"]}
        serving["lengths"] = lengths
    backend = {"hardware": r["hardware"], "nodes": 1, "devices_per_node": r["n_devices"],
               "all_reduce": r.get("all_reduce") or "nccl"}
    if r.get("attention"):  # the engine's fused attention kernel (costmodel.plan.FUSED_ATTENTION); blank = flash
        backend["attention"] = r["attention"]
    for key in ("intra_node", "inter_node"):
        if r[key] is not None:
            backend[key] = r[key]
    workload: dict[str, Any] = {"model": model_fields(r, r["context"]), "dtype": r["dtype"] or "bfloat16"}  # type: ignore[arg-type]
    if r.get("fp4_layers"):   # blank = all (the scenario's default)
        workload["fp4"] = {"layers": r["fp4_layers"]}
    scenario = {"name": "validate-serving", "workload": workload,
                "strategies": [strategy], "serving": serving, "backends": {"roofline": backend},
                "seed": SERVING_SEED}
    return scenario, trace


def simulate_serving_row(r: dict[str, object]) -> dict[str, Any]:
    """The roofline backend's serving row (results columns) for the scenario a serving row describes."""
    scenario, trace = serving_scenario(r)
    return dict(_simulate(json.dumps(scenario, sort_keys=True), trace))


@functools.lru_cache(maxsize=None)
def _simulate(scenario_json: str, trace: str | None) -> tuple[tuple[str, Any], ...]:
    """Run one scenario (cached: the rows of one configuration share a simulation) in a scratch folder."""
    data = json.loads(scenario_json)
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    with tempfile.TemporaryDirectory(prefix="llmsim-validate-serving-") as tmp:
        folder = Path(tmp)
        if trace is not None:
            (folder / data["serving"]["arrival"]["path"]).write_text(trace, encoding="utf-8")
        file = str(folder / "serving-row.yaml")
        scenario = parse_scenario(data, file)
        planned = plan_cases(scenario, registry, file, scenario_dir=folder)
        outcome = run_scenario(scenario, registry, planned, folder / "runs", manager=manager, scenario_dir=folder)
        rows = read_rows(outcome.run_dir)
    assert len(rows) == 1, f"one serving row expected, got {len(rows)}"
    return tuple(rows[0].items())


@dataclass(frozen=True)
class ServingCase:
    """One published serving figure: the metric, its value in SI units, and the row (None when skipped)."""

    row_id: str
    label: str
    metric: str
    published_s: float          # the published value in the metric's column's SI unit (seconds or per second)
    row: dict[str, object] | None
    skip_reason: str | None = None
    file: str = ""              # the table it comes from (for a one-line error naming the row)


@dataclass(frozen=True)
class ServingOutcome:
    case: ServingCase
    result: dict[str, Any] | None = None      # the simulated serving row
    failure: str | None = None

    @property
    def predicted(self) -> float | None:
        if self.result is None:
            return None
        value = self.result.get(SERVING_METRICS[self.case.metric][0])
        return None if value is None else float(value)

    @property
    def error(self) -> float | None:
        """predicted / published - 1 (signed: + = the model's figure is higher; for a time, slower; for a
        throughput, faster)."""
        return None if self.predicted is None else self.predicted / self.case.published_s - 1


def serving_cases(path: Path) -> list[ServingCase]:
    cases = []
    for r in read_serving_runs(path):
        metric = str(r["metric"])
        published = r["published"] * SERVING_METRICS[metric][1]  # type: ignore[operator]
        skip = r["skip_reason"]
        cases.append(ServingCase(str(r["row_id"]), str(r["run"] or ""), metric, published,
                                 None if skip else r, skip, str(path)))  # type: ignore[arg-type]
    return cases


def run_serving_case(case: ServingCase) -> ServingOutcome:
    if case.row is None:
        return ServingOutcome(case)
    try:
        row = simulate_serving_row(case.row)
    except ScenarioError as exc:
        # the scenario the row describes is refused (an unknown device or link, a model rule, a scheduler that
        # does not exist): one line naming the table's row and the scenario key, not the scratch file
        raise ScenarioError(case.file, case.row_id, f"{exc.key}: {exc.message}" if exc.key else exc.message) from None
    if row.get("status") != "ok":
        return ServingOutcome(case, failure=f"{row.get('status')}: {row.get('error')}")
    if row.get(SERVING_METRICS[case.metric][0]) is None:
        return ServingOutcome(case, failure=f"the simulation gives no {SERVING_METRICS[case.metric][0]}")
    return ServingOutcome(case, result=row)


def print_skipped(outcomes: Sequence[Any], refused_by: str) -> None:
    """The rows left out of every median, grouped by why: the row's own skip_reason, else what refused to price it
    (`refused_by`: the cost model, the simulation) with its failure. Any table's outcomes (`.result` None when
    skipped, `.case.skip_reason`, `.case.row_id`, `.failure`)."""
    reasons: dict[str, list[str]] = {}
    for o in outcomes:
        if o.result is None:
            reasons.setdefault(o.case.skip_reason or f"{refused_by}: {o.failure}", []).append(o.case.row_id)
    for why, ids in reasons.items():
        print(f"skipped, {len(ids)} row{'s' if len(ids) > 1 else ''} (in no median): {why}\n    {' '.join(ids)}")


def print_header(table: "Table", path: Path, header: str) -> None:
    """A table's title line, its column header and a rule under it."""
    print(f"== {table.name} ({table.kind}): {path}")
    print(header)
    print("-" * len(header))


def print_serving_table(table: "Table", path: Path, outcomes: list[ServingOutcome]) -> None:
    print_header(table, path, f"{'row':<8}{'run':<48}{'metric':<16}{'published':>11}{'predicted':>11}{'error':>9}  "
                              f"{'batch max':>9}{'kv peak':>8}{'preempt':>8}")
    for o in outcomes:
        if o.result is None:
            continue
        unit = SERVING_METRICS[o.case.metric][1]
        r = o.result
        print(f"{o.case.row_id[:7]:<8}{o.case.label[:47]:<48}{o.case.metric:<16}{o.case.published_s / unit:>11.4g}"
              f"{o.predicted / unit:>11.4g}{o.error:>+9.1%}  {r.get('max_batch') or 0:>9}"
              f"{r.get('kv_peak_utilization') or 0:>8.0%}{r.get('preemptions') or 0:>8}")
    print_skipped(outcomes, "the simulation refused it")
    for metric, group in serving_by_metric(outcomes).items():
        print(f"  {metric:<20} median |error| {_pct(median_abs_error(group), signed=False):>7} over "
              f"{count(sum(o.error is not None for o in group), 'row')}; mean error {_pct(mean_error(group))}")
    skipped = sum(o.result is None for o in outcomes)
    print(f"median |error| {_pct(median_abs_error(outcomes), signed=False)} over {len(outcomes) - skipped} rows "
          f"(every metric); mean error {_pct(mean_error(outcomes))}; {skipped} skipped\n")


def serving_by_metric(outcomes: list[ServingOutcome]) -> dict[str, list[ServingOutcome]]:
    """The outcomes grouped by metric, in SERVING_METRICS order."""
    groups: dict[str, list[ServingOutcome]] = {}
    for metric in SERVING_METRICS:
        group = [o for o in outcomes if o.case.metric == metric]
        if group:
            groups[metric] = group
    return groups


# --------------------------------------------------------------------------- the capacity table (rate under an SLO)
#
# A capacity row is one published *capacity*: the highest request rate (QPS) one replica of a deployment sustains
# under a stated latency SLO (Sarathi-Serve's Figures 10-11, DistServe's per-GPU goodput). It is priced by the
# serving planner's own rate search (llmsim.planner.serve.rate_search: halve from `rate_start` until a run meets
# the SLO, then bisect to `rate_tolerance`), on one replica of tp x pp devices of the row's hardware, the requests
# arriving as a Poisson process for `duration_s` simulated seconds, `requests` requests, or both, whichever limit
# comes first (the source's trial), their
# lengths lognormal from the dataset's published median and P90, or through the dataset's own quantiles where a
# `lengths_quantiles` file gives them, and capped where the source caps them (`capacity_lengths`). The error is
# predicted capacity / published capacity - 1.

CAPACITY = ("row_id", "run", "engine", "preset", *MODEL_COLUMNS, "dtype", "hardware", "n_devices", "tp", "pp",
            "intra_node", "inter_node", "context", "dataset", "input_median", "input_p90", "output_median",
            "output_p90", "duration_s", "scheduler", "max_num_seqs", "max_batched_tokens", "chunk_tokens",
            "kv_block_tokens", "memory_utilization", "step_overhead_s", "step_overhead_per_seq_s", "slo_itl_s", "slo_itl_percentile", "slo_queue_s",
            "slo_queue_percentile", "slo_ttft_s", "slo_tpot_s", "slo_percentile", "rate_start", "rate_tolerance",
            "metric", "published", "read_error", "skip_reason", "assumptions", "source")
# Optional columns (blank or absent: the row is priced as before they existed):
# `requests`             requests per probe of the search, the source's trial size (serving.requests), in place of
#                        duration_s or beside it (a row gives one or both): alone, a probe's span is requests /
#                        rate, as the source's run at that rate was; with duration_s, the source's time limit,
#                        arrivals stop at whichever comes first (sarathi-serve's trial: 2,048 requests, 1,800 s);
# `lengths_quantiles`    a file of the dataset's own length quantiles, relative to the table's folder (columns
#                        LENGTH_QUANTILE_COLUMNS: p from 0 to 1, prompt and output tokens at p): prompt and output are
#                        drawn through them, each on its own (serving.lengths kind quantiles), in place of the
#                        lognormal through median and P90 (which stay in the row, and must agree with the file);
# `lengths_max_total`    the source's cap on prompt + output tokens of a request (its length generator's
#                        max_tokens): a drawn pair over it is drawn again (serving.lengths max_total).
CAPACITY_OPTIONAL = ("requests", "lengths_quantiles", "lengths_max_total")
LENGTH_QUANTILE_COLUMNS = ("p", "input_tokens", "output_tokens")
CAPACITY_INTS = {"context", "input_median", "input_p90", "output_median", "output_p90", "max_num_seqs",
                 "max_batched_tokens", "chunk_tokens", "kv_block_tokens", "requests", "lengths_max_total"}
CAPACITY_FLOATS = {"duration_s", "slo_itl_s", "slo_queue_s", "slo_ttft_s", "slo_tpot_s", "rate_start",
                   "read_error"}
CAPACITY_PERCENTILES = {"slo_itl_percentile", "slo_queue_percentile", "slo_percentile"}
# Every capacity row ran in the sarathi-serve artifact (microsoft/sarathi-serve@02d2567e: its vLLM, Orca and
# Sarathi-Serve schedulers in one engine, docs/serving.md), which captures no CUDA graph anywhere in sarathi/: every
# pass is launched eagerly from Python (serving.scheduler.eager all; costmodel.eager).
CAPACITY_EAGER = "all"
# the engine's host time per iteration (serving.step_overhead_s / step_overhead_per_seq_s; blank = the device's, 0)
CAPACITY_HOST = {"step_overhead_s", "step_overhead_per_seq_s"}
CAPACITY_REQUIRED = ("hardware", "n_devices", "tp", "pp", "context", "input_median", "input_p90", "output_median",
                     "output_p90", "scheduler", "max_num_seqs", "max_batched_tokens",
                     "kv_block_tokens", "memory_utilization", "rate_start", "rate_tolerance", "published")
CAPACITY_CONFIGURATION = tuple(c for c in CAPACITY_REQUIRED if c != "published")   # what the rate search needs
CAPACITY_METRICS = ("capacity_rps",)     # requests/s one replica sustains under the row's SLO
# The standard normal's 0.9 quantile: a lognormal's P90 = median x exp(sigma x Z90) (Phi^-1(0.9)).
Z90 = 1.2815515655446004
# The rate search may go down to rate_start / CAPACITY_MAX_REPLICAS before it gives up (the planner's floor is the
# goal rate / the most replicas max_devices allows: a capacity row asks about one replica, so the floor is only a
# stop for a row that misses its SLO at any rate).
CAPACITY_MAX_REPLICAS = 1024


def _capacity_value(column: str, text: str) -> object:
    if column in CAPACITY_INTS:
        value = int(text)
        if value < 1:
            raise ValueError("must be >= 1")
        return value
    if column in CAPACITY_FLOATS:
        number = float(text)
        if not 0 < number < math.inf:
            raise ValueError("must be a positive number")
        return number
    if column in CAPACITY_HOST:
        number = float(text)
        if not 0 <= number < math.inf:
            raise ValueError("must be a number >= 0 (seconds)")
        return number
    if column in CAPACITY_PERCENTILES:
        number = float(text)
        if not 0 < number <= 100:
            raise ValueError("allowed: 0 < percentile <= 100")
        return number
    if column == "rate_tolerance":
        number = float(text)
        if not 0 < number < 1:
            raise ValueError("allowed: 0 < rate_tolerance < 1 (relative)")
        return number
    if column == "lengths_quantiles":
        return text                        # a path, resolved against the table's folder by read_capacity_runs
    if column == "metric":
        if text not in CAPACITY_METRICS:
            raise ValueError(f"allowed: {', '.join(CAPACITY_METRICS)}")
        return text
    if column == "scheduler":
        from llmsim.serving.schedulers import BUILTIN
        if text not in BUILTIN:
            raise ValueError(f"allowed: {', '.join(BUILTIN)} (llmsim's policies; the engine is the engine column)")
        return text
    return _serving_value(column, text)


def read_capacity_runs(path: Path) -> list[dict[str, object]]:
    """The rows of a capacity dev table, typed; blank cells are None. Raises ScenarioError (file, row.column, what)."""
    raw_rows = _csv_rows(path, CAPACITY, "capacity table")
    rows = []
    for n, raw in enumerate(raw_rows, start=2):           # line 1 is the header
        where = raw.get("row_id") or f"line {n}"
        row = _typed_row(path, where, raw, CAPACITY + CAPACITY_OPTIONAL, _capacity_value,
                         ("source", "metric", "engine"), CAPACITY_REQUIRED)
        if row["lengths_quantiles"] is not None:
            row["lengths_quantiles"] = path.parent / str(row["lengths_quantiles"])
            try:
                points = length_quantiles(row["lengths_quantiles"])
            except ScenarioError as exc:
                raise ScenarioError(str(path), f"{where}.lengths_quantiles", f"{exc}") from None
            check_quantiles_agree(path, where, row, points)
        if not row["skip_reason"]:
            check_capacity_configuration(path, where, row)
        rows.append(row)
    return rows


def check_quantiles_agree(path: Path, where: str, row: dict[str, object], points: dict[str, list[list[float]]]) -> None:
    """The row's published median and P90 are the quantile file's at p = 0.5 and 0.9 (within half a percent or one
    token: the file is the dataset the row names). Raises ScenarioError (file, row.column, what)."""
    from llmsim.serving.requests import quantile_tokens
    from llmsim.serving.spec import QuantileLength
    for length in ("input", "output"):
        form = QuantileLength(kind="quantiles", points=points[length])
        for column, p in ((f"{length}_median", 0.5), (f"{length}_p90", 0.9)):
            given, file_value = row[column], quantile_tokens(form, p)
            if given is not None and abs(given - file_value) > max(1.0, 0.005 * file_value):  # type: ignore[operator]
                raise ScenarioError(str(path), f"{where}.{column}",
                                    f"{given} but the lengths_quantiles file has {file_value:g} at p={p:g} "
                                    f"(allowed: the file's own value)")


def check_capacity_configuration(path: Path, where: str, row: dict[str, object]) -> None:
    """A row's configuration can be priced: every CAPACITY_CONFIGURATION column filled, n_devices = tp x pp, P90s
    above the medians, a valid SLO. Raises ScenarioError (file, row.column, what). Checked for a priced row, and for
    a skipped one a ratio uses (its published capacity may be missing; its configuration may not)."""
    blank = [c for c in CAPACITY_CONFIGURATION if row[c] is None]
    if blank:
        raise ScenarioError(str(path), f"{where}.{blank[0]}", "required to price the row's configuration")
    if row["duration_s"] is None and row.get("requests") is None:
        raise ScenarioError(str(path), f"{where}.duration_s",
                            "give duration_s (simulated seconds of arrivals per probe), requests (requests per "
                            "probe) or both (arrivals stop at whichever comes first)")
    if row["tp"] * row["pp"] != row["n_devices"]:  # type: ignore[operator]
        raise ScenarioError(str(path), f"{where}.n_devices",
                            f"{row['n_devices']} != tp x pp = {row['tp'] * row['pp']} (one replica)")  # type: ignore[operator]
    for length in ("input", "output"):
        if row[f"{length}_p90"] <= row[f"{length}_median"]:  # type: ignore[operator]
            raise ScenarioError(str(path), f"{where}.{length}_p90",
                                f"{row[f'{length}_p90']} <= {length}_median; allowed: a P90 above the median")
    try:
        capacity_slo(row)
    except ValidationError as exc:
        raise ScenarioError(str(path), f"{where}.slo_itl_s",
                            exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")) from None


def capacity_lengths(r: dict[str, object]) -> dict[str, object]:
    """The `serving.lengths` of a row. Without a `lengths_quantiles` file: lognormal prompt and output lengths with
    the dataset's published median and P90, sigma = ln(P90 / median) / Z90 (median and P90, not mean and std,
    because they are what the sources give for every dataset and they pin the body and the tail that sets the
    load; the tail beyond P90 is the lognormal's, not the dataset's). With one: each length through the dataset's
    own quantiles (serving.lengths kind quantiles), prompt and output drawn independently. With
    `lengths_max_total`: a pair longer than the source's cap is drawn again, as a dataset filtered to its engine's
    max_seq_len has none above it (Sarathi-Serve's trace generator clips every request to it)."""
    quantiles = r.get("lengths_quantiles")
    if quantiles is not None:
        points = length_quantiles(Path(str(quantiles)))
        lengths: dict[str, object] = {length: {"kind": "quantiles", "points": points[length]}
                                      for length in ("input", "output")}
    else:
        lengths = {length: {"kind": "lognormal", "median": r[f"{length}_median"],
                            "sigma": math.log(r[f"{length}_p90"] / r[f"{length}_median"])  # type: ignore[operator]
                            / Z90} for length in ("input", "output")}
    if r.get("lengths_max_total") is not None:
        lengths["max_total"] = r["lengths_max_total"]
    return lengths


@functools.lru_cache(maxsize=8)
def length_quantiles(path: Path) -> dict[str, list[list[float]]]:
    """The quantile points ([[p, tokens], ...], p from 0 to 1) of a dataset's length file: one line per p with the
    prompt and output tokens at that quantile (LENGTH_QUANTILE_COLUMNS), e.g. computed from a trace file the source
    names (validation/README.md says how each file was made). Raises ScenarioError (the file, what is wrong)."""
    from llmsim.serving.spec import QuantileLength
    raw = _csv_rows(path, LENGTH_QUANTILE_COLUMNS, "length quantiles") if path.is_file() else None
    if raw is None:
        raise ScenarioError(str(path), None, "no such length-quantile file")
    points: dict[str, list[list[float]]] = {"input": [], "output": []}
    try:
        for line in raw:
            p = float(line["p"])
            points["input"].append([p, float(line["input_tokens"])])
            points["output"].append([p, float(line["output_tokens"])])
        for length in ("input", "output"):
            QuantileLength(kind="quantiles", points=points[length])
    except (ValueError, TypeError) as exc:
        message = exc.errors(include_url=False)[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ScenarioError(str(path), None, f"not a length-quantile file ({message})") from None
    return points


def capacity_slo(r: dict[str, object]):
    """The row's SLO as `serving.slo` keys (llmsim.serving.spec.Slo): the per-run bounds (pooled ITL percentile,
    queueing-delay percentile) and per-request ones, whichever the row gives."""
    from llmsim.serving.spec import Slo
    keys = {"slo_itl_s": "itl_s", "slo_itl_percentile": "itl_percentile", "slo_queue_s": "queue_s",
            "slo_queue_percentile": "queue_percentile", "slo_ttft_s": "ttft_s", "slo_tpot_s": "tpot_s",
            "slo_percentile": "percentile"}
    return Slo(**{key: r[column] for column, key in keys.items() if r[column] is not None})


def capacity_task(r: dict[str, object]):
    """The serving planner's task (llmsim.planner.serve.ServingTask) of one row: one replica of tp x pp devices on
    one node of the row's hardware, requests arriving (Poisson) for duration_s or `requests` of them (both: until
    whichever limit comes first), the search starting at rate_start."""
    from llmsim.modeled_serving import serving_profile
    from llmsim.planner.serve import ServingTask
    from llmsim.serving.spec import ServingSpec

    span = {key: r[key] for key in ("requests", "duration_s") if r.get(key) is not None}
    spec = ServingSpec.model_validate({
        **span, "arrival": {"kind": "poisson", "rate": r["rate_start"]},
        "lengths": capacity_lengths(r),
        "scheduler": {key: r[column] for key, column in (("kind", "scheduler"), ("max_num_seqs", "max_num_seqs"),
                                                         ("max_batched_tokens", "max_batched_tokens"),
                                                         ("chunk_tokens", "chunk_tokens")) if r[column] is not None}
                      | {"eager": CAPACITY_EAGER},
        "kv_block_tokens": r["kv_block_tokens"], "memory_utilization": r["memory_utilization"],
        **{key: r[key] for key in sorted(CAPACITY_HOST) if r[key] is not None},
        "slo": capacity_slo(r).model_dump(), "seed": SERVING_SEED})
    workload = Workload(model=model_spec(r, r["context"]), mode="prefill", batch=1, dtype=r["dtype"] or "bfloat16")
    sharing = SharingChoice(tie_embeddings=workload.model.tie_embeddings)
    reference, profile = serving_profile(workload, sharing)
    node = _catalog().cluster(r["hardware"], nodes=1, devices_per_node=r["n_devices"], intra_node=r["intra_node"],
                              inter_node=r["inter_node"])
    size = r["tp"] * r["pp"]  # type: ignore[operator]
    return ServingTask(hardware=str(r["hardware"]), tp=r["tp"], pp=r["pp"], node=node, usd_per_device_hour=0.0,
                       reference=reference, profile=profile, sharing=sharing, context_tokens=r["context"],
                       spec=spec, seed=SERVING_SEED, goal_rate=float(r["rate_start"]),  # type: ignore[arg-type]
                       max_devices=size * CAPACITY_MAX_REPLICAS, max_power_w=None,
                       rate_tolerance=float(r["rate_tolerance"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CapacityCase:
    row_id: str
    label: str
    engine: str
    published: float            # requests/s
    row: dict[str, object] | None
    skip_reason: str | None = None
    file: str = ""


@dataclass(frozen=True)
class CapacityOutcome:
    case: CapacityCase
    result: Any = None           # llmsim.planner.serve.CandidateResult of the rate search
    failure: str | None = None

    @property
    def predicted(self) -> float | None:
        return None if self.result is None else float(self.result.sustained_rate)

    @property
    def error(self) -> float | None:
        """predicted / published capacity - 1 (+ = the model sustains more than the published run)."""
        return None if self.predicted is None else self.predicted / self.case.published - 1


def capacity_cases(path: Path) -> list[CapacityCase]:
    return [CapacityCase(str(r["row_id"]), str(r["run"] or ""), str(r["engine"]),
                         float(r["published"]) if r["published"] is not None else math.nan,  # type: ignore[arg-type]
                         None if r["skip_reason"] else r, r["skip_reason"], str(path))  # type: ignore[arg-type]
            for r in read_capacity_runs(path)]


# The rate search of each configuration, run once per process: the capacity table and the capacity-ratios table
# share it (a ratio row prices capacity rows; run together, each configuration is searched once). Keyed by the
# row's pricing columns (its published value, skip_reason and prose do not change the search).
_RATE_SEARCHES: dict[tuple, tuple[Any, str | None]] = {}


def capacity_search(row: dict[str, object], file: str, row_id: str) -> tuple[Any, str | None]:
    """(the llmsim.planner.serve.rate_search result, None), or (None, why it has no capacity) for one capacity row's
    configuration, memoised in _RATE_SEARCHES. A row that sustains its rate_start has no capacity to report (the
    search only halves down from there). Raises ScenarioError (file, row.column) for a configuration the serving
    model rejects."""
    from llmsim.planner.serve import rate_search
    key = tuple((c, row.get(c)) for c in CAPACITY + CAPACITY_OPTIONAL
                if c not in ("published", "read_error", "skip_reason", "assumptions", "source", "run", "row_id"))
    if key in _RATE_SEARCHES:
        return _RATE_SEARCHES[key]
    try:
        task = capacity_task(row)
    except ScenarioError as exc:
        raise ScenarioError(file, row_id, f"{exc.key}: {exc.message}" if exc.key else exc.message) from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        column = ".".join(str(p) for p in err["loc"]) or "model"
        raise ScenarioError(file, f"{row_id}.{column}", err["msg"]) from None
    started = time.perf_counter()
    result, _ = rate_search(task)
    # a rate search simulates several rates (seconds to a minute each): say which one finished, on stderr
    print(f"  {row_id}: rate search of {row['engine']} done, {len(result.probes)} rates simulated in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if result.limits:
        answer: tuple[Any, str | None] = (None, result.reason)
    elif result.sustained_at_least:
        answer = (None, f"it sustains rate_start={task.goal_rate:g} requests/s itself: raise rate_start above the "
                        f"capacity")
    else:
        answer = (result, None)
    _RATE_SEARCHES[key] = answer
    return answer


def run_capacity_case(case: CapacityCase) -> CapacityOutcome:
    if case.row is None:
        return CapacityOutcome(case)
    result, failure = capacity_search(case.row, case.file, case.row_id)
    return CapacityOutcome(case, result=result, failure=failure)


def print_capacity_table(table: "Table", path: Path, outcomes: list[CapacityOutcome]) -> None:
    print_header(table, path, f"{'row':<10}{'run':<46}{'engine':<19}{'published':>10}{'predicted':>10}{'error':>9}  "
                              f"{'probes':>6}{'first miss':>11}{'itl p99 ms':>11}{'queue p50 s':>12}")
    for o in outcomes:
        if o.result is None:
            continue
        miss = o.result.first_miss   # the lowest rate that missed: its pooled ITL p99 and median queueing delay
        rate, itl, queue = ((miss.rate, miss.row.get("itl_p99_s"), miss.row.get("queue_p50_s")) if miss
                            else (math.nan, None, None))
        print(f"{o.case.row_id[:9]:<10}{o.case.label[:45]:<46}{o.case.engine[:18]:<19}{o.case.published:>10.3g}"
              f"{o.predicted:>10.3g}{o.error:>+9.1%}  {len(o.result.probes):>6}{rate:>11.3g}"
              f"{(itl or math.nan) * 1e3:>11.1f}{queue if queue is not None else math.nan:>12.3g}")
    print_skipped(outcomes, "the simulation refused it")
    skipped = sum(o.result is None for o in outcomes)
    print(f"median |error| {_pct(median_abs_error(outcomes), signed=False)} over {len(outcomes) - skipped} rows; "
          f"mean error {_pct(mean_error(outcomes))}; {skipped} skipped\n")


# --------------------------------------------------------------------------- capacity ratios (stated in a paper's text)
#
# A paper's text often states a *ratio* of capacities where the capacities themselves are only bars in a figure
# ("up to 2.6x higher serving capacity ... as compared to vLLM"). A ratio row names the capacity rows of its
# numerator and denominator (paired in order) in a capacity table; each capacity row is priced by its rate search
# (capacity_search, shared with the capacity table: one search per configuration), and the predicted ratio is
# predicted(numerator) / predicted(denominator) for `one` pair, or the largest of the pairs' ratios for `max`
# (a statement "up to X": the most over the configurations the paper reports). A capacity row a ratio uses needs
# its configuration, not its published capacity (check_capacity_configuration). Error = predicted ratio /
# published ratio - 1 (+ = the model puts the numerator further ahead than the paper).

CAPACITY_RATIOS = ("row_id", "statement", "capacity_file", "numerator", "denominator", "reduction", "published",
                   "skip_reason", "assumptions", "source")
RATIO_REDUCTIONS = ("one", "max")    # one: a single pair; max: "up to", the largest ratio over the pairs


def read_capacity_ratios(path: Path) -> list[dict[str, object]]:
    """The rows of a capacity-ratio table, typed: numerator and denominator as tuples of capacity row ids, published
    a float, capacity_file a Path (relative to `path`'s folder), `capacity_rows` the capacity table's rows by id.
    Raises ScenarioError (file, row.column, what): a missing column, an unknown reduction, a count mismatch, a row id
    the capacity table does not have, a used capacity row whose configuration is incomplete."""
    raw_rows = _csv_rows(path, CAPACITY_RATIOS, "capacity-ratio table")
    tables: dict[Path, dict[str, dict[str, object]]] = {}
    rows = []
    for n, raw in enumerate(raw_rows, start=2):           # line 1 is the header
        row: dict[str, object] = {c: (raw.get(c) or "").strip() or None for c in CAPACITY_RATIOS}
        where = str(row["row_id"] or f"line {n}")
        for column in ("row_id", "statement", "source", "capacity_file", "numerator", "denominator", "reduction"):
            if not row[column]:
                raise ScenarioError(str(path), f"{where}.{column}", "every ratio row names its row_id, statement, "
                                    "source, capacity_file, numerator, denominator and reduction")
        if row["reduction"] not in RATIO_REDUCTIONS:
            raise ScenarioError(str(path), f"{where}.reduction",
                                f"{row['reduction']!r}; allowed: {', '.join(RATIO_REDUCTIONS)}")
        if row["published"] is None:
            if not row["skip_reason"]:
                raise ScenarioError(str(path), f"{where}.published", "required for a priced row")
        else:
            try:
                value = float(row["published"])  # type: ignore[arg-type]
            except ValueError:
                value = math.nan
            if not 0 < value < math.inf:
                raise ScenarioError(str(path), f"{where}.published",
                                    f"{row['published']!r}: must be a positive number (a ratio, e.g. 2.6)")
            row["published"] = value
        num, den = str(row["numerator"]).split(), str(row["denominator"]).split()
        if len(num) != len(den):
            raise ScenarioError(str(path), f"{where}.denominator",
                                f"{len(den)} row ids for {len(num)} in numerator; allowed: as many (paired in order)")
        if row["reduction"] == "one" and len(num) != 1:
            raise ScenarioError(str(path), f"{where}.numerator",
                                f"{len(num)} row ids with reduction one; allowed: one pair (or reduction max)")
        row["numerator"], row["denominator"] = tuple(num), tuple(den)
        capacity_path = path.parent / str(row["capacity_file"])
        if capacity_path not in tables:
            if not capacity_path.exists():
                raise ScenarioError(str(path), f"{where}.capacity_file", f"{capacity_path}: not found")
            tables[capacity_path] = {str(r["row_id"]): r for r in read_capacity_runs(capacity_path)}
        capacity = tables[capacity_path]
        for column, ids in (("numerator", num), ("denominator", den)):
            for row_id in ids:
                if row_id not in capacity:
                    raise ScenarioError(str(path), f"{where}.{column}", f"{row_id!r} is not a row of {capacity_path}")
        if not row["skip_reason"]:
            for row_id in dict.fromkeys(num + den):
                check_capacity_configuration(capacity_path, row_id, capacity[row_id])
        row["capacity_file"] = capacity_path
        row["capacity_rows"] = capacity
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RatioCase:
    row_id: str
    label: str
    reduction: str
    published: float
    pairs: tuple[tuple[str, str], ...]          # (numerator, denominator) capacity row ids
    capacity_rows: dict[str, dict[str, object]] | None   # None: skipped
    skip_reason: str | None = None
    file: str = ""                               # the capacity table


@dataclass(frozen=True)
class RatioResult:
    ratio: float                                 # the reduced predicted ratio
    pair: tuple[str, str]                        # the pair it comes from (the largest one for max)
    capacities: dict[str, float]                 # predicted capacity (requests/s) of every row used


@dataclass(frozen=True)
class RatioOutcome:
    case: RatioCase
    result: RatioResult | None = None
    failure: str | None = None

    @property
    def predicted(self) -> float | None:
        return None if self.result is None else self.result.ratio

    @property
    def error(self) -> float | None:
        """predicted / published ratio - 1."""
        return None if self.result is None else self.result.ratio / self.case.published - 1


def capacity_ratio_cases(path: Path) -> list[RatioCase]:
    return [RatioCase(str(r["row_id"]), str(r["statement"]), str(r["reduction"]),
                      float(r["published"]) if r["published"] is not None else math.nan,  # type: ignore[arg-type]
                      tuple(zip(r["numerator"], r["denominator"])),  # type: ignore[call-overload]
                      None if r["skip_reason"] else r["capacity_rows"],  # type: ignore[arg-type]
                      r["skip_reason"], str(r["capacity_file"]))  # type: ignore[arg-type]
            for r in read_capacity_ratios(path)]


def run_ratio_case(case: RatioCase) -> RatioOutcome:
    """The ratio of predicted capacities, each row's rate search run once (capacity_search). A capacity row with no
    capacity (its search refused, or it sustains its rate_start) leaves the ratio unpriced, saying which."""
    if case.capacity_rows is None:
        return RatioOutcome(case)
    capacities: dict[str, float] = {}
    for row_id in dict.fromkeys(i for pair in case.pairs for i in pair):
        result, failure = capacity_search(case.capacity_rows[row_id], case.file, row_id)
        if result is None:
            return RatioOutcome(case, failure=f"{row_id}: {failure}")
        capacities[row_id] = float(result.sustained_rate)
    ratios = {pair: capacities[pair[0]] / capacities[pair[1]] for pair in case.pairs}
    pair = max(ratios, key=ratios.__getitem__)   # one pair, or the largest ("up to")
    return RatioOutcome(case, result=RatioResult(ratios[pair], pair, capacities))


def print_ratio_table(table: "Table", path: Path, outcomes: list[RatioOutcome]) -> None:
    print_header(table, path, f"{'row':<6}{'statement':<72}{'published':>10}{'predicted':>10}{'error':>9}  "
                              f"pairs: predicted capacities (requests/s), * the one reported")
    for o in outcomes:
        if o.result is None:
            continue
        r = o.result
        pairs = "; ".join(f"{'*' if (n, d) == r.pair and len(o.case.pairs) > 1 else ''}{n}/{d} "
                          f"{r.capacities[n]:.3g}/{r.capacities[d]:.3g} = {r.capacities[n] / r.capacities[d]:.2f}"
                          for n, d in o.case.pairs)
        print(f"{o.case.row_id[:5]:<6}{o.case.label[:71]:<72}{o.case.published:>10.3g}{r.ratio:>10.3g}"
              f"{o.error:>+9.1%}  {pairs}")
    print_skipped(outcomes, "a capacity row has no capacity")
    skipped = sum(o.result is None for o in outcomes)
    print(f"median |error| {_pct(median_abs_error(outcomes), signed=False)} over {len(outcomes) - skipped} rows; "
          f"mean error {_pct(mean_error(outcomes))}; {skipped} skipped\n")


@dataclass(frozen=True)
class Table:
    name: str
    kind: Kind
    default: Path
    cases: Callable[[Path], list[Case]]


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("narayanan", "training", SHARED / "narayanan2021_table1.csv", narayanan_cases),
    Table("torchtitan", "training", VALIDATION / "torchtitan_llama3_h100.csv", lambda p: run_cases(p, "training")),
    Table("maxtext", "training", VALIDATION / "maxtext_tpu.csv", lambda p: run_cases(p, "training")),
    Table("fp8-for-later", "training", VALIDATION / "fp8_for_later.csv", lambda p: run_cases(p, "training")),
    Table("fastertransformer", "inference", SHARED / "fastertransformer_gpt_dev.csv", fastertransformer_cases),
    Table("vllm", "inference", VALIDATION / "vllm_latency.csv", lambda p: run_cases(p, "inference")),
    Table("mlperf", "training", VALIDATION / "mlperf_training.csv", lambda p: run_cases(p, "training")),
    Table("moe-train", "training", VALIDATION / "moe_training.csv", lambda p: run_cases(p, "training")),
    Table("moe-serve", "inference", VALIDATION / "moe_serving.csv", lambda p: run_cases(p, "inference")),
    Table("serving", "serving", VALIDATION / "serving_online.csv", serving_cases),
    Table("trtllm-blog", "serving", VALIDATION / "serving_trtllm_blog.csv", serving_cases),
    Table("deepseek-serve", "serving", VALIDATION / "serving_deepseek.csv", serving_cases),
    Table("inferencex", "serving", VALIDATION / "serving_inferencex.csv", serving_cases),
    Table("ep-pairs", "serving", VALIDATION / "serving_ep_pairs.csv", serving_cases),
    Table("capacity", "serving", VALIDATION / "serving_capacity.csv", capacity_cases),
    Table("capacity-ratios", "serving", VALIDATION / "serving_capacity_ratios.csv", capacity_ratio_cases),
)}


# --------------------------------------------------------------------------- printing

def _pct(x: float | None, signed: bool = True) -> str:
    return "—" if x is None else (f"{x:+.1%}" if signed else f"{x:.1%}")


def print_table(table: Table, path: Path, outcomes: list[Outcome]) -> None:
    print_header(table, path, f"{'row':<20}{'run':<44}{'published s':>13}{'predicted s':>13}{'error':>9}  "
                              f"{'compute':>7}{'comm':>6}{'bubble':>7}{'other':>6}{'mem GB':>8} fits")
    for o in outcomes:
        if o.result is None:
            continue
        r = o.result
        total = r.step_time_s
        print(f"{o.case.row_id[:19]:<20}{o.case.label[:43]:<44}{o.case.published_s:>13.4g}{r.step_time_s:>13.4g}"
              f"{o.error:>+9.1%}  {r.compute_time_s / total:>7.0%}{r.comm_time_s / total:>6.0%}"
              f"{r.bubble_time_s / total:>7.0%}{r.other_time_s / total:>6.0%}{r.memory.total / 1e9:>8.1f} "
              f"{'yes' if r.fits else 'no'}")
    skipped = [o for o in outcomes if o.result is None]
    print_skipped(outcomes, "the cost model refused it")
    priced = len(outcomes) - len(skipped)
    print(f"median |error| {_pct(median_abs_error(outcomes), signed=False)} over {priced} rows; "
          f"mean error {_pct(mean_error(outcomes))}; {len(skipped)} skipped\n")


def print_summary(results: list[tuple[Table, list]]) -> None:
    print("== summary: median |error| per table (target <= 10% on every table)")
    for kind in ("training", "inference", "serving"):
        if not any(table.kind == kind for table, _ in results):
            continue
        print(f"{kind}:")
        for table, outcomes in results:
            if table.kind != kind:
                continue
            priced = sum(o.result is not None for o in outcomes)
            print(f"  {table.name:<20}{priced:>4} priced{len(outcomes) - priced:>4} skipped   median |error| "
                  f"{_pct(median_abs_error(outcomes), signed=False):>7}   mean error {_pct(mean_error(outcomes)):>7}")
            # one figure per metric: a throughput and a latency are not one population (a capacity is one metric)
            if kind == "serving" and table.name not in ("capacity", "capacity-ratios"):
                for metric, group in serving_by_metric(outcomes).items():
                    n = sum(o.result is not None for o in group)
                    print(f"    {metric:<18}{n:>4} priced{len(group) - n:>4} skipped   median |error| "
                          f"{_pct(median_abs_error(group), signed=False):>7}   mean error {_pct(mean_error(group)):>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="append", choices=list(TABLES), help="a table to run (default: all)")
    parser.add_argument("--path", type=Path, help="read the (single) --table from this CSV instead")
    args = parser.parse_args(argv)
    names = args.table or list(TABLES)
    if args.path is not None and len(names) != 1:
        print("--path needs exactly one --table", file=sys.stderr)
        return 2
    catalog = _catalog()
    results, missing = [], []
    for name in names:
        table = TABLES[name]
        path = args.path or table.default
        if not path.exists():
            # a table asked for by name (--table / --path) that is not there is bad input; the default run over
            # every table reports the others and says which could not be read (the shared tables live beside
            # the checkout, in ../shared/validation, not in a clone of the repository)
            print(f"{path}: not found (table {name}; pass --path, or run from a checkout beside ../shared)",
                  file=sys.stderr)
            missing.append(name)
            continue
        try:
            if table.name == "capacity":
                outcomes = [run_capacity_case(c) for c in table.cases(path)]
            elif table.name == "capacity-ratios":
                outcomes = [run_ratio_case(c) for c in table.cases(path)]
            elif table.kind == "serving":
                outcomes = [run_serving_case(c) for c in table.cases(path)]
            else:
                outcomes = [run_case(c, catalog) for c in table.cases(path)]
        except LLMSimError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        printer = {"capacity": print_capacity_table, "capacity-ratios": print_ratio_table}.get(
            table.name, print_serving_table if table.kind == "serving" else print_table)
        printer(table, path, outcomes)
        results.append((table, outcomes))
    if results:
        print_summary(results)
    if missing and not args.table:
        print(f"not run (file not found, see above): {', '.join(missing)}")
    return 2 if missing and (args.table or not results) else 0


if __name__ == "__main__":
    sys.exit(main())
