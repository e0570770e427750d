"""Expand a scenario into cases, run each on its backend, and keep every row.

Rows are persisted as each case finishes (results.jsonl appended and fsynced, results.csv rewritten
atomically), so a crash or Ctrl-C loses at most the case in flight. A backend that raises yields a
`failed` row and the run goes on; a backend that cannot run here yields `skipped` rows.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ValidationError

from llmsim.backend import Backend, Case, RunContext
from llmsim.config import Scenario
from llmsim.environment import environment_record
from llmsim.errors import LLMSimError, ScenarioError, format_key_path
from llmsim.hardware import Catalog, load_catalog
from llmsim.registry import BackendRegistry
from llmsim.results import COLUMNS, Result
from llmsim.strategy import Layout, resolve_layout


@dataclass(frozen=True)
class PlannedCase:
    backend: type[Backend]
    settings: BaseModel
    case: Case


def _backend_settings(name: str, cls: type[Backend], raw: dict[str, Any], file: str) -> BaseModel:
    try:
        return cls.Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = format_key_path(("backends", name) + tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(cls.Settings.model_fields) or "none"
            raise ScenarioError(file, where, f"unknown setting of backend '{name}'; allowed: {allowed}") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ScenarioError(file, where, f"{err.get('input')!r}: {msg}") from None


def build_catalog(scenario: Scenario, scenario_dir: Path, manager: Any = None) -> Catalog:
    """Built-in catalog + the scenario's `hardware_catalog` files + entries from plugins' hardware hook."""
    entries = list(manager.call_each("llmsim_hardware")) if manager is not None else []
    return load_catalog([scenario_dir / f for f in scenario.hardware_catalog],
                        [(plugin, entry) for plugin, found in entries for entry in found])


def plan_cases(scenario: Scenario, registry: BackendRegistry, file: str = "<scenario>",
               only_backends: list[str] | None = None, scenario_dir: Path = Path("."),
               catalog: Catalog | None = None) -> list[PlannedCase]:
    """Validate every (strategy, backend) pair and lay it out; raise ScenarioError on the first problem.

    With a `catalog`, backend settings are also checked against it (hardware and link names)."""
    backends = dict(scenario.backends)
    if only_backends:
        backends = {name: backends.get(name, {}) for name in only_backends}
    planned: list[PlannedCase] = []
    for name in backends:
        if name not in registry.backends:
            installed = ", ".join(registry.names) or "none"
            key = f"backends.{name}" if name in scenario.backends else "--backend"
            raise ScenarioError(file, key, f"unknown backend {name!r}; installed: {installed}")
    sweeps = {}
    for name, raw in backends.items():
        cls = registry.get(name)
        sweeps[name] = cls.sweep(_backend_settings(name, cls, raw, file))
        for _, settings in sweeps[name] if catalog is not None else []:
            problem = cls.check_settings(settings, catalog)
            if problem:
                raise ScenarioError(file, f"backends.{name}.{problem[0]}", problem[1])
    for (i, strategy), name in itertools.product(enumerate(scenario.strategies), backends):
        cls = registry.get(name)
        for suffix, settings in sweeps[name]:
            layout = resolve_layout(strategy, scenario.workload, cls.world_size(settings), name)
            if not isinstance(layout, Layout):
                raise ScenarioError(file, f"strategies[{i}].{layout[0]}", layout[1])
            case = Case(scenario=scenario.name, name=strategy.name + suffix, workload=scenario.workload,
                        sharing=scenario.sharing_for(strategy), tie_embeddings=scenario.tie_embeddings_for(strategy),
                        strategy=strategy,
                        layout=layout, seed=scenario.seed, scenario_dir=scenario_dir)
            planned.append(PlannedCase(cls, settings, case))
    return planned


def new_run_dir(out: Path, scenario: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out / scenario
    for n in itertools.count():
        run_dir = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def latest_run_dir(out: Path, scenario: str) -> Path | None:
    runs = sorted(p for p in (out / scenario).glob("*") if (p / "results.jsonl").exists())
    return runs[-1] if runs else None


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a kill never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultStore:
    """results.jsonl (append-only, one line per finished case) and results.csv (rewritten whole)."""

    def __init__(self, run_dir: Path) -> None:
        self.jsonl = run_dir / "results.jsonl"
        self.csv = run_dir / "results.csv"
        self.rows: list[dict[str, Any]] = read_rows(run_dir) if self.jsonl.exists() else []
        if not self.csv.exists():  # a header from the start: a killed run never lacks its csv
            write_atomic(self.csv, self.frame().to_csv(index=False))

    def done(self) -> set[tuple[str, str]]:
        return {(r["case"], r["backend"]) for r in self.rows if r.get("status") != "failed"}

    def add(self, result: Result) -> None:
        row = result.row()
        self.rows = [r for r in self.rows if (r["case"], r["backend"]) != (row["case"], row["backend"])]
        self.rows.append(row)
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_atomic(self.csv, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        return rows_frame(self.rows)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of a run folder; a later line for the same (case, backend) replaces an earlier one (resume)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    path = run_dir / "results.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that case is simply not done
        rows[(row["case"], row["backend"])] = row
    return list(rows.values())


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    extras = [c for c in frame.columns if c not in COLUMNS]
    return frame[list(COLUMNS) + extras]


Progress = Callable[[int, int, PlannedCase], None]


@dataclass
class RunOutcome:
    run_dir: Path
    rows: int
    interrupted: bool
    report_error: str | None = None  # the rows are saved even when the report could not be built


def _failed_row(planned: PlannedCase, status: str, message: str) -> Result:
    return planned.case.result(planned.backend, status=status, error=message)  # type: ignore[arg-type]


def run_scenario(scenario: Scenario, registry: BackendRegistry, planned: list[PlannedCase], out: Path,
                 *, manager: Any = None, resume: Path | None = None, progress: Progress | None = None,
                 scenario_dir: Path = Path(".")) -> RunOutcome:
    """Run every planned case, persisting each row as it finishes."""
    run_dir = resume or new_run_dir(out, scenario.name)
    store = ResultStore(run_dir)
    write_atomic(run_dir / "scenario.yaml", yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False))
    write_atomic(run_dir / "environment.json", json.dumps(environment_record(), indent=2))
    context = RunContext(catalog=build_catalog(scenario, scenario_dir, manager), run_dir=run_dir, manager=manager)
    instances: dict[str, Backend] = {}
    done = store.done()
    interrupted = False
    try:
        for k, item in enumerate(planned, start=1):
            key = (item.case.name, item.backend.name)
            if key in done:
                continue
            if progress:
                progress(k, len(planned), item)
            store.add(_run_one(item, instances, context))
    except KeyboardInterrupt:
        interrupted = True
    report_error = None
    try:
        from llmsim.report.build import write_report

        write_report(run_dir, store.frame())
    except Exception as exc:  # noqa: BLE001 - the rows are saved; a broken report must not hide them
        report_error = f"{type(exc).__name__}: {exc}"
    return RunOutcome(run_dir, len(store.rows), interrupted, report_error)


def _run_one(item: PlannedCase, instances: dict[str, Backend], context: RunContext) -> Result:
    cls = item.backend
    reason = cls.availability()
    if reason:
        return _failed_row(item, "skipped", f"backend '{cls.name}' cannot run here: {reason}")
    try:
        backend = instances.get(cls.name) or instances.setdefault(cls.name, cls(context))
        return backend.run(item.case, item.settings)
    except KeyboardInterrupt:
        raise
    except LLMSimError as exc:
        return _failed_row(item, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - one broken case must not lose the others
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _failed_row(item, "failed", f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})")
