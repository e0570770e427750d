#!/usr/bin/env python
"""How steady is this host's CPU? Run before trusting a measured p99 (scripts/serve_vllm_cpu.py).

Times one fixed piece of work (a Python multiply-add loop) many times, pinned to one core, with a sleep between
tries, and prints min / p50 / p90 / max in ms and max / min. On a dedicated core the spread is a few percent; on
the development guest (Firecracker, AMD EPYC vCPUs) it was 12.3-23.7 ms, ~1.9x, even at real-time priority 20
(`chrt -r 20`, above the measured engine's 10), so the vCPU's speed varies under the guest from one slice to the next and a latency
tail measured there is partly the host's (docs/validation.md, "Re-measured on an idle guest").

Usage: [chrt -r 20] python scripts/host_noise.py [--core N] [--tries 60] [--iterations 300000] [--gap-s 0.05]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def work(iterations: int) -> int:
    """The fixed piece of work: `iterations` integer multiply-adds in the interpreter (no memory traffic)."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def spread(core: int, tries: int, iterations: int, gap_s: float) -> list[float]:
    """The work's wall time in ms, `tries` times on `core`, sorted."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    times = []
    for _ in range(tries):
        start = time.perf_counter()
        work(iterations)
        times.append((time.perf_counter() - start) * 1e3)
        time.sleep(gap_s)
    return sorted(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="A dedicated core gives max/min within a few percent; the development "
                                            "guest gave ~1.9 even under chrt -r 20.")
    parser.add_argument("--core", type=int, default=0, help="the core to pin to (default 0)")
    parser.add_argument("--tries", type=int, default=60, help="how many times to time the work (>= 2; default 60)")
    parser.add_argument("--iterations", type=int, default=300_000,
                        help="multiply-adds per try (>= 10,000 so a try lasts ~0.5 ms or more; default 300,000, "
                             "~13-24 ms here)")
    parser.add_argument("--gap-s", type=float, default=0.05,
                        help="sleep between tries in seconds (0 to 10; default 0.05: one try per scheduler slice)")
    args = parser.parse_args(argv)
    if args.tries < 2 or args.iterations < 10_000 or not 0 <= args.gap_s <= 10:
        parser.error("--tries must be >= 2, --iterations >= 10000, --gap-s between 0 and 10 seconds")
    if hasattr(os, "sched_getaffinity") and args.core not in os.sched_getaffinity(0):
        parser.error(f"--core {args.core}: allowed: {sorted(os.sched_getaffinity(0))}")
    t = spread(args.core, args.tries, args.iterations, args.gap_s)
    p90 = t[min(len(t) - 1, int(0.9 * len(t)))]
    print(f"core {args.core}, {len(t)} tries: min {t[0]:.1f} ms, p50 {statistics.median(t):.1f}, p90 {p90:.1f}, "
          f"max {t[-1]:.1f}; max/min {t[-1] / t[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
