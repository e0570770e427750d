"""A serving plan with search.disaggregation: it refuses what the disaggregated simulation refuses, its
reports name a unit as a unit (plan.md, plan.csv, the terminal table), and it says which instance counts no unit
can use (planner.serve.unused_counts_note)."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from llmsim.errors import ScenarioError
from llmsim.planner.config import parse_plan
from llmsim.planner.serve import plan_serving, unused_counts_note
from llmsim.planner.serve_report import serving_document, serving_explanation, serving_frame
from llmsim.report.markdown import render_markdown
from tests.planner.test_serving_plan import _tasks
from tests.planner.test_serving_plan_pd_spec import _pd_plan


def _refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_plan(data)
    return str(info.value)


def test_static_batching_is_refused_with_search_disaggregation() -> None:
    plan = _pd_plan()
    serving = {**plan["serving"], "scheduler": {**plan["serving"]["scheduler"], "kind": "static"}}
    message = _refusal({**plan, "serving": serving})
    assert "search.disaggregation" in message and "static" in message
    assert "continuous" in message and "serving.scheduler.kind" in message
    parse_plan({**plan, "serving": serving, "search": {"tp": [1], "pp": [1]}})   # without the key: a plan


@pytest.mark.parametrize("counts, key", [({"prefill": [1, 1], "decode": [1]}, "search.disaggregation.prefill"),
                                         ({"prefill": [1], "decode": [2, 3, 2]}, "search.disaggregation.decode"),
                                         ({"prefill": [True], "decode": [1]}, "search.disaggregation.prefill[0]")])
def test_repeated_or_boolean_instance_counts_are_refused(counts: dict[str, Any], key: str) -> None:
    plan = _pd_plan()
    message = _refusal({**plan, "search": {**plan["search"], "disaggregation": counts}})
    assert f"{key}:" in message
    assert "repeated" in message or "boolean" in message


@pytest.mark.parametrize("search, key", [({"tp": [1, 1]}, "search.tp"), ({"tp": [True]}, "search.tp[0]"),
                                         ({"pp": [1, 2, 1]}, "search.pp"), ({"ep": [1, 1]}, "search.ep")])
def test_every_searched_degree_refuses_repeats_and_booleans(search: dict[str, Any], key: str) -> None:
    plan = _pd_plan()
    message = _refusal({**plan, "search": {**plan["search"], **search}})
    assert f"{key}:" in message
    assert "repeated" in message or "boolean" in message


def test_counts_no_unit_can_use_are_said_in_one_note() -> None:
    plan = parse_plan(_pd_plan(search={"tp": [1], "pp": [1],
                                       "disaggregation": {"prefill": [1, 10**9], "decode": [1, 100]}}))
    note = unused_counts_note(plan, [8])
    assert note is not None and "prefill 1000000000" in note and "decode 100" in note
    assert "limits.max_devices = 48" in note and "prefill 1," not in note
    assert unused_counts_note(parse_plan(_pd_plan()), [8]) is None


@pytest.fixture(scope="module")
def pd_results() -> tuple[Any, list[Any], list[Any]]:
    # one unit and the colocated replica of the smallest pd plan (candidate 1P-tp1+1D-tp1 and tp1-pp1)
    plan, tasks = _tasks(_pd_plan(search={"tp": [1], "pp": [1], "disaggregation": {"prefill": [1], "decode": [1]}}))
    return plan, tasks, plan_serving(tasks, plan.objective)


def test_plan_csv_writes_integer_counts_with_units(pd_results: tuple[Any, list[Any], list[Any]]) -> None:
    plan, _, results = pd_results
    assert {c.name for c in results} == {"1P-tp1+1D-tp1", "tp1-pp1"}
    text = serving_frame(plan, results).to_csv(index=False)
    header, *rows = text.splitlines()
    columns = header.split(",")
    for line in rows:
        cells = dict(zip(columns, line.split(",")))
        for name in ("tp", "pp", "prefill_instances", "prefill_tp", "decode_instances", "decode_tp", "replicas"):
            assert cells[name] == "" or cells[name].isdigit(), (name, cells[name])
    unit = [dict(zip(columns, line.split(","))) for line in rows if line.split(",")[columns.index("tp")] == ""]
    assert unit and unit[0]["prefill_tp"] == "1"


def test_plan_md_names_a_unit_by_its_label(pd_results: tuple[Any, list[Any], list[Any]]) -> None:
    plan, tasks, results = pd_results
    doc = serving_document(plan, serving_explanation(plan, results, None), results, 1.0, [], tasks[0].spec)
    table = render_markdown(doc).split("## Candidates")[1].split("##")[0]
    line = next(row for row in table.splitlines() if "1P-tp1+1D-tp1" in row)
    assert "tp1 pp1" not in line and "unit" in line
    assert "replicas / units" in table


def test_the_terminal_header_says_replica_or_unit(pd_results: tuple[Any, list[Any], list[Any]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    import llmsim.cli as cli
    plan, _, results = pd_results
    out = io.StringIO()
    monkeypatch.setattr(cli, "err_console", Console(file=out, width=200))
    monkeypatch.setattr(cli, "Console", lambda **_: Console(file=out, width=200))
    outcome = SimpleNamespace(results=results, top=[c for c in results if c.feasible],
                              explanation=serving_explanation(plan, results, None))
    cli._print_serving_plan(plan, outcome)
    assert "sustained (1 replica or unit)" in out.getvalue()
