"""The plain-words summary at the top of a report: who wins, and why the others lose.

A reader who opens the report wants three answers before any table: which strategy that fits is the
fastest, which is the most energy-efficient, and what holds the others back. The "why" comes from the
step-time breakdown columns (compute, exposed communication, pipeline bubble, other) and from the
error of does-not-fit rows, so it is the backend's own accounting, not a guess.

Backends are summarised separately: a measured CPU and a modeled GPU cluster are not competitors.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from llmsim.measure.host_load import BUSY_LOAD_PER_CORE
from llmsim.report.document import Point
from llmsim.report.figures import (BREAKDOWN, CROSS_HARDWARE, OTHER_LAYOUT, by_backend, device_capacity, panel_title,
                                   parity_pairs)
from llmsim.report.frames import ok_rows, one_thread
from llmsim.report.metrics import noise, spread
from llmsim.report.units import fmt_bytes, fmt_joules, fmt_percent, fmt_rate, fmt_seconds, missing
from llmsim.wording import count

MAX_DETAILS = 8      # losers explained per backend; the tables have the rest
MAX_REASON = 240     # characters of an error message quoted in the summary
SAME_SPEED = 0.01    # within 1%: "as fast", no reason to look for
# A measured case more than this many times its device ratio faster than a one-device case of the same backend
# and hardware: beyond what smaller per-process working sets (caches) give; the one-device time was starved
SUPERLINEAR = 1.5
BIG_SHARE = 0.1      # waiting that takes this share of a step is named even when it is not the main reason
# Joules per token this close (relative) to the lowest are a tie: the same energy, summed in another order (two
# layouts whose devices do the same work); any real difference between cases is far larger
ENERGY_TIE = 1e-9
BREAKDOWN_LABEL = {col: label for col, label, _ in BREAKDOWN}


def _f(value: Any) -> float:
    return 0.0 if missing(value) else float(value)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def devices(n: float) -> str:
    """'1 device', '4 devices'."""
    return count(n, "device")


def _devices(row: Any) -> str:
    n = row.get("n_devices")
    return "" if missing(n) else f" on {devices(n)}"


def why_slower(row: pd.Series, best: pd.Series) -> str:
    """The main reason `row` is slower than `best` (same backend, same device count), from the breakdown.

    The component that grew the most against the winner is the main reason: waiting (bubble, exposed
    communication, other) is told as its share of the step ("31.0% of its step is pipeline bubble"),
    more compute as a ratio to the winner's. Any other waiting that takes a large share of the step is
    named too.
    """
    step = _f(row.get("step_time_s"))
    present = [(col, label) for col, label, _ in BREAKDOWN if not missing(row.get(col))]
    if not present or step <= 0:
        return "there is no step-time breakdown to tell why"
    growth = {col: _f(row.get(col)) - _f(best.get(col)) for col, _ in present}
    main = max(present, key=lambda p: growth[p[0]])[0]
    reasons = [_compute_reason(row, best) if main == "compute_time_s" else
               f"{fmt_percent(_f(row.get(main)) / step)} of its step is {BREAKDOWN_LABEL[main]}"]
    reasons += [f"{fmt_percent(_f(row.get(col)) / step)} of its step is {label}" for col, label in present
                if col not in (main, "compute_time_s") and _f(row.get(col)) / step >= BIG_SHARE]
    return "; ".join(reasons)


def _compute_reason(row: pd.Series, best: pd.Series) -> str:
    mine, theirs = _f(row.get("compute_time_s")), _f(best.get("compute_time_s"))
    if theirs <= 0:
        return f"its compute takes {fmt_seconds(mine)}"
    return f"its compute takes {fmt_seconds(mine)}, {mine / theirs:.2f}× the winner's"


def _does_not_fit(row: pd.Series, capacity: dict[str, float]) -> str:
    error = row.get("error")
    if not missing(error) and error:
        return f"{row['case']} on {row['backend']} does not fit: {_short(error)}"
    need = row.get("peak_memory_bytes_per_device")
    cap = device_capacity(row, capacity)
    if not missing(need) and cap:
        return (f"{row['case']} on {row['backend']} does not fit: needs {fmt_bytes(float(need))} > "
                f"{fmt_bytes(cap)} per device")
    return f"{row['case']} on {row['backend']} does not fit (no reason given)"


def loser_details(ok: pd.DataFrame, best: pd.Series) -> list[str]:
    """Why the other strategies lose, among those on the winner's device count (a strategy on a smaller
    cluster loses by size, which says nothing about the strategy; the scaling figure covers that)."""
    same_n = ok["n_devices"].map(lambda n: _f(n) == _f(best.get("n_devices")))
    others = ok[same_n & (ok.index != best.name)].copy()
    others["_slow"] = float(best["tokens_per_s"]) / others["tokens_per_s"].astype(float)
    details = []
    for _, row in others.sort_values("_slow").head(MAX_DETAILS).iterrows():
        if noise(row, best):
            details.append(f"{row['case']}: within noise of {best['case']} ({row['_slow']:.2f}× by the mean step, "
                           f"but their step-time p10–p90 ranges overlap{_spreads(row, best)}).")
        elif row["_slow"] <= 1 + SAME_SPEED:
            details.append(f"{row['case']}: as fast as {best['case']}.")
        else:
            details.append(f"{row['case']}: {row['_slow']:.2f}× slower — {why_slower(row, best)}.")
    if len(others) > MAX_DETAILS:
        details.append(f"… and {len(others) - MAX_DETAILS} more in the tables below.")
    elsewhere = ok[~same_n]
    if len(elsewhere):
        counts = sorted({int(_f(n)) for n in elsewhere["n_devices"] if not missing(n)})
        sizes = ", ".join(str(n) for n in counts) or "unknown"
        # the scaling figure draws a strategy only where it ran on two or more device counts (figures.scaling)
        curves = ok.groupby(["backend", "strategy"])["n_devices"].nunique().ge(2).any() \
            if {"backend", "strategy"} <= set(ok.columns) else False
        details.append(f"{count(len(elsewhere), 'more case')} ran on other device counts "
                       f"({sizes}): see the tables{' and the scaling figure' if curves else ''}.")
    return details


def _ms(value: Any) -> str:
    return "–" if missing(value) else fmt_seconds(float(value))


def served_text(row: Any) -> str:
    """What happened to the requests of one serving row, in counts, and the window its rates are over:
    '200 of 200 requests served (0 rejected, 0 unfinished) at 1.71 requests/s over 117 s, first arrival to
    last token (99.5 s of arrivals, then 17.5 s for the requests still running after the last arrival to finish)'.
    requests_per_s is completed / that window (vLLM bench's request_throughput), so it is below the offered rate
    by that tail even when every request is served."""
    sent, done = row.get("requests_sent"), row.get("requests_done")
    if missing(sent) or missing(done):  # a row written before these extras existed
        return f"{fmt_rate(_f(row['requests_per_s']))} requests/s completed"
    rejected = 0 if missing(row.get("requests_rejected")) else int(row["requests_rejected"])
    unfinished = int(sent) - int(done) - rejected
    text = (f"{int(done):,} of {int(sent):,} requests served ({rejected:,} rejected, {unfinished:,} unfinished) at "
            f"{fmt_rate(_f(row['requests_per_s']))} requests/s")
    duration, span = row.get("duration_s"), row.get("arrival_span_s")
    if not missing(duration):
        text += f" over {_ms(duration)}, first arrival to last token"
        if not missing(span):
            drain = max(float(duration) - float(span), 0.0)
            text += (f" ({_ms(span)} of arrivals, then {_ms(drain)} for the requests still running after the last "
                     f"arrival to finish)")
    return text


def serving_limits(row: pd.Series) -> dict[str, str]:
    """What held a served rate back, from its row: the running batch full at the scheduler's max_num_seqs (the
    row's `batch`) while requests waited for a slot (`iterations_at_max_num_seqs`, counted by the simulation:
    serving.metrics.seq_limit_iterations), and the KV cache full (preemptions by recompute, or requests rejected
    for want of blocks), by kind ("batch", "kv"). Empty where neither did: then the device's speed or the arrivals
    set the pace. A measured row (and a row of a run older than the count) is not judged on its batch. Trial 41: a
    comparison of max_num_seqs 256 against 8 said what changed, not why the throughput fell; trial 45: a batch
    that touched its limit with nobody waiting was said to be held back."""
    out = {}
    limit, held = row.get("batch"), row.get("iterations_at_max_num_seqs")
    if not missing(limit) and not missing(held) and float(held) > 0:
        out["batch"] = (f"the running batch was full at max_num_seqs ({int(float(limit)):,}) with requests waiting, "
                        f"in {count(int(float(held)), 'iteration')}")
    preempted = 0 if missing(row.get("preemptions")) else int(float(row["preemptions"]))
    refused = 0 if missing(row.get("rejected_kv_cache")) else int(float(row["rejected_kv_cache"]))
    if preempted or refused:
        kv = row.get("kv_peak_utilization")
        what = [count(preempted, "preemption")] if preempted else []
        what += [f"{count(refused, 'request')} rejected for want of blocks"] if refused else []
        out["kv"] = ("the KV cache filled (" + (f"peak {fmt_percent(float(kv))}, " if not missing(kv) else "")
                     + ", ".join(what) + ")")
    return out


def serving_points(rows: pd.DataFrame) -> list[Point]:
    """Serving rows (mode serve) of one backend: per strategy, what each rate got, and the highest rate that
    met the SLO. Rates are the load, not competitors: no winner is named among them."""
    where = panel_title(rows)
    ok = rows[rows["status"] == "ok"].copy()
    points: list[Point] = []
    if ok.empty:
        points.append(Point(f"{where}: no serving case ran to completion."))
    ok["_strategy"] = ok["case"].map(lambda c: str(c).split("@rate=")[0].split("@clients=")[0])
    for strategy, group in ok.groupby("_strategy", sort=False):
        details = []
        met = []
        for _, row in group.sort_values("request_rate").iterrows():
            clients = row.get("concurrency")
            load = (f"{fmt_rate(_f(row['request_rate']))} requests/s offered" if missing(clients) else
                    f"{count(int(clients), 'client')} ({fmt_rate(_f(row['request_rate']))} requests/s achieved)")
            text = (f"{load}: {served_text(row)}, TTFT p50/p99 "
                    f"{_ms(row['ttft_p50_s'])}/{_ms(row['ttft_p99_s'])}, TPOT p50/p99 "
                    f"{_ms(row['tpot_p50_s'])}/{_ms(row['tpot_p99_s'])}")
            if not missing(row.get("goodput_rps")):
                text += f", goodput {fmt_rate(_f(row['goodput_rps']))} requests/s"
            limits = serving_limits(row)
            if limits:
                text += "; held back: " + " and ".join(limits.values())
            if row.get("slo_met") is True:   # a closed loop sweeps clients: their count (trial 44: the rate)
                met.append(_f(row["request_rate"]) if missing(clients) else float(clients))
            details.append(text + ".")
        closed = "concurrency" in group and not group["concurrency"].isna().all()
        head = f"{where}: {strategy} served {count(len(group), 'client count' if closed else 'rate')}"
        if "slo_met" in group and not group["slo_met"].isna().all():
            if not met:
                head += "; none met the SLO."
            elif closed:
                head += f"; the most clients that met the SLO: {count(int(max(met)), 'client')}."
            else:
                head += f"; the highest that met the SLO: {fmt_rate(max(met))} requests/s."
        else:
            head += "."
        points.append(Point(head, details))
    for _, row in rows[rows["status"] != "ok"].iterrows():
        points.append(Point(f"{row['case']} {row['status']} on {row['backend']}: {_short(row.get('error') or '')}"))
    return points


def _spreads(*rows: pd.Series) -> str:
    """': 1.2–1.5 s and 1.3–1.6 s', the p10–p90 step times of measured rows."""
    ranges = [spread(r) for r in rows]
    return ": " + " and ".join(f"{fmt_seconds(lo)}–{fmt_seconds(hi)}" for lo, hi in ranges) \
        if all(ranges) else ""  # type: ignore[misc]


def _ties(ok: pd.DataFrame, best: pd.Series) -> list[str]:
    """Cases on the winner's device count whose measured steps the winner's do not separate from its own."""
    return [str(r["case"]) for i, r in ok.iterrows() if i != best.name and _f(r.get("n_devices")) ==
            _f(best.get("n_devices")) and noise(r, best)]


def _busy_cases(ok: pd.DataFrame) -> list[str]:
    """The measured cases timed on a busy host (`host_load_per_core` above BUSY_LOAD_PER_CORE, recorded by
    llmsim.measure.host_load): their times carry the other processes' share of the cores, so a ranking that
    includes them can be the load's, not the strategies' (a single-process case on oversubscribed cores ran
    ~100x slower than on a quiet host in the trial of 2026-12-01)."""
    if "host_load_per_core" not in ok:
        return []
    return [str(r["case"]) for _, r in ok.iterrows()
            if not missing(r.get("host_load_per_core")) and float(r["host_load_per_core"]) > BUSY_LOAD_PER_CORE]


def _superlinear(ok: pd.DataFrame) -> list[tuple[str, str, float, int, bool]]:
    """(case, one-device case, speed-up, device ratio, whether the one-device case ran one thread) where a measured
    case on n devices is more than SUPERLINEAR x
    n times faster than the fastest measured one-device case on the same hardware: that speed-up is not the
    strategy's. Seen here: moe-cpu's `single` at 6.3 s per step against dp2's 85 ms on a loaded 2-core host (its
    2 OpenMP threads spin-waiting for cores), 78 ms with `threads: 1` (trial of 2026-12-01)."""
    if "kind" not in ok or "hardware" not in ok:
        return []
    measured = ok[ok["kind"] == "measured"]
    out = []
    for _, group in measured.groupby("hardware"):
        n = group["n_devices"].map(_f)
        single = group[n == 1]
        if single.empty:
            continue
        base = single.loc[single["tokens_per_s"].astype(float).idxmax()]
        for _, r in group[n > 1].iterrows():
            ratio = float(r["tokens_per_s"]) / float(base["tokens_per_s"])
            devices = int(_f(r["n_devices"]))
            if ratio > SUPERLINEAR * devices:
                out.append((str(r["case"]), str(base["case"]), ratio, devices, one_thread(base)))
    return out


def lowest_energy(energy: pd.DataFrame) -> pd.DataFrame:
    """The rows at the lowest joules per token: one, or every case tied there (equal to ENERGY_TIE, the rounding
    of the same sum taken in another order), in the rows' order."""
    values = energy["joules_per_token"].astype(float)
    low = float(values.min())
    return energy[values.map(lambda v: math.isclose(v, low, rel_tol=ENERGY_TIE, abs_tol=0.0))]


def joined(cases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return cases[0] if len(cases) == 1 else f"{', '.join(cases[:-1])} and {cases[-1]}"


def _energy_tie(tied: pd.DataFrame, best: pd.Series, jpt: str) -> str:
    """The summary's sentence for two or more cases tied at the lowest energy per token, the fastest among them or
    not."""
    cases = [str(c) for c in tied["case"]]
    if best["case"] in cases:
        return (f" It is also the most energy-efficient, at {jpt} per token, tied with "
                f"{joined([c for c in cases if c != best['case']])}.")
    low, theirs = float(tied["joules_per_token"].astype(float).iloc[0]), best.get("joules_per_token")
    saving = None if missing(theirs) or not _f(theirs) else 1 - low / _f(theirs)
    tail = f", {fmt_percent(saving)} less than {best['case']}" if saving else ""
    return f" The most energy-efficient are {joined(cases)}, tied at {jpt} per token{tail}."


def backend_points(rows: pd.DataFrame, capacity: dict[str, float]) -> list[Point]:
    """Winner, most efficient, and losers' reasons for the rows of one backend."""
    if "mode" in rows and (rows["mode"] == "serve").all():
        return serving_points(rows)
    where = panel_title(rows)
    ok = ok_rows(rows, "tokens_per_s")
    points: list[Point] = []
    if ok.empty:
        points.append(Point(f"{where}: no strategy ran to completion."))
    else:
        best = ok.loc[ok["tokens_per_s"].astype(float).idxmax()]
        spread_text = "" if spread(best) is None else \
            f", p10–p90 {fmt_seconds(spread(best)[0])}–{fmt_seconds(spread(best)[1])}"  # type: ignore[index]
        head = (f"{where}: the fastest strategy that fits is {best['case']} at {fmt_rate(float(best['tokens_per_s']))} "
                f"tokens/s ({fmt_seconds(_f(best['step_time_s']))} per step{spread_text}{_devices(best)}).")
        ties = _ties(ok, best)
        if ties:
            head += (f" Within its noise: {', '.join(ties)} — these measurements do not tell them apart; more "
                     f"timed steps (steps:) or a quieter machine would.")
        busy = _busy_cases(ok)
        if busy:
            # `threads: 1` only where a busy case ran more threads (or an unknown number): not advice it followed
            threaded = any(not one_thread(r) for _, r in ok[ok["case"].astype(str).isin(busy)].iterrows())
            head += (f" {', '.join(busy)} {'was' if len(busy) == 1 else 'were'} timed while the host was busy "
                     f"(load above {BUSY_LOAD_PER_CORE:g} per core): other processes took cores from "
                     f"{'it' if len(busy) == 1 else 'them'}, so this ranking may not hold on a quiet host; rerun "
                     + ("there, or with `threads: 1`." if threaded else
                        f"there ({'it' if len(busy) == 1 else 'they'} already ran with one thread)."))
        for case, single, ratio, devices, single_thread in _superlinear(ok):
            head += (f" {case} ran {ratio:.1f}× faster than {single} on {devices}× its devices, more than the device "
                     f"ratio: {single}'s time is not this host's own (its threads waited for cores), so do not "
                     f"read this as the strategy's speed-up; "
                     + (f"rerun {single} on a quiet host (it already ran with one thread)." if single_thread else
                        f"rerun {single} with `threads: 1` or on a quiet host."))
        energy = ok_rows(ok, "joules_per_token")
        if not energy.empty:
            tied = lowest_energy(energy)
            green = tied.iloc[0]
            jpt = fmt_joules(float(green["joules_per_token"]))
            if len(tied) > 1:   # every case at the lowest energy, not the first of them (a fresh-user trial)
                head += _energy_tie(tied, best, jpt)
            elif green["case"] == best["case"]:
                head += f" It is also the most energy-efficient, at {jpt} per token."
            elif noise(green, best):
                head += f" {green['case']} uses the least energy per token ({jpt}), within the noise of {best['case']}."
            else:
                saving = 1 - float(green["joules_per_token"]) / _f(best["joules_per_token"]) \
                    if not missing(best["joules_per_token"]) else None
                tail = f", {fmt_percent(saving)} less than {best['case']}" if saving else ""
                head += f" The most energy-efficient is {green['case']} at {jpt} per token{tail}."
        details = loser_details(ok, best)
        points.append(Point(head, details))
    for _, row in rows[rows["status"] == "does-not-fit"].iterrows():
        points.append(Point(_does_not_fit(row, capacity) + "."))
    for status in ("failed", "skipped"):
        bad = rows[rows["status"] == status]
        for reason, group in bad.groupby(bad["error"].map(lambda e: _short(e) if e and not missing(e) else
                                                            "no reason given"), sort=False):
            cases = ", ".join(str(c) for c in group["case"])
            points.append(Point(f"{cases} {status} on {rows['backend'].iloc[0]}: {reason}"))
    return points


def parity_point(frame: pd.DataFrame) -> Point | None:
    """How far the modeled step times are from the measured ones, where a case has both on the same
    hardware; a measured and a modeled row of different hardware are two machines, not a model error."""
    pairs = parity_pairs(frame)
    if pairs.empty:
        return None
    comparable = pairs["same_hardware"] & pairs["same_layout"]
    same, other = pairs[comparable], pairs[~pairs["same_hardware"]]
    layouts = pairs[pairs["same_hardware"] & ~pairs["same_layout"]]
    texts = []
    if not same.empty:
        err = same["error_pct"].abs()
        texts.append(f"Model against measurement on the same hardware: median error {err.median():.1f}% (worst "
                     f"{err.max():.1f}%) over {count(len(same), 'case')} run both ways.")
    if not other.empty:
        cross = CROSS_HARDWARE.format(measured=", ".join(sorted(set(other["measured_hardware"]))),
                                      modeled=", ".join(sorted(set(other["modeled_hardware"]))))
        texts.append(("No model error: " if same.empty else "Other pairs: ") + cross + ".")
    if not layouts.empty:
        which = "; ".join(f"{row.case} ({row.layout_difference})" for row in layouts.itertuples(index=False))
        texts.append(("No model error: " if same.empty else "Not compared: ")
                     + OTHER_LAYOUT.format(cases=which) + ".")
    return Point(" ".join(texts))


def summarize(frame: pd.DataFrame, capacity: dict[str, float] | None = None) -> list[Point]:
    """The summary of one run, in plain words, backend by backend."""
    if frame.empty:
        return [Point("This run has no result rows.")]
    capacity = capacity or {}
    counts = frame["status"].value_counts()
    parts = [f"{counts[s]} {s}" for s in ("ok", "does-not-fit", "skipped", "failed") if s in counts]
    points = [Point(f"{count(len(frame), 'result row')}: " + ", ".join(parts) + ".")]   # "1 result row: 1 ok."
    for rows in by_backend(frame):
        points += backend_points(rows, capacity)
    parity = parity_point(frame)
    if parity:
        points.append(parity)
    return points
