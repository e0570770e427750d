"""The runner keeps every row: failures, skips, interruptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from llmsim import Backend, Case, hookimpl
from llmsim.config import parse_scenario
from llmsim.errors import ScenarioError
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import COLUMNS, fill_derived
from llmsim.report.build import write_report
from llmsim.results import read_rows
from llmsim.runner import _backend_settings, plan_cases, run_scenario
from tests.conftest import TINY_SCENARIO


class Fake(Backend):
    """Modeled backend with one device: its step time is the batch size; 'bad' strategies raise."""

    name = "fake"
    kind = "modeled"

    def run(self, case: Case, settings):
        if case.strategy.name.startswith("bad"):
            raise ValueError("model exploded")
        if case.strategy.name.startswith("stop"):
            raise KeyboardInterrupt
        r = case.result(self, step_time_s=float(case.workload.batch), c_per_submodel_s=float(case.workload.batch))
        return fill_derived(r, case.workload.tokens_per_step)


class Absent(Fake):
    name = "absent"

    @classmethod
    def availability(cls):
        return "needs a device this machine lacks"


class FakePlugin:
    @hookimpl
    def llmsim_backends(self):
        return [Fake, Absent]


def _registry() -> tuple[BackendRegistry, object]:
    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(FakePlugin(), name="fake")
    return BackendRegistry.from_manager(manager), manager


def _run(tmp_path: Path, strategies: list[str], backends: dict | None = None):
    data = dict(TINY_SCENARIO, strategies=[{"name": s} for s in strategies], backends=backends or {"fake": {}})
    scenario = parse_scenario(data)
    registry, manager = _registry()
    planned = plan_cases(scenario, registry)
    return run_scenario(scenario, registry, planned, tmp_path, manager=manager)


def test_rows_have_every_contract_column_and_are_persisted(tmp_path: Path) -> None:
    outcome = _run(tmp_path, ["one", "two"])
    rows = read_rows(outcome.run_dir)
    assert len(rows) == 2
    assert set(COLUMNS) <= set(rows[0])
    header = (outcome.run_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert header[: len(COLUMNS)] == list(COLUMNS)
    assert rows[0]["scaling_efficiency"] == 1.0
    for name in ("scenario.yaml", "environment.json"):
        assert (outcome.run_dir / name).exists()


def test_a_raising_backend_gives_a_failed_row_and_the_run_goes_on(tmp_path: Path) -> None:
    outcome = _run(tmp_path, ["bad-one", "good"])
    rows = {r["case"]: r for r in read_rows(outcome.run_dir)}
    assert rows["bad-one"]["status"] == "failed"
    assert "ValueError: model exploded" in rows["bad-one"]["error"]
    assert rows["good"]["status"] == "ok"
    write_report(outcome.run_dir)
    assert "model exploded" in (outcome.run_dir / "report.md").read_text()


def test_an_unavailable_backend_gives_skipped_rows_with_the_reason(tmp_path: Path) -> None:
    outcome = _run(tmp_path, ["one"], {"fake": {}, "absent": {}})
    rows = {r["backend"]: r for r in read_rows(outcome.run_dir)}
    assert rows["absent"]["status"] == "skipped"
    assert "needs a device this machine lacks" in rows["absent"]["error"]


def test_interrupt_keeps_finished_rows_and_resume_finishes(tmp_path: Path) -> None:
    outcome = _run(tmp_path, ["first", "stop-here", "third"])
    assert outcome.interrupted
    assert [r["case"] for r in read_rows(outcome.run_dir)] == ["first"]
    # Resume with the stop removed: only the missing cases run.
    data = dict(TINY_SCENARIO, strategies=[{"name": "first"}, {"name": "stop-here"}, {"name": "third"}],
                backends={"fake": {}})
    scenario = parse_scenario(data)
    registry, manager = _registry()
    planned = [p for p in plan_cases(scenario, registry) if p.case.name != "stop-here"]
    resumed = run_scenario(scenario, registry, planned, tmp_path, manager=manager, resume=outcome.run_dir)
    assert sorted(r["case"] for r in read_rows(resumed.run_dir)) == ["first", "third"]
    lines = (outcome.run_dir / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["case"] for line in lines] == ["first", "third"]  # "first" was not redone


def test_unknown_backend_lists_the_installed_ones() -> None:
    scenario = parse_scenario(dict(TINY_SCENARIO, backends={"gpu9000": {}}))
    registry, _ = _registry()
    with pytest.raises(ScenarioError, match=r"s.yaml: backends.gpu9000: unknown backend 'gpu9000'; allowed: "
                                            r"absent, fake"):
        plan_cases(scenario, registry, "s.yaml")


def test_backend_settings_are_validated_by_the_plugin_model() -> None:
    scenario = parse_scenario(dict(TINY_SCENARIO, backends={"fake": {"speed": 3}}))
    registry, _ = _registry()
    with pytest.raises(ScenarioError, match=r"backends.fake.speed: unknown setting of backend 'fake'"):
        plan_cases(scenario, registry, "s.yaml")


class Repeating(Fake):
    """A plugin whose own sweep yields one point twice (the built-in lists refuse repeats when validated)."""

    name = "repeating"

    @classmethod
    def sweep(cls, settings):
        return [("@x=1", settings), ("@x=2", settings), ("@x=1", settings)]


def test_a_sweep_that_repeats_a_point_is_refused_before_anything_runs() -> None:
    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})

    class Plugin:
        @hookimpl
        def llmsim_backends(self):
            return [Repeating]

    manager.register(Plugin(), name="repeating")
    scenario = parse_scenario(dict(TINY_SCENARIO, backends={"repeating": {}}))
    with pytest.raises(ScenarioError, match=r"^s.yaml: backends.repeating: the sweep has the point 'x=1' more than "
                                            r"once; each point runs once$"):
        plan_cases(scenario, BackendRegistry.from_manager(manager), "s.yaml")


# -- Ctrl-C always stops the run (issue 15 leftovers: about 1 in 4 Ctrl-C was swallowed) --------------------

class Swallowing(Fake):
    """A backend whose case presses Ctrl-C on itself while inside code that loses the KeyboardInterrupt:
    'eat' strategies swallow it (as a `__del__` or a GC callback does: "Exception ignored in ..."), 'wrap'
    ones turn it into another exception (as a library's callback can). 'loop' ones time steps, losing each."""

    name = "swallowing"
    ran: list[str] = []

    def run(self, case: Case, settings):
        import os
        import signal

        Swallowing.ran.append(case.strategy.name)
        if case.strategy.name.startswith(("eat", "wrap")):
            try:
                os.kill(os.getpid(), signal.SIGINT)  # delivered to this (the main) thread at once
            except KeyboardInterrupt as exc:
                if case.strategy.name.startswith("wrap"):
                    raise RuntimeError("a library's callback failed") from exc
        if case.strategy.name.startswith("loop"):
            from llmsim.measure.device import CpuDevice
            from llmsim.measure.loop import time_steps

            def step(mark):
                Swallowing.ran.append("step")
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                except KeyboardInterrupt:
                    pass

            time_steps(step, CpuDevice(), steps=5, warmup=1)
        return super().run(case, settings)


def _run_swallowing(tmp_path: Path, strategies: list[str]):
    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})

    class Plugin:
        @hookimpl
        def llmsim_backends(self):
            return [Swallowing]

    manager.register(Plugin(), name="swallowing")
    registry = BackendRegistry.from_manager(manager)
    scenario = parse_scenario(dict(TINY_SCENARIO, strategies=[{"name": s} for s in strategies],
                                   backends={"swallowing": {}}))
    Swallowing.ran = []
    return run_scenario(scenario, registry, plan_cases(scenario, registry), tmp_path, manager=manager)


def test_a_ctrl_c_lost_inside_a_case_stops_the_run_after_that_case(tmp_path: Path) -> None:
    outcome = _run_swallowing(tmp_path, ["first", "eat", "third", "fourth"])
    assert outcome.interrupted
    assert Swallowing.ran == ["first", "eat"]  # nothing started after the Ctrl-C
    assert [r["case"] for r in read_rows(outcome.run_dir)] == ["first", "eat"]  # the finished case is kept


def test_a_ctrl_c_turned_into_another_exception_is_an_interrupt_not_a_failed_row(tmp_path: Path) -> None:
    outcome = _run_swallowing(tmp_path, ["first", "wrap", "third"])
    assert outcome.interrupted
    assert Swallowing.ran == ["first", "wrap"]
    assert [(r["case"], r["status"]) for r in read_rows(outcome.run_dir)] == [("first", "ok")]  # --resume redoes it


def test_a_ctrl_c_lost_inside_a_step_stops_the_timing_loop_at_the_next_step(tmp_path: Path) -> None:
    outcome = _run_swallowing(tmp_path, ["loop", "second"])
    assert outcome.interrupted
    assert Swallowing.ran == ["loop", "step"]  # the first warm-up step lost it; no other step ran
    assert read_rows(outcome.run_dir) == []


def test_a_ctrl_c_of_one_run_does_not_stop_what_runs_after_it(tmp_path: Path) -> None:
    """The request is the interrupted run's: after it, a launch or timing loop run outside a run (a backend
    called directly; the next test on the same pytest-xdist worker) must not stop at its first check()."""
    from llmsim import interrupt

    outcome = _run_swallowing(tmp_path, ["first", "eat", "third"])
    assert outcome.interrupted and not interrupt.requested()
    interrupt.check()  # raised KeyboardInterrupt: the flag outlived the run


def test_the_sigint_handler_is_restored_after_a_run(tmp_path: Path) -> None:
    import signal

    before = signal.getsignal(signal.SIGINT)
    _run_swallowing(tmp_path, ["first"])
    assert signal.getsignal(signal.SIGINT) is before


class _Slow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = 0
    slowdown: float = 1.0


class Nested(Fake):
    """A plugin whose setting is itself a mapping of keys (as the cluster's `straggler: {rank, slowdown}`)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        straggler: _Slow | None = None


@pytest.mark.parametrize("raw, message", [
    ({"straggler": 3}, r"backends.nested.straggler: 3: expected a mapping of keys; allowed: rank, slowdown$"),
    ({"straggler": {"rnak": 1}}, r"backends.nested.straggler.rnak: unknown key; allowed: rank, slowdown$"),
    ({"straggler": {"rank": [1, 2]}}, r"backends.nested.straggler.rank: \[1, 2\]: expected one integer, not a list$"),
    ({"strag": 1}, r"backends.nested.strag: unknown setting of backend 'nested'; allowed: straggler$"),
])
def test_a_nested_backend_setting_names_the_keys_allowed_where_it_broke(raw: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        _backend_settings("nested", Nested, raw, "s.yaml")


def test_a_training_case_with_an_inference_kernel_gets_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`attention: trtllm-mmha` changes only a decode step's KV read: a training case says so once per backend
    (run and validate), a decode case and a flash training case say nothing."""
    from llmsim.cli import main

    def scenario(mode: str, attention: str) -> Path:
        path = tmp_path / f"{mode}-{attention}.yaml"
        workload = {"model": {"preset": "tiny"}, "mode": mode, "batch": 2}
        path.write_text(yaml.safe_dump({"name": "k", "workload": workload, "strategies": [{"name": "tp1", "tp": 1}],
                                        "backends": {"roofline": {"hardware": "a100-80gb", "devices_per_node": 1,
                                                                     "attention": attention}}}))
        return path

    assert main(["validate", str(scenario("train", "trtllm-mmha"))]) == 0
    err = capsys.readouterr().err
    assert err.count("llmsim: note:") == 1 and "backends.roofline.attention" in err and "priced as flash" in err
    for mode, attention in (("decode", "trtllm-mmha"), ("train", "flash")):
        assert main(["validate", str(scenario(mode, attention))]) == 0
        assert "note:" not in capsys.readouterr().err


def test_a_tensor_parallel_group_over_nodes_gets_a_note_naming_the_inter_node_link(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tp 4 on a100-80gb-pcie (its catalog node is one NVLink-bridged pair): every tp all-reduce crosses pcie4
    between the pairs; validate (and run, through the same load) says so, naming the link and its bandwidth,
    once per (backend, strategy); tp 2 (one pair) says nothing. Training and inference alike."""
    from llmsim.cli import main

    def scenario(mode: str, tp: int) -> Path:
        path = tmp_path / f"{mode}-{tp}.yaml"
        workload = {"model": {"preset": "tiny"}, "mode": mode, "batch": 4}
        path.write_text(yaml.safe_dump({"name": "k", "workload": workload,
                                        "strategies": [{"name": f"tp{tp}", "tp": tp}],
                                        "backends": {"roofline": {"hardware": "a100-80gb-pcie", "nodes": 2}}}))
        return path

    for mode in ("train", "decode"):
        path = scenario(mode, 4)
        assert main(["validate", str(path)]) == 0
        err = capsys.readouterr().err
        assert err.count("llmsim: note:") == 1, err
        assert (f"llmsim: note: {path}: backends.roofline, strategy tp4: tp = 4 spans 2 nodes of 2 a100-80gb-pcie "
                f"(devices_per_node 2): each tensor-parallel all-reduce crosses the inter-node link pcie4 (31.5 GB/s "
                f"per device per direction) besides nvlink3-bridge (300 GB/s) inside a node") in err
        assert main(["validate", str(scenario(mode, 2))]) == 0
        assert "note:" not in capsys.readouterr().err


def test_a_degree_refused_on_one_of_several_backends_offers_the_values_every_backend_takes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """dp 3 on a batch of 4, run on cpu (any world) and a 2-device roofline: the message offers the dp every
    backend lays out (2, or omitted), not the batch's divisors alone (trial 49: 1 and 4 were then refused)."""
    import yaml

    from llmsim.cli import main

    data = {"name": "two-worlds", "workload": {"model": {"preset": "gpt2-small", "layers": 2, "seq_len": 64},
                                               "batch": 4, "dtype": "float32"},
            "strategies": [{"name": "d", "dp": 3}],
            "backends": {"cpu": {"steps": 1, "warmup": 0},
                         "roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 2}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("; on every backend here (cpu, roofline): dp among 2, or omitted"), err
    data["backends"].pop("cpu")
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    assert "on every backend here" not in capsys.readouterr().err     # one backend: its own list says it


def test_a_strategy_without_dp_that_fills_backends_differently_is_noted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """dp omitted: 1 on the cpu backend, 2 on a 2-device roofline; validate says the rows are two layouts (trial
    46/49), and says nothing where every backend runs the same dp."""
    import yaml

    from llmsim.cli import main

    data = {"name": "fill", "workload": {"model": {"preset": "gpt2-small", "layers": 2, "seq_len": 64},
                                         "batch": 4, "dtype": "float32"},
            "strategies": [{"name": "single"}],
            "backends": {"cpu": {"steps": 1, "warmup": 0},
                         "roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 2}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"llmsim: note: {path}: strategies[0].dp: omitted, so each backend fills its devices: dp 1 on cpu, dp 2 "
            f"on roofline; their rows are different layouts") in err, err
    data["backends"]["roofline"]["devices_per_node"] = 1
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    assert "strategies[0].dp" not in capsys.readouterr().err
