"""Counts in sentences: '1 strategy', '2 strategies', '1,024 devices' (English plurals said once)."""

from __future__ import annotations

# Nouns llmsim counts whose plural is not noun + "s".
IRREGULAR = {"strategy": "strategies", "process": "processes", "entry": "entries", "batch": "batches",
             "micro-batch": "micro-batches"}


def count(n: float, noun: str, plural: str | None = None) -> str:
    """`n` and the noun in the right number: count(1, 'case') = '1 case', count(2048, 'device') = '2,048 devices'.
    Without `plural`, a phrase's last word takes the plural ('backend setting' -> 'backend settings')."""
    value = int(n) if float(n).is_integer() else n
    if value == 1:
        return f"1 {noun}"
    if plural is None:
        head, _, last = noun.rpartition(" ")
        many = IRREGULAR.get(last, last + "s")
        plural = f"{head} {many}" if head else many
    return f"{value:,} {plural}"
