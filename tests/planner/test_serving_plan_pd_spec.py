"""Serving plans with prefill-decode disaggregated units (search.disaggregation) and with speculative decoding
(serving.speculative): each candidate's figures are what `llmsim run` of its scenario gives, the candidates the
simulation refuses are left out with their reason, and a plan without the keys is unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main
from llmsim.config import parse_scenario
from llmsim.planner import run_plan
from llmsim.planner.config import parse_plan
from llmsim.planner.search import resolve_hardware
from llmsim.planner.serve import DisaggUnit, plan_serving
from llmsim.planner.serve_report import SERVING_PLAN_COLUMNS, UNIT_COLUMNS, best_scenario, best_yaml, serving_frame
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import read_rows
from llmsim.runner import plan_cases, run_scenario
from tests.planner.test_serving_plan import CATALOG, _tasks, serving_plan

EAGLE = {"method": "eagle", "num_draft_tokens": 2, "acceptance": 0.7, "draft_layers": 1}


def _run(scenario_data: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """`llmsim run` of a scenario (plain data) on the slowed catalog devices: its one row."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    devices = [CATALOG.devices[n].model_dump(mode="json") for n in ("slow-a", "slow-h")]
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump({"entries": devices}))
    scenario = parse_scenario({**scenario_data, "hardware_catalog": ["slow.yaml"]}, "best.yaml")
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    planned = plan_cases(scenario, registry, "best.yaml", ["roofline"], scenario_dir=tmp_path)
    run = run_scenario(scenario, registry, planned, tmp_path / "runs", manager=manager, scenario_dir=tmp_path)
    [row] = read_rows(run.run_dir)
    assert row["status"] == "ok", row.get("error")
    return row


def _same(row: dict[str, Any], planned: dict[str, Any]) -> None:
    for key in ("slo_attainment", "ttft_p99_s", "tpot_p99_s", "goodput_rps", "e2e_p99_s"):
        assert row[key] == pytest.approx(planned[key], rel=1e-9), key


def _pd_plan(**over: Any) -> dict[str, Any]:
    # one hardware choice, tp 1, units of 1 prefill and 1 or 2 decode instances; a goal no candidate sustains alone
    return serving_plan(rate=300.0, **{"hardware": [{"name": "slow-a", "usd_per_device_hour": 1.8}],
                                       "search": {"tp": [1], "pp": [1],
                                                  "disaggregation": {"prefill": [1], "decode": [1, 2]}},
                                       "limits": {"max_devices": 48}, **over})


@pytest.fixture(scope="module")
def pd_searched() -> tuple[Any, list[Any], list[Any]]:
    plan, tasks = _tasks(_pd_plan())
    return plan, tasks, plan_serving(tasks, plan.objective)


def test_units_are_searched_beside_the_colocated_replicas(pd_searched: tuple[Any, list[Any], list[Any]]) -> None:
    plan, tasks, results = pd_searched
    units = sorted(c.name for c in results if c.unit is not None)
    assert units == ["1P-tp1+1D-tp1", "1P-tp1+2D-tp1"]
    assert [c.name for c in results if c.unit is None] == ["tp1-pp1"]
    for c in results:
        if c.unit is not None and c.feasible:
            assert c.replicas >= 2   # one unit does not sustain the goal
            assert c.devices_used == c.replicas * c.unit.devices
            assert c.cost_usd == pytest.approx(c.n_devices * 1.8)
            assert c.at_goal is not None and c.at_goal.met and c.at_goal.rate == pytest.approx(300.0 / c.replicas)
    frame = serving_frame(plan, results)
    assert list(frame.columns) == (SERVING_PLAN_COLUMNS[:SERVING_PLAN_COLUMNS.index("replicas") + 1] + UNIT_COLUMNS
                                   + SERVING_PLAN_COLUMNS[SERVING_PLAN_COLUMNS.index("replicas") + 1:])
    row = frame[frame["prefill_instances"].notna() & (frame["decode_instances"] == 2)].iloc[0]
    assert (row["prefill_tp"], row["decode_tp"]) == (1, 1)
    assert frame[frame["prefill_instances"].isna()]["tp"].tolist() == [1]
    # goodput_rps is the deployment's, as a colocated row's and the terminal's: a unit row's run is one of `replicas`
    # units at its share of the goal (trial 23b: plan.csv said one unit's, the terminal all of them)
    unit = next(c for c in results if c.unit is not None and c.feasible and c.unit.label() == "1P-tp1+2D-tp1")
    assert row["goodput_rps"] == pytest.approx(unit.at_goal.row["goodput_rps"] * unit.replicas)
    assert row["goodput_rps"] > 0.9 * 300.0


def test_a_units_rates_are_what_llmsim_run_of_its_best_yaml_gives(pd_searched: tuple[Any, list[Any], list[Any]],
                                                                   tmp_path: Path) -> None:
    """best.yaml of a unit describes ONE unit at its share of the goal: `llmsim run` gives that run's figures;
    at the unit's sustained rate, the figures the rate search found under the SLO."""
    plan, tasks, results = pd_searched
    [c] = [c for c in results if c.unit == DisaggUnit(1, 1, 2, 1) and c.feasible]
    hw = resolve_hardware(plan, CATALOG)[0]
    spec = tasks[0].spec
    scenario = best_scenario(plan, c, hw, spec)
    assert scenario["serving"]["disaggregation"] == {"prefill": {"replicas": 1, "tp": 1},
                                                     "decode": {"replicas": 2, "tp": 1},
                                                     "kv_transfer": {"layerwise": False}}
    assert "replicas" not in scenario["serving"]
    text = best_yaml(plan, c, hw, spec)
    assert f"# units: {c.replicas}." in text and yaml.safe_load(text) == scenario
    _same(_run(scenario, tmp_path / "goal"), c.at_goal.row)
    assert c.at_sustained is not None and c.at_sustained.met
    sustained = {**scenario, "serving": {**scenario["serving"],
                                         "arrival": {**scenario["serving"]["arrival"], "rate": c.sustained_rate}}}
    row = _run(sustained, tmp_path / "sustained")
    _same(row, c.at_sustained.row)
    assert row["slo_attainment"] >= plan.serving.slo.percentile / 100


def test_a_plan_without_the_keys_has_no_unit_columns_or_candidates() -> None:
    plan, tasks = _tasks(serving_plan())
    assert all(t.unit is None for t in tasks)
    assert list(serving_frame(plan, plan_serving(tasks[:1], plan.objective)).columns) == SERVING_PLAN_COLUMNS


def test_units_larger_than_max_devices_are_not_candidates() -> None:
    _, tasks = _tasks(_pd_plan(limits={"max_devices": 2}))
    assert sorted(t.unit.label() for t in tasks if t.unit is not None) == ["1P-tp1+1D-tp1"]


def test_speculative_candidates_equal_llmsim_run_with_the_block(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Every pp 1 candidate is priced with the plan's speculation; pp 2 ones are left out, counted with their
    reason; best.yaml carries the block and `llmsim run` of it gives the winner's figures."""
    data = serving_plan(hardware=[{"name": "slow-h", "usd_per_device_hour": 3.5}], search={"tp": [1], "pp": [1, 2]})
    data["serving"] = {**data["serving"], "scheduler": {"kind": "chunked-prefill", "max_num_seqs": 8,
                                                        "max_batched_tokens": 256}, "speculative": EAGLE}
    plan = parse_plan(data)
    outcome = run_plan(plan, CATALOG, tmp_path / "plan")
    [winner] = outcome.top
    assert winner.pp == 1
    [left] = [c for c in outcome.results if not c.feasible]
    assert left.pp == 2 and left.reason.startswith("error: speculative decoding (serving.speculative) is modeled "
                                                   "at pp 1 only")
    best = yaml.safe_load((outcome.run_dir / "best.yaml").read_text())
    assert best["serving"]["speculative"] == {**EAGLE}
    _same(_run(best, tmp_path / "run"), winner.at_goal.row)
    # the same plan without speculation prices differently (the block reaches the simulation)
    plain = dict(data, search={"tp": [1], "pp": [1]},
                 serving={k: v for k, v in data["serving"].items() if k != "speculative"})
    plain_plan, tasks = _tasks(plain)
    [base] = plan_serving(tasks, plain_plan.objective)
    assert base.at_goal.row["tpot_p99_s"] != pytest.approx(winner.at_goal.row["tpot_p99_s"])
    # the terminal counts the candidates left out, with their reason, on one line
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    devices = [CATALOG.devices[n].model_dump(mode="json") for n in ("slow-a", "slow-h")]
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump({"entries": devices}))
    capsys.readouterr()
    assert main(["plan", str(path), "--out", str(tmp_path / "out"), "--hardware", str(tmp_path / "slow.yaml")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "dropped" in line]
    assert len(notes) == 1 and "1 of 2 candidates dropped" in notes[0] and "pp 1 only" in notes[0]


def test_a_unit_on_a_tpu_slice_is_left_out_with_the_reason() -> None:
    """The disaggregated simulation refuses a TPU slice (modeled_disaggregated): such units are not searched, each
    saying why as a candidate the cost model cannot price does."""
    from llmsim.planner.search import sharing_choice
    from llmsim.planner.serve import rate_search, serving_tasks
    plan = parse_plan(serving_plan(hardware=[{"name": "tpu-v5e"}],
                                   search={"tp": [1], "pp": [1], "disaggregation": {"prefill": [1], "decode": [1]}}))
    tasks = serving_tasks(plan, resolve_hardware(plan, CATALOG), sharing_choice(plan))
    [unit] = [t for t in tasks if t.unit is not None]
    out, _ = rate_search(unit)
    assert out.limits == ("error",) and "not modeled on a TPU slice" in out.reason
