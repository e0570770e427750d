"""Pipeline schedules: bubble and activations in flight, as pure functions of (p, m, v).

p = pipeline stages, m = micro-batches per step per replica, v = virtual stages (model chunks) per
device for the interleaved schedule (Narayanan et al. 2021, "Efficient Large-Scale Language Model
Training on GPU Clusters Using Megatron-LM", Sec. 2.2).
"""

from __future__ import annotations

from typing import Literal

from llmsim.costmodel.arrays import Num, minimum, pick

Schedule = Literal["gpipe", "1f1b", "interleaved"]


def bubble_fraction(schedule: Schedule, p: int, m: Num, v: int = 1) -> Num:
    """Bubble time as a fraction of the ideal (bubble-free) time: (p-1)/m, interleaved (p-1)/(v m).

    GPipe and 1F1B have the same bubble (p-1) stage-times per step (Narayanan 2021, Sec. 2.2.1); the
    interleaved schedule shrinks each stage-time by v (Sec. 2.2.2). Every argument may be a column (one
    value per candidate), giving a column.
    """
    chunks = pick(schedule == "interleaved", v, 1)
    return pick(p <= 1, 0.0, (p - 1) / (chunks * m))


def in_flight_microbatches(schedule: Schedule, p: int, m: Num, v: int = 1, stage: int = 0) -> Num:
    """Micro-batches whose activations a stage holds at its peak, in units of its own layers' share.

    GPipe runs all m forwards first. 1F1B keeps at most p - stage in flight (stage 0 holds p). The
    interleaved schedule's first stage holds p (1 + (p-1)/(p v)) micro-batches' worth (Korthikanti et al.
    2022, "Reducing Activation Recomputation in Large Transformer Models", Sec. 4.2.3). `m` may be a column
    of micro-batch counts (one per candidate), giving a column.
    """
    held = minimum(m, p - stage) * 1.0
    held = held * pick((schedule == "interleaved") & (stage == 0), 1 + (p - 1) / (p * v), 1)
    return pick(p <= 1, 1.0, pick(schedule == "gpipe", m * 1.0, held))
