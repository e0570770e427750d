"""The serving: block: contract names, and one-line errors naming the key and what is allowed (exit 2)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main
from llmsim.config import load_scenario
from llmsim.errors import ScenarioError

SERVING: dict[str, Any] = {
    "name": "serve-test",
    "workload": {"model": {"preset": "tiny"}, "dtype": "float32"},
    "strategies": [{"name": "single"}],
    "serving": {"requests": 20, "arrival": {"kind": "poisson", "rate": [2, 4, 8]},
                "lengths": {"input": 16, "output": 8},
                "scheduler": {"kind": "continuous", "max_num_seqs": 256, "max_batched_tokens": 8192},
                "kv_block_tokens": 16, "memory_utilization": 0.9, "replicas": 1, "router": "round-robin",
                "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "percentile": 99}},
    "backends": {"roofline": {"hardware": "h100-sxm", "nodes": 1, "devices_per_node": 1}},
}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_issues_block_loads_with_every_contract_key(tmp_path: Path) -> None:
    spec = load_scenario(_write(tmp_path, SERVING)).serving
    assert spec is not None
    assert spec.arrival.rates == [2.0, 4.0, 8.0] and spec.scheduler.max_num_seqs == 256
    assert spec.slo is not None and spec.slo.percentile == 99 and spec.router == "round-robin"


def test_the_json_schema_has_the_serving_block(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "serving" in schema["properties"]
    serving = schema["$defs"]["ServingSpec"]["properties"]
    assert set(serving) >= {"requests", "duration_s", "arrival", "lengths", "scheduler", "kv_block_tokens",
                            "memory_utilization", "replicas", "router", "slo", "request_overhead_s",
                            "step_overhead_s", "step_overhead_per_seq_s"}


def _error(tmp_path: Path, capsys: pytest.CaptureFixture[str], *sets: str, data: dict | None = None) -> str:
    path = _write(tmp_path, data or SERVING)
    args = ["validate", str(path)]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err.removeprefix(f"llmsim: error: {path}: ")


@pytest.mark.parametrize("change,expected", [
    ("serving.arrival.rate=-2", "serving.arrival.rate: -2: allowed: a rate > 0 in requests/s"),
    ("serving.arrival.rate=[2, 0]", "serving.arrival.rate: [2, 0]: allowed: a rate > 0"),
    ("serving.slo.percentile=0", "serving.slo.percentile: 0: out of range; allowed: > 0 and <= 100"),
    ("serving.slo.percentile=100.5", "serving.slo.percentile: 100.5: out of range; allowed: > 0 and <= 100"),
    ("serving.scheduler.kind=lottery", "serving.scheduler.kind: unknown scheduler 'lottery'; allowed: static, "
                                       "continuous, chunked-prefill"),
    ("serving.scheduler.chunk_tokens=64", "serving.scheduler.chunk_tokens: chunk_tokens is for kind 'chunked-prefill'"),
    ("serving.scheduler.max_batched_tokens=32", "serving.scheduler.max_batched_tokens: 32 is below the model's "
                                                "context seq_len=64"),
    ("serving.scheduler={kind: chunked-prefill, max_batched_tokens: 64, chunk_tokens: 128}",
     "serving.scheduler.chunk_tokens: 128 exceeds max_batched_tokens=64, the tokens one iteration computes at most"),
    ("serving.kv_block_tokens=100", "serving.kv_block_tokens: 100 exceeds the model's context seq_len=64: a cache "
                                    "block holds one sequence's tokens"),
    ("serving={arrival: {rate: 2}, lengths: {input: 8, output: 4}}",
     "serving.requests: give requests (a count), duration_s (seconds of arrivals) or both"),
    ("serving.duration_s=0", "serving.duration_s: 0: out of range; allowed: > 0"),
    ("serving.duration_s=-5", "serving.duration_s: -5: out of range; allowed: > 0"),
    ("serving.arrival={kind: gamma, rate: 2}", "serving.arrival.cv: arrival kind 'gamma' needs cv"),
    ("serving.arrival={kind: poisson, rate: 2, path: t.csv}", "serving.arrival.path: path is for arrival kind 'trace'"),
    # the run's size: the simulated clock keeps microseconds to 1e9 s, and a typo may not simulate for days
    ("serving.arrival.rate=1.0e-300", "serving.arrival.rate: 1e-300 requests/s: 20 requests would span 2e+301 s"),
    ("serving.requests=2000000", "serving.requests: 2000000: allowed: at most 1,000,000 requests in one run"),
    ("serving={duration_s: 10, arrival: {rate: 1e9}, lengths: {input: 8, output: 4}}",
     "serving.arrival.rate: 1e+09 requests/s for duration_s=10 s is 1e+10 requests; allowed: at most 1,000,000"),
    ("serving={duration_s: 10, arrival: {rate: 0.05}, lengths: {input: 8, output: 4}}",
     "serving.arrival.rate: 0.05 requests/s for duration_s=10 s expects 0.5 requests; allowed: rate x duration_s >= 1"),
    # lengths no request can use: a filter none of the drawn pairs passes, or every request past the context
    ("serving.lengths={input: {kind: lognormal, median: 1000000, sigma: 0.1}, output: 4, max_input: 50}",
     "serving.lengths.max_input: 50: none of 10,000 drawn pairs passes the filter (10,000 fail max_input)"),
    ("serving.lengths={input: {kind: lognormal, median: 100000, sigma: 0.1}, output: 4}",
     "serving.lengths: none of 10,000 drawn requests fits (the shortest is"),
    ("serving.lengths={input: {kind: uniform, min: 70, max: 90}, output: 4}",
     "serving.lengths: the shortest request the forms can draw is 74 tokens, more than the model's context "
     "seq_len=64"),
    ("serving.lengths={input: {kind: exponential, mean: 20}, output: 3, min: 4}",
     "serving.lengths.min: 4: no output length reaches it (the most is 3 tokens"),
    ("serving.arrival={kind: concurrency, clients: 2, think_s: 1.0e+13}",
     "serving.arrival.think_s: 1e+13 s: 9 thinks per client span 9e+13 s of simulated time"),
    ("serving.lengths.input=0", "serving.lengths.input: 0: allowed: a token count >= 1"),
    ("serving.lengths.output={kind: uniform, min: 5, max: 2}", "serving.lengths.output.max: uniform: max=2 is below min=5"),
    ("serving.router=random", "serving.router: 'random' is not one of the allowed values (allowed: round-robin, "
                              "least-outstanding)"),
    ("serving.memory_utilization=0", "serving.memory_utilization: 0: out of range; allowed: > 0"),
    ("serving.replicas=2", "serving.replicas: replicas x tp x pp = 2 x 1 x 1 = 2 devices (strategy 'single') but "
                           "backend 'roofline' has 1"),
    ("serving.queue=3", "serving.queue: unknown key; allowed: requests, duration_s, arrival"),
    ("strategies[0].dp=2", "strategies[0].dp: 2: with a serving: block the data-parallel copies are "
                           "serving.replicas (1); omit dp"),
    ("workload.mode=train", "workload.mode: 'train' cannot be served"),
    ("backends.roofline.attention=math", "backends.roofline.attention: 'math': a serving run prices a fused "
                                         "attention kernel, as vLLM runs; allowed with serving: flash, cudnn, "
                                         "flash3, trtllm-mmha"),
    # the engines' policies: their keys, their ranges, their rules
    ("serving.scheduler.delay_factor=0.5", "serving.scheduler.delay_factor: delay_factor is for kind 'prefill-first' "
                                           "(got kind 'continuous')"),
    ("serving.scheduler={kind: prefill-first, waiting_served_ratio: 1.2}",
     "serving.scheduler.waiting_served_ratio: waiting_served_ratio is for kind 'tgi' (got kind 'prefill-first')"),
    ("serving.scheduler={kind: tgi, chunk_tokens: 16}", "serving.scheduler.chunk_tokens: chunk_tokens is for kind "
                                                        "'chunked-prefill' (got kind 'tgi')"),
    ("serving.scheduler={kind: prefill-first, delay_factor: -1}", "serving.scheduler.delay_factor: -1: out of range; "
                                                                  "allowed: >= 0"),
    ("serving.scheduler={kind: tgi, waiting_served_ratio: -0.3}", "serving.scheduler.waiting_served_ratio: -0.3: "
                                                                  "out of range; allowed: >= 0"),
    ("serving.scheduler={kind: tgi, max_waiting_tokens: -1}", "serving.scheduler.max_waiting_tokens: -1: out "
                                                              "of range; allowed: >= 0"),
    ("serving.scheduler={kind: tgi, max_waiting_tokens: 2.5}", "serving.scheduler.max_waiting_tokens: 2.5: expected "
                                                               "a whole number; allowed: >= 0"),
    ("serving.scheduler={kind: tgi, waiting_served_ratio: .inf}", "serving.scheduler.waiting_served_ratio: inf: expected "
                                                                  "a finite number"),
    ("serving.scheduler={kind: prefill-first, max_batched_tokens: 32}", "serving.scheduler.max_batched_tokens: 32 is "
                                                                        "below the model's context seq_len=64"),
    ("serving.scheduler={kind: tgi, max_batched_tokens: 62}", "serving.scheduler.max_batched_tokens: 62 is below the "
                                                              "longest prompt, seq_len - 1 = 63"),
    ("serving.scheduler={kind: tgi, max_batch_total_tokens: 63}", "serving.scheduler.max_batch_total_tokens: 63 is "
                                                                  "below the model's context seq_len=64"),
    # the closed loop (arrival kind concurrency)
    ("serving.arrival={kind: concurrency, clients: 0}", "serving.arrival.clients: 0: allowed: a whole number of "
                                                        "clients >= 1"),
    ("serving.arrival={kind: concurrency, clients: -4}", "serving.arrival.clients: -4: allowed: a whole number"),
    ("serving.arrival={kind: concurrency, clients: 2.5}", "serving.arrival.clients: 2.5: allowed: a whole number"),
    ("serving.arrival={kind: concurrency, clients: [4, 0]}", "serving.arrival.clients: [4, 0]: allowed: a whole "
                                                             "number"),
    ("serving.arrival={kind: concurrency, clients: '8'}", "serving.arrival.clients: '8' is text, not a number"),
    ("serving.arrival={kind: concurrency, clients: 4, rate: 2}", "serving.arrival.rate: a closed loop (kind "
                                                                 "'concurrency') sets no rate"),
    ("serving.arrival={kind: concurrency, clients: 4, think_s: -1}", "serving.arrival.think_s: -1: allowed: seconds "
                                                                     ">= 0"),
    ("serving.arrival={kind: concurrency}", "serving.arrival.clients: arrival kind 'concurrency' needs clients"),
    ("serving.arrival.clients=4", "serving.arrival.clients: clients is for arrival kind 'concurrency' (got kind "
                                  "'poisson')"),
    ("serving.arrival.think_s=1", "serving.arrival.think_s: think_s is for arrival kind 'concurrency'"),
    # trial 27: more clients than a run may send requests (1e8 clients made 1e8 SimPy processes for 200 requests)
    ("serving.arrival={kind: concurrency, clients: 1000001}", "serving.arrival.clients: 1000001: allowed: a whole "
                                                             "number of clients >= 1 and <= 1,000,000"),
    # trial 27: counts no float holds validated, then failed the case ("int too large to convert to float")
    pytest.param("serving.scheduler.max_num_seqs=1" + "0" * 400, "serving.scheduler.max_num_seqs: 1000000000",
                 id="max_num_seqs-400-digits"),
    pytest.param("serving.scheduler.max_batched_tokens=1" + "0" * 400,
                 "serving.scheduler.max_batched_tokens: 1000000000", id="max_batched_tokens-400-digits"),
    ("serving.scheduler.max_num_seqs=2147483648", "serving.scheduler.max_num_seqs: 2147483648: out of range; "
                                                  "allowed: >= 1 and <= 2147483647"),
    ("backends.roofline.nodes=2147483648", "backends.roofline.nodes: 2147483648: allowed: a node count >= 1 and "
                                           "<= 2147483647"),
    # a union's member (`lengths.input.constrained-int`) is no key of the file; its other member's error is the
    # same problem, not "1 more"
    ("serving.lengths.input=2147483648", "serving.lengths.input: 2147483648: out of range; allowed: >= 1 and <= "
                                         "2147483647"),
    ("serving.lengths.input={a: 1}", "serving.lengths.input: {'a': 1}: a distribution needs a kind; allowed: "
                                     "uniform, lognormal"),
    ("serving.lengths.input=null", "serving.lengths.input: null: allowed: a token count >= 1"),
    ("serving.slo.percentile=abc", "serving.slo.percentile: 'abc' is text, not a number; allowed: > 0 and <= 100"),
])
def test_bad_serving_input_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       change: str, expected: str) -> None:
    assert _error(tmp_path, capsys, change).startswith(expected)


def test_a_backend_that_does_not_serve_is_a_validation_error(tmp_path: Path, capsys) -> None:
    data = {**SERVING, "backends": {"cpu": {}}}
    assert _error(tmp_path, capsys, data=data).startswith(
        "backends.cpu: backend 'cpu' does not run serving scenarios (a serving: block); backends that do: cluster, "
        "roofline")


def test_a_trace_missing_a_column_names_the_file_and_the_column(tmp_path: Path, capsys) -> None:
    (tmp_path / "trace.csv").write_text("arrival_s,input_tokens\n0,12\n")
    data = {**SERVING, "serving": {**SERVING["serving"], "lengths": None,
                                   "arrival": {"kind": "trace", "path": "trace.csv"}}}
    message = _error(tmp_path, capsys, data=data)
    assert message == (f"serving.arrival.path: {tmp_path / 'trace.csv'}: missing column 'output_tokens' (the header "
                       f"has arrival_s, input_tokens; needed: arrival_s, input_tokens, output_tokens)")


@pytest.mark.parametrize("rows, arrival, expected", [
    ("0,12,4\n1e300,12,4\n", {}, "serving.arrival.path: {trace}: line 3: arrival_s 1e+300 is 1e+300 s after the "
                                   "first arrival (line 2); allowed: a trace spanning at most 1e+09 s (the simulated "
                                   "clock's resolution)"),
    ("0,12,4\n1,12,4\n", {"rate": 1e-300}, "serving.arrival.rate: 1e-300 requests/s: the trace's 2 requests would "
                                             "span 1e+300 s of simulated time (its mean gap scaled to 1 / rate); "
                                             "allowed: a replay spanning at most 1e+09 s (the simulated clock's "
                                             "resolution)"),
    ("0,12,4,5\n", {}, "serving.arrival.path: {trace}: line 2: 4 fields, the header has 3 (arrival_s, input_tokens, "
                        "output_tokens)"),
])
def test_a_trace_beyond_the_clock_or_with_a_bad_row_is_one_line(tmp_path: Path, capsys, rows: str, arrival: dict,
                                                                 expected: str) -> None:
    """Issue 16, 1a and 1c: an arrival 1e300 s out (or a rate that spreads the trace that far) gave TTFT = TPOT = 0;
    an extra field was dropped silently."""
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    data = {**SERVING, "serving": {**SERVING["serving"], "requests": None, "lengths": None,
                                   "arrival": {"kind": "trace", "path": "trace.csv", **arrival}}}
    assert _error(tmp_path, capsys, data=data) == expected.format(trace=trace)


def test_a_clients_list_sweeps_like_a_rate_list(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, SERVING)
    assert main(["validate", str(path), "--set", "serving.arrival={kind: concurrency, clients: [1, 8], "
                                                 "think_s: 0.5}"]) == 0
    assert "2 client counts = 2 cases" in capsys.readouterr().out
    spec = load_scenario(path, ["serving.arrival={kind: concurrency, clients: [1, 8]}"]).serving
    assert spec is not None and spec.arrival.sweep == [("clients", 1), ("clients", 8)]
    assert spec.arrival.rates == [None, None] and spec.at_point("clients", 8).arrival.clients == 8


def test_whole_number_floats_are_counts_where_every_count_takes_them(tmp_path: Path) -> None:
    """Trial 34: `serving.lengths.input=1e4` and `clients: 16.0` were refused ("10000.0: allowed: a token count
    >= 1") while requests, max_num_seqs and replicas took 1e2; a fraction is still refused."""
    path = _write(tmp_path, SERVING)
    spec = load_scenario(path, ["serving.lengths={input: 4e1, output: 16.0}",
                                "serving.arrival={kind: concurrency, clients: [4.0, 8]}"]).serving
    assert spec is not None and (spec.lengths.input, spec.lengths.output) == (40, 16)
    assert isinstance(spec.lengths.input, int) and spec.arrival.clients == [4, 8]
    with pytest.raises(ScenarioError, match=r"serving.lengths.input: 100.5: allowed: a token count >= 1"):
        load_scenario(path, ["serving.lengths.input=100.5"])


def test_the_json_schema_has_the_closed_loop_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    arrival = json.loads(capsys.readouterr().out)["$defs"]["Arrival"]["properties"]
    assert {"clients", "think_s"} <= set(arrival) and "concurrency" in json.dumps(arrival["kind"])


def test_a_rate_list_sweeps_like_nodes(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(_write(tmp_path, SERVING))]) == 0
    assert "3 cases" in capsys.readouterr().out


@pytest.mark.parametrize("scheduler", ["{kind: prefill-first, delay_factor: 0.5}",
                                       "{kind: tgi, max_batched_tokens: 63, waiting_served_ratio: 1.2, "
                                       "max_waiting_tokens: 0, max_batch_total_tokens: 64}"])
def test_the_engine_policies_keys_validate(tmp_path: Path, capsys, scheduler: str) -> None:
    assert main(["validate", str(_write(tmp_path, SERVING)), "--set", f"serving.scheduler={scheduler}"]) == 0


def test_the_json_schema_has_the_engine_policies_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    scheduler = json.loads(capsys.readouterr().out)["$defs"]["SchedulerSpec"]["properties"]
    assert set(scheduler) >= {"delay_factor", "waiting_served_ratio", "max_waiting_tokens", "max_batch_total_tokens"}
    assert "prefill-first" in scheduler["kind"]["description"] and "tgi" in scheduler["kind"]["description"]


def test_the_json_schema_has_the_eager_key_and_the_policy_gives_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    """serving.scheduler.eager: none | prompt | all; unset, prefill-first (vLLM V0) runs its prompt passes eagerly and
    every other built-in kind none (costmodel.eager)."""
    from llmsim.serving.spec import SchedulerSpec
    assert main(["schema"]) == 0
    scheduler = json.loads(capsys.readouterr().out)["$defs"]["SchedulerSpec"]["properties"]
    assert "eager" in scheduler and all(word in json.dumps(scheduler["eager"]) for word in ("none", "prompt", "all"))
    assert SchedulerSpec(kind="prefill-first").eager_passes == "prompt"
    assert SchedulerSpec(kind="continuous").eager_passes == "none"
    assert SchedulerSpec(kind="chunked-prefill", eager="all").eager_passes == "all"
    assert SchedulerSpec(kind="prefill-first", eager="none").eager_passes == "none"


def test_sglang_runs_its_prompts_eagerly_in_its_own_model_code_and_the_schema_says_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Kind sglang (SGLang's scheduler): SGLang replays CUDA graphs for decode batches only (model_runner.py
    forward_extend), so its prompt passes are eager, launched by SGLang's model code (engine_kernels sglang);
    every other kind keeps the fused engine's count unless told; a value outside the three is refused."""
    from pydantic import ValidationError

    from llmsim.serving.spec import SchedulerSpec
    assert SchedulerSpec(kind="sglang").eager_passes == "prompt"
    assert SchedulerSpec(kind="sglang").engine_kernels_of == "sglang"
    assert SchedulerSpec(kind="prefill-first").engine_kernels_of == "fused"
    assert SchedulerSpec(kind="prefill-first", engine_kernels="sglang-rocm").engine_kernels_of == "sglang-rocm"
    assert SchedulerSpec(kind="sglang", engine_kernels="fused", eager="none").eager_passes == "none"
    with pytest.raises(ValidationError, match="engine_kernels"):
        SchedulerSpec(kind="sglang", engine_kernels="trtllm")  # type: ignore[arg-type]
    assert main(["schema"]) == 0
    scheduler = json.loads(capsys.readouterr().out)["$defs"]["SchedulerSpec"]["properties"]
    assert all(word in json.dumps(scheduler["engine_kernels"]) for word in ("fused", "sglang", "sglang-rocm"))


def test_requests_and_duration_together_validate_and_the_schema_says_whichever_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both limits (a benchmark's trial of N requests under a time limit): valid, and the size checks take the
    binding one: a count bounds rate x duration_s, a duration bounds requests / rate."""
    path = _write(tmp_path, SERVING)
    assert main(["validate", str(path), "--set", "serving.duration_s=60"]) == 0
    spec = load_scenario(path, ["serving.duration_s=60"]).serving
    assert spec is not None and spec.requests == 20 and spec.duration_s == 60
    # 1e9 requests/s for 10 s alone is 1e10 requests (an error above); with requests: 20, 20 of them
    assert main(["validate", str(path), "--set", "serving.arrival.rate=1e9", "--set", "serving.duration_s=10"]) == 0
    # 20 requests at 1e-8 requests/s alone span 2e9 s, past the clock's 1e9 s; with duration_s: 2e8, 2e8 s
    assert main(["validate", str(path), "--set", "serving.arrival.rate=1e-8"]) == 2
    assert main(["validate", str(path), "--set", "serving.arrival.rate=1e-8", "--set",
                 "serving.duration_s=2e8"]) == 0
    capsys.readouterr()
    assert main(["schema"]) == 0
    serving = json.loads(capsys.readouterr().out)["$defs"]["ServingSpec"]["properties"]
    assert "whichever" in serving["requests"]["description"] and "whichever" in serving["duration_s"]["description"]


EAGLE_FILE = "scenarios/serve-llama-eagle.yaml"   # speculative: {method: eagle, ..., draft_layers: 1}


@pytest.mark.parametrize("overrides, method, head", [
    (["serving.speculative.method=ngram"], "ngram", 0),
    (["serving.speculative.method=draft", "serving.speculative.draft_model=qwen3-4b"], "draft", 0),
    (["serving.speculative.draft_layers=null"], "eagle", 1),
    (["serving.speculative.method=mtp", "serving.speculative.draft_layers=null"], "mtp", 1),
])
def test_set_switches_the_speculative_method_of_a_file_that_states_draft_layers(
        capsys: pytest.CaptureFixture[str], overrides: list[str], method: str, head: int) -> None:
    """Fresh-user trial: `--set serving.speculative.method=ngram` on the shipped eagle scenario was refused
    ("draft_layers is for methods mtp and eagle") and draft_layers: null too, so the method could not be switched
    without rewriting the block. null is the method's default (a 1-layer head for mtp / eagle, none for draft /
    ngram); a draft_layers left behind for draft / ngram is kept as written, unused, and said in one run note."""
    argv = [EAGLE_FILE] + [arg for o in overrides for arg in ("--set", o)]
    assert main(["validate", *argv]) == 0
    err = capsys.readouterr().err
    spec = load_scenario(EAGLE_FILE, overrides).serving
    assert spec is not None and spec.speculative is not None
    assert spec.speculative.method == method and spec.speculative.head_layers == head
    notes = [line for line in err.splitlines() if "draft_layers" in line]
    if head:
        assert notes == [] and spec.speculative.draft_layers == 1
    else:
        assert notes == [f"llmsim: note: {EAGLE_FILE}: serving.speculative.draft_layers: 1 is unused: method "
                         f"{method} has no draft head (draft_layers is for mtp and eagle); the run ignores it"]


def test_draft_layers_omitted_with_draft_or_ngram_is_no_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    data = json.loads(json.dumps(SERVING))
    data["serving"]["speculative"] = {"method": "ngram", "num_draft_tokens": 2, "acceptance": 0.5}
    assert main(["validate", str(_write(tmp_path, data))]) == 0
    assert "note" not in capsys.readouterr().err


def test_graph_max_batch_is_a_whole_number_of_at_least_one_and_reaches_the_eager_launch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """serving.scheduler.graph_max_batch: the most sequences a decode pass replays a CUDA graph with (costmodel.eager.
    past_graph_capture); unset = no limit; 0, a negative or a fraction is refused in one line (exit 2)."""
    from llmsim.serving.spec import SchedulerSpec
    assert SchedulerSpec().graph_max_batch is None
    path = _write(tmp_path, SERVING)
    assert main(["validate", str(path), "--set", "serving.scheduler.graph_max_batch=512"]) == 0
    spec = load_scenario(path, ["serving.scheduler.graph_max_batch=512"]).serving
    assert spec is not None and spec.scheduler.graph_max_batch == 512
    assert spec.eager_launch_on(object()).graph_max_batch == 512
    for bad in ("0", "-3", "2.5", "many"):
        err = _error(tmp_path, capsys, f"serving.scheduler.graph_max_batch={bad}")
        assert "serving.scheduler.graph_max_batch" in err, err
    assert main(["schema"]) == 0
    scheduler = json.loads(capsys.readouterr().out)["$defs"]["SchedulerSpec"]["properties"]
    assert "graph_max_batch" in scheduler and "cuda-graph-max-bs" in scheduler["graph_max_batch"]["description"]


@pytest.mark.parametrize("change,expected", [
    # trial 28: tracebacks at validate (OverflowError in the probe's draws), or a failed row at run
    ("serving.lengths.input={kind: lognormal, median: 1e308, sigma: 1}",
     "serving.lengths.input: lognormal: median: 1e+308: out of range; allowed: <= 2.14748e+09"),
    ("serving.lengths.input={kind: exponential, mean: 1e308}",
     "serving.lengths.input: exponential: mean: 1e+308: out of range"),
    ("serving.lengths.input={kind: uniform, min: 1, max: 1e300}",
     "serving.lengths.input: uniform: max: 1e+300: expected a whole number >= 1 and <= 2147483647"),
    ("serving.arrival={kind: gamma, rate: 2, cv: 1e300}", "serving.arrival.cv: 1e+300: out of range; allowed: > 0 and <= 10"),
    # trial 29: "0: out of range; allowed: <= 10.0" named only the field's own bound, not its type's > 0
    ("serving.arrival={kind: gamma, rate: 2, cv: 0}", "serving.arrival.cv: 0: out of range; allowed: > 0 and <= 10"),
    # trial 30: .nan said "expected a finite number" without the range every other refusal of the key names
    ("serving.arrival={kind: gamma, rate: 2, cv: .nan}",
     "serving.arrival.cv: nan: expected a finite number; allowed: > 0 and <= 10"),
])
def test_numbers_no_draw_can_use_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str,
                                              expected: str) -> None:
    assert _error(tmp_path, capsys, change).startswith(expected)


def test_a_lognormal_too_wide_for_a_float_draws_without_overflow() -> None:
    """sigma 200: exp(sigma Z) overflows a float for |Z| > 3.5 (an OverflowError traceback at validate, trial 28);
    such a draw is past every context, counted as MAX_DIMENSION tokens, as an exponential's inf is."""
    from llmsim.serving.requests import draw_length
    from llmsim.serving.spec import ExponentialLength, LognormalLength
    from llmsim.strict import MAX_DIMENSION

    rng = random.Random(0)
    wide = LognormalLength(kind="lognormal", median=100, sigma=200)
    draws = [draw_length(wide, rng) for _ in range(1000)]
    assert min(draws) == 1 and max(draws) == MAX_DIMENSION
    huge = ExponentialLength(kind="exponential", mean=2**31 - 1)
    assert all(1 <= draw_length(huge, rng) <= MAX_DIMENSION for _ in range(1000))


def test_a_rate_that_brings_every_request_within_a_millisecond_is_noted_as_a_burst() -> None:
    """Trial 35: `rate: 1e308` ran as a burst without a word; a rate whose span is longer, a duration_s, or a
    trace replayed as recorded get no note."""
    from llmsim.serving.spec import BURST_SPAN_S, burst_note

    note = burst_note(50, None, [2.0, 1e308])
    assert note is not None and note.startswith("1e+308 requests/s brings 50 requests within 5e-307 s")
    assert "--request-rate inf" in note
    assert burst_note(50, None, [50 / BURST_SPAN_S * 1.01]) is not None
    assert burst_note(50, None, [50 / BURST_SPAN_S * 0.99]) is None
    # trial 40: bounded by duration_s, the arrivals of that span (or the count, if it comes first)
    assert burst_note(None, 1e-6, [1e9]).startswith("1e+09 requests/s brings 1,000 requests within 1e-06 s")
    assert burst_note(50, 1e-6, [1e9]).startswith("1e+09 requests/s brings 50 requests within 5e-08 s")
    assert burst_note(None, 10.0, [1e9]) is None          # 10 s of arrivals: a load, however high
    assert burst_note(None, 1e-9, [1e9]) is None          # one request: no batch to wait behind
    assert burst_note(50, None, [None]) is None
    assert burst_note(1, None, [1e308]) is None


def test_validate_says_the_burst_note(capsys) -> None:
    from tests.conftest import REPO

    path = str(REPO / "scenarios" / "serve-8b.yaml")
    assert main(["validate", path, "--set", "serving.arrival.rate=1e9"]) == 0
    err = capsys.readouterr().err
    assert f"llmsim: note: {path}: serving.arrival.rate: 1e+09 requests/s brings 200 requests" in err


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("llmsim: note: ")]


def test_workload_keys_a_serving_run_does_not_read_are_noted(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh user's serving scenario took workload.batch (and decode_tokens, mode: prefill) without a word, though
    the run's batches are the arrivals up to the scheduler's limits and its lengths the request list's: each is one
    note naming what sets it instead (exit 0: a plan's best.yaml keeps the keys its plan stated)."""
    data = json.loads(json.dumps(SERVING))
    data["workload"].update(mode="prefill", batch=32, decode_tokens=5)
    path = _write(tmp_path, data)
    assert main(["validate", str(path)]) == 0
    assert _notes(capsys.readouterr().err) == [
        f"llmsim: note: {path}: workload.mode: 'prefill' is not used with a serving: block: every request is "
        f"prefilled and then decoded (leave mode out, or write decode)",
        f"llmsim: note: {path}: workload.batch: 32 is not used with a serving: block: the sequences in flight are the "
        f"requests the arrivals bring, at most serving.scheduler.max_num_seqs=256 a replica and "
        f"max_batched_tokens=8192 tokens an iteration",
        f"llmsim: note: {path}: workload.decode_tokens: 5 is not used with a serving: block: each request generates "
        f"the tokens serving.lengths.output gives it"]


def test_serving_workload_keys_that_are_read_or_at_their_defaults_are_no_note(tmp_path: Path) -> None:
    """mode: decode is what a server does; a run folder's scenario.yaml states batch: 8 and decode_tokens: 64, the
    defaults (runner.saved_scenario), and its rerun says nothing of them; decode_tokens with mode: decode sizes a
    learned position table that no preset or max_positions fixed (Workload._check), so it is read."""
    from llmsim.config import parse_scenario
    from llmsim.runner import saved_scenario

    data = json.loads(json.dumps(SERVING))
    data["workload"].update(mode="decode", batch=8, decode_tokens=64)
    scenario = parse_scenario(data, "serve.yaml")
    assert scenario.serving_notes() == []
    assert parse_scenario(yaml.safe_load(yaml.safe_dump(saved_scenario(scenario))), "saved").serving_notes() == []
    data["workload"].update(model={"layers": 2, "hidden": 64, "heads": 4, "ffn_hidden": 256, "vocab": 512,
                                   "seq_len": 64, "positions": "learned"}, decode_tokens=16)
    sized = parse_scenario(data, "serve.yaml")
    assert sized.workload.model.max_positions == 80 and sized.serving_notes() == []
    data["workload"]["mode"] = "prefill"   # the table is not sized by decode_tokens then: unused, noted
    assert [key for key, _ in parse_scenario(data, "serve.yaml").serving_notes()] == ["workload.mode",
                                                                                   "workload.decode_tokens"]


@pytest.mark.parametrize("tokens, noted", [(7, True), (24, True), (2, True), (1, False), (16, False), (48, False),
                                           (64, False)])   # at most the tiny model's seq_len, 64
def test_a_kv_block_size_vllm_does_not_take_is_noted_for_the_modeled_backends(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], tokens: int, noted: bool) -> None:
    """serving.kv_block_tokens: 7 validated without a word: the modeled backends price any size, but vLLM takes its
    BlockSize values (1, 8, 16, ..., 256) or a multiple of 16 (FlashAttention): another size is one note."""
    data = json.loads(json.dumps(SERVING))
    data["serving"]["kv_block_tokens"] = tokens
    path = _write(tmp_path, data)
    assert main(["validate", str(path)]) == 0
    expected = [f"llmsim: note: {path}: serving.kv_block_tokens: {tokens} tokens a block is a size vLLM does not "
                f"take (its --block-size: 1, 8, 16, 32, 64, 128, 256, or a multiple of 16 on its FlashAttention "
                f"kernel); the modeled backends price blocks of {tokens} tokens as given"]
    assert _notes(capsys.readouterr().err) == (expected if noted else [])


def test_the_allreduce_rms_fusion_is_refused_with_another_engines_kernel_counts() -> None:
    """fuse_allreduce_rms prices vLLM's pass over the fused engine's kernels: SGLang's and TGI's own counts
    (engine_kernels sglang / sglang-rocm, kind sglang or tgi) are refused with the key and what is allowed."""
    from pydantic import ValidationError

    from llmsim.serving.spec import SchedulerSpec, ServingSpec
    assert SchedulerSpec().fuse_allreduce_rms is False
    assert SchedulerSpec(kind="chunked-prefill", fuse_allreduce_rms=True).fuse_allreduce_rms is True
    for kwargs in ({"kind": "sglang"}, {"kind": "continuous", "engine_kernels": "sglang-rocm"}, {"kind": "tgi"}):
        with pytest.raises(ValidationError, match="allowed: false, or true with engine_kernels fused"):
            SchedulerSpec(fuse_allreduce_rms=True, **kwargs)
    assert SchedulerSpec(kind="sglang", engine_kernels="fused", fuse_allreduce_rms=True).fuse_allreduce_rms
    spec = ServingSpec(requests=1, lengths={"input": 4, "output": 2}, arrival={"kind": "constant", "rate": 1},
                       scheduler={"kind": "continuous", "fuse_allreduce_rms": True})
    assert spec.eager_launch_on(object()).fuse_allreduce_rms is True


def test_the_allreduce_rms_fusion_with_sglangs_counts_is_one_line_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(tmp_path, capsys, "serving.scheduler.kind=sglang", "serving.scheduler.fuse_allreduce_rms=true")
    assert err.startswith("serving.scheduler.fuse_allreduce_rms: true with kind 'sglang' (whose kernel counts are "
                          "SGLang's: engine_kernels 'sglang')"), err


@pytest.mark.parametrize("hardware,tp,pp,reason", [
    ("a100-80gb", 2, 1, "a100-80gb has no fusion limit for tp 2 (allreduce_rms_fusion_max_bytes: none; vLLM runs "
                        "it on Hopper and Blackwell only)"),
    ("h100-sxm", 1, 1, "tp 1 has no all-reduce to fuse"),
    ("h100-sxm", 2, 2, "vLLM does not fuse with pipeline parallelism (pp 2)"),
])
def test_validate_notes_an_allreduce_rms_fusion_that_would_change_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], hardware: str, tp: int, pp: int, reason: str) -> None:
    data = json.loads(json.dumps(SERVING))
    data["workload"]["dtype"] = "bfloat16"
    data["strategies"] = [{"name": "s", "tp": tp, "pp": pp}]
    data["serving"]["scheduler"]["fuse_allreduce_rms"] = True
    data["backends"] = {"roofline": {"hardware": hardware, "nodes": 1, "devices_per_node": tp * pp}}
    path = _write(tmp_path, data)
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert (f"llmsim: note: {path}: serving.scheduler.fuse_allreduce_rms (backends.roofline, strategy s): true "
            f"changes nothing here: {reason}; priced without it") in err, err
    data["backends"]["roofline"]["hardware"] = "h100-sxm"          # where vLLM fuses: no note
    data["strategies"] = [{"name": "s", "tp": 2}]
    data["backends"]["roofline"]["devices_per_node"] = 2
    assert main(["validate", str(_write(tmp_path, data))]) == 0
    assert "fuse_allreduce_rms" not in capsys.readouterr().err
