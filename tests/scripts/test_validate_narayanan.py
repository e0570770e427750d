"""scripts/validate_narayanan.py: rows get the launch configuration that was published for them."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from tests.scripts.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]
SHARED_TABLE = ROOT.parent / "shared" / "validation" / "narayanan2021_table1.csv"
HEADER = ["model", "params_billion", "layers", "hidden_size", "attention_heads", "seq_length", "vocab_size",
          "global_batch_size_sequences", "tensor_parallel", "pipeline_parallel", "data_parallel",
          "num_accelerators", "tflops_per_accelerator", "pct_of_peak"]


@pytest.fixture(scope="module")
def vn():
    return load_script("validate_narayanan.py")


def _table(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "table.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(model: str, **extra: object) -> dict[str, object]:
    base = dict(zip(HEADER, [model, 1008.0, 128, 25600, 160, 2048, 51200, 3072, 8, 64, 6, 3072, 163, 52]))
    return {**base, **extra}


def test_a_published_row_gets_its_launch_script_and_others_get_said_assumptions(vn, tmp_path: Path) -> None:
    table = _table(tmp_path, [_row("GPT 1008.0B"), _row("GPT 145.6B", layers=80, pipeline_parallel=8),
                              _row("unknown run", layers=80, pipeline_parallel=8)])
    published, interleaved, unknown = vn.read_table(table)
    assert vn.run_config(published) == vn.RunConfig(1, 1, "local")  # the 1T run was plain 1F1B
    assert vn.run_config(interleaved).virtual_stages == 2 and interleaved.run is not None
    assert unknown.run is None
    assert vn.run_config(unknown) == vn.RunConfig(vn.ASSUMED_MICRO_BATCH, 2, vn.ASSUMED_DDP)
    _, _, _, plan, _ = vn.build(published)
    assert (plan.schedule, plan.micro_batch, plan.microbatches, plan.overlap_grad_reduce) == ("1f1b", 1, 512, False)


def test_a_row_may_carry_its_own_configuration_columns(vn, tmp_path: Path) -> None:
    table = _table(tmp_path, [_row("GPT 1008.0B", micro_batch_size=2, virtual_stages=2, ddp_impl="torch")])
    [row] = vn.read_table(table)
    _, _, _, plan, _ = vn.build(row)
    assert (plan.schedule, plan.v, plan.micro_batch, plan.overlap_grad_reduce) == ("interleaved", 2, 2, True)


@pytest.mark.skipif(not SHARED_TABLE.exists(), reason=f"{SHARED_TABLE} is not in this checkout")
def test_the_model_stays_within_the_validation_target_on_table_1(vn, capsys) -> None:
    assert vn.main(["--table", str(SHARED_TABLE)]) == 0
    median = float(capsys.readouterr().out.split("median |error| ")[1].split("%")[0])
    assert median <= 10.0


@pytest.mark.skipif(not SHARED_TABLE.exists(), reason=f"{SHARED_TABLE} is not in this checkout")
def test_every_published_configuration_fits_in_its_gpus_memory(vn) -> None:
    """The runs of Table 1 happened: none of them may be a does-not-fit row (full recomputation, no sp)."""
    from llmsim.costmodel import memory_breakdown

    for row in vn.read_table(SHARED_TABLE):
        workload, profile, sharing, plan, cluster = vn.build(row)
        memory = memory_breakdown(workload, profile, sharing, plan, vn.MEGATRON_2021)
        assert memory.fits(cluster.device.memory_bytes), (row.model, memory.describe(cluster.device.memory_bytes))
