"""`llmsim report` (one run: rebuild; several: compare) and `llmsim run` writing the report."""

from __future__ import annotations

from pathlib import Path

from llmsim.cli import main
from tests.report.helpers import make_run, rich_rows, row


def test_report_rebuilds_md_and_html(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "r", rich_rows())
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(run / "report.md"), str(run / "report.html")]
    assert (run / "figures" / "throughput.png").is_file()


def test_report_of_two_runs_compares_and_prints_the_folder_last(tmp_path: Path, capsys) -> None:
    a = make_run(tmp_path / "a", [row("x", step=1.0)])
    b = make_run(tmp_path / "b", [row("x", step=0.5)])
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    # --out is the parent of a fresh folder, as for run (<out>/<scenario>/<stamp>) and plan (<out>/plan-<name>/<stamp>)
    assert folder.parent == tmp_path / "cmp" / "compare"
    assert "+100.0%" in (folder / "report.md").read_text()


def test_report_default_comparison_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    a = make_run(tmp_path / "a", [row("x", step=1.0)])
    b = make_run(tmp_path / "b", [row("x", step=0.5)])
    assert main(["report", str(a), str(b)]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.parent == Path("reports") / "compare" and (folder / "report.html").is_file()


def test_report_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "has no results.jsonl" in capsys.readouterr().err
    run = make_run(tmp_path / "r", [row("x", step=1.0)])
    assert main(["report", str(run), str(run)]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "--out is for comparisons" in capsys.readouterr().err


def test_run_writes_html_report_and_figures(write_scenario, tmp_path: Path, capsys) -> None:
    path = write_scenario(backends={"cpu": {"steps": 1, "warmup": 0}})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    page = (run_dir / "report.html").read_text()
    assert "the fastest strategy that fits is single" in page
    assert (run_dir / "figures" / "throughput.png").is_file()
    assert "](figures/throughput.png)" in (run_dir / "report.md").read_text()


def test_report_of_a_run_with_no_rows_keeps_the_report_already_there(tmp_path: Path, capsys) -> None:
    """A run stopped before its first case has an empty results.jsonl: `llmsim report` on it must not replace
    the report.md built before (e.g. of the rows a --resume then lost to a rewrite) with an empty one."""
    run = make_run(tmp_path / "r", rich_rows())
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    before = (run / "report.md").read_text()
    (run / "results.jsonl").write_text("")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llmsim: error: report: {run} has no rows yet (results.jsonl is empty: no case finished); "
                   f"nothing to report, any report already there is left as it is")
    assert (run / "report.md").read_text() == before
    other = make_run(tmp_path / "o", rich_rows())  # nor is an empty run a side of a comparison
    assert main(["report", str(other), str(run), "--out", str(tmp_path / "cmp")]) == 2
    assert "has no rows yet" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
    # its only line a row cut by a kill: one line saying so, not a warning and then the error (trial 31)
    (run / "results.jsonl").write_text('{"case": "a", "backend": "roofline", "status": "o')
    assert main(["report", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"llmsim: error: report: {run} has no rows yet (its only line is a row cut by a kill: no case finished); "
        f"nothing to report, any report already there is left as it is")


def test_a_results_jsonl_that_is_a_folder_or_a_fifo_is_said_to_be_one(tmp_path: Path, capsys) -> None:
    """Trial 35: both read 'has no results.jsonl', though the run folder has one, of the wrong kind."""
    import os

    folder_run = tmp_path / "folder-run"
    (folder_run / "results.jsonl").mkdir(parents=True)
    assert main(["report", str(folder_run)]) == 2
    assert f"{folder_run / 'results.jsonl'} is a folder; allowed:" in capsys.readouterr().err
    fifo_run = tmp_path / "fifo-run"
    fifo_run.mkdir()
    os.mkfifo(fifo_run / "results.jsonl")
    assert main(["report", str(fifo_run)]) == 2   # not opened: a FIFO with no writer would block
    assert f"{fifo_run / 'results.jsonl'} is not a regular file; allowed:" in capsys.readouterr().err
