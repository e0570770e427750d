"""Numbers with units and sensible precision, shared by every report renderer.

One place decides how a value reads (three significant digits, SI prefixes, decimal GB as in the
hardware catalog), so the markdown table, the HTML table, the summary sentences and figure labels
never disagree about the same number.
"""

from __future__ import annotations

import math
from typing import Any


def missing(value: Any) -> bool:
    """None, NaN (pandas' missing) and infinities are all 'no value' in a report."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt_seconds(v: float) -> str:
    if v >= 1:
        return f"{v:.3g} s"
    if v >= 1e-3:
        return f"{v * 1e3:.3g} ms"
    if v >= 1e-6:
        return f"{v * 1e6:.3g} µs"
    if v >= 1e-9:
        return f"{v * 1e9:.3g} ns"
    if v > 0:
        return "< 1 ns"  # not '2.42e-08 µs': below a nanosecond nothing llmsim times or models is real
    return "0 s"


# A part of a step smaller than this share of it is floating-point residue of a subtraction (a step of
# 0.12 s minus its parts left 2.4e-14 s), shown as 0: float64 carries ~16 significant digits.
FLOAT_RESIDUE = 1e-9


def fmt_bytes(v: float) -> str:
    """Decimal units (1 GB = 1e9 B), the convention of the catalog and of does-not-fit messages."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def fmt_rate(v: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.3g}"


def fmt_joules(v: float) -> str:
    if v >= 1e3:
        return f"{v / 1e3:.3g} kJ"
    if v >= 1 or v == 0:
        return f"{v:.3g} J"
    if v >= 1e-3:
        return f"{v * 1e3:.3g} mJ"
    return f"{v * 1e6:.3g} µJ"


def fmt_watts(v: float) -> str:
    """A power: '1.4 kW', '850 W', '1 W' (a limit of 1 W read '0.0 kW' in kW to one decimal)."""
    if v >= 1e6:
        return f"{v / 1e6:,.3g} MW"
    if v >= 1e3:
        return f"{v / 1e3:,.3g} kW"
    return f"{v:.3g} W"


def fmt_percent(v: float) -> str:
    """A fraction (0.31) as a percentage ('31.0%')."""
    return f"{100 * v:.1f}%"


# From this rise on a change reads as a ratio: '+15691.8%' is '×158' (trial 41)
RATIO_FROM_PCT = 900.0


def fmt_change(pct: float) -> str:
    """A percent difference with its sign ('+12.3%', '−4.0%'); the minus is U+2212 so it reads as one. A rise of
    RATIO_FROM_PCT or more is the ratio itself ('×158' for +15,700%: new = old x 158). A change that rounds to
    zero reads '0.0%', without a sign (trial 42: '−0.0%' beside a metric that had not moved)."""
    if round(pct, 1) == 0:
        return "0.0%"
    if pct >= RATIO_FROM_PCT:
        ratio = 1 + pct / 100
        return f"\u00d7{ratio:,.0f}" if ratio >= 100 else f"\u00d7{ratio:.1f}"
    sign = "+" if pct > 0 else "\u2212"
    return f"{sign}{abs(pct):.1f}%"


def fmt_count(v: float) -> str:
    """Parameter counts and the like: '124M', '1.3G' read better than 124439808."""
    return fmt_rate(v)


FORMATS = {
    "text": str,
    "int": lambda v: f"{int(v)}",
    "seconds": fmt_seconds,
    "rate": fmt_rate,
    "percent": fmt_percent,
    "bytes": fmt_bytes,
    "joules": fmt_joules,
    "change": fmt_change,
    "count": fmt_count,
    "tflops": lambda v: f"{v:.3g}",
}


def format_value(value: Any, how: str) -> str:
    """`value` formatted as `how` (a key of FORMATS); a missing value is an en dash."""
    if how == "text":
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if missing(value):
        return "–"
    return FORMATS[how](value)
