"""Pipeline schedules: the order in which a stage runs its forward and backward passes.

GPipe, 1F1B and Megatron-LM's interleaved 1F1B over v model chunks per device (Narayanan et al. 2021,
"Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", Sec. 2.2). The
bubble these orders leave is what the closed form of costmodel.pipeline prices; here they are played.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Schedule = Literal["gpipe", "1f1b", "interleaved"]


@dataclass(frozen=True)
class PipeOp:
    forward: bool
    microbatch: int
    chunk: int


def schedule_ops(schedule: Schedule, p: int, m: int, v: int, stage: int,
                 forward_only: bool = False) -> list[PipeOp]:
    """The order in which `stage` runs its forward and backward passes (Narayanan et al. 2021, Sec. 2.2).

    gpipe: all forwards, then all backwards. 1f1b: p-stage-1 warm-up forwards, then one forward one
    backward, then the remaining backwards. interleaved: Megatron-LM's schedule over v model chunks per
    device in groups of p micro-batches (needs m % p == 0).
    """
    if forward_only:  # inference: every micro-batch through the pipeline in order (a GPipe fill)
        return [PipeOp(True, i, 0) for i in range(m)]
    if schedule == "gpipe":
        return [PipeOp(True, i, 0) for i in range(m)] + [PipeOp(False, i, 0) for i in reversed(range(m))]
    if schedule == "1f1b" or v == 1:
        warm = min(p - stage - 1, m)
        ops = [PipeOp(True, i, 0) for i in range(warm)]
        for i in range(m - warm):
            ops += [PipeOp(True, warm + i, 0), PipeOp(False, i, 0)]
        return ops + [PipeOp(False, i, 0) for i in range(m - warm, m)]
    total = m * v

    def op(k: int, forward: bool) -> PipeOp:
        group, within = divmod(k, p * v)
        chunk = within // p
        return PipeOp(forward, group * p + k % p, chunk if forward else v - 1 - chunk)

    warm = min((p - stage - 1) * 2 + (v - 1) * p, total)
    ops = [op(k, True) for k in range(warm)]
    for k in range(total - warm):
        ops += [op(warm + k, True), op(k, False)]
    return ops + [op(k, False) for k in range(total - warm, total)]
