#!/usr/bin/env python
"""How fast the planner screens configurations, and how long the 70B training plan takes end to end.

    python benchmarks/bench_planner.py [--max-devices 4096] [--no-simulate]

Rows: the one-off profile (llama2-70b traced with 2 layers and scaled to 80), the search of
scenarios/plan-train-70b.yaml (every configuration screened: pruned by group, memory-checked or priced
by the roofline), configurations screened per second, and the whole `run_plan` (search, the cluster
re-check of the top_k, plan.csv, figure, report, best.yaml) into a temporary folder.
Target: >= 100,000 configurations screened in under a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llmsim.hardware import load_catalog
from llmsim.planner import load_plan, run_plan
from llmsim.planner.search import resolve_hardware, search, sharing_choice, workload_profile

PLAN = Path(__file__).resolve().parents[1] / "scenarios" / "plan-train-70b.yaml"
TARGET_CONFIGS, TARGET_SECONDS = 100_000, 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-devices", type=int, default=None, help="override limits.max_devices")
    parser.add_argument("--no-simulate", action="store_true", help="skip the end-to-end run's cluster re-check")
    args = parser.parse_args()
    overrides = [f"limits.max_devices={args.max_devices}"] if args.max_devices else []
    plan = load_plan(PLAN, overrides)
    catalog = load_catalog()
    hardware = resolve_hardware(plan, catalog)

    start = time.perf_counter()
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    profile_s = time.perf_counter() - start

    rows, stats = search(plan, hardware, sharing, profile)
    rate = stats.screened / stats.seconds

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        outcome = run_plan(plan, catalog, Path(tmp), str(PLAN), simulate=False if args.no_simulate else None)
        total_s = time.perf_counter() - start
        csv_mb = (outcome.run_dir / "plan.csv").stat().st_size / 1e6
        parquet_mb = (outcome.run_dir / "plan.parquet").stat().st_size / 1e6

    print(f"{'measurement':<58}{'value':>16}")
    print("-" * 74)
    print(f"{'llama2-70b train profile (2 layers traced, scaled; once)':<58}{profile_s:>14.2f} s")
    print(f"{'configurations screened':<58}{stats.screened:>16,}")
    print(f"{'  priced by the roofline':<58}{stats.priced:>16,}")
    print(f"{'  memory-checked, over capacity':<58}{stats.memory_rejected:>16,}")
    print(f"{'  skipped: weights + optimizer alone overflow':<58}{stats.pruned_by_group:>16,}")
    print(f"{'  skipped: a smaller micro-batch already overflows':<58}{stats.pruned_by_micro_batch:>16,}")
    print(f"{'  meet the goal':<58}{stats.feasible:>16,}")
    print(f"{'search time':<58}{stats.seconds:>14.1f} s")
    print(f"{'configurations screened per second':<58}{rate:>14,.0f} /s")
    print(f"{'  target: 100,000 in under 60 s':<58}{TARGET_CONFIGS / rate:>14.1f} s")
    print(f"{'whole plan (search, re-check, plan.csv, report, best.yaml)':<58}{total_s:>14.1f} s")
    print(f"{'plan.parquet rows / size (every configuration)':<58}{len(outcome.rows):>9,} / {parquet_mb:.1f} MB")
    print(f"{'plan.csv size (Pareto front + best csv_top per hardware)':<58}{csv_mb:>13.2f} MB")
    if outcome.top:
        print(f"\nbest: {outcome.explanation.headline}")


if __name__ == "__main__":
    main()
