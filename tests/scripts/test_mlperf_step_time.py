"""scripts/mlperf_step_time.py: seconds per optimizer step from MLPerf Training MLLOG files (made-up logs:
the tests check the arithmetic and which events are read)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.scripts.scriptload import load_script


@pytest.fixture(scope="module")
def m():
    return load_script("mlperf_step_time.py")


def _line(key: str, time_ms: int, value=None, event_type: str = "POINT_IN_TIME", **metadata) -> str:
    return ":::MLLOG " + json.dumps({"namespace": "", "time_ms": time_ms, "event_type": event_type, "key": key,
                                     "value": value, "metadata": {"file": "x.py", "lineno": 1, **metadata}})


def _gpt3_log(tmp_path: Path) -> Path:
    """GBS 4 x seq 8: a block of 96 tokens is 3 steps; blocks of 30 s and 33 s -> 10 and 11 s per step."""
    lines = [":::SYSJSON {}", _line("global_batch_size", 0, 4), _line("max_sequence_length", 0, 8),
             _line("block_start", 1000, event_type="INTERVAL_START", epoch_count=96),
             _line("block_stop", 31000, event_type="INTERVAL_END", epoch_count=96),
             _line("eval_start", 31000, event_type="INTERVAL_START"),
             _line("eval_stop", 90000, event_type="INTERVAL_END"),                 # evaluation is not counted
             _line("block_start", 90000, event_type="INTERVAL_START", epoch_count=96),
             _line("block_stop", 123000, event_type="INTERVAL_END", epoch_count=96)]
    path = tmp_path / "result_0.txt"
    path.write_text("\n".join(lines) + "\nnot an mllog line\n")
    return path


def test_blocks_give_seconds_per_step_and_skip_evaluation(m, tmp_path: Path) -> None:
    events = m.read_mllog(_gpt3_log(tmp_path))
    assert m.block_step_seconds(events) == pytest.approx([10.0, 11.0])
    assert m.step_seconds(events) == ("blocks", pytest.approx([10.0, 11.0]))


def test_a_block_counted_in_samples(m) -> None:
    events = [{"key": "global_batch_size", "value": 6, "event_type": "POINT_IN_TIME"},
              {"key": "block_start", "time_ms": 0, "event_type": "INTERVAL_START", "metadata": {"epoch_count": 12}},
              {"key": "block_stop", "time_ms": 8000, "event_type": "INTERVAL_END", "metadata": {"epoch_count": 12}}]
    assert m.block_step_seconds(events) == pytest.approx([4.0])


def test_logged_step_times_win_over_blocks(m, tmp_path: Path) -> None:
    path = _gpt3_log(tmp_path)
    extra = [_line("tracked_stats", 5, {"warmup_time": 500.0}),
             _line("tracked_stats", 6, {"train_step_time": 2.0, "reduced_train_loss": 7.7}, step=4),
             _line("tracked_stats", 7, {"train_step_time": 4.0}, step=8)]
    path.write_text(path.read_text() + "\n".join(extra) + "\n")
    assert m.step_seconds(m.read_mllog(path)) == ("train_step_time", [2.0, 4.0])


def test_the_cli_prints_the_median_over_files(m, tmp_path: Path, capsys) -> None:
    assert m.main([str(_gpt3_log(tmp_path))]) == 0
    assert "median over 2 values of 1 files: 10.5000 s/step" in capsys.readouterr().out
    assert m.main([]) == 2


def test_a_logged_throughput_is_the_global_batch_over_it(m) -> None:
    """LoRA v4.x logs: samples/s between evaluations; 8 sequences at 2.5 and 2.0 samples/s -> 3.2 and 4 s."""
    events = [{"key": "global_batch_size", "value": 8, "event_type": "POINT_IN_TIME"},
              {"key": "tracked_stats", "value": {"throughput": 2.5}, "event_type": "POINT_IN_TIME"},
              {"key": "tracked_stats", "value": {"throughput": 2.0}, "event_type": "POINT_IN_TIME"}]
    assert m.step_seconds(events) == ("throughput", pytest.approx([3.2, 4.0]))
