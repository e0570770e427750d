"""Per-iteration and per-request timestamps from inside a vLLM server, for the tail diagnosis (docs/validation.md,
"Where the p99 comes from"). Diagnostic only: nothing in llmsim imports it.

Put this folder first on PYTHONPATH and set LLMSIM_VLLM_TRACE to a folder; every Python process started with
that environment (the llmsim client, vLLM's API server, its engine core, its workers) imports this file at
start-up (Python's `site` module) and writes one JSON line per event to LLMSIM_VLLM_TRACE/<pid>.jsonl:

* every process: `gc` — each garbage collection (gc.callbacks), its generation and duration;
* engine core (vllm/v1/engine/core.py, EngineCore.step): `step` — start and end of one engine iteration,
  the scheduled tokens, the number of requests in the batch and of new ones (prefills), the time spent
  waiting for the workers (future.result()), and the engine thread's run-queue delay over the step
  (/proc/thread-self/schedstat, 2nd field: ns runnable but not running: the host's share of a slow step);
* worker (vllm/v1/worker/gpu_worker.py, Worker.execute_model, which the CPU worker inherits): `exec` —
  start and end of the model's forward pass on that rank, its tokens and its thread's run-queue delay;
* API server (vllm/v1/engine/output_processor.py, OutputProcessor): `add` when a request reaches the output
  processor, `out` per engine output batch (the time the tokens reach the API server), with the first four
  prompt token ids (the join key with the client's request list);
* with LLMSIM_VLLM_SPIN_S=S (an experiment, not a measurement setting): the engine's shared-memory queue readers
  spin S s after a message instead of vLLM's 1 s (`_patch_spin`);
* the llmsim client, with LLMSIM_VLLM_TRACE_CANARY=1: `late` — one canary thread per core (`_canary`) that
  reports when the whole core was held off real-time tasks.

Times are time.perf_counter() (CLOCK_MONOTONIC on Linux: one clock for every process on the host, the
client's clock too). Overhead: one JSON line per iteration per process (~10 µs).
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.util
import json
import os
import sys
import time

_DIR = os.environ.get("LLMSIM_VLLM_TRACE")


def _run_delay_ns() -> int:
    """ns this thread has waited on a run queue (runnable, not running) since it started."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return -1


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _file = open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a", buffering=1)  # noqa: SIM115

    def _log(kind: str, **fields: object) -> None:
        _file.write(json.dumps({"k": kind, "pid": os.getpid(), **fields}) + "\n")

    _log("proc", argv=sys.argv[:3], t=time.perf_counter())
    _gc_start: list[float] = [0.0]

    def _gc(phase: str, info: dict) -> None:
        if phase == "start":
            _gc_start[0] = time.perf_counter()
        else:
            t = time.perf_counter()
            _log("gc", t0=_gc_start[0], t1=t, gen=info.get("generation"), collected=info.get("collected"))

    gc.callbacks.append(_gc)

    def _patch_core(module: object) -> None:
        core = module.EngineCore  # type: ignore[attr-defined]
        original = core.step

        def step(self):  # noqa: ANN001, ANN202
            t0, d0 = time.perf_counter(), _run_delay_ns()
            sched = self.scheduler
            original_schedule = sched.schedule
            seen: dict = {}

            def schedule(*a, **k):  # noqa: ANN002, ANN003, ANN202
                out = original_schedule(*a, **k)
                seen["tokens"] = out.total_num_scheduled_tokens
                seen["reqs"] = len(out.num_scheduled_tokens)
                seen["new"] = len(out.scheduled_new_reqs)
                seen["t_sched"] = time.perf_counter()
                return out

            sched.schedule = schedule
            try:
                result = original(self)
            finally:
                del sched.schedule
            if seen:
                _log("step", t0=t0, t1=time.perf_counter(), delay_ns=_run_delay_ns() - d0, **seen)
            return result

        core.step = step

    def _patch_worker(module: object) -> None:
        worker = module.Worker  # type: ignore[attr-defined]
        original = worker.execute_model

        def execute_model(self, scheduler_output, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            t0, d0 = time.perf_counter(), _run_delay_ns()
            out = original(self, scheduler_output, *a, **k)
            _log("exec", t0=t0, t1=time.perf_counter(), delay_ns=_run_delay_ns() - d0,
                 tokens=scheduler_output.total_num_scheduled_tokens,
                 new=len(scheduler_output.scheduled_new_reqs))
            return out

        worker.execute_model = execute_model
        sample = worker.sample_tokens

        def sample_tokens(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            out = sample(self, *a, **k)
            _log("sample", t0=t0, t1=time.perf_counter())
            return out

        worker.sample_tokens = sample_tokens

    def _patch_output(module: object) -> None:
        proc = module.OutputProcessor  # type: ignore[attr-defined]
        add, process = proc.add_request, proc.process_outputs

        def add_request(self, request, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            ids = list(getattr(request, "prompt_token_ids", None) or [])[:4]
            _log("add", t=time.perf_counter(), rid=request.request_id, ids=ids)
            return add(self, request, *a, **k)

        def process_outputs(self, outputs, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            t = time.perf_counter()
            _log("out", t=t, rids=[o.request_id for o in outputs], n=[len(o.new_token_ids) for o in outputs])
            return process(self, outputs, *a, **k)

        proc.add_request, proc.process_outputs = add_request, process_outputs

    def _patch_spin(module: object) -> None:
        """LLMSIM_VLLM_SPIN_S=S: the shared-memory queues' readers spin S seconds after a message instead of
        vLLM's 1 s (SpinCondition.busy_loop_s), then sleep on their ZMQ notification: the experiment that tells
        whether the engine's spinning is what exhausts the kernel's real-time budget."""
        spin = os.environ.get("LLMSIM_VLLM_SPIN_S")
        if not spin:
            return
        cls = module.SpinCondition  # type: ignore[attr-defined]
        init = cls.__init__

        def __init__(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            init(self, *a, **k)
            if self.is_reader:
                self.busy_loop_s = float(spin)

        cls.__init__ = __init__

    _PATCHES = {"vllm.v1.engine.core": _patch_core, "vllm.v1.worker.gpu_worker": _patch_worker,
                "vllm.v1.engine.output_processor": _patch_output,
                "vllm.distributed.device_communicators.shm_broadcast": _patch_spin}

    class _Finder(importlib.abc.MetaPathFinder):
        """Patches a module of _PATCHES right after it is executed."""

        def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
            if name not in _PATCHES:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            loader, patch = spec.loader, _PATCHES[name]

            class _Loader(importlib.abc.Loader):
                def create_module(self, s):  # noqa: ANN001, ANN202
                    return loader.create_module(s)

                def exec_module(self, module):  # noqa: ANN001, ANN202
                    loader.exec_module(module)
                    patch(module)
                    _log("patched", module=name)

            spec.loader = _Loader()
            return spec

    sys.meta_path.insert(0, _Finder())

    def _canary(cpu: int) -> None:
        """Sleep 1 ms in a loop on one core at a real-time priority above the engine's; a wake-up more than
        5 ms late means every real-time task of that core was held off (the kernel's RT throttling, an
        interrupt storm, another RT task above 20): logged as `late`."""
        import threading

        tid = threading.get_native_id()
        try:
            os.sched_setaffinity(tid, {cpu})
            os.sched_setscheduler(tid, os.SCHED_RR, os.sched_param(20))
        except (OSError, AttributeError):
            pass
        while True:
            t0 = time.perf_counter()
            time.sleep(0.001)
            t1 = time.perf_counter()
            if t1 - t0 > 0.006:
                _log("late", cpu=cpu, t0=t0, t1=t1)

    if os.environ.get("LLMSIM_VLLM_TRACE_CANARY") and sys.argv[1:2] == ["run"]:   # the llmsim client only
        import threading

        for cpu in sorted(os.sched_getaffinity(0)):
            threading.Thread(target=_canary, args=(cpu,), daemon=True).start()
