"""Validity rules of parallelism and parameter sharing, as pure functions.

Each check returns None when the strategy is valid, or (key, message) naming the offending key
relative to the strategy (or sharing block) and what would be allowed. The caller prefixes the path.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsim.config import ModelSpec, Sharing, Strategy, Workload

Problem = tuple[str, str] | None


def _divisors(n: int, limit: int = 64) -> str:
    return ", ".join(str(d) for d in range(1, min(n, limit) + 1) if n % d == 0)


def check_strategy_shape(s: Strategy, w: Workload) -> Problem:
    """Rules that depend only on the model and the strategy, not on the device count."""
    m = w.model
    if m.heads % s.tp:
        return "tp", f"{s.tp} does not divide heads={m.heads} (allowed: {_divisors(m.heads)})"
    kv = m.kv_heads or m.heads
    if kv % s.tp and s.tp % kv:
        return "tp", (f"{s.tp} and kv_heads={kv} must divide one another (KV heads are split when tp <= kv_heads, "
                      f"replicated when tp > kv_heads)")
    if (m.ffn_hidden or 0) % s.tp:
        return "tp", f"{s.tp} does not divide ffn_hidden={m.ffn_hidden}"
    if s.sp and s.tp == 1:
        return "sp", "sequence parallelism shards activations across the tensor-parallel group; it needs tp > 1"
    if s.sp and m.seq_len % s.tp:
        return "sp", f"seq_len={m.seq_len} is not divisible by tp={s.tp}"
    if s.virtual_stages > 1 and s.schedule != "interleaved":
        return "virtual_stages", f"{s.virtual_stages} needs schedule: interleaved (got {s.schedule})"
    if s.schedule == "interleaved" and s.pp == 1:
        return "schedule", "interleaved needs pp > 1"
    stages = s.pp * s.virtual_stages
    if m.layers % stages:
        what = "pp" if s.virtual_stages == 1 else "pp*virtual_stages"
        return "pp", f"{what}={stages} does not divide layers={m.layers} (allowed pp: {_divisors(m.layers)})"
    if m.seq_len % s.cp:
        return "cp", f"{s.cp} does not divide seq_len={m.seq_len}"
    if s.cp > 1 and w.mode == "decode":
        return "cp", "context parallelism splits a long prompt; decode generates one token at a time (use cp: 1)"
    return None


def check_sharing(sharing: Sharing, m: ModelSpec) -> Problem:
    if sharing.layer_groups is not None and m.layers % sharing.layer_groups:
        return "layer_groups", (f"{sharing.layer_groups} does not divide layers={m.layers} "
                                f"(allowed: {_divisors(m.layers)})")
    return None


@dataclass(frozen=True)
class Layout:
    """A strategy placed on a world of devices: the resolved degrees a backend runs."""

    dp: int
    tp: int
    pp: int
    cp: int
    micro_batch: int
    microbatches: int

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp


def resolve_layout(s: Strategy, w: Workload, world: int | None, backend: str) -> Layout | tuple[str, str]:
    """Fit a strategy to a backend's world size.

    `world` is the device count a backend fixes (a modeled cluster), or None when the backend runs
    whatever the strategy asks for (dp omitted then means 1). Returns the Layout or (key, message).
    """
    mp = s.model_parallel
    if world is None:
        dp = s.dp or 1
    elif s.dp is None:
        if world % mp:
            return "tp", (f"tp*pp*cp={mp} does not divide the {world} devices of backend '{backend}'")
        dp = world // mp
    else:
        dp = s.dp
        if dp * mp != world:
            return "dp", (f"dp*tp*pp*cp = {dp}*{s.tp}*{s.pp}*{s.cp} = {dp * mp} but backend '{backend}' has "
                          f"{world} devices (omit dp to fill the world)")
    if w.batch % (dp * s.micro_batch):
        return "micro_batch", (f"batch={w.batch} is not divisible by dp*micro_batch = {dp}*{s.micro_batch}")
    microbatches = w.batch // (dp * s.micro_batch)
    if s.schedule == "interleaved" and microbatches % s.pp:
        return "schedule", (f"interleaved needs micro-batches per replica ({microbatches}) to be a multiple "
                            f"of pp={s.pp}")
    return Layout(dp=dp, tp=s.tp, pp=s.pp, cp=s.cp, micro_batch=s.micro_batch, microbatches=microbatches)
