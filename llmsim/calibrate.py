"""Fit a device's efficiency factors to measured runs, and write them as a hardware catalog entry.

Input: run folders of measured backends (`results.jsonl` rows with kind measured, plus `scenario.yaml`,
the resolved scenario). For each ok row the cost model predicts the same case on a one-device cluster
of the measured hardware; up to four numbers are then fitted by least squares on log(modeled / measured):
  * matmul efficiency    (fraction of the measured peak that GEMMs reach),
  * attention efficiency (fraction a fused attention kernel reaches),
  * memory bandwidth     (the host's effective streaming bandwidth; the CPU catalog entry has none),
  * operator overhead    (seconds per operator launch: eager dispatch runs serially on a host).
Peak FLOP/s per dtype is not fitted: it is the matmul probe each row recorded (`peak_flops_per_s`). When
every row also reports the backend's streaming and per-operator probes (`stream_bytes_per_s`,
`stream_large_bytes_per_s`, `op_overhead_s`: the cpu backend does), they bound the fit: the bandwidth
lies between the two streaming rates and the per-operator cost is at least the probed one.
Log error makes a 2x miss on a 10 ms case weigh as much as on a 10 s one.

The fitted entry (`<device>-calibrated`) is a normal catalog entry: use it with
`hardware_catalog: [that file]` and `roofline: {hardware: cpu-host-calibrated, ...}`.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmsim.config import Scenario, load_scenario
from llmsim.costmodel import ClusterSpec, CostModelError, Efficiency, Options, Plan, estimate
from llmsim.errors import LLMSimError
from llmsim.hardware import Catalog, DeviceSpec, load_catalog
from llmsim.workload.profile import profile_workload

EFFICIENCY_BOUNDS = (1e-3, 1.0)
MEMORY_BW_BOUNDS = (1e8, 1e13)        # bytes/s: from a slow laptop to beyond any HBM
OVERHEAD_BOUNDS = (1e-7, 1e-2)        # seconds per operator: from a C++ loop to a very slow Python host
INITIAL_MEMORY_BW = 20e9              # bytes/s, a DDR4/DDR5 socket's order of magnitude: the fit's start
INITIAL_OVERHEAD_S = 1e-5             # eager PyTorch dispatch is of the order of 10 us per operator


class CalibrationError(LLMSimError):
    exit_code = 2


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
    stream_bytes_per_s: float | None = None        # the backend's probes, when the row reports them
    stream_large_bytes_per_s: float | None = None
    op_overhead_s: float | None = None


@dataclass(frozen=True)
class CaseFit:
    run_dir: Path
    case: str
    mode: str
    measured_s: float
    modeled_s: float

    @property
    def error(self) -> float:
        """Modeled over measured, minus one (+10% = the model is 10% slow)."""
        return self.modeled_s / self.measured_s - 1


@dataclass(frozen=True)
class Calibration:
    entry: dict[str, Any]           # the catalog entry, as written to YAML
    cases: list[CaseFit]            # after the fit
    before: list[CaseFit]           # with the defaults the fit started from

    @property
    def median_abs_error(self) -> float:
        return statistics.median(abs(c.error) for c in self.cases) if self.cases else math.nan


def read_observations(run_dirs: Sequence[Path], backend: str = "cpu") -> list[Observation]:
    """The ok rows of `backend` (kind measured) in each run folder, with their resolved scenario."""
    found: list[Observation] = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        results, scenario_file = run_dir / "results.jsonl", run_dir / "scenario.yaml"
        if not results.exists() or not scenario_file.exists():
            raise CalibrationError(f"{run_dir}: not a run folder (needs results.jsonl and scenario.yaml)")
        scenario = load_scenario(scenario_file)
        names = [s.name for s in scenario.strategies]
        for line in results.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if (row.get("backend") != backend or row.get("kind") != "measured" or row.get("status") != "ok"
                    or not row.get("step_time_s") or not row.get("peak_flops_per_s")):
                continue
            if row.get("strategy") not in names:
                continue
            found.append(Observation(run_dir=run_dir, case=row["case"], mode=row["mode"], dtype=row["dtype"],
                                     measured_s=float(row["step_time_s"]), peak_flops=float(row["peak_flops_per_s"]),
                                     scenario=scenario, strategy_index=names.index(row["strategy"]),
                                     stream_bytes_per_s=_positive(row.get("stream_bytes_per_s")),
                                     stream_large_bytes_per_s=_positive(row.get("stream_large_bytes_per_s")),
                                     op_overhead_s=_positive(row.get("op_overhead_s"))))
    if not found:
        raise CalibrationError(f"no ok measured rows of backend '{backend}' with peak_flops_per_s in "
                               f"{', '.join(str(d) for d in run_dirs)}")
    return found


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _device(base: DeviceSpec, name: str, peaks: dict[str, float], theta: Sequence[float]) -> DeviceSpec:
    matmul, attention, bandwidth, overhead = theta
    efficiency = Efficiency(matmul=matmul, attention=attention, memory=1.0, op_overhead_s=overhead,
                            source="fitted by llmsim calibrate (memory efficiency folded into the bandwidth)")
    return base.model_copy(update=dict(name=name, peak_flops=peaks, memory_bw_bytes_per_s=bandwidth,
                                       efficiency=efficiency, compute_units=None))


def _predictor(observations: list[Observation], catalog: Catalog,
               options: Options) -> Callable[[DeviceSpec], list[float]]:
    """A function from a candidate device to the modeled step time of every observation."""
    loopback = catalog.link("loopback")
    prepared = []
    for obs in observations:
        strategy = obs.scenario.strategies[obs.strategy_index]
        sharing = obs.scenario.sharing_choice(strategy)
        workload = obs.scenario.workload
        profile = profile_workload(workload, sharing)
        # A measured single-process backend runs the whole batch as one step: one micro-batch of all of it.
        plan = Plan(micro_batch=workload.batch, microbatches=1, recompute=strategy.recompute)
        prepared.append((workload, profile, sharing, plan))

    def predict(candidate: DeviceSpec) -> list[float]:
        cluster = ClusterSpec(device=candidate, intra=loopback, inter=loopback, nodes=1, devices_per_node=1)
        return [estimate(w, p, s, plan, cluster, options).step_time_s for w, p, s, plan in prepared]

    return predict


BOUNDS = (EFFICIENCY_BOUNDS, EFFICIENCY_BOUNDS, MEMORY_BW_BOUNDS, OVERHEAD_BOUNDS)
SWEEPS = 12                           # cycles of coordinate search; stops early once nothing improves
GOLDEN_STEPS = 40                     # golden-section steps per parameter: shrinks a log-range 0.618^40 ~ 1e-8
GOLDEN = (math.sqrt(5) - 1) / 2
NELDER_MEAD_ITERATIONS = 300          # simplex steps after the coordinate search (each one or two model passes)
NELDER_MEAD_RESTART_STEPS = (1.0, 0.3)  # initial simplex sizes (natural-log units) of successive restarts
MULTISTART_QUANTILES = (0.25, 0.75)     # simplex starts at these fractions of each parameter's log range


def _golden(f: Callable[[float], float], lo: float, hi: float) -> float:
    """Minimum of a unimodal f on [lo, hi] by golden-section search."""
    a, b = lo, hi
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(GOLDEN_STEPS):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    return (a + b) / 2


def _nelder_mead(f: Callable[[list[float]], float], x0: list[float], step: float = 0.3,
                 iterations: int = NELDER_MEAD_ITERATIONS) -> list[float]:
    """Minimum of f near x0 by the Nelder-Mead simplex (standard coefficients: 1, 2, 0.5, 0.5).

    Moves along combinations of parameters, which a coordinate search cannot: two factors that trade off
    against each other (per-operator overhead against memory bandwidth) stall it in a valley.
    """
    n = len(x0)
    simplex = [list(x0)] + [[v + (step if i == j else 0.0) for j, v in enumerate(x0)] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < 1e-15:
            break
        centroid = [sum(x[j] for x in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best vertex
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (v - b) for b, v in zip(best, x)] for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]


def fit(objective: Callable[[list[float]], float], start: list[float],
        bounds: Sequence[tuple[float, float]] = BOUNDS) -> list[float]:
    """Minimise `objective` over parameters within `bounds`, on their logs: a cyclic golden-section search
    to get close, then a Nelder-Mead simplex to leave the valleys a coordinate search stalls in.

    Derivative-free and bounded (the simplex sees the objective at the nearest in-bounds point), so a
    parameter the data cannot see (e.g. attention in runs without attention time) simply stays where it was.
    """
    x = [math.log(min(max(v, lo), hi)) for v, (lo, hi) in zip(start, bounds)]
    log_bounds = [(math.log(lo), math.log(hi)) for lo, hi in bounds]

    def clamp(logs: list[float]) -> list[float]:
        return [min(max(v, lo), hi) for v, (lo, hi) in zip(logs, log_bounds)]

    def at(logs: list[float]) -> float:
        return objective([math.exp(v) for v in clamp(logs)])

    best = at(x)
    for _ in range(SWEEPS):
        before = best
        for j, (lo, hi) in enumerate(log_bounds):
            trial = _golden(lambda v: at(x[:j] + [v] + x[j + 1:]), lo, hi)
            value = at(x[:j] + [trial] + x[j + 1:])
            if value < best:
                x[j], best = trial, value
        if before - best < 1e-12:
            break
    # The objective has separate valleys (measured: a 4-factor synthetic case whose true factors give 0
    # also has a 1%-error minimum across a ridge), so the simplex also starts from every corner of a box
    # at a quarter and three quarters of each log range, and the best end point wins.
    starts = [x] + [[lo + q * (hi - lo) for (lo, hi), q in zip(log_bounds, corner)]
                    for corner in itertools.product(MULTISTART_QUANTILES, repeat=len(log_bounds))]
    for origin in starts:
        for step in NELDER_MEAD_RESTART_STEPS:  # a fresh simplex each time: restarts escape a collapsed one
            origin = clamp(_nelder_mead(at, origin, step))
        value = at(origin)
        if value < best:
            x, best = origin, value
    return [math.exp(v) for v in x]


def calibrate(run_dirs: Sequence[Path], device: str = "cpu-host", backend: str = "cpu",
              options: Options = Options(), catalog: Catalog | None = None) -> Calibration:
    """Fit `device`'s efficiency factors to the measured rows of `backend` in `run_dirs`."""
    catalog = catalog or load_catalog()
    base = catalog.device(device)
    observations = read_observations(run_dirs, backend)
    peaks: dict[str, float] = {}
    for dtype in {o.dtype for o in observations}:
        peaks[dtype] = statistics.median(o.peak_flops for o in observations if o.dtype == dtype)
    name = f"{device}-calibrated"
    predict = _predictor(observations, catalog, options)
    measured = [o.measured_s for o in observations]

    defaults = base.efficiency or Efficiency()
    start = [defaults.matmul, defaults.attention,
             base.memory_bw_bytes_per_s * defaults.memory or INITIAL_MEMORY_BW,
             defaults.op_overhead_s or INITIAL_OVERHEAD_S]
    # The backend's probes bound the fit. A step streams activation-sized operands (from the caches) and
    # vocabulary-sized ones (embedding gradients, optimizer state: from memory): its effective bandwidth
    # lies between the two probed rates. The per-operator cost of a one-element op is a floor, not the
    # value (real operators also pay allocation, threading and cache misses the profile does not count).
    probed = _probed_rates(observations)
    bounds = list(BOUNDS)
    if probed:
        small, large, overhead = probed
        bounds[2] = (min(small, large), max(small, large))
        bounds[3] = (overhead, max(OVERHEAD_BOUNDS[1], overhead))
        start[2] = math.sqrt(small * large)
        start[3] = max(start[3], overhead)

    def squared_log_error(theta: list[float]) -> float:
        modeled = predict(_device(base, name, peaks, theta))
        return sum(math.log(m / t) ** 2 for m, t in zip(modeled, measured))

    try:
        before = predict(_device(base, name, peaks, start))
        theta = fit(squared_log_error, start, bounds)
    except CostModelError as exc:
        raise CalibrationError(f"cannot model the measured cases: {exc}") from None
    fitted = _device(base, name, peaks, theta)
    after = predict(fitted)

    def fits(modeled: list[float]) -> list[CaseFit]:
        return [CaseFit(o.run_dir, o.case, o.mode, o.measured_s, t) for o, t in zip(observations, modeled)]

    entry = _entry(fitted, base, observations, theta, probed=probed is not None)
    return Calibration(entry=entry, cases=fits(after), before=fits(before))


def _probed_rates(observations: list[Observation]) -> tuple[float, float, float] | None:
    """(streaming bytes/s of activation-sized and of vocabulary-sized operands, seconds per operator): the
    medians of the rows' probes, if every row has them."""
    small = [o.stream_bytes_per_s for o in observations]
    large = [o.stream_large_bytes_per_s for o in observations]
    overhead = [o.op_overhead_s for o in observations]
    if any(v is None for v in small + large + overhead):
        return None
    return statistics.median(small), statistics.median(large), statistics.median(overhead)  # type: ignore[type-var]


def _entry(fitted: DeviceSpec, base: DeviceSpec, observations: list[Observation], theta: list[float],
           probed: bool = False) -> dict[str, Any]:
    runs = sorted({o.run_dir.name for o in observations})
    entry = fitted.model_dump(mode="json", exclude_none=True)
    entry.update(intra_node=base.intra_node or "loopback", inter_node=base.inter_node or "loopback",
                 devices_per_node=base.devices_per_node or 1)
    how = ("least squares on log step time, within the runs' probes (bandwidth between the two streaming "
           "rates, per-operator cost at least the probed one)" if probed
           else "least squares on log step time")
    entry["efficiency"] = {"matmul": round(theta[0], 4), "attention": round(theta[1], 4), "memory": 1.0,
                           "op_overhead_s": float(f"{theta[3]:.3g}"),
                           "source": f"{how} over {len(observations)} measured cases"}
    entry["memory_bw_bytes_per_s"] = float(f"{theta[2]:.4g}")
    probes = "matmul, streaming and per-operator probes" if probed else "matmul probe"
    entry["source"] = (f"llmsim calibrate: fitted to {len(observations)} measured cases in run folders "
                       f"{', '.join(runs)}; peak FLOP/s from the runs' {probes}; power figures of "
                       f"{base.name} ({base.source})")
    entry.pop("matmul_tiles", None)
    entry["efficiency"].pop("matmul_tiles", None)
    return entry


def format_table(result: Calibration) -> str:
    """Modeled vs measured per case, before and after the fit."""
    lines = [f"{'case':<28}{'mode':<9}{'measured s':>12}{'default s':>12}{'err':>8}{'fitted s':>12}{'err':>8}"]
    for b, a in zip(result.before, result.cases):
        lines.append(f"{a.case[:27]:<28}{a.mode:<9}{a.measured_s:>12.4g}{b.modeled_s:>12.4g}{b.error:>+8.1%}"
                     f"{a.modeled_s:>12.4g}{a.error:>+8.1%}")
    eff = result.entry["efficiency"]
    bounded = " (within the probes)" if "probes" in eff["source"] else ""
    lines.append(f"fitted{bounded}: matmul {eff['matmul']:.3f}, attention {eff['attention']:.3f}, memory bandwidth "
                 f"{result.entry['memory_bw_bytes_per_s'] / 1e9:.2f} GB/s, {eff['op_overhead_s'] * 1e6:.1f} us "
                 f"per operator; median |error| {result.median_abs_error:.1%}")
    return "\n".join(lines)


def calibrate_command(run_dirs: list[Path], out: Path | None) -> Path:
    """`llmsim calibrate RUN_DIR... [--out FILE]`: fit, print the table, write the entry; return its path."""
    result = calibrate(run_dirs)
    path = out or Path(run_dirs[0]) / "hardware-calibrated.yaml"
    header = ("# Written by `llmsim calibrate`. Use it from a scenario with\n"
              f"#   hardware_catalog: [{path.name}]\n"
              f"#   backends: {{roofline: {{hardware: {result.entry['name']}, nodes: 1, devices_per_node: 1}}}}\n")
    path.write_text(header + yaml.safe_dump({"entries": [result.entry]}, sort_keys=False))
    print(format_table(result))
    print(path)
    return path
