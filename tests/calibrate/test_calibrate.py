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


# A fit takes about a minute on a busy 2-core host: each one a test needs is made once per module and shared
# (the runs are only read; a test that writes, writes into its own tmp_path). The module's tests run on one
# pytest-xdist worker (its group), so that no second worker makes the same fixtures again (~19 s of CI).
pytestmark = pytest.mark.xdist_group("calibrate-fits")
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One pass of the whole batch per step (micro_batch = batch), as the validation scripts measure."""
    root = tmp_path_factory.mktemp("runs")
    return [synthetic_run(root, mode, seq_len, batch, micro_batch=batch) for mode, seq_len, batch in SHAPES]


@pytest.fixture(scope="module")
def fitted(runs: list[Path]) -> Calibration:
    """calibrate(runs), made once for the tests that read the fit and the command that prints it."""
    return calibrate(runs)


@pytest.fixture(scope="module")
def accumulated_with_probes(tmp_path_factory: pytest.TempPathFactory) -> Calibration:
    """One fit for two properties: rows of training steps that accumulate gradients over micro-batches of one
    sequence, with the cpu backend's probes beside them. Each property alone breaks the recovery (a wrong
    number of passes cannot reproduce the times; the probes' bounds must hold the true values)."""
    root = tmp_path_factory.mktemp("accumulated")
    return calibrate([synthetic_run(root, mode, seq_len, batch, micro_batch=1, probes=True)
                      for mode, seq_len, batch in SHAPES])


def _assert_recovers_the_true_factors(result: Calibration) -> None:
    entry = result.entry
    assert entry["efficiency"]["matmul"] == pytest.approx(TRUE["matmul"], rel=0.05)
    assert entry["memory_bw_bytes_per_s"] == pytest.approx(TRUE["memory_bw"], rel=0.05)
    assert entry["efficiency"]["op_overhead_s"] == pytest.approx(TRUE["op_overhead_s"], rel=0.05)
    assert max(abs(c.error) for c in result.cases) < 0.01


def test_the_fit_recovers_the_factors_that_made_the_times(fitted: Calibration) -> None:
    result = fitted
    assert len(result.cases) == 5                       # the roofline rows are not measurements
    assert max(abs(c.error) for c in result.before) > 0.2
    assert result.entry["name"] == "cpu-host-calibrated" and result.entry["peak_flops"] == {"float32": PEAK}
    _assert_recovers_the_true_factors(result)


def test_runs_that_accumulate_gradients_are_fitted_as_the_passes_they_ran(
        accumulated_with_probes: Calibration) -> None:
    """micro_batch 1 < batch: the cpu backend runs batch passes of one sequence per training step, so the
    times were made with that plan; predicting one pass of the whole batch could not reproduce them."""
    assert any(mode == "train" and batch > 1 for mode, _, batch in SHAPES)
    _assert_recovers_the_true_factors(accumulated_with_probes)


def test_folders_without_measurements_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not a run folder"):
        calibrate([tmp_path])


def test_the_probes_bound_the_fit_and_it_still_finds_the_true_factors(accumulated_with_probes: Calibration) -> None:
    assert "probes" in accumulated_with_probes.entry["efficiency"]["source"]
    _assert_recovers_the_true_factors(accumulated_with_probes)


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


def test_the_command_prints_the_table_and_writes_an_entry_that_loads(runs: list[Path], fitted: Calibration,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The command hands the runs to llmsim.calibrate.calibrate (the module's fit stands in for it: the fit
    itself is test_the_fit_recovers_the_factors_that_made_the_times's) and prints and writes its result."""
    import llmsim.calibrate as calibrate_module
    asked: list[tuple] = []

    def the_module_fit(run_dirs: list[str], **options: object) -> Calibration:
        asked.append((tuple(map(str, run_dirs)), options))
        return fitted
    monkeypatch.setattr(calibrate_module, "calibrate", the_module_fit)
    path = tmp_path / "hw.yaml"
    assert main(["calibrate", *map(str, runs), "--out", str(path)]) == 0
    assert asked == [(tuple(map(str, runs)), {"device": "cpu-host", "backend": "cpu", "catalog": None,
                      "include_busy": False})]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(path)
    assert lines[0].split() == ["case", "mode", "measured", "s", "default", "s", "err", "fitted", "s", "err"]
    # every synthetic run's case is named "s": each is tagged with its folder, named on the last line (trial 40)
    assert [line.split()[:2] for line in lines[1:-4]] == [[f"r{k}:s", mode] for k, (mode, _, _) in
                                                         enumerate(SHAPES, 1)]
    assert lines[-4].startswith("fitted: matmul ")
    assert lines[-3].startswith("residuals after the fit: RMS of log(modeled/measured) ")
    assert lines[-2] == "runs: " + ", ".join(f"r{k} = {run}" for k, run in enumerate(runs, 1))
    assert f"hardware_catalog: [{path.name}]" in path.read_text()
    entry = yaml.safe_load(path.read_text())["entries"][0]
    assert entry == fitted.entry
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


def test_an_unwritable_out_is_refused_before_the_fit(tmp_path: Path, capsys, monkeypatch) -> None:
    """--out is checked first: a fit takes seconds to minutes, and its table printed before the error read as a
    success (trial of 2026-12-01)."""
    import llmsim.calibrate as calibration

    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: pytest.fail("the fit ran before --out was checked"))
    assert main(["calibrate", str(tmp_path), "--out", str(tmp_path / "missing" / "x.yaml")]) == 2
    captured = capsys.readouterr()
    assert f"{tmp_path / 'missing'} does not exist" in captured.err and captured.out == ""


def test_an_unknown_device_is_named_as_the_flag(tmp_path, capsys) -> None:
    """`llmsim calibrate RUN --device h999`: the error names --device (it said `hardware:`, a scenario key; trial 24)."""
    from llmsim.cli import main as cli_main

    assert cli_main(["calibrate", str(tmp_path), "--device", "h999"]) == 2
    assert capsys.readouterr().err.startswith("llmsim: error: --device: unknown device 'h999'; allowed: cpu-host")
