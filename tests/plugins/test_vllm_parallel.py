"""The `vllm` backend at tp/pp > 1: the strategy's tp and pp as vLLM's flags, one core per rank, and the one-line
reasons a layout does not run here. Without vLLM; the test marked `vllm` runs tp 2 on the real engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmsim.config import ModelSpec, load_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases, run_scenario
from llmsim.serving.engine import EngineArgs
from llmsim_plugins import vllm as plugin
from llmsim_plugins.vllm import engine_args, parallel_problem, unsupported, vllm_version

from tests.plugins.test_vllm import LLAMA, serving_scenario


def _planned(tmp_path: Path, strategies: list[dict[str, Any]], model: dict[str, Any] | None = None,
             **serving: Any) -> list[Any]:
    import yaml

    data = serving_scenario(**serving)
    data["strategies"] = strategies
    if model is not None:
        data["workload"]["model"] = model
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    scenario = load_scenario(path)
    registry = BackendRegistry.from_manager(get_plugin_manager())
    return plan_cases(scenario, registry, str(path), ["vllm"])


def _flag(cli: list[str], name: str) -> str | None:
    return cli[cli.index(name) + 1] if name in cli else None


def test_tp_and_pp_become_vllm_s_flags_and_one_core_per_rank(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "host_cores", lambda: [0, 1, 2, 3])
    planned = _planned(tmp_path, [{"name": "tp1"}, {"name": "tp2", "tp": 2}, {"name": "pp2", "pp": 2},
                                  {"name": "tp2pp2", "tp": 2, "pp": 2}])
    by_name = {p.case.strategy.name if hasattr(p.case, "strategy") else p.case.name: p for p in planned}
    args = {p.case.layout.tp * 10 + p.case.layout.pp: engine_args(p.case, p.settings) for p in planned}
    assert set(args) == {11, 21, 12, 22}, by_name
    one = args[11]
    # tp 1: the flags and environment of before (vLLM's own binding: a worker core, one core kept for the rest)
    assert "--tensor-parallel-size" not in one.cli() and "--distributed-executor-backend" not in one.cli()
    assert "VLLM_CPU_OMP_THREADS_BIND" not in one.env()
    for key, (tp, pp, bind) in {21: (2, 1, "0|1"), 12: (1, 2, "0|1"), 22: (2, 2, "0|1|2|3")}.items():
        cli = args[key].cli()
        assert _flag(cli, "--tensor-parallel-size") == str(tp) and _flag(cli, "--pipeline-parallel-size") == str(pp)
        assert _flag(cli, "--distributed-executor-backend") == "mp"
        assert args[key].env()["VLLM_CPU_OMP_THREADS_BIND"] == bind and args[key].ranks == tp * pp


def test_ranks_are_bound_to_the_cores_this_process_may_use_in_order(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "host_cores", lambda: [3, 5, 8])
    planned = _planned(tmp_path, [{"name": "tp2", "tp": 2}])
    assert engine_args(planned[0].case, planned[0].settings).env()["VLLM_CPU_OMP_THREADS_BIND"] == "3|5"


def test_replicas_of_a_tp_server_get_cores_of_their_own_or_are_skipped(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "host_cores", lambda: [0, 1, 2, 3])
    planned = _planned(tmp_path, [{"name": "tp2", "tp": 2}], replicas=2)
    args = engine_args(planned[0].case, planned[0].settings)
    assert [args.env(i)["VLLM_CPU_OMP_THREADS_BIND"] for i in range(2)] == ["0|1", "2|3"]
    assert unsupported(planned[0].case) is None
    monkeypatch.setattr(plugin, "host_cores", lambda: [0, 1])
    reason = unsupported(planned[0].case) or ""
    assert "replicas*tp*pp = 2*2 ranks need a core each" in reason and "2 cores" in reason
    tp1, *_ = _planned(tmp_path, [{"name": "tp1"}], replicas=4)
    assert unsupported(tp1.case) is None   # tp 1 replicas: vLLM's own binding, as before


def test_more_ranks_than_cores_is_skipped_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "host_cores", lambda: [0, 1])
    planned = _planned(tmp_path, [{"name": "tp2", "tp": 2}, {"name": "tp4", "tp": 4}, {"name": "tp2pp2", "tp": 2,
                                                                                       "pp": 2}])
    reasons = [unsupported(p.case) for p in planned]
    assert reasons[0] is None
    for reason in reasons[1:]:
        assert reason is not None and "4 ranks need a core each" in reason and "2 cores" in reason
        assert "\n" not in reason


@pytest.mark.parametrize("tp, pp, model, words", [
    (8, 1, dict(LLAMA, heads=4, kv_heads=2), "heads=4 not divisible by tp=8"),
    (2, 1, dict(LLAMA, heads=6, kv_heads=3, hidden=192), "kv_heads=3 and tp=2"),
    (2, 1, dict(LLAMA, ffn_hidden=129), "ffn_hidden=129 not divisible by tp=2"),
    (1, 2, dict(LLAMA), "pp=2: vllm-cpu 0.32.0 starts but fails at its first request"),
])
def test_layouts_vllm_cannot_shard_are_refused_with_the_reason(tp: int, pp: int, model: dict[str, Any],
                                                               words: str) -> None:
    reason = parallel_problem(tp, pp, 1, 64, ModelSpec(**model))
    assert reason is not None and words in reason and "\n" not in reason


def test_shardable_layouts_and_replicated_kv_heads_pass() -> None:
    spec = ModelSpec(**LLAMA)   # 4 heads, 2 KV heads, ffn 128, 2 layers
    assert parallel_problem(1, 1, 1, 1, spec) is None
    assert parallel_problem(2, 1, 1, 2, spec) is None
    assert parallel_problem(4, 1, 1, 4, spec) is None   # tp 4 > 2 KV heads: each replicated on two ranks
    assert "context parallel" in (parallel_problem(1, 1, 2, 8, spec) or "")


def test_a_tp2_case_is_no_longer_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every tp*pp > 1 case was `skipped` ("replicas of one device each")."""
    monkeypatch.setattr(plugin, "host_cores", lambda: [0, 1])
    planned = _planned(tmp_path, [{"name": "tp2", "tp": 2}, {"name": "pp2", "pp": 2}])
    tp2, pp2 = (unsupported(p.case) for p in planned)
    assert tp2 is None and pp2 is not None and "pipeline parallelism" in pp2


def test_engine_args_default_to_one_rank() -> None:
    args = EngineArgs(max_num_seqs=1, max_num_batched_tokens=16, enable_chunked_prefill=False,
                      long_prefill_token_threshold=None, block_size=32, max_model_len=64, dtype="float32", seed=0,
                      enforce_eager=True, kv_cache_bytes=1)
    assert args.ranks == 1 and "--tensor-parallel-size" not in args.cli()


@pytest.mark.vllm
@pytest.mark.slow
def test_a_real_vllm_engine_serves_at_tp2(tmp_path: Path) -> None:
    if vllm_version() is None:
        pytest.skip("vllm is not installed in this environment (docs/serving.md: make .venv-vllm)")
    if len(plugin.host_cores()) < 2:
        pytest.skip("tp 2 needs two cores this process may use")
    import yaml

    path = tmp_path / "s.yaml"
    data = serving_scenario(requests=12, arrival={"kind": "poisson", "rate": [4]}, lengths={"input": 64, "output": 8})
    data["strategies"] = [{"name": "tp2", "tp": 2}]
    data["backends"] = {"vllm": {"memory_gib": 1}}
    path.write_text(yaml.safe_dump(data))
    scenario = load_scenario(path)
    registry = BackendRegistry.from_manager(get_plugin_manager())
    outcome = run_scenario(scenario, registry, plan_cases(scenario, registry, str(path)), tmp_path / "out")
    row = json.loads((outcome.run_dir / "results.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok", row["error"]
    assert row["requests_done"] == 12 and row["tp"] == 2, row.get("first_error")
    log = (outcome.run_dir / row["engine_log"]).read_text()
    assert "local_rank=1, core ids=[" in log   # two workers, each bound to its core


# -- the warm-up request -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("warmups", [1, 0])
def test_a_fresh_engine_gets_unmeasured_warm_up_requests_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              warmups: int) -> None:
    """vLLM's CPU worker runs no forward pass before serving (eager, explicit KV size): the backend sends
    `warmup_requests` first, not in the row; a reused engine (the second rate) gets none."""
    from tests.plugins.test_vllm import PREFILL_S, FakeVllm, _run

    FakeVllm.pid_file = tmp_path / "pids"
    rows, _ = _run(tmp_path, FakeVllm, monkeypatch, ["vllm"], settings={"warmup_requests": warmups},
                   arrival={"kind": "poisson", "rate": [40, 80]})
    first, second = rows
    assert first["status"] == "ok" and first["requests_done"] == 12 and second["requests_done"] == 12
    assert first["warmup_requests"] == warmups
    if warmups:
        assert first["warmup_s"] >= PREFILL_S   # one whole answer: the fake's prefill and 2 tokens
    else:
        assert first["warmup_s"] == 0
    assert second["engine_reused"] and second["warmup_s"] == 0


def test_warm_up_reads_a_whole_answer_and_a_dead_server_is_an_engine_error(tmp_path: Path) -> None:
    from llmsim.serving.engine import EngineError, ServerProcess, free_port, warm_up

    from tests.plugins.test_vllm import PREFILL_S, fake_command

    port = free_port()
    with ServerProcess(fake_command(port, tmp_path / "pids", "--max-model-len", "256"), port,
                       tmp_path / "log") as server:
        assert warm_up(server.base_url, "llmsim", [2] * 16, 2, 30.0) >= PREFILL_S
    with pytest.raises(EngineError, match="warm-up request failed"):
        warm_up(server.base_url, "llmsim", [2] * 16, 2, 5.0)   # stopped: connection refused
