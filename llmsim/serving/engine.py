"""A real serving engine for a serving scenario: the scenario's model as a Hugging Face checkpoint folder and
vLLM's OpenAI-compatible server started on it, stopped on every exit path.

Nothing here imports vLLM, torch or transformers: the checkpoint is written as JSON files, and the server
is another process (`python -m vllm.entrypoints.openai.api_server`), so this module and its tests run in
the main environment. The measured `vllm` backend (plugins/vllm.py) uses it.

The checkpoint (`write_checkpoint`) has a config and a tokenizer but no weights: vLLM's `--load-format
dummy` fills every parameter with random values (vllm/model_executor/model_loader/dummy_loader.py), so
nothing is downloaded and no multi-GB file is written. Two architectures cover the workload's features:
* Llama (LlamaForCausalLM): RMSNorm, SwiGLU, rotary positions, grouped-query attention;
* GPT-2 (GPT2LMHeadModel): LayerNorm, GELU (tanh approximation, "gelu_new": llmsim's gelu), learned
  positions, biases, multi-head attention.
Any other combination is refused with the reason (`checkpoint_problem`).

The tokenizer is a word-level one written by hand (Hugging Face `tokenizers`' JSON format: a `WordLevel`
model, whitespace pre-tokenizer): token i is the word `t<i>`, so every id decodes to a non-empty word of
its own and a streamed chunk's token count is its word count (`count_tokens`). Prompts are sent as token
ids, so the tokenizer only decodes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from llmsim.config import ModelSpec

# Special tokens of the hand-written tokenizer: ids 0 and 1 (the rest are the words t2, t3, ...).
UNK_ID, EOS_ID = 0, 1
SPECIAL_TOKENS = ("<unk>", "</s>")
# Rotary base of Llama 2 (Touvron et al. 2023; the released params.json rope_theta 10000) and of llmsim's own
# RotaryEmbedding (llmsim/workload/model.py): the frequency table only shapes values, not cost.
ROPE_THETA = 10000.0
# The name the server registers the model under (--served-model-name); requests name it.
SERVED_MODEL_NAME = "llmsim"
# dtypes vLLM's CPU backend runs (vllm/platforms/cpu.py: bfloat16, float16 where the CPU has it, float32).
VLLM_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def architecture_of(spec: ModelSpec) -> str | None:
    """'llama' or 'gpt2' when the workload's model is one of those architectures exactly, else None."""
    if not spec.causal or spec.qk_norm or spec.type_vocab:
        return None
    if spec.activation == "swiglu" and spec.norm == "rmsnorm" and spec.positions == "rotary":
        return "llama"
    if spec.activation == "gelu" and spec.norm == "layernorm" and spec.positions == "learned" and spec.bias \
            and spec.kv_heads == spec.heads and spec.head_width * spec.heads == spec.hidden:
        return "gpt2"
    return None


def checkpoint_problem(spec: ModelSpec) -> str | None:
    """Why the model cannot be written as a checkpoint vLLM serves, or None."""
    if not spec.causal:
        return "a bidirectional encoder (causal: false) is not a generative model vLLM serves"
    if spec.mla is not None:
        return ("a multi-head latent attention model (mla) has no Llama- or GPT-2-style checkpoint form here "
                "(DeepseekV3ForCausalLM is not written)")
    if architecture_of(spec) is None:
        return (f"no Hugging Face architecture matches activation={spec.activation}, norm={spec.norm}, "
                f"positions={spec.positions}, bias={spec.bias}, qk_norm={spec.qk_norm}, kv_heads={spec.kv_heads} "
                f"of heads={spec.heads}; the vllm backend serves Llama-style (swiglu, rmsnorm, rotary, any "
                f"kv_heads) and GPT-2-style (gelu, layernorm, learned, bias, kv_heads = heads) models")
    if spec.vocab <= len(SPECIAL_TOKENS):
        return f"vocab={spec.vocab} leaves no ordinary token beside {len(SPECIAL_TOKENS)} special ones"
    if spec.attention_sinks:
        return "attention_sinks: no Llama- or GPT-2-style Hugging Face config has them (gpt-oss's own is not exported)"
    if spec.moe is not None and spec.moe.expert_weight_dtype is not None:
        return (f"moe.expert_weight_dtype={spec.moe.expert_weight_dtype}: the dummy checkpoint holds 16-bit weights "
                f"(allowed: null)")
    if spec.moe is not None:
        problem = _mixtral_problem(spec)
        if problem:
            return problem
    if spec.sliding_window is not None and (spec.full_attention_every is not None or arch_is_gpt2(spec) or spec.bias):
        return (f"sliding_window={spec.sliding_window} with full_attention_every={spec.full_attention_every}, "
                f"bias={spec.bias}: only a window on every layer of a Llama-style model without bias is exported "
                f"(MistralForCausalLM's sliding_window); allowed: full_attention_every null, bias false")
    return None


def _mixtral_problem(spec: ModelSpec) -> str | None:
    """Why a mixture of experts has no MixtralForCausalLM form, or None. Mixtral (transformers' MixtralConfig,
    vLLM's MixtralForCausalLM) routes every layer's tokens to top-k of `num_local_experts` SwiGLU experts of width
    `intermediate_size`, gate weights softmaxed over the chosen k (llmsim's norm_topk_prob), dropless, no shared
    expert, no dense layer, no bias."""
    moe = spec.moe
    assert moe is not None
    if architecture_of(spec) != "llama":
        return "a mixture of experts is exported as MixtralForCausalLM, a Llama-style model (swiglu, rmsnorm, rotary)"
    unlike = [f"{key}={value}" for key, value, mixtral in (
        ("moe.shared_experts", moe.shared_experts, 0), ("moe.layer_freq", moe.layer_freq, 1),
        ("moe.first_dense_layers", moe.first_dense_layers, 0), ("moe.norm_topk_prob", moe.norm_topk_prob, True),
        ("moe.capacity_factor", moe.capacity_factor, None), ("bias", spec.bias, False)) if value != mixtral]
    if unlike:
        return (f"{', '.join(unlike)}: a mixture of experts is exported as MixtralForCausalLM (every layer MoE, no "
                f"shared expert, top-k weights renormalised, dropless, no bias); allowed: shared_experts 0, layer_freq "
                f"1, first_dense_layers 0, norm_topk_prob true, capacity_factor null, bias false")
    return None


def arch_is_gpt2(spec: ModelSpec) -> bool:
    return architecture_of(spec) == "gpt2"


def hf_config(spec: ModelSpec, dtype: str, tie_embeddings: bool) -> dict[str, Any]:
    """The config.json of the model (transformers' LlamaConfig or GPT2Config keys)."""
    arch = architecture_of(spec)
    common: dict[str, Any] = dict(vocab_size=spec.vocab, torch_dtype=dtype, tie_word_embeddings=tie_embeddings,
                                  bos_token_id=EOS_ID, eos_token_id=EOS_ID)
    if arch == "llama" and spec.moe is not None:
        # Mixtral 8x7B's config keys (transformers MixtralConfig); sliding_window null = full attention
        return dict(common, architectures=["MixtralForCausalLM"], model_type="mixtral", hidden_size=spec.hidden,
                    intermediate_size=spec.expert_ffn, num_hidden_layers=spec.layers,
                    num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.head_width,
                    max_position_embeddings=max(spec.seq_len, spec.max_positions or 0), rms_norm_eps=spec.norm_eps,
                    rope_theta=ROPE_THETA, hidden_act="silu", num_local_experts=spec.moe.experts,
                    num_experts_per_tok=spec.moe.top_k, sliding_window=spec.sliding_window)
    if arch == "llama" and spec.sliding_window is not None:
        # every layer windowed: Mistral 7B v0.1's config (transformers' MistralConfig `sliding_window`, the window
        # of every layer); a Llama config has no window
        return dict(common, architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=spec.hidden,
                    intermediate_size=spec.ffn_hidden, num_hidden_layers=spec.layers,
                    num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.head_width,
                    max_position_embeddings=max(spec.seq_len, spec.max_positions or 0), rms_norm_eps=spec.norm_eps,
                    rope_theta=ROPE_THETA, hidden_act="silu", sliding_window=spec.sliding_window)
    if arch == "llama":
        return dict(common, architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=spec.hidden,
                    intermediate_size=spec.ffn_hidden, num_hidden_layers=spec.layers,
                    num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.head_width,
                    max_position_embeddings=max(spec.seq_len, spec.max_positions or 0), rms_norm_eps=spec.norm_eps,
                    rope_theta=ROPE_THETA, hidden_act="silu", attention_bias=spec.bias, mlp_bias=spec.bias)
    if arch == "gpt2":
        return dict(common, architectures=["GPT2LMHeadModel"], model_type="gpt2", n_embd=spec.hidden,
                    n_layer=spec.layers, n_head=spec.heads, n_inner=spec.ffn_hidden,
                    n_positions=max(spec.seq_len, spec.max_positions or 0), layer_norm_epsilon=spec.norm_eps,
                    activation_function="gelu_new")
    raise ValueError(checkpoint_problem(spec))


def tokenizer_json(vocab: int) -> dict[str, Any]:
    """A word-level tokenizer of `vocab` ids in Hugging Face `tokenizers`' serialisation format."""
    words = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    words.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab)})
    added = [dict(id=i, content=name, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for i, name in enumerate(SPECIAL_TOKENS)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
            # WordPiece's decoder joins tokens with spaces (and glues "##" continuations, which never occur here)
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
            "model": {"type": "WordLevel", "vocab": words, "unk_token": SPECIAL_TOKENS[UNK_ID]}}


def write_checkpoint(folder: Path, spec: ModelSpec, dtype: str, tie_embeddings: bool) -> Path:
    """Write config.json, generation_config.json and a tokenizer into `folder`; no weights (load_format dummy)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "config.json": hf_config(spec, dtype, tie_embeddings),
        "generation_config.json": {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID},
        "tokenizer.json": tokenizer_json(spec.vocab),
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": SPECIAL_TOKENS[UNK_ID],
                                  "eos_token": SPECIAL_TOKENS[EOS_ID], "bos_token": SPECIAL_TOKENS[EOS_ID],
                                  "model_max_length": spec.seq_len, "clean_up_tokenization_spaces": False},
        "special_tokens_map.json": {"unk_token": SPECIAL_TOKENS[UNK_ID], "eos_token": SPECIAL_TOKENS[EOS_ID],
                                    "bos_token": SPECIAL_TOKENS[EOS_ID]},
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return folder


def count_tokens(text: str) -> int:
    """Tokens in a streamed piece of text from the hand-written tokenizer: one word per token."""
    return len(text.split())


def free_port(host: str = "127.0.0.1", exclude: Sequence[int] = ()) -> int:
    """A TCP port nobody listens on now (the OS picks it; another process could take it before the server:
    ServerProcess starts the server again on another port when that happens), not one of `exclude` (ports
    already handed to servers not started yet)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port


# serving.kv_cache_dtype -> vLLM's --kv-cache-dtype (auto passes none)
VLLM_KV_CACHE_DTYPES = {"float8": "fp8"}


@dataclass(frozen=True)
class EngineArgs:
    """The scenario's serving settings in vLLM's terms (vllm/engine/arg_utils.py names)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    long_prefill_token_threshold: int | None
    block_size: int
    max_model_len: int
    dtype: str
    seed: int
    enforce_eager: bool
    kv_cache_bytes: int
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # the cores the ranks are bound to, in order, replica after replica (VLLM_CPU_OMP_THREADS_BIND "0|1|...": replica
    # i's rank j on core i*ranks + j); None: vLLM's own choice ("auto")
    cores_per_rank: tuple[str, ...] | None = None
    # serving.kv_cache_dtype: "auto" passes no flag (vLLM's default, the model dtype); "float8" -> --kv-cache-dtype
    # fp8 (vllm/config/cache.py CacheDType: fp8 = fp8_e4m3 on CUDA)
    kv_cache_dtype: str = "auto"

    @property
    def ranks(self) -> int:
        """Worker processes of one server: tp x pp."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def cli(self) -> list[str]:
        """The server's command-line flags for these settings (prefix caching off: llmsim does not model it)."""
        flags = ["--max-num-seqs", str(self.max_num_seqs), "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                 "--block-size", str(self.block_size), "--max-model-len", str(self.max_model_len),
                 "--dtype", self.dtype, "--seed", str(self.seed), "--load-format", "dummy",
                 "--kv-cache-memory-bytes", str(self.kv_cache_bytes),
                 "--no-enable-prefix-caching",
                 "--enable-chunked-prefill" if self.enable_chunked_prefill else "--no-enable-chunked-prefill"]
        if self.long_prefill_token_threshold is not None:
            flags += ["--long-prefill-token-threshold", str(self.long_prefill_token_threshold)]
        if self.enforce_eager:
            flags.append("--enforce-eager")
        if self.kv_cache_dtype != "auto":
            flags += ["--kv-cache-dtype", VLLM_KV_CACHE_DTYPES[self.kv_cache_dtype]]
        if self.ranks > 1:
            # one worker process per rank, started by the engine core (vllm/v1/executor/multiproc_executor.py);
            # vLLM's CPU platform turns "uni" into "mp" at every size (vllm/platforms/cpu.py,
            # check_and_update_config); named here so that a Ray installed beside it is not chosen instead
            flags += ["--tensor-parallel-size", str(self.tensor_parallel_size),
                      "--pipeline-parallel-size", str(self.pipeline_parallel_size),
                      "--distributed-executor-backend", "mp"]
        return flags

    def env(self, replica: int = 0) -> dict[str, str | None]:
        """Environment of the server: no network (HF_HUB_OFFLINE: the checkpoint is local), no usage report.

        The KV-cache size goes by --kv-cache-memory-bytes, not the legacy VLLM_CPU_KVCACHE_SPACE: vLLM's CPU
        platform turns that variable into the same setting but reads it as whole GiB (vllm/platforms/cpu.py,
        `int(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * GiB_bytes`), and a set one would override the flag (None:
        removed from the server's environment)."""
        env: dict[str, str | None] = {"VLLM_CPU_KVCACHE_SPACE": None, "HF_HUB_OFFLINE": "1",
                                      "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if self.cores_per_rank is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                self.cores_per_rank[replica * self.ranks:(replica + 1) * self.ranks])
        return env


class EngineError(RuntimeError):
    """The server did not come up (exited, or not healthy in time): the message ends with its log's tail."""


class EngineStartTimeout(EngineError):
    """The server was not healthy within `limit_s` seconds (ServerProcess.startup_timeout_s)."""

    def __init__(self, message: str, limit_s: float) -> None:
        super().__init__(message)
        self.limit_s = limit_s


# What a server that could not bind its port writes (uvicorn: "[Errno 98] error while attempting to bind on
# address ...: address already in use"; Python's socketserver: "OSError: [Errno 98] Address already in use").
PORT_TAKEN_WORDS = ("address already in use", "eaddrinuse", f"[errno {errno.EADDRINUSE}]")


def port_was_taken(log: Path, since: int = 0) -> bool:
    """Whether the log, from byte `since` on, says the server's port was taken (EADDRINUSE)."""
    try:
        with open(log, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace").lower()
    except OSError:
        return False
    return any(words in text for words in PORT_TAKEN_WORDS)


def _tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log that name an error (the root cause of a failed start), else its last lines."""
    try:
        text = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    errors = [line for line in text if "Error" in line and not line.endswith("^")]
    return " | ".join((errors or [line for line in text if line])[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server when the process that started it dies (even by SIGKILL), via
    prctl(PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class ServerProcess:
    """A server process in a session of its own, as a context manager: `with ServerProcess(...) as s:` starts
    it and waits until `health_path` answers 200; leaving the block by any path (return, exception,
    KeyboardInterrupt) stops it: SIGTERM to its process group, SIGKILL after `stop_grace_s`.

    `command` is the full argv; its output goes to `log`. The port comes from free_port, which closes it before
    the server binds it: if another process takes it in between, the server exits with EADDRINUSE, and with
    `command_for` (the argv for another port) it is started again on a fresh port, `port_attempts` times in
    all; `port` and `command` are then the ones that started (read base_url after entering)."""

    command: Sequence[str]
    port: int
    log: Path
    env: Mapping[str, str | None] = field(default_factory=dict)   # None removes a variable
    host: str = "127.0.0.1"
    startup_timeout_s: float = 600.0
    stop_grace_s: float = 15.0
    health_path: str = "/health"
    poll_s: float = 0.25
    command_for: Callable[[int], Sequence[str]] | None = None
    port_attempts: int = 5
    exclude: Sequence[int] = ()    # ports not to move to (the other replicas')
    ports_taken: list[int] = field(default_factory=list)  # ports the server found taken, in order
    process: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ServerProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        try:
            for attempt in range(1, max(self.port_attempts, 1) + 1):
                since = self.log.stat().st_size  # this start's lines follow
                self.process = subprocess.Popen(list(self.command), stdout=self._log_file, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.environment(),
                                                start_new_session=True,
                                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                try:
                    self.wait_healthy()
                    return self
                except EngineError:
                    exited = self.process.poll() is not None
                    if not (exited and self.command_for is not None and attempt < self.port_attempts
                            and port_was_taken(self.log, since)):
                        raise
                self.close_group()  # what the first start left, before the next one
                self.ports_taken.append(self.port)
                self.port = free_port(self.host, exclude=(*self.exclude, *self.ports_taken))
                self.command = list(self.command_for(self.port))
        except BaseException:
            self.stop()
            raise
        return self

    def environment(self) -> dict[str, str]:
        """This process's environment with `env` applied."""
        out = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_healthy(self) -> float:
        """Seconds until the health check answered; EngineError if the process exits or the time runs out."""
        assert self.process is not None
        start = time.monotonic()
        while True:
            code = self.process.poll()
            if code is not None:
                raise EngineError(f"the server exited with code {code} before it was ready: {_tail(self.log)}")
            try:
                with urllib.request.urlopen(self.base_url + self.health_path, timeout=2) as answer:
                    if answer.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - start > self.startup_timeout_s:
                raise EngineStartTimeout(f"the server was not ready after {self.startup_timeout_s:g} s: "
                                         f"{_tail(self.log)}", self.startup_timeout_s)
            time.sleep(self.poll_s)

    def stop(self) -> int | None:
        """Stop the server and everything it started (its process group); its exit code, or None if never started.
        Safe to call twice."""
        code = None
        process = self.process
        if process is not None:
            code = process.poll()
            if code is None:
                code = self._signal_and_wait(process)
            self.close_group()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def _signal_and_wait(self, process: subprocess.Popen[bytes]) -> int:
        for sig, wait in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, None)):
            try:
                os.killpg(process.pid, sig)  # the group of the session it leads: its own pid
            except ProcessLookupError:
                pass
            try:
                return process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return process.wait()

    def close_group(self) -> None:
        """SIGKILL whatever is left of the server's process group (workers that outlived the server)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def warm_up(base_url: str, model: str, prompt: Sequence[int], output_tokens: int, timeout_s: float) -> float:
    """Send one request to a freshly started server and read its whole answer (not measured); its seconds.

    vLLM's CPU worker runs no forward pass before serving when the model is eager and the KV-cache size explicit
    (vllm/v1/worker/cpu_worker.py, `_should_warm_up_model`, vLLM 0.32: "warmup serves no purpose"), which is how
    the vllm backend starts it: the first prefill and the first decode step then pay first-call costs (lazy
    initialisation, first touch of the weights and KV pages), 1.3-2.7 s each at tp 2 on this host
    (docs/validation.md, "Where the p99 comes from"). vLLM's own `bench serve` sends an initial single test
    prompt before it measures (vllm/benchmarks/serve.py, "Starting initial single prompt test run") for the
    same reason."""
    body = json.dumps({"model": model, "prompt": list(prompt), "max_tokens": output_tokens,
                       "min_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0,
                       "stream": True}).encode()
    request = urllib.request.Request(base_url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            answer.read()
    except (urllib.error.URLError, OSError) as exc:
        raise EngineError(f"the warm-up request failed: {exc}") from exc
    return time.perf_counter() - start


def vllm_command(python: str, model_dir: Path, port: int, args: EngineArgs, host: str = "127.0.0.1") -> list[str]:
    """The argv that starts vLLM's OpenAI-compatible server (`vllm serve` fails on the vllm-cpu package's name, so
    the module is run directly)."""
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", SERVED_MODEL_NAME, "--host", host, "--port", str(port), *args.cli()]
