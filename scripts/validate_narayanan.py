#!/usr/bin/env python
"""Predicted vs published iteration time for Table 1 of Narayanan et al. 2021 (Megatron-LM, SC21).

Usage (from the repository root):
    python scripts/validate_narayanan.py [--table ../shared/validation/narayanan2021_table1.csv]

The published iteration time is F / (tflops_per_accelerator * num_accelerators) with the paper's
FLOP count F (Eq. 3, recomputed forward included), so no FLOP-counting convention enters the comparison.
Every modeling choice below describes what the paper ran, not a fit; docs/validation.md lists them.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmsim.config import ModelSpec, Workload
from llmsim.costmodel import ClusterSpec, Options, Plan, estimate
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload
from llmsim.workload.step import SharingChoice

DEFAULT_TABLE = Path("../shared/validation/narayanan2021_table1.csv")
# The runs: DGX A100 80GB nodes, 8 GPUs with NVLink/NVSwitch, 8 x 200 Gb/s HDR InfiniBand (README).
HARDWARE, INTRA, INTER, DEVICES_PER_NODE = "a100-80gb", "nvlink3", "ib-hdr200x8", 8
MICRO_BATCH = 1          # not given in the table; assumed
PROFILED_LAYERS = 2      # trace 2 layers and scale (exact without cross-layer sharing: costmodel.scaling)
# Megatron-LM as of the paper (2021): attention as two GEMMs around a fused scale-mask-softmax kernel (no
# flash attention yet), fp32 `main_grad` accumulation and all-reduce, gradient all-reduce after the
# backward pass (no overlap: `--overlap-grad-reduce` arrived with Megatron-core in 2023), scatter/gather
# of pipeline activations over tensor parallel (Sec. 4.1), no sequence parallelism (2022).
# Dropout 0.1 on the attention probabilities and on both residual branches: Megatron-LM's defaults of the time
# (`--attention-dropout 0.1 --hidden-dropout 0.1`), which the paper's GPT runs used. The presets keep 0.0.
DROPOUT = 0.1
MEGATRON_2021 = Options(attention="fused-softmax", main_grads_fp32=True, p2p_scatter_gather=True)


@dataclass(frozen=True)
class Row:
    model: str
    layers: int
    hidden: int
    heads: int
    seq: int
    vocab: int
    batch: int
    tp: int
    pp: int
    dp: int
    n: int
    tflops: float

    @property
    def published_s(self) -> float:
        """Iteration time from the paper's Eq. 3 FLOPs and the published per-GPU TFLOP/s."""
        b, s, l, h, v = self.batch, self.seq, self.layers, self.hidden, self.vocab
        flops = 96 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
        return flops / (self.tflops * 1e12 * self.n)


def read_table(path: Path) -> list[Row]:
    with path.open(newline="") as f:
        return [Row(model=r["model"], layers=int(r["layers"]), hidden=int(r["hidden_size"]),
                    heads=int(r["attention_heads"]), seq=int(r["seq_length"]), vocab=int(r["vocab_size"]),
                    batch=int(r["global_batch_size_sequences"]), tp=int(r["tensor_parallel"]),
                    pp=int(r["pipeline_parallel"]), dp=int(r["data_parallel"]), n=int(r["num_accelerators"]),
                    tflops=float(r["tflops_per_accelerator"])) for r in csv.DictReader(f)]


def virtual_stages(layers: int, pp: int) -> int:
    """Interleaved 1F1B needs a chunk count; the table does not give it: the smallest v > 1 that divides
    the layers per stage (2 chunks where possible, as in the paper's interleaving experiments)."""
    if pp == 1:
        return 1
    per_stage = layers // pp
    return next((v for v in range(2, per_stage + 1) if per_stage % v == 0), 1)


def build(row: Row, catalog=None) -> tuple[Workload, object, SharingChoice, Plan, ClusterSpec]:
    """(workload, profile, sharing, plan, cluster) of one table row, as the paper ran it: shared by every
    predictor of the table (the roofline here, the cluster simulation in benchmarks/bench_cluster.py)."""
    catalog = catalog or load_catalog()
    spec = dict(layers=row.layers, hidden=row.hidden, heads=row.heads, ffn_hidden=4 * row.hidden,
                vocab=row.vocab, seq_len=row.seq, max_positions=row.seq, activation="gelu", norm="layernorm",
                positions="learned", bias=True, causal=True, tie_embeddings=True, dropout=DROPOUT)
    # fp16 mixed precision as in the paper; the profile is the same module in either 16-bit type.
    short = Workload(model=ModelSpec(**{**spec, "layers": PROFILED_LAYERS}), mode="train", batch=row.batch,
                     dtype="float16")
    workload = Workload(model=ModelSpec(**spec), mode="train", batch=row.batch, dtype="float16")
    sharing = SharingChoice(tie_embeddings=True)
    profile = with_layers(profile_workload(short, sharing), row.layers)
    v = virtual_stages(row.layers, row.pp)
    plan = Plan(dp=row.dp, tp=row.tp, pp=row.pp, micro_batch=MICRO_BATCH,
                microbatches=row.batch // (row.dp * MICRO_BATCH), virtual_stages=v,
                schedule="interleaved" if row.pp > 1 else "1f1b", recompute="full", overlap_grad_reduce=False)
    cluster = ClusterSpec(device=catalog.device(HARDWARE), intra=catalog.link(INTRA), inter=catalog.link(INTER),
                          nodes=row.n // DEVICES_PER_NODE, devices_per_node=DEVICES_PER_NODE)
    return workload, profile, sharing, plan, cluster


def predict(row: Row, catalog=None) -> tuple[float, object]:
    workload, profile, sharing, plan, cluster = build(row, catalog)
    result = estimate(workload, profile, sharing, plan, cluster, MEGATRON_2021)
    return result.step_time_s, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help=f"CSV (default {DEFAULT_TABLE})")
    args = parser.parse_args(argv)
    if not args.table.exists():
        print(f"{args.table}: not found (run from the repository root or pass --table)", file=sys.stderr)
        return 2
    catalog = load_catalog()
    errors = []
    header = (f"{'model':<11}{'tp':>3}{'pp':>4}{'dp':>4}{'v':>3}{'published s':>13}{'predicted s':>13}"
              f"{'error':>8}  {'compute':>8}{'comm':>7}{'bubble':>7}{'other':>7}  mem GB")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for row in read_table(args.table):
        predicted, r = predict(row, catalog)
        err = predicted / row.published_s - 1
        errors.append(err)
        total = r.step_time_s
        print(f"{row.model:<11}{row.tp:>3}{row.pp:>4}{row.dp:>4}{virtual_stages(row.layers, row.pp):>3}"
              f"{row.published_s:>13.2f}{predicted:>13.2f}{err:>+8.1%}  {r.compute_time_s / total:>8.0%}"
              f"{r.comm_time_s / total:>7.0%}{r.bubble_time_s / total:>7.0%}{r.other_time_s / total:>7.0%}"
              f"  {r.memory.total / 1e9:.1f}")
    median = statistics.median(abs(e) for e in errors)
    print(f"\nmedian |error| {median:.1%} over {len(errors)} rows; mean error {statistics.fmean(errors):+.1%} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
