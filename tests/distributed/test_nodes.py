"""A 2-node job on this host: two torchrun launches (--nnodes 2, --node-rank 0/1, c10d rendezvous on
127.0.0.1), two ranks per "node", give the cpu backend the same row as one node of 4 ranks.

The row is built by the cpu backend from the launcher's records both times (the 2-node run replaces
`llmsim.distributed.launch.launch` by `launch_nodes`), so losses, status and the strategy columns are
compared through the very code that makes a results row. tp2 x dp2: tensor parallelism inside a node, data
parallelism across the two (the layout torchrun's rank order gives: ranks 0-1 on one node).
"""

from __future__ import annotations

import functools
import json

import pytest

import llmsim.distributed.launch as launch_module
from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.distributed.launch import launch_nodes, torchrun_command
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim_plugins.cpu import CpuBackend, CpuSettings
from tests.conftest import TINY_SCENARIO

STEPS = 2
SETTINGS = CpuSettings(steps=STEPS, warmup=0, timeout_s=300, threads=1)
STRATEGY_COLUMNS = ("strategy", "dp", "tp", "pp", "cp", "sp", "zero", "micro_batch", "microbatches", "schedule",
                    "recompute", "n_devices", "m_submodels", "mode", "batch", "seq_len", "dtype", "params")


def test_torchrun_command_names_the_node_and_the_rendezvous() -> None:
    cmd = torchrun_command(2, 4, 1, "node0:29500", "job", ["--scenario", "s.yaml"])
    text = " ".join(cmd)
    assert "-m torch.distributed.run --nnodes 2 --nproc-per-node 4 --node-rank 1" in text
    assert "--rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id job" in text
    assert text.endswith("-m llmsim.distributed.worker --scenario s.yaml")


@pytest.mark.distributed
@pytest.mark.slow
def test_two_nodes_give_the_rows_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    workload = dict(TINY_SCENARIO["workload"], batch=4)
    scenario = parse_scenario(dict(TINY_SCENARIO, workload=workload,
                                   strategies=[{"name": "tp2-dp2", "tp": 2, "dp": 2}]))
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    case = plan_cases(scenario, registry)[0].case
    assert case.layout.world == 4

    one_node = CpuBackend(RunContext()).run(case, SETTINGS)
    calls: list[int] = []

    def two_nodes(spec, **kw):  # type: ignore[no-untyped-def]
        calls.append(spec.world)
        return launch_nodes(spec, 2, **kw)

    monkeypatch.setattr(launch_module, "launch", two_nodes)
    two = CpuBackend(RunContext()).run(case, SETTINGS)
    assert calls == [4]  # the row below came from the 2-node launch

    for row in (one_node, two):
        assert row.status == "ok", row.error
    assert json.loads(two.extra["losses"]) == pytest.approx(json.loads(one_node.extra["losses"]), rel=1e-6)
    assert len(json.loads(two.extra["losses"])) >= STEPS  # the timed steps (and the profiled one)
    one_row, two_row = one_node.row(), two.row()
    assert {c: two_row[c] for c in STRATEGY_COLUMNS} == {c: one_row[c] for c in STRATEGY_COLUMNS}
    assert two_row["n_devices"] == 4 and two_row["dp"] == 2 and two_row["tp"] == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_a_node_whose_rank_crashes_in_teardown_keeps_the_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo can abort a rank in teardown once the rendezvous store's node has gone ("terminate called without
    an active exception", seen in CI): rank 0 had written every rank's records, so the launch is complete,
    as `launch` treats it (tests/distributed/test_strategies.py)."""
    from llmsim.distributed.spec import WorkerSpec

    # one rank a node (dp2 over 2 nodes), the second node's rank aborts
    scenario = parse_scenario(dict(TINY_SCENARIO, workload=dict(TINY_SCENARIO["workload"], batch=2),
                                   strategies=[{"name": "dp2", "dp": 2}]))
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    case = plan_cases(scenario, registry)[0].case
    spec = WorkerSpec.from_layout(case.workload, case.sharing, case.strategy, case.layout, steps=1, warmup=0,
                                  threads=1)
    monkeypatch.setenv("LLMSIM_DIST_FAULT", "1:abort-at-exit:3")  # rank 0's result is in the other node's folder
    outcome = launch_nodes(spec, 2, timeout_s=300)
    assert outcome.error is None and len(outcome.records) == 2
    assert outcome.teardown is not None and "after the results were written" in outcome.teardown
