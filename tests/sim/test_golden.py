"""Golden output: one deterministic scenario (faults and seeded jitter on) against checked-in numbers.

Like SimPy's docs/conftest.py, the simulation's output is diffed against a saved copy, so any change to
what the model does shows up here. After an intended change, regenerate and review the diff:

    LLMSIM_REGEN_GOLDEN=1 python -m pytest tests/sim/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases

GOLDEN = Path(__file__).with_name("golden") / "gpt2-tp2-pp2-interleaved.json"
RELATIVE_TOLERANCE = 1e-9
SCENARIO = {
    "name": "cluster-golden",
    "workload": {"model": {"preset": "gpt2-small", "seq_len": 256}, "mode": "train", "batch": 16},
    "strategies": [{"name": "tp2-pp2", "tp": 2, "pp": 2, "schedule": "interleaved", "virtual_stages": 2,
                    "recompute": "full"}],
    "backends": {"cluster": {"hardware": "a100-80gb", "nodes": 2, "devices_per_node": 4, "jitter": 0.05,
                             "straggler": {"rank": 2, "slowdown": 1.25},
                             "degraded_link": {"rank": 0, "link": "inter_node", "bandwidth_factor": 0.5}}},
    "seed": 3,
}
FIELDS = ("step_time_s", "compute_time_s", "comm_time_s", "bubble_time_s", "other_time_s", "energy_j_per_step",
          "t_ideal_s", "scaling_efficiency", "mfu", "peak_memory_bytes_per_device")


def _row() -> dict[str, float]:
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cluster"}))
    [planned] = plan_cases(parse_scenario(SCENARIO), registry)
    r = planned.backend(RunContext()).run(planned.case, planned.settings)
    assert r.status == "ok", r.error
    row = r.row()
    return {**{k: row[k] for k in FIELDS}, "sim_events": row["sim_events"], "critical_stage": row["critical_stage"]}


def test_the_simulated_step_matches_the_golden_output() -> None:
    got = _row()
    if os.environ.get("LLMSIM_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=RELATIVE_TOLERANCE, abs=0), key
