"""What calibration is fitted to: the measured rows of run folders, each with the case that produced it.

A run folder holds `results.jsonl` (one row per case and backend) and `scenario.yaml` (the resolved
scenario). `read_observations` keeps the ok rows of one measured backend and pairs each with its
strategy and the `Layout` that backend ran it with, so that the cost model can price exactly the step
that was timed (batch, micro-batches, recompute). Reading and checking input lives here, apart from the
fit, so that a bad folder is one clear `CalibrationError` before any modelling starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmsim.config import Scenario, SharingChoice, Strategy, load_scenario
from llmsim.errors import LLMSimError
from llmsim.measure.host_load import BUSY_LOAD_PER_CORE
from llmsim.results import read_rows, said_by_another_read
from llmsim.strategy import Layout, resolve_layout
from llmsim.wording import clipped, count

# What a row must have to be fitted: the measured step and the host's measured matmul peak (the fit's unit)
FITTED_COLUMNS = ("step_time_s", "peak_flops_per_s")


class CalibrationError(LLMSimError):
    """Run folders that cannot be calibrated from (bad input: exit 2, as every LLMSimError)."""


@dataclass(frozen=True)
class Observation:
    """One measured row and what the cost model needs to predict it."""

    run_dir: Path
    case: str
    mode: str
    dtype: str
    measured_s: float
    peak_flops: float
    scenario: Scenario
    strategy_index: int
    layout: Layout                                 # as the backend placed the strategy (micro-batches included)
    stream_bytes_per_s: float | None = None        # the backend's probes, when the row reports them
    stream_large_bytes_per_s: float | None = None
    op_overhead_s: float | None = None
    hardware: str | None = None                    # the row's `hardware` column: the device it was measured on
    busy: bool = False                             # timed on a busy host (is_busy): fitted only if asked

    @property
    def strategy(self) -> Strategy:
        return self.scenario.strategies[self.strategy_index]

    @property
    def sharing(self) -> SharingChoice:
        return self.scenario.sharing_choice(self.strategy)


def is_busy(row: dict[str, Any]) -> bool:
    """Whether a measured row was timed on a busy host: its `host_load_per_core` (llmsim.measure.host_load)
    above BUSY_LOAD_PER_CORE, so some of its time was spent waiting for a core, not computing."""
    load = _positive(row.get("host_load_per_core"))
    return load is not None and load > BUSY_LOAD_PER_CORE


def read_observations(run_dirs: Sequence[Path], backend: str = "cpu", include_busy: bool = False,
                      device: str | None = None) -> list[Observation]:
    """The ok rows of `backend` (kind measured) in each run folder, with their resolved scenario.

    Rows timed on a busy host (`is_busy`) are left out unless `include_busy`: a fit to them would take the
    time they waited for a core as the host's own speed; with it they come back marked `busy`. Given the
    `device` to calibrate, rows measured on another device are refused first (other_device_problem), busy or
    not: rerunning on a quiet host would not make them fit. Raises CalibrationError when no row is left."""
    found: list[Observation] = []
    used: dict[Path, int] = {}  # measured rows of the backend per folder, busy ones included
    lacking: dict[str, int] = {}  # ok measured rows of the backend without a column the fit needs, per column
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        used[run_dir] = 0
        results, scenario_file = run_dir / "results.jsonl", run_dir / "scenario.yaml"
        if not results.exists() or not scenario_file.exists():
            raise CalibrationError(f"{run_dir}: not a run folder (needs results.jsonl and scenario.yaml)")
        scenario = load_scenario(scenario_file)
        names = [s.name for s in scenario.strategies]
        # the one read of the rows: a damaged line is an error, a cut last line a warning said once (read_rows)
        for row in read_rows(run_dir):
            if row.get("backend") != backend or row.get("kind") != "measured" or row.get("status") != "ok":
                continue
            absent = [c for c in FITTED_COLUMNS if row.get(c) is None]
            if absent:
                for column in absent:
                    lacking[column] = lacking.get(column, 0) + 1
                continue
            measured_s = _measured(run_dir, row, "step_time_s")
            peak_flops = _measured(run_dir, row, "peak_flops_per_s")
            # the probes are optional (absent: the fit goes without them), but one that is there must be a number:
            # a damaged one read as absent changed the fitted bandwidth with exit 0 (trial 30)
            probes = {k: None if row.get(k) is None else _measured(run_dir, row, k)
                      for k in ("stream_bytes_per_s", "stream_large_bytes_per_s", "op_overhead_s")}
            if row.get("host_load_per_core") is not None:
                _measured(run_dir, row, "host_load_per_core", minimum=0.0)
            if row.get("strategy") not in names:
                continue
            used[run_dir] += 1
            index = names.index(row["strategy"])
            found.append(Observation(run_dir=run_dir, case=row["case"], mode=row["mode"], dtype=row["dtype"],
                                     measured_s=measured_s, peak_flops=peak_flops,
                                     scenario=scenario, strategy_index=index,
                                     layout=_layout(scenario, index, backend, scenario_file),
                                     hardware=row.get("hardware") if isinstance(row.get("hardware"), str) else None,
                                     busy=is_busy(row), **probes))
    unused = [d for d, n in used.items() if n == 0]
    if unused and len(unused) < len(used):  # a folder given but fitting nothing: said, not quietly dropped
        raise CalibrationError(f"{unused[0]}: no ok measured rows of backend '{backend}' (with "
                               f"{' and '.join(FITTED_COLUMNS)}) while "
                               f"the other folders have some; allowed: run folders of measured '{backend}' rows "
                               f"(leave this one out, or calibrate its backend with --backend)")
    problem = other_device_problem(found, device) if device is not None else None
    if problem:
        raise CalibrationError(problem)
    kept = found if include_busy else without_busy(found, run_dirs, backend)
    if not kept:
        kinds = {(r.get("kind"), r.get("backend")) for d in run_dirs if (d / "results.jsonl").exists()
                 for r in read_rows(d, warn=said_by_another_read)}
        if kinds and all(kind == "modeled" for kind, _ in kinds):
            raise CalibrationError(
                f"{', '.join(str(d) for d in run_dirs)} holds only modeled rows (backends "
                f"{', '.join(sorted({str(b) for _, b in kinds}))}): calibration fits the model to measurements; "
                f"allowed: run folders with measured rows (cpu, cuda, xla step rows, or vllm serving rows)")
        measured = sorted({str(b) for kind, b in kinds if kind == "measured"})
        raise CalibrationError(f"no ok measured rows of backend '{backend}' with {' and '.join(FITTED_COLUMNS)} in "
                               f"{', '.join(str(d) for d in run_dirs)}"
                               + "".join(f" ({count(n, 'row')} without {c})" for c, n in lacking.items())
                               + (f"; allowed: --backend {' | '.join(measured)} (the backends of its measured rows)"
                                  if measured and backend not in measured else ""))
    return kept


def without_busy(observations: list[Observation], run_dirs: Sequence[Path], backend: str) -> list[Observation]:
    """The observations not timed on a busy host; CalibrationError when there were some and all were busy."""
    kept = [o for o in observations if not o.busy]
    if observations and not kept:
        raise CalibrationError(f"{', '.join(str(d) for d in run_dirs)}: every ok measured row of backend "
                               f"'{backend}' ({len(observations)}) was timed on a busy host "
                               f"(host_load_per_core > {BUSY_LOAD_PER_CORE:g}: processes waited for a core); rerun on "
                               f"a quiet host, or pass --include-busy to fit them anyway")
    return kept


def _layout(scenario: Scenario, index: int, backend: str, scenario_file: Path) -> Layout:
    """The layout a measured backend that runs what the strategy asks for (no fixed world) gave the case."""
    layout = resolve_layout(scenario.strategies[index], scenario.workload, None, backend)
    if not isinstance(layout, Layout):
        key, message = layout
        raise CalibrationError(f"{scenario_file}: strategies[{index}].{key}: {message}")
    return layout


def _measured(run_dir: Path, row: dict[str, Any], column: str, minimum: float | None = None) -> float:
    """A measured row's time, peak or probe as a positive number (`minimum`: at least that instead, a load may be
    0); a one-line CalibrationError naming the file, the case and the column where it is not one (0, negative,
    text: the file was edited), rather than a fit that fails on it or a row quietly left out."""
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if (0 < number if minimum is None else minimum <= number) and number < math.inf:
            return number
    shown = clipped(repr(value))
    kind = "a positive number" if minimum is None else f"a number >= {minimum:g}"
    raise CalibrationError(f"{run_dir / 'results.jsonl'}: case {row.get('case')!r}: {column} {shown}: a measured row's "
                           f"{column} must be {kind} (the file was damaged or edited); allowed: "
                           f"{'> 0' if minimum is None else f'>= {minimum:g}'}")


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def other_device_problem(observations: list[Observation], device: str) -> str | None:
    """Why the rows cannot calibrate `device`: they were measured on other devices (their `hardware` column), or
    None. A calibrated entry replaces its base's efficiency, bandwidth and peaks with what the rows measured:
    fitted to a CPU's rows, `--device h100-sxm` wrote an H100 entry with a CPU's 50 GB/s (trial 31). A name
    that extends the device's or that it extends (cpu-host-calibrated, h100-sxm-serving) is the same device."""
    ran_on = sorted({o.hardware for o in observations if o.hardware})
    if not ran_on or any(h == device or h.startswith(f"{device}-") or device.startswith(f"{h}-") for h in ran_on):
        return None
    return (f"--device {device}: the measured rows ran on {', '.join(ran_on)}: a fit writes what the rows measured "
            f"into the entry; allowed: --device {ran_on[0]}")
