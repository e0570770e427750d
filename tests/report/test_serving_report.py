"""The serving figures (latency and goodput against load) and the serving section of a run report."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsim.report import figures as F
from llmsim.report.build import write_report
from llmsim.results import Result, ResultStore, rows_frame
from tests.report.helpers import row


def _serving(case: str, rate: float, backend: str = "roofline", ttft: float = 0.02, tpot: float = 0.006,
             served: float | None = None) -> Result:
    served = rate if served is None else served
    return Result(scenario="serve-test", case=case, backend=backend, kind="modeled", hardware="h100-sxm",
                  strategy=case.split("@")[0], mode="serve", batch=256, seq_len=8192, dtype="bfloat16",
                  n_devices=1, request_rate=rate, requests_per_s=served, output_tokens_per_s=served * 256,
                  tokens_per_s=served * 256, ttft_p50_s=ttft, ttft_p99_s=2 * ttft, tpot_p50_s=tpot,
                  tpot_p99_s=1.2 * tpot, goodput_rps=served * 0.9, slo_attainment=0.9,
                  extra={"slo_ttft_s": 0.5, "slo_tpot_s": 0.05, "slo_met": rate < 10})


def _frame(rows: list[Result]):
    return rows_frame([r.row() for r in rows])


def test_latency_and_goodput_are_drawn_against_the_offered_rate_with_the_slo() -> None:
    frame = _frame([_serving(f"tp1@rate={r}", r, ttft=0.01 * r) for r in (2, 8, 16)])
    fig, axes = F.serving_latency(frame)
    ttft_ax = axes[0][0]
    lines = {line.get_label(): line for line in ttft_ax.get_lines()}
    assert list(lines["tp1 (roofline) p50"].get_xdata()) == [2.0, 8.0, 16.0]
    assert list(lines["tp1 (roofline) p99"].get_ydata()) == pytest.approx([0.04, 0.16, 0.32])
    assert list(lines["SLO 500 ms"].get_ydata()) == [0.5, 0.5]
    fig, ax = F.serving_goodput(frame)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["offered = served", "tp1 (roofline) served", "tp1 (roofline) goodput"]


def test_a_run_without_serving_rows_has_no_serving_figure_or_section(tmp_path: Path) -> None:
    frame = _frame([row("single", step=0.1)])
    with pytest.raises(F.NoData, match="no serving case ran"):
        F.serving_latency(frame)
    store = ResultStore(tmp_path)
    store.add(row("single", step=0.1))
    write_report(tmp_path)
    assert "## Serving" not in (tmp_path / "report.md").read_text()


def test_a_serving_run_report_has_the_serving_section(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    for r in (2, 8, 16):
        store.add(_serving(f"tp1@rate={r}", r))
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Serving" in text and "figures/serving_latency.png" in text and "figures/serving_goodput.png" in text
    assert "tp1 served 3 rates; the highest that met the SLO: 8 requests/s." in text
