"""Row selection on result frames, safe on empty frames and on columns a run does not have.

Pandas treats an empty object-dtype mask as a list of column labels, and a backend may not write an
optional column at all; every report module selects rows through these helpers instead.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from llmsim.report.units import missing


def has_value(series: pd.Series) -> pd.Series:
    """Boolean mask: the value is present (not None, NaN or infinite)."""
    return series.map(lambda v: not missing(v)).astype(bool)


def any_value(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Boolean mask: at least one of `columns` (those the frame has) holds a value."""
    mask = pd.Series(False, index=frame.index, dtype=bool)
    for col in columns:
        if col in frame:
            mask |= has_value(frame[col])
    return mask


def ok_rows(frame: pd.DataFrame, column: str | None = None) -> pd.DataFrame:
    """Rows that ran (status ok), and, if `column` is given, that have a value in it."""
    mask = (frame["status"] == "ok").astype(bool)
    if column is not None:
        mask &= any_value(frame, [column])
    return frame[mask]


def one_thread(row: Any) -> bool:
    """The row's case ran with one intra-op thread (the cpu backend's `threads` column: per process), so that
    "rerun with `threads: 1`" is advice it already followed (trial 46). A row without the column: unknown, False."""
    value = row.get("threads")
    return not missing(value) and not isinstance(value, str) and float(value) == 1
