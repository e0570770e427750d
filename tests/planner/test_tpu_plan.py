"""Issue 19: on TPU hardware the planner searches slice shapes, slice counts (multi-slice over DCN) and axis
mappings; the report names each configuration's topology and mapping, and best.yaml reproduces it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from llmsim.cli import main
from llmsim.planner.run import run_plan
from llmsim.planner.search import search
from llmsim.planner.space import slice_layouts
from tests.planner.helpers import BASE, hardware, small_plan

V5P = BASE.devices["tpu-v5p"].torus


def test_slice_layouts_cover_shapes_slice_counts_and_pins() -> None:
    """dp16 x tp8 = 128 v5p chips: one 4x4x8 slice (tp laid on x,y by default, or pinned to the 8-ring z),
    2 slices of 4x4x4, ... down to 32 slices of 2x2x1; never a shape the v5p does not offer."""
    got = slice_layouts(V5P.slice_shapes, 3, V5P.wrap_multiple, dp=16, tp=8, pp=1, cp=1, dcn=True)
    assert ((4, 4, 8), 1, ()) in got and ((4, 4, 8), 1, (("tp", "z"),)) in got
    assert {(shape, slices) for shape, slices, _ in got} == {
        ((4, 4, 8), 1), ((4, 4, 4), 2), ((2, 4, 4), 4), ((2, 2, 4), 8), ((2, 2, 2), 16)}
    # x and y of a 2x2x4 slice are alike: tp on xz and on yz is one candidate
    assert sum(1 for shape, slices, mesh in got if slices == 8 and mesh) == 1
    assert all(V5P.slice_shapes.offers(shape) for shape, _, _ in got)
    # without a data-center link (TPU v4 in the catalog) only one slice
    assert {s for _, s, _ in slice_layouts(V5P.slice_shapes, 3, 4, dp=16, tp=8, pp=1, cp=1, dcn=False)} == {1}


def _tpu_plan(**over):
    return small_plan(workload={"model": {"preset": "tiny", "layers": 4}, "mode": "train", "batch": 64},
                      hardware=[{"name": "tpu-v5p", "usd_per_device_hour": 4.2}],
                      limits={"max_devices": 64, "memory_headroom": 0.0},
                      search={"cp": [1], "pp": [1, 2], "tp": [1, 4], "virtual_stages": [2], "micro_batch": [1]},
                      **over)


def test_the_search_prices_each_placement_and_the_report_names_it(tmp_path: Path, capsys) -> None:
    plan = _tpu_plan()
    rows, _ = search(plan, hardware(plan, BASE))
    placed = {(e.config.n_devices, e.config.topology, e.config.slices, e.config.mesh) for e in rows}
    assert (64, (4, 4, 4), 1, ()) in placed and (64, (2, 4, 4), 2, ()) in placed
    assert any(mesh for _, _, _, mesh in placed)
    # the same degrees on another placement are another row, with its own time
    by_degrees: dict[tuple, set] = {}
    for e in rows:
        if e.step_time_s is not None:
            c = e.config
            by_degrees.setdefault((c.n_devices, c.dp, c.tp, c.pp, c.zero, c.recompute, c.schedule, c.sp),
                                  set()).add(round(e.step_time_s, 15))
    assert any(len(times) > 1 for times in by_degrees.values())
    outcome = run_plan(plan, BASE, tmp_path / "plan", simulate=False)
    frame = pd.read_csv(outcome.run_dir / "plan.csv")
    assert {"topology", "slices", "mesh"} <= set(frame.columns) and frame["topology"].notna().all()
    best = outcome.top[0].config
    text = (outcome.run_dir / "best.yaml").read_text()
    assert f"topology: {'x'.join(map(str, best.topology))}" in text
    assert main(["run", str(outcome.run_dir / "best.yaml"), "--backend", "roofline", "--out", str(tmp_path)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    row = pd.read_csv(run_dir / "results.csv").iloc[0]
    assert row["status"] == "ok" and row["nodes"] == best.slices
    assert row["step_time_s"] == pytest.approx(outcome.top[0].step_time_s, rel=1e-9)


def test_best_yaml_of_a_pinned_multi_slice_configuration_reproduces_its_time(tmp_path: Path, capsys) -> None:
    import yaml

    from llmsim.planner.report import best_scenario
    plan = _tpu_plan()
    [hw] = hardware(plan, BASE)
    rows, _ = search(plan, [hw])
    e = next(e for e in rows if e.config.mesh and e.config.slices > 1 and e.step_time_s is not None)
    path = tmp_path / "pinned.yaml"
    path.write_text(yaml.safe_dump(best_scenario(plan, e, hw)))
    assert main(["run", str(path), "--backend", "roofline", "--out", str(tmp_path)]) == 0
    row = pd.read_csv(Path(capsys.readouterr().out.strip().splitlines()[-1]) / "results.csv").iloc[0]
    assert row["status"] == "ok" and row["nodes"] == e.config.slices
    assert row["step_time_s"] == pytest.approx(e.step_time_s, rel=1e-9)
