"""The xla backend: clean `skipped` rows without torch_xla; with it (marked `xla`, run by
scripts/xla-check.sh in its own environment with PJRT_DEVICE=CPU), real runs of the tiny preset whose
results agree with plain torch on the CPU.

The CPU reference is computed in the same environment (same torch), from the same seed: the xla
backend builds the model on the CPU and moves it, so both start from identical weights and inputs.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llmsim_plugins.xla as xla_plugin
from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases, run_scenario
from llmsim_plugins.xla import NOT_INSTALLED, XlaBackend, XlaSettings, pjrt_device
from tests.conftest import REPO, TINY_SCENARIO

HAVE_XLA = importlib.util.find_spec("torch_xla") is not None


def _scenario(mode: str = "train", **strategy: Any) -> Any:
    workload = dict(TINY_SCENARIO["workload"], mode=mode, decode_tokens=4)
    return parse_scenario(dict(TINY_SCENARIO, workload=workload, strategies=[dict(name="s", **strategy)],
                               backends={"xla": {"steps": 2, "warmup": 2}}))


def _case(mode: str = "train", **strategy: Any) -> Any:
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "xla"}))
    return plan_cases(_scenario(mode, **strategy), registry)[0].case


def test_module_imports_without_torch_xla() -> None:
    code = "import sys, llmsim_plugins.xla; assert 'torch_xla' not in sys.modules, 'imported at module level'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_not_installed_is_a_plain_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xla_plugin.importlib.util, "find_spec", lambda name: None)
    assert XlaBackend.availability() == NOT_INSTALLED
    assert "llmsim[xla]" in NOT_INSTALLED and "torch 2.9.0" in NOT_INSTALLED


def test_mismatched_torch_is_a_plain_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xla_plugin.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(xla_plugin.importlib.metadata, "version", lambda name: "2.5.1")
    reason = XlaBackend.availability()
    assert reason.startswith("torch_xla 2.5.1 needs the matching torch (2.5.x)")


def test_pjrt_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    monkeypatch.setattr(xla_plugin, "tpu_present", lambda: False)
    assert pjrt_device("auto") == "CPU"
    monkeypatch.setattr(xla_plugin, "tpu_present", lambda: True)
    assert pjrt_device("auto") == "TPU"
    assert pjrt_device("CPU") == "CPU"
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    assert pjrt_device("auto") == "CPU"


def test_runner_writes_skipped_rows_without_torch_xla(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xla_plugin.importlib.util, "find_spec", lambda name: None)
    manager = get_plugin_manager(environ={"LLMSIM_PLUGINS": "xla"})
    registry = BackendRegistry.from_manager(manager)
    scenario = _scenario()
    outcome = run_scenario(scenario, registry, plan_cases(scenario, registry), tmp_path, manager=manager)
    rows = [json.loads(r) for r in (outcome.run_dir / "results.jsonl").read_text().splitlines() if r]
    assert [r["status"] for r in rows] == ["skipped"]
    assert NOT_INSTALLED in rows[0]["error"]


def test_several_devices_are_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xla_plugin, "xla_unavailable_reason", lambda: None)
    r = XlaBackend(RunContext()).run(_case(dp=2), XlaSettings())
    assert r.status == "skipped" and "several XLA devices" in r.error


# -- the step it runs, without torch_xla ---------------------------------------------------------
def _forward_counter(step: Any) -> list[int]:
    calls: list[int] = []
    step.model.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize(("micro_batch", "passes"), [(1, 2), (2, 1)])
def test_training_step_runs_batch_over_micro_batch_passes(micro_batch: int, passes: int) -> None:
    """micro_batch means on XLA what it means on the CPU (it used to run the whole batch in one pass)."""
    case = _case("train", micro_batch=micro_batch)  # the tiny scenario's batch is 2
    step = xla_plugin.build_step(case, "cpu", cut=lambda: None)
    assert step.micro_batch == micro_batch
    forwards = _forward_counter(step)
    xla_plugin.run_step(step, lambda label: None)
    assert len(forwards) == passes
    assert step.optimizer is not None and step.optimizer.param_groups[0]["params"] == step.trainable


def test_decode_cuts_the_graph_after_each_token_and_marks_only_the_first() -> None:
    case = _case("decode")
    cuts: list[int] = []
    step = xla_plugin.build_step(case, "cpu", cut=lambda: cuts.append(1))
    marks: list[str] = []
    tokens = xla_plugin.run_step(step, marks.append)
    assert marks == ["first_token"] and len(cuts) == case.workload.decode_tokens - 1
    assert tokens.shape == (case.workload.batch, 1)
    train = xla_plugin.build_step(_case("train"), "cpu", cut=lambda: None)
    marks.clear()
    xla_plugin.run_step(train, marks.append)
    assert marks == []  # no cut at backward_done: the optimizer stays in the training step's graph


def _fake_torch_xla(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch_xla's surface the backend uses, on the CPU: sync and wait are logged, no allocator stats."""
    import types

    import torch

    log: list[str] = []
    root, core, xm = (types.ModuleType(n) for n in ("torch_xla", "torch_xla.core", "torch_xla.core.xla_model"))
    debug, metrics = types.ModuleType("torch_xla.debug"), types.ModuleType("torch_xla.debug.metrics")
    root.__version__ = "0.0-fake"
    root.device = lambda: torch.device("cpu")
    root.sync = lambda: log.append("sync")
    xm.wait_device_ops = lambda: log.append("wait")
    xm.xla_device_hw = lambda device: "CPU"
    xm.get_memory_info = lambda device: {}
    metrics.metric_data = lambda name: None
    root.core, core.xla_model, root.debug, debug.metrics = core, xm, debug, metrics
    for module in (root, core, xm, debug, metrics):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(xla_plugin, "xla_unavailable_reason", lambda: None)
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    return log


@pytest.mark.parametrize("mode", ["train", "decode"])
def test_run_assembles_a_row_with_a_stubbed_torch_xla(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a measurement: the run path (device, loop, row) on the CPU behind a fake torch_xla."""
    log = _fake_torch_xla(monkeypatch)
    r = XlaBackend(RunContext()).run(_case(mode), XlaSettings(steps=2, warmup=1))
    assert r.status == "ok", r.error
    assert r.hardware == "cpu-host" and r.mfu > 0 and r.energy_source == "modeled"
    assert r.compute_time_s == r.step_time_s and r.other_time_s == 0.0
    assert r.peak_memory_bytes_per_device is None and "memory_note" in r.extra
    assert r.extra["clock"] == "perf_counter after sync + wait_device_ops" and "sync" in log and "wait" in log
    assert len(json.loads(r.extra["step_times_s"])) == 2
    if mode == "train":
        assert len(json.loads(r.extra["losses"])) == 3  # warm-up and timed steps
    else:
        assert 0 < r.ttft_s < r.step_time_s and len(json.loads(r.extra["decode_last_tokens"])) == 2


# -- with torch_xla (scripts/xla-check.sh) ------------------------------------------------------
xla = pytest.mark.skipif(not HAVE_XLA, reason="needs torch_xla (scripts/xla-check.sh makes an environment with it)")


@pytest.mark.xla
@xla
def test_train_on_xla_matches_the_cpu_loss() -> None:
    from llmsim.workload.step import WorkloadStep

    case = _case("train")
    r = XlaBackend(RunContext()).run(case, XlaSettings(steps=2, warmup=2))
    assert r.status == "ok", r.error
    extra = r.extra
    assert extra["graphs_compiled"] >= 1 and extra["compile_time_s"] > 0
    assert extra["graphs_compiled_timed"] == 0, "a timed step recompiled"
    assert r.step_time_s > 0 and r.latency_p99_s >= r.latency_p50_s and r.mfu > 0
    losses = json.loads(extra["losses"])  # 2 warm-up + 2 timed steps
    ref = WorkloadStep(case.workload, case.sharing, seed=case.seed, micro_batch=case.layout.micro_batch)
    expected = [ref.step().item() for _ in range(len(losses))]
    assert losses[0] == pytest.approx(expected[0], rel=1e-5)  # same weights and inputs: the forward agrees
    assert losses == pytest.approx(expected, rel=1e-3)         # drift after the first update (docs/accelerators.md)
    print(f"xla losses {losses}\ncpu losses {expected}\nxla step_time_s {r.step_time_s:.4f} "
          f"compile_time_s {extra['compile_time_s']:.2f} graphs {extra['graphs_compiled']}")


@pytest.mark.xla
@xla
def test_decode_on_xla_generates_the_cpu_tokens() -> None:
    from llmsim.workload.step import WorkloadStep

    case = _case("decode")
    r = XlaBackend(RunContext()).run(case, XlaSettings(steps=2, warmup=1))
    assert r.status == "ok", r.error
    assert 0 < r.ttft_s < r.step_time_s and r.tpot_s > 0
    assert r.extra["graphs_compiled_timed"] == 0
    ref = WorkloadStep(case.workload, case.sharing, seed=case.seed)
    expected = ref.step().flatten().tolist()
    assert json.loads(r.extra["decode_last_tokens"]) == expected
    print(f"xla decode step_time_s {r.step_time_s:.4f} ttft_s {r.ttft_s:.4f} "
          f"compile_time_s {r.extra['compile_time_s']:.2f} graphs {r.extra['graphs_compiled']}")
