"""The table `llmsim run` prints before the run folder (issue 15 item 13: the terminal showed only
'done: 2 ok' and the folder)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmsim.cli import main
from llmsim.report.run import load_run
from llmsim.report.terminal import HEADERS, MAX_ROWS, headline_rows, headline_table
from tests.report.helpers import row


def frame_of(rows) -> pd.DataFrame:
    return load_run(Path("."), pd.DataFrame([r.row() for r in rows])).frame


def test_each_case_gets_its_headline_numbers_and_a_row_that_did_not_run_says_why() -> None:
    measured = row("single", "cpu", kind="measured", step=11.8, hardware="cpu-host", memory=1.76e9)
    measured = measured.model_copy(update={"step_time_p10_s": 9.9, "step_time_p90_s": 13.9})
    rows = headline_rows(frame_of([measured, row("single", step=0.122, memory=1.17e9),
                                   row("big", status="does-not-fit", memory=1.1e12, error="needs 1104.6 GB/device")]))
    assert HEADERS == ("case", "backend", "status", "step time", "p10–p90", "tokens/s", "MFU", "memory/device",
                       "why not ok")
    assert rows == [
        ["single", "cpu", "ok", "11.8 s", "9.9 s–13.9 s", "43.4", "40.0%", "1.76 GB", ""],
        ["single", "roofline", "ok", "122 ms", "–", "4.2k", "40.0%", "1.17 GB", ""],
        ["big", "roofline", "does-not-fit", "–", "–", "–", "–", "1.1 TB", "needs 1104.6 GB/device"],
    ]


def test_a_long_sweep_is_cut_with_a_pointer_to_the_rest() -> None:
    frame = frame_of([row(f"dp@nodes={n}", n=n, step=1.0 / n) for n in range(1, MAX_ROWS + 6)])
    table = headline_table(frame)
    assert table.row_count == MAX_ROWS and table.caption == "… and 5 more rows in results.csv and the report"
    assert [c.header for c in table.columns] == list(HEADERS[:-1])  # nothing failed: no 'why not ok' column


def test_run_prints_the_table_before_the_folder(write_scenario, tmp_path: Path, capsys) -> None:
    path = write_scenario(backends={"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 1}})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith(str(tmp_path / "out"))  # stdout: the folder only
    table = captured.err.split("llmsim run: 1 result row", 1)[1]
    assert "step time" in table and "tokens/s" in table and "│ single │ roofline │ ok" in table
    assert table.index("│ single") < table.index("done: 1 ok")


def test_a_serving_run_shows_its_latencies_and_goodput_not_training_columns() -> None:
    """Serving rows have no step time, tokens/s per step or MFU: the table showed a row of "–". It shows
    TTFT/TPOT at p50 and p99, requests/s and goodput instead (and a row that did not run says why)."""
    from llmsim.report.terminal import SERVING_HEADERS

    serve = dict(mode="serve", request_rate=8.0, ttft_p50_s=0.031, ttft_p99_s=0.212, tpot_p50_s=0.0112,
                 tpot_p99_s=0.0154, requests_per_s=7.93, goodput_rps=7.5)
    ok = row("tp1@rate=8", "cluster").model_copy(update=serve)
    failed = row("tp1@rate=24", "cluster", status="failed", error="engine stopped").model_copy(
        update={"mode": "serve", "request_rate": 24.0})
    frame = frame_of([ok, failed])
    assert SERVING_HEADERS == ("case", "backend", "status", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "req/s",
                               "goodput req/s", "why not ok")
    assert headline_rows(frame) == [
        ["tp1@rate=8", "cluster", "ok", "31 ms", "212 ms", "11.2 ms", "15.4 ms", "7.93", "7.5", ""],
        ["tp1@rate=24", "cluster", "failed", "–", "–", "–", "–", "–", "–", "engine stopped"],
    ]
    table = headline_table(frame_of([ok]))
    assert [c.header for c in table.columns] == list(SERVING_HEADERS[:-1])


def test_a_skip_reason_is_shown_whole_up_to_the_limit_and_cut_beyond_it():
    from llmsim.report.terminal import MAX_REASON, headline_rows

    said = ("roofline cannot price attention 'flash3' on a100-80gb: the FlashAttention-3 paper gives no "
            "figure for Ampere (allowed on a100-80gb: flash, fused-softmax, math)")
    frame = pd.DataFrame([{"case": "a", "backend": "roofline", "status": "skipped", "error": said},
                          {"case": "b", "backend": "roofline", "status": "skipped", "error": "x" * 500}])
    rows = headline_rows(frame)
    assert rows[0][-1] == said  # the allowed values at its end are still there
    assert len(rows[1][-1]) == MAX_REASON and rows[1][-1].endswith("…")


def test_a_run_measured_on_a_busy_host_says_so_under_the_table():
    from llmsim.report.terminal import busy_note

    quiet = pd.DataFrame([{"case": "a", "backend": "cpu", "status": "ok", "step_time_s": 0.1,
                           "host_load_per_core": 0.4},
                          {"case": "a", "backend": "roofline", "status": "ok", "step_time_s": 0.1}])
    assert headline_table(quiet).caption is None
    busy = quiet.assign(host_load_per_core=[6.5, None])
    caption = headline_table(busy).caption
    assert caption is not None and "load up to 6.5 per core" in caption and "threads: 1" in caption
    assert [row[2] for row in headline_rows(busy)] == ["ok*", "ok"]  # the busy row is marked, the modeled not
    assert caption.startswith("* measured while the host was busy")
    assert busy_note([]) is None and busy_note([1.0]) is None  # exactly one task per core is not busy


def test_a_speculative_serving_run_shows_its_accept_length_and_only_then() -> None:
    """Fresh-user trial: results.csv had accept_length for a speculative run, the terminal table did not. The
    column comes after the TPOTs when any row has one (a row without, or one that did not run, reads "–"), and a
    run without speculation keeps SERVING_HEADERS."""
    from llmsim.report.terminal import SERVING_HEADERS

    serve = dict(mode="serve", request_rate=8.0, ttft_p50_s=0.031, ttft_p99_s=0.212, tpot_p50_s=0.0112,
                 tpot_p99_s=0.0154, requests_per_s=7.93, goodput_rps=7.5)
    eagle = row("tp1@rate=8", "roofline").model_copy(update={**serve, "accept_length": 2.5312})
    plain = row("tp1@rate=8", "cluster").model_copy(update=serve)
    failed = row("tp1@rate=24", "roofline", status="failed", error="engine stopped").model_copy(
        update={"mode": "serve", "request_rate": 24.0})
    frame = frame_of([eagle, plain, failed])
    assert headline_rows(frame) == [
        ["tp1@rate=8", "roofline", "ok", "31 ms", "212 ms", "11.2 ms", "15.4 ms", "2.53", "7.93", "7.5", ""],
        ["tp1@rate=8", "cluster", "ok", "31 ms", "212 ms", "11.2 ms", "15.4 ms", "–", "7.93", "7.5", ""],
        ["tp1@rate=24", "roofline", "failed", "–", "–", "–", "–", "–", "–", "–", "engine stopped"],
    ]
    assert [c.header for c in headline_table(frame).columns] == [
        "case", "backend", "status", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "accept length", "req/s",
        "goodput req/s", "why not ok"]
    assert [c.header for c in headline_table(frame_of([plain])).columns] == list(SERVING_HEADERS[:-1])


def test_the_busy_host_note_advises_threads_1_only_when_a_busy_row_ran_more_threads() -> None:
    """Trial 46: the busy-host footnote said to set `threads: 1` of a run that had set it."""
    busy = pd.DataFrame([{"case": "a", "backend": "cpu", "status": "ok", "step_time_s": 0.1,
                          "host_load_per_core": 3.0, "threads": 1},
                         {"case": "b", "backend": "cpu", "status": "ok", "step_time_s": 0.1,
                          "host_load_per_core": 0.5, "threads": 2}])   # b: more threads, but a quiet host
    caption = headline_table(busy).caption
    assert caption is not None and "threads: 1" not in caption
    assert caption.endswith("rerun on a quiet host (the busy rows already ran with one thread)")
    caption = headline_table(busy.assign(threads=[2, 2])).caption
    assert caption is not None and "set `backends: {cpu: {threads: 1}}`" in caption
