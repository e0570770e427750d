"""Report figures: each function takes the result rows and RETURNS (fig, ax); none of them saves.

The caller decides where a figure goes (a PNG beside report.md, base64 inside report.html), so the
figures stay pure and testable. Figures are `matplotlib.figure.Figure` objects with an Agg canvas,
never pyplot: no global state, no GUI backend, nothing to close, safe in tests and threads.

A function raises `NoData` (with a reason a reader understands) when the run has nothing to plot; the
report then says which figure is missing and why instead of showing an empty chart.

Backends of different kinds differ by orders of magnitude (a CPU step in seconds, a modeled GPU
cluster in milliseconds), so per-case charts draw one panel per backend, each on its own scale.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

from llmsim.report.frames import any_value, has_value, ok_rows
from llmsim.report.trace import Span, replica_spans
from llmsim.report.units import fmt_bytes, fmt_change, fmt_joules, fmt_rate, fmt_seconds, missing

BREAKDOWN: list[tuple[str, str, str]] = [
    ("compute_time_s", "compute", "#4C72B0"),
    ("comm_time_s", "exposed communication", "#DD8452"),
    ("bubble_time_s", "pipeline bubble", "#C44E52"),
    ("other_time_s", "other (optimizer, host)", "#8C8C8C"),
]
MEMORY: list[tuple[str, str, str]] = [
    ("mem_params_bytes", "parameters", "#4C72B0"),
    ("mem_grads_bytes", "gradients", "#55A868"),
    ("mem_optimizer_bytes", "optimizer state", "#8172B3"),
    ("mem_activations_bytes", "activations", "#DD8452"),
    ("mem_kv_cache_bytes", "KV cache", "#937860"),
    ("mem_workspace_bytes", "workspace", "#DA8BC3"),
]
PEAK_COLOR = "#64B5CD"
BAR_COLOR = "#4C72B0"
CAPACITY_COLOR = "#C44E52"
OFF_SCALE = 3.0  # a device capacity more than this times the largest bar is not drawn as a line


class NoData(Exception):
    """The run has nothing for this figure; str(exc) says why, in words for the report."""


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Figure, Any]:
    """A Figure on an Agg canvas with a grid of axes (always a 2-D array)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _num(value: Any) -> float:
    return 0.0 if missing(value) else float(value)


def panel_title(rows: pd.DataFrame) -> str:
    """'roofline — modeled, a100-80gb' for the rows of one backend."""
    backend = str(rows["backend"].iloc[0])
    kind = str(rows["kind"].iloc[0])
    hardware = ", ".join(sorted({str(h) for h in rows["hardware"] if not missing(h) and h is not None}))
    return f"{backend} — {kind}" + (f", {hardware}" if hardware else "")


def by_backend(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """Rows split per backend, in order of first appearance."""
    return [rows[rows["backend"] == b] for b in dict.fromkeys(rows["backend"])]


def _hbar_panels(groups: list[pd.DataFrame], width: float = 8.0) -> tuple[Figure, list[Axes]]:
    """One horizontal-bar panel per group, stacked vertically, each tall enough for its cases."""
    heights = [0.9 + 0.32 * len(g) for g in groups]
    fig = Figure(figsize=(width, sum(heights) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, g in zip(axes, groups):
        ax.set_title(panel_title(g), fontsize=10, loc="left")
        ax.set_yticks(range(len(g)), [str(c) for c in g["case"]], fontsize=9)
        ax.set_ylim(len(g) - 0.5, -0.5)  # first case on top, in scenario order
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    return fig, list(axes)


def _annotate(ax: Axes, y: int, x: float, text: str) -> None:
    ax.annotate(text, (x, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)


def _headroom(ax: Axes, values: Sequence[float], factor: float = 1.3) -> None:
    top = max([v for v in values if v > 0], default=1.0)
    ax.set_xlim(0, top * factor)


def _rate_range(row: pd.Series) -> tuple[float, float] | None:
    """tokens/s at a measured row's p90 and p10 step time (slow end, fast end); None without a spread."""
    lo, hi = row.get("step_time_p10_s"), row.get("step_time_p90_s")
    step, rate = row.get("step_time_s"), row.get("tokens_per_s")
    if any(missing(v) for v in (lo, hi, step, rate)) or float(lo) <= 0:
        return None
    tokens = float(rate) * float(step)
    return tokens / float(hi), tokens / float(lo)


def throughput(frame: pd.DataFrame) -> tuple[Figure, list[Axes]]:
    """Tokens per second of every case that ran, one panel per backend; a measured bar carries the spread of
    its timed steps (tokens/s at the p90 and p10 step time) as an error bar."""
    rows = ok_rows(frame, "tokens_per_s")
    if rows.empty:
        raise NoData("no case ran (no row with status ok and a throughput)")
    groups = by_backend(rows)
    fig, axes = _hbar_panels(groups)
    for ax, g in zip(axes, groups):
        values = [float(v) for v in g["tokens_per_s"]]
        ax.barh(range(len(g)), values, color=BAR_COLOR)
        ranges = [_rate_range(r) for _, r in g.iterrows()]
        if any(ranges):  # measured rows: tokens/s at the p90 and the p10 step time, as an error bar
            low = [v - r[0] if r else 0.0 for v, r in zip(values, ranges)]
            high = [r[1] - v if r else 0.0 for v, r in zip(values, ranges)]
            ax.errorbar(values, range(len(g)), xerr=[low, high], fmt="none", ecolor="black", capsize=3, lw=1)
        for y, (v, per_dev, r) in enumerate(zip(values, g["tokens_per_s_per_device"], ranges)):
            extra = f" ({fmt_rate(float(per_dev))}/device)" if not missing(per_dev) else ""
            _annotate(ax, y, r[1] if r else v, fmt_rate(v) + extra)
        _headroom(ax, [r[1] if r else v for v, r in zip(values, ranges)], 1.45)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_rate(v)))
    axes[-1].set_xlabel("tokens/s (higher is better)")
    return fig, axes


def breakdown(frame: pd.DataFrame) -> tuple[Figure, list[Axes]]:
    """Step time split into compute, exposed communication, bubble and the rest; | marks the ideal m·C/n."""
    rows = ok_rows(frame)
    cols = [c for c, _, _ in BREAKDOWN]
    rows = rows[any_value(rows, cols)]
    if rows.empty:
        raise NoData("no row that ran reports the step-time breakdown (compute_time_s, comm_time_s, "
                     "bubble_time_s, other_time_s)")
    groups = by_backend(rows)
    fig, axes = _hbar_panels(groups)
    for ax, g in zip(axes, groups):
        left = [0.0] * len(g)
        for col, label, color in BREAKDOWN:
            vals = [_num(v) for v in g[col]]
            ax.barh(range(len(g)), vals, left=left, color=color, label=label)
            left = [a + b for a, b in zip(left, vals)]
        totals = [max(_num(s), t) for s, t in zip(g["step_time_s"], left)]
        for y, (row, total) in enumerate(zip(g.itertuples(index=False), totals)):
            ideal = getattr(row, "t_ideal_s", None)
            if not missing(ideal):
                ax.plot([ideal, ideal], [y - 0.42, y + 0.42], color="black", lw=1.5)
            _annotate(ax, y, total, fmt_seconds(_num(row.step_time_s) or total))
        _headroom(ax, totals, 1.25)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_seconds(v) if v else "0"))
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(axes[0].plot([], [], color="black", lw=1.5)[0])
    labels.append("ideal m·C/n")
    fig.legend(handles, labels, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    axes[-1].set_xlabel("time per step")
    return fig, axes


def _curves(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows sorted by n) per backend and strategy that ran on two or more device counts."""
    curves = []
    for (backend, strategy), g in rows.groupby(["backend", "strategy"], sort=False):
        if g["n_devices"].nunique() >= 2:
            curves.append((f"{strategy} ({backend})", g.sort_values("n_devices")))
    return curves


MAX_DEVICE_TICKS = 12   # device counts of the scaling figure labelled one by one (beyond: powers of 2)
MIN_LOG_TICKS = 3       # labelled ticks a log axis gets at least, however narrow its span


def log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Major ticks of a log axis spanning lo..hi: 1, 2, 5 per decade, else 1 to 9 per decade, else (a span under
    a factor of about 2) evenly spaced values, whichever first puts MIN_LOG_TICKS within the span (trial 46: 40 to
    120 s was labelled at 50 s and 100 s only)."""
    for subs in ((1.0, 2.0, 5.0), tuple(float(k) for k in range(1, 10))):
        locator = LogLocator(subs=subs)
        if sum(lo <= t <= hi for t in locator.tick_values(lo, hi)) >= MIN_LOG_TICKS:
            axis.set_major_locator(locator)
            return
    axis.set_major_locator(MaxNLocator(nbins=4))


def scaling(frame: pd.DataFrame) -> tuple[Figure, Any]:
    """Step time against devices with the ideal T = m·C/n (dashed), and the scaling efficiency."""
    rows = ok_rows(frame, "step_time_s")
    rows = rows[any_value(rows, ["n_devices"])]
    curves = _curves(rows)
    if not curves:
        raise NoData("no strategy ran on two or more device counts; sweep the cluster size (for example "
                     "roofline nodes: [1, 2, 4]) to get a scaling curve")
    fig, axes = new_figure(10, 4.2, 1, 2)
    ax_t, ax_e = axes[0]
    colors = [f"C{i % 10}" for i in range(len(curves))]
    for (label, g), color in zip(curves, colors):
        n = [int(v) for v in g["n_devices"]]
        ax_t.plot(n, [float(v) for v in g["step_time_s"]], "o-", color=color, label=label)
        ideal = g["t_ideal_s"].map(_num)
        if (ideal > 0).any():
            ax_t.plot(n, list(ideal), "--", color=color, alpha=0.7)
        eff = g["scaling_efficiency"]
        if has_value(eff).any():
            ax_e.plot(n, [100 * _num(v) for v in eff], "o-", color=color, label=label)
    ax_t.plot([], [], "--", color="gray", label="ideal m·C/n (same colour)")
    counts = sorted({int(v) for _, g in curves for v in g["n_devices"]})
    for ax in (ax_t, ax_e):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices n")
        ax.grid(alpha=0.3, which="both")
        if len(counts) <= MAX_DEVICE_TICKS:   # a tick at each count drawn (trial 46: 96 and 192 showed only "128")
            ax.xaxis.set_major_locator(FixedLocator(counts))
            ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_t.set_yscale("log")
    log_ticks(ax_t.yaxis, *ax_t.get_ylim())
    ax_t.set_ylim(*ax_t.get_ylim())
    ax_t.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_seconds(v)))
    ax_t.yaxis.set_minor_formatter(NullFormatter())
    ax_t.set_ylabel("step time")
    ax_t.set_title("step time vs devices", fontsize=10, loc="left")
    ax_e.set_ylabel("scaling efficiency (%) = ideal / actual")
    ax_e.axhline(100, color="black", lw=0.8, ls=":")
    ax_e.set_ylim(0, max(105.0, ax_e.get_ylim()[1]))
    ax_e.set_title("efficiency", fontsize=10, loc="left")
    ax_t.legend(fontsize=8, loc="best")
    return fig, (ax_t, ax_e)


def energy(frame: pd.DataFrame) -> tuple[Figure, list[Axes]]:
    """Energy per token of every case that ran, one panel per backend (and its energy source)."""
    rows = ok_rows(frame, "joules_per_token")
    if rows.empty:
        raise NoData("no row that ran reports energy (joules_per_token)")
    groups = by_backend(rows)
    fig, axes = _hbar_panels(groups)
    for ax, g in zip(axes, groups):
        values = [float(v) for v in g["joules_per_token"]]
        ax.barh(range(len(g)), values, color="#55A868")
        for y, v in enumerate(values):
            _annotate(ax, y, v, fmt_joules(v))
        _headroom(ax, values)
        sources = ", ".join(sorted({str(s) for s in g["energy_source"] if not missing(s) and s is not None}))
        if sources:
            ax.set_title(f"{panel_title(g)}; energy: {sources}", fontsize=10, loc="left")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_joules(v) if v else "0"))
    axes[-1].set_xlabel("joules per token (lower is better)")
    return fig, axes


def device_capacity(row: Any, catalog: dict[str, float]) -> float | None:
    """Memory of one device: the row's `device_memory_bytes` column, else the catalog's entry."""
    value = getattr(row, "device_memory_bytes", None)
    if not missing(value) and float(value) > 0:
        return float(value)
    cap = catalog.get(str(getattr(row, "hardware", "")))
    return cap if cap else None


def memory(frame: pd.DataFrame, capacity: dict[str, float] | None = None) -> tuple[Figure, list[Axes]]:
    """Memory per device by kind (modeled backends) or the measured peak, against device capacity.

    `capacity` maps hardware names to bytes per device (from the catalog); a row's own
    `device_memory_bytes` column wins. Cases that do not fit are drawn too, hatched: they are the
    point of this figure.
    """
    capacity = capacity or {}
    rows = frame[frame["status"].isin(["ok", "does-not-fit"])]
    mem_cols = [c for c, _, _ in MEMORY if c in rows]
    rows = rows[any_value(rows, ["peak_memory_bytes_per_device", *mem_cols])]
    if rows.empty:
        raise NoData("no row reports memory per device")
    groups = by_backend(rows)
    fig, axes = _hbar_panels(groups)
    used: set[str] = set()
    for ax, g in zip(axes, groups):
        ends: list[float] = []
        caps: list[tuple[int, float]] = []
        for y, row in enumerate(g.itertuples(index=False)):
            hatch = "//" if row.status == "does-not-fit" else None
            parts = [(c, lbl, col) for c, lbl, col in MEMORY if c in mem_cols and not missing(getattr(row, c))]
            left = 0.0
            if parts:
                parts = [p for p in parts if float(getattr(row, p[0])) > 0] or parts[:1]
                for c, lbl, col in parts:
                    v = float(getattr(row, c))
                    ax.barh(y, v, left=left, color=col, hatch=hatch, edgecolor="white" if hatch else None,
                            label=lbl if lbl not in used else None)
                    used.add(lbl)
                    left += v
            else:
                left = _num(row.peak_memory_bytes_per_device)
                lbl = "peak (measured or total)"
                ax.barh(y, left, color=PEAK_COLOR, hatch=hatch, label=lbl if lbl not in used else None)
                used.add(lbl)
            cap = device_capacity(row, capacity)
            text = fmt_bytes(left) + (" — does not fit" if row.status == "does-not-fit" else "")
            if cap:
                text += f" of {fmt_bytes(cap)}"
                caps.append((y, cap))
            ends.append(left)
            _annotate(ax, y, left, text)
        # A capacity far above every bar would squash the bars to slivers: draw it only when it is
        # within reach of the data (the labels say "of 85.9 GB" either way).
        top = max(ends, default=0.0)
        near = [(y, c) for y, c in caps if c <= OFF_SCALE * top]
        for y, cap in near:
            ax.plot([cap, cap], [y - 0.45, y + 0.45], color=CAPACITY_COLOR, lw=2,
                    label="device capacity" if "capacity" not in used else None)
            used.add("capacity")
        _headroom(ax, ends + [c for _, c in near], 1.6)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_bytes(v) if v else "0"))
    handles, labels = [], []
    for ax in axes:
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            if lbl not in labels:
                handles.append(h)
                labels.append(lbl)
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    hatched = "; hatched = does not fit" if (rows["status"] == "does-not-fit").any() else ""
    axes[-1].set_xlabel(f"bytes per device (decimal units){hatched}")
    return fig, axes


def parity_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Cases with both a measured and a modeled row that ran: one line per (measured, modeled) pair."""
    rows = ok_rows(frame, "step_time_s")
    measured = rows[rows["kind"] == "measured"]
    modeled = rows[rows["kind"] == "modeled"]
    if measured.empty or modeled.empty:
        return pd.DataFrame(columns=["case", "measured_backend", "modeled_backend", "measured_s", "modeled_s",
                                     "error_pct", "measured_hardware", "modeled_hardware"])
    pairs = measured.merge(modeled, on="case", suffixes=("_meas", "_mod"))
    out = pd.DataFrame({
        "case": pairs["case"],
        "measured_backend": pairs["backend_meas"],
        "modeled_backend": pairs["backend_mod"],
        "measured_s": pairs["step_time_s_meas"].astype(float),
        "modeled_s": pairs["step_time_s_mod"].astype(float),
        "measured_hardware": pairs["hardware_meas"],
        "modeled_hardware": pairs["hardware_mod"],
    })
    out["error_pct"] = 100 * (out["modeled_s"] - out["measured_s"]) / out["measured_s"]
    # A model error exists only between a measurement and a prediction of the same device: a CPU step
    # against an A100 prediction is a ratio of two machines, not an error of the model.
    out["same_hardware"] = [same_device(a, b) for a, b in zip(out["measured_hardware"], out["modeled_hardware"])]
    # ... and of the same layout: a strategy without dp fills each backend's devices (dp 1 on one CPU, dp 2 on a
    # 2-device roofline), so one case name can run two layouts whose step times differ by design (trial 46)
    out["layout_difference"] = [_layout_difference(row) for row in pairs.to_dict("records")]
    out["same_layout"] = out["layout_difference"] == ""
    return out.reset_index(drop=True)


LAYOUT_COLUMNS = ("n_devices", "dp", "tp", "pp", "cp")


def _layout_difference(row: dict[str, Any]) -> str:
    """What differs between the measured and the modeled layout of a merged pair ("n_devices 1 vs 2, dp 1 vs
    2"), "" where they run the same one (a column either row lacks is not compared)."""
    differ = []
    for column in LAYOUT_COLUMNS:
        a, b = row.get(f"{column}_meas"), row.get(f"{column}_mod")
        if a is None or b is None or pd.isna(a) or pd.isna(b):
            continue
        if float(a) != float(b):
            differ.append(f"{column} {int(float(a))} vs {int(float(b))}")
    return ", ".join(differ)


def same_device(measured: Any, modeled: Any) -> bool:
    """A modeled device is the measured one: the same catalog name, or the entry `llmsim calibrate` fitted to
    it (named <device>-calibrated, llmsim.calibrate.model)."""
    if not isinstance(measured, str) or not isinstance(modeled, str):
        return False
    return modeled in (measured, f"{measured}-calibrated")


CROSS_HARDWARE = ("the measured rows ran on {measured} and the modeled rows model {modeled}: different "
                  "machines, so their ratio is not a model error. To check the model on this machine, fit it "
                  "with `llmsim calibrate RUN_DIR` and model the calibrated device (docs/costmodel.md)")


OTHER_LAYOUT = ("the measured and modeled rows of {cases} ran different layouts (devices, dp, tp, pp or cp): their "
                "step times differ by design, so their ratio is not a model error. A strategy without dp fills each "
                "backend's devices: state dp (and the backends' device counts) to compare like with like")


def parity(frame: pd.DataFrame) -> tuple[Figure, Axes]:
    """Modeled against measured step time of the same case on the same hardware, with the model's % error."""
    pairs = parity_pairs(frame)
    if pairs.empty:
        raise NoData("no case has both a measured and a modeled row that ran (run one scenario on a measured "
                     "and a modeled backend with the same case names)")
    if not pairs["same_hardware"].any():
        raise NoData(CROSS_HARDWARE.format(measured=", ".join(sorted(set(pairs["measured_hardware"]))),
                                           modeled=", ".join(sorted(set(pairs["modeled_hardware"])))))
    if not (pairs["same_hardware"] & pairs["same_layout"]).any():
        raise NoData(OTHER_LAYOUT.format(cases=", ".join(sorted(set(pairs.loc[pairs["same_hardware"], "case"])))))
    pairs = pairs[pairs["same_hardware"] & pairs["same_layout"]]
    fig, axes = new_figure(5.6, 5.0)
    ax = axes[0][0]
    lo = min(pairs["measured_s"].min(), pairs["modeled_s"].min()) / 1.6
    hi = max(pairs["measured_s"].max(), pairs["modeled_s"].max()) * 1.6
    if hi / lo < 10:  # at least a decade, so the log axes get a few round ticks rather than many crowded ones
        widen = (10 * lo / hi) ** 0.5
        lo, hi = lo / widen, hi * widen
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="modeled = measured")
    ax.fill_between([lo, hi], [lo / 1.2, hi / 1.2], [lo * 1.2, hi * 1.2], color="gray", alpha=0.15,
                    label="±20%")
    for i, (key, g) in enumerate(pairs.groupby(["measured_backend", "modeled_backend"], sort=False)):
        ax.scatter(g["measured_s"], g["modeled_s"], color=f"C{i}", zorder=3, label=f"{key[1]} vs {key[0]}")
        for row in g.itertuples(index=False):
            ax.annotate(f"{row.case} {fmt_change(row.error_pct)}", (row.measured_s, row.modeled_s),
                        xytext=(4, -10), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    fmt = FuncFormatter(lambda v, _: fmt_seconds(v))
    ax.xaxis.set_major_formatter(fmt)
    ax.yaxis.set_major_formatter(fmt)
    ax.set_xlabel("measured step time")
    ax.set_ylabel("modeled step time")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    return fig, ax


def _span_kind(span: Span) -> str:
    text = f"{span.category} {span.name}".lower()
    for kind, words in (("forward", ("fwd", "forward")), ("backward", ("bwd", "backward")),
                        ("communication", ("comm", "allreduce", "all-reduce", "all_reduce", "reduce", "send",
                                           "recv", "gather", "nccl")),
                        ("optimizer", ("optim", "adam", "step"))):
        if any(w in text for w in words):
            return kind
    return span.category or "other"


KIND_COLORS = {"forward": "#4C72B0", "backward": "#55A868", "communication": "#DD8452", "optimizer": "#8172B3"}


def natural_key(text: str) -> tuple[tuple[int, Any], ...]:
    """Sort key reading the numbers in `text` as numbers: 'stage 2' before 'stage 10' (trial 46: lanes sorted as
    text read stage 0, 1, 10, 11, 2, ...)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


def _lane_group(lane: str) -> str:
    """The device or stage a lane belongs to: its process name ('stage 3' of 'stage 3 / compute')."""
    return lane.split(" / ", 1)[0]


def gantt_lanes(spans: list[Span], max_lanes: int = 32) -> tuple[list[str], str | None]:
    """The lanes the Gantt chart draws, in natural order (stage 2 before stage 10), and, when there are more than
    `max_lanes`, a note of what was cut: whole devices/stages are kept (the first ones, in order), never part of one
    unless the first alone has more lanes than that."""
    lanes = sorted(dict.fromkeys(s.lane for s in spans), key=natural_key)
    if len(lanes) <= max_lanes:
        return lanes, None
    groups = list(dict.fromkeys(_lane_group(lane) for lane in lanes))
    kept: list[str] = []
    shown_groups = 0
    for group in groups:
        members = [lane for lane in lanes if _lane_group(lane) == group]
        if len(kept) + len(members) > max_lanes:
            if not kept:   # one device with more lanes than fit: its first lanes
                kept, shown_groups = members[:max_lanes], 1
            break
        kept += members
        shown_groups += 1
    def span(names: list[str]) -> str:
        return names[0] if len(names) == 1 else f"{names[0]} to {names[-1]}"

    shown, left = groups[:shown_groups], groups[shown_groups:]
    partly = "" if sum(_lane_group(lane) in shown for lane in lanes) == len(kept) else f" (its first {len(kept)})"
    said = f"; {span(left)} left out" if left else ""
    return kept, f"{len(kept)} of {len(lanes)} lanes shown: {span(shown)}{partly}{said}"


def gantt(spans: list[Span], max_lanes: int = 32, case: str | None = None) -> tuple[Figure, Axes]:
    """Timeline of one pipeline replica from a cluster trace: one lane per device/stream, idle = bubble.
    `case` ('pp4 on cluster') titles the figure; the legend sits below the lanes, never over them. Lanes are in
    natural order; beyond `max_lanes` whole devices/stages are left out and the title says how many lanes of how many
    are shown (gantt_lanes)."""
    spans = replica_spans(spans)
    if not spans:
        raise NoData("the trace has no complete events")
    lanes, cut = gantt_lanes(spans, max_lanes)
    index = {lane: i for i, lane in enumerate(lanes)}
    t0 = min(s.start_s for s in spans)
    fig, axes = new_figure(10, 1.2 + 0.35 * len(lanes))
    ax = axes[0][0]
    others = (f"C{i}" for i in itertools.count(5))  # C4 is a purple like the optimizer's
    colors: dict[str, str] = dict(KIND_COLORS)
    bars: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (kind, lane) -> spans: one artist each
    for s in spans:
        if s.lane in index:
            bars.setdefault((_span_kind(s), s.lane), []).append((s.start_s - t0, max(s.dur_s, 0.0)))
    seen: set[str] = set()
    for (kind, lane), ranges in bars.items():
        if kind not in colors:
            colors[kind] = next(others)
        ax.broken_barh(ranges, (index[lane] - 0.4, 0.8), facecolors=colors[kind], edgecolor="white",
                       linewidth=0.3, label=kind if kind not in seen else None)
        seen.add(kind)
    ax.set_yticks(range(len(lanes)), lanes, fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_seconds(v) if v else "0"))
    ax.set_xlabel("time from the first event (white gaps within a lane are idle: the pipeline bubble)")
    ax.grid(axis="x", alpha=0.3)
    title = "\n".join(x for x in (f"{case}: one pipeline replica" if case else "", cut or "") if x)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    fig.legend(fontsize=9, loc="outside lower center", ncols=min(len(seen), 6), frameon=False)
    return fig, ax


# ---------------------------------------------------------------------------------------------------
# Serving runs (a scenario with a serving: block; docs/serving.md)
# ---------------------------------------------------------------------------------------------------

SERVING_LATENCIES: list[tuple[str, str, str]] = [
    ("ttft", "time to first token", "slo_ttft_s"),
    ("tpot", "time per output token", "slo_tpot_s"),
]
SLO_COLOR = CAPACITY_COLOR


def serving_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Serving rows that ran, with their rate."""
    if "mode" not in frame or "request_rate" not in frame:
        return frame.iloc[0:0]
    rows = ok_rows(frame, "request_rate")
    return rows[(rows["mode"] == "serve").astype(bool)]


def serving_curves(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One curve per (strategy, backend): the case name without its sweep suffix (@rate= for an open loop,
    @clients= for a closed one), rows by request rate (offered, or achieved in a closed loop)."""
    strategy = rows["case"].map(lambda c: re.split(r"@(?:rate|clients)=", str(c))[0])
    curves = []
    for (name, backend), g in rows.groupby([strategy, rows["backend"]], sort=False):
        curves.append((f"{name} ({backend})", g.sort_values("request_rate")))
    return curves


def closed_loop(rows: pd.DataFrame) -> bool:
    """Whether the serving rows are a closed loop (fixed concurrency): their rate is achieved, not offered."""
    return "concurrency" in rows and rows["concurrency"].notna().any()


def rate_axis(rows: pd.DataFrame) -> str:
    """The x label of a figure against the request rate: offered (open loop) or achieved (closed loop)."""
    return "achieved requests/s (closed loop: clients sweep)" if closed_loop(rows) else "offered requests/s"


def _slo_line(ax: Axes, rows: pd.DataFrame, column: str) -> None:
    if column not in rows:
        return
    for value in sorted({float(v) for v in rows[column] if not missing(v)}):
        ax.axhline(value, color=SLO_COLOR, ls=":", lw=1.5, label=f"SLO {fmt_seconds(value)}")


def serving_latency(frame: pd.DataFrame) -> tuple[Figure, Any]:
    """TTFT and TPOT (p50 solid, p99 dashed) against the offered request rate, one line per strategy and
    backend, with the SLO bounds dotted."""
    rows = serving_rows(frame)
    if rows.empty:
        raise NoData("no serving case ran (a scenario with a serving: block)")
    fig, axes = new_figure(10, 3.8, 1, 2)
    curves = serving_curves(rows)
    for ax, (key, label, slo) in zip(axes[0], SERVING_LATENCIES):
        for i, (name, g) in enumerate(curves):
            rate = g["request_rate"].astype(float)
            for q, style, marker in (("p50", "-", "o"), ("p99", "--", "^")):
                values = g[f"{key}_{q}_s"].map(_num)
                ax.plot(rate, values, color=f"C{i}", ls=style, marker=marker, ms=4, label=f"{name} {q}")
        _slo_line(ax, rows, slo)
        ax.set_title(label, fontsize=10, loc="left")
        ax.set_xlabel(rate_axis(rows))
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_seconds(v)))
        ax.yaxis.set_minor_formatter(NullFormatter())   # names are text, not mathtext (report.raster)
        ax.grid(alpha=0.3, which="both")
    axes[0][1].legend(fontsize=7, loc="best")
    return fig, axes


def serving_goodput(frame: pd.DataFrame) -> tuple[Figure, Axes]:
    """Goodput (requests/s meeting the SLO) and served requests/s against the offered rate; the dashed
    diagonal is every offered request served."""
    rows = serving_rows(frame)
    if rows.empty:
        raise NoData("no serving case ran (a scenario with a serving: block)")
    fig, axes = new_figure(6.5, 4.0)
    ax = axes[0][0]
    top = float(rows["request_rate"].astype(float).max())
    ax.plot([0, top], [0, top], color="black", lw=1, ls="--", label="offered = served")
    for i, (name, g) in enumerate(serving_curves(rows)):
        rate = g["request_rate"].astype(float)
        ax.plot(rate, g["requests_per_s"].map(_num), color=f"C{i}", marker="o", ms=4, label=f"{name} served")
        if has_value(g["goodput_rps"]).any():
            ax.plot(rate, g["goodput_rps"].map(_num), color=f"C{i}", ls=":", marker="s", ms=4,
                    label=f"{name} goodput")
    ax.set_xlabel(rate_axis(rows))
    ax.set_ylabel("requests/s")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return fig, ax


def _met(value: Any) -> bool:
    """slo_met as read back from results.jsonl or .csv: a bool, numpy's bool, 'True' or 1; NaN/None is not met."""
    return not missing(value) and str(value).lower() in ("true", "1", "1.0")


def knee_rate(rows: pd.DataFrame) -> float | None:
    """The highest offered rate of one curve (a strategy on a backend) whose row met the SLO (`slo_met`:
    attainment >= the SLO's percentile, DistServe's goal), or None when none did or no SLO was set. The same
    rule as the report's summary ("the highest that met the SLO")."""
    if "slo_met" not in rows:
        return None
    met = [float(r) for r, m in zip(rows["request_rate"], rows["slo_met"]) if _met(m)]
    return max(met) if met else None


def serving_knee(frame: pd.DataFrame) -> tuple[Figure, Any]:
    """The throughput-latency knee: TTFT p99 (left, log scale, the SLO's TTFT bound dotted) and goodput
    (right) against the offered rate, one line per strategy and backend, the highest rate that met the SLO
    marked on both panels by a vertical line in the curve's colour (`knee_rate`)."""
    rows = serving_rows(frame)
    if rows.empty:
        raise NoData("no serving case ran (a scenario with a serving: block)")
    if "slo_met" not in rows or rows["slo_met"].isna().all():
        raise NoData("the serving block sets no slo: (no rate can meet one)")
    fig, axes = new_figure(10, 3.8, 1, 2)
    lat, good = axes[0]
    for i, (name, g) in enumerate(serving_curves(rows)):
        rate = g["request_rate"].astype(float)
        knee = knee_rate(g)
        lat.plot(rate, g["ttft_p99_s"].map(_num), color=f"C{i}", marker="^", ms=4, label=f"{name} TTFT p99")
        good.plot(rate, g["goodput_rps"].map(_num), color=f"C{i}", marker="s", ms=4, label=f"{name} goodput")
        top = float(rate.max())
        text = (f"{name}: no rate met the SLO" if knee is None else
                f"{name}: highest rate meeting the SLO {fmt_rate(knee)} requests/s"
                + (" (the highest offered: the knee lies beyond)" if knee >= top else ""))
        for ax in (lat, good):
            if knee is not None:
                ax.axvline(knee, color=f"C{i}", ls="-.", lw=1.2, label=text if ax is good else None)
        if knee is None:
            good.plot([], [], color=f"C{i}", ls="-.", label=text)
    _slo_line(lat, rows, "slo_ttft_s")
    lat.set_title("time to first token, p99", fontsize=10, loc="left")
    lat.set_yscale("log")
    lat.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    lat.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_seconds(v)))
    lat.yaxis.set_minor_formatter(NullFormatter())
    good.set_title("goodput (requests/s meeting the SLO)", fontsize=10, loc="left")
    good.set_ylim(0, None)
    handles: dict[str, Any] = {}
    for ax in (lat, good):
        ax.set_xlabel(rate_axis(rows))
        ax.grid(alpha=0.3, which="both")
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    # one legend below both panels: inside a panel ("best") it covered the goodput axis' tick labels
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2, fontsize=7,
               frameon=False)
    return fig, axes


def _cdf(ax: Axes, values: pd.Series, **kw: Any) -> None:
    v = sorted(float(x) for x in values if not missing(x) and float(x) > 0)
    if v:
        n = len(v)
        ax.step(v, [(k + 1) / n for k in range(n)], where="post", **kw)


def latency_cdf(curves: Sequence[tuple[str, pd.DataFrame]], slo: dict[str, float] | None = None) -> tuple[Figure, Any]:
    """Empirical CDFs of TTFT (left) and TPOT (right) per request, one line per (case, backend): `curves` are
    (label, the case's per-request table, llmsim.serving.metrics.REQUEST_COLUMNS). Log time axis; the SLO's
    bounds as dotted vertical lines and its percentile as a dotted horizontal one (`slo`: ttft_s, tpot_s,
    percentile). Requests rejected or with one output token (no TPOT) are left out of that panel."""
    drawn = [(label, t[t["status"] == "ok"]) for label, t in curves if "status" in t]
    drawn = [(label, t) for label, t in drawn if len(t)]
    if not drawn:
        raise NoData("no serving case has a per-request CSV with a served request (requests/ in the run folder)")
    fig, axes = new_figure(10, 3.8, 1, 2)
    for ax, (column, title, bound) in zip(axes[0], (("ttft_s", "time to first token", "ttft_s"),
                                                     ("tpot_s", "time per output token", "tpot_s"))):
        for i, (label, t) in enumerate(drawn):
            _cdf(ax, t[column], color=f"C{i}", lw=1.4, label=label)
        if slo and slo.get(bound):
            ax.axvline(float(slo[bound]), color=SLO_COLOR, ls=":", lw=1.5, label=f"SLO {fmt_seconds(float(slo[bound]))}")
        if slo and slo.get("percentile"):
            ax.axhline(float(slo["percentile"]) / 100, color="gray", ls=":", lw=1, label=f"p{slo['percentile']:g}")
        ax.set_title(f"{title}, per request", fontsize=10, loc="left")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_seconds(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
    axes[0][1].legend(fontsize=7, loc="lower right")
    return fig, axes


MAX_TIMELINE_REPLICAS = 8   # lanes a timeline figure draws; more replicas would be an unreadable tangle


def serving_timeline(timeline: pd.DataFrame, case: str) -> tuple[Figure, Any]:
    """Batch size (sequences per iteration, top) and KV-cache use (% of the replica's blocks, bottom) over
    simulated time for one case, one line per replica (the first MAX_TIMELINE_REPLICAS), from the simulation's
    per-iteration timeline (llmsim.serving.metrics.TIMELINE_COLUMNS)."""
    need = {"replica", "time_s", "batch", "kv_utilization"}
    if timeline.empty or not need <= set(timeline.columns):
        raise NoData(f"the timeline of {case} is empty or lacks the columns {', '.join(sorted(need))}")
    fig, axes = new_figure(10, 4.6, 2, 1, sharex=True)
    top, bottom = axes[0][0], axes[1][0]
    replicas = list(dict.fromkeys(timeline["replica"]))[:MAX_TIMELINE_REPLICAS]
    for i, r in enumerate(replicas):
        t = timeline[timeline["replica"] == r]
        label = f"replica {r}"
        top.plot(t["time_s"].astype(float), t["batch"].astype(float), color=f"C{i}", lw=0.9,
                 drawstyle="steps-post", label=label)
        bottom.plot(t["time_s"].astype(float), 100 * t["kv_utilization"].map(_num), color=f"C{i}", lw=0.9,
                    drawstyle="steps-post", label=label)
    bottom.axhline(100, color=CAPACITY_COLOR, ls=":", lw=1.2, label="all blocks in use")
    top.set_title(f"{case}: sequences per iteration", fontsize=10, loc="left")
    top.set_ylabel("batch")
    top.set_ylim(0, None)
    bottom.set_title("KV cache in use", fontsize=10, loc="left")
    bottom.set_ylabel("% of blocks")
    bottom.set_ylim(0, 105)
    bottom.set_xlabel("simulated time since the first arrival (s)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    bottom.legend(fontsize=7, loc="best", ncol=min(4, len(replicas) + 1))
    return fig, axes
