"""Each measured row is predicted with the plan its backend ran: the strategy's micro-batches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from llmsim.calibrate import CalibrationError, Observation, plan_for, read_observations
from tests.calibrate.helpers import synthetic_run


def _observation(root: Path, batch: int, micro_batch: int, **strategy: object) -> Observation:
    (observation,) = read_observations([synthetic_run(root, "train", 32, batch, micro_batch, **strategy)])
    return observation


@pytest.mark.parametrize("batch, micro_batch", [(4, 1), (4, 2), (4, 4), (6, 3)])
def test_a_row_is_planned_as_batch_over_micro_batch_passes(tmp_path: Path, batch: int, micro_batch: int) -> None:
    plan = plan_for(_observation(tmp_path, batch, micro_batch))
    assert (plan.micro_batch, plan.microbatches) == (micro_batch, batch // micro_batch)
    assert plan.world == 1


def test_the_plan_keeps_the_strategy_s_recompute(tmp_path: Path) -> None:
    assert plan_for(_observation(tmp_path, 4, 1, recompute="full")).recompute == "full"


def test_a_multi_process_row_is_planned_as_its_whole_step_on_one_device(tmp_path: Path) -> None:
    """dp 2 with micro_batch 1 and batch 4: two passes per replica, four on one device."""
    observation = _observation(tmp_path, 4, 1, dp=2)
    assert observation.layout.world == 2 and observation.layout.microbatches == 2
    plan = plan_for(observation)
    assert (plan.world, plan.micro_batch, plan.microbatches) == (1, 1, 4)


def test_only_ok_measured_rows_of_the_backend_are_observations(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    assert [o.case for o in read_observations([run])] == ["s"]      # not the roofline row beside it
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for change, says in (({"kind": "modeled"}, "holds only modeled rows"),
                         ({"status": "failed"}, "no ok measured rows of backend 'cpu'"),
                         ({"peak_flops_per_s": None}, "no ok measured rows of backend 'cpu'")):
        (run / "results.jsonl").write_text("".join(json.dumps({**r, **change}) + "\n" for r in rows))
        with pytest.raises(CalibrationError, match=says):
            read_observations([run])


def test_a_strategy_the_backend_could_not_have_run_is_a_clear_error(tmp_path: Path) -> None:
    """batch 3 over dp 2: no layout, so no plan; the error names the file and the key."""
    run = synthetic_run(tmp_path, "train", 32, 3, 1)
    scenario = yaml.safe_load((run / "scenario.yaml").read_text())
    scenario["strategies"][0]["dp"] = 2
    (run / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    with pytest.raises(CalibrationError, match=r"scenario.yaml: strategies\[0\].dp: 2 does not divide batch=3"):
        read_observations([run])


def test_a_fit_with_no_more_cases_than_parameters_is_flagged_and_residuals_are_reported() -> None:
    """Issue 15 item 16: `llmsim calibrate` fitted four parameters to two cases without a word."""
    from pathlib import Path

    from llmsim.calibrate import Calibration, CaseFit, format_table, underdetermined_warning

    def calibration(errors: list[float]) -> Calibration:
        cases = [CaseFit(Path("r"), f"c{i}", "train", 1.0, 1.0 + e) for i, e in enumerate(errors)]
        entry = {"efficiency": {"matmul": 0.5, "attention": 0.5, "op_overhead_s": 1e-5, "source": "x"},
                 "memory_bw_bytes_per_s": 1e10}
        return Calibration(entry=entry, cases=cases, before=cases)

    two = calibration([0.0, 0.0])
    assert two.parameters == 4 and two.underdetermined
    assert underdetermined_warning(two).startswith("2 cases for 4 fitted parameters: the fit is not determined")
    six = calibration([0.1, -0.1, 0.05, 0.0, 0.0, 0.2])
    assert not six.underdetermined and underdetermined_warning(six) is None
    last = format_table(six).splitlines()[-1]
    assert last.startswith("residuals after the fit: RMS of log(modeled/measured) 0.")
    assert "worst +20.0% (c5); 6 cases for 4 parameters, 2 degrees of freedom" in last
    assert six.rms_log_residual == pytest.approx(math.sqrt(sum(math.log(1 + e) ** 2
                                                               for e in [0.1, -0.1, 0.05, 0, 0, 0.2]) / 6))


def test_rows_timed_on_a_busy_host_are_left_out_unless_asked(tmp_path: Path) -> None:
    """A row whose host_load_per_core is above 1 waited for a core: the fit would read the wait as the host's
    speed (the busy-host mark `ok*` of the terminal report); it is fitted only with include_busy."""
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(json.dumps({**r, "host_load_per_core": 0.9}) + "\n" for r in rows))
    assert [o.case for o in read_observations([run])] == ["s"]      # below the mark: kept
    (run / "results.jsonl").write_text("".join(json.dumps({**r, "host_load_per_core": 6.5}) + "\n" for r in rows))
    with pytest.raises(CalibrationError, match=r"timed on a busy host .* --include-busy"):
        read_observations([run])
    (observation,) = read_observations([run], include_busy=True)
    assert (observation.case, observation.busy) == ("s", True)


def test_a_folder_that_fits_nothing_beside_others_that_do_is_named_not_dropped(tmp_path: Path) -> None:
    """Trial of 2026-12-01: a modeled-only folder given with a measured one was quietly ignored (alone it is an
    error); now it is the same one line, naming that folder."""
    measured = synthetic_run(tmp_path, "train", 32, 2, 2)
    (tmp_path / "other").mkdir()
    modeled = synthetic_run(tmp_path / "other", "train", 32, 2, 1)
    rows = [json.loads(line) for line in (modeled / "results.jsonl").read_text().splitlines()]
    (modeled / "results.jsonl").write_text("".join(json.dumps({**r, "kind": "modeled"}) + "\n" for r in rows))
    with pytest.raises(CalibrationError, match=f"{modeled}: no ok measured rows of backend 'cpu'"):
        read_observations([measured, modeled])
    assert [o.case for o in read_observations([measured])] == ["s"]


@pytest.mark.parametrize("value", [-1, 0, "abc", "x"])
def test_a_measured_time_or_peak_that_is_not_a_positive_number_is_one_clear_error(tmp_path: Path,
                                                                                   value: object) -> None:
    """Trial 29: step_time_s -1 failed the fit with 'math domain error', "abc" with a ValueError, and 0 was left
    out and reported as a row 'with no peak_flops_per_s'."""
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for column in ("step_time_s", "peak_flops_per_s"):
        if column == "step_time_s" and (isinstance(value, str) or value < 0):
            continue    # text or a negative time in a contract column: read_rows refuses the line itself
                        # (tests/test_damaged_rows.py)
        (run / "results.jsonl").write_text("".join(json.dumps({**r, column: value}) + "\n" for r in rows))
        with pytest.raises(CalibrationError, match=rf"results.jsonl: case 's': {column} {value!r}: a measured "
                                                   rf"row's {column} must be a positive number"):
            read_observations([run])


def test_a_backend_without_measured_rows_names_those_that_have_them(tmp_path: Path) -> None:
    """Trial 29: `--backend nope` said only 'no ok measured rows of backend nope'."""
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    with pytest.raises(CalibrationError, match=r"no ok measured rows of backend 'nope' .*; allowed: --backend cpu \| roofline "
                                               r"\(the backends of its measured rows\)"):
        read_observations([run], backend="nope")


def test_the_same_folder_twice_is_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 29: `llmsim calibrate RUN RUN` fitted 2 cases out of one row (report refuses the same)."""
    from llmsim.cli import main
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    assert main(["calibrate", str(run), str(run) + "/"]) == 2
    assert f"the same run folder is given twice ({run})" in capsys.readouterr().err   # named (trial 40)


@pytest.mark.parametrize("column, value", [("stream_bytes_per_s", -1), ("stream_large_bytes_per_s", "z"),
                                           ("op_overhead_s", "z"), ("host_load_per_core", "q"),
                                           ("host_load_per_core", -0.5)])
def test_a_damaged_probe_is_refused_not_read_as_absent(tmp_path: Path, column: str, value: object) -> None:
    """Trial 30: stream_bytes_per_s -1 was read as 'not probed', and the fitted bandwidth changed (47.97 -> 20
    GB/s) with exit 0; a damaged host load read as 'not busy'. An absent probe (null) still fits without it."""
    run = synthetic_run(tmp_path, "train", 32, 2, 2, probes=True)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(json.dumps({**r, column: value}) + "\n" for r in rows))
    with pytest.raises(CalibrationError, match=rf"case 's': {column} {value!r}: a measured row's {column} must be"):
        read_observations([run])
    (run / "results.jsonl").write_text("".join(json.dumps({**r, column: None}) + "\n" for r in rows))
    assert len(read_observations([run])) == 1


def test_rows_measured_on_another_device_do_not_calibrate_this_one(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 31: `calibrate RUN --device h100-sxm` on rows the cpu backend measured on cpu-host wrote an
    h100-sxm-calibrated entry with the CPU's peak and 50 GB/s beside an H100's memory and NVLink."""
    from llmsim.calibrate.observations import other_device_problem
    from llmsim.cli import main
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(json.dumps({**r, "hardware": "cpu-host"}) + "\n" for r in rows))
    observations = read_observations([run])
    assert other_device_problem(observations, "cpu-host") is None
    assert other_device_problem(observations, "cpu-host-calibrated") is None   # the same host, its own entry
    assert main(["calibrate", str(run), "--device", "h100-sxm"]) == 2
    assert capsys.readouterr().err.strip() == ("llmsim: error: --device h100-sxm: the measured rows ran on "
                                               "cpu-host: a fit writes what the rows measured into the entry; "
                                               "allowed: --device cpu-host")
    assert not (run / "hardware-calibrated.yaml").exists()


def test_another_device_is_said_before_a_busy_host(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Rows of another device timed on a busy host: rerunning on a quiet host (the busy error's advice) would not
    make them fit this device, so the device is the error said (trial 32)."""
    from llmsim.cli import main
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(
        json.dumps({**r, "hardware": "cpu-host", "host_load_per_core": 6.5}) + "\n" for r in rows))
    with pytest.raises(CalibrationError, match=r"timed on a busy host"):
        read_observations([run], device="cpu-host")
    assert main(["calibrate", str(run), "--device", "h100-sxm"]) == 2
    assert "ran on cpu-host" in capsys.readouterr().err


def test_a_cut_last_row_is_warned_once_by_calibrate(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """calibrate reads the rows once (busy ones marked, not re-read), so a row cut by a kill is said once."""
    from llmsim.cli import main
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    with (run / "results.jsonl").open("a") as rows:
        rows.write('{"case": "t", "backend": "cpu", "kind": "meas')
    assert main(["calibrate", str(run), "--out", str(tmp_path / "entry.yaml")]) == 0
    assert capsys.readouterr().err.count("cut") == 1


@pytest.mark.parametrize("column", ["step_time_s", "peak_flops_per_s"])
def test_a_row_without_a_fitted_column_is_named_by_that_column(tmp_path: Path, column: str) -> None:
    """Trial 33: rows without step_time_s were refused as lacking peak_flops_per_s."""
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(json.dumps({**r, column: None}) + "\n" for r in rows))
    with pytest.raises(CalibrationError, match=rf"with step_time_s and peak_flops_per_s in .* \(1 row without {column}\)$"):
        read_observations([run])


def test_fitted_rows_that_ran_several_processes_are_named_in_a_warning(tmp_path: Path) -> None:
    """Trial 49: single, dp2, tp2 and pp2 rows were fitted alike without a word; their gloo communication ends
    up in the fitted efficiencies, so `llmsim calibrate` names them."""
    import dataclasses

    from llmsim.calibrate import calibrate, multi_process_warning

    runs = [synthetic_run(tmp_path, "prefill", 32, 2, 2), synthetic_run(tmp_path, "train", 32, 4, 2, dp=2)]
    result = calibrate(runs)
    assert result.multi_process == ["s"]
    assert multi_process_warning(result).startswith("1 fitted row ran several processes (s): each is priced as its "
                                                    "whole step on one device")
    assert multi_process_warning(dataclasses.replace(result, multi_process=[])) is None
