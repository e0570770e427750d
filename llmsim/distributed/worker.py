"""The per-rank program of a distributed run: `python -m llmsim.distributed.worker`.

It reads the standard torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so the same entry point is started by `llmsim.distributed.launch` on one host and by
`torchrun` across nodes (docs/distributed.md). Each rank builds the whole model from the scenario seed
(so every rank starts from the weights of the single-process run), takes its data-parallel slice of
the global batch, applies the strategy, runs `warmup` + `steps` steps with a barrier before each timed
one, then one profiled step to measure exposed communication, and rank 0 gathers every rank's
RankRecord into `result.json`. A rank that raises writes its traceback to `error-rank<N>.txt` and
exits non-zero, which the launcher turns into a `failed` row.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llmsim.distributed.parallelize import (PipelineRunner, TensorParallelState, allreduce_gradients,
                                            apply_fully_shard, apply_tensor_parallel, build_mesh,
                                            vocab_parallel_loss, vocab_parallel_possible)
from llmsim.distributed.spec import LAUNCHER_PID_ENV, PG_BACKENDS, RankRecord, WorkerSpec, unsupported_reason
from llmsim.workload.model import KVCache
from llmsim.workload.step import ADAMW_LR, WorkloadStep

FAULT_ENV = "LLMSIM_DIST_FAULT"  # testing hook: "RANK:kill" | "RANK:raise" | "RANK:hang" | "RANK:abort-at-exit"
RESULT_FILE = "result.json"

Mark = Callable[[str], None]


def _no_mark(_: str) -> None:
    return None


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (the loss under loss_parallel) as a plain tensor; others unchanged."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def _inject_fault(rank: int) -> None:
    """Let tests make one rank die (SIGKILL), raise, or hang, after the process group is up."""
    fault = os.environ.get(FAULT_ENV, "")
    if not fault:
        return
    who, _, what = fault.partition(":")
    if int(who) != rank:
        return
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif what == "raise":
        raise RuntimeError(f"injected fault on rank {rank} ({FAULT_ENV}={fault})")
    elif what == "hang":
        time.sleep(3600)


class RankStep:
    """This rank's share of one workload step under the strategy, built on the (pp, dp, tp) mesh."""

    def __init__(self, spec: WorkerSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self.mode = spec.workload.mode
        self.mesh = build_mesh(device.type, spec.pp, spec.dp, spec.tp)
        self.notes: dict[str, str] = {}
        # The single-process step's model, inputs and seed: each rank starts from identical weights.
        base = WorkloadStep(spec.workload, spec.sharing, seed=spec.seed, device=device)
        self.model = base.model
        self.cache_len = base.cache_len
        self.dtype = base.dtype
        dp_rank = self.mesh["dp"].get_local_rank()
        local = spec.workload.batch // spec.dp
        self.tokens = base.tokens[dp_rank * local:(dp_rank + 1) * local]
        self.targets = base.targets[dp_rank * local:(dp_rank + 1) * local]
        self.batch = local
        self.tp_state = TensorParallelState()
        self.pipeline: PipelineRunner | None = None
        self.grad_sync_group: dist.ProcessGroup | None = None
        del base

        strategy = spec.strategy
        runner: Any = self.model
        if spec.pp > 1:
            if spec.tp > 1:  # each stage's blocks tensor-parallel, embedding and head replicated (PP x TP)
                self.tp_state = apply_tensor_parallel(self.model, self.mesh, sequence_parallel=False)
                self.notes["tp"] = ("DTensor parallelize_module inside each stage: qkv/fc colwise, out/proj "
                                    "rowwise; embedding and LM head replicated")
            self.pipeline = PipelineRunner(self.model, self.mesh, schedule=strategy.schedule,
                                           virtual_stages=strategy.virtual_stages,
                                           microbatches=spec.microbatches, device=device, zero=strategy.zero)
            if strategy.zero > 0 and spec.dp > 1:
                self.notes["zero"] = (f"fully_shard per block and per stage over dp "
                                      f"(reshard_after_forward={strategy.zero == 3})")
            params = [p for p in self.pipeline.parameters() if p.requires_grad]
            self.notes["pipeline"] = f"{type(self.pipeline.schedule).__name__}, {spec.microbatches} micro-batches"
        else:
            if spec.tp > 1:
                vocab = self.mode == "train" and vocab_parallel_possible(self.model.spec, spec.tp)
                self.tp_state = apply_tensor_parallel(self.model, self.mesh, sequence_parallel=strategy.sp,
                                                      vocab_parallel=vocab)
                self.notes["tp"] = "DTensor parallelize_module: qkv/fc colwise, out/proj rowwise" + \
                    (", SequenceParallel norms" if strategy.sp else "") + \
                    ("; embedding rowwise and LM head colwise over the vocabulary, loss_parallel" if vocab
                     else "; embedding and LM head replicated")
            if strategy.zero > 0:
                self.notes["zero"] = apply_fully_shard(self.model, self.mesh["dp"], strategy.zero)
            elif spec.dp > 1 and self.mode == "train":
                if spec.tp == 1:
                    from torch.nn.parallel import DistributedDataParallel

                    runner = DistributedDataParallel(self.model, process_group=self.mesh["dp"].get_group())
                    self.notes["dp"] = "DistributedDataParallel"
                else:
                    self.grad_sync_group = self.mesh["dp"].get_group()
                    self.notes["dp"] = "flat gradient all-reduce after backward (DDP takes no DTensor parameters)"
            params = [p for p in self.model.parameters() if p.requires_grad]
        self.runner = runner
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=ADAMW_LR) if self.mode == "train" else None
        if self.mode == "train":
            self.model.train()
        else:
            self.model.eval()
        self.losses: list[torch.Tensor] = []

    # -- ownership of the loss for reporting ---------------------------------------------------
    @property
    def owns_loss(self) -> bool:
        """One rank per data-parallel replica reports its replica's loss (the last stage, TP rank 0)."""
        last_stage = self.mesh["pp"].get_local_rank() == self.spec.pp - 1
        return last_stage and self.mesh["tp"].get_local_rank() == 0

    # -- the step ------------------------------------------------------------------------------
    def step(self, mark: Mark = _no_mark) -> None:
        if self.mode == "train":
            self._train(mark)
            return
        with torch.no_grad():
            self._infer(mark)

    def _train(self, mark: Mark) -> None:
        assert self.optimizer is not None
        if self.pipeline is not None:
            loss = self.pipeline.train_step(self.tokens, self.targets)
            self.tp_state.sync_replicated_kv()
        else:
            loss = self._accumulate()
            self.tp_state.sync_replicated_kv()
            if self.grad_sync_group is not None:
                allreduce_gradients(self.params, self.grad_sync_group, self.spec.dp)
        mark("backward_done")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            self.losses.append(loss.detach())

    def _accumulate(self) -> torch.Tensor:
        """Forward/backward per micro-batch of this replica's share (the scenario's micro_batch), as the
        single-process step and the cost model do; the data-parallel gradient reduction runs once, with
        the last micro-batch (DDP no_sync / FSDP set_requires_gradient_sync before it)."""
        size = min(self.spec.micro_batch, self.batch)
        starts = range(0, self.batch, size)
        loss = torch.zeros((), device=self.device)
        for i, start in enumerate(starts):
            last = i == len(starts) - 1
            with self._gradient_sync(last), vocab_parallel_loss(self.tp_state.vocab_parallel):
                logits = self.runner(self.tokens[start:start + size])
                part = F.cross_entropy(logits.flatten(0, 1).float(),
                                       self.targets[start:start + size].flatten()) / len(starts)
                part.backward()
            loss = loss + _plain(part.detach())
        return loss

    def _gradient_sync(self, enabled: bool) -> Any:
        """A context in which DDP / FSDP reduce gradients only when `enabled` (the last micro-batch)."""
        if hasattr(self.runner, "no_sync") and not enabled:
            return self.runner.no_sync()
        setter = getattr(self.model, "set_requires_gradient_sync", None)
        if setter is not None:
            setter(enabled)
        return contextlib.nullcontext()

    def _new_cache(self) -> list[KVCache]:
        """KV caches with this rank's KV heads (all of them without TP)."""
        spec = self.model.spec
        kv = spec.kv_heads or spec.heads
        local = max(kv // self.spec.tp, 1)
        shape = (self.batch, local, self.cache_len, spec.head_dim)
        return [KVCache(torch.empty(shape, dtype=self.dtype, device=self.device),
                        torch.empty(shape, dtype=self.dtype, device=self.device)) for _ in range(spec.layers)]

    def _infer(self, mark: Mark) -> None:
        """prefill / decode as WorkloadStep does them, with TP-local KV caches."""
        spec = self.model.spec
        if not spec.causal:
            self.model(self.tokens, head="none")
            return
        cache = self._new_cache()
        token = self.model(self.tokens, cache, head="last").argmax(dim=-1)
        if self.mode == "prefill":
            return
        mark("first_token")
        for i in range(self.spec.workload.decode_tokens - 1):
            token = self.model(token, cache, start=spec.seq_len + i, head="last").argmax(dim=-1)

    def global_losses(self) -> list[float]:
        """The global-batch loss of each training step: the mean over data-parallel replicas (collective)."""
        n = len(self.losses) if self.owns_loss else 0
        counts = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        total = int(counts.item())
        if total == 0:
            return []
        vec = torch.zeros(total, dtype=torch.float64, device=self.device)
        if self.owns_loss:
            vec += torch.stack(self.losses).to(torch.float64)
        dist.all_reduce(vec)
        return (vec / self.spec.dp).tolist()


# ----------------------------------------------------------------------------------- measurement
class _Memory:
    """Peak memory of this rank over the run: RSS high-water mark above the start (CPU, as the cpu
    backend measures it), or the CUDA caching allocator's peak."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.method = "cuda_max_memory_allocated"
            self.base = 0
            return
        from llmsim_plugins.cpu import PeakRss  # the cpu backend's own method, so both report alike

        self.rss = PeakRss()
        self.method = self.rss.method
        self.base = self.rss._status("VmRSS") if self.method == "vmhwm" else 0  # noqa: SLF001

    def peak(self) -> float:
        if self.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device))
        return float(max(self.rss.peak() - self.base, 0))


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _minus(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Parts of the (unioned) intervals `a` not covered by the (unioned) intervals `b`."""
    out: list[tuple[float, float]] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


STEP_LABEL = "llmsim::step"


def communication_ops(events: Any) -> dict[str, int]:
    """Communication ops of the profiled step by name and count (what the strategy actually sent)."""
    counts: dict[str, int] = {}
    for e in events:
        lowered = e.name.lower()
        if lowered.startswith("gloo:") or lowered.startswith("nccl"):
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def exposed_communication(events: Any, device_type: str) -> dict[str, float]:
    """Exposed communication of one profiled step, in seconds, from torch.profiler events.

    Communication intervals are the backend's own op events (gloo: `gloo:*` on its worker threads;
    NCCL: `nccl*` GPU kernels), compute intervals are aten ops on the step's thread (CPU) or the other
    GPU kernels (CUDA). Exposed = communication time not covered by compute. Pipeline send/recv is kept
    apart (`p2p`): on a pipeline it is mostly waiting for the neighbour stage, i.e. the bubble.
    """
    step = [e for e in events if e.name == STEP_LABEL]
    if not step:
        return {}
    window = (step[0].time_range.start, step[0].time_range.end)
    main = step[0].thread

    def clip(start: float, end: float) -> tuple[float, float] | None:
        start, end = max(start, window[0]), min(end, window[1])
        return (start, end) if end > start else None

    comm, p2p, busy = [], [], []
    for e in events:
        name = e.name
        span = clip(e.time_range.start, e.time_range.end)
        if span is None:
            continue
        lowered = name.lower()
        is_comm = lowered.startswith("gloo:") or (device_type == "cuda" and "nccl" in lowered
                                                  and getattr(e, "device_type", None) is not None
                                                  and str(e.device_type).endswith("CUDA"))
        if is_comm:
            if "barrier" in lowered:
                continue
            (p2p if any(k in lowered for k in ("send", "recv")) else comm).append(span)
        elif device_type == "cpu" and e.thread == main and name.startswith("aten::"):
            busy.append(span)
        elif device_type == "cuda" and str(getattr(e, "device_type", "")).endswith("CUDA"):
            busy.append(span)
    busy_u = _union(busy)
    comm_u, p2p_u = _union(comm), _union(p2p)
    p2p_only = _minus(p2p_u, comm_u)
    return {"comm_exposed_s": _length(_minus(comm_u, busy_u)) / 1e6,
            "p2p_exposed_s": _length(_minus(p2p_only, busy_u)) / 1e6,
            "comm_busy_s": _length(_union(comm + p2p)) / 1e6,
            "profiled_step_s": (window[1] - window[0]) / 1e6}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rank(spec: WorkerSpec, rank: int, device: torch.device) -> RankRecord:
    """Build, warm up, time and profile this rank's steps. Collective: every rank must call it."""
    threads = spec.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    memory = _Memory(device)
    _inject_fault(rank)
    step = RankStep(spec, device)
    for _ in range(spec.warmup):
        step.step()
    times, optimizer, first_token = [], [], []
    marks: dict[str, float] = {}

    def mark(label: str) -> None:
        _sync(device)
        marks[label] = time.perf_counter()

    for _ in range(spec.steps):
        marks.clear()
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        step.step(mark)
        _sync(device)
        end = time.perf_counter()
        times.append(end - start)
        if "backward_done" in marks:
            optimizer.append(end - marks["backward_done"])
        if "first_token" in marks:
            first_token.append(marks["first_token"] - start)
    comm: dict[str, float] = {}
    if spec.profile_comm:
        from torch.profiler import ProfilerActivity, profile, record_function

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        dist.barrier()
        with profile(activities=activities) as prof:
            with record_function(STEP_LABEL):
                step.step()
                _sync(device)
        events = prof.events()
        comm = exposed_communication(events, device.type)
        step.notes["comm_ops"] = json.dumps(communication_ops(events), sort_keys=True)
    losses = step.global_losses() if spec.workload.mode == "train" else []
    return RankRecord(rank=rank, host=socket.gethostname(), threads=threads, step_times_s=times,
                      optimizer_times_s=optimizer, first_token_times_s=first_token, losses=losses,
                      peak_memory_bytes=memory.peak(), memory_method=memory.method, notes=step.notes, **comm)


def _device(device_type: str, local_rank: int) -> torch.device:
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device_type)


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
        device = _device(spec.device_type, int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(PG_BACKENDS[spec.device_type], rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
        record = run_rank(spec, rank, device)
        records: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(record.model_dump(), records, dst=0)
        if rank == 0:
            assert records is not None
            tmp = out / (RESULT_FILE + ".tmp")
            tmp.write_text(json.dumps({"spec": json.loads(spec.model_dump_json()), "ranks": records}))
            tmp.replace(out / RESULT_FILE)
            step_s = [max(r["step_times_s"][i] for r in records) for i in range(spec.steps)]
            print(f"llmsim.distributed: {spec.strategy.name} world={world} step_time_s="
                  f"{sum(step_s) / len(step_s):.6f} -> {out / RESULT_FILE}", flush=True)
        dist.destroy_process_group()
        if os.environ.get(FAULT_ENV) == f"{rank}:abort-at-exit":  # testing: a crash in teardown, after results
            deadline = time.monotonic() + 30
            while not (out / RESULT_FILE).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.abort()
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the launcher as a file
        (out / f"error-rank{rank}.txt").write_text(f"{error_summary(exc)}\n\n{traceback.format_exc()}",
                                                   encoding="utf-8")
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
