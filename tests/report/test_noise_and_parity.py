"""Reports that tell the truth about what was compared (issue 15 items 9 and 10).

* A model error exists only between a measured and a modeled row of the same hardware: the quickstart's
  report led with "median error 99.1%", a CPU step against an A100 prediction.
* Measured rows carry their spread (p10–p90 of the timed steps); a difference inside it is "within
  noise", in a run's summary and in a comparison: two runs of the same quickstart compared as "+25.7%",
  and sharing-cpu named untied embeddings 1.36× faster than tied with the same FLOPs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer

from llmsim.report import figures as F
from llmsim.report import tables as T
from llmsim.report.build import write_comparison, write_report
from llmsim.report.metrics import noise
from llmsim.report.run import load_run
from llmsim.report.summary import summarize
from tests.report.helpers import make_run, row


def measured(case: str, step: float, p10: float, p90: float, hardware: str = "cpu-host"):
    r = row(case, "cpu", kind="measured", step=step, hardware=hardware, jpt=0.1 * step)
    return r.model_copy(update={"step_time_p10_s": p10, "step_time_p90_s": p90})


def summary_text(rows) -> str:
    frame = load_run(Path("."), __import__("pandas").DataFrame([r.row() for r in rows])).frame
    return "\n".join(p.text + " " + " ".join(p.details) for p in summarize(frame))


# ------------------------------------------------------------------------------------------ item 9
def test_a_measurement_and_a_prediction_of_different_hardware_are_not_a_model_error(tmp_path: Path) -> None:
    rows = [measured("single", 11.8, 9.9, 13.9), row("single", step=0.122, hardware="a100-80gb")]
    text = summary_text(rows)
    assert "median error" not in text and "error 99" not in text
    assert ("No model error: the measured rows ran on cpu-host and the modeled rows model a100-80gb: different "
            "machines, so their ratio is not a model error.") in text
    run = make_run(tmp_path / "r", rows)
    frame = load_run(run).frame
    with pytest.raises(F.NoData, match="different machines"):
        F.parity(frame)
    table = T.parity_table(frame)
    assert table is not None and table.rows[0][-1].text.startswith("none: other hardware (ratio 96.7")
    write_report(run)
    md = (run / "report.md").read_text()
    assert "−99.0%" not in md and "-99.0%" not in md


def test_one_case_run_in_two_layouts_is_not_a_model_error(tmp_path: Path) -> None:
    """A strategy without dp fills each backend's devices: dp 1 on the one-CPU measured backend, dp 2 on a
    2-device roofline of the same CPU (trial 46). Their step times differ by design: no error, the layouts
    named, no parity figure."""
    rows = [measured("single", 10.0, 9.0, 11.0),
            row("single", step=5.5, hardware="cpu-host", n=2)]
    text = summary_text(rows)
    assert "median error" not in text
    assert ("No model error: the measured and modeled rows of single (n_devices 1 vs 2, dp 1 vs 2) ran different "
            "layouts") in text and "state dp" in text
    run = make_run(tmp_path / "r", rows)
    frame = load_run(run).frame
    with pytest.raises(F.NoData, match="different layouts"):
        F.parity(frame)
    table = T.parity_table(frame)
    assert table is not None
    assert table.rows[0][-1].text == "none: other layout (n_devices 1 vs 2, dp 1 vs 2; ratio 1.82×)"
    same = [measured("single", 10.0, 9.0, 11.0), row("single", step=11.0, hardware="cpu-host")]
    assert "median error 10.0%" in summary_text(same)          # one layout: the error is the model's


def test_a_calibrated_entry_models_the_device_it_was_fitted_to() -> None:
    rows = [measured("single", 10.0, 9.0, 11.0), row("single", step=11.0, hardware="cpu-host-calibrated")]
    assert "Model against measurement on the same hardware: median error 10.0% (worst 10.0%) over 1 case" \
        in summary_text(rows)


# ----------------------------------------------------------------------------------------- item 10
def test_overlapping_spreads_are_within_noise_and_separate_ones_are_not() -> None:
    a = measured("x", 10.0, 9.0, 11.0)
    assert noise(a.row(), measured("x", 12.0, 10.5, 14.0).row())       # 9-11 and 10.5-14 overlap
    assert not noise(a.row(), measured("x", 13.0, 12.0, 14.0).row())   # 9-11 and 12-14 do not
    assert not noise(row("x", step=10.0).row(), row("x", step=10.1).row())  # modeled: no noise to hide in


def test_a_strategy_inside_the_winners_noise_is_not_named_slower() -> None:
    text = summary_text([measured("tied", 10.0, 9.0, 13.0), measured("untied", 13.6, 12.5, 15.0),
                         measured("albert", 30.0, 29.0, 31.0)])
    assert "the fastest strategy that fits is tied" in text and "p10–p90 9 s–13 s" in text
    assert "Within its noise: untied" in text
    assert "untied: within noise of tied (1.36× by the mean step, but their step-time p10–p90 ranges overlap" in text
    assert "albert: 3.00× slower" in text


def test_a_ranking_with_rows_timed_on_a_busy_host_says_so() -> None:
    """The trial of 2026-12-01: moe-cpu's single-process case, timed beside other jobs, took 4.85 s a step against
    47 ms on a quiet host, and the summary named dp2 the fastest without a word on the load."""
    busy = measured("single", 4.85, 4.5, 5.2)
    busy = busy.model_copy(update={"extra": {"host_load_per_core": 4.2}})
    quiet = measured("dp2", 0.035, 0.034, 0.036).model_copy(update={"extra": {"host_load_per_core": 0.4}})
    text = summary_text([busy, quiet])
    assert "the fastest strategy that fits is dp2" in text
    assert "single was timed while the host was busy (load above 1 per core)" in text, text
    assert "dp2 was timed" not in text and "dp2, single" not in text
    assert "busy" not in summary_text([quiet])


def test_two_runs_of_the_same_case_compare_within_noise(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", [measured("single", 11.8, 9.9, 13.9), row("single", step=0.122)])
    b = make_run(tmp_path / "b", [measured("single", 9.4, 8.9, 11.0), row("single", step=0.122)])
    c = make_run(tmp_path / "c", [measured("single", 5.0, 4.8, 5.2), row("single", step=0.122)])
    md = (write_comparison([a, b], tmp_path / "ab") / "report.md").read_text()
    assert "+25.5% (within noise)" in md  # tokens/s 11.8/9.4 - 1, shown, but not coloured as a finding
    assert "Throughput (tokens/s): unchanged in 2 matched cases (1 within the measured noise, their step-time " \
           "p10–p90 ranges overlap; 1 within ±0.5%)." in md
    md = (write_comparison([a, c], tmp_path / "ac") / "report.md").read_text()
    assert "Throughput (tokens/s): median" in md and "(1 better, 0 worse)" in md and "within noise)" not in md


def test_the_report_shows_the_spread(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", [measured("single", 11.8, 9.9, 13.9), row("single", step=0.122)])
    frame = load_run(run).frame
    table = T.results_table(frame)
    at = table.columns.index("step p10–p90")
    assert table.columns[at - 1] == "step time"
    assert [r[at].text for r in table.rows] == ["9.9 s–13.9 s", "–"]
    fig, axes = F.throughput(frame)
    bars = [c for ax in axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1  # the measured panel only; a modeled row has no spread


def test_a_speed_up_beyond_the_device_ratio_is_flagged_not_credited_to_the_strategy() -> None:
    """Trial of 2026-12-01: moe-cpu's single process was starved on a loaded host (6.3 s per step) and dp2 on 2
    processes took 85 ms; the summary ranked dp2 first with no word on a 74x speed-up from 2x the devices."""
    def on(n: int, case: str, step: float):
        r = measured(case, step, 0.9 * step, 1.1 * step)
        return r.model_copy(update={"n_devices": n, "dp": n, "tokens_per_s": 512 / step})
    text = summary_text([on(1, "single", 6.29), on(2, "dp2", 0.085)])
    assert "dp2 ran 74.0× faster than single on 2× its devices" in text
    assert "rerun single with `threads: 1`" in text
    fair = summary_text([on(1, "single", 0.16), on(2, "dp2", 0.085)])  # 1.9x on 2x the devices: no flag
    assert "its devices" not in fair


def test_the_summary_points_to_the_scaling_figure_only_when_it_is_drawn() -> None:
    """A strategy on one device count beside others on another: the tables compare them, the scaling figure
    (a curve per strategy over two or more counts) has nothing to draw (moe-cpu's report said otherwise)."""
    def on(n: int, case: str, step: float, strategy: str | None = None):
        r = measured(case, step, 0.9 * step, 1.1 * step)
        return r.model_copy(update={"n_devices": n, "dp": n, "strategy": strategy or case})
    alone = summary_text([on(1, "single", 0.2), on(2, "dp2", 0.1), on(2, "ep2", 0.11)])
    assert "1 more case ran on other device counts (1): see the tables." in alone
    swept = summary_text([on(1, "dp@1", 0.2, "dp"), on(2, "dp@2", 0.1, "dp"), on(2, "ep2", 0.11)])
    assert "see the tables and the scaling figure." in swept


def test_threads_1_is_advised_only_to_a_case_that_did_not_run_one_thread() -> None:
    """Trial 46: the summary said "rerun ... with `threads: 1`" of a scenario that already set `threads: 1`."""
    def on(n: int, case: str, step: float, threads: int | None, load: float = 3.0):
        r = measured(case, step, 0.9 * step, 1.1 * step)
        extra = {"host_load_per_core": load, **({} if threads is None else {"threads": threads})}
        return r.model_copy(update={"n_devices": n, "dp": n, "tokens_per_s": 512 / step, "extra": extra})
    followed = summary_text([on(1, "single", 6.29, 1), on(2, "dp2", 0.085, 1)])
    assert "threads: 1" not in followed
    assert "rerun single on a quiet host (it already ran with one thread)." in followed
    assert "were timed while the host was busy" in followed and "rerun there (they already ran with one thread)." \
        in followed
    for threads in (2, None):   # more threads, or a row that does not say
        advised = summary_text([on(1, "single", 6.29, threads), on(2, "dp2", 0.085, 1)])
        assert "rerun single with `threads: 1` or on a quiet host." in advised
        assert "rerun there, or with `threads: 1`." in advised
