"""`llmsim report` on a run folder whose scenario.yaml is damaged (cut short, edited to be invalid, not YAML,
another scenario's): one line naming the file and the key, exit 2, and the report of the rows still built
from results.jsonl (which is fine) with the problem written in it. It used to be read silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmsim.cli import main
from llmsim.config import parse_scenario
from llmsim.report.run import load_run
from llmsim.runner import saved_scenario
from tests.report.helpers import make_run, row

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "r", [row("single", step=1.0), row("dp", step=0.6, n=2)])


def _cut_short(text: str) -> str:
    """The first lines of the file: still YAML, still a valid scenario with defaults for the rest."""
    return "\n".join(text.splitlines()[:4]) + "\n"


@pytest.mark.parametrize("damage, key, says", [
    (_cut_short, "workload.dtype", "'bfloat16', but the rows in results.jsonl ran dtype 'float32'"),
    (lambda t: t.replace("batch: 4", "batch: -4"), "workload.batch", "-4: out of range; allowed: >= 1"),
    (lambda t: t.replace("batch: 4", "batch: 8"), "workload.batch", "8, but the rows in results.jsonl ran batch 4"),
    (lambda t: t[:len(t) // 2] + "\n  - [", None, "not valid YAML"),
    (lambda t: "", None, "expected a mapping at the top level"),
    (lambda t: t.replace("name: report-test", "name: other"), "name",
     "'other', but results.jsonl holds rows of scenario 'report-test'"),
    (lambda t: t.replace("name: dp", "name: tp2"), "strategies", "has no strategy 'dp', which results.jsonl ran"),
])
def test_a_damaged_saved_scenario_is_one_line_exit_2_and_the_report_is_still_built(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, key: str | None, says: str) -> None:
    run = _run(tmp_path)
    saved = run / "scenario.yaml"
    saved.write_text(damage(saved.read_text()))
    assert main(["report", str(run)]) == 2
    captured = capsys.readouterr()
    assert captured.out.split() == [str(run / "report.md"), str(run / "report.html")]  # the rows' report is written
    err = captured.err.strip()
    where = f"{saved}: {key}: " if key else f"{saved}: "
    assert err.count("\n") == 0 and err.startswith(f"llmsim: error: {where}") and says in err, err
    assert err.endswith("; the report is built from results.jsonl alone")
    report = (run / "report.md").read_text()
    assert "The saved scenario cannot be used: " in report and "| dp " in report
    assert load_run(run).scenario == {}  # nothing half-valid is read from it


def test_a_missing_saved_scenario_is_named_and_a_sound_one_passes(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert "cannot be used" not in (run / "report.md").read_text()
    (run / "scenario.yaml").unlink()
    assert main(["report", str(run)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{run / 'scenario.yaml'}: missing; the report is built from "
                                                    f"results.jsonl alone")


def test_a_comparison_names_the_damaged_run_and_is_still_written(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a = make_run(tmp_path / "a", [row("x", step=1.0)])
    b = make_run(tmp_path / "b", [row("x", step=0.5)])
    (b / "scenario.yaml").write_text("name: [")
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    captured = capsys.readouterr()
    assert (Path(captured.out.strip().splitlines()[-1]) / "report.md").is_file()
    assert captured.err.strip().startswith(f"llmsim: error: {b / 'scenario.yaml'}: not valid YAML")


SHIPPED_SCENARIOS = [p for p in sorted((REPO / "scenarios").glob("*.yaml"))
                     if "goal" not in yaml.safe_load(p.read_text())]  # plan files (a goal) are not scenarios


@pytest.mark.parametrize("path", SHIPPED_SCENARIOS, ids=lambda p: p.name)
def test_every_scenario_as_a_run_folder_saves_it_reads_back_as_sound(path: Path) -> None:
    """The check must not refuse what `llmsim run` writes: every shipped scenario, saved as a run folder saves
    it, validates again."""
    data = yaml.safe_load(path.read_text())
    scenario = parse_scenario(data, str(path))
    again = parse_scenario(yaml.safe_load(yaml.safe_dump(saved_scenario(scenario), sort_keys=False)), "saved")
    assert saved_scenario(again) == saved_scenario(scenario)


def test_the_saved_scenario_names_its_files_so_that_they_resolve_from_the_run_folder(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 29: a trace `path: ok.csv` and `hardware_catalog: [cal.yaml]` were saved as written, so
    `llmsim validate RUN/scenario.yaml` could not read the trace (the files are not copied into the run)."""
    import shutil
    from llmsim.hardware import load_catalog
    where = tmp_path / "scenario"
    where.mkdir()
    (where / "ok.csv").write_text("arrival_s,input_tokens,output_tokens\n0,8,4\n0.5,8,4\n")
    base = load_catalog().devices["a100-80gb"].model_dump(mode="json")
    (where / "cal.yaml").write_text(yaml.safe_dump({"entries": [dict(base, name="my-a100")]}))
    (where / "s.yaml").write_text(yaml.safe_dump({
        "name": "saved-paths", "workload": {"model": {"preset": "tiny"}}, "strategies": [{"name": "tp1"}],
        "hardware_catalog": ["cal.yaml"],
        "serving": {"requests": 2, "arrival": {"kind": "trace", "path": "ok.csv"}},
        "backends": {"roofline": {"hardware": "my-a100"}}}))
    assert main(["run", str(where / "s.yaml"), "--out", str(tmp_path / "out")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    saved = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    assert saved["serving"]["arrival"]["path"] == str((where / "ok.csv").resolve())
    assert saved["hardware_catalog"] == [str((where / "cal.yaml").resolve())]
    shutil.copytree(run_dir, tmp_path / "elsewhere")         # the run folder read from anywhere
    assert main(["validate", str(tmp_path / "elsewhere" / "scenario.yaml")]) == 0
    assert main(["run", str(where / "s.yaml"), "--out", str(tmp_path / "out"), "--resume", str(run_dir)]) == 0
    # a folder saved before the paths were saved absolute (as written, relative) still resumes
    old_style = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    old_style["hardware_catalog"], old_style["serving"]["arrival"]["path"] = ["cal.yaml"], "ok.csv"
    (run_dir / "scenario.yaml").write_text(yaml.safe_dump(old_style, sort_keys=False))
    assert main(["run", str(where / "s.yaml"), "--out", str(tmp_path / "out"), "--resume", str(run_dir)]) == 0
    capsys.readouterr()
    (where / "cal.yaml").rename(tmp_path / "cal.yaml")     # moved since: not "no such file in RUN (relative ...)"
    assert main(["validate", str(tmp_path / "elsewhere" / "scenario.yaml")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"hardware_catalog[0]: '{(where / 'cal.yaml').resolve()}': no such "
                                                    f"file (moved or deleted since?)")


def test_a_resume_whose_trace_changed_since_the_run_read_it_is_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """The saved scenario names its trace by path, so an edited trace resumed a folder with another request
    list than its finished rows were served from: the run folder keeps each file's SHA-256 (inputs.json), and a
    resume whose file changed is refused, the rows kept; the same content (rewritten, touched) resumes."""
    import json
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0,8,4\n0.5,8,4\n")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "trace-digest", "workload": {"model": {"preset": "tiny"}}, "strategies": [{"name": "tp1"}],
        "serving": {"requests": 2, "arrival": {"kind": "trace", "path": "t.csv"}},
        "backends": {"roofline": {"hardware": "a100-80gb"}}}))
    assert main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    inputs = json.loads((run_dir / "inputs.json").read_text())
    assert set(inputs) == {"serving.arrival.path"}
    assert inputs["serving.arrival.path"]["path"] == str(trace.resolve())
    assert inputs["serving.arrival.path"]["bytes"] == len(trace.read_bytes())
    trace.write_text(trace.read_text())                     # the same content: resumes
    assert main(["run", str(scenario), "--out", str(tmp_path / "out"), "--resume", str(run_dir)]) == 0
    capsys.readouterr()
    rows = (run_dir / "results.jsonl").read_text()
    trace.write_text("arrival_s,input_tokens,output_tokens\n0,8,4\n0.5,16,4\n")
    assert main(["run", str(scenario), "--out", str(tmp_path / "out"), "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llmsim: error: --resume: {run_dir} holds a run of another scenario or an edited one "
                          f"(serving.arrival.path: {trace.resolve()} changed since the run read it: 51 bytes, sha256 ")
    assert err.endswith("52 bytes, sha256 22370ab99793... now); start a new run instead") and "\n" not in err
    assert (run_dir / "results.jsonl").read_text() == rows
    (run_dir / "inputs.json").unlink()                      # a folder from before inputs.json: compares paths only
    assert main(["run", str(scenario), "--out", str(tmp_path / "out"), "--resume", str(run_dir)]) == 0
