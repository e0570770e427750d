"""llmsim.executor: in-process and Ray executors give the same results; the choice and its errors.

The Ray tests start one real local Ray (2 CPUs) for the module (slow: ~10 s to start on the development host)
and are skipped where Ray is not installed (it is in the `test` extra).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pytest

from llmsim import executor as ex
from llmsim.cli import main
from llmsim.errors import ScenarioError, UsageError
from llmsim.planner.search import (resolve_hardware, search, sharing_choice, simulate_candidate, simulate_top,
                                   workload_profile)
from tests.planner.helpers import small_catalog, small_plan


def square_plus(offset: int, x: int) -> int:
    """A picklable task function (module level; used through functools.partial)."""
    if x < 0:
        raise ScenarioError(None, "x", f"{x} is negative")
    return x * x + offset


def test_errors_survive_pickling() -> None:
    """A task's LLMSimError reaches the parent (through Ray) as the same one-line error."""
    import pickle

    for err in (ScenarioError("f.yaml", "a.b", "bad"), UsageError("--out", "no")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def test_local_map_keeps_order_and_counts_progress() -> None:
    seen: list[tuple[int, int]] = []
    out = ex.LocalExecutor().map(functools.partial(square_plus, 1), [3, 1, 2], lambda d, n: seen.append((d, n)))
    assert out == [10, 2, 5]
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]


def pid_of(x: int) -> tuple[int, int]:
    """A picklable task: (its input, the process that ran it)."""
    import os

    return x, os.getpid()


@pytest.mark.skipif(not ex.fork_available(), reason="forked workers need Linux")
def test_fork_map_equals_local_runs_in_workers_and_raises_the_tasks_error() -> None:
    import multiprocessing
    import os

    fork = ex.ForkExecutor(max_workers=3)
    seen: list[tuple[int, int]] = []
    assert fork.map(functools.partial(square_plus, 1), [3, 1, 2, 5], lambda d, n: seen.append((d, n))) == \
        ex.LocalExecutor().map(functools.partial(square_plus, 1), [3, 1, 2, 5])
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    ran = fork.map(pid_of, [0, 1, 2])
    assert ran[0][1] == os.getpid() and {pid for _, pid in ran[1:]} - {os.getpid()}  # the first here, others forked
    with pytest.raises(ScenarioError, match="x: -1 is negative"):  # a worker's error, as itself
        fork.map(functools.partial(square_plus, 0), [1, -1, 2])
    assert not multiprocessing.active_children()  # the workers stopped, none left behind


def test_fork_runs_in_this_process_without_fork_or_a_second_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert ex.ForkExecutor(max_workers=4).map(pid_of, [7]) == [(7, os.getpid())]
    assert ex.ForkExecutor(max_workers=1).map(pid_of, [1, 2]) == [(1, os.getpid()), (2, os.getpid())]
    monkeypatch.setattr(ex, "fork_available", lambda: False)
    assert ex.ForkExecutor(max_workers=4).map(pid_of, [1, 2]) == [(1, os.getpid()), (2, os.getpid())]


def test_beside_runs_here_when_asked_under_local() -> None:
    """`--executor local` stays one thing after another in this process: the task runs when its result is asked
    for, once, and not at all when it never is."""
    import os

    ran: list[int] = []
    pending = ex.LocalExecutor().few_heavy().beside(ran.append, 1)
    assert ran == []
    with pending:
        assert pending.result() is None and pending.result() is None and ran == [1]
    with ex.LocalExecutor().beside(pid_of, 2) as unasked:
        pass
    assert ex.ForkExecutor(max_workers=1).beside(pid_of, 3).result() == (3, os.getpid())  # one core: here too


@pytest.mark.skipif(not ex.fork_available(), reason="forked workers need Linux")
def test_beside_forks_a_worker_and_raises_its_error_as_itself() -> None:
    import multiprocessing
    import os

    with ex.ForkExecutor(max_workers=2).beside(pid_of, 4) as pending:
        x, pid = pending.result()
    assert x == 4 and pid != os.getpid()
    with pytest.raises(ScenarioError, match="x: -1 is negative"):
        with ex.ForkExecutor(max_workers=2).beside(functools.partial(square_plus, 0), -1) as failing:
            failing.result()
    assert not multiprocessing.active_children()


def sleep_then(x: int) -> int:
    """A picklable task that outlasts any test: only stopping it ends it."""
    import time

    time.sleep(600)
    return x


@pytest.mark.skipif(not ex.fork_available(), reason="forked workers need Linux")
@pytest.mark.parametrize("error", [KeyboardInterrupt, ScenarioError])
def test_beside_stops_its_worker_when_this_process_fails(error: type[BaseException]) -> None:
    """This process's own work raises (Ctrl-C, a user error) before it asks for the result: leaving the block stops
    the worker at once (it would sleep for 600 s) and leaves no process behind."""
    import multiprocessing
    import os

    with pytest.raises(error):
        with ex.ForkExecutor(max_workers=2).beside(sleep_then, 1):
            (worker,) = multiprocessing.active_children()
            raise error(None, "k", "bad") if error is ScenarioError else error()
    assert not multiprocessing.active_children()
    with pytest.raises(ProcessLookupError):
        os.kill(worker.pid, 0)


def test_few_heavy_tasks_fork_unless_local() -> None:
    """`--executor local` keeps the planner's pricing in this process; auto and ray fork it (Ray's start-up costs
    more than a few heavy tasks save)."""
    local = ex.LocalExecutor()
    assert local.few_heavy() is local
    assert isinstance(ex.AutoExecutor().few_heavy(), ex.ForkExecutor)
    assert isinstance(ex.RayExecutor().few_heavy(), ex.ForkExecutor)
    assert ex.ForkExecutor().max_workers == ex.usable_cores() >= 1


def test_choice_of_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "ray_installed", lambda: True)
    assert isinstance(ex.make_executor("local", environ={"RAY_ADDRESS": "10.0.0.1:6379"}), ex.LocalExecutor)
    assert isinstance(ex.make_executor("auto", environ={}), ex.AutoExecutor)
    forced = ex.make_executor("ray", environ={})
    assert isinstance(forced, ex.RayExecutor) and forced.address is None
    from_env = ex.make_executor("auto", environ={"RAY_ADDRESS": "10.0.0.1:6379"})
    assert isinstance(from_env, ex.RayExecutor) and from_env.address == "10.0.0.1:6379"
    given = ex.make_executor("auto", "head:6379", environ={"RAY_ADDRESS": "10.0.0.1:6379"})
    assert given.name == "ray@head:6379"
    with pytest.raises(UsageError, match="cannot go with --executor local"):
        ex.make_executor("local", "head:6379", environ={})
    monkeypatch.setattr(ex, "ray_installed", lambda: False)
    assert isinstance(ex.make_executor("auto", environ={}), ex.LocalExecutor)  # Ray absent: in-process
    with pytest.raises(UsageError, match=r"--executor ray: Ray is not installed here; pip install 'llmsim\[ray\]'"):
        ex.make_executor("ray", environ={})
    with pytest.raises(UsageError, match="RAY_ADDRESS: Ray is not installed"):
        ex.make_executor("auto", environ={"RAY_ADDRESS": "10.0.0.1:6379"})


def test_auto_stays_in_process_below_its_threshold() -> None:
    class Recording(ex.LocalExecutor):
        def __init__(self) -> None:
            self.calls: list[int] = []

        def as_completed(self, fn, tasks):  # type: ignore[no-untyped-def]
            self.calls.append(len(tasks))
            return super().as_completed(fn, tasks)

    auto = ex.AutoExecutor(min_tasks=4)
    auto.local, auto.ray = Recording(), Recording()  # no Ray needed: which one is asked is under test
    auto.map(functools.partial(square_plus, 0), [1, 2, 3])
    auto.map(functools.partial(square_plus, 0), [1, 2, 3, 4])
    assert auto.local.calls == [3] and auto.ray.calls == [4]  # type: ignore[attr-defined]
    assert ex.AutoExecutor().min_tasks == ex.AUTO_RAY_MIN_TASKS


def test_cli_executor_errors_are_one_line(write_scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "devices_per_node": 1}})
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--executor", "local", "--ray-address", "h:1"]) == 2
    assert capsys.readouterr().err == ("llmsim: error: --ray-address: is for the ray executor; it cannot go with "
                                       "--executor local\n")
    monkeypatch.setattr(ex, "ray_installed", lambda: False)
    assert main(["run", str(path), "--out", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray is not installed here" in err
    assert not out.exists()  # nothing ran


def test_an_unreachable_ray_cluster_is_refused_before_any_folder_is_made(
        write_scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`llmsim run` and `llmsim plan` check the Ray address (one bounded TCP connect) before they make their run
    folder: no empty results.jsonl is left behind."""
    import socket

    monkeypatch.setattr(ex, "ray_installed", lambda: True)     # the check is ours, before Ray is imported
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "devices_per_node": 1}})
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--ray-address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Ray cluster answers" in err
    assert not out.exists()
    plan = Path(__file__).resolve().parents[1] / "scenarios" / "plan-train-70b.yaml"
    assert main(["plan", str(plan), "--out", str(out), "--ray-address", f"127.0.0.1:{port}"]) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("address", ["garbage", "ray://x", "h:0", "h:99999", ":6379"])
def test_a_malformed_ray_address_is_refused_before_ray_starts(address: str) -> None:
    if not ex.ray_installed():
        pytest.skip("Ray is not installed: the address is never read")
    with pytest.raises(UsageError, match=r"^RAY_ADDRESS: '.*' is not a Ray address; allowed: auto, HOST:PORT"):
        ex.make_executor("auto", None, {"RAY_ADDRESS": address})
    with pytest.raises(UsageError, match=r"is not a Ray address"):
        ex.make_executor("ray", address, {})


def test_a_ray_address_nobody_answers_is_one_bounded_try() -> None:
    """ray.init retries for minutes where nothing listens; one TCP connect refuses it (exit 2)."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    executor = ex.RayExecutor(f"127.0.0.1:{port}", where="--ray-address")
    with pytest.raises(UsageError, match=r"^--ray-address: no Ray cluster answers at '127\.0\.0\.1:\d+'"):
        executor._check_reachable()
    assert ex.ray_endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert ex.ray_endpoint("[::1]:6379") == ("::1", 6379) and ex.ray_endpoint("auto") is None


# -- on a real local Ray ----------------------------------------------------------------------------------
# The tests on it share one xdist group: `pytest -n` (README; pyproject's --dist loadgroup) keeps them on one
# worker, so one Ray starts, not one per worker, on a host whose every core the other workers already use.
RAY_GROUP = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@RAY_GROUP
@pytest.mark.slow
def test_ray_map_equals_local_and_raises_the_tasks_error(ray_session) -> None:
    fn = functools.partial(square_plus, 7)
    tasks = list(range(20))
    seen: list[int] = []
    on_ray = ex.RayExecutor().map(fn, tasks, lambda d, n: seen.append(d))
    assert on_ray == ex.LocalExecutor().map(fn, tasks)
    assert seen == list(range(0, 21))  # 0 first: the map has started
    with pytest.raises(ScenarioError, match="-1 is negative"):  # the task's own class, through Ray
        ex.RayExecutor().map(fn, [1, -1])
    assert ray_session.is_initialized()  # an executor does not stop a Ray it did not start


@RAY_GROUP
@pytest.mark.slow
def test_plan_recheck_is_the_same_on_ray(ray_session) -> None:
    plan = small_plan(top_k=12)
    catalog = small_catalog()
    hardware = resolve_hardware(plan, catalog)
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    rows, _ = search(plan, hardware, sharing, profile)
    local = simulate_top(plan, rows, hardware, profile, sharing, plan.top_k)
    sims_local = [dict(e.sim) for e in local]
    rows_again, _ = search(plan, hardware, sharing, profile)
    on_ray = simulate_top(plan, rows_again, hardware, profile, sharing, plan.top_k, ex.RayExecutor())
    assert len(local) == 12
    assert [e.config for e in on_ray] == [e.config for e in local]
    assert [e.sim for e in on_ray] == sims_local  # exactly: the same simulation, run elsewhere
    task = (plan.workload, profile, sharing, local[0].config.plan(),
            hardware[0].cluster(local[0].config.n_devices), plan.options.options)
    assert simulate_candidate(task) == simulate_candidate(task)


@RAY_GROUP
@pytest.mark.slow
def test_run_writes_the_same_files_on_ray(ray_session, write_scenario, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cluster = {"hardware": "a100-80gb", "nodes": [1, 2], "devices_per_node": 4, "intra_node": "nvlink3",
               "inter_node": "ib-hdr200x8"}
    path = write_scenario(strategies=[{"name": "pp2", "pp": 2}, {"name": "big", "tp": 2, "zero": 3}],
                          workload={"model": {"preset": "tiny"}, "mode": "train", "batch": 8},
                          backends={"roofline": cluster, "cluster": cluster})
    folders = {}
    for kind in ("local", "ray"):
        assert main(["run", str(path), "--out", str(tmp_path / kind), "--executor", kind]) == 0
        captured = capsys.readouterr()
        folders[kind] = Path(captured.out.strip().splitlines()[-1])
        assert "[8/8]" in captured.err
    for name in ("results.csv", "results.jsonl"):
        assert (folders["ray"] / name).read_text() == (folders["local"] / name).read_text()


def test_rows_keep_the_planned_order_when_modeled_cases_run_first(write_scenario, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Modeled cases go through the executor before the measured ones run; the files still list the rows as
    the scenario plans them (strategy by strategy, backends in the file's order), as a sequential run did."""
    path = write_scenario(strategies=[{"name": "a"}, {"name": "b"}],
                          backends={"cpu": {"steps": 1, "warmup": 0},
                                    "roofline": {"hardware": "a100-80gb", "devices_per_node": 1}})
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--executor", "local"]) == 0
    captured = capsys.readouterr()
    run_dir = Path(captured.out.strip().splitlines()[-1])
    planned = [("a", "cpu"), ("a", "roofline"), ("b", "cpu"), ("b", "roofline")]
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(zip(frame["case"], frame["backend"])) == planned
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert [(r["case"], r["backend"]) for r in map(json.loads, lines)] == planned
    # progress: the modeled cases as they finish, then each measured one as it starts
    assert captured.err.index("[2/4] b on roofline") < captured.err.index("[3/4] a on cpu")


def test_core_free_reads_the_load_against_the_usable_cores(monkeypatch) -> None:  # noqa: ANN001
    from llmsim import executor as ex

    monkeypatch.setattr(ex, "usable_cores", lambda: 2)
    monkeypatch.setattr(ex.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert ex.core_free()
    monkeypatch.setattr(ex.os, "getloadavg", lambda: (1.6, 0.0, 0.0))
    assert not ex.core_free()

    def unreadable() -> tuple:
        raise OSError("no load average here")
    monkeypatch.setattr(ex.os, "getloadavg", unreadable)
    assert ex.core_free()


def test_a_ray_address_where_something_else_answers_is_refused_not_retried() -> None:
    """Trial 31: at an address where a non-Ray server accepted the TCP connect, ray.init retried for minutes while
    Ray's C++ client logged each try. Ray's GCS and client server are gRPC: a peer that does not answer HTTP/2's
    preface with a SETTINGS frame is refused at once; one that does passes the check."""
    import socket
    import socketserver
    import threading

    def serve(reply: bytes) -> tuple[socketserver.TCPServer, int]:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(64)
                self.request.sendall(reply)
        server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, server.server_address[1]

    http1, port = serve(b"HTTP/1.0 400 Bad request\r\n\r\n")
    try:
        with pytest.raises(UsageError, match=r"^--ray-address: something answers at '127\.0\.0\.1:\d+' but not a Ray "
                                             r"cluster \(no gRPC server"):
            ex.RayExecutor(f"127.0.0.1:{port}", where="--ray-address")._check_reachable()
    finally:
        http1.shutdown()
        http1.server_close()
    grpc, port = serve(bytes([0, 0, 6, 4, 0, 0, 0, 0, 0]) + bytes(6))   # a server's SETTINGS frame first
    try:
        ex.RayExecutor(f"127.0.0.1:{port}", where="--ray-address")._check_reachable()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            assert ex.speaks_http2(connection)
    finally:
        grpc.shutdown()
        grpc.server_close()

