"""The `vllm` backend without vLLM: the checkpoint it writes, the engine's settings, the streaming client's replay
and the row it makes, and the server's lifecycle, against a fake OpenAI-compatible server
(tests/serving/fake_openai_server.py). The test marked `vllm` runs the real engine where vLLM is installed."""

from __future__ import annotations

import json
from dataclasses import replace
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmsim.config import ModelSpec, load_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases, run_scenario
from llmsim.serving.engine import (EngineArgs, EngineError, EngineStartTimeout, ServerProcess, architecture_of,
                                   checkpoint_problem, count_tokens, free_port, hf_config, tokenizer_json,
                                   write_checkpoint)
from llmsim.serving.replay import Replay, outcome_of, parse_prometheus, prompt_ids
from llmsim.serving.requests import ClosedLoop, Request
from llmsim_plugins.vllm import VllmBackend, engine_args, unsupported, vllm_version

FAKE = Path(__file__).resolve().parents[1] / "serving" / "fake_openai_server.py"
PREFILL_S, TOKEN_S = 0.02, 0.004

LLAMA = dict(layers=2, hidden=128, heads=4, kv_heads=2, ffn_hidden=128, vocab=300, seq_len=256, activation="swiglu",
             norm="rmsnorm", positions="rotary", bias=False)
GPT2 = dict(layers=2, hidden=64, heads=4, ffn_hidden=256, vocab=300, seq_len=256, activation="gelu", norm="layernorm",
            positions="learned", bias=True)


def serving_scenario(**serving: Any) -> dict[str, Any]:
    block = {"requests": 12, "arrival": {"kind": "poisson", "rate": [40]}, "lengths": {"input": 16, "output": 5},
             "scheduler": {"kind": "continuous", "max_num_seqs": 8, "max_batched_tokens": 256},
             "kv_block_tokens": 32, "slo": {"ttft_s": 1.0, "tpot_s": 1.0, "percentile": 90}}
    block.update(serving)
    return {"name": "vllm-test", "workload": {"model": dict(LLAMA), "dtype": "float32"},
            "strategies": [{"name": "tp1"}], "serving": block,
            "backends": {"vllm": {"startup_timeout_s": 60}, "roofline": {"hardware": "h100-sxm", "nodes": 1,
                                                                         "devices_per_node": 1}},
            "seed": 3}


def alive(pid: int) -> bool:
    """True while a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int]) -> list[int]:
    """The pids still alive after a short grace (the kernel reaps a SIGKILLed grandchild asynchronously)."""
    for _ in range(200):
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return left


def fake_command(port: int, pid_file: Path, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE), "--port", str(port), "--pid-file", str(pid_file), "--prefill-s", str(PREFILL_S),
            "--token-s", str(TOKEN_S), *extra]


class FakeVllm(VllmBackend):
    """The backend with the fake server in place of vLLM's."""

    pid_file: Path
    extra: tuple[str, ...] = ()

    def command(self, model_dir: Path, port: int, args: EngineArgs) -> list[str]:
        assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
        return fake_command(port, self.pid_file, "--max-model-len", str(args.max_model_len), *self.extra)


# -- the checkpoint ------------------------------------------------------------------------------------------------

def test_a_llama_style_model_is_written_as_a_llama_checkpoint(tmp_path: Path) -> None:
    spec = ModelSpec(**LLAMA)
    folder = write_checkpoint(tmp_path / "m", spec, "bfloat16", tie_embeddings=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (128, 128, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 32)
    assert config["vocab_size"] == 300 and config["max_position_embeddings"] == 256
    assert config["hidden_act"] == "silu" and config["tie_word_embeddings"] is False
    assert config["torch_dtype"] == "bfloat16"
    assert not list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))  # weights: load_format dummy


def test_a_gpt2_style_model_is_written_as_a_gpt2_checkpoint() -> None:
    config = hf_config(ModelSpec(**GPT2), "float32", tie_embeddings=True)
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_inner"]) == (64, 2, 4, 256)
    assert config["activation_function"] == "gelu_new"   # llmsim's gelu is the tanh approximation
    assert config["n_positions"] == 256 and config["tie_word_embeddings"] is True


@pytest.mark.parametrize("change, words", [
    (dict(GPT2, norm="rmsnorm"), "no Hugging Face architecture"),
    (dict(GPT2, kv_heads=2), "no Hugging Face architecture"),
    (dict(LLAMA, qk_norm=True), "no Hugging Face architecture"),
    (dict(GPT2, causal=False), "bidirectional"),
])
def test_models_without_a_matching_architecture_are_refused_with_the_reason(change: dict, words: str) -> None:
    spec = ModelSpec(**change)
    assert architecture_of(spec) is None or not spec.causal
    problem = checkpoint_problem(spec)
    assert problem is not None and words in problem and "\n" not in problem


def test_the_tokenizer_has_one_word_per_id_so_a_chunk_s_tokens_are_its_words() -> None:
    tok = tokenizer_json(300)
    vocab = tok["model"]["vocab"]
    assert len(vocab) == 300 and sorted(vocab.values()) == list(range(300))
    assert len(set(vocab)) == 300 and all(" " not in w for w in vocab)
    assert count_tokens(" t5 t7") == 2 and count_tokens(" t9") == 1 and count_tokens("") == 0


# -- the engine's settings -----------------------------------------------------------------------------------------

def _case(tmp_path: Path, **serving: Any):  # noqa: ANN202
    path = tmp_path / "s.yaml"
    import yaml

    path.write_text(yaml.safe_dump(serving_scenario(**serving)))
    scenario = load_scenario(path)
    registry = BackendRegistry.from_manager(get_plugin_manager())
    return [p for p in plan_cases(scenario, registry, str(path), ["vllm"])], scenario, registry, path


def test_the_scheduler_maps_to_vllm_flags(tmp_path: Path) -> None:
    planned, *_ = _case(tmp_path)
    args = engine_args(planned[0].case, planned[0].settings)
    cli = args.cli()
    assert cli[cli.index("--max-num-seqs") + 1] == "8" and cli[cli.index("--max-num-batched-tokens") + 1] == "256"
    assert cli[cli.index("--block-size") + 1] == "32" and cli[cli.index("--max-model-len") + 1] == "256"
    assert "--no-enable-chunked-prefill" in cli and "--no-enable-prefix-caching" in cli and "--enforce-eager" in cli
    assert cli[cli.index("--load-format") + 1] == "dummy"
    # memory_utilization 0.9 x memory_gib 4, in bytes (vLLM's own variable would round to whole GiB)
    assert cli[cli.index("--kv-cache-memory-bytes") + 1] == str(int(0.9 * 4 * 2**30))
    assert args.env()["VLLM_CPU_KVCACHE_SPACE"] is None   # removed: vLLM reads it as whole GiB and it would win
    chunked, *_ = _case(tmp_path, scheduler={"kind": "chunked-prefill", "max_num_seqs": 8, "max_batched_tokens": 256,
                                             "chunk_tokens": 64})
    cli = engine_args(chunked[0].case, chunked[0].settings).cli()
    assert "--enable-chunked-prefill" in cli and cli[cli.index("--long-prefill-token-threshold") + 1] == "64"


def test_a_float8_kv_cache_maps_to_vllms_fp8_flag_and_auto_to_none(tmp_path: Path) -> None:
    planned, *_ = _case(tmp_path)
    assert "--kv-cache-dtype" not in engine_args(planned[0].case, planned[0].settings).cli()
    fp8, *_ = _case(tmp_path, kv_cache_dtype="float8")
    cli = engine_args(fp8[0].case, fp8[0].settings).cli()
    assert cli[cli.index("--kv-cache-dtype") + 1] == "fp8"


def planned_ok(tmp_path: Path):  # noqa: ANN201
    return _case(tmp_path)[0][0].case


@pytest.mark.parametrize("blocks, said", [(7, "7"), (48, "48"), (None, "16 (the default)")])
def test_a_kv_block_size_the_engine_refuses_is_a_validation_error_naming_the_allowed_sizes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], blocks: int | None, said: str) -> None:
    """serving.kv_block_tokens: 7 validated as ok and its vllm rows were skipped at run time: vLLM's CPU attention
    takes multiples of 32 only (its engine would refuse the size at start-up, minutes in), on any host the backend
    runs, so the scenario is refused before anything runs, naming the sizes allowed (exit 2, one line)."""
    import yaml

    from llmsim.cli import main

    data = serving_scenario(kv_block_tokens=blocks)
    if blocks is None:
        del data["serving"]["kv_block_tokens"]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    for verb in ("validate", "run"):
        out = ["--out", str(tmp_path / "runs")] if verb == "run" else []
        assert main([verb, str(path), *out]) == 2
        assert capsys.readouterr().err.strip() == (
            f"llmsim: error: {path}: serving.kv_block_tokens: {said}: the vllm backend runs vLLM's CPU attention, "
            f"which takes blocks of a multiple of 32 tokens (vllm/v1/attention/backends/cpu_attn.py); allowed: 32, "
            f"64, 96, 128, ... up to the model's seq_len (backend 'vllm')")
    assert not (tmp_path / "runs").exists()   # nothing ran
    del data["backends"]["vllm"]   # the modeled backends price any size (a note where vLLM takes none such)
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0


def test_what_vllm_cannot_run_is_skipped_with_the_reason(tmp_path: Path) -> None:
    static, *_ = _case(tmp_path, scheduler={"kind": "static", "max_num_seqs": 8, "max_batched_tokens": 256})
    assert "no vLLM equivalent" in (unsupported(static[0].case) or "")
    v0, *_ = _case(tmp_path, scheduler={"kind": "prefill-first", "max_num_seqs": 8, "max_batched_tokens": 256})
    assert "prefill-first is vLLM V0's" in (unsupported(v0[0].case) or "")
    two, *_ = _case(tmp_path, replicas=2)
    assert unsupported(two[0].case) is None             # replicas: one server each, behind the router
    spec, *_ = _case(tmp_path, speculative={"method": "ngram", "num_draft_tokens": 3, "acceptance": 0.7})
    assert "random weights" in (unsupported(spec[0].case) or "")   # a draft's acceptance would mean nothing
    ok = planned_ok(tmp_path)
    assert unsupported(ok) is None
    # a block size the engine refuses is a validation error (test below); a case built without validation is skipped
    blocks = ok.model_copy(update={"serving": replace(ok.serving, spec=ok.serving.spec.model_copy(
        update={"kv_block_tokens": 16}))})
    assert (unsupported(blocks) or "").startswith("serving.kv_block_tokens: 16: the vllm backend runs vLLM's CPU "
                                                  "attention, which takes blocks of a multiple of 32 tokens")
    narrow = ok.model_copy(update={"workload": ok.workload.model_copy(
        update={"model": ModelSpec(**dict(LLAMA, hidden=64))})})   # heads of 16: not a CPU head size
    assert "head width 16" in (unsupported(narrow) or "")


def test_parse_prometheus_sums_label_sets_and_skips_comments() -> None:
    text = ('# HELP x\nvllm:kv_cache_usage_perc{engine="0",model_name="a b"} 0.25\n'
            'vllm:kv_cache_usage_perc{engine="1",model_name="a b"} 0.5\nplain 3 1700000000\n')
    values = parse_prometheus(text)
    assert values == {"vllm:kv_cache_usage_perc": 0.75, "plain": 3.0}


def test_prompts_are_a_function_of_the_seed_and_the_request() -> None:
    r = Request(4, 0.5, 20, 3)
    assert prompt_ids(r, 300, 0, 2) == prompt_ids(r, 300, 0, 2) != prompt_ids(r, 300, 1, 2)
    assert len(prompt_ids(r, 300, 0, 2)) == 20 and min(prompt_ids(r, 300, 0, 2)) >= 2


# -- the client against a fake server ------------------------------------------------------------------------------

def test_the_replay_times_every_token_and_counts_refusals(tmp_path: Path) -> None:
    port = free_port()
    requests = [Request(0, 0.0, 10, 4), Request(1, 0.01, 12, 1), Request(2, 0.02, 300, 4), Request(3, 0.03, 8, 6)]
    with ServerProcess(fake_command(port, tmp_path / "pids", "--max-model-len", "256"), port, tmp_path / "log"):
        replay = Replay(f"http://127.0.0.1:{port}", "llmsim", lambda r: prompt_ids(r, 300, 0, 2), count_tokens,
                        metrics_interval_s=0.01)
        answers, metrics, wall = replay.run(requests)
    assert [a.error for a in answers] == [None, None, "context", None]
    assert "maximum context length" in answers[2].detail
    for answer in (answers[0], answers[1], answers[3]):
        times = answer.token_times
        assert len(times) == answer.request.output_tokens
        assert list(times) == sorted(times)
        # No token is read before the fake produced it: its prefill, then one token per TOKEN_S. Only lower
        # bounds from the request's arrival hold on a loaded host (a late read can bunch tokens together).
        assert times[0] - answer.request.arrival_s >= PREFILL_S
        assert times[-1] - answer.request.arrival_s >= PREFILL_S + (len(times) - 1) * TOKEN_S
    assert metrics.samples > 0 and metrics.kv_peak_utilization is not None and metrics.kv_peak_utilization > 0
    assert metrics.preemptions == 0   # the fake counts served // 4: 3 served
    outcome = outcome_of(answers, metrics, wall)
    assert [s.request.id for s in outcome.sequences] == [0, 1, 3]
    assert [(r.request.id, r.reason) for r in outcome.rejected] == [(2, "context")]


def test_the_run_timeout_counts_unfinished_requests_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    requests = [Request(0, 0.0, 4, 2), Request(1, 0.0, 4, 400), Request(2, 30.0, 4, 2)]
    # 400 tokens at 50 ms each (20 s) cannot finish in the 5 s run; 2 tokens can, even on a loaded host (with 0.5 s
    # and 4 ms tokens, request 0 itself sometimes timed out at load 10 on 2 cores)
    command = fake_command(port, tmp_path / "pids", "--max-model-len", "1000", "--token-s", "0.05")
    with ServerProcess(command, port, tmp_path / "log"):
        replay = Replay(f"http://127.0.0.1:{port}", "llmsim", lambda r: prompt_ids(r, 300, 0, 2), count_tokens,
                        run_timeout_s=5.0)
        answers, _, _ = replay.run(requests)
    assert answers[0].error is None
    assert answers[1].error == "timeout" and answers[2].error == "timeout"


def _in_flight_most(answers: list) -> int:  # noqa: ANN001 - Answers
    """The most requests between their send and their last token read, at any instant (a send at the very time
    of another's last read counts after it)."""
    events = sorted([(a.request.arrival_s, 1) for a in answers] + [(a.token_times[-1], -1) for a in answers])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_the_closed_loop_client_keeps_n_requests_in_flight_and_sends_in_order(tmp_path: Path) -> None:
    """Two clients over six requests: the first two go out at once, each next one only after its client read the
    whole previous answer and thought think_s; arrival_s is the send time, so TTFT is timed from the send."""
    port, think = free_port(), 0.03
    requests = [Request(i, 0.0, 10, 5) for i in range(6)]
    with ServerProcess(fake_command(port, tmp_path / "pids", "--max-model-len", "256"), port, tmp_path / "log"):
        replay = Replay(f"http://127.0.0.1:{port}", "llmsim", lambda r: prompt_ids(r, 300, 0, 2), count_tokens,
                        metrics_interval_s=0.01)
        answers, metrics, wall = replay.run(iter(requests), ClosedLoop(2, think_s=think))
    assert [a.error for a in answers] == [None] * 6 and [a.request.id for a in answers] == list(range(6))
    sends = [a.request.arrival_s for a in answers]
    assert sends == sorted(sends) and sends[1] < PREFILL_S     # taken in id order; the first two at once
    assert _in_flight_most(answers) == 2
    finishes = sorted(a.token_times[-1] for a in answers)
    for k in range(2, 6):   # the k-th send waits for the (k-1)-th finish at least (some client's) and its think
        assert sends[k] >= finishes[k - 2] + think
    for a in answers:
        assert a.token_times[0] - a.request.arrival_s >= PREFILL_S
    outcome = outcome_of(answers, metrics, wall, ClosedLoop(2, think_s=think))
    from llmsim.serving.metrics import summarize

    row = summarize(outcome, None, None)
    assert row["concurrency"] == 2 and row["request_rate"] == pytest.approx(6 / outcome.duration_s)
    assert row["extra"]["think_s"] == think


def test_a_closed_loop_bounded_by_duration_sends_nothing_after_it(tmp_path: Path) -> None:
    """until_s (duration_s): the clients draw requests as they go from an endless list and stop sending at it."""
    port = free_port()

    def endless():  # noqa: ANN202
        i = 0
        while True:
            yield Request(i, 0.0, 8, 3)
            i += 1

    with ServerProcess(fake_command(port, tmp_path / "pids", "--max-model-len", "256"), port, tmp_path / "log"):
        replay = Replay(f"http://127.0.0.1:{port}", "llmsim", lambda r: prompt_ids(r, 300, 0, 2), count_tokens)
        answers, _, _ = replay.run(endless(), ClosedLoop(3, until_s=0.4))
    assert len(answers) >= 3 and all(a.error is None for a in answers)
    assert max(a.request.arrival_s for a in answers) < 0.4
    assert [a.request.id for a in answers] == list(range(len(answers)))
    assert _in_flight_most(answers) <= 3


# -- the server's lifecycle ----------------------------------------------------------------------------------------

def _pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()]


@pytest.mark.parametrize("leave", ["return", "exception", "ctrl-c"])
def test_the_server_and_its_children_stop_on_every_exit(tmp_path: Path, leave: str) -> None:
    port, pid_file = free_port(), tmp_path / "pids"
    server = ServerProcess(fake_command(port, pid_file, "--child"), port, tmp_path / "log")
    raised: type[BaseException] | None = {"return": None, "exception": RuntimeError, "ctrl-c": KeyboardInterrupt}[leave]
    try:
        with server:
            pids = _pids(pid_file)
            assert len(pids) == 2 and all(alive(p) for p in pids)
            if raised is not None:
                raise raised("leaving")
    except (RuntimeError, KeyboardInterrupt) as exc:
        assert raised is not None and isinstance(exc, raised)
    assert wait_gone(pids) == []


def test_a_server_that_exits_at_start_is_an_engine_error_with_its_log(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSIM_TEST_REMOVED", "1")
    server = ServerProcess(["true"], 1, tmp_path / "log", env={"LLMSIM_TEST_REMOVED": None, "LLMSIM_TEST_SET": "x"})
    assert "LLMSIM_TEST_REMOVED" not in server.environment() and server.environment()["LLMSIM_TEST_SET"] == "x"
    port = free_port()
    with pytest.raises(EngineError, match="exited with code 3.*exiting as asked"):
        with ServerProcess(fake_command(port, tmp_path / "pids", "--exit-code", "3"), port, tmp_path / "log"):
            pass


def test_a_server_never_healthy_is_stopped_at_the_startup_timeout(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "pids"
    with pytest.raises(EngineError, match="not ready after 1 s") as raised:
        with ServerProcess(fake_command(port, pid_file, "--never-healthy", "--child"), port, tmp_path / "log",
                           startup_timeout_s=1):
            pass
    assert wait_gone(_pids(pid_file)) == []
    # the backend's row then names the limit (Case.timed_out), for the --resume command that raises it
    assert isinstance(raised.value, EngineStartTimeout) and raised.value.limit_s == 1


def test_a_server_deaf_to_sigterm_is_killed(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "pids"
    command = [sys.executable, "-c", "import signal, sys, runpy; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               f"sys.argv = {[str(FAKE), '--port', str(port), '--pid-file', str(pid_file)]!r}; "
               "runpy.run_path(sys.argv[0], run_name='__main__')"]
    with ServerProcess(command, port, tmp_path / "log", stop_grace_s=0.5) as server:
        pids = _pids(pid_file)
    assert server.process is not None and server.process.returncode == -signal.SIGKILL
    assert wait_gone(pids) == []


# -- the backend, through the runner -------------------------------------------------------------------------------

def _run(tmp_path: Path, backend: type[VllmBackend], monkeypatch: pytest.MonkeyPatch, names: list[str],
         settings: dict[str, Any] | None = None, **serving: Any):
    import yaml

    monkeypatch.setattr(VllmBackend, "availability", classmethod(lambda cls: None))
    path = tmp_path / "s.yaml"
    data = serving_scenario(**serving)
    data["backends"]["vllm"].update(settings or {})
    path.write_text(yaml.safe_dump(data))
    scenario = load_scenario(path)
    registry = BackendRegistry.from_manager(get_plugin_manager())
    registry.backends["vllm"] = backend
    planned = plan_cases(scenario, registry, str(path), names)
    outcome = run_scenario(scenario, registry, planned, tmp_path / "out")
    rows = [json.loads(line) for line in (outcome.run_dir / "results.jsonl").read_text().splitlines()]
    return rows, outcome.run_dir


def test_the_backend_writes_the_serving_row_and_the_same_requests_as_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeVllm.pid_file = tmp_path / "pids"
    rows, run_dir = _run(tmp_path, FakeVllm, monkeypatch, ["vllm", "roofline"])
    measured = next(r for r in rows if r["backend"] == "vllm")
    modeled = next(r for r in rows if r["backend"] == "roofline")
    assert measured["status"] == "ok", measured["error"]
    assert measured["kind"] == "measured" and measured["mode"] == "serve" and measured["request_rate"] == 40
    from llmsim.results import SERVING_COLUMNS

    for column in SERVING_COLUMNS:
        assert column in measured
    assert measured["requests_done"] == 12 and measured["requests_rejected"] == 0
    # bounds the fake's delays guarantee at the client (a token read late shortens the gap after it, not the sum)
    assert measured["ttft_p50_s"] >= PREFILL_S and measured["e2e_p50_s"] >= PREFILL_S + 4 * TOKEN_S
    assert measured["tpot_p50_s"] > 0 and measured["itl_mean_s"] > 0 and measured["e2e_p99_s"] >= measured["e2e_p50_s"]
    assert measured["queue_p50_s"] is None                        # the engine does not say when it scheduled
    assert measured["kv_peak_utilization"] > 0 and measured["preemptions"] == 3   # the fake's gauge and counter
    assert measured["goodput_rps"] > 0 and measured["slo_attainment"] == 1.0
    assert (run_dir / measured["engine_log"]).exists()
    # the same request list as the modeled backend: arrivals and lengths line for line
    import csv

    def table(row: dict) -> list[tuple[str, ...]]:
        with open(run_dir / row["requests_file"]) as f:
            return [(r["request_id"], r["arrival_s"], r["input_tokens"], r["output_tokens"]) for r in csv.DictReader(f)]

    assert table(measured) == table(modeled) and len(table(measured)) == 12
    assert wait_gone(_pids(FakeVllm.pid_file)) == []


def test_a_closed_loop_row_has_its_clients_and_the_achieved_rate_beside_the_model_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """arrival kind concurrency through the runner: one row per client count, measured and modeled, each with
    `concurrency` = clients and request_rate = requests sent / duration; the same requests (ids and lengths; the
    send times are each backend's own)."""
    FakeVllm.pid_file = tmp_path / "pids"
    rows, run_dir = _run(tmp_path, FakeVllm, monkeypatch, ["vllm", "roofline"],
                         arrival={"kind": "concurrency", "clients": [1, 3]})
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["error"] for r in rows]
    assert sorted((r["backend"], r["case"], r["concurrency"]) for r in rows) == [
        ("roofline", "tp1@clients=1", 1), ("roofline", "tp1@clients=3", 3),
        ("vllm", "tp1@clients=1", 1), ("vllm", "tp1@clients=3", 3)]
    for row in rows:
        assert row["request_rate"] == pytest.approx(row["requests_sent"] / row["duration_s"], rel=1e-9)
        assert row["requests_done"] == 12
    import csv

    def table(row: dict) -> list[tuple[str, ...]]:
        with open(run_dir / row["requests_file"]) as f:
            return [(r["request_id"], r["input_tokens"], r["output_tokens"]) for r in csv.DictReader(f)]

    measured = {r["case"]: r for r in rows if r["backend"] == "vllm"}
    modeled = {r["case"]: r for r in rows if r["backend"] == "roofline"}
    assert all(table(measured[c]) == table(modeled[c]) for c in measured)
    assert wait_gone(_pids(FakeVllm.pid_file)) == []


@pytest.mark.parametrize("reuse", [True, False])
def test_the_rates_of_a_case_share_one_engine_that_stops_at_the_run_s_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reuse: bool) -> None:
    FakeVllm.pid_file = tmp_path / "pids"
    rows, run_dir = _run(tmp_path, FakeVllm, monkeypatch, ["vllm"], arrival={"kind": "poisson", "rate": [40, 80]},
                         settings={"reuse_engine": reuse})
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
    assert [r["request_rate"] for r in rows] == [40, 80] and all(r["requests_done"] == 12 for r in rows)
    assert [r["engine_reused"] for r in rows] == [False, reuse]
    assert (rows[1]["engine_start_s"] == 0) == reuse
    # the logs: one server for both rates, or one per rate
    assert len({r["engine_log"] for r in rows}) == (1 if reuse else 2)
    # a reused server's preemption counter goes on counting: each row holds its own rise (the fake: 12 // 4)
    assert [r["preemptions"] for r in rows] == [3, 3]
    assert wait_gone(_pids(FakeVllm.pid_file)) == []     # the last server, gone when the run returned


class FakeDying(FakeVllm):
    """The fake whose kept server dies between cases (killed before the next case runs)."""

    def run(self, case, settings):  # noqa: ANN001, ANN201
        if self._engine is not None:
            process = self._engine.processes[0].process
            assert process is not None
            process.kill()
            process.wait()
        return super().run(case, settings)


def test_a_kept_engine_that_died_is_started_again_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeDying.pid_file = tmp_path / "pids"
    rows, _ = _run(tmp_path, FakeDying, monkeypatch, ["vllm"], arrival={"kind": "poisson", "rate": [40, 80]})
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["requests_done"] == 12 for r in rows)
    assert [r["engine_reused"] for r in rows] == [False, False]
    assert wait_gone(_pids(FakeDying.pid_file)) == []


class FakeReplicas(FakeVllm):
    """The fake server per replica, each recording its pids in a file of its own (pid_file.<port>)."""

    def command(self, model_dir: Path, port: int, args: EngineArgs) -> list[str]:
        return fake_command(port, self.pid_file.with_name(f"{self.pid_file.name}.{port}"), "--max-model-len",
                            str(args.max_model_len))


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding"])
def test_replicas_are_servers_behind_the_simulation_s_router_and_all_of_them_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, router: str) -> None:
    FakeReplicas.pid_file = tmp_path / "pids"
    rows, run_dir = _run(tmp_path, FakeReplicas, monkeypatch, ["vllm"], replicas=2, router=router)
    row = rows[0]
    assert row["status"] == "ok", row["error"]
    assert row["n_devices"] == 2 and row["dp"] == 2 and row["replicas"] == 2 and row["requests_done"] == 12
    assert len(row["engine_logs"].split(", ")) == 2 and all((run_dir / p).exists() for p in row["engine_logs"].split(", "))
    import csv

    with open(run_dir / row["requests_file"]) as f:
        served_by = [int(r["replica"]) for r in csv.DictReader(f)]
    # the fake's preemption counter is (requests it served) // 4, the warm-up request (one per server, before the
    # replay's first /metrics read) included: the row sums every server's rise over the replay
    warm = 1
    assert row["preemptions"] == sum((served_by.count(i) + warm) // 4 - warm // 4 for i in (0, 1))
    if router == "round-robin":
        assert served_by == [i % 2 for i in range(12)]
    else:
        assert sorted(set(served_by)) == [0, 1]     # requests overlap (each takes >= 36 ms; ~25 ms apart): both serve
    pid_files = sorted(tmp_path.glob("pids.*"))
    assert len(pid_files) == 2
    assert wait_gone([pid for f in pid_files for pid in _pids(f)]) == []


def test_a_request_longer_than_the_context_is_a_counted_rejection(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    FakeVllm.pid_file = tmp_path / "pids"
    rows, _ = _run(tmp_path, FakeVllm, monkeypatch, ["vllm"],
                   lengths={"input": {"kind": "uniform", "min": 200, "max": 250}, "output": 20})
    row = rows[0]
    assert row["status"] == "ok" and row["rejected_context"] > 0
    assert row["requests_done"] + row["requests_rejected"] == 12


def test_an_engine_that_does_not_start_is_a_failed_row_and_no_process_is_left(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(FakeVllm):
        extra = ("--exit-code", "7")

    Broken.pid_file = tmp_path / "pids"
    rows, _ = _run(tmp_path, Broken, monkeypatch, ["vllm"])
    assert rows[0]["status"] == "failed" and "exited with code 7" in rows[0]["error"]
    assert "\n" not in rows[0]["error"]


def test_without_vllm_the_backend_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmsim_plugins.vllm.vllm_version", lambda: None)
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(serving_scenario()))
    scenario = load_scenario(path)
    registry = BackendRegistry.from_manager(get_plugin_manager())
    rows = run_scenario(scenario, registry, plan_cases(scenario, registry, str(path), ["vllm"]), tmp_path / "out")
    row = json.loads((rows.run_dir / "results.jsonl").read_text().splitlines()[0])
    assert row["status"] == "skipped" and "vllm is not installed" in row["error"] and "\n" not in row["error"]
    # a serving case's row, even skipped, is mode serve (it said train, and the terminal showed step-time columns)
    assert row["mode"] == "serve"


# -- the real engine -----------------------------------------------------------------------------------------------

@pytest.mark.vllm
@pytest.mark.slow
def test_a_real_vllm_engine_serves_the_requests(tmp_path: Path) -> None:
    if vllm_version() is None:
        pytest.skip("vllm is not installed in this environment (docs/serving.md: make .venv-vllm)")
    import yaml

    path = tmp_path / "s.yaml"
    data = serving_scenario(requests=20, arrival={"kind": "poisson", "rate": [4, 8]},
                            lengths={"input": 64, "output": 8})
    data["backends"] = {"vllm": {"memory_gib": 1}}
    path.write_text(yaml.safe_dump(data))
    scenario = load_scenario(path)
    registry = BackendRegistry.from_manager(get_plugin_manager())
    outcome = run_scenario(scenario, registry, plan_cases(scenario, registry, str(path)), tmp_path / "out")
    rows = [json.loads(line) for line in (outcome.run_dir / "results.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert row["requests_done"] == 20, row.get("first_error")
        assert 0 < row["ttft_p50_s"] <= row["ttft_p99_s"] and 0 < row["tpot_p50_s"]
        assert row["kv_peak_utilization"] is not None and row["preemptions"] == 0
    # one engine for both rates, gone when the run returned
    assert [r["engine_reused"] for r in rows] == [False, True] and rows[1]["engine_start_s"] == 0


@pytest.mark.vllm
@pytest.mark.slow
def test_a_real_vllm_engine_serves_a_mixture_of_experts_as_mixtral(tmp_path: Path) -> None:
    """The MoE checkpoint (MixtralForCausalLM) loads and serves: the engine's log names the architecture."""
    if vllm_version() is None:
        pytest.skip("vllm is not installed in this environment (docs/serving.md: make .venv-vllm)")
    import yaml

    path = tmp_path / "s.yaml"
    data = serving_scenario(requests=8, lengths={"input": 32, "output": 8})
    data["workload"]["model"]["moe"] = {"experts": 4, "top_k": 2}
    data["backends"] = {"vllm": {"memory_gib": 1}}
    path.write_text(yaml.safe_dump(data))
    scenario = load_scenario(path)
    registry = BackendRegistry.from_manager(get_plugin_manager())
    outcome = run_scenario(scenario, registry, plan_cases(scenario, registry, str(path)), tmp_path / "out")
    row = json.loads((outcome.run_dir / "results.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok" and row["requests_done"] == 8, row["error"]
    logs = "".join(p.read_text(errors="replace") for p in (outcome.run_dir / "engine").glob("*.log"))
    assert "MixtralForCausalLM" in logs


def test_a_port_taken_between_free_port_and_the_server_s_bind_is_replaced_by_another(tmp_path: Path) -> None:
    """free_port closes its socket before the server binds the port: another process may take it in between
    (the race); the server then exits with EADDRINUSE and is started again on a fresh port."""
    import socket
    import urllib.request

    pid_file = tmp_path / "pid"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:  # the process that took the port first
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        with ServerProcess(fake_command(taken, pid_file), taken, tmp_path / "server.log", startup_timeout_s=60,
                           poll_s=0.05, command_for=lambda port: fake_command(port, pid_file)) as server:
            assert server.ports_taken == [taken] and server.port != taken
            assert server.base_url == f"http://127.0.0.1:{server.port}"
            with urllib.request.urlopen(server.base_url + "/health", timeout=10) as answer:
                assert answer.status == 200
        assert "address already in use" in (tmp_path / "server.log").read_text().lower()
        # without a way to build the command for another port, the failure is the caller's, as before
        with pytest.raises(EngineError, match="exited with code"):
            with ServerProcess(fake_command(taken, pid_file), taken, tmp_path / "again.log", startup_timeout_s=60,
                               poll_s=0.05):
                pass


def test_a_window_on_every_layer_is_exported_as_mistral_and_a_mixed_one_refused() -> None:
    """MistralForCausalLM's config has one sliding_window for every layer; gpt-oss's alternating layers, its
    sinks and its MXFP4 experts have no Llama- or GPT-2-style config: refused, one line, naming the keys."""
    llama = dict(preset="tiny", activation="swiglu", norm="rmsnorm", positions="rotary", bias=False)
    every = ModelSpec(**llama, sliding_window=16)
    assert checkpoint_problem(every) is None
    config = hf_config(every, "float32", tie_embeddings=True)
    assert config["architectures"] == ["MistralForCausalLM"] and config["sliding_window"] == 16
    mixed = checkpoint_problem(ModelSpec(**llama, sliding_window=16, full_attention_every=2))
    assert mixed is not None and "full_attention_every=2" in mixed and "\n" not in mixed
    sinks = checkpoint_problem(ModelSpec(**llama, attention_sinks=True))
    assert sinks is not None and "attention_sinks" in sinks
    assert "expert_weight_dtype=mxfp4" in (checkpoint_problem(ModelSpec(preset="gpt-oss-20b", sliding_window=None,
                                                                          full_attention_every=None,
                                                                          attention_sinks=False)) or "")


def test_a_mixture_of_experts_is_exported_as_mixtral_or_refused() -> None:
    """A MoE model was written as a dense Llama (its experts dropped: vLLM measured another model). Mixtral's form
    keeps experts, top-k and the expert width; what Mixtral cannot express (a shared expert, dense layers) is
    refused in one line naming the keys."""
    llama = dict(preset="tiny", activation="swiglu", norm="rmsnorm", positions="rotary", bias=False)
    moe = ModelSpec(**llama, moe={"experts": 4, "top_k": 2, "expert_ffn_hidden": 96})
    assert checkpoint_problem(moe) is None
    config = hf_config(moe, "float32", tie_embeddings=True)
    assert config["architectures"] == ["MixtralForCausalLM"] and config["model_type"] == "mixtral"
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["intermediate_size"]) == (4, 2, 96)
    shared = checkpoint_problem(ModelSpec(**llama, moe={"experts": 4, "top_k": 2, "shared_experts": 1,
                                                         "first_dense_layers": 1}))
    assert shared is not None and "moe.shared_experts=1" in shared and "moe.first_dense_layers=1" in shared
    assert "\n" not in shared
    gpt2 = checkpoint_problem(ModelSpec(preset="tiny", activation="gelu", norm="layernorm", positions="learned",
                                        bias=True, moe={"experts": 4, "top_k": 1}))
    assert gpt2 is not None and "MixtralForCausalLM" in gpt2
