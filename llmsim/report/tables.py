"""The tables of a single-run report, built once as `document.Table` for every renderer.

Each cell carries the display text (with units, via `units.py`) and the raw number it sorts by, so a
sortable HTML table orders 950 ms before 1.2 s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from llmsim.report.document import Cell, Table
from llmsim.report.figures import BREAKDOWN, MEMORY, device_capacity, parity_pairs
from llmsim.report.frames import any_value
from llmsim.report.metrics import spread
from llmsim.report.units import FLOAT_RESIDUE, fmt_change, fmt_seconds, format_value, missing

# (column, header, formatter)
RESULTS: list[tuple[str, str, str]] = [
    ("case", "case", "text"),
    ("backend", "backend", "text"),
    ("kind", "kind", "text"),
    ("hardware", "hardware", "text"),
    ("priced_with", "priced with", "text"),      # a modeled row's attention_kernel, all_reduce (priced_with)
    ("n_devices", "devices", "int"),
    ("step_time_s", "step time", "seconds"),
    ("tokens_per_s", "tokens/s", "rate"),
    ("tokens_per_s_per_device", "tokens/s/device", "rate"),
    ("ttft_s", "TTFT mean", "seconds"),  # a serving row's ttft_mean_s; its percentiles are in the serving tables
    ("tpot_s", "TPOT mean", "seconds"),
    ("mfu", "MFU", "percent"),
    ("peak_memory_bytes_per_device", "peak mem/device", "bytes"),
    ("joules_per_token", "energy/token", "joules"),
    ("scaling_efficiency", "scaling eff.", "percent"),
]


def cell(value: Any, how: str) -> Cell:
    """A formatted cell sorting by the raw value (numbers) or the text (names)."""
    text = format_value(value, how)
    if how == "text":
        return Cell(text, text.lower())
    return Cell(text, None if missing(value) else float(value))


def _table(frame: pd.DataFrame, spec: list[tuple[str, str, str]], caption: str = "") -> Table:
    rows = [[cell(row.get(col), how) for col, _, how in spec] for _, row in frame.iterrows()]
    return Table([h for _, h, _ in spec], rows, [how != "text" for _, _, how in spec], caption)


# Text columns of RESULTS that are not the row's identity: shown only where some row has a value (a measured
# backend prices no attention kernel or all-reduce library: results.COLUMNS)
OPTIONAL_TEXT = ("priced_with",)


def priced_with(row: Any) -> str | None:
    """'flash3, vllm' or 'cudnn, foreach, no fp32 master': what a modeled row was priced with (result columns
    attention_kernel, all_reduce, optimizer and master_weights; each empty where the row prices none: a training
    row's all-reduce, an inference row's optimizer; and 'AR+RMSNorm fused' for a serving row priced with vLLM's
    all-reduce + RMSNorm fusion, the extra fuse_allreduce_rms), one cell to keep the table narrow; 'ran cudnn' for a measured
    row that recorded its attention kernel; None for a row with none of them."""
    if row.get("kind") == "measured":   # no price: the attention kernel the run ran (llmsim.measure.sdpa)
        kernel = row.get("attention_kernel")
        return None if missing(kernel) or kernel == "" else f"ran {kernel}"
    parts = [str(v) for v in (row.get("attention_kernel"), row.get("all_reduce"), row.get("optimizer"))
             if not missing(v) and v != ""]
    master = row.get("master_weights")
    if not missing(master) and master != "":
        parts.append("fp32 master" if str(master).lower() in ("true", "1") else "no fp32 master")
    fused = row.get("fuse_allreduce_rms")   # a serving row's extra (serving.scheduler.fuse_allreduce_rms)
    if not missing(fused) and str(fused).lower() in ("true", "1"):
        parts.append("AR+RMSNorm fused")
    return ", ".join(parts) or None


def _drop_empty(frame: pd.DataFrame, spec: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Columns no row has a value in (TTFT in a training run, the attention kernel in a measured one) only add
    noise; the identity columns stay."""
    keep = []
    for col, header, how in spec:
        if (how == "text" and col not in OPTIONAL_TEXT) or any_value(frame, [col]).any():
            keep.append((col, header, how))
    return keep


def spread_text(row: Any) -> str:
    """'9.91 s–13.9 s': the p10–p90 of a measured row's timed steps; '–' for a modeled row."""
    s = spread(row)
    return "–" if s is None else f"{fmt_seconds(s[0])}–{fmt_seconds(s[1])}"


def results_table(frame: pd.DataFrame) -> Table:
    """Every ok row; measured rows show their step-time spread (p10–p90) beside the mean step."""
    ok = frame[frame["status"] == "ok"]
    ok = ok.assign(priced_with=[priced_with(r) for _, r in ok.iterrows()])
    spec = _drop_empty(ok, RESULTS)
    priced = ("priced with: the attention kernel, (inference, serving) the all-reduce library and (training) the "
              "optimizer and whether an fp32 master copy was kept, as a modeled row was priced; for a measured row "
              "the attention kernel it ran (results.csv: attention_kernel, all_reduce, optimizer, master_weights)."
              if ("priced_with", "priced with", "text") in spec else "")
    table = _table(ok, spec, priced)
    if not any(spread(r) for _, r in ok.iterrows()):
        return table
    # beside the mean step; at the end where no row has one (an edited file: every step_time_s null, trial 35)
    at = table.columns.index("step time") + 1 if "step time" in table.columns else len(table.columns)
    rows = []
    for cells, (_, r) in zip(table.rows, ok.iterrows()):
        s = spread(r)
        rows.append(cells[:at] + [Cell(spread_text(r), None if s is None else s[1] - s[0])] + cells[at:])
    return Table(table.columns[:at] + ["step p10–p90"] + table.columns[at:], rows,
                 table.numeric[:at] + [True] + table.numeric[at:],
                 "step p10–p90: the spread of a measured row's timed steps; two rows whose ranges overlap are "
                 "within noise of each other." + (f" {priced}" if priced else ""))


def breakdown_table(frame: pd.DataFrame) -> Table | None:
    """Where each step's time went, as seconds and as shares of the step."""
    ok = frame[frame["status"] == "ok"]
    cols = [c for c, _, _ in BREAKDOWN]
    ok = ok[any_value(ok, cols)]
    if ok.empty:
        return None
    headers = ["case", "backend", "step time", "ideal m·C/n", "efficiency"] + [lbl for _, lbl, _ in BREAKDOWN]
    rows = []
    for _, r in ok.iterrows():
        step = r.get("step_time_s")
        cells = [cell(r["case"], "text"), cell(r["backend"], "text"), cell(step, "seconds"),
                 cell(r.get("t_ideal_s"), "seconds"), cell(r.get("scaling_efficiency"), "percent")]
        for col, _, _ in BREAKDOWN:
            v = r.get(col)
            if not missing(v) and not missing(step) and abs(float(v)) < FLOAT_RESIDUE * float(step):
                v = 0.0
            if missing(v):
                cells.append(Cell("–"))
            else:
                share = f" ({100 * float(v) / float(step):.0f}%)" if not missing(step) and float(step) > 0 else ""
                cells.append(Cell(fmt_seconds(float(v)) + share, float(v)))
        rows.append(cells)
    return Table(headers, rows, [False, False] + [True] * (len(headers) - 2))


def memory_table(frame: pd.DataFrame, capacity: dict[str, float]) -> Table | None:
    """Memory per device by kind, where a backend reports the breakdown, with the device capacity."""
    rows = frame[frame["status"].isin(["ok", "does-not-fit"])]
    mem_cols = [(c, lbl) for c, lbl, _ in MEMORY if any_value(rows, [c]).any()]
    if rows.empty or not mem_cols:
        return None
    rows = rows[any_value(rows, [c for c, _ in mem_cols])]
    headers = ["case", "backend", "status"] + [lbl for _, lbl in mem_cols] + ["total", "device capacity"]
    out = []
    for row in rows.itertuples(index=False):
        cells = [cell(row.case, "text"), cell(row.backend, "text"), cell(row.status, "text")]
        cells += [cell(getattr(row, c), "bytes") for c, _ in mem_cols]
        cells += [cell(row.peak_memory_bytes_per_device, "bytes"), cell(device_capacity(row, capacity), "bytes")]
        out.append(cells)
    return Table(headers, out, [False] * 3 + [True] * (len(headers) - 3))


def _loads_text(raw: Any) -> str:
    """'layer 0: 130 · 122 · 119 · 141 (max/mean 1.11); layer 1: ...' from the JSON of extra expert_tokens."""
    if missing(raw) or raw is None:
        return "–"
    parts = []
    for i, layer in enumerate(json.loads(str(raw))):
        mean = sum(layer) / len(layer) if layer else 0.0
        ratio = f" (max/mean {max(layer) / mean:.3g})" if mean > 0 else ""
        parts.append(f"layer {i}: " + " · ".join(str(c) for c in layer) + ratio)
    return "; ".join(parts)


def experts_table(frame: pd.DataFrame) -> Table | None:
    """Mixture-of-experts rows: total and active parameters, the routing imbalance, and (measured rows) the
    tokens the router sent to each expert in each distinct MoE layer over the run (docs/moe.md)."""
    ok = frame[frame["status"] == "ok"]
    if "params_active" not in ok.columns:
        return None
    moe = ok[any_value(ok, ["expert_load_imbalance"]) | (ok["params_active"] != ok["params"])]
    moe = moe[any_value(moe, ["params_active"])]
    if moe.empty:
        return None
    rows = []
    for _, r in moe.iterrows():
        rows.append([cell(r["case"], "text"), cell(r["backend"], "text"), cell(r.get("ep"), "int"),
                     cell(r.get("params"), "count"), cell(r.get("params_active"), "count"),
                     cell(r.get("expert_load_imbalance"), "tflops"), Cell(_loads_text(r.get("expert_tokens")))])
    return Table(["case", "backend", "ep", "params", "active params", "load imbalance", "tokens per expert"],
                 rows, [False, False, True, True, True, True, False],
                 caption="load imbalance: the busiest expert's tokens over the mean, the largest over the MoE "
                         "layers (measured: what the router did over every step of the run; modeled: the factor "
                         "the cost model assumed).")


NOT_RUN = "not run"
NOT_RUN_REASON = "no row: the run was cut short (Ctrl-C or a kill) before this case finished"


def not_ok_table(frame: pd.DataFrame, unfinished: Sequence[tuple[str, str]] = ()) -> Table | None:
    """Every skipped, failed or does-not-fit row with its reason, then every planned case without a row
    (`unfinished`: (case, backend) of a run cut short, status NOT_RUN): nothing silently disappears."""
    bad = frame[frame["status"] != "ok"]
    if bad.empty and not unfinished:
        return None
    rows = [[cell(r["case"], "text"), cell(r["backend"], "text"), cell(r["status"], "text"),
             Cell(str(r["error"]) if not missing(r["error"]) and r["error"] is not None else "(no reason given)")]
            for _, r in bad.iterrows()]
    rows += [[cell(case, "text"), cell(backend, "text"), cell(NOT_RUN, "text"), Cell(NOT_RUN_REASON)]
             for case, backend in unfinished]
    return Table(["case", "backend", "status", "reason"], rows, [False] * 4)


def parity_table(frame: pd.DataFrame) -> Table | None:
    pairs = parity_pairs(frame)
    if pairs.empty:
        return None
    rows = []
    for p in pairs.itertuples(index=False):
        if not p.same_hardware:  # two machines: say the ratio, never call it an error
            error = Cell(f"none: other hardware (ratio {p.measured_s / p.modeled_s:.3g}×)")
        elif not p.same_layout:  # one case name, two layouts (dp omitted fills each backend): no error either
            error = Cell(f"none: other layout ({p.layout_difference}; ratio {p.measured_s / p.modeled_s:.3g}×)")
        else:
            error = Cell(fmt_change(p.error_pct), p.error_pct)
        rows.append([cell(p.case, "text"), cell(f"{p.measured_backend} ({p.measured_hardware})", "text"),
                     cell(f"{p.modeled_backend} ({p.modeled_hardware})", "text"), cell(p.measured_s, "seconds"),
                     cell(p.modeled_s, "seconds"), error])
    return Table(["case", "measured", "modeled", "measured step", "modeled step", "model error"], rows,
                 [False, False, False, True, True, False],
                 caption="A model error is shown only where the modeled row models the hardware that was measured, "
                         "in the same layout (devices, dp, tp, pp, cp).")
