"""Every text a user hands llmsim (a scenario, plan or catalog file, a --set value, a run folder's saved
scenario) goes through llmsim.userinput: any problem is one line naming where, exit 2, never a traceback
(issue 15 items 3-5: a --set of '[1' printed a 56-line ParserError and exited 1; 5,000 nested brackets
ended in a RecursionError; `report` on a folder that is not a run and `new-plugin` errors exited 1; an
--out that cannot be written printed a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsim.cli import main
from llmsim.errors import EXIT_BAD_INPUT, ScenarioError
from llmsim.userinput import MAX_DEPTH, MAX_TEXT_BYTES, MAX_VALUES, parse_yaml, read_yaml
from llmsim.results import read_rows
from tests.conftest import REPO

QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
PLAN = REPO / "scenarios" / "plan-serve-8b.yaml"
HEAD = "name: x\nworkload: {model: {preset: tiny}}\n"


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one stderr line (returned without the prefix)."""
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("llmsim: error: "), err
    return err[len("llmsim: error: "):]


@pytest.mark.parametrize("verb, path, key", [("validate", QUICKSTART, "workload.model.heads"),
                                             ("plan", PLAN, "goal.tokens_per_s")])
def test_an_invalid_set_value_is_one_line_naming_the_file_and_key(capsys, verb: str, path: Path, key: str) -> None:
    err = one_line_error(capsys, [verb, str(path), "--set", f"{key}=[1"])
    assert err == (f"{path}: {key}: --set value '[1' is not valid YAML: column 3: expected ',' or ']', "
                   f"but got '<stream end>'")


@pytest.mark.parametrize("text, where", [("devices: [a\n", "line 2, column 1"),
                                         ("name: x\ndevices: [a\n", "line 3, column 1"),
                                         ("a: 1\na: 2\n", "line 2")])
def test_a_files_yaml_error_names_its_line_even_in_a_one_line_file(tmp_path: Path, capsys, text: str,
                                                                   where: str) -> None:
    """Trial 28: a one-line file's error said only `column 1` (the --set value's form), which pointed at nothing."""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    err = one_line_error(capsys, ["validate", str(path)])
    assert err.startswith(f"{path}: ") and f": {where}: " in err, err


@pytest.mark.parametrize("value, problem", [("!!python/object:os.system", "could not determine a constructor"),
                                            ("*nowhere", "found undefined alias 'nowhere'")])
def test_tags_and_aliases_in_a_set_value_are_one_line(capsys, value: str, problem: str) -> None:
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", f"workload.batch={value}"])
    assert err.startswith(f"{QUICKSTART}: workload.batch: --set value {value!r} is not valid YAML: column 1: {problem}")


def test_a_thread_count_beyond_any_host_is_one_line(capsys) -> None:  # noqa: ANN001
    """Trial 33: 100000 threads validated and then ran OpenMP out of memory (exit 1)."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", "backends.cpu.threads=100000"])
    assert err == f"{QUICKSTART}: backends.cpu.threads: 100000: out of range; allowed: >= 1 and <= 1024"


@pytest.mark.parametrize("override, said", [
    ("backends.cpu.threads=true", "backends.cpu.threads: true is a boolean, not a value of this key"),
    ("backends.cpu.steps='5'", "backends.cpu.steps: '5' is text, not a number (write it without quotes)"),
    ("backends.cpu.timeout_s='600'", "backends.cpu.timeout_s: '600' is text, not a number"),
])
def test_a_measured_backend_s_settings_are_as_strict_as_a_scenario_s(capsys, override: str, said: str) -> None:  # noqa: ANN001
    """Trial 34: `threads: true` ran 1 thread and `threads: '2'` 2, where `workload.batch: true` was refused: the
    measured backends' settings are StrictModels now, as the modeled backends' are."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", override])
    assert err.startswith(f"{QUICKSTART}: {said}"), err


def _bomb(levels: int, target: str) -> str:
    """Anchors that each hold two aliases of the previous one: 2**levels values in a few hundred bytes."""
    lines = ["x0: &a0 [1, 2]"] + [f"x{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\n{target}: *a{levels - 1}\n"


@pytest.mark.parametrize("text, message", [
    (HEAD + "strategies: " + "[" * 5000 + "]" * 5000 + "\n",
     f"line 3, column {13 + MAX_DEPTH - 1}: nested more than {MAX_DEPTH} levels deep"),
    (HEAD + "seed: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", f"nested more than {MAX_DEPTH} levels deep"),
    (HEAD + _bomb(40, "strategies"), f"stands for more than {MAX_VALUES:,} values once aliases are expanded"),
    (_bomb(40, "extra") + HEAD, f"stands for more than {MAX_VALUES:,} values once aliases are expanded"),
    ("a: &a [*a]\n", "line 1: an alias refers to the value it is inside"),
    ("a: 1\nb: 2\nx: &a [*a]\n", "line 3: an alias refers to the value it is inside"),   # trial 41: said line 1
    # deep through aliases: each anchor nests the previous one a level deeper
    ("d0: &d0 [1]\n" + "".join(f"d{i}: &d{i} [*d{i - 1}]\n" for i in range(1, 2 * MAX_DEPTH)),
     f"nested more than {MAX_DEPTH} levels deep once aliases are expanded"),
])
def test_pathological_yaml_is_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for argv in (["validate", str(path)], ["plan", str(path)], ["hardware", "--hardware", str(path)]):
        err = one_line_error(capsys, argv)
        assert err.startswith(f"{path}: ") and message in err, (argv, err)


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path, capsys) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(HEAD + "# " + "x" * MAX_TEXT_BYTES + "\n")
    err = one_line_error(capsys, ["validate", str(path)])
    assert err == f"{path}: more than {MAX_TEXT_BYTES:,} bytes is too large (a scenario is a few kB)"
    with pytest.raises(ScenarioError, match="too large"):
        parse_yaml("x" * (MAX_TEXT_BYTES + 1), "--set")


def test_the_limits_leave_room_for_real_files() -> None:
    """The shipped catalog and every scenario and plan are far inside all three limits."""
    nested = "a: " + "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2) + "\n"
    assert parse_yaml(nested, "f")["a"]
    many = "a: [" + ", ".join(["1"] * (MAX_VALUES - 10)) + "]\n"
    assert len(parse_yaml(many, "f")["a"]) == MAX_VALUES - 10
    for path in [*(REPO / "scenarios").glob("*.yaml"), REPO / "llmsim" / "hardware" / "catalog.yaml"]:
        assert isinstance(read_yaml(path), dict)


def test_a_saved_scenario_beyond_the_limits_is_a_resume_error_not_a_traceback(write_scenario, tmp_path: Path,
                                                                             capsys) -> None:
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    (run_dir / "scenario.yaml").write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    err = one_line_error(capsys, ["run", str(path), "--out", str(tmp_path / "out"), "--resume", str(run_dir)])
    # trial 29: it said why only in the report ("nested more than 64 levels deep"), not here
    assert err.endswith("scenario.yaml is not a readable scenario (line 1, column 70: nested more than 64 levels "
                        "deep (a scenario is about 6)); start a new run instead")
    # the report does without the saved scenario, and says in one line that it is damaged (exit 2: bad input)
    assert main(["report", str(run_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out.split() == [str(run_dir / "report.md"), str(run_dir / "report.html")]
    assert captured.err.strip() == (f"llmsim: error: {run_dir / 'scenario.yaml'}: line 1, column 70: nested more than "
                                    f"64 levels deep (a scenario is about 6); the report is built from results.jsonl "
                                    f"alone")


@pytest.mark.parametrize("text, where", [("\x00\x01", "line 1, column 1: control character 0x00"),
                                         ("name: x\x07\n", "line 1, column 8: control character 0x07"),
                                         ("name: x\nseed: 1\x1b\n", "line 2, column 8: control character 0x1b")])
def test_a_control_character_is_one_line_naming_where(tmp_path: Path, capsys, text: str, where: str) -> None:
    """Trial 40: a NUL or BEL in a file or --set value raised yaml's ReaderError through to a traceback (exit 1)."""
    path = tmp_path / "ctl.yaml"
    path.write_text(text)
    for verb in (["validate", str(path)], ["plan", str(path)], ["hardware", "--hardware", str(path)]):
        assert one_line_error(capsys, verb) == (f"{path}: not valid YAML: {where}; YAML text allows "
                                                f"tab, newline and printable characters only")
    quickstart = REPO / "scenarios" / "quickstart.yaml"
    assert one_line_error(capsys, ["validate", str(quickstart), "--set", "name=a\x01b"]).endswith(
        "name: --set value 'a\\x01b' is not valid YAML: column 2: control character 0x01; YAML text allows tab, "
        "newline and printable characters only")


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}/empty"], "report: {tmp}/empty has no results.jsonl (is it a run folder?)"),
    (["report", "{tmp}/nowhere"], "report: {tmp}/nowhere does not exist (allowed: a run folder that `llmsim run` wrote)"),
    (["new-plugin", "Not A Name"], "new-plugin: 'Not A Name' is not a valid plugin name"),
    (["new-plugin", "good-name", "--dir", "{tmp}"], "new-plugin: {tmp} already exists and is not empty"),
    (["new-plugin", "good-name", "--dir", "{tmp}/a-file/sub"], "--dir: {tmp}/a-file/sub: Not a directory"),
    (["calibrate", "{tmp}"], "{tmp}: not a run folder"),
    # trial 29: a run's results file given itself, and a plan's folder, each said what they are
    (["report", "{tmp}/run/results.jsonl"], "report: {tmp}/run/results.jsonl is a run's results file; allowed: its "
                                            "folder (llmsim report {tmp}/run)"),
    (["report", "{tmp}/plan"], "report: {tmp}/plan is a plan's folder (plan.md and plan.html are its report"),
    # trial 34: the scenario's folder above its timestamped runs
    (["report", "{tmp}"], "report: {tmp} is not a run folder but holds 1 run folder; allowed: one of them (the "
                          "newest: llmsim report {tmp}/run)"),
    (["report", "{tmp}/run/results.csv"], "report: {tmp}/run/results.csv is a file of a run folder; allowed: the "
                                          "folder (llmsim report {tmp}/run)"),
    # trial 42: a file outside any run folder said it 'has no results.jsonl'
    (["report", "{tmp}/run", "{tmp}/a-file"], "report: {tmp}/a-file is a file, not a run folder; allowed: a run "
                                              "folder (with results.jsonl) that `llmsim run` wrote"),
])
def test_bad_command_line_input_exits_2_with_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text("")
    (tmp_path / "run" / "results.csv").write_text("")
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.yaml").write_text("name: p\n")
    err = one_line_error(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert err.startswith(message.format(tmp=tmp_path)), err


@pytest.mark.parametrize("verb, path", [("run", QUICKSTART), ("plan", PLAN)])
def test_an_out_folder_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path: Path, capsys, verb: str,
                                                                               path: Path) -> None:
    """A file where the folder should be (ENOTDIR: root ignores permission bits, so tests cannot use them).
    One line and nothing else: no progress line of a case or a screened configuration came before it."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = one_line_error(capsys, [verb, str(path), "--out", str(blocker / "sub"), "--backend", "roofline"]
                         if verb == "run" else [verb, str(path), "--out", str(blocker / "sub"), "--no-simulate"])
    assert err.startswith(f"--out: {blocker}/sub/") and err.endswith(": Not a directory")


@pytest.mark.parametrize("argv, message", [
    (["report", ""], "llmsim report: argument RUN_DIR: an empty path; allowed: a file or folder name"),
    (["calibrate", ""], "llmsim calibrate: argument RUN_DIR: an empty path; allowed: a file or folder name"),
    (["validate", " "], "llmsim validate: argument SCENARIO.yaml: an empty path; allowed: a file or folder name"),
    (["plan", ""], "llmsim plan: argument PLAN.yaml: an empty path; allowed: a file or folder name"),
])
def test_an_empty_path_argument_is_one_line(capsys, argv: list[str], message: str) -> None:  # noqa: ANN001
    """Trial 31: `report ''` and `calibrate ''` read the current folder, `validate ''` said 'cannot read file'
    naming nothing: the argument parser refuses an empty path (its one line, exit 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"llmsim: error: {message}"), err


def test_calibrate_out_is_named_by_its_flag(tmp_path: Path, capsys) -> None:
    """Trial 31: `calibrate RUN --out /tmp` said "calibrate: /tmp: Is a directory", `new-plugin abc --dir X`
    "new-plugin: X: ...": each names its flag, as run's and plan's --out do."""
    from tests.calibrate.helpers import synthetic_run
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    assert one_line_error(capsys, ["calibrate", str(run), "--out", str(tmp_path)]) == \
        f"--out: {tmp_path}: Is a directory"
    # trial 34: a missing folder read "No such file or directory" of the file
    assert one_line_error(capsys, ["calibrate", str(run), "--out", str(tmp_path / "no" / "c.yaml")]) == \
        f"--out: {tmp_path / 'no' / 'c.yaml'}: its folder {tmp_path / 'no'} does not exist (calibrate writes one " \
        f"file; make the folder first)"
    # trial 35: --out naming what calibrate reads replaced it (the run's rows, the user's catalog), exit 0
    rows = (run / "results.jsonl").read_text()
    assert one_line_error(capsys, ["calibrate", str(run), "--out", str(run / "results.jsonl")]).startswith(
        f"--out: {run / 'results.jsonl'} is a file of the run folder {run} this calibration reads")
    assert (run / "results.jsonl").read_text() == rows
    (tmp_path / "hw.yaml").write_text("entries: []\n")
    assert one_line_error(capsys, ["calibrate", str(run), "--hardware", str(tmp_path / "hw.yaml"), "--out",
                                   str(tmp_path / "hw.yaml")]) == \
        f"--out: {tmp_path / 'hw.yaml'} is a --hardware file this calibration reads; allowed: another file"
    # new-plugin --dir: in test_bad_command_line_input_exits_2_with_one_line


def test_counts_are_said_in_the_right_number(write_scenario, capsys) -> None:
    """Issue 15 item 18: '1 strategies × 1 backend settings = 1 cases'."""
    from llmsim.wording import count

    assert [count(1, "strategy"), count(2, "strategy"), count(1, "backend setting"), count(2048.0, "device")] == \
        ["1 strategy", "2 strategies", "1 backend setting", "2,048 devices"]
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}})
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok — 1 strategy × 1 backend setting = 1 case"
    err = one_line_error(capsys, ["validate", str(path), "--set", "strategies[0].dp=2"])
    assert err.endswith("= 2 but backend 'roofline' has 1 device (allowed: dp 1 (= 1 / tp*pp*cp), or omit dp to fill the "
                        "world)")


def test_serving_rates_are_counted_as_rates_not_backend_settings(capsys) -> None:
    """A serving scenario: 1 strategy on roofline and cluster at 3 rates is 2 backend settings × 3 rates (it
    said "1 strategy × 6 backend settings = 6 cases")."""
    path = REPO / "scenarios" / "serve-8b.yaml"
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok — 1 strategy × 2 backend settings × 3 rates = 6 cases"
    assert main(["validate", str(path), "--backend", "cluster", "--set", "serving.arrival.rate=4"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok — 1 strategy × 1 backend setting × 1 rate = 1 case"


@pytest.mark.parametrize("override", ["backends.roofline.nodes=[0]", "backends.roofline.nodes=x",
                                      "backends.roofline.nodes=[1, x]", "backends.roofline.nodes={a: 1}",
                                      "backends.cpu.steps=[1]", "sharing.lora=3", "strategies[0].sharing=1",
                                      "strategies[0].zero=4", "workload.model.kv_heads=x"])
def test_no_internal_pydantic_name_reaches_a_message(capsys, override: str) -> None:
    """Issue 15 item 6: `nodes.constrained-int` (the union branch pydantic tried) leaked into a message."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", override])
    for internal in ("constrained", "function-after", "function-before", "list[", "union", "url"):
        assert internal not in err, err
    assert err.startswith(f"{QUICKSTART}: {override.split('=')[0]}"), err


# -- a key written twice (issue 15 leftovers: PyYAML silently keeps the last) ------------------------------

@pytest.mark.parametrize("text, line, key, first", [
    (HEAD + "seed: 1\nseed: 2\n", 4, "seed", 3),
    ("name: x\nworkload:\n  model: {preset: tiny}\n  batch: 2\n  mode: train\n  batch: 4\n", 6, "batch", 4),
    # in a flow mapping, and in a list element
    (HEAD + "strategies: [{name: a, tp: 1, tp: 2}]\n", 3, "tp", 3),
])
def test_a_duplicate_key_is_one_line_naming_file_line_and_key(tmp_path: Path, capsys, text: str, line: int,
                                                              key: str, first: int) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    for argv in (["validate", str(path)], ["plan", str(path)], ["hardware", "--hardware", str(path)]):
        err = one_line_error(capsys, argv)
        assert err.startswith(f"{path}: line {line}: duplicate key {key!r} (first at line {first})"), (argv, err)


def test_a_duplicate_key_in_a_set_value_is_one_line(capsys) -> None:
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", "workload.model={preset: tiny, preset: x}"])
    assert err.startswith(f"{QUICKSTART}: workload.model: column 16: duplicate key 'preset' (first at column 2)")


def test_merge_keys_may_still_be_overridden() -> None:
    """`<<: *base` then a key of the base's: overriding a merged key is what merging is for, not a duplicate."""
    data = parse_yaml("base: &b {tp: 1, pp: 2}\nthis: {<<: *b, tp: 4}\n", "f.yaml")
    assert data["this"] == {"tp": 4, "pp": 2}


def test_the_shipped_files_have_no_duplicate_key() -> None:
    from llmsim.hardware import CATALOG_FILE

    for path in [CATALOG_FILE, *sorted((REPO / "scenarios").glob("*.yaml"))]:
        read_yaml(path)


# -- a sweep list that repeats a value (issue 15 leftovers: `nodes: [1, 1]` ran the same case twice) --------

@pytest.mark.parametrize("path, override, key, said", [
    (QUICKSTART, "backends.roofline.nodes=[1, 2, 1]", "backends.roofline.nodes", "[1, 2, 1]: 1 is repeated"),
    (QUICKSTART, "backends.roofline.nodes=[1, 1]", "backends.roofline.nodes", "[1, 1]: 1 is repeated"),
    (REPO / "scenarios" / "serve-8b.yaml", "serving.arrival.rate=[2, 4, 2.0, 4]", "serving.arrival.rate",
     "[2, 4, 2.0, 4]: 2, 4 are repeated"),
])
def test_a_sweep_list_that_repeats_a_value_is_one_line(capsys, path: Path, override: str, key: str,
                                                       said: str) -> None:
    for verb in ("validate", "run"):
        err = one_line_error(capsys, [verb, str(path), "--set", override])
        assert err == f"{path}: {key}: {said}; a sweep runs each value once (allowed: distinct values)", err


# -- --set paths are strict (issue 15 leftovers: `strategies[-1].tp` said "'-1' is not inside a mapping";
# `workload..batch` was taken as workload.batch) ------------------------------------------------------------

@pytest.mark.parametrize("key, message", [
    ("strategies[-1].tp", "--set: [-1]: a list index counts from [0] at the start, negative indices are not "
                          "supported; the last element of strategies is [0]"),
    ("strategies[5].tp", "--set: no list element [5]: strategies has 1 element (allowed: [0] to [0])"),
    ("workload..batch", "--set: empty part of the key at column 10 (before '.'); each part between dots is a name "
                        "(e.g. workload.batch)"),
    (".workload.batch", "--set: empty part of the key at column 1 (before '.')"),
    ("workload.batch.", "--set: empty part of the key at column 16 (before the end)"),
    ("strategies[x].tp", "--set: '[x].tp' at column 11: a list index is [N], a whole number from 0"),
    ("strategies[0]tp", "--set: 't' at column 14: expected '.' or '[' between the parts of a key"),
    ("[0].tp", "--set: a key starts with a name, not a list index"),
    ("strategies.tp", "--set: 'tp' is not inside a mapping (strategies is a list: give an index, [0])"),
    # an index written as a dotted name said "'0' is not inside a mapping": the key in brackets is named
    ("strategies.0.tp", "--set: strategies is a list: its elements are written with the index in brackets, "
                        "strategies[0].tp"),
    ("workload.batch[0]", "--set: [0]: workload.batch is not a list"),
    # trial 28: a space in or around the key said 'empty part of the key'
    (" workload.batch ", "--set: a space at column 1: a key has none (write KEY=VALUE with no space in or around "
                         "the key"),
    ("workload. batch", "--set: a space at column 10: a key has none"),
])
def test_a_set_path_that_names_no_key_is_one_line(capsys, key: str, message: str) -> None:
    for verb, path in (("validate", QUICKSTART), ("run", QUICKSTART)):
        err = one_line_error(capsys, [verb, str(path), "--set", f"{key}=2"])
        assert err.startswith(f"{path}: {key}: {message}"), err


def test_a_set_path_with_an_empty_part_in_a_plan_is_one_line(capsys) -> None:
    err = one_line_error(capsys, ["plan", str(PLAN), "--set", "limits..max_devices=8"])
    assert err.startswith(f"{PLAN}: limits..max_devices: --set: empty part of the key at column 8"), err


# -- non-finite numbers (issue 15 leftovers: `arrival: {rate: .inf}` and .nan were accepted) -------------

@pytest.mark.parametrize("override, key, said", [
    ("serving.arrival.rate=.inf", "serving.arrival.rate", "inf: allowed: a rate > 0 in requests/s (finite)"),
    ("serving.arrival.rate=.nan", "serving.arrival.rate", "nan: allowed: a rate > 0 in requests/s (finite)"),
    ("serving.arrival.rate=[2, .inf]", "serving.arrival.rate", "[2, inf]: allowed: a rate > 0 in requests/s (finite)"),
    # an integer no float holds passes `< inf`: it named pydantic's union branches (rate.constrained-float)
    pytest.param("serving.arrival.rate=1" + "0" * 400, "serving.arrival.rate", "1000000000", id="rate-400-digits"),
    pytest.param("serving.arrival.rate=[2, 1" + "0" * 400 + "]", "serving.arrival.rate", "[2, 1000000",
                 id="rate-list-400-digits"),
    ("serving.slo={ttft_s: .inf, tpot_s: 0.05}", "serving.slo.ttft_s", "inf: expected a finite number"),
    ("serving.duration_s=.inf", "serving.duration_s", "inf: expected a finite number"),
    ("serving.memory_utilization=.nan", "serving.memory_utilization", "nan: expected a finite number"),
    ("backends.cluster.jitter=.nan", "backends.cluster.jitter", "nan: expected a finite number"),
])
def test_a_non_finite_number_is_one_line(capsys, override: str, key: str, said: str) -> None:
    path = REPO / "scenarios" / "serve-8b.yaml"
    err = one_line_error(capsys, ["validate", str(path), "--set", override])
    assert err.startswith(f"{path}: {key}: {said}"), err


@pytest.mark.parametrize("override, key, said", [
    ("backends.cpu.timeout_s=.inf", "backends.cpu.timeout_s", "inf"),
    ("backends.cpu={steps: 2, timeout_s: .nan}", "backends.cpu.timeout_s", "nan"),
    ("backends.cuda={sample_interval_s: .inf}", "backends.cuda.sample_interval_s", "inf"),
    ("backends.cuda={timeout_s: .nan}", "backends.cuda.timeout_s", "nan"),
    ("backends.xla={steps: .inf}", "backends.xla.steps", "inf"),
    ("backends.roofline.nodes=[1, .nan]", "backends.roofline.nodes[1]", "nan"),
])
def test_a_non_finite_backend_setting_is_one_line(capsys, override: str, key: str, said: str) -> None:
    """Measured backends' timing settings took .inf (`timeout_s: .inf` passed `gt=0`) and .nan: every backend's
    settings, a plugin's too, are refused before the plugin sees them, as serving rates are."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", override])
    # with what the key takes (trial 37: a backend setting's said nothing of it, a scenario key's did)
    assert err.startswith(f"{QUICKSTART}: {key}: {said}: expected a finite number; allowed: "), err


@pytest.mark.parametrize("module, settings, field", [("cpu", "CpuSettings", "timeout_s"),
                                                     ("cuda", "CudaSettings", "sample_interval_s"),
                                                     ("vllm", "VllmSettings", "request_timeout_s")])
def test_the_built_in_settings_models_refuse_non_finite_numbers_themselves(module: str, settings: str,
                                                                          field: str) -> None:
    """Built in Python, not read from a file (a plugin author's test, the planner): the model itself refuses."""
    import importlib

    from pydantic import ValidationError

    model = getattr(importlib.import_module(f"llmsim_plugins.{module}"), settings)
    for value in (float("inf"), float("nan")):
        with pytest.raises(ValidationError, match="finite number"):
            model(**{field: value})



@pytest.mark.parametrize("text, value", [("1e9", 1e9), ("5e-3", 5e-3), ("-2E+4", -2e4), ("1.5e3", 1.5e3),
                                         ("1e", "1e"), ("e9", "e9"), ("10", 10), ("a1e9", "a1e9")])
def test_scientific_notation_without_a_dot_is_a_number(text: str, value: object) -> None:
    """YAML 1.2's float: PyYAML (YAML 1.1) reads `1e9` as text, and a rate of 1e9 failed as 'not a number'."""
    got = parse_yaml(text, None)
    assert got == value and type(got) is type(value)


def test_a_plans_goal_rate_is_blamed_for_a_run_too_large(tmp_path: Path, capsys) -> None:
    plan = REPO / "scenarios" / "plan-serve-slo-8b.yaml"
    err = one_line_error(capsys, ["plan", str(plan), "--set", "goal.request_rate=1e9", "--out", str(tmp_path)])
    assert "goal.request_rate: 1e+09 requests/s for duration_s=60 s is 6e+10 requests" in err


@pytest.mark.parametrize("setting, key", [('workload.batch="4"', "workload.batch"),
                                          ("strategies[0].tp='2'", "strategies[0].tp")])
def test_a_quoted_number_is_refused_not_read_as_a_number(capsys, setting: str, key: str) -> None:
    """pydantic's lax mode reads the text "4" as 4; a quoted number is a slip (a template's quoting), named."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", setting])
    assert f"{key}: " in err and "is text, not a number (write it without quotes)" in err


def test_a_word_for_a_number_is_refused_without_a_hint_about_quotes(capsys) -> None:
    """`--set workload.batch=abc` has no quotes to remove: the error says it is text, not a number, and what the key
    takes (its bounds, as for a number out of them)."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", "workload.batch=abc"])
    assert "workload.batch: " in err and "'abc' is text, not a number; allowed: >= 1" in err and "quotes" not in err
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", "seed=abc"])
    assert err.endswith("seed: 'abc' is text, not a number; allowed: >= 0 and <= 18446744073709551615")


@pytest.mark.parametrize("verb, path", [("validate", "scenarios/quickstart.yaml"), ("plan", "scenarios/plan-train-70b.yaml")])
def test_a_set_that_creates_a_block_the_file_lacks_says_so(capsys, verb: str, path: str) -> None:  # noqa: ANN001
    """--set serving.X on a file without a serving block creates one; its missing keys are blamed on that --set."""
    assert main([verb, str(REPO / path), "--set", "serving.kv_cache_dtype=float8"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "serving.arrival: required key is missing" in err
    assert "no serving: block; --set serving.kv_cache_dtype=float8 created one" in err
    # a key of a block the file has keeps its plain message
    assert main([verb, str(REPO / path), "--set", "workload.batch=x"]) == EXIT_BAD_INPUT
    assert "created one" not in capsys.readouterr().err


def test_a_set_that_creates_a_nested_block_says_so(capsys) -> None:  # noqa: ANN001
    """--set workload.model.moe.X on a dense model creates a moe block deep in the file; its missing experts are
    blamed on that --set, not left as a bare 'required key is missing'."""
    set_ = "workload.model.moe.expert_weight_dtype=mxfp4"
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", set_])
    assert "workload.model.moe.experts: required key is missing" in err
    assert f"no workload.model.moe: block; --set {set_} created one" in err


@pytest.mark.parametrize("value, expected", [
    ("null", "workload.batch: null: expected an integer"),       # YAML's spelling, not Python's None
    # trial 40: `--set name=` said only 'null: expected a string'
    ("", "workload.batch: null: expected an integer; a key with nothing after it (`KEY:` in a file, `--set KEY=`) "
         "is null: write the value"),
    ("0", "workload.batch: 0: out of range; allowed: >= 1 and <= 2147483647"),
    # the trial: pydantic's 'got a number with a fractional part' / 'exceeded maximum size'
    ("2.5", "workload.batch: 2.5: expected a whole number; allowed: >= 1 and <= 2147483647"),
    ("1e30", "workload.batch: 1e+30: too large for a whole number; allowed: >= 1 and <= 2147483647"),
])
def test_a_wrong_number_names_its_allowed_range_and_yaml_spelling(capsys, value: str, expected: str) -> None:  # noqa: ANN001
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", f"workload.batch={value}"])
    assert expected in err


def test_text_inside_an_integer_list_names_the_item_and_its_range(capsys) -> None:  # noqa: ANN001
    """The trial: `--set 'search.disaggregation.prefill=[x]'` printed pydantic's 'unable to parse string as an
    integer'; text where a number belongs inside a list says what is expected and the allowed range."""
    err = one_line_error(capsys, ["plan", str(REPO / "scenarios" / "plan-serve-llama-pd.yaml"),
                                  "--set", "search.disaggregation.prefill=[x]"])
    assert "search.disaggregation.prefill[0]: 'x': expected a whole number; allowed: >= 1" in err


def test_a_list_item_out_of_range_names_the_bound(capsys) -> None:  # noqa: ANN001
    """stage_layers' items are bounded by the list's item type: the bound is found through list[...] | None."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", "strategies[0].pp=2",
                                  "--set", "strategies[0].stage_layers=[-1, 3]"])
    assert "strategies[0].stage_layers[0]: -1: out of range; allowed: >= 0" in err


SERVE = REPO / "scenarios" / "serve-8b.yaml"
KERNELS = "flash, cudnn, flash3, trtllm-mmha, fused-softmax, math"
SERVING_KERNELS = "allowed with serving: flash, cudnn, flash3, trtllm-mmha"


@pytest.mark.parametrize("path, override, said", [
    # a list where one value belongs says so, with the values allowed, whichever key and block it is
    (QUICKSTART, "backends.roofline.attention=[flash]", f"['flash']: expected one value, not a list; allowed: {KERNELS}"),
    (SERVE, "backends.roofline.attention=[flash]", f"['flash']: expected one value, not a list; {SERVING_KERNELS}"),
    (SERVE, "backends.roofline.attention={a: 1}", f"{{'a': 1}}: expected one value, not a mapping; {SERVING_KERNELS}"),
    (SERVE, "backends.roofline.attention=flash4", f"'flash4': unknown attention kernel; {SERVING_KERNELS}"),
    (QUICKSTART, "backends.roofline.all_reduce=[nccl]", "['nccl']: expected one value, not a list; allowed: nccl, "
                                                        "vllm"),
    (QUICKSTART, "backends.roofline.hardware=[h100-sxm]", "['h100-sxm']: expected one device name, not a list; allowed: "
                                                          "cpu-host, a100-40gb, a100-80gb, a100-80gb-pcie, h100-sxm,"),
    (SERVE, "backends.roofline.hardware=3", "3: expected one device name; allowed: cpu-host, a100-40gb,"),
    (QUICKSTART, "backends.roofline.inter_node=[pcie4]", "['pcie4']: expected one link name, not a list; allowed: pcie4, "
                                                         "pcie5,"),
])
def test_a_wrong_value_of_a_backend_setting_is_one_line_with_the_allowed_values(capsys, path: Path, override: str,
                                                                               said: str) -> None:
    """New-user trial: `attention: [flash]` said 'unknown attention kernel' in a serving scenario where `hardware:
    [h100-sxm]` said 'expected one string' with no names: each now says what was expected and what is allowed."""
    key = override.split("=")[0]
    err = one_line_error(capsys, ["validate", str(path), "--backend", "roofline", "--set", override])
    assert err.startswith(f"{path}: {key}: {said}"), err


@pytest.mark.parametrize("sets, expected", [
    (["strategies[0].ep=8"], "strategies[0].etp: ep*etp = 8*8 = 64 expert ranks do not divide the tp=8 ranks of a "
                             "serving replica (etp unset means tp"),
    (["strategies[0].ep=16"], "strategies[0].ep: 16 does not divide tp=8"),
    (["strategies[0].ep=2", "strategies[0].etp=8"], "allowed etp: 1, 2, 4"),
    # the trial: `ep: 3` offered 16, 32 and 64, each then refused for tp 8
    (["strategies[0].ep=3"], "strategies[0].ep: 3 does not divide experts=256 (allowed in a serving replica of tp=8: "
                             "1, 2, 4, 8)"),
])
def test_a_serving_expert_grid_larger_than_the_replica_is_refused(capsys, sets: list[str], expected: str) -> None:  # noqa: ANN001
    """tp 8 with ep 8 and etp unset (= tp) asked 64 expert ranks of 8 GPUs and priced each expert split 64 ways
    (13 GB of DeepSeek-V3 weights a GPU instead of ~85): refused, naming the key and the etp that fits."""
    args = ["validate", str(REPO / "scenarios" / "serve-deepseek-v3.yaml")]
    for item in sets:
        args += ["--set", item]
    assert expected in one_line_error(capsys, args)


def test_attention_dp_in_training_is_refused_for_that_before_its_shape(capsys) -> None:  # noqa: ANN001
    """A training scenario with attention_dp said '2 does not divide tp=1' first: the reason that stays whatever
    tp is (serving only) comes first."""
    err = one_line_error(capsys, ["validate", str(REPO / "scenarios" / "moe-strategies.yaml"),
                                  "--set", "strategies[0].attention_dp=2"])
    assert "strategies[0].attention_dp: 2: attention data parallelism is modeled for serving" in err


def test_a_run_keeps_its_notes_in_the_folder_and_the_report(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """The weight-only float4 note (and every note of how a case is priced) reached only stderr: the run folder
    now keeps it (notes.txt) and report.md lists it under 'About this run'."""
    assert main(["run", str(REPO / "scenarios" / "serve-llama-fp4-b200.yaml"), "--backend", "roofline",
                 "--set", "backends.roofline.hardware=h100-sxm", "--set", "serving.requests=20",
                 "--out", str(tmp_path)]) == 0
    run = next((tmp_path / "serve-llama-fp4-b200").iterdir())
    notes = (run / "notes.txt").read_text().splitlines()
    assert len(notes) == 1 and notes[0].startswith("backends.roofline: device 'h100-sxm'") and "weight-only" in notes[0]
    assert f"Note: {notes[0]}" in (run / "report.md").read_text()
    capsys.readouterr()


def test_a_trace_replays_notes_are_kept_in_the_run_folder(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """The trace notes (a request longer than the context rejected, more requests asked than the trace holds)
    reached stderr only, while every other note went to notes.txt too (trial 23)."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0,100,10\n0.5,9000,10\n")
    assert main(["run", str(REPO / "scenarios" / "serve-8b.yaml"), "--backend", "roofline",
                 "--set", f"serving.arrival={{kind: trace, path: {trace}}}", "--set", "serving.lengths=null",
                 "--out", str(tmp_path / "out")]) == 0
    run = next((tmp_path / "out" / "serve-8b").iterdir())
    notes = (run / "notes.txt").read_text()
    assert "serving.arrival.path: 1 of the trace's 2 requests is longer than the context" in notes
    assert "serving.requests: 200 asked but the trace has 2 requests" in notes
    capsys.readouterr()


def test_drawn_lengths_that_send_some_requests_past_the_context_are_said(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 27: a uniform prompt of 100-9,000 tokens on an 8,192-token context rejected 21 of 200 requests without
    a word (a trace's long requests had a note). The note gives the share the lengths draw, kept with the run; the
    run's rejected_context counts the run's own."""
    out = tmp_path / "out"
    assert main(["run", str(REPO / "scenarios" / "serve-8b.yaml"), "--backend", "roofline", "--set",
                 "serving.arrival.rate=8", "--set", "serving.lengths.input={kind: uniform, min: 100, max: 9000}",
                 "--out", str(out)]) == 0
    run = next((out / "serve-8b").iterdir())
    notes = (run / "notes.txt").read_text()
    assert "serving.lengths: about 11.6% of the requests these lengths draw are longer than the context" in notes
    [row] = read_rows(run)
    assert 0.05 < row["rejected_context"] / 200 < 0.2
    capsys.readouterr()
    assert main(["validate", str(REPO / "scenarios" / "serve-8b.yaml")]) == 0   # lengths that all fit: no note
    assert "serving.lengths" not in capsys.readouterr().err


@pytest.mark.parametrize("cluster", ["{}", "null", "{jitter: 0.05}"])
def test_a_modeled_backend_without_hardware_beside_one_with_is_said(capsys, cluster: str) -> None:  # noqa: ANN001
    """Trial 28: `cluster: {}` ran on a100-80gb beside a roofline on h100-sxm without a word."""
    path = REPO / "scenarios" / "serve-8b.yaml"
    assert main(["validate", str(path), "--set", f"backends.cluster={cluster}"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert ("backends.cluster: no hardware given: runs on a100-80gb (its default) while backends.roofline runs on "
            "h100-sxm; --set backends.cluster.hardware=h100-sxm compares the same device") in err
    assert main(["validate", str(path)]) == 0     # both name their hardware: nothing to say
    assert "no hardware given" not in capsys.readouterr().err


def test_a_straggler_slower_than_a_failed_device_is_one_line(capsys) -> None:  # noqa: ANN001
    """Trial 28: slowdown 1e300 gave an `ok` row with a TTFT of 1e299 s."""
    path = REPO / "scenarios" / "serve-8b.yaml"
    err = one_line_error(capsys, ["validate", str(path), "--set",
                                  "backends.cluster.straggler={rank: 0, slowdown: 1e300}"])
    assert err == f"{path}: backends.cluster.straggler.slowdown: 1e+300: out of range; allowed: >= 1 and <= 1000"


@pytest.mark.parametrize("value, said", [("abc", "'abc': expected a number; allowed: >= 1 and <= 1000"),
                                         ("'2x'", "'2x': expected a number; allowed: >= 1 and <= 1000")])
def test_text_for_a_nested_backend_number_names_its_range(capsys, value: str, said: str) -> None:  # noqa: ANN001
    """Trial 28: `straggler: {slowdown: abc}` said "expected a number" without what the key takes, unlike a
    scenario key or a backend's own number."""
    path = REPO / "scenarios" / "serve-8b.yaml"
    err = one_line_error(capsys, ["validate", str(path), "--set",
                                  f"backends.cluster.straggler={{rank: 0, slowdown: {value}}}"])
    assert err == f"{path}: backends.cluster.straggler.slowdown: {said}"
    err = one_line_error(capsys, ["validate", str(path), "--set", "backends.cluster.straggler={rank: x}"])
    assert err == f"{path}: backends.cluster.straggler.rank: 'x': expected a whole number; allowed: >= 0"


@pytest.mark.parametrize("value, said", [
    ("true", "true is a boolean, not a value of this key (YAML reads true/false/yes/no/on/off as booleans); "
             "allowed: >= 0 and <= 600"),
    ("'2'", "'2' is text, not a number (write it without quotes); allowed: >= 0 and <= 600"),
    ("2000", "2000: out of range; allowed: >= 0 and <= 600")])
def test_a_boolean_or_quoted_number_names_the_range_of_the_key(capsys, value: str, said: str) -> None:  # noqa: ANN001
    """Trial 36: `energy_window_s: true` or `'2'` said what was wrong but not what the key takes, unlike `abc`; and
    a window of 2000 (milliseconds meant) would have run untimed steps for 33 minutes."""
    path = REPO / "scenarios" / "gpu-model-check.yaml"
    err = one_line_error(capsys, ["validate", str(path), "--set", f"backends.cuda.energy_window_s={value}"])
    assert err == f"{path}: backends.cuda.energy_window_s: {said}"


@pytest.mark.parametrize("kernel, said", [("math", "math has no FP8 path"),
                                          ("flash", "FP8 attention is Transformer Engine's cuDNN fused kernel (FlashAttention-2 has "
                                                    "no FP8 path)"), ("cudnn", None)])
def test_fp8_attention_under_a_kernel_without_an_fp8_path_is_said(capsys, kernel: str, said: str | None) -> None:  # noqa: ANN001
    """The trial: fp8.attention float8 under attention math was silently 16-bit, and under flash (FA2) priced FP8
    without a word; each now says how it is priced (cudnn: nothing to say)."""
    assert main(["validate", str(QUICKSTART), "--backend", "roofline", "--set", "workload.dtype=float8",
                 "--set", "workload.fp8={attention: float8}", "--set", "backends.roofline.hardware=h100-sxm",
                 "--set", f"backends.roofline.attention={kernel}"]) == 0
    err = capsys.readouterr().err
    if said is None:
        assert "backends.roofline.attention" not in err
    else:
        assert f"backends.roofline.attention: {said}" in " ".join(err.split())


def test_sglang_kernel_counts_named_for_a_model_they_were_not_counted_for_are_said(capsys) -> None:  # noqa: ANN001
    """The trial: engine_kernels sglang on a dense Llama changed nothing without a word."""
    assert main(["validate", str(REPO / "scenarios" / "serve-8b.yaml"),
                 "--set", "serving.scheduler.engine_kernels=sglang"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "serving.scheduler.engine_kernels: sglang: SGLang's launches are counted for a DeepSeek-V3-shaped" in err
    assert main(["validate", str(REPO / "scenarios" / "serve-deepseek-v3.yaml"),
                 "--set", "serving.scheduler.engine_kernels=sglang"]) == 0
    assert "engine_kernels" not in capsys.readouterr().err


@pytest.mark.parametrize("key, value, expected", [
    ("ep", "2", "serving.disaggregation.decode.ep: 2: expert parallelism needs a mixture-of-experts model "
                "(workload.model.moe); this one is dense (allowed: 1)"),
    ("attention_dp", "2", "serving.disaggregation.decode.attention_dp: 2: attention data parallelism is modeled for "
                          "a mixture-of-experts model only (this one is dense; allowed: 1)"),
])
def test_a_dense_models_disaggregated_side_refuses_an_expert_layout(capsys, key: str, value: str,  # noqa: ANN001
                                                                    expected: str) -> None:
    err = one_line_error(capsys, ["validate", str(REPO / "scenarios" / "serve-llama-pd.yaml"),
                                  "--set", f"serving.disaggregation.decode.{key}={value}"])
    assert expected in err


def test_a_plans_unknown_kv_transfer_link_lists_the_catalogs_links(capsys) -> None:  # noqa: ANN001
    err = one_line_error(capsys, ["plan", str(REPO / "scenarios" / "plan-serve-llama-pd.yaml"),
                                  "--set", "search.disaggregation.kv_transfer.link=nvlink9"])
    assert "search.disaggregation.kv_transfer.link: unknown link 'nvlink9'; allowed: " in err and "nvlink4" in err


@pytest.mark.parametrize("setting, key", [("serving.slo.ttft_s=inf", "serving.slo.ttft_s"),
                                          ("serving.memory_utilization=nan", "serving.memory_utilization")])
def test_unquoted_inf_or_nan_text_is_not_told_to_drop_its_quotes(capsys, setting: str, key: str) -> None:
    """`--set x=inf` is YAML text (YAML's infinity is .inf): the hint 'write it without quotes' misled (trial 23);
    no key takes a non-finite number anyway."""
    err = one_line_error(capsys, ["validate", str(REPO / "scenarios" / "serve-8b.yaml"), "--set", setting])
    assert f"{key}: " in err and "is text, not a number" in err and "without quotes" not in err


@pytest.mark.parametrize("link, said", [
    ("nvlink4", "'nvlink4' is h200's link inside a node, but the 16 devices of the prefill and decode instances "
                "span 2 nodes of 8"),
    ("ici-v5p", "'ici-v5p' is neither of h200's links (inside a node nvlink4, between nodes ib-ndr400x8)"),
    ("ib-ndr400x8", None)])
def test_a_kv_link_the_instances_would_not_use_is_said(capsys, link: str, said: str | None) -> None:  # noqa: ANN001
    """kv_transfer.link took NVLink between two nodes (KV transfers 7x faster) or a TPU's ICI on H200 without a
    word (trial 23b): priced as named, with a note."""
    assert main(["validate", str(REPO / "scenarios" / "serve-deepseek-v3-pd.yaml"), "--backend", "roofline",
                 "--set", f"serving.disaggregation.kv_transfer.link={link}"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    if said is None:
        assert "kv_transfer.link" not in err
    else:
        assert "serving.disaggregation.kv_transfer.link (backends.roofline): " + said in err


def test_text_for_a_backend_number_names_its_range(capsys) -> None:  # noqa: ANN001
    """Trial 28: `backends.cluster.jitter=abc` said only that it is text; a scenario key says its range too."""
    path = REPO / "scenarios" / "serve-8b.yaml"
    err = one_line_error(capsys, ["validate", str(path), "--set", "backends.cluster.jitter=abc"])
    assert err == f"{path}: backends.cluster.jitter: 'abc' is text, not a number; allowed: >= 0 and < 1"


def test_a_value_where_a_free_mapping_belongs_lists_no_other_keys(capsys) -> None:  # noqa: ANN001
    """Trial 28: `backends=null` listed the scenario's top-level keys as what backends allows; a mapping of names
    no model holds (backends) lists nothing, a model's mapping (serving.slo) still its keys."""
    path = REPO / "scenarios" / "serve-8b.yaml"
    assert one_line_error(capsys, ["validate", str(path), "--set", "backends=null"]) == (
        f"{path}: backends: null: expected a mapping of keys")
    assert one_line_error(capsys, ["validate", str(path), "--set", "serving.slo=3"]).startswith(
        f"{path}: serving.slo: 3: expected a mapping of keys; allowed: ttft_s, tpot_s, percentile")


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 31: `llmsim validate FIFO` blocked in open() until a writer came (forever); a FIFO as a scenario or
    as a serving trace is one line, exit 2, before any open."""
    import os

    import yaml
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["validate", str(fifo)]) == 2
    assert capsys.readouterr().err.strip() == (f"llmsim: error: {fifo}: a FIFO, not a regular file: give a file "
                                               f"(a pipe would be waited on)")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({"name": "t", "workload": {"model": {"preset": "tiny"}},
                                        "strategies": [{"name": "tp1"}],
                                        "serving": {"requests": 2, "arrival": {"kind": "trace", "path": "fifo"}},
                                        "backends": {"roofline": {"hardware": "a100-80gb"}}}))
    assert main(["validate", str(scenario)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"serving.arrival.path: {fifo}: a FIFO, not a regular file: "
                                                    f"give a file (a pipe would be waited on)")


def test_a_device_is_refused_without_the_pipe_s_reason(capsys) -> None:  # noqa: ANN001
    """Trial 33: /dev/null was refused "(a pipe would be waited on)": true of a FIFO, not of a device."""
    assert main(["validate", "/dev/null"]) == 2
    assert capsys.readouterr().err.strip() == "llmsim: error: /dev/null: a device, not a regular file: give a file"


def test_a_fifo_in_a_run_folder_or_as_calibrates_out_is_not_waited_on(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Trial 32: a FIFO as the run folder's inputs.json, as a file whose digest it keeps, or as `calibrate --out`
    was opened and waited on forever."""
    import os

    from llmsim.run_inputs import changed_input, digest
    from tests.calibrate.helpers import synthetic_run
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert digest(str(fifo)) == {"path": str(fifo)}                 # no content read: compares nothing
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "inputs.json")
    assert changed_input(run, {"serving": {"arrival": {"path": str(fifo)}}}) is None
    (tmp_path / "m").mkdir()
    measured = synthetic_run(tmp_path / "m", "train", 32, 2, 2)
    assert one_line_error(capsys, ["calibrate", str(measured), "--out", str(fifo)]) == \
        f"--out: {fifo}: a FIFO, not a regular file: give a file (a pipe would be waited on)"
    import yaml
    scenario = tmp_path / "s.yaml"   # a hardware catalog that is a FIFO: said so, not "no such file"
    scenario.write_text(yaml.safe_dump({"name": "t", "workload": {"model": {"preset": "tiny"}},
                                        "strategies": [{"name": "tp1"}], "hardware_catalog": ["fifo"],
                                        "backends": {"roofline": {"hardware": "a100-80gb"}}}))
    assert one_line_error(capsys, ["validate", str(scenario)]).endswith(
        "hardware_catalog[0]: 'fifo': a FIFO, not a regular file: give a file (a pipe would be waited on)")


def test_a_quoted_node_count_says_to_drop_the_quotes(capsys) -> None:  # noqa: ANN001
    """Trial 37: `nodes: '4'` fell through to the nodes validator's own words, without the quotes hint a quoted
    batch gets (the bounded list in nodes' union hid that the key takes only numbers)."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", "backends.roofline.nodes='4'"])
    assert err == (f"{QUICKSTART}: backends.roofline.nodes: '4' is text, not a number (write it without quotes); "
                   f"allowed: >= 1 and <= 2147483647")


def test_a_boolean_for_a_choice_names_the_choices(capsys) -> None:  # noqa: ANN001
    """Trial 38: `optimizer: true` said it was a boolean but not what the key takes, unlike `optimizer: apex`."""
    err = one_line_error(capsys, ["validate", str(QUICKSTART), "--set", "backends.roofline.optimizer=true"])
    assert err.endswith("is a boolean, not a value of this key (YAML reads true/false/yes/no/on/off as booleans); "
                        "allowed: fused, foreach"), err


def test_a_trace_replayed_as_recorded_is_counted_as_one_replay(tmp_path: Path, capsys) -> None:
    """Trial 40: a trace without a rate was counted as '× 1 rate'."""
    import yaml

    (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n0,10,3\n1,20,4\n")
    data = yaml.safe_load((REPO / "scenarios" / "serve-8b.yaml").read_text())
    data["serving"].pop("requests")
    data["serving"].pop("lengths")
    data["serving"]["arrival"] = {"kind": "trace", "path": "t.csv"}
    path = tmp_path / "trace.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path), "--backend", "cluster"]) == 0
    assert capsys.readouterr().out.strip() == (f"{path}: ok — 1 strategy × 1 backend setting × 1 replay as recorded "
                                               f"= 1 case")


@pytest.mark.parametrize("value", ["inf", "-Infinity", "nan"])
def test_inf_and_nan_written_as_words_say_how_yaml_reads_them(capsys, value: str) -> None:
    """Trial 40: `--set serving.arrival.rate=inf` said only "'inf' is text, not a number"."""
    err = one_line_error(capsys, ["validate", str(REPO / "scenarios" / "serve-8b.yaml"), "--set",
                                  f"serving.arrival.rate={value}"])
    assert f"serving.arrival.rate: {value!r} is text, not a number (YAML writes infinity .inf and not-a-number " \
           f".nan; a finite number is needed here)" in err
