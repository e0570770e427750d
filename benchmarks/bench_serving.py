#!/usr/bin/env python
"""How fast the serving simulation runs: 10,000 requests on 8 replicas of Llama-3-70B at TP4 (32 H100s).

    python benchmarks/bench_serving.py [--requests 10000] [--rate 32] [--backend cluster]

Prints the wall time of the profile (traced once) and of the simulation, SimPy events per wall second and
simulated seconds per wall second, with the run's throughput and latencies so a slow-down that changes
the answer shows too. Nothing is asserted on time: the host may be shared.
"""

from __future__ import annotations

import argparse
import time

from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases


def scenario(requests: int, rate: float, backend: str) -> dict:
    """Llama-3-70B, TP4, 8 replicas on 4 nodes of 8 H100s; prompts and answers with long tails (lognormal
    around the serving issue's 467 and 256 tokens), chunked prefill, least-outstanding routing."""
    return {"name": "bench-serving", "workload": {"model": {"preset": "llama3-70b"}, "dtype": "bfloat16"},
            "strategies": [{"name": "tp4", "tp": 4}],
            "serving": {"requests": requests, "arrival": {"kind": "poisson", "rate": rate},
                        "lengths": {"input": {"kind": "lognormal", "median": 467, "sigma": 0.8},
                                    "output": {"kind": "lognormal", "median": 256, "sigma": 0.8}},
                        "scheduler": {"kind": "chunked-prefill", "max_num_seqs": 256, "max_batched_tokens": 8192},
                        "replicas": 8, "router": "least-outstanding",
                        "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "percentile": 99}},
            "backends": {backend: {"hardware": "h100-sxm", "nodes": 4, "devices_per_node": 8}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=32.0, help="requests/s offered to the 8 replicas")
    parser.add_argument("--backend", default="cluster", choices=["cluster", "roofline"])
    args = parser.parse_args()
    registry = BackendRegistry.from_manager(get_plugin_manager())
    planned = plan_cases(parse_scenario(scenario(args.requests, args.rate, args.backend)), registry)[0]
    backend = planned.backend(RunContext())
    from llmsim.modeled_serving import serving_profile

    start = time.perf_counter()
    serving_profile(planned.case.workload, planned.case.sharing)  # traced once, cached for the run below
    profile_s = time.perf_counter() - start
    start = time.perf_counter()
    row = backend.run(planned.case, planned.settings)
    total_s = time.perf_counter() - start
    extra = row.extra
    print(f"{args.requests} requests, 8 x Llama-3-70B TP4 on 32 H100 ({args.backend}), poisson {args.rate:g}/s")
    print(f"  profile (traced once)      {profile_s:8.2f} s")
    print(f"  simulation                 {extra['sim_wall_s']:8.2f} s wall ({total_s:.2f} s with KV sizing "
          f"and metrics)")
    print(f"  iterations                 {extra['iterations']:8d}")
    print(f"  SimPy events / wall s      {extra['events_per_s']:8.0f}")
    print(f"  simulated s / wall s       {extra['sim_s_per_wall_s']:8.1f} ({extra['duration_s']:.0f} simulated s)")
    print(f"  requests/s {row.requests_per_s:.2f}, output tokens/s {row.output_tokens_per_s:.0f}, "
          f"TTFT p50/p99 {row.ttft_p50_s * 1e3:.0f}/{row.ttft_p99_s * 1e3:.0f} ms, "
          f"TPOT p50/p99 {row.tpot_p50_s * 1e3:.1f}/{row.tpot_p99_s * 1e3:.1f} ms, "
          f"goodput {row.goodput_rps:.2f} req/s, preemptions {row.preemptions}, "
          f"rejected {extra['requests_rejected']}")


if __name__ == "__main__":
    main()
