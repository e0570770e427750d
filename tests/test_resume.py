"""Interrupted runs: nothing half-written, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmsim.cli import main

STRATEGIES = [{"name": f"s{i}", "tp": tp, "pp": pp} for i, (tp, pp) in
              enumerate([(1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (1, 4)])]
MODELED = {"name": "resume-test", "workload": {"model": {"preset": "gpt2-small", "layers": 4}, "batch": 16},
           "strategies": STRATEGIES,
           "backends": {"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 8}}}
# nothing else may differ between an interrupted+resumed and a straight run (a row's session is which run of the
# folder wrote it: 1 or 2 after a resume)
VOLATILE = {"error", "session"}


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows), key=lambda r: r["case"])


def _run(path: Path, out: Path, *extra: str, capsys) -> tuple[int, Path]:
    code = main(["run", str(path), "--out", str(out), *extra])
    return code, Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, monkeypatch, capsys) -> None:
    from llmsim_plugins.roofline import RooflineBackend

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MODELED))
    code, straight = _run(path, tmp_path / "a", capsys=capsys)
    assert code == 0

    original = RooflineBackend.run
    calls = {"n": 0}

    def interrupt_on_third(self, case, settings):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, case, settings)

    monkeypatch.setattr(RooflineBackend, "run", interrupt_on_third)
    code = main(["run", str(path), "--out", str(tmp_path / "b"), "--set", "seed=0"])
    out, err = capsys.readouterr()
    partial = Path(out.strip().splitlines()[-1])
    assert code == 130 and len(_rows(partial)) == 2
    assert "interrupted after: 2 ok" in err and "done:" not in err  # not "done" for a run that was stopped
    # the command that continues it, whole on one line, with the same --set (resume refuses another scenario)
    assert f"continue with: llmsim run {path} --set seed=0 --resume {partial}\n" in err, err
    monkeypatch.setattr(RooflineBackend, "run", original)
    code, resumed = _run(path, tmp_path / "b", "--resume", capsys=capsys)
    assert code == 0 and resumed == partial
    assert _rows(resumed) == _rows(straight)
    # each run of the folder is a session: the first wrote 2 rows, the resume the other 4
    sessions = [json.loads(line) for line in (resumed / "sessions.jsonl").read_text().splitlines()]
    assert [s["session"] for s in sessions] == [1, 2] and all(s["environment"]["python"] for s in sessions)
    written = [json.loads(line)["session"] for line in (resumed / "results.jsonl").read_text().splitlines()]
    assert sorted(written) == [1, 1, 2, 2, 2, 2]
    report = (resumed / "report.md").read_text()
    assert ("The rows come from 2 runs of this folder (a --resume adds a session): session 1 (the first run): "
            "2 rows; session 2: 4 rows. Their environments are the same.") in " ".join(report.split()), report[:2000]


@pytest.mark.slow
def test_killed_run_leaves_whole_files_and_resumes(tmp_path: Path) -> None:
    scenario = {"name": "kill-test", "workload": {"model": {"preset": "tiny"}, "batch": 2, "dtype": "float32"},
                "strategies": [{"name": f"s{i}"} for i in range(4)],
                "backends": {"cpu": {"steps": 12, "warmup": 1}}}  # a case lasts seconds: the kill lands mid-run
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "llmsim", "run", str(path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    jsonl = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(out.glob("kill-test/*/results.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:
            jsonl = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert jsonl is not None, "the run never finished a case"
    run_dir = jsonl.parent
    done = len(jsonl.read_text().splitlines())
    assert 1 <= done < 4
    assert len(pd.read_csv(run_dir / "results.csv")) in (done - 1, done)  # whole (atomic), at most one behind
    resumed = subprocess.run([sys.executable, "-m", "llmsim", "run", str(path), "--out", str(out),
                              "--resume", str(run_dir)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["case"] for r in rows) == [f"s{i}" for i in range(4)]  # each case exactly once
    assert len(pd.read_csv(run_dir / "results.csv")) == 4


def test_interrupted_before_the_first_row_is_still_a_run_that_resumes(tmp_path: Path, monkeypatch, capsys) -> None:
    from llmsim_plugins.roofline import RooflineBackend

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MODELED))
    original = RooflineBackend.run

    def interrupt_at_once(self, case, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(RooflineBackend, "run", interrupt_at_once)
    code = main(["run", str(path), "--out", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    partial = Path(out.strip().splitlines()[-1])
    assert code == 130 and (partial / "results.jsonl").read_text() == ""
    # nothing was written: no report to build, and no "rows above" to speak of
    assert "interrupted before any case finished: no result was written" in err, err
    assert "llmsim report" not in err and "rows above" not in err, err
    monkeypatch.setattr(RooflineBackend, "run", original)
    code, resumed = _run(path, tmp_path / "b", "--resume", capsys=capsys)
    assert code == 0 and resumed == partial and len(_rows(resumed)) == len(STRATEGIES)


def test_interrupted_while_the_run_is_set_up_is_still_a_run_that_resumes(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """A Ctrl-C after the run folder is made but before any case starts (the environment being recorded, the
    catalog built) prints the --resume command as a later one does, not a bare "interrupted"."""
    import llmsim.runner

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MODELED))
    original = llmsim.runner.environment_record

    def interrupt_while_recording():
        raise KeyboardInterrupt

    monkeypatch.setattr(llmsim.runner, "environment_record", interrupt_while_recording)
    code = main(["run", str(path), "--out", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    partial = Path(out.strip().splitlines()[-1])
    assert code == 130 and (partial / "scenario.yaml").exists(), err
    assert "interrupted before any case finished" in err and "--resume" in err, err
    monkeypatch.setattr(llmsim.runner, "environment_record", original)
    code, resumed = _run(path, tmp_path / "b", "--resume", capsys=capsys)
    assert code == 0 and resumed == partial and len(_rows(resumed)) == len(STRATEGIES)


@pytest.mark.parametrize(("change", "difference"), [
    ({"name": "another-test"}, "name: 'resume-test' there, 'another-test' now"),
    ({"workload": {**MODELED["workload"], "batch": 32}}, "workload.batch: 16 there, 32 now"),
    # a backend setting changed from its default (left out) is an edit, named with the default it had
    ({"backends": {"roofline": {**MODELED["backends"]["roofline"], "optimizer": "foreach"}}},
     "backends.roofline.optimizer: 'fused' there, 'foreach' now"),
    # trial 42: a strategy list of another length was printed in full, both lists, ~1.6 KB on one line
    ({"strategies": STRATEGIES[:2]}, "strategies: 6 entries: s0, s1, s2, s3, s4, s5 there, 2 entries: s0, s1 now"),
])
def test_resume_refuses_the_run_of_another_or_an_edited_scenario(tmp_path: Path, capsys, change: dict,
                                                                 difference: str) -> None:
    """A run folder's rows come from one scenario: resuming it with another would mix two workloads."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MODELED))
    code, run_dir = _run(path, tmp_path / "a", capsys=capsys)
    assert code == 0
    rows = (run_dir / "results.jsonl").read_text()
    path.write_text(yaml.safe_dump({**MODELED, **change}))
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llmsim: error: --resume: {run_dir} holds a run of another scenario or an edited one "
                   f"({difference}); start a new run instead")
    assert (run_dir / "results.jsonl").read_text() == rows


def test_a_backend_setting_stated_at_its_default_resumes(tmp_path: Path, capsys) -> None:
    """Trial 39: `--set backends.roofline.optimizer=fused` (the default, left out when the run started) was refused
    as an edit of the scenario. Stated or left out, a default is the same run."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MODELED))
    code, run_dir = _run(path, tmp_path / "a", capsys=capsys)
    assert code == 0
    code, resumed = _run(path, tmp_path / "a", "--resume", str(run_dir), "--set", "backends.roofline.optimizer=fused",
                         capsys=capsys)
    assert code == 0 and resumed == run_dir and len(_rows(resumed)) == len(STRATEGIES)


@pytest.mark.slow  # a CLI subprocess per Ctrl-C
@pytest.mark.parametrize(("sent", "pause_s"), [(signal.SIGINT, 0.0), (signal.SIGINT, 0.3), (signal.SIGTERM, 0.0),
                                               (signal.SIGHUP, 0.3)])
def test_ctrl_c_stops_a_measured_run_and_keeps_its_rows(tmp_path: Path, sent: int, pause_s: float) -> None:
    """SIGINT, as a terminal's Ctrl-C sends it, at a few points of a cpu case: the run stops (exit 130,
    no further case started, no report built) and the rows already finished are in the folder. SIGTERM (`kill`)
    and SIGHUP (a closed terminal) the same (trial 32: the run stopped without the --resume line)."""
    scenario = {"name": "sigint-test", "workload": {"model": {"preset": "tiny"}, "batch": 2, "dtype": "float32"},
                "strategies": [{"name": f"s{i}"} for i in range(4)],
                # a case must outlast the pause, so that the signal lands inside the second: 15 steps of ~5 ms were
                # 0.1 s on an idle host (CI54: the third case had started when the signal came); 150 are ~0.8 s
                # idle, ~3 s on a loaded host
                "backends": {"cpu": {"steps": 150, "warmup": 1}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario))
    proc = subprocess.Popen([sys.executable, "-m", "llmsim", "run", str(path), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait until the second case has started
        seen.append(line)
        if line.startswith("[2/4]"):
            break
    time.sleep(pause_s)
    proc.send_signal(sent)
    out, err = proc.communicate(timeout=600)  # a guard against a hang, not a bound on the time it takes
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "[3/4]" not in err and "interrupted: the rows above are saved" in err, err
    run_dir = Path(out.strip().splitlines()[-1])
    assert [r["case"] for r in _rows(run_dir)] == ["s0"]
    assert not (run_dir / "report.html").exists()


def test_interrupted_while_the_report_is_written_names_the_saved_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C after 'done:' (the report's figures take seconds) printed only 'llmsim: interrupted': every row is
    saved, so the line names the folder and the `llmsim report` command that builds the report (trial 23)."""
    import llmsim.report.build as build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "write_report", interrupted)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MODELED))
    assert main(["run", str(path), "--out", str(tmp_path / "a")]) == 130
    err = capsys.readouterr().err
    run_dir = next((tmp_path / "a" / "resume-test").iterdir())
    assert len(_rows(run_dir)) == len(STRATEGIES)
    assert "interrupted while writing the report; every row is saved" in err and f"llmsim report {run_dir}" in err


def test_a_time_limit_raised_on_resume_is_no_edit(tmp_path: Path) -> None:
    """Trial 40: a case that ran out of backends.cpu.timeout_s failed, and the printed --resume command could never
    finish it: raising the limit was refused as an edit. A limit that only ends an unfinished case changes no
    finished row (runner.RESUME_FREE_SETTINGS); any other setting still is an edit."""
    from llmsim.errors import ScenarioError
    from llmsim.runner import check_resumable

    saved = {"name": "t", "backends": {"cpu": {"steps": 3, "timeout_s": 1}}}
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(tmp_path, {"name": "t", "backends": {"cpu": {"steps": 3, "timeout_s": 300}}})
    check_resumable(tmp_path, {"name": "t", "backends": {"cpu": {"steps": 3}}})
    with pytest.raises(ScenarioError, match="backends.cpu.steps: 3 there, 4 now"):
        check_resumable(tmp_path, {"name": "t", "backends": {"cpu": {"steps": 4, "timeout_s": 300}}})
    with pytest.raises(ScenarioError, match="request_timeout_s"):   # vllm's cut requests are counted in the row
        (tmp_path / "scenario.yaml").write_text(yaml.safe_dump({"name": "t", "backends": {"vllm": {}}}))
        check_resumable(tmp_path, {"name": "t", "backends": {"vllm": {"request_timeout_s": 5}}})


def test_a_resume_without_backend_continues_the_backends_the_run_planned(tmp_path: Path, capsys) -> None:
    """A run of `--backend roofline` resumed without --backend continues that run: the scenario's other backend is
    left out, in a note that says how to add it (trial 48: the resume quietly added every other backend's rows)."""
    data = {**MODELED, "strategies": STRATEGIES[:2],
            "backends": {**MODELED["backends"], "cluster": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 8}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    code, run = _run(path, tmp_path / "out", "--backend", "roofline", capsys=capsys)
    assert code == 0 and {r["backend"] for r in _rows(run)} == {"roofline"}
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 0 and {r["backend"] for r in _rows(run)} == {"roofline"} and len(_rows(run)) == 2
    assert (f"llmsim: note: {path}: --resume: continues the backends this folder's run planned (roofline); the "
            f"scenario's cluster left out: to add them, resume with --backend cluster --backend roofline") in \
        " ".join(err.split()), err
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--resume", str(run), "--backend", "cluster"])
    assert code == 0 and {r["backend"] for r in _rows(run)} == {"roofline", "cluster"}
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--resume", str(run)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 0 and f"--resume: every planned case of {run} has a row already: nothing was left to run" in err
