#!/usr/bin/env python
"""How fast the cluster backend simulates a step, and how close it lands to published runs.

    python benchmarks/bench_cluster.py [--table ../shared/validation/narayanan2021_table1.csv] [--skip-table]

Rows: wall time and SimPy events/s to simulate one GPT-3 175B training step on 1024 A100s (TP8 PP16 DP8,
192 micro-batches per replica, full recompute, 1F1B) and on 8192 (DP64: 24 micro-batches per replica, so
the symmetric-replica simulation gets cheaper, not dearer), then the median |error| of the simulated
iteration time over Narayanan et al. 2021 Table 1 next to the roofline's, both built by the validation
script's own `build` (scripts/validate_narayanan.py), so both see the same workload, plan and cluster.
Nothing is fitted to the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Plan, estimate
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.sim import simulate_case
from llmsim.workload.profile import profile_workload

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import validate_narayanan as vn  # noqa: E402  (a script, not a package: imported from its folder)

GPT3_BATCH = 1536           # sequences (Brown et al. 2020: 3.2M tokens of 2048)
PROFILED_LAYERS = 2         # trace 2 layers, scale to 96 (exact: costmodel.scaling)


def gpt3_step(n_devices: int) -> tuple[float, int, float, float]:
    """(wall s, events, simulated step s, roofline step s) of one GPT-3 175B step on n A100s."""
    catalog = load_catalog()
    full = Workload(model=ModelSpec(preset="gpt3-175b"), mode="train", batch=GPT3_BATCH)
    short = Workload(model=ModelSpec(preset="gpt3-175b", layers=PROFILED_LAYERS), mode="train", batch=GPT3_BATCH)
    sharing = SharingChoice(tie_embeddings=True)
    profile = with_layers(profile_workload(short, sharing), 96)
    tp, pp = 8, 16
    dp = n_devices // (tp * pp)
    plan = Plan(dp=dp, tp=tp, pp=pp, microbatches=GPT3_BATCH // dp, recompute="full")
    cluster = catalog.cluster("a100-80gb", n_devices // 8, 8, "nvlink3", "ib-hdr200x8")
    start = time.perf_counter()
    sim = simulate_case(full, profile, sharing, plan, cluster)
    wall = time.perf_counter() - start
    return wall, sim.events, sim.step_s, estimate(full, profile, sharing, plan, cluster).step_time_s


def table_errors(path: Path) -> tuple[list[float], list[float], float]:
    """Relative errors of the cluster and the roofline on every row, and the simulation's wall time."""
    catalog = load_catalog()
    sim_err, roof_err, wall = [], [], 0.0
    print(f"\n{'model':<11}{'published s':>13}{'roofline s':>12}{'cluster s':>11}{'roof err':>10}{'clus err':>10}"
          f"{'events':>10}{'wall s':>8}")
    for row in vn.read_table(path):
        workload, profile, sharing, plan, cluster = vn.build(row, catalog)
        roof = estimate(workload, profile, sharing, plan, cluster, vn.MEGATRON_2021).step_time_s
        start = time.perf_counter()
        sim = simulate_case(workload, profile, sharing, plan, cluster, vn.MEGATRON_2021)
        took = time.perf_counter() - start
        wall += took
        roof_err.append(roof / row.published_s - 1)
        sim_err.append(sim.step_s / row.published_s - 1)
        print(f"{row.model:<11}{row.published_s:>13.2f}{roof:>12.2f}{sim.step_s:>11.2f}{roof_err[-1]:>+10.1%}"
              f"{sim_err[-1]:>+10.1%}{sim.events:>10}{took:>8.2f}")
    return sim_err, roof_err, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=vn.DEFAULT_TABLE)
    parser.add_argument("--skip-table", action="store_true", help="only the GPT-3 timing rows")
    args = parser.parse_args()
    print(f"{'case':<34}{'wall s':>8}{'events':>10}{'events/s':>11}{'sim step s':>12}{'roofline s':>12}")
    for n in (1024, 8192):
        wall, events, step, roof = gpt3_step(n)
        print(f"{f'gpt3-175b TP8 PP16 on {n} A100':<34}{wall:>8.2f}{events:>10}{events / wall:>11.0f}"
              f"{step:>12.3f}{roof:>12.3f}")
    if args.skip_table:
        return 0
    if not args.table.exists():
        print(f"{args.table}: not found (run from the repository root or pass --table)", file=sys.stderr)
        return 2
    sim_err, roof_err, wall = table_errors(args.table)
    print(f"\nmedian |error| over {len(sim_err)} rows: cluster {statistics.median(abs(e) for e in sim_err):.1%}, "
          f"roofline {statistics.median(abs(e) for e in roof_err):.1%} (simulation wall {wall:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
