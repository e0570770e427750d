"""report.md: the results table of one run, with units, and every row that is not ok with its reason."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

# (column, header, formatter)
_TABLE: list[tuple[str, str, str]] = [
    ("case", "case", "text"),
    ("backend", "backend", "text"),
    ("kind", "kind", "text"),
    ("hardware", "hardware", "text"),
    ("n_devices", "devices", "int"),
    ("step_time_s", "step time", "seconds"),
    ("tokens_per_s", "tokens/s", "rate"),
    ("ttft_s", "TTFT", "seconds"),
    ("tpot_s", "TPOT", "seconds"),
    ("mfu", "MFU", "percent"),
    ("peak_memory_bytes_per_device", "peak mem/device", "bytes"),
    ("joules_per_token", "J/token", "joules"),
    ("scaling_efficiency", "scaling eff.", "percent"),
]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_seconds(v: float) -> str:
    if v >= 1:
        return f"{v:.3g} s"
    if v >= 1e-3:
        return f"{v * 1e3:.3g} ms"
    return f"{v * 1e6:.3g} µs"


def fmt_bytes(v: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def fmt_rate(v: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return f"{v:.3g}"


def format_value(value: Any, how: str) -> str:
    if _missing(value):
        return "–"
    formats = {
        "text": str, "int": lambda v: f"{int(v)}", "seconds": fmt_seconds, "rate": fmt_rate,
        "percent": lambda v: f"{100 * v:.1f}%", "bytes": fmt_bytes, "joules": lambda v: f"{v:.3g} J",
    }
    return formats[how](value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(frame: pd.DataFrame) -> str:
    ok = frame[frame["status"] == "ok"]
    header = "| " + " | ".join(h for _, h, _ in _TABLE) + " |"
    rule = "|" + "|".join("---" for _ in _TABLE) + "|"
    lines = [header, rule]
    for _, row in ok.iterrows():
        lines.append("| " + " | ".join(_escape(format_value(row.get(col), how)) for col, _, how in _TABLE) + " |")
    return "\n".join(lines)


def build_markdown(frame: pd.DataFrame) -> str:
    scenario = str(frame["scenario"].iloc[0]) if len(frame) else "(no rows)"
    first = frame.iloc[0] if len(frame) else None
    parts = [f"# llmsim run: {scenario}", ""]
    if first is not None:
        parts += [f"Workload: mode `{first['mode']}`, batch {first['batch']} × {first['seq_len']} tokens, "
                  f"dtype `{first['dtype']}`, {int(first['params']) if not _missing(first['params']) else '?'} "
                  f"parameters.", ""]
    parts += ["## Results", "", results_table(frame), ""]
    not_ok = frame[frame["status"] != "ok"]
    if len(not_ok):
        parts += ["## Not run or not fitting", "", "| case | backend | status | reason |", "|---|---|---|---|"]
        for _, row in not_ok.iterrows():
            parts.append(f"| {_escape(str(row['case']))} | {_escape(str(row['backend']))} | {row['status']} | "
                         f"{_escape(str(row['error'] or ''))} |")
        parts.append("")
    parts += ["Columns and units: see docs/results.md. All rows: results.csv / results.jsonl.", ""]
    return "\n".join(parts)


def write_markdown_report(run_dir: Path, frame: pd.DataFrame) -> Path:
    from llmsim.runner import write_atomic

    path = run_dir / "report.md"
    write_atomic(path, build_markdown(frame))
    return path
