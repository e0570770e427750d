"""Where independent evaluations run: in this process, one after another, in processes forked from it, or on Ray.

One interface, `Executor.map(fn, tasks, progress=...)` -> the results in the order of `tasks`, and
`Executor.as_completed(fn, tasks)` -> (index, result) pairs as each task finishes. `fn` and every task
must be picklable (a module-level function or a functools.partial of one; plain data) so that the same
call runs on a Ray worker; `fn(task)` must be a pure function of the task, so the results are the same
whatever the executor (tests/test_executor.py checks it on a real local Ray).

Users of it: the planner's re-check of its best candidates on the cluster simulation
(planner.search.simulate_top), the modeled cases of `llmsim run` (runner.run_scenario; measured backends
stay sequential in the parent, alone on the machine), and any search that maps over candidates (a
serving-rate search per planner candidate: docs/architecture.md "Executors").

Choice (`make_executor`, `--executor` and `--ray-address` of `llmsim run` and `llmsim plan`):
* `local`: in this process, sequentially.
* `ray`: Ray tasks, on the cluster at `address` (or RAY_ADDRESS) when given, else on a Ray started for
  this command on this machine (all its cores); an error when Ray is not installed.
* `auto` (default): `ray` when Ray is installed and either an address is given or a map has at least
  AUTO_RAY_MIN_TASKS tasks; `local` otherwise. Ray is imported and started only then, lazily.

A few heavy tasks whose inputs this process already holds (the planner's enumeration and pricing of each
hardware choice: seconds of numpy each, after imports and a workload profile that a fresh Ray worker would
redo) go to `Executor.few_heavy()`: `ForkExecutor`, workers forked from this process on this machine's cores,
under `auto` and `ray`; this process, one after another, under `local`. Its `beside(fn, task)` starts one task
in a forked worker while this process goes on with work of its own (the plan's Pareto figure, drawn while the
plan writes its tables), and runs it in this process, when its result is asked for, under `local`.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from llmsim import interrupt
from llmsim.errors import UsageError

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[int, int], None]  # (tasks done, tasks in all), called after each task finishes

EXECUTORS = ("auto", "local", "ray")
# One TCP connect to a given cluster's address before ray.init, which otherwise retries for minutes when
# nothing listens there (seen with a bogus --ray-address); a live head answers in milliseconds.
RAY_CONNECT_TIMEOUT_S = 10.0
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable (ray.init reads it too): a running cluster's address
RAY_INSTALL_HINT = "pip install 'llmsim[ray]'"

# Starting a local Ray (ray.init: raylet, GCS, one worker per core) took 10.6-25.9 s on the 2-core development
# host under other load (benchmarks/bench_executor.py prints it as "Ray start-up"), and one cluster simulation
# of a 70B plan's candidate 0.3-2.7 s in-process there (same benchmark, 1024- and 512-device plans). On c cores
# Ray saves at most n*t*(1 - 1/c) for n tasks of t seconds: on 2 cores, with the start-up at 12 s and t = 0.32 s,
# it breaks even near n = 12 / (0.32 * 0.5) = 75 tasks. `auto` uses Ray from 64 tasks (the power of two under
# it); the first map on fresh workers also pays each worker's imports (the benchmark: 0.64x in-process speed
# on the first map of 64, 2.46x on the second), so on 2 cores Ray pays off for long searches and on clusters.
# `--executor ray` or an address forces Ray for any number of tasks.
AUTO_RAY_MIN_TASKS = 64


def ray_installed() -> bool:
    """Whether Ray can be imported here, found without importing it: `import ray` took ~0.4 s and its exit
    handler (ray.shutdown, registered by the import) another ~0.2 s of every `llmsim run` and `llmsim plan`, which
    ask this before knowing whether any map reaches AUTO_RAY_MIN_TASKS."""
    return importlib.util.find_spec("ray") is not None


class Executor(ABC):
    """Runs fn over tasks; `name` says where ("local", "ray", "ray@ADDRESS")."""

    name = "executor"

    @abstractmethod
    def as_completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        """(index in tasks, fn(task)) as each task finishes; a task that raises re-raises here."""

    def map(self, fn: Callable[[T], R], tasks: Sequence[T], progress: Progress | None = None) -> list[R]:
        """[fn(t) for t in tasks], in the order of tasks; progress(0, total) before the first (a long first task,
        such as a serving candidate's rate search, shows its bar and elapsed time at once) and progress(done,
        total) after each one."""
        tasks = list(tasks)
        out: list[Any] = [None] * len(tasks)
        if progress and tasks:
            progress(0, len(tasks))
        for done, (i, result) in enumerate(self.as_completed(fn, tasks), start=1):
            out[i] = result
            if progress:
                progress(done, len(tasks))
        return out

    def few_heavy(self) -> "Executor":
        """Where a few heavy tasks run (no more than this machine has cores, each seconds of CPU, their inputs
        already in this process): on this machine's cores, in worker processes forked from this one
        (ForkExecutor; Ray's start-up, 10-25 s, costs more than such a map saves, and its fresh workers would
        import and profile again). LocalExecutor answers itself: `--executor local` stays in this process."""
        return ForkExecutor()

    def beside(self, fn: Callable[[T], R], task: T) -> "Pending[R]":
        """fn(task), to go with this process's own next work: here, in this process when `result()` is first
        asked (so `--executor local` stays one thing after another); ForkExecutor starts it in a forked worker
        at once. Use as `with executor.few_heavy().beside(fn, task) as pending: ...; pending.result()`."""
        return Deferred(fn, task)

    def spare(self, warm: Callable[[], object]) -> "Spare":
        """A worker for one task known only later, readied now by `warm()` (imports the task will need): here,
        nothing is readied and the task runs in this process when its result is asked (`Spare.begin` gives a
        Deferred); ForkExecutor forks the worker at once and runs warm() in it. Use as `with
        executor.few_heavy().spare(warm) as spare: ...; with spare.begin(fn, task) as pending: ...`; a spare never
        begun is stopped when the block is left, mid-warm() if need be."""
        return Spare()

    def check(self) -> None:
        """Refuse, before any output is written, an executor that cannot run (UsageError, exit 2); the default
        can always run. Called by the CLI before it makes a run folder."""

    def close(self) -> None:
        """Release what this executor started (a local Ray); it can be used again afterwards."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pending(ABC, Generic[R]):
    """A task begun beside this process's own work (Executor.beside). `result()` waits for it and returns its
    value or raises its exception as itself; leaving the `with` block without the result (this process's own work
    raised, or Ctrl-C) stops it."""

    @abstractmethod
    def result(self) -> R:
        """fn(task), waited for (the same value whatever ran it)."""

    def close(self) -> None:
        """Stop the task if it has not finished, and release what runs it."""

    def __enter__(self) -> "Pending[R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Deferred(Pending[R]):
    """fn(task) in this process, run when `result()` is first asked (once: the value is kept)."""

    def __init__(self, fn: Callable[[T], R], task: T) -> None:
        self._run: Callable[[], R] | None = lambda: fn(task)
        self._value: R | None = None

    def result(self) -> R:
        if self._run is not None:
            self._value, self._run = self._run(), None
        return self._value  # type: ignore[return-value]


class Spare:
    """A worker readied for one task given later (Executor.spare): this base runs nothing ahead, and `begin`
    defers the task to this process (Executor.beside's way)."""

    def begin(self, fn: Callable[[T], R], task: T) -> Pending[R]:
        """fn(task), begun in the spare worker (here: when its result is asked). Once per spare."""
        return Deferred(fn, task)

    def close(self) -> None:
        """Stop the worker if no task was begun in it, or if its task has not finished."""

    def __enter__(self) -> "Spare":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ForkedSpare(Spare):
    """A worker forked now (a pool of one), running `warm()` at once; `begin` hands it the task, which runs after
    warm() in the same process (Forked over this pool)."""

    def __init__(self, warm: Callable[[], object]) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = _fork_pool(1)
        self._pool.submit(warm)  # the worker is forked here

    def begin(self, fn: Callable[[T], R], task: T) -> Pending[R]:
        if self._pool is None:
            raise RuntimeError("a spare worker takes one task")
        pool, self._pool = self._pool, None
        return Forked(fn, task, pool)

    def close(self) -> None:
        if self._pool is not None:  # never given its task: not waited for
            _terminate_workers(self._pool)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class LocalExecutor(Executor):
    """In this process, in order."""

    name = "local"

    def as_completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        for i, task in enumerate(tasks):
            yield i, fn(task)

    def few_heavy(self) -> Executor:
        return self


def fork_available() -> bool:
    """Whether worker processes can be forked here: on Linux. (macOS lists fork, but its system libraries are
    not fork-safe, and Python starts processes there by spawning, which would import and profile again.)"""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


class ForkExecutor(Executor):
    """The first task in this process while the others run in worker processes forked from it (the stdlib's
    `concurrent.futures.ProcessPoolExecutor`, fork context): min(tasks, cores) processes at work, this one
    included; the pool is made for each map and closed at its end. In this process, in order, where fork is
    unavailable (`fork_available`), or for a single task or core (`usable_cores`).

    Forked, a worker starts with this process's memory (its imports, the plan, the workload profile) and no
    start-up; its task and result cross a pipe pickled (the planner's rows go as columns: search.Rows), which
    the task this process runs itself does not. The workers ignore SIGINT: Ctrl-C reaches this process, which
    stops them (as a task's exception does: it re-raises here as itself) and goes on to its one-line message.
    A worker killed (out of memory) raises the stdlib's BrokenProcessPool here: the machine failed, not the
    input (errors.py)."""

    name = "fork"

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or usable_cores()

    def as_completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        tasks = list(tasks)
        workers = min(len(tasks), self.max_workers) - 1  # this process is the other one
        if workers < 1 or not fork_available():
            yield from LocalExecutor().as_completed(fn, tasks)
            return
        pool = _fork_pool(workers)
        done = False
        try:
            # the workers are forked at the first submit, before this process runs its own task
            futures = {pool.submit(fn, task): i for i, task in enumerate(tasks[1:], start=1)}
            yield 0, fn(tasks[0])
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
            done = True
        finally:
            if not done:  # an error, Ctrl-C or a consumer that stopped early: the other tasks are not waited for
                _terminate_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)

    def beside(self, fn: Callable[[T], R], task: T) -> Pending[R]:
        """fn(task) in one worker forked now (its task and result cross a pipe pickled); in this process, as
        Executor.beside, where fork is unavailable or this process may use a single core."""
        if self.max_workers < 2 or not fork_available():
            return Deferred(fn, task)
        return Forked(fn, task)

    def spare(self, warm: Callable[[], object]) -> Spare:
        """A worker forked now, running warm(), for one task given later (Executor.spare); as Executor.spare's
        where fork is unavailable or this process may use a single core."""
        if self.max_workers < 2 or not fork_available():
            return Spare()
        return ForkedSpare(warm)


class Forked(Pending[R]):
    """fn(task) in a worker forked from this process (ForkExecutor.beside): a pool of one, closed with it; or
    in the worker of a pool of one forked before (ForkedSpare.begin), after what that pool runs already."""

    def __init__(self, fn: Callable[[T], R], task: T,
                 pool: concurrent.futures.ProcessPoolExecutor | None = None) -> None:
        self._pool = pool or _fork_pool(1)
        self._future = self._pool.submit(fn, task)  # the worker is forked here (unless it was already)

    def result(self) -> R:
        return self._future.result()

    def close(self) -> None:
        if not self._future.done():  # this process's own work failed or was interrupted: do not wait for it
            _terminate_workers(self._pool)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _fork_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool of `workers` forked from this process (at its first submit), set up by `_forked_worker`."""
    for stream in (sys.stdout, sys.stderr):  # a child inherits what is buffered unwritten: written once, here
        if stream is not None:
            stream.flush()
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                  initializer=_forked_worker)


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a `taskset` or a container's limit), else os.cpu_count()."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def core_free() -> bool:
    """Whether a core is likely idle for work begun on speculation (a spare worker whose task may never come): the
    1-minute load average under this process's usable cores less half a core (True where the load cannot be
    read). Only where work runs: never what it computes."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return True
    return load < usable_cores() - 0.5


def _forked_worker() -> None:
    """A fork worker's initializer. Ctrl-C (SIGINT to the terminal's whole process group) is the parent's to
    handle, which stops the workers; a worker of its own would print its traceback. And stdout and stderr objects
    of its own over the same descriptors: a fork copies the forking thread alone, and another thread of the parent
    may hold a stream's lock at that instant (a progress bar's refresh writing to stderr, as `llmsim plan`'s runs
    while the plan writes its outputs); the worker flushes its streams as it exits, and would wait on that lock
    for ever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupt.forget_termination()  # the parent's terminate() (SIGTERM) ends the worker, as it ends it by default
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # none, or not over a descriptor (a test's capture)
            continue
        setattr(sys, name, open(fd, "w", buffering=1, encoding=stream.encoding, errors=stream.errors, closefd=False))


def _terminate_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop the pool's workers now, mid-task: Python 3.14's terminate_workers, or the processes it holds before."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


class RayExecutor(Executor):
    """Ray tasks: on the cluster at `address` ("auto" = the one `ray start` left on this machine), else on a
    Ray started on this machine with `num_cpus` (default: all cores). One CPU per task (Ray's default)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, where: str = "--ray-address") -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.name = f"ray@{address}" if address else "ray"
        self._where = where  # the option or variable the address came from, for its error
        self._started = False

    def check(self) -> None:
        self._check_reachable()

    def _check_reachable(self) -> None:
        """A HOST:PORT nobody listens on makes ray.init retry for minutes: refuse it after one bounded try."""
        endpoint = ray_endpoint(self.address)
        if endpoint is None:
            return
        try:
            with socket.create_connection(endpoint, timeout=RAY_CONNECT_TIMEOUT_S) as connection:
                grpc = speaks_http2(connection)
        except OSError as exc:
            raise UsageError(self._where, f"no Ray cluster answers at {self.address!r} ({exc.strerror or exc}); "
                                          f"start one with `ray start --head` (docs/architecture.md)") from None
        if not grpc:   # ray.init then retried for minutes, Ray's C++ client logging each try (trial 31)
            raise UsageError(self._where, f"something answers at {self.address!r} but not a Ray cluster (no gRPC "
                                          f"server: Ray's GCS and client server speak HTTP/2); allowed: the address "
                                          f"`ray start --head` prints (docs/architecture.md)")

    def _ensure(self) -> Any:
        import ray

        if ray.is_initialized():
            return ray
        self._check_reachable()
        try:
            if self.address:
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                # address=None would join a cluster named by RAY_ADDRESS: "local" always starts a new one
                ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=False)
        except ConnectionError as exc:
            raise UsageError(self._where, f"no Ray cluster at {self.address!r} ({exc}); start one with "
                                              f"`ray start --head` (docs/architecture.md)") from None
        self._started = True
        return ray

    def as_completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        tasks = list(tasks)
        if not tasks:
            return
        ray = self._ensure()
        remote = ray.remote(_apply)
        fn_ref = ray.put(fn)  # shipped once; Ray passes the value to each task
        refs = [remote.remote(fn_ref, t) for t in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    # a task that raised re-raises here as RayTaskError, which subclasses the task's own
                    # exception class (so `except LLMSimError` still catches an LLMSimError of a task)
                    yield index[ref], ray.get(ref)
        finally:
            for ref in pending:  # Ctrl-C or an error: do not leave the rest running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def _apply(fn: Callable[[T], R], task: T) -> R:
    """The Ray task: fn(task) on a worker (fn may be a functools.partial, which ray.remote does not take)."""
    return fn(task)


class AutoExecutor(Executor):
    """In-process for small maps, Ray (started on first use) for maps of at least `min_tasks` tasks."""

    def __init__(self, min_tasks: int = AUTO_RAY_MIN_TASKS) -> None:
        self.min_tasks = min_tasks
        self.local = LocalExecutor()
        self.ray = RayExecutor()
        self.name = f"auto (ray from {min_tasks} tasks)"

    def as_completed(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        chosen = self.ray if len(tasks) >= self.min_tasks else self.local
        return chosen.as_completed(fn, tasks)

    def close(self) -> None:
        self.ray.close()


def make_executor(kind: str = "auto", address: str | None = None,
                  environ: dict[str, str] | None = None) -> Executor:
    """The executor `--executor KIND [--ray-address ADDRESS]` asks for (docstring of this module).

    `address` defaults to RAY_ADDRESS. UsageError (exit 2): an unknown kind, `ray` or an address without Ray
    installed, an address with `--executor local`."""
    environ = os.environ if environ is None else environ
    if kind not in EXECUTORS:
        raise UsageError("--executor", f"{kind!r} is not an executor; allowed: {', '.join(EXECUTORS)}")
    given = address is not None
    address = address or environ.get(RAY_ADDRESS_ENV) or None
    if kind == "local":
        if given:
            raise UsageError("--ray-address", "is for the ray executor; it cannot go with --executor local")
        return LocalExecutor()
    if not ray_installed():
        if kind == "ray" or address:
            where = "--executor ray" if kind == "ray" else ("--ray-address" if given else RAY_ADDRESS_ENV)
            raise UsageError(where, f"Ray is not installed here; {RAY_INSTALL_HINT} (or --executor local)")
        return LocalExecutor()
    if address:
        where = "--ray-address" if given else RAY_ADDRESS_ENV
        if address != "auto" and ray_endpoint(address) is None:
            raise UsageError(where, f"{address!r} is not a Ray address; allowed: auto, HOST:PORT or ray://HOST:PORT")
        return RayExecutor(address, where=where)
    if kind == "ray":
        return RayExecutor()
    return AutoExecutor()


# HTTP/2's client connection preface and an empty SETTINGS frame (RFC 9113, sections 3.4 and 6.5): a gRPC server
# (Ray's GCS at HOST:PORT, its client server at ray://HOST:PORT) answers with a SETTINGS frame of its own first.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS_FRAME = 4


def speaks_http2(connection: socket.socket) -> bool:
    """Whether the peer of an open TCP connection answers HTTP/2's preface with a SETTINGS frame (a frame header
    is 9 bytes: length 3, type 1, ...). Anything else (an HTTP/1 reply, a closed connection, silence until the
    socket's timeout) is not a gRPC server. OSError for a connection that fails on the way."""
    connection.sendall(HTTP2_PREFACE)
    header = b""
    try:
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except TimeoutError:
        return False
    return header[3] == HTTP2_SETTINGS_FRAME


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a Ray address HOST:PORT or ray://HOST:PORT; None for "auto", none or a malformed one."""
    if not address or address == "auto":
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)
