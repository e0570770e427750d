"""Where an eager decode token's time goes on a GPU: the kernels it launches, their GPU time, and the wall time.

The cuda backend runs llmsim's own model eagerly (no CUDA graphs), so a small decode step can be bound by the host
launching its kernels rather than by the GPU running them. This script measures both sides of one decode token of
a scenario (default: scenarios/gpu-model-check.yaml as decode, batch 16 x 512 tokens, the --set overrides of
scripts/gpu-check.sh):

* wall seconds per token, CUDA events around `--tokens` decode_one calls after a prefill, the median of three such
  windows; every pass decodes the same positions, which untimed passes visited first (cuDNN's attention builds an
  execution plan for each KV length it has not seen, ~50 ms of host time: a first pass over new positions measures
  that, not the decode);
* GPU operations per token and the GPU's busy seconds per token, from torch.profiler over the same calls
  (CUDA activity: every kernel, memcpy and memset the stream ran);
* host seconds per launch if the token is launch-bound: wall per token / GPU operations per token.

The GPU-busy time is what a graph-replayed decode would take, the thing the roofline's decode step prices; the wall
time is what this eager model takes. Prints one JSON object. Needs a CUDA GPU (exits 1 without one).
Usage: python scripts/gpu_decode_launches.py [scenario] [--set key=value ...] [--tokens 16]. With no --set, the
built-in scenario gets gpu-check.sh's decode sets (batch 16 x 512 tokens) and a scenario of yours only
workload.mode=decode; --set adds to them (a later setting of a key wins).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from llmsim.config import SharingChoice, load_scenario
from llmsim.errors import ScenarioError
from llmsim.wording import whole_number_option
from llmsim.workload.step import WorkloadStep

DEFAULT_SETS = ["workload.mode=decode", "workload.batch=16", "workload.model.seq_len=512"]
WARMUP_PASSES = 2  # untimed passes over the same positions first: allocator, cuBLAS heuristics, GPU clocks, and
# cuDNN attention's execution plan for each KV length (a length first seen costs ~50 ms of host time: 68 ms a token
# on the first pass over new positions, 14 ms on the second, measured on an H200; docs/accelerators.md)
WINDOWS = 3  # timed windows of --tokens tokens each; the median is reported, all three are printed


MAX_TOKENS = 1024  # --tokens: every pass (warm-up, timed, profiled) decodes this many tokens after a prefill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="scenarios/gpu-model-check.yaml")
    parser.add_argument("--set", action="append", default=None, dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--tokens", default="16", help=f"decode tokens timed and profiled (1 to {MAX_TOKENS})")
    args = parser.parse_args(argv)
    per_window, problem = whole_number_option("--tokens", args.tokens, 1, MAX_TOKENS)
    if problem is not None or per_window is None:
        print(f"gpu_decode_launches: {problem}", file=sys.stderr)
        return 2
    args.tokens = per_window
    # the built-in scenario as scripts/gpu-check.sh runs it; a scenario of the user's as it is, made a decode
    default = args.scenario == parser.get_default("scenario")
    sets = (DEFAULT_SETS if default else ["workload.mode=decode"]) + (args.sets or [])   # --set adds to these
    tokens = args.tokens + 1  # every pass decodes the same positions: the prompt's end .. + --tokens
    try:  # the scenario first: a bad file or --set is one line, with or without a GPU
        scenario = load_scenario(args.scenario, sets + [f"workload.decode_tokens={tokens}"])
    except ScenarioError as exc:
        print(f"gpu_decode_launches: {exc}", file=sys.stderr)
        return 2
    if scenario.workload.mode != "decode":
        print(f"gpu_decode_launches: {args.scenario}: workload.mode is {scenario.workload.mode!r}; allowed: decode "
              f"(--set workload.mode=decode)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_decode_launches: no CUDA device", file=sys.stderr)
        return 1
    workload = scenario.workload
    step = WorkloadStep(workload, SharingChoice.resolve(scenario.sharing, workload.model), seed=scenario.seed,
                        device="cuda")
    seq = workload.model.seq_len
    with torch.inference_mode():
        for _ in range(WARMUP_PASSES):
            token, cache = step.prefill(step.cache_len)
            for i in range(args.tokens):
                token = step.decode_one(token, cache, seq + i)
        torch.cuda.synchronize()

        walls, host = [], []
        for _ in range(WINDOWS):
            token, cache = step.prefill(step.cache_len)   # untimed: each window decodes the warmed positions
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            issued = time.perf_counter()
            for i in range(args.tokens):
                token = step.decode_one(token, cache, seq + i)
            host.append((time.perf_counter() - issued) / args.tokens)  # the host's loop, not waiting for the GPU
            end.record()
            torch.cuda.synchronize()
            walls.append(start.elapsed_time(end) / 1e3 / args.tokens)
        wall_s = statistics.median(walls)

    # The same model's whole decode step as the cuda backend times it (llmsim.measure.loop): a prefill, the
    # first_token mark, then the remaining tokens; TPOT = (step - TTFT) / (tokens - 1).
    step_tpots = []
    for _ in range(2):
        torch.cuda.synchronize()
        marks = {"start": torch.cuda.Event(enable_timing=True)}
        marks["start"].record()

        def mark(label: str) -> None:
            marks[label] = torch.cuda.Event(enable_timing=True)
            marks[label].record()

        step.step(mark)
        mark("end")
        torch.cuda.synchronize()
        ttft = marks["start"].elapsed_time(marks["first_token"]) / 1e3
        whole = marks["start"].elapsed_time(marks["end"]) / 1e3
        step_tpots.append((whole - ttft) / (workload.decode_tokens - 1))

    with torch.inference_mode():
        position = seq
        token, cache = step.prefill(step.cache_len)

        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], acc_events=True) as prof:
            for _ in range(args.tokens):
                token = step.decode_one(token, cache, position)
                position += 1
            torch.cuda.synchronize()
    events = prof.events()
    gpu_ops = [e for e in events if e.device_type == DeviceType.CUDA]
    runtime: dict[str, list[float]] = {}  # CUDA runtime/driver calls on the host: launches, synchronisations
    for e in events:
        if e.device_type == DeviceType.CPU and e.name.startswith("cu"):
            runtime.setdefault(e.name, []).append(e.time_range.elapsed_us())
    runtime_per_token = {name: {"calls": len(d) / args.tokens, "us": round(sum(d) / args.tokens, 1)}
                         for name, d in sorted(runtime.items(), key=lambda kv: -sum(kv[1]))[:6]}
    busy_s = sum(e.time_range.elapsed_us() for e in gpu_ops) / 1e6 / args.tokens
    per_token = len(gpu_ops) / args.tokens
    kinds = {"memcpy": sum("memcpy" in e.name.lower() for e in gpu_ops),
             "memset": sum("memset" in e.name.lower() for e in gpu_ops)}
    kinds["kernels"] = len(gpu_ops) - kinds["memcpy"] - kinds["memset"]
    print(json.dumps({
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "model": workload.model.preset, "batch": workload.batch, "prompt_tokens": seq, "dtype": workload.dtype,
        "tokens_timed": args.tokens,
        "wall_s_per_token": round(wall_s, 7), "wall_s_per_token_windows": [round(w, 7) for w in walls],
        "host_loop_s_per_token_windows": [round(h, 7) for h in host],
        "decode_step_tpot_s": [round(t, 7) for t in step_tpots],
        "gpu_busy_s_per_token": round(busy_s, 7),
        "cuda_runtime_calls_per_token": runtime_per_token,
        "gpu_ops_per_token": per_token,
        "gpu_ops_per_token_by_kind": {k: v / args.tokens for k, v in kinds.items()},
        "gpu_busy_fraction": round(busy_s / wall_s, 4),
        "host_s_per_launch_if_launch_bound": round(wall_s / per_token, 9) if per_token else None,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
