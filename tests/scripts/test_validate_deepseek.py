"""The deepseek-serve dev table (validation/serving_deepseek.csv) in scripts/validate.py: DeepSeek models (multi-head
latent attention) served, from the SGLang cookbook and vLLM / SGLang pull requests. The table loads, every row names
its source and none a held-out page, the priced rows use the MLA presets, the named length distributions are the
benchmark's draws, and one row is priced through the serving simulation."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsim.config import ModelSpec
from tests.scripts.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "validation" / "serving_deepseek.csv"
# held out (validation/README.md): TensorRT-LLM's performance pages, NVIDIA's product-performance page, MLPerf
# Inference, NIM's benchmarks
HELD_OUT = ("docs/source/performance", "perf-overview", "performance.html", "deep-learning-performance",
            "mlcommons", "mlperf", "/nim/")


@pytest.fixture(scope="module")
def v():
    return load_script("validate.py", "validate_deepseek_under_test")


def test_the_table_loads_and_every_row_names_its_source_and_none_a_held_out_page(v) -> None:
    table = v.TABLES["deepseek-serve"]
    assert table.kind == "serving" and table.default == TABLE
    rows = v.read_serving_runs(TABLE)
    assert len({r["row_id"] for r in rows}) == len(rows) >= 90
    for r in rows:
        source = str(r["source"]).lower()
        assert source and not any(word in source for word in HELD_OUT), r["row_id"]
        assert r["assumptions"] and r["metric"] in v.SERVING_METRICS and r["published"] > 0, r["row_id"]
    assert [c.row_id for c in table.cases(TABLE)] == [r["row_id"] for r in rows]


def test_every_priced_row_is_an_mla_model(v) -> None:
    priced = [r for r in v.read_serving_runs(TABLE) if r["skip_reason"] is None]
    assert len(priced) >= 70
    for r in priced:
        spec = ModelSpec(preset=r["preset"], seq_len=4096)
        assert spec.mla is not None and spec.moe is not None, r["row_id"]


@pytest.mark.parametrize("name, prompt, output", [
    ("sglang-v02-random-1k-1k-r0", (1, 1_000), (1, 1_000)),      # the draw itself (R1 page's totals)
    ("sglang-v02-random-8k-1k-r0", (1, 8_000), (1, 1_000)),
    ("sglang-random-1k-8k-r0", (1, 1_000), (1, 8_001)),          # the draw + 1 (V3.1 page's totals)
])
def test_the_cookbook_lengths_are_the_benchmarks_uniform_draws(v, name: str, prompt: tuple, output: tuple) -> None:
    lengths = v.LENGTH_DISTRIBUTIONS[name]
    assert (lengths["input"]["min"], lengths["input"]["max"]) == prompt
    assert (lengths["output"]["min"], lengths["output"]["max"]) == output


def test_a_single_client_row_prices_deepseek_on_eight_b200(v) -> None:
    """DS07: R1-0528 FP8 at tp 8 on B200, one client, 10 requests of 1k/1k: a mean TPOT (seconds) above the read of
    the ~37B active FP8 weights split over 8 GPUs at B200's 8 TB/s HBM peak (~0.6 ms, a floor no engine beats) and
    below 50 ms (published 9.16 ms)."""
    [case] = [c for c in v.serving_cases(TABLE) if c.row_id == "DS07"]
    outcome = v.run_serving_case(case)
    assert outcome.result is not None and outcome.result["status"] == "ok"
    assert 37e9 / 8 / 8e12 < outcome.predicted < 0.050
