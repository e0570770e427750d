#!/usr/bin/env python
"""Single GEMMs timed by published microbenchmarks against the price llmsim's iteration gives the same GEMM.

Usage (from the repository root):
    python scripts/gemm_check.py                          # validation/gemm_microbench.csv
    python scripts/gemm_check.py --path FILE.csv

Each row of the CSV is one GEMM D (m x n) = A (m x k) @ B (k x n) timed alone on one device: m rows (tokens),
n outputs, depth k, and the published TFLOP/s (2 m n k FLOP per GEMM). It is priced with the functions the
iteration prices a layer's GEMMs with (costmodel.compute._phase_times): the device's rates for the dtype
(`compute.device_rates`; float8 runs at the float8 peak and FP8 MAMF, `Rates.gemm`), the shape efficiency
(`efficiency.gemm_efficiency` of the m x n output: tile waves, or the skinny GEMV / split-K rule under 128 rows)
and `Rates.matmul_time`, the roofline max(FLOPs / (sustained peak x matmul fraction x shape efficiency),
bytes / (bandwidth x memory fraction)). Bytes: A and B in the input dtype (1 byte for float8, 2 for bfloat16)
and D in bfloat16, the definition DeepGEMM's README uses for its GB/s column.

Two prices are printed: `priced` is what the iteration charges (at the clock the device holds under
continuous load, Efficiency.sustained); `burst` the same roofline at the boost clock (sustained = 1), the
conditions of a microbenchmark that runs one GEMM for milliseconds. Neither includes the per-kernel fixed time
(Efficiency.kernel_latency_s) that the iteration adds once per kernel of a pass. Error = price / published - 1
(positive: priced slower than measured). `c/m` is the ideal compute time over the ideal memory time (shape
efficiency 1, boost clock: 1 = at the roofline's ridge) and `pub/roof` the published time over that ideal
max(compute, memory): what the kernel loses to tiles, waves, imperfect overlap and fixed time. Nothing here is fitted; the table is docs/validation.md's section
"GEMM microbenchmarks against the per-GEMM price".
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmsim.costmodel.compute import Rates, device_rates  # noqa: E402
from llmsim.costmodel.efficiency import gemm_efficiency  # noqa: E402
from llmsim.errors import ScenarioError  # noqa: E402

DEFAULT_CSV = ROOT / "validation" / "gemm_microbench.csv"
COLUMNS = ("row_id", "hardware", "dtype", "m", "n", "k", "published_tflops", "kernel", "assumptions", "source")
INPUT_BYTES = {"float8": 1, "bfloat16": 2, "float16": 2}
OUTPUT_BYTES = 2  # D in bfloat16 (DeepGEMM's gemm_fp8_fp8_bf16_nt, vLLM's scaled_mm out_dtype, torch.mm bf16)


@dataclass(frozen=True)
class GemmRow:
    row_id: str
    hardware: str
    dtype: str
    m: int
    n: int
    k: int
    published_tflops: float
    kernel: str
    source: str

    @property
    def flops(self) -> float:
        """FLOPs of the GEMM: 2 m n k."""
        return 2.0 * self.m * self.n * self.k

    @property
    def nbytes(self) -> float:
        """Bytes the GEMM must move at least once: A (m x k) and B (k x n) in the input dtype, D (m x n) bf16."""
        elem = INPUT_BYTES[self.dtype]
        return float((self.m * self.k + self.k * self.n) * elem + self.m * self.n * OUTPUT_BYTES)

    @property
    def published_s(self) -> float:
        """Seconds of one GEMM from the published TFLOP/s."""
        return self.flops / (self.published_tflops * 1e12)


@dataclass(frozen=True)
class Priced:
    row: GemmRow
    wave: float          # efficiency.gemm_efficiency of the m x n output
    priced_s: float      # Rates.matmul_time, sustained clock (what the iteration charges)
    burst_s: float       # the same at the boost clock (Efficiency.sustained = 1)
    bound: str           # 'compute' or 'memory': which side of the roofline sets priced_s
    ideal_compute_s: float  # FLOPs at the boost clock and the matmul fraction, shape efficiency 1
    ideal_memory_s: float   # bytes at the streaming fraction of the bandwidth

    @property
    def ridge(self) -> float:
        """Where the GEMM sits against the roofline's ridge: ideal compute time / ideal memory time (1 = at it)."""
        return self.ideal_compute_s / self.ideal_memory_s

    @property
    def over_roofline(self) -> float:
        """Published time over the ideal roofline max(compute, memory) at shape efficiency 1: what the kernel
        loses to tiles, waves, imperfect overlap of loads and MMA and its fixed time, all together."""
        return self.row.published_s / max(self.ideal_compute_s, self.ideal_memory_s)

    @property
    def error(self) -> float:
        return self.priced_s / self.row.published_s - 1.0

    @property
    def burst_error(self) -> float:
        return self.burst_s / self.row.published_s - 1.0


def read_rows(path: Path) -> list[GemmRow]:
    """The CSV's rows; a missing column or a dtype llmsim cannot price here is a one-line ValueError."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected: {', '.join(COLUMNS)}")
        rows = []
        for rec in reader:
            if rec["dtype"] not in INPUT_BYTES:
                raise ValueError(f"{path}: row {rec['row_id']}: dtype {rec['dtype']!r}; allowed: "
                                 f"{', '.join(INPUT_BYTES)}")
            if not rec["source"].strip():
                raise ValueError(f"{path}: row {rec['row_id']}: empty source")
            try:
                shape = [int(rec[c]) for c in ("m", "n", "k")]
                tflops = float(rec["published_tflops"])
            except ValueError:
                raise ValueError(f"{path}: row {rec['row_id']}: m, n, k must be whole numbers and published_tflops "
                                 f"a number (got {rec['m']!r}, {rec['n']!r}, {rec['k']!r}, "
                                 f"{rec['published_tflops']!r})") from None
            if min(shape) < 1 or tflops <= 0:
                raise ValueError(f"{path}: row {rec['row_id']}: m, n, k must be >= 1 and published_tflops > 0 "
                                 f"(got {shape[0]}, {shape[1]}, {shape[2]}, {tflops:g})")
            rows.append(GemmRow(rec["row_id"], rec["hardware"], rec["dtype"], *shape, tflops, rec["kernel"],
                                rec["source"]))
    return rows


def gemm_rates(rates: Rates) -> Rates:
    """The rates a layer GEMM runs at: the float8 GEMM rates for float8, else the dtype's own (as _phase_times)."""
    return rates.gemm if rates.gemm is not None else rates


def price(row: GemmRow, rates: Rates) -> Priced:
    """One GEMM priced as the iteration prices a layer GEMM of the same shape on `rates` (device_rates)."""
    g = gemm_rates(rates)
    wave = gemm_efficiency(row.m, row.n, rates.compute_units, rates.efficiency.matmul_tiles)
    priced = g.matmul_time(row.flops, row.nbytes, wave)
    burst_rates = replace(g, efficiency=g.efficiency.model_copy(update={"sustained": 1.0}), clock_share=1.0)
    burst = burst_rates.matmul_time(row.flops, row.nbytes, wave)
    bound = "memory" if g.memory_time(row.nbytes) >= priced else "compute"
    ideal_compute = row.flops / (burst_rates.sustained_flops * burst_rates.efficiency.matmul)
    return Priced(row, wave, priced, burst, bound, ideal_compute, g.memory_time(row.nbytes))


def price_all(rows: list[GemmRow]) -> list[Priced]:
    from llmsim.hardware import load_catalog
    catalog = load_catalog()
    cache: dict[tuple[str, str], Rates] = {}
    out = []
    for row in rows:
        key = (row.hardware, row.dtype)
        if key not in cache:
            cache[key] = device_rates(catalog.cluster(row.hardware), row.dtype)
        out.append(price(row, cache[key]))
    return out


def band(m: int) -> str:
    """The M band a row belongs to in the summary: GEMV-like (1-16), skinny / one tile (17-128), 129-512, >512."""
    if m <= 16:
        return "m 1-16"
    if m <= 128:
        return "m 17-128"
    if m <= 512:
        return "m 129-512"
    return "m > 512"


def report(priced: list[Priced]) -> str:
    lines = [f"{'row':5} {'device':9} {'dtype':8} {'m':>5} {'n':>6} {'k':>6} {'pub us':>8} {'pub GB/s':>8} "
             f"{'wave':>5} {'bound':7} {'priced':>8} {'err':>7} {'burst':>8} {'err':>7} {'c/m':>5} {'pub/roof':>8}"]
    for p in priced:
        r = p.row
        lines.append(f"{r.row_id:5} {r.hardware:9} {r.dtype:8} {r.m:5d} {r.n:6d} {r.k:6d} {r.published_s * 1e6:8.1f} "
                     f"{r.nbytes / r.published_s / 1e9:8.0f} {p.wave:5.2f} {p.bound:7} {p.priced_s * 1e6:8.1f} "
                     f"{p.error:+7.1%} {p.burst_s * 1e6:8.1f} {p.burst_error:+7.1%} {p.ridge:5.2f} {p.over_roofline:8.2f}")
    lines.append("")
    lines.append("median error by dtype and M band (priced = sustained clock; burst = boost clock):")
    groups: dict[tuple[str, str], list[Priced]] = {}
    for p in priced:
        groups.setdefault((p.row.dtype, band(p.row.m)), []).append(p)
    for (dtype, b), ps in sorted(groups.items()):
        lines.append(f"  {dtype:8} {b:10} rows {len(ps):2d}  priced {statistics.median(p.error for p in ps):+7.1%}"
                     f"  burst {statistics.median(p.burst_error for p in ps):+7.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_CSV, help="the CSV of GEMM timings")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.path)
        priced = price_all(rows)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ScenarioError as exc:  # a hardware name the catalog does not hold
        print(f"error: {args.path}: {exc}", file=sys.stderr)
        return 2
    print(report(priced))
    return 0


if __name__ == "__main__":
    sys.exit(main())
