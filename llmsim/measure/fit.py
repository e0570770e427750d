"""Does a measured case fit, before it allocates anything? A `does-not-fit` row with the numbers instead of
an allocator failure (or the kernel's OOM killer) half-way through building a model that never could fit.

The check is a lower bound, so it refuses only what certainly cannot run: the bytes the real step must hold
whatever the activations turn out to be — the parameters in the dtype they are built in, and in training
their gradients and AdamW's two moments (`exp_avg`, `exp_avg_sq`, the parameter's dtype: torch.optim.AdamW,
as llmsim.workload.step builds it) for the trainable ones. Activations, the KV cache, workspace and the
allocator's fragmentation come on top, so a case that passes may still fail; one that is refused needs at
least the bytes named. Available memory: the host's MemAvailable (and a cgroup limit, where one is set) for
the cpu backend; the free memory of each GPU (`torch.cuda.mem_get_info`) for cuda.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from llmsim.strategy import Layout
from llmsim.workload.profile import WorkloadProfile

ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, each a tensor like the parameter


@dataclass(frozen=True)
class Need:
    """Bytes a run must hold at least, by kind."""

    params: float
    grads: float = 0.0
    optimizer: float = 0.0

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer

    def parts(self) -> str:
        named = (("parameters", self.params), ("gradients", self.grads), ("AdamW moments", self.optimizer))
        return " + ".join(f"{name} {_gb(v)}" for name, v in named if v > 0)


def _gb(value: float) -> str:
    return f"{value / 1e9:.1f} GB"  # decimal GB, as the catalog and the modeled does-not-fit rows write it


def _shares(profile: WorkloadProfile, train: bool) -> tuple[float, float, float]:
    trainable = profile.trainable_param_bytes if train else 0.0
    return float(profile.param_bytes), float(trainable), float(trainable * ADAMW_MOMENTS)


def host_need(profile: WorkloadProfile, replicas: int, zero: int, train: bool) -> Need:
    """All ranks of a run on one host, `replicas` = dp * cp of its layout (1 for one process): each replica
    holds a whole copy of what ZeRO does not shard across them (stage 1 the moments, 2 also the gradients, 3
    also the parameters); tensor and pipeline parallelism split a copy without adding to it (their
    replicated norms and embeddings only add), and context-parallel ranks hold the weights as dp ones do."""
    params, grads, moments = _shares(profile, train)
    return Need(params * (1 if zero >= 3 else replicas), grads * (1 if zero >= 2 else replicas),
                moments * (1 if zero >= 1 else replicas))


def device_need(profile: WorkloadProfile, layout: Layout, zero: int, train: bool) -> Need:
    """One device's share on average (the busiest one holds at least this): the ranks' total over the ranks."""
    total = host_need(profile, layout.dp * layout.cp, zero, train)
    n = layout.world
    return Need(total.params / n, total.grads / n, total.optimizer / n)


def host_available_bytes(meminfo: Path = Path("/proc/meminfo"),
                         cgroup: Path = Path("/sys/fs/cgroup")) -> tuple[float, str] | None:
    """Bytes this host can still give a process, and where the figure comes from; None where unknown (not
    Linux). MemAvailable is the kernel's estimate of what can be allocated without swapping; a cgroup v2
    limit (memory.max - memory.current) lowers it inside a container."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        available, source = float(fields["MemAvailable"].split()[0]) * 1024, "MemAvailable of this host"
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            left = float(limit) - float((cgroup / "memory.current").read_text().strip())
            if left < available:
                available, source = max(left, 0.0), "this container's memory limit (cgroup memory.max) left"
    except (OSError, ValueError):
        pass
    return available, source


def fit_problem(need: Need, available: tuple[float, str] | None, what: str) -> str | None:
    """None when `need` fits in `available` (or nothing is known of it); else the row's error, one line with
    the bytes needed and available: 'needs at least 552.0 GB on this host (parameters ... ) > 20.1 GB ...'."""
    if available is None or math.isnan(available[0]) or need.total <= available[0]:
        return None
    return (f"needs at least {_gb(need.total)} {what} ({need.parts()}) > {_gb(available[0])} available "
            f"({available[1]}); checked before allocating, activations not counted")


# torch's CPU allocator when malloc fails: c10/core/impl/alloc_cpu.cpp, "DefaultCPUAllocator: can't allocate memory:
# you tried to allocate N bytes" ("not enough memory: ..." in other versions; a RuntimeError); Python's own
# MemoryError where a Python object could not be made
_TRIED_TO_ALLOCATE = re.compile(r"DefaultCPUAllocator: .*you tried to allocate (\d+) bytes")


def allocation_failure(exc: BaseException, available: tuple[float, str] | None = None) -> str | None:
    """A does-not-fit reason where a measured step failed to allocate its memory (what `fit_problem`'s lower bound
    could not foresee: activations, logits, the inputs), naming the bytes asked and, given, the host's available
    memory (host_available_bytes); None for any other exception, which stays a failure."""
    if isinstance(exc, MemoryError):
        asked = "memory"
    elif isinstance(exc, RuntimeError) and (found := _TRIED_TO_ALLOCATE.search(str(exc))):
        asked = _gb(float(found.group(1)))
    else:
        return None
    have = f" with {_gb(available[0])} available ({available[1]})" if available else ""
    return (f"the step could not allocate {asked}{have}: its activations, logits and inputs come on top of the "
            f"parameters checked before it ran; allowed: a smaller batch or micro_batch (or seq_len)")
