"""Trial 48's leftovers of `llmsim plan` / `llmsim validate` on plan files: stated pipeline values that form no
interleaved pipeline beside ones that do are left out with a note and not listed in plan.md's header
(planner.narrowing.pipeline_left_out); a mapping where disaggregation counts belong, and counts whose every unit
exceeds max_devices, are one-line errors naming what is allowed; cp's allowed values run to seq_len; "meets goal"
agrees with the numbers the table shows (report.meets_goal, search._checks)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main
from llmsim.errors import ScenarioError
from llmsim.planner.config import parse_plan
from llmsim.planner.report import duration_against, meets_goal, plan_meta
from llmsim.planner.run import check_plan
from llmsim.planner.search import first_rows, judge, search
from tests.planner.helpers import hardware, small_catalog, small_plan
from tests.planner.test_serving_plan import CATALOG, serving_plan
from tests.planner.test_serving_plan_pd_spec import _pd_plan

DOCS = (Path(__file__).parents[2] / "docs" / "planning.md").read_text()
GOOD: dict[str, Any] = {
    "name": "p", "workload": {"model": {"preset": "tiny", "heads": 8}, "mode": "train", "batch": 8},
    "goal": {"tokens": 1e6, "deadline_days": 1}, "hardware": [{"name": "a100-80gb", "usd_per_device_hour": 1.8}]}


def _layers(n: int) -> dict[str, Any]:
    return {"model": {"preset": "tiny", "heads": 8, "layers": n}, "mode": "train", "batch": 8}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _notes(capsys: pytest.CaptureFixture[str], path: Path) -> list[str]:
    assert main(["validate", str(path)]) == 0
    return capsys.readouterr().err.splitlines()


def _header(data: dict[str, Any]) -> str:
    return dict(plan_meta(parse_plan(data), "train", "goal"))["search narrowed to"]


# 1. values of virtual_stages and pp that form no interleaved pipeline beside ones that do

def test_virtual_stages_that_interleave_no_searched_pp_are_a_note_and_not_in_the_header(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pp 4 x 40 chunks is 160 > 80 layers: 40 forms no interleaved pipeline, 5 does."""
    data = {**GOOD, "workload": _layers(80), "search": {"schedule": ["interleaved"], "pp": [4],
                                                         "virtual_stages": [40, 5]}}
    note = (f"llmsim: note: {_write(tmp_path, data)}: search.virtual_stages [40, 5]: 40 is left out (at pp 4, "
            f"pp*virtual_stages=160 is more than layers=80: every stage needs a layer); searched: [5]")
    assert note in _notes(capsys, tmp_path / "plan.yaml")
    assert _header(data) == "pp [4]; schedule [interleaved]; virtual_stages [5]"
    # the search leaves it out: only v 5 is searched
    narrow = {"cp": [1], "pp": [4], "schedule": ["interleaved"], "virtual_stages": [40, 5], "zero": [0],
              "recompute": ["none"], "tp": [1], "dp": [1], "micro_batch": [1], "sp": [False]}
    plan = small_plan(workload=_layers(80), search=narrow,
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 4}])
    rows, _ = search(plan, hardware(plan, small_catalog()))
    assert rows and {e.config.virtual_stages for e in rows if e.config.pp > 1} == {5}
    assert "search.virtual_stages [40, 5]: 40 is left out" in DOCS


def test_a_pp_that_forms_no_interleaved_pipeline_under_interleaved_alone_is_a_note_and_not_in_the_header(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Batch 8 forms micro-batch counts 1, 2, 4, 8: none is a multiple of 7, so pp 7 runs no interleaved
    pipeline, and schedule [interleaved] runs nothing else there."""
    data = {**GOOD, "workload": _layers(14), "search": {"schedule": ["interleaved"], "pp": [2, 7]}}
    note = (f"llmsim: note: {_write(tmp_path, data)}: search.pp [2, 7]: 7 is left out (an interleaved pipeline "
            f"needs a micro-batch count that is a multiple of pp, and none the batch 8 forms (1, 2, 4, 8) is a "
            f"multiple of 7, and search.schedule is [interleaved]); searched: [2]")
    assert note in _notes(capsys, tmp_path / "plan.yaml")
    assert _header(data) == "pp [2]; schedule [interleaved]"
    # beside 1f1b, pp 7 is searched (with 1f1b): nothing is left out
    both = {**data, "search": {"schedule": ["1f1b", "interleaved"], "pp": [2, 7]}}
    assert not any("left out" in line for line in _notes(capsys, _write(tmp_path, both)))
    assert _header(both) == "pp [2, 7]; schedule [1f1b, interleaved]"
    assert "search.pp [2, 7]: 7 is left out" in DOCS


def test_a_value_the_model_cannot_use_is_not_in_the_header() -> None:
    """As tp [3, 4] for 8 heads (its note: test_search_narrowing): the header lists 4, what is searched."""
    assert _header({**GOOD, "search": {"tp": [3, 4]}}) == "tp [4]"


def test_no_interleaving_value_at_all_is_still_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {**GOOD, "workload": _layers(80), "search": {"schedule": ["interleaved"], "pp": [4],
                                                                        "virtual_stages": [40]}})
    assert main(["validate", str(path)]) == 2
    assert "search.virtual_stages: [40] forms no interleaved pipeline" in capsys.readouterr().err


# 2. a mapping where disaggregation's counts belong

@pytest.mark.parametrize("side", ["prefill", "decode"])
def test_a_mapping_of_disaggregation_counts_names_what_is_allowed(side: str) -> None:
    counts = {"prefill": [1], "decode": [1], side: {"a": 1}}
    with pytest.raises(ScenarioError) as info:
        parse_plan(_pd_plan(search={"tp": [1], "pp": [1], "disaggregation": counts}))
    assert str(info.value).endswith(f"search.disaggregation.{side}: a mapping, not a list; allowed: a list of "
                                    f"instance counts, integers >= 1 (e.g. [1, 2]), or one count")
    assert "`disaggregation: {prefill: {a: 1}}`" in DOCS


# 3. disaggregation counts whose every unit exceeds max_devices

def test_counts_whose_every_unit_exceeds_max_devices_are_refused(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    plan = parse_plan(_pd_plan(search={"tp": [1], "pp": [1], "disaggregation": {"prefill": [8], "decode": [8, 9]}},
                               limits={"max_devices": 4}))
    message = ("search.disaggregation: prefill [8], decode [8, 9] take at least 16 devices (the smallest unit: 8 "
               "prefill instances of tp 1 and 8 decode instances of tp 1), more than limits.max_devices=4; allowed: "
               "counts whose prefill + decode is at most 4 (at tp 1), or a larger limits.max_devices")
    with pytest.raises(ScenarioError) as info:
        check_plan(plan, CATALOG, "plan.yaml")
    assert str(info.value) == f"plan.yaml: {message}"
    # a count beside one that fits is still a note (test_serving_plan_pd_fixes), not an error
    check_plan(parse_plan(_pd_plan(search={"tp": [1], "pp": [1], "disaggregation": {"prefill": [1, 8], "decode": [1]}},
                                   limits={"max_devices": 4})), CATALOG, "plan.yaml")
    path = _write(tmp_path, serving_plan(hardware=[{"name": "a100-80gb", "usd_per_device_hour": 1.8}],
                                         search={"tp": [1], "pp": [1],
                                                 "disaggregation": {"prefill": [8], "decode": [8, 9]}},
                                         limits={"max_devices": 4}))
    for verb in ("validate", "plan"):
        assert main([verb, str(path)] + (["--out", str(tmp_path)] if verb == "plan" else [])) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"llmsim: error: {path}: {message}", err
    assert "search.disaggregation: prefill [8], decode [8, 9] take at least 16 devices" in DOCS


# 4. cp's allowed values run to seq_len

def test_cp_lists_every_allowed_value_up_to_seq_len(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {**GOOD, "workload": {"model": {"preset": "llama3-8b", "seq_len": 8192}, "mode": "train",
                                                  "batch": 8},
                             "search": {"cp": [3]}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llmsim: error: {path}: search.cp: 3 does not divide seq_len=8192; allowed values: 1, 2, 4, 8, "
                   f"16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192"), err
    assert "`search.cp: [3]` on seq_len 8,192" in DOCS


# 5. "meets goal" agrees with the numbers shown

def _top(deadline_days: float | None = None) -> tuple[Any, Any]:
    plan = small_plan(simulate=False, top_k=1)
    if deadline_days is not None:
        plan = plan.model_copy(update={"goal": plan.goal.model_copy(update={"deadline_days": deadline_days})})
    rows, _ = search(plan, hardware(plan, small_catalog()))
    return plan, first_rows(rows, 1)[0]


def test_a_row_the_simulation_finds_past_the_goal_does_not_meet_it() -> None:
    plan, e = _top()
    assert e.feasible and plan.goal.deadline_s is not None
    late = e.time_to_goal_s * 1.003   # 0.3% slower in the simulation, past a deadline set between the two
    deadline_days = (e.time_to_goal_s + late) / 2 / 86400
    plan, e = _top(deadline_days)
    late = e.time_to_goal_s * 1.003
    limits, reasons, _ = judge(plan, {"time_to_goal_s": late, "cost_usd": 1.0, "energy_j": 1.0}, 0.0)
    assert limits == ("deadline",)
    e.sim = dict(time_to_goal_s=late, cost_usd=e.cost_usd, energy_j=e.energy_j, feasible=False, reason=reasons[0])
    assert meets_goal(e, simulated=True) == f"no, as simulated: {reasons[0]} (as estimated: yes)"
    assert meets_goal(e, simulated=False) == "yes"
    assert meets_goal(replace(e, sim={**e.sim, "feasible": True}), simulated=True) == "yes"
    # the numbers shown are on the side of the deadline they are
    bound = plan.goal.deadline_s
    for seconds in (e.time_to_goal_s, late):
        text = duration_against(seconds, bound)
        number, unit = text.split(" ")
        scale = {"days": 86400, "h": 3600, "s": 1, "ms": 1e-3}[unit]
        assert (float(number.replace(",", "")) * scale > bound) == (seconds > bound), (text, seconds, bound)
    assert '"meets goal" is yes where both the estimate and the simulation meet it' in DOCS


def test_a_reason_line_reads_as_breaking_its_limit() -> None:
    """A miss by 0.1% of a 30-day deadline was written "30.0 days > 30 days"."""
    plan = small_plan(goal={"tokens": 5e5, "deadline_days": 30.0})
    _, reasons, _ = judge(plan, {"time_to_goal_s": 30.03 * 86400, "cost_usd": 1.0, "energy_j": 1.0}, 0.0)
    assert reasons == ["deadline: 30.03 days > 30 days"]
    _, reasons, _ = judge(plan, {"time_to_goal_s": 31.0 * 86400, "cost_usd": 1.0, "energy_j": 1.0}, 0.0)
    assert reasons == ["deadline: 31.0 days > 30 days"]
    assert duration_against(30.03 * 86400, 30 * 86400) == "30.03 days"
    assert duration_against(29.98 * 86400, 30 * 86400) == "30.0 days"   # 30.0 meets 30: its side
    assert duration_against(29.96 * 86400, 29.98 * 86400) == "29.96 days"
    assert duration_against(20 * 86400, 30 * 86400) == "20.0 days"
