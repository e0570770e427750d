"""Multi-head latent attention end to end: scenarios/mla-cpu.yaml trains and decodes a tiny DeepSeek-shaped model
on the CPU (tensor parallelism of it is a skipped row there), and scenarios/serve-deepseek-v3.yaml serves
DeepSeek-V3 in FP8 on 8 modeled H200s with the latent KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsim.config import load_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import read_rows
from llmsim.runner import plan_cases, run_scenario
from tests.conftest import REPO


def _run(path: Path, tmp_path: Path, overrides: list[str] | None = None) -> list[dict]:
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    scenario = load_scenario(path, overrides or [])
    planned = plan_cases(scenario, registry, str(path), scenario_dir=path.parent)
    outcome = run_scenario(scenario, registry, planned, tmp_path, manager=manager, scenario_dir=path.parent)
    return read_rows(outcome.run_dir)


# decode is slow (~11 s on 2 cores: a dp2 launch); tests/workload/test_mla.py decodes the same model in-process
@pytest.mark.parametrize("mode", ["train", pytest.param("decode", marks=pytest.mark.slow)])
def test_a_tiny_mla_model_trains_and_decodes_on_the_cpu(mode: str, tmp_path: Path) -> None:
    rows = _run(REPO / "scenarios" / "mla-cpu.yaml", tmp_path, [f"workload.mode={mode}"])
    assert [r["status"] for r in rows] == ["ok", "ok"], [(r["case"], r["error"]) for r in rows]
    assert all(r["step_time_s"] > 0 and r["params"] > r["params_active"] > 0 for r in rows)


def test_tensor_parallelism_of_an_mla_model_is_a_skipped_cpu_row(tmp_path: Path) -> None:
    rows = _run(REPO / "scenarios" / "mla-cpu.yaml", tmp_path,
                ["strategies=[{name: tp2, tp: 2}]"])
    assert rows[0]["status"] == "skipped" and "multi-head latent attention" in rows[0]["error"]


def test_deepseek_v3_serves_on_8_h200s_in_fp8_with_the_latent_cache(tmp_path: Path) -> None:
    rows = _run(REPO / "scenarios" / "serve-deepseek-v3.yaml", tmp_path)
    assert [r["status"] for r in rows] == ["ok", "ok"], [(r["case"], r["error"]) for r in rows]
    low, high = rows
    for r in rows:
        # 61 layers x (kv_lora 512 + rope 64) x 2 bytes, whole on each of the 8 ranks
        assert r["kv_bytes_per_token"] == 61 * 576 * 2
        assert r["kv_capacity_tokens"] > 100_000
        # sane: a 1000-token prompt in tens to hundreds of ms, a decode step of 37B active parameters in
        # FP8 over 8 GPUs in tens of ms (memory-bound on the touched experts)
        assert 0.01 < r["ttft_p50_s"] < 1.0 and 0.005 < r["tpot_p50_s"] < 0.1
    assert high["tpot_p50_s"] > low["tpot_p50_s"]
