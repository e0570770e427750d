#!/usr/bin/env python
"""Modeled vs measured serving on this host: scenarios/serve-vllm-cpu.yaml on a real vLLM engine and on the
cluster simulation, the same requests.

Usage (from the repository root, in the environment that has vLLM; docs/serving.md):
    .venv-vllm/bin/python scripts/serve_vllm_cpu.py [--out reports/serve-vllm-cpu] [--scenario FILE]

1. Calibrates the host for the cost model, independently of vLLM: the `cpu` backend runs the served model
   in decode mode (a 128-token prompt, then 32 tokens, at batch 1, 4 and 16: the shapes of the serving
   iterations), and `llmsim calibrate` fits `cpu-host-calibrated` to those rows.
2. Runs the serving scenario with the `vllm` backend and the `cluster` backend on `cpu-host-calibrated`
   (a copy of the scenario with `hardware_catalog` naming the fitted entry).
3. Prints TTFT and TPOT p50/p99 per rate, measured and modeled, and the modeled/measured - 1.

Every step is `llmsim run` / `llmsim calibrate` as a user runs them; run folders stay under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# The calibration shapes: the serving requests' prompt and answer lengths, at three batch sizes.
PROMPT, DECODE, BATCHES = 128, 32, (1, 4, 16)
COLUMNS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s")


def llmsim(*args: str) -> str:
    """Run the llmsim command of this interpreter; its last output line (the run folder)."""
    out = subprocess.run([sys.executable, "-m", "llmsim", *args], check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def calibrate(out: Path, serving: dict) -> Path:
    """Step 1: cpu-backend decode runs of the served model, `llmsim calibrate` on them; the entry's file."""
    cal_dirs = []
    for batch in BATCHES:
        model = {**serving["workload"]["model"], "seq_len": PROMPT}
        cal = {"name": f"cal-decode-b{batch}", "workload": {"model": model, "mode": "decode", "batch": batch,
                                                              "decode_tokens": DECODE,
                                                              "dtype": serving["workload"]["dtype"]},
               "strategies": [{"name": "single"}], "backends": {"cpu": {"steps": 3, "warmup": 1}}, "seed": 0}
        path = out / f"cal-decode-b{batch}.yaml"
        path.write_text(yaml.safe_dump(cal, sort_keys=False))
        cal_dirs.append(llmsim("run", str(path), "--out", str(out / "calibration")))
        print(f"calibration run: {cal_dirs[-1]}", flush=True)
    catalog = out / "cpu-host-calibrated.yaml"
    subprocess.run([sys.executable, "-m", "llmsim", "calibrate", *cal_dirs, "--out", str(catalog)], check=True)
    # The fitted entry has no memory size (the host's is read at run time): give it the memory the vllm backend
    # gives its engine, so that both size their KV pool from the same memory x memory_utilization.
    entries = yaml.safe_load(catalog.read_text())
    memory_gib = serving["backends"].get("vllm", {}).get("memory_gib", 4.0)
    for entry in entries["entries"]:
        entry["memory_bytes"] = memory_gib * 2**30
    catalog.write_text(yaml.safe_dump(entries, sort_keys=False))
    return catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "serve-vllm-cpu")
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "serve-vllm-cpu.yaml")
    parser.add_argument("--catalog", type=Path, default=None, help="a calibrated entry already made: skip step 1")
    parser.add_argument("--backend", action="append", default=None, help="run only these backends (repeatable)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    serving = yaml.safe_load(args.scenario.read_text())
    catalog = args.catalog or calibrate(args.out, serving)

    scenario = dict(serving, hardware_catalog=[str(catalog.resolve())])
    scenario["backends"] = dict(serving["backends"])
    scenario["backends"]["cluster"] = {**serving["backends"]["cluster"], "hardware": "cpu-host-calibrated"}
    path = args.out / "serve-vllm-cpu.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    only = [a for name in args.backend or [] for a in ("--backend", name)]
    run_dir = Path(llmsim("run", str(path), "--out", str(args.out), *only))
    print(f"serving run: {run_dir}", flush=True)

    by = {(r["backend"], r["request_rate"]): r for r in rows(run_dir) if r["status"] == "ok"}
    rates = sorted({rate for _, rate in by})
    print("| rate | " + " | ".join(f"{c} measured | modeled | error" for c in COLUMNS) + " |")
    for rate in rates:
        measured, modeled = by.get(("vllm", rate)), by.get(("cluster", rate))
        cells = []
        for c in COLUMNS:
            m = measured[c] if measured else None
            p = modeled[c] if modeled else None
            err = f"{p / m - 1:+.0%}" if m and p else "–"
            cells.append(f"{m * 1e3:.1f} ms | {p * 1e3:.1f} ms | {err}" if m and p else "– | – | –")
        print(f"| {rate:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
