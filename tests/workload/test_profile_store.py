"""Profiles kept on disk (llmsim.workload.profile_store): read back exactly as traced, keyed by everything a
trace depends on, and a plan that reads one back imports no torch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.errors import LLMSimError
from llmsim.workload import profile_store
from llmsim.workload.profile import profile_workload
from llmsim.workload.profile_data import WorkloadProfile
from llmsim.workload.profile_store import from_json, profile_key, stored_profile, to_json

REPO = Path(__file__).resolve().parents[2]


def _tiny(mode: str = "train", **model) -> Workload:
    return Workload(model=ModelSpec(preset="tiny", **model), mode=mode, batch=2, dtype="float32")


PROFILED = [
    (_tiny(), SharingChoice(True)),
    (_tiny("decode"), SharingChoice(False)),
    (_tiny(layers=4), SharingChoice(True, layer_groups=2)),
    (_tiny(), SharingChoice(False, lora=LoraSpec(rank=4))),
    (_tiny(moe={"experts": 4, "top_k": 2}), SharingChoice(True)),
]


def _same(a: WorkloadProfile, b: WorkloadProfile) -> None:
    """Equal field by field, every value of the same type, `ops` in the same order (the cost model sums in it)."""
    assert a == b
    for f in dataclasses.fields(a):
        if f.name != "ops":
            assert type(getattr(a, f.name)) is type(getattr(b, f.name)), f.name
    assert list(a.ops) == list(b.ops)
    for key in a.ops:
        for name in ("flops", "bytes", "count", "fused_bytes"):
            x, y = getattr(a.ops[key], name), getattr(b.ops[key], name)
            assert type(x) is type(y) and (x == y), (key, name, x, y)


@pytest.mark.parametrize("workload, sharing", PROFILED)
def test_a_profile_reads_back_exactly_as_traced(workload: Workload, sharing: SharingChoice) -> None:
    traced = profile_workload(workload, sharing)
    assert any(t.fused_bytes is None for t in traced.ops.values())  # None and floats both cross
    _same(from_json(json.loads(json.dumps(to_json(traced)))), traced)


def test_the_store_traces_once_then_reads_back(tmp_path: Path) -> None:
    workload, sharing = PROFILED[0]
    calls = []

    def make() -> WorkloadProfile:
        calls.append(1)
        return profile_workload(workload, sharing)

    first = stored_profile(workload, sharing, make, tmp_path)
    again = stored_profile(workload, sharing, make, tmp_path)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    _same(again, first)
    assert again is not first  # read from the file, not this process's object


def test_every_input_of_a_trace_is_in_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    workload, sharing = PROFILED[0]
    key = profile_key(workload, sharing)
    assert profile_key(workload.model_copy(update={"batch": 4}), sharing) != key
    assert profile_key(workload, SharingChoice(False)) != key
    assert profile_key(workload, SharingChoice(True, lora=LoraSpec(rank=4))) != key
    monkeypatch.setattr(profile_store, "code_digest", lambda: "edited")
    assert profile_key(workload, sharing) != key
    monkeypatch.undo()
    monkeypatch.setattr(profile_store, "_torch_version", lambda: "0.0")
    assert profile_key(workload, sharing) != key
    monkeypatch.undo()
    assert profile_key(workload, sharing, "serving-reference") != key  # another caller's way of making it


def test_the_code_digest_follows_llmsim_sources() -> None:
    digest = profile_store.code_digest()
    assert len(digest) == 64 and digest == profile_store.code_digest()


def test_a_file_of_another_key_or_damaged_is_traced_again(tmp_path: Path) -> None:
    workload, sharing = PROFILED[0]
    traced = profile_workload(workload, sharing)
    stored_profile(workload, sharing, lambda: traced, tmp_path)
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    data["key"] = "another"
    path.write_text(json.dumps(data))
    calls = []
    stored_profile(workload, sharing, lambda: calls.append(1) or traced, tmp_path)
    path.write_text("{ half a file")
    stored_profile(workload, sharing, lambda: calls.append(1) or traced, tmp_path)
    assert calls == [1, 1]
    assert json.loads(path.read_text())["key"] == profile_key(workload, sharing)  # written again, whole


@pytest.mark.parametrize("edit", [
    lambda p: p.update(params="x"),                       # a type the cost model cannot multiply
    lambda p: p.update(params=None),
    lambda p: p["ops"][0].__setitem__(3, p["ops"][0][3] * 2 + 1),   # a plausible number, changed by hand
])
def test_a_file_whose_values_were_edited_is_traced_again(tmp_path: Path, edit) -> None:  # noqa: ANN001
    workload, sharing = PROFILED[0]
    traced = profile_workload(workload, sharing)
    stored_profile(workload, sharing, lambda: traced, tmp_path)
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    edit(data["profile"])
    path.write_text(json.dumps(data))
    calls = []
    got = stored_profile(workload, sharing, lambda: calls.append(1) or traced, tmp_path)
    assert calls == [1]
    _same(got, traced)
    assert stored_profile(workload, sharing, lambda: calls.append(1) or traced, tmp_path) is not traced
    assert calls == [1]                                   # written again whole: read back the next time


@pytest.mark.parametrize(("value", "on"), [("0", False), ("false", False), ("OFF", False), ("no", False),
                                           ("1", True), ("true", True), ("on", True), ("yes", True), ("", True)])
def test_the_switch_reads_the_usual_words(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv(profile_store.ENV_SWITCH, value)
    assert profile_store.enabled() is on


def test_a_switch_value_neither_on_nor_off_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(profile_store.ENV_SWITCH, "garbage")
    with pytest.raises(LLMSimError, match=r"LLMSIM_PROFILE_CACHE='garbage': allowed: 1, true, on, yes \(on\), 0"):
        profile_store.enabled()


@pytest.mark.parametrize("value", ["", "relative/cache"])
def test_an_empty_or_relative_xdg_cache_home_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       value: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert profile_store.store_dir() == tmp_path / ".cache" / "llmsim" / "profiles"


def test_the_switch_turns_the_store_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workload, sharing = PROFILED[0]
    monkeypatch.setenv(profile_store.ENV_SWITCH, "0")
    calls = []
    for _ in range(2):
        stored_profile(workload, sharing, lambda: calls.append(1) or profile_workload(workload, sharing), tmp_path)
    assert calls == [1, 1] and not list(tmp_path.iterdir())


def test_an_unwritable_store_only_costs_the_trace(tmp_path: Path) -> None:
    workload, sharing = PROFILED[0]
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the directory should be
    got = stored_profile(workload, sharing, lambda: profile_workload(workload, sharing), blocked / "profiles")
    _same(got, profile_workload(workload, sharing))


@pytest.mark.slow
def test_a_plan_of_a_stored_profile_imports_no_torch(tmp_path: Path) -> None:
    """The planner, the plugins (every command loads them) and the profile read back: no torch. Fails if any of
    them imports torch at module level again, or if the planner bypasses the store."""
    code = ("import sys\n"
            "from llmsim.plugins import get_plugin_manager\n"
            "from llmsim.planner import load_plan\n"
            "from llmsim.planner.search import sharing_choice, workload_profile\n"
            "get_plugin_manager().call_each('llmsim_hardware')\n"
            "plan = load_plan('scenarios/plan-train-70b.yaml', [])\n"
            "profile = workload_profile(plan.workload, sharing_choice(plan))\n"
            "print(profile.params, 'torch' in sys.modules)\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop(profile_store.ENV_SWITCH, None)
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0][1] == "True"          # traced: torch imported for the trace
    assert runs[1] == [runs[0][0], "False"]  # read back: the same profile, no torch


def test_a_folder_where_the_file_goes_is_traced_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A directory at the profile's path: the write fails, the trace is used, and no `<key>.<pid>.tmp` stays."""
    workload, sharing = PROFILED[0]
    key = profile_key(workload, sharing)
    import hashlib
    (tmp_path / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json").mkdir()
    got = stored_profile(workload, sharing, lambda: profile_workload(workload, sharing), tmp_path)
    _same(got, profile_workload(workload, sharing))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("edit", ["params_text", "ops_row_short", "ops_row_text"])
def test_an_edited_file_whose_digest_was_made_to_match_is_read_as_damaged(tmp_path: Path, edit: str) -> None:
    """A value of another type than to_json writes (a hand edit whose digest was recomputed) is no profile: the
    caller traces again (it was a TypeError deep in the planner's pricing)."""
    from llmsim.workload.profile_store import _digest, _path, keep_profile, read_profile

    workload, sharing = PROFILED[0]
    keep_profile(workload, sharing, profile_workload(workload, sharing), tmp_path)
    assert read_profile(workload, sharing, tmp_path) is not None
    path = _path(profile_key(workload, sharing), tmp_path)
    data = json.loads(path.read_text())
    if edit == "params_text":
        data["profile"]["params"] = "abc"
    elif edit == "ops_row_short":
        data["profile"]["ops"][0] = data["profile"]["ops"][0][:6]
    else:
        data["profile"]["ops"][0][3] = "many"
    data["digest"] = _digest(data["profile"])
    path.write_text(json.dumps(data))
    assert read_profile(workload, sharing, tmp_path) is None
