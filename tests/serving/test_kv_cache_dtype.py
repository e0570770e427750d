"""serving.kv_cache_dtype end to end: a float8 cache doubles the replica's KV capacity (the memory model's leftover
over half the bytes per token), decodes faster at long context, runs the same twice, and a bad value is one
line naming the key (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmsim.cli import main
from llmsim.config import parse_scenario
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import SERVING_COLUMNS, read_rows
from llmsim.runner import plan_cases, run_scenario

H100 = {"hardware": "h100-sxm", "nodes": 1, "devices_per_node": 1, "attention": "flash3"}


def _scenario(kv_cache_dtype: str | None) -> dict[str, Any]:
    """Llama 3 8B (4 layers, so the test is quick) on one H100, long prompts at a low rate: decode steps that
    read far more K and V than weights."""
    serving: dict[str, Any] = {"requests": 12, "arrival": {"kind": "poisson", "rate": 0.5},
                               "lengths": {"input": 30000, "output": 16},
                               "scheduler": {"kind": "chunked-prefill", "max_batched_tokens": 8192}}
    if kv_cache_dtype is not None:
        serving["kv_cache_dtype"] = kv_cache_dtype
    return {"name": "serve-kv", "workload": {"model": {"preset": "llama3-8b", "layers": 4, "seq_len": 32768},
                                             "dtype": "bfloat16"},
            "strategies": [{"name": "tp1"}], "serving": serving, "backends": {"roofline": H100}, "seed": 3}


def _row(tmp_path: Path, kv_cache_dtype: str | None) -> dict[str, Any]:
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    scenario = parse_scenario(_scenario(kv_cache_dtype), "serve.yaml")
    planned = plan_cases(scenario, registry, "serve.yaml", scenario_dir=tmp_path)
    outcome = run_scenario(scenario, registry, planned, tmp_path, manager=manager, scenario_dir=tmp_path)
    rows = read_rows(outcome.run_dir)
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    return rows[0]


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return {kind: _row(tmp_path_factory.mktemp(kind), None if kind == "absent" else kind)
            for kind in ("absent", "auto", "float8")}


def test_auto_is_the_block_without_the_key(rows: dict[str, dict[str, Any]]) -> None:
    columns = [c for c in SERVING_COLUMNS if c in rows["absent"]]
    assert columns and {c: rows["auto"][c] for c in columns} == {c: rows["absent"][c] for c in columns}


def test_a_float8_cache_holds_twice_the_tokens(rows: dict[str, dict[str, Any]]) -> None:
    """Same leftover, half the bytes per token: 2x the blocks, or 2x + 1 (whole blocks)."""
    bf16, fp8 = rows["auto"], rows["float8"]
    assert float(fp8["kv_bytes_per_token"]) == float(bf16["kv_bytes_per_token"]) / 2
    blocks = int(bf16["kv_blocks_per_replica"])
    assert int(fp8["kv_blocks_per_replica"]) in (2 * blocks, 2 * blocks + 1)


def test_a_float8_cache_decodes_faster_at_long_context_and_low_load(rows: dict[str, dict[str, Any]]) -> None:
    bf16, fp8 = rows["auto"], rows["float8"]
    assert float(fp8["tpot_p50_s"]) < float(bf16["tpot_p50_s"])
    assert float(fp8["tpot_mean_s"]) < float(bf16["tpot_mean_s"])
    assert float(fp8["ttft_p50_s"]) <= float(bf16["ttft_p50_s"])   # FA3's FP8 path on the prompt's attention


def test_same_seed_same_result(tmp_path: Path, rows: dict[str, dict[str, Any]]) -> None:
    again = _row(tmp_path, "float8")
    assert {c: again[c] for c in SERVING_COLUMNS if c in again} == \
        {c: rows["float8"][c] for c in SERVING_COLUMNS if c in again}


def test_a_bad_value_is_one_line_naming_the_key_and_what_is_allowed(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(_scenario("fp8"), sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err == (f"llmsim: error: {path}: serving.kv_cache_dtype: 'fp8' is not one of the allowed values "
                   f"(allowed: auto, float8)")


def test_the_json_schema_has_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    key = json.loads(capsys.readouterr().out)["$defs"]["ServingSpec"]["properties"]["kv_cache_dtype"]
    assert key["enum"] == ["auto", "float8"] and key["default"] == "auto"
