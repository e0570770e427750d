#!/usr/bin/env python
"""Predicted vs published end-to-end latency of NVIDIA FasterTransformer's GPT inference table (dev data).

Usage (from the repository root):
    python scripts/validate_fastertransformer.py [--table ../shared/validation/fastertransformer_gpt_dev.csv]

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

import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import ClusterSpec, Options, Plan, StepBreakdown, estimate
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.workload.profile import WorkloadProfile, profile_workload

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_narayanan import table_argument  # noqa: E402  (the other dev table's script, beside this one)

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
FT_V5 = Options(attention="fused-softmax")


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


def main(argv: list[str] | None = None) -> int:
    table = table_argument(__doc__.splitlines()[0], DEFAULT_TABLE, argv)
    if table is None:
        return 2
    catalog = load_catalog()
    errors = []
    header = (f"{'row':<7}{'model':<10}{'tp':>3}{'batch':>6}{'input':>6}{'output':>7}{'published ms':>14}"
              f"{'predicted ms':>14}{'error':>9}{'TTFT':>7}{'TPOT':>7}  fits")
    print(header)
    print("-" * len(header))
    for row in read_table(table):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
