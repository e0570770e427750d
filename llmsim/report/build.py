"""Build a run's report (report.md + report.html + figures/) or a comparison of several runs.

This is the only module that writes files. Figures are drawn by `figures.py` (which never saves),
rendered here once to PNG bytes, and used twice: as files beside report.md and base64 inside
report.html, so both reports show the very same pixels.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from llmsim.report import figures as F
from llmsim.report import tables as T
from llmsim.report.compare import comparison_document, comparison_frame, run_labels
from llmsim.report.document import Block, Document, Figure, Paragraph, Point, Section, Table
from llmsim.report.html import render_html
from llmsim.report.markdown import FIGURE_DIR, render_markdown
from llmsim.report.raster import render
from llmsim.report.run import (TRACE_FILE, Run, catalog_capacity, environment_text, load_run, read_csv_file, run_file,
                               sessions_sentence, workload_text)
from llmsim.report.summary import summarize
from llmsim.report.trace import TraceError, load_trace
from llmsim.results import new_run_dir, write_atomic


def _gantt(run: Run) -> tuple[object, object]:
    if run.trace is None:
        raise F.NoData(f"the run folder has no {TRACE_FILE} (a Chrome trace of the cluster; the SimPy "
                       "cluster backend will write one)")
    try:
        spans = load_trace(run.trace)
    except TraceError as exc:
        raise F.NoData(f"{TRACE_FILE} could not be read: {exc}") from None
    return F.gantt(spans, case=run.trace_case)


MAX_CDF_CASES = 6   # latency CDF lines in one panel before they blur into each other


def _label(row: pd.Series) -> str:
    return f"{row['case']} ({row['backend']})"


def cdf_cases(frame: pd.DataFrame) -> pd.DataFrame:
    """The serving rows whose per-request CSVs the latency CDFs draw: every one when there are at most
    MAX_CDF_CASES, else per strategy and backend its lowest rate, the highest that met the SLO and its highest
    rate (in that order of precedence, the first MAX_CDF_CASES)."""
    rows = F.serving_rows(frame)
    if "requests_file" not in rows:
        return rows.iloc[0:0]
    rows = rows[rows["requests_file"].notna()]
    if len(rows) <= MAX_CDF_CASES:
        return rows
    picked: list[int] = []
    for _, g in F.serving_curves(rows):
        knee = F.knee_rate(g)
        rates = [float(g["request_rate"].min()), knee, float(g["request_rate"].max())]
        for rate in rates:
            if rate is None:
                continue
            index = g.index[g["request_rate"].astype(float) == rate][0]
            if index not in picked:
                picked.append(index)
    return rows.loc[picked[:MAX_CDF_CASES]]


def timeline_case(frame: pd.DataFrame) -> tuple[pd.Series, str] | None:
    """The serving row whose timeline the report draws, and why that one: of the first strategy and backend
    with a timeline (a simulation's), the highest rate that met the SLO, else its highest rate."""
    rows = F.serving_rows(frame)
    if "timeline_file" not in rows:
        return None
    rows = rows[rows["timeline_file"].notna()]
    for _, g in F.serving_curves(rows):
        knee = F.knee_rate(g)
        if knee is not None:
            return g[g["request_rate"].astype(float) == knee].iloc[0], "the highest rate that met the SLO"
        return g.iloc[-1], "its highest rate; no rate met the SLO" if "slo_met" in g and g["slo_met"].notna().any() \
            else "its highest rate"
    return None


def _slo(frame: pd.DataFrame) -> dict[str, float]:
    slo = {}
    for key, column in (("ttft_s", "slo_ttft_s"), ("tpot_s", "slo_tpot_s"), ("percentile", "slo_percentile")):
        if column in frame and frame[column].notna().any():
            slo[key] = float(frame[column].dropna().iloc[0])
    return slo


# What the latency CDF reads of a per-request CSV (llmsim.serving.metrics.REQUEST_COLUMNS)
CDF_COLUMNS = ("status", "ttft_s", "tpot_s")


def request_tables(run: Run, cases: pd.DataFrame) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """(label, per-request table) of every case whose requests/ CSV reads with CDF_COLUMNS, and 'label
    (file)' of those whose CSV is missing, unreadable or lacks them: named in the figure's caption (trial 31: a
    damaged CSV was left out of the figure while the caption still listed its case)."""
    curves, unusable = [], []
    for _, row in cases.iterrows():
        path = run_file(run, row["requests_file"])
        table = read_csv_file(path) if path is not None else None
        if table is not None and all(c in table for c in CDF_COLUMNS):
            curves.append((_label(row), table))
        else:
            unusable.append(f"{_label(row)} ({row['requests_file']})")
    return curves, unusable


def _latency_cdf(run: Run, curves: list[tuple[str, pd.DataFrame]]) -> tuple[object, object]:
    if not curves:
        raise F.NoData("no serving case has a readable per-request CSV under requests/ in the run folder")
    return F.latency_cdf(curves, _slo(F.serving_rows(run.frame)))


def _timeline(run: Run, chosen: tuple[pd.Series, str] | None) -> tuple[object, object]:
    if chosen is None:
        raise F.NoData("no serving case has a per-iteration timeline (a simulation's requests/*.timeline.csv; "
                       "a measured engine records none)")
    row = chosen[0]
    path = run_file(run, row["timeline_file"])
    table = read_csv_file(path) if path is not None else None
    if table is None:
        raise F.NoData(f"the timeline file of {_label(row)} is missing or unreadable: {row['timeline_file']}")
    return F.serving_timeline(table, _label(row))


def run_figures(run: Run, capacity: dict[str, float]) -> dict[str, Figure]:
    """Every figure of a run report, drawn or with the reason it is absent, by name."""
    frame = run.frame
    curves, unusable = request_tables(run, cdf_cases(frame))
    cdf_names = ", ".join(label for label, _ in curves) or "none"
    if unusable:
        cdf_names += (f"; not drawn, its per-request CSV missing, unreadable or without "
                      f"{'/'.join(CDF_COLUMNS)}: {', '.join(unusable)}")
    # a closed loop's rate is what the engine achieved with its clients, not a rate offered to it
    offered = "achieved (closed loop)" if F.closed_loop(F.serving_rows(frame)) else "offered"
    chosen = timeline_case(frame)
    timeline_name = f"{_label(chosen[0])}, {chosen[1]}" if chosen is not None else "no case"
    specs = [
        ("throughput", "Throughput per strategy and backend",
         "tokens/s of every case that ran; one panel per backend, each on its own scale; a measured bar's "
         "error bar spans tokens/s at its p90 and p10 step time (the spread of its timed steps).",
         lambda: F.throughput(frame)),
        ("breakdown", "Step-time breakdown",
         "compute, exposed communication, pipeline bubble and the rest, stacked; the black tick is the "
         "ideal step m·C/n.", lambda: F.breakdown(frame)),
        ("scaling", "Scaling with devices",
         "step time against devices with the ideal T = m·C/n dashed (log-log), and the scaling efficiency "
         "ideal / actual.", lambda: F.scaling(frame)),
        ("energy", "Energy per token", "joules per token of every case that ran (lower is better).",
         lambda: F.energy(frame)),
        ("memory", "Memory per device",
         "by kind where the backend models it, else the peak; the red tick is the device's capacity; "
         "hatched cases do not fit.", lambda: F.memory(frame, capacity)),
        ("parity", "Modeled vs measured",
         "modeled against measured step time of the same case on the same hardware, with the model's error.",
         lambda: F.parity(frame)),
        ("serving_latency", "Latency against load",
         "time to first token and time per output token, median (solid) and 99th percentile (dashed), against "
         f"the {offered} request rate; dotted: the SLO bounds.", lambda: F.serving_latency(frame)),
        ("serving_goodput", "Goodput against load",
         f"requests/s served and requests/s meeting the SLO (goodput) against the {offered} rate; the dashed "
         "diagonal is every offered request served. Served counts finished requests over the whole run, first "
         "arrival to last token (as vLLM's bench serve does), so a run that keeps up still sits below the "
         "diagonal by its drain: the last requests' latency after the last arrival, a share that shrinks as the "
         "run spans more arrivals; a point above it is a sample of arrivals that came faster than the nominal "
         "rate.", lambda: F.serving_goodput(frame)),
        ("serving_knee", "Throughput-latency knee",
         "time to first token at the 99th percentile (dotted: the SLO's TTFT bound) and goodput against the "
         f"{offered} rate; the dash-dotted vertical line marks the highest rate whose requests met the SLO (TTFT and "
         "TPOT within bounds for at least the SLO's percentile of them).", lambda: F.serving_knee(frame)),
        ("latency_cdf", "Latency distributions",
         f"per-request TTFT and TPOT as cumulative distributions (log time), from the per-request CSVs under "
         f"requests/; dotted: the SLO's bounds and percentile. Cases: {cdf_names}.",
         lambda: _latency_cdf(run, curves)),
        ("serving_timeline", "Batch size and KV cache over time",
         f"{timeline_name}: sequences in each iteration and the KV-cache blocks in use, per replica, over "
         f"simulated time, from the simulation's per-iteration timeline (requests/*.timeline.csv).",
         lambda: _timeline(run, chosen)),
        ("gantt", f"Pipeline timeline of {run.trace_case or 'the traced case'} (one replica)",
         "each lane a device or stream of one pipeline replica from the cluster trace; gaps are idle "
         "time; the case with the deepest pipeline is shown, its trace and every other case's are in "
         "trace/ of the run folder." if run.trace_case else
         "each lane a device or stream of one pipeline replica from the cluster trace; gaps are idle time.",
         lambda: _gantt(run)),
    ]
    skipped = STEP_FIGURES if serving_only(frame) else ()
    return {name: render(name, title, caption, draw) for name, title, caption, draw in specs if name not in skipped}


# Figures of a step (training, prefill, decode) that a run of serving rows only has nothing for: a serving row has
# no step breakdown, no devices sweep against the ideal T = m·C/n and no pipeline trace (trial 23: empty sections)
STEP_FIGURES = ("breakdown", "scaling", "gantt")


def serving_only(frame: pd.DataFrame) -> bool:
    """Every row of the run is a serving row (mode serve): the report leaves out the step-only sections."""
    return len(frame) > 0 and "mode" in frame and bool((frame["mode"] == "serve").all())


def _some(table: Table | None) -> list[Block]:
    return [table] if table is not None else []


def run_document(run: Run, figs: dict[str, Figure], capacity: dict[str, float]) -> Document:
    frame = run.frame
    scenario = str(frame["scenario"].iloc[0]) if len(frame) else str(run.scenario.get("name", "?"))
    serving = [Section("Serving", [figs["serving_latency"], figs["serving_goodput"], figs["serving_knee"],
                                   figs["latency_cdf"], figs["serving_timeline"]], "serving")] \
        if not F.serving_rows(frame).empty else []
    damaged = ([Paragraph(f"The saved scenario cannot be used: {run.scenario_problem}.")]
               if run.scenario_problem is not None else [])
    if run.rows_problem is not None:
        damaged.append(Paragraph(f"Some saved rows cannot be read: {run.rows_problem}."))
    sections = [
        Section("Results", [*damaged, T.results_table(frame), figs["throughput"]], "results"),
        *serving,
        *([] if serving_only(frame) else [
            Section("Where the time goes", [figs["breakdown"]] + _some(T.breakdown_table(frame)), "breakdown"),
            Section("Scaling", [figs["scaling"]], "scaling")]),
        Section("Energy", [figs["energy"]], "energy"),
        Section("Memory", [figs["memory"]] + _some(T.memory_table(frame, capacity)), "memory"),
        *([Section("Mixture of experts", [experts], "experts")] if (experts := T.experts_table(frame)) else []),
        Section("Modeled vs measured", [figs["parity"]] + _some(T.parity_table(frame)), "parity"),
        *([] if serving_only(frame) else [Section("Pipeline timeline", [figs["gantt"]], "timeline")]),
        Section("Not run or not fitting", _not_run_blocks(run), "not-run"),
        Section("About this run", [Paragraph(
            "Columns and units: docs/results.md of llmsim. All rows, with every column: results.csv and "
            "results.jsonl in this folder; the resolved scenario: scenario.yaml; the machine: "
            "environment.json" + ("; how cases are priced, as the run said it (notes.txt):" if run.notes else "."))]
            + [Paragraph(f"Note: {note}") for note in run.notes],
            "about"),
    ]
    meta = [("scenario", scenario), ("run", run.path.name), ("workload", workload_text(frame, run.scenario)),
            ("environment", environment_text(run.environment))]
    summary = summarize(frame, capacity)
    left = run.unfinished
    if left is not None and left.planned is not None:   # right under the row count: "7 result rows: 7 ok."
        said = [left.sentence(run.path)] if left.cases else []
        said += [text] if (text := left.unknown_sentence()) else []
        summary[1:1] = [Point(text) for text in said]
    mixed = sessions_sentence(frame, run.sessions)
    if mixed is not None:   # rows added by a --resume, perhaps on another host or llmsim: said under the row count
        summary.insert(1, Point(mixed))
    return Document(f"llmsim run: {scenario}", summary, sections, meta)


def _not_run_blocks(run: Run) -> list[Block]:
    """The "Not run or not fitting" section: the planned cases without a row (a run cut short, with the command
    that runs them), every skipped, failed and does-not-fit row, and "Every case ran." only when every case the
    run planned (its planned.json) has a row."""
    left = run.unfinished
    blocks: list[Block] = [Paragraph(left.sentence(run.path, "listed below"))] \
        if left is not None and (left.cases or left.planned is None) else []
    unknown = left.unknown_sentence() if left is not None else None
    blocks += [Paragraph(unknown)] if unknown else []
    table = T.not_ok_table(run.frame, left.cases if left is not None else ())
    blocks += _some(table)
    if unknown and table is None and not left.cases:  # type: ignore[union-attr]
        blocks.append(Paragraph("Every case of the scenario ran."))
    return blocks or [Paragraph("Every case ran.")]


def write_document(doc: Document, folder: Path) -> list[Path]:
    """report.md, report.html and figures/*.png into `folder`; stale PNGs of an earlier build go."""
    folder.mkdir(parents=True, exist_ok=True)
    fig_dir = folder / FIGURE_DIR
    written: list[Path] = []
    drawn = [f for f in doc.figures() if f.png is not None]
    if drawn:
        if fig_dir.exists() and not fig_dir.is_dir():   # mkdir's "File exists" named no reason (trial 34)
            raise NotADirectoryError(errno.ENOTDIR, "a file where the report's figures folder goes (move it away)",
                                     str(fig_dir))
        fig_dir.mkdir(exist_ok=True)
    for f in drawn:
        path = fig_dir / f"{f.name}.png"
        path.write_bytes(f.png or b"")
        written.append(path)
    if fig_dir.is_dir():
        for old in fig_dir.glob("*.png"):
            if old not in written:
                old.unlink()
    md, page = folder / "report.md", folder / "report.html"
    write_atomic(md, render_markdown(doc))
    write_atomic(page, render_html(doc))
    return [md, page] + written


def write_report(run_dir: Path, frame: pd.DataFrame | None = None) -> list[Path]:
    """(Re)build the report of one run folder; returns the files written, report.md and report.html first."""
    return write_run_report(load_run(Path(run_dir), frame))


def write_run_report(run: Run) -> list[Path]:
    """The report of a run already read (load_run); a damaged scenario.yaml is named in it (Run.scenario_problem)."""
    capacity = catalog_capacity()
    doc = run_document(run, run_figures(run, capacity), capacity)
    return write_document(doc, run.path)


def write_comparison(run_dirs: Sequence[Path | Run], folder: Path | None = None,
                     parent: Path = Path("reports")) -> Path:
    """Compare runs (the first is the baseline) into `folder` (default: a fresh <parent>/compare/<stamp>/,
    as `llmsim report --out PARENT` makes it: --out is the parent, as for run and plan). The runs are read
    first: a folder that is not a run, or one without rows, leaves no empty comparison folder behind. A run
    already read (load_run) is not read again: its warnings were said once."""
    runs = [r if isinstance(r, Run) else load_run(Path(r)) for r in run_dirs]
    folder = Path(folder) if folder is not None else new_run_dir(parent, "compare")
    doc = comparison_document(runs)
    write_document(doc, folder)
    write_atomic(folder / "comparison.csv", comparison_frame(runs).to_csv(index=False))
    write_atomic(folder / "runs.json", json.dumps([{"label": label, "path": str(r.path.resolve())}
                                                   for label, r in zip(run_labels(runs), runs)], indent=2))
    return folder
