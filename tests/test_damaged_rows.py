"""A run folder's results.jsonl that is not what llmsim wrote (issue 15 leftovers: `llmsim report` skipped
damaged lines without a word). A damaged line is a one-line error naming the file and the line (exit 2),
after the report of the rows that read is written (they are not lost);
a last line cut by a kill is left out with a warning, the complete rows are reported, and --resume writes
its next row on a line of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsim.cli import main
from llmsim.errors import EXIT_BAD_INPUT
from llmsim.results import ResultStore, read_rows
from tests.report.helpers import make_run, row


def _run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "r", [row("a", step=1.0), row("b", step=2.0), row("c", step=3.0)])


def _edited(line: str, **values: object) -> str:
    """Row `line` as another case (so that the three rows still read) with these values written over."""
    return json.dumps({**json.loads(line), "case": "x", **values})


@pytest.mark.parametrize("damage, line, problem", [
    (lambda lines: lines[:1] + ["{\"case\": \"a\", \"backe"] + lines[1:], 2, "not JSON (Unterminated string"),
    (lambda lines: lines[:2] + ["garbage"] + lines[2:], 3, "not JSON (Expecting value: column 1)"),
    (lambda lines: ["[1, 2]"] + lines, 1, "JSON but not a result row (a mapping with case and backend)"),
    (lambda lines: lines[:1] + [json.dumps({"case": "x"})] + lines[1:], 2, "JSON but not a result row"),
    # the last line, complete with its newline, but not a row: an edit, not a cut write
    (lambda lines: lines + ["garbage"], 4, "not JSON"),
    # a value of the wrong type (trial 29: a TypeError in the report's formatting, a ValueError in calibrate's fit)
    (lambda lines: lines[:1] + [_edited(lines[0], ttft_s="abc")] + lines[1:], 2, 'ttft_s is "abc", not a number'),
    (lambda lines: lines[:1] + [_edited(lines[0], n_devices="x")] + lines[1:], 2, 'n_devices is "x", not a whole number'),
    (lambda lines: lines[:1] + [_edited(lines[0], step_time_s=[1])] + lines[1:], 2, "step_time_s is [1], not a number"),
    (lambda lines: lines[:1] + [_edited(lines[0], requests_per_s=10 ** 400)] + lines[1:], 2,
     "requests_per_s is 1000000000000000000000000000000000000..., not a number"),
    (lambda lines: lines[:1] + [_edited(lines[0], status=3)] + lines[1:], 2,
     "status is 3, not one of ok, skipped, failed, does-not-fit"),
    # a value no run writes (trial 31: status "great" was reported as such, a TTFT of -5 s as "0 s")
    (lambda lines: lines[:1] + [_edited(lines[0], status="great")] + lines[1:], 2,
     'status is "great", not one of ok, skipped, failed, does-not-fit'),
    (lambda lines: lines[:1] + [_edited(lines[0], ttft_s=-5)] + lines[1:], 2, "ttft_s is -5, not a number >= 0"),
    # trial 32: a null status was reported as "nan", a negative device count as "-3"
    (lambda lines: lines[:1] + [_edited(lines[0], status=None)] + lines[1:], 2,
     "status is null, not one of ok, skipped, failed, does-not-fit"),
    (lambda lines: lines[:1] + [_edited(lines[0], n_devices=-3)] + lines[1:], 2, "n_devices is -3, not a number >= 0"),
])
def test_a_damaged_line_is_one_line_naming_file_and_line(tmp_path: Path, capsys, damage, line: int,
                                                          problem: str) -> None:
    run = _run(tmp_path)
    jsonl = run / "results.jsonl"
    jsonl.write_text("\n".join(damage(jsonl.read_text().splitlines())) + "\n")
    assert main(["report", str(run)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"llmsim: error: {jsonl}: line {line}: {problem}"), err
    # the rows that read are not lost: the report is built from them and says what was left out
    assert "the report holds the 3 rows that read" in err
    report = (run / "report.md").read_text()
    assert "Some saved rows cannot be read" in report and all(f"| {c} " in report for c in "abc")


def test_a_cut_last_line_is_left_out_with_a_warning_and_the_rest_reported(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    jsonl = run / "results.jsonl"
    text = jsonl.read_text()
    jsonl.write_text(text[: len(text) - 40])  # a kill in the middle of writing row c
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"llmsim: warning: {jsonl}: line 3: an incomplete last row" in err
    assert "the 2 complete rows before it are used" in err
    assert (run / "report.md").is_file()
    assert [r["case"] for r in read_rows(run, warn=lambda _: None)] == ["a", "b"]


def test_a_comparison_warns_of_each_cut_last_line_once(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 33: `llmsim report A B` read each run twice (the comparison, then the scenario check) and said
    each warning twice."""
    runs = [make_run(tmp_path / name, [row("a", step=1.0), row("b", step=2.0)]) for name in ("r1", "r2")]
    for run in runs:
        text = (run / "results.jsonl").read_text()
        (run / "results.jsonl").write_text(text[: len(text) - 40])
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().err.count("an incomplete last row") == 2


def test_resume_after_a_cut_last_line_starts_the_next_row_on_its_own_line(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    jsonl = run / "results.jsonl"
    text = jsonl.read_text()
    jsonl.write_text(text[: len(text) - 40])
    store = ResultStore(run)  # as run --resume opens the folder
    assert "an incomplete last row" in capsys.readouterr().err
    store.add(row("c", step=3.0))
    assert [r["case"] for r in read_rows(run, warn=pytest.fail)] == ["a", "b", "c"]


def test_a_complete_last_row_without_its_newline_is_kept_and_sealed(tmp_path: Path) -> None:
    run = _run(tmp_path)
    jsonl = run / "results.jsonl"
    jsonl.write_text(jsonl.read_text().rstrip("\n"))
    store = ResultStore(run)
    store.add(row("d", step=4.0))
    assert [r["case"] for r in read_rows(run, warn=pytest.fail)] == ["a", "b", "c", "d"]


def test_a_damaged_environment_file_is_warned_of_and_the_report_still_built(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Session 29's trial: a damaged environment.json left the report's environment line blank, unsaid."""
    run = _run(tmp_path)
    (run / "environment.json").write_text("{bad")
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"llmsim: warning: {run / 'environment.json'}: Expecting property name" in err
    assert "the report's environment line is left blank" in err
    assert (run / "report.md").is_file()
    # null, a folder, a FIFO (which would be waited on): each said in words, never a hang (trial 34)
    import os
    for make, said in ((lambda p: p.write_text("null"), "null, not a mapping of the run's environment"),
                       (lambda p: p.mkdir(), "a folder, not a file"),
                       (lambda p: os.mkfifo(p), "a FIFO, not a regular file")):
        environment = run / "environment.json"
        if environment.is_dir():
            environment.rmdir()
        else:
            environment.unlink(missing_ok=True)
        make(environment)
        assert main(["report", str(run)]) == 0
        assert f"llmsim: warning: {environment}: {said}" in capsys.readouterr().err


def test_a_file_where_the_figures_folder_goes_is_said_so(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 34: `report: RUN/figures: File exists` gave no reason."""
    run = make_run(tmp_path / "r", [row("a", step=1.0), row("b", step=2.0)])
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    import shutil
    shutil.rmtree(run / "figures")
    (run / "figures").write_text("not a folder")
    assert main(["report", str(run)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().endswith(
        f"{run / 'figures'}: a file where the report's figures folder goes (move it away)")


def test_rows_without_a_step_time_still_make_a_report(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 35: every ok row with step_time_s null and a measured step spread (an edited file) raised ValueError
    in the results table ('step time' is not in list): the spread column then goes last."""
    run = make_run(tmp_path / "r", [row("a", backend="cpu", kind="measured", step=1.0), row("b", step=2.0)])
    jsonl = run / "results.jsonl"
    jsonl.write_text("".join(json.dumps({**json.loads(line), "step_time_s": None, "step_time_p10_s": 0.9,
                                         "step_time_p90_s": 1.1}) + "\n"
                             for line in jsonl.read_text().splitlines()))
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file()
