"""The plan's workload profile begun early (planner.profiling.PlanProfile) and the search readied beside it
(search.prepare_search): the same profile and the same rows whether it was traced in a forked worker, here, or
read back from the store; traced only when the store lacks it; a worker left unasked is stopped."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmsim.executor import ForkExecutor, LocalExecutor, fork_available
from llmsim.planner import search as search_module
from llmsim.planner.profiling import PlanProfile, sharing_choice, traced_profile, workload_profile
from llmsim.planner.search import SearchCaches, prepare_search, search
from llmsim.planner.space import axes_of, chain_heads, groups
from llmsim.workload import profile_store
from tests.planner.helpers import hardware, small_catalog, small_plan
from tests.planner.test_search_parallel import CASES, _fp8_plan, _same_rows

REPO = Path(__file__).resolve().parents[2]
needs_fork = pytest.mark.skipif(not fork_available(), reason="forked workers need Linux")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty profile store of this test's own (XDG_CACHE_HOME: profile_store.store_dir)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(profile_store.ENV_SWITCH, raising=False)
    return tmp_path / "llmsim" / "profiles"


def _workload() -> tuple:
    plan = small_plan()
    return plan.workload, sharing_choice(plan)


@needs_fork
def test_a_profile_traced_in_a_forked_worker_is_the_one_traced_here(store: Path) -> None:
    workload, sharing = _workload()
    with PlanProfile(workload, sharing, ForkExecutor(max_workers=2)) as begun:
        assert begun.traced
        forked = begun.result()
        assert begun.result() is forked  # waited for once
    assert forked == traced_profile((workload, sharing))
    assert len(list(store.glob("*.json"))) == 1  # kept for the next plan
    again = PlanProfile(workload, sharing, ForkExecutor(max_workers=2))
    assert not again.traced and again.result() == forked  # read back: nothing forked, nothing traced


def test_under_the_local_executor_it_is_traced_here_when_asked(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workload, sharing = _workload()
    calls: list[int] = []
    real = traced_profile

    def counted(task: tuple) -> object:
        calls.append(os.getpid())
        return real(task)
    monkeypatch.setattr("llmsim.planner.profiling.traced_profile", counted)
    begun = PlanProfile(workload, sharing, LocalExecutor())
    assert begun.traced and calls == []  # not yet: when the search asks for it (after its own readying)
    got = begun.result()
    assert calls == [os.getpid()] and got == workload_profile(workload, sharing)
    assert len(list(store.glob("*.json"))) == 1


def test_with_the_store_off_it_is_traced_and_not_kept(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(profile_store.ENV_SWITCH, "0")
    workload, sharing = _workload()
    begun = PlanProfile(workload, sharing, LocalExecutor())
    assert begun.traced and begun.result() == traced_profile((workload, sharing))
    assert not store.exists()


@needs_fork
def test_a_worker_whose_profile_is_never_asked_for_is_stopped(store: Path) -> None:
    """A plan that fails its checks after the trace began (a bad hardware name, Ctrl-C): leaving the block stops
    the worker and keeps nothing."""
    workload, sharing = _workload()
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="checks failed"):
        with PlanProfile(workload, sharing, ForkExecutor(max_workers=2)) as begun:
            pids.extend(begun._pending._pool._processes)  # type: ignore[union-attr]  # forked at once
            raise RuntimeError("checks failed")
    assert len(pids) == 1
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left tracing
        os.kill(pids[0], 0)
    assert not store.exists()


@pytest.mark.parametrize("case", CASES)
def test_prepare_search_fills_the_shapes_the_search_reads(case: str, store: Path) -> None:
    """The readied caches hold every group's shapes (the plan as written's too, where a precision's plan is
    another: SearchCaches.counted), and a search given them returns the rows of one given none."""
    plan, catalog = CASES[case]()
    hw = hardware(plan, catalog)
    sharing = sharing_choice(plan)
    profile, caches = prepare_search(plan, hw, PlanProfile(plan.workload, sharing, LocalExecutor()))
    warmed = {k: list(v) for k, v in caches.shapes.items()}
    assert warmed
    fresh = SearchCaches()
    for h in hw:  # what the walk reads: every group's chain heads, from a cache of its own
        axes = axes_of(plan, h.devices_per_node)
        for g in groups(plan, h.name, h.devices_per_node, axes):
            list(chain_heads(plan, g, axes, fresh.shapes))
    assert fresh.shapes.keys() <= caches.shapes.keys()
    rows, stats = search(plan, hw, sharing, profile, caches=caches)
    again, again_stats = search(plan, hw, sharing, profile)
    _same_rows(rows, again)
    stats.seconds = again_stats.seconds = 0.0
    assert stats == again_stats
    assert {k: list(v) for k, v in caches.shapes.items() if k in warmed} == warmed  # read, never rewritten


def test_prepare_search_warms_the_as_written_shapes_of_another_precision(store: Path) -> None:
    plan = _fp8_plan()
    from llmsim.hardware import load_catalog

    _, caches = prepare_search(plan, hardware(plan, load_catalog()),
                               PlanProfile(plan.workload, sharing_choice(plan), LocalExecutor()))
    assert caches.counted and {k[-1] for k in caches.counted} == {k[-1] for k in caches.shapes} - {""}


def test_the_cli_imports_no_pandas_nor_the_search_before_a_plan_is_read() -> None:
    """`llmsim plan` forks its profile's worker right after reading the plan (cli.cmd_plan), before the heavy
    imports, which then run beside the trace: importing the CLI and reading a plan must not pull them in."""
    code = ("import sys, llmsim.cli; from llmsim.planner.config import load_plan; from llmsim.planner.profiling "
            "import PlanProfile; load_plan('scenarios/plan-train-70b.yaml', []); "
            "print(sorted(m for m in ('pandas', 'torch', 'llmsim.planner.search', 'llmsim.registry', 'llmsim.runner') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


def test_the_spare_worker_is_forked_before_the_planner_is_imported() -> None:
    """cli.cmd_plan forks its spare worker with llmsim.workload.warm's warm_tracer, imported first: a module that
    imports nothing, so the fork does not wait for the planner's (or torch's) imports."""
    code = ("import sys, llmsim.cli; before = set(sys.modules); from llmsim.workload.warm import warm_tracer; "
            "print(sorted(m for m in set(sys.modules) - before if m != 'llmsim.workload.warm'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() in ("[]", "['llmsim.workload']")


def test_search_module_re_exports_the_profile_helpers() -> None:
    assert search_module.workload_profile is workload_profile and search_module.sharing_choice is sharing_choice


def _pid(_: object = None) -> int:
    return os.getpid()


def _write_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))


@needs_fork
def test_a_spare_worker_is_forked_at_once_and_runs_its_task_after_warm(tmp_path: Path) -> None:
    """Executor.spare: warm() starts in a worker forked now; the task begun later runs in that same worker."""
    marker = tmp_path / "warm"
    with ForkExecutor(max_workers=2).spare(functools.partial(_write_pid, str(marker))) as spare:
        with spare.begin(_pid, None) as pending:
            worker = pending.result()
    assert worker != os.getpid() and marker.read_text() == str(worker)


@needs_fork
def test_a_spare_never_given_its_task_is_stopped() -> None:
    with ForkExecutor(max_workers=2).spare(warm_tracer_slowly) as spare:
        pids = list(spare._pool._processes)  # type: ignore[attr-defined]
    assert len(pids) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    with pytest.raises(RuntimeError, match="one task"):
        spare.begin(_pid, None)


def warm_tracer_slowly() -> None:
    import time

    time.sleep(30)  # stopped long before


def test_the_local_executor_spares_nothing_and_runs_the_task_here() -> None:
    spare = LocalExecutor().few_heavy().spare(lambda: pytest.fail("nothing is readied under --executor local"))
    assert spare.begin(_pid, None).result() == os.getpid()


@needs_fork
def test_a_plan_profile_traced_in_the_spare_worker(store: Path) -> None:
    from llmsim.workload.warm import warm_tracer

    workload, sharing = _workload()
    with ForkExecutor(max_workers=2).spare(warm_tracer) as spare, PlanProfile(workload, sharing, None, spare) as begun:
        assert begun.traced and spare._pool is None  # type: ignore[attr-defined]  # the trace was handed to it
        assert begun.result() == traced_profile((workload, sharing))
    with ForkExecutor(max_workers=2).spare(warm_tracer) as spare, PlanProfile(workload, sharing, None, spare) as again:
        assert not again.traced and spare._pool is not None  # type: ignore[attr-defined]  # left idle: stopped


@needs_fork
@pytest.mark.parametrize("free", [True, False])
def test_the_plan_command_never_traces_in_its_own_process(free: bool, tmp_path: Path) -> None:
    """`llmsim plan` (default executor) with the store empty traces in a forked worker, a spare one with a core
    free (executor.core_free) or one forked after the plan is read: torch never in the command's own modules."""
    code = ("import sys, llmsim.cli as c; c.core_free = lambda: %s; "
            "rc = c.main(['plan', 'scenarios/plan-train-70b.yaml', '--set', 'limits.max_devices=16', '--no-simulate', "
            "'--out', sys.argv[1]]); print('torch' in sys.modules, rc)") % free
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path)})
    assert out.stdout.strip().splitlines()[-1] == "False 0"
    assert list((tmp_path / "llmsim" / "profiles").glob("*.json"))  # traced (in a worker) and kept
