"""Calibration recovers efficiency factors from measured rows, and writes a usable catalog entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmsim.calibrate import Calibration, CalibrationError, calibrate
from llmsim.cli import main
from llmsim.hardware import load_catalog
from tests.calibrate.helpers import PEAK, SHAPES, TRUE, synthetic_run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """One pass of the whole batch per step (micro_batch = batch), as the validation scripts measure."""
    return [synthetic_run(tmp_path, mode, seq_len, batch, micro_batch=batch) for mode, seq_len, batch in SHAPES]


def _assert_recovers_the_true_factors(result: Calibration) -> None:
    entry = result.entry
    assert entry["efficiency"]["matmul"] == pytest.approx(TRUE["matmul"], rel=0.05)
    assert entry["memory_bw_bytes_per_s"] == pytest.approx(TRUE["memory_bw"], rel=0.05)
    assert entry["efficiency"]["op_overhead_s"] == pytest.approx(TRUE["op_overhead_s"], rel=0.05)
    assert max(abs(c.error) for c in result.cases) < 0.01


def test_the_fit_recovers_the_factors_that_made_the_times(runs: list[Path]) -> None:
    result = calibrate(runs)
    assert len(result.cases) == 5                       # the roofline rows are not measurements
    assert max(abs(c.error) for c in result.before) > 0.2
    assert result.entry["name"] == "cpu-host-calibrated" and result.entry["peak_flops"] == {"float32": PEAK}
    _assert_recovers_the_true_factors(result)


def test_runs_that_accumulate_gradients_are_fitted_as_the_passes_they_ran(tmp_path: Path) -> None:
    """micro_batch 1 < batch: the cpu backend runs batch passes of one sequence per training step, so the
    times were made with that plan; predicting one pass of the whole batch could not reproduce them."""
    runs = [synthetic_run(tmp_path, mode, seq_len, batch, micro_batch=1) for mode, seq_len, batch in SHAPES]
    assert any(mode == "train" and batch > 1 for mode, _, batch in SHAPES)
    _assert_recovers_the_true_factors(calibrate(runs))


def test_folders_without_measurements_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not a run folder"):
        calibrate([tmp_path])


def test_the_probes_bound_the_fit_and_it_still_finds_the_true_factors(tmp_path: Path) -> None:
    result = calibrate([synthetic_run(tmp_path, mode, seq_len, batch, micro_batch=batch, probes=True)
                        for mode, seq_len, batch in SHAPES])
    assert "probes" in result.entry["efficiency"]["source"]
    _assert_recovers_the_true_factors(result)


def test_a_bandwidth_outside_the_probes_is_not_reachable(tmp_path: Path) -> None:
    """Probes that say the host streams at least 4x faster than the times imply: the fit stays at the
    bound rather than inventing a bandwidth the host was measured not to have."""
    runs = [synthetic_run(tmp_path, *shape, micro_batch=shape[2], probes=True)
            for shape in [("train", 64, 2), ("prefill", 64, 4)]]
    for run in runs:
        rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        (run / "results.jsonl").write_text("".join(
            json.dumps({**r, "stream_bytes_per_s": 8 * TRUE["memory_bw"], "stream_large_bytes_per_s": 4 * TRUE["memory_bw"]})
            + "\n" for r in rows))
    entry = calibrate(runs).entry
    assert entry["memory_bw_bytes_per_s"] >= 4 * TRUE["memory_bw"] * 0.999


def test_the_command_prints_the_table_and_writes_an_entry_that_loads(runs: list[Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hw.yaml"
    assert main(["calibrate", *map(str, runs), "--out", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(path)
    assert lines[0].split() == ["case", "mode", "measured", "s", "default", "s", "err", "fitted", "s", "err"]
    assert [line.split()[1] for line in lines[1:-3]] == [mode for mode, _, _ in SHAPES]
    assert lines[-3].startswith("fitted: matmul ")
    assert lines[-2].startswith("residuals after the fit: RMS of log(modeled/measured) ")
    assert f"hardware_catalog: [{path.name}]" in path.read_text()
    entry = yaml.safe_load(path.read_text())["entries"][0]
    assert entry == calibrate(runs).entry
    device = load_catalog([path]).device("cpu-host-calibrated")
    assert device.efficiency is not None and device.memory_bw_bytes_per_s > 0
    assert "calibrate" in device.source


@pytest.mark.slow  # a second whole fit (~100 s on a busy 2-core host) for where the file goes; CI's slow step runs it
def test_the_command_writes_into_the_first_run_folder_by_default(runs: list[Path], capsys) -> None:
    assert main(["calibrate", *map(str, runs)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(runs[0] / "hardware-calibrated.yaml")
    assert (runs[0] / "hardware-calibrated.yaml").exists()


def test_the_command_exits_2_on_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["calibrate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
