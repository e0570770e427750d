"""scripts/validate_fastertransformer.py: every row of the table becomes the published configuration, the
prediction is the cost model's own estimate, and the printed median is the median of the printed rows."""

from __future__ import annotations

import csv
import re
import statistics
import sys
from pathlib import Path

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, estimate
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload
from tests.scripts.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]
SHARED_TABLE = ROOT.parent / "shared" / "validation" / "fastertransformer_gpt_dev.csv"
HEADER = ["row_id", "model", "layers", "hidden_size", "attention_heads", "vocab_size", "precision", "accelerator",
          "num_accelerators", "tensor_parallel", "pipeline_parallel", "batch_size", "input_len", "output_len",
          "latency_ms", "source"]


@pytest.fixture(scope="module")
def vf():
    return load_script("validate_fastertransformer.py")


def _row(row_id: str, model: str, layers: int, hidden: int, heads: int, tp: int, batch: int, input_len: int,
         output_len: int, latency_ms: float) -> dict[str, object]:
    return dict(zip(HEADER, [row_id, f"{model} (GPT-style)", layers, hidden, heads, 51200, "FP16", "NVIDIA A100 80GB",
                             tp, tp, 1, batch, input_len, output_len, latency_ms, "test"]))


# Shapes of the published table (GPT-350M and GPT-20B), latencies made up: the test checks the plumbing.
ROWS = [_row("T1", "GPT-350M", 24, 1024, 16, 1, 4, 128, 8, 28.0),
        _row("T2", "GPT-20B", 44, 6144, 48, 8, 16, 60, 20, 272.0),
        _row("T3", "GPT-20B", 44, 6144, 48, 2, 1, 20, 8, 147.0)]


def _table(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "table.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _printed_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if re.match(r"(T|I)\d+ ", line)]


def _printed_median(out: str) -> float:
    return float(out.split("median |error| ")[1].split("%")[0])


def test_a_row_becomes_the_published_configuration(vf, tmp_path: Path) -> None:
    [row] = vf.read_table(_table(tmp_path, [ROWS[1]]))
    assert (row.model, row.layers, row.hidden, row.heads, row.vocab, row.dtype) == \
        ("GPT-20B", 44, 6144, 48, 51200, "float16")
    workload, profile, sharing, plan, cluster = vf.build(row)
    spec = workload.model
    assert (workload.mode, workload.batch, spec.seq_len, workload.decode_tokens) == ("decode", 16, 60, 20)
    assert (spec.ffn_hidden, spec.max_positions, spec.activation, spec.norm, spec.positions, spec.kv_heads) == \
        (4 * 6144, 2048, "gelu", "layernorm", "learned", 48)
    assert profile.layers == 44 and sharing.tie_embeddings
    assert (plan.world, plan.tp, plan.pp, plan.micro_batch, plan.microbatches) == (8, 8, 1, 16, 1)
    assert (cluster.device.name, cluster.intra.name, cluster.nodes, cluster.world) == ("a100-80gb", "nvlink3", 1, 8)
    assert vf.FT_V5 == Options(attention="fused-softmax", sampler="sort-top-p")


def test_the_prediction_is_the_cost_models_estimate_computed_independently(vf, tmp_path: Path) -> None:
    """The 20B tp=8 row by hand, through the public API: a 2-layer trace scaled to 44, the catalog cluster."""
    [row] = vf.read_table(_table(tmp_path, [ROWS[1]]))

    def workload(layers: int) -> Workload:
        model = ModelSpec(layers=layers, hidden=6144, heads=48, ffn_hidden=4 * 6144, vocab=51200, seq_len=60,
                          max_positions=2048, activation="gelu", norm="layernorm", positions="learned")
        return Workload(model=model, mode="decode", batch=16, decode_tokens=20, dtype="float16")

    sharing = SharingChoice(tie_embeddings=True)
    profile = with_layers(profile_workload(workload(2), sharing), 44)
    cluster = load_catalog().cluster("a100-80gb", 1, devices_per_node=8, intra_node="nvlink3")
    expected = estimate(workload(44), profile, sharing, Plan(tp=8, micro_batch=16), cluster,
                        Options(attention="fused-softmax", sampler="sort-top-p"))
    got = vf.predict(row)
    assert got.step_time_s > 0
    assert got.step_time_s == pytest.approx(expected.step_time_s, rel=1e-12)
    assert (got.ttft_s, got.tpot_s) == pytest.approx((expected.ttft_s, expected.tpot_s), rel=1e-12)
    assert got.step_time_s == pytest.approx(expected.ttft_s + 19 * expected.tpot_s, rel=1e-12)


def test_the_printed_median_is_the_median_of_the_printed_rows(vf, tmp_path: Path, capsys) -> None:
    assert vf.main(["--table", str(_table(tmp_path, ROWS))]) == 0
    out = capsys.readouterr().out
    printed = _printed_rows(out)
    assert [p[0] for p in printed] == ["T1", "T2", "T3"]
    published = [float(p[6]) for p in printed]
    predicted = [float(p[7]) for p in printed]
    assert published == [28.0, 272.0, 147.0] and all(p > 0 for p in predicted)
    for row, p in zip(vf.read_table(_table(tmp_path, ROWS)), predicted):
        assert vf.predict(row).step_time_s * 1e3 == pytest.approx(p, abs=0.005)
    errors = [float(p[8].rstrip("%")) for p in printed]
    assert errors == pytest.approx([100 * (b / a - 1) for a, b in zip(published, predicted)], abs=0.06)
    assert _printed_median(out) == pytest.approx(statistics.median(abs(e) for e in errors), abs=0.06)


def test_a_missing_table_is_one_clear_message(vf, tmp_path: Path, capsys) -> None:
    assert vf.main(["--table", str(tmp_path / "nope.csv")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow  # ~10 s: traces every row's 2-layer workload (about 90 distinct ones)
@pytest.mark.skipif(not SHARED_TABLE.exists(), reason=f"{SHARED_TABLE} is not in this checkout")
def test_every_row_of_the_dev_table_is_built_and_predicted(vf, capsys) -> None:
    rows = vf.read_table(SHARED_TABLE)
    assert vf.main(["--table", str(SHARED_TABLE)]) == 0
    out = capsys.readouterr().out
    printed = _printed_rows(out)
    assert [p[0] for p in printed] == [r.row_id for r in rows]
    assert all(float(p[7]) > 0 for p in printed)
    errors = [float(p[8].rstrip("%")) for p in printed]
    assert _printed_median(out) == pytest.approx(statistics.median(abs(e) for e in errors), abs=0.06)


def test_group_errors_count_average_and_take_the_median_of_each_group(vf, tmp_path: Path) -> None:
    rows = vf.read_table(_table(tmp_path, ROWS))
    groups = vf.group_errors(rows, [0.10, -0.20, 0.05], lambda r: r.model)
    assert [(g.key, g.count) for g in groups] == [("GPT-20B", 2), ("GPT-350M", 1)]
    assert groups[0].mean_error == pytest.approx(-0.075) and groups[0].median_abs_error == pytest.approx(0.125)
    assert (groups[1].mean_error, groups[1].median_abs_error) == pytest.approx((0.10, 0.10))
    by_tp = vf.group_errors(rows, [0.10, -0.20, 0.05], vf.GROUPS["tp"])
    assert [g.key for g in by_tp] == [1, 2, 8]           # numbers in numeric order


def test_the_breakdown_adds_up_to_the_predicted_prefill_and_token_step(vf, tmp_path: Path) -> None:
    [row] = vf.read_table(_table(tmp_path, [ROWS[1]]))   # GPT-20B, tp 8, batch 16, 60 in / 20 out
    got, parts = vf.predict(row), vf.breakdown(row)
    assert parts["prefill"]["count"] == 1 and parts["decode"]["count"] == 19
    assert parts["prefill"]["total"] == pytest.approx(got.ttft_s, rel=1e-9)
    assert parts["decode"]["total"] == pytest.approx(got.tpot_s, rel=1e-9)
    assert all(parts[phase][p] >= 0 for phase in parts for p in vf.PARTS)
    assert parts["decode"]["tp_comm"] > 0 and parts["decode"]["gemm"] > parts["decode"]["attention"]


def test_groups_and_worst_rows_are_printed_on_request(vf, tmp_path: Path, capsys) -> None:
    assert vf.main(["--table", str(_table(tmp_path, ROWS)), "--groups", "--worst", "2"]) == 0
    out = capsys.readouterr().out
    assert "by model:" in out and "by tp:" in out and "by batch:" in out and "by input/output:" in out
    assert "the 2 most under-predicted rows" in out
    assert len(re.findall(r"^ +prefill +1 ", out, re.M)) == 2 and len(re.findall(r"^ +decode +\d+ ", out, re.M)) == 2
    assert vf.main(["--table", str(_table(tmp_path, ROWS)), "--worst", "-1"]) == 2
    assert "--worst: -1 is negative" in capsys.readouterr().err
