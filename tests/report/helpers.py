"""Synthetic run folders for report tests: rows built with `Result` and stored by `ResultStore`, so the
tests exercise the real file formats without running any backend (fast, deterministic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llmsim.results import Result
from llmsim.results import ResultStore

SCRIPT = "<script>alert('boom')</script>"
TOKENS = 4 * 128  # batch x seq_len of every synthetic row


def row(case: str, backend: str = "roofline", *, kind: str = "modeled", status: str = "ok", step: float | None = None,
        n: int = 1, strategy: str | None = None, compute: float | None = None, comm: float | None = 0.0,
        bubble: float | None = 0.0, other: float | None = 0.0, jpt: float | None = None,
        memory: float | None = None, error: str | None = None, extra: dict[str, Any] | None = None,
        scenario: str = "report-test", hardware: str = "a100-80gb", ideal: float | None = None) -> Result:
    """One result row; throughput, ideal time and efficiency follow from `step` like fill_derived does."""
    values: dict[str, Any] = dict(
        scenario=scenario, case=case, backend=backend, kind=kind, hardware=hardware,
        strategy=strategy or case.split("@")[0], dp=n, tp=1, pp=1, n_devices=n, mode="train", batch=4,
        seq_len=128, dtype="float32", params=1_000_000, status=status, error=error, m_submodels=1,
        peak_memory_bytes_per_device=memory, extra=extra or {})
    if status == "ok" and step is not None:
        ideal = step if ideal is None else ideal
        values.update(step_time_s=step, tokens_per_s=TOKENS / step, tokens_per_s_per_device=TOKENS / step / n,
                      latency_p50_s=step, latency_p99_s=step, compute_time_s=step if compute is None else compute,
                      comm_time_s=comm, bubble_time_s=bubble, other_time_s=other, t_ideal_s=ideal,
                      c_per_submodel_s=ideal * n, scaling_efficiency=ideal / step,
                      energy_j_per_step=None if jpt is None else jpt * TOKENS, joules_per_token=jpt,
                      energy_source="modeled" if kind == "modeled" else "rapl", mfu=0.4)
    return Result(**values)


def mem(params: float, grads: float, optimizer: float, activations: float, capacity: float = 80e9) -> dict:
    return {"mem_params_bytes": params, "mem_grads_bytes": grads, "mem_optimizer_bytes": optimizer,
            "mem_activations_bytes": activations, "mem_kv_cache_bytes": 0.0, "device_memory_bytes": capacity}


def rich_rows() -> list[Result]:
    """Every figure has data: 'single' measured on an A100 and modeled on one (parity: the same hardware), a
    dp sweep (scaling), pp4 with a 31% bubble, a case that does not fit, a skipped and a failed row (with
    markup in the reason)."""
    gb = 1e9
    return [
        row("single", "cuda", kind="measured", step=2.0, compute=1.6, other=0.4, comm=None, bubble=None, jpt=0.05,
            memory=2.5 * gb),
        row("tp2", "cuda", kind="measured", status="skipped", error="strategy needs 2 devices"),
        row("single", step=1.8, jpt=0.02, memory=10 * gb, extra=mem(2 * gb, 2 * gb, 4 * gb, 2 * gb)),
        row("dp@nodes=2", strategy="dp", n=2, step=0.5, compute=0.45, comm=0.05, jpt=0.021, ideal=0.45,
            memory=10 * gb, extra=mem(2 * gb, 2 * gb, 4 * gb, 2 * gb)),
        row("dp@nodes=4", strategy="dp", n=4, step=0.26, compute=0.225, comm=0.035, jpt=0.022, ideal=0.225,
            memory=10 * gb, extra=mem(2 * gb, 2 * gb, 4 * gb, 2 * gb)),
        row("pp4", n=4, step=1.0, compute=0.5, comm=0.15, bubble=0.31, other=0.04, jpt=0.04, ideal=0.225,
            memory=4 * gb, extra=mem(0.5 * gb, 0.5 * gb, 1 * gb, 2 * gb)),
        row("zero0-big", n=4, status="does-not-fit", memory=412.3 * gb,
            error="needs 412.3 GB/device (params 87.5, grads 87.5, optimizer 175.0, activations 62.3) > 80.0 GB",
            extra=mem(87.5 * gb, 87.5 * gb, 175 * gb, 62.3 * gb)),
        row("broken <b>&", strategy="broken", status="failed", error=f"ValueError: {SCRIPT} (at x.py:1)"),
    ]


TRACE = {"traceEvents": [
    {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "stage 0"}},
    {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "stage 1"}},
    *[{"ph": "X", "name": f"fwd mb{m}", "cat": "forward", "pid": s, "tid": 0, "ts": 1000 * (m + s), "dur": 1000,
       "args": {"replica": r}} for r in (0, 1) for s in (0, 1) for m in range(3)],
    *[{"ph": "X", "name": f"bwd mb{m}", "cat": "backward", "pid": s, "tid": 0, "ts": 6000 + 2000 * (m + 1 - s),
       "dur": 2000, "args": {"replica": r}} for r in (0, 1) for s in (0, 1) for m in range(3)],
    {"ph": "B", "name": "allreduce", "cat": "comm", "pid": 0, "tid": 1, "ts": 14000, "args": {"replica": 0}},
    {"ph": "E", "name": "allreduce", "pid": 0, "tid": 1, "ts": 15000},
]}


def saved_scenario_of(rows: list[Result]) -> dict[str, Any]:
    """A scenario.yaml the rows agree with (their scenario, workload and strategies), as a run folder keeps
    it: `llmsim report` checks the saved scenario against the rows (llmsim.report.run.read_saved_scenario)."""
    first = rows[0] if rows else row("x")
    strategies = list(dict.fromkeys(r.strategy for r in rows)) or ["single"]
    return {"name": first.scenario if rows else "empty",
            "workload": {"model": {"preset": "tiny", "seq_len": first.seq_len}, "mode": first.mode,
                         "batch": first.batch, "dtype": first.dtype},
            "strategies": [{"name": name} for name in strategies], "backends": {"roofline": {}}}


def make_run(folder: Path, rows: list[Result], trace: bool = False) -> Path:
    """A run folder with results.jsonl/csv, scenario.yaml, environment.json and optionally trace.json."""
    folder.mkdir(parents=True, exist_ok=True)
    store = ResultStore(folder)
    for r in rows:
        store.add(r)
    (folder / "scenario.yaml").write_text(yaml.safe_dump(saved_scenario_of(rows), sort_keys=False))
    (folder / "environment.json").write_text(json.dumps({"python": "3.11.7", "cpu_model": "Test CPU",
                                                         "packages": {"torch": "2.13.0"}}))
    if trace:
        (folder / "trace.json").write_text(json.dumps(TRACE))
    return folder
