"""The inferencex dev table (validation/serving_inferencex.csv) in scripts/validate.py: SemiAnalysis InferenceX's own
serving runs (result JSONs committed to SemiAnalysisAI/InferenceX, and the repository's issue threads that tabulate
its CI runs). The table loads, every row names an InferenceX source and none a held-out page, every skipped row says
why, the InferenceX random lengths are its sampler's uniform 80-100% ranges, and every priced row prices."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.scripts.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "validation" / "serving_inferencex.csv"
# held out (validation/README.md): TensorRT-LLM's performance pages, NVIDIA's product-performance page, MLPerf
# Inference, NIM's benchmarks
HELD_OUT = ("docs/source/performance", "perf-overview", "performance.html", "deep-learning-performance",
            "mlcommons", "mlperf", "/nim/")


@pytest.fixture(scope="module")
def v():
    return load_script("validate.py", "validate_inferencex_under_test")


def test_the_table_parses_and_every_row_names_an_inferencex_source(v) -> None:
    table = v.TABLES["inferencex"]
    assert table.kind == "serving" and table.default == TABLE
    rows = v.read_serving_runs(TABLE)
    assert len({r["row_id"] for r in rows}) == len(rows) >= 60
    for r in rows:
        source = str(r["source"]).lower()
        assert "github.com/semianalysisai/inferencex" in source, r["row_id"]
        assert not any(word in source for word in HELD_OUT), r["row_id"]
        assert r["metric"] in v.SERVING_METRICS and r["published"] > 0, r["row_id"]
    assert [c.row_id for c in table.cases(TABLE)] == [r["row_id"] for r in rows]


def test_every_skipped_row_carries_a_reason_and_every_priced_row_its_assumptions(v) -> None:
    rows = v.read_serving_runs(TABLE)
    skipped = [r for r in rows if r["skip_reason"] is not None]
    priced = [r for r in rows if r["skip_reason"] is None]
    assert len(priced) >= 60 and skipped
    for r in skipped:
        assert len(str(r["skip_reason"])) > 20, r["row_id"]
    for r in priced:
        assert r["assumptions"] and r["concurrency"] and r["request_rate"] == "inf", r["row_id"]


@pytest.mark.parametrize("name, prompt, output", [
    ("inferencex-random-1k-1k-r0.8", (819, 1_024), (819, 1_024)),
    ("inferencex-random-1k-8k-r0.8", (819, 1_024), (6_553, 8_192)),
    ("inferencex-random-8k-1k-r0.8", (6_553, 8_192), (819, 1_024)),
])
def test_inferencex_lengths_are_its_samplers_uniform_ranges(v, name: str, prompt: tuple, output: tuple) -> None:
    """InferenceX's benchmark_serving.py draws randint(int(L * 0.8), L + 1) for the prompt and the answer alike."""
    lengths = v.LENGTH_DISTRIBUTIONS[name]
    assert (lengths["input"]["kind"], lengths["output"]["kind"]) == ("uniform", "uniform")
    assert (lengths["input"]["min"], lengths["input"]["max"]) == prompt
    assert (lengths["output"]["min"], lengths["output"]["max"]) == output


@pytest.mark.slow  # a dozen configurations of the table through the serving simulation (~1 min on a 2-core host)
def test_the_first_and_last_configuration_of_each_setup_price(v) -> None:
    """Per setup (model, engine, parallelism and hardware: the row label before its load), its first and its last
    configuration: the shortest and the longest prompts, the fewest and the most clients. Every one of the 37
    took 196 s of CI (session 25); scripts/validate.py prices them all."""
    cases = [c for c in v.serving_cases(TABLE) if c.row is not None]
    assert len(cases) >= 60
    setups: dict[str, list[str]] = {}
    for case in cases:
        configurations = setups.setdefault(case.label.split(",")[0], [])
        if case.label not in configurations:
            configurations.append(case.label)
    ends = {label for labels in setups.values() for label in (labels[0], labels[-1])}
    assert len(setups) >= 6 and len(ends) >= 12
    for case in (c for c in cases if c.label in ends):
        outcome = v.run_serving_case(case)
        assert outcome.failure is None and outcome.result is not None, (case.row_id, outcome.failure)
        assert outcome.result["status"] == "ok", case.row_id
        assert outcome.predicted is not None and math.isfinite(outcome.predicted) and outcome.predicted > 0, \
            case.row_id


def test_a_skipped_row_is_left_unpriced(v) -> None:
    [case] = [c for c in v.serving_cases(TABLE) if c.skip_reason and "Qwen3.5" in c.label]
    outcome = v.run_serving_case(case)
    assert outcome.result is None and outcome.error is None
