"""Calibration recovers efficiency factors from measured rows, and writes a usable catalog entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmsim.calibrate import CalibrationError, calibrate, calibrate_command
from llmsim.config import parse_scenario
from llmsim.costmodel import ClusterSpec, Efficiency, Plan, estimate
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload
from llmsim.config import SharingChoice

TRUE = dict(matmul=0.6, attention=0.3, memory_bw=8e9, op_overhead_s=2e-5)
PEAK = 1e11


def _synthetic_run(root: Path, mode: str, seq_len: int, batch: int, probes: bool = False) -> Path:
    """A run folder whose 'measured' time is what the cost model predicts with the TRUE factors."""
    scenario = parse_scenario({"name": f"syn-{mode}-{seq_len}", "strategies": [{"name": "s"}],
                               "workload": {"model": {"preset": "tiny", "seq_len": seq_len}, "mode": mode,
                                            "batch": batch, "decode_tokens": 8, "dtype": "float32"}})
    catalog = load_catalog()
    device = catalog.device("cpu-host").model_copy(update=dict(
        peak_flops={"float32": PEAK}, memory_bw_bytes_per_s=TRUE["memory_bw"],
        efficiency=Efficiency(matmul=TRUE["matmul"], attention=TRUE["attention"], memory=1.0,
                              op_overhead_s=TRUE["op_overhead_s"])))
    loop = catalog.link("loopback")
    sharing = SharingChoice(True)
    profile = profile_workload(scenario.workload, sharing)
    step = estimate(scenario.workload, profile, sharing, Plan(micro_batch=batch, microbatches=1),
                    ClusterSpec(device=device, intra=loop, inter=loop, nodes=1, devices_per_node=1)).step_time_s
    run = root / scenario.name
    run.mkdir()
    (run / "scenario.yaml").write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    row = dict(scenario=scenario.name, case="s", strategy="s", backend="cpu", kind="measured", status="ok",
               mode=mode, dtype="float32", step_time_s=step, peak_flops_per_s=PEAK)
    if probes:  # the cpu backend's probes: streaming rates around the true bandwidth, a cheaper operator
        row.update(stream_bytes_per_s=2 * TRUE["memory_bw"], stream_large_bytes_per_s=TRUE["memory_bw"] / 2,
                   op_overhead_s=TRUE["op_overhead_s"] / 4)
    (run / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(dict(row, backend="roofline")) + "\n")
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    shapes = [("train", 64, 2), ("train", 32, 8), ("prefill", 64, 4), ("prefill", 16, 1), ("decode", 64, 2)]
    return [_synthetic_run(tmp_path, *shape) for shape in shapes]


def test_the_fit_recovers_the_factors_that_made_the_times(runs: list[Path]) -> None:
    result = calibrate(runs)
    assert len(result.cases) == 5                       # the roofline rows are not measurements
    assert max(abs(c.error) for c in result.cases) < 0.01
    assert max(abs(c.error) for c in result.before) > 0.2
    entry = result.entry
    assert entry["name"] == "cpu-host-calibrated" and entry["peak_flops"] == {"float32": PEAK}
    assert entry["efficiency"]["matmul"] == pytest.approx(TRUE["matmul"], rel=0.05)
    assert entry["memory_bw_bytes_per_s"] == pytest.approx(TRUE["memory_bw"], rel=0.05)
    assert entry["efficiency"]["op_overhead_s"] == pytest.approx(TRUE["op_overhead_s"], rel=0.05)


def test_the_written_entry_loads_as_a_catalog_file(runs: list[Path], tmp_path: Path) -> None:
    path = calibrate_command(runs, tmp_path / "hw.yaml")
    device = load_catalog([path]).device("cpu-host-calibrated")
    assert device.efficiency is not None and device.memory_bw_bytes_per_s > 0
    assert "calibrate" in device.source


def test_folders_without_measurements_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not a run folder"):
        calibrate([tmp_path])


def test_the_probes_bound_the_fit_and_it_still_finds_the_true_factors(tmp_path: Path) -> None:
    shapes = [("train", 64, 2), ("train", 32, 8), ("prefill", 64, 4), ("prefill", 16, 1), ("decode", 64, 2)]
    result = calibrate([_synthetic_run(tmp_path, *shape, probes=True) for shape in shapes])
    entry = result.entry
    assert entry["memory_bw_bytes_per_s"] == pytest.approx(TRUE["memory_bw"], rel=0.05)
    assert entry["efficiency"]["op_overhead_s"] == pytest.approx(TRUE["op_overhead_s"], rel=0.05)
    assert entry["efficiency"]["matmul"] == pytest.approx(TRUE["matmul"], rel=0.05)
    assert "probes" in entry["efficiency"]["source"]
    assert max(abs(c.error) for c in result.cases) < 0.01


def test_a_bandwidth_outside_the_probes_is_not_reachable(tmp_path: Path) -> None:
    """Probes that say the host streams at least 4x faster than the times imply: the fit stays at the
    bound rather than inventing a bandwidth the host was measured not to have."""
    runs = [_synthetic_run(tmp_path, *shape, probes=True) for shape in [("train", 64, 2), ("prefill", 64, 4)]]
    for run in runs:
        rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        (run / "results.jsonl").write_text("".join(
            json.dumps({**r, "stream_bytes_per_s": 8 * TRUE["memory_bw"], "stream_large_bytes_per_s": 4 * TRUE["memory_bw"]})
            + "\n" for r in rows))
    entry = calibrate(runs).entry
    assert entry["memory_bw_bytes_per_s"] >= 4 * TRUE["memory_bw"] * 0.999
