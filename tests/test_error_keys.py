"""Errors name the key that breaks the rule (not the mapping around it) and what is allowed: one line, exit 2.

A rule that a whole model checks (kv_heads against heads, a preset name, the batch against dp) is raised
by pydantic at the model's path; these are the cases a fresh-user trial found named at the wrong key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main

QUICKSTART = "scenarios/quickstart.yaml"


def _validate(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(["validate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize("setting, key, allowed", [
    ("workload.model.kv_heads=5", "workload.model.kv_heads", "allowed: 1, 2, 3, 4, 6, 12"),
    ("workload.model.preset=nope", "workload.model.preset", "allowed: tiny, bert-base"),
    ("workload.model.hidden=100", "workload.model.heads", "must be divisible by heads=12 (allowed heads: 1, 2, 4, "
                                                          "5, 10, 20, 25, 50, 100; or state head_dim)"),
    ("workload.model.max_positions=128", "workload.model.seq_len", "max_positions=128"),
    ("workload.dtype=[bfloat16]", "workload.dtype", "expected one value, not a list; allowed: float32, bfloat16"),
])
def test_a_model_rule_names_its_own_key(capsys: pytest.CaptureFixture[str], setting: str, key: str,
                                        allowed: str) -> None:
    err = _validate(capsys, [QUICKSTART, "--set", setting])
    assert f"{QUICKSTART}: {key}: " in err and allowed in err, err


def _write(tmp_path: Path, **parts: Any) -> str:
    data = {"name": "keys", "workload": {"model": {"preset": "gpt2-small", "layers": 2}, "mode": "train",
                                         "batch": 8, "dtype": "float32"},
            "strategies": [{"name": "a"}], "backends": {"roofline": {}}}
    data.update(parts)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_list_where_one_degree_belongs_says_so_and_how_to_compare(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, strategies=[{"name": "a", "tp": [2, 4]}])
    err = _validate(capsys, [path])
    assert err.endswith(f"{path}: strategies[0].tp: [2, 4]: expected one integer, not a list (to compare several "
                        f"values of tp, list one strategy per value)"), err


@pytest.mark.parametrize("dims", [["x", "y"], 3])
def test_a_mesh_axis_given_as_a_list_names_the_axis_and_the_form(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 dims: Any) -> None:
    path = _write(tmp_path, strategies=[{"name": "a", "tp": 4}],
                  backends={"roofline": {"hardware": "tpu-v5p", "topology": "4x4x4", "mesh": {"tp": dims}}})
    err = _validate(capsys, [path])
    assert f"{path}: backends.roofline.mesh.tp: {dims!r}: allowed: the torus dimensions this axis holds as one " \
           f"string of letters" in err, err


def test_dp_that_does_not_divide_the_batch_is_blamed_on_dp_with_the_allowed_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the trial's case: dp=64 on 64 devices, batch 8; micro_batch (default 1) was named
    path = _write(tmp_path, strategies=[{"name": "a", "dp": 64}],
                  backends={"roofline": {"nodes": 8, "devices_per_node": 8}})
    err = _validate(capsys, [path])
    assert f"{path}: strategies[0].dp: 64 does not divide batch=8 (micro_batch=1); backend 'roofline' has 64 " \
           f"devices, so allowed: workload.batch a multiple of 64, or tp*pp*cp larger so that dp = 64/(tp*pp*cp) " \
           f"is one of 1, 2, 4, 8" in err, err


def test_dp_omitted_on_a_fixed_world_is_blamed_on_dp_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, backends={"roofline": {"nodes": 8, "devices_per_node": 8}})
    err = _validate(capsys, [path])
    assert f"{path}: strategies[0].dp: 64 (omitted: fills the world) does not divide batch=8" in err, err


def test_micro_batch_is_blamed_only_when_dp_divides_the_batch(capsys: pytest.CaptureFixture[str]) -> None:
    err = _validate(capsys, [QUICKSTART, "--backend", "cpu", "--set", "strategies[0]={name: a, dp: 2, micro_batch: 3}"])
    assert err.endswith("strategies[0].micro_batch: 3 does not divide the batch=4 / dp=2 = 2 sequences of a "
                        "replica; allowed: 1, 2"), err
    err = _validate(capsys, [QUICKSTART, "--backend", "cpu", "--set", "strategies[0].dp=3"])
    assert err.endswith("strategies[0].dp: 3 does not divide batch=4 (micro_batch=1); allowed: dp among 1, 2, 4, "
                        "or workload.batch a multiple of 3"), err


def test_a_serving_rule_names_the_missing_key(capsys: pytest.CaptureFixture[str]) -> None:
    err = _validate(capsys, ["scenarios/serve-8b.yaml", "--set", "serving.arrival.kind=gamma"])
    assert "serving.arrival.cv: arrival kind 'gamma' needs cv" in err, err


def test_the_other_problems_of_one_file_are_named_by_their_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """One line still, the first problem in full and where the others are (not a bare count), so that a user
    does not fix one problem to learn of the next (the trial's '(and 1 more problem)')."""
    err = _validate(capsys, [QUICKSTART, "--set", "workload.batch=0", "--set", "workload.dtype=int3"])
    assert err.endswith("(and 1 more problem: workload.dtype)"), err


@pytest.mark.parametrize("value", ["-0.5", "1.5"])
def test_a_number_out_of_bounds_names_every_bound(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """pydantic names only the bound that was broken; the message names the whole allowed range."""
    err = _validate(capsys, ["scenarios/serve-8b.yaml", "--set", f"serving.memory_utilization={value}"])
    assert f"serving.memory_utilization: {value}: out of range; allowed: > 0 and <= 1" in err, err


def test_the_range_names_the_lower_bound_first(capsys: pytest.CaptureFixture[str]) -> None:
    err = _validate(capsys, [QUICKSTART, "--set", "workload.batch=0"])
    assert "workload.batch: 0: " in err and "allowed: >= 1 and <= 2147483647" in err, err


def test_a_one_sided_bound_is_named_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    """A key bounded on one side reads like one bounded on both (pydantic's own sentence differed by type)."""
    err = _validate(capsys, ["scenarios/serve-8b.yaml", "--set", "serving.kv_block_tokens=0"])
    assert "serving.kv_block_tokens: 0: out of range; allowed: >= 1" in err, err


SERVE = "scenarios/serve-llama-eagle.yaml"


@pytest.mark.parametrize("setting, line", [
    ("serving.scheduler.engine_kernels=foo", "serving.scheduler.engine_kernels: 'foo' is not one of the allowed "
                                             "values (allowed: fused, sglang, sglang-rocm)"),
    ("workload.fp8={attention: fp4}", "workload.fp8.attention: 'fp4' is not one of the allowed values (allowed: "
                                      "bfloat16, float8)"),
    ("workload.fp4={layers: attention}", "workload.fp4.layers: 'attention' is not one of the allowed values "
                                         "(allowed: all, mlp)"),
    ("strategies[0].zero=4", "strategies[0].zero: 4 is not one of the allowed values (allowed: 0, 1, 2, 3)"),
    ("serving.speculative.method=medusa", "serving.speculative.method: 'medusa' is not one of the allowed values "
                                          "(allowed: mtp, eagle, draft, ngram)"),
    ("backends.roofline.all_reduce=null", "backends.roofline.all_reduce: null is not one of the allowed values "
                                          "(allowed: nccl, vllm)"),   # a backend's setting: the same words
    # trial 38: quotes inside the value (YAML's "'foreach'") hid why a right choice was refused
    ("backends.roofline.all_reduce=\"'vllm'\"", "backends.roofline.all_reduce: \"'vllm'\" is not one of the allowed "
                                               "values (allowed: nccl, vllm); write it without the inner quotes"),
])
def test_a_literal_key_names_the_value_and_every_allowed_one(capsys: pytest.CaptureFixture[str], setting: str,
                                                             line: str) -> None:
    """Fresh-user trial: a Literal key said pydantic's "Input should be 'fused', 'sglang' or 'sglang-rocm'"; every
    one now says, in one line from one formatter (wording.literal_error), the value and the values allowed."""
    assert _validate(capsys, [SERVE, "--set", setting]) == f"llmsim: error: {SERVE}: {line}"
