"""Uneven pipeline stages through the modeled backends (roofline and cluster): a scenario whose layers do
not divide over the stages runs, the row says each stage's layers, and the slowest stage sets the step."""

from __future__ import annotations

from typing import Any

import pytest

from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases

REGISTRY = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "roofline,cluster"}))
CLUSTER = {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 8}
# GPT-2 small with 11 layers: 11 % 4 != 0
WORKLOAD = {"model": {"preset": "gpt2-small", "seq_len": 256, "layers": 11}, "mode": "train", "batch": 16}


def _rows(strategies: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    scenario = parse_scenario({"name": "uneven", "workload": WORKLOAD, "strategies": strategies,
                               "backends": {"roofline": CLUSTER, "cluster": CLUSTER}})
    out = {}
    for planned in plan_cases(scenario, REGISTRY):
        out[(planned.case.name, planned.backend.name)] = planned.backend(RunContext()).run(planned.case,
                                                                                             planned.settings)
    return out


def test_layers_that_do_not_divide_run_on_both_modeled_backends() -> None:
    rows = _rows([{"name": "default", "pp": 4, "tp": 2},
                  {"name": "heavy-middle", "pp": 4, "tp": 2, "stage_layers": [3, 4, 3, 1]},
                  {"name": "heavy-last", "pp": 4, "tp": 2, "stage_layers": [1, 1, 1, 8]}])
    for (name, backend), r in rows.items():
        assert r.status == "ok", (name, backend, r.error)
        assert r.compute_time_s + r.comm_time_s + r.bubble_time_s + r.other_time_s == pytest.approx(r.step_time_s)
    assert rows[("default", "roofline")].stage_layers == "3,3,3,2"
    assert rows[("heavy-middle", "cluster")].stage_layers == "3,4,3,1"
    for backend in ("roofline", "cluster"):
        # the slowest stage sets the pace: a 4-layer middle stage, or 8 layers and the LM head on the last
        default, middle, last = (rows[(n, backend)] for n in ("default", "heavy-middle", "heavy-last"))
        assert default.step_time_s < middle.step_time_s < last.step_time_s, backend
        assert middle.extra["critical_stage"] == 1 and last.extra["critical_stage"] == 3
    # the simulation plays the lighter stages' faster fill and drain; the closed form counts the slowest's
    assert rows[("heavy-last", "cluster")].bubble_time_s < rows[("heavy-last", "roofline")].bubble_time_s
