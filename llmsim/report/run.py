"""A run folder as the report sees it: its rows, its environment, its trace, its devices' capacity."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from llmsim.errors import ScenarioError, UsageError, one_line
from llmsim.report.units import fmt_count, missing
from llmsim.results import (PLANNED_FILE, RUN_NOTES, SESSION_COLUMN, DamagedRows, print_warning, read_planned,
                            read_rows, read_sessions, rows_disagree, rows_frame)
from llmsim.userinput import not_a_regular_file, read_yaml
from llmsim.wording import count

TRACE_FILE = "trace.json"
MAX_UNKNOWN = 5   # planned cases the scenario does not have, named in the report's line (the others counted)


@dataclass
class Run:
    path: Path
    frame: pd.DataFrame
    environment: dict[str, Any] = field(default_factory=dict)
    scenario: dict[str, Any] = field(default_factory=dict)
    scenario_problem: ScenarioError | None = None  # scenario.yaml missing, damaged or not this run's: its error
    rows_problem: str | None = None  # results.jsonl lines that are not rows (left out of the report): one line
    notes: tuple[str, ...] = ()      # notes.txt: how the cases are priced, as `llmsim run` printed them
    unfinished: Unfinished | None = None   # planned cases without a row (an interrupted run), when there are any
    sessions: dict[int, dict[str, Any]] = field(default_factory=dict)   # sessions.jsonl: n -> its line


    @property
    def name(self) -> str:
        """'<scenario>/<run-id>': how a run is named in a comparison."""
        scenario = str(self.frame["scenario"].iloc[0]) if len(self.frame) else self.scenario.get("name", "?")
        return f"{scenario}/{self.path.name}"

    @property
    def trace(self) -> Path | None:
        """`trace.json` in the run folder, else the cluster backend's per-case trace (`trace_file` column)
        of the ok case with the deepest pipeline (the most to see), fastest first among equals."""
        return self._trace()[0]

    @property
    def trace_case(self) -> str | None:
        """Which case the trace shows, 'pp4@nodes=2 on cluster' (None for a run-level trace.json)."""
        return self._trace()[1]

    def _trace(self) -> tuple[Path | None, str | None]:
        path = self.path / TRACE_FILE
        if path.is_file():
            return path, None
        frame = self.frame
        if "trace_file" not in frame or not len(frame):
            return None, None
        rows = frame[(frame["status"] == "ok") & frame["trace_file"].notna()]
        if not len(rows):
            return None, None
        best = rows.sort_values(["pp", "step_time_s"], ascending=[False, True]).iloc[0]
        candidate = self.path / str(best["trace_file"])
        if candidate.is_file() and candidate.resolve().is_relative_to(self.path.resolve()):
            return candidate, f"{best['case']} on {best['backend']}"
        return None, None


def run_file(run: Run, relative: Any) -> Path | None:
    """A file a row names relative to its run folder (`requests_file`, `timeline_file`), if it exists there and
    stays inside the folder (a row is data: it must not send the report reading elsewhere)."""
    if missing(relative) or not isinstance(relative, str) or not relative:
        return None
    path = run.path / relative
    try:
        inside = path.resolve().is_relative_to(run.path.resolve())
    except OSError:
        return None
    return path if inside and path.is_file() else None


def read_csv_file(path: Path) -> pd.DataFrame | None:
    """A CSV the run wrote, or None if it cannot be read (a report without one figure beats no report)."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):  # unreadable, empty, not CSV
        return None


def read_environment(path: Path) -> dict[str, Any]:
    """A run's environment.json; a missing one is {} (an older run), a damaged one {} with a warning naming it
    (session 29's trial: the report's environment line was blank and nothing said why)."""
    if not path.exists():
        return {}
    try:
        if (special := not_a_regular_file(path)) is not None:   # a FIFO would be waited on
            raise ValueError(special)
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = {list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(type(data), "a number")
        problem = None if isinstance(data, dict) else f"{kind}, not a mapping of the run's environment"
    except IsADirectoryError:
        data, problem = {}, "a folder, not a file"
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        data, problem = {}, one_line(str(exc))
    if problem is not None:
        print_warning(f"{path}: {problem}; the report's environment line is left blank (the file is damaged or "
                      f"was edited)")
        return {}
    return data


SCENARIO_FILE = "scenario.yaml"
WITHOUT_SCENARIO = "the report is built from results.jsonl alone"


def read_saved_scenario(run_dir: Path, frame: pd.DataFrame) -> tuple[dict[str, Any], ScenarioError | None]:
    """The run's saved scenario, checked as `llmsim validate` checks a scenario (YAML, keys, rules) and against
    the rows (the scenario's name, the strategies that ran): ({}, the one-line error) when it is missing,
    damaged (a truncated or edited file) or not this run's, so that nothing half-valid is read from it."""
    from llmsim.config import parse_scenario

    path = run_dir / SCENARIO_FILE
    if not path.is_file():
        return {}, ScenarioError(str(path), None, f"missing; {WITHOUT_SCENARIO}")
    try:
        data = read_yaml(path)
        scenario = parse_scenario(data, str(path))
    except ScenarioError as exc:  # not YAML, beyond llmsim.userinput's limits, or no valid scenario
        return {}, ScenarioError(exc.file or str(path), exc.key, f"{exc.message}; {WITHOUT_SCENARIO}")
    names = sorted({str(n) for n in frame["scenario"].dropna()}) if "scenario" in frame else []
    if names and names != [scenario.name]:
        return {}, ScenarioError(str(path), "name", f"{scenario.name!r}, but results.jsonl holds rows of scenario "
                                                    f"{', '.join(map(repr, names))}; {WITHOUT_SCENARIO}")
    disagreement = rows_disagree(scenario, frame)
    if disagreement is not None:
        return {}, ScenarioError(str(path), disagreement[0], f"{disagreement[1]}; {WITHOUT_SCENARIO}")
    known = {s.name for s in scenario.strategies}
    ran = sorted({str(n) for n in frame["strategy"].dropna()} - known) if "strategy" in frame else []
    if ran:
        return {}, ScenarioError(str(path), "strategies", f"has no strategy {ran[0]!r}, which results.jsonl ran "
                                                          f"(allowed: {', '.join(sorted(known))}); {WITHOUT_SCENARIO}")
    return data, None


def not_a_run_folder(path: Path) -> str:
    """Why `path` is no run folder, with what it is instead where that can be told (trial 29: a results.jsonl
    given itself read 'RUN/results.jsonl has no results.jsonl'; a plan's folder asked 'is it a run folder?')."""
    if path.is_file() and path.name == "results.jsonl":
        return f"{path} is a run's results file; allowed: its folder (llmsim report {path.parent})"
    if path.is_file() and (path.parent / "results.jsonl").is_file():   # results.csv, report.md, scenario.yaml, ...
        return f"{path} is a file of a run folder; allowed: the folder (llmsim report {path.parent})"
    if (path / "plan.yaml").is_file() or (path / "plan.csv").is_file():
        return (f"{path} is a plan's folder (plan.md and plan.html are its report, best.yaml its winner); "
                f"allowed: a run folder (with results.jsonl)")
    rows = path / "results.jsonl"
    if path.is_dir() and rows.exists() and not rows.is_file():   # a folder or a FIFO by that name (trial 35)
        kind = "a folder" if rows.is_dir() else "not a regular file"
        return f"{rows} is {kind}; allowed: a run folder whose results.jsonl is the file `llmsim run` writes"
    runs = sorted(d for d in path.glob("*") if (d / "results.jsonl").is_file()) if path.is_dir() else []
    if runs:   # the scenario's folder that `llmsim run` makes, above its timestamped runs (trial 34)
        return (f"{path} is not a run folder but holds {count(len(runs), 'run folder')}; allowed: one of them "
                f"(the newest: llmsim report {runs[-1]})")
    if path.is_file():   # trial 42: 'report A FILE' said the file 'has no results.jsonl'
        return f"{path} is a file, not a run folder; allowed: a run folder (with results.jsonl) that `llmsim run` wrote"
    return f"{path} has no results.jsonl (is it a run folder?)"


def load_run(run_dir: Path, frame: pd.DataFrame | None = None) -> Run:
    """Read a run folder; one clear error if it is not one. `frame` skips re-reading the rows."""
    run_dir = Path(run_dir)
    if frame is None:
        if not (run_dir / "results.jsonl").is_file():
            raise UsageError("report", not_a_run_folder(run_dir))
        damaged: list[str] = []
        warnings: list[str] = []   # said only when there is a report to go with them: the error is one line
        rows = read_rows(run_dir, warn=warnings.append, damaged=damaged)
        if damaged and not rows:
            raise DamagedRows(one_line(f"{run_dir / 'results.jsonl'}: {damaged[0]}; the file is damaged or was "
                                       f"edited and no line of it is a row"))
        if not rows:  # a run stopped before its first case: a report of nothing must not replace a real one
            what = ("its only line is a row cut by a kill" if warnings else "results.jsonl is empty")
            raise UsageError("report", f"{run_dir} has no rows yet ({what}: no case finished); "
                                       f"nothing to report, any report already there is left as it is")
        for warning in warnings:
            print_warning(warning)
        frame = rows_frame(rows)
        rows_problem = (f"{run_dir / 'results.jsonl'}: {damaged[0]}"
                        + (f" (and {len(damaged) - 1} more damaged lines)" if len(damaged) > 1 else "")
                        + f"; the file is damaged or was edited: the report holds the "
                          f"{count(len(rows), 'row')} that read"
                        if damaged else None)
    else:
        rows_problem = None
    scenario, problem = read_saved_scenario(run_dir, frame)
    left = unfinished_cases(run_dir, frame, scenario if problem is None else {},
                            None if problem is None else one_line(problem.message))
    notes_file = run_dir / RUN_NOTES
    notes = tuple(line for line in notes_file.read_text(errors="replace").splitlines() if line.strip()) \
        if notes_file.is_file() else ()
    return Run(run_dir, frame, read_environment(run_dir / "environment.json"), scenario, problem, rows_problem, notes,
               left, read_sessions(run_dir))


@dataclass(frozen=True)
class Unfinished:
    """The planned cases of a run that have no row: a run cut short (Ctrl-C, a kill) before every case ran (trial
    46: its report said 'Every case ran.'). `cases`: (case, backend) in the planned order (the folder's
    planned.json, results.PLANNED_FILE), or () with `why` where the folder does not say what was planned."""

    planned: int | None                     # how many cases the run was asked to run; None: unknown
    cases: tuple[tuple[str, str], ...] = ()
    why: str | None = None                  # why the planned cases are unknown
    backends: tuple[str, ...] = ()          # the backends the run planned cases of, where fewer than the scenario's
    unresumable: str | None = None          # why the folder's scenario.yaml is not the run's (missing, damaged, edited)
    unknown: tuple[tuple[str, str], ...] = ()   # planned cases without a row whose strategy the scenario has not

    def resume_command(self, run_dir: Path) -> str:
        """The `llmsim run` command that runs the cases left: the run's own saved scenario (every --set of the run
        is in it, its paths absolute) resumed into the folder, as `--resume` accepts it, with the run's --backend
        choice where it ran fewer backends than the scenario names."""
        import shlex

        chosen = [arg for name in self.backends for arg in ("--backend", name)]
        return shlex.join(["llmsim", "run", str(run_dir / SCENARIO_FILE), *chosen, "--resume", str(run_dir)])

    def sentence(self, run_dir: Path, where: str = "listed under Not run or not fitting") -> str:
        """'The run was cut short: 3 of 10 planned cases have no row (listed under Not run or not fitting); run them
        with: `llmsim run RUN/scenario.yaml --resume RUN`.'"""
        command = f"`{self.resume_command(run_dir)}`"
        if self.unresumable is not None:   # trial 47: the command given could not run without the saved scenario
            command = f"`--resume` once the folder's {SCENARIO_FILE} is the run's again ({self.unresumable})"
        if self.planned is None:
            return (f"Whether every planned case has a row is unknown ({self.why}); a run cut short continues "
                    f"with: {command}")
        return (f"The run was cut short: {len(self.cases)} of {count(self.planned, 'planned case')} "
                f"{'has' if len(self.cases) == 1 else 'have'} no row ({where}); run "
                f"{'it' if len(self.cases) == 1 else 'them'} with: {command}.")

    def unknown_sentence(self) -> str | None:
        """'planned.json names case zz (on roofline) which the scenario does not have; ...', or None when every
        planned case is one of the scenario's."""
        if not self.unknown:
            return None
        shown = ", ".join(f"{case} (on {backend})" for case, backend in self.unknown[:MAX_UNKNOWN])
        more = f" and {len(self.unknown) - MAX_UNKNOWN} more" if len(self.unknown) > MAX_UNKNOWN else ""
        one = len(self.unknown) == 1
        return (f"{PLANNED_FILE} names {'case' if one else 'cases'} {shown}{more} which the scenario does not have "
                f"(no strategy of that name): {'it is' if one else 'they are'} not counted as planned or listed as "
                f"not run; the file was edited or is another run's.")


def unfinished_cases(run_dir: Path, frame: pd.DataFrame, scenario: dict[str, Any],
                     unresumable: str | None = None) -> Unfinished | None:
    """The planned cases (the folder's planned.json: what `llmsim run` was asked to run into it, --backend's choice
    included) that have no row in `frame`, or None when every one has a row. A folder without planned.json (written
    before it existed) gives an Unfinished with `planned` None: whether the run finished is not claimed."""
    planned = read_planned(run_dir)
    if planned is None:
        return Unfinished(None, why=f"the run folder has no readable {PLANNED_FILE}, which `llmsim run` writes "
                                    f"from 2026-12-05 on", unresumable=unresumable)
    done = ({(str(c), str(b)) for c, b in zip(frame["case"], frame["backend"])}
            if {"case", "backend"} <= set(frame.columns) else set())
    # A case is its strategy's name and sweep points (`dp@nodes=2`, `single@rate=4`; a name has no '@'). A planned
    # case without a row whose strategy the (valid) saved scenario has not cannot have been planned from it: said
    # so, not listed as not run (a fresh-user trial). Its sweep points are not checked: they come from the
    # backends' settings, which only the backends' plugins expand. Unchecked without a usable scenario.
    strategies = {str(s.get("name", "single")) for s in scenario.get("strategies") or [{}] if isinstance(s, dict)} \
        if isinstance(scenario, dict) and scenario else None
    unknown = tuple(key for key in planned if key not in done and strategies is not None
                    and key[0].split("@")[0] not in strategies)
    left = tuple(key for key in planned if key not in done and key not in unknown)
    if not left and not unknown:
        return None
    ran_backends = tuple(dict.fromkeys(b for c, b in planned if (c, b) not in unknown))
    named = tuple((scenario.get("backends") or {}).keys()) if isinstance(scenario, dict) else ()
    chosen = ran_backends if set(ran_backends) != set(named) else ()
    return Unfinished(len(planned) - len(unknown), left, backends=chosen, unresumable=unresumable, unknown=unknown)


def catalog_capacity() -> dict[str, float]:
    """Memory per device of the built-in catalog's devices, by name (0 = measured at run time: left out).

    Used where a row has no `device_memory_bytes` column of its own. A run's extra catalog files may
    not be readable any more when the report is rebuilt, so only the built-in catalog is consulted.
    """
    try:
        from llmsim.hardware import load_catalog

        return {name: d.memory_bytes for name, d in load_catalog().devices.items() if d.memory_bytes}
    except Exception:  # noqa: BLE001 - a report without capacity lines beats no report
        return {}


def workload_text(frame: pd.DataFrame, scenario: dict[str, Any] | None = None) -> str:
    """The run's workload in a line: training and step modes by batch × sequence length; a serving run
    (mode serve) by what it serves: arrivals and rates, prompt/output lengths (from the saved scenario's
    serving block), the scheduler and the replicas. The serving rows' batch and seq_len are only the
    traced reference (max_num_seqs × the context), not a workload anyone ran."""
    if frame.empty:
        return "–"
    first = frame.iloc[0]
    params = "" if missing(first.get("params")) else f", {fmt_count(float(first['params']))} parameters"
    if first["mode"] == "serve":
        kv = ((scenario or {}).get("serving") or {}).get("kv_cache_dtype", "auto")
        kv_text = "" if kv in (None, "auto") else f", KV cache {kv}"
        return f"{serving_text(frame, scenario or {})}, {first['dtype']}{kv_text}{params}"
    return f"{first['mode']}, batch {first['batch']} × {first['seq_len']} tokens, {first['dtype']}{params}"


def work_text(frame: pd.DataFrame, scenario: dict[str, Any] | None = None) -> str:
    """The work a run asked for, apart from how it ran it: the model's parameters and, for a serving run, the
    prompt and output lengths it served (or its trace file); for a step run its mode, batch and sequence length.
    Two runs whose work differs cannot be compared as a change of hardware, strategy or code alone
    (report.compare.workload_points). '' for a run with no rows."""
    if frame.empty:
        return ""
    first = frame.iloc[0]
    params = "" if missing(first.get("params")) else f"{fmt_count(float(first['params']))} parameters"
    if first["mode"] == "serve":
        serving = (scenario or {}).get("serving") or {}
        lengths = serving.get("lengths")
        arrival = serving.get("arrival") or {}
        if lengths:
            work = f"{_length_text(lengths.get('input'))} → {_length_text(lengths.get('output'))} tokens"
        elif arrival.get("kind") == "trace":
            work = f"the lengths of trace {arrival.get('path')}"
        else:
            work = "lengths unknown"
    else:
        work = f"{first['mode']}, batch {first['batch']} × {first['seq_len']} tokens"
    return ", ".join(x for x in (work, params) if x)


def _length_text(length: Any) -> str:
    if isinstance(length, dict):
        if length.get("kind") == "uniform":
            return f"{length.get('min')}–{length.get('max')} (uniform)"
        if length.get("kind") == "lognormal":
            return f"median {length.get('median')} (lognormal, σ {length.get('sigma')})"
        if length.get("kind") == "exponential":
            return f"mean {length.get('mean')} (exponential)"
        if length.get("kind") == "quantiles":
            points = length.get("points") or [[0, "?"], [1, "?"]]
            return f"{points[0][1]}–{points[-1][1]} (quantiles)"
    return str(length)


def serving_text(frame: pd.DataFrame, scenario: dict[str, Any]) -> str:
    """'serving: poisson arrivals at 2, 8, 24 requests/s, 467 → 256 tokens, continuous scheduler (max 256
    sequences, 8,192 tokens per iteration), 1 replica'."""
    serving = scenario.get("serving") or {}
    arrival = serving.get("arrival") or {}
    rates = sorted({float(r) for r in frame.get("request_rate", pd.Series(dtype=float)) if not missing(r)})
    kind = arrival.get("kind", "poisson")
    if kind == "concurrency":  # a closed loop: its clients, not a rate (the rows' rates are what it achieved)
        clients = sorted({int(c) for c in frame.get("concurrency", pd.Series(dtype=float)) if not missing(c)})
        think = arrival.get("think_s") or 0
        parts = [f"serving: a closed loop of {', '.join(map(str, clients))} client{'s' if clients != [1] else ''}"
                 + (f", {think:g} s think time" if think else "")]
    else:
        parts = [f"serving: {kind} arrivals" + (f" at {', '.join(f'{r:g}' for r in rates)} requests/s" if rates
                                                else "")]
    lengths = serving.get("lengths")
    if lengths:
        bounds = [f"{word} {lengths[key]}" for key, word in (("min", "each ≥"), ("max_input", "prompt ≤"),
                                                             ("max_total", "prompt + output ≤"))
                  if lengths.get(key) is not None]
        parts.append(f"{_length_text(lengths.get('input'))} → {_length_text(lengths.get('output'))} tokens "
                     f"(prompt → output{'; ' + ', '.join(bounds) if bounds else ''})")
    elif kind == "trace":
        parts.append("lengths from the trace")
    scheduler = serving.get("scheduler") or {}
    name = scheduler.get("kind") or frame.iloc[0].get("scheduler")
    if name:
        limits = [f"max {scheduler['max_num_seqs']} sequences" if scheduler.get("max_num_seqs") else "",
                  f"{scheduler['max_batched_tokens']:,} tokens per iteration" if scheduler.get("max_batched_tokens")
                  else ""]
        limits = [x for x in limits if x]
        parts.append(f"{name} scheduler" + (f" ({', '.join(limits)})" if limits else ""))
    disaggregation = serving.get("disaggregation")
    if disaggregation:   # prefill and decode instances, not replicas (docs/serving.md)
        sides = []
        for side, letter in (("prefill", "P"), ("decode", "D")):
            block = disaggregation.get(side) or {}
            tp = block.get("tp")
            # a side's own expert layout, as a plan's unit names it (1D-tp8-ep8-adp8): runs differing only there
            # read apart (trial 23b)
            layout = "".join(f" {short}{block[key]}" for key, short in (("ep", "ep"), ("etp", "etp"),
                                                                         ("attention_dp", "adp"))
                             if block.get(key) is not None)
            sides.append(f"{block.get('replicas', 1)}{letter}" + (f" tp{tp}" if tp else "") + layout)
        parts.append("disaggregated " + " + ".join(sides))
    else:
        replicas = serving.get("replicas") or frame.iloc[0].get("replicas")
        if replicas and not missing(replicas):
            parts.append(count(int(replicas), "replica"))
    speculative = serving.get("speculative")
    if speculative:
        acceptance = speculative.get("acceptance")
        accept = (", ".join(f"{a:g}" for a in acceptance) if isinstance(acceptance, list) else f"{acceptance:g}"
                  if isinstance(acceptance, (int, float)) else str(acceptance))
        parts.append(f"speculative {speculative.get('method')} k={speculative.get('num_draft_tokens')} "
                     f"(acceptance {accept})")
    return ", ".join(parts)


# What of two sessions' environments (environment.environment_record) is compared: what changes a measured row
# (the host, its threads, torch) or a modeled one (llmsim itself: its version and commit).
SESSION_FIELDS = (("llmsim", ("packages", "llmsim")), ("commit", ("git_commit",)), ("host CPU", ("cpu_model",)),
                  ("CPUs", ("cpu_count",)), ("torch threads", ("torch_threads",)), ("torch", ("packages", "torch")),
                  ("CUDA", ("cuda_available",)), ("platform", ("platform",)))


def sessions_sentence(frame: pd.DataFrame, sessions: dict[int, dict[str, Any]]) -> str | None:
    """One sentence where the folder's rows came from more than one `llmsim run` (the first and a --resume:
    results.SESSION_COLUMN, sessions.jsonl): how many rows each added, and what differs between their
    environments (SESSION_FIELDS), or that nothing does; None for rows of one session (or rows written before
    sessions were recorded)."""
    if SESSION_COLUMN not in frame.columns:
        return None
    numbers = pd.to_numeric(frame[SESSION_COLUMN], errors="coerce")
    unrecorded = int(numbers.isna().sum())     # rows of a run before sessions were recorded, resumed since
    per = numbers.dropna().astype(int).value_counts().sort_index()
    runs = len(per) + (1 if unrecorded else 0)
    if runs < 2:
        return None
    added = ([f"a run that recorded no session: {count(unrecorded, 'row')}"] if unrecorded else []) + \
        [f"session {n}{' (the first run)' if n == 1 and not unrecorded else ''}: {count(int(k), 'row')}"
         for n, k in per.items()]
    text = f"The rows come from {runs} runs of this folder (a --resume adds a session): {'; '.join(added)}."
    envs = {n: (sessions.get(n) or {}).get("environment") for n in per.index}
    if unrecorded or any(not isinstance(env, dict) for env in envs.values()):
        return text + " sessions.jsonl does not record every one of them: whether they ran alike is unknown."
    differ = []
    for label, path in SESSION_FIELDS:
        values = []
        for env in envs.values():
            value: Any = env
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        if len(set(map(str, values))) > 1:
            shown = [str(v)[:10] if label == "commit" else str(v) for v in values]
            differ.append(f"{label} {' → '.join(shown)}")
    if not differ:
        return text + " Their environments are the same."
    return (text + f" Their environments differ ({'; '.join(differ)}): compare rows across sessions with care, "
                   "measured rows above all (each row's session is in results.csv).")


def environment_text(env: dict[str, Any]) -> str:
    if not env:
        return "–"
    packages = env.get("packages") or {}
    parts = [str(env.get("cpu_model") or env.get("machine") or ""), f"Python {env.get('python', '?')}"]
    if packages.get("torch"):
        parts.append(f"torch {packages['torch']}")
    if env.get("git_commit"):
        parts.append(f"commit {str(env['git_commit'])[:10]}")
    return ", ".join(p for p in parts if p)
