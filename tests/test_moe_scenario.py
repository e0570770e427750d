"""scenarios/moe-strategies.yaml: Mixtral-8x7B on 64 H100s, ep against tp and pp, roofline and cluster."""

from __future__ import annotations

from pathlib import Path

from llmsim.config import load_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import read_rows
from llmsim.runner import plan_cases, run_scenario
from tests.conftest import REPO


def test_the_moe_scenario_compares_ep_tp_and_pp_on_both_modeled_backends(tmp_path: Path) -> None:
    path = REPO / "scenarios" / "moe-strategies.yaml"
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    scenario = load_scenario(path)
    planned = plan_cases(scenario, registry, str(path), scenario_dir=path.parent)
    outcome = run_scenario(scenario, registry, planned, tmp_path, manager=manager, scenario_dir=path.parent)
    rows = read_rows(outcome.run_dir)
    assert {r["backend"] for r in rows} == {"roofline", "cluster"}
    assert all(r["status"] == "ok" and r["n_devices"] == 64 for r in rows), [(r["case"], r["error"]) for r in rows]
    by = {(r["strategy"], r["backend"]): r for r in rows}
    for backend in ("roofline", "cluster"):
        ep, tp = by[("ep8-pp4-vp8", backend)], by[("tp8", backend)]
        # every row reports the model's total and active parameters and the imbalance it assumed
        assert ep["params"] > 3 * ep["params_active"] > 0 and ep["expert_load_imbalance"] >= 1.0
        # tensor parallelism all-reduces every layer's activations; ep's all-to-alls stay inside a node
        assert ep["comm_time_s"] < tp["comm_time_s"]
        # overlapping the all-to-alls hides communication and takes no compute away
        overlap = by[("ep8-pp4-vp8-overlap", backend)]
        assert overlap["comm_time_s"] < ep["comm_time_s"] and overlap["step_time_s"] < ep["step_time_s"]
        # ep divides only the experts, tp every weight: less memory per device at tp 8
        assert tp["peak_memory_bytes_per_device"] < by[("ep8-zero1", backend)]["peak_memory_bytes_per_device"]
    for strategy in {r["strategy"] for r in rows}:  # the simulation plays the roofline's work
        roof, sim = by[(strategy, "roofline")], by[(strategy, "cluster")]
        assert abs(sim["step_time_s"] / roof["step_time_s"] - 1) < 0.1
