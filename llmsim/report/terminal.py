"""The short table `llmsim run` prints before the run folder: the headline numbers of every case.

As pytest-benchmark and optimum-benchmark end a run with a table in the terminal, so a user sees what
happened without opening the report: per (case, backend) the status, step time (and, measured, the
p10–p90 spread of its timed steps), tokens/s, MFU and memory per device; a row that did not run says why.
"""

from __future__ import annotations

import pandas as pd
from rich.markup import escape
from rich.table import Table

from llmsim.report.metrics import spread
from llmsim.report.units import fmt_bytes, fmt_percent, fmt_rate, fmt_seconds, missing
from llmsim.wording import count

MAX_ROWS = 40        # a sweep of hundreds of cases is in the report and results.csv, not the terminal
MAX_REASON = 70      # characters of a reason shown; the report has all of it

HEADERS = ("case", "backend", "status", "step time", "p10–p90", "tokens/s", "MFU", "memory/device", "why not ok")
WIDTH = 140          # columns the table is laid out for when stderr is not a terminal (a log, a CI job)


def _cell(value: object, fmt) -> str:  # type: ignore[no-untyped-def]
    return "–" if missing(value) else fmt(float(value))  # type: ignore[arg-type]


def headline_rows(frame: pd.DataFrame) -> list[list[str]]:
    """One list of cell texts per row of the run, in HEADERS order (at most MAX_ROWS)."""
    out = []
    for _, r in frame.head(MAX_ROWS).iterrows():
        status = str(r.get("status"))
        if status != "ok":
            reason = "" if missing(r.get("error")) or not r.get("error") else " ".join(str(r["error"]).split())
            reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 1] + "…"
            out.append([str(r["case"]), str(r["backend"]), status, "–", "–", "–", "–",
                        _cell(r.get("peak_memory_bytes_per_device"), fmt_bytes), reason])
            continue
        s = spread(r)
        out.append([str(r["case"]), str(r["backend"]), status, _cell(r.get("step_time_s"), fmt_seconds),
                    "–" if s is None else f"{fmt_seconds(s[0])}–{fmt_seconds(s[1])}",
                    _cell(r.get("tokens_per_s"), fmt_rate), _cell(r.get("mfu"), fmt_percent),
                    _cell(r.get("peak_memory_bytes_per_device"), fmt_bytes), ""])
    return out


def headline_table(frame: pd.DataFrame) -> Table:
    """HEADERS over headline_rows, as a rich Table titled with the row count."""
    more = len(frame) - MAX_ROWS
    rows = headline_rows(frame)
    headers = HEADERS if any(r[-1] for r in rows) else HEADERS[:-1]  # no empty 'why not ok' column
    table = Table(title=f"llmsim run: {count(len(frame), 'result row')}",
                  caption=f"… and {count(more, 'more row')} in results.csv and the report" if more > 0 else None)
    for i, header in enumerate(headers):
        numeric = 3 <= i <= 7
        table.add_column(header, justify="right" if numeric else "left", no_wrap=i < len(HEADERS) - 1)
    for cells in rows:
        table.add_row(*(escape(c) for c in cells[:len(headers)]))
    return table
