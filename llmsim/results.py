"""Result columns (contract), declared once with their units; the row model backends return; and where
rows are kept: the run folder, its append-only results.jsonl and atomically rewritten results.csv.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from llmsim.errors import LLMSimError, UsageError, one_line, path_error
from llmsim.wording import clipped, count

# name -> (unit, meaning). The order is the column order of results.csv.
COLUMNS: dict[str, tuple[str, str]] = {
    "scenario": ("", "scenario name"),
    "case": ("", "strategy name (plus a sweep suffix such as @nodes=4)"),
    "backend": ("", "backend plugin name"),
    "kind": ("", "measured | modeled"),
    "hardware": ("", "catalog device name (cpu-host for this machine)"),
    "strategy": ("", "strategy name"),
    "dp": ("", "data-parallel degree"),
    "tp": ("", "tensor-parallel degree"),
    "pp": ("", "pipeline-parallel degree"),
    "cp": ("", "context-parallel degree"),
    "ep": ("", "expert-parallel degree (MoE; 1 for a dense model)"),
    "etp": ("", "expert tensor-parallel degree (MoE; resolved: etp or tp)"),
    "sp": ("", "Megatron sequence parallelism"),
    "zero": ("", "ZeRO stage (3 = FSDP)"),
    "micro_batch": ("sequences", "sequences per micro-batch per replica"),
    "microbatches": ("", "micro-batches per step per replica"),
    "schedule": ("", "pipeline schedule"),
    "recompute": ("", "activation recomputation"),
    "stage_layers": ("layers", "Transformer layers of each pipeline stage, first to last, comma-separated"),
    "nodes": ("", "nodes"),
    "n_devices": ("", "devices the step runs on"),
    "mode": ("", "train | prefill | decode | serve (a serving run)"),
    "batch": ("sequences", "global batch (serve: max_num_seqs per replica)"),
    "seq_len": ("tokens", "sequence length (serve: the model's context)"),
    "dtype": ("", "workload dtype"),
    "params": ("", "unique parameters after sharing"),
    "trainable_params": ("", "parameters the optimizer updates (LoRA: the adapters only)"),
    "params_active": ("", "parameters one token touches: non-expert + top_k routed + shared experts (= params "
                          "for a dense model)"),
    "expert_load_imbalance": ("", "MoE: busiest expert's tokens / mean, max over MoE layers (measured: what the "
                                  "router did; modeled: the factor assumed); empty for a dense model"),
    "tie_embeddings": ("", "input embedding and LM head share one matrix"),
    "layer_groups": ("", "distinct layer weight sets (empty = no cross-layer sharing)"),
    "lora_rank": ("", "LoRA adapter rank (empty = full fine-tuning)"),
    "attention_kernel": ("", "modeled: the attention kernel the row was priced with (the backend's `attention` setting: "
                             "flash, cudnn, flash3, trtllm-mmha, fused-softmax, math; costmodel.plan.Options); "
                             "measured (cpu, cuda, one process): the kernel torch's scaled_dot_product_attention ran "
                             "(llmsim.measure.sdpa: cudnn, flash, efficient, flash-cpu, ...), empty where it was not "
                             "watched (warmup 0, a compiled model, several processes) or no fused kernel ran"),
    "all_reduce": ("", "modeled inference and serving rows: the library of the tensor-parallel all-reduces priced (the "
                       "backend's `all_reduce` setting: nccl, or vllm, vLLM's custom all-reduce where vLLM uses it); "
                       "empty for a training row (its all-reduces are NCCL's) and for a backend that does not price "
                       "one (a measured row)"),
    "optimizer": ("", "modeled training rows: the Adam implementation the optimizer step was priced as (the backend's "
                      "`optimizer` setting: fused, one kernel; foreach, torch AdamW's default on CUDA, one pass per "
                      "operation); empty for inference, serving and measured rows"),
    "master_weights": ("", "modeled training rows: whether the 16-bit recipe was priced with an fp32 master copy and "
                           "fp32 Adam moments (the backend's `master_weights` setting: true, mixed precision; false, "
                           "the model cast to its dtype as the cpu and cuda backends run it); empty for inference, "
                           "serving and measured rows"),
    "status": ("", "ok | skipped | failed | does-not-fit"),
    "error": ("", "why a row is not ok"),
    "step_time_s": ("s", "wall time of one step (decode: the whole generation)"),
    "tokens_per_s": ("tokens/s", "tokens processed (train, prefill) or generated (decode) per second"),
    "tokens_per_s_per_device": ("tokens/s", "tokens_per_s / n_devices"),
    "latency_p50_s": ("s", "median step time"),
    "latency_p99_s": ("s", "99th percentile step time"),
    "step_time_p10_s": ("s", "measured: 10th percentile of the timed steps (with p90, the spread a difference "
                             "is held against; empty for modeled rows and for one timed step)"),
    "step_time_p90_s": ("s", "measured: 90th percentile of the timed steps"),
    "ttft_s": ("s", "decode: time to first token (the prefill)"),
    "tpot_s": ("s", "decode: time per output token after the first"),
    "model_flops_per_step": ("FLOP", "FLOPs of one step from the workload profile"),
    "achieved_tflops_per_device": ("TFLOP/s", "model FLOPs / step time / devices"),
    "mfu": ("", "achieved / peak FLOP/s of the device in this dtype"),
    "peak_memory_bytes_per_device": ("B", "peak memory on one device"),
    "energy_j_per_step": ("J", "energy of one step, all devices"),
    "joules_per_token": ("J/token", "energy per token"),
    "energy_source": ("", "nvml | rapl | modeled | the name of a plugin's energy meter"),
    "m_submodels": ("", "m: model partitions (tp*pp)"),
    "c_per_submodel_s": ("s", "C: one partition's share of the step on one device alone (m*C = one-device step)"),
    "t_ideal_s": ("s", "ideal step time m*C/n"),
    "scaling_efficiency": ("", "t_ideal_s / step_time_s"),
    "compute_time_s": ("s", "compute on the critical path"),
    "comm_time_s": ("s", "exposed (not overlapped) communication"),
    "bubble_time_s": ("s", "pipeline bubble"),
    "other_time_s": ("s", "the rest: optimizer, host overhead, unexplained"),
}

# Serving (a scenario with a `serving:` block; contract names, docs/serving.md): one row per (case, rate).
# Latencies per request as vLLM's `bench serve` defines them (llmsim.serving.metrics), over finished requests.
SERVING_COLUMNS: dict[str, tuple[str, str]] = {
    "request_rate": ("requests/s", "offered arrival rate (a trace as recorded: its mean rate; a closed loop: the "
                                   "rate achieved, requests sent / duration)"),
    "concurrency": ("clients", "a closed loop's clients, each with at most one request in flight (arrival kind "
                               "concurrency); empty for an open loop"),
    "requests_per_s": ("requests/s", "finished requests / duration (first arrival to last token)"),
    "output_tokens_per_s": ("tokens/s", "generated tokens / duration"),
    "ttft_mean_s": ("s", "mean time to first token (arrival to first token)"),
    "tpot_mean_s": ("s", "mean time per output token after the first, (e2e - ttft) / (output - 1)"),
    "itl_mean_s": ("s", "mean inter-token latency, all gaps of all requests"),
    "e2e_mean_s": ("s", "mean end-to-end latency (arrival to last token)"),
    "ttft_p50_s": ("s", "median TTFT"),
    "ttft_p90_s": ("s", "90th percentile TTFT"),
    "ttft_p99_s": ("s", "99th percentile TTFT"),
    "tpot_p50_s": ("s", "median TPOT"),
    "tpot_p90_s": ("s", "90th percentile TPOT"),
    "tpot_p99_s": ("s", "99th percentile TPOT"),
    "itl_p50_s": ("s", "median inter-token latency"),
    "itl_p99_s": ("s", "99th percentile inter-token latency"),
    "e2e_p50_s": ("s", "median end-to-end latency"),
    "e2e_p99_s": ("s", "99th percentile end-to-end latency"),
    "queue_p50_s": ("s", "median queueing delay (arrival to first scheduled)"),
    "goodput_rps": ("requests/s", "requests meeting both SLO bounds / duration (DistServe)"),
    "slo_attainment": ("", "share of the requests sent that meet both SLO bounds"),
    "kv_peak_utilization": ("", "peak KV-cache blocks in use / blocks, fullest replica"),
    "preemptions": ("", "preemptions by recompute, all replicas"),
    "accept_length": ("tokens", "speculative decoding: mean tokens emitted per verify step (accepted drafts + the "
                                "bonus token; SGLang's accept length); empty without serving.speculative"),
}
COLUMNS.update(SERVING_COLUMNS)

Status = Literal["ok", "skipped", "failed", "does-not-fit"]
# Built-in sources are nvml, rapl and modeled; a plugin's meter writes its own `name` (llmsim.energy).
EnergySource = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]


class Result(BaseModel):
    """One row: a (case, backend) pair. Every contract column exists; unknown values are None.

    Backends may add extra columns (for example a memory breakdown) in `extra`; they are written
    after the contract columns.
    """

    model_config = ConfigDict(extra="forbid")

    scenario: str
    case: str
    backend: str
    kind: Literal["measured", "modeled"]
    hardware: str | None = None
    strategy: str
    dp: int | None = None
    tp: int | None = None
    pp: int | None = None
    cp: int | None = None
    ep: int | None = None
    etp: int | None = None
    sp: bool | None = None
    zero: int | None = None
    micro_batch: int | None = None
    microbatches: int | None = None
    schedule: str | None = None
    recompute: str | None = None
    stage_layers: str | None = None
    nodes: int | None = None
    n_devices: int | None = None
    mode: str
    batch: int
    seq_len: int
    dtype: str
    params: int | None = None
    trainable_params: int | None = None
    params_active: int | None = None
    expert_load_imbalance: float | None = None
    tie_embeddings: bool | None = None
    layer_groups: int | None = None
    lora_rank: int | None = None
    attention_kernel: str | None = None
    all_reduce: str | None = None
    optimizer: str | None = None
    master_weights: bool | None = None
    status: Status = "ok"
    error: str | None = None
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    tokens_per_s_per_device: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    step_time_p10_s: float | None = None
    step_time_p90_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    model_flops_per_step: float | None = None
    achieved_tflops_per_device: float | None = None
    mfu: float | None = None
    peak_memory_bytes_per_device: float | None = None
    energy_j_per_step: float | None = None
    joules_per_token: float | None = None
    energy_source: EnergySource | None = None
    m_submodels: int | None = None
    c_per_submodel_s: float | None = None
    t_ideal_s: float | None = None
    scaling_efficiency: float | None = None
    compute_time_s: float | None = None
    comm_time_s: float | None = None
    bubble_time_s: float | None = None
    other_time_s: float | None = None
    request_rate: float | None = None
    concurrency: int | None = None
    requests_per_s: float | None = None
    output_tokens_per_s: float | None = None
    ttft_mean_s: float | None = None
    tpot_mean_s: float | None = None
    itl_mean_s: float | None = None
    e2e_mean_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p90_s: float | None = None
    tpot_p99_s: float | None = None
    itl_p50_s: float | None = None
    itl_p99_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p99_s: float | None = None
    queue_p50_s: float | None = None
    goodput_rps: float | None = None
    slo_attainment: float | None = None
    kv_peak_utilization: float | None = None
    preemptions: int | None = None
    accept_length: float | None = None
    extra: dict[str, Any] = {}

    def row(self) -> dict[str, Any]:
        """Flat dict in contract column order, extras last; NaN/inf become None."""
        data = self.model_dump()
        extra = data.pop("extra")
        out = {name: data.get(name) for name in COLUMNS}
        out.update({k: v for k, v in extra.items() if k not in out})
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def fill_derived(r: Result, tokens_per_step: int) -> Result:
    """Fill the columns that follow from step time, FLOPs, energy and the T = m*C/n decomposition.

    Backends set step_time_s (and n_devices, m_submodels, c_per_submodel_s, model_flops_per_step,
    energy_j_per_step, peak FLOP/s through mfu's caller); everything derivable is derived here once.
    """
    upd: dict[str, Any] = {}
    n = r.n_devices or 1
    if r.step_time_s and r.step_time_s > 0:
        upd["tokens_per_s"] = tokens_per_step / r.step_time_s
        upd["tokens_per_s_per_device"] = upd["tokens_per_s"] / n
        if r.model_flops_per_step is not None and r.achieved_tflops_per_device is None:
            upd["achieved_tflops_per_device"] = r.model_flops_per_step / r.step_time_s / n / 1e12
        if r.m_submodels and r.c_per_submodel_s is not None:
            upd["t_ideal_s"] = r.m_submodels * r.c_per_submodel_s / n
            upd["scaling_efficiency"] = upd["t_ideal_s"] / r.step_time_s
    if r.energy_j_per_step is not None and tokens_per_step:
        upd["joules_per_token"] = r.energy_j_per_step / tokens_per_step
    return r.model_copy(update=upd)


# ----------------------------------------------------------------------------------------- storage
# The run folder's notes: how its cases are priced, as `llmsim run` printed them (one `key: note` a line); the
# report's "About this run" lists them.
RUN_NOTES = "notes.txt"


# The run folder's planned cases: every (case, backend) `llmsim run` was asked to run into it, in the planned order,
# --backend's choice included (a resume that plans more adds them). The report compares the rows with it: a run cut
# short lists the cases without a row (trial 46: "Every case ran." of a run stopped after 7 of 10 cases), and a run
# of one backend of several (--backend) is not taken for one cut short.
PLANNED_FILE = "planned.json"


def record_planned(run_dir: Path, cases: list[tuple[str, str]], resume: bool = False) -> None:
    """Write `cases` ((case, backend), in order) to the folder's PLANNED_FILE, after those it already lists. A
    resume of a folder without a readable record writes none: what the first run planned is unknown, and a record of
    the resume's cases alone would call the run complete (trial 47: `--backend roofline --resume` of a folder whose
    cpu cases were cut short)."""
    kept = read_planned(run_dir)
    if kept is None and resume:
        return
    kept = kept or []
    known = set(kept)
    write_atomic(run_dir / PLANNED_FILE, json.dumps([list(c) for c in kept + [c for c in cases if c not in known]]))


def read_planned(run_dir: Path) -> list[tuple[str, str]] | None:
    """The folder's planned (case, backend) pairs, or None where it has no PLANNED_FILE as `record_planned` writes
    it: absent (a folder written before it existed), damaged, or not a non-empty list of [case, backend] strings
    (a run plans at least one case; trial 47 wrote `[]` and `[[1, 2]]` by hand)."""
    try:
        data = json.loads((run_dir / PLANNED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, list) or not data or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) and v for v in pair) for pair in data):
        return None
    return [(case, backend) for case, backend in data]


SESSIONS_FILE = "sessions.jsonl"   # one line per `llmsim run` of the folder: the first, then each --resume
SESSION_COLUMN = "session"         # a row's extra: the number of the sessions.jsonl line whose run wrote it


def record_session(run_dir: Path, environment: dict[str, Any]) -> int:
    """Append this run of the folder to its SESSIONS_FILE ({"session": n, "started": UTC time, "environment": the
    machine, environment.environment_record}) and return n: 1 for a new folder, one more than the last session
    for a --resume. Rows then carry n (SESSION_COLUMN), so a report can tell a folder whose rows came from
    different runs, possibly of different llmsim versions or hosts (trial 47: environment.json, rewritten by each
    resume, keeps only the last one's)."""
    n = max(read_sessions(run_dir), default=0) + 1
    line = {"session": n, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": environment}
    path = run_dir / SESSIONS_FILE
    if path.exists():
        _end_last_line(path)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return n


def read_sessions(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The folder's sessions, n -> its line (record_session); {} for a folder without the file (written before
    it existed); a line that is not a session (damaged, edited) is left out."""
    try:
        text = (run_dir / SESSIONS_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    sessions: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        n = data.get("session") if isinstance(data, dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1 and isinstance(data.get("environment"), dict):
            sessions[n] = data
    return sessions


def new_run_dir(out: Path, scenario: str) -> Path:
    """A new folder out/<scenario>/<timestamp>[-n] (never an existing one: two runs in a second differ)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out / scenario
    for n in itertools.count():
        run_dir = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            if not base.is_dir():  # `out` or `out/<scenario>` is a file: no stamp will ever fit
                raise UsageError("--out", f"{base} is not a folder") from None
            continue
        except OSError as exc:  # no permission, a read-only file system, ...: before anything runs
            raise (path_error("--out", exc) or exc) from None
    raise AssertionError("unreachable")


def latest_run_dir(out: Path, scenario: str) -> Path | None:
    """The newest run folder of `scenario` under `out` (what --resume continues by default)."""
    runs = sorted(p for p in (out / scenario).glob("*") if (p / "results.jsonl").exists())
    return runs[-1] if runs else None


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a kill never leaves half a file. The file gets the
    mode a plain open() would give it (0666 less the umask), not mkstemp's owner-only 0600, so a shared or
    served report folder stays readable. A write that fails (a full disk) removes its temporary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:  # said of the file asked for (a folder named report.md), not of the temporary one
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:  # a full disk, Ctrl-C: no .NAME.xxxx left beside the file (the old one, if any, stays)
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """results.jsonl (append-only, one line per finished case) and results.csv (rewritten whole)."""

    def __init__(self, run_dir: Path) -> None:
        self.jsonl = run_dir / "results.jsonl"
        self.csv = run_dir / "results.csv"
        self.rows: list[dict[str, Any]] = read_rows(run_dir) if self.jsonl.exists() else []
        if self.jsonl.exists():
            _end_last_line(self.jsonl)
        # Both files from the start: a run killed before its first row still is a run folder (it can be
        # resumed, reported on, and never lacks its csv).
        self.jsonl.touch()
        if not self.csv.exists():
            write_atomic(self.csv, self.frame().to_csv(index=False))

    def done(self) -> set[tuple[str, str]]:
        """(case, backend) pairs already finished; a failed case is not done (--resume runs it again)."""
        return {(r["case"], r["backend"]) for r in self.rows if r.get("status") != "failed"}

    def add(self, result: Result, session: int | None = None) -> None:
        """Save one finished case; `session` (record_session's number) is kept in the row's SESSION_COLUMN."""
        row = result.row()
        if session is not None:
            row[SESSION_COLUMN] = session
        self.rows = [r for r in self.rows if (r["case"], r["backend"]) != (row["case"], row["backend"])]
        self.rows.append(row)
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_atomic(self.csv, self.frame().to_csv(index=False))

    def reorder(self, keys: list[tuple[str, str]]) -> None:
        """Put the rows in the order of `keys` ((case, backend); others after them, as they were) and rewrite
        both files: rows saved as they finished (in any order) end up where a sequential run puts them."""
        rank = {key: i for i, key in enumerate(keys)}
        ordered = sorted(self.rows, key=lambda r: rank.get((r["case"], r["backend"]), len(rank)))
        if ordered == self.rows:
            return
        self.rows = ordered
        write_atomic(self.jsonl, "".join(json.dumps(row) + "\n" for row in ordered))
        write_atomic(self.csv, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        return rows_frame(self.rows)


def _end_last_line(jsonl: Path) -> None:
    """Before rows are appended to a resumed results.jsonl: a last line cut by a kill is dropped (read_rows
    left it out; the resumed run redoes its case) and a complete last row missing only its newline gets one,
    so that the next row starts a line of its own instead of gluing onto it."""
    data = jsonl.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        complete = isinstance(json.loads(data[start:]), dict)
    except (ValueError, RecursionError):
        complete = False
    if complete:
        with jsonl.open("ab") as f:
            f.write(b"\n")
    else:
        os.truncate(jsonl, start)


class DamagedRows(LLMSimError):
    """A results.jsonl line that is not a result row, other than a last line cut by a kill (bad input: exit 2)."""


def print_warning(message: str) -> None:
    """A warning on stderr, as llmsim words them (read_rows' default `warn`)."""
    print(f"llmsim: warning: {message}", file=sys.stderr)


def said_by_another_read(message: str) -> None:
    """read_rows' `warn` for a second read of a file in one command: the other read says its warnings (once)."""


def _column_kinds() -> dict[str, str]:
    """What each contract column holds, from `Result`'s annotations: 'number', 'whole number', 'text' or
    'true or false' (the words a damaged row's message uses)."""
    kinds: dict[str, str] = {}
    for name, field in Result.model_fields.items():
        if name == "extra":
            continue
        args = set(getattr(field.annotation, "__args__", ())) - {type(None)} or {field.annotation}
        kinds[name] = ("true or false" if bool in args else "whole number" if int in args
                       else "number" if float in args else "text")
    return kinds


COLUMN_KINDS = _column_kinds()
# The values a Literal column may hold (status, kind), from `Result`'s annotations: another word is an edited row.
COLUMN_CHOICES: dict[str, tuple[str, ...]] = {
    name: field.annotation.__args__ for name, field in Result.model_fields.items()
    if getattr(field.annotation, "__origin__", None) is Literal}
# No numeric contract column is negative in a row llmsim wrote: times, bytes, rates, counts, degrees of
# parallelism, fractions (trial 31: a ttft_p50_s of -5 was reported as "0 s"; trial 32: n_devices -3 as "-3").


def _value_problem(column: str, value: Any) -> str | None:
    """Why a contract column's value is not one llmsim wrote (a number as text, a list, a number too large for
    a float: the row was edited), or None. A missing value is None in every column but status and kind; no
    number is negative."""
    kind = COLUMN_KINDS.get(column)
    if kind is None or (value is None and column not in COLUMN_CHOICES):
        return None
    choices = COLUMN_CHOICES.get(column)
    if choices is not None:   # null too: every row has a status and a kind (trial 32: status null read as "nan")
        return None if value in choices else \
            f"{column} is {clipped(json.dumps(value))}, not one of {', '.join(choices)}"
    if kind == "true or false":
        ok = isinstance(value, bool)
    elif kind == "text":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                ok = math.isfinite(float(value)) and (kind == "number" or float(value).is_integer())
            except OverflowError:     # an integer of hundreds of digits
                ok = False
    if ok and kind in ("number", "whole number") and value < 0:
        return f"{column} is {clipped(json.dumps(value))}, not a number >= 0"
    if ok:
        return None
    shown = clipped(json.dumps(value))
    article = {"number": "a ", "whole number": "a "}.get(kind, "")
    return f"{column} is {shown}, not {article}{kind}"


def row_problem(row: dict[str, Any]) -> str | None:
    """Why a row (Result.row()) is not one llmsim writes, or None: a contract column's value of the wrong kind or
    negative (`_value_problem`, the check read_rows makes of a saved row). The runner checks a backend's row with
    it before saving (runner.checked_result), so a plugin's bad value becomes its failed row, not a damaged file."""
    return next((p for column, value in row.items() if (p := _value_problem(column, value))), None)


def rows_disagree(scenario: Any, frame: pd.DataFrame) -> tuple[str, str] | None:
    """The first workload key whose value the rows contradict (every row carries its case's mode, batch,
    sequence length and dtype): a truncated file validates with defaults in place of what was cut off. A
    serving run's batch and seq_len are a traced reference, not the scenario's, so only its dtype counts. The report
    reads no scenario.yaml that disagrees (report.run.read_saved_scenario), and `--resume` continues none
    (runner.check_resumable; trial 47: a folder's scenario.yaml edited to batch 8 resumed beside rows of batch 4).
    `scenario`: a parsed config.Scenario; (key path, message) or None."""
    w = scenario.workload
    checks: list[tuple[str, str, Any]] = [("workload.dtype", "dtype", w.dtype)]
    if scenario.serving is None:
        checks += [("workload.mode", "mode", w.mode), ("workload.batch", "batch", w.batch),
                   ("workload.model.seq_len", "seq_len", w.model.seq_len)]
    for key, column, value in checks:
        if column not in frame:
            continue
        seen = [v for v in frame[column].dropna().unique()]
        other = [v for v in seen if (float(v) != value if isinstance(value, int) and not isinstance(v, str)
                                     else str(v) != str(value))]
        if other:
            shown = int(other[0]) if isinstance(value, int) and not isinstance(other[0], str) else other[0]
            return key, f"{value!r}, but the rows in results.jsonl ran {column} {shown!r}"
    return None


def read_rows(run_dir: Path, warn: Callable[[str], None] = print_warning,
              damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a run folder; a later line for the same (case, backend) replaces an earlier one (resume).

    ResultStore writes each row as one line ending in a newline. A last line without its newline that does
    not parse is a row cut by a kill (the run stopped while writing it): the complete rows are returned and
    `warn` says so; that case is simply not done, as --resume knows. Any other line that is not a row (not
    JSON, not a mapping with case and backend, a contract column of another type than `Result`'s: COLUMN_KINDS)
    means the file was damaged or edited: DamagedRows, one line
    naming the file and the line, rather than a report that silently lacks rows. Given a `damaged` list, such
    lines are appended to it (one message each) and left out instead, so that a report can still be built from
    the rows that read (llmsim report: it then says so and exits 2)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    path = run_dir / "results.jsonl"
    # errors="replace": bytes that are not UTF-8 (a damaged file) become U+FFFD and the line fails below
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem = None
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"not JSON ({exc.msg}: column {exc.colno})"
        except (ValueError, RecursionError):  # a number too long to convert; absurd nesting
            problem = "not a JSON row llmsim could read"
        else:
            if not isinstance(row, dict) or not isinstance(row.get("case"), str) \
                    or not isinstance(row.get("backend"), str):
                problem = "JSON but not a result row (a mapping with case and backend)"
            else:   # a value of the wrong type would fail later, in a report's or a fit's arithmetic
                problem = row_problem(row)
        if problem is None:
            rows[(row["case"], row["backend"])] = row
        elif number == len(lines):  # the last line, and no newline after it: a write cut short
            warn(f"{path}: line {number}: an incomplete last row (the run stopped while writing it) is left "
                 f"out; the {count(len(rows), 'complete row')} before it {'is' if len(rows) == 1 else 'are'} used "
                 "(llmsim run --resume redoes it)")
        elif damaged is not None:
            damaged.append(f"line {number}: {problem}")
        else:
            raise DamagedRows(one_line(f"{path}: line {number}: {problem}; the file is damaged or was edited "
                                       f"(each line is one row as llmsim wrote it)"))
    return list(rows.values())


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a table: every contract column in contract order (missing ones empty), then the extras."""
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    extras = [c for c in frame.columns if c not in COLUMNS]
    return frame[list(COLUMNS) + extras]
