"""Measure gloo collectives between processes on this host and print a `loopback` catalog entry.

    python scripts/calibrate_loopback.py [--world 2] [--iters 20] [--threads 1]

Why: the `loopback` link of the hardware catalog (processes on one machine, what the measured cpu
backend's multi-process strategies use) should carry numbers from this kind of host, not a guess.
Each of `world` processes (torch.multiprocessing spawn, gloo, MASTER_ADDR=127.0.0.1) all-reduces float32
buffers of a few sizes; every iteration starts after a barrier and its time is the slowest rank's, and
the median over iterations is kept. The printed entry is in the cost model's terms
(llmsim/costmodel/collectives.py, ring all-reduce over p ranks):

    t(S) = base + 2(p-1) * latency_s + 2 S (p-1)/p / bandwidth_bytes_per_s

so `bandwidth_bytes_per_s` is the bus bandwidth 2 S (p-1)/p / t at the largest size and `latency_s`
is (t(smallest) - base) / (2(p-1)). A least-squares fit of t(S) over all sizes is printed alongside.
All-gather and reduce-scatter (FSDP's collectives) are timed at the largest size too; what each reaches
of that bandwidth in the ring model is the entry's `collective_efficiency` (gloo's reduce-scatter is
much slower than its all-reduce).
Loopback numbers move with load on the machine: run it on an idle host and say so in `source`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEFAULT_SIZES = (4, 4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20)
COLLECTIVE_BASE_LATENCY_S = 8.4e-6  # the cost model's fixed cost per collective (NCCL tuning.cc baseLat)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, sizes: list[int], iters: int, threads: int,
          queue: "mp.SimpleQueue[dict[int, float]]") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    medians: dict[tuple[str, int], float] = {}
    for size in sizes:
        full = torch.ones(max(size // 4, world), dtype=torch.float32)
        shard = torch.ones(full.numel() // world, dtype=torch.float32)
        full = full[:shard.numel() * world]
        calls = {"all-reduce": lambda: dist.all_reduce(full)}
        if size == max(sizes):  # the other two in the bandwidth regime only (FSDP's collectives)
            # torch 2.13 names (the *_into_tensor / *_tensor spellings are deprecated there)
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
            calls["all-gather"] = lambda: gather(full, shard)
            calls["reduce-scatter"] = lambda: scatter(shard, full)
        for op, call in calls.items():
            for _ in range(3):
                call()
            times = []
            for _ in range(iters):
                dist.barrier()
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            slowest = torch.tensor(times, dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            medians[(op, size)] = statistics.median(slowest.tolist())
    if rank == 0:
        queue.put(medians)
    dist.destroy_process_group()


def measure(world: int, sizes: list[int], iters: int, threads: int) -> dict[tuple[str, int], float]:
    """Median time (slowest rank) per (collective, buffer size in bytes): all-reduce at every size,
    all-gather and reduce-scatter at the largest."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_rank, args=(world, _free_port(), sizes, iters, threads, queue), nprocs=world,
                       start_method="spawn")
    return queue.get()


def fit(times: dict[int, float]) -> tuple[float, float]:
    """Least squares t = a + b S over the sizes: (a seconds, b seconds per byte)."""
    xs, ys = list(times), list(times.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def calibrate(world: int = 2, sizes: list[int] | None = None, iters: int = 20, threads: int = 1,
              name: str = "loopback", script: str = "scripts/calibrate_loopback.py") -> tuple[dict, list[str]]:
    """Measure, and return (the link entry as a dict, the comment lines: per-size table and fit).

    `name` is the entry's name (`loopback` for the built-in catalog; another name for a file of your own),
    `script` the program named in `source`.
    """
    p = world
    measured = measure(p, sorted(sizes or DEFAULT_SIZES), iters, threads)
    times = {size: t for (op, size), t in measured.items() if op == "all-reduce"}
    ring = 2 * (p - 1) / p
    lines = [f"gloo all-reduce, {p} processes on {socket.gethostname()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, median of {iters}",
             f"{'bytes':>12} {'time_us':>12} {'bus_GB/s':>10}"]
    for size, t in times.items():
        lines.append(f"{size:>12} {t * 1e6:>12.1f} {ring * size / t / 1e9:>10.3f}")
    largest, smallest = max(times), min(times)
    bandwidth = ring * largest / times[largest]
    latency = max(times[smallest] - COLLECTIVE_BASE_LATENCY_S, 0.0) / (2 * (p - 1))
    a, b = fit(times)
    lines.append(f"least-squares fit t = a + b*S: a = {a * 1e6:.1f} us (latency_s {max(a, 0) / (2 * (p - 1)):.3g}), "
                 f"bus bandwidth {ring / b / 1e9:.3f} GB/s" if b > 0 else "fit: no positive slope")
    # all-gather and reduce-scatter against the ring model with the all-reduce's bandwidth and latency:
    # t = base + (p-1) latency + S (p-1)/p / (bandwidth * efficiency)  ->  efficiency
    efficiency = {}
    for op in ("reduce-scatter", "all-gather"):
        t = measured.get((op, largest))
        if t is None:
            continue
        wire = t - COLLECTIVE_BASE_LATENCY_S - (p - 1) * latency
        efficiency[op] = float(f"{min(4.0, (p - 1) / p * largest / bandwidth / wire):.3g}") if wire > 0 else 4.0
        lines.append(f"{op} {largest >> 20} MB: {t * 1e3:.2f} ms = {efficiency[op]:.2f} of the all-reduce's "
                     f"bandwidth in the ring model")
    today = dt.date.today().isoformat()
    entry = {"name": name, "type": "link", "bandwidth_bytes_per_s": float(f"{bandwidth:.3g}"),
             "latency_s": float(f"{latency:.3g}"), "efficiency": 1.0, "collective_efficiency": efficiency,
             "source": (f"measured by {script} on {socket.gethostname()} ({os.cpu_count()} cores, torch "
                        f"{torch.__version__}, gloo, {p} processes, {threads} thread(s) each), {today}: "
                        f"{bandwidth / 1e9:.2f} GB/s bus bandwidth at {largest >> 20} MB, "
                        f"{times[smallest] * 1e6:.0f} us for a {smallest}-byte all-reduce")}
    return entry, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--iters", type=int, default=20, help="timed all-reduces per size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(DEFAULT_SIZES), help="buffer sizes in bytes")
    args = parser.parse_args()
    entry, lines = calibrate(args.world, args.sizes, args.iters, args.threads)
    for line in lines:
        print(f"# {line}")
    p, largest, smallest = args.world, max(args.sizes), min(args.sizes)
    print(f"""  - name: {entry['name']}
    type: link
    bandwidth_bytes_per_s: {entry['bandwidth_bytes_per_s']:.3g}       # gloo all-reduce bus bandwidth, {largest >> 20} MB, {p} local processes
    latency_s: {entry['latency_s']:.3g}                 # (t({smallest} B) - base) / (2(p-1)) ring steps
    efficiency: 1.0                    # the bandwidth is already a measured collective rate
    collective_efficiency: {entry['collective_efficiency']}   # of that bandwidth, at {largest >> 20} MB
    source: "{entry['source']}\"""")


if __name__ == "__main__":
    main()
