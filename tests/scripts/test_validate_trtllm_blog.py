"""The trtllm-blog dev table (validation/serving_trtllm_blog.csv) in scripts/validate.py: TensorRT-LLM's blog
tables (offline static batches of fixed lengths, FP8 on Hopper) load, name a blog of the repository and never its
held-out performance pages; a row is one static batch of every request at once, whole; the per-GPU throughput
metric is the replica's output tokens per second over its devices; `parallel_block` reaches the model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.scripts.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "validation" / "serving_trtllm_blog.csv"
BLOGS = "https://github.com/NVIDIA/TensorRT-LLM/blob/"
# TensorRT-LLM's performance overview and NVIDIA's product-performance page are held out (the blogs link to them)
HELD_OUT = ("docs/source/performance", "perf-overview", "performance.html", "deep-learning-performance",
            "ai-inference", "mlperf", "nim")


@pytest.fixture(scope="module")
def v():
    return load_script("validate.py", "validate_trtllm_blog_under_test")


def test_the_table_loads_and_every_row_names_a_blog_and_none_a_held_out_page(v) -> None:
    table = v.TABLES["trtllm-blog"]
    assert table.kind == "serving" and table.default == TABLE
    rows = v.read_serving_runs(TABLE)
    assert len({r["row_id"] for r in rows}) == len(rows) >= 15
    for r in rows:
        source = str(r["source"])
        assert source.startswith(BLOGS) and "/docs/source/blogs/" in source, r["row_id"]
        assert not any(word in source.lower() for word in HELD_OUT), r["row_id"]
        assert r["assumptions"] and r["metric"] in v.SERVING_METRICS and r["published"] > 0
    assert [c.row_id for c in table.cases(TABLE)] == [r["row_id"] for r in rows]


def test_every_priced_row_is_one_static_batch_of_fixed_lengths_at_once(v) -> None:
    """gptSessionBenchmark: batch_size prompts of input_length tokens generate output_length tokens each in one
    generate call; FP8 (W8A8 layers and an FP8 KV cache) on Hopper, FP16 on the A100."""
    priced = [r for r in v.read_serving_runs(TABLE) if r["skip_reason"] is None]
    assert len(priced) >= 10
    for r in priced:
        assert r["scheduler"] == "static" and r["request_rate"] == "offline" and r["lengths"] is None, r["row_id"]
        assert r["max_num_seqs"] == r["requests"] and r["n_devices"] == r["tp"] and r["pp"] == 1, r["row_id"]
        assert r["max_batched_tokens"] >= r["requests"] * r["input_len"], r["row_id"]   # one packed context pass
        if r["dtype"] == "float8":
            assert r["kv_cache_dtype"] == "float8" and r["hardware"] in ("h100-sxm", "h200"), r["row_id"]
        else:
            assert r["dtype"] == "float16" and r["hardware"] == "a100-80gb" and not r["kv_cache_dtype"], r["row_id"]


def test_a_row_runs_its_batch_whole_and_its_throughput_per_gpu_is_the_blogs_rule(v) -> None:
    """TB09, GPT-J 6B FP8 on one H100, 64 x 128/128: every request is in the one batch, ends with it, and the
    per-GPU figure is batch x output / the batch's latency / tp (out_tps of the blogs)."""
    [case] = [c for c in v.serving_cases(TABLE) if c.row_id == "TB09"]
    row = case.row
    assert row is not None and row["parallel_block"] is True
    outcome = v.run_serving_case(case)
    result = outcome.result
    assert result is not None and result["status"] == "ok"
    assert result["max_batch"] == row["requests"] and result["preemptions"] == 0
    assert result["e2e_p50_s"] == pytest.approx(result["e2e_p99_s"], rel=1e-9)      # one batch, one end
    latency = result["e2e_p99_s"]
    assert outcome.predicted == pytest.approx(row["requests"] * row["output_len"] / latency / row["tp"], rel=1e-6)
    assert result["ttft_p50_s"] == pytest.approx(result["ttft_p99_s"], rel=1e-9)    # one context pass for all


def test_the_per_device_metric_divides_the_replicas_tokens_by_its_devices(v, tmp_path: Path) -> None:
    """`output_tokens_per_s_per_device` is the simulated row's tokens_per_s_per_device: at tp 2 half the
    replica's output tokens per second."""
    assert v.SERVING_METRICS["output_tokens_per_s_per_device"] == ("tokens_per_s_per_device", 1.0)
    row = dict.fromkeys(v.SERVING, "")
    row.update(row_id="X1", run="tiny tp2", preset="tiny", dtype="bfloat16", hardware="a100-80gb", n_devices=2, tp=2,
               pp=1, intra_node="nvlink3", inter_node="ib-hdr200x8", request_rate="offline", context=64,
               requests=8, input_len=16, output_len=8, scheduler="static", max_num_seqs=8, max_batched_tokens=128,
               kv_block_tokens=16, memory_utilization=0.9, metric="output_tokens_per_s_per_device", published=1.0,
               source="test")
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    [case] = v.serving_cases(path)
    outcome = v.run_serving_case(case)
    assert outcome.result is not None
    assert outcome.predicted == pytest.approx(outcome.result["output_tokens_per_s"] / 2, rel=1e-12)


def test_the_parallel_block_column_reaches_the_model(v) -> None:
    """GPT-J's attention and MLP off one LayerNorm: a serving row's `parallel_block` becomes the scenario's
    workload.model.parallel_block; blank leaves the key out (the model's default, false)."""
    rows = {r["row_id"]: r for r in v.read_serving_runs(TABLE)}
    assert v.serving_scenario(rows["TB09"])[0]["workload"]["model"]["parallel_block"] is True
    assert "parallel_block" not in v.serving_scenario(rows["TB01"])[0]["workload"]["model"]


def test_the_v05_rows_price_tensorrt_llms_mmha_kernel_and_the_later_rows_do_not(v) -> None:
    """TensorRT-LLM v0.5's generation kernel reads a GQA cache once per query head: the v0.5 rows TB01-TB16
    (H200launch, H100vsA100: 'TensorRT-LLM v0.5.0' in their assumptions) carry `attention: trtllm-mmha` into the
    scenario's backend; the v0.7a and v0.8a rows (improved GQA kernels, XQA) keep the default."""
    v05 = {f"TB{i:02d}" for i in range(1, 17)}
    for r in v.read_serving_runs(TABLE):
        if r["row_id"] in v05:
            assert "TensorRT-LLM v0.5.0" in str(r["assumptions"]) and r["attention"] == "trtllm-mmha", r["row_id"]
        else:
            assert "v0.5.0" not in str(r["run"]) and not r["attention"], r["row_id"]
        if r["skip_reason"] is None:
            backend = v.serving_scenario(r)[0]["backends"]["roofline"]
            assert backend.get("attention") == (r["attention"] or None), r["row_id"]
