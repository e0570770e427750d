"""Measured step time of DP, FSDP, TP and PP at world size 2 on this host (gloo), through the cpu backend.

    python benchmarks/bench_distributed.py [--steps 3] [--warmup 1] [--threads N]

Why: the multi-process path is what calibrates the modeled backends against reality, so its numbers
should be easy to reproduce. Each strategy runs as two processes (llmsim.distributed); the single
process row is the same global batch on one process with one rank's threads (m*C of T = m*C/n).
The table shows the measured step, the ideal m*C/n, their ratio (scaling efficiency), exposed
communication and pipeline bubble, and the largest rank's peak memory. A modeled column is left for
when a roofline of `cpu-host` exists.
"""

from __future__ import annotations

import argparse
from typing import Any

from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim_plugins.cpu import CpuBackend, CpuSettings

# Small enough for a 2-core host (a step is a fraction of a second), large enough that matmuls, not
# Python, dominate: 4 layers of width 256, 128 tokens, batch 8.
MODEL = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 8, "ffn_hidden": 1024, "vocab": 4096, "seq_len": 128,
         "activation": "gelu", "norm": "layernorm", "positions": "learned"}
STRATEGIES: list[dict[str, Any]] = [
    {"name": "dp2", "dp": 2},
    {"name": "fsdp2", "dp": 2, "zero": 3},
    {"name": "tp2", "tp": 2},
    {"name": "tp2-sp", "tp": 2, "sp": True},
    {"name": "pp2-gpipe", "pp": 2, "schedule": "gpipe", "micro_batch": 2},
    {"name": "pp2-1f1b", "pp": 2, "schedule": "1f1b", "micro_batch": 2},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="per process (default: cores / 2)")
    args = parser.parse_args()
    scenario = parse_scenario({"name": "bench-distributed",
                               "workload": {"model": MODEL, "mode": "train", "batch": 8, "dtype": "float32"},
                               "strategies": STRATEGIES, "backends": {"cpu": {}}})
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    settings = CpuSettings(steps=args.steps, warmup=args.warmup, threads=args.threads)
    backend = CpuBackend(RunContext())
    header = (f"{'strategy':<11} {'status':<7} {'step_s':>8} {'single_s':>8} {'ideal_s':>8} {'eff':>5} "
              f"{'comm_s':>7} {'bubble_s':>8} {'other_s':>7} {'peakMB':>7} {'tok/s':>8}")
    print(header)
    print("-" * len(header))
    for planned in plan_cases(scenario, registry):
        r = backend.run(planned.case, settings)
        if r.status != "ok":
            print(f"{r.case:<11} {r.status:<7} {r.error}")
            continue
        single = r.extra.get("single_process_step_s", float("nan"))
        print(f"{r.case:<11} {r.status:<7} {r.step_time_s:>8.4f} {single:>8.4f} {r.t_ideal_s:>8.4f} "
              f"{r.scaling_efficiency:>5.2f} {r.comm_time_s:>7.4f} {r.bubble_time_s:>8.4f} {r.other_time_s:>7.4f} "
              f"{r.peak_memory_bytes_per_device / 2**20:>7.1f} {r.tokens_per_s:>8.0f}")
    print(f"\nworld size 2, threads per process: {r.extra.get('threads')}; step = slowest rank, mean of "
          f"{args.steps}; single = one process, same global batch; ideal = m*C/n; eff = ideal / step")


if __name__ == "__main__":
    main()
