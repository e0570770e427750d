"""Plan-file errors are one line naming the file, the key and what is allowed (exit 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main
from llmsim.errors import ScenarioError
from llmsim.planner import load_plan
from llmsim.planner.config import parse_plan
from tests.planner.test_serving_plan import serving_plan

GOOD = {"name": "p", "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 8},
        "goal": {"tokens": 1e6, "deadline_days": 1}, "hardware": [{"name": "a100-80gb", "usd_per_device_hour": 1.8}]}


def _write(tmp_path: Path, data: object, text: str | None = None) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change, key, words", [
    ({"objective": "speed"}, "objective", "cost"),
    ({"colour": 1}, "colour", "allowed: name, workload"),
    ({"goal": {"tokens_per_s": 5}}, "goal.tokens_per_s", "training takes {tokens, deadline_days}"),
    ({"goal": {"deadline_days": 3}}, "goal.tokens", "required key is missing"),
    ({"hardware": [{"name": "a100-80gb", "price": 2}]}, "hardware[0].price", "allowed: name, usd_per_device_hour"),
    ({"limits": {"max_devices": 0}}, "limits.max_devices", "out of range; allowed: >= 1"),
    ({"workload": {"model": {"preset": "tiny"}, "mode": "decode"}, "goal": {"tokens": 5}}, "goal.tokens",
     "takes {tokens_per_s, max_step_latency_s}"),
    ({"options": {"attention": "magic"}}, "options.attention",
     "'magic' is not one of the allowed values (allowed: flash, cudnn, flash3, trtllm-mmha, fused-softmax, "
     "math)"),
    ({"options": {"hardware": "h100-sxm"}}, "options.hardware", "allowed: attention, main_grads_fp32"),
    ({"hardware_catalog": ["my.yaml"]}, "hardware_catalog", "`llmsim plan PLAN.yaml --hardware FILE`"),
    ({"sharing": {"lora": {"targets": ["gate"]}}}, "sharing.lora.targets",
     "target 'gate' is not a projection of a gelu block LoRA can adapt (allowed: q, k, v, o, up, down; aliases qkv, out, mlp)"),
])
def test_bad_plan_is_one_line(tmp_path: Path, change: dict, key: str, words: str) -> None:
    path = _write(tmp_path, {**GOOD, **change})
    with pytest.raises(ScenarioError) as info:
        load_plan(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: ")
    assert words in message


def test_unknown_hardware_and_bad_yaml_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {**GOOD, "hardware": [{"name": "a100-81gb", "usd_per_device_hour": 1}]})
    assert main(["plan", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hardware[0].name" in err and "allowed: " in err and "a100-80gb" in err
    path = _write(tmp_path, None, text="name: [unclosed\n")
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not valid YAML" in err


def test_device_without_an_example_price_needs_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A catalog device with no example price and none given is a one-line error (exit 2), not a KeyError."""
    path = _write(tmp_path, {**GOOD, "hardware": [{"name": "a100-80gb"}, {"name": "a100-80gb-pcie"}]})
    assert main(["plan", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hardware[1].usd_per_device_hour" in err and "a100-80gb-pcie" in err
    path = _write(tmp_path, {**GOOD, "hardware": [{"name": "h100-sxm-96gb"}, {"name": "a100-80gb"},
                                                  {"name": "a100-80gb-pcie"}]})
    assert main(["plan", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()  # every unpriced device named at once
    assert len(err.splitlines()) == 1 and "hardware[0].usd_per_device_hour" in err
    assert "'h100-sxm-96gb', 'a100-80gb-pcie' (hardware[0], hardware[2])" in err
    priced = _write(tmp_path, {**GOOD, "hardware": [{"name": "a100-80gb-pcie", "usd_per_device_hour": 1.5}]})
    assert main(["plan", str(priced), "--out", str(tmp_path)]) == 0


def test_yaml_tags_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, None, text="name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_plan(path)


def test_contract_example_and_shipped_plans_load() -> None:
    root = Path(__file__).resolve().parents[2]
    for name in ("plan-train-70b.yaml", "plan-serve-8b.yaml"):
        plan = load_plan(root / "scenarios" / name)
        assert plan.top_k >= 1 and plan.hardware


@pytest.mark.parametrize("search, key, words", [
    ({"tp": [3]}, "search.tp", "search.tp: 3 does not divide heads=4"),   # the axis named once, by the key
    ({"dp": [3, 5]}, "search.dp", "search.dp: 3 does not divide the batch 8; allowed values: 1, 2, 4, 8"),
    ({"pp": [9]}, "search.pp", "more than layers=2"),
])
def test_a_search_axis_no_configuration_can_use_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       search: dict, key: str, words: str) -> None:
    """A stated search axis whose every value the model refuses is an error, not an empty plan with exit 0."""
    path = _write(tmp_path, {**GOOD, "search": search})
    assert main(["plan", str(path), "--out", str(tmp_path), "--no-simulate"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{key}: " in err and words in err, err


def test_a_search_axis_with_one_usable_value_plans(tmp_path: Path) -> None:
    """Values the model cannot use are left out like any invalid configuration when another one is usable."""
    path = _write(tmp_path, {**GOOD, "search": {"tp": [3, 2]}})
    assert main(["plan", str(path), "--out", str(tmp_path), "--no-simulate"]) == 0


def test_one_value_of_a_search_axis_is_a_list_of_it() -> None:
    """Trial 43: `--set search.tp=7` was told 'expected a list'. One value searches that value alone, as a
    scenario's sweeps take one value; a boolean is still no degree, named at the key the user wrote (a fresh user's
    report: not at search.tp[0], a list the user never wrote)."""
    from llmsim.planner.config import parse_plan

    plan = parse_plan({**GOOD, "search": {"tp": 8, "schedule": "gpipe", "sp": True}})
    assert plan.search.tp == [8] and plan.search.schedule == ["gpipe"] and plan.search.sp == [True]
    with pytest.raises(ScenarioError, match=r"search.tp: true is a boolean, not a parallel degree"):
        parse_plan({**GOOD, "search": {"tp": True}})
    with pytest.raises(ScenarioError, match=r"search.tp\[0\]: true is a boolean, not a parallel degree"):
        parse_plan({**GOOD, "search": {"tp": [True]}})


def test_a_device_range_no_node_count_lands_in_is_refused_before_the_search(capsys: pytest.CaptureFixture[str]
                                                                            ) -> None:
    """Trial 44: min_devices = max_devices = 12 on 8-device nodes validated as ok, and the plan then blamed memory.
    planner.run.check_plan (validate and plan alike) refuses it naming the nearest counts that are whole nodes."""
    plan = Path(__file__).parents[2] / "scenarios" / "plan-train-70b.yaml"
    for verb in ("validate", "plan"):
        assert main([verb, str(plan), "--set", "limits.min_devices=9", "--set", "limits.max_devices=12"]) == 2
        assert capsys.readouterr().err.strip() == (
            f"llmsim: error: {plan}: limits.min_devices: no device count from 9 to max_devices=12 is part of one node "
            f"or whole nodes of 8 devices; allowed: a range holding one, e.g. 8 or 16")
    assert main(["validate", str(plan), "--set", "limits.min_devices=16", "--set", "limits.max_devices=16"]) == 0


@pytest.mark.parametrize("setting, key, words", [
    ("search.tp=true", "search.tp", "true is a boolean, not a parallel degree or size"),
    ("search.tp=0", "search.tp", "0: out of range; allowed: >= 1"),
    ("search.schedule=foo", "search.schedule", "'foo' is not one of the allowed values (allowed: gpipe, 1f1b, "
                                               "interleaved)"),
    ("search.virtual_stages=1", "search.virtual_stages", "1: out of range; allowed: >= 2"),
    ("search.tp=[true]", "search.tp[0]", "true is a boolean"),   # a list the user wrote: its index
    # trial 47: "allowed: integers >= 1" for a key that takes 2 and more
    ("search.virtual_stages=[true]", "search.virtual_stages[0]", "true is a boolean, not a count of virtual stages "
                                                                 "(allowed: integers >= 2)"),
    ("search.zero=[1, 7]", "search.zero[1]", "7 is not one of the allowed values"),
])
def test_an_error_in_one_value_is_named_at_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   setting: str, key: str, words: str) -> None:
    """`--set search.tp=true` was reported at search.tp[0], a list the user never wrote (a fresh user's report)."""
    path = _write(tmp_path, GOOD)
    assert main(["validate", str(path), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"llmsim: error: {path}: {key}: ") and words in err, err


@pytest.mark.parametrize("search", [{"schedule": ["foo"]}, {"zero": [7]}, {"schedule": "gpipe"}, {"zero": [1]}])
def test_a_training_key_in_a_serving_plan_is_named_before_its_values(search: dict[str, Any]) -> None:
    """`search.schedule: [foo]` in a serving plan was told the schedules a training plan takes, not that a serving
    plan has no search.schedule (a fresh user's report)."""
    key = next(iter(search))
    with pytest.raises(ScenarioError) as info:
        parse_plan(serving_plan(search=search))
    assert str(info.value).startswith(f"<plan>: search.{key}: a serving plan searches hardware x dtype x tp x pp")
    assert "allowed search keys are tp, pp, ep, attention_dp, dtype, disaggregation" in str(info.value)


def test_a_null_limit_is_the_limit_left_out(tmp_path: Path) -> None:
    """`min_devices: null` was refused though `max_power_w: null` is its default (a fresh user's report): every
    null limit is now the limit left out, its default."""
    limits = parse_plan({**GOOD, "limits": {"min_devices": None, "max_devices": None, "max_power_w": None,
                                            "memory_headroom": None}}).limits
    assert (limits.min_devices, limits.max_devices, limits.max_power_w, limits.memory_headroom) == (1, 4096, None, 0.1)
    assert main(["validate", str(_write(tmp_path, {**GOOD, "limits": {"min_devices": None}}))]) == 0
    with pytest.raises(ScenarioError, match="limits.min_devices: 0: out of range"):   # a value still is checked
        parse_plan({**GOOD, "limits": {"min_devices": 0}})
