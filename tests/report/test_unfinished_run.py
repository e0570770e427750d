"""Trial 46: the report of an interrupted run (Ctrl-C after 7 of 10 cases) said "7 result rows: 7 ok" and "Every
case ran.". The report works out the planned cases from the saved scenario, as `--resume` does, lists those without a
row, says the run was cut short and gives the command that runs them; where the planned cases cannot be worked out it
never claims that every case ran."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmsim.cli import main
from llmsim.config import parse_scenario
from llmsim.report.build import write_report
from llmsim.runner import saved_scenario
from tests.report.helpers import make_run, row, saved_scenario_of


def _cut_run(tmp_path: Path, backends: dict | None = None) -> Path:
    """A run of strategies single, dp and tp (one roofline point each) whose only row is single's."""
    rows = [row("single", step=1.0)]
    folder = make_run(tmp_path / "run", rows)
    scenario = saved_scenario_of(rows)
    scenario["strategies"] = [{"name": "single"}, {"name": "dp"}, {"name": "tp"}]
    scenario["backends"] = backends or {"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 2}}
    if "no-such-plugin" not in scenario["backends"]:   # resolved as `llmsim run` saves it, so that --resume takes it
        scenario = saved_scenario(parse_scenario(scenario, "scenario.yaml"))
    (folder / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
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


def test_planned_cases_that_cannot_be_worked_out_never_read_every_case_ran(tmp_path: Path) -> None:
    folder = _cut_run(tmp_path, {"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 2}, "no-such-plugin": {}})
    write_report(folder)
    text = (folder / "report.md").read_text()
    assert "Every case ran." not in text
    assert "The saved scenario's planned cases cannot be worked out here (" in text
    assert "so whether every case ran is unknown" in text
