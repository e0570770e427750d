"""Calibration from measured serving rows: fit the parameters that price a serving iteration to the TTFT and
TPOT a real engine (the `vllm` backend, or any measured serving backend) gave at several rates and lengths.

What is fitted, and why these five. A serving iteration is priced by costmodel.iteration (`_stage_work`): its
GEMMs at `sustained peak x matmul` FLOP/s or its bytes at the memory bandwidth (whichever is longer), the
attention at `attention` x peak or its K/V reads, the rest at the bandwidth, plus a fixed cost per pass
(`kernel_latency_s` x the kernels of a layer, embedding and head; `op_overhead_s` x the traced operators). A
prompt pass is mostly GEMM time (TTFT sees `matmul`), a decode step mostly weight and cache reads plus the
fixed cost (TPOT sees the bandwidth and `kernel_latency_s`), and the attention at its own efficiency in both.
A served request also pays a fixed time outside the engine (`request_overhead_s`: API server, tokenisation,
IPC hop, detokenisation; llmsim.serving.simulate), which TTFT sees and TPOT does not; without it the fit can
only steepen the per-token prompt cost to make up a constant (what the CPU vLLM check showed, docs/
validation.md). TTFT rows at two or more prompt lengths separate the constant from the slope.
So theta = (matmul efficiency, attention efficiency, effective memory bandwidth, kernel latency, request
overhead). A scenario's `serving.request_overhead_s` in the measured runs is not used by the fit: the
parameter is the device entry's.
`op_overhead_s` is set to 0 and its share folded into `kernel_latency_s`: both are
a fixed cost per pass, nearly collinear across iterations (their ratio is the operators per kernel), and one
of them is what a serving row can determine. The attention efficiency is fitted too: the base entry's value
belongs to another engine (cpu-host-calibrated: llmsim's eager PyTorch attention, from step runs that do not
determine it: a fit of 3 cases for 4 parameters gave 0.0011) and a serving engine runs its own attention kernel
(vLLM's CPU backend: the fused paged attention of vllm/v1/attention/backends/cpu_attn.py). Kept, that 0.0011
priced a 128-token prompt of the 4-layer test model at ~0.2 s of attention against 25 ms measured whole, and no
value of the other three parameters could make up for it. It starts at the base's value; rows at two or more
prompt lengths separate it from `matmul` (attention FLOPs grow with the square of the prompt, the GEMMs'
linearly) and decode rows from the bandwidth (K/V reads against FLOPs).
The memory efficiency is folded into the bandwidth (1.0), as the step calibration does.

How. For a candidate theta every measured (case, rate) is re-simulated (llmsim.serving.simulate_serving) on
the same request list its engine served (the same seed: llmsim.serving.requests), with the scheduler, limits
and replicas of its scenario and, where the row says how large the engine's KV pool was (`kv_cache_bytes`,
the vllm backend), that many blocks; else the KV capacity of the base device (costmodel.iteration.
kv_capacity). Least squares on log(modeled / measured) of each row's TTFT p50 and TPOT p50 (medians: robust
to the measured tails); the p99s are not fitted and are printed as a check. Each objective call is a
simulation per row, so the optimiser runs its coordinate search and one simplex, not the multistart.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from llmsim.calibrate.model import EFFICIENCY_BOUNDS, MEMORY_BW_BOUNDS, Calibration, CaseFit
from llmsim.calibrate.observations import CalibrationError
from llmsim.calibrate.optimiser import least_squares, polish
from llmsim.config import Scenario, parse_scenario
from llmsim.costmodel import ClusterSpec, CostModelError, Efficiency, Options, Plan
from llmsim.costmodel.efficiency import MAX_FIXED_TIME_S
from llmsim.costmodel.window import KVLayout
from llmsim.costmodel.iteration import (IterationModel, Mix, iteration_times, kv_bytes_per_token, kv_capacity,
                                       token_costs)
from llmsim.hardware import Catalog, DeviceSpec, load_catalog
from llmsim.results import read_rows, said_by_another_read
from llmsim.run_inputs import changed_input
from llmsim.serving.replica import PRICED_MIXES_KEPT, Pricer
from llmsim.serving.requests import Request, build_requests, closed_loop_of, iter_requests
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.simulate import StalledError, simulate_serving
from llmsim.serving.spec import ServingCase
from llmsim.userinput import read_yaml
from llmsim.wording import count

# seconds per kernel of a pass: from a fused GPU kernel's launch (~2 us, CUDA's launch latency) to a slow
# eager host dispatching operators one by one (10 ms)
KERNEL_LATENCY_BOUNDS = (1e-8, MAX_FIXED_TIME_S)
# the fit's start when the base entry has none: the order of the GPU entries' value (hardware/catalog.yaml,
# 18,300 SM cycles: 13.0 us on A100, 10.0 us on H100/H200)
INITIAL_KERNEL_LATENCY_S = 1e-5
# seconds per request outside the engine's passes (DeviceSpec.request_overhead_s): from 1 us (an in-process
# call, no server) to 1 s (far above the 5-6.5 ms scripts/serve_vllm_cpu.py --probe measured for vLLM's
# HTTP -> API server -> ZMQ -> engine core -> detokeniser path on this host). Bounds in log space, so > 0.
REQUEST_OVERHEAD_BOUNDS = (1e-6, 1.0)
# the fit's start when the base entry has none: 1 ms, the order of one HTTP round trip on loopback plus a
# ZMQ hop (the probe above measured the whole path at 5-6.5 ms); the optimiser moves it
INITIAL_REQUEST_OVERHEAD_S = 1e-3
SERVING_BOUNDS = (EFFICIENCY_BOUNDS, EFFICIENCY_BOUNDS, MEMORY_BW_BOUNDS, KERNEL_LATENCY_BOUNDS,
                  REQUEST_OVERHEAD_BOUNDS)  # theta's order
FITTED = ("ttft_p50_s", "tpot_p50_s")      # fitted per row
CHECKED = ("ttft_p99_s", "tpot_p99_s")     # printed after the fit, not fitted
MISSING_RESIDUAL = 10.0                    # log error of a median the simulation did not produce (e^10 off)
CALIBRATED_SUFFIX = "-calibrated"


@dataclass(frozen=True)
class ServingObservation:
    """One measured serving row (a case at one rate) and what the simulation needs to replay it."""

    run_dir: Path
    case: str
    backend: str
    hardware: str
    scenario: Scenario
    strategy_index: int
    serving: ServingCase
    measured: dict[str, float]         # FITTED and CHECKED metrics the row has, seconds
    kv_cache_bytes: float | None       # the engine's KV pool, if the row says (vllm backend)
    unusable: tuple[str, ...] = ()     # FITTED metrics the row gives but not as a positive number (left out)


def _metric(row: dict[str, Any], key: str) -> float | None:
    try:
        value = float(row.get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _unusable_medians(observations: Sequence["ServingObservation"]) -> list[str]:
    """'<case> <metric> (<run folder>)' of each fitted median a row gave that is not a positive number."""
    return [f"{o.case} {k} ({o.run_dir.name})" for o in observations for k in o.unusable]


def _rate_of(case: str, rates: list[float | None]) -> float | None:
    """The offered rate of a case: its '@rate=R' suffix, else the scenario's one rate (None: a trace as recorded)."""
    found = re.search(r"@rate=([0-9.eE+-]+)$", case)
    if found:
        return float(found.group(1))
    return rates[0] if len(rates) == 1 else None


def _serving_case(scenario: Scenario, case: str, run_dir: Path, scenario_file: Path) -> ServingCase:
    spec = scenario.serving
    assert spec is not None
    kind = spec.scheduler.kind
    if kind not in BUILTIN:
        raise CalibrationError(f"{scenario_file}: serving.scheduler.kind {kind!r} is a plugin's; serving calibration "
                               f"replays the built-in schedulers only ({', '.join(BUILTIN)})")
    trace = None
    if spec.arrival.kind == "trace":
        assert spec.arrival.path is not None
        path = Path(spec.arrival.path)
        path = path if path.is_absolute() else run_dir / path
        if not path.is_file():
            raise CalibrationError(f"{scenario_file}: serving.arrival.path {spec.arrival.path!r} is not found from the "
                                   f"run folder; give it as an absolute path")
        trace = str(path)
    seed = scenario.seed if spec.seed is None else spec.seed
    if spec.arrival.closed:
        return ServingCase(spec.at_point("clients", _clients_of(case, spec.arrival.clients_list)), seed,
                           BUILTIN[kind], trace)
    rate = _rate_of(case, spec.arrival.rates)
    return ServingCase(spec.at_rate(rate), seed, BUILTIN[kind], trace)


def _clients_of(case: str, clients: list[int]) -> int:
    """A closed loop's clients of a case: its '@clients=N' suffix, else the scenario's one client count."""
    found = re.search(r"@clients=([0-9]+)$", case)
    return int(found.group(1)) if found else clients[0]


def _load_resolved(scenario_file: Path) -> Scenario:
    """A run folder's resolved scenario. The runner writes the whole model, so a serving scenario's workload
    carries the default `mode: train`, which a serving block refuses when it is written out (config.
    check_serving); the resolved file drops it as the user's file had it absent."""
    data = read_yaml(scenario_file)
    workload = data.get("workload")
    if data.get("serving") is not None and isinstance(workload, dict) and workload.get("mode") == "train":
        data = {**data, "workload": {k: v for k, v in workload.items() if k != "mode"}}
    return parse_scenario(data, str(scenario_file))


def read_serving_observations(run_dirs: Sequence[Path], backend: str | None = None) -> list[ServingObservation]:
    """The ok measured serving rows (mode serve) of `backend` (None: any measured backend) in each run folder."""
    found: list[ServingObservation] = []
    for run_dir in map(Path, run_dirs):
        results, scenario_file = run_dir / "results.jsonl", run_dir / "scenario.yaml"
        if not results.exists() or not scenario_file.exists():
            raise CalibrationError(f"{run_dir}: not a run folder (needs results.jsonl and scenario.yaml)")
        scenario = _load_resolved(scenario_file)
        if scenario.serving is None:
            continue
        changed = changed_input(run_dir, read_yaml(scenario_file))
        if changed:  # the fit replays the request list the engine served: another trace is another list
            raise CalibrationError(f"{run_dir}: {changed}: the fit would replay the run with other inputs than "
                                   f"it measured with; put the file back as it was, or measure again")
        names = [s.name for s in scenario.strategies]
        for row in read_rows(run_dir):
            if (row.get("mode") != "serve" or row.get("kind") != "measured" or row.get("status") != "ok"
                    or (backend is not None and row.get("backend") != backend) or row.get("strategy") not in names):
                continue
            measured = {k: v for k in FITTED + CHECKED if (v := _metric(row, k)) is not None}
            if not any(k in measured for k in FITTED):
                continue
            found.append(ServingObservation(
                run_dir=run_dir, case=str(row["case"]), backend=str(row["backend"]), hardware=str(row.get("hardware")),
                scenario=scenario, strategy_index=names.index(row["strategy"]),
                serving=_serving_case(scenario, str(row["case"]), run_dir, scenario_file), measured=measured,
                kv_cache_bytes=_metric(row, "kv_cache_bytes"),
                unusable=tuple(k for k in FITTED if row.get(k) is not None and k not in measured)))
    if not found:
        which = f"backend '{backend}'" if backend else "any measured backend"
        raise CalibrationError(f"no ok measured serving rows (mode serve, with TTFT or TPOT p50) of {which} in "
                               f"{', '.join(str(d) for d in run_dirs)}")
    return found


class _Replay:
    """One observation made ready to simulate: its traced costs, plan, requests and KV blocks."""

    def __init__(self, obs: ServingObservation, base: ClusterSpec, options: Options) -> None:
        from llmsim.modeled_serving import serving_profile   # modeled_serving imports the backends' API

        scenario = obs.scenario
        strategy = scenario.strategies[obs.strategy_index]
        self.obs = obs
        self.spec = obs.serving.spec
        self.options = options
        self.plan = Plan(dp=1, tp=strategy.tp, pp=strategy.pp, micro_batch=1, microbatches=1)
        sharing = scenario.sharing_choice(strategy)
        self.reference, profile = serving_profile(scenario.workload, sharing)
        self.costs = token_costs(self.reference, profile, self.spec.kv_cache_dtype)
        self.context = scenario.workload.model.seq_len
        # a closed loop bounded by duration_s has no list in advance: drawn again (the same) for each simulation
        self.requests: list[Request] | None = (None if obs.serving.spec.arrival.closed
                                               and obs.serving.spec.requests is None else build_requests(obs.serving))
        self.closed_loop = closed_loop_of(obs.serving)
        sched = self.spec.scheduler
        block = self.spec.kv_block_tokens
        # full and sliding-window layers' groups (costmodel.window.KVLayout; one group of every layer without a window)
        self.layout = KVLayout.of(self.costs.layers, self.costs.windowed_layers, self.costs.window)
        if obs.kv_cache_bytes is not None:   # the engine's own pool (vllm: --kv-cache-memory-bytes)
            per_token = kv_bytes_per_token(self.costs, self.reference, self.plan)
            group = self.layout.group_layers / self.costs.layers if self.layout.group_layers else 1.0
            self.blocks = math.floor(obs.kv_cache_bytes / (per_token * block * group))
        else:
            self.blocks = kv_capacity(self.reference, profile, sharing, self.plan, base, self.costs,
                                      self.spec.memory_utilization, block, sched.max_batched_tokens,
                                      sched.max_num_seqs, options).blocks
        if self.blocks <= 0:
            raise CalibrationError(f"{obs.run_dir}: {obs.case}: no room for a KV cache on {base.device.name} "
                                   f"(memory {base.device.memory_bytes:g} bytes); the row gives no kv_cache_bytes")

    def metrics(self, cluster: ClusterSpec) -> dict[str, float]:
        """TTFT and TPOT p50/p99 of the replayed requests on `cluster` (seconds; the same definitions as
        llmsim.serving.metrics)."""
        model = IterationModel(self.costs, self.reference, self.plan, cluster, self.options,
                               pipeline_in_flight=self.obs.serving.scheduler.pipeline_in_flight)

        @lru_cache(maxsize=PRICED_MIXES_KEPT)    # a pure function of the mix on this cluster
        def one(mix: Mix) -> tuple[float, float]:
            t = iteration_times(model, mix)
            return t.step, t.compute

        def price(_: int) -> Pricer:
            return one

        spec, serving = self.spec, self.obs.serving
        requests = self.requests if self.requests is not None else iter_requests(serving)
        outcome = simulate_serving(requests, replicas=spec.replicas,
                                   make_scheduler=lambda kv: serving.scheduler(spec.scheduler, kv),
                                   kv_blocks=self.blocks, block_tokens=spec.kv_block_tokens, price=price,
                                   router=spec.router, context_tokens=self.context,
                                   request_overhead_s=cluster.device.request_overhead_s,
                                   closed_loop=self.closed_loop, kv_layout=self.layout)
        seqs = outcome.sequences
        ttft = np.array([s.token_times[0] - s.request.arrival_s for s in seqs])
        tpot = np.array([(s.token_times[-1] - s.token_times[0]) / (s.request.output_tokens - 1)
                         for s in seqs if s.request.output_tokens > 1])
        out: dict[str, float] = {}
        for name, values in (("ttft", ttft), ("tpot", tpot)):
            if values.size:
                out[f"{name}_p50_s"] = float(np.percentile(values, 50))
                out[f"{name}_p99_s"] = float(np.percentile(values, 99))
        return out


def _candidate(base: DeviceSpec, name: str, theta: Sequence[float]) -> DeviceSpec:
    matmul, attention, bandwidth, latency, overhead = theta
    eff = (base.efficiency or Efficiency()).model_copy(update=dict(
        matmul=matmul, attention=attention, memory=1.0, kernel_latency_s=latency, kernel_latency_cycles=0.0,
        op_overhead_s=0.0,
        source="fitted by llmsim calibrate to measured serving rows (memory efficiency folded into the bandwidth)"))
    return base.model_copy(update=dict(name=name, memory_bw_bytes_per_s=bandwidth, efficiency=eff,
                                       request_overhead_s=overhead))


def serving_entry_name(device: str) -> str:
    """'cpu-host' and 'cpu-host-calibrated' -> 'cpu-host-serving-calibrated'."""
    stem = device[:-len(CALIBRATED_SUFFIX)] if device.endswith(CALIBRATED_SUFFIX) else device
    return f"{stem}-serving{CALIBRATED_SUFFIX}"


def has_serving_rows(run_dirs: Sequence[Path], backend: str | None = None) -> bool:
    """Whether the run folders hold ok measured serving rows (of `backend`; None: any measured backend).

    A probe before the fit reads the same files: a row cut by a kill is left for that read to say (once)."""
    for run_dir in map(Path, run_dirs):
        if not (run_dir / "results.jsonl").is_file():
            continue
        for row in read_rows(run_dir, warn=said_by_another_read):
            if (row.get("mode") == "serve" and row.get("kind") == "measured" and row.get("status") == "ok"
                    and (backend is None or row.get("backend") == backend)):
                return True
    return False


def serving_catalog(observations: Sequence[ServingObservation], hardware_files: Sequence[Path] = ()) -> Catalog:
    """The built-in catalog, the given files and the run folders' own `hardware_catalog` files (relative to the
    run folder, or absolute, as scripts/serve_vllm_cpu.py writes them; those not found are left out), each once."""
    files: dict[Path, Path] = {}
    for path in list(hardware_files) + [Path(o.run_dir) / f for o in observations for f in o.scenario.hardware_catalog]:
        path = Path(path)
        if path.is_file():
            files.setdefault(path.resolve(), path)
        elif path in map(Path, hardware_files):
            raise CalibrationError(f"--hardware {path}: no such file")
    return load_catalog(list(files.values()))


# Seconds between two "still fitting" lines inside one start: each start simulates every row tens of times,
# seconds on a small CPU model, minutes on a GPU-sized one (trial 35: a start said nothing until it ended).
PROGRESS_EVERY_S = 15.0


class _Heartbeat:
    """Counts the fit's simulations of every row and says, at most every `every_s` seconds of `clock`, how many
    ran and the best root-mean-square miss so far (exp of the rms of log(modeled / measured), minus one)."""

    def __init__(self, say: Callable[[str], None], every_s: float = PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.every_s, self.clock = say, every_s, clock
        self.calls = 0
        self.best = math.inf
        self.last = clock()

    def tick(self, log_errors: Sequence[float]) -> None:
        """One simulation of every row, with its residuals (log(modeled / measured) per fitted median)."""
        self.calls += 1
        if log_errors:
            self.best = min(self.best, math.sqrt(sum(e * e for e in log_errors) / len(log_errors)))
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.say(f"  {self.calls} simulations of every row so far; the best fit misses the medians by "
                     f"{math.expm1(self.best):.1%} rms")


def calibrate_serving(run_dirs: Sequence[Path], device: str | None = None, backend: str | None = None,
                      options: Options = Options(), catalog: Catalog | None = None,
                      hardware_files: Sequence[Path] = (),
                      progress: Callable[[str], None] | None = None) -> Calibration:
    """Fit `device`'s matmul and attention efficiency, memory bandwidth, kernel latency and per-request
    overhead (module docstring) to the TTFT and
    TPOT medians of the measured serving rows in `run_dirs` (of `backend`; None: any measured one). `device`
    defaults to the hardware the rows name; it must have a peak FLOP/s for the served dtype. `catalog` default:
    `serving_catalog` of the runs and `hardware_files`. `progress(line)`: where the fit is, as it goes (a fit
    simulates every row's requests a few hundred times: seconds on a small CPU model, minutes on a GPU-sized one)."""
    say = progress or (lambda _: None)
    observations = read_serving_observations(run_dirs, backend)
    catalog = catalog or serving_catalog(observations, hardware_files)
    if device is None:
        names = sorted({o.hardware for o in observations})
        if len(names) != 1:
            raise CalibrationError(f"the serving rows name {len(names)} devices ({', '.join(names)}); pick the "
                                   f"entry to calibrate with --device")
        device = names[0]
    if device not in catalog.devices:   # catalog.device's error names no file and no way to give one
        raise CalibrationError(f"device {device!r} is in neither the built-in catalog nor a hardware file the runs "
                               f"name ({', '.join(sorted({f for o in observations for f in o.scenario.hardware_catalog})) or 'none'}"
                               f"); allowed: --hardware FILE with its entry, or --device NAME of a known one")
    base = catalog.device(device)
    for dtype in {o.scenario.workload.dtype for o in observations}:
        if not base.peak_flops.get(dtype):  # type: ignore[call-overload]
            raise CalibrationError(f"device {device!r} has no peak FLOP/s for {dtype} (cpu-host's is probed at run "
                                   f"time): calibrate it from cpu-backend step runs first (llmsim calibrate RUN_DIR) "
                                   f"and pass that entry: --device cpu-host-calibrated --hardware FILE")
    numbers = sum(k in o.measured for o in observations for k in FITTED)
    if numbers <= len(SERVING_BOUNDS):
        raise CalibrationError(f"{count(numbers, 'measured median')} (TTFT and TPOT p50 of "
                               f"{count(len(observations), 'serving row')}) for {len(SERVING_BOUNDS)} fitted "
                               f"parameters: measure at least three (rate, length) points"
                               + (f" (a median that is not a positive number is left out: "
                                  f"{', '.join(dropped[:3])})" if (dropped := _unusable_medians(observations)) else ""))
    intra = catalog.link(base.intra_node or "loopback")
    inter = catalog.link(base.inter_node or "loopback")

    def cluster_of(candidate: DeviceSpec, obs: ServingObservation) -> ClusterSpec:
        strategy = obs.scenario.strategies[obs.strategy_index]
        need = obs.serving.spec.replicas * strategy.tp * strategy.pp
        per_node = min(need, base.devices_per_node or need)
        return ClusterSpec(device=candidate, intra=intra, inter=inter, nodes=math.ceil(need / per_node),
                           devices_per_node=per_node)

    name = serving_entry_name(device)
    defaults = base.efficiency or Efficiency()
    start = [defaults.matmul, defaults.attention,
             base.memory_bw_bytes_per_s * defaults.memory or MEMORY_BW_BOUNDS[0] * 100,
             defaults.kernel_latency_s or INITIAL_KERNEL_LATENCY_S,
             base.request_overhead_s or INITIAL_REQUEST_OVERHEAD_S]
    try:
        replays = [_Replay(o, cluster_of(_candidate(base, name, start), o), options) for o in observations]

        def predict(theta: Sequence[float]) -> list[dict[str, float]]:
            candidate = _candidate(base, name, theta)
            return [r.metrics(cluster_of(candidate, r.obs)) for r in replays]

        heartbeat = _Heartbeat(say)

        def log_errors(theta: list[float]) -> list[float]:
            """log(modeled / measured) of every fitted median (a median the simulation lacks: a large miss)."""
            errors = [math.log(modeled[key] / obs.measured[key]) if modeled.get(key) else MISSING_RESIDUAL
                      for obs, modeled in zip(observations, predict(theta)) for key in FITTED if key in obs.measured]
            heartbeat.tick(errors)
            return errors

        # the base entry's own prediction, as it stands (the fit's start differs from it where the fit's form
        # cannot hold it: a request overhead of 0 in log space, kernel latency in seconds, no op overhead)
        before = [r.metrics(cluster_of(base, r.obs)) for r in replays]
        # Starts, the best fit kept: the stock entry, and the fit of the others with the attention efficiency
        # held at the base's. Rows at few prompt lengths barely see attention apart from the GEMMs, and
        # Levenberg-Marquardt from the stock entry alone can trade the two into a corner (matmul at its bound 1.0
        # with attention 0.07, 5% rms off rows that the held-attention fit matches exactly); from the held fit the
        # free attention moves only where the rows ask for it.
        free = [i for i in range(len(start)) if i != 1]  # every parameter but the attention efficiency

        def held(others: Sequence[float]) -> list[float]:
            theta = list(start)
            for i, value in zip(free, others):
                theta[i] = value
            return theta

        say(f"fitting {len(SERVING_BOUNDS)} parameters to {count(numbers, 'measured median')} of "
            f"{count(len(observations), 'serving row')}: 4 starts, each simulating every row tens of times")
        say("start 1 of 4: the stock entry, attention held")
        first = least_squares(lambda t: log_errors(held(t)), [start[i] for i in free],
                              tuple(SERVING_BOUNDS[i] for i in free))
        # the held fit itself stays a candidate: the free fit from it is kept only where it lowers the residual
        # A third start: the stock entry with the attention at the GEMMs' fraction of peak, the order a fused
        # attention kernel reaches (FlashAttention-2: 50-73% of an A100's peak to its GEMMs' ~80%; docs/costmodel.md)
        # where the base's belongs to llmsim's eager attention. From a base whose attention is far too slow, the
        # rows at long prompts sit past saturation, and LM from there (or from the held fit) can stop in the corner
        # above; the serving iteration's fused elementwise bytes (costmodel.iteration.SERVING_FUSED_REGIONS) leave
        # the prompt passes more to the GEMMs and the attention, which is when it did.
        fused_attention = [start[0], start[0], *start[2:]]
        candidates = [held(first)]
        for k, (what, s) in enumerate((("the stock entry", start), ("the held fit", held(first)),
                                       ("attention at the GEMMs' efficiency", fused_attention)), 2):
            say(f"start {k} of 4: {what}")
            candidates.append(least_squares(log_errors, s, SERVING_BOUNDS))
        say("polishing the best of the 4 starts (a simplex)")
        theta = polish(log_errors, min(candidates, key=lambda t: sum(e * e for e in log_errors(t))), SERVING_BOUNDS)
        after = predict(theta)
    except (CostModelError, StalledError) as exc:
        raise CalibrationError(f"cannot simulate the measured serving rows: {exc}") from None

    def fits(modeled: list[dict[str, float]], keys: Sequence[str]) -> list[CaseFit]:
        return [CaseFit(o.run_dir, f"{o.case} {key[:4].upper()} {key[5:8]}", "serve", o.measured[key], m[key])
                for o, m in zip(observations, modeled) for key in keys if key in o.measured and m.get(key)]

    fitted = _candidate(base, name, theta)
    return Calibration(entry=_entry(fitted, base, observations, theta, numbers), cases=fits(after, FITTED),
                       before=fits(before, FITTED), parameters=len(SERVING_BOUNDS), kind="serving",
                       checks=fits(after, CHECKED))


def _entry(fitted: DeviceSpec, base: DeviceSpec, observations: list[ServingObservation], theta: Sequence[float],
           numbers: int) -> dict[str, Any]:
    runs = sorted({o.run_dir.name for o in observations})
    backends = sorted({o.backend for o in observations})
    entry = fitted.model_dump(mode="json", exclude_none=True)
    entry.update(intra_node=base.intra_node or "loopback", inter_node=base.inter_node or "loopback",
                 devices_per_node=base.devices_per_node or 1)
    eff = entry["efficiency"]
    eff.pop("matmul_tiles", None)
    # the fitted seconds replace the base's cycle count (kernel_latency_cycles would turn a fitted 0 back into it)
    eff.update(matmul=round(theta[0], 4), attention=float(f"{theta[1]:.4g}"), memory=1.0,
               kernel_latency_s=float(f"{theta[3]:.3g}"), kernel_latency_cycles=0.0, op_overhead_s=0.0,
               source=f"least squares on log TTFT and TPOT p50 of {count(len(observations), 'measured serving row')} "
                      f"({numbers} medians) replayed by the serving simulation")
    entry["memory_bw_bytes_per_s"] = float(f"{theta[2]:.4g}")
    entry["request_overhead_s"] = float(f"{theta[4]:.3g}")
    entry["source"] = (f"llmsim calibrate: fitted to serving rows of {', '.join(backends)} in run folders "
                       f"{', '.join(runs)}; peak FLOP/s, memory size and power of {base.name} "
                       f"({base.source})")
    entry.pop("matmul_tiles", None)
    return entry
