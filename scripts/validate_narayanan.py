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

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import ClusterSpec, Options, Plan, estimate
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload

DEFAULT_TABLE = Path("../shared/validation/narayanan2021_table1.csv")
# The runs: DGX A100 80GB nodes, 8 GPUs with NVLink/NVSwitch, 8 x 200 Gb/s HDR InfiniBand (README).
HARDWARE, INTRA, INTER, DEVICES_PER_NODE = "a100-80gb", "nvlink3", "ib-hdr200x8", 8
PROFILED_LAYERS = 2      # trace 2 layers and scale (exact without cross-layer sharing: costmodel.scaling)


@dataclass(frozen=True)
class RunConfig:
    """What the table does not say about a run: micro-batch size, model chunks per stage, DDP flavour."""

    micro_batch: int
    virtual_stages: int       # 1 = plain 1F1B (no --num-layers-per-virtual-pipeline-stage)
    ddp: str                  # "torch": PyTorch DDP, bucketed all-reduce overlapped with the last backward
                              # "local": Megatron's DDP, one all-reduce after the backward pass


# The launch script the paper's authors published for Table 1 (NVIDIA/Megatron-LM, examples/sc21/
# run_table_1.sh: MBS, --num-layers-per-virtual-pipeline-stage, --DDP-impl per model size; CONFIG.sh:
# --fp16 --loss-scale 8192 --clip-grad 1.0, no --accumulate-allreduce-grads-in-fp32; SRUN.sh: container
# nvcr.io/nvidia/pytorch:20.12-py3). v = layers per stage / layers per virtual stage.
PUBLISHED_RUNS: dict[str, RunConfig] = {
    "GPT 1.7B": RunConfig(16, 1, "torch"),
    "GPT 3.6B": RunConfig(16, 1, "torch"),
    "GPT 7.5B": RunConfig(16, 1, "torch"),
    "GPT 18.4B": RunConfig(8, 1, "torch"),
    "GPT 39.1B": RunConfig(4, 1, "local"),
    "GPT 76.1B": RunConfig(2, 60 // 4 // 5, "local"),
    "GPT 145.6B": RunConfig(2, 80 // 8 // 5, "local"),
    "GPT 310.1B": RunConfig(1, 96 // 16 // 3, "local"),
    "GPT 529.6B": RunConfig(1, 105 // 35 // 1, "local"),
    "GPT 1008.0B": RunConfig(1, 1, "local"),
}
# A row of another table without a published launch configuration (or without micro_batch_size /
# virtual_stages / ddp_impl columns) gets these assumptions, said in the output.
ASSUMED_MICRO_BATCH = 1
ASSUMED_DDP = "local"

# Communication overlaps of Megatron-LM in 2021 (the container of the runs, 20.12; NVIDIA/Megatron-LM at
# a8d172b, April 2021): the gradient all-reduce overlapped the backward only through PyTorch DDP
# (--DDP-impl torch, per row above); pipeline messages were blocking (megatron/p2p_communication.py:
# batch_isend_irecv, wait, torch.cuda.synchronize); no distributed optimizer (so no parameter gather);
# tensor-parallel all-reduces on the compute stream. Megatron-Core's overlap options came in 2023
# (--overlap-p2p-communication May, --overlap-grad-reduce August, --tp-comm-overlap October,
# --overlap-param-gather November), so every one of them is off here, p2p overlap explicitly (llmsim's
# default follows today's Megatron-Core: on with the interleaved schedule).
OVERLAP_P2P_2021 = False
TP_COMM_OVERLAP_2021 = False

# Megatron-LM as of the paper (2021): attention as two GEMMs around a fused scale-mask-softmax kernel (no
# flash attention yet), gradients accumulated and all-reduced in the 16-bit type (fp32 accumulation needs
# --accumulate-allreduce-grads-in-fp32, which the runs did not set), scatter/gather of pipeline
# activations over tensor parallel (Sec. 4.1; on by default), no sequence parallelism (2022).
# Dropout 0.1 on the attention probabilities and on both residual branches: Megatron-LM's defaults of the time
# (`--attention-dropout 0.1 --hidden-dropout 0.1`), which the launch script leaves as they are. The presets keep 0.0.
DROPOUT = 0.1
MEGATRON_2021 = Options(attention="fused-softmax", main_grads_fp32=False, p2p_scatter_gather=True)


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
    run: RunConfig | None = None  # the launch configuration, when published

    @property
    def published_s(self) -> float:
        """Iteration time from the paper's Eq. 3 FLOPs and the published per-GPU TFLOP/s."""
        b, s, l, h, v = self.batch, self.seq, self.layers, self.hidden, self.vocab
        flops = 96 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
        return flops / (self.tflops * 1e12 * self.n)


def _run_config(r: dict[str, str]) -> RunConfig | None:
    """The row's launch configuration: its own columns if it has them, else the published script's."""
    if r.get("micro_batch_size"):
        return RunConfig(int(r["micro_batch_size"]), int(r.get("virtual_stages") or 1),
                         r.get("ddp_impl") or ASSUMED_DDP)
    return PUBLISHED_RUNS.get(r["model"])


def read_table(path: Path) -> list[Row]:
    with path.open(newline="") as f:
        return [Row(model=r["model"], layers=int(r["layers"]), hidden=int(r["hidden_size"]),
                    heads=int(r["attention_heads"]), seq=int(r["seq_length"]), vocab=int(r["vocab_size"]),
                    batch=int(r["global_batch_size_sequences"]), tp=int(r["tensor_parallel"]),
                    pp=int(r["pipeline_parallel"]), dp=int(r["data_parallel"]), n=int(r["num_accelerators"]),
                    tflops=float(r["tflops_per_accelerator"]), run=_run_config(r)) for r in csv.DictReader(f)]


def assumed_virtual_stages(layers: int, pp: int) -> int:
    """A chunk count for a pipelined row without a published one: the smallest v > 1 that divides the
    layers per stage (2 chunks where possible, as in the paper's interleaving experiments)."""
    if pp == 1:
        return 1
    per_stage = layers // pp
    return next((v for v in range(2, per_stage + 1) if per_stage % v == 0), 1)


def run_config(row: Row) -> RunConfig:
    """The row's published launch configuration, or the stated assumptions."""
    return row.run or RunConfig(ASSUMED_MICRO_BATCH, assumed_virtual_stages(row.layers, row.pp), ASSUMED_DDP)


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
    run = run_config(row)
    plan = Plan(dp=row.dp, tp=row.tp, pp=row.pp, micro_batch=run.micro_batch,
                microbatches=row.batch // (row.dp * run.micro_batch), virtual_stages=run.virtual_stages,
                schedule="interleaved" if run.virtual_stages > 1 else "1f1b", recompute="full",
                overlap_grad_reduce=run.ddp == "torch", overlap_p2p=OVERLAP_P2P_2021,
                tp_comm_overlap=TP_COMM_OVERLAP_2021)
    cluster = catalog.cluster(HARDWARE, row.n // DEVICES_PER_NODE, DEVICES_PER_NODE, INTRA, INTER)
    return workload, profile, sharing, plan, cluster


def predict(row: Row, catalog=None) -> tuple[float, object]:
    workload, profile, sharing, plan, cluster = build(row, catalog)
    result = estimate(workload, profile, sharing, plan, cluster, MEGATRON_2021)
    return result.step_time_s, result


def table_argument(description: str, default: Path, argv: list[str] | None) -> Path | None:
    """The dev table a validation script reads (`--table`, default `default`); None, said on stderr, if absent."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--table", type=Path, default=default, help=f"CSV (default {default})")
    table: Path = parser.parse_args(argv).table
    if not table.exists():
        print(f"{table}: not found (run from the repository root or pass --table)", file=sys.stderr)
        return None
    return table


def main(argv: list[str] | None = None) -> int:
    table = table_argument(__doc__.splitlines()[0], DEFAULT_TABLE, argv)
    if table is None:
        return 2
    catalog = load_catalog()
    errors = []
    header = (f"{'model':<11}{'tp':>3}{'pp':>4}{'dp':>4}{'mb':>4}{'v':>3}{'ddp':>6}{'published s':>13}{'predicted s':>13}"
              f"{'error':>8}  {'compute':>8}{'comm':>7}{'bubble':>7}{'other':>7}  mem GB")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for row in read_table(table):
        predicted, r = predict(row, catalog)
        err = predicted / row.published_s - 1
        errors.append(err)
        total = r.step_time_s
        run = run_config(row)
        print(f"{row.model:<11}{row.tp:>3}{row.pp:>4}{row.dp:>4}{run.micro_batch:>4}{run.virtual_stages:>3}"
              f"{run.ddp:>6}{'' if row.run else '*'}"
              f"{row.published_s:>13.2f}{predicted:>13.2f}{err:>+8.1%}  {r.compute_time_s / total:>8.0%}"
              f"{r.comm_time_s / total:>7.0%}{r.bubble_time_s / total:>7.0%}{r.other_time_s / total:>7.0%}"
              f"  {r.memory.total / 1e9:.1f}")
    median = statistics.median(abs(e) for e in errors)
    print(f"\nmedian |error| {median:.1%} over {len(errors)} rows; mean error {statistics.fmean(errors):+.1%} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
