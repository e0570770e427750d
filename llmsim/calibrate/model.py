"""Calibration as a model of the measurements: its parameters, the prediction, the fit, the entry.

The parameters (theta) are up to four numbers of a device, fitted by least squares on log(modeled / measured):
  * matmul efficiency    (fraction of the measured peak that GEMMs reach),
  * attention efficiency (fraction a fused attention kernel reaches),
  * memory bandwidth     (the host's effective streaming bandwidth; the CPU catalog entry has none),
  * operator overhead    (seconds per operator launch: eager dispatch runs serially on a host).
For a candidate theta the cost model predicts every observation (llmsim.calibrate.observations) on one
device of the measured hardware, with the plan its strategy and layout give (the micro-batches the
backend ran), and llmsim.calibrate.optimiser minimises the error. Peak FLOP/s per dtype is not fitted:
it is the matmul probe each row recorded (`peak_flops_per_s`). When every row also reports the
backend's streaming and per-operator probes (`stream_bytes_per_s`, `stream_large_bytes_per_s`,
`op_overhead_s`: the cpu backend does), they bound the fit: the bandwidth lies between the two streaming
rates and the per-operator cost is at least the probed one. Log error makes a 2x miss on a 10 ms case
weigh as much as on a 10 s one.

This module composes the others and is the only one that knows both the cost model and the optimiser;
the result (`Calibration`) carries the catalog entry as a dict, and the CLI prints and writes it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmsim.calibrate.optimiser import fit
from llmsim.calibrate.observations import CalibrationError, Observation, read_observations, without_busy
from llmsim.costmodel import ClusterSpec, CostModelError, Efficiency, Options, Plan, step_time
from llmsim.costmodel.efficiency import MAX_FIXED_TIME_S
from llmsim.hardware import MIN_MEMORY_BW_BYTES_PER_S, Catalog, DeviceSpec, load_catalog
from llmsim.workload.profile import profile_workload
from llmsim.wording import count

EFFICIENCY_BOUNDS = (1e-3, 1.0)
MEMORY_BW_BOUNDS = (MIN_MEMORY_BW_BYTES_PER_S, 1e13)  # bytes/s: from a slow laptop to beyond any HBM
OVERHEAD_BOUNDS = (1e-7, MAX_FIXED_TIME_S)  # s per operator: from a C++ loop to a very slow Python host (the
                                            # catalog's own ceiling for op_overhead_s, so a fit always loads)
INITIAL_MEMORY_BW = 20e9              # bytes/s, a DDR4/DDR5 socket's order of magnitude: the fit's start
INITIAL_OVERHEAD_S = 1e-5             # eager PyTorch dispatch is of the order of 10 us per operator
BOUNDS = (EFFICIENCY_BOUNDS, EFFICIENCY_BOUNDS, MEMORY_BW_BOUNDS, OVERHEAD_BOUNDS)  # in theta's order


@dataclass(frozen=True)
class CaseFit:
    """One observation, measured and modeled."""

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
    """What `calibrate` returns: the fitted catalog entry and every case before and after the fit."""

    entry: dict[str, Any]           # the catalog entry, as written to YAML
    cases: list[CaseFit]            # after the fit
    before: list[CaseFit]           # with the defaults the fit started from
    parameters: int = len(BOUNDS)   # fitted: matmul and attention efficiency, memory bandwidth, per-op cost
    kind: str = "step"              # step (step times of measured rows) | serving (llmsim.calibrate.serving)
    checks: list[CaseFit] = field(default_factory=list)   # modeled vs measured figures not fitted (serving p99s)
    left_out: list[str] = field(default_factory=list)     # cases not fitted: timed on a busy host
    # cases fitted whose measured step ran several processes (world > 1): priced as their whole step on one
    # device (plan_for), so the communication they measured is absorbed into the fitted efficiencies
    multi_process: list[str] = field(default_factory=list)

    @property
    def median_abs_error(self) -> float:
        return statistics.median(abs(c.error) for c in self.cases) if self.cases else math.nan

    @property
    def residuals(self) -> list[float]:
        """log(modeled / measured) per case after the fit: what least squares minimised (0 = exact)."""
        return [math.log(c.modeled_s / c.measured_s) for c in self.cases]

    @property
    def rms_log_residual(self) -> float:
        """Root mean square of the residuals (0.1 is about a 10% typical error)."""
        r = self.residuals
        return math.sqrt(sum(x * x for x in r) / len(r)) if r else math.nan

    @property
    def underdetermined(self) -> bool:
        """No more cases than fitted parameters: many parameter sets reproduce the cases exactly, so small
        residuals say nothing about other shapes (a least-squares fit needs more equations than unknowns)."""
        return len(self.cases) <= self.parameters


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
        workload, sharing = obs.scenario.workload, obs.sharing
        prepared.append((workload, profile_workload(workload, sharing), sharing, plan_for(obs)))

    def predict(candidate: DeviceSpec) -> list[float]:
        cluster = ClusterSpec(device=candidate, intra=loopback, inter=loopback, nodes=1, devices_per_node=1)
        return [step_time(w, p, s, plan, cluster, options) for w, p, s, plan in prepared]

    return predict


def plan_for(observation: Observation) -> Plan:
    """The cost model's plan of the step that was measured: `micro_batch` sequences per pass and
    batch / micro_batch passes (gradient accumulation), as the backend ran it.

    Every observation is modeled on one device: a multi-process row (world > 1) as its whole step on one
    device (Plan.single_device), the same micro-batches without the communication it measured.
    """
    plan = Plan.of(observation.strategy, observation.layout)
    return plan.single_device() if plan.world > 1 else plan


def calibrate(run_dirs: Sequence[Path], device: str = "cpu-host", backend: str = "cpu",
              options: Options = Options(), catalog: Catalog | None = None, include_busy: bool = False) -> Calibration:
    """Fit `device`'s efficiency factors to the measured rows of `backend` in `run_dirs` (rows timed on a busy
    host only with `include_busy`: observations.read_observations; the others are named in `left_out`)."""
    catalog = catalog or load_catalog()
    base = catalog.device(device)
    every = read_observations(run_dirs, backend, include_busy=True, device=device)  # the rows read once
    observations = every if include_busy else without_busy(every, run_dirs, backend)
    left_out = [o.case for o in every if o.busy and not include_busy]
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
        overhead = min(overhead, OVERHEAD_BOUNDS[1])  # a probe past the ceiling (a very loaded host) is held at it
        bounds[3] = (overhead, OVERHEAD_BOUNDS[1])
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
    return Calibration(entry=entry, cases=fits(after), before=fits(before), left_out=left_out,
                       multi_process=[o.case for o in observations if o.layout.world > 1])


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
                           "source": f"{how} over {count(len(observations), 'measured case')}"
                                     + (f" (no more than the {len(BOUNDS)} fitted parameters: not determined "
                                        f"by the data)" if len(observations) <= len(BOUNDS) else "")}
    entry["memory_bw_bytes_per_s"] = float(f"{theta[2]:.4g}")
    probes = "matmul, streaming and per-operator probes" if probed else "matmul probe"
    entry["source"] = (f"llmsim calibrate: fitted to {count(len(observations), 'measured case')} in run folders "
                       f"{', '.join(runs)}; peak FLOP/s from the runs' {probes}; power figures of "
                       f"{base.name} ({base.source})")
    entry.pop("matmul_tiles", None)
    entry["efficiency"].pop("matmul_tiles", None)
    return entry
