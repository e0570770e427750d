"""Compare runs: before and after a change, or two hardware choices, as percent differences.

Rows are matched on (case, backend), the identity of a result row; the first run is the baseline and
every other run is compared with it: change = (other − baseline) / baseline × 100. A case that ran in
one run but not in another (or stopped fitting) is a status change, listed with its reason rather
than hidden. Runs may come from different scenarios (a scenario copied per hardware choice), as long
as their case names match. A serving row whose name matches no earlier run's is matched on its sweep point
instead, (name without the sweep suffix, backend, rate or clients): a scenario with one rate names its case
`tp1`, a sweep `tp1@rate=8` (runner._serving_cases), and the names are the run folders' own (resume keys on
them), so the comparison, not the name, bridges the two.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml

from llmsim.report import compare_figures as CF
from llmsim.report.document import Cell, Document, Paragraph, Point, Section, Table
from llmsim.report.metrics import (METRICS, NOISE_PCT, SERVING_SUMMARY_METRICS, SUMMARY_METRICS, Metric, noise,
                                   pct_change, tone)
from llmsim.report.frames import any_value, ok_rows
from llmsim.report.raster import render
from llmsim.report.run import Run, environment_text, sessions_sentence, work_text, workload_text
from llmsim.report.summary import serving_limits
from llmsim.report.units import fmt_change, format_value, missing
from llmsim.scenario_diff import brief, differences
from llmsim.wording import count

KEY = ["case", "backend"]
def run_letters(n: int) -> list[str]:
    """A, B, C, …: short names for table headers (the run folders are in the 'Runs' table)."""
    letters = string.ascii_uppercase
    return [letters[i] if i < 26 else f"R{i + 1}" for i in range(n)]


def run_labels(runs: list[Run]) -> list[str]:
    """'<scenario>/<run-id>' per run; the letter is prefixed where two would read the same."""
    names = [r.name for r in runs]
    return [f"{letter}: {name}" if names.count(name) > 1 else name for letter, name in zip(run_letters(len(runs)),
                                                                                          names)]


Key = tuple[str, str]
# The suffix a serving sweep adds to a case name (runner._serving_cases: "@rate=8", "@clients=16"), last.
SWEEP_SUFFIX = re.compile(r"@(rate|clients)=([^@]*)$")


def _single(value: Any) -> Any:
    """A scenario's one sweep value (a scalar or a one-element list), else None (a sweep names its cases)."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 else None
    return value


def sweep_point(row: pd.Series, scenario: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(case name without the sweep suffix, backend, "rate" | "clients", value as the suffix writes it) of a
    serving row, or None (not a serving row, or its point unknown). The point is the one asked for: the name's
    suffix, else the saved scenario's single rate or clients (a skipped row has no measured columns), else the
    row's `concurrency` or `request_rate`."""
    if row.get("mode") != "serve":
        return None
    case, backend = str(row["case"]), str(row["backend"])
    tagged = SWEEP_SUFFIX.search(case)
    if tagged:
        return case[:tagged.start()], backend, tagged.group(1), tagged.group(2)
    serving = scenario.get("serving") if isinstance(scenario, dict) else None
    arrival = serving.get("arrival") if isinstance(serving, dict) else None
    if isinstance(arrival, dict):
        key = "clients" if arrival.get("kind") == "concurrency" else "rate"
        value = _single(arrival.get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return case, backend, key, f"{value:g}"
    for key, column in (("clients", "concurrency"), ("rate", "request_rate")):
        value = row.get(column)
        if not missing(value):
            return case, backend, key, f"{float(value):g}"
    return None


@dataclass(frozen=True)
class Matching:
    """Which rows of the runs are the same case: `keys` in order of first appearance, per run its rows by key,
    and the rows matched on their sweep point (run letter, its case, backend, the case it joined and the letter
    of the run that named it so)."""

    keys: list[Key]
    indexes: list[dict[Key, pd.Series]]
    by_point: list[tuple[str, str, str, str, str]]


def match_rows(runs: list[Run]) -> Matching:
    """Match rows on (case, backend); a serving row whose (case, backend) no earlier run has joins an earlier
    run's row of the same sweep point (`sweep_point`) whose case this run does not have under its own name."""
    keys: dict[Key, None] = {}
    points: dict[tuple[str, str, str, str], tuple[Key, str]] = {}   # -> the first key of that point, its run
    indexes: list[dict[Key, pd.Series]] = []
    by_point: list[tuple[str, str, str, str, str]] = []
    for letter, run in zip(run_letters(len(runs)), runs):
        own = {(str(c), str(b)) for c, b in zip(run.frame["case"], run.frame["backend"])}
        index: dict[Key, pd.Series] = {}
        for _, r in run.frame.iterrows():
            key: Key = (str(r["case"]), str(r["backend"]))
            point = sweep_point(r, run.scenario)
            found = points.get(point) if point is not None and key not in keys else None
            if found is not None and found[0] not in own and found[0] not in index:
                by_point.append((letter, key[0], key[1], found[0][0], found[1]))
                key = found[0]
            index[key] = r
            keys.setdefault(key, None)
            if point is not None:
                points.setdefault(point, (key, letter))
        indexes.append(index)
    return Matching(list(keys), indexes, by_point)


def value(row: pd.Series | None, metric: Metric) -> float | None:
    if row is None or row.get("status") not in metric.statuses:
        return None
    v = row.get(metric.column)
    return None if missing(v) else float(v)


# Result columns that say what a modeled row was priced with (results.COLUMNS), and their titles: a comparison
# shows where they differ, since a change of kernel or library changes the prices without a change of workload.
PRICED_WITH: tuple[tuple[str, str], ...] = (("attention_kernel", "attention kernel"), ("all_reduce", "all-reduce library"),
                                           ("optimizer", "optimizer"), ("master_weights", "fp32 master copy"),
                                           ("fuse_allreduce_rms", "all-reduce + RMSNorm fused"))


def priced_with(row: pd.Series | None, column: str) -> str | None:
    """The row's value of a PRICED_WITH column, or None (no row, a row that does not price it, an older run)."""
    if row is None or column not in row:
        return None
    v = row.get(column)
    if missing(v) or v == "":
        return None
    # a boolean (master_weights) as the setting is written, not Python's True / False
    return str(v).lower() if isinstance(v, (bool, np.bool_)) or str(v) in ("True", "False") else str(v)


def priced_with_table(frame: pd.DataFrame, letters: list[str]) -> Table | None:
    """Per (case, backend) that some run priced with a kernel, library or training recipe: each run's PRICED_WITH
    values (– where that run's row prices none), a row whose values differ between runs first."""
    shown = [(c, t) for c, t in PRICED_WITH if any_value(frame, [f"{c}@{x}" for x in letters]).any()]
    if not shown:
        return None
    headers = ["case", "backend"] + [f"{title} {x}" for _, title in shown for x in letters]
    body, differ = [], []
    for _, r in frame.iterrows():
        values = [[r.get(f"{c}@{x}") for x in letters] for c, _ in shown]
        if all(missing(v) for vs in values for v in vs):
            continue
        cells = [Cell(str(r["case"]), str(r["case"]).lower()), Cell(str(r["backend"]), str(r["backend"]).lower())]
        cells += [Cell("–" if missing(v) else str(v), "" if missing(v) else str(v)) for vs in values for v in vs]
        (differ if any(len({v for v in vs if not missing(v)}) > 1 for vs in values) else body).append(cells)
    return Table(headers, differ + body, [False] * len(headers),
                 caption="What each modeled row was priced with, and the attention kernel each measured row ran "
                         "(results.csv columns attention_kernel, all_reduce, optimizer and master_weights); rows where "
                         "the runs differ first; – where a run's row has none (a training row's all-reduce, an "
                         "inference row's optimizer, a measured row's recipe, a measured row whose kernel was not "
                         "watched: warmup 0, compile, several processes) or its run predates the column.")


def priced_with_points(frame: pd.DataFrame, letters: list[str]) -> list[Point]:
    """Per other run and PRICED_WITH column, the matched cases whose value differs from the baseline's."""
    points = []
    for x in letters[1:]:
        for column, title in PRICED_WITH:
            a, b = f"{column}@{letters[0]}", f"{column}@{x}"
            if a not in frame or b not in frame:
                continue
            changed: dict[tuple[str, str], list[str]] = {}
            for _, r in frame.iterrows():
                va, vb = r.get(a), r.get(b)
                if not missing(va) and not missing(vb) and va != vb:
                    changed.setdefault((str(va), str(vb)), []).append(f"{r['case']} on {r['backend']}")
            for (va, vb), cases in changed.items():
                named = ", ".join(cases[:3]) + (f" and {len(cases) - 3} more" if len(cases) > 3 else "")
                points.append(Point(f"The {title} differs: {va} in {letters[0]}, {vb} in {x}, for "
                                    f"{count(len(cases), 'matched case')} ({named}): a change of what is priced, "
                                    f"not of the workload."))
    return points


def comparison_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per (case, backend): status and metrics per run (suffix @A, @B, …) and changes vs A."""
    letters = run_letters(len(runs))
    matching = match_rows(runs)
    indexes = matching.indexes
    out = []
    for key in matching.keys:
        row: dict[str, Any] = dict(zip(KEY, key))
        for letter, idx in zip(letters, indexes):
            r = idx.get(key)
            row[f"status@{letter}"] = "absent" if r is None else r.get("status")
        for column, _ in PRICED_WITH:  # what a modeled row was priced with (empty: not priced, or no such row)
            for letter, idx in zip(letters, indexes):
                row[f"{column}@{letter}"] = priced_with(idx.get(key), column)
        for m in METRICS:
            base = value(indexes[0].get(key), m)
            row[f"{m.column}@{letters[0]}"] = base
            for letter, idx in zip(letters[1:], indexes[1:]):
                new = value(idx.get(key), m)
                row[f"{m.column}@{letter}"] = new
                row[f"{m.column}_change_pct@{letter}"] = pct_change(base, new)
                if m.timed:  # both measured and their step-time p10-p90 ranges overlap
                    both = base is not None and new is not None
                    row[f"{m.column}_within_noise@{letter}"] = both and noise(indexes[0].get(key), idx.get(key))
        out.append(row)
    frame = pd.DataFrame(out)
    # a metric no row of any run has (a serving column in a training comparison, MFU in a serving one): no columns
    empty = [m.column for m in METRICS
             if not frame.empty and frame[[f"{m.column}@{x}" for x in letters]].isna().all().all()]
    return frame.drop(columns=[c for c in frame.columns if c.split("@")[0].removesuffix("_change_pct")
                               .removesuffix("_within_noise") in empty])


def metric_table(frame: pd.DataFrame, metric: Metric, letters: list[str]) -> Table | None:
    """Baseline value, then per other run its value and its change against the baseline."""
    cols = [f"{metric.column}@{x}" for x in letters]
    rows = frame[any_value(frame, cols)]
    if rows.empty:
        return None
    headers = ["case", "backend", f"{letters[0]} (baseline)"]
    for x in letters[1:]:
        headers += [x, f"change {x} vs {letters[0]}"]
    body = []
    for _, r in rows.iterrows():
        base = r[cols[0]]
        cells = [Cell(str(r["case"]), str(r["case"]).lower()), Cell(str(r["backend"]), str(r["backend"]).lower()),
                 Cell(format_value(base, metric.how), None if missing(base) else base)]
        for x in letters[1:]:
            v, pct = r[f"{metric.column}@{x}"], r[f"{metric.column}_change_pct@{x}"]
            cells.append(Cell(format_value(v, metric.how), None if missing(v) else v))
            pct = None if missing(pct) else float(pct)
            quiet = bool(r.get(f"{metric.column}_within_noise@{x}", False))
            text = "–" if pct is None else fmt_change(pct) + (" (within noise)" if quiet else "")
            cells.append(Cell(text, pct, None if quiet else tone(pct, metric)))
        body.append(cells)
    better = "higher" if metric.higher_better else "lower"
    caption = f"{better} is better; report.html colours a change for the better green, for the worse red"
    if metric.timed:
        caption += ("; a change is within noise when both rows are measured and their step-time p10–p90 "
                    "ranges overlap")
    return Table(headers, body, [False, False] + [True] * (len(headers) - 2), caption=caption + ".")


def status_table(runs: list[Run], letters: list[str]) -> Table | None:
    """(case, backend) pairs whose status is not ok in every run, with each run's status and reason."""
    matching = match_rows(runs)
    indexes = matching.indexes
    body = []
    for key in matching.keys:
        rows = [idx.get(key) for idx in indexes]
        statuses = ["absent" if r is None else str(r.get("status")) for r in rows]
        if all(s == "ok" for s in statuses):
            continue
        cells = [Cell(key[0], key[0].lower()), Cell(key[1], key[1].lower())]
        for s, r in zip(statuses, rows):
            reason = "" if r is None or missing(r.get("error")) or not r.get("error") else f": {r.get('error')}"
            cells.append(Cell(s + reason, s))
        body.append(cells)
    if not body:
        return None
    return Table(["case", "backend"] + letters, body, [False] * (2 + len(letters)))


def hardware_of(run: Run) -> str:
    """The devices a run's rows ran on or modeled, e.g. 'a100-80gb, cpu-host'."""
    return ", ".join(sorted({str(h) for h in run.frame["hardware"] if isinstance(h, str)})) or "–"


def runs_table(runs: list[Run], letters: list[str]) -> Table:
    body = []
    for letter, run in zip(letters, runs):
        counts = run.frame["status"].value_counts()
        hardware = hardware_of(run)
        body.append([Cell(letter, letter), Cell(run.name, run.name), Cell(str(run.path), str(run.path)),
                     Cell(hardware, hardware), Cell(workload_text(run.frame, run.scenario)),
                     Cell(", ".join(f"{v} {k}" for k, v in counts.items()) or "no rows"),
                     Cell(environment_text(run.environment))])
    return Table(["run", "name", "folder", "hardware", "workload", "rows", "environment"], body,
                 [False] * 7)


def _metric(column: str) -> Metric:
    return next(m for m in METRICS if m.column == column)


def summary_metrics(frame: pd.DataFrame, letters: list[str]) -> tuple[str, ...]:
    """The columns a comparison summarises and draws: a serving run's requests/s, TTFT and TPOT p99 and goodput
    where any row has requests/s, else throughput, energy and memory."""
    serving = any_value(frame, [f"requests_per_s@{x}" for x in letters]).any()
    return SERVING_SUMMARY_METRICS if serving else SUMMARY_METRICS


def reported(frame: pd.DataFrame, metric: Metric, letters: list[str]) -> bool:
    """Whether some run has a value of `metric` (a section per metric only then: a serving run has no MFU);
    comparison_frame keeps the columns of these only."""
    return f"{metric.column}@{letters[0]}" in frame


def change_points(frame: pd.DataFrame, letters: list[str]) -> list[Point]:
    """Per other run: the median change of the summary metrics (summary_metrics) over the cases both ran."""
    points = []
    for x in letters[1:]:
        details = []
        for column in summary_metrics(frame, letters):
            m = _metric(column)
            if f"{column}_change_pct@{x}" not in frame:  # no row has it (comparison_frame)
                continue
            changes = frame[["case", "backend", f"{column}_change_pct@{x}"]].dropna()
            if changes.empty:
                continue
            pct = changes[f"{column}_change_pct@{x}"].astype(float)
            quiet_col = f"{column}_within_noise@{x}"
            quiet = (frame.loc[changes.index, quiet_col].astype(bool) if quiet_col in frame
                     else pd.Series(False, index=changes.index))
            lo, hi = changes.loc[pct.idxmin()], changes.loc[pct.idxmax()]
            n_better = sum(tone(p, m) == "better" and not q for p, q in zip(pct, quiet))
            n_worse = sum(tone(p, m) == "worse" and not q for p, q in zip(pct, quiet))
            n_noise = int(quiet.sum())
            cases = count(len(pct), "matched case")
            if not n_better and not n_worse:
                why = [f"{n_noise} within the measured noise, their step-time p10–p90 ranges overlap"] if n_noise else []
                why += [f"{len(pct) - n_noise} within ±{NOISE_PCT}%"] if len(pct) > n_noise else []
                details.append(f"{m.title}: unchanged in {cases} ({'; '.join(why)}).")
                continue
            noisy = f", {n_noise} within noise" if n_noise else ""
            n_small = len(pct) - n_better - n_worse - n_noise   # the rest: changes under NOISE_PCT, uncoloured
            noisy += f", {n_small} within ±{NOISE_PCT}%" if n_small else ""
            text = (f"{m.title}: median {fmt_change(float(pct.median()))} over {cases} "
                    f"({n_better} better, {n_worse} worse{noisy}")
            low, high = fmt_change(float(pct.min())), fmt_change(float(pct.max()))
            if len(pct) > 1 and low != high:   # one change for every case is no range (trial 39)
                text += (f"; from {low} for {lo['case']} on {lo['backend']} to "
                         f"{high} for {hi['case']} on {hi['backend']}")
            details.append(text + ").")
        head = f"{x} against the baseline {letters[0]}:"
        if not details:
            head += " no case ran in both, nothing to compare."
        points.append(Point(head, details))
    return points


# A status change shared by more cases than this is one point with their count (the table lists them all)
MAX_STATUS_POINTS = 3


def status_points(frame: pd.DataFrame, letters: list[str]) -> list[Point]:
    """Every case whose status differs from the baseline's (ok in A, does-not-fit in B), one point each; a change
    shared by more than MAX_STATUS_POINTS cases is one point that counts them (trial 43: 26 bullets "X on roofline:
    ok in A, absent in B" repeated the "Not run or not fitting" table)."""
    points = []
    a = letters[0]
    for x in letters[1:]:
        changed = frame[frame[f"status@{a}"] != frame[f"status@{x}"]]
        for (before, after), group in changed.groupby([f"status@{a}", f"status@{x}"], sort=False):
            cases = [f"{r['case']} on {r['backend']}" for _, r in group.iterrows()]
            if len(cases) <= MAX_STATUS_POINTS:
                points += [Point(f"{case}: {before} in {a}, {after} in {x}.") for case in cases]
                continue
            named = ", ".join(cases[:MAX_STATUS_POINTS]) + f", … ({len(cases) - MAX_STATUS_POINTS} more)"
            points.append(Point(f"{count(len(cases), 'case')} {before} in {a}, {after} in {x}: {named}; each is in "
                                f"\"Not run or not fitting\" below."))
    return points


def fastest_point(runs: list[Run], letters: list[str]) -> Point:
    details = []
    for letter, run in zip(letters, runs):
        ok = ok_rows(run.frame, "tokens_per_s")
        parts = []
        for backend, g in ok.groupby("backend", sort=False):
            best = g.loc[g["tokens_per_s"].astype(float).idxmax()]
            parts.append(f"{best['case']} on {backend} ({format_value(best['tokens_per_s'], 'rate')} tokens/s)")
        details.append(f"{letter}: " + ("; ".join(parts) if parts else "nothing ran"))
    return Point("Fastest strategy that fits, per run and backend:", details)


def workload_points(runs: list[Run], letters: list[str]) -> list[Point]:
    """A point when the runs asked for different work (another model, other prompt/output lengths, another batch:
    report.run.work_text): a change between them is then the work's as much as the hardware's, strategy's or
    code's. Runs of the same work on different hardware are what a comparison is for, and say nothing here."""
    works = [work_text(run.frame, run.scenario) for run in runs]
    known = [(x, w) for x, w in zip(letters, works) if w]
    if len({w for _, w in known}) < 2:
        return []
    return [Point("The runs asked for different work, so a change below is partly the work's, not only the "
                  "hardware's, the strategy's or the code's:", [f"{x}: {w}" for x, w in known])]


# The cases a serving-limits point lists at most (the rest counted)
MAX_LIMIT_CASES = 8


def serving_limit_points(runs: list[Run], letters: list[str]) -> list[Point]:
    """Why a serving run's figures moved: per other run, the served cases (by name and backend, in both runs) where
    what held the rate back (summary.serving_limits: the batch at max_num_seqs, the KV cache full) differs from the
    baseline's. Trial 41: a comparison of max_num_seqs 256 against 8 named the key but not that B's batch sat at 8
    while A's never reached 256."""
    def limits(run: Run) -> dict[tuple[str, str], tuple[dict[str, str], dict[str, Any]]]:
        """(case, backend) -> (serving_limits, what is compared of them: each kind, and for the batch the row's
        max_num_seqs; not the counts of iterations or preemptions, which differ between almost any two runs)."""
        f = run.frame
        if "mode" not in f or "status" not in f:
            return {}
        served = f[(f["mode"] == "serve") & (f["status"] == "ok")]
        out = {}
        for _, r in served.iterrows():
            held = serving_limits(r)
            out[(str(r["case"]), str(r["backend"]))] = (held, {k: r["batch"] if k == "batch" else None for k in held})
        return out

    def said(held: dict[str, str]) -> str:
        return " and ".join(held.values()) or "neither limit (the device or the arrivals set the pace)"

    base = limits(runs[0])
    points = []
    for x, run in zip(letters[1:], runs[1:]):
        lines = []
        for key, (mine, compared) in limits(run).items():
            # max_num_seqs 8 in A, 16 in B holds both back, by other limits (trial 44): a difference
            if key not in base or base[key][1] == compared:
                continue
            lines.append(f"{key[0]} on {key[1]}: in {x} {said(mine)}; in {letters[0]} {said(base[key][0])}")
        if lines:
            more = len(lines) - MAX_LIMIT_CASES
            points.append(Point(f"Why {x}'s serving figures differ from {letters[0]}'s: what held the rate back "
                                f"differs in {count(len(lines), 'case')}" + (f" ({more} more not listed)" if more > 0
                                                                            else "") + ":",
                                lines[:MAX_LIMIT_CASES]))
    return points


# The differences one scenario point lists at most (a comparison of two unrelated scenarios differs everywhere)
MAX_SCENARIO_DIFFERENCES = 8


def scenario_points(runs: list[Run], letters: list[str]) -> list[Point]:
    """Per other run, the keys of its saved scenario that differ from the baseline's, with both values
    (scenario_diff.differences): what the user changed between the runs, said first (trial 41: a comparison of
    max_num_seqs 256 against 8 named the change only inside the Runs table's workload cell). None for a run whose
    scenario.yaml is missing or damaged."""
    base = runs[0].scenario
    points = []
    for x, run in zip(letters[1:], runs[1:]):
        if not base or not run.scenario:
            continue
        found = [f"{key}: {brief(a, _yaml_value)} in {letters[0]}, {brief(b, _yaml_value)} in {x}"
                 for key, a, b in differences(base, run.scenario)]
        if not found:
            points.append(Point(f"{x}'s scenario is {letters[0]}'s, unchanged: a change below is the code's or the "
                                f"host's (or noise), not the input's."))
            continue
        shown = found[:MAX_SCENARIO_DIFFERENCES]
        more = len(found) - len(shown)
        points.append(Point(f"{x}'s scenario differs from {letters[0]}'s in {count(len(found), 'key')}"
                            + (f" ({more} more not listed)" if more else "") + ":", shown))
    return points


def _yaml_value(value: Any) -> str:
    """A scenario value as YAML writes it on one line (true, 8, [1, 2], {kind: continuous}); `absent` for a key one
    scenario lacks (or holds as null: the saved scenarios fill every default, so the two read alike)."""
    if value is None:
        return "absent"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def comparison_document(runs: list[Run]) -> Document:
    """The comparison report: summary of changes, then one table per metric, then status changes."""
    letters = run_letters(len(runs))
    frame = comparison_frame(runs)
    labels = dict(zip(letters, run_labels(runs)))
    summary = [Point("Runs compared: " + "; ".join(f"{x} = {labels[x]} ({hardware_of(r)})" for x, r in
                                                   zip(letters, runs)) + f"; {letters[0]} is the baseline.")]
    summary += scenario_points(runs, letters)
    # a run whose rows came from more than one session (a --resume, perhaps on another host): said as its own
    # report says it, so a comparison does not hide it (trial 49: "torch threads 2 → 1" showed in B's report only)
    summary += [Point(f"{x}: {text}") for x, run in zip(letters, runs)
                if (text := sessions_sentence(run.frame, run.sessions)) is not None]
    serving = [x for x, r in zip(letters, runs) if "mode" in r.frame and (r.frame["mode"] == "serve").any()]
    if serving and len(serving) < len(runs):  # a serving run's rows are rates, a step run's steps: no shared metric
        summary.append(Point(f"{', '.join(serving)} {'is a serving run' if len(serving) == 1 else 'are serving runs'} "
                             f"and {', '.join(x for x in letters if x not in serving)} not: their rows share no "
                             f"case and few metrics, so little below compares; compare serving runs with serving "
                             f"runs."))
    elif not serving or len(serving) == len(runs):
        summary += workload_points(runs, letters)
    # serving rows' tokens/s follow the offered rate (the load), so "fastest" would rank the load
    fastest = [] if summary_metrics(frame, letters) == SERVING_SUMMARY_METRICS else [fastest_point(runs, letters)]
    by_point = match_rows(runs).by_point
    if by_point:
        summary.append(Point("Matched by sweep point, the names differing only by the sweep suffix: "
                             + "; ".join(f"{case} on {backend} in {x} = {target} in {y}"
                                         for x, case, backend, target, y in by_point) + "."))
    summary += (change_points(frame, letters) + serving_limit_points(runs, letters) + priced_with_points(frame, letters)
                + fastest
                + status_points(frame, letters))
    sections = [Section("Runs", [runs_table(runs, letters)], "runs")]
    priced = priced_with_table(frame, letters)
    if priced is not None:
        sections.append(Section("What the rows were priced with or ran", [priced], "priced-with"))
    figs = [
        render("change", "Change against the baseline",
                f"percent change of each case against {letters[0]}; green is better, red is worse.",
                lambda: CF.changes(frame, letters, [_metric(c) for c in summary_metrics(frame, letters)])),
        render("throughput", "Throughput per run", "tokens/s of every case, one bar per run.",
                lambda: CF.grouped(frame, letters, _metric("tokens_per_s"))),
    ]
    sections.append(Section("Changes at a glance", figs, "glance"))
    shown = [m for m in METRICS if reported(frame, m, letters)]
    for m in shown:
        table = metric_table(frame, m, letters)
        sections.append(Section(m.title, [table] if table else [Paragraph("No run reports this metric.")],
                                m.column))
    if not shown:
        sections.append(Section("Metrics", [Paragraph("No run reports a metric: no case ran in any run.")],
                                "metrics"))
    status = status_table(runs, letters)
    sections.append(Section("Not run or not fitting", [status] if status else
                            [Paragraph("Every case ran in every run.")], "not-run"))
    sections.append(Section("About", [Paragraph(
        "change = (run − baseline) / baseline × 100, per (case, backend) that has a value in both. Every "
        "value with both runs side by side: comparison.csv in this folder; the inputs: runs.json.")], "about"))
    meta = [("baseline", labels[letters[0]]), ("compared", ", ".join(labels[x] for x in letters[1:]))]
    return Document("llmsim comparison", summary, sections, meta)
