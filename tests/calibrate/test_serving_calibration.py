"""`llmsim calibrate` on measured serving rows (llmsim.calibrate.serving): rows synthesised by the modeled
backend on a device with known parameters, relabelled as a measured engine's on the stock entry, give those
parameters back; too few medians is one line, exit 2."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.calibrate import CalibrationError, calibrate_serving
from llmsim.calibrate.serving import SERVING_BOUNDS
from llmsim.cli import main
from llmsim.config import parse_scenario
from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD
from llmsim.hardware import load_catalog
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases, run_scenario

BASE = "h100-sxm"
# The parameters the rows are made with, each far from the stock H100 entry's (matmul 0.801, 3.35 TB/s x 0.88,
# 12 us per kernel), so that recovering them means the fit moved.
# request_overhead_s: a fixed 4 ms per request outside the engine (the order scripts/serve_vllm_cpu.py --probe
# measured for vLLM's request path on a CPU host, 5-6.5 ms), against none on the stock entry: on the old,
# 4-parameter fit the entry had no such field and the TTFT of the 64-token rows (~2-3 ms priced) was 2-3x off.
TRUE = {"matmul": 0.45, "memory_bw_bytes_per_s": 2.0e12, "kernel_latency_s": 3.0e-5, "request_overhead_s": 4.0e-3}
# A model whose prompt passes are mostly GEMM time and whose decode steps are weight reads plus the fixed
# cost per kernel: all three parameters show in TTFT and TPOT. Hidden 4096 so that the weight read (~3 GB per
# decode step) weighs as much as the kernels' fixed cost: with hidden 2048 the bandwidth hid behind the kernel
# latency, and a fit 80% off in bandwidth matched every median within 3% once H100 attention ran at FA2's
# measured 0.337 (more of TTFT in attention, less in the GEMMs that pin matmul).
MODEL = {"layers": 8, "hidden": 4096, "heads": 32, "kv_heads": 8, "ffn_hidden": 11008, "vocab": 32000, "seq_len": 4096,
         "activation": "swiglu", "norm": "rmsnorm", "positions": "rotary", "bias": False}


def _decode_step_s(bandwidth: float, kernel_latency_s: float) -> float:
    """MODEL's decode step at batch 1 as the two parameters set it: its 16-bit weights read once (the layers' Q, K, V,
    O and SwiGLU matrices, the untied embedding and LM head) plus the fixed time of every kernel of the pass
    (costmodel.compute's fused counts), seconds; the cache reads and FLOPs of a 64-token context are left out."""
    m = MODEL
    kv = m["kv_heads"] * m["hidden"] // m["heads"]
    layer = m["hidden"] * (2 * m["hidden"] + 2 * kv) + 3 * m["hidden"] * m["ffn_hidden"]
    weight_bytes = 2 * (m["layers"] * layer + 2 * m["vocab"] * m["hidden"])
    kernels = m["layers"] * KERNELS_PER_LAYER_FORWARD + KERNELS_EMBED + KERNELS_HEAD
    return weight_bytes / bandwidth + kernels * kernel_latency_s


def _true_catalog(folder: Path) -> Path:
    h100 = load_catalog().device(BASE).model_dump(mode="json", exclude_none=True)
    efficiency = {k: v for k, v in h100["efficiency"].items() if k != "matmul_tiles"}
    efficiency.update(matmul=TRUE["matmul"], memory=1.0, kernel_latency_s=TRUE["kernel_latency_s"], op_overhead_s=0.0)
    entry = dict(h100, name="true-gpu", memory_bw_bytes_per_s=TRUE["memory_bw_bytes_per_s"], efficiency=efficiency,
                 request_overhead_s=TRUE["request_overhead_s"])
    path = folder / "true.yaml"
    path.write_text(yaml.safe_dump({"entries": [entry]}))
    return path


def _measured_runs(folder: Path, inputs: tuple[int, ...] = (64, 2048), rates: list[float] = [5, 300],
                   requests: int = 30, made_on: str = "true-gpu") -> list[Path]:
    """One run folder per prompt length, rows at `rates` made on `made_on`, relabelled as a measured engine's on
    the stock entry."""
    folder.mkdir(parents=True, exist_ok=True)
    catalog = _true_catalog(folder)
    runs = []
    for prompt in inputs:
        data: dict[str, Any] = {
            "name": f"measured-{prompt}", "workload": {"model": MODEL, "dtype": "bfloat16"},
            "strategies": [{"name": "tp1"}], "hardware_catalog": [str(catalog)],
            "serving": {"requests": requests, "arrival": {"kind": "poisson", "rate": rates},
                        "lengths": {"input": prompt, "output": 16}},
            "backends": {"roofline": {"hardware": made_on, "nodes": 1, "devices_per_node": 1}}}
        manager = get_plugin_manager()
        registry = BackendRegistry.from_manager(manager)
        scenario = parse_scenario(data, "serve.yaml")
        run_dir = run_scenario(scenario, registry, plan_cases(scenario, registry, "serve.yaml", scenario_dir=folder),
                               folder, manager=manager, scenario_dir=folder).run_dir
        rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
        for row in rows:
            assert row["status"] == "ok"
            row.update(backend="vllm", kind="measured", hardware=BASE)
        (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(run_dir)
    return runs


# The tests that read the module's runs and fit run on one pytest-xdist worker (their group): spread over two, each
# worker would make the runs and the ~15 s fit again.
SHARED_FIT = pytest.mark.xdist_group("serving-calibration-fit")
SAID: list[str] = []     # the progress lines of the `fitted` fixture's command


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _measured_runs(tmp_path_factory.mktemp("serving-calibration"))


@pytest.fixture(scope="module")
def fitted(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Any]:
    """One `llmsim calibrate` of the rows, shared by the tests that read it (a fit took ~80 s of CI, and two
    tests made one each): the lines it printed, the entry file it wrote and the CalibrationResult behind them
    (recorded on the way)."""
    import llmsim.calibrate.serving as serving

    made: list[Any] = []
    real = serving.calibrate_serving
    out = tmp_path_factory.mktemp("fit") / "fitted.yaml"
    printed = io.StringIO()

    def recorded(*args: Any, **kw: Any) -> Any:
        shown = kw.get("progress") or (lambda _: None)
        kw["progress"] = lambda line: SAID.append(line) or shown(line)
        made.append(real(*args, **kw))
        return made[-1]

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(serving, "calibrate_serving", recorded)
        assert main(["calibrate", *map(str, runs), "--out", str(out)]) == 0
    assert len(made) == 1
    return printed.getvalue().splitlines(), out, made[0]


@SHARED_FIT
def test_the_command_recovers_the_parameters_that_made_the_serving_rows(fitted: tuple[list[str], Path, Any]) -> None:
    printed, out, _ = fitted
    assert printed[-1] == str(out)
    assert any(line.startswith("fitted to the serving rows: matmul") and "ms per request outside the engine" in line
               for line in printed)
    assert sum("TTFT p99" in line or "TPOT p99" in line for line in printed) == 8     # the checks, not fitted
    entry = load_catalog([out]).device("h100-sxm-serving-calibrated")
    assert entry.efficiency is not None
    # 10%: the three parameters trade off against each other inside the medians' discreteness (a median of
    # tens of simulated requests moves in steps of one iteration); the stock entry is 42-60% off every median,
    # so a fit that did not move fails here.
    # With the attention efficiency fitted as well (4 parameters), the bandwidth is 11% off here (2.22 TB/s):
    # decode attention's K/V reads and the weight reads share it, and the attention itself is barely seen by these
    # rows (a 2,048-token prompt's attention is ~5% of its FLOPs at hidden 4096): it ends at 0.13 from a start at
    # the truth, 0.337, without moving any median by more than 3% (next test). 15% on the bandwidth still fails a
    # fit that did not move. test_the_attention_efficiency_is_fitted_not_kept_from_the_base has rows that see it.
    # With the request overhead fitted too (5 parameters) and the stock H100's kernel latency in SM cycles (10 us
    # at its clock, the fit's start), the bandwidth and the kernel latency trade against each other: both only set
    # the decode step (weights / bandwidth + kernels x latency), and the fit ends 19% low on the one and 17% low on
    # the other (1.62 TB/s, 24.8 us) with every median within 2% (next test). 25% on each still fails a fit that
    # did not move (the stock entry's 2.95 TB/s and 10 us are 47% and 67% off).
    # Since decode attention reads the cache at its own fraction of the bandwidth (0.898 on the H100 entries, the same
    # in the true and the fitted entry), the same medians (all within 2.2%) are met at 3.0 TB/s and 37 us: the rows
    # pin the decode step these two make together, weights / bandwidth + kernels x latency (3.93 ms true), not each
    # (the stock entry's step, 1.9 ms, is 52% off: a fit that did not move fails).
    assert entry.efficiency.matmul == pytest.approx(TRUE["matmul"], rel=0.10)
    assert _decode_step_s(entry.memory_bw_bytes_per_s, entry.efficiency.kernel_latency_s) == pytest.approx(
        _decode_step_s(TRUE["memory_bw_bytes_per_s"], TRUE["kernel_latency_s"]), rel=0.05)
    assert entry.request_overhead_s == pytest.approx(TRUE["request_overhead_s"], rel=0.10)
    assert entry.efficiency.memory == 1.0 and entry.efficiency.op_overhead_s == 0.0
    assert entry.peak_flops == load_catalog().device(BASE).peak_flops    # not fitted


@SHARED_FIT
def test_the_residuals_shrink_from_the_stock_entry_to_the_fit(fitted: tuple[list[str], Path, Any]) -> None:
    result = fitted[2]
    assert result.kind == "serving" and len(result.cases) == 8 and result.parameters == len(SERVING_BOUNDS)
    assert min(abs(c.error) for c in result.before) > 0.3          # the stock H100 is far off these rows
    assert result.rms_log_residual < 0.02
    assert max(abs(c.error) for c in result.cases) < 0.03
    assert all(math.isfinite(c.modeled_s) for c in result.checks) and len(result.checks) == 8


@SHARED_FIT
def test_the_fit_says_where_it_is_as_it_goes(fitted: tuple[list[str], Path, Any]) -> None:
    """Trial 29: a serving calibration of GPU-sized rows ran 9 minutes without a line."""
    assert SAID[0].startswith("fitting 5 parameters to 8 measured medians of 4 serving rows: 4 starts")
    phases = [line.split(":")[0] for line in SAID[1:] if not line.startswith("  ")]  # heartbeats: next test
    assert phases == [f"start {k} of 4" for k in range(1, 5)] + ["polishing the best of the 4 starts (a simplex)"]


def test_a_start_says_every_so_often_how_far_it_got() -> None:
    """Trial 35: inside one start (minutes on GPU-sized rows) the fit said nothing until the start ended."""
    from llmsim.calibrate.serving import _Heartbeat

    said: list[str] = []
    now = [0.0]
    beat = _Heartbeat(said.append, every_s=15.0, clock=lambda: now[0])
    beat.tick([math.log(1.5), math.log(1.5)])
    now[0] = 10.0
    beat.tick([math.log(1.2), -math.log(1.2)])
    assert said == []                      # 10 s: not yet
    now[0] = 15.0
    beat.tick([math.log(2.0)])             # worse than the best so far: the best is said
    assert said == ["  3 simulations of every row so far; the best fit misses the medians by 20.0% rms"]
    now[0] = 20.0
    beat.tick([0.0])
    assert len(said) == 1                  # 5 s after the last line


def test_a_median_that_is_not_a_positive_number_is_said_left_out(tmp_path: Path) -> None:
    """Trial 29: one row's ttft_p50_s of -1 was dropped silently, and the error then asked for three points
    the user had (a negative one is now a damaged line to read_rows itself; 0 is what is left to leave out)."""
    import json
    runs = _measured_runs(tmp_path, inputs=(64,), rates=[5], requests=6)
    jsonl = runs[0] / "results.jsonl"
    jsonl.write_text("".join(json.dumps({**json.loads(line), "ttft_p50_s": 0}) + "\n"
                             for line in jsonl.read_text().splitlines()))
    with pytest.raises(CalibrationError, match=r"\(a median that is not a positive number is left out: .*ttft_p50_s"):
        calibrate_serving(runs)
    # and a device no catalog the runs name holds points to --hardware (it said only "unknown device")
    with pytest.raises(CalibrationError, match=r"device 'my-h100' is in neither the built-in catalog nor a hardware "
                                               r"file the runs name \(.*true.yaml\); allowed: --hardware FILE"):
        calibrate_serving(runs, device="my-h100")


def test_the_default_column_is_the_base_entrys_own_prediction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 29: on rows the stock h100-sxm made itself, the 'default' column was 6-8% off: it priced the fit's start
    (a request overhead of 1 ms, no op overhead, kernel latency in seconds), not the entry. The fit is stubbed
    out here (the start returned as found): only the base's prediction is under test."""
    import llmsim.calibrate.serving as serving
    monkeypatch.setattr(serving, "least_squares", lambda f, start, bounds: list(start))
    monkeypatch.setattr(serving, "polish", lambda f, theta, bounds: list(theta))
    result = calibrate_serving(_measured_runs(tmp_path, inputs=(64, 512), rates=[5, 40], requests=12, made_on=BASE))
    assert max(abs(c.error) for c in result.before) < 1e-9


def test_one_serving_row_is_too_few_medians_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _measured_runs(tmp_path, inputs=(64,), rates=[5], requests=6)
    with pytest.raises(CalibrationError, match="2 measured medians .* for 5 fitted parameters"):
        calibrate_serving(runs)
    assert main(["calibrate", *map(str, runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "measure at least three (rate, length) points" in err


def test_a_run_whose_catalog_changed_since_is_refused_before_the_fit(tmp_path: Path, capsys) -> None:
    """The fit replays each run's request list and catalog: a file changed since the run read it (its inputs.json
    digest, llmsim.run_inputs) would fit the measured medians to another input, so it is one line, exit 2."""
    runs = _measured_runs(tmp_path, inputs=(64,), rates=[5, 40], requests=6)
    catalog = tmp_path / "true.yaml"
    catalog.write_text(catalog.read_text() + "# edited\n")
    assert main(["calibrate", *map(str, runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{runs[0]}: hardware_catalog[0]: {catalog} changed since the run read it: " in err
    assert err.endswith("the fit would replay the run with other inputs than it measured with; put the file back "
                        "as it was, or measure again")


@SHARED_FIT
def test_a_device_without_a_peak_is_one_line_naming_the_step_calibration(runs: list[Path], capsys) -> None:
    assert main(["calibrate", *map(str, runs), "--device", "cpu-host"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "calibrate it from cpu-backend step runs first" in err


@SHARED_FIT
def test_a_run_of_modeled_rows_only_is_refused_saying_so(runs: list[Path], tmp_path: Path, capsys) -> None:
    # `calibrate` on a modeled serving run said "no ok measured rows of backend 'cpu'", a backend the run lacks
    import shutil
    run = Path(shutil.copytree(runs[0], tmp_path / "modeled"))
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(json.dumps({**r, "kind": "modeled", "backend": "roofline"}) + "\n"
                                               for r in rows))
    assert main(["calibrate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only modeled rows" in err and "roofline" in err


# A CPU host serving a small model (the vllm backend's measured scenario, scenarios/serve-vllm-cpu.yaml): the rows'
# attention runs at 0.02 of the peak, the base entry says 0.0011 (what the step calibration of llmsim's eager
# PyTorch model gave: underdetermined, 3 cases for 4 parameters). The peak and bandwidth are the order of that
# step-calibrated entry's (165 GFLOP/s bfloat16, a few GB/s).
CPU_BASE = {"name": "cpu-like", "type": "device", "peak_flops": {"bfloat16": 1.65e11}, "memory_bytes": 2**30,
            "memory_bw_bytes_per_s": 4.0e9, "idle_power_w": 1.0, "max_power_w": 5.0, "intra_node": "loopback", "inter_node": "loopback",
            "devices_per_node": 1, "source": "test", "efficiency": {
                "matmul": 0.7, "attention": 0.0011, "memory": 1.0, "kernel_latency_s": 1e-5, "op_overhead_s": 0.0,
                "source": "test"}}
CPU_TRUE = {"matmul": 0.33, "attention": 0.02, "memory_bw_bytes_per_s": 3.0e9, "kernel_latency_s": 2.0e-5}
SMALL = {"layers": 4, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn_hidden": 768, "vocab": 1024, "seq_len": 1024,
         "activation": "swiglu", "norm": "rmsnorm", "positions": "rotary", "bias": False}


@pytest.mark.slow  # ~17 s: two runs and a fit of its own; the `fitted` fixture's tests keep the quick run's fit
def test_the_attention_efficiency_is_fitted_not_kept_from_the_base(tmp_path: Path) -> None:
    """A base whose attention is 18x too slow for the engine: keeping it (the fit before) left every TTFT off
    whatever the other three parameters; fitted, the medians match and the attention comes back."""
    base = dict(CPU_BASE, efficiency=dict(CPU_BASE["efficiency"]))
    true = dict(CPU_BASE, name="cpu-true", memory_bw_bytes_per_s=CPU_TRUE["memory_bw_bytes_per_s"],
                efficiency=dict(CPU_BASE["efficiency"], **{k: v for k, v in CPU_TRUE.items()
                                                          if k != "memory_bw_bytes_per_s"}))
    catalog = tmp_path / "cpu.yaml"
    catalog.write_text(yaml.safe_dump({"entries": [base, true]}))
    runs = []
    for prompt in (128, 768):
        data: dict[str, Any] = {
            "name": f"cpu-{prompt}", "workload": {"model": SMALL, "dtype": "bfloat16"},
            "strategies": [{"name": "tp1"}], "hardware_catalog": [str(catalog)],
            "serving": {"requests": 20, "arrival": {"kind": "poisson", "rate": [1, 4]},
                        "lengths": {"input": prompt, "output": 16}},
            "backends": {"roofline": {"hardware": "cpu-true", "nodes": 1, "devices_per_node": 1}}}
        manager = get_plugin_manager()
        registry = BackendRegistry.from_manager(manager)
        scenario = parse_scenario(data, "serve.yaml")
        run_dir = run_scenario(scenario, registry, plan_cases(scenario, registry, "serve.yaml", scenario_dir=tmp_path),
                               tmp_path, manager=manager, scenario_dir=tmp_path).run_dir
        rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
        assert all(row["status"] == "ok" for row in rows)
        (run_dir / "results.jsonl").write_text("".join(
            json.dumps({**r, "backend": "vllm", "kind": "measured", "hardware": "cpu-like"}) + "\n" for r in rows))
        runs.append(run_dir)
    result = calibrate_serving(runs, backend="vllm")
    assert max(abs(c.error) for c in result.cases) < 0.05
    assert result.entry["efficiency"]["attention"] == pytest.approx(CPU_TRUE["attention"], rel=0.25)
