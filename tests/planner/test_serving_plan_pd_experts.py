"""Disaggregated units of a mixture of experts in a serving plan (planner.serve.candidate_units): each side takes
each expert layout a colocated replica of its tp is searched with, named in the candidate, written in plan.csv and
best.yaml (whose `llmsim run` gives the plan's figures); search.disaggregation.kv_transfer.link carries every
unit's KV cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main
from llmsim.planner.config import parse_plan
from llmsim.planner.search import resolve_hardware
from llmsim.planner.serve import candidate_units, plan_serving
from llmsim.planner.serve_report import UNIT_EXPERT_COLUMNS, best_scenario, serving_frame
from tests.planner.test_serving_plan import CATALOG, _tasks, serving_plan
from tests.planner.test_serving_plan_pd_spec import _run, _same


def _moe_plan(**search: Any) -> dict[str, Any]:
    """tiny-moe (4 experts, 4 heads) on slow A100s, tp 2 only, units of 1 prefill and 1 decode instance."""
    data = serving_plan(rate=100.0, hardware=[{"name": "slow-a", "usd_per_device_hour": 1.8}],
                        search={"tp": [2], "pp": [1], "disaggregation": {"prefill": [1], "decode": [1]}, **search},
                        limits={"max_devices": 32})
    data["workload"] = {"model": {"preset": "tiny-moe"}, "dtype": "bfloat16"}
    return data


def test_each_side_takes_each_expert_layout_of_its_tp() -> None:
    """search.ep [1, 2] x search.attention_dp [1, 2] at tp 2: 4 layouts per side, 16 units of 1P1D, each named
    by its sides' layouts; a dense model's units are the tps alone."""
    plan = parse_plan(_moe_plan(ep=[1, 2], attention_dp=[1, 2]))
    units = candidate_units(plan, 8)
    assert len(units) == 16
    names = {u.label() for u in units}
    assert {"1P-tp2+1D-tp2", "1P-tp2-ep2+1D-tp2-ep2-adp2", "1P-tp2-adp2+1D-tp2-ep2"} <= names
    dense = parse_plan({**_moe_plan(), "workload": {"model": {"preset": "tiny"}, "dtype": "bfloat16"}})
    assert [u.label() for u in candidate_units(dense, 8)] == ["1P-tp2+1D-tp2"]


@pytest.fixture(scope="module")
def moe_searched() -> tuple[Any, list[Any], list[Any]]:
    plan, tasks = _tasks(_moe_plan(ep=[1, 2], attention_dp=[1]))
    return plan, tasks, plan_serving(tasks, plan.objective)


def test_a_plan_of_a_mixture_of_experts_prices_units_with_an_expert_parallel_side(
        moe_searched: tuple[Any, list[Any], list[Any]], tmp_path: Path) -> None:
    """The 4 units (ep 1 or 2 on each side) are priced beside the colocated replicas; plan.csv carries each side's
    layout; best.yaml of the unit with both sides at ep 2 states them, and `llmsim run` of it gives the plan's
    figures at the goal."""
    plan, tasks, results = moe_searched
    units = {c.name: c for c in results if c.unit is not None}
    assert sorted(units) == ["1P-tp2+1D-tp2", "1P-tp2+1D-tp2-ep2", "1P-tp2-ep2+1D-tp2", "1P-tp2-ep2+1D-tp2-ep2"]
    c = units["1P-tp2-ep2+1D-tp2-ep2"]
    assert c.feasible, c.reason
    frame = serving_frame(plan, results)
    assert set(UNIT_EXPERT_COLUMNS) <= set(frame.columns)
    row = frame[(frame["prefill_ep"] == 2) & (frame["decode_ep"] == 2)].iloc[0]
    assert (row["prefill_etp"], row["decode_etp"], row["decode_attention_dp"]) == (1, 1, 1)
    # the side layouts price differently (the experts' GEMMs and their all-to-all)
    plain = units["1P-tp2+1D-tp2"]
    assert plain.at_goal is None or plain.at_goal.row["tpot_p99_s"] != pytest.approx(c.at_goal.row["tpot_p99_s"])
    hw = resolve_hardware(plan, CATALOG)[0]
    scenario = best_scenario(plan, c, hw, tasks[0].spec)
    assert scenario["serving"]["disaggregation"] == {"prefill": {"replicas": 1, "tp": 2, "ep": 2, "etp": 1},
                                                     "decode": {"replicas": 1, "tp": 2, "ep": 2, "etp": 1},
                                                     "kv_transfer": {"layerwise": False}}
    _same(_run(scenario, tmp_path / "goal"), c.at_goal.row)


def test_the_named_link_carries_every_units_kv_cache(tmp_path: Path) -> None:
    """search.disaggregation.kv_transfer.link: every unit's task prices its KV over that catalog link, and
    best.yaml names it; `llmsim run` of that best.yaml gives the plan's figures."""
    from llmsim.planner.search import sharing_choice
    from llmsim.planner.serve import serving_tasks
    data = _moe_plan(ep=[2], attention_dp=[1])
    data["search"]["disaggregation"]["kv_transfer"] = {"link": "ethernet-100g"}
    plan = parse_plan(data)
    tasks = serving_tasks(plan, resolve_hardware(plan, CATALOG), sharing_choice(plan), CATALOG.links["ethernet-100g"])
    units = [t for t in tasks if t.unit is not None]
    assert units and all(t.kv_link is not None and t.kv_link.name == "ethernet-100g" for t in units)
    [c] = [c for c in plan_serving(units, plan.objective)]
    assert c.feasible, c.reason
    scenario = best_scenario(plan, c, resolve_hardware(plan, CATALOG)[0], tasks[0].spec)
    assert scenario["serving"]["disaggregation"]["kv_transfer"] == {"link": "ethernet-100g", "layerwise": False}
    _same(_run(scenario, tmp_path / "goal"), c.at_goal.row)
    # the same unit over the hardware's own link (NVLink inside the node) transfers faster
    [fast] = plan_serving([t for t in _tasks(_moe_plan(ep=[2], attention_dp=[1]))[1] if t.unit is not None],
                          plan.objective)
    assert fast.at_goal.row["e2e_p99_s"] < c.at_goal.row["e2e_p99_s"]


def test_an_unknown_link_is_refused_in_one_line_with_the_catalogs_links(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = _moe_plan()
    data["hardware"] = [{"name": "a100-80gb", "usd_per_device_hour": 1.8}]
    data["search"]["disaggregation"]["kv_transfer"] = {"link": "carrier-pigeon"}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["plan", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"llmsim: error: {path}: search.disaggregation.kv_transfer.link: unknown link "
                          f"'carrier-pigeon'; allowed: ")
    assert "nvlink4" in err and "ethernet-100g" in err
