#!/usr/bin/env python
"""Predicted vs published end-to-end latency of NVIDIA FasterTransformer's GPT inference table (dev data).

Usage (from the repository root):
    python scripts/validate_fastertransformer.py [--table ../shared/validation/fastertransformer_gpt_dev.csv]
        [--groups] [--worst N]

--groups prints the errors grouped by model, tensor parallelism, batch and input/output lengths (count, mean
error, median |error|); --worst N splits the N rows of most negative error (the model too fast) into the
prefill and one decode step, each into GEMMs, attention, elementwise (with the kernels' fixed cost), the
tensor-parallel collectives and the head with sampling, in microseconds.

Source: NVIDIA/FasterTransformer, docs/gpt_guide.md, Performance section (FasterTransformer v5.x, commit
df4a7534): GPT-350M, 1.3B, 6.7B and 20B on A100 80GB SXM in one DGX A100 node (NVSwitch), FP16, tensor
parallel 1-8. Each row is the end-to-end latency of one batch: the context phase (prefill) over
`input_len` tokens, then `output_len` generated tokens with a KV cache (top-p sampling), in ms.

A row maps to `mode: decode`, `seq_len = input_len`, `decode_tokens = output_len`, whose step_time_s is
the same whole generation (time to first token = the prefill, then output_len - 1 token steps). The
architecture is the table's GPT style: learned positions (2048), LayerNorm, GELU, ffn = 4 x hidden, full
multi-head attention, vocabulary 51200. Nothing here is fitted to the table: the script states the
published configuration and the roofline (llmsim.costmodel.estimate) predicts it; docs/validation.md
records the result.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import ClusterSpec, Options, Plan, StepBreakdown, estimate
from llmsim.costmodel.cluster import plan_on
from llmsim.costmodel.collectives import phases_time
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.scaling import with_layers
from llmsim.costmodel.work import forward_work, inference_plan, layer_phase_times
from llmsim.hardware import load_catalog
from llmsim.workload.profile import WorkloadProfile, profile_workload


DEFAULT_TABLE = Path("../shared/validation/fastertransformer_gpt_dev.csv")
# The runs: A100 80GB SXM in one DGX A100 node, 8 GPUs behind NVSwitch (NVLink 3); a row uses
# num_accelerators of them. The inter-node link only matters for a row that spans nodes (none here).
HARDWARE, INTRA, INTER, DEVICES_PER_NODE = "a100-80gb", "nvlink3", "ib-hdr200x8", 8
PROFILED_LAYERS = 2      # trace 2 layers and scale (exact without cross-layer sharing: costmodel.scaling)
MAX_POSITIONS = 2048     # GPT-style learned position table
FFN_MULTIPLIER = 4
DTYPES = {"FP16": "float16", "BF16": "bfloat16", "FP32": "float32"}

# Attention in FasterTransformer v5's GPT context phase: `fused-softmax`. The GPT performance table was
# added with v5.0 (NVIDIA/FasterTransformer a44c381, April 2022; the later edits of the guide leave its
# GPT rows alone). In that version GptContextAttentionLayer.cc runs the context attention as a cuBLAS
# stridedBatchedGemm for Q.K^T, the fused masked-softmax kernel `invokeMaskedSoftMax`
# (kernels/unfused_attention_kernels.cu), and a second stridedBatchedGemm for P.V: the s x s scores are
# written and read through memory, which is what `fused-softmax` prices (plan.Options). A fused
# multi-head attention kernel for the causal GPT context phase (TensorRT's FMHA v2,
# `run_causal_masked_fmha`) only arrived with v5.2 (b672f49, December 2022), and from February 2023
# (7921074) it runs only when FMHA_ENABLE=ON is set (BaseAttentionLayer.h getAttentionType: the BERT
# encoder gets the fused kernel by default, causal GPT does not). `flash` would describe that later,
# opt-in kernel, not the one the table measured. The generation phase uses FT's fused masked multi-head
# attention over the KV cache, which the cost model prices by the cache it reads whatever this option says.
# Each generated token is chosen by FT's top-p sampling (the guide's GPT rows: top_p = 0.9, top_k = 0): fp32
# logits, all-gathered over tensor parallelism, and a radix sort of the whole vocabulary per sequence on every
# rank (costmodel.sampling, `sort-top-p`).
FT_V5 = Options(attention="fused-softmax", sampler="sort-top-p")


@dataclass(frozen=True)
class Row:
    row_id: str
    model: str
    layers: int
    hidden: int
    heads: int
    vocab: int
    dtype: str
    n: int
    tp: int
    pp: int
    batch: int
    input_len: int
    output_len: int
    latency_ms: float

    @property
    def published_s(self) -> float:
        return self.latency_ms / 1e3


def read_table(path: Path) -> list[Row]:
    with path.open(newline="") as f:
        return [Row(row_id=r["row_id"], model=r["model"].removesuffix(" (GPT-style)"), layers=int(r["layers"]),
                    hidden=int(r["hidden_size"]), heads=int(r["attention_heads"]), vocab=int(r["vocab_size"]),
                    dtype=DTYPES[r["precision"].upper()], n=int(r["num_accelerators"]),
                    tp=int(r["tensor_parallel"]), pp=int(r["pipeline_parallel"]), batch=int(r["batch_size"]),
                    input_len=int(r["input_len"]), output_len=int(r["output_len"]),
                    latency_ms=float(r["latency_ms"])) for r in csv.DictReader(f)]


def model_spec(row: Row, layers: int | None = None) -> ModelSpec:
    return ModelSpec(layers=layers or row.layers, hidden=row.hidden, heads=row.heads,
                     ffn_hidden=FFN_MULTIPLIER * row.hidden, vocab=row.vocab, seq_len=row.input_len,
                     max_positions=MAX_POSITIONS, activation="gelu", norm="layernorm", positions="learned",
                     bias=True, causal=True, tie_embeddings=True)


def cluster_of(row: Row, catalog) -> ClusterSpec:
    """The GPUs the row ran on: num_accelerators A100s, whole DGX nodes once it needs more than one."""
    nodes = -(-row.n // DEVICES_PER_NODE)
    return catalog.cluster(HARDWARE, nodes, devices_per_node=min(row.n, DEVICES_PER_NODE), intra_node=INTRA,
                           inter_node=INTER)


def build(row: Row, catalog=None) -> tuple[Workload, WorkloadProfile, SharingChoice, Plan, ClusterSpec]:
    """(workload, profile, sharing, plan, cluster) of one table row, as FasterTransformer ran it."""
    catalog = catalog or load_catalog()
    sharing = SharingChoice(tie_embeddings=True)  # GPT convention: the output head is the token embedding

    def workload(layers: int | None = None) -> Workload:
        return Workload(model=model_spec(row, layers), mode="decode", batch=row.batch,
                        decode_tokens=row.output_len, dtype=row.dtype)

    profile = with_layers(profile_workload(workload(PROFILED_LAYERS), sharing), row.layers)
    # One batch through tp x pp GPUs, no data parallelism; the whole batch is one micro-batch.
    plan = Plan(dp=1, tp=row.tp, pp=row.pp, micro_batch=row.batch, microbatches=1)
    return workload(), profile, sharing, plan, cluster_of(row, catalog)


def predict(row: Row, catalog=None) -> StepBreakdown:
    workload, profile, sharing, plan, cluster = build(row, catalog)
    return estimate(workload, profile, sharing, plan, cluster, FT_V5)


GROUPS: dict[str, Callable[[Row], object]] = {
    "model": lambda r: r.model, "tp": lambda r: r.tp, "batch": lambda r: r.batch,
    "input/output": lambda r: f"{r.input_len}/{r.output_len}"}


@dataclass(frozen=True)
class Group:
    key: object
    count: int
    mean_error: float
    median_abs_error: float


def group_errors(rows: list[Row], errors: list[float], key: Callable[[Row], object]) -> list[Group]:
    """The rows' signed errors (predicted / published - 1) grouped by `key`, in the order keys first appear
    sorted: count, mean error and median |error| of each group."""
    groups: dict[object, list[float]] = {}
    for row, err in zip(rows, errors):
        groups.setdefault(key(row), []).append(err)
    return [Group(k, len(v), statistics.fmean(v), statistics.median(abs(e) for e in v))
            for k, v in sorted(groups.items(), key=lambda kv: (isinstance(kv[0], str), kv[0]))]


PARTS = ("gemm", "attention", "elementwise", "tp_comm", "head")


def breakdown(row: Row, catalog=None) -> dict[str, dict[str, float]]:
    """Where the predicted time of `row` goes, in seconds on one GPU: for the prefill and one decode step,
    the layers' GEMMs, attention and elementwise ops (with the kernels' fixed cost) summed over the layers,
    the tensor-parallel collectives of the layers, and the embedding + LM head + sampling (+ its logits
    all-gather); `total` is the phase's priced time and `count` how many times it runs (1 prefill,
    output_len - 1 decode steps)."""
    catalog = catalog or load_catalog()
    workload, profile, _, plan, cluster = build(row, catalog)
    plan = inference_plan(plan_on(plan, cluster))
    rates = device_rates(cluster, workload.dtype)
    steps = workload.decode_tokens - 1
    out: dict[str, dict[str, float]] = {}
    for phase, count in (("prefill", 1), ("decode", steps)):
        if count <= 0:
            continue
        traced = count if phase == "decode" else 1
        layers = layer_phase_times(profile, workload, plan, FT_V5, rates, phase, traced)  # one layer
        work = forward_work(workload, profile, plan, cluster, FT_V5, phase, traced)
        st = work.stages[-1]
        tp_layer = sum(phases_time(c.phases(cluster.fabric), cluster.fabric) for c in st.tp_fwd)
        edges = sum(phases_time(c.phases(cluster.fabric), cluster.fabric) for c in st.tp_embed + st.logits_gather)
        n = st.layers
        parts = {"gemm": n * layers.matmul, "attention": n * layers.attention, "elementwise": n * layers.other,
                 "tp_comm": n * tp_layer, "head": st.embed_fwd_s + st.head_fwd_s + edges}
        out[phase] = {**parts, "total": sum(parts.values()), "count": float(count)}
    return out


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help=f"CSV (default {DEFAULT_TABLE})")
    parser.add_argument("--groups", action="store_true", help="errors grouped by model, tp, batch, lengths")
    parser.add_argument("--worst", type=int, default=0, metavar="N",
                        help="split the N most under-predicted rows into prefill / decode and their parts")
    return parser.parse_args(argv)


def _print_groups(rows: list[Row], errors: list[float]) -> None:
    for name, key in GROUPS.items():
        print(f"\nby {name}:  {'rows':>5}{'mean error':>12}{'median |error|':>16}")
        for g in group_errors(rows, errors, key):
            print(f"  {str(g.key):<12}{g.count:>5}{g.mean_error:>+12.1%}{g.median_abs_error:>16.1%}")


def _print_worst(rows: list[Row], errors: list[float], n: int, catalog) -> None:
    print(f"\nthe {n} most under-predicted rows, microseconds on one GPU (decode: one token step)")
    print(f"{'row':<7}{'phase':<9}{'x':>5}" + "".join(f"{p:>12}" for p in PARTS) + f"{'total':>12}")
    for row, err in sorted(zip(rows, errors), key=lambda re: re[1])[:n]:
        print(f"{row.row_id} {row.model} tp {row.tp} batch {row.batch} {row.input_len}/{row.output_len}: "
              f"{err:+.1%}")
        for phase, parts in breakdown(row, catalog).items():
            print(f"{'':<7}{phase:<9}{int(parts['count']):>5}"
                  + "".join(f"{parts[p] * 1e6:>12.1f}" for p in PARTS) + f"{parts['total'] * 1e6:>12.1f}")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    table = args.table
    if not table.exists():
        print(f"{table}: not found (run from the repository root or pass --table)", file=sys.stderr)
        return 2
    if args.worst < 0:
        print(f"--worst: {args.worst} is negative (allowed: a row count >= 0)", file=sys.stderr)
        return 2
    catalog = load_catalog()
    rows = read_table(table)
    errors = []
    header = (f"{'row':<7}{'model':<10}{'tp':>3}{'batch':>6}{'input':>6}{'output':>7}{'published ms':>14}"
              f"{'predicted ms':>14}{'error':>9}{'TTFT':>7}{'TPOT':>7}  fits")
    print(header)
    print("-" * len(header))
    for row in rows:
        r = predict(row, catalog)
        err = r.step_time_s / row.published_s - 1
        errors.append(err)
        ttft_share = (r.ttft_s or 0.0) / r.step_time_s        # the prefill
        tpot_share = 1 - ttft_share                            # the output_len - 1 token steps after it
        print(f"{row.row_id:<7}{row.model:<10}{row.tp:>3}{row.batch:>6}{row.input_len:>6}{row.output_len:>7}"
              f"{row.latency_ms:>14.2f}{r.step_time_s * 1e3:>14.2f}{err:>+9.1%}{ttft_share:>7.0%}"
              f"{tpot_share:>7.0%}  {'yes' if r.fits else 'no'}")
    median = statistics.median(abs(e) for e in errors)
    print(f"\nmedian |error| {median:.1%} over {len(errors)} rows; mean error {statistics.fmean(errors):+.1%}")
    if args.groups:
        _print_groups(rows, errors)
    if args.worst:
        _print_worst(rows, errors, args.worst, catalog)
    return 0


if __name__ == "__main__":
    sys.exit(main())
