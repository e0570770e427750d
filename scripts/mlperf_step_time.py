#!/usr/bin/env python
"""Seconds per optimizer step of an MLPerf Training run, from its MLLOG result files.

Usage:
    python scripts/mlperf_step_time.py result_0.txt [result_1.txt ...]

MLPerf Training's NeMo submissions (GPT-3 175B, Llama 3.1 405B) log the timed region in blocks between
evaluations: `block_start` / `block_stop` events (POINT time_ms, wall clock of rank 0) whose metadata
`epoch_count` is the length of the block in the benchmark's training unit, and the run's
`global_batch_size` (sequences per optimizer step) and `max_sequence_length`. The unit is tokens when
`epoch_count` is a multiple of global_batch_size x max_sequence_length (GPT-3: 51,904,512 = 11 steps of
2,304 x 2,048), else samples (a multiple of the global batch). A block's seconds per step is its duration
over its steps; the published figure used by validation/ is the median over every block of every
result file given (blocks hold the training steps only: evaluation runs between block_stop and the next
block_start). The first block of each run is kept: MLPerf's warm-up steps run before `run_start`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def read_mllog(path: Path) -> list[dict]:
    """The MLLOG events of one result file (lines ':::MLLOG {json}'), in order."""
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        head, sep, body = line.partition(":::MLLOG ")
        if sep:
            events.append(json.loads(body))
    return events


def block_step_seconds(events: list[dict]) -> list[float]:
    """Seconds per optimizer step of every training block of one run (block_start -> block_stop)."""
    value = {e["key"]: e["value"] for e in events if e["event_type"] == "POINT_IN_TIME"}
    gbs = value["global_batch_size"]
    seq = value.get("max_sequence_length")
    out, start = [], None
    for e in events:
        if e["key"] == "block_start":
            start = e
        elif e["key"] == "block_stop" and start is not None:
            count = e["metadata"]["epoch_count"]
            if seq and count % (gbs * seq) == 0:
                steps = count / (gbs * seq)            # tokens
            elif count % gbs == 0:
                steps = count / gbs                    # samples
            else:
                raise ValueError(f"block of {count} is neither whole steps of tokens nor of samples (gbs {gbs})")
            out.append((e["time_ms"] - start["time_ms"]) / 1e3 / steps)
            start = None
    return out


def logged_step_seconds(events: list[dict]) -> list[float]:
    """The `train_step_time` values of a run's `tracked_stats` events (empty when it logs none)."""
    return [e["value"]["train_step_time"] for e in events
            if e["key"] == "tracked_stats" and isinstance(e["value"], dict) and "train_step_time" in e["value"]]


def throughput_step_seconds(events: list[dict]) -> list[float]:
    """global_batch_size / `throughput` (samples/s) of a run's `tracked_stats` events (empty when none)."""
    gbs = next(e["value"] for e in events if e["key"] == "global_batch_size")
    return [gbs / e["value"]["throughput"] for e in events
            if e["key"] == "tracked_stats" and isinstance(e["value"], dict) and "throughput" in e["value"]]


def step_seconds(events: list[dict]) -> tuple[str, list[float]]:
    """('train_step_time' | 'throughput' | 'blocks', seconds per step of each logged step, interval or block)
    of one run, from the first of those the run logs."""
    logged = logged_step_seconds(events)
    if logged:
        return "train_step_time", logged
    through = throughput_step_seconds(events)
    return ("throughput", through) if through else ("blocks", block_step_seconds(events))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    per_block = []
    for name in argv:
        how, seconds = step_seconds(read_mllog(Path(name)))
        per_block += seconds
        print(f"{name}: {len(seconds)} {how}, median {statistics.median(seconds):.4f} s/step")
    print(f"median over {len(per_block)} values of {len(argv)} files: {statistics.median(per_block):.4f} s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
