"""Serving scenarios on the modeled backends: rows per (case, rate), the per-request CSV, the same request
list for every backend, faults of the cluster backend, does-not-fit, rejections, and plugin policies."""

from __future__ import annotations

import csv
import json
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim import hookimpl
from llmsim.config import parse_scenario
from llmsim.errors import PluginError
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import SERVING_COLUMNS, read_rows
from llmsim.runner import plan_cases, run_scenario
from llmsim.serving.schedulers import ContinuousScheduler, Iteration

H100 = {"hardware": "h100-sxm", "nodes": 1, "devices_per_node": 2}


def _scenario(**serving: Any) -> dict[str, Any]:
    return {"name": "serve-test", "workload": {"model": {"preset": "tiny"}, "dtype": "bfloat16"},
            "strategies": [{"name": "single"}],
            "serving": {"requests": 60, "arrival": {"kind": "poisson", "rate": [50, 400]},
                        "lengths": {"input": {"kind": "uniform", "min": 4, "max": 40}, "output": 12},
                        "slo": {"ttft_s": 0.001, "tpot_s": 0.001, "percentile": 90}, **serving},
            "backends": {"roofline": H100, "cluster": H100}}


def _run(tmp_path: Path, data: dict[str, Any], manager: Any = None) -> tuple[Path, list[dict[str, Any]]]:
    manager = manager or get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    scenario = parse_scenario(data, "serve.yaml")
    planned = plan_cases(scenario, registry, "serve.yaml", scenario_dir=tmp_path)
    outcome = run_scenario(scenario, registry, planned, tmp_path, manager=manager, scenario_dir=tmp_path)
    return outcome.run_dir, read_rows(outcome.run_dir)


def _requests(run_dir: Path, row: dict[str, Any]) -> list[dict[str, str]]:
    with open(run_dir / row["requests_file"], newline="") as f:
        return list(csv.DictReader(f))


def _mean_tpot_by_replica(run_dir: Path, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{backend: {replica: mean TPOT of its requests}} for a run of two replicas."""
    tpot = {}
    for row in rows:
        by_replica: dict[str, list[float]] = {"0": [], "1": []}
        for r in _requests(run_dir, row):
            by_replica[r["replica"]].append(float(r["tpot_s"]))
        tpot[row["backend"]] = {k: sum(v) / len(v) for k, v in by_replica.items()}
    return tpot


def test_one_row_per_case_and_rate_with_the_serving_columns_and_a_request_table(tmp_path: Path) -> None:
    run_dir, rows = _run(tmp_path, _scenario())
    assert sorted((r["case"], r["backend"]) for r in rows) == [
        ("single@rate=400", "cluster"), ("single@rate=400", "roofline"), ("single@rate=50", "cluster"),
        ("single@rate=50", "roofline")]
    for row in rows:
        assert row["status"] == "ok" and row["mode"] == "serve" and row["kind"] == "modeled"
        # concurrency: a closed loop's clients only; accept_length: speculative decoding's only
        open_loop = [c for c in SERVING_COLUMNS if c not in ("concurrency", "accept_length")]
        assert all(row[c] is not None for c in open_loop), [c for c in open_loop if row[c] is None]
        assert row["concurrency"] is None and row["accept_length"] is None
        assert row["requests_done"] == 60 and row["n_devices"] == 1
        # docs/results.md: ttft_s / tpot_s of a serving row are the means over its requests
        assert row["ttft_s"] == row["ttft_mean_s"] and row["tpot_s"] == row["tpot_mean_s"]
        # the device holds the weights, the workspace and the whole pre-allocated KV pool: the parts add up
        assert row["peak_memory_bytes_per_device"] == pytest.approx(
            row["mem_params_bytes"] + row["mem_workspace_bytes"] + row["mem_kv_cache_bytes"], rel=1e-12)
        table = _requests(run_dir, row)
        assert len(table) == 60 and table[0]["status"] == "ok"
        assert float(table[5]["e2e_s"]) >= float(table[5]["ttft_s"]) > 0
    fast = next(r for r in rows if r["case"] == "single@rate=400" and r["backend"] == "roofline")
    slow = next(r for r in rows if r["case"] == "single@rate=50" and r["backend"] == "roofline")
    assert fast["request_rate"] == 400 and fast["requests_per_s"] > slow["requests_per_s"]


def test_every_backend_serves_the_same_request_list(tmp_path: Path) -> None:
    run_dir, rows = _run(tmp_path, _scenario())
    lists = {}
    for row in rows:
        lists[(row["case"], row["backend"])] = [(r["request_id"], r["arrival_s"], r["input_tokens"],
                                                 r["output_tokens"]) for r in _requests(run_dir, row)]
    for case in ("single@rate=50", "single@rate=400"):
        assert lists[(case, "roofline")] == lists[(case, "cluster")]


def test_a_straggler_slows_its_replica_and_jitter_is_seeded(tmp_path: Path) -> None:
    data = _scenario(replicas=2, router="round-robin", arrival={"kind": "poisson", "rate": 20})
    data["backends"] = {"roofline": H100, "cluster": {**H100, "straggler": {"rank": 1, "slowdown": 3.0}}}
    run_dir, rows = _run(tmp_path, data)
    tpot = _mean_tpot_by_replica(run_dir, rows)
    assert tpot["roofline"]["0"] == pytest.approx(tpot["roofline"]["1"], rel=0.05)
    assert tpot["cluster"]["0"] == pytest.approx(tpot["roofline"]["0"], rel=1e-9)
    assert tpot["cluster"]["1"] > 2 * tpot["roofline"]["1"]
    data["backends"] = {"cluster": {**H100, "jitter": 0.2}}
    _, first = _run(tmp_path / "a", data)
    _, second = _run(tmp_path / "b", data)
    assert first[0]["ttft_p99_s"] == second[0]["ttft_p99_s"] != rows[0]["ttft_p99_s"]


def test_a_replica_with_no_room_for_its_cache_is_a_does_not_fit_row(tmp_path: Path) -> None:
    data = _scenario()
    data["workload"] = {"model": {"preset": "llama3-70b"}, "dtype": "bfloat16"}
    data["serving"]["arrival"] = {"kind": "poisson", "rate": 1}
    data["backends"] = {"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}}
    _, rows = _run(tmp_path, data)
    assert rows[0]["status"] == "does-not-fit"
    assert rows[0]["error"].startswith("no room for a KV cache: 77.3 GB usable (memory_utilization 0.9) - weights "
                                       "141.1 GB")


def test_a_cache_smaller_than_one_request_of_the_context_is_a_does_not_fit_row(tmp_path: Path) -> None:
    """Llama 3 8B on one H100 at memory_utilization 0.1972: room for 19 blocks (304 tokens), less than one request
    of its 8,192-token context. vLLM refuses to start then (check_enough_kv_cache_memory); the row says so and
    why, where it was a row of every request rejected. 0.25 leaves room for the whole context: it runs."""
    data = _scenario()
    data["workload"] = {"model": {"preset": "llama3-8b"}, "dtype": "bfloat16"}
    data["serving"]["arrival"] = {"kind": "poisson", "rate": 8}
    data["backends"] = {"roofline": {"hardware": "h100-sxm", "nodes": 1, "devices_per_node": 1}}
    data["serving"]["memory_utilization"] = 0.1972
    _, rows = _run(tmp_path / "small", data)
    assert rows[0]["status"] == "does-not-fit"
    assert rows[0]["error"].startswith("the KV cache holds 304 tokens (19 blocks of 16), fewer than one request of "
                                       "the model's context (8,192 tokens)")
    assert rows[0]["error"].endswith("(vLLM refuses to start with such a cache); raise serving.memory_utilization, "
                                     "shard wider (a strategy's tp or pp), store it in float8 (serving.kv_cache_dtype) "
                                     "or lower workload.model.seq_len")
    data["serving"]["memory_utilization"] = 0.25
    _, rows = _run(tmp_path / "enough", data)
    assert rows[0]["status"] == "ok"


def test_validate_says_which_cases_will_not_fit_in_the_rows_words(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The trial's finding: a scenario whose every row would be does-not-fit (KV cache below one context)
    validated "ok" without a word. validate now notes it before anything runs, once per backend and reason, in
    the words the run's rows then carry; a scenario that fits gets no note."""
    from llmsim.cli import main
    data = _scenario()
    data["workload"] = {"model": {"preset": "llama3-8b"}, "dtype": "bfloat16"}
    data["serving"]["memory_utilization"] = 0.1972
    data["backends"] = {"roofline": {"hardware": "h100-sxm", "nodes": 1, "devices_per_node": 1}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok — 1 strategy × 1 backend setting × 2 rates = 2 cases" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"llmsim: note: {path}: backends.roofline, strategy single: the KV cache holds 304 tokens (19 blocks "
                               f"of 16), fewer than one request of the model's context (8,192 tokens)")
    assert lines[0].endswith("or lower workload.model.seq_len; 2 cases will be does-not-fit")
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in next((tmp_path / "runs").glob("*/*/results.jsonl")).read_text().splitlines()]
    note = lines[0].split("strategy single: ", 1)[1].rsplit("; 2 cases", 1)[0]
    assert {(r["status"], r["error"]) for r in rows} == {("does-not-fit", note)}
    data["serving"]["memory_utilization"] = 0.25
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_a_fit_check_that_raises_gives_no_note_and_validate_still_passes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """validate's does-not-fit note runs cost-model code before anything runs; whatever it raises must not turn
    `llmsim validate` into a traceback (the run's row reports it)."""
    from llmsim.cli import main
    from llmsim.modeled import ModeledBackend

    def broken(cls: Any, settings: Any, case: Any, catalog: Any) -> str | None:
        raise RuntimeError("broken fit check (test)")
    monkeypatch.setattr(ModeledBackend, "known_does_not_fit", classmethod(broken))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_scenario()))
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok — " in out and err == ""


def test_replicas_on_a_tpu_slice_tile_it_and_a_mesh_that_does_not_is_a_skipped_row(tmp_path: Path) -> None:
    """Trial 17's first finding: tp 2 served on a 4-chip v5e slice was a `failed` row from inside the simulation
    (the slice's mesh is mapped whole, and the replica was priced at dp 1), even with 2 replicas filling it. The
    replicas now sit side by side in the slice (dp = replicas there); a mesh that leaves chips over is a skipped
    row saying so."""
    data = _scenario()
    data["serving"]["arrival"] = {"kind": "poisson", "rate": 50}
    data["strategies"] = [{"name": "tp2", "tp": 2}]
    data["backends"] = {"roofline": {"hardware": "tpu-v5e", "nodes": 1, "devices_per_node": 4}}
    _, rows = _run(tmp_path / "one", data)
    assert (rows[0]["status"], rows[0]["error"]) == (
        "skipped", "the mesh tp2 x cp1 x pp1 x dp1 = 2 devices does not fill a 2x2 slice of 4 chips: serving.replicas "
                   "x tp x pp must tile the slice")
    data["serving"]["replicas"] = 2
    _, rows = _run(tmp_path / "two", data)
    assert rows[0]["status"] == "ok" and rows[0]["ttft_p50_s"] > 0


def test_an_attention_kernel_the_device_has_no_figure_for_is_a_skipped_row_naming_it(tmp_path: Path) -> None:
    """FlashAttention-3 runs on Hopper: served on an A100 (no efficiency.attention_flash3), each rate is a skipped
    row saying so, as a training case is; on an H100 the same scenario runs."""
    data = _scenario()
    data["backends"] = {"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1,
                                     "attention": "flash3"}}
    _, rows = _run(tmp_path / "a100", data)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert "attention kernel 'flash3' has no measured efficiency on this device" in rows[0]["error"]
    data["backends"] = {"roofline": {**H100, "devices_per_node": 1, "attention": "flash3"}}
    _, rows = _run(tmp_path / "h100", data)
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_a_request_longer_than_the_context_is_a_counted_rejection_and_the_row_is_kept(tmp_path: Path) -> None:
    """The tiny model's context is 64 tokens: 50 + 20 does not fit, vLLM answers such a request with an error."""
    data = _scenario(lengths={"input": {"kind": "uniform", "min": 10, "max": 50}, "output": 20})
    run_dir, rows = _run(tmp_path, data)
    for row in rows:
        assert row["status"] == "ok" and row["requests_rejected"] == row["rejected_context"] > 0
        assert row["requests_done"] + row["requests_rejected"] == 60
        rejected = [r for r in _requests(run_dir, row) if r["status"] == "rejected"]
        assert len(rejected) == row["requests_rejected"]
        assert all(int(r["input_tokens"]) + 20 > 64 for r in rejected)


def test_a_run_whose_every_request_is_rejected_is_a_skipped_row_saying_why(tmp_path: Path) -> None:
    """A trace whose every request is longer than the tiny model's 64-token context (a lengths block that must
    reject every request is refused before the run): the row said `ok` with dashes (trial 24)."""
    (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n0,60,20\n0.5,70,3\n")
    data = _scenario(requests=None, lengths=None, arrival={"kind": "trace", "path": "t.csv"})
    _, rows = _run(tmp_path, data)
    assert len(rows) == 2   # 2 backends
    for row in rows:
        assert row["status"] == "skipped" and row["requests_rejected"] == row["rejected_context"] == 2
        assert row["error"].startswith("no request was served: all 2 requests were rejected (2 longer, prompt + "
                                       "output, than the context of 64 tokens")


def _policy_plugin(kind: str) -> types.SimpleNamespace:
    class LongestFirst(ContinuousScheduler):
        """Admit the longest waiting prompt first (a policy no built-in has)."""

        def schedule(self, now: float) -> Iteration | None:
            self.waiting = type(self.waiting)(sorted(self.waiting, key=lambda s: -s.request.input_tokens))
            return super().schedule(now)

    LongestFirst.kind = kind

    @hookimpl
    def llmsim_serving_schedulers() -> list[type]:
        return [LongestFirst]

    return types.SimpleNamespace(llmsim_serving_schedulers=llmsim_serving_schedulers)


def test_a_plugin_adds_a_scheduling_policy_through_the_hook(tmp_path: Path) -> None:
    manager = get_plugin_manager()
    manager.register(_policy_plugin("longest-first"), name="policies")
    data = _scenario(scheduler={"kind": "longest-first", "max_num_seqs": 2})
    data["backends"] = {"roofline": H100}
    _, rows = _run(tmp_path, data, manager)
    assert {r["scheduler"] for r in rows} == {"longest-first"} and all(r["status"] == "ok" for r in rows)


def test_a_plugin_policy_may_not_take_a_builtin_name() -> None:
    manager = get_plugin_manager()
    manager.register(_policy_plugin("continuous"), name="policies")
    with pytest.raises(PluginError, match="serving scheduler 'continuous' is registered twice"):
        BackendRegistry.from_manager(manager)


def test_a_plugin_returning_something_else_is_reported_broken() -> None:
    @hookimpl
    def llmsim_serving_schedulers() -> list[object]:
        return ["not a class"]

    manager = get_plugin_manager()
    manager.register(types.SimpleNamespace(llmsim_serving_schedulers=llmsim_serving_schedulers), name="bad")
    registry = BackendRegistry.from_manager(manager)
    assert "bad" in registry.broken and "continuous" in registry.schedulers


def test_the_shipped_serving_scenario_runs_and_its_summary_reads_per_rate(tmp_path: Path) -> None:
    """scenarios/serve-8b.yaml, as `llmsim run` would run it (the report summary names no 'fastest' rate:
    rates are the load; it says what each got and the highest that met the SLO)."""
    from llmsim.config import load_scenario
    from llmsim.report.summary import summarize as summary
    from llmsim.results import rows_frame
    from tests.conftest import REPO

    path = REPO / "scenarios" / "serve-8b.yaml"
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    scenario = load_scenario(path)
    planned = plan_cases(scenario, registry, str(path), scenario_dir=path.parent)
    outcome = run_scenario(scenario, registry, planned, tmp_path, manager=manager, scenario_dir=path.parent)
    rows = read_rows(outcome.run_dir)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["slo_met"] for r in rows} == {True}
    points = summary(rows_frame(rows))
    heads = [p.text for p in points]
    assert "roofline — modeled, h100-sxm: tp1 served 3 rates; the highest that met the SLO: 24 requests/s." in heads
    assert not any("fastest" in h for h in heads)


def test_a_degraded_link_slows_the_collectives_of_its_replica_only(tmp_path: Path) -> None:
    """Llama 3 8B at tp 2 per replica, rank 2 (replica 1) with its NVLink port at 1%: replica 1's all-reduces
    (8 KB per token and layer) slow down, replica 0 is untouched."""
    data = _scenario(replicas=2, requests=30, arrival={"kind": "poisson", "rate": 20},
                     lengths={"input": 400, "output": 8})
    data["workload"] = {"model": {"preset": "llama3-8b"}, "dtype": "bfloat16"}
    data["strategies"] = [{"name": "tp2", "tp": 2}]
    four = {**H100, "devices_per_node": 4}
    data["backends"] = {"cluster": {**four, "degraded_link": {"rank": 2, "link": "intra_node",
                                                              "bandwidth_factor": 0.01}}, "roofline": four}
    run_dir, rows = _run(tmp_path, data)
    tpot = _mean_tpot_by_replica(run_dir, rows)
    assert tpot["cluster"]["0"] == pytest.approx(tpot["roofline"]["0"], rel=1e-9)
    assert tpot["cluster"]["1"] > 1.2 * tpot["roofline"]["1"]


def test_a_serving_runs_saved_scenario_loads_and_reruns(tmp_path: Path) -> None:
    # scenario.yaml must rerun the run it belongs to; a serving one had the default `mode: train` written into
    # it, which validation then refused ("'train' cannot be served").
    from llmsim.config import load_scenario
    run_dir, rows = _run(tmp_path, _scenario())
    saved = load_scenario(run_dir / "scenario.yaml")
    assert saved.serving is not None and "mode" not in saved.workload.model_fields_set
    assert saved.model_dump() == parse_scenario(_scenario(), "serve.yaml").model_dump()


def test_a_mixture_of_experts_served_at_tp_splits_its_experts_over_the_tp_ranks(tmp_path: Path) -> None:
    """vLLM's tensor parallelism splits every expert (etp = tp, the strategy's default): at tp 2 a device holds
    half the weights of tp 1, experts included (before the serving layout carried the expert grid, every device
    held each expert whole: etp = 1)."""
    data = _scenario(requests=8, arrival={"kind": "poisson", "rate": 50})
    data["workload"]["model"] = {"preset": "tiny", "moe": {"experts": 8, "top_k": 2}}
    data["strategies"] = [{"name": "tp1"}, {"name": "tp2", "tp": 2}]
    data["backends"] = {"roofline": H100}
    _, rows = _run(tmp_path, data)
    weights = {r["case"]: r["mem_params_bytes"] for r in rows}
    assert all(r["status"] == "ok" for r in rows)
    # tp splits the attention and every expert; what it leaves whole (norms, the router) is small
    assert weights["tp2"] == pytest.approx(weights["tp1"] / 2, rel=0.02)


def test_serving_request_overhead_s_adds_to_ttft_and_e2e_not_tpot_and_the_device_default_is_0(tmp_path: Path) -> None:
    data = _scenario()
    data["backends"] = {"roofline": H100}
    _, plain = _run(tmp_path / "plain", data)
    _, slowed = _run(tmp_path / "slowed", {**data, "serving": {**data["serving"], "request_overhead_s": 0.004}})
    for a, b in zip(sorted(plain, key=lambda r: r["case"]), sorted(slowed, key=lambda r: r["case"])):
        assert a["request_overhead_s"] == 0.0 and b["request_overhead_s"] == 0.004   # h100-sxm: none in the catalog
        assert b["ttft_p50_s"] == pytest.approx(a["ttft_p50_s"] + 0.004, rel=1e-9)
        assert b["e2e_p99_s"] == pytest.approx(a["e2e_p99_s"] + 0.004, rel=1e-9)
        assert b["tpot_p50_s"] == pytest.approx(a["tpot_p50_s"], rel=1e-12)
        assert b["itl_p99_s"] == pytest.approx(a["itl_p99_s"], rel=1e-12)


def test_serving_step_overhead_slows_every_iteration_and_the_device_default_is_0(tmp_path: Path) -> None:
    """serving.step_overhead_s / step_overhead_per_seq_s: host time added to every iteration (so to TPOT and ITL,
    unlike request_overhead_s); h100-sxm has none in the catalog, so a scenario without the keys is unchanged."""
    data = _scenario()
    data["backends"] = {"roofline": H100}
    _, plain = _run(tmp_path / "plain", data)
    host = {"step_overhead_s": 0.003, "step_overhead_per_seq_s": 0.0002}
    _, slowed = _run(tmp_path / "slowed", {**data, "serving": {**data["serving"], **host}})
    for a, b in zip(sorted(plain, key=lambda r: r["case"]), sorted(slowed, key=lambda r: r["case"])):
        assert (a["step_overhead_s"], a["step_overhead_per_seq_s"]) == (0.0, 0.0)
        assert (b["step_overhead_s"], b["step_overhead_per_seq_s"]) == (0.003, 0.0002)
        assert b["tpot_p50_s"] >= a["tpot_p50_s"] + 0.0032 * (1 - 1e-9)   # at least one sequence an iteration
        assert b["itl_p50_s"] > a["itl_p50_s"] and b["ttft_p50_s"] > a["ttft_p50_s"]


@pytest.mark.parametrize("key", ["step_overhead_s", "step_overhead_per_seq_s"])
def test_a_negative_step_overhead_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      key: str) -> None:
    import yaml

    from llmsim.cli import main
    data = _scenario()
    data["serving"][key] = -0.001
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err


def test_a_negative_request_overhead_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from llmsim.cli import main
    data = _scenario()
    data["serving"]["request_overhead_s"] = -0.001
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "request_overhead_s" in err


@pytest.mark.parametrize("kind", ["prefill-first", "tgi"])
def test_the_engine_policies_run_on_both_modeled_backends(tmp_path: Path, kind: str) -> None:
    """vLLM V0's and TGI's policies are built-in kinds: the roofline and the cluster backend run them through the
    same registry path as every scheduler, and the row names the policy."""
    run_dir, rows = _run(tmp_path, _scenario(scheduler={"kind": kind, "max_num_seqs": 16, "max_batched_tokens": 64}))
    assert len(rows) == 4 and all(r["status"] == "ok" and r["requests_done"] == 60 for r in rows)
    assert {r["scheduler"] for r in rows} == {kind}
    # the same request list on both backends (the cluster backend only adds its faults and jitter, none here)
    for rate in ("single@rate=50", "single@rate=400"):
        roofline, cluster = ([_requests(run_dir, r) for r in rows if r["case"] == rate and r["backend"] == b][0]
                             for b in ("roofline", "cluster"))
        assert [r["arrival_s"] for r in roofline] == [r["arrival_s"] for r in cluster]


def _serve_8b_on(tmp_path: Path, roofline: str, cluster: str, attention: str) -> Path:
    """scenarios/serve-8b.yaml with both backends' hardware and attention kernel set."""
    data = yaml.safe_load(Path("scenarios/serve-8b.yaml").read_text())
    data["backends"]["roofline"].update(hardware=roofline, attention=attention)
    data["backends"]["cluster"].update(hardware=cluster, attention=attention)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_says_which_serving_cases_a_kernel_without_a_figure_will_skip(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FlashAttention-3 on an A100 (no figure for it): a run skips those rows with the reason (the test above);
    validate says so first, with the run's own words, once per backend point, and the scenario stays valid."""
    from llmsim.cli import main
    for cluster, skipped in (("h100-sxm", ["roofline"]), ("a100-80gb", ["cluster", "roofline"])):
        path = _serve_8b_on(tmp_path, "a100-80gb", cluster, "flash3")
        assert main(["validate", str(path)]) == 0
        out, err = capsys.readouterr()
        assert "ok — " in out and "6 cases" in out
        notes = sorted(err.strip().splitlines())
        assert len(notes) == len(skipped)
        for name, note in zip(skipped, notes):
            assert note == (f"llmsim: note: {path}: backends.{name}.attention: attention kernel 'flash3' has no "
                            f"measured efficiency on a100-80gb (its catalog entry sets no efficiency.attention_flash3)"
                            f"; kernels it has: flash, trtllm-mmha; 3 cases will be skipped")
    path = _serve_8b_on(tmp_path, "h100-sxm", "h100-sxm", "flash3")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_a_bad_attention_value_in_a_serving_scenario_lists_the_serving_kernels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmsim.cli import main
    path = _serve_8b_on(tmp_path, "h100-sxm", "h100-sxm", "flash4")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    # the first backend in the file (yaml.safe_dump sorts the keys: cluster)
    assert err == (f"llmsim: error: {path}: backends.cluster.attention: 'flash4': unknown attention kernel; "
                   f"allowed with serving: flash, cudnn, flash3, trtllm-mmha")


def test_trtllm_mmha_is_a_serving_kernel_every_device_with_flashs_figure_prices(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`attention: trtllm-mmha` (TensorRT-LLM's pre-XQA kernels) validates in a serving scenario with no note on
    an A100: its prefill is priced at FlashAttention-2's figure, which every catalog entry has."""
    from llmsim.cli import main
    path = _serve_8b_on(tmp_path, "a100-80gb", "a100-80gb", "trtllm-mmha")
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok — " in out and err == ""


def test_the_serving_reference_profile_is_kept_between_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second run of the same served model reads its reference profile back: no trace, the same profile."""
    from llmsim import modeled_serving
    from llmsim.config import SharingChoice, Workload
    from llmsim.workload.profile_store import store_dir

    workload = Workload(model={"preset": "tiny", "layers": 5, "seq_len": 64}, mode="decode", batch=1,
                        dtype="float32")
    sharing = SharingChoice(False)
    ref, first = modeled_serving.serving_profile(workload, sharing)
    assert list(store_dir().glob("*.json"))

    def no_trace(*_: object) -> None:
        raise AssertionError("traced again")

    monkeypatch.setattr(modeled_serving, "profile_at_depth", no_trace)
    again_ref, again = modeled_serving.serving_profile(workload, sharing)
    assert again_ref == ref and again == first and again is not first


def test_eager_passes_take_at_least_their_host_launch_time(tmp_path: Path) -> None:
    """serving.scheduler.eager (costmodel.eager): a pass launched from Python takes max(device time,
    eager_launch_s x its kernels). One request of the tiny model on h100-sxm (eager_launch_s > 0 in the catalog), so
    its TTFT is the prompt pass and its ITLs the decode passes: prefill-first defaults to V0's rule (prompt passes
    eager, decode replayed), which lengthens the TTFT only; `all` lengthens the decode steps too; `none` is the
    device time alone."""
    from llmsim.config import ModelSpec
    from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD
    from llmsim.costmodel.eager import layer_launches
    from llmsim.hardware import load_catalog

    per_kernel = load_catalog().device("h100-sxm").eager_launch_s
    assert per_kernel > 0
    layers = ModelSpec(preset="tiny").layers
    launch = per_kernel * (layers * layer_launches(0, 1, 2) + KERNELS_EMBED + KERNELS_HEAD)
    rows = {}
    for eager in (None, "none", "all"):
        data = _scenario(requests=1, arrival={"kind": "poisson", "rate": 1.0}, slo=None)
        data["serving"]["scheduler"] = {"kind": "prefill-first", **({"eager": eager} if eager else {})}
        data["backends"] = {"roofline": H100}
        _, (row,) = _run(tmp_path / str(eager), data)
        rows[eager] = row
    default, graphs, eager_all = rows[None], rows["none"], rows["all"]
    assert default["eager_passes"] == "prompt" and graphs["eager_passes"] == "none" and eager_all["eager_passes"] == "all"
    assert default["eager_launch_s"] == per_kernel
    assert graphs["ttft_p50_s"] < launch                       # the tiny model's prompt pass: device time well below
    assert default["ttft_p50_s"] == pytest.approx(launch, rel=1e-6)   # host-bound: the launches
    assert default["itl_p50_s"] == pytest.approx(graphs["itl_p50_s"], rel=1e-12)   # decode replays its graph
    assert eager_all["itl_p50_s"] == pytest.approx(launch, rel=1e-6)


def test_the_eager_key_takes_none_prompt_or_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from llmsim.cli import main
    data = _scenario()
    data["serving"]["scheduler"] = {"kind": "prefill-first", "eager": "decode"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eager" in err


def test_validate_says_which_backends_cannot_run_here_and_which_devices_lack_the_dtypes_peak(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, item 2: serve-vllm-cpu.yaml validated "ok — 6 cases" on a machine without vLLM, then the run said
    "done: 6 skipped". validate now says why first, in the rows' own words: once per backend that cannot run here
    (its availability()), once per backend point whose device has no peak for the workload's dtype (cpu-host
    before `llmsim calibrate`)."""
    from llmsim.cli import main
    from llmsim_plugins.vllm import VllmBackend
    monkeypatch.setattr(VllmBackend, "availability", classmethod(lambda cls: "vllm is not installed (test)"))
    path = "scenarios/serve-vllm-cpu.yaml"
    assert main(["validate", path]) == 0
    out, err = capsys.readouterr()
    assert "ok — 1 strategy × 2 backend settings × 3 rates = 6 cases" in out
    assert err.strip().splitlines() == [
        f"llmsim: note: {path}: backends.vllm: backend 'vllm' cannot run here: vllm is not installed (test); "
        f"3 cases will be skipped",
        f"llmsim: note: {path}: backends.cluster.hardware: device 'cpu-host' has no peak FLOP/s for bfloat16; it has: "
        f"none (measured at run time: run `llmsim calibrate` first); 3 cases will be skipped"]
    # the run skips exactly those rows, with the same words
    assert main(["run", path, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in next(tmp_path.glob("*/*/results.jsonl")).read_text().splitlines()]
    assert {(r["backend"], r["status"], r["error"]) for r in rows} == {
        ("vllm", "skipped", "backend 'vllm' cannot run here: vllm is not installed (test)"),
        ("cluster", "skipped", "device 'cpu-host' has no peak FLOP/s for bfloat16; it has: none (measured at run "
                               "time: run `llmsim calibrate` first)")}
    # a backend that runs, on a device with the peak: no row to skip (the modeled H100 beside vLLM's eager engine
    # prices graph passes unless told: only that note, test_validate_notes_a_measured_eager_engine_...)
    monkeypatch.setattr(VllmBackend, "availability", classmethod(lambda cls: None))
    assert main(["validate", path, "--set", "backends.cluster.hardware=h100-sxm",
                 "--set", "serving.scheduler.eager=all"]) == 0
    assert capsys.readouterr().err == ""


def test_validate_notes_a_measured_eager_engine_beside_modeled_graph_passes(capsys: pytest.CaptureFixture[str],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The vllm backend runs --enforce-eager by default while the modeled backends beside it price CUDA-graph passes
    (serving.scheduler.eager none) on an H100, whose eager launches cost 34.9 us each: validate says so once, with
    the two ways to compare like with like; either way taken, no note."""
    from llmsim.cli import main
    from llmsim_plugins.vllm import VllmBackend
    monkeypatch.setattr(VllmBackend, "availability", classmethod(lambda cls: None))
    path = "scenarios/serve-8b.yaml"
    note = (f"llmsim: note: {path}: backends.vllm.enforce_eager: the measured engine runs every pass eagerly while "
            f"the modeled backends price serving.scheduler.eager = none (CUDA graphs)")
    vllm = ["--set", "backends.vllm={}", "--set", "serving.kv_block_tokens=32"]   # the blocks vLLM's CPU attention takes
    assert main(["validate", path, *vllm]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "enforce_eager" in line][0].startswith(note)
    for fix in ("serving.scheduler.eager=all", "backends.vllm.enforce_eager=false"):
        assert main(["validate", path, *vllm, "--set", fix]) == 0
        assert "enforce_eager" not in capsys.readouterr().err


def test_a_served_replica_whose_tp_spans_nodes_gets_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A served replica of tp 16 on 8-GPU h100-sxm nodes: its all-reduces cross the inter-node link; validate says
    so once per (backend, strategy), naming the link; tp 8 (one node) says nothing."""
    from llmsim.cli import main
    data = yaml.safe_load(Path("scenarios/serve-8b.yaml").read_text())
    for name in ("roofline", "cluster"):
        data["backends"][name].update(nodes=2, devices_per_node=8)
    for tp, notes in ((16, 2), (8, 0)):
        data["strategies"] = [{"name": f"tp{tp}", "tp": tp}]
        data["workload"]["model"] = {"preset": "llama3-8b", "heads": 32, "kv_heads": 16}
        path = tmp_path / f"serve-tp{tp}.yaml"
        path.write_text(yaml.safe_dump(data))
        assert main(["validate", str(path)]) == 0
        err = capsys.readouterr().err
        assert err.count("llmsim: note:") == notes, err
        if notes:
            assert "strategy tp16: tp = 16 spans 2 nodes of 8 h100-sxm" in err and "inter-node link ib-ndr400x8" in err


def test_a_serving_row_records_its_attention_kernel_and_all_reduce_library(tmp_path: Path) -> None:
    """A modeled serving row names the kernel and library its iterations were priced with (results.COLUMNS)."""
    _, rows = _run(tmp_path, _scenario())
    assert rows and all(r["attention_kernel"] == "flash" and r["all_reduce"] == "nccl" for r in rows)


SPECULATIVE = {"method": "eagle", "num_draft_tokens": 3, "acceptance": 0.7}


def test_speculative_decoding_runs_on_both_modeled_backends_with_its_accept_length(tmp_path: Path) -> None:
    """An EAGLE head (1 layer, k = 3, acceptance 0.7) beside the tiny model: the row's accept_length is near
    1 + 0.7 + 0.49 + 0.343, its TPOT below the run without speculation, and the draft's layer takes its share of
    the KV cache; a draft model (the same preset) costs more cache than the head; ngram none."""
    def scenario(**serving: Any) -> dict[str, Any]:
        data = _scenario(arrival={"kind": "poisson", "rate": 50}, **serving)
        data["workload"]["model"] = {"preset": "tiny", "layers": 8}   # the head: 1 of 8 layers
        return data

    _, plain = _run(tmp_path / "plain", scenario())
    _, rows = _run(tmp_path / "eagle", scenario(speculative=SPECULATIVE))
    by = {r["backend"]: r for r in plain}
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert row["accept_length"] == pytest.approx(1 + 0.7 + 0.49 + 0.343, rel=0.1)
        assert row["expected_accept_length"] == pytest.approx(2.533)
        assert row["speculative_method"] == "eagle" and row["num_draft_tokens"] == 3
        assert row["tpot_mean_s"] < by[row["backend"]]["tpot_mean_s"]
        assert row["kv_blocks_per_replica"] < by[row["backend"]]["kv_blocks_per_replica"]
    _, drafted = _run(tmp_path / "draft", scenario(speculative={
        "method": "draft", "draft_model": "tiny", "num_draft_tokens": 3, "acceptance": 0.7}))
    _, ngram = _run(tmp_path / "ngram", scenario(speculative={
        "method": "ngram", "num_draft_tokens": 3, "acceptance": 0.7}))
    for a, b, c in zip(sorted(rows, key=lambda r: r["backend"]), sorted(drafted, key=lambda r: r["backend"]),
                       sorted(ngram, key=lambda r: r["backend"])):
        assert b["status"] == "ok" and c["status"] == "ok"
        assert b["kv_blocks_per_replica"] < a["kv_blocks_per_replica"] < c["kv_blocks_per_replica"]
        assert c["kv_blocks_per_replica"] == by[c["backend"]]["kv_blocks_per_replica"]


@pytest.mark.parametrize("speculative,key", [
    ({**SPECULATIVE, "num_draft_tokens": 0}, "serving.speculative.num_draft_tokens"),
    ({**SPECULATIVE, "acceptance": 0}, "serving.speculative.acceptance"),
    ({**SPECULATIVE, "acceptance": 1.5}, "serving.speculative.acceptance"),
    ({**SPECULATIVE, "acceptance": [0.9, 0.8]}, "serving.speculative.acceptance"),
    ({**SPECULATIVE, "method": "draft"}, "serving.speculative.draft_model"),
    ({**SPECULATIVE, "method": "draft", "draft_model": "llama9-1b"}, "serving.speculative.draft_model"),
    ({**SPECULATIVE, "draft_model": "tiny"}, "serving.speculative.draft_model"),
    ({**SPECULATIVE, "method": "medusa"}, "serving.speculative.method"),
    # the trial: an encoder passed validate and failed the run; k past the token budget ran at TTFT 9.7e9 s
    ({**SPECULATIVE, "method": "draft", "draft_model": "bert-base"}, "serving.speculative.draft_model"),
    ({**SPECULATIVE, "num_draft_tokens": 100_000_000}, "serving.speculative.num_draft_tokens"),
    ({**SPECULATIVE, "draft_layers": 100}, "serving.speculative.draft_layers"),
])
def test_a_bad_speculative_block_is_one_line_naming_the_key_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], speculative: dict[str, Any], key: str) -> None:
    from llmsim.cli import main
    data = _scenario(speculative=speculative)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and "allowed" in err, err


@pytest.mark.parametrize("change,key,words", [
    ({"scheduler": {"kind": "static"}}, "serving.speculative", "scheduler kind 'static' does not run speculative"),
    ({"scheduler": {"kind": "sglang"}}, "serving.speculative", "scheduler kind 'sglang' does not run speculative"),
    ({"strategies": [{"name": "pp2", "pp": 2}]}, "strategies[0].pp", "speculative decoding (serving.speculative) is "
                                                                      "modeled at pp 1 only"),
])
def test_speculative_decoding_refuses_what_it_does_not_model_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], key: str, words: str) -> None:
    from llmsim.cli import main
    data = _scenario(speculative=SPECULATIVE)
    if "strategies" in change:
        data["strategies"] = change["strategies"]
        data["workload"]["model"] = {"preset": "tiny", "layers": 4}
    else:
        data["serving"].update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{key}: " in err and words in err and "allowed" in err, err


def test_a_training_scenario_cannot_hold_a_speculative_serving_block(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from llmsim.cli import main
    data = _scenario(speculative=SPECULATIVE)
    data["workload"]["mode"] = "train"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "workload.mode" in err, err


def test_speculative_decoding_runs_with_replicas_and_attention_dp_ranks(tmp_path: Path) -> None:
    """Two replicas behind the router, and a mixture of experts whose tp 2 runs attention as 2 data-parallel ranks
    (one acceptance stream per replica, drawn in rank order): every row ok with its accept length."""
    data = _scenario(arrival={"kind": "poisson", "rate": 50}, replicas=2, speculative=SPECULATIVE)
    _, rows = _run(tmp_path / "replicas", data)
    moe = _scenario(arrival={"kind": "poisson", "rate": 50}, speculative={**SPECULATIVE, "method": "mtp"})
    moe["workload"]["model"] = {"preset": "tiny-moe"}
    moe["strategies"] = [{"name": "adp2", "tp": 2, "ep": 2, "etp": 1, "attention_dp": 2}]
    _, adp = _run(tmp_path / "adp", moe)
    for row in rows + adp:
        assert row["status"] == "ok", row["error"]
        assert row["accept_length"] == pytest.approx(2.533, rel=0.15)
    assert all(row["attention_dp"] == 2 for row in adp)


def test_a_draft_model_must_be_a_decoder_whose_context_holds_the_served_one() -> None:
    """The trial: draft_model bert-base (an encoder) and gpt2-small (1,024 learned positions under an 8k context)
    passed validate, then failed the run with pydantic's text; both are refused naming what fits."""
    from llmsim.config import draft_model_problem
    assert "not a causal decoder" in draft_model_problem("bert-base", 8192)
    problem = draft_model_problem("gpt2-small", 8192)
    assert problem.startswith("'gpt2-small' holds 1024 positions, fewer than the served context seq_len=8192")
    assert "llama3-8b" in problem and "gpt2-small" not in problem.split("allowed: ")[1]
    assert draft_model_problem("gpt2-small", 1024) is None and draft_model_problem("qwen3-4b", 8192) is None


@pytest.mark.parametrize("disaggregated", [False, True])
def test_a_device_of_unknown_memory_gives_a_skipped_serving_row_that_says_why(tmp_path: Path, capsys,  # noqa: ANN001
                                                                               disaggregated: bool) -> None:
    """memory_bytes 0 means "unknown" in a hardware file: a training or step case is taken to fit, but a serving
    replica's KV cache is the memory its weights leave, so the row is skipped and says so (trial 24: it was a
    does-not-fit row of "0.0 GB usable", while the same device's training case said ok)."""
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump({"entries": [{
        "name": "nomem-gpu", "type": "device", "peak_flops": {"bfloat16": 1.0e15, "float32": 6.0e13},
        "memory_bytes": 0, "memory_bw_bytes_per_s": 3.0e12, "idle_power_w": 80, "max_power_w": 700,
        "intra_node": "nvlink4", "inter_node": "ib-ndr400x8", "source": "a test device"}]}))
    data = _scenario(arrival={"kind": "poisson", "rate": 50})
    data["hardware_catalog"] = ["hw.yaml"]
    data["backends"] = {"roofline": {"hardware": "nomem-gpu", "devices_per_node": 2}}
    if disaggregated:
        data["serving"]["disaggregation"] = {"prefill": {"replicas": 1, "tp": 1}, "decode": {"replicas": 1, "tp": 1}}
    _, rows = _run(tmp_path, data)
    assert [r["status"] for r in rows] == ["skipped"]
    assert "nomem-gpu: memory_bytes is 0 (unknown)" in rows[0]["error"], rows[0]["error"]
    # and validate says so first, in the row's words (trial 33: "ok", then the run skipped it)
    from llmsim.cli import main
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "s.yaml")]) == 0
    assert capsys.readouterr().err.strip() == (f"llmsim: note: {tmp_path / 's.yaml'}: backends.roofline.hardware: "
                                               f"{rows[0]['error']}; 1 case will be skipped")


def test_a_pricer_prices_each_distinct_mix_once_and_jitters_every_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pricers remember each mix's price (a pure function of it; serving.replica.PRICED_MIXES_KEPT): the same
    mix again, on this replica or on an alike one, is not priced again and costs what the cost model says; a
    straggler has its own memo; jitter still draws for every iteration."""
    import llmsim.modeled_serving as modeled_serving
    from llmsim.costmodel import Plan
    from llmsim.costmodel.iteration import IterationModel, Mix, iteration_time, token_costs
    from llmsim.config import ModelSpec, SharingChoice, Workload
    from llmsim.hardware import load_catalog
    from llmsim.modeled_serving import ServingFaults, pricers, serving_profile

    ref, profile = serving_profile(Workload(model=ModelSpec(preset="tiny"), dtype="float32"),
                                   SharingChoice(tie_embeddings=False))
    model = IterationModel(token_costs(ref, profile), ref, Plan(), load_catalog().cluster("h100-sxm", 1, 8, None, None))
    priced: list[Mix] = []
    real = modeled_serving.iteration_times
    monkeypatch.setattr(modeled_serving, "iteration_times", lambda m, mix, ranks=(): priced.append(mix) or real(m, mix, ranks))

    price = pricers(model, ServingFaults(straggler_replica=2, slowdown=2.0))
    a, b = Mix.decode(30), Mix.decode(31)
    first = price(0)(a)
    assert first[0] == pytest.approx(iteration_time(model, a), rel=1e-12)
    assert price(0)(a) == first and price(1)(a) == first      # replica 1 is alike: one memo
    price(0)(b)
    assert priced == [a, b]
    slow = price(2)(a)                                         # the straggler: its own prices
    assert priced == [a, b, a] and slow[1] == pytest.approx(2 * first[1])
    jittered = pricers(model, ServingFaults(jitter=0.1, seed=3))(0)
    assert len({jittered(a)[0] for _ in range(5)}) == 5 and priced.count(a) == 3


@pytest.mark.parametrize("hardware,faster", [("h100-sxm", True), ("a100-80gb", False)])
def test_vllms_allreduce_rms_fusion_shortens_tp_decode_steps_where_vllm_runs_it(
        tmp_path: Path, hardware: str, faster: bool) -> None:
    """serving.scheduler.fuse_allreduce_rms at tp 2: on Hopper each layer launches two kernels fewer (the
    all-reduces fold the norms after them), so TPOT drops; on an A100 vLLM does not run it: the same rows."""
    tpot = {}
    for fuse in (False, True):
        data = _scenario(scheduler={"kind": "continuous", "fuse_allreduce_rms": fuse})
        data["strategies"] = [{"name": "tp2", "tp": 2}]
        data["backends"] = {"roofline": {"hardware": hardware, "nodes": 1, "devices_per_node": 2}}
        data["serving"]["arrival"]["rate"] = [50]
        _, rows = _run(tmp_path / str(fuse), data)
        (row,) = rows
        assert row["fuse_allreduce_rms"] is fuse
        tpot[fuse] = row["tpot_mean_s"]
    assert (tpot[True] < tpot[False]) is faster
    if not faster:
        assert tpot[True] == tpot[False]
