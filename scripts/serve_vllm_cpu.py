#!/usr/bin/env python
"""Modeled against measured serving on this host: a real vLLM engine at several (rate, prompt length, output
length) points, `llmsim calibrate` on some of them, the cluster simulation predicting the others.

Usage (from the repository root, in the environment that has vLLM; docs/serving.md), at real-time priority so
that other work on a shared host does not swamp the engine (root; children inherit the policy):
    chrt -r 10 .venv-vllm/bin/python scripts/serve_vllm_cpu.py [--out reports/serve-vllm-cpu] [--repeat 2]
`nice -n -19` alone was not enough on the shared 2-core host (load 10-13): the same point measured twice moved
TTFT p50 by x4 (25 vs 99 ms); SCHED_RR (chrt) preempts the other work at every wake-up of the engine's processes
(API server, engine core, worker hand off each iteration) and brought that under 12% (docs/validation.md).
It leaves one stall of its own: vLLM's message-queue readers spin for 1 s after each message, so under SCHED_RR
the engine exhausts the kernel's real-time budget (950 of every 1000 ms per core; on Linux >= 6.12 the fair deadline
server gives starved normal tasks the same 50 ms) and every real-time task of the core is held ~50 ms about once a
second: the TTFT p99s here are p50 + ~50 ms (docs/validation.md, "Where the TTFT p99 comes from"). On an idle guest
the vCPUs' own speed still varies ~1.9x between 50 ms slices (docs/validation.md, "Re-measured on an idle guest"):
the p99 comparison needs a host with dedicated cores.
About 15 minutes with --repeat 2 (engine starts ~25 s each under chrt, one per length and repeat).

1. Step calibration, independently of vLLM: the `cpu` backend runs the served model in decode mode (a
   128-token prompt, then 32 tokens, at batch 1, 4 and 16) and `llmsim calibrate` fits `cpu-host-calibrated`
   (the base entry: the serving calibration needs a device with a peak FLOP/s; `--step-catalog` skips this).
2. Measures: for each `--lengths` point (input x output tokens) one `llmsim run --backend vllm` of the scenario
   with those lengths at every `--rates` rate: one engine per length, reused across its rates
   (plugins/vllm.py, `reuse_engine`). `--repeat 2` measures everything twice (run A, run B), the noise floor.
   The load average is recorded before and after each run.
3. Calibrates on the `--calibrate-on` points of run A: `llmsim calibrate` on a copy of the run folders that holds
   only those rows, `--device cpu-host-calibrated`, which writes `cpu-host-serving-calibrated`.
4. Predicts every point with the `cluster` backend on that entry (the same request lists: same seed).
5. Prints and writes (summary.md, summary.json under --out) per point: measured A (and B), modeled, the error,
   whether the point was calibrated on or held out, and whether a held-out point is within the issue's targets
   (TTFT and TPOT p50 within 15%, p99 within 25%).

Every step is `llmsim run` / `llmsim calibrate` as a user runs them; run folders stay under --out.
`--measured RUN_DIR...` (run A's folders, then run B's) skips step 2 and reuses earlier measurements.
`--probe` runs only the request-path probe instead: one engine, prompts of 1-256 tokens one at a time, the
client's TTFT beside vLLM's own TTFT and prefill histograms (where the time outside the forward pass goes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# The step calibration's shapes: the default serving point's prompt and answer lengths, at three batch sizes.
PROMPT, DECODE, BATCHES = 128, 32, (1, 4, 16)
COLUMNS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s")
# The targets (serving issue, "Modeled against measured"): medians within 15%, p99 within 25%.
TARGET = {"ttft_p50_s": 0.15, "tpot_p50_s": 0.15, "ttft_p99_s": 0.25, "tpot_p99_s": 0.25}
DEFAULT_LENGTHS = ("128x32", "256x64", "64x128")
DEFAULT_RATES = (2.0, 4.0, 8.0)
# Calibrated on: two lengths at the lowest and the highest rate; held out: their middle rate and the whole third
# length (a longer answer than any calibration point: TPOT extrapolated in the decode share).
DEFAULT_CALIBRATE_ON = ("128x32@2", "128x32@8", "256x64@2", "256x64@8")


def llmsim(*args: str) -> str:
    """Run the llmsim command of this interpreter; its last output line (the run folder, or the file written)."""
    done = subprocess.run([sys.executable, "-m", "llmsim", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"llmsim {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]


def load() -> str:
    """The 1, 5 and 15-minute load averages."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_length(text: str) -> tuple[int, int]:
    inp, out = text.lower().split("x")
    return int(inp), int(out)


def parse_point(text: str) -> tuple[str, float]:
    length, rate = text.split("@")
    parse_length(length)
    return length, float(rate)


def step_calibrate(out: Path, serving: dict[str, Any]) -> Path:
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
        print(f"step calibration run: {cal_dirs[-1]}", flush=True)
    catalog = out / "cpu-host-calibrated.yaml"
    llmsim("calibrate", *cal_dirs, "--out", str(catalog))
    # The fitted entry has no memory size (the host's is read at run time): give it the memory the vllm backend
    # gives its engine, so that both size their KV pool from the same memory x memory_utilization.
    entries = yaml.safe_load(catalog.read_text())
    memory_gib = serving["backends"].get("vllm", {}).get("memory_gib", 4.0)
    for entry in entries["entries"]:
        entry["memory_bytes"] = memory_gib * 2**30
    catalog.write_text(yaml.safe_dump(entries, sort_keys=False))
    return catalog


def scenario_for(base: dict[str, Any], length: str, rates: list[float], requests: int) -> dict[str, Any]:
    """The base scenario at one (input, output) length and the given rates."""
    inp, outp = parse_length(length)
    serving = {**base["serving"], "requests": requests, "lengths": {"input": inp, "output": outp},
               "arrival": {**base["serving"]["arrival"], "rate": rates}}
    return {**base, "name": f"{base['name']}-{length}", "serving": serving}


def measure(out: Path, base: dict[str, Any], lengths: list[str], rates: list[float], requests: int,
            label: str) -> list[Path]:
    """Step 2: one vllm run per length (one engine, all rates); the run folders."""
    dirs = []
    for length in lengths:
        path = out / f"measure-{label}-{length}.yaml"
        path.write_text(yaml.safe_dump(scenario_for(base, length, rates, requests), sort_keys=False))
        before, started = load(), time.perf_counter()
        run_dir = Path(llmsim("run", str(path), "--out", str(out / f"measured-{label}"), "--backend", "vllm"))
        after = load()
        (run_dir / "load.json").write_text(json.dumps({"before": before, "after": after}))
        print(f"measured {label} {length}: {run_dir} ({time.perf_counter() - started:.0f} s; load average "
              f"{before} before, {after} after)", flush=True)
        dirs.append(run_dir)
    return dirs


def measured_points(run_dirs: list[Path]) -> dict[tuple[str, float], tuple[Path, dict[str, Any]]]:
    """(length, rate) -> (run folder, ok vllm row)."""
    found = {}
    for run_dir in run_dirs:
        scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
        lengths = scenario["serving"]["lengths"]
        length = f"{lengths['input']}x{lengths['output']}"
        for row in rows(run_dir):
            if row["backend"] == "vllm" and row["status"] == "ok":
                found[(length, float(row["request_rate"]))] = (run_dir, row)
    return found


def subset_folders(out: Path, points: dict[tuple[str, float], tuple[Path, dict[str, Any]]],
                   keep: list[tuple[str, float]]) -> list[Path]:
    """Copies of the run folders holding only the rows of `keep` (their scenario.yaml as it was): what
    `llmsim calibrate` fits."""
    by_dir: dict[Path, list[dict[str, Any]]] = {}
    for point in keep:
        if point not in points:
            sys.exit(f"--calibrate-on {point[0]}@{point[1]:g}: no ok measured row at that point")
        run_dir, row = points[point]
        by_dir.setdefault(run_dir, []).append(row)
    folders = []
    for i, (run_dir, kept) in enumerate(sorted(by_dir.items())):
        folder = out / "calibrate-on" / f"{i}-{run_dir.parent.name}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.copy(run_dir / "scenario.yaml", folder / "scenario.yaml")
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        folders.append(folder)
    return folders


def predict(out: Path, base: dict[str, Any], lengths: list[str], rates: list[float], requests: int,
            catalog: Path, device: str) -> dict[tuple[str, float], dict[str, Any]]:
    """Step 4: the cluster backend on the serving-calibrated entry at every point."""
    found = {}
    for length in lengths:
        scenario = scenario_for(base, length, rates, requests)
        scenario["hardware_catalog"] = [str(catalog.resolve())]
        scenario["backends"] = {"cluster": {**base["backends"]["cluster"], "hardware": device}}
        path = out / f"predict-{length}.yaml"
        path.write_text(yaml.safe_dump(scenario, sort_keys=False))
        run_dir = Path(llmsim("run", str(path), "--out", str(out / "predicted"), "--backend", "cluster"))
        for row in rows(run_dir):
            if row["status"] == "ok":
                found[(length, float(row["request_rate"]))] = row
            else:
                print(f"cluster {length} @ {row['request_rate']}: {row['status']}: {row['error']}", flush=True)
    return found


def error(modeled: float | None, measured: float | None) -> float | None:
    return modeled / measured - 1 if modeled and measured else None


def table(points_a, points_b, modeled, calibrated_on) -> tuple[str, list[dict[str, Any]]]:  # noqa: ANN001
    """The markdown table and its records: per point and metric, measured A (B), modeled, error, within target."""
    lines = ["| point | used | " + " | ".join(f"{c[:-2].replace('_', ' ').upper()} A / B / modeled (ms), error"
                                                for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    records = []
    for point in sorted(points_a, key=lambda p: (DEFAULT_LENGTHS.index(p[0]) if p[0] in DEFAULT_LENGTHS else 99,
                                                p[0], p[1])):
        a = points_a[point][1]
        b = points_b[point][1] if point in points_b else {}
        m = modeled.get(point, {})
        used = "calibrated" if point in calibrated_on else "held out"
        cells = []
        record: dict[str, Any] = {"length": point[0], "rate": point[1], "used": used}
        for c in COLUMNS:
            err = error(m.get(c), a.get(c))
            ok = err is not None and abs(err) <= TARGET[c]
            record[c] = {"A": a.get(c), "B": b.get(c), "modeled": m.get(c), "error": err, "within": ok}
            ms = lambda v: f"{v * 1e3:.1f}" if v else "–"  # noqa: E731
            mark = "" if used == "calibrated" or err is None else (" ✓" if ok else " ✗")
            cells.append(f"{ms(a.get(c))} / {ms(b.get(c))} / {ms(m.get(c))}, "
                         f"{'–' if err is None else f'{err:+.0%}'}{mark}")
        records.append(record)
        lines.append(f"| {point[0]} @ {point[1]:g} | {used} | " + " | ".join(cells) + " |")
    return "\n".join(lines), records


# The request path probe: prompts of these lengths, one request in flight at a time, REQUESTS_PER_PROMPT each, then
# vLLM's own histograms read back (vllm/v1/metrics/stats.py: TTFT from the API server's arrival, queue and
# prefill time from the engine core's timestamps) beside the client's TTFT.
PROBE_PROMPTS, PROBE_REQUESTS = (1, 64, 128, 256), 15
PROBE_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:request_queue_time_seconds",
                    "vllm:request_prefill_time_seconds")


def probe_request_path(out: Path, base: dict[str, Any]) -> str:
    """Where a request's TTFT goes at no load: the client's TTFT (HTTP included), the API server's (from its
    arrival there to the first token's output processing) and the engine core's prefill (scheduled to first token),
    per prompt length; a markdown table."""
    import random

    import httpx

    from llmsim.config import parse_scenario
    from llmsim.serving.engine import SERVED_MODEL_NAME, ServerProcess, free_port, vllm_command, write_checkpoint
    from llmsim.serving.replay import parse_prometheus
    from llmsim_plugins.vllm import VllmSettings, engine_args
    from llmsim.runner import plan_cases
    from llmsim.registry import BackendRegistry
    from llmsim.plugins import get_plugin_manager

    scenario = parse_scenario({**base, "backends": {"vllm": base["backends"].get("vllm", {})}}, "probe.yaml")
    registry = BackendRegistry.from_manager(get_plugin_manager())
    item = plan_cases(scenario, registry, "probe.yaml")[0]
    case, settings = item.case, VllmSettings(**base["backends"].get("vllm", {}))
    args = engine_args(case, settings)
    model_dir = write_checkpoint(out / "probe" / "model", case.workload.model, case.workload.dtype,
                                 case.sharing.tie_embeddings)
    port, rng = free_port(), random.Random(0)
    lines = ["| prompt tokens | client TTFT p50 / mean (ms) | API server TTFT mean | engine-core queue + prefill mean |",
             "|---|---|---|---|"]
    with ServerProcess(vllm_command(sys.executable, model_dir, port, args), port, out / "probe" / "server.log",
                       env=args.env(), startup_timeout_s=settings.startup_timeout_s) as server, \
            httpx.Client(timeout=settings.request_timeout_s) as client:
        def sums() -> dict[str, float]:
            values = parse_prometheus(client.get(server.base_url + "/metrics").text)
            return {f"{h}_{k}": values.get(f"{h}_{k}", 0.0) for h in PROBE_HISTOGRAMS for k in ("sum", "count")}

        for prompt in PROBE_PROMPTS:
            before, ttfts = sums(), []
            for _ in range(PROBE_REQUESTS):
                body = {"model": SERVED_MODEL_NAME, "prompt": [rng.randrange(2, case.workload.model.vocab)
                                                              for _ in range(prompt)],
                        "max_tokens": 2, "min_tokens": 2, "ignore_eos": True, "stream": True}
                sent, first = time.perf_counter(), None
                with client.stream("POST", server.base_url + "/v1/completions", json=body) as answer:
                    for line in answer.iter_lines():
                        if first is None and line.startswith("data:") and "[DONE]" not in line:
                            first = time.perf_counter() - sent
                ttfts.append(first or float("nan"))
            after = sums()
            mean = {h: (after[f"{h}_sum"] - before[f"{h}_sum"]) / max(after[f"{h}_count"] - before[f"{h}_count"], 1)
                    for h in PROBE_HISTOGRAMS}
            ttfts.sort()
            lines.append(f"| {prompt} | {ttfts[len(ttfts) // 2] * 1e3:.1f} / {sum(ttfts) / len(ttfts) * 1e3:.1f} | "
                         f"{mean[PROBE_HISTOGRAMS[0]] * 1e3:.1f} | "
                         f"{(mean[PROBE_HISTOGRAMS[1]] + mean[PROBE_HISTOGRAMS[2]]) * 1e3:.1f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "serve-vllm-cpu")
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "serve-vllm-cpu.yaml")
    parser.add_argument("--step-catalog", type=Path, default=None,
                        help="a step-calibrated cpu-host-calibrated entry already made: skip step 1")
    parser.add_argument("--lengths", nargs="+", default=list(DEFAULT_LENGTHS), metavar="INxOUT")
    parser.add_argument("--rates", nargs="+", type=float, default=list(DEFAULT_RATES), metavar="REQ_PER_S")
    parser.add_argument("--requests", type=int, default=100, help="requests per (length, rate) point")
    parser.add_argument("--repeat", type=int, choices=(1, 2), default=2,
                        help="measure every point once (A) or twice (A and B: the run-to-run spread)")
    parser.add_argument("--calibrate-on", nargs="+", default=list(DEFAULT_CALIBRATE_ON), metavar="INxOUT@RATE")
    parser.add_argument("--probe", action="store_true",
                        help="only the request-path probe: TTFT at no load, client against vLLM's own histograms")
    parser.add_argument("--measured", nargs="+", type=Path, default=None, metavar="RUN_DIR",
                        help="earlier vllm run folders (A's, then B's): skip step 2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for length in args.lengths:
        parse_length(length)
    calibrated_on = [parse_point(p) for p in args.calibrate_on]
    base = yaml.safe_load(args.scenario.read_text())
    policy = {os.SCHED_OTHER: "normal", os.SCHED_FIFO: "FIFO", os.SCHED_RR: "round-robin"}.get(
        os.sched_getscheduler(0), "other")
    print(f"scheduling {policy}, niceness {os.nice(0)}; load average {load()}", flush=True)
    if args.probe:
        (args.out / "probe.md").write_text(probe_request_path(args.out, base) + "\n")
        return

    step_catalog = args.step_catalog or step_calibrate(args.out, base)
    if args.measured:
        half = len(args.measured) // 2 if len(args.measured) > len(args.lengths) else len(args.measured)
        runs_a, runs_b = args.measured[:half], args.measured[half:]
    else:
        runs_a = measure(args.out, base, args.lengths, args.rates, args.requests, "A")
        runs_b = (measure(args.out, base, args.lengths, args.rates, args.requests, "B") if args.repeat == 2
                  else [])
    points_a, points_b = measured_points(runs_a), measured_points(runs_b)

    folders = subset_folders(args.out, points_a, calibrated_on)
    serving_catalog = args.out / "cpu-host-serving-calibrated.yaml"
    done = subprocess.run([sys.executable, "-m", "llmsim", "calibrate", *map(str, folders), "--device",
                           "cpu-host-calibrated", "--hardware", str(step_catalog), "--out", str(serving_catalog)],
                          capture_output=True, text=True)
    print(done.stdout + done.stderr, flush=True)
    if done.returncode:
        sys.exit(f"llmsim calibrate failed ({done.returncode})")
    device = yaml.safe_load(serving_catalog.read_text())["entries"][0]["name"]
    modeled = predict(args.out, base, args.lengths, args.rates, args.requests, serving_catalog, device)

    text, records = table(points_a, points_b, modeled, calibrated_on)
    held = [r for r in records if r["used"] == "held out"]
    within = {c: sum(r[c]["within"] for r in held) for c in COLUMNS}
    summary = (f"{text}\n\nheld-out points within target: "
               + ", ".join(f"{c} {within[c]}/{len(held)}" for c in COLUMNS))
    print(summary)
    (args.out / "summary.md").write_text(summary + "\n")
    (args.out / "summary.json").write_text(json.dumps({
        "runs_a": [str(p) for p in runs_a], "runs_b": [str(p) for p in runs_b],
        "calibrated_on": args.calibrate_on, "serving_catalog": str(serving_catalog),
        "load": {str(p): json.loads((p / "load.json").read_text()) for p in runs_a + runs_b
                 if (p / "load.json").exists()},
        "points": records}, indent=2))


if __name__ == "__main__":
    main()
