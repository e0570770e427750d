#!/usr/bin/env python
"""The planner's cluster-simulation re-checks in this process vs on a local Ray, on this machine.

    python benchmarks/bench_executor.py [--top-k 64] [--max-devices 512] [--deadline-days 365] [--cpus N]

Searches scenarios/plan-train-70b.yaml once (the roofline screen; by default up to 512 devices and a deadline
of a year, so that a small space still has >= 64 feasible configurations), then re-checks its best --top-k
feasible configurations (>= 50: one SimPy cluster simulation each, planner.search.simulate_top): with
LocalExecutor (sequential, in this process), then twice with RayExecutor on a Ray started here with --cpus
workers (default: every core): the first map pays for each worker's imports (llmsim, torch), the second
finds them warm. Prints the seconds of each, the Ray start-up on its own, the ratios in-process / Ray, and
checks that the re-checks agree exactly.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from llmsim.executor import LocalExecutor, RayExecutor
from llmsim.hardware import load_catalog
from llmsim.planner import load_plan
from llmsim.planner.search import resolve_hardware, search, sharing_choice, simulate_top, workload_profile

PLAN = Path(__file__).resolve().parents[1] / "scenarios" / "plan-train-70b.yaml"
MIN_SIMULATIONS = 50  # issue 18: a search with at least 50 simulations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-k", type=int, default=64, help=f"re-checks (at least {MIN_SIMULATIONS})")
    parser.add_argument("--max-devices", type=int, default=512, help="limits.max_devices")
    parser.add_argument("--deadline-days", type=float, default=365, help="goal.deadline_days")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray workers (default: every core)")
    args = parser.parse_args()
    if args.top_k < MIN_SIMULATIONS:
        parser.error(f"--top-k: at least {MIN_SIMULATIONS}")
    overrides = [f"top_k={args.top_k}", f"limits.max_devices={args.max_devices}",
                 f"goal.deadline_days={args.deadline_days}"]
    plan = load_plan(PLAN, overrides)
    hardware = resolve_hardware(plan, load_catalog())
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    start = time.perf_counter()
    rows, stats = search(plan, hardware, sharing, profile)
    print(f"searched {stats.screened:,} configurations in {time.perf_counter() - start:.1f} s", flush=True)
    feasible = sum(e.feasible for e in rows)
    k = min(plan.top_k, feasible)

    def recheck(executor) -> tuple[float, list]:  # type: ignore[no-untyped-def]
        fresh = [e for e in rows if e.feasible][:k]
        for e in fresh:
            e.sim = {}
        start = time.perf_counter()
        top = simulate_top(plan, rows, hardware, profile, sharing, k, executor)
        return time.perf_counter() - start, [(e.config, dict(e.sim)) for e in top]

    local_s, local = recheck(LocalExecutor())
    print(f"in-process re-checks done in {local_s:.1f} s", flush=True)
    ray_exec = RayExecutor(num_cpus=args.cpus)
    start = time.perf_counter()
    ray_exec._ensure()  # the start-up on its own
    startup_s = time.perf_counter() - start
    try:
        ray_s, on_ray = recheck(ray_exec)
        print(f"first map on Ray done in {ray_s:.1f} s", flush=True)
        warm_s, on_ray_warm = recheck(ray_exec)
    finally:
        ray_exec.close()
    same = on_ray == local and on_ray_warm == local

    print(f"{'measurement':<58}{'value':>16}")
    print("-" * 74)
    print(f"{'configurations screened (roofline)':<58}{stats.screened:>16,}")
    print(f"{'cluster simulations (re-checks of the best feasible)':<58}{k:>16,}")
    print(f"{'cores on this machine / Ray workers':<58}{f'{os.cpu_count()} / {args.cpus}':>16}")
    print(f"{'in-process (LocalExecutor)':<58}{local_s:>14.2f} s")
    print(f"{'  per simulation':<58}{local_s / k:>14.3f} s")
    print(f"{'Ray start-up (ray.init, local)':<58}{startup_s:>14.2f} s")
    print(f"{'on Ray, first map (workers import llmsim)':<58}{ray_s:>14.2f} s")
    print(f"{'on Ray, second map (workers warm)':<58}{warm_s:>14.2f} s")
    print(f"{'ratio in-process / Ray, warm workers':<58}{local_s / warm_s:>15.2f}x")
    print(f"{'ratio in-process / Ray, first map':<58}{local_s / ray_s:>15.2f}x")
    print(f"{'ratio in-process / Ray, first map and start-up':<58}{local_s / (ray_s + startup_s):>15.2f}x")
    print(f"{'results identical':<58}{'yes' if same else 'NO':>16}")
    if k < MIN_SIMULATIONS:
        print(f"note: only {k} feasible configurations (fewer than {MIN_SIMULATIONS}); raise --max-devices")
    if not same:
        raise SystemExit("the re-checks differ between executors")


if __name__ == "__main__":
    main()
