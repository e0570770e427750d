"""Expand a scenario into cases, run each on its backend, and keep every row.

Rows are persisted as each case finishes (llmsim.results.ResultStore: results.jsonl appended and
fsynced, results.csv rewritten atomically), so a crash or Ctrl-C loses at most the case in flight. A
backend that raises yields a `failed` row and the run goes on; a backend that cannot run here yields
`skipped` rows. The report is built from the run folder afterwards by its caller (the CLI).
"""

from __future__ import annotations

import itertools
import json
import math
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llmsim.backend import Backend, Case, RunContext
from llmsim.config import (NUMBER_WANTED, Scenario, Strategy, parse_scenario, allowed_keys, allowed_range, describe_error, out_of_range, shown_value,
                           side_problem, user_loc)
from llmsim.costmodel import precision
from llmsim.costmodel.cluster import DEFAULT_EFFICIENCY, ClusterSpec, tp_span_note
from llmsim.costmodel.compute import attention_problem
from llmsim.costmodel.eager import allreduce_rms_fusion_problem, sglang_counted
from llmsim.costmodel.plan import FUSED_ATTENTION, AttentionKernel, master_weights_apply
from llmsim.engine_options import TRAINING_ONLY_OPTIONS, serving_attention_problem
from llmsim.environment import environment_record
from llmsim.executor import Executor, LocalExecutor
from llmsim.divisors import divisors, listed
from llmsim.errors import KeyedValueError, LLMSimError, ScenarioError, format_key_path, one_line
from llmsim.hardware import CATALOG_KEY, Catalog, load_catalog
from llmsim.modeled import ModeledSettings
from llmsim.modeled_serving import unknown_device_memory
from llmsim.registry import BackendRegistry
from llmsim import interrupt
from llmsim.results import (RUN_NOTES, DamagedRows, Result, ResultStore, new_run_dir, read_rows, record_planned,
                            record_session, row_problem, rows_disagree, rows_frame, write_atomic)
from llmsim.run_inputs import INPUTS_FILE, changed_input, input_digests, map_input_paths
from llmsim.scenario_diff import brief, differences
from llmsim.serving.requests import TraceError, read_trace, trace_count_problem, trace_span_problem
from llmsim.serving.spec import ServingCase
from llmsim.userinput import not_a_regular_file, read_yaml
from llmsim.strategy import Layout, resolve_layout


@dataclass(frozen=True)
class PlannedCase:
    backend: type[Backend]
    settings: BaseModel
    case: Case


def _non_finite(value: Any, where: tuple[str | int, ...] = ()) -> tuple[tuple[str | int, ...], float] | None:
    """The first .inf or .nan in a backend's raw settings (through lists and mappings), with its key path."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, where + (key,))
        if found:
            return found
    return None


def _catalog_kind(cls: type[Backend], loc: tuple[str | int, ...]) -> str | None:
    """'device' or 'link' where the backend's setting at `loc` (a top-level key) names a hardware catalog entry
    (its Field's json_schema_extra: llmsim.hardware.CATALOG_DEVICE / CATALOG_LINK), else None."""
    field = cls.Settings.model_fields.get(str(loc[0])) if len(loc) == 1 else None
    extra = field.json_schema_extra if field is not None else None
    kind = extra.get(CATALOG_KEY) if isinstance(extra, dict) else None
    return kind if kind in ("device", "link") else None


def _catalog_value_problem(value: Any, kind: str, catalog: Catalog) -> str:
    """A value of the wrong type (a list, a mapping, a number) where one catalog name belongs, with the names allowed,
    as the catalog words an unknown name (Catalog.cluster: "unknown device 'h100'; allowed: ...")."""
    given = (", not a mapping" if isinstance(value, dict) else ", not a list" if isinstance(value, (list, tuple))
             else "")
    names = catalog.devices if kind == "device" else catalog.links
    return f"{shown_value(value)}: expected one {kind} name{given}; allowed: {', '.join(names)}"


def _suits_every_backend(strategy: Any, workload: Any, key: str, worlds: list[tuple[str, int | None]],
                         failing: tuple[str, int | None]) -> str:
    """Where a strategy runs on more than one backend or sweep point (`worlds`: (backend, its world size or None)),
    the values of degree `key` that lay it out on every one of them, where they are fewer than the `failing`
    backend's own message offers, so that a value offered is not refused by the next backend (trial 49: dp 3 on a
    2-device roofline beside the cpu backend offered dp 1, 2, 4, and then 1 and 4 were refused); "" for one
    world, a key that is not a degree, or when every backend takes what the failing one does."""
    if len(worlds) < 2 or key not in ("dp", "tp", "pp", "cp"):
        return ""
    fixed = [w for _, w in worlds if w is not None]
    bound = workload.batch if key == "dp" else max(fixed or [getattr(strategy, key)])

    def laid_out(value: int | None, among: list[tuple[str, int | None]]) -> bool:
        changed = strategy.model_copy(update={key: value})
        return all(isinstance(resolve_layout(changed, workload, w, name), Layout) for name, w in among)

    fits = [v for v in divisors(bound) if laid_out(v, worlds)]
    omitted = key == "dp" and laid_out(None, worlds)
    if fits == [v for v in divisors(bound) if laid_out(v, [failing])] and omitted == (key == "dp"
                                                                                      and laid_out(None, [failing])):
        return ""
    where = ", ".join(dict.fromkeys(name for name, _ in worlds))
    if fits:
        return f"; on every backend here ({where}): {key} among {listed(fits)}" + (", or omitted" if omitted else "")
    return f"; no {key} suits every backend here ({where})" + ("; omit dp to fill each" if omitted else "")


def _backend_settings(name: str, cls: type[Backend], raw: dict[str, Any], file: str,
                      serving: bool = False, catalog: Catalog | None = None) -> BaseModel:
    # YAML reads .inf and .nan as floats, and a plugin's model may let them through (`gt=0` passes .inf, .nan
    # compares false with every bound): no backend setting means anything by them, built-in or a plugin's, so
    # they are refused here, before any plugin sees them, as the scenario's own keys are (llmsim.strict).
    found = _non_finite(raw)
    if found:
        raise ScenarioError(file, format_key_path(("backends", name) + found[0]),
                            f"{found[1]!r}: expected a finite number" + allowed_range(cls.Settings, found[0]))
    try:
        return cls.Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = user_loc(err["loc"])   # pydantic's union members ("constrained-int") are no key of the file
        where = format_key_path(("backends", name) + loc)
        if serving and loc == ("attention",) and _is_attention_kernel(cls, "attention"):
            # a serving block prices only the fused kernels: the allowed list is theirs (engine_options)
            problem = serving_attention_problem(err.get("input"))
            if problem:
                raise ScenarioError(file, where, problem) from None
        if err["type"] == "extra_forbidden" and len(loc) == 1:
            allowed = ", ".join(cls.Settings.model_fields) or "none"
            raise ScenarioError(file, where, f"unknown setting of backend '{name}'; allowed: {allowed}") from None
        keyed = (err.get("ctx") or {}).get("error")
        if isinstance(keyed, KeyedValueError):  # the rule names the key inside the field that broke it
            raise ScenarioError(file, f"{where}.{keyed.key}", keyed.message) from None  # strict names the range
        if err["type"] == "extra_forbidden":  # an unknown key inside a nested setting (straggler: {rnak: 3})
            message = describe_error(err) + allowed_keys(cls.Settings, loc)
        elif err["type"] in ("model_type", "dict_type", "model_attributes_type"):  # a value where keys belong
            message = describe_error(err) + allowed_keys(cls.Settings, (*loc, ""))
        elif catalog is not None and (kind := _catalog_kind(cls, loc)) is not None and err["type"] in (
                "string_type", "literal_error"):  # a list, mapping or number where one device or link name belongs
            message = _catalog_value_problem(err.get("input"), kind, catalog)
        else:
            if err["type"].startswith(("greater_than", "less_than")):
                message = out_of_range(cls.Settings, err, loc)
            elif err["type"] in NUMBER_WANTED:
                # text or 2.5 where a number belongs, at any depth (straggler: {slowdown: abc}): what the key takes,
                # as for a scenario key (config.validation_error)
                message = describe_error(err) + allowed_range(cls.Settings, loc)
            else:
                message = describe_error(err)
                if err["type"] == "value_error":  # a setting's own rule: quote the value it refused
                    message = f"{shown_value(err.get('input'))}: {message}"
        raise ScenarioError(file, where, message) from None


def _is_attention_kernel(cls: type[Backend], key: str) -> bool:
    """Whether the backend's setting `key` is the modeled stack's attention kernel (engine_options), not a
    plugin's own setting of that name."""
    field = cls.Settings.model_fields.get(key)
    return field is not None and field.annotation == AttentionKernel


def missing_backend(name: str, registry: BackendRegistry) -> str:
    """Why no backend `name` is registered. A plugin whose entry point has that name (the convention: cpu =
    llmsim_plugins.cpu) but failed to load or to register says so with its exception; otherwise the name is
    unknown, and any plugin that failed to load is named, since it may be the one that provides it."""
    why = registry.broken.get(name)
    if why is not None:
        return f"backend {name!r} is not usable: its plugin failed to load: {why.removeprefix('import failed: ')}"
    broken = "; ".join(f"{plugin} ({why.removeprefix('import failed: ')})" for plugin, why in registry.broken.items())
    # "allowed", not "installed": vllm and xla are registered whether or not their runtimes are here (trial 45)
    return (f"unknown backend {name!r}; allowed: {', '.join(registry.names) or 'none'} (`llmsim backends` says "
            f"which can run here)"
            + (f"; plugins that failed to load (one may provide it): {broken}" if broken else ""))


def build_catalog(scenario: Scenario, scenario_dir: Path, manager: Any = None, file: str | None = None) -> Catalog:
    """Built-in catalog + the scenario's `hardware_catalog` files + entries from plugins' hardware hook.

    A `hardware_catalog` path that names no file is the scenario's error (`file`, `hardware_catalog[i]`):
    the paths are relative to the scenario's folder, which the message names."""
    for i, name in enumerate(scenario.hardware_catalog):
        path = scenario_dir / name
        first = next(j for j, other in enumerate(scenario.hardware_catalog)
                     if (scenario_dir / other).resolve() == path.resolve())
        if first != i:   # its entries would each be "already defined" by the file itself
            raise ScenarioError(file, f"hardware_catalog[{i}]", f"{name!r} is listed twice (also "
                                                                f"hardware_catalog[{first}]): list each file once")
        if path.is_dir():
            where = "" if Path(name).is_absolute() else f" in {scenario_dir}"
            raise ScenarioError(file, f"hardware_catalog[{i}]", f"{name!r}: is a folder{where}, not a "
                                                                f"hardware file (allowed: a YAML file of entries:)")
        special = not_a_regular_file(path)
        if special:   # a FIFO is no file either, but it exists (trial 32: "no such file")
            raise ScenarioError(file, f"hardware_catalog[{i}]", f"{name!r}: {special}")
        if not path.is_file() and Path(name).is_absolute():   # a run folder's saved scenario names its files so
            raise ScenarioError(file, f"hardware_catalog[{i}]", f"{name!r}: no such file (moved or deleted since?)")
        if not path.is_file():
            raise ScenarioError(file, f"hardware_catalog[{i}]", f"{name!r}: no such file in {scenario_dir} (the "
                                                                f"paths are relative to the scenario's folder)")
    entries = list(manager.call_each("llmsim_hardware")) if manager is not None else []
    return load_catalog([scenario_dir / f for f in scenario.hardware_catalog],
                        [(plugin, entry) for plugin, found in entries for entry in found])


def plan_cases(scenario: Scenario, registry: BackendRegistry, file: str = "<scenario>",
               only_backends: list[str] | None = None, scenario_dir: Path = Path("."),
               catalog: Catalog | None = None) -> list[PlannedCase]:
    """Validate every (strategy, backend) pair and lay it out; raise ScenarioError on the first problem.

    Backend settings are resolved and checked against `catalog` (default: the built-in catalog and the
    scenario's own hardware files, without plugin entries): device and link names, catalog defaults such
    as devices per node (Backend's docstring gives the order)."""
    backends = dict(scenario.backends)
    if only_backends:
        backends = {name: backends.get(name, {}) for name in only_backends}
    planned: list[PlannedCase] = []
    for name in backends:
        if name not in registry.backends:
            key = f"backends.{name}" if name in scenario.backends else "--backend"
            raise ScenarioError(file, key, missing_backend(name, registry))
    for name in backends:
        if name not in scenario.backends:  # asked for with --backend: the file's modeled cluster, if it has one
            backends[name] = carried_settings(scenario, name, registry)[0]
    catalog = catalog or build_catalog(scenario, scenario_dir, file=file)
    sweeps = {}
    for name, raw in backends.items():
        cls = registry.get(name)
        settings = _backend_settings(name, cls, raw, file, scenario.serving is not None, catalog)
        try:
            settings = cls.resolve_settings(settings, catalog)
        except ScenarioError as exc:
            raise ScenarioError(file, f"backends.{name}.{exc.key}" if exc.key else f"backends.{name}",
                                exc.message) from None
        sweeps[name] = cls.sweep(settings)
        suffixes = [suffix for suffix, _ in sweeps[name]]
        repeated = sorted({s for s in suffixes if suffixes.count(s) > 1})
        if repeated:  # a plugin's own sweep: the built-in lists (nodes, rates) refuse repeats when validated
            raise ScenarioError(file, f"backends.{name}", f"the sweep has the point {repeated[0][1:] or 'as given'!r} "
                                                          f"more than once; each point runs once")
        problem = cls.check_workload(scenario.workload)
        if problem:
            raise ScenarioError(file, f"workload.{problem[0]}", f"{problem[1]} (backend '{name}')")
        for _, point in sweeps[name]:
            problem = cls.check_settings(point, catalog)
            if problem:
                raise ScenarioError(file, f"backends.{name}.{problem[0]}", problem[1])
    check_fp8(scenario, registry, sweeps, catalog, file)
    if scenario.serving is not None:
        return _serving_cases(scenario, registry, backends, sweeps, file, scenario_dir, catalog)
    for (i, strategy), name in itertools.product(enumerate(scenario.strategies), backends):
        cls = registry.get(name)
        for suffix, settings in sweeps[name]:
            layout = resolve_layout(strategy, scenario.workload, cls.world_size(settings), name)
            if not isinstance(layout, Layout):
                point = f" (backend '{name}' at {suffix[1:]})" if suffix else ""
                if name not in scenario.backends:  # asked for with --backend: its settings are the defaults
                    source = carried_settings(scenario, name, registry)[1]
                    how = (f"backends.{source}'s cluster" if source is not None else "its default settings")
                    point += (f" (backend '{name}' is not in the file's backends: it runs with {how}, world size "
                              f"{cls.world_size(settings)}; configure backends.{name} or --set "
                              f"backends.{name}.KEY=VALUE)")
                world = cls.describe_world(settings, catalog)
                worlds = [(other, registry.get(other).world_size(s)) for other in backends for _, s in sweeps[other]]
                raise ScenarioError(file, f"strategies[{i}].{layout[0]}",
                                    layout[1] + (f" ({world})" if world else "") + point
                                    + _suits_every_backend(strategy, scenario.workload, layout[0], worlds,
                                                           (name, cls.world_size(settings))))
            problem = cls.check_layout(settings, layout, catalog)
            if problem:
                at = f" at {suffix[1:]}" if suffix else ""
                key = f"backends.{name}.{problem[0]}" if problem[0] else f"strategies[{i}]"
                raise ScenarioError(file, key, f"{problem[1]} (strategy {strategy.name!r} on backend '{name}'{at})")
            case = Case(scenario=scenario.name, name=strategy.name + suffix, workload=scenario.workload,
                        sharing=scenario.sharing_choice(strategy), strategy=strategy, layout=layout,
                        seed=scenario.seed, scenario_dir=scenario_dir)
            planned.append(PlannedCase(cls, settings, case))
    return planned


def carried_settings(scenario: Scenario, name: str, registry: BackendRegistry) -> tuple[dict[str, Any], str | None]:
    """The settings of backend `name`, asked for with --backend but not in the file's backends, and the backend
    they come from: a modeled backend (its settings a ModeledSettings: roofline, cluster, a plugin's) takes the
    cluster keys (ModeledSettings': hardware, nodes, devices_per_node, links, topology, mesh, power limit, the
    cost model's options) that the file's first modeled backend states, so that `--backend cluster` on a file
    that sets up only the roofline simulates the same hardware, as a user comparing the two expects; without
    one, or for another kind of backend, its defaults ({}, None)."""
    cls = registry.backends.get(name)
    if cls is None or not issubclass(cls.Settings, ModeledSettings):
        return {}, None
    for other, raw in scenario.backends.items():
        source = registry.backends.get(other)
        if source is None or not issubclass(source.Settings, ModeledSettings) or not isinstance(raw, dict):
            continue
        return {k: v for k, v in raw.items() if k in ModeledSettings.model_fields}, other
    return {}, None


def absent_backend_notes(planned: list[PlannedCase], scenario: Scenario, registry: BackendRegistry
                         ) -> list[tuple[str, str]]:
    """(where, note) for a modeled backend asked for with --backend that the file does not configure: the hardware
    it runs on and where that came from (carried_settings: the file's modeled backend, or the backend's default
    `hardware`), and the key that changes it. Once per backend: where = 'backends.NAME'."""
    notes: dict[str, str] = {}
    for item in planned:
        name = item.backend.name
        if name in scenario.backends or name in notes or not isinstance(item.settings, ModeledSettings):
            continue
        hardware, source = item.settings.hardware, carried_settings(scenario, name, registry)[1]
        whose = f"the cluster of backends.{source}" if source is not None else "its default settings"
        notes[name] = (f"not in the file's backends: runs on {hardware} with {whose}; --set "
                       f"backends.{name}.hardware=NAME runs it on another device")
    return [(f"backends.{name}", note) for name, note in notes.items()]


def default_hardware_notes(planned: list[PlannedCase], scenario: Scenario) -> list[tuple[str, str]]:
    """(where, note) for a modeled backend the file configures without a `hardware` key (`cluster: {}`) while
    another of its modeled backends names a device: it runs on its default device, which a user comparing the
    two rarely means (trial 28: the cluster rows ran on a100-80gb beside a roofline on h100-sxm without a word).
    Once per backend: where = 'backends.NAME'."""
    named: dict[str, str] = {}     # backend -> the hardware its file settings name
    unnamed: dict[str, str] = {}   # backend -> the default hardware it runs on
    for item in planned:
        name, settings = item.backend.name, item.settings
        raw = scenario.backends.get(name)
        if not isinstance(settings, ModeledSettings) or name not in scenario.backends:
            continue
        if isinstance(raw, dict) and "hardware" in raw:
            named.setdefault(name, settings.hardware)
        else:
            unnamed.setdefault(name, settings.hardware)
    notes = []
    for name, hardware in unnamed.items():
        others = {other: h for other, h in named.items() if h != hardware}
        if others:
            other, theirs = next(iter(others.items()))
            notes.append((f"backends.{name}", f"no hardware given: runs on {hardware} (its default) while "
                                              f"backends.{other} runs on {theirs}; --set backends.{name}.hardware="
                                              f"{theirs} compares the same device"))
    return notes


def check_fp8(scenario: Scenario, registry: BackendRegistry, sweeps: dict[str, list[tuple[str, BaseModel]]],
              catalog: Catalog, file: str) -> None:
    """A float8 workload needs FP8 tensor cores (and MX units for `mxfp8`: costmodel.precision.device_problem)
    on at least one of the devices the scenario's backends name (`Backend.device`): when none has them the
    scenario is refused, naming the key and the catalog devices that do; when some have them, the others'
    rows are skipped with the reason (ModeledBackend.run). Backends that name no device (measured ones) skip
    their float8 rows in any case (`_run_one`)."""
    w = scenario.workload
    if not precision.is_quantized(w):
        return
    devices = [d for name, points in sweeps.items() for _, point in points
               if (d := registry.get(name).device(point, catalog)) is not None]
    problems = [precision.device_problem(w, d, serving=scenario.serving is not None) for d in devices]
    if not devices or any(p is None for p in problems):
        return
    names = ", ".join(sorted({d.name for d in devices}))
    capable = ", ".join(precision.capable_devices(w, catalog.devices.values())) or "none in the catalog"
    if precision.is_fp4(w):   # float4 training on devices without FP4 tensor cores (inference runs weight-only)
        raise ScenarioError(file, "workload.dtype", f"dtype float4 in training needs FP4 tensor cores that take "
                                                    f"NVFP4 (NVIDIA Blackwell); none of this scenario's hardware has "
                                                    f"them ({names}); "
                                                    f"hardware that does: {capable}; allowed here: float32, "
                                                    f"bfloat16, float16, float8")
    mx = any(d.peak_flops.get("float8") for d in devices)  # FP8 units, but not for the recipe (mxfp8)
    key = "workload.fp8.recipe" if mx else "workload.dtype"
    what = "fp8 recipe mxfp8 needs MX block-scaled tensor cores (Blackwell)" if mx else \
        "dtype float8 needs FP8 tensor cores"
    raise ScenarioError(file, key, f"{what}; none of this scenario's hardware has them ({names}); "
                                   f"hardware that does: {capable}")


def serving_kernel_problem(cls: type[Backend], settings: BaseModel, catalog: Catalog) -> str | None:
    """Why a serving run of a modeled backend's `settings` cannot price its attention kernel on the device they
    name (its catalog entry has no figure for it: costmodel.compute.attention_problem, the reason each such row
    is skipped with), or None (also for a backend without the modeled stack's `attention` setting)."""
    kernel = getattr(settings, "attention", None)
    if not _is_attention_kernel(cls, "attention") or kernel not in FUSED_ATTENTION:
        return None
    device = cls.device(settings, catalog)
    if device is None:
        return None
    problem = attention_problem(device.efficiency or DEFAULT_EFFICIENCY, kernel)   # as ClusterSpec.efficiency
    return None if problem is None else problem.replace("on this device", f"on {device.name}")


def serving_memory_problem(cls: type[Backend], settings: BaseModel, catalog: Catalog) -> str | None:
    """Why a modeled backend's serving rows will be skipped for a device of unknown memory (memory_bytes 0, as
    `llmsim calibrate`'s CPU entry has: modeled_serving.unknown_memory, the reason each row is skipped with)."""
    device = cls.device(settings, catalog)   # None for a backend that runs on this machine's own device
    return None if device is None else unknown_device_memory(device)


def _serving_cases(scenario: Scenario, registry: BackendRegistry, backends: dict[str, Any],
                   sweeps: dict[str, list[tuple[str, BaseModel]]], file: str, scenario_dir: Path,
                   catalog: Catalog | None = None) -> list[PlannedCase]:
    """The cases of a serving scenario: (strategy, backend point, rate), each replica tp x pp devices.

    Checked here: every backend serves (and its settings allow it), the cluster holds the replicas, the
    scheduler kind is installed, the trace file reads. A device without a figure for the attention kernel is not
    refused: its rows are skipped with the reason, as a training case's are (`llmsim validate` says which first:
    serving_kernel_problem). A list of rates suffixes the case names
    "@rate=R" as a list of nodes suffixes "@nodes=N"."""
    spec = scenario.serving
    assert spec is not None
    for name in backends:
        cls = registry.get(name)
        if not cls.serves:
            serving = ", ".join(n for n in registry.names if registry.get(n).serves) or "none installed"
            key = f"backends.{name}" if name in scenario.backends else "--backend"
            raise ScenarioError(file, key, f"backend {name!r} does not run serving scenarios (a serving: block); "
                                           f"backends that do: {serving}")
        for _, point in sweeps[name]:
            problem = cls.check_serving(point)
            if problem:
                raise ScenarioError(file, f"backends.{name}.{problem[0]}", problem[1])
        problem = cls.check_serving_block(spec)
        if problem:
            raise ScenarioError(file, f"serving.{problem[0]}", f"{problem[1]} (backend '{name}')")
    scheduler = registry.schedulers.get(spec.scheduler.kind)
    if scheduler is None:
        raise ScenarioError(file, "serving.scheduler.kind", f"unknown scheduler {spec.scheduler.kind!r}; allowed: "
                                                            f"{', '.join(registry.schedulers)}")
    trace = None
    if spec.arrival.kind == "trace":
        assert spec.arrival.path is not None
        trace = str((scenario_dir / spec.arrival.path).resolve())
        try:
            rows = read_trace(trace)
        except TraceError as exc:
            raise ScenarioError(file, "serving.arrival.path", str(exc)) from None
        problem = trace_count_problem(spec, rows) or trace_span_problem(spec, rows)
        if problem is not None:
            raise ScenarioError(file, f"serving.{problem[0]}", problem[1])
    link = spec.disaggregation.kv_transfer.link if spec.disaggregation is not None else None
    if link is not None and catalog is not None and link not in catalog.links:
        raise ScenarioError(file, "serving.disaggregation.kv_transfer.link",
                            f"unknown link {link!r}; allowed: {', '.join(catalog.links)}")
    seed = scenario.seed if spec.seed is None else spec.seed
    sweep = spec.arrival.sweep   # rates, or a closed loop's clients
    planned: list[PlannedCase] = []
    for (i, strategy), name in itertools.product(enumerate(scenario.strategies), backends):
        cls = registry.get(name)
        for suffix, settings in sweeps[name]:
            world, need = cls.world_size(settings), spec.replicas * strategy.tp * strategy.pp
            if spec.disaggregation is not None:   # prefill replicas x tp_p + decode replicas x tp_d (pp 1)
                need = spec.disaggregation.devices(strategy.tp)
                if world is not None and world < need:
                    raise ScenarioError(file, "serving.disaggregation",
                                        f"prefill and decode instances need {need} devices (strategy "
                                        f"{strategy.name!r}) but backend '{name}' has {world}; allowed: at most "
                                        f"{world} devices in all, or more nodes")
            if world is not None and world < need:
                point = f" (at {suffix[1:]})" if suffix else ""
                fit = world // (strategy.tp * strategy.pp)
                if fit >= 1:   # the replicas are what does not fit
                    key, allowed = "serving.replicas", f"at most {fit} replicas, or more nodes"
                else:          # one replica of this strategy is already larger than the backend
                    key, allowed = (f"strategies[{i}]",
                                    f"tp x pp <= {world} on backend '{name}', or more nodes / devices_per_node")
                raise ScenarioError(file, key,
                                    f"replicas x tp x pp = {spec.replicas} x {strategy.tp} x {strategy.pp} = {need} "
                                    f"devices (strategy {strategy.name!r}) but backend '{name}' has {world}{point}; "
                                    f"allowed: {allowed}")
            # the strategy's expert grid too: a mixture of experts served at tp splits each expert over etp
            # (default tp, as vLLM's tensor parallelism does) and its experts over ep ranks
            problem = serving_expert_grid_problem(strategy)
            if problem is not None:
                raise ScenarioError(file, f"strategies[{i}].{problem[0]}", problem[1])
            disagg = spec.disaggregation
            for side in ("prefill", "decode") if disagg is not None else ():
                # each side's expert grid is carved from its own tp, with its own ep / etp where it sets them
                side_strategy = disagg.side_strategy(side, strategy)
                problem = serving_expert_grid_problem(side_strategy)
                if problem is None or side_strategy is strategy:
                    continue
                if disagg.sets_layout(side):   # the side's key (ep, etp) that mends it
                    raise ScenarioError(file, *side_problem(side, i, strategy, problem))
                tp = side_strategy.tp          # the side's tp alone: the strategy's key that it breaks
                raise ScenarioError(file, f"serving.disaggregation.{side}.tp",
                                    f"{tp}: strategies[{i}].{problem[0]} {problem[1]} (strategy "
                                    f"{strategy.name!r})")
            layout = Layout(dp=spec.replicas, tp=strategy.tp, pp=strategy.pp, cp=1, micro_batch=1, microbatches=1,
                            ep=strategy.ep, etp=strategy.expert_tp)
            for key, value in sweep:
                tag = f"@{key}={value:g}" if len(sweep) > 1 and value is not None else ""
                case = Case(scenario=scenario.name, name=strategy.name + suffix + tag, workload=scenario.workload,
                            sharing=scenario.sharing_choice(strategy), strategy=strategy, layout=layout,
                            seed=scenario.seed, scenario_dir=scenario_dir,
                            serving=ServingCase(spec.at_point(key, value), seed, scheduler, trace))
                planned.append(PlannedCase(cls, settings, case))
    return planned


def serving_expert_grid_problem(strategy: Strategy) -> tuple[str, str] | None:
    """A serving replica's expert grid is carved from its own tp ranks (replicas share nothing), so ep x etp must
    divide tp: (key, one line) where it does not. etp defaults to tp (Megatron-Core's convention), so `tp: 8, ep: 8`
    alone asks 64 expert ranks of 8 GPUs; vLLM's `--tensor-parallel-size 8 --enable-expert-parallel` is ep 8 with
    whole experts on each rank, i.e. `etp: 1`."""
    tp, ep, grid = strategy.tp, strategy.ep, strategy.ep * strategy.expert_tp
    if tp % grid == 0:
        return None
    if tp % ep:
        return "ep", (f"{ep} does not divide tp={tp}: a serving replica's experts are spread over its own "
                      f"tensor-parallel ranks (allowed: {', '.join(str(d) for d in range(1, tp + 1) if tp % d == 0)})")
    allowed = ", ".join(str(d) for d in range(1, tp // ep + 1) if (tp // ep) % d == 0)
    unset = " (etp unset means tp, Megatron-Core's default)" if strategy.etp is None else ""
    return "etp", (f"ep*etp = {ep}*{strategy.expert_tp} = {grid} expert ranks do not divide the tp={tp} ranks of a "
                   f"serving replica{unset}; allowed etp: {allowed} (etp: 1 = whole experts on each rank, vLLM's "
                   f"--enable-expert-parallel)")


Progress = Callable[[int, int, PlannedCase], None]


@dataclass
class RunOutcome:
    run_dir: Path
    rows: int
    interrupted: bool


def _failed_row(planned: PlannedCase, status: str, message: str) -> Result:
    return planned.case.result(planned.backend, status=status, error=message)  # type: ignore[arg-type]


def saved_scenario(scenario: Scenario, scenario_dir: Path | None = None) -> dict[str, Any]:
    """The scenario as a run folder keeps it (scenario.yaml): every default filled in, so that the file alone
    reruns the run, except a serving scenario's `workload.mode`, which its request list sets and which
    validation refuses when written (config.check_serving). Given the folder the scenario's relative paths are
    relative to (`scenario_dir`), its files (hardware_catalog, serving.arrival.path) are saved as absolute paths:
    relative ones would not resolve from the run folder (trial 29: `llmsim validate RUN/scenario.yaml` could not
    read its trace, `llmsim calibrate` skipped its catalog)."""
    resolved = scenario.model_dump(mode="json")
    if scenario.serving is not None and "mode" not in scenario.workload.model_fields_set:
        resolved["workload"].pop("mode", None)
    if scenario_dir is not None:
        _absolute_paths(resolved, scenario_dir)
    return resolved


def _absolute_paths(saved: dict[str, Any], scenario_dir: Path) -> None:
    """A saved scenario's file paths (hardware_catalog, serving.arrival.path) made absolute against `scenario_dir`,
    in place; absolute ones are kept."""
    map_input_paths(saved, lambda name: name if Path(name).is_absolute() else str((scenario_dir / name).resolve()))


def run_scenario(scenario: Scenario, registry: BackendRegistry, planned: list[PlannedCase], out: Path,
                 *, manager: Any = None, resume: Path | None = None, progress: Progress | None = None,
                 scenario_dir: Path = Path("."), executor: Executor | None = None,
                 notes: list[str] | None = None) -> RunOutcome:
    """Run every planned case, persisting each row as it finishes; the report is the caller's to build.

    `resume`: an earlier run folder of this very scenario (ScenarioError keyed `--resume` otherwise: a
    folder's rows must all come from one scenario); its finished rows are kept and the rest run.
    `executor` (llmsim.executor; default: in this process) runs the cases of modeled backends, as tasks that
    depend on nothing but the case, its settings, the catalog and the run folder; then it is closed (a local
    Ray stops) and the measured cases run one after another in this process, alone on the machine. Rows are
    saved as they finish and put back in the planned order at the end, so the files do not depend on the
    executor. progress(k, n, case): a measured case as it starts, a modeled one as it finishes. `notes`: how
    cases are priced, as `llmsim run` printed them (cli._load), kept in the folder's notes.txt (RUN_NOTES), one
    a line, for the report.
    """
    resolved = saved_scenario(scenario, scenario_dir)
    if resume is not None:
        check_resumable(resume, resolved, scenario_dir, registry)
    run_dir = resume or new_run_dir(out, scenario.name)
    store = ResultStore(run_dir)
    write_atomic(run_dir / "scenario.yaml", yaml.safe_dump(resolved, sort_keys=False))
    write_atomic(run_dir / INPUTS_FILE, json.dumps(input_digests(resolved), indent=2))
    record_planned(run_dir, [(item.case.name, item.backend.name) for item in planned], resume=resume is not None)
    if notes:
        write_atomic(run_dir / RUN_NOTES, "".join(f"{one_line(note)}\n" for note in notes))
    instances: dict[str, Backend] = {}
    interrupted = False
    executor = executor or LocalExecutor()
    # From here a Ctrl-C is an interrupted run of this folder (RunOutcome.interrupted: the caller prints the
    # --resume command), also while the environment is recorded and the catalog built, before any case starts.
    try:
        environment = environment_record()
        write_atomic(run_dir / "environment.json", json.dumps(environment, indent=2))
        session = record_session(run_dir, environment)   # the rows this run adds carry its number
        context = RunContext(catalog=build_catalog(scenario, scenario_dir, manager), run_dir=run_dir,
                             manager=manager)
        done = store.done()
        todo = [item for item in planned if (item.case.name, item.backend.name) not in done]
        modeled = [item for item in todo if item.backend.kind == "modeled"]
        measured = [item for item in todo if item.backend.kind != "modeled"]
        k = len(planned) - len(todo)
        with interrupt.handling():
            if modeled:
                task = ModeledCaseTask(context.catalog, run_dir)
                try:
                    for i, result in executor.as_completed(task, modeled):
                        if interrupt.requested() and result.status == "failed":
                            raise KeyboardInterrupt  # as below: it failed because of the Ctrl-C
                        store.add(result, session)
                        k += 1
                        if progress:
                            progress(k, len(planned), modeled[i])
                        interrupt.check()
                finally:
                    executor.close()
            for item in measured:
                k += 1
                if progress:
                    progress(k, len(planned), item)
                result = _run_one(item, instances, context)
                # A Ctrl-C whose KeyboardInterrupt was lost on the way (llmsim.interrupt) still stops the run:
                # a case that failed after it failed because of it (no row: --resume runs it); one that
                # finished is kept.
                if interrupt.requested() and result.status == "failed":
                    raise KeyboardInterrupt
                store.add(result, session)
                interrupt.check()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for backend in instances.values():   # what a backend kept across cases (a serving engine): Backend.close
            backend.close()
    store.reorder([(item.case.name, item.backend.name) for item in planned])
    return RunOutcome(run_dir, len(store.rows), interrupted)


@dataclass(frozen=True)
class ModeledCaseTask:
    """`llmsim run`'s task for a modeled case: picklable (the catalog and the run folder, no plugin manager:
    modeled backends price from the catalog), so that it runs on a Ray worker as in this process. Side files
    (traces, per-request CSVs) go to run_dir, which a Ray cluster's nodes must share (docs/architecture.md)."""

    catalog: Catalog
    run_dir: Path

    def __call__(self, item: PlannedCase) -> Result:
        return _run_one(item, _process_instances(self.run_dir), RunContext(catalog=self.catalog, run_dir=self.run_dir))


_INSTANCES: dict[str, Any] = {"run_dir": None, "instances": {}}


def _process_instances(run_dir: Path) -> dict[str, Backend]:
    """This process's backend instances for one run folder (a modeled backend keeps per-run caches), dropped
    when the process moves on to another run."""
    if _INSTANCES["run_dir"] != run_dir:
        _INSTANCES.update(run_dir=run_dir, instances={})
    return _INSTANCES["instances"]


def _first_difference(saved: Any, current: Any) -> str | None:
    """The first key path where two resolved scenarios differ, with both values, or None."""
    found = next(differences(saved, current), None)
    return None if found is None else f"{found[0]}: {brief(found[1])} there, {brief(found[2])} now"


# Backend settings that only end a case that has not finished (the cpu and cuda backends' timeout_s, vllm's
# startup_timeout_s): they change no finished row, so --resume may raise them to run a case that ran out of time
# again (trial 40: the printed --resume command could never succeed for a timed-out case). vllm's request_timeout_s
# and run_timeout_s are not among them: a request they cut is counted in the row.
RESUME_FREE_SETTINGS = frozenset({"timeout_s", "startup_timeout_s"})


def _without_limits(scenario: dict[str, Any]) -> dict[str, Any]:
    """`scenario` without the backend settings in RESUME_FREE_SETTINGS."""
    backends = scenario.get("backends")
    if not isinstance(backends, dict):
        return scenario
    return {**scenario, "backends": {name: {k: v for k, v in raw.items() if k not in RESUME_FREE_SETTINGS}
                                     if isinstance(raw, dict) else raw for name, raw in backends.items()}}


def _settings_filled(scenario: dict[str, Any], registry: BackendRegistry) -> dict[str, Any]:
    """`scenario` (as saved) with each backend's settings completed by its Settings model's defaults, the values
    given kept as written: a setting stated at its default then reads as one left out (trial 39: `--resume` with
    `--set backends.roofline.optimizer=fused` was refused as an edit). Settings that do not validate stay as they
    are."""
    backends = scenario.get("backends")
    if not isinstance(backends, dict):
        return scenario
    filled: dict[str, Any] = {}
    for name, raw in backends.items():
        cls = registry.backends.get(name)
        try:
            defaults = cls.Settings().model_dump(mode="json") if cls is not None and isinstance(raw, dict) else {}
        except ValidationError:   # a settings model with required keys: nothing to fill
            defaults = {}
        filled[name] = {**defaults, **raw} if isinstance(raw, dict) else raw
    return {**scenario, "backends": filled}


def check_resumable(run_dir: Path, resolved: dict[str, Any], scenario_dir: Path | None = None,
                    registry: BackendRegistry | None = None) -> None:
    """A run folder may be resumed only by the scenario that started it, unchanged (else its rows would
    mix two workloads). ScenarioError keyed `--resume`, naming the first difference; given the `registry`, a backend
    setting stated at its default on one side and left out on the other is none (_settings_filled), and neither is a
    time limit that changes no finished row (RESUME_FREE_SETTINGS). A folder saved before its
    paths were saved absolute (relative ones) compares with them made absolute against `scenario_dir`. A file the
    scenario reads (a trace, a catalog) whose content changed since the run read it is a difference too
    (llmsim.run_inputs: the folder's inputs.json)."""
    saved_file = run_dir / "scenario.yaml"
    if not saved_file.exists():
        raise ScenarioError(None, "--resume", f"{run_dir} is not a run folder (it has no scenario.yaml)")
    why = "not a mapping of keys"
    try:
        saved = read_yaml(saved_file)
    except ScenarioError as exc:  # unreadable, not UTF-8, not YAML, beyond the limits of llmsim.userinput
        saved, why = None, exc.message
    if not isinstance(saved, dict):
        raise ScenarioError(None, "--resume", f"{saved_file} is not a readable scenario ({why}); start a new run "
                                              f"instead")
    if scenario_dir is not None:
        _absolute_paths(saved, scenario_dir)
    saved, current = _without_limits(saved), _without_limits(resolved)   # a time limit raised is no edit
    difference = _first_difference(saved, current)
    if difference and registry is not None:   # a setting stated at its default on one side only is no edit
        difference = _first_difference(_settings_filled(saved, registry), _settings_filled(current, registry))
    difference = difference or changed_input(run_dir, resolved)
    if difference:
        raise ScenarioError(None, "--resume", f"{run_dir} holds a run of another scenario or an edited one "
                                              f"({difference}); start a new run instead")
    try:   # a damaged results.jsonl is the store's to refuse (ResultStore.done), not this check's
        rows = rows_frame(read_rows(run_dir, warn=lambda _: None)) if (run_dir / "results.jsonl").is_file() else None
    except DamagedRows:
        rows = None
    disagreement = rows_disagree(parse_scenario(resolved), rows) if rows is not None and len(rows) else None
    if disagreement is not None:   # the folder's own scenario.yaml edited since its rows ran (trial 47)
        raise ScenarioError(None, "--resume", f"{run_dir}'s rows ran another workload than its scenario.yaml states "
                                              f"({disagreement[0]}: {disagreement[1]}); start a new run instead")


def availability_of(cls: type[Backend]) -> str | None:
    """`cls.availability()` (why the backend cannot run here, or None), with a plugin's availability() that raises
    (or is not callable as a classmethod) read as the reason it cannot run: `llmsim backends`, validate and run
    say it in their words instead of a traceback (trial 49)."""
    try:
        reason = cls.availability()
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin's bug is its backend's, not the run's
        return f"availability() raised {type(exc).__name__}: {one_line(str(exc))}"
    return None if reason is None else str(reason)


def unavailable(cls: type[Backend]) -> str | None:
    """Why no case of backend `cls` runs here (its availability(): not installed, no device), as its skipped
    rows say it, or None."""
    reason = availability_of(cls)
    return f"backend '{cls.name}' cannot run here: {reason}" if reason else None


def no_fp8(cls: type[Backend], workload: Any) -> str | None:
    """Why a measured backend skips a float8 or float4 workload (it runs no FP8/FP4 GEMMs), or None. float4:
    torch runs FP4 GEMMs only on sm_100 (torch._scaled_mm with block scales), which no measured backend here
    drives, so every measured backend skips it."""
    if workload.dtype == "float8" and cls.kind == "measured":
        return f"backend '{cls.name}' runs no FP8 GEMMs (dtype float8 is priced by the modeled backends only)"
    if workload.dtype == "float4" and cls.kind == "measured":
        return (f"backend '{cls.name}' runs no FP4 GEMMs (dtype float4 is priced by the modeled backends only; "
                f"FP4 tensor-core GEMMs need an sm_100 GPU and a block-scaled GEMM path this backend does not have)")
    return None


def skip_notes(planned: list[PlannedCase], catalog: Catalog, scenario: Scenario) -> list[tuple[str, str, int]]:
    """(key, reason, cases) for the planned cases a run would write as `skipped` rows, known before anything
    runs, once per (key, reason): a backend that cannot run here (unavailable, asked once per backend), a float8
    workload on a measured backend, a backend point whose device lacks the workload's peak (Backend.known_skip),
    a serving attention kernel without a figure on the device (serving_kernel_problem), a served device of unknown
    memory (serving_memory_problem). `llmsim validate` says
    them as notes; the scenario stays valid (the other rows run)."""
    found: dict[tuple[str, str], int] = {}
    availability: dict[str, str | None] = {}
    for item in planned:
        cls, name = item.backend, item.backend.name
        where = f"backends.{name}" if name in scenario.backends else "--backend"
        if name not in availability:
            availability[name] = unavailable(cls)
        problem: tuple[str, str] | None = None
        if availability[name]:
            problem = where, str(availability[name])
        elif (fp8 := no_fp8(cls, item.case.workload)) is not None:
            problem = where, fp8
        elif (known := cls.known_skip(item.settings, inference_view(item.case), catalog)) is not None:
            problem = f"backends.{name}.{known[0]}" if known[0] else where, known[1]
        elif item.case.serving is not None and (kernel := serving_kernel_problem(cls, item.settings, catalog)):
            problem = f"backends.{name}.attention", kernel
        elif item.case.serving is not None and (memory := serving_memory_problem(cls, item.settings, catalog)):
            problem = f"backends.{name}.hardware", memory
        if problem is not None:
            found[problem] = found.get(problem, 0) + 1
    return [(key, reason, n) for (key, reason), n in found.items()]


def inference_view(case: Any) -> Any:
    """The case's workload, as a serving case runs it: inference (mode decode) whatever workload.mode says (a
    float4 workload is refused in training on a device without FP4 tensor cores, priced weight-only when
    served: costmodel.precision.device_problem)."""
    if case.serving is None or case.workload.mode != "train":
        return case.workload
    return case.workload.model_copy(update={"mode": "decode"})


def fit_notes(planned: list[PlannedCase], catalog: Catalog) -> list[tuple[str, str, int]]:
    """(where, reason, cases) for the planned cases a run would write as `does-not-fit` rows, known before
    anything runs (Backend.known_does_not_fit: a served replica whose KV cache is below one request of the
    context), once per (backend, strategy, reason): where = 'backends.NAME, strategy NAME'.
    A note, not an error: a sweep's point may not fit."""
    found: dict[tuple[str, str], int] = {}
    for item in planned:
        try:
            reason = item.backend.known_does_not_fit(item.settings, item.case, catalog)
        except Exception:  # noqa: BLE001 - a note must not break validate; the run's row says what went wrong
            continue
        if reason is not None:
            key = (f"backends.{item.backend.name}, strategy {item.case.strategy.name}", reason)
            found[key] = found.get(key, 0) + 1
    return [(key, reason, n) for (key, reason), n in found.items()]


def inference_kernel_notes(planned: list[PlannedCase], scenario: Scenario) -> list[tuple[str, str]]:
    """(key, note) where a training case's attention kernel prices otherwise than its name says: `trtllm-mmha`
    (TensorRT-LLM's pre-XQA generation kernel, costmodel.plan.Options): a training step has no decode pass, so it
    prices the context kernel alone, as flash; FP8 attention (`fp8.attention` / `fp4.attention: float8`,
    Transformer Engine's FP8 dot-product attention on cuDNN's fused kernel) under an unfused kernel (math,
    fused-softmax: no FP8 path, 16-bit) or under flash (FlashAttention-2 has no FP8 kernel: flash's fraction of
    peak times cuDNN's measured FP8/BF16 ratio, costmodel.precision). Once per backend; none for a serving
    scenario (its iterations decode, and FP8 attention is refused there)."""
    if scenario.serving is not None:
        return []
    notes: dict[str, str] = {}
    for item in planned:
        kernel = getattr(item.settings, "attention", None)
        if kernel == "trtllm-mmha" and item.case.workload.mode == "train":
            notes[f"backends.{item.backend.name}.attention"] = (
                "trtllm-mmha is an inference engine's kernel (TensorRT-LLM before XQA: it changes only how a decode "
                "step reads the KV cache); a training step has no decode, so it is priced as flash")
        elif kernel is not None and precision.fp8_attention(item.case.workload):
            if kernel not in FUSED_ATTENTION:
                notes[f"backends.{item.backend.name}.attention"] = (
                    f"{kernel} has no FP8 path: FP8 attention (workload's attention: float8) is priced for the fused "
                    f"kernels (flash, cudnn, flash3), so this case's attention runs 16-bit")
            elif kernel == "flash":
                notes[f"backends.{item.backend.name}.attention"] = (
                    "FP8 attention is Transformer Engine's cuDNN fused kernel (FlashAttention-2 has no FP8 path): "
                    "priced at flash's fraction of peak times cuDNN's FP8/BF16 ratio; attention: cudnn prices "
                    "cuDNN's own fraction")
    return list(notes.items())


def training_option_notes(planned: list[PlannedCase], scenario: Scenario) -> list[tuple[str, str]]:
    """(key, note) where a backend sets a training recipe (`optimizer`, `master_weights`) that its case does not
    price: an inference or serving case has no optimizer step; an fp32 workload (or `params_fp32`) has no 16-bit
    copy to keep a master of. Once per backend and key; the row leaves the result column empty (priced_options)."""
    notes: dict[str, str] = {}
    for item in planned:
        given = getattr(item.settings, "model_fields_set", set())
        workload = item.case.workload
        serving = scenario.serving is not None
        for key in TRAINING_ONLY_OPTIONS:
            if key not in given:
                continue
            where = f"backends.{item.backend.name}.{key}"
            if serving or workload.mode != "train":
                notes[where] = (f"prices a training step's optimizer; this {'serving' if serving else workload.mode} "
                                f"case has none, so the setting changes nothing")
            elif key == "master_weights" and not master_weights_apply(workload.dtype,
                                                                      getattr(item.settings, "params_fp32", False)):
                notes[where] = ("an fp32 master copy is kept of 16-bit weights; this case's weights are fp32 already, "
                                "so the setting changes nothing")
    return list(notes.items())


def engine_kernel_notes(scenario: Scenario) -> list[tuple[str, str]]:
    """(key, note) where a serving scenario names SGLang's kernel counts (serving.scheduler.engine_kernels sglang /
    sglang-rocm) for a model they were not counted for (costmodel.eager: a DeepSeek-V3-shaped float8 model's extend
    pass, or an nvfp4 float4 one's on CUDA): the pass is priced with the fused count, as if the key were unset.
    Said only when the key is written."""
    serving = scenario.serving
    if serving is None or "engine_kernels" not in serving.scheduler.model_fields_set:
        return []
    kernels = serving.scheduler.engine_kernels
    spec, dtype, fp4 = scenario.workload.model, scenario.workload.dtype, scenario.workload.fp4
    recipe = fp4.recipe if fp4 is not None else "nvfp4"
    if kernels in ("sglang", "sglang-rocm") and not sglang_counted(spec, dtype, kernels == "sglang-rocm", recipe):
        return [("serving.scheduler.engine_kernels", f"{kernels}: SGLang's launches are counted for a DeepSeek-V3-"
                 f"shaped float8 model (MLA with a query latent, MoE), or an nvfp4 float4 one on CUDA, only; this "
                 f"model's passes are priced with the fused count, as with engine_kernels: fused")]
    return []


def fp4_weight_only_notes(planned: list[PlannedCase], catalog: Catalog) -> list[tuple[str, str]]:
    """(where, note) where a modeled case prices a float4 workload weight-only: its device has no FP4 tensor
    cores (costmodel.precision.weight_only_note). Once per backend: where = 'backends.NAME'."""
    notes: dict[str, str] = {}
    for item in planned:
        if not isinstance(item.settings, ModeledSettings) or not precision.is_fp4(item.case.workload):
            continue
        try:
            cluster = item.settings.cluster(catalog)
        except ScenarioError:  # check_settings has refused it already; nothing to say here
            continue
        note = precision.weight_only_note(item.case.workload, cluster.device)
        if note is not None:
            notes.setdefault(f"backends.{item.backend.name}", note)
    return list(notes.items())


def _modeled_clusters(planned: list[PlannedCase], catalog: Catalog) -> Iterator[tuple[PlannedCase, ClusterSpec]]:
    """Each planned case of a modeled backend with the cluster its settings name; a case whose settings name no
    usable cluster is left out (check_settings has refused it already; a note has nothing to say of it)."""
    for item in planned:
        if not isinstance(item.settings, ModeledSettings):
            continue
        try:
            yield item, item.settings.cluster(catalog)
        except ScenarioError:
            continue


def cross_node_tp_notes(planned: list[PlannedCase], catalog: Catalog) -> list[tuple[str, str]]:
    """(where, note) where a modeled case's tensor-parallel group spans nodes (costmodel.cluster.tp_span_note: tp
    above the cluster's devices per node, e.g. tp 4 on a100-80gb-pcie, whose node is one NVLink-bridged pair, or tp
    16 on 8-GPU h100-sxm nodes): its all-reduces cross the inter-node link, named with its bandwidth. Training,
    inference and serving alike (a served replica's tp ranks are placed as a training job's). Once per (backend,
    strategy, note): where = 'backends.NAME, strategy NAME'. A note: the case is priced so."""
    notes: dict[str, str] = {}
    for item, cluster in _modeled_clusters(planned, catalog):
        note = tp_span_note(item.case.layout.tp, cluster)
        if note is not None:
            notes.setdefault(f"backends.{item.backend.name}, strategy {item.case.strategy.name}", note)
    return list(notes.items())


def allreduce_rms_fusion_notes(planned: list[PlannedCase], catalog: Catalog,
                               scenario: Scenario) -> list[tuple[str, str]]:
    """(where, note) where serving.scheduler.fuse_allreduce_rms is true for a modeled case that vLLM would not fuse
    in any pass (costmodel.eager.fused_allreduce_rms_sites): tp 1, a pipeline, attention data parallelism, an fp32
    model, or a device with no fusion limit for its tp (allreduce_rms_fusion_max_bytes: vLLM runs the fusion on
    Hopper and Blackwell at tp 2, 4 and 8 only). The case is priced without it. Once per (backend, strategy)."""
    spec = scenario.serving
    if spec is None or not spec.scheduler.fuse_allreduce_rms:
        return []
    notes: dict[str, str] = {}
    for item, cluster in _modeled_clusters(planned, catalog):
        reason = allreduce_rms_fusion_problem(item.case.layout.tp, item.case.layout.pp, item.case.strategy.attention_dp,
                                              scenario.workload.dtype, cluster.device)
        if reason is None:
            continue
        notes.setdefault(f"serving.scheduler.fuse_allreduce_rms (backends.{item.backend.name}, strategy "
                         f"{item.case.strategy.name})", f"true changes nothing here: {reason}; priced without it")
    return list(notes.items())


def dp_fill_notes(planned: list[PlannedCase], scenario: Scenario) -> list[tuple[str, str]]:
    """(where, note) for a strategy without dp that runs a different dp on different backends (dp omitted fills
    each backend's devices: dp 1 on the cpu backend, dp 2 on a 2-device roofline), so its rows are two layouts
    and not a measurement and a prediction of one (trial 46, 49). Said once per strategy; a sweep of one backend
    (nodes) that varies dp by design is not compared with itself: each backend's first point is."""
    first: dict[str, dict[str, int]] = {}
    for item in planned:
        if item.case.strategy.dp is None:
            first.setdefault(item.case.strategy.name, {}).setdefault(item.backend.name, item.case.layout.dp)
    notes = []
    for i, strategy in enumerate(scenario.strategies):
        per = first.get(strategy.name, {})
        if len(set(per.values())) > 1:
            runs = ", ".join(f"dp {dp} on {name}" for name, dp in per.items())
            notes.append((f"strategies[{i}].dp", f"omitted, so each backend fills its devices: {runs}; their rows "
                                                  f"are different layouts, not one case measured and modeled "
                                                  f"(state dp to run one layout everywhere)"))
    return notes


def kv_link_notes(planned: list[PlannedCase], catalog: Catalog, scenario: Scenario) -> list[tuple[str, str]]:
    """(key, note) where serving.disaggregation.kv_transfer.link names a link the deployment would not carry its KV
    cache over on a modeled backend's cluster: the cluster's link inside a node while the instances span nodes, or
    neither of the cluster's links (a TPU's ICI, a CPU host's memory on a GPU cluster). A note, not a refusal: the
    transfer is priced over the link named (modeled_disaggregated), which the user may mean as a what-if. Once
    per (backend, note)."""
    spec = scenario.serving
    disagg = spec.disaggregation if spec is not None else None
    named = disagg.kv_transfer.link if disagg is not None else None
    if named is None:
        return []
    notes: dict[str, str] = {}
    for item, cluster in _modeled_clusters(planned, catalog):
        devices = disagg.devices(item.case.strategy.tp)
        where = f"serving.disaggregation.kv_transfer.link (backends.{item.backend.name})"
        if named == cluster.intra.name and devices > cluster.devices_per_node:
            nodes = -(-devices // cluster.devices_per_node)
            notes.setdefault(where, f"{named!r} is {cluster.device.name}'s link inside a node, but the {devices} "
                                    f"devices of the prefill and decode instances span {nodes} nodes of "
                                    f"{cluster.devices_per_node}: their KV cache would cross nodes over "
                                    f"{cluster.inter.name}; priced over {named!r} as named")
        elif named not in (cluster.intra.name, cluster.inter.name):
            notes.setdefault(where, f"{named!r} is neither of {cluster.device.name}'s links (inside a node "
                                    f"{cluster.intra.name}, between nodes {cluster.inter.name}); priced over it as "
                                    f"named")
    return list(notes.items())


def eager_mismatch_notes(planned: list[PlannedCase], catalog: Catalog, scenario: Scenario) -> list[tuple[str, str]]:
    """(key, note) where a serving scenario's measured engine runs every pass eagerly (a backend setting
    `enforce_eager: true`, vLLM's --enforce-eager, the vllm backend's default) while its modeled backends price
    CUDA-graph passes (serving.scheduler.eager not `all`) on a device whose eager launches cost something
    (eager_launch_s > 0): the two sides would compare eager against graphs. Once per measured backend."""
    spec = scenario.serving
    if spec is None or spec.scheduler.eager_passes == "all":
        return []
    modeled_gpu = any(item.backend.kind == "modeled" and (hw := getattr(item.settings, "hardware", None)) in
                      catalog.devices and float(getattr(catalog.devices[hw], "eager_launch_s", 0.0) or 0.0) > 0
                      for item in planned)
    if not modeled_gpu:
        return []
    notes: dict[str, str] = {}
    for item in planned:
        if item.backend.kind == "measured" and getattr(item.settings, "enforce_eager", False):
            name = item.backend.name
            notes[f"backends.{name}.enforce_eager"] = (
                f"the measured engine runs every pass eagerly while the modeled backends price serving.scheduler."
                f"eager = {spec.scheduler.eager_passes} (CUDA graphs); to compare like with like set "
                f"serving.scheduler.eager: all, or backends.{name}.enforce_eager: false")
    return list(notes.items())


def _run_one(item: PlannedCase, instances: dict[str, Backend], context: RunContext) -> Result:
    cls = item.backend
    reason = unavailable(cls) or no_fp8(cls, item.case.workload)
    if reason:
        return _failed_row(item, "skipped", reason)
    try:
        backend = instances.get(cls.name) or instances.setdefault(cls.name, cls(context))
        result = backend.run(item.case, item.settings)
    except KeyboardInterrupt:
        raise
    except LLMSimError as exc:
        return _failed_row(item, "failed", str(exc))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - one broken case must not lose the others (a plugin's
        # sys.exit() included: it ended the whole run without a word, trial 49)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _failed_row(item, "failed", f"{type(exc).__name__}: {_error_text(exc)} "
                                           f"(at {Path(where.filename).name}:{where.lineno})")
    return checked_result(item, result)


def _error_text(exc: BaseException) -> str:
    """One line of what went wrong: a pydantic ValidationError (a plugin building a Result with a bad value) as
    its fields and reasons ("status: Input should be 'ok', 'skipped', ..."), not its title line alone."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
    return one_line(str(exc))


def checked_result(item: PlannedCase, result: object) -> Result:
    """A backend's return value as the row the runner saves: a failed row (naming the backend and why) where it is
    not a Result, where a value is not one llmsim writes (results.row_problem: the check read_rows makes, so the
    file is never left unreadable; trial 49 wrote step_time_s -5 and then refused its own results.jsonl), or where
    an ok row's step time is NaN, infinite or not positive (the report called such a row the fastest)."""
    name = item.backend.name
    if not isinstance(result, Result):
        return _failed_row(item, "failed", f"backend '{name}' returned {type(result).__name__}, not a llmsim Result "
                                           f"(Backend.run must return one: docs/plugins.md)")
    problem = row_problem(result.row())
    if problem is None and result.status == "ok" and result.step_time_s is not None:
        step = result.step_time_s
        if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
            problem = f"an ok row with step_time_s {step!r} (a finite number of seconds > 0)"
    if problem is not None:
        return _failed_row(item, "failed", f"backend '{name}' returned a row llmsim cannot keep: {problem}")
    return result
