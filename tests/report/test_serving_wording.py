"""Serving rows are described as serving (issue 15 leftovers): the report header said "serve, batch 256 ×
8192 tokens" (the traced reference, not the workload), and the summary set "2 requests/s offered: 1.7
served" side by side without saying that every request was served and the rate is over a window that
includes the drain."""

from __future__ import annotations

import pandas as pd

from llmsim.report.run import workload_text
from llmsim.report.summary import served_text

SCENARIO = {"serving": {"arrival": {"kind": "poisson", "rate": [2, 8]}, "lengths": {"input": 467, "output": 256},
                        "scheduler": {"kind": "continuous", "max_num_seqs": 256, "max_batched_tokens": 8192},
                        "replicas": 1}}


def _frame() -> pd.DataFrame:
    return pd.DataFrame([dict(mode="serve", batch=256, seq_len=8192, dtype="bfloat16", params=8.03e9,
                              request_rate=r, scheduler="continuous", replicas=1) for r in (2.0, 8.0)])


def test_the_header_of_a_serving_run_shows_the_serving_workload_not_a_batch() -> None:
    text = workload_text(_frame(), SCENARIO)
    assert text == ("serving: poisson arrivals at 2, 8 requests/s, 467 → 256 tokens (prompt → output), continuous "
                    "scheduler (max 256 sequences, 8,192 tokens per iteration), 1 replica, bfloat16, 8.03G parameters")
    assert "batch" not in text


def test_an_fp8_kv_cache_is_named_in_the_header_and_auto_is_not() -> None:
    fp8 = {"serving": {**SCENARIO["serving"], "kv_cache_dtype": "float8"}}
    assert workload_text(_frame(), fp8).endswith("1 replica, bfloat16, KV cache float8, 8.03G parameters")
    auto = {"serving": {**SCENARIO["serving"], "kv_cache_dtype": "auto"}}
    assert "KV cache" not in workload_text(_frame(), auto)


def test_length_distributions_and_traces_are_named() -> None:
    scenario = {"serving": {"arrival": {"kind": "gamma"}, "lengths": {
        "input": {"kind": "uniform", "min": 100, "max": 500},
        "output": {"kind": "lognormal", "median": 200, "sigma": 0.5}}}}
    assert "100–500 (uniform) → median 200 (lognormal, σ 0.5) tokens" in workload_text(_frame(), scenario)
    trace = {"serving": {"arrival": {"kind": "trace", "path": "t.jsonl"}}}
    assert "serving: trace arrivals at 2, 8 requests/s, lengths from the trace" in workload_text(_frame(), trace)


def test_the_summary_says_what_happened_to_every_request_and_over_which_window() -> None:
    row = dict(requests_per_s=1.71, requests_sent=200, requests_done=190, requests_rejected=6,
               duration_s=117.0, arrival_span_s=99.5)
    assert served_text(row) == ("190 of 200 requests served (6 rejected, 4 unfinished) at 1.71 requests/s over "
                                "117 s, first arrival to last token (99.5 s of arrivals, then 17.5 s for the requests still "
                                "running after the last arrival to finish)")


def test_the_report_names_disaggregation_and_speculation() -> None:
    """The trial: a 1P1D run read '1 replica' beside a colocated run's '2 replicas' on the same two devices, and a
    speculative run's report never said so."""
    import pandas as pd

    from llmsim.report.run import serving_text
    frame = pd.DataFrame([{"request_rate": 2.0, "scheduler": "chunked-prefill", "replicas": 2}])
    pd_text = serving_text(frame, {"serving": {"replicas": 1, "disaggregation": {
        "prefill": {"replicas": 1, "tp": None}, "decode": {"replicas": 2, "tp": 4}}}})
    assert "disaggregated 1P + 2D tp4" in pd_text and "replica" not in pd_text
    # a side's own expert layout is named, so runs differing only there read apart (trial 23b)
    layout_text = serving_text(frame, {"serving": {"disaggregation": {
        "prefill": {"replicas": 1, "tp": 8, "attention_dp": 8}, "decode": {"replicas": 1, "tp": 8, "ep": 8}}}})
    assert "disaggregated 1P tp8 adp8 + 1D tp8 ep8" in layout_text
    spec_text = serving_text(frame, {"serving": {"replicas": 1, "speculative": {
        "method": "eagle", "num_draft_tokens": 3, "acceptance": 0.8}}})
    assert spec_text.endswith("1 replica, speculative eagle k=3 (acceptance 0.8)")
