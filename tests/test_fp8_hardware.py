"""One behaviour for float8 where the hardware lacks FP8 (or MX units, for mxfp8): `validate` and `run`
refuse a scenario none of whose hardware can run it (one line, exit 2), and skip the rows of the devices
that cannot when others can; `plan` refuses the same (tests/planner/test_precision_search.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from llmsim.cli import main
from llmsim.costmodel import precision
from llmsim.config import parse_scenario
from llmsim.hardware import load_catalog

CATALOG = load_catalog()


def _scenario(tmp_path: Path, backends: dict[str, Any], **workload: Any) -> Path:
    data = {"name": "fp8-hw", "strategies": [{"name": "single"}], "backends": backends,
            "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 8, "dtype": "float8", **workload}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("backends, workload, key, allowed", [
    ({"roofline": {"hardware": "a100-80gb"}}, {}, "workload.dtype", "h100-sxm, h200, b200"),
    ({"roofline": {"hardware": "tpu-v5e"}, "cluster": {"hardware": "a100-40gb"}}, {}, "workload.dtype", "tpu-v6e"),
    ({"roofline": {"hardware": "h100-sxm"}, "cluster": {"hardware": "mi300x"}}, {"fp8": {"recipe": "mxfp8"}},
     "workload.fp8.recipe", "b200, gb200"),
    ({"roofline": {"hardware": "tpu-v6e"}}, {"fp8": {"recipe": "mxfp8"}}, "workload.fp8.recipe", "b200, gb200"),
])
def test_no_hardware_with_fp8_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str,
                                                backends: dict, workload: dict, key: str, allowed: str) -> None:
    path = _scenario(tmp_path, backends, **workload)
    args = [command, str(path)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmsim: error: {path}: {key}: ")
    listed = lines[0].split("hardware that does: ")[1].split(", ")
    assert set(allowed.split(", ")) <= set(listed)  # catalog order: entries may sit between them
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_hardware_sweep_skips_the_devices_without_fp8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _scenario(tmp_path, {"roofline": {"hardware": "a100-80gb"}, "cluster": {"hardware": "h100-sxm"}})
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    rows = pd.read_csv(Path(capsys.readouterr().out.strip().splitlines()[-1]) / "results.csv").set_index("backend")
    assert rows.loc["roofline", "status"] == "skipped" and "no FP8 tensor cores" in rows.loc["roofline", "error"]
    assert rows.loc["roofline", "hardware"] == "a100-80gb"
    assert rows.loc["cluster", "status"] == "ok" and rows.loc["cluster", "dtype"] == "float8"


def test_mxfp8_runs_on_blackwell_and_is_skipped_on_hopper_beside_it(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _scenario(tmp_path, {"roofline": {"hardware": "b200"}, "cluster": {"hardware": "h100-sxm"}},
                     fp8={"recipe": "mxfp8"})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    rows = pd.read_csv(Path(capsys.readouterr().out.strip().splitlines()[-1]) / "results.csv").set_index("backend")
    assert rows.loc["roofline", "status"] == "ok"
    assert rows.loc["cluster", "status"] == "skipped" and "mxfp8 needs MX" in rows.loc["cluster", "error"]


def test_measured_backends_still_skip_float8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A backend that names no catalog device (cpu) runs no FP8 GEMMs: its rows are skipped, not refused."""
    path = _scenario(tmp_path, {"cpu": {"steps": 1, "warmup": 0}})
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    rows = pd.read_csv(Path(capsys.readouterr().out.strip().splitlines()[-1]) / "results.csv")
    assert list(rows["status"]) == ["skipped"]


def test_only_blackwell_has_mx_units_in_the_catalog() -> None:
    assert sorted(d.name for d in CATALOG.devices.values() if d.microscaling) == ["b200", "b300", "gb200", "gb300"]
    w = parse_scenario({"name": "x", "workload": {"model": {"preset": "tiny"}, "dtype": "float8",
                                                  "fp8": {"recipe": "mxfp8"}}}).workload
    assert precision.capable_devices(w, CATALOG.devices.values()) == ["b200", "gb200", "b300", "gb300"]
    assert precision.default_recipe(CATALOG.devices["b200"]) == "mxfp8"
    assert precision.default_recipe(CATALOG.devices["h100-sxm"]) == "delayed"
    assert precision.device_problem(w.model_copy(update={"dtype": "bfloat16", "fp8": None}),
                                    CATALOG.devices["a100-80gb"]) is None
