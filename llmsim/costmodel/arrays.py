"""Array-generic arithmetic: the cost model's combining formulas take a number or a numpy column.

The planner prices a whole table of candidate configurations at once (llmsim.planner.table): the
per-configuration formulas that combine a step's parts (pipeline bubble, data-parallel exposure, the
busiest stage, memory by ZeRO stage) are written once with these helpers, so that the scalar cost model
(one configuration: Python numbers in, Python numbers out) and the table (numpy columns over the
candidates) run the same code. Each helper keeps plain numbers plain: the scalar path pays no numpy cost.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np

Num: TypeAlias = Any  # a float / int, or a numpy array of them (one value per candidate)


def is_array(*xs: Num) -> bool:
    for x in xs:  # a loop, not any() over a generator: the scalar path asks this hundreds of thousands of times
        if isinstance(x, np.ndarray):
            return True
    return False


def pick(cond: Num, a: Num, b: Num) -> Num:
    """`a if cond else b`, element-wise when any argument is an array."""
    if is_array(cond, a, b):
        return np.where(cond, a, b)
    return a if cond else b


def maximum(a: Num, b: Num) -> Num:
    """max(a, b), element-wise when either is an array."""
    if is_array(a, b):
        return np.maximum(a, b)
    return max(a, b)


def minimum(a: Num, b: Num) -> Num:
    """min(a, b), element-wise when either is an array."""
    if is_array(a, b):
        return np.minimum(a, b)
    return min(a, b)
