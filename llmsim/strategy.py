"""A strategy placed on a world of devices: the resolved degrees every backend, the cost model and the
planner run (`Layout`), and the rules that need the device count (`resolve_layout`).

The rules that need only the scenario file (tp divides the heads, pp the layers, ...) are validators of
the scenario's models in llmsim.config; these are the second phase of validation, per backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsim.config import Strategy, Workload, check_strategy_shape, stage_layer_counts
from llmsim.divisors import divisors, listed, shown_divisors
from llmsim.wording import count


@dataclass(frozen=True)
class Layout:
    """A strategy placed on a world of devices: the resolved degrees a backend runs."""

    dp: int
    tp: int
    pp: int
    cp: int
    micro_batch: int
    microbatches: int
    stage_layers: tuple[int, ...] = ()  # layers of each pipeline stage (llmsim.stages); () = not resolved
    ep: int = 1   # expert parallel: routed experts split over ep ranks (MoE)
    etp: int = 1  # expert tensor parallel: each expert's MLP split over etp ranks (resolved: etp or tp)

    @property
    def edp(self) -> int:
        """Expert data parallel: replicas of each expert per pipeline stage, tp*cp*dp / (ep*etp)
        (Megatron-Core's expert grid; expert gradients are reduced over these ranks only)."""
        return self.tp * self.cp * self.dp // (self.ep * self.etp)

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp


def resolve_layout(s: Strategy, w: Workload, world: int | None, backend: str) -> Layout | tuple[str, str]:
    """Fit a strategy to a backend's world size.

    `world` is the device count a backend fixes (a modeled cluster), or None when the backend runs
    whatever the strategy asks for (dp omitted then means 1). Returns the Layout or (key, message). The
    strategy's layer split was checked with the file (config.check_strategy_shape); the Layout carries
    each stage's count.
    """
    mp = s.model_parallel
    if world is None:
        dp = s.dp or 1
    elif s.dp is None:
        if world % mp:
            key = next((k for k in ("tp", "pp", "cp") if getattr(s, k) > 1), "tp")  # the degree the user set
            return key, (f"tp*pp*cp={mp} does not divide the {count(world, 'device')} of backend '{backend}' "
                         f"(allowed: {_fitting_degrees(s, w, key, world)}, or more devices)")
        dp = world // mp
    else:
        dp = s.dp
        if dp * mp != world:
            set_key = next((k for k in ("tp", "pp", "cp") if getattr(s, k) > 1), "tp")
            fills = (f"dp {world // mp} (= {world} / tp*pp*cp), or omit dp to fill the world" if world % mp == 0
                     else f"{_fitting_degrees(s, w, set_key, world)} and dp omitted")
            return "dp", (f"dp*tp*pp*cp = {dp}*{s.tp}*{s.pp}*{s.cp} = {dp * mp} but backend '{backend}' has "
                          f"{count(world, 'device')} (allowed: {fills})")
    problem = _batch_problem(s, w, dp, world, backend)
    if problem:
        return problem
    microbatches = w.batch // (dp * s.micro_batch)
    if s.schedule == "interleaved" and microbatches % s.pp:
        return "schedule", (f"interleaved needs micro-batches per replica ({microbatches}) to be a multiple "
                            f"of pp={s.pp}")
    carved = s.tp * s.cp * dp
    if carved % (s.ep * s.expert_tp):
        # blame the factor that breaks it: ep when ep alone does not divide the stage, else etp (ep fits alone)
        key = "ep" if carved % s.ep else "etp"
        allowed = [d for d in range(1, carved + 1) if carved % d == 0 and (key == "ep" or d % s.ep == 0)]
        allowed_text = ", ".join(str(d if key == "ep" else d // s.ep) for d in allowed[:16])
        return key, (f"ep*etp = {s.ep}*{s.expert_tp} does not divide the tp*cp*dp = {s.tp}*{s.cp}*{dp} = {carved} "
                     f"ranks of a pipeline stage the expert group is carved from (Megatron-Core's expert grid; "
                     f"allowed {key}: {allowed_text})"
                     + ("; set dp (omitted means 1 on this backend)" if world is None and s.dp is None else ""))
    return Layout(dp=dp, tp=s.tp, pp=s.pp, cp=s.cp, micro_batch=s.micro_batch, microbatches=microbatches,
                  stage_layers=stage_layer_counts(s, w.model.layers), ep=s.ep, etp=s.expert_tp)


def _fitting_degrees(s: Strategy, w: Workload, key: str, world: int) -> str:
    """The values of strategy degree `key` (tp, pp or cp) that both fill `world` devices with the other two degrees
    as stated and suit the model (config.check_strategy_shape: tp divides the heads, cp the sequence, pp splits
    the layers), so that the value a message offers is one the next check takes (trial 48: tp 5 was offered for
    heads=40 and then refused by 64 devices)."""
    others = s.model_parallel // getattr(s, key)
    fits = [v for v in divisors(world) if world % (others * v) == 0
            and check_strategy_shape(s.model_copy(update={key: v}), w) is None]
    stated = ", ".join(f"{k}={getattr(s, k)}" for k in ("tp", "pp", "cp") if k != key)
    return (f"{key} among {listed(fits)} with {stated}" if fits else f"no {key} with {stated}") + \
        f"; tp*pp*cp among {shown_divisors(world)}"


def _batch_problem(s: Strategy, w: Workload, dp: int, world: int | None, backend: str) -> tuple[str, str] | None:
    """The global batch must split into dp replicas of whole micro-batches: (key, message) naming the degree
    that breaks it (dp when it does not divide the batch at all, else micro_batch) and the values allowed."""
    if w.batch % (dp * s.micro_batch) == 0:
        return None
    if w.batch % dp:
        if world is not None:  # dp * tp*pp*cp fills the backend's world: dp moves only with tp*pp*cp
            fits = ", ".join(str(d) for d in range(1, min(world, w.batch) + 1)
                             if world % d == 0 and w.batch % (d * s.micro_batch) == 0)
            given = "" if s.dp is not None else " (omitted: fills the world)"
            return "dp", (f"{dp}{given} does not divide batch={w.batch} (micro_batch={s.micro_batch}); backend "
                          f"'{backend}' has {count(world, 'device')}, so allowed: workload.batch a multiple of "
                          f"{dp * s.micro_batch}, or tp*pp*cp larger so that dp = {world}/(tp*pp*cp) is one of {fits}")
        per = w.batch // s.micro_batch if w.batch % s.micro_batch == 0 else w.batch
        return "dp", (f"{dp} does not divide batch={w.batch} (micro_batch={s.micro_batch}); allowed: dp among "
                      f"{shown_divisors(per)}, or workload.batch a multiple of {dp * s.micro_batch}")
    per_replica = w.batch // dp
    return "micro_batch", (f"{s.micro_batch} does not divide the batch={w.batch} / dp={dp} = {per_replica} sequences "
                           f"of a replica; allowed: {shown_divisors(per_replica)}")
