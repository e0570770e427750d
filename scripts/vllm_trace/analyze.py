#!/usr/bin/env python
"""Where a measured vLLM run's slow requests lose their time: reads the trace folder sitecustomize.py wrote
(LLMSIM_VLLM_TRACE) and the run's per-request CSV, prints a summary (docs/validation.md, "Where the p99 comes
from").

    python scripts/vllm_trace/analyze.py TRACE_DIR RUN_DIR/requests/vllm-<case>.csv [--json OUT]

Per engine iteration (EngineCore.step): its duration, scheduled tokens, requests, prefills, the engine thread's
run-queue delay, the workers' forward pass (Worker.execute_model) inside it and any garbage collection in any
process overlapping it. A step is `slow` when it takes more than 3x the median of the steps of its kind (decode
only, or with a prefill). Per request: the client's TTFT against the API server's (output processor: request
added -> first token batch received), and the engine steps between them.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(trace: Path) -> dict[str, list[dict]]:
    events: dict[str, list[dict]] = defaultdict(list)
    roles: dict[int, str] = {}
    for path in sorted(trace.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            events[e["k"]].append(e)
            role = {"vllm.v1.engine.core": "engine-core", "vllm.v1.worker.gpu_worker": "worker",
                    "vllm.v1.engine.output_processor": "api-server"}.get(e.get("module", ""))
            if e["k"] == "patched" and role:
                roles[e["pid"]] = role
    events["roles"] = [roles]  # type: ignore[list-item]
    return events


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", type=Path)
    ap.add_argument("requests_csv", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--api-pid", type=int, help="the API server of this run's engine (a trace folder may hold several)")
    ap.add_argument("--skip", type=int, default=0, help="requests the API server took before this CSV's (warm-up, "
                    "earlier rates of a reused engine)")
    args = ap.parse_args()
    ev = load(args.trace)
    roles = ev["roles"][0]
    rows = sorted(csv.DictReader(args.requests_csv.open()), key=lambda r: float(r["arrival_s"]))
    rows = [r for r in rows if r["status"] == "ok"]
    adds = sorted((a for a in ev["add"] if args.api_pid in (None, a["pid"])), key=lambda e: e["t"])
    adds = adds[args.skip:args.skip + len(rows)]
    rids = {a["rid"] for a in adds}
    outs = [o for o in ev["out"] if set(o["rids"]) & rids]
    lo, hi = adds[0]["t"], max(o["t"] for o in outs)   # this CSV's window on the shared clock
    for kind in ("step", "exec", "gc", "sample", "late"):
        ev[kind] = [e for e in ev[kind] if lo <= e.get("t0", 0) <= hi]
    print(f"window {hi - lo:.1f} s, {len(adds)} requests")
    # the api server also imports vllm.v1.engine.core: its role is the output processor's
    core_pids = {e["pid"] for e in ev["step"]}
    steps = sorted(ev["step"], key=lambda e: e["t0"])
    execs = sorted(ev["exec"], key=lambda e: e["t0"])
    gcs = [g for g in ev["gc"] if g["t1"] - g["t0"] > 0]
    role = lambda pid: "engine-core" if pid in core_pids else roles.get(pid, "client/other")  # noqa: E731

    kinds: dict[str, list[dict]] = defaultdict(list)
    for s in steps:
        s["dur"] = s["t1"] - s["t0"]
        s["kind"] = "prefill" if s["new"] else "decode"
        s["execs"] = [x for x in execs if s["t0"] <= x["t0"] <= s["t1"]]
        s["exec_max"] = max((x["t1"] - x["t0"] for x in s["execs"]), default=0.0)
        s["worker_delay"] = max((x["delay_ns"] for x in s["execs"]), default=0) / 1e9
        s["gc"] = [(role(g["pid"]), g["gen"], g["t1"] - g["t0"]) for g in gcs
                   if g["t1"] > s["t0"] and g["t0"] < s["t1"] and g["t1"] - g["t0"] > 1e-3]
        kinds[s["kind"]].append(s)
    out: dict = {"steps": {}, "slow": [], "gc": {}, "requests": {}}
    print(f"{len(steps)} engine steps")
    for kind, ss in kinds.items():
        d = [s["dur"] for s in ss]
        med = statistics.median(d)
        for s in ss:
            s["slow"] = s["dur"] > 3 * med
        slow = [s for s in ss if s["slow"]]
        out["steps"][kind] = {"n": len(ss), "p50_ms": med * 1e3, "p99_ms": pct(d, 0.99) * 1e3, "max_ms": max(d) * 1e3,
                              "slow": len(slow), "slow_time_s": sum(s["dur"] - med for s in slow)}
        print(f"  {kind}: n={len(ss)} p50 {med * 1e3:.2f} ms p90 {pct(d, 0.9) * 1e3:.2f} p99 {pct(d, 0.99) * 1e3:.2f} "
              f"max {max(d) * 1e3:.1f}; slow (>3x median) {len(slow)}, their excess "
              f"{sum(s['dur'] - med for s in slow) * 1e3:.0f} ms")
    print("slowest steps: dur ms | kind tokens reqs new | engine run-queue delay ms | worker forward max ms, "
          "its run-queue delay ms | GC overlapping (process, gen, ms)")
    for s in sorted(steps, key=lambda s: -s["dur"])[:12]:
        rec = {k: s[k] for k in ("t0", "dur", "kind", "tokens", "reqs", "new", "exec_max", "worker_delay")}
        rec["delay"] = s["delay_ns"] / 1e9
        rec["gc"] = s["gc"]
        out["slow"].append(rec)
        print(f"  {s['dur'] * 1e3:7.1f} | {s['kind']:7s} {s['tokens']:5d} {s['reqs']:3d} {s['new']:2d} | "
              f"{s['delay_ns'] / 1e6:6.1f} | {s['exec_max'] * 1e3:6.1f}, {s['worker_delay'] * 1e3:6.1f} | "
              f"{[(r, g, round(t * 1e3, 1)) for r, g, t in s['gc']]}")
    by_role: dict[str, list[float]] = defaultdict(list)
    for g in gcs:
        by_role[f"{role(g['pid'])} gen{g['gen']}"].append(g["t1"] - g["t0"])
    print("garbage collections in the window: count, total ms, max ms")
    for k, v in sorted(by_role.items()):
        out["gc"][k] = {"n": len(v), "total_ms": sum(v) * 1e3, "max_ms": max(v) * 1e3}
        print(f"  {k}: {len(v)}, {sum(v) * 1e3:.1f}, {max(v) * 1e3:.1f}")
    # requests: the API server's add and first output, joined to the client's rows in order of arrival
    first_out: dict[str, float] = {}
    for o in sorted(ev["out"], key=lambda e: e["t"]):
        for rid, n in zip(o["rids"], o["n"]):
            if n and rid not in first_out:
                first_out[rid] = o["t"]
    n = min(len(rows), len(adds))
    offset = min(a["t"] - float(r["arrival_s"]) for a, r in zip(adds[:n], rows[:n]))  # client t=0 on the clock
    recs = []
    for a, r in zip(adds[:n], rows[:n]):
        client = float(r["ttft_s"])
        server = first_out.get(a["rid"], float("nan")) - a["t"]
        sent = offset + float(r["arrival_s"])
        # every step that overlaps the request's wait (one in progress when it arrived included)
        inside = [s for s in steps if s["t1"] > a["t"] and s["t0"] < a["t"] + server]
        recs.append({"arrival_s": float(r["arrival_s"]), "client_ttft": client, "server_ttft": server,
                     "to_server": a["t"] - sent, "steps": len(inside),
                     "slow_steps": sum(s["slow"] for s in inside),
                     "step_time": sum(s["dur"] for s in inside),
                     "prefill_steps": sum(s["kind"] == "prefill" for s in inside),
                     # run-queue delay of the engine thread or a worker in those steps: the host's share
                     "stall": sum(max(s["delay_ns"] / 1e9, s["worker_delay"]) for s in inside),
                     # a core held off every real-time task while the request waited (the canary's `late`)
                     "held_off": max((min(g["t1"], a["t"] + server) - max(g["t0"], sent) for g in ev["late"]
                                      if g["t1"] > sent and g["t0"] < a["t"] + server), default=0.0)})
    recs.sort(key=lambda x: -x["client_ttft"])
    c = [x["client_ttft"] for x in recs]
    sv = [x["server_ttft"] for x in recs]
    out["requests"] = {"n": n, "client_p50_ms": statistics.median(c) * 1e3, "client_p99_ms": pct(c, 0.99) * 1e3,
                       "server_p50_ms": statistics.median(sv) * 1e3, "server_p99_ms": pct(sv, 0.99) * 1e3,
                       "slowest": recs[:8]}
    print(f"TTFT of {n} requests, client p50 {statistics.median(c) * 1e3:.1f} p99 {pct(c, 0.99) * 1e3:.1f} ms; "
          f"API server (added -> first token back) p50 {statistics.median(sv) * 1e3:.1f} "
          f"p99 {pct(sv, 0.99) * 1e3:.1f} ms")
    print("slowest requests: arrival s | client TTFT ms | API-server TTFT ms | client->API-server ms | engine steps "
          "in it (slow, with a prefill) | their time ms")
    for x in recs[:8]:
        print(f"  {x['arrival_s']:7.2f} | {x['client_ttft'] * 1e3:7.1f} | {x['server_ttft'] * 1e3:7.1f} | "
              f"{x['to_server'] * 1e3:6.1f} | {x['steps']} ({x['slow_steps']}, {x['prefill_steps']}) | "
              f"{x['step_time'] * 1e3:.1f} | stall {x['stall'] * 1e3:.1f} | held off {x['held_off'] * 1e3:.1f}")
    # the requests at or above the p95 TTFT: what their wait holds
    top = [x for x in recs if x["client_ttft"] >= pct(c, 0.95)]
    late = ev["late"]
    if late:
        held = [g["t1"] - g["t0"] for g in late]
        out["held_off"] = {"n": len(late), "per_min": len(late) / ((hi - lo) / 60),
                           "median_ms": statistics.median(held) * 1e3, "max_ms": max(held) * 1e3,
                           "total_s": sum(held)}
        print(f"canary: a core held off real-time tasks {len(late)} times in {hi - lo:.0f} s (>6 ms; median "
              f"{statistics.median(held) * 1e3:.1f} ms, max {max(held) * 1e3:.1f} ms, "
              f"{sum(held) / (hi - lo):.1%} of core-time)")
    cause = {"host stall (run-queue delay > 20 ms in its steps)": 0, "behind other prefills (>= 2 prefill steps)": 0,
             "neither": 0}
    for x in top:
        key = ("host stall (run-queue delay > 20 ms in its steps)" if x["stall"] > 0.02 or x["held_off"] > 0.02 else
               "behind other prefills (>= 2 prefill steps)" if x["prefill_steps"] >= 2 else "neither")
        cause[key] += 1
    out["requests"]["top5pct_causes"] = cause
    print(f"requests at or above the p95 TTFT ({len(top)}): {cause}")
    stalls = [s for s in steps if max(s["delay_ns"] / 1e9, s["worker_delay"]) > 0.03]
    out["stalls"] = {"n": len(stalls), "per_min": len(stalls) / ((hi - lo) / 60),
                     "median_ms": statistics.median([max(s["delay_ns"] / 1e9, s["worker_delay"]) for s in stalls]) * 1e3
                     if stalls else None}
    print(f"steps with a run-queue delay > 30 ms: {len(stalls)} in {hi - lo:.0f} s, median delay "
          f"{out['stalls']['median_ms'] or 0:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
