#!/usr/bin/env python
"""How fast the roofline backend prices cases, and what the one-off profile costs.

    python benchmarks/bench_roofline.py [--seconds 2]

Rows: the time to trace gpt3-175b's training step on the meta device (paid once per workload, then
cached), and cases per second once the profile is cached, for the bare cost model (`estimate`) and
for the whole backend (`RooflineBackend.run`: estimate + single-device time + result row), cycling
through a sweep of distinct strategies and cluster sizes (as a planner would), so that nothing is
measured on one repeated case. Target: >= 5000 cases/s through the backend.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

from llmsim.backend import Case, RunContext
from llmsim.config import ModelSpec, SharingChoice, Strategy, Workload
from llmsim.costmodel import Plan, estimate
from llmsim.strategy import Layout, resolve_layout
from llmsim.workload.profile import profile_workload
from llmsim_plugins.roofline import RooflineBackend, RooflineSettings

TARGET_CASES_PER_S = 5000


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of fn over about `seconds`."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        calls += 100
    return calls / elapsed


def sweep(workload: Workload) -> list[tuple[Case, RooflineSettings]]:
    """Distinct valid (strategy, cluster size) cases of a GPT-3 175B training sweep."""
    cases = []
    for nodes, tp, pp, recompute, zero, sp in itertools.product(
            (16, 32, 64, 128), (1, 2, 4, 8), (1, 2, 4, 8, 16), ("none", "selective", "full"), (0, 1, 3),
            (False, True)):
        if sp and tp == 1:
            continue
        strategy = Strategy(name=f"t{tp}p{pp}{recompute[0]}z{zero}{'s' if sp else ''}", tp=tp, pp=pp,
                            recompute=recompute, zero=zero, sp=sp)
        settings = RooflineSettings(hardware="a100-80gb", nodes=nodes, devices_per_node=8)
        layout = resolve_layout(strategy, workload, RooflineBackend.world_size(settings), "roofline")
        if isinstance(layout, Layout):
            cases.append((Case(scenario="bench", name=f"{strategy.name}@{nodes}", workload=workload,
                               sharing=SharingChoice(tie_embeddings=True), strategy=strategy, layout=layout),
                          settings))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput measurement")
    args = parser.parse_args()

    workload = Workload(model=ModelSpec(preset="gpt3-175b"), mode="train", batch=1536)
    sharing = SharingChoice(tie_embeddings=True)
    start = time.perf_counter()
    profile = profile_workload(workload, sharing)
    profile_s = time.perf_counter() - start

    cases = sweep(workload)
    backend = RooflineBackend(RunContext())
    priced = [(case, settings, backend.cluster(settings), Plan.of(case.strategy, case.layout))
              for case, settings in cases]
    turn = itertools.cycle(priced)

    def bare() -> None:
        case, _, cluster, plan = next(turn)
        estimate(workload, profile, sharing, plan, cluster)

    def full() -> None:
        case, settings, _, _ = next(turn)
        backend.run(case, settings)

    bare_rate = rate(bare, args.seconds)
    full_rate = rate(full, args.seconds)
    rows = [backend.run(case, settings) for case, settings in cases]
    fits = [r for r in rows if r.status == "ok"]
    best = max(fits, key=lambda r: r.tokens_per_s or 0)

    print(f"{'measurement':<52}{'value':>14}")
    print("-" * 66)
    print(f"{'gpt3-175b train profile (meta trace, once)':<52}{profile_s:>12.2f} s")
    print(f"{'cost model estimate() per second (cached profile)':<52}{bare_rate:>12,.0f} /s")
    print(f"{'roofline backend cases per second (cached profile)':<52}{full_rate:>12,.0f} /s")
    print(f"{'  target':<52}{TARGET_CASES_PER_S:>12,} /s  ({full_rate / TARGET_CASES_PER_S:.1f}x)")
    print(f"\nsweep: {len(rows)} distinct cases, {len(fits)} fit in 80 GB; fastest: {best.case} "
          f"step {best.step_time_s:.2f} s, MFU {best.mfu:.1%}, {best.peak_memory_bytes_per_device / 1e9:.1f} GB/device")


if __name__ == "__main__":
    main()
