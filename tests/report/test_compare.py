"""Comparing runs: rows matched on (case, backend), percent differences against the first run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llmsim.report.build import write_comparison
from llmsim.report.metrics import pct_change
from tests.report.helpers import TOKENS, make_run, row


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cmp")
    before = make_run(tmp / "s" / "before", [
        row("dp", step=1.0, jpt=2.0, memory=10e9),
        row("pp", step=2.0, jpt=4.0, memory=8e9),
        row("big", step=4.0, memory=60e9),
        row("gone", step=1.0),
    ])
    after = make_run(tmp / "s" / "after", [
        row("dp", step=0.8, jpt=1.5, memory=10e9),                     # faster, less energy, same memory
        row("pp", step=2.5, jpt=4.0, memory=6e9),                      # slower, less memory
        row("big", status="does-not-fit", memory=90e9, error="needs 90.0 GB/device > 80.0 GB"),
        row("new", step=1.0),
    ])
    return write_comparison([before, after], tmp / "out")


def test_comparison_folder_shape(compared: Path) -> None:
    for name in ("report.md", "report.html", "comparison.csv", "runs.json", "figures/change.png",
                 "figures/throughput.png"):
        assert (compared / name).is_file(), name
    runs = json.loads((compared / "runs.json").read_text())
    assert [r["label"] for r in runs] == ["report-test/before", "report-test/after"]


def test_percent_differences_are_right(compared: Path) -> None:
    frame = pd.read_csv(compared / "comparison.csv").set_index("case")
    assert frame.loc["dp", "tokens_per_s@A"] == pytest.approx(TOKENS / 1.0)
    assert frame.loc["dp", "tokens_per_s_change_pct@B"] == pytest.approx(25.0)
    assert frame.loc["dp", "step_time_s_change_pct@B"] == pytest.approx(-20.0)
    assert frame.loc["dp", "joules_per_token_change_pct@B"] == pytest.approx(-25.0)
    assert frame.loc["dp", "peak_memory_bytes_per_device_change_pct@B"] == pytest.approx(0.0)
    assert frame.loc["pp", "tokens_per_s_change_pct@B"] == pytest.approx(-20.0)
    assert frame.loc["pp", "peak_memory_bytes_per_device_change_pct@B"] == pytest.approx(-25.0)
    # memory of a case that stopped fitting still compares; its speed does not
    assert frame.loc["big", "peak_memory_bytes_per_device_change_pct@B"] == pytest.approx(50.0)
    assert pd.isna(frame.loc["big", "tokens_per_s_change_pct@B"])
    assert frame.loc["gone", "status@B"] == "absent" and frame.loc["new", "status@A"] == "absent"


def test_report_shows_changes_and_status_changes(compared: Path) -> None:
    md = (compared / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "B against the baseline A:" in summary
    assert ("Throughput (tokens/s): median +2.5% over 2 matched cases (1 better, 1 worse; from −20.0% for pp on "
            "roofline to +25.0% for dp on roofline)") in summary
    # a change under 0.5% is not coloured, and the count says so (it read "0 better, 1 worse" for two cases)
    assert "over 3 matched cases (1 better, 1 worse, 1 within ±0.5%" in summary
    assert "big on roofline: ok in A, does-not-fit in B." in summary
    assert "gone on roofline: ok in A, absent in B." in summary
    assert "| dp | roofline | 512 | 640 | +25.0% |" in md
    assert "does-not-fit: needs 90.0 GB/device > 80.0 GB" in md
    page = (compared / "report.html").read_text()
    assert '<td class="num better" data-sort="25">+25.0%</td>' in page
    assert '<td class="num worse" data-sort="-20">\u221220.0%</td>' in page


def test_pct_change_handles_missing_and_zero() -> None:
    assert pct_change(2.0, 3.0) == pytest.approx(50.0)
    assert pct_change(None, 3.0) is None
    assert pct_change(float("nan"), 3.0) is None
    assert pct_change(0.0, 3.0) is None


def test_runs_from_different_hardware_compare_on_case_and_backend(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a100", [row("dp", step=1.0, hardware="a100-80gb")])
    b = make_run(tmp_path / "h100", [row("dp", step=0.5, hardware="h100-sxm")])
    frame = pd.read_csv(write_comparison([a, b], tmp_path / "out") / "comparison.csv")
    assert frame.loc[0, "tokens_per_s_change_pct@B"] == pytest.approx(100.0)


def _serving(case: str, rps: float, ttft_p99: float, tpot_p99: float, goodput: float):
    r = row(case, "cluster", step=None)
    return r.model_copy(update={"mode": "serve", "tokens_per_s": 100 * rps, "requests_per_s": rps,
                                "output_tokens_per_s": 100 * rps, "ttft_p50_s": ttft_p99 / 2,
                                "ttft_p99_s": ttft_p99, "tpot_p50_s": tpot_p99 / 2, "tpot_p99_s": tpot_p99,
                                "goodput_rps": goodput, "slo_attainment": goodput / rps})


def test_serving_runs_are_compared_on_their_own_metrics(tmp_path: Path) -> None:
    """Trial of 2026-12-01: two serving runs compared on tokens/s, memory and energy only, with empty Step time and
    MFU sections. Now requests/s, TTFT, TPOT, goodput and SLO attainment, and no section a serving row lacks."""
    before = make_run(tmp_path / "s" / "a", [_serving("tp1@rate=4", 4.0, 0.20, 0.020, 3.0)])
    after = make_run(tmp_path / "s" / "b", [_serving("tp1@rate=4", 4.0, 0.10, 0.025, 3.6)])
    folder = write_comparison([before, after], tmp_path / "out")
    md = (folder / "report.md").read_text()
    for title in ("Requests per second", "TTFT p99", "TPOT p99", "Goodput (requests/s meeting the SLO)",
                  "SLO attainment"):
        assert f"## {title}" in md, title
    assert "## Step time" not in md and "## MFU" not in md and "No run reports this metric" not in md
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "TTFT p99: median −50.0%" in summary and "TPOT p99: median +25.0%" in summary
    assert "Goodput (requests/s meeting the SLO): median +20.0%" in summary
    assert "Fastest strategy" not in summary  # a serving row's tokens/s is its offered load's, not a ranking
    frame = pd.read_csv(folder / "comparison.csv")
    assert frame.loc[0, "ttft_p99_s_change_pct@B"] == pytest.approx(-50.0)
    assert "mfu@A" not in frame and "step_time_s@B" not in frame  # no column of a metric no row has


def test_a_serving_run_compared_with_a_step_run_is_said(tmp_path: Path) -> None:
    """Trial of 2026-12-01: a training run against a serving run gave a report of A-only tables and no word why."""
    step = make_run(tmp_path / "s" / "a", [row("dp", step=1.0, jpt=2.0, memory=10e9)])
    served = make_run(tmp_path / "s" / "b", [_serving("tp1@rate=4", 4.0, 0.20, 0.020, 3.0)])
    md = (write_comparison([step, served], tmp_path / "out") / "report.md").read_text()
    assert "B is a serving run and A not: their rows share no case" in md


def _rated(run: Path, rates: object) -> Path:
    """The run's saved scenario with a serving block of these rates (`llmsim run` saves the resolved scenario)."""
    import yaml
    saved = yaml.safe_load((run / "scenario.yaml").read_text())
    saved["workload"].pop("mode")   # a serving scenario's rows say mode serve, its workload has none
    saved["serving"] = {"requests": 60, "arrival": {"kind": "poisson", "rate": rates}, "lengths": {"input": 8,
                                                                                                  "output": 4}}
    (run / "scenario.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return run


def test_a_rate_run_alone_and_in_a_sweep_compare_by_strategy_backend_and_rate(tmp_path: Path) -> None:
    """Issue 16, item 3: a one-rate scenario names its case `tp1`, a sweep `tp1@rate=8`; the same (strategy, rate)
    run both ways said "no case ran in both". Serving rows whose names differ only by the sweep suffix match on
    (name without it, backend, rate); the names stay as the runs wrote them (resume and run folders use them)."""
    sweep = _rated(make_run(tmp_path / "s" / "sweep", [_serving("tp1@rate=4", 4.0, 0.20, 0.020, 3.0),
                                                      _serving("tp1@rate=8", 7.5, 0.40, 0.040, 6.0)]), [4, 8])
    alone = _rated(make_run(tmp_path / "s" / "alone", [_serving("tp1", 7.5, 0.20, 0.040, 6.0)]), [8])
    folder = write_comparison([sweep, alone], tmp_path / "out")
    frame = pd.read_csv(folder / "comparison.csv").set_index("case")
    assert list(frame.index) == ["tp1@rate=4", "tp1@rate=8"]
    assert frame.loc["tp1@rate=8", "status@B"] == "ok" and frame.loc["tp1@rate=4", "status@B"] == "absent"
    assert frame.loc["tp1@rate=8", "ttft_p99_s_change_pct@B"] == pytest.approx(-50.0)
    md = (folder / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "no case ran in both" not in summary and "TTFT p99: median −50.0% over 1 matched case" in summary
    assert "Matched by sweep point, the names differing only by the sweep suffix: tp1 on cluster in B = " \
           "tp1@rate=8 in A." in summary
    # the other way round: the baseline ran alone, the sweep is compared with it
    frame = pd.read_csv(write_comparison([alone, sweep], tmp_path / "back") / "comparison.csv").set_index("case")
    assert frame.loc["tp1", "ttft_p99_s_change_pct@B"] == pytest.approx(100.0)
    assert frame.loc["tp1@rate=4", "status@A"] == "absent"
    # another rate alone matches nothing: its rows stay apart
    other = _rated(make_run(tmp_path / "s" / "other", [_serving("tp1", 2.0, 0.1, 0.01, 2.0)]), 2)
    frame = pd.read_csv(write_comparison([sweep, other], tmp_path / "apart") / "comparison.csv")
    assert sorted(frame["case"]) == ["tp1", "tp1@rate=4", "tp1@rate=8"]


def test_the_attention_kernel_and_all_reduce_library_each_run_priced_with_are_compared(tmp_path: Path) -> None:
    """Two runs of the same cases priced with another attention kernel (and all-reduce library): comparison.csv has
    each run's values, the report a table of them (rows that differ first) and a summary line naming the change;
    a measured row (no kernel priced) shows –."""
    def priced(case: str, step: float, kernel: str | None, library: str | None, backend: str = "roofline"):
        r = row(case, backend, kind="modeled" if kernel else "measured", step=step)
        return r.model_copy(update={"attention_kernel": kernel, "all_reduce": library})

    a = make_run(tmp_path / "s" / "a", [priced("tp1", 1.0, "flash", "nccl"), priced("tp2", 1.0, "flash", "nccl"),
                                        priced("tp1", 1.1, None, None, "cuda")])
    b = make_run(tmp_path / "s" / "b", [priced("tp1", 0.9, "flash3", "nccl"), priced("tp2", 0.9, "flash", "vllm"),
                                        priced("tp1", 1.1, None, None, "cuda")])
    out = write_comparison([a, b], tmp_path / "out")
    frame = pd.read_csv(out / "comparison.csv").set_index(["case", "backend"])
    assert list(frame.loc[("tp1", "roofline"), ["attention_kernel@A", "attention_kernel@B"]]) == ["flash", "flash3"]
    assert list(frame.loc[("tp2", "roofline"), ["all_reduce@A", "all_reduce@B"]]) == ["nccl", "vllm"]
    assert frame.loc[("tp1", "cuda"), ["attention_kernel@A", "all_reduce@B"]].isna().all()
    md = (out / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "The attention kernel differs: flash in A, flash3 in B, for 1 matched case (tp1 on roofline)" in summary
    assert "The all-reduce library differs: nccl in A, vllm in B, for 1 matched case (tp2 on roofline)" in summary
    table = md.split("## What the rows were priced with or ran", 1)[1].split("\n## ", 1)[0]
    assert ("| case | backend | attention kernel A | attention kernel B | all-reduce library A | all-reduce library B |"
            in table)
    assert "| tp1 | roofline | flash | flash3 | nccl | nccl |" in table and "| tp1 | cuda |" not in table


def test_the_training_recipe_each_run_priced_with_is_compared(tmp_path: Path) -> None:
    """A training run priced with torch's foreach AdamW and no fp32 master against one with the defaults (fused,
    fp32 master): the comparison names both changes; the recipe columns stay out of the table where no run has them."""
    def trained(step: float, optimizer: str, master: bool):
        return row("tp1", "roofline", kind="modeled", step=step).model_copy(
            update={"attention_kernel": "flash", "optimizer": optimizer, "master_weights": master})

    out = write_comparison([make_run(tmp_path / "s" / "a", [trained(1.0, "fused", True)]),
                            make_run(tmp_path / "s" / "b", [trained(1.1, "foreach", False)])], tmp_path / "out")
    frame = pd.read_csv(out / "comparison.csv").set_index(["case", "backend"])
    assert list(frame.loc[("tp1", "roofline"), ["optimizer@A", "optimizer@B"]]) == ["fused", "foreach"]
    md = (out / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "The optimizer differs: fused in A, foreach in B, for 1 matched case (tp1 on roofline)" in summary
    assert "The fp32 master copy differs: true in A, false in B" in summary
    table = md.split("## What the rows were priced with or ran", 1)[1].split("\n## ", 1)[0]
    assert "| tp1 | roofline | flash | flash | fused | foreach | true | false |" in table
    assert "all-reduce library" not in table


def test_runs_that_price_no_kernel_have_no_such_section(compared: Path) -> None:
    md = (compared / "report.md").read_text()
    assert "What the rows were priced with or ran" not in md and "differs:" not in md


def _with_lengths(run: Path, lengths: dict) -> Path:
    """The run's saved scenario given a serving block of these lengths."""
    import yaml
    saved = yaml.safe_load((run / "scenario.yaml").read_text())
    saved["workload"].pop("mode")   # a serving scenario's rows say mode serve, its workload has none
    saved["serving"] = {"requests": 60, "arrival": {"kind": "poisson", "rate": 4}, "lengths": lengths}
    (run / "scenario.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    return run


def test_runs_that_asked_for_different_work_are_said_and_runs_on_other_hardware_are_not(tmp_path: Path) -> None:
    """Trial 28: `llmsim report A B` said nothing when two serving runs served different lengths; a latency change
    between them is the prompts' as much as the system's. Another device for the same work is what a
    comparison is for, and is not flagged."""
    a = _with_lengths(make_run(tmp_path / "s" / "a", [_serving("tp1@rate=4", 4.0, 0.20, 0.020, 3.0)]),
                      {"input": 46, "output": 25})
    b = _with_lengths(make_run(tmp_path / "s" / "b", [_serving("tp1@rate=4", 4.0, 0.40, 0.020, 3.0)]),
                      {"input": 96, "output": 25})
    md = (write_comparison([a, b], tmp_path / "out") / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "The runs asked for different work" in summary
    assert "A: 46 → 25 tokens, 1M parameters" in summary and "B: 96 → 25 tokens, 1M parameters" in summary

    same = _with_lengths(make_run(tmp_path / "s" / "c", [_serving("tp1@rate=4", 4.0, 0.20, 0.020, 3.0)]),
                         {"input": 46, "output": 25})
    md = (write_comparison([a, same], tmp_path / "out2") / "report.md").read_text()
    assert "different work" not in md

    small = make_run(tmp_path / "t" / "a100", [row("dp", step=1.0, hardware="a100-80gb")])
    other_device = make_run(tmp_path / "t" / "h100", [row("dp", step=0.5, hardware="h100-sxm")])
    md = (write_comparison([small, other_device], tmp_path / "out3") / "report.md").read_text()
    assert "different work" not in md
    bigger = make_run(tmp_path / "t" / "big", [row("dp", step=2.0).model_copy(update={"batch": 8})])
    md = (write_comparison([small, bigger], tmp_path / "out4") / "report.md").read_text()
    assert "A: train, batch 4 × 128 tokens, 1M parameters" in md and "B: train, batch 8 × 128 tokens" in md


def test_one_change_for_every_case_is_no_range(tmp_path: Path) -> None:
    """Trial 39: two cases that both got 10% slower were summarised 'from −9.1% for a to −9.1% for b'."""
    a = make_run(tmp_path / "s" / "a", [row("tp1", "roofline", kind="modeled", step=1.0),
                                        row("tp2", "roofline", kind="modeled", step=2.0)])
    b = make_run(tmp_path / "s" / "b", [row("tp1", "roofline", kind="modeled", step=1.1),
                                        row("tp2", "roofline", kind="modeled", step=2.2)])
    md = (write_comparison([a, b], tmp_path / "out") / "report.md").read_text()
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "over 2 matched cases" in summary and "; from " not in summary


def test_the_summary_names_the_scenario_keys_that_differ(tmp_path: Path) -> None:
    """Trial 41: a comparison of max_num_seqs 256 against 8 named the change only inside the Runs table."""
    import pandas as pd

    from llmsim.report.compare import MAX_SCENARIO_DIFFERENCES, scenario_points
    from llmsim.report.run import Run

    base = {"name": "s", "serving": {"scheduler": {"kind": "continuous", "max_num_seqs": 256}},
            "strategies": [{"name": "tp1", "tp": 1}]}
    changed = {"name": "s", "serving": {"scheduler": {"kind": "continuous", "max_num_seqs": 8}},
               "strategies": [{"name": "tp1", "tp": 1}], "seed": 3}
    runs = [Run(tmp_path / x, pd.DataFrame(), scenario=sc) for x, sc in (("a", base), ("b", changed), ("c", base),
                                                                         ("d", {}))]
    b, c = scenario_points(runs, ["A", "B", "C", "D"])
    assert b.text == "B's scenario differs from A's in 2 keys:"
    assert b.details == ["serving.scheduler.max_num_seqs: 256 in A, 8 in B", "seed: absent in A, 3 in B"]
    assert c.text.startswith("C's scenario is A's, unchanged")   # D's has no saved scenario: no point
    many = {"name": "s", **{f"k{i}": i for i in range(MAX_SCENARIO_DIFFERENCES + 2)}}
    [point] = scenario_points([runs[0], Run(tmp_path / "e", pd.DataFrame(), scenario=many)], ["A", "B"])
    assert point.text.endswith("in 12 keys (4 more not listed):") and len(point.details) == MAX_SCENARIO_DIFFERENCES


def test_the_summary_says_why_a_serving_run_moved_where_its_limits_differ(tmp_path: Path) -> None:
    """Trial 41: a comparison of max_num_seqs 256 against 8 said which key changed, not that B's running batch sat at
    its limit of 8 (A's never reached 256) nor that a KV cache filled. summary.serving_limits reads both off the
    row; the comparison lists the cases where they differ from the baseline's."""
    import pandas as pd

    from llmsim.report.compare import serving_limit_points
    from llmsim.report.run import Run
    from llmsim.report.summary import serving_limits

    def served(case: str, batch: int, full: int, preemptions: int = 0, kv: float = 0.3) -> dict:
        return {"case": case, "backend": "cluster", "mode": "serve", "status": "ok", "batch": batch,
                "iterations_at_max_num_seqs": full, "preemptions": preemptions, "rejected_kv_cache": 0,
                "kv_peak_utilization": kv}

    a = pd.DataFrame([served("tp1@rate=2", 256, 0), served("tp1@rate=8", 256, 0)])
    b = pd.DataFrame([served("tp1@rate=2", 8, 12), served("tp1@rate=8", 8, 0, preemptions=3, kv=1.0)])
    assert serving_limits(a.iloc[0]) == {}   # trial 45: a batch that touched its limit, nobody waiting: not held
    assert serving_limits(b.iloc[1]) == {"kv": "the KV cache filled (peak 100.0%, 3 preemptions)"}
    measured = {k: v for k, v in served("x", 8, 0).items() if k != "iterations_at_max_num_seqs"}
    assert serving_limits(pd.Series(measured)) == {}   # a measured row has no count: not judged
    # trial 44: max_num_seqs 8 in A against 16 in B holds both back, by other limits: that is said too; a KV cache
    # that filled in both, with other preemption counts, is not
    c = pd.DataFrame([served("tp1@rate=2", 16, 3), served("tp1@rate=8", 256, 0, preemptions=9, kv=1.0),
                      served("tp1@rate=16", 8, 40)])
    d = pd.DataFrame([served("tp1@rate=2", 8, 30), served("tp1@rate=8", 256, 0, preemptions=2, kv=1.0),
                      served("tp1@rate=16", 8, 90)])   # the same limit, another count of iterations: no line
    [other] = serving_limit_points([Run(tmp_path / "c", c), Run(tmp_path / "d", d)], ["A", "B"])
    assert other.details == ["tp1@rate=2 on cluster: in B the running batch was full at max_num_seqs (8) with "
                             "requests waiting, in 30 iterations; in A the running batch was full at max_num_seqs "
                             "(16) with requests waiting, in 3 iterations"]
    runs = [Run(tmp_path / "a", a), Run(tmp_path / "b", b), Run(tmp_path / "c", a)]
    [point] = serving_limit_points(runs, ["A", "B", "C"])   # C's limits are A's: no point
    assert point.text == "Why B's serving figures differ from A's: what held the rate back differs in 2 cases:"
    assert point.details == [
        "tp1@rate=2 on cluster: in B the running batch was full at max_num_seqs (8) with requests waiting, in 12 "
        "iterations; in A neither limit (the device or the arrivals set the pace)",
        "tp1@rate=8 on cluster: in B the KV cache filled (peak 100.0%, 3 preemptions); in A neither limit (the "
        "device or the arrivals set the pace)"]


def test_a_status_change_of_many_cases_is_one_point() -> None:
    """Trial 43: 26 bullets 'X on roofline: ok in A, absent in B' repeated the 'Not run or not fitting' table."""
    from llmsim.report.compare import MAX_STATUS_POINTS, status_points

    n = MAX_STATUS_POINTS + 3
    frame = pd.DataFrame({"case": [f"s{i}" for i in range(n)] + ["big"], "backend": "roofline",
                          "status@A": ["ok"] * n + ["ok"], "status@B": ["absent"] * n + ["does-not-fit"]})
    points = status_points(frame, ["A", "B"])
    assert [p.text for p in points] == [
        f"{n} cases ok in A, absent in B: s0 on roofline, s1 on roofline, s2 on roofline, … (3 more); each is in "
        "\"Not run or not fitting\" below.",
        "big on roofline: ok in A, does-not-fit in B."]
