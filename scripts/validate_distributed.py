#!/usr/bin/env python
"""Measured vs modeled step time of DP, FSDP, TP and PP (1F1B) at world size 2 on this host (issue #6).

Usage (from the repository root):
    python scripts/validate_distributed.py [--out reports/validate-distributed] [--steps 3] [--rounds 3]
    python scripts/validate_distributed.py --moe [--out reports/validate-moe]   # the MoE variant (issue 17)

--moe runs the same steps on the benchmark's model with its MLPs made mixtures of 4 experts, top-2 (MOE), and
validates expert parallelism (ep 2 carved out of dp 2: token dispatch and combine by all-to-all over gloo),
data parallelism without it, tensor parallelism (experts split over tp) and the 1F1B pipeline.

In one run, every step as a user would do it (steps 2 and 3 repeated in --rounds interleaved rounds, and
the median of the rounds compared, because the shared host's speed drifts by tens of percent):
1. Measures gloo all-reduce between 2 local processes (scripts/calibrate_loopback.py's `calibrate`) and
   writes `loopback-measured.yaml`: a `loopback-measured` link entry with the bandwidth and latency.
2. Measures a few single-process shapes of benchmarks/bench_distributed.py's model family with the `cpu`
   backend, with the threads one rank gets (cores / world), and fits `cpu-host-calibrated` to them with
   `llmsim calibrate`: the per-rank compute rate is what the roofline then models.
3. Runs one scenario with the benchmark's DP, FSDP, TP and PP 1F1B strategies on the `cpu` backend
   (two processes, gloo) and on the `roofline` backend (`cpu-host-calibrated`, 1 node x 2 devices,
   `loopback-measured` inside and between nodes; `hardware_catalog: [both files]`), so the case names
   match and the run's report has the parity figure.
4. Prints measured vs modeled per strategy with the % error (modeled / measured - 1) and the median |error|.

The run folders and YAML files stay under --out. On a shared 2-core host measured times move by several
percent between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_distributed import MODEL, STRATEGIES  # noqa: E402
from calibrate_loopback import calibrate as calibrate_loopback  # noqa: E402
from validate_cpu import llmsim, rows, run  # noqa: E402

WORLD = 2
BATCH = 8
LINK = "loopback-measured"
# The strategies of the benchmark that issue #6's table names: DP, FSDP, TP, PP 1F1B.
VALIDATED = ("dp2", "fsdp2", "tp2", "pp2-1f1b")
# --moe: every MLP a mixture of 4 experts of the benchmark's MLP width, top-2 (the cpu backend's MoE layer,
# llmsim.workload.moe), and the strategies issue 17 names: ep alone, and beside dp, tp and pp.
MOE = {"moe": {"experts": 4, "top_k": 2}}
MOE_STRATEGIES: list[dict] = [
    {"name": "ep2", "dp": 2, "ep": 2},
    {"name": "dp2", "dp": 2},
    {"name": "tp2", "tp": 2},
    {"name": "pp2-1f1b", "pp": 2, "schedule": "1f1b", "micro_batch": 2},
]
# Single-process calibration shapes of the benchmark's family (model overrides, batch): the whole step,
# a DP rank's share of the batch, a pipeline micro-batch on half the layers, and a TP rank's width.
CALIBRATION = [
    ("cal-l4-b8", {}, 8),
    ("cal-l4-b4", {}, 4),
    ("cal-l2-b2", {"layers": 2}, 2),
    ("cal-h128-l4-b8", {"hidden": 128, "heads": 4, "kv_heads": 4, "ffn_hidden": 512}, 8),
]


def scenario(name: str, model: dict, batch: int, strategies: list[dict], backends: dict,
             catalogs: list[Path] = (), base: dict = MODEL) -> dict:
    s = {"name": name, "workload": {"model": {**base, **model}, "mode": "train", "batch": batch, "dtype": "float32"},
         "strategies": strategies, "backends": backends, "seed": 0}
    if catalogs:
        s["hardware_catalog"] = [str(c.resolve()) for c in catalogs]
    return s


def _by_case(run_dir: Path) -> dict[str, dict[str, dict]]:
    """{case: {backend: row}} of a run folder."""
    found: dict[str, dict[str, dict]] = {}
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            found.setdefault(row["case"], {})[row["backend"]] = row
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/validate-distributed"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved repetitions of every measurement (medians are compared)")
    parser.add_argument("--iters", type=int, default=20, help="timed all-reduces per size for loopback")
    parser.add_argument("--moe", action="store_true", help="the mixture-of-experts variant (module docstring)")
    args = parser.parse_args(argv)
    base = {**MODEL, **MOE} if args.moe else MODEL
    pool = MOE_STRATEGIES if args.moe else STRATEGIES
    validated = tuple(s["name"] for s in MOE_STRATEGIES) if args.moe else VALIDATED
    name = "validate-moe" if args.moe else "validate-distributed"
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max((os.cpu_count() or WORLD) // WORLD, 1)
    start = time.perf_counter()

    # 1. the link
    entry, lines = calibrate_loopback(WORLD, iters=args.iters, threads=threads, name=LINK,
                                      script="scripts/validate_distributed.py (calibrate_loopback)")
    link_file = args.out / f"{LINK}.yaml"
    link_file.write_text("# Written by scripts/validate_distributed.py\n"
                         + "".join(f"# {line}\n" for line in lines)
                         + yaml.safe_dump({"entries": [entry]}, sort_keys=False))
    print("\n".join(lines), flush=True)
    print(f"{LINK}: {entry['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s, latency {entry['latency_s'] * 1e6:.0f} us "
          f"per ring step -> {link_file}\n", flush=True)

    # 2. and 3., in interleaved rounds: the single-process calibration shapes, then the strategies (two
    # processes, gloo). The host is shared: a slow minute then slows one round of everything, not one
    # side of the comparison. Both backends take micro_batch (default 1) as gradient accumulation:
    # without pp, one pass of a rank's share of the batch, the pass size the calibration measures.
    cpu_single = {"cpu": {"steps": args.steps, "warmup": 2, "threads": threads}}
    strategies = [s if s.get("pp", 1) > 1 else {**s, "micro_batch": BATCH // s.get("dp", 1)}
                  for s in pool if s["name"] in validated]
    cpu = {"cpu": {"steps": args.steps, "warmup": 2, "threads": threads}}
    device_file = args.out / "cpu-host-calibrated.yaml"
    cal_dirs: list[Path] = []
    measured: dict[str, list[float]] = {n: [] for n in validated}
    final: Path | None = None
    for r in range(args.rounds):
        for cal, model, batch in CALIBRATION:
            # One pass of the whole batch (micro_batch = batch), the pass size of the shape it stands for.
            single = [{"name": "single", "micro_batch": batch}]
            cal_dirs.append(run(args.out / f"{cal}.yaml", scenario(cal, model, batch, single, cpu_single, base=base),
                                args.out))
            print(f"round {r + 1}: measured {cal} ({threads} thread(s)): "
                  f"{rows(cal_dirs[-1])['cpu']['step_time_s']:.3f} s", flush=True)
        backends = dict(cpu)
        if r == args.rounds - 1:
            # Last round: fit the per-rank compute rate to every round's single-process rows, then model
            # the strategies in the same scenario as the measurement, so its report has the parity figure.
            print(llmsim("calibrate", *map(str, cal_dirs), "--out", str(device_file)), flush=True)
            backends["roofline"] = {"hardware": "cpu-host-calibrated", "nodes": 1, "devices_per_node": WORLD,
                                    "intra_node": LINK, "inter_node": LINK}
        catalogs = [device_file, link_file] if "roofline" in backends else []
        spec = scenario(name, {}, BATCH, strategies, backends, catalogs, base=base)
        run_dir = run(args.out / f"{name}.yaml", spec, args.out)
        for case, found in _by_case(run_dir).items():
            if case in measured and found.get("cpu", {}).get("status") == "ok":
                measured[case].append(found["cpu"]["step_time_s"])
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.3f} s" for n, v in measured.items() if v), flush=True)
        final = run_dir

    # 4. the table: the median measurement of the rounds against the model
    assert final is not None
    by_case = _by_case(final)
    header = (f"{'strategy':<10}{'measured s':>11}{'(rounds)':>22}{'modeled s':>11}{'error':>9}"
              f"{'meas comm s':>12}{'mod comm s':>11}{'meas bubble s':>14}{'mod bubble s':>13}")
    out = [header]
    errors = []
    for case in validated:
        found = by_case.get(case, {})
        m, r_ = found.get("cpu", {}), found.get("roofline", {})
        if not measured[case] or r_.get("status") != "ok":
            out.append(f"{case:<10} cpu {m.get('status')}: {m.get('error')}; roofline {r_.get('status')}: "
                       f"{r_.get('error')}")
            continue
        median = statistics.median(measured[case])
        err = r_["step_time_s"] / median - 1
        errors.append(err)
        spread = " ".join(f"{v:.3f}" for v in measured[case])
        out.append(f"{case:<10}{median:>11.3f}{spread:>22}{r_['step_time_s']:>11.3f}{err:>+9.1%}"
                   f"{m.get('comm_time_s') or 0:>12.3f}{r_.get('comm_time_s') or 0:>11.3f}"
                   f"{m.get('bubble_time_s') or 0:>14.3f}{r_.get('bubble_time_s') or 0:>13.3f}")
    print("\n" + "\n".join(out))
    if errors:
        print(f"\nmedian |error| {statistics.median(abs(e) for e in errors):.1%} over {len(errors)} strategies; "
              f"mean error {statistics.fmean(errors):+.1%}; world size {WORLD}, {threads} thread(s) per rank, "
              f"{args.rounds} rounds ({time.perf_counter() - start:.0f} s)")
    print(f"run folder of the last round (report with the parity figure): {final}")
    return 0 if len(errors) == len(validated) else 1


if __name__ == "__main__":
    sys.exit(main())
