"""The `llmsim` command (contract verbs: run, backends, hardware, validate, schema, report, plan).

Every user error is one line on stderr and a non-zero exit code (2 for bad input); no tracebacks.
`run` prints the run folder's path as its last line on stdout.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, NoReturn
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmsim import interrupt
from llmsim.config import Scenario, load_scenario
from llmsim.executor import AUTO_RAY_MIN_TASKS, EXECUTORS, RAY_ADDRESS_ENV, core_free, make_executor
from llmsim.userinput import not_a_regular_file
from llmsim.errors import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, LLMSimError, ScenarioError, UsageError,
                           machine_error, path_error)
from llmsim.plugins import get_plugin_manager
from llmsim.wording import count

if TYPE_CHECKING:
    from llmsim.registry import BackendRegistry
    from llmsim.runner import PlannedCase

# The backends' registry, the runner and the results (pandas with them) are imported by the commands that use
# them: `llmsim plan` forks its profile's worker (planner.profiling) before those imports, so that they run
# beside the trace, and `llmsim hardware` or `schema` need none of them.

# soft_wrap: a message is one line however long (a terminal wraps it; a log keeps it whole), never cut at 80
# columns into lines a grep of the log would split. Tables get consoles of their own width.
err_console = Console(stderr=True, soft_wrap=True)


def _say(text: str) -> None:
    """One progress line on stderr: `llmsim plan`'s lines said while a hardware choice is priced (planner.search's
    `live`), a module-level function so that a forked pricing worker gets it pickled (by name: the worker's copy of
    this module and its console)."""
    err_console.print(text, highlight=False)


# llmsim.serving.simulate.PROGRESS_LOG's name (not imported here: the command line keeps SimPy out of its start-up)
SIMULATION_PROGRESS_LOGGER = "llmsim.serving.progress"


class _ConsoleHandler(logging.Handler):
    """Log records as plain lines on err_console (which writes to whatever sys.stderr is at the time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err_console.print(self.format(record), highlight=False, markup=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own rule: a failed line never breaks the run
            self.handleError(record)


def show_simulation_progress() -> None:
    """Let a long serving simulation's progress lines (llmsim.serving.simulate.ProgressLine: every ~15 s, requests
    finished and simulated seconds) reach stderr during `llmsim run`; once per process, however often called."""
    log = logging.getLogger(SIMULATION_PROGRESS_LOGGER)
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        log.addHandler(_ConsoleHandler())
    log.setLevel(logging.INFO)
    log.propagate = False


def _registry(warn: bool = True) -> tuple[BackendRegistry, object]:
    from llmsim.registry import BackendRegistry

    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    if warn:
        _warn_broken(registry)
    return registry, manager


def _warn_broken(registry: BackendRegistry) -> None:
    for plugin, why in registry.broken.items():
        err_console.print(f"[yellow]llmsim: warning: plugin {plugin!r} is not usable: {escape(why)}[/]",
                          highlight=False)


def _warn_broken_hardware(catalog: Any) -> None:
    """A plugin whose llmsim_hardware entries are malformed or clash: its entries are left out and every other
    entry kept (hardware.load_catalog), said once here (trial 49: every scenario failed, even one using none of
    them)."""
    for plugin, why in getattr(catalog, "broken_plugins", {}).items():
        err_console.print(f"[yellow]llmsim: warning: plugin {plugin!r}'s hardware entries are left out: {escape(why)} "
                          f"(LLMSIM_PLUGINS names the plugins to load: docs/plugins.md)[/]", highlight=False,
                          soft_wrap=True)


def _load(path: str, overrides: list[str], backends: list[str] | None, notes: list[str] | None = None
          ) -> tuple[Scenario, list[PlannedCase], object, BackendRegistry, Any]:
    """The scenario, its planned cases, the plugin manager, the registry and the hardware catalog. The notes
    printed about them (how a case is priced: an inference kernel in training, a tp group over nodes, float4
    weight-only, a window that cuts nothing) are also appended to `notes`, so that a run keeps them (notes.txt)."""
    from llmsim.runner import build_catalog, plan_cases

    _refuse_catalog(path, "run")
    scenario = load_scenario(path, overrides)
    registry, manager = _registry(warn=False)
    scenario_dir = Path(path).resolve().parent
    catalog = build_catalog(scenario, scenario_dir, manager, path)
    _warn_broken_hardware(catalog)
    planned = plan_cases(scenario, registry, path, backends, scenario_dir, catalog)
    kept = notes if notes is not None else []
    _note_trace(scenario, scenario_dir, path, kept)
    _note_inference_kernels(planned, scenario, path, kept)
    _note_training_options(planned, scenario, path, kept)
    _note_engine_kernels(scenario, path, kept)
    _note_cross_node_tp(planned, catalog, path, kept)
    _note_dp_fill(planned, scenario, path, kept)
    _note_absent_backends(planned, scenario, registry, path, kept)
    _note_fp4_weight_only(planned, catalog, path, kept)
    _note_kv_link(planned, catalog, scenario, path, kept)
    _note_allreduce_rms_fusion(planned, catalog, scenario, path, kept)
    window = scenario.workload.model.window_note()
    if window is not None:
        _say_note(path, "workload.model.sliding_window", window, kept)
    unused = scenario.serving.speculative.unused_note() if scenario.serving and scenario.serving.speculative else None
    if unused is not None:
        _say_note(path, f"serving.speculative.{unused[0]}", unused[1], kept)
    for key, note in scenario.serving_notes():   # workload keys a serving run does not read; a block vLLM lacks
        _say_note(path, key, note, kept)
    _warn_broken(registry)  # after planning: a backend the scenario asks for names its broken plugin in the error
    return scenario, planned, manager, registry, catalog


def _say_note(path: str, where: str, note: str, kept: list[str]) -> None:
    """One `llmsim: note:` line on stderr, kept (as `where: note`) for the run folder's notes.txt."""
    err_console.print(f"[yellow]llmsim: note: {escape(path)}: {escape(where)}: {escape(note)}[/]", highlight=False,
                      soft_wrap=True)
    kept.append(f"{where}: {note}")


def _note_inference_kernels(planned: list, scenario: Scenario, path: str, kept: list[str]) -> None:
    """Say where a training case names an inference engine's attention kernel (runner.inference_kernel_notes)."""
    from llmsim.runner import inference_kernel_notes

    for key, note in inference_kernel_notes(planned, scenario):
        _say_note(path, key, note, kept)


def _note_training_options(planned: list, scenario: Scenario, path: str, kept: list[str]) -> None:
    """Say where a training recipe is set for a case that prices none (runner.training_option_notes)."""
    from llmsim.runner import training_option_notes

    for key, note in training_option_notes(planned, scenario):
        _say_note(path, key, note, kept)


def _note_engine_kernels(scenario: Scenario, path: str, kept: list[str]) -> None:
    """Say where SGLang's kernel counts are named for a model they were not counted for (runner.engine_kernel_notes)."""
    from llmsim.runner import engine_kernel_notes

    for key, note in engine_kernel_notes(scenario):
        _say_note(path, key, note, kept)


def _note_dp_fill(planned: list, scenario: Scenario, path: str, kept: list[str]) -> None:
    """Say where a strategy without dp runs a different dp on different backends (runner.dp_fill_notes)."""
    from llmsim.runner import dp_fill_notes

    for where, note in dp_fill_notes(planned, scenario):
        _say_note(path, where, note, kept)


def _note_cross_node_tp(planned: list, catalog: Any, path: str, kept: list[str]) -> None:
    """Say where a modeled case's tensor-parallel group spans nodes (runner.cross_node_tp_notes)."""
    from llmsim.runner import cross_node_tp_notes

    for where, note in cross_node_tp_notes(planned, catalog):
        _say_note(path, where, note, kept)


def _note_absent_backends(planned: list, scenario: Scenario, registry: BackendRegistry, path: str,
                          kept: list[str]) -> None:
    """Say the hardware of a modeled backend asked for with --backend that the file does not configure
    (runner.absent_backend_notes), or that the file configures without naming one beside a backend that does
    (runner.default_hardware_notes)."""
    from llmsim.runner import absent_backend_notes, default_hardware_notes

    for where, note in absent_backend_notes(planned, scenario, registry) + default_hardware_notes(planned, scenario):
        _say_note(path, where, note, kept)


def _note_kv_link(planned: list, catalog: Any, scenario: Scenario, path: str, kept: list[str]) -> None:
    """Say where a disaggregated deployment's named KV link is not the one its instances would use
    (runner.kv_link_notes)."""
    from llmsim.runner import kv_link_notes

    for where, note in kv_link_notes(planned, catalog, scenario):
        _say_note(path, where, note, kept)


def _note_allreduce_rms_fusion(planned: list, catalog: Any, scenario: Scenario, path: str, kept: list[str]) -> None:
    """Say where vLLM's all-reduce + RMSNorm fusion is asked for a case it would not run in (runner.
    allreduce_rms_fusion_notes)."""
    from llmsim.runner import allreduce_rms_fusion_notes

    for where, note in allreduce_rms_fusion_notes(planned, catalog, scenario):
        _say_note(path, where, note, kept)


def _note_fp4_weight_only(planned: list, catalog: Any, path: str, kept: list[str]) -> None:
    """Say where a float4 workload is priced weight-only (runner.fp4_weight_only_notes: no FP4 tensor cores)."""
    from llmsim.runner import fp4_weight_only_notes

    for where, note in fp4_weight_only_notes(planned, catalog):
        _say_note(path, where, note, kept)


def _note_trace(scenario: Scenario, scenario_dir: Path, path: str, kept: list[str]) -> None:
    """Say where a trace replay departs from the trace file (serving.requests.trace_notes; plan_cases has read it),
    where drawn lengths send some requests past the context (serving.requests.lengths_past_context_note), and
    where an open loop's rate makes it a burst (serving.spec.burst_note)."""
    spec = scenario.serving
    if spec is not None and not spec.arrival.closed:
        from llmsim.serving.spec import burst_note

        burst = burst_note(spec.requests, spec.duration_s, spec.arrival.rates)
        if burst is not None:
            _say_note(path, "serving.arrival.rate", burst, kept)
    if spec is not None and spec.lengths is not None:
        from llmsim.serving.requests import lengths_past_context_note

        note = lengths_past_context_note(spec.lengths, scenario.workload.model.seq_len)
        if note is not None:
            _say_note(path, "serving.lengths", note, kept)
    if spec is None or spec.arrival.kind != "trace" or spec.arrival.path is None:
        return
    from llmsim.serving.requests import arrival_order, read_trace_in_file_order, trace_notes, trace_order_notes

    in_file, lines = read_trace_in_file_order(scenario_dir / spec.arrival.path)
    rows = arrival_order(in_file)
    for key, note in trace_order_notes(in_file, lines) + trace_notes(spec, rows, scenario.workload.model.seq_len):
        _say_note(path, key, note, kept)


def _a_path(text: str) -> str:
    """An --out or --dir value: any path but an empty one (`--out ''` wrote the run into the current folder, as
    if no folder had been named)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; allowed: a folder or file name (or leave the option out)")
    return text


def _a_file(text: str) -> str:
    """A --hardware value: a catalog file, not an empty path (trial 43: it was told 'a folder or file name')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; allowed: a hardware catalog file name (or leave the option "
                                         "out)")
    return text


def _a_file_or_folder(text: str) -> str:
    """A SCENARIO.yaml, PLAN.yaml or RUN_DIR argument: any path but an empty one (`report ''` and
    `calibrate ''` read the current folder, `validate ''` said 'cannot read file' naming nothing: trial 31)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; allowed: a file or folder name")
    return text


def _given_twice(paths: list) -> str | None:
    """The first path of `paths` that names a folder an earlier one names too (`D` and `D/`), as given, or None."""
    seen: set[Path] = set()
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            return str(path)
        seen.add(resolved)
    return None


def _a_folder(text: str) -> str:
    """An --out or --dir folder: a path (_a_path) that is not an existing file (`report RUN --out RUN/results.csv`
    said '.../results.csv/compare/...: Not a directory' once the comparison was built)."""
    path = Path(_a_path(text))
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a file, not a folder; allowed: a folder (made if missing)")
    return text


def _catalog(files: list[Path] | None, manager: Any = None) -> Any:
    """The built-in catalog, the given hardware files and the installed plugins' `llmsim_hardware` entries
    (hardware.load_catalog), as every command that takes `--hardware` or a catalog file reads them."""
    from llmsim.hardware import load_catalog

    manager = manager or get_plugin_manager()
    catalog = load_catalog(files, [(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es])
    _warn_broken_hardware(catalog)
    return catalog


def _validate_catalog(path: str) -> int:
    """`llmsim validate` of a hardware catalog file (a mapping with `entries:` and no `workload:`): its entries
    checked as a scenario's `hardware_catalog` would load them (with the built-in catalog and plugins' entries,
    so a duplicate name or an unknown default link is found too)."""
    from llmsim.hardware import parse_entries
    from llmsim.userinput import read_yaml

    own = [e.name for e in parse_entries(read_yaml(path), path)]
    catalog = _catalog([Path(path)])
    devices = [n for n in own if n in catalog.devices]
    links = [n for n in own if n in catalog.links]
    print(f"{path}: ok — a hardware catalog of {count(len(devices), 'device')}"
          f"{' (' + ', '.join(devices) + ')' if devices else ''} and {count(len(links), 'link')}"
          f"{' (' + ', '.join(links) + ')' if links else ''}; name it in a scenario's hardware_catalog, or give it "
          f"to `llmsim plan PLAN.yaml --hardware {shlex.quote(path)}`")
    for name in devices:   # trial 41: such a device validated as ok, and every case on it was then skipped
        if not any(catalog.devices[name].peak_flops.values()):   # keyed entries[i], as the file's errors are
            _say_note(path, f"entries[{own.index(name)}].peak_flops", f"none given for {name!r}: every modeled "
                                                                     f"case on this device is skipped (give e.g. "
                                                                     f"peak_flops: {{bfloat16: 989.4e12}}, FLOP/s of "
                                                                     f"dense math per dtype)", [])
    return 0


def _is_catalog_file(path: str) -> bool:
    """A mapping with `entries:` and no `workload:`: what a hardware catalog file holds, not a scenario. A file
    that holds no mapping is refused here, naming both kinds `validate` reads (an empty file meant as a catalog
    was told of a scenario's keys alone: trial 39)."""
    from llmsim.userinput import read_yaml

    data = read_yaml(path, "a scenario's name:, workload:, ... or a hardware catalog's entries:")
    return "entries" in data and "workload" not in data


def _refuse_catalog(path: str, command: str) -> None:
    """A hardware catalog file given to `run` (or `plan`) is told so in one line, keyed `entries`, with how
    catalogs are used: named in a scenario's `hardware_catalog:` (or a plan's `--hardware`), checked by
    `validate` (a fresh-user trial: `llmsim run hw.yaml` said `name: required key is missing`). A file that cannot
    be read, or holds no mapping, is left to the command's own loader, which says so as it always has."""
    from llmsim.userinput import read_yaml

    try:
        data = read_yaml(path)
    except ScenarioError:
        return
    if "entries" not in data or {"workload", "goal", "strategies"} & set(data):
        return
    kind, use = (("scenario", f"a scenario uses it by naming it in hardware_catalog: [{Path(path).name}] (paths "
                              f"relative to the scenario's folder)") if command == "run" else
                 ("plan", f"a plan uses it as `llmsim plan PLAN.yaml --hardware {shlex.quote(path)}`"))
    raise ScenarioError(path, "entries", f"this file is a hardware catalog, not a {kind}; {use}; `llmsim validate "
                                         f"{shlex.quote(path)}` checks it")


def _print_plan_notes(file: str, notes: list[tuple[str, str]]) -> None:
    """planner.run.plan_notes as `llmsim plan` and `llmsim validate` say them, one line each on stderr."""
    for level, text in notes:
        err_console.print(f"[yellow]llmsim: {level}: {escape(file)}: {escape(text)}[/]", highlight=False,
                          soft_wrap=True)


def _validate_plan(args: argparse.Namespace) -> int:
    """`llmsim validate` of a plan file (one with `goal:`): every check `llmsim plan` makes before its search
    (planner.run.check_plan: the file, --set, the devices and links in the catalog with --hardware's files, the
    search axes) and the notes it would print, without searching (trial 41: validate refused plan files)."""
    from llmsim.planner.config import load_plan
    from llmsim.planner.run import check_plan, plan_notes

    if args.backend:
        raise UsageError("validate", f"--backend is for a scenario; {args.scenario} is a plan, whose hardware is its "
                                     f"hardware: list (leave --backend out)")
    plan = load_plan(args.scenario, args.set)
    hardware = check_plan(plan, _catalog([Path(f) for f in args.hardware]), args.scenario)
    if args.no_simulate and plan.serving is not None:   # as `plan --no-simulate` refuses it, after the same checks
        raise _serving_plan_simulates(args.scenario)
    _print_plan_notes(args.scenario, plan_notes(plan, hardware))
    kind = "serving" if plan.serving is not None else {"train": "training"}.get(plan.workload.mode,
                                                                                plan.workload.mode)
    command = ["llmsim", "plan", args.scenario]   # with what was checked (trial 43: --hardware was dropped)
    for path in args.hardware:
        command += ["--hardware", path]
    for override in args.set:
        command += ["--set", override]
    if args.no_simulate:
        command.append("--no-simulate")
    print(f"{args.scenario}: ok — a {kind} plan over {count(len(hardware), 'hardware choice')}, ranked by "
          f"{plan.objective}; `{shlex.join(command)}` searches it")
    return 0


def _serving_plan_simulates(path: str) -> ScenarioError:
    """`--no-simulate` given with a serving plan, as `plan` and `validate` refuse it."""
    return ScenarioError(path, None, "--no-simulate: a serving plan is found by simulation, so it cannot be skipped "
                                     "(allowed: --no-simulate with a training or step-goal plan only; leave it out "
                                     "here)")


def _is_plan_file(path: str) -> bool:
    """A mapping with `goal:` and no `strategies:`: a plan file (`llmsim plan`), not a scenario."""
    from llmsim.userinput import read_yaml

    data = read_yaml(path, "a scenario's name:, workload:, ..., a plan's goal:, or a hardware catalog's entries:")
    return "goal" in data and "strategies" not in data


def cmd_validate(args: argparse.Namespace) -> int:
    from llmsim.runner import eager_mismatch_notes, fit_notes, skip_notes

    if _is_plan_file(args.scenario):
        return _validate_plan(args)
    if _is_catalog_file(args.scenario):
        if args.set or args.backend or args.hardware or args.no_simulate:   # trial 41: ignored, and the file said ok
            flag = ("--set" if args.set else "--backend" if args.backend else "--hardware" if args.hardware
                    else "--no-simulate")
            used = {"--hardware": "a plan", "--no-simulate": "a plan", "--set": "a scenario or a plan"}.get(
                flag, "a scenario")
            raise UsageError("validate", f"{flag} is for {used}; "
                                         f"{args.scenario} is a hardware catalog, checked "
                                         f"as written (leave {flag} out, or edit the file)")
        return _validate_catalog(args.scenario)
    if args.hardware:
        raise UsageError("validate", f"--hardware is for a plan; {args.scenario} is a scenario, which names its "
                                     f"hardware files in hardware_catalog:")
    if args.no_simulate:   # `llmsim plan`'s flag (skip its cluster-simulation re-check); a scenario has no such step
        raise UsageError("validate", f"--no-simulate is for a plan (it skips `llmsim plan`'s cluster-simulation "
                                     f"re-check); {args.scenario} is a scenario, and validate runs none of its cases "
                                     f"(leave --no-simulate out; a run picks its backends with --backend)")
    scenario, planned, _, _, catalog = _load(args.scenario, args.set, args.backend)
    # rows a run would skip: said as the run's rows say it, once per backend (point)
    for key, problem, n in skip_notes(planned, catalog, scenario):
        err_console.print(f"[yellow]llmsim: note: {escape(args.scenario)}: {key}: {escape(problem)}; "
                          f"{count(n, 'case')} will be skipped[/]", highlight=False, soft_wrap=True)
    for key, reason, n in fit_notes(planned, catalog):
        err_console.print(f"[yellow]llmsim: note: {escape(args.scenario)}: {key}: {escape(reason)}; "
                          f"{count(n, 'case')} will be does-not-fit[/]", highlight=False, soft_wrap=True)
    for key, note in eager_mismatch_notes(planned, catalog, scenario):
        err_console.print(f"[yellow]llmsim: note: {escape(args.scenario)}: {key}: {escape(note)}[/]",
                          highlight=False, soft_wrap=True)
    n = len(scenario.strategies)
    # A serving scenario's rates are cases of their own (runner.plan_serving_cases), not backend settings.
    rates = len(scenario.serving.arrival.sweep) if scenario.serving is not None else 1
    factors = [count(n, 'strategy'), count(len(planned) // (n * rates), 'backend setting')]
    if scenario.serving is not None:
        arrival = scenario.serving.arrival
        as_recorded = arrival.kind == "trace" and arrival.rate is None   # trial 40: was "× 1 rate"
        factors.append("1 replay as recorded" if as_recorded else
                       count(rates, 'client count' if arrival.closed else 'rate'))
    print(f"{args.scenario}: ok — {' × '.join(factors)} = {count(len(planned), 'case')}")
    return 0


def _resumed_backends(planned: list[PlannedCase], resume: Path, path: str) -> list[PlannedCase]:
    """A --resume without --backend continues the run of the folder: the backends its planned.json names (the run
    may have been `--backend cpu` alone), not every backend of the scenario; said in a note naming the others and how
    to add them (trial 48: the resume quietly added 10 roofline and cluster rows to a cpu run). A folder without
    the record keeps every backend."""
    from llmsim.results import read_planned

    recorded = read_planned(resume)
    if recorded is None:
        return planned
    ran = {backend for _, backend in recorded}
    others = sorted({item.backend.name for item in planned} - ran)
    if not others:
        return planned
    _say_note(path, "--resume", f"continues the backends this folder's run planned ({', '.join(sorted(ran))}); "
                                f"the scenario's {', '.join(others)} left out: to add them, resume with "
                                + " ".join(f"--backend {name}" for name in sorted(ran | set(others))), [])
    return [item for item in planned if item.backend.name in ran]


def _all_done(planned: list[PlannedCase], resume: Path) -> bool:
    """Whether every planned (case, backend) of a --resume already has a finished row in the folder (read
    without writing: the folder may yet be refused; a damaged file is run_scenario's to say)."""
    from llmsim.results import read_rows

    try:
        rows = read_rows(resume, warn=lambda _: None)
    except Exception:  # noqa: BLE001 - damaged rows: run_scenario refuses the folder in its own words
        return False
    done = {(r["case"], r["backend"]) for r in rows if r.get("status") != "failed"}
    return {(item.case.name, item.backend.name) for item in planned} <= done


def cmd_run(args: argparse.Namespace) -> int:
    from llmsim.results import latest_run_dir, read_rows, rows_frame
    from llmsim.runner import run_scenario

    notes: list[str] = []
    scenario, planned, manager, registry, _ = _load(args.scenario, args.set, args.backend, notes)
    out = Path(args.out)
    resume = None
    if args.resume:
        resume = Path(args.resume)
        if not resume.exists():   # trial 40: said 'has no results.jsonl' of a folder that is not there
            raise ScenarioError(None, "--resume", f"{resume} does not exist (allowed: a run folder that `llmsim run` "
                                                  f"wrote, or --resume alone for the latest run)")
        if not (resume / "results.jsonl").exists():
            raise ScenarioError(None, "--resume", f"{resume} is not a run folder (it has no results.jsonl)")
    elif args.resume is not None:
        resume = latest_run_dir(out, scenario.name)
        if resume is None:
            raise ScenarioError(None, "--resume", f"no earlier run of {scenario.name!r} under {out}/ (give the "
                                                  f"run folder, or the --out the run used)")

    if resume is not None and not args.backend:
        planned = _resumed_backends(planned, resume, args.scenario)
    # said once the run has accepted the folder (run_scenario refuses one of another scenario first)
    nothing_left = resume is not None and _all_done(planned, resume)

    def progress(k: int, n: int, item: PlannedCase) -> None:
        err_console.print(f"[{k}/{n}] {item.case.name} on {item.backend.name}", highlight=False)

    executor = make_executor(args.executor, args.ray_address)
    executor.check()  # an unreachable Ray cluster is refused before the run folder is made
    show_simulation_progress()
    outcome = run_scenario(scenario, registry, planned, out, manager=manager, resume=resume, progress=progress,
                           scenario_dir=Path(args.scenario).resolve().parent, executor=executor, notes=notes)
    if nothing_left:
        _say_note(args.scenario, "--resume", f"every planned case of {resume} has a row already: nothing was left to "
                                             f"run (the report is rebuilt)", [])
    frame = rows_frame(read_rows(outcome.run_dir))
    counts = frame["status"].value_counts().to_dict()
    if len(frame):
        from llmsim.report.terminal import WIDTH, headline_table

        Console(stderr=True, width=err_console.width if err_console.is_terminal else WIDTH).print(headline_table(frame))
    if len(frame) or not outcome.interrupted:  # an interrupt before any row is said once, below
        err_console.print(("interrupted after: " if outcome.interrupted else "done: ")
                          + (", ".join(f"{v} {k}" for k, v in counts.items()) or "no case finished"),
                          highlight=False)
    if outcome.interrupted:  # stop now: the figures take seconds, and --resume or `llmsim report` builds them
        resume_cmd = escape(_resume_command(args, outcome.run_dir))
        if len(frame):
            err_console.print(f"interrupted: the rows above are saved; continue with: {resume_cmd}\n(or build the "
                              f"report of what is done with `llmsim report {escape(str(outcome.run_dir))}`)",
                              highlight=False, soft_wrap=True)  # soft_wrap: the command stays one line to copy
        else:  # an empty results.jsonl: there is nothing to report, and `llmsim report` would refuse it
            err_console.print(f"interrupted before any case finished: no result was written; start it again "
                              f"with: {resume_cmd}", highlight=False, soft_wrap=True)
        print(outcome.run_dir)
        return EXIT_INTERRUPTED
    try:
        from llmsim.report.build import write_report

        write_report(outcome.run_dir, frame)
    except KeyboardInterrupt:  # every row is saved: say where, and how to build the report the Ctrl-C stopped
        err_console.print(f"llmsim: interrupted while writing the report; every row is saved in "
                          f"{escape(str(outcome.run_dir))}: build the report with `llmsim report "
                          f"{escape(str(outcome.run_dir))}`", highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the rows are saved; a broken report must not hide them
        err_console.print(f"[yellow]llmsim: warning: the report could not be built ({escape(type(exc).__name__)}: "
                          f"{escape(str(exc))}); results are saved — rebuild with `llmsim report {outcome.run_dir}`[/]",
                          highlight=False)
    print(outcome.run_dir)
    failed = _failed_rows_line(frame)
    if failed:  # every row and the report are saved; the exit code tells a script that a case broke (trial 39)
        saved = ("the report is saved" if (frame["status"] == "failed").all()
                 else "the other rows and the report are saved")
        raised, why = _raised_limits(frame)
        err_console.print(f"llmsim: error: {escape(failed)}; {saved}; {escape(why)}run the failed cases again "
                          f"with: {escape(_resume_command(args, outcome.run_dir, raised))}", highlight=False,
                          soft_wrap=True)
        return EXIT_FAILED
    return 0


def _failed_rows_line(frame: Any) -> str | None:
    """'2 of 6 rows failed (first: tp2 on cuda: RuntimeError: ...)' when a row's status is `failed` (a backend
    raised: the case could not run for a reason that is neither its input nor its size), else None. `skipped` and
    `does-not-fit` rows are answers, not failures."""
    failed = frame[frame["status"] == "failed"]
    if not len(failed):
        return None
    first = failed.iloc[0]
    error = str(first.get("error") or "no error recorded").splitlines()[0]
    return (f"{len(failed)} of {count(len(frame), 'row')} failed (first: {first['case']} on {first['backend']}: "
            f"{error})")


# How much a time limit that a case ran out of is raised in the suggested --resume command
TIMEOUT_RAISE_FACTOR = 2


def _raised_limits(frame: Any) -> tuple[dict[str, float], str]:
    """The time limits failed rows ran out of (Case.timed_out's extras), each raised TIMEOUT_RAISE_FACTOR-fold,
    by scenario key, and the words that say so ('1 case ran out of backends.cpu.timeout_s (5 s): '); ({}, '')
    when none did (trial 42: the suggested --resume repeated the too-short limit, and said nothing of it)."""
    from llmsim.backend import TIMED_OUT_AFTER_S, TIMED_OUT_SETTING

    if TIMED_OUT_SETTING not in frame:
        return {}, ""
    out = frame[(frame["status"] == "failed") & frame[TIMED_OUT_SETTING].notna()]
    limits: dict[str, float] = {}
    for key, limit in zip(out[TIMED_OUT_SETTING], out[TIMED_OUT_AFTER_S]):
        limits[str(key)] = max(limits.get(str(key), 0.0), float(limit))
    if not limits:
        return {}, ""
    said = ", ".join(f"{key} ({limit:g} s)" for key, limit in limits.items())
    return ({key: limit * TIMEOUT_RAISE_FACTOR for key, limit in limits.items()},
            f"{count(len(out), 'case')} ran out of {said}: --resume accepts a longer limit; ")


def _resume_command(args: argparse.Namespace, run_dir: Path, raised: dict[str, float] | None = None) -> str:
    """The `llmsim run` command that continues `run_dir`: the same scenario, --set, --backend and executor arguments
    (--resume refuses a scenario that differs from the one the folder holds), shell-quoted. `raised`: settings
    (scenario keys) given new values by --set, in place of any --set of them (a time limit a case ran out of)."""
    parts = ["llmsim", "run", args.scenario]
    raised = raised or {}
    for override in args.set:
        if override.split("=", 1)[0].strip() not in raised:
            parts += ["--set", override]
    for key, value in raised.items():
        parts += ["--set", f"{key}={value:g}"]
    for name in args.backend or []:
        parts += ["--backend", name]
    if getattr(args, "executor", "auto") != "auto":   # a Ray run resumes on Ray (trial 40)
        parts += ["--executor", args.executor]
    if getattr(args, "ray_address", None):
        parts += ["--ray-address", args.ray_address]
    return shlex.join(parts + ["--resume", str(run_dir)])


@contextmanager
def task_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress(done, total) for llmsim.executor maps: a rich progress bar on stderr, "what done/total",
    shown from the map's start (Executor.map reports 0 done first; nothing for a command that maps nothing)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console)
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(what, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:  # a bar never started still prints a line when stopped (before an error message)
            bar.stop()


def executor_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--executor", default="auto", choices=EXECUTORS,
                   help=f"where {what} run: auto (default: Ray when installed and there are at least "
                        f"{AUTO_RAY_MIN_TASKS} of them, or an address is given; else in this process), "
                        "local (in this process, one after another) or ray")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help=f"a running Ray cluster (`ray start --head` prints it; default: ${RAY_ADDRESS_ENV}); "
                        "without one, Ray starts on this machine")


def cmd_backends(args: argparse.Namespace) -> int:
    from llmsim.runner import availability_of

    registry, _ = _registry()
    table = Table("backend", "kind", "plugin", "available here", title="llmsim backends")
    for name in registry.names:
        cls = registry.get(name)
        reason = availability_of(cls)
        table.add_row(name, cls.kind, registry.owners[name], "yes" if reason is None else f"no: {escape(reason)}")
    Console().print(table)
    return 0


def cmd_hardware(args: argparse.Namespace) -> int:
    catalog = _catalog([Path(f) for f in args.hardware])
    devices = Table("device", "bf16 TFLOP/s", "fp32 TFLOP/s", "memory GiB", "mem BW GB/s", "power W (idle–max)",
                    "source", title="devices")
    for d in catalog.devices.values():
        tf = {k: f"{v / 1e12:.4g}" for k, v in d.peak_flops.items()}
        missing = "measured" if not d.peak_flops else "–"  # an empty table means: probed at run time
        source = d.source
        if d.name == "cpu-host":  # this machine: its own probes, not the datasheet CPU the power comes from
            tf, missing, source = _host_row(d.source)
        devices.add_row(escape(d.name), tf.get("bfloat16", missing), tf.get("float32", missing),
                        f"{d.memory_bytes / 2**30:.4g}" if d.memory_bytes else "measured",
                        f"{d.memory_bw_bytes_per_s / 1e9:.4g}" if d.memory_bw_bytes_per_s else "–",
                        f"{d.idle_power_w:g}–{d.max_power_w:g}" + (" per core" if d.power_per_core else "")
                        + (f" (limit {d.power_limit_w:g})" if d.power_limit_w is not None else ""),
                        escape(source))
    links = Table("link", "GB/s per device per direction", "latency µs", "source", title="links")
    for ln in catalog.links.values():
        links.add_row(ln.name, f"{ln.bandwidth_bytes_per_s / 1e9:.4g}", f"{ln.latency_s * 1e6:.3g}", ln.source)
    console = Console(width=200)
    console.print(devices)
    console.print(links)
    return 0


def _host_row(power_source: str) -> tuple[dict[str, str], str, str]:
    """cpu-host as this machine: the matmul peaks its probes measured (TFLOP/s by dtype; none before a run
    of the cpu backend) and a source that says which numbers are this CPU's and which are an estimate."""
    from llmsim.environment import cpu_model
    from llmsim.measure.host_probes import cached_rates

    peaks = {dtype: f"{r.peak_flops_per_s / 1e12:.4g}" for dtype in ("bfloat16", "float32")
             if (r := cached_rates(dtype)) is not None}
    measured = ("FLOP/s probed by an earlier run" if peaks else
                "FLOP/s and bandwidth probed when a cpu run measures them (none yet)")
    return peaks, "measured at run time", (f"this machine ({cpu_model()}): {measured}; memory read at run time; "
                                           f"power per core an estimate from another CPU: {power_source}")


def cmd_schema(args: argparse.Namespace) -> int:
    """The scenario's JSON Schema, each installed backend's block spelled out (llmsim.schema): from the plugin
    manager's backends and hardware entries, as `validate` sees them."""
    from llmsim.hardware import load_catalog
    from llmsim.schema import scenario_schema

    registry, manager = _registry()
    entries = [(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es]  # type: ignore[attr-defined]
    print(json.dumps(scenario_schema(registry, load_catalog(None, entries)), indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One RUN_DIR: rebuild its report.md and report.html. Several: compare them (the first is the
    baseline) into a new folder, printed last."""
    from llmsim.report.build import write_comparison, write_run_report
    from llmsim.report.run import load_run, not_a_run_folder

    run_dirs = [Path(p) for p in args.run_dirs]
    for run_dir in run_dirs:
        if not run_dir.exists():
            raise UsageError("report", f"{run_dir} does not exist (allowed: a run folder that `llmsim run` wrote)")
        if not (run_dir / "results.jsonl").exists():
            raise UsageError("report", not_a_run_folder(run_dir))
    if len(run_dirs) == 1:
        if args.out is not None:
            raise UsageError("report", "--out is for comparisons (two or more RUN_DIRs); one run's report is "
                              "written into its own folder")
        run = load_run(run_dirs[0])
        for path in write_run_report(run)[:2]:
            print(path)
        return _saved_scenario_problem([run])
    twice = _given_twice(run_dirs)
    if twice is not None:   # named (trial 40: `D D/` said only 'given twice')
        raise UsageError("report", f"the same run folder is given twice ({twice})")
    runs = [load_run(p) for p in run_dirs]   # read once: a cut last row is warned once (trial 33)
    print(write_comparison(runs, parent=Path(args.out or "reports")))
    return _saved_scenario_problem(runs)


def _saved_scenario_problem(runs: list[Any]) -> int:
    """After the report of what the rows hold is written: a run with damaged lines in results.jsonl, or whose
    scenario.yaml is missing, damaged or another scenario's, is bad input: one line each and exit 2 (the
    report says so too)."""
    problems = [p for run in runs for p in (run.rows_problem, run.scenario_problem) if p is not None]
    for problem in problems:
        print(f"llmsim: error: {problem}", file=sys.stderr)  # as main() prints an LLMSimError: one line
    return EXIT_BAD_INPUT if problems else 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from llmsim.scaffold import write_plugin

    from llmsim.registry import BackendRegistry

    taken = BackendRegistry.from_manager(get_plugin_manager()).names
    if args.name in taken:  # its entry point would collide with an installed backend's name
        raise UsageError("new-plugin", f"a backend named {args.name!r} is already installed; allowed: a name other "
                                       f"than {', '.join(taken)}")
    target = Path(args.dir) if args.dir else Path(f"llmsim-{args.name}")
    try:
        written = write_plugin(args.name, target)
    except OSError as exc:   # a --dir that cannot be made is named by its flag (trial 31)
        raise (path_error("--dir", exc) if args.dir else None) or exc from None
    print(written)
    return 0


def _collector_off_to_exit() -> None:
    """Automatic collections off from here to the process's exit, and the objects alive at the exit frozen out of
    the interpreter's final full passes (gc.freeze): for a process that ends when its plan does, whose garbage the
    exit frees at once (planner.collector pauses the collector inside a plan whatever the caller).

    A plan's rows are freed only by a collection: torch.fx.wrap (run by the import of torch._dynamo, which the
    first meta-device trace asks for) keeps its own frame in a reference cycle, and so do the exceptions
    matplotlib's mathtext parser (pyparsing) raises for the figure's tick labels; through their callers' frames the
    cycles hold the locals of the plan's whole call stack, the 404,694 rows of the 70B plan among them. The one
    collection that freed them walked ~10^6 objects, ~0.5-0.9 s; the imports before it (torch, matplotlib, pandas)
    ran ~5 full collections, ~0.5 s."""
    gc.disable()
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def cmd_plan(args: argparse.Namespace) -> int:
    """Search the plan's configurations; the best ones as a table on stderr, the run folder last on stdout.

    Run as the program (`main` with argv None) a training or inference plan leaves cyclic garbage to the process's
    exit (`_collector_off_to_exit`), from the imports on; a serving plan's simulations make cycles
    as they go, so the collector runs again once it is loaded."""
    if args.program:
        _collector_off_to_exit()
    from llmsim.workload.warm import warm_tracer  # a light module: forked before the planner's imports

    # a worker forked now imports torch for the workload profile's trace while the plan file is read; it traces if
    # the store lacks the profile (a training or inference plan's), beside the imports, the catalog and the checks
    # below (planner.profiling); else it is stopped. Only with a core free: on a busy host its import, wasted when
    # the store holds the profile, took a repeated 70B plan's wall 1.04x (4 pairs at load 3-3.9); PlanProfile then
    # forks the trace after reading the plan, where the store lacks it. Under --executor local: nothing forked
    executor = make_executor(args.executor, args.ray_address)
    spare = executor.few_heavy().spare(warm_tracer) if core_free() else None
    with executor, spare or nullcontext():
        from llmsim.planner.config import load_plan
        from llmsim.planner.profiling import PlanProfile, sharing_choice

        _refuse_catalog(args.plan, "plan")
        plan = load_plan(args.plan, args.set)
        if args.program and plan.serving is not None:
            gc.enable()
        with (PlanProfile(plan.workload, sharing_choice(plan), executor, spare) if plan.serving is None
              else nullcontext()) as profile:
            if spare is not None:  # not given the trace (the store holds the profile, or a serving plan): stopped now
                spare.close()
            from llmsim.planner import run_plan

            catalog = _catalog([Path(f) for f in args.hardware])
            progress = lambda text: err_console.print(text, highlight=False)  # noqa: E731
            if plan.serving is not None and args.no_simulate:
                from llmsim.planner.config import check_hardware

                check_hardware(plan, catalog, args.plan)  # a mistyped device is the first thing to fix, if any
                raise _serving_plan_simulates(args.plan)
            # a serving plan's tasks are its candidates' rate searches, then the what-ifs of the winner and the
            # runner-up (the lines before each phase say which); a training plan's, the re-checks of its best
            what = "simulation tasks done" if plan.serving is not None else "re-checked"
            with task_bar(what) as bar, interrupt.handling():
                executor.check()  # an unreachable Ray cluster is refused before the plan folder is made
                outcome = run_plan(plan, catalog, Path(args.out), args.plan, False if args.no_simulate else None,
                                   progress, executor=executor, task_progress=bar, profile=profile, live=_say)
                interrupt.check()  # a Ctrl-C some library swallowed is still the user's (llmsim.interrupt)
    from llmsim.planner.explain import describe, fmt_energy, fmt_usd, latency_name
    from llmsim.planner.report import duration_against, meets_goal
    from llmsim.planner.run import plan_notes

    _print_plan_notes(args.plan, plan_notes(plan, outcome.hardware))
    if plan.serving is not None:
        _print_serving_plan(plan, outcome)
        print(outcome.run_dir)
        return 0
    shown = outcome.top or outcome.closest
    train = plan.workload.mode == "train"
    title = (f"best by {plan.objective}" + (" (re-checked by the cluster simulation)" if outcome.simulated else "")
             if outcome.top else "nothing meets the goal: the closest configurations")
    # training: the time to the goal; inference: the latency the goal limits (decode: one token step) and the
    # throughput the goal asks for, each priced per hour of service
    headers = (["time to goal", "cost", "energy"] if train else
               [latency_name(plan), "tokens/s", "cost/h", "energy/h"])
    table = Table("#", "configuration", *headers, "devices", "meets goal", title=title)
    # the times written on the side of the goal they are, and "meets goal" judged as plan.md judges it
    # (planner.report.meets_goal: a re-checked row meets the goal only if its simulated numbers do too)
    bound = plan.goal.deadline_s if train else plan.goal.max_step_latency_s
    for i, e in enumerate(shown, 1):
        sim = e.sim if outcome.simulated and e.sim else {}
        time_text = (duration_against(e.time_to_goal_s, bound)
                     + (f" (sim {duration_against(sim['time_to_goal_s'], bound)})" if sim else ""))
        cost_text = fmt_usd(e.cost_usd) + (f" (sim {fmt_usd(sim['cost_usd'])})" if sim else "")
        rate = [] if train else ["–" if e.tokens_per_s is None else f"{e.tokens_per_s:,.0f}"]
        table.add_row(str(i), describe(e), time_text, *rate, cost_text, fmt_energy(e.energy_j),
                      f"{e.config.n_devices:,}", meets_goal(e, outcome.simulated))
    if shown:  # none fits in memory: no row to show, the explanation below says why
        Console(stderr=True, width=max(err_console.width, 160)).print(table)
    err_console.print(outcome.explanation.headline, highlight=False)
    for line in outcome.explanation.winner or outcome.explanation.limiting:
        err_console.print(f"  {line}", highlight=False)
    _print_choice(outcome.explanation)
    print(outcome.run_dir)
    return 0


def _print_serving_plan(plan: Any, outcome: Any) -> None:
    """A serving plan's candidates (the best top_k that meet the goal, else the closest) and the explanation."""
    from llmsim.planner.explain import fmt_duration, fmt_usd
    from llmsim.planner.serve_report import describe_candidate, describe_rate, dropped_note

    dropped = dropped_note(outcome.results)
    if dropped:  # candidates the cost model cannot price (a kernel the device has no figure for): said once
        err_console.print(f"[yellow]llmsim: note: {escape(dropped)}[/]", highlight=False, soft_wrap=True)
    shown = outcome.top[:plan.top_k] or outcome.results[:plan.top_k]
    title = (f"best by {plan.objective}: {plan.goal.request_rate:g} requests/s under the SLO" if outcome.top
             else "nothing meets the goal: the closest candidates")
    units = any(c.unit is not None for c in shown)   # a disaggregated unit's rate is one unit's, not one replica's
    sustained = "sustained (1 replica or unit)" if units else "sustained (1 replica)"
    table = Table("#", "configuration", sustained, "cost/h", "TTFT p99", "TPOT p99", "meets goal",
                  title=title)
    for i, c in enumerate(shown, 1):
        row = c.at_goal.row if c.at_goal else {}
        table.add_row(str(i), describe_candidate(c), describe_rate(c), fmt_usd(c.cost_usd),
                      fmt_duration(row.get("ttft_p99_s")), fmt_duration(row.get("tpot_p99_s")),
                      "yes" if c.feasible else c.reason)
    Console(stderr=True, width=max(err_console.width, 160)).print(table)
    err_console.print(outcome.explanation.headline, highlight=False)
    for line in outcome.explanation.winner or outcome.explanation.limiting:
        err_console.print(f"  {line}", highlight=False)
    _print_choice(outcome.explanation)


def _print_choice(explanation: Any) -> None:
    """The winner's and runner-up's limits, and the ±20% sensitivity table, on stderr."""
    from llmsim.planner.explain import sensitivity_rows

    for line in explanation.choice:
        err_console.print(f"  {line}", highlight=False)
    s = explanation.sensitivity
    if s is not None:
        table = Table("what-if", "winner", "runner-up", "ranks first",
                      title=f"sensitivity ({s.metric}, re-priced by {s.priced_by})")
        for row in sensitivity_rows(s):
            table.add_row(*row)
        Console(stderr=True, width=max(err_console.width, 160)).print(table)


def _check_writable(path: Path) -> None:
    """Raise the OSError writing `path` would raise (main turns it into one line, exit 2), leaving no file behind.
    A FIFO, socket or device is a UsageError of --out before the open, which would wait on a FIFO (trial 32)."""
    special = not_a_regular_file(path)
    if special:
        raise UsageError("--out", f"{path}: {special}")
    if not path.parent.exists():   # "No such file or directory" named no folder
        raise UsageError("--out", f"{path}: its folder {path.parent} does not exist (calibrate writes one file; "
                                  f"make the folder first)")
    existed = path.exists()
    with open(path, "a", encoding="utf-8"):
        pass
    if not existed:
        path.unlink()


STEP_CALIBRATION, SERVING_CALIBRATION = "hardware-calibrated.yaml", "hardware-serving-calibrated.yaml"
CALIBRATION_FILES = (STEP_CALIBRATION, SERVING_CALIBRATION)  # calibrate's own default outputs in the first RUN_DIR


def _not_an_input(out: Path, run_dirs: list[Path], hardware: list[Path]) -> None:
    """calibrate's --out may not replace what it reads: a --hardware file, or a file of a RUN_DIR other than a
    calibration it wrote itself (trial 35: `--out RUN/results.jsonl` replaced the rows with the entry, exit 0)."""
    target = out.resolve()
    if any(target == h.resolve() for h in hardware):
        raise UsageError("--out", f"{out} is a --hardware file this calibration reads; allowed: another file")
    if target.exists() and target.name not in CALIBRATION_FILES and \
            any(target.parent == d.resolve() for d in run_dirs):
        raise UsageError("--out", f"{out} is a file of the run folder {target.parent} this calibration reads; "
                                  f"allowed: a new file, or {' / '.join(CALIBRATION_FILES)} there")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit, print modeled vs measured per case, write the entry (default: in the first RUN_DIR); its path last.

    Measured serving rows (a serving scenario's, e.g. the vllm backend's) fit the serving iteration's parameters
    (llmsim.calibrate.serving); otherwise the step rows of `--backend` (default cpu) fit the step model."""
    from llmsim.calibrate import (CalibrationError, calibrate, catalog_file, format_table, multi_process_warning,
                                  underdetermined_warning)
    from llmsim.calibrate.serving import calibrate_serving, has_serving_rows
    from llmsim.hardware import load_catalog

    if args.out is not None:
        _not_an_input(Path(args.out), [Path(d) for d in args.run_dirs], [Path(h) for h in args.hardware])
        try:
            _check_writable(args.out)  # before the fit, which takes seconds to minutes
        except OSError as exc:         # named by its flag, as run's and plan's --out are (trial 31)
            raise (path_error("--out", exc) or exc) from None
    twice = _given_twice(args.run_dirs)
    if twice is not None:
        # its rows would count twice: as many "cases" again for the same parameters, no new information
        raise UsageError("calibrate", f"the same run folder is given twice ({twice})")
    try:
        serving = {d: has_serving_rows([d], args.backend) for d in args.run_dirs}
        if any(serving.values()):
            step_folders = [d for d, has in serving.items() if not has]
            if step_folders:
                raise CalibrationError(f"{step_folders[0]} holds no measured serving rows while the other folders do: "
                                       f"calibrate step runs and serving runs in separate calls (the step runs first, "
                                       f"then the serving runs with --device <its entry> --hardware <its file>)")
            result = calibrate_serving(args.run_dirs, device=args.device, backend=args.backend,
                                       hardware_files=args.hardware,
                                       progress=lambda line: err_console.print(f"llmsim: {escape(line)}",
                                                                               highlight=False))
            default_name = SERVING_CALIBRATION
        else:
            catalog = load_catalog(args.hardware) if args.hardware else None
            result = calibrate(args.run_dirs, device=args.device or "cpu-host", backend=args.backend or "cpu",
                               catalog=catalog, include_busy=args.include_busy)
            if result.left_out:
                err_console.print(f"[yellow]llmsim: warning: left out {count(len(result.left_out), 'measured row')} "
                                  f"timed on a busy host (host_load_per_core > 1): "
                                  f"{escape(', '.join(result.left_out[:5]))}"
                                  f"{' ...' if len(result.left_out) > 5 else ''}; "
                                  f"--include-busy fits them too[/]", highlight=False)
            default_name = STEP_CALIBRATION
    except ScenarioError as exc:  # the catalog's words for a scenario's `hardware` key: here it is the flag (trial 24)
        if args.device is not None and exc.file is None and exc.key == "hardware" and "unknown device" in exc.message:
            raise UsageError("--device", exc.message) from None
        raise
    for warning in (underdetermined_warning(result), multi_process_warning(result)):
        if warning:
            err_console.print(f"[yellow]llmsim: warning: {escape(warning)}[/]", highlight=False)
    path = args.out or Path(args.run_dirs[0]) / default_name
    path.write_text(catalog_file(result, path.name))
    print(format_table(result))
    print(path)
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag or a missing argument in llmsim's one line, exit 2, instead of its
    usage block first (the usage stays one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"llmsim: error: {self.prog}: {message} (see: {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """As argparse's, but an argument the command does not take points at that command's --help (argparse
        reports it from the top-level parser: `llmsim schema extra` said "see: llmsim --help")."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(2, f"llmsim: error: {prog}: unrecognized arguments: {' '.join(extra)} (see: {prog} --help)\n")
        return parsed


def _installed_version() -> str:
    """The installed distribution's version (pyproject.toml), or 'unknown' when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("llmsim")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="llmsim", description="Simulate and benchmark Transformer workloads.")
    parser.add_argument("--version", action="version", version=f"llmsim {_installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("scenario", type=_a_file_or_folder, metavar="SCENARIO.yaml")
        p.add_argument("--backend", action="append", metavar="NAME", help="run only these backends (repeatable)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario key, e.g. --set workload.batch=16 (repeatable)")

    p = sub.add_parser("run", help="run a scenario; prints the run folder last")
    scenario_args(p)
    p.add_argument("--out", default="reports", type=_a_folder, metavar="DIR",
                   help="where run folders go (default: reports -> reports/<scenario name>/<stamp>)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="finish an interrupted run (default: the latest run of this scenario)")
    executor_args(p, "the cases of modeled backends")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("validate", help="check a scenario, a plan or a hardware catalog without running it")
    scenario_args(p)
    p.add_argument("--hardware", action="append", default=[], type=_a_file, metavar="FILE",
                   help="a plan's extra catalog YAML, as `llmsim plan --hardware` takes it")
    p.add_argument("--no-simulate", action="store_true",
                   help="a plan's, as `llmsim plan --no-simulate` takes it: validate checks that the plan accepts it "
                        "(a serving plan refuses it); validate itself never simulates")
    p.set_defaults(func=cmd_validate)
    sub.add_parser("backends", help="installed backends and whether they can run here").set_defaults(func=cmd_backends)
    p = sub.add_parser("hardware", help="the hardware catalog")
    p.add_argument("--hardware", action="append", default=[], type=_a_file, metavar="FILE", help="extra catalog YAML")
    p.set_defaults(func=cmd_hardware)
    sub.add_parser("schema", help="JSON Schema of the scenario file").set_defaults(func=cmd_schema)
    p = sub.add_parser("report", help="(re)build a run's report; two or more runs: compare them",
                       description="One RUN_DIR: rebuild report.md and report.html in it. Two or more: compare "
                                   "them, the first as the baseline, with differences in percent.")
    p.add_argument("run_dirs", nargs="+", type=_a_file_or_folder, metavar="RUN_DIR")
    p.add_argument("--out", default=None, type=_a_folder, metavar="DIR",
                   help="where comparison folders go, as for run and plan (default: reports -> "
                        "reports/compare/<stamp>)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("new-plugin", help="scaffold a third-party backend plugin package")
    p.add_argument("name", metavar="NAME", help="plugin and backend name, e.g. my-chip")
    p.add_argument("--dir", type=_a_folder, metavar="DIR", help="where to write it (default: ./llmsim-NAME)")
    p.set_defaults(func=cmd_new_plugin)
    p = sub.add_parser("calibrate", help="fit a device's efficiency factors to measured run folders",
                       description="Step rows (default: the cpu backend's) fit matmul and attention efficiency, memory "
                                   "bandwidth and per-operator cost; measured serving rows (e.g. the vllm backend's) "
                                   "fit the serving iteration's matmul efficiency, memory bandwidth and kernel latency "
                                   "by replaying them in the serving simulation. Prints modeled vs measured and the "
                                   "file written last.")
    p.add_argument("run_dirs", nargs="+", type=lambda text: Path(_a_file_or_folder(text)), metavar="RUN_DIR")
    p.add_argument("--out", type=lambda text: Path(_a_path(text)), metavar="FILE",
                   help="hardware YAML to write (default: in the first RUN_DIR)")
    p.add_argument("--backend", metavar="NAME", help="the measured backend whose rows to fit (default: cpu for step "
                                                     "rows, any measured backend for serving rows)")
    p.add_argument("--device", metavar="NAME", help="the catalog entry to calibrate (default: cpu-host for step "
                                                    "rows, the hardware the serving rows name)")
    p.add_argument("--include-busy", action="store_true",
                   help="also fit measured step rows timed on a busy host (host_load_per_core > 1), which are left "
                        "out by default: their time includes waiting for a core")
    p.add_argument("--hardware", action="append", default=[], type=lambda text: Path(_a_file(text)),
                   metavar="FILE",
                   help="extra hardware catalog YAML holding --device (repeatable)")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("plan", help="capacity planning: the cheapest (fastest, ...) way to meet a goal",
                       description="Search hardware x devices x parallel strategy for a training or serving goal; "
                                   "writes plan.parquet, plan.csv, plan.md, plan.html and best.yaml; prints the folder last.")
    p.add_argument("plan", type=_a_file_or_folder, metavar="PLAN.yaml")
    p.add_argument("--out", default="reports", type=_a_folder, metavar="DIR",
                   help="where the plan folder goes (default: reports -> reports/plan-<name>/<stamp>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a plan key, e.g. --set limits.max_devices=1024 (repeatable)")
    p.add_argument("--hardware", action="append", default=[], type=_a_file, metavar="FILE", help="extra catalog YAML")
    p.add_argument("--no-simulate", action="store_true", help="skip the cluster-simulation re-check of the top_k "
                                                               "(training and step-goal plans; a serving plan is "
                                                               "found by simulation and refuses it)")
    executor_args(p, "the cluster-simulation re-checks (and, but for local, the pricing of each hardware choice, "
                     "in processes forked on this machine's cores)")
    p.set_defaults(func=cmd_plan)
    return parser


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null after its reader has gone, so that the interpreter's flush at exit does not raise
    BrokenPipeError again (the Python docs' recipe, library/signal.html "Note on SIGPIPE")."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor behind stdout (a test's capture): nothing to flush
        pass


def main(argv: list[str] | None = None) -> int:
    """The `llmsim` command. `argv` None: the program's own command line (the console script, `python -m llmsim`),
    whose process ends when main returns (`args.program`); a list: a call from Python, whose process goes on."""
    # At exit the interpreter collects in full passes over every object still alive (torch's alone ~300,000),
    # ~0.8 s that frees nothing a finished command needs: they are frozen out of those passes first (gc.freeze,
    # once per process however often main runs).
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    args.program = argv is None
    try:
        return args.func(args)
    except LLMSimError as exc:
        print(f"llmsim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # stdout's reader left (`llmsim schema | head`): exit 1 and say nothing, as rich's own
        _stdout_to_devnull()  # consoles do (Console.on_broken_pipe) for the commands that print through them
        return EXIT_FAILED
    except OSError as exc:  # a path the user gave that cannot be used is bad input; the machine's failures are not
        error = path_error(args.command, exc)
        if error is None:  # the machine's failure (a full disk, an I/O error): one line, exit 1, not a traceback
            print(f"llmsim: error: {machine_error(exc)}", file=sys.stderr)
            return EXIT_FAILED
        print(f"llmsim: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("llmsim: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
