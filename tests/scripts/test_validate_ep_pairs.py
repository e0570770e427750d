"""The ep-pairs dev table (validation/serving_ep_pairs.csv) in scripts/validate.py: published serving runs of one
MoE model, engine and node at the same tp without and with expert parallelism inside the tp group (vLLM
--enable-expert-parallel without data parallelism, SGLang --ep-size = --tp-size without DP attention), from
GPUStack's Performance Lab pages. The table loads, every row names its page at a commit and none a held-out page,
every expert-parallel row has its tp-only twin, and the ShareGPT lengths are the pages' printed totals."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.scripts.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "validation" / "serving_ep_pairs.csv"
# held out (validation/README.md): TensorRT-LLM's performance pages, NVIDIA's product-performance page, MLPerf
# Inference, NIM's benchmarks
HELD_OUT = ("docs/source/performance", "perf-overview", "performance.html", "deep-learning-performance",
            "mlcommons", "mlperf", "/nim/")
SOURCE = re.compile(r"^https://github\.com/gpustack/gpustack/blob/[0-9a-f]{40}/docs/performance-lab/\S+\.md ")


@pytest.fixture(scope="module")
def v():
    return load_script("validate.py", "validate_ep_pairs_under_test")


def test_the_table_parses_and_every_row_names_its_page_at_a_commit(v) -> None:
    table = v.TABLES["ep-pairs"]
    assert table.kind == "serving" and table.default == TABLE
    rows = v.read_serving_runs(TABLE)
    assert len({r["row_id"] for r in rows}) == len(rows) >= 30
    for r in rows:
        source = str(r["source"])
        assert SOURCE.match(source), r["row_id"]
        assert not any(word in source.lower() for word in HELD_OUT), r["row_id"]
        assert r["metric"] in v.SERVING_METRICS and r["published"] > 0, r["row_id"]
        assert r["skip_reason"] is None and r["assumptions"] and r["request_rate"] == "inf", r["row_id"]
        assert r["attention_dp"] in (None, 1), r["row_id"]
    assert [c.row_id for c in table.cases(TABLE)] == [r["row_id"] for r in rows]


def test_every_expert_parallel_row_has_its_tp_only_twin(v) -> None:
    """The same model, engine, hardware, tp, load and metric, ep blank: the pair the table is for."""
    rows = v.read_serving_runs(TABLE)
    with_ep = [r for r in rows if r["ep"]]
    assert len(with_ep) * 2 == len(rows)
    for r in with_ep:
        assert r["ep"] == r["tp"] and r["etp"] == 1, r["row_id"]
        twin_run = str(r["run"]).replace(f" ep{r['ep']}", "")
        [twin] = [t for t in rows if t["run"] == twin_run and t["metric"] == r["metric"]]
        assert twin["ep"] is None, r["row_id"]
        for key in ("hardware", "tp", "n_devices", "dtype", "layers", "experts", "requests", "lengths", "scheduler"):
            assert twin[key] == r[key], (r["row_id"], key)


@pytest.mark.parametrize("name, prompt, output", [
    ("sharegpt-vllm-glm", 214_465 / 1000, 199_904 / 1000),
    ("sharegpt-vllm-qwen3", (212_992 + 214_311) / 1968, (194_446 + 192_752) / 1968),
])
def test_the_sharegpt_lengths_keep_the_pages_printed_means_after_the_filter(v, name: str, prompt: float,
                                                                            output: float) -> None:
    assert v.SHAREGPT_MEANS[name] == pytest.approx((prompt, output))
    lengths = v.LENGTH_DISTRIBUTIONS[name]
    f = v.SHAREGPT_FILTER
    got = v.filtered_exponential_means(lengths["input"]["mean"], lengths["output"]["mean"], f["min"],
                                       f["max_input"], f["max_total"])
    assert got == pytest.approx((prompt, output), rel=1e-4)


@pytest.mark.slow  # two configurations of the table through the serving simulation (a few seconds each)
def test_a_pair_prices_and_expert_parallelism_adds_no_exchange(v) -> None:
    """GLM-4.5-Air on 4 H100, tp 4 and tp 4 / ep 4: both price; with every expert whole on one rank and no
    all-to-all the two decode the same tokens within a few percent (routing imbalance over 4 ranks)."""
    cases = {c.row_id: c for c in v.serving_cases(TABLE)}
    tp_only, with_ep = cases["EP19"], cases["EP22"]
    assert (tp_only.metric, with_ep.metric) == ("output_tokens_per_s", "output_tokens_per_s")
    predicted = []
    for case in (tp_only, with_ep):
        outcome = v.run_serving_case(case)
        assert outcome.failure is None and outcome.result["status"] == "ok", case.row_id
        assert outcome.predicted is not None and math.isfinite(outcome.predicted) and outcome.predicted > 0
        predicted.append(outcome.predicted)
    assert predicted[1] / predicted[0] == pytest.approx(1.0, abs=0.05)


def test_a_rows_graph_max_batch_reaches_its_scenario_and_every_row_gives_its_engines_default(v) -> None:
    """`graph_max_batch` (serving.scheduler.graph_max_batch) is passed through as a whole number; blank leaves the key
    out (no limit). Every row gives its engine version's default largest decode graph: vLLM 0.11 V1 512
    (min(2 x 1024, 512)), SGLang 0.5.3 / 0.5.4 --cuda-graph-max-bs 512 at tp >= 4 and 256 at tp 2."""
    rows = v.read_serving_runs(v.TABLES["ep-pairs"].default)
    assert {r["row_id"]: r["graph_max_batch"] for r in rows} == {
        r["row_id"]: (256 if r["tp"] < 4 else 512) for r in rows}
    scenario, _ = v.serving_scenario(rows[0])
    assert scenario["serving"]["scheduler"]["graph_max_batch"] == 512
    blank = dict(rows[0], graph_max_batch=None)
    assert "graph_max_batch" not in v.serving_scenario(blank)[0]["serving"]["scheduler"]
