"""The per-rank program of a distributed run: `python -m llmsim.distributed.worker`.

It reads the standard torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so the same entry point is started by `llmsim.distributed.launch` on one host and by
`torchrun` across nodes (docs/distributed.md). Each rank builds its share of the step (`rank.RankStep`:
the whole model from the scenario seed, this replica's slice of the global batch, the strategy applied),
runs `warmup` + `steps` steps on its device's clock with a barrier before each timed one
(`llmsim.measure`), then one profiled step to measure exposed communication (`profiling`), and rank 0
gathers every rank's RankRecord into `result.json`. A rank that raises writes its traceback to
`error-rank<N>.txt` and exits non-zero, which the launcher turns into a `failed` row.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import statistics
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llmsim.distributed.faults import abort_at_exit, inject_fault
from llmsim.distributed.profiling import profile_step
from llmsim.distributed.rank import RankStep
from llmsim.distributed.spec import (LAUNCHER_PID_ENV, PG_BACKENDS, RESULT_FILE, RankRecord, WorkerSpec,
                                     unsupported_reason)
from llmsim.measure.device import MeasuredDevice, rank_device
from llmsim.measure.loop import time_steps
from llmsim.measure.summary import slowest
from llmsim.workload.profile import profile_workload


def run_rank(spec: WorkerSpec, rank: int, device: MeasuredDevice) -> RankRecord:
    """Build, warm up, time and profile this rank's steps. Collective: every rank must call it."""
    threads = spec.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    # The parent profiled this workload on the meta device before it measured the single-process case; doing
    # the same here first imports what a step imports lazily (torch._dynamo through the optimizer step, ~70 MB
    # of modules), so that a rank's peak, like the single process's, counts what the step holds, not the
    # process's one-time setup.
    profile_workload(spec.workload, spec.sharing)
    memory = device.memory()
    inject_fault(rank)
    step = RankStep(spec, device.torch_device)
    memory.forget_peak()  # the built shard counts, the float32 copy it was cast from does not
    timings = time_steps(step.step, device, steps=spec.steps, warmup=spec.warmup, before_step=dist.barrier)
    peak_memory = memory.peak_bytes()  # before the profiled step: the profiler's own buffers are not the step's
    comm: dict[str, float] = {}
    if spec.profile_comm:
        dist.barrier()
        comm, ops = profile_step(step.step, device)
        step.notes["comm_ops"] = json.dumps(ops, sort_keys=True)
    losses = step.global_losses() if spec.workload.mode == "train" else []
    loads = step.expert_loads() if step.model.moe_modules() else []
    return RankRecord(expert_tokens=loads if rank == 0 else [], rank=rank, host=socket.gethostname(), threads=threads, step_times_s=timings.step_times_s,
                      optimizer_times_s=timings.optimizer_s, first_token_times_s=timings.first_token_s,
                      losses=losses, peak_memory_bytes=peak_memory, memory_method=memory.method,
                      notes=step.notes, **comm)


def spec_from_scenario(path: str, strategy_name: str, steps: int, warmup: int, device_type: str,
                       threads: int | None) -> WorkerSpec:
    """A WorkerSpec from a scenario file and one of its strategies (the torchrun entry point)."""
    from llmsim.config import load_scenario
    from llmsim.strategy import Layout, resolve_layout

    scenario = load_scenario(path)
    by_name = {s.name: s for s in scenario.strategies}
    if strategy_name not in by_name:
        raise SystemExit(f"{path}: no strategy {strategy_name!r}; allowed: {', '.join(by_name)}")
    strategy = by_name[strategy_name]
    layout = resolve_layout(strategy, scenario.workload, int(os.environ.get("WORLD_SIZE", "1")), "distributed")
    if not isinstance(layout, Layout):
        raise SystemExit(f"{path}: strategies[{strategy_name}].{layout[0]}: {layout[1]}")
    return WorkerSpec.from_layout(scenario.workload, scenario.sharing_choice(strategy), strategy, layout, seed=scenario.seed, steps=steps,
                                  warmup=warmup, threads=threads, device_type=device_type)


def error_summary(exc: BaseException, limit: int = 400) -> str:
    """One line: the exception and, when it wraps another (torch often re-raises), the root cause."""

    def line(e: BaseException) -> str:
        text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        return f"{type(e).__name__}: {text}" if text else type(e).__name__

    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    summary = line(exc) if root is exc else f"{line(exc)} (caused by {line(root)})"
    return summary if len(summary) <= limit else summary[:limit - 3] + "..."


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for this process when its parent dies


def _exit_with_parent() -> None:
    """Have Linux SIGKILL this rank when the process that started it dies, however it dies (SIGKILL of
    `llmsim run`, torchrun's agent killed): ranks run in their own session, so nothing else would stop a
    rank blocked in a collective. Best effort where prctl is missing. A parent that died while this rank
    was still importing torch is caught by comparing with the pid the launcher passed (LAUNCHER_PID_ENV)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and os.getppid() != int(launcher):  # orphaned before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    _exit_with_parent()
    parser = argparse.ArgumentParser(prog="python -m llmsim.distributed.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", help="WorkerSpec JSON (written by the launcher)")
    parser.add_argument("--scenario", help="scenario YAML (torchrun use), with --strategy")
    parser.add_argument("--strategy", help="strategy name in the scenario")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=sorted(PG_BACKENDS))
    parser.add_argument("--out", required=True, help="folder for result.json (rank 0) and error-rank<N>.txt")
    args = parser.parse_args(argv)
    rank = int(os.environ["RANK"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.spec:
            spec = WorkerSpec.model_validate_json(Path(args.spec).read_text())
        elif args.scenario and args.strategy:
            spec = spec_from_scenario(args.scenario, args.strategy, args.steps, args.warmup, args.device, args.threads)
        else:
            parser.error("give --spec, or --scenario and --strategy")
        world = int(os.environ["WORLD_SIZE"])
        if spec.world != world:
            raise ValueError(f"strategy needs dp*tp*pp*cp = {spec.world} ranks but WORLD_SIZE={world}")
        reason = unsupported_reason(spec)
        if reason:
            raise ValueError(f"not supported: {reason}")
        device = rank_device(spec.device_type, int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(PG_BACKENDS[spec.device_type], rank=rank, world_size=world,
                                device_id=device.process_group_device)
        record = run_rank(spec, rank, device)
        records: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(record.model_dump(), records, dst=0)
        if rank == 0:
            assert records is not None
            tmp = out / (RESULT_FILE + ".tmp")
            tmp.write_text(json.dumps({"spec": json.loads(spec.model_dump_json()), "ranks": records}))
            tmp.replace(out / RESULT_FILE)
            step_s = statistics.fmean(slowest([r["step_times_s"] for r in records]))
            print(f"llmsim.distributed: {spec.strategy.name} world={world} step_time_s={step_s:.6f} "
                  f"-> {out / RESULT_FILE}", flush=True)
        dist.destroy_process_group()
        abort_at_exit(rank, out / RESULT_FILE)  # testing: a crash in teardown, after the results
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the launcher as a file
        (out / f"error-rank{rank}.txt").write_text(f"{error_summary(exc)}\n\n{traceback.format_exc()}",
                                                   encoding="utf-8")
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
