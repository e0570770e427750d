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
    # a serving row has no step breakdown, devices sweep or pipeline trace: those sections were empty (trial 23)
    for step_only in ("## Where the time goes", "## Scaling", "## Pipeline timeline"):
        assert step_only not in text
    assert not (tmp_path / "figures" / "gantt.png").exists()


def test_a_run_of_steps_and_serving_rows_keeps_the_step_sections(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.add(row("single", step=0.1))
    store.add(_serving("tp1@rate=2", 2))
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Serving" in text and "## Where the time goes" in text and "## Scaling" in text


def test_a_closed_loop_run_report_names_its_clients_and_the_rate_achieved(tmp_path: Path) -> None:
    """Closed-loop rows (arrival kind concurrency): request_rate is the rate achieved, concurrency the clients;
    the summary says so instead of "offered", and groups the client counts under one strategy."""
    store = ResultStore(tmp_path)
    for clients, rate in ((1, 2.5), (8, 12.0)):
        store.add(_serving(f"tp1@clients={clients}", rate).model_copy(update={"concurrency": clients}))
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "tp1 served 2 client counts" in text
    assert "1 client (2.5 requests/s achieved)" in text and "8 clients (12 requests/s achieved)" in text
    # trial 44: the best of a closed loop is its client count, not the rate it achieved
    assert "; the most clients that met the SLO: 1 client." in text, text   # 12 requests/s misses (_serving)
    assert "requests/s offered" not in text


def test_the_knee_marks_the_highest_rate_that_met_the_slo_on_both_panels() -> None:
    frame = _frame([_serving(f"tp1@rate={r}", r, ttft=0.01 * r) for r in (2, 8, 16)])   # slo_met: rate < 10
    assert F.knee_rate(F.serving_rows(frame)) == 8.0
    fig, axes = F.serving_knee(frame)
    latency, goodput = axes[0]
    for ax in (latency, goodput):
        knees = [line for line in ax.get_lines() if line.get_linestyle() == "-."]
        assert len(knees) == 1 and list(knees[0].get_xdata()) == [8.0, 8.0]
    lines = {line.get_label(): line for line in goodput.get_lines()}
    assert "tp1 (roofline): highest rate meeting the SLO 8 requests/s" in lines
    assert list(lines["tp1 (roofline) goodput"].get_ydata()) == pytest.approx([1.8, 7.2, 14.4])
    assert list({line.get_label(): line for line in latency.get_lines()}["SLO 500 ms"].get_ydata()) == [0.5, 0.5]


def test_no_rate_meeting_the_slo_is_said_and_no_slo_is_no_knee_figure() -> None:
    rows = [_serving(f"tp1@rate={r}", r).model_copy(update={"extra": {"slo_ttft_s": 0.5, "slo_met": False}})
            for r in (2, 8)]
    fig, axes = F.serving_knee(_frame(rows))
    assert "tp1 (roofline): no rate met the SLO" in [line.get_label() for line in axes[0][1].get_lines()]
    assert not [line for line in axes[0][0].get_lines() if line.get_linestyle() == "-."]
    plain = [r.model_copy(update={"extra": {}}) for r in rows]
    with pytest.raises(F.NoData, match="sets no slo"):
        F.serving_knee(_frame(plain))


def test_latency_cdfs_step_through_every_served_request_and_leave_rejections_out() -> None:
    import pandas as pd

    table = pd.DataFrame({"status": ["ok", "ok", "rejected", "ok"], "ttft_s": [0.3, 0.1, None, 0.2],
                          "tpot_s": [0.02, 0.01, None, None]})
    fig, axes = F.latency_cdf([("tp1@rate=2 (roofline)", table)], {"ttft_s": 0.25, "tpot_s": 0.05, "percentile": 90})
    ttft_ax, tpot_ax = axes[0]
    line = {l.get_label(): l for l in ttft_ax.get_lines()}["tp1@rate=2 (roofline)"]
    assert list(line.get_xdata()) == [0.1, 0.2, 0.3]
    assert list(line.get_ydata()) == pytest.approx([1 / 3, 2 / 3, 1.0])
    tpot = {l.get_label(): l for l in tpot_ax.get_lines()}["tp1@rate=2 (roofline)"]
    assert list(tpot.get_xdata()) == [0.01, 0.02]       # a one-token answer has no TPOT
    assert list({l.get_label(): l for l in ttft_ax.get_lines()}["SLO 250 ms"].get_xdata()) == [0.25, 0.25]
    with pytest.raises(F.NoData):
        F.latency_cdf([("x", table[table["status"] == "rejected"])])


def simulated_serving_run(tmp_path: Path) -> Path:
    """A roofline serving run of the tiny model at three rates whose SLO the middle one is the last to meet
    (its run folder); shared with the browser test."""
    from llmsim.config import parse_scenario
    from llmsim.plugins import get_plugin_manager
    from llmsim.registry import BackendRegistry
    from llmsim.runner import plan_cases, run_scenario

    data = {"name": "serve-figs", "workload": {"model": {"preset": "tiny"}, "dtype": "bfloat16"},
            "strategies": [{"name": "single"}],
            "serving": {"requests": 40, "arrival": {"kind": "poisson", "rate": [50, 400, 5000]},
                        "lengths": {"input": 32, "output": 12},
                        # p90 TTFT at the three rates, 0.27 / 0.36 / 0.39 ms on h100-sxm (10.0 us per kernel)
                        "slo": {"ttft_s": 0.000375, "tpot_s": 0.001, "percentile": 90}},
            "backends": {"roofline": {"hardware": "h100-sxm", "nodes": 1, "devices_per_node": 1}}}
    manager = get_plugin_manager()
    registry = BackendRegistry.from_manager(manager)
    scenario = parse_scenario(data, "serve.yaml")
    return run_scenario(scenario, registry, plan_cases(scenario, registry, "serve.yaml", scenario_dir=tmp_path),
                        tmp_path, manager=manager, scenario_dir=tmp_path).run_dir


def test_a_modeled_serving_run_report_draws_the_knee_the_cdfs_and_the_timeline_of_its_knee_case(
        tmp_path: Path) -> None:
    """End to end on the roofline: the simulation writes a timeline beside each request CSV, and the report
    draws the three figures, the timeline of the highest rate that met the SLO, named in its caption."""
    import csv

    from llmsim.results import read_rows

    run_dir = simulated_serving_run(tmp_path)
    rows = read_rows(run_dir)
    met = sorted(r["request_rate"] for r in rows if r["slo_met"])
    assert met and len(met) < 3, "the SLO must split the rates for this test to mean something"
    for row in rows:
        with open(run_dir / row["timeline_file"], newline="") as f:
            timeline = list(csv.DictReader(f))
        assert len(timeline) == row["iterations"]
        assert max(int(t["batch"]) for t in timeline) == row["max_batch"]
    write_report(run_dir)
    text = (run_dir / "report.md").read_text()
    for name in ("serving_knee", "latency_cdf", "serving_timeline"):
        assert f"figures/{name}.png" in text and (run_dir / "figures" / f"{name}.png").is_file()
    knee = f"single@rate={max(met):g} (roofline), the highest rate that met the SLO"
    assert f"{knee}: sequences in each iteration" in text
    assert "Cases: single@rate=50 (roofline), single@rate=400 (roofline), single@rate=5000 (roofline)." in text


def test_a_damaged_request_csv_is_named_in_the_caption_not_listed_as_drawn(tmp_path: Path) -> None:
    """Trial 31: a per-request CSV replaced by 'garbage' was left out of the latency CDFs silently while the
    caption still listed its case: the caption lists what is drawn and names what is not, with its file."""
    from llmsim.results import read_rows

    run_dir = simulated_serving_run(tmp_path)
    damaged = next(r for r in read_rows(run_dir) if r["request_rate"] == 400)
    (run_dir / damaged["requests_file"]).write_text("garbage\n1,2\n")
    write_report(run_dir)
    text = (run_dir / "report.md").read_text()
    assert (f"Cases: single@rate=50 (roofline), single@rate=5000 (roofline); not drawn, its per-request CSV "
            f"missing, unreadable or without status/ttft_s/tpot_s: single@rate=400 (roofline) "
            f"({damaged['requests_file']}).") in text


def test_a_closed_loops_client_counts_are_one_curve_against_the_achieved_rate() -> None:
    """The closed loop's cases are tp1@clients=N: one curve per strategy (not one point per client count), its
    x axis the rate achieved, and the timeline the highest rate that met the SLO (the summary's rule)."""
    from llmsim.report.build import timeline_case
    rows = [_serving(f"tp1@clients={n}", r).model_copy(update={"concurrency": n})
            for n, r in ((1, 0.5), (16, 6.4), (64, 15.4))]   # slo_met: rate < 10
    frame = _frame(rows)
    ((name, curve),) = F.serving_curves(F.serving_rows(frame))
    assert name == "tp1 (roofline)" and list(curve["request_rate"]) == [0.5, 6.4, 15.4]
    assert F.knee_rate(curve) == 6.4
    fig, axes = F.serving_latency(frame)
    assert axes[0][0].get_xlabel().startswith("achieved requests/s")
    frame["timeline_file"] = "requests/x.timeline.csv"
    chosen, why = timeline_case(frame)
    assert chosen["case"] == "tp1@clients=16" and why == "the highest rate that met the SLO"
