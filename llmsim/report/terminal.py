"""The short table `llmsim run` prints before the run folder: the headline numbers of every case.

As pytest-benchmark and optimum-benchmark end a run with a table in the terminal, so a user sees what
happened without opening the report: per (case, backend) the status, step time (and, measured, the
p10–p90 spread of its timed steps), tokens/s, MFU and memory per device; a row that did not run says why.
A serving run (rows of mode "serve") has no step of its own to time: its table shows what a serving benchmark
ends with (vLLM's `bench serve`), TTFT and TPOT at p50 and p99, requests/s and goodput (requests/s within
the SLO), instead of columns that would all read "–"; and, when a row ran speculative decoding, its accept
length (results.csv's accept_length: the mean tokens a verify step emitted, which is what divides its TPOT).
"""

from __future__ import annotations

import pandas as pd
from rich.markup import escape
from rich.table import Table

from llmsim.measure.host_load import BUSY_LOAD_PER_CORE
from llmsim.report.metrics import spread
from llmsim.report.frames import one_thread
from llmsim.report.units import fmt_bytes, fmt_percent, fmt_rate, fmt_seconds, missing
from llmsim.wording import count

MAX_ROWS = 40        # a sweep of hundreds of cases is in the report and results.csv, not the terminal
MAX_REASON = 240     # characters of a reason shown, wrapped in its column (a skip reason names the key and the
                     # allowed values past 70 characters); a longer one is cut here and whole in the report

HEADERS = ("case", "backend", "status", "step time", "p10–p90", "tokens/s", "MFU", "memory/device", "why not ok")
# A serving run's columns (results.py names, docs/results.md): header, result column, format.
SERVING_COLUMNS = (("TTFT p50", "ttft_p50_s", fmt_seconds), ("TTFT p99", "ttft_p99_s", fmt_seconds),
                   ("TPOT p50", "tpot_p50_s", fmt_seconds), ("TPOT p99", "tpot_p99_s", fmt_seconds),
                   ("req/s", "requests_per_s", fmt_rate), ("goodput req/s", "goodput_rps", fmt_rate))
SERVING_HEADERS = ("case", "backend", "status", *(c[0] for c in SERVING_COLUMNS), "why not ok")
# Shown after TPOT p99 when any row ran speculative decoding (serving.speculative: a row has accept_length), and
# only then (docs/serving.md, "Speculative decoding").
ACCEPT_COLUMN = ("accept length", "accept_length", fmt_rate)
WIDTH = 140          # columns the table is laid out for when stderr is not a terminal (a log, a CI job)


def _cell(value: object, fmt) -> str:  # type: ignore[no-untyped-def]
    return "–" if missing(value) else fmt(float(value))  # type: ignore[arg-type]


def is_serving(frame: pd.DataFrame) -> bool:
    """Whether the run is a serving run (its rows have mode "serve"): it gets SERVING_HEADERS."""
    return "mode" in frame and len(frame) > 0 and bool((frame["mode"] == "serve").all())


def serving_columns(frame: pd.DataFrame) -> tuple[tuple[str, str, object], ...]:
    """A serving run's numeric columns: SERVING_COLUMNS, with ACCEPT_COLUMN after the TPOTs when any row of the
    run has an accept_length (it ran serving.speculative)."""
    column = ACCEPT_COLUMN[1]
    if column not in frame or all(missing(v) for v in frame[column].head(MAX_ROWS)):
        return SERVING_COLUMNS
    return (*SERVING_COLUMNS[:4], ACCEPT_COLUMN, *SERVING_COLUMNS[4:])


def headers(frame: pd.DataFrame) -> tuple[str, ...]:
    """The table's columns: a serving run's (SERVING_HEADERS, with accept length when a row ran speculative
    decoding: serving_columns), else HEADERS."""
    if not is_serving(frame):
        return HEADERS
    return ("case", "backend", "status", *(c[0] for c in serving_columns(frame)), "why not ok")


def _reason(r: pd.Series) -> str:
    reason = "" if missing(r.get("error")) or not r.get("error") else " ".join(str(r["error"]).split())
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 1] + "…"


BUSY_MARK = "*"  # after the status of a row measured on a busy host (busy_note says what it means)


def _status(r: pd.Series) -> str:
    """The row's status, marked when it was measured while the host was busy, so the caption's warning
    points at the rows it concerns (one case of a sweep may have run beside another job, the next not)."""
    load = r.get("host_load_per_core")
    busy = not missing(load) and float(load) > BUSY_LOAD_PER_CORE
    return f"{r.get('status')}{BUSY_MARK if busy else ''}"


def headline_rows(frame: pd.DataFrame) -> list[list[str]]:
    """One list of cell texts per row of the run, in `headers(frame)` order (at most MAX_ROWS)."""
    if is_serving(frame):
        columns = serving_columns(frame)
        return [[str(r["case"]), str(r["backend"]), _status(r),
                 *(_cell(r.get(column), fmt) if r.get("status") == "ok" else "–" for _, column, fmt in columns),
                 "" if r.get("status") == "ok" else _reason(r)] for _, r in frame.head(MAX_ROWS).iterrows()]
    out = []
    for _, r in frame.head(MAX_ROWS).iterrows():
        status = _status(r)
        if r.get("status") != "ok":
            out.append([str(r["case"]), str(r["backend"]), status, "–", "–", "–", "–",
                        _cell(r.get("peak_memory_bytes_per_device"), fmt_bytes), _reason(r)])
            continue
        s = spread(r)
        out.append([str(r["case"]), str(r["backend"]), status, _cell(r.get("step_time_s"), fmt_seconds),
                    "–" if s is None else f"{fmt_seconds(s[0])}–{fmt_seconds(s[1])}",
                    _cell(r.get("tokens_per_s"), fmt_rate), _cell(r.get("mfu"), fmt_percent),
                    _cell(r.get("peak_memory_bytes_per_device"), fmt_bytes), ""])
    return out


def busy_note(loads: list[float], threads_advice: bool = True) -> str | None:
    """One sentence for the end of a run when any measured row was taken on a busy host, else None.

    `loads`: the rows' `host_load_per_core` values (those that have one). `threads_advice`: whether to suggest
    `threads: 1` (False when every busy row already ran one thread: busy_threaded)."""
    if not loads or max(loads) <= BUSY_LOAD_PER_CORE:
        return None
    advice = (", or set `backends: {cpu: {threads: 1}}` (OpenMP workers spin-wait on oversubscribed cores)"
              if threads_advice else " (the busy rows already ran with one thread)")
    return (f"* measured while the host was busy (load up to {max(loads):.1f} per core): other processes competed "
            f"for the cores, so measured times are slower than this machine's own; rerun on a quiet host{advice}")


def busy_threaded(frame: pd.DataFrame) -> bool:
    """Some row measured on a busy host ran more than one thread, or an unknown number (no `threads` column)."""
    if "host_load_per_core" not in frame:
        return False
    busy = frame[[not missing(v) and float(v) > BUSY_LOAD_PER_CORE for v in frame["host_load_per_core"]]]
    return any(not one_thread(r) for _, r in busy.iterrows())


def host_loads(frame: pd.DataFrame) -> list[float]:
    """The measured rows' `host_load_per_core` (llmsim.measure.host_load), where a backend recorded it."""
    if "host_load_per_core" not in frame:
        return []
    return [float(v) for v in frame["host_load_per_core"] if not missing(v)]


def headline_table(frame: pd.DataFrame) -> Table:
    """`headers(frame)` over headline_rows, as a rich Table titled with the row count."""
    more = len(frame) - MAX_ROWS
    rows = headline_rows(frame)
    every = headers(frame)
    shown = every if any(r[-1] for r in rows) else every[:-1]  # no empty 'why not ok' column
    captions = [f"… and {count(more, 'more row')} in results.csv and the report"] if more > 0 else []
    busy = busy_note(host_loads(frame), busy_threaded(frame))
    if busy:
        captions.append(busy)
    table = Table(title=f"llmsim run: {count(len(frame), 'result row')}", caption="\n".join(captions) or None)
    for i, header in enumerate(shown):
        numeric = 3 <= i < len(every) - 1
        table.add_column(header, justify="right" if numeric else "left", no_wrap=i < len(every) - 1)
    for cells in rows:
        table.add_row(*(escape(c) for c in cells[:len(shown)]))
    return table
