"""The command line: exit codes, one-line errors, the run folder printed last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmsim.cli import main
from tests.conftest import REPO


def _llmsim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmsim", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_bad_scenario_exits_2_with_one_line_and_no_traceback(write_scenario) -> None:
    path = write_scenario(strategies=[{"name": "bad", "tp": 3}])
    proc = _llmsim("validate", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"llmsim: error: {path}: strategies[0].tp: 3 does not divide heads=4 (allowed: 1, 2, 4)"
    assert "Traceback" not in proc.stderr


def test_an_overlap_its_framework_cannot_run_exits_2_naming_the_key(write_scenario, capsys) -> None:
    path = write_scenario(strategies=[{"name": "bad", "tp": 2, "tp_comm_overlap": True}])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llmsim: error: {path}: strategies[0].tp_comm_overlap: ") and "sp: true" in err
    assert "\n" not in err


def test_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read file" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n", "null\n"])
def test_validate_of_a_file_without_a_mapping_names_the_kinds_it_reads(tmp_path: Path, capsys, text: str) -> None:
    """Trial 39: an empty file meant as a hardware catalog was told of a scenario's keys alone. Plans too since
    `validate` reads them (trial 41)."""
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("expected a mapping at the top level (a scenario's name:, workload:, ..., a plan's goal:, "
                        "or a hardware catalog's entries:)") and "\n" not in err
    assert ("the file is empty (or holds only comments)" in err) == (text in ("", "# only a comment\n"))
    assert ("the file holds no value (null)" in err) == (text == "null\n")   # trial 40: it was called empty


def test_resume_of_a_folder_that_does_not_exist_says_so(write_scenario, tmp_path: Path, capsys) -> None:
    """Trial 40: `--resume /nonexistent` said it 'has no results.jsonl'."""
    assert main(["run", str(write_scenario()), "--resume", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (f"llmsim: error: --resume: {tmp_path / 'nowhere'} does not exist "
                                               f"(allowed: a run folder that `llmsim run` wrote, or --resume alone "
                                               f"for the latest run)")


def test_unknown_backend_flag_exits_2(write_scenario, capsys) -> None:
    assert main(["validate", str(write_scenario()), "--backend", "warp-drive"]) == 2
    err = capsys.readouterr().err
    assert "--backend: unknown backend 'warp-drive'; allowed:" in err and "cpu" in err


def test_validate_ok(write_scenario, capsys) -> None:
    assert main(["validate", str(write_scenario())]) == 0
    assert ": ok" in capsys.readouterr().out


def test_schema_is_json_schema_with_the_contract_keys(capsys) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) >= {"name", "workload", "sharing", "strategies", "backends", "seed"}


def test_backends_lists_cpu_as_measured_and_available(capsys) -> None:
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "cpu" in out and "measured" in out and "yes" in out


def test_hardware_lists_cpu_host(capsys) -> None:
    assert main(["hardware"]) == 0
    assert "cpu-host" in capsys.readouterr().out


def test_run_prints_the_run_folder_last(write_scenario, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _llmsim("run", str(write_scenario()), "--out", str(out), "--set", "backends.cpu.steps=1")
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir.parent == out / "tiny-test"
    assert (run_dir / "results.csv").exists() and (run_dir / "report.md").exists()
    assert "[1/1] single on cpu" in proc.stderr


def test_resume_without_an_earlier_run_is_a_clear_error(write_scenario, tmp_path: Path, capsys) -> None:
    assert main(["run", str(write_scenario()), "--out", str(tmp_path / "empty"), "--resume"]) == 2  # bad input
    assert "no earlier run of 'tiny-test'" in capsys.readouterr().err


def test_resume_skips_finished_cases(write_scenario, tmp_path: Path, capsys) -> None:
    path = write_scenario(strategies=[{"name": "a"}, {"name": "b"}], backends={"cpu": {"steps": 1, "warmup": 0}})
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert Path(captured.out.strip().splitlines()[-1]) == run_dir
    assert "on cpu" not in captured.err  # nothing re-ran


def test_a_failed_row_exits_1_after_saving_every_row_and_the_report(write_scenario, tmp_path: Path, capsys,
                                                                     monkeypatch) -> None:
    """Trial 39: a run whose backend raised on a case exited 0, so a script could not tell. The rows and the report
    are written first; `skipped` and `does-not-fit` rows are answers and keep exit 0 (test above)."""
    from llmsim_plugins.roofline import RooflineBackend

    real_run = RooflineBackend.run

    def run(self, case, settings):
        if case.strategy.name == "broken":
            raise RuntimeError("kernel exploded")
        return real_run(self, case, settings)

    monkeypatch.setattr(RooflineBackend, "run", run)
    path = write_scenario(strategies=[{"name": "fine"}, {"name": "broken"}],
                          backends={"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    run_dir = Path(captured.out.strip().splitlines()[-1])
    assert (run_dir / "report.md").exists()
    rows = {r["case"]: r["status"] for r in map(json.loads, (run_dir / "results.jsonl").read_text().splitlines())}
    assert rows == {"fine": "ok", "broken": "failed"}
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("llmsim: error: 1 of 2 rows failed (first: broken on roofline: RuntimeError: kernel "
                           "exploded") and f"--resume {run_dir}" in last


def test_the_resume_command_keeps_the_executor_and_an_all_failed_run_says_so(write_scenario, tmp_path: Path, capsys,
                                                                             monkeypatch) -> None:
    """Trial 40: the printed --resume command dropped --executor / --ray-address (a Ray run resumed locally), and a
    run whose every row failed was told 'the other rows ... are saved'."""
    import argparse

    from llmsim.cli import _resume_command
    from llmsim_plugins.roofline import RooflineBackend

    args = argparse.Namespace(scenario="my scenario.yaml", set=["seed=1"], backend=["roofline"], executor="ray",
                              ray_address="ray://head:10001")
    assert _resume_command(args, Path("/r/x")) == ("llmsim run 'my scenario.yaml' --set seed=1 --backend roofline "
                                                   "--executor ray --ray-address ray://head:10001 --resume /r/x")
    args.executor, args.ray_address = "auto", None
    assert _resume_command(args, Path("/r/x")).endswith("--backend roofline --resume /r/x")

    def run(self, case, settings):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(RooflineBackend, "run", run)
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 of 1 row failed" in last and "; the report is saved; run the failed cases again with: " in last


def test_a_case_that_ran_out_of_time_is_resumed_with_its_limit_raised(write_scenario, tmp_path: Path, capsys,
                                                                     monkeypatch) -> None:
    """Trial 42: the --resume command of a run whose case timed out repeated the too-short limit, and nothing said
    to raise it. A row made by Case.timed_out names the limit; the command gives it doubled, in place of the --set
    that set it."""
    import argparse

    from llmsim.cli import _resume_command
    from llmsim_plugins.roofline import RooflineBackend

    args = argparse.Namespace(scenario="s.yaml", set=["backends.cpu.timeout_s=5", "seed=2"], backend=None,
                              executor="auto", ray_address=None)
    assert _resume_command(args, Path("/r/x"), {"backends.cpu.timeout_s": 10.0}) == (
        "llmsim run s.yaml --set seed=2 --set backends.cpu.timeout_s=10 --resume /r/x")

    def run(self, case, settings):
        return case.timed_out(self, "timed out after 5 s; all 2 ranks were killed", "timeout_s", 5.0)

    monkeypatch.setattr(RooflineBackend, "run", run)
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}})
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--set", "seed=3"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "; 1 case ran out of backends.roofline.timeout_s (5 s): --resume accepts a longer limit; run the failed " \
           "cases again with: " in last, last
    assert last.endswith("--set seed=3 --set backends.roofline.timeout_s=10 --resume " + last.rsplit(" ", 1)[-1])


@pytest.mark.slow
def test_quickstart_runs_as_the_readme_says(tmp_path: Path) -> None:
    proc = _llmsim("run", str(REPO / "scenarios" / "quickstart.yaml"), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["status"] == "ok" for r in rows)


def test_unknown_hardware_is_a_validation_error_before_anything_runs(write_scenario, capsys) -> None:
    path = write_scenario(backends={"cpu": {}, "roofline": {"hardware": "a100"}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: backends.roofline.hardware: unknown device 'a100'; allowed: " in err and "a100-80gb" in err


def test_a_file_that_is_not_utf8_text_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    for verb in (["validate", str(path)], ["plan", str(path)], ["hardware", "--hardware", str(path)]):
        proc = _llmsim(*verb)
        assert proc.returncode == 2, verb
        assert proc.stderr.strip() == (f"llmsim: error: {path}: not UTF-8 text (byte 0xff at offset 0); a scenario, "
                                       f"plan or catalog file is YAML text"), verb


def test_a_damaged_run_folder_is_reported_or_resumed_without_a_traceback(write_scenario, tmp_path: Path,
                                                                          capsys) -> None:
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    jsonl = run_dir / "results.jsonl"
    rows = len(jsonl.read_text().splitlines())
    with jsonl.open("ab") as f:
        f.write(b"\xff\xff\n")                                 # a damaged line, written whole: an error naming it
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"llmsim: error: {jsonl}: line {rows + 1}: not JSON")
    jsonl.write_bytes(jsonl.read_bytes()[:-1])                  # the same line cut by a kill: left out, warned
    assert main(["report", str(run_dir)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--resume", str(run_dir)]) == 0
    (run_dir / "scenario.yaml").write_bytes(b"\xff")
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--resume", str(run_dir)]) == 2
    assert capsys.readouterr().err.strip().endswith("scenario.yaml is not a readable scenario (not UTF-8 text (byte "
                                                    "0xff at offset 0); a scenario, plan or catalog file is YAML "
                                                    "text); start a new run instead")


def test_a_backend_added_by_flag_says_it_runs_with_its_defaults(write_scenario, capsys) -> None:
    path = write_scenario(workload={"model": {"preset": "tiny"}, "batch": 4},
                          backends={"cpu": {"steps": 1}})
    assert main(["validate", str(path), "--backend", "roofline"]) == 2
    err = capsys.readouterr().err
    assert "strategies[0].dp: 8 (omitted: fills the world) does not divide batch=4" in err
    assert ("(backend 'roofline' is not in the file's backends: it runs with its default settings, world size 8; "
            "configure backends.roofline or --set backends.roofline.KEY=VALUE)") in err


def test_a_modeled_backend_added_by_flag_runs_on_the_files_modeled_cluster_and_says_so(write_scenario,
                                                                                        capsys) -> None:
    """Fresh-user trial: `--backend cluster` on a file that sets up only the roofline (h100-sxm) ran on a100-80gb,
    the cluster plugin's default, without a word. It takes the roofline's cluster keys (hardware, nodes,
    devices_per_node, ...) and a note says which hardware it runs on and the key that changes it; a file with no
    modeled backend leaves the defaults, said the same way; a backend the file configures gets no note."""
    from llmsim.config import load_scenario
    from llmsim.plugins import get_plugin_manager
    from llmsim.registry import BackendRegistry
    from llmsim.runner import plan_cases

    roofline = {"hardware": "h100-sxm", "nodes": [1, 2], "devices_per_node": 4, "attention": "math"}
    path = write_scenario(workload={"model": {"preset": "tiny"}, "batch": 8},
                          backends={"cpu": {"steps": 1}, "roofline": roofline})
    assert main(["validate", str(path), "--backend", "cluster"]) == 0
    err = capsys.readouterr().err
    assert (f"llmsim: note: {path}: backends.cluster: not in the file's backends: runs on h100-sxm with the cluster "
            f"of backends.roofline; --set backends.cluster.hardware=NAME runs it on another device") in err
    registry = BackendRegistry.from_manager(get_plugin_manager())
    planned = plan_cases(load_scenario(path), registry, str(path), ["cluster"])
    assert [(p.settings.hardware, p.settings.nodes, p.settings.devices_per_node, p.settings.attention)
            for p in planned] == [("h100-sxm", 1, 4, "math"), ("h100-sxm", 2, 4, "math")]

    bare = write_scenario(workload={"model": {"preset": "tiny"}, "batch": 8}, backends={"cpu": {"steps": 1}},
                          name="bare.yaml")
    assert main(["validate", str(bare), "--backend", "roofline"]) == 0
    assert (f"llmsim: note: {bare}: backends.roofline: not in the file's backends: runs on a100-80gb with its "
            f"default settings; --set backends.roofline.hardware=NAME runs it on another device") in \
        capsys.readouterr().err
    assert main(["validate", str(path), "--backend", "roofline"]) == 0
    assert "note" not in capsys.readouterr().err


def test_a_plan_file_given_to_run_and_a_scenario_given_to_plan_name_the_right_command(capsys) -> None:
    plan, scenario = REPO / "scenarios" / "plan-train-70b.yaml", REPO / "scenarios" / "quickstart.yaml"
    assert main(["run", str(plan)]) == 2
    assert capsys.readouterr().err.strip() == (f"llmsim: error: {plan}: goal: this file has goal: and is read by "
                                               f"`llmsim plan`; run `llmsim plan {plan}`")
    assert main(["plan", str(scenario)]) == 2
    assert capsys.readouterr().err.strip() == (f"llmsim: error: {scenario}: strategies: this file has strategies: and "
                                               f"is read by `llmsim run`; run `llmsim run {scenario}`")


def test_a_hardware_catalog_given_to_run_or_plan_says_what_it_is_and_how_catalogs_are_used(
        tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A fresh-user trial: `llmsim run hw.yaml` (a catalog) said `name: required key is missing`."""
    catalog = tmp_path / "hw.yaml"
    catalog.write_text(yaml.safe_dump({"entries": [{"name": "my-link", "type": "link", "bandwidth_bytes_per_s": 1e11,
                                                    "latency_s": 5e-6, "source": "sheet"}]}))
    assert main(["run", str(catalog), "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == (f"llmsim: error: {catalog}: entries: this file is a hardware catalog, not a "
                                       f"scenario; a scenario uses it by naming it in hardware_catalog: [hw.yaml] "
                                       f"(paths relative to the scenario's folder); `llmsim validate {catalog}` "
                                       f"checks it\n")
    assert not (tmp_path / "runs").exists()
    assert main(["plan", str(catalog), "--out", str(tmp_path / "plans")]) == 2
    assert capsys.readouterr().err == (f"llmsim: error: {catalog}: entries: this file is a hardware catalog, not a "
                                       f"plan; a plan uses it as `llmsim plan PLAN.yaml --hardware {catalog}`; "
                                       f"`llmsim validate {catalog}` checks it\n")


def test_validate_takes_a_plans_no_simulate_as_plan_does_and_refuses_it_elsewhere_in_one_line(
        tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A fresh-user trial: `llmsim validate PLAN --no-simulate` (plan's flag, copied with the command) was argparse's
    'unrecognized arguments'. validate makes the checks `plan` makes first, so it takes the flag with plan's meaning:
    a training plan accepts it (and the command it gives keeps it), a serving plan refuses it as `plan` does."""
    train, serve = REPO / "scenarios" / "plan-train-70b.yaml", REPO / "scenarios" / "plan-serve-slo-8b.yaml"
    assert main(["validate", str(train), "--no-simulate"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"; `llmsim plan {train} --no-simulate` searches it")
    assert main(["validate", str(serve), "--no-simulate"]) == 2
    assert capsys.readouterr().err == (f"llmsim: error: {serve}: --no-simulate: a serving plan is found by simulation, "
                                       f"so it cannot be skipped (allowed: --no-simulate with a training or step-goal "
                                       f"plan only; leave it out here)\n")
    scenario = REPO / "scenarios" / "quickstart.yaml"
    assert main(["validate", str(scenario), "--no-simulate"]) == 2
    assert capsys.readouterr().err == (f"llmsim: error: validate: --no-simulate is for a plan (it skips `llmsim "
                                       f"plan`'s cluster-simulation re-check); {scenario} is a scenario, and validate "
                                       f"runs none of its cases (leave --no-simulate out; a run picks its backends "
                                       f"with --backend)\n")
    catalog = tmp_path / "hw.yaml"
    catalog.write_text(yaml.safe_dump({"entries": [{"name": "my-link", "type": "link", "bandwidth_bytes_per_s": 1e11,
                                                    "latency_s": 5e-6, "source": "sheet"}]}))
    assert main(["validate", str(catalog), "--no-simulate"]) == 2
    assert capsys.readouterr().err == (f"llmsim: error: validate: --no-simulate is for a plan; {catalog} is a "
                                       f"hardware catalog, checked as written (leave --no-simulate out, or edit the "
                                       f"file)\n")


@pytest.mark.parametrize("name", ["plan-train-70b", "plan-serve-slo-8b"])
def test_validate_checks_a_plan_as_plan_does_before_its_search(name: str, capsys) -> None:
    """Trial 41: `validate` refused plan files ('run `llmsim plan`'), so a mistyped device was found only by a plan
    run. It now makes planner.run.check_plan's checks (with --set and --hardware) and searches nothing."""
    plan = REPO / "scenarios" / f"{name}.yaml"
    assert main(["validate", str(plan)]) == 0
    out, err = capsys.readouterr()
    kind = "training" if "train" in name else "serving"
    assert out.strip().startswith(f"{plan}: ok — a {kind} plan over 2 hardware choices, ranked by cost; "), out
    # trial 43: the suggested command dropped --hardware and --set, so it searched another plan, or failed
    assert main(["validate", str(plan), "--set", "top_k=5"]) == 0
    assert f"; `llmsim plan {plan} --set top_k=5` searches it" in capsys.readouterr().out
    assert main(["validate", str(plan), "--set", "rate_tolerance=0.1"]) == 0   # trial 43: said nothing
    err = capsys.readouterr().err
    assert ("rate_tolerance: read by serving plans only" in err) == (kind == "training"), err
    assert main(["validate", str(plan), "--set", "hardware[0].name=h100"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"llmsim: error: {plan}: hardware[0].name: unknown device "
                                                      f"'h100'; allowed: ")
    assert main(["validate", str(plan), "--backend", "roofline"]) == 2
    assert "--backend is for a scenario" in capsys.readouterr().err
    assert main(["validate", str(REPO / "scenarios" / "quickstart.yaml"), "--hardware", str(plan)]) == 2
    assert "--hardware is for a plan" in capsys.readouterr().err


@pytest.mark.parametrize("probed", [False, True])
def test_hardware_describes_cpu_host_as_this_machine(probed: bool, capsys, monkeypatch) -> None:
    """Issue 15 item 17: cpu-host was described from a Xeon datasheet whatever the host; its numbers are
    this machine's probes once measured, and only the power per core is an estimate from another CPU."""
    import llmsim.measure.host_probes as probes
    from llmsim.environment import cpu_model

    rates = probes.HostRates(peak_flops_per_s=2.0e11, stream_bytes_per_s=1e10, stream_large_bytes_per_s=1e10,
                             op_overhead_s=1e-5)
    monkeypatch.setattr(probes, "cached_rates", lambda dtype, cache_dir=None: rates if probed else None)
    assert main(["hardware"]) == 0
    row = capsys.readouterr().out.split("cpu-host", 1)[1].split("a100-40gb", 1)[0]
    first_line = row.splitlines()[0]
    text = " ".join(row.replace("│", " ").split())  # the source column wraps over several lines
    assert f"this machine ({cpu_model()})" in text
    assert ("│ 0.2 " in first_line) is probed and ("(none yet)" in text) is not probed
    assert "an estimate from another CPU: Intel ARK Xeon Platinum 8480+" in text


@pytest.mark.parametrize("backend, strategy, batch, key, message", [
    ({"topology": "3x5x7"}, {}, 256, "backends.roofline.topology", "3x5x7 (105 chips) is not a tpu-v5p slice; allowed: "),
    ({"topology": "4x4x8", "mesh": {"qq": "z"}}, {}, 256, "backends.roofline.mesh.qq", "unknown mesh axis"),
    ({"topology": "4x4x8", "mesh": {"tp": "x"}}, {"tp": 2}, 256, "backends.roofline.mesh.tp",
     "dimensions 'x' hold 4 chips but tp = 2; allowed for tp = 2 on 4x4x8: no set of its whole dimensions "
     "(strategy 's' on backend 'roofline')"),
    ({"topology": "4x4x4", "nodes": 2}, {}, 64, "strategies[0].dp",
     "128 (omitted: fills the world) does not divide batch=64 (micro_batch=1); backend 'roofline' has 128 devices, "
     "so allowed: workload.batch a multiple of 128, or tp*pp*cp larger so that dp = 128/(tp*pp*cp) is one of 1, 2, "
     "4, 8, 16, 32, 64 (2 slices of tpu-v5p topology 4x4x4, 64 chips each)"),
])
def test_tpu_topology_and_mesh_errors_exit_2_at_validation(tmp_path: Path, capsys, backend: dict, strategy: dict,
                                                            batch: int, key: str, message: str) -> None:
    """Issue 19: these passed `validate` and became a skipped row per case."""
    import yaml
    path = tmp_path / "tpu.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tpu", "workload": {"model": {"preset": "gpt2-small"}, "mode": "train", "batch": batch},
        "strategies": [{"name": "s", **strategy}], "backends": {"roofline": {"hardware": "tpu-v5p", **backend}}}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}: {key}: {message}" in err, err


@pytest.mark.parametrize("argv", [["run", "scenarios/quickstart.yaml", "--executor", "foo"], ["run"], ["plan"]])
def test_a_bad_flag_or_missing_argument_is_one_line_exit_2(argv: list[str], capsys) -> None:
    # argparse printed its usage block before the error (2-5 lines)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("llmsim: error: llmsim ") and "--help" in err


def test_new_plugin_refuses_the_name_of_an_installed_backend(tmp_path: Path, capsys) -> None:
    # `new-plugin cpu` scaffolded a package whose entry point collides with the built-in cpu backend
    assert main(["new-plugin", "cpu", "--dir", str(tmp_path / "p")]) == 2
    assert "already installed" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_a_serving_strategy_larger_than_the_backend_names_the_strategy(tmp_path: Path, capsys) -> None:
    # tp x pp of one replica beyond the backend's devices was blamed on serving.replicas ("at most 0 replicas")
    code = main(["validate", str(REPO / "scenarios" / "serve-8b.yaml"), "--set", "strategies[0].pp=2"])
    err = capsys.readouterr().err
    assert code == 2 and "strategies[0]" in err and "0 replicas" not in err


def test_a_plan_error_found_while_planning_is_one_line() -> None:
    # the re-check progress bar, never started, printed an empty line on stderr before the error
    done = subprocess.run([sys.executable, "-m", "llmsim", "plan", str(REPO / "scenarios" / "plan-train-70b.yaml"),
                           "--set", "hardware[0].name=a100"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("llmsim: error:")


def test_the_plan_program_leaves_its_garbage_to_the_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`llmsim plan` as the program (main() reads sys.argv: the console script) turns the cyclic collector off to
    the process's exit (cli._collector_off_to_exit) and freezes what is alive at the exit; called with a list (from
    Python, whose process goes on) it leaves the collector as it was."""
    import atexit
    import gc

    import yaml

    data = {"name": "gc-plan", "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 8},
            "goal": {"tokens": 1e6, "deadline_days": 1}, "hardware": [{"name": "a100-80gb"}],
            "limits": {"max_devices": 2}, "simulate": False}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    args = ["plan", str(path), "--out", str(tmp_path / "out")]
    assert gc.isenabled()
    assert main(args) == 0
    assert gc.isenabled()  # a call from Python: as it was
    registered: list = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(sys, "argv", ["llmsim", *args])
    try:
        assert main() == 0
        assert not gc.isenabled()  # the program: off to the exit
        assert gc.freeze in registered
    finally:
        gc.enable()
    capsys.readouterr()


def test_a_full_disk_is_one_line_and_exit_1_not_a_traceback(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    """The machine's OSError (ENOSPC while a row is saved) is no input error (exit 2) and no bug (traceback)."""
    import errno

    from llmsim import results

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "results.jsonl"))

    monkeypatch.setattr(results.ResultStore, "add", full)
    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml"
    code = main(["run", str(scenario), "--backend", "roofline", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "No space left on device" in err[0] and "results.jsonl" in err[0], err
    assert "Traceback" not in err[0]


# dtype float4 (fp4): bad input is one line, exit 2; measured backends skip it; a weight-only run says so
def _fp4_scenario(tmp_path: Path, backends: dict, **workload: object) -> Path:
    import yaml

    data = {"name": "fp4", "strategies": [{"name": "single"}], "backends": backends,
            "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 8, "dtype": "float4", **workload}}
    path = tmp_path / "fp4.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("backends, workload, key, words", [
    ({"roofline": {"hardware": "h100-sxm"}}, {}, "workload.dtype", "needs FP4 tensor cores"),
    ({"roofline": {"hardware": "b200"}}, {"dtype": "bfloat16", "fp4": {"recipe": "nvfp4"}}, "workload.fp4",
     "fp4 needs dtype: float4"),
    ({"roofline": {"hardware": "b200"}}, {"fp4": {"recipe": "fp4"}}, "workload.fp4.recipe", "nvfp4"),
    ({"roofline": {"hardware": "b200"}}, {"fp4": {"recipe": "mxfp4"}}, "workload.fp4.recipe",
     "allowed in training: nvfp4"),
])
def test_float4_bad_input_is_one_line_exit_2(tmp_path: Path, capsys, backends: dict, workload: dict, key: str,
                                             words: str) -> None:
    path = _fp4_scenario(tmp_path, backends, **workload)
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmsim: error: {path}: {key}: ") and words in lines[0]


def test_float4_inference_on_h100_is_priced_weight_only_with_a_note(tmp_path: Path, capsys) -> None:
    import pandas as pd

    path = _fp4_scenario(tmp_path, {"roofline": {"hardware": "h100-sxm"}, "cpu": {"steps": 1, "warmup": 0}},
                         mode="decode", decode_tokens=4)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "backends.roofline: device 'h100-sxm' has no FP4 tensor cores" in captured.err
    assert "weight-only" in captured.err
    rows = pd.read_csv(Path(captured.out.strip().splitlines()[-1]) / "results.csv").set_index("backend")
    assert rows.loc["roofline", "status"] == "ok"
    assert rows.loc["cpu", "status"] == "skipped" and "runs no FP4 GEMMs" in rows.loc["cpu", "error"]


def test_schema_lists_float4_and_the_fp4_recipes(capsys) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    workload = schema["$defs"]["Workload"]["properties"]
    assert "float4" in workload["dtype"]["enum"]
    assert schema["$defs"]["Fp4Spec"]["properties"]["recipe"]["enum"] == ["nvfp4", "mxfp4"]


def test_a_closed_stdout_ends_the_command_quietly(monkeypatch, capsys) -> None:
    """`llmsim schema | head -c 10`: the reader leaves, the write fails with EPIPE; exit 1 with nothing said (as
    rich's consoles do for the commands that print through them), not a "machine failure" line advising --resume
    (trial 24)."""
    import llmsim.cli as cli

    def closed(args):  # noqa: ANN001, ANN202 - the command, writing into a pipe whose reader is gone
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_schema", closed)
    assert main(["schema"]) == 1
    assert capsys.readouterr().err == ""


def test_a_terminal_without_unicode_gets_question_marks_not_a_traceback() -> None:
    """PYTHONIOENCODING=ascii (or a C locale): llmsim's dashes and signs print as "?" (trial 24: a traceback)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml"
    done = subprocess.run([sys.executable, "-m", "llmsim", "validate", str(scenario)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and ": ok ? " in done.stdout, done.stdout


def test_an_argument_a_command_does_not_take_points_at_that_commands_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["schema", "extra"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "llmsim: error: llmsim schema: unrecognized arguments: extra (see: llmsim schema --help)"


@pytest.mark.parametrize("args, option", [
    (["run", "scenarios/quickstart.yaml", "--out", ""], "--out"),
    (["plan", "scenarios/plan-serve-8b.yaml", "--out", " "], "--out"),
    (["report", "reports", "--out", ""], "--out"),
    (["calibrate", "reports", "--out", ""], "--out"),
    (["new-plugin", "x", "--dir", ""], "--dir"),
    (["hardware", "--hardware", ""], "--hardware"),   # trial 28: '.: cannot read file: Is a directory'
    (["plan", "scenarios/plan-serve-8b.yaml", "--hardware", ""], "--hardware"),
    (["validate", "scenarios/plan-serve-8b.yaml", "--hardware", ""], "--hardware"),
])
def test_an_empty_output_path_is_one_line_exit_2(capsys, args: list[str], option: str) -> None:
    """Trial 27: `run --out ''` wrote the run into the current folder as if no folder were named."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    wanted = "a hardware catalog file name" if option == "--hardware" else "a folder or file name"  # trial 43
    assert err == (f"llmsim: error: llmsim {args[0]}: argument {option}: an empty path; allowed: {wanted} (or leave "
                   f"the option out) (see: llmsim {args[0]} --help)")


@pytest.mark.parametrize("key", ["top_k", "limits.max_devices"])
def test_a_plan_count_past_2_31_is_one_line_exit_2(capsys, key: str) -> None:
    """Trial 28: a 400-digit top_k ran, 're-checking the best 9999...' (every digit); a plan's counts are bounded as a
    scenario's are (strict.MAX_DIMENSION)."""
    plan = Path(__file__).resolve().parents[1] / "scenarios" / "plan-serve-8b.yaml"
    assert main(["plan", str(plan), "--set", f"{key}=2147483648"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"llmsim: error: {plan}: {key}: 2147483648: out of range; allowed: >= 1 and <= 2147483647"


@pytest.mark.parametrize("verb", ["run", "report", "plan"])
def test_an_output_folder_that_is_a_file_is_one_line_exit_2(tmp_path: Path, capsys, verb: str) -> None:
    """Trial 28: `report RUN --out RUN/results.csv` failed late with '.../results.csv/compare/...: Not a directory'."""
    taken = tmp_path / "results.csv"
    taken.write_text("x\n")
    first = {"run": "scenarios/quickstart.yaml", "report": str(tmp_path), "plan": "scenarios/plan-serve-8b.yaml"}[verb]
    with pytest.raises(SystemExit) as exit_:
        main([verb, first, "--out", str(taken)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llmsim: error: llmsim {verb}: argument --out: {taken}: a file, not a folder; allowed: a folder "
                   f"(made if missing) (see: llmsim {verb} --help)")


def test_version_prints_the_installed_version(capsys) -> None:  # noqa: ANN001
    """Trial 31: `llmsim --version` said "the following arguments are required: COMMAND"."""
    from importlib.metadata import version
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"llmsim {version('llmsim')}"
