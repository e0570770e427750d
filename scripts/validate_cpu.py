#!/usr/bin/env python
"""Predicted vs measured CPU training step times on shapes that were not used for calibration (issue #3).

Usage (from the repository root):
    python scripts/validate_cpu.py [--out reports/validate-cpu] [--steps 3] [--rounds 2]

1. Measures four small GPT-2-small slices and five held-out shapes (other layers / hidden / heads / seq /
   batch) with the `cpu` backend (float32 training, one pass of the whole batch), alternating, in
   --rounds rounds (the shared host drifts; medians are compared).
2. Fits the `cpu-host-calibrated` catalog entry to every calibration row with `llmsim calibrate`.
3. Predicts the held-out shapes with the `roofline` backend on `cpu-host-calibrated`
   (`hardware_catalog: [that file]`, one node, one device) and prints per-case % error
   (predicted / median measured - 1) and the median |error|.

Every step is `llmsim run` / `llmsim calibrate` as a user would run them; the run folders stay under --out.
The host is shared and noisy (2 cores here): measured times move by several percent between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

# (name, model overrides of gpt2-small, batch). Calibration: GPT-2-small slices.
CALIBRATION = [
    ("cal-l2-s128-b2", dict(layers=2, seq_len=128), 2),
    ("cal-l4-s128-b4", dict(layers=4, seq_len=128), 4),
    ("cal-l2-s256-b4", dict(layers=2, seq_len=256), 4),
    ("cal-l3-s256-b2", dict(layers=3, seq_len=256), 2),
]
# Held out: a different width, head count, depth, context or batch from every calibration case.
HELD_OUT = [
    ("h512-l3-s192-b3", dict(layers=3, hidden=512, heads=8, seq_len=192), 3),
    ("h384-l6-s128-b2", dict(layers=6, hidden=384, heads=6, seq_len=128), 2),
    ("h1024-l2-s64-b4", dict(layers=2, hidden=1024, heads=16, seq_len=64), 4),
    ("h768-l5-s384-b1", dict(layers=5, seq_len=384), 1),
    ("h640-l4-s96-b6", dict(layers=4, hidden=640, heads=10, seq_len=96), 6),
]


def scenario(name: str, model: dict, batch: int, backends: dict, catalog: Path | None = None) -> dict:
    s = {"name": name, "workload": {"model": {"preset": "gpt2-small", **model}, "mode": "train", "batch": batch,
                                    "dtype": "float32"},
         # one pass of the whole batch (micro_batch defaults to 1 sequence, i.e. `batch` accumulated passes)
         "strategies": [{"name": "single", "micro_batch": batch}], "backends": backends, "seed": 0}
    if catalog is not None:
        s["hardware_catalog"] = [str(catalog.resolve())]
    return s


def llmsim(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "llmsim", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llmsim {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def run(path: Path, spec: dict, out: Path) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    last = llmsim("run", str(path), "--out", str(out)).strip().splitlines()[-1].strip()
    return Path(last)


def rows(run_dir: Path) -> dict[str, dict]:
    found = {}
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("status") != "ok":
                raise SystemExit(f"{run_dir}: {row['backend']} failed: {row.get('error')}")
            found[row["backend"]] = row
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/validate-cpu"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved repetitions of every measurement (medians are compared)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = {"cpu": {"steps": args.steps, "warmup": 2}}
    start = time.perf_counter()

    # Every shape measured once per round, calibration and held-out shapes alternating within a round:
    # the shared host drifts by tens of percent over minutes, and a slow spell then touches both sides.
    cal_dirs: list[Path] = []
    held: dict[str, list[float]] = {name: [] for name, _, _ in HELD_OUT}
    for r in range(args.rounds):
        for i in range(max(len(CALIBRATION), len(HELD_OUT))):
            if i < len(CALIBRATION):
                name, model, batch = CALIBRATION[i]
                cal_dirs.append(run(args.out / f"{name}.yaml", scenario(name, model, batch, cpu), args.out))
                print(f"round {r + 1}: calibration {name}: {rows(cal_dirs[-1])['cpu']['step_time_s']:.3f} s",
                      flush=True)
            if i < len(HELD_OUT):
                name, model, batch = HELD_OUT[i]
                found = rows(run(args.out / f"{name}.yaml", scenario(name, model, batch, cpu), args.out))
                held[name].append(found["cpu"]["step_time_s"])
                print(f"round {r + 1}: held out {name}: {held[name][-1]:.3f} s", flush=True)
    catalog = args.out / "cpu-host-calibrated.yaml"
    print(llmsim("calibrate", *map(str, cal_dirs), "--out", str(catalog)), flush=True)

    roofline = {"roofline": {"hardware": "cpu-host-calibrated", "nodes": 1, "devices_per_node": 1}}
    errors = []
    lines = [f"{'held-out case':<18}{'layers':>7}{'hidden':>7}{'heads':>6}{'seq':>5}{'batch':>6}"
             f"{'measured s':>12}{'(rounds)':>16}{'predicted s':>13}{'error':>9}"]
    for name, model, batch in HELD_OUT:
        found = rows(run(args.out / f"{name}-model.yaml", scenario(name, model, batch, roofline, catalog), args.out))
        measured, predicted = statistics.median(held[name]), found["roofline"]["step_time_s"]
        err = predicted / measured - 1
        errors.append(err)
        spread = " ".join(f"{v:.3f}" for v in held[name])
        lines.append(f"{name:<18}{model['layers']:>7}{model.get('hidden', 768):>7}{model.get('heads', 12):>6}"
                     f"{model['seq_len']:>5}{batch:>6}{measured:>12.3f}{spread:>16}{predicted:>13.3f}{err:>+9.1%}")
    print("\n".join(lines))
    print(f"\nmedian |error| {statistics.median(abs(e) for e in errors):.1%} over {len(errors)} held-out cases; "
          f"mean error {statistics.fmean(errors):+.1%}; {args.rounds} rounds ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
