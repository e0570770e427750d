"""What every modeled backend's row records (llmsim.modeled): the software choices it was priced with."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from llmsim.cli import main
from llmsim.results import COLUMNS


def _run(tmp_path: Path, mode: str, settings: dict, capsys: pytest.CaptureFixture[str]) -> pd.DataFrame:
    path = tmp_path / f"{mode}.yaml"
    workload = {"model": {"preset": "tiny"}, "mode": mode, "batch": 2}
    path.write_text(yaml.safe_dump({"name": f"priced-{mode}", "workload": workload,
                                    "strategies": [{"name": "tp1"}],
                                    "backends": {"roofline": {"hardware": "h100-sxm", "devices_per_node": 1,
                                                              **settings}}}))
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    report = (run_dir / "report.md").read_text()
    frame = pd.read_csv(run_dir / "results.csv")
    frame.attrs["report"] = report
    return frame


def test_a_modeled_row_records_its_attention_kernel_and_all_reduce_library(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """results.csv columns attention_kernel and all_reduce (contract columns, declared once in results.COLUMNS):
    the backend's settings a row was priced with; a training row leaves all_reduce empty (its all-reduces are
    NCCL's whatever the setting); report.md's results table shows them in one 'priced with' cell."""
    assert {"attention_kernel", "all_reduce"} <= set(COLUMNS)
    decode = _run(tmp_path, "decode", {"attention": "flash3", "all_reduce": "vllm"}, capsys)
    assert decode.loc[0, "status"] == "ok"
    assert (decode.loc[0, "attention_kernel"], decode.loc[0, "all_reduce"]) == ("flash3", "vllm")
    assert "| priced with |" in decode.attrs["report"] and "| flash3, vllm |" in decode.attrs["report"]
    train = _run(tmp_path, "train", {"attention": "cudnn", "all_reduce": "vllm"}, capsys)
    assert train.loc[0, "attention_kernel"] == "cudnn" and pd.isna(train.loc[0, "all_reduce"])
    assert "| cudnn, fused, fp32 master |" in train.attrs["report"]
    assert "attention_kernel" not in train.columns[list(train.columns).index("other_time_s"):]  # not an extra


def test_a_modeled_training_row_records_its_optimizer_and_master_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """results.csv columns optimizer and master_weights: the training recipe a modeled row was priced with, so that
    `llmsim report A B` can tell a fused run from a foreach one; empty where the setting prices nothing (an inference
    row; master_weights of an fp32 workload, which has no 16-bit copy to keep a master of)."""
    assert {"optimizer", "master_weights"} <= set(COLUMNS)
    train = _run(tmp_path, "train", {"optimizer": "foreach", "master_weights": False}, capsys)
    assert (train.loc[0, "optimizer"], bool(train.loc[0, "master_weights"])) == ("foreach", False)
    assert "| flash, foreach, no fp32 master |" in train.attrs["report"]
    decode = _run(tmp_path, "decode", {"optimizer": "foreach"}, capsys)
    assert pd.isna(decode.loc[0, "optimizer"]) and pd.isna(decode.loc[0, "master_weights"])
    path = tmp_path / "fp32.yaml"
    path.write_text(yaml.safe_dump({"name": "fp32", "workload": {"model": {"preset": "tiny"}, "mode": "train",
                                                                 "batch": 2, "dtype": "float32"},
                                    "strategies": [{"name": "tp1"}],
                                    "backends": {"roofline": {"hardware": "h100-sxm", "devices_per_node": 1}}}))
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    fp32 = pd.read_csv(run_dir / "results.csv")
    assert fp32.loc[0, "optimizer"] == "fused" and pd.isna(fp32.loc[0, "master_weights"])


def test_a_training_recipe_on_a_case_that_prices_none_gets_a_note(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 39: `optimizer` on a decode case and `master_weights` on an fp32 workload were taken silently. Each is
    now one note naming the key; the row leaves the column empty, as for any setting it does not price."""
    def validate(mode: str, dtype: str, settings: dict) -> str:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "workload": {"model": {"preset": "tiny"}, "mode": mode, "batch": 2,
                                                                  "dtype": dtype},
                                        "strategies": [{"name": "tp1"}],
                                        "backends": {"roofline": {"hardware": "h100-sxm", "devices_per_node": 1,
                                                                  **settings}}}))
        assert main(["validate", str(path)]) == 0
        return capsys.readouterr().err

    said = validate("decode", "bfloat16", {"optimizer": "foreach"})
    assert "backends.roofline.optimizer: prices a training step's optimizer; this decode case has none" in said
    said = validate("train", "float32", {"master_weights": False})
    assert "backends.roofline.master_weights: an fp32 master copy is kept of 16-bit weights" in said
    assert "note" not in validate("train", "bfloat16", {"optimizer": "foreach", "master_weights": False})
