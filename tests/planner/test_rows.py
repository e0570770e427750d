"""search.Rows: the search's rows as columns, an Evaluation made only for a row that is read. Each read row is the
Evaluation the table path made row by row (table_evaluations), ranking the columns is ranking the Evaluations, and
plan_frame's columns are the per-row records it wrote from Evaluations."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmsim.planner.precisions import workload_for
from llmsim.planner.report import (CONTRACT_COLUMNS, EXTRA_COLUMNS, NOT_PLACED, NOT_SIMULATED, STRATEGY_COLUMNS,
                                   plan_frame)
from llmsim.planner.run import run_plan
from llmsim.planner.search import (Rows, chain_kept, precision_contexts, rank, search, sharing_choice,
                                   table_evaluations, table_rows, workload_profile)
from llmsim.planner.space import Config, axes_of, chains, groups
from llmsim.planner.table import price_table
from llmsim.stages import describe_split
from tests.planner.helpers import BASE, hardware, small_catalog, small_plan


def test_a_read_row_is_the_evaluation_the_table_made_row_by_row() -> None:
    """Every row of a priced table (those over memory among them) read from Rows equals table_evaluations' row."""
    plan = small_plan()
    sharing = sharing_choice(plan)
    checked = over = 0
    for hw, label, ctx in precision_contexts(plan, hardware(plan, small_catalog()), sharing,
                                             workload_profile(plan.workload, sharing)):
        axes = axes_of(ctx.plan, hw.devices_per_node)
        configs = [c for g in groups(ctx.plan, hw.name, hw.devices_per_node, axes, label)
                   for chain in chains(ctx.plan, g, axes) for c in chain]
        table = price_table(ctx, configs)
        old = table_evaluations(ctx, table)
        rows = table_rows(ctx, table, np.arange(len(table)))
        for i in range(len(table)):
            assert rows[i] == old(i), configs[i]
            assert rows[i] is rows[i]  # made once
        checked += len(table)
        over += int((~rows.columns["fits"]).sum())
    assert checked > 500 and over > 0


@pytest.mark.parametrize("seed", range(5))
def test_chain_kept_is_the_search_loop(seed: int) -> None:
    """chain_kept keeps a chain's rows up to its first that does not fit, as the loop over chains did."""
    rng = random.Random(seed)
    lengths = [rng.randint(1, 6) for _ in range(200)]
    fits = np.array([rng.random() < 0.7 for _ in range(sum(lengths))])
    want, at = [], 0
    for n in lengths:
        for i in range(n):
            want.append(at + i)
            if not fits[at + i]:
                break
        at += n
    assert np.flatnonzero(chain_kept(fits, lengths)).tolist() == want


@pytest.mark.parametrize("objective", ["cost", "time", "energy", "devices"])
def test_ranking_the_columns_is_ranking_the_evaluations(objective: str) -> None:
    plan = small_plan(objective=objective)
    rows, _ = search(plan, hardware(plan, small_catalog()))
    shuffled = rows.take(np.random.default_rng(1).permutation(len(rows)))
    fresh = Rows(shuffled.configs, shuffled.columns, shuffled.limits, shuffled.reasons, shuffled.errors)  # none made
    ranked = rank(fresh, objective)
    assert not ranked.made()  # ranked without an Evaluation
    assert [e.config for e in ranked] == [e.config for e in rank(list(fresh), objective)]


def test_fields_and_names_are_the_configurations_and_travel_with_the_rows() -> None:
    """Rows.field(f) holds every row's Config.f (ints and bools as such, the rest the objects themselves) and
    Rows.names() its Config.name, read once, and the same after take and concat."""
    plan = small_plan()
    rows, _ = search(plan, hardware(plan, small_catalog()))
    fields = [f.name for f in dataclasses.fields(Config)]

    def check(r: Rows) -> None:
        for f in fields:
            got = r.field(f)
            assert got.tolist() == [getattr(c, f) for c in r.configs], f
            assert got.dtype == {"int": np.int64, "bool": np.bool_}.get(Config.__annotations__[f], object), f
            assert r.field(f) is got  # read once
        assert r.names().tolist() == [c.name for c in r.configs]
    check(rows)
    shuffled = rows.take(np.random.default_rng(2).permutation(len(rows)))
    assert shuffled._fields.keys() == rows._fields.keys()  # carried, not read again
    check(shuffled)
    half = len(rows) // 2
    joined = Rows.concat([rows.take(np.arange(half)), rows.take(np.arange(half, len(rows)))])
    assert joined._fields.keys() == rows._fields.keys()
    check(joined)
    assert [c for c in joined.configs] == list(rows.configs)


def test_take_keeps_the_evaluations_made_at_their_new_places() -> None:
    plan = small_plan()
    rows, _ = search(plan, hardware(plan, small_catalog()))
    made = {i: rows[i] for i in (0, 3, 7)}
    order = np.array([7, 1, 0, 7, 5])  # a row twice, rows left out
    taken = rows.take(order)
    assert taken.made() == {0: made[7], 2: made[0], 3: made[7]}
    assert [e.config for e in taken] == [rows.configs[i] for i in order]


def _records_frame(rows, hardware, layers, plan) -> pd.DataFrame:
    """plan_frame's columns as it built them before Rows: one record of Python values per Evaluation."""
    price = {h.name: h.usd_per_device_hour for h in hardware}
    per_node = {h.name: h.devices_per_node for h in hardware}
    records = []
    for e in rows:
        c = e.config
        split = c.stage_layers or (c.plan().layers_per_stage(layers) if layers else ())
        w = workload_for(plan, c.precision)
        records.append((c.name, c.dp, c.tp, c.pp, c.cp, c.ep, c.sp, c.zero, c.micro_batch, c.microbatches, c.schedule,
                        c.virtual_stages, c.recompute, describe_split(split) if split else None, w.dtype,
                        w.fp8.recipe if w.fp8 is not None else None, c.hardware,
                        c.n_devices, e.feasible, e.reason, e.step_time_s,
                        e.time_to_goal_s, e.cost_usd, e.energy_j, -(-c.n_devices // per_node[c.hardware]),
                        e.tokens_per_s, e.latency_s, e.mfu, e.memory_bytes, e.capacity_bytes, e.compute_time_s,
                        e.comm_time_s, e.bubble_time_s, e.other_time_s, e.power_w, price[c.hardware],
                        *((e.sim.get("step_time_s"), e.sim.get("time_to_goal_s"), e.sim.get("cost_usd"),
                           e.sim.get("energy_j"), e.sim.get("feasible")) if e.sim else NOT_SIMULATED),
                        *(("x".join(map(str, c.topology)) or None, c.slices if c.topology else None,
                           " ".join(f"{axis}:{dims}" for axis, dims in c.mesh) or None)
                          if c.topology or c.mesh else NOT_PLACED)))
    return pd.DataFrame.from_records(records, columns=STRATEGY_COLUMNS + CONTRACT_COLUMNS + EXTRA_COLUMNS)


@pytest.mark.parametrize("case", ["simulated", "tpu", "nothing-fits", "no-row", "inference"])
def test_plan_frame_columns_are_the_per_row_records(case: str, tmp_path: Path) -> None:
    """The same values and dtypes (a column no row has a number for stays a column of None) as records of each
    Evaluation: with the simulation's columns, a TPU's placements, no row priced, no row, and an inference plan (rows
    priced one by one: Rows.from_evaluations)."""
    catalog = small_catalog()
    if case == "simulated":
        plan = small_plan(simulate=True)
    elif case == "tpu":
        plan = small_plan(workload={"model": {"preset": "tiny", "layers": 4}, "mode": "train", "batch": 64},
                          hardware=[{"name": "tpu-v5p", "usd_per_device_hour": 4.2}],
                          limits={"max_devices": 64, "memory_headroom": 0.0},
                          search={"cp": [1], "pp": [1, 2], "tp": [1, 4], "virtual_stages": [2], "micro_batch": [1]})
        catalog = BASE
    elif case in ("nothing-fits", "no-row"):  # rows all over memory; every group pruned
        plan = small_plan(hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4}])
        catalog = small_catalog(4e5 if case == "nothing-fits" else 2e5)
    else:
        plan = small_plan(workload={"model": {"preset": "tiny", "layers": 4}, "mode": "decode", "batch": 8,
                                    "decode_tokens": 4},
                          goal={"tokens_per_s": 10.0})
    outcome = run_plan(plan, catalog, tmp_path)
    frame = plan_frame(outcome.rows, outcome.hardware, plan.workload.model.layers, plan, outcome.top,
                       outcome.simulated)
    want = _records_frame(list(outcome.rows), outcome.hardware, plan.workload.model.layers, plan)
    pd.testing.assert_frame_equal(frame[want.columns], want, check_exact=True)
    if case == "simulated":
        assert frame["sim_step_time_s"].notna().sum() == len(outcome.top) > 1
    if case == "nothing-fits":
        assert len(frame) and frame["step_time_s"].dtype == object and frame["step_time_s"].isna().all()
    if case == "no-row":
        assert not len(frame)
