"""This host's basic rates, measured by short probes once per process and kept per machine, dtype and
thread count as the best figures seen so far.

Three numbers a CPU cost model needs and no datasheet gives, reported by the cpu backend (the xla
backend's PJRT CPU device takes its MFU peak from here too):
  * peak FLOP/s: a square matmul (the denominator of MFU),
  * streaming bandwidth: an elementwise add over activation-sized operands (what norms, activations and
    residual adds move) and over vocabulary-sized ones (embedding gradients, the optimizer's state),
  * per-operator cost: a chain of tiny autograd ops, forward and backward (eager PyTorch's dispatch,
    autograd bookkeeping and kernel launch, paid once per operator whatever its size).
`llmsim calibrate` bounds its fit by them: the effective bandwidth between the two streaming rates, the
per-operator cost above the probed one; what no probe shows (how close GEMMs and attention get to the
peak) stays free.

Another process on the host can only slow a probe down, never speed it up, so the least disturbed figure
is the best one ever measured: each process probes once (~1.5 s) and the cache keeps, rate by rate, the
best of what it held and what was just measured. A single cached figure from a busy moment would
otherwise stand for the machine forever (on the development host a probe cached during a mutation run
read 36 GFLOP/s and 1.7 GB/s, against 182 GFLOP/s and 171 GB/s when idle, and every calibration fitted
to it was 3x off).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmsim.environment import cache_dir as user_cache_dir
from llmsim.environment import cpu_model

PROBE_SIZE = 1024          # square matmul edge; large enough to reach the BLAS plateau on a few cores
PROBE_SECONDS = 0.3        # per probe, once per process
# 1 Mi float32 elements = 4 MiB per operand: the size of one activation of the shapes this backend runs
# (batch x seq x hidden = 8 x 128 x 1024, or 4 x 256 x 1024), so the probe streams from the caches the
# workload's own elementwise ops stream from, not from a DRAM-sized array it never touches.
STREAM_ELEMENTS = 1 << 20
# 16 Mi elements = 64 MiB per operand: the size of a vocabulary-sized tensor (a GPT-2 embedding and its
# gradient and Adam moments are 154 MB each), far beyond a core's L2: the rate of the step's largest operands.
STREAM_LARGE_ELEMENTS = 1 << 24
OVERHEAD_CHAIN = 500       # tiny autograd ops per timed chain (forward, then one backward through all)
PROBE_VERSION = 4          # bump when a probe changes: cached numbers of another version are re-measured


@dataclass(frozen=True)
class HostRates:
    peak_flops_per_s: float
    stream_bytes_per_s: float        # activation-sized operands
    stream_large_bytes_per_s: float  # vocabulary-sized operands
    op_overhead_s: float

    def columns(self) -> dict[str, float]:
        """The rates as a row's extra columns: `llmsim calibrate` reads them (peak FLOP/s also feeds MFU)."""
        return asdict(self)

    def best_with(self, other: "HostRates") -> "HostRates":
        """Rate by rate the less disturbed of two measurements: the higher rates, the lower per-operator cost."""
        return HostRates(peak_flops_per_s=max(self.peak_flops_per_s, other.peak_flops_per_s),
                         stream_bytes_per_s=max(self.stream_bytes_per_s, other.stream_bytes_per_s),
                         stream_large_bytes_per_s=max(self.stream_large_bytes_per_s, other.stream_large_bytes_per_s),
                         op_overhead_s=min(self.op_overhead_s, other.op_overhead_s))


def _best(run: object, seconds: float = PROBE_SECONDS) -> float:
    """The shortest of repeated calls of `run` (seconds each) within a time budget: the least disturbed."""
    run()  # type: ignore[operator]
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        run()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def measure_peak_flops(dtype: torch.dtype) -> float:
    """FLOP/s of a square matmul in `dtype`."""
    a = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    return 2 * PROBE_SIZE**3 / _best(lambda: torch.mm(a, b))


def measure_stream_bandwidth(dtype: torch.dtype, elements: int = STREAM_ELEMENTS) -> float:
    """Bytes/s of x + y over `elements` elements (two reads and a write), the output allocated each time
    as an eager operator's is: beyond the allocator's mmap threshold a fresh output costs a page fault per
    page, which on this development host cut the 64 MiB rate from 27 to 10 GB/s (measured 2026-11-29)."""
    x, y = torch.randn(elements).to(dtype), torch.randn(elements).to(dtype)
    return 3 * x.numel() * x.element_size() / _best(lambda: x + y)


def measure_op_overhead() -> float:
    """Seconds per operator of a chain of OVERHEAD_CHAIN one-element multiplications, forward and
    backward: what an operator costs when its arithmetic costs nothing."""
    leaf = torch.ones(1, requires_grad=True)

    def chain() -> None:
        y = leaf
        for _ in range(OVERHEAD_CHAIN):
            y = y * 1.0
        y.backward()
        leaf.grad = None

    return _best(chain) / OVERHEAD_CHAIN


def measure_host_rates(dtype: str) -> HostRates:
    """The three probes for `dtype` now (about 1.5 s in all)."""
    from llmsim.workload.step import TORCH_DTYPES

    torch_dtype = TORCH_DTYPES[dtype]
    return HostRates(peak_flops_per_s=measure_peak_flops(torch_dtype),
                     stream_bytes_per_s=measure_stream_bandwidth(torch_dtype),
                     stream_large_bytes_per_s=measure_stream_bandwidth(torch_dtype, STREAM_LARGE_ELEMENTS),
                     op_overhead_s=measure_op_overhead())


def host_rates(dtype: str, cache_dir: Path | None = None) -> HostRates:
    """The best rates for `dtype` with the current thread count seen on this machine, this process's own
    probes included (module docstring). Probed once per process, dtype and thread count; a cache that
    can't be read or written only loses the earlier figures."""
    return _best_rates(dtype, torch.get_num_threads(), cache_dir)


def _cache_file(dtype: str, threads: int, cache_dir: Path | None) -> tuple[str, Path]:
    key = f"v{PROBE_VERSION}|{cpu_model()}|{os.cpu_count()}|{threads}|{torch.__version__}|{dtype}"
    return key, (cache_dir or user_cache_dir()) / f"host-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def cached_rates(dtype: str, cache_dir: Path | None = None) -> HostRates | None:
    """The rates kept for `dtype` and the current thread count on this machine, without probing; None
    before any run has measured them (what `llmsim hardware` shows for cpu-host)."""
    _, path = _cache_file(dtype, torch.get_num_threads(), cache_dir)
    try:
        return HostRates(**json.loads(path.read_text())["rates"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@functools.cache
def _best_rates(dtype: str, threads: int, cache_dir: Path | None) -> HostRates:
    key, path = _cache_file(dtype, threads, cache_dir)
    rates = measure_host_rates(dtype)
    try:
        rates = rates.best_with(HostRates(**json.loads(path.read_text())["rates"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "rates": asdict(rates)}))
        tmp.replace(path)  # atomic: two processes probing at once never leave half a file
    except OSError:
        pass  # a read-only home only costs the earlier figures
    return rates


def host_peak_flops(dtype: str, cache_dir: Path | None = None) -> float:
    """This host's matmul peak for `dtype` with the current thread count (cached with the other rates)."""
    return host_rates(dtype, cache_dir).peak_flops_per_s
