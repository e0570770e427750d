"""Precision as a planner search dimension (`search.dtype`, planner.precisions): float8 where the hardware has
FP8 tensor cores, the recipe per device generation, the report's precision of every row, best.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from llmsim.cli import main
from llmsim.errors import ScenarioError
from llmsim.hardware import load_catalog
from llmsim.planner import run_plan
from llmsim.planner.config import check_hardware, parse_plan
from llmsim.planner.search import resolve_hardware, search

CATALOG = load_catalog()


def _plan(h100_price: float, dtypes: list[str] | None, **over: Any) -> Any:
    """A 4-layer slice of GPT-3 1.3B (GEMM-bound enough for FP8 to matter) on up to 8 A100s or H100s."""
    data: dict[str, Any] = {
        "name": "fp8-choice",
        "workload": {"model": {"preset": "gpt3-1.3b", "layers": 4}, "mode": "train", "batch": 16},
        "goal": {"tokens": 1e8},
        "hardware": [{"name": "a100-80gb", "usd_per_device_hour": 1.8},
                     {"name": "h100-sxm", "usd_per_device_hour": h100_price}],
        "limits": {"max_devices": 8},
        "search": {"tp": [1, 2], "pp": [1], "cp": [1], "zero": [0, 1], "recompute": ["none"], "sp": [False],
                   **({"dtype": dtypes} if dtypes else {})},
        "objective": "cost", "simulate": False, "top_k": 2,
    }
    data.update(over)
    return parse_plan(data)


def _cheapest(rows: list, hardware: str, precision: str) -> Any:
    return min((e for e in rows if e.feasible and e.config.hardware == hardware and e.config.precision == precision),
               key=lambda e: e.cost_usd)


def _h100_price_where_bf16_loses() -> float:
    """An H100 price at which bf16 on the H100 costs 10% more than bf16 on the A100 (from the model's own
    times, not a tuned number): the A100 wins a bf16-only plan, so only FP8 can make the H100 win."""
    plan = _plan(1.8, None)
    rows, _ = search(plan, resolve_hardware(plan, CATALOG))
    a100, h100 = _cheapest(rows, "a100-80gb", ""), _cheapest(rows, "h100-sxm", "")
    return 1.8 * (a100.cost_usd / h100.cost_usd) * 1.1


def test_plan_chooses_float8_on_h100_over_bf16_on_a100(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    price = _h100_price_where_bf16_loses()
    bf16_only = _plan(price, None)
    rows, _ = search(bf16_only, resolve_hardware(bf16_only, CATALOG))
    assert rows[0].config.hardware == "a100-80gb"  # without FP8 the A100 is cheaper

    plan = _plan(price, ["bfloat16", "float8"])
    outcome = run_plan(plan, CATALOG, tmp_path / "plan")
    winner = outcome.top[0]
    assert (winner.config.hardware, winner.config.precision) == ("h100-sxm", "float8-delayed")
    assert winner.cost_usd < _cheapest(outcome.rows, "a100-80gb", "").cost_usd
    assert winner.cost_usd < _cheapest(outcome.rows, "h100-sxm", "").cost_usd
    # the A100 has no float8 candidates, said once in the summary
    assert not any(e.config.hardware == "a100-80gb" and e.config.precision for e in outcome.rows)
    assert outcome.explanation.precision_notes == [
        "device 'a100-80gb' has no FP8 tensor cores (no float8 peak FLOP/s in the catalog)"]
    folder = outcome.run_dir
    assert "no candidates: device 'a100-80gb' has no FP8 tensor cores" in (folder / "plan.md").read_text()
    assert "float8 delayed" in (folder / "plan.md").read_text()  # the configuration's description
    # every row says its precision: plan.csv / plan.parquet columns dtype and fp8_recipe
    frame = pd.read_parquet(folder / "plan.parquet")
    by_row = {(r.hardware, r.dtype, r.fp8_recipe if isinstance(r.fp8_recipe, str) else None)
              for r in frame.itertuples()}
    assert by_row == {("a100-80gb", "bfloat16", None), ("h100-sxm", "bfloat16", None),
                      ("h100-sxm", "float8", "delayed")}
    csv = pd.read_csv(folder / "plan.csv")
    assert csv.loc[0, "dtype"] == "float8" and csv.loc[0, "fp8_recipe"] == "delayed"
    # best.yaml states the precision and reproduces the plan's numbers
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["workload"]["dtype"] == "float8" and best["workload"]["fp8"]["recipe"] == "delayed"
    assert main(["run", str(folder / "best.yaml"), "--backend", "roofline", "--out", str(tmp_path)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    row = pd.read_csv(run_dir / "results.csv").iloc[0]
    assert (row["status"], row["dtype"], row["hardware"]) == ("ok", "float8", "h100-sxm")
    assert row["step_time_s"] == pytest.approx(winner.step_time_s, rel=1e-9)


def test_float8_recipe_is_the_workloads_or_the_devices_default() -> None:
    hw = [{"name": "h100-sxm", "usd_per_device_hour": 3.0}, {"name": "b200", "usd_per_device_hour": 5.0}]
    default = _plan(3.0, ["bfloat16", "float8"], hardware=hw)
    rows, _ = search(default, resolve_hardware(default, CATALOG))
    assert {(e.config.hardware, e.config.precision) for e in rows} == {
        ("h100-sxm", ""), ("h100-sxm", "float8-delayed"), ("b200", ""), ("b200", "float8-mxfp8")}
    stated = _plan(3.0, ["bfloat16", "float8"], hardware=hw,
                   workload={"model": {"preset": "gpt3-1.3b", "layers": 4}, "mode": "train", "batch": 16,
                             "dtype": "float8", "fp8": {"recipe": "current"}})
    rows, _ = search(stated, resolve_hardware(stated, CATALOG))
    # the workload's own precision is unlabeled; bfloat16 is the searched other one
    assert {(e.config.hardware, e.config.precision) for e in rows} == {
        ("h100-sxm", ""), ("h100-sxm", "bfloat16"), ("b200", ""), ("b200", "bfloat16")}


@pytest.mark.parametrize("workload, search_dtype, hardware, key, allowed", [
    ({"dtype": "float8"}, None, ["a100-80gb"], "workload.dtype", "h100-sxm"),
    ({"dtype": "bfloat16"}, ["float8"], ["a100-80gb", "tpu-v5e"], "search.dtype", "h100-sxm"),
    ({"dtype": "float8", "fp8": {"recipe": "mxfp8"}}, None, ["h100-sxm", "mi300x", "tpu-v6e"], "workload.fp8.recipe",
     "b200, gb200"),
])
def test_a_plan_whose_hardware_all_lacks_the_precision_is_one_line(tmp_path: Path, capsys, workload, search_dtype,
                                                                   hardware, key, allowed) -> None:
    data = {"name": "no-fp8", "goal": {"tokens": 1e8},
            "workload": {"model": {"preset": "tiny"}, "mode": "train", "batch": 8, **workload},
            "hardware": [{"name": h, "usd_per_device_hour": 1.0} for h in hardware],
            **({"search": {"dtype": search_dtype}} if search_dtype else {})}
    with pytest.raises(ScenarioError) as err:
        check_hardware(parse_plan(data), CATALOG, "p.yaml")
    assert err.value.key == key and allowed in err.value.message
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["plan", str(path), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmsim: error: {path}: {key}: ")


def _fp4_serving_plan(hardware: list[str], dtypes: list[str] | None) -> Any:
    """Llama-3-8B served in float4 (nvfp4): a device without NVFP4 units runs it weight-only, as `llmsim run` does."""
    data: dict[str, Any] = {
        "name": "fp4-serve",
        "workload": {"model": {"preset": "llama3-8b"}, "dtype": "float4"},
        "serving": {"duration_s": 5, "arrival": {"kind": "poisson"}, "lengths": {"input": 256, "output": 32},
                    "scheduler": {"kind": "continuous", "max_num_seqs": 64, "max_batched_tokens": 8192},
                    "slo": {"ttft_s": 1.0, "tpot_s": 0.1, "percentile": 90}},
        "goal": {"request_rate": 2},
        "hardware": [{"name": name, "usd_per_device_hour": 1.0} for name in hardware],
        "search": {"tp": [1], "pp": [1], **({"dtype": dtypes} if dtypes else {})},
        "limits": {"max_devices": 1}, "objective": "cost", "top_k": 4,
    }
    return parse_plan(data)


def test_a_float4_serving_plan_keeps_devices_without_fp4_units_as_weight_only() -> None:
    """The trial's `llmsim plan` refused a float4 plan listing an h100 ('no catalog peak FLOP/s for float4') while
    `llmsim run` prices it weight-only; and searching [float8, float4] crashed on a float4 workload (the float8
    candidate kept the fp4 block)."""
    plan = _fp4_serving_plan(["b200", "h100-sxm", "mi355x"], None)
    check_hardware(plan, CATALOG, "p.yaml")          # no refusal
    from llmsim.planner.precisions import candidates, describe_label, workload_for
    for name in ("b200", "h100-sxm", "mi355x"):
        found, dropped = candidates(plan, CATALOG.device(name))
        assert [c.workload.dtype for c in found] == ["float4"] and not dropped, name
    both = _fp4_serving_plan(["h100-sxm"], ["float8", "float4"])
    labels = [c.label for c in candidates(both, CATALOG.device("h100-sxm"))[0]]
    assert labels == ["float8-delayed", ""]
    assert workload_for(both, "float8-delayed").fp4 is None and workload_for(both, "float8-delayed").dtype == "float8"
    assert describe_label(both, "") == "float4 (nvfp4)"
    bf16 = _fp4_serving_plan(["h100-sxm"], ["bfloat16"])
    assert workload_for(bf16, "bfloat16").fp4 is None


def test_float4_training_plan_has_no_candidates_on_devices_without_nvfp4_units() -> None:
    plan = _plan(2.0, ["bfloat16", "float4"], hardware=[{"name": "gb200", "usd_per_device_hour": 7.0},
                                                        {"name": "mi355x", "usd_per_device_hour": 5.0}])
    gb200, _ = candidates_of(plan, "gb200")
    mi355x, dropped = candidates_of(plan, "mi355x")
    assert "float4" in [c.label for c in gb200] and "float4" not in [c.label for c in mi355x]
    assert any("OCP MX scales only" in d for d in dropped)


def candidates_of(plan: Any, name: str) -> tuple[list, list[str]]:
    from llmsim.planner.precisions import candidates
    return candidates(plan, CATALOG.device(name))


def test_a_float4_plan_says_which_hardware_prices_it_weight_only() -> None:
    """Trial 34: `llmsim plan --set workload.dtype=float4` on H100s priced NVFP4 weight-only and said nothing, where
    `llmsim run` says so: the plan says it per hardware choice in run's words; a B200 (FP4 tensor cores) is silent."""
    from llmsim.planner.config import parse_plan
    from llmsim.planner.search import resolve_hardware, weight_only_notes
    data = yaml.safe_load(Path("scenarios/plan-serve-8b.yaml").read_text())
    data["workload"]["dtype"] = "float4"
    data["hardware"] = [{"name": "h100-sxm", "usd_per_device_hour": 3.5}, {"name": "b200", "usd_per_device_hour": 6}]
    plan = parse_plan(data)
    notes = weight_only_notes(plan, resolve_hardware(plan, load_catalog()))
    assert notes == ["hardware h100-sxm: device 'h100-sxm' has no FP4 tensor cores (no float4 peak in the catalog): "
                     "nvfp4 is priced weight-only (weights stored and read at 4.5 bits, GEMMs at the 16-bit rate, "
                     "as vLLM's Marlin FP4 kernels run it)"]
