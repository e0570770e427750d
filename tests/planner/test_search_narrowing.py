"""A plan's `search` and `limits` settings that a fresh user found confusing: contradictory settings are
one-line errors (exit 2) naming the key and what is allowed, from `llmsim validate` and `llmsim plan` alike
(planner.run.check_plan); legal ones that narrow the search unexpectedly are notes both print (plan_notes); the
report's header lists the narrowed axes (planner.narrowing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main
from llmsim.errors import ScenarioError
from llmsim.planner.config import parse_plan
from llmsim.planner.report import plan_meta
from llmsim.planner.run import check_plan
from llmsim.planner.search import search
from tests.planner.helpers import hardware, small_catalog, small_plan
from tests.planner.test_serving_plan import CATALOG, serving_plan

GOOD: dict[str, Any] = {
    "name": "p", "workload": {"model": {"preset": "tiny", "heads": 8}, "mode": "train", "batch": 8},
    "goal": {"tokens": 1e6, "deadline_days": 1}, "hardware": [{"name": "a100-80gb", "usd_per_device_hour": 1.8}]}


def _layers(n: int) -> dict[str, Any]:
    return {"model": {"preset": "tiny", "heads": 8, "layers": n}, "mode": "train", "batch": 8}


DECODE = {"workload": {"model": {"preset": "tiny", "layers": 8}, "mode": "decode", "batch": 8, "decode_tokens": 4},
          "goal": {"tokens_per_s": 100}}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


@pytest.mark.parametrize("change, key, words", [
    # schedule and virtual stages that form none of the pipelines they ask for
    ({"workload": _layers(80), "search": {"schedule": ["interleaved"], "virtual_stages": [99]}},
     "search.virtual_stages", "[99] forms no interleaved pipeline of 80 layers (99 does not divide layers=80: each "
                              "stage runs 99 model chunks of equal size); allowed values: 2, 4, 5, 8, 10, 16, 20, 40"),
    ({"workload": _layers(8), "search": {"schedule": ["gpipe"], "virtual_stages": [2]}}, "search.virtual_stages",
     "[2]: virtual stages are the interleaved schedule's, and search.schedule is [gpipe]; allowed: add interleaved "
     "to search.schedule, or leave search.virtual_stages out"),
    ({"workload": _layers(8), "search": {"schedule": ["1f1b"], "virtual_stages": [2]}}, "search.virtual_stages",
     "search.schedule is [1f1b]"),
    ({"workload": _layers(8), "search": {"schedule": ["interleaved"], "pp": [1]}}, "search.schedule",
     "[interleaved] needs a pipeline (pp > 1), and search.pp [1] forms no pipeline; allowed: a search.pp with a value "
     "above 1, or another schedule"),
    ({"workload": _layers(8), "search": {"pp": [1], "virtual_stages": [2]}}, "search.virtual_stages",
     "[2]: virtual stages split a pipeline's stages, and search.pp [1] forms no pipeline"),
    ({"search": {"schedule": ["interleaved"]}}, "search.schedule",   # 2 layers: no room for 2 chunks per stage
     "[interleaved] forms no pipeline of 2 layers with the default virtual stages [2, 3, 4]"),
    ({**DECODE, "search": {"schedule": ["gpipe"]}}, "search.schedule", "allowed: [1f1b], or leave search.schedule out"),
    # degrees that alone, or together, take more devices than max_devices
    ({"search": {"tp": [8]}, "limits": {"max_devices": 4}}, "search.tp",
     "[8] takes at least 8 devices, more than limits.max_devices=4; allowed: values up to 4, or a larger "
     "limits.max_devices"),
    ({"search": {"tp": [2, 4], "pp": [2]}, "limits": {"max_devices": 2}}, "search",
     "the smallest degrees searched (tp 2 x pp 2) take 4 devices (tp x pp x cp, with ep inside cp x dp), more than "
     "limits.max_devices=2"),
    ({"search": {"cp": [2], "pp": [2]}, "limits": {"max_devices": 2}}, "search", "(pp 2 x cp 2) take 4 devices"),
    # trial 46: an inference plan runs ZeRO-0 without recompute, as its schedule is 1f1b
    ({**DECODE, "search": {"zero": [3]}}, "search.zero",
     "[3]: a decode plan runs ZeRO-0 (inference keeps no gradients or optimizer state to shard); allowed: [0], or "
     "leave search.zero out"),
    ({**DECODE, "search": {"recompute": ["full"]}}, "search.recompute",
     "[full]: a decode plan runs without recompute (inference has no backward to recompute for); allowed: [none]"),
    ({"workload": {**DECODE["workload"], "mode": "prefill"}, "goal": DECODE["goal"], "search": {"zero": [1, 2]}},
     "search.zero", "[1, 2]: a prefill plan runs ZeRO-0"),
    # interleaved needs a micro-batch count that is a multiple of pp: batch 8 forms 1, 2, 4, 8, never one of 3
    ({"workload": _layers(12), "search": {"pp": [3], "schedule": ["interleaved"]}}, "search.schedule",
     "[interleaved]: an interleaved pipeline needs a micro-batch count that is a multiple of pp, and no count the "
     "batch 8 forms (1, 2, 4, 8) is a multiple of search.pp [3]; allowed: search.pp from 2, 4, or another schedule"),
    ({"workload": _layers(12), "search": {"pp": [3], "schedule": ["1f1b", "interleaved"], "virtual_stages": [2]}},
     "search.virtual_stages", "[2]: an interleaved pipeline needs a micro-batch count that is a multiple of pp"),
    # sequence parallelism needs tp > 1
    ({"search": {"sp": [True], "tp": [1]}}, "search.sp",
     "[true]: sequence parallelism splits the tensor-parallel group's activations and needs tp > 1, and search.tp is "
     "[1]; allowed: a search.tp with a value above 1, or search.sp [false]"),
    # the largest degrees searched take fewer devices than min_devices
    ({"search": {"tp": [1], "pp": [1], "cp": [1], "dp": [1]}, "limits": {"min_devices": 2}}, "limits.min_devices",
     "2 is more than the largest degrees searched form (tp 1 x pp 1 x cp 1 x dp 1: 1 device, tp x pp x cp x dp); "
     "allowed: min_devices up to 1, or larger values in search.tp, search.pp, search.cp, search.dp"),
    ({"search": {"tp": [2], "pp": [1], "cp": [1]}, "limits": {"min_devices": 32, "max_devices": 64}},
     "limits.min_devices", "(tp 2 x pp 1 x cp 1 x dp 8: 16 devices"),   # dp not narrowed: up to the batch
])
def test_conflicting_search_settings_are_refused_by_validate_and_plan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], key: str, words: str) -> None:
    path = _write(tmp_path, {**GOOD, **change})
    for verb in ("validate", "plan"):
        err = _refused(capsys, [verb, str(path)] + (["--out", str(tmp_path)] if verb == "plan" else []))
        assert err.startswith(f"llmsim: error: {path}: {key}: ") and words in err, err


def test_a_serving_replica_larger_than_max_devices_is_refused() -> None:
    """A serving replica is tp x pp (no cp; its ep inside tp)."""
    plan = parse_plan(serving_plan(search={"tp": [2], "pp": [2]}, limits={"max_devices": 2}))
    with pytest.raises(ScenarioError) as info:
        check_plan(plan, CATALOG, "plan.yaml")
    assert str(info.value).startswith("plan.yaml: search: the smallest degrees searched (tp 2 x pp 2) take 4 devices "
                                      "(a replica, tp x pp), more than limits.max_devices=2")


def test_virtual_stages_beyond_four_are_searched_where_they_divide_the_layers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The search takes any v >= 2 that forms an interleaved pipeline (docs/planning.md says so): v = 5 on 10
    layers is searched (2 stages of 5 layers, or 2 x 5 chunks of 1 layer: pp x v <= layers); v = 3 forms none and
    is refused naming the values that do."""
    narrow = {"cp": [1], "pp": [2], "schedule": ["interleaved"], "virtual_stages": [5], "zero": [0],
              "recompute": ["none"], "tp": [1], "dp": [1], "micro_batch": [1], "sp": [False]}
    plan = small_plan(workload=_layers(10), search=narrow,
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 4}])
    rows, _ = search(plan, hardware(plan, small_catalog()))
    assert rows and {(e.config.schedule, e.config.virtual_stages) for e in rows} == {("interleaved", 5)}
    path = _write(tmp_path, {**GOOD, "workload": _layers(10), "search": {"virtual_stages": [3]}})
    err = _refused(capsys, ["validate", str(path)])
    assert "search.virtual_stages: [3] forms no interleaved pipeline of 10 layers" in err
    assert err.endswith("allowed values: 2, 5"), err
    docs = (Path(__file__).parents[2] / "docs" / "planning.md").read_text()
    assert "`search.virtual_stages` takes any v ≥ 2 (not only the default 2–4)" in docs


def test_virtual_stages_in_an_inference_plan_are_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A training plan's virtual stages left in a decode plan: the plan is as meaningful without them (inference
    runs 1f1b), so a note, not an error."""
    path = _write(tmp_path, {**GOOD, **DECODE, "search": {"virtual_stages": [2]}})
    assert main(["validate", str(path)]) == 0
    assert (f"llmsim: note: {path}: search.virtual_stages [2]: a decode plan's pipelines run 1f1b, so virtual stages "
            f"(the interleaved schedule's, a training schedule) are not searched") in capsys.readouterr().err


def test_a_schedule_without_a_pipeline_is_a_note_of_validate_and_plan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stated schedule beside interleaved (or gpipe alone) with pp [1] is legal, the plan runs without a
    pipeline: both commands say so."""
    path = _write(tmp_path, {**GOOD, "search": {"schedule": ["gpipe", "interleaved"], "pp": [1], "tp": [1],
                                                "cp": [1], "zero": [0], "recompute": ["none"]},
                             "simulate": False})
    note = (f"llmsim: note: {path}: search.schedule [gpipe, interleaved] narrows the pipelines' schedules, and "
            f"search.pp [1] forms no pipeline: every configuration runs without one (listed as 1f1b)")
    for verb in ("validate", "plan"):
        assert main([verb, str(path)] + (["--out", str(tmp_path)] if verb == "plan" else [])) == 0
        assert note in capsys.readouterr().err.splitlines()


def test_the_report_header_lists_the_narrowed_search() -> None:
    """plan.md's header says which axes the plan's search narrowed (and that none were, where none)."""
    def line(plan: Any) -> str:
        return dict(plan_meta(plan, "train", "goal"))["search narrowed to"]

    narrowed = parse_plan({**GOOD, "search": {"tp": [4, 8], "schedule": "1f1b", "sp": [False]}})
    assert line(narrowed) == "tp [4, 8]; schedule [1f1b]; sp [false]"
    assert line(parse_plan(GOOD)) == "none: every value the model and batch allow"
    assert line(parse_plan(serving_plan(search={"tp": [1, 2], "disaggregation": {"prefill": [1], "decode": [1, 2]}}))
                ) == "tp [1, 2]; disaggregation prefill [1], decode [1, 2]"


def test_a_null_max_devices_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A null limit is its default (test_plan_file); for max_devices that is a ceiling of 4,096, not "no limit":
    validate and plan say so."""
    path = _write(tmp_path, {**GOOD, "limits": {"min_devices": None}})
    assert main(["validate", str(path)]) == 0
    assert "note" not in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "limits.max_devices=null"]) == 0
    assert (f"llmsim: note: {path}: limits.max_devices: null is the default, 4,096 devices (a ceiling the search "
            f"needs, not 'no limit'); set a number to search beyond it") in capsys.readouterr().err


def test_selective_recompute_is_searched_as_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 46: `recompute: [selective]` left nothing (selective is a duplicate of none, docs/planning.md): it is
    searched as none, and validate says so."""
    from llmsim.planner.space import axes_of
    assert axes_of(parse_plan({**GOOD, "search": {"recompute": ["selective"]}}), 8).recompute == ("none",)
    both = parse_plan({**GOOD, "search": {"recompute": ["selective", "full"]}})
    assert axes_of(both, 8).recompute == ("none", "full")
    path = _write(tmp_path, {**GOOD, "search": {"recompute": ["selective"]}})
    assert main(["validate", str(path)]) == 0
    assert (f"llmsim: note: {path}: search.recompute [selective]: with the flash-attention kernel the planner prices, "
            f"selective recompute keeps and recomputes what none does (only the s x s scores, which flash never "
            f"stores), so selective is searched as none (configurations listed with recompute none)"
            ) in capsys.readouterr().err


@pytest.mark.parametrize("change, note", [
    ({**DECODE, "search": {"zero": [0, 3]}}, "search.zero [0, 3]: a decode plan runs ZeRO-0 (no gradients or "
                                             "optimizer state to shard), so only 0 is searched"),
    ({**DECODE, "search": {"recompute": ["none", "full"]}}, "search.recompute [none, full]: a decode plan runs "
                                                           "without recompute (no backward), so only none is searched"),
    ({"search": {"sp": [True, False], "tp": [1]}}, "search.sp [true, false]: sequence parallelism needs tp > 1, and "
                                                   "search.tp is [1]: only sp false is searched"),
])
def test_values_that_take_effect_only_in_part_are_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        change: dict[str, Any], note: str) -> None:
    path = _write(tmp_path, {**GOOD, **change})
    assert main(["validate", str(path)]) == 0
    assert f"llmsim: note: {path}: {note}" in capsys.readouterr().err


@pytest.mark.parametrize("setting, key, words", [
    # trial 46: values of the wrong kind that were accepted, or refused without what is allowed
    ("search.zero=[true]", "search.zero[0]", "true is a boolean, not a ZeRO stage (allowed: 0, 1, 2, 3)"),
    ("search.sp=[1]", "search.sp[0]", "1 is a number, not a boolean (allowed: true, false)"),
    ("search.schedule=[1f1b,1f1b]", "search.schedule", "1f1b is repeated; a sweep runs each value once"),
    ("search.recompute=[full,full]", "search.recompute", "full is repeated"),
    ("search.tp={a: 1}", "search.tp", "a mapping, not a list; allowed: a list of integers >= 1 (e.g. [1]), or one "
                                      "value"),
    ("search.schedule={a: 1}", "search.schedule", "a mapping, not a list; allowed: a list of gpipe, 1f1b, interleaved"),
    # the full list of what is allowed: every divisor of the batch, not those up to 64
    ("search.dp=[3]", "search.dp", "3 does not divide the batch 1024; allowed values: 1, 2, 4, 8, 16, 32, 64, 128, "
                                   "256, 512, 1024"),
])
def test_bad_search_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, key: str,
                                       words: str) -> None:
    path = _write(tmp_path, {**GOOD, "workload": {**GOOD["workload"], "batch": 1024}})
    err = _refused(capsys, ["validate", str(path), "--set", setting])
    assert err.startswith(f"llmsim: error: {path}: {key}: {words}"), err


def test_a_long_allowed_list_says_where_it_ends() -> None:
    from llmsim.planner.space import shown_values
    assert shown_values(list(range(1, 31))) == "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, ..., 30 (30 values)"
    assert shown_values([1, 2]) == "1, 2"


def test_values_the_model_cannot_use_beside_usable_ones_are_a_note(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 46: tp [3, 4] searched 4 alone while the header said tp [3, 4]."""
    path = _write(tmp_path, {**GOOD, "search": {"tp": [3, 4]}})
    assert main(["validate", str(path)]) == 0
    assert (f"llmsim: note: {path}: search.tp [3, 4]: 3 is left out (3 does not divide heads=8); searched: [4]"
            in capsys.readouterr().err)


def test_a_disaggregation_count_given_as_one_value_is_a_list_of_it() -> None:
    """As search.tp=8 is [8] (trial 46: prefill=2 was told 'expected a list')."""
    plan = parse_plan(serving_plan(search={"disaggregation": {"prefill": 2, "decode": [1]}}))
    assert plan.search.disaggregation is not None and plan.search.disaggregation.prefill == [2]


def test_a_kv_block_size_vllm_does_not_take_is_a_note_of_a_serving_plan() -> None:
    """As `llmsim validate` of a serving scenario says it (Scenario.serving_notes): validate and plan print
    plan_notes."""
    from llmsim.planner.run import plan_notes
    data = serving_plan()
    plan = parse_plan({**data, "serving": {**data["serving"], "kv_block_tokens": 7}})
    notes = [text for _, text in plan_notes(plan, check_plan(plan, CATALOG))]
    assert any(n.startswith("serving.kv_block_tokens: 7 tokens a block is a size vLLM does not take") for n in notes)
    plain = parse_plan(serving_plan())
    assert not any("kv_block_tokens" in text for _, text in plan_notes(plain, check_plan(plain, CATALOG)))
