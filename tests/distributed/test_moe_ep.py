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
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmsim.backend import Case, RunContext
from llmsim.config import parse_scenario
from llmsim.distributed.launch import AGENT_STORE_ENV, rendezvous_store
from llmsim.distributed.spec import WorkerSpec
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases
from llmsim.workload.profile import profile_workload
from llmsim.workload.step import WorkloadStep
from llmsim_plugins.cpu import CpuBackend, CpuSettings

pytestmark = pytest.mark.distributed

STEPS = 2
SETTINGS = CpuSettings(steps=STEPS, warmup=0, timeout_s=240, profile_comm=False)


def _case(batch: int = 4, model: dict[str, Any] | None = None, mode: str = "train", **strategy: Any) -> Case:
    workload: dict[str, Any] = {"model": {"preset": "tiny-moe", **(model or {})}, "batch": batch, "dtype": "float32",
                                "mode": mode}
    if mode == "decode":
        workload["decode_tokens"] = 3
    scenario = parse_scenario({
        "name": "moe-ep", "workload": workload,
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


# Each case starts 2-4 processes that import torch (~10-20 s on a busy 2-core host): every run keeps `ep` (and,
# below, its gradients); the other combinations run in the `slow` step of CI (.ci/run).
def _ep_params(names):  # type: ignore[no-untyped-def]
    return [n if n == "ep" else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _ep_params(EP_STRATEGIES))
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


@pytest.mark.parametrize("mode", ["decode", pytest.param("prefill", marks=pytest.mark.slow)])
def test_expert_parallel_inference_routes_as_the_single_process(mode: str) -> None:
    """Prefill and decode (a prefill, then one token at a time through the KV cache) with the experts split over
    2 ranks: the router's counts per expert and layer, summed over the ranks, equal the single process's for
    the same global batch. The second MoE layer routes what the first layer's experts computed (through the
    combine), so a wrong dispatch, expert or combine shows there."""
    case = _case(mode=mode, dp=2, ep=2)
    r = CpuBackend(RunContext()).run(case, SETTINGS)
    assert r.status == "ok", r.error
    assert r.ep == 2 and "all_to_all_single" in json.loads(r.extra["torch_parallelism"])["ep"]
    step = WorkloadStep(case.workload, case.sharing, seed=case.seed, micro_batch=case.layout.micro_batch)
    for _ in range(STEPS):
        step.step()
    single = [m.tokens_per_expert.tolist() for m in step.model.moe_modules()]
    assert json.loads(r.extra["expert_tokens"]) == single
    assert r.step_time_s > 0 and (mode == "prefill" or r.ttft_s > 0 and r.tpot_s > 0)


@pytest.mark.slow
def test_moe_tensor_parallel_without_expert_parallelism() -> None:
    case = _case(tp=2)
    r = CpuBackend(RunContext()).run(case, SETTINGS)
    assert r.status == "ok", r.error
    losses = json.loads(r.extra["losses"])[:STEPS]
    assert losses == pytest.approx(_single_process_losses(case), rel=1e-5, abs=1e-5)


def test_expert_parallel_unsupported_combinations_are_skipped_rows() -> None:
    r = CpuBackend(RunContext()).run(_case(dp=2, ep=2, zero=3), SETTINGS)
    assert r.status == "skipped" and "ZeRO" in r.error


# -- gradients ---------------------------------------------------------------------------------------
# The losses above cannot see a constant factor on the expert gradients (AdamW's update is nearly invariant
# to the gradient's scale). These compare the gradients themselves after one backward and every reduction
# (before the optimizer): on each rank, every parameter it holds (non-expert: the replicated or sharded
# parameter, assembled over TP; expert: its local experts) against the single process's gradient of the same
# global batch. tests/distributed/ep_gradient_rank.py is the per-rank program.
GRAD_REL = 1e-5  # float32 all the way; the reductions reorder sums of a few terms

GRAD_STRATEGIES = {
    "ep": (dict(dp=2, ep=2), None),
    "ep-edp": (dict(dp=4, ep=2), None),  # world 4: edp = 2 ranks hold the same experts
    "ep-shared-experts": (dict(dp=2, ep=2), {"moe": {"shared_experts": 1}}),
    "ep-capacity": (dict(dp=2, ep=2), {"moe": {"capacity_factor": 1.0}}),
    "ep-tp": (dict(dp=2, ep=2, tp=2), None),
    "ep-tp-etp1": (dict(dp=2, ep=2, tp=2, etp=1), None),
    "ep-pp": (dict(dp=2, ep=2, pp=2, schedule="1f1b"), None),
}


def _rank_gradients(case: Case, tmp_path: Path) -> list[dict[str, dict[str, float]]]:
    """Run ep_gradient_rank.py on every rank of the case; each rank's per-parameter comparison."""
    spec = WorkerSpec.from_layout(case.workload, case.sharing, case.strategy, case.layout, seed=case.seed,
                                  steps=1, warmup=0, threads=1, profile_comm=False)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.model_dump_json())
    script = Path(__file__).with_name("ep_gradient_rank.py")
    with rendezvous_store() as port:  # held by this process: no parallel test can take it
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(spec.world),
                   OMP_NUM_THREADS="1", **{AGENT_STORE_ENV: "True"})
        failed, logs = _run_ranks(script, spec_path, tmp_path, env, spec.world)
    assert not failed, f"rank {failed[0][0]} failed:\n{logs[failed[0][0]][-3000:]}"
    return [json.loads((tmp_path / f"grads-rank{r}.json").read_text()) for r in range(spec.world)]


def _run_ranks(script: Path, spec_path: Path, tmp_path: Path, env: dict[str, str], world: int
               ) -> tuple[list[tuple[int, int | None]], list[str]]:
    procs = [subprocess.Popen([sys.executable, str(script), str(spec_path), str(tmp_path)],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for r in range(world)]
    try:
        while any(p.poll() is None for p in procs):  # a failed rank ends the run (the others would hang)
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        failed = [(r, p.returncode) for r, p in enumerate(procs) if p.poll() not in (None, 0)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        logs = [p.communicate()[0].decode(errors="replace") for p in procs]
    return failed, logs


@pytest.mark.parametrize("name", _ep_params(GRAD_STRATEGIES))
def test_expert_parallel_gradients_equal_the_single_process(name: str, tmp_path: Path) -> None:
    strategy, model = GRAD_STRATEGIES[name]
    case = _case(batch=8 if strategy.get("pp", 1) > 1 or strategy["dp"] > 2 else 4, model=model, **strategy)
    ranks = _rank_gradients(case, tmp_path)
    experts_seen: set[str] = set()
    for r, grads in enumerate(ranks):
        assert grads, f"rank {r} holds no gradient"
        for param, d in grads.items():
            assert d["ref_max_abs"] > 0, f"rank {r} {param}: the single process's gradient is zero"
            assert d["max_abs_diff"] <= GRAD_REL * d["ref_max_abs"], \
                f"rank {r} {param}: gradient off by {d['max_abs_diff']:.3g} (|g| {d['ref_max_abs']:.3g}, " \
                f"scale {d['ratio']:.6f} of the single process's)"
            if ".experts." in param:
                experts_seen.add(param)
    # every routed expert of every MoE layer was checked on some rank (each rank holds E/ep of them)
    assert len({p.split(".experts.")[0] + "." + p.split(".experts.")[1].split(".")[0] for p in experts_seen}) \
        == 2 * case.workload.model.moe.experts, sorted(experts_seen)  # tiny-moe: 2 MoE layers
