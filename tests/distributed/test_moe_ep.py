"""Mixture of experts run for real over several gloo processes: expert parallelism (token dispatch and combine
by all-to-all), with tensor and pipeline parallelism, against the single process (tiny-moe, float32).

Correctness as for the dense strategies (tests/distributed/test_strategies.py): the losses of two steps from
the same seed equal the single process's: step 1 checks the forward (routing, dispatch, combine, the aux
loss's value), step 2 the gradients (expert gradients reduced over the expert-data-parallel group only) and
the update. The single process runs the same micro-batches (the aux loss is per micro-batch, as in
Megatron-Core). The router's measured loads come back as extra `expert_tokens` and expert_load_imbalance.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmsim.backend import Case, RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim.workload.profile import profile_workload
from llmsim.workload.step import WorkloadStep
from llmsim_plugins.cpu import CpuBackend, CpuSettings

pytestmark = pytest.mark.distributed

STEPS = 2
SETTINGS = CpuSettings(steps=STEPS, warmup=0, timeout_s=240, profile_comm=False)


def _case(batch: int = 4, model: dict[str, Any] | None = None, **strategy: Any) -> Case:
    scenario = parse_scenario({
        "name": "moe-ep", "workload": {"model": {"preset": "tiny-moe", **(model or {})}, "batch": batch,
                                       "dtype": "float32"},
        "strategies": [dict(name="s", **strategy)], "backends": {"cpu": {}}})
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    return plan_cases(scenario, registry)[0].case


def _single_process_losses(case: Case) -> list[float]:
    step = WorkloadStep(case.workload, case.sharing, seed=case.seed, micro_batch=case.layout.micro_batch)
    return [float(step.step()) for _ in range(STEPS)]


EP_STRATEGIES = {
    "ep": dict(dp=2, ep=2),
    "ep-shared-experts": dict(dp=2, ep=2),
    "ep-tp": dict(dp=2, ep=2, tp=2),          # world 4; experts column/row-parallel over tp (etp = tp)
    "ep-tp-etp1": dict(dp=2, ep=2, tp=2, etp=1),  # world 4; experts whole on each TP rank
    "ep-pp": dict(dp=2, ep=2, pp=2, schedule="1f1b"),  # world 4
}


@pytest.mark.parametrize("name", list(EP_STRATEGIES))
def test_expert_parallel_matches_the_single_process_loss(name: str) -> None:
    model = {"moe": {"shared_experts": 1}} if name == "ep-shared-experts" else None
    case = _case(batch=4 if "pp" not in name else 8, model=model, **EP_STRATEGIES[name])
    r = CpuBackend(RunContext()).run(case, SETTINGS)
    assert r.status == "ok", r.error
    assert r.ep == 2 and r.params_active == profile_workload(case.workload, case.sharing).active_params
    notes = json.loads(r.extra["torch_parallelism"])
    assert "all_to_all_single" in notes["ep"]
    losses = json.loads(r.extra["losses"])[:STEPS]
    assert losses == pytest.approx(_single_process_losses(case), rel=1e-5, abs=1e-5)
    loads = json.loads(r.extra["expert_tokens"])
    tokens = case.workload.tokens_per_step
    assert len(loads) == 2 and all(sum(layer) == STEPS * tokens * 2 for layer in loads)  # top-2, every step
    assert r.expert_load_imbalance == pytest.approx(max(max(layer) * 4 / sum(layer) for layer in loads))


def test_moe_tensor_parallel_without_expert_parallelism() -> None:
    case = _case(tp=2)
    r = CpuBackend(RunContext()).run(case, SETTINGS)
    assert r.status == "ok", r.error
    losses = json.loads(r.extra["losses"])[:STEPS]
    assert losses == pytest.approx(_single_process_losses(case), rel=1e-5, abs=1e-5)


def test_expert_parallel_unsupported_combinations_are_skipped_rows() -> None:
    r = CpuBackend(RunContext()).run(_case(dp=2, ep=2, zero=3), SETTINGS)
    assert r.status == "skipped" and "ZeRO" in r.error
