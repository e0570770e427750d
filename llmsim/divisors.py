"""The divisors of a count, and how an error lists them as its allowed values: the one rule every degree check
uses (a strategy's tp, cp, ep and attention_dp against the model, dp and micro_batch against the batch, layer
splits, the planner's search axes)."""

from __future__ import annotations

import math
from collections.abc import Sequence

ALLOWED_SHOWN = 12  # at most this many allowed values are listed in a message; the rest are said to exist ("...")


def divisors(n: int) -> list[int]:
    """The divisors of n >= 1 in increasing order, in O(sqrt n) (a model may state 10^8 layers or tokens)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def listed(values: Sequence[int]) -> str:
    """Allowed values for a message: all of them when they are few, else the first ALLOWED_SHOWN - 2, "..." and
    the last two, so the largest allowed value is always shown; "none" for none."""
    if not values:
        return "none"
    if len(values) <= ALLOWED_SHOWN:
        return ", ".join(str(v) for v in values)
    head, tail = values[:ALLOWED_SHOWN - 2], values[-2:]
    return ", ".join(str(v) for v in head) + ", ..., " + ", ".join(str(v) for v in tail)


def shown_divisors(n: int) -> str:
    """The divisors of n as a message lists its allowed values (`listed`)."""
    return listed(divisors(n))
