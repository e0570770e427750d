"""Start the ranks of one distributed run on this host, wait for them, collect their records.

Each rank is `python -m llmsim.distributed.worker` in its own process group (session), with the
environment torchrun would give it (MASTER_ADDR=127.0.0.1, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, TORCHELASTIC_USE_AGENT_STORE). Subprocesses rather than multiprocessing spawn, so that the launched
program is exactly the one `torchrun` starts on several nodes, and so a rank that is killed or hangs
cannot take the parent with it.

Failure handling: the first rank to exit non-zero (it raised, or was killed) or the timeout ends the
run: every rank's process group is killed with SIGKILL and reaped, so no orphan remains, and the
outcome carries one clear message (the failing rank's exception, or the signal that killed it).

Ports: the launcher hosts the ranks' rendezvous store itself, as torchrun's agent does: a c10d TCPStore that
binds port 0, so the kernel hands it a free port that stays bound for the whole run, and the ranks connect
to it as clients (TORCHELASTIC_USE_AGENT_STORE=True: torch/distributed/rendezvous.py `_create_c10d_store`).
Picking a "free" port, closing it and letting rank 0 bind it later raced with every other process on the
host doing the same (two launches in parallel could get one port: "address already in use").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from llmsim import interrupt
from llmsim.distributed.spec import LAUNCHER_PID_ENV, RESULT_FILE, RankRecord, WorkerSpec
from llmsim.wording import count

POLL_S = 0.05
WORK_PREFIX = "llmsim-dist-"     # the launcher's work folder in the temporary directory
NODES_PREFIX = "llmsim-nodes-"   # launch_nodes' work folder (several "nodes" on this host)
LAUNCHER_FILE = "launcher.pid"   # in it: the pid of the process that made it, while the folder is in use
RESULTS_GRACE_S = 2.0  # how long a failed case waits for rank 0's result file before giving up on it


@dataclass
class LaunchOutcome:
    """Records of all ranks (rank order) when the run succeeded, else `error`."""

    records: list[RankRecord] = field(default_factory=list)
    error: str | None = None
    pids: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    teardown: str | None = None  # a rank that failed after rank 0 had written every rank's results
    timed_out_s: float | None = None  # the timeout that ended the run, where one did

    @property
    def ok(self) -> bool:
        return self.error is None


AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"  # torch/distributed/rendezvous.py: ranks connect as clients


@contextmanager
def rendezvous_store(host: str = "127.0.0.1") -> Iterator[int]:
    """Host a c10d TCPStore on `host`, port 0 (the kernel picks a free one), for as long as the block runs;
    yields its port. Nothing else can take the port between choosing and using it: the store holds it.
    multi_tenant, as torchrun's rendezvous store: a torchrun agent may open its own server object on it."""
    from torch.distributed import TCPStore  # torch only here: importing the launcher stays light

    store = TCPStore(host, 0, is_master=True, multi_tenant=True, wait_for_workers=False)
    try:
        yield int(store.port)
    finally:
        del store


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL every rank's process group (the rank and anything it started), then reap them."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass


def _grace_for_results(rank0: "subprocess.Popen[bytes]", result: Path) -> None:
    """A rank failed: if rank 0 is still running, give it RESULTS_GRACE_S to finish writing the results
    it may already hold (a rank that crashes in teardown can exit before rank 0 has written them)."""
    deadline = time.monotonic() + RESULTS_GRACE_S
    while rank0.poll() is None and not result.exists() and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _describe_exit(rank: int, rc: int, out: Path, log: Path) -> str:
    error_file = out / f"error-rank{rank}.txt"
    if error_file.exists():
        first = error_file.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        return f"rank {rank} raised {first}"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return f"rank {rank} was killed by {name}"
    tail = ""
    if log.exists():
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        tail = f": {lines[-1]}" if lines else ""
    return f"rank {rank} exited with code {rc}{tail}"


def launch(spec: WorkerSpec, *, timeout_s: float = 600.0, log_dir: Path | None = None,
           env: dict[str, str] | None = None) -> LaunchOutcome:
    """Run `spec` on spec.world local processes; never raises for a rank failure or a timeout."""
    world = spec.world
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    start = time.perf_counter()
    outcome = LaunchOutcome()
    stack = ExitStack()
    waited = False
    sweep_orphaned_work()
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    try:   # from here a Ctrl-C removes `work` (the finally): one while spec.json was written left it (CI65)
        (work / LAUNCHER_FILE).write_text(str(os.getpid()))
        out = log_dir or work
        out.mkdir(parents=True, exist_ok=True)
        spec_path = work / "spec.json"
        spec_path.write_text(spec.model_dump_json())
        port = stack.enter_context(rendezvous_store())
        for rank in range(world):
            rank_env = dict(os.environ, **(env or {}))
            rank_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                            LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0",
                            **{LAUNCHER_PID_ENV: str(os.getpid()), AGENT_STORE_ENV: "True"})
            if spec.threads:
                rank_env["OMP_NUM_THREADS"] = str(spec.threads)
            log = out / f"rank{rank}.log"
            logs.append(log)
            with log.open("wb") as fh:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "llmsim.distributed.worker", "--spec", str(spec_path), "--out", str(out)],
                    env=rank_env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))
        outcome.pids = [p.pid for p in procs]
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, rc = failed[0]
                _grace_for_results(procs[0], out / RESULT_FILE)
                if (out / RESULT_FILE).exists():
                    # Rank 0 writes the file after gathering every rank's records: the measurement is
                    # complete, and a rank that dies in process-group teardown (gloo can abort with
                    # "terminate called without an active exception") does not undo it.
                    outcome.teardown = _describe_exit(rank, rc, out, logs[rank]) + " after the results were written"
                    break
                # The first rank to fail is the cause; the others die in (or are stuck on) collectives.
                outcome.error = _describe_exit(rank, rc, out, logs[rank]) + \
                    f"; the other {world - 1} rank(s) were stopped (logs: {out})"
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                outcome.error = f"timed out after {timeout_s:g} s; all {count(world, 'rank')} were killed (logs: {out})"
                outcome.timed_out_s = timeout_s
                break
            time.sleep(POLL_S)
            interrupt.check()  # a Ctrl-C lost on the way still stops the ranks (the finally kills them)
        waited = True
    finally:
        _kill_all(procs)
        stack.close()
        outcome.wall_s = time.perf_counter() - start
        if not waited:  # stopped (Ctrl-C, SIGTERM) or failed to start: no message will point at the folder
            shutil.rmtree(work, ignore_errors=True)
    if outcome.error is None:
        result = out / RESULT_FILE
        try:
            data = json.loads(result.read_text())
            outcome.records = [RankRecord.model_validate(r) for r in data["ranks"]]
        except (OSError, ValueError, KeyError) as exc:
            outcome.error = f"all ranks exited cleanly but {result} is unreadable: {exc}"
    if outcome.error is None or log_dir is not None:
        shutil.rmtree(work, ignore_errors=True)  # a failure without a log_dir keeps its logs for the message
    else:
        (work / LAUNCHER_FILE).unlink(missing_ok=True)  # kept on purpose: no later launch sweeps it
    return outcome


def sweep_orphaned_work(tmp: Path | None = None) -> list[Path]:
    """Remove the work folders of launchers that were killed outright (SIGKILL, an OOM kill: nothing of theirs ran
    after), and return them. Such a folder still holds its LAUNCHER_FILE and that process is gone. A folder in use
    (its launcher alive), one kept on purpose for a failure's logs (no LAUNCHER_FILE) and anything unreadable are
    left alone. A recycled pid only keeps a folder longer, never removes one in use."""
    swept = []
    base = Path(tmp or tempfile.gettempdir())
    for folder in [f for prefix in (WORK_PREFIX, NODES_PREFIX) for f in sorted(base.glob(prefix + "*"))]:
        try:
            pid = int((folder / LAUNCHER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        swept.append(folder)
    return swept


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def torchrun_command(nnodes: int, nproc_per_node: int, node_rank: int, endpoint: str, rdzv_id: str,
                     worker_args: list[str], *, store_elsewhere: bool = False) -> list[str]:
    """The command that starts one node's ranks of a multi-node run: torchrun (`python -m
    torch.distributed.run`, the same program as the `torchrun` script) with a c10d rendezvous at `endpoint`
    (HOST:PORT of node 0), running `python -m llmsim.distributed.worker WORKER_ARGS` on each local rank.
    docs/distributed.md "Several nodes" gives the same command for a real cluster and for SLURM.
    `store_elsewhere`: no node hosts the rendezvous store (`--rdzv-conf is_host=false`, read by torch's
    c10d_rendezvous_backend `_create_tcp_store`): another process already serves it at `endpoint`."""
    conf = ["--rdzv-conf", "is_host=false"] if store_elsewhere else []
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
            "--nproc-per-node", str(nproc_per_node), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, *conf, "--rdzv-id", rdzv_id, "--max-restarts", "0",
            "-m", "llmsim.distributed.worker", *worker_args]


def _node_results(node_dirs: list[Path]) -> list[Path]:
    """The result.json rank 0 wrote, under whichever node folder holds it (none yet: [])."""
    return [d / RESULT_FILE for d in node_dirs if (d / RESULT_FILE).exists()]


def launch_nodes(spec: WorkerSpec, nnodes: int, *, timeout_s: float = 600.0, log_dir: Path | None = None
                 ) -> LaunchOutcome:
    """Run `spec` as `nnodes` "nodes" on this host: one torchrun per node (torchrun_command, a c10d rendezvous
    on 127.0.0.1), each with spec.world / nnodes local ranks and its own output folder (`node<i>/`, as each
    node of a real cluster writes its own), as `launch` would run it in one node. Rank 0 (whichever node the
    rendezvous gives it) writes result.json. The rendezvous store is hosted here, on a port it bound itself
    (`rendezvous_store`), and the node that becomes rank 0 serves its ranks' store on port 0 (torch's
    dynamic_rendezvous shares a TCPStore it creates on port 0), so no port is chosen before it is bound. For tests and for trying a multi-node launch without a cluster;
    never raises for a rank failure or a timeout (the first node to exit non-zero, or the timeout, stops all)."""
    if spec.world % nnodes:
        raise ValueError(f"world {spec.world} does not split into {nnodes} nodes")
    sweep_orphaned_work()
    work = Path(tempfile.mkdtemp(prefix=NODES_PREFIX))
    (work / LAUNCHER_FILE).write_text(str(os.getpid()))   # until this launch ends (sweep_orphaned_work)
    out = log_dir or work
    out.mkdir(parents=True, exist_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(spec.model_dump_json())
    env = dict(os.environ)
    env.pop(LAUNCHER_PID_ENV, None)  # the ranks' parent is torchrun's agent, not this process
    if spec.threads:
        env["OMP_NUM_THREADS"] = str(spec.threads)
    procs: list[subprocess.Popen[bytes]] = []
    outcome = LaunchOutcome()
    start = time.perf_counter()
    node_dirs = [out / f"node{i}" for i in range(nnodes)]
    stack = ExitStack()
    try:
        endpoint = f"127.0.0.1:{stack.enter_context(rendezvous_store())}"
        for i, node_dir in enumerate(node_dirs):
            node_dir.mkdir(parents=True, exist_ok=True)
            cmd = torchrun_command(nnodes, spec.world // nnodes, i, endpoint, f"llmsim-{os.getpid()}",
                                   ["--spec", str(spec_path), "--out", str(node_dir)], store_elsewhere=True)
            with (node_dir / "torchrun.log").open("wb") as fh:
                procs.append(subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        outcome.pids = [p.pid for p in procs]
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, rc = failed[0]
                # As `launch`: rank 0 (on whichever node the rendezvous put it) writes result.json after
                # gathering every rank's records; a node whose rank dies in teardown after that (gloo's
                # "terminate called without an active exception" once the store's host has gone) undoes nothing.
                deadline_results = time.monotonic() + RESULTS_GRACE_S
                while (not _node_results(node_dirs) and any(p.poll() is None for p in procs)
                       and time.monotonic() < deadline_results):
                    time.sleep(POLL_S)
                if _node_results(node_dirs):
                    outcome.teardown = f"node {i}: torchrun exited with code {rc} after the results were written"
                    break
                errors = sorted(node_dirs[i].glob("error-rank*.txt"))
                why = errors[0].read_text(encoding="utf-8", errors="replace").splitlines()[0] if errors else \
                    f"torchrun exited with code {rc}"
                outcome.error = f"node {i}: {why}; the other nodes were stopped (logs: {out})"
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                outcome.error = f"timed out after {timeout_s:g} s; all {nnodes} nodes were killed (logs: {out})"
                outcome.timed_out_s = timeout_s
                break
            time.sleep(POLL_S)
    finally:
        _kill_all(procs)
        stack.close()
        outcome.wall_s = time.perf_counter() - start
    if outcome.error is None:
        results = _node_results(node_dirs)
        try:
            data = json.loads(results[0].read_text())
            outcome.records = [RankRecord.model_validate(r) for r in data["ranks"]]
        except (IndexError, OSError, ValueError, KeyError) as exc:
            outcome.error = f"all nodes exited cleanly but no readable {RESULT_FILE} under {out}: {exc!r}"
    if outcome.error is None or log_dir is not None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        (work / LAUNCHER_FILE).unlink(missing_ok=True)  # kept on purpose for the message: no later launch sweeps it
    return outcome
