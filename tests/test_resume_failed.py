"""--resume runs a failed case again: a failed row is not done (results.ResultStore.done)."""

from __future__ import annotations

import json
from pathlib import Path

from llmsim import Backend, Case, hookimpl
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import ResultStore, fill_derived, read_rows
from llmsim.runner import plan_cases, run_scenario
from tests.conftest import TINY_SCENARIO


class Flaky(Backend):
    """Fails a case the first time it sees it, succeeds from the second time on; counts its calls."""

    name = "flaky"
    kind = "modeled"
    calls: dict[str, int] = {}

    def run(self, case: Case, settings):
        n = Flaky.calls[case.name] = Flaky.calls.get(case.name, 0) + 1
        if n == 1 and case.strategy.name.startswith("flaky"):
            raise RuntimeError("transient failure")
        r = case.result(self, step_time_s=1.0, c_per_submodel_s=1.0)
        return fill_derived(r, case.workload.tokens_per_step)


class FlakyPlugin:
    @hookimpl
    def llmsim_backends(self):
        return [Flaky]


def _run(tmp_path: Path, resume: Path | None = None):
    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(FlakyPlugin(), name="flaky")
    registry = BackendRegistry.from_manager(manager)
    scenario = parse_scenario(dict(TINY_SCENARIO, strategies=[{"name": "steady"}, {"name": "flaky-one"}],
                                   backends={"flaky": {}}))
    return run_scenario(scenario, registry, plan_cases(scenario, registry), tmp_path, manager=manager,
                        resume=resume)


def test_resume_runs_a_failed_case_again_and_keeps_the_finished_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Flaky, "calls", {})
    first = _run(tmp_path)
    rows = {r["case"]: r for r in read_rows(first.run_dir)}
    assert rows["flaky-one"]["status"] == "failed" and "transient failure" in rows["flaky-one"]["error"]
    assert rows["steady"]["status"] == "ok"
    assert ResultStore(first.run_dir).done() == {("steady", "flaky")}

    resumed = _run(tmp_path, resume=first.run_dir)
    assert resumed.run_dir == first.run_dir
    assert Flaky.calls == {"steady": 1, "flaky-one": 2}  # the failed case ran again, the finished one did not
    rows = {r["case"]: r for r in read_rows(first.run_dir)}
    assert rows["flaky-one"]["status"] == "ok" and rows["flaky-one"]["error"] is None
    lines = [json.loads(line)["case"] for line in (first.run_dir / "results.jsonl").read_text().splitlines()]
    assert lines == ["steady", "flaky-one", "flaky-one"]  # appended; the later row replaces the failed one
    assert ResultStore(first.run_dir).done() == {("steady", "flaky"), ("flaky-one", "flaky")}
