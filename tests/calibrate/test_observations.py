"""Which rows of a run folder are measurements to fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsim.calibrate import CalibrationError, read_observations
from tests.calibrate.helpers import synthetic_run


def test_only_ok_measured_rows_of_the_backend_are_observations(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path, "train", 32, 2, 2)
    assert [o.case for o in read_observations([run])] == ["s"]      # not the roofline row beside it
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for change in ({"kind": "modeled"}, {"status": "failed"}, {"peak_flops_per_s": None}):
        (run / "results.jsonl").write_text("".join(json.dumps({**r, **change}) + "\n" for r in rows))
        with pytest.raises(CalibrationError, match="no ok measured rows of backend 'cpu'"):
            read_observations([run])
