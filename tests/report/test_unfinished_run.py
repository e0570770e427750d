"""Trial 46: the report of an interrupted run (Ctrl-C after 7 of 10 cases) said "7 result rows: 7 ok" and "Every
case ran.". `llmsim run` records the cases it was asked to run (planned.json, --backend's choice included); the
report lists those without a row, says the run was cut short and gives the command that runs them; a folder without
the record never claims that every case ran, and a run of one backend of several is no run cut short."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmsim.cli import main
from llmsim.config import parse_scenario
from llmsim.report.build import write_report
from llmsim.results import record_planned
from llmsim.runner import saved_scenario
from tests.report.helpers import make_run, row, saved_scenario_of


def _cut_run(tmp_path: Path, backends: dict | None = None, planned: bool = True) -> Path:
    """A run of strategies single, dp and tp (one roofline point each) whose only row is single's; `planned`: the
    folder records the three planned cases as `llmsim run` does."""
    rows = [row("single", step=1.0)]
    folder = make_run(tmp_path / "run", rows)
    scenario = saved_scenario_of(rows)
    scenario["strategies"] = [{"name": "single"}, {"name": "dp"}, {"name": "tp"}]
    scenario["backends"] = backends or {"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 2}}
    if "no-such-plugin" not in scenario["backends"]:   # resolved as `llmsim run` saves it, so that --resume takes it
        scenario = saved_scenario(parse_scenario(scenario, "scenario.yaml"))
    (folder / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    if planned:
        record_planned(folder, [(case, "roofline") for case in ("single", "dp", "tp")])
    return folder


def test_the_report_of_a_run_cut_short_lists_the_cases_without_a_row_and_the_resume_command(tmp_path: Path) -> None:
    folder = _cut_run(tmp_path)
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert "Every case ran." not in text
    command = f"`llmsim run {folder / 'scenario.yaml'} --resume {folder}`"
    assert (f"* The run was cut short: 2 of 3 planned cases have no row (listed under Not run or not fitting); run "
            f"them with: {command}.") in text
    assert f"The run was cut short: 2 of 3 planned cases have no row (listed below); run them with: {command}." in text
    for case in ("dp", "tp"):
        assert (f"| {case} | roofline | not run | no row: the run was cut short (Ctrl-C or a kill) before this case "
                f"finished |") in text
    assert "| single | roofline | not run" not in text


def test_the_given_resume_command_runs_the_cases_left_and_then_every_case_ran(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    folder = _cut_run(tmp_path)
    assert main(["run", str(folder / "scenario.yaml"), "--resume", str(folder)]) == 0
    text = (folder / "report.md").read_text()
    assert "cut short" not in text and "Every case ran." in text
    assert "3 result rows" in text


def test_a_folder_without_its_planned_cases_never_reads_every_case_ran(tmp_path: Path) -> None:
    folder = _cut_run(tmp_path, planned=False)
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert "Every case ran." not in text and "cut short:" not in text
    assert "Whether every planned case has a row is unknown (the run folder has no readable planned.json" in text


def test_a_run_of_one_backend_of_several_is_no_run_cut_short(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`llmsim run --backend roofline` of a scenario naming roofline and cluster: its report said the cluster's
    cases were cut short (the planned cases were worked out again from the scenario, --backend unknown to it)."""
    scenario = tmp_path / "two.yaml"
    point = {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 2}
    scenario.write_text(yaml.safe_dump({"name": "two", "workload": {"model": {"preset": "tiny"}, "batch": 2},
                                        "strategies": [{"name": "single"}, {"name": "dp", "dp": 2}],
                                        "backends": {"roofline": point, "cluster": point}}))
    assert main(["run", str(scenario), "--backend", "roofline", "--out", str(tmp_path / "runs")]) == 0
    folder = next((tmp_path / "runs" / "two").iterdir())
    text = (folder / "report.md").read_text()
    assert "cut short" not in text and "Every case ran." in text
    # cut short: the command keeps --backend
    rows = (folder / "results.jsonl").read_text().splitlines()
    (folder / "results.jsonl").write_text(rows[0] + "\n")
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert (f"1 of 2 planned cases has no row (listed below); run it with: `llmsim run {folder / 'scenario.yaml'} "
            f"--backend roofline --resume {folder}`.") in text


def test_a_folder_whose_scenario_is_gone_gives_no_command_that_cannot_run(tmp_path: Path) -> None:
    """Trial 47: with scenario.yaml deleted the report still said `llmsim run RUN/scenario.yaml ... --resume RUN`,
    which fails (no such file); it says what must be restored instead."""
    folder = _cut_run(tmp_path)
    (folder / "scenario.yaml").unlink()
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert "The run was cut short: 2 of 3 planned cases have no row" in text
    assert "`--resume` once the folder's scenario.yaml is the run's again (" in text
    assert f"llmsim run {folder / 'scenario.yaml'}" not in text


def test_a_hand_made_planned_record_of_the_wrong_shape_is_no_record(tmp_path: Path) -> None:
    """Trial 47: `[]` read as every case ran, `[[1, 2]]` as a case '1' of a backend '2'."""
    for text in ("[]", "[[1, 2]]", '[["a"]]', "null", '{"a": 1}', '[["a", "cpu"], ["zz'):
        folder = _cut_run(tmp_path / str(abs(hash(text))))
        (folder / "planned.json").write_text(text)
        write_report(folder)
        report = (folder / "report.md").read_text()
        assert "Every case ran." not in report and "Whether every planned case has a row is unknown" in report, text


def test_a_resume_of_a_folder_without_its_record_writes_none(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 47: resuming one backend of a folder without planned.json recorded that backend's cases alone, and the
    report then said every case ran though another backend's cases had no row."""
    folder = _cut_run(tmp_path, planned=False)
    assert main(["run", str(folder / "scenario.yaml"), "--resume", str(folder)]) == 0
    assert not (folder / "planned.json").exists()
    assert "Whether every planned case has a row is unknown" in (folder / "report.md").read_text()


def test_a_resume_after_the_folders_scenario_was_edited_under_its_rows_is_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 47: the folder's scenario.yaml edited to another batch; the report's own resume command then appended
    rows of the new batch beside the old ones, and the next report said every case ran."""
    folder = _cut_run(tmp_path)
    saved = yaml.safe_load((folder / "scenario.yaml").read_text())
    saved["workload"]["batch"] = 2 * saved["workload"]["batch"]
    (folder / "scenario.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(["run", str(folder / "scenario.yaml"), "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "--resume:" in err and "rows ran another workload than its scenario.yaml states (workload.batch:" in err
    assert len((folder / "results.jsonl").read_text().splitlines()) == 1


def test_a_planned_case_the_scenario_does_not_have_is_said_in_one_line_not_listed_as_not_run(tmp_path: Path) -> None:
    """A fresh-user trial: planned.json naming a case no strategy of the scenario makes (edited, or another run's)
    was listed as 'not run' with the resume command, which cannot run it."""
    folder = _cut_run(tmp_path)
    record_planned(folder, [("zz@nodes=2", "roofline")])   # after single, dp and tp
    write_report(folder)
    text = (folder / "report.md").read_text()
    line = ("planned.json names case zz@nodes=2 (on roofline) which the scenario does not have (no strategy of that "
            "name): it is not counted as planned or listed as not run; the file was edited or is another run's.")
    assert f"* {line}" in text and text.count(line) == 2   # the summary and the Not run section
    assert "2 of 3 planned cases have no row" in text      # dp and tp still are the run's own
    assert "* 1 result row: 1 ok." in text                  # was "1 result rows"
    assert "| zz@nodes=2 |" not in text
    # the only case without a row is the unknown one: no run cut short, and every case of the scenario ran
    folder = make_run(tmp_path / "all", [row(case, step=1.0) for case in ("single", "dp", "tp")])
    scenario = saved_scenario_of([row("single", step=1.0)])
    scenario["strategies"] = [{"name": "single"}, {"name": "dp"}, {"name": "tp"}]
    (folder / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
    record_planned(folder, [(case, "roofline") for case in ("single", "dp", "tp", "zz")])
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert "cut short" not in text and "Every case of the scenario ran." in text
    assert "planned.json names case zz (on roofline) which the scenario does not have" in text
