"""scenarios/tpu-pod.yaml and tpu-pod-small.yaml (issue 19): the modeled TPU slice rows run, and the xla
backend's rows of the small one are a measured run on the PJRT CPU device where torch_xla is installed
(scripts/xla-check.sh's environment), `skipped` with the reason elsewhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from llmsim.cli import main
from tests.conftest import REPO

HAVE_XLA = importlib.util.find_spec("torch_xla") is not None
SMALL = REPO / "scenarios" / "tpu-pod-small.yaml"


def _run(tmp_path: Path, capsys, *args: str) -> pd.DataFrame:
    assert main(["run", str(SMALL), "--out", str(tmp_path), *args]) == 0
    return pd.read_csv(Path(capsys.readouterr().out.strip().splitlines()[-1]) / "results.csv")


def test_both_tpu_pod_scenarios_validate(capsys) -> None:
    for name in ("tpu-pod.yaml", "tpu-pod-small.yaml"):
        assert main(["validate", str(REPO / "scenarios" / name)]) == 0
    assert "9 cases" in capsys.readouterr().out


def test_the_small_pod_is_modeled_on_a_2x2x2_slice(tmp_path: Path, capsys) -> None:
    rows = _run(tmp_path, capsys, "--backend", "roofline", "--backend", "cluster")
    assert (rows["status"] == "ok").all() and (rows["n_devices"] == 8).all()
    assert set(rows["strategy"]) == {"fsdp", "fsdp-tp2", "pp4"}


@pytest.mark.skipif(HAVE_XLA, reason="checks the rows of an environment without torch_xla")
def test_without_torch_xla_its_rows_say_how_to_get_it(tmp_path: Path, capsys) -> None:
    rows = _run(tmp_path, capsys, "--backend", "xla")
    assert (rows["status"] == "skipped").all() and rows["error"].str.contains("torch_xla is not installed").all()


@pytest.mark.xla
@pytest.mark.slow   # minutes of XLA compilation and bf16 steps on the CPU (docs/accelerators.md)
@pytest.mark.skipif(not HAVE_XLA, reason="needs torch_xla (scripts/xla-check.sh makes an environment with it)")
def test_the_small_pod_model_is_measured_on_the_pjrt_cpu_device(tmp_path: Path, capsys) -> None:
    """One device: `fsdp` (dp omitted = 1 there) is measured; the strategies that need several devices are
    skipped saying so. Run in the torch_xla environment: PJRT_DEVICE=CPU .venv-xla/bin/python -m pytest -m xla
    tests/test_tpu_pod_scenarios.py"""
    rows = _run(tmp_path, capsys, "--backend", "xla").set_index("strategy")
    assert rows.loc["fsdp", "status"] == "ok" and rows.loc["fsdp", "step_time_s"] > 0
    assert rows.loc["fsdp", "kind"] == "measured"
    for name in ("fsdp-tp2", "pp4"):
        assert rows.loc[name, "status"] == "skipped" and "several XLA devices" in rows.loc[name, "error"]
