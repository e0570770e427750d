"""The capacity dev table (validation/serving_capacity.csv) in scripts/validate.py: every row loads and names its
source; a row is priced by the serving planner's own rate search (llmsim.planner.serve.rate_search), whose answer
meets the row's SLO while the first rate above it that the search tried does not; the SLO's run-level bounds
(pooled ITL percentile, queueing-delay percentile: Sarathi-Serve's capacity SLO) decide `slo_met`; bad cells are
one line with exit 2."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmsim.planner.serve import _Replica, rate_search, rented_devices, simulate_at
from llmsim.serving.spec import Slo
from tests.scripts.scriptload import load_script


@pytest.fixture(scope="module")
def v():
    return load_script("validate.py", "validate_capacity_under_test")


def _row(v, **values: object) -> dict[str, object]:
    """A tiny model on one A100 (numbers made up: the tests check the plumbing). Lengths well inside the context,
    so no request is rejected and the run-level bounds decide."""
    row = dict.fromkeys(v.CAPACITY, "")
    row.update(row_id="C1", run="tiny", engine="test", preset="tiny", dtype="bfloat16", hardware="a100-80gb",
               n_devices=1, tp=1, pp=1, context=128, input_median=12, input_p90=20, output_median=30, output_p90=45,
               duration_s=3, scheduler="chunked-prefill", max_num_seqs=1, max_batched_tokens=64, kv_block_tokens=16,
               memory_utilization=0.9, slo_itl_s=0.02, slo_itl_percentile=99, slo_queue_s=0.5,
               slo_queue_percentile=50, rate_start=100, rate_tolerance=0.1, metric="capacity_rps", published=100,
               source="test")
    row.update(values)
    return row


def _write(tmp_path: Path, rows: list[dict[str, object]], columns=None) -> Path:
    path = tmp_path / "capacity.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_capacity_table_loads_and_every_row_names_its_source(v) -> None:
    rows = v.read_capacity_runs(v.TABLES["capacity"].default)
    assert rows
    for r in rows:
        assert r["source"] and r["engine"] and r["assumptions"]
        assert r["skip_reason"] or r["published"] > 0


def test_lengths_are_lognormal_through_the_published_median_and_p90(v, tmp_path: Path) -> None:
    r = v.read_capacity_runs(_write(tmp_path, [_row(v)]))[0]
    lengths = v.capacity_lengths(r)
    for length in ("input", "output"):
        form = lengths[length]
        assert form["median"] == r[f"{length}_median"]
        assert form["median"] * math.exp(form["sigma"] * v.Z90) == pytest.approx(r[f"{length}_p90"])


def test_a_row_is_priced_by_the_planners_rate_search(v, tmp_path: Path) -> None:
    [case] = v.capacity_cases(_write(tmp_path, [_row(v)]))
    outcome = v.run_capacity_case(case)
    assert outcome.failure is None, outcome.failure
    direct, _ = rate_search(v.capacity_task(case.row))     # the one code path: the planner's own search
    assert outcome.predicted == direct.sustained_rate > 0
    assert outcome.error == pytest.approx(outcome.predicted / 100 - 1)


def test_the_searched_rate_meets_the_slo_and_the_rate_above_it_does_not(v, tmp_path: Path) -> None:
    [case] = v.capacity_cases(_write(tmp_path, [_row(v)]))
    task = v.capacity_task(case.row)
    out, _ = rate_search(task)
    assert out.at_sustained is not None and out.first_miss is not None
    tolerance = task.rate_tolerance
    assert out.sustained_rate < out.first_miss.rate <= out.sustained_rate / (1 - tolerance) * (1 + 1e-9)
    replica = _Replica(task, rented_devices(task.size, task.node.devices_per_node))
    assert simulate_at(task, replica, out.sustained_rate, 1).met
    above = simulate_at(task, replica, out.first_miss.rate, 1)
    assert not above.met
    # the run-level bounds are what the miss is about: no request is rejected in this row
    assert above.rejected == 0 and above.row["slo_attainment"] == 1.0


def test_run_level_bounds_decide_slo_met(v, tmp_path: Path) -> None:
    """Sarathi-Serve's SLO: the pooled ITL's P99 and the median queueing delay, not a share of good requests."""
    [case] = v.capacity_cases(_write(tmp_path, [_row(v)]))
    task = v.capacity_task(case.row)
    replica = _Replica(task, rented_devices(task.size, task.node.devices_per_node))
    loose = simulate_at(task, replica, 5.0, 1)
    assert loose.met
    itl_p99 = loose.row["itl_p99_s"]
    tight = task.spec.slo.model_copy(update={"itl_s": itl_p99 * 0.5})
    tight_task = replace(task, spec=task.spec.model_copy(update={"slo": tight}))
    run = simulate_at(tight_task, replica, 5.0, 1)
    assert not run.met and run.attainment == 1.0   # every request served, the ITL bound alone fails it


def test_a_rows_host_time_per_iteration_reaches_the_simulation(v, tmp_path: Path) -> None:
    """step_overhead_s / step_overhead_per_seq_s become the serving keys of the row's task; blank = the device
    entry's (0 on a100-80gb)."""
    rows = v.read_capacity_runs(_write(tmp_path, [_row(v), _row(v, row_id="C2", step_overhead_s=0.002,
                                                              step_overhead_per_seq_s=0.0001)]))
    plain, host = (v.capacity_task(r) for r in rows)
    assert plain.spec.host_step_on(plain.node.device).seconds(8) == 0.0
    assert host.spec.host_step_on(host.node.device).seconds(8) == pytest.approx(0.0028)


def test_every_capacity_row_runs_every_pass_eagerly(v, tmp_path: Path) -> None:
    """The capacity rows ran in the sarathi-serve artifact, which captures no CUDA graph: every pass of every
    scheduler is eager (serving.scheduler.eager all), at the device entry's host time per kernel."""
    (row,) = v.read_capacity_runs(_write(tmp_path, [_row(v)]))
    task = v.capacity_task(row)
    eager = task.spec.eager_launch_on(task.node.device)
    assert task.spec.scheduler.eager == "all" and eager.passes == "all" and eager.per_kernel_s > 0


def test_an_slo_needs_a_bound_and_percentiles_in_range() -> None:
    with pytest.raises(ValidationError, match="at least one bound"):
        Slo()
    with pytest.raises(ValidationError, match="percentile"):
        Slo(itl_s=0.1, itl_percentile=0)
    assert Slo(queue_s=2.0).queue_percentile == 50
    assert Slo(ttft_s=0.5, tpot_s=0.05).itl_s is None       # the per-request form is unchanged


@pytest.mark.parametrize(("change", "where"), [
    ({"scheduler": "fifo"}, "C1.scheduler"),
    ({"metric": "qps"}, "C1.metric"),
    ({"input_p90": 5}, "C1.input_p90"),
    ({"rate_tolerance": 2}, "C1.rate_tolerance"),
    ({"published": ""}, "C1.published"),
    ({"n_devices": 2}, "C1.n_devices"),
    ({"step_overhead_s": "-0.001"}, "C1.step_overhead_s"),
    ({"step_overhead_per_seq_s": "x"}, "C1.step_overhead_per_seq_s"),
])
def test_a_bad_cell_is_one_line_and_exit_2(v, tmp_path: Path, capsys, change, where) -> None:
    path = _write(tmp_path, [_row(v, **change)])
    assert v.main(["--table", "capacity", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and where in err and str(path) in err


def test_a_missing_column_is_one_line_and_exit_2(v, tmp_path: Path, capsys) -> None:
    columns = [c for c in v.CAPACITY if c != "slo_itl_s"]
    path = _write(tmp_path, [_row(v)], columns=columns)
    assert v.main(["--table", "capacity", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "slo_itl_s" in err and "missing column" in err


def test_the_table_prints_each_row_and_the_median_of_its_errors(v, tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, [_row(v), _row(v, row_id="C2", published=50),
                             _row(v, row_id="C3", skip_reason="not published", published="")])
    assert v.main(["--table", "capacity", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    [case] = v.capacity_cases(_write(tmp_path, [_row(v)]))
    predicted = v.run_capacity_case(case).predicted
    errors = sorted(abs(predicted / p - 1) for p in (100, 50))
    assert f"median |error| {sum(errors) / 2:.1%} over 2 rows" in out
    assert "C3" in out and "not published" in out


# ------------------------------------------------------------------ the source's lengths, caps and trial size


def _quantiles(tmp_path: Path, points: list[tuple[float, float, float]], name: str = "lengths.csv") -> str:
    """A length-quantile file (p, input_tokens, output_tokens) beside the table; its name relative to the table."""
    with (tmp_path / name).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["p", "input_tokens", "output_tokens"])
        writer.writerows(points)
    return name


# median 12 and P90 20 prompt tokens, output 30 and 45, as _row's
TINY_QUANTILES = [(0.0, 2, 5), (0.5, 12, 30), (0.9, 20, 45), (1.0, 40, 60)]


def test_a_quantile_file_replaces_the_lognormal_and_the_cap_filters_pairs(v, tmp_path: Path) -> None:
    name = _quantiles(tmp_path, TINY_QUANTILES)
    [plain, traced] = v.read_capacity_runs(_write(tmp_path, [
        _row(v, lengths_quantiles="", lengths_max_total="", requests=""),
        _row(v, row_id="C2", lengths_quantiles=name, lengths_max_total=70)]))
    assert v.capacity_lengths(plain)["input"]["kind"] == "lognormal" and "max_total" not in v.capacity_lengths(plain)
    lengths = v.capacity_lengths(traced)
    assert lengths["input"] == {"kind": "quantiles", "points": [[p, i] for p, i, _ in TINY_QUANTILES]}
    assert lengths["output"] == {"kind": "quantiles", "points": [[p, o] for p, _, o in TINY_QUANTILES]}
    assert lengths["max_total"] == 70
    # the task's request list never holds a pair over the cap, and some pairs were over it before the cap
    from llmsim.serving.requests import draw_lengths
    from llmsim.serving.spec import Lengths
    capped = draw_lengths(v.capacity_task(traced).spec.lengths, 2000, 0)
    assert max(a + b for a, b in capped) <= 70
    uncapped = draw_lengths(Lengths.model_validate({k: lengths[k] for k in ("input", "output")}), 2000, 0)
    assert max(a + b for a, b in uncapped) > 70


def test_requests_per_probe_replace_the_span(v, tmp_path: Path) -> None:
    """`requests` (the source's trial size) in place of duration_s: every probe simulates that many requests."""
    [r] = v.read_capacity_runs(_write(tmp_path, [_row(v, duration_s="", requests=40)]))
    task = v.capacity_task(r)
    assert task.spec.requests == 40 and task.spec.duration_s is None
    replica = _Replica(task, rented_devices(task.size, task.node.devices_per_node))
    for rate in (5.0, 50.0):
        assert simulate_at(task, replica, rate, 1).row["requests_per_s"] is not None
        from llmsim.planner.serve import _case_at, _requests
        assert len(_requests(_case_at(task, rate, 1))) == 40


def test_requests_and_duration_together_stop_arrivals_at_whichever_comes_first(v, tmp_path: Path) -> None:
    """Both cells (the source's trial and its time limit): at a low rate the time binds (fewer than `requests`
    arrive, none at or after duration_s), at a high rate the count does; each list is a prefix of the one-limit
    list of the same seed, and every probe's list is the one its backend is given."""
    from llmsim.planner.serve import _case_at, _requests
    [r] = v.read_capacity_runs(_write(tmp_path, [_row(v, duration_s=3, requests=40)]))
    task = v.capacity_task(r)
    assert task.spec.requests == 40 and task.spec.duration_s == 3
    [by_count] = v.read_capacity_runs(_write(tmp_path, [_row(v, duration_s="", requests=40)]))
    count_task = v.capacity_task(by_count)
    slow, fast = _requests(_case_at(task, 5.0, 1)), _requests(_case_at(task, 50.0, 1))
    assert 1 < len(slow) < 40 and max(q.arrival_s for q in slow) < 3          # the time limit binds
    assert len(fast) == 40 and max(q.arrival_s for q in fast) < 3            # the count binds
    assert slow == _requests(_case_at(count_task, 5.0, 1))[:len(slow)]
    assert fast == _requests(_case_at(count_task, 50.0, 1))


@pytest.mark.parametrize(("change", "where", "what"), [
    ({"duration_s": "", "requests": ""}, "C1.duration_s", "or both"),              # neither
    ({"duration_s": 0, "requests": 40}, "C1.duration_s", "positive number"),      # both, one bad
    ({"duration_s": 3, "requests": 0}, "C1.requests", ">= 1"),
    ({"lengths_quantiles": "absent.csv"}, "C1.lengths_quantiles", "no such"),
    ({"lengths_quantiles": "QUANTILES", "input_median": 14}, "C1.input_median", "at p=0.5"),
    ({"lengths_quantiles": "QUANTILES", "output_p90": 50}, "C1.output_p90", "at p=0.9"),
    ({"lengths_quantiles": "BAD"}, "C1.lengths_quantiles", "not a length-quantile file"),
    ({"lengths_max_total": 0}, "C1.lengths_max_total", ">= 1"),
])
def test_a_bad_length_or_span_cell_is_one_line_and_exit_2(v, tmp_path: Path, capsys, change, where, what) -> None:
    """A row gives duration_s, requests or both; its quantile file exists, is a CDF, and agrees with its median and P90."""
    good = _quantiles(tmp_path, TINY_QUANTILES)
    bad = _quantiles(tmp_path, [(0.0, 5, 5), (0.5, 3, 30), (1.0, 40, 60)], "bad.csv")   # tokens fall
    change = {k: {"QUANTILES": good, "BAD": bad}.get(val, val) if isinstance(val, str) else val
              for k, val in change.items()}
    path = _write(tmp_path, [_row(v, **{"requests": "", "lengths_quantiles": "", **change})])
    assert v.main(["--table", "capacity", "--path", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and where in err and what in err


def test_the_shipped_chat_rows_draw_the_artifacts_trace_under_its_cap(v) -> None:
    """The openchat_sharegpt4 rows draw through the trace file's quantiles (validation/lengths/, computed from
    sarathi-serve's sharegpt_8k_filtered_stats_llama2_tokenizer.csv: no prompt over 8141 tokens), capped at the
    engine's max_seq_len 8192, with the artifact's 2048 requests per trial under its 1,800 s time limit; the arxiv
    rows' lognormal at 16384."""
    rows = v.read_capacity_runs(v.TABLES["capacity"].default)
    for r in rows:
        chat = r["dataset"] == "openchat_sharegpt4"
        assert r["lengths_max_total"] == r["context"] == (8192 if chat else 16384)
        assert r["requests"] == 2048 and r["duration_s"] == 1800   # num_requests, and --time-limit 30 minutes
        assert (r["lengths_quantiles"] is not None) == chat
        if r["scheduler"] in ("prefill-first", "continuous"):
            assert r["max_batched_tokens"] == r["context"]   # vllm_scheduler_max_tokens_in_batch = max_seq_len
    chat = next(r for r in rows if r["lengths_quantiles"] is not None)
    points = v.length_quantiles(chat["lengths_quantiles"])
    assert points["input"][-1] == [1.0, 8141.0] and points["output"][-1] == [1.0, 1024.0]


def test_the_shipped_rows_run_on_the_part_the_artifact_ran(v) -> None:
    """Every capacity row is priced on a100-80gb-pcie with tp 2 over the pair's NVLink bridge: the paper's Sec. 5
    (Azure NC96ads v4, 4 x A100 80GB with pairwise NVLink) and the artifact's figure-5-6 README ('A100 80GB PCIe
    GPUs that are connected with NVLINK in a pairwise manner'); the SXM4 part (a100-80gb) before."""
    rows = v.read_capacity_runs(v.TABLES["capacity"].default)
    assert len(rows) == 24
    for r in rows:
        assert (r["hardware"], r["intra_node"]) == ("a100-80gb-pcie", "nvlink3-bridge"), r["row_id"]
        assert r["n_devices"] == r["tp"] in (1, 2)
        task = v.capacity_task(r)
        assert task.node.device.max_power_w == 300 and task.node.intra.name == "nvlink3-bridge"
