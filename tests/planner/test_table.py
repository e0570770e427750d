"""The table pricing (planner.table, numpy columns over the candidates) against the scalar path
(search.evaluate, one configuration at a time): the same numbers, to 1e-9, on every priced column."""

from __future__ import annotations

import math
from dataclasses import replace
import random
from typing import Any

import numpy as np
import pytest

from llmsim.planner.search import (Context, evaluate, precision_contexts, search, sharing_choice,
                                   workload_profile)
from llmsim.planner.space import axes_of, chains, groups
from llmsim.planner.table import MEMORY_PARTS, PRICED, price_table
from tests.planner.helpers import hardware, small_catalog, small_plan

SAMPLE = 2500  # random configurations per case, over all its hardware choices


def _space(plan, hw, label: str = "") -> list:
    axes = axes_of(plan, hw.devices_per_node)
    return [replace(c, topology=shape, slices=slices, mesh=mesh)
            for g in groups(plan, hw.name, hw.devices_per_node, axes, label) for chain in chains(plan, g, axes)
            for c in chain for shape, slices, mesh in hw.placements(g)]   # a TPU's slice shapes and mappings


def _compare(plan) -> int:
    """Price a random sample of the plan's space both ways; returns how many configurations were compared.
    One sample per (hardware, precision) the plan searches (planner.precisions)."""
    catalog = small_catalog()
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    rng = random.Random(0)
    compared = 0
    contexts = precision_contexts(plan, hardware(plan, catalog), sharing, profile)
    for hw, label, ctx in contexts:
        space = _space(ctx.plan, hw, label)
        sample = rng.sample(space, min(len(space), SAMPLE // len(contexts)))
        rng.shuffle(sample)  # groups interleaved: the table must not rely on order
        table = price_table(ctx, sample)
        cols = table.columns
        for i, c in enumerate(sample):
            e = evaluate(ctx, c)
            assert bool(cols["fits"][i]) == (e.limits != ("memory",)), c.name
            assert (table.error[i] != "") == (e.limits == ("error",)), c.name
            expected: dict[str, Any] = {"memory_bytes": e.memory_bytes, "power_w": e.power_w, **e.memory_detail}
            expected.update({k: getattr(e, k) for k in PRICED})
            for k, want in expected.items():
                got = cols[k][i]
                if want is None:
                    assert math.isnan(got), (c.name, k, got)
                else:
                    assert got == pytest.approx(want, rel=1e-9, abs=0.0), (hw.name, c.name, k)
            compared += 1
    return compared


def test_table_agrees_with_scalar_on_random_configurations() -> None:
    """bf16 training of a 6-layer model (uneven pipeline splits), tied embeddings, on a GPU that overflows,
    an A100, a TPU v4 torus and TPU v5p slices (several over its data-center network; each configuration its
    own group there, with its slice shape, slice count and mapping)."""
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": "train", "batch": 16},
                      sharing={"tie_embeddings": True},
                      hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4},
                                {"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8},
                                {"name": "tpu-v4"}, {"name": "tpu-v5p"}],
                      limits={"max_devices": 64, "memory_headroom": 0.0, "max_power_w": 9000.0},
                      search={"cp": [1, 2], "virtual_stages": [2, 3]})
    assert _compare(plan) >= 2000


def test_table_agrees_with_scalar_for_a_parallel_block() -> None:
    """workload.model.parallel_block: one tensor-parallel reduction per layer and pass, one norm; the table
    builds each group's work through the same train_work, so both paths agree, on GPUs and a TPU slice."""
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 4, "parallel_block": True}, "mode": "train",
                                "batch": 16},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8},
                                {"name": "tpu-v5p"}],
                      limits={"max_devices": 32, "memory_headroom": 0.0})
    assert _compare(plan) > 500


def test_table_agrees_with_scalar_for_float8() -> None:
    fp8 = small_plan(workload={"model": {"preset": "tiny", "layers": 4}, "mode": "train", "batch": 8,
                               "dtype": "float8"},
                     hardware=[{"name": "h100-sxm", "usd_per_device_hour": 3.0}],
                     limits={"max_devices": 32, "memory_headroom": 0.0})
    assert _compare(fp8) > 100


def test_table_agrees_with_scalar_with_precision_searched() -> None:
    """search.dtype [bfloat16, float8] over an A100 (no FP8: bf16 only), an H100 (delayed scaling) and a B200
    (MXFP8 by default): float8 rows of two recipes beside bf16 ones, both paths the same."""
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 4}, "mode": "train", "batch": 8},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0},
                                {"name": "h100-sxm", "usd_per_device_hour": 3.0},
                                {"name": "b200", "usd_per_device_hour": 5.0}],
                      search={"dtype": ["bfloat16", "float8"], "cp": [1, 2], "virtual_stages": [2]},
                      limits={"max_devices": 16, "memory_headroom": 0.0})
    labels = {(hw.name, label) for hw, label, _ in precision_contexts(plan, hardware(plan, small_catalog()),
                                                                       sharing_choice(plan))}
    assert labels == {("a100-80gb", ""), ("h100-sxm", ""), ("h100-sxm", "float8-delayed"), ("b200", ""),
                      ("b200", "float8-mxfp8")}
    assert _compare(plan) > 1000


def test_table_agrees_with_scalar_for_a_mixture_of_experts() -> None:
    """ep as a search dimension: the routed experts' memory is sharded over the expert-data-parallel group
    (edp = cp*dp/ep), their all-to-alls are in each group's work; both paths the same."""
    moe = small_plan(workload={"model": {"preset": "tiny-moe"}, "mode": "train", "batch": 16},
                     hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4},
                               {"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8}],
                     limits={"max_devices": 32, "memory_headroom": 0.0})
    assert _compare(moe) > 500


def test_search_prices_inference_row_by_row() -> None:
    prefill = small_plan(workload={"model": {"preset": "tiny", "layers": 4}, "mode": "prefill", "batch": 8},
                         goal={"tokens_per_s": 1e6}, limits={"max_devices": 16, "memory_headroom": 0.0})
    hw = hardware(prefill, small_catalog())
    rows, _ = search(prefill, hw, pricing="table")
    assert [(e.config, e.step_time_s) for e in rows] == \
        [(e.config, e.step_time_s) for e in search(prefill, hw, pricing="scalar")[0]]
    with pytest.raises(ValueError, match="row by row"):
        price_table(Context(prefill, hw[0], workload_profile(prefill.workload, sharing_choice(prefill)),
                            sharing_choice(prefill)), [rows[0].config])


def test_search_rows_are_the_same_both_ways() -> None:
    plan = small_plan(limits={"max_devices": 16, "memory_headroom": 0.0})
    hw = hardware(plan, small_catalog())
    table_rows, table_stats = search(plan, hw, pricing="table")
    scalar_rows, scalar_stats = search(plan, hw, pricing="scalar")
    assert [e.config for e in table_rows] == [e.config for e in scalar_rows]
    assert [(e.feasible, e.reason, e.limits) for e in table_rows] == \
        [(e.feasible, e.reason, e.limits) for e in scalar_rows]
    assert np.allclose([e.shortfall for e in table_rows], [e.shortfall for e in scalar_rows], rtol=1e-9, atol=0)
    table_stats.seconds = scalar_stats.seconds = 0.0
    assert table_stats == scalar_stats


def test_stage_terms_shared_between_groups_do_not_depend_on_what_the_key_drops() -> None:
    """The table computes a stage's memory terms and parameters once per `_stage_key` (the plan less dp, ZeRO,
    the micro-batch count and the schedule's name) and shares them between groups; on every training
    configuration of a space they equal the ones of the configuration's own plan."""
    from llmsim.costmodel.memory import memory_stages, stage_memory_terms, stage_params
    from llmsim.planner.table import _stage_key

    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": "train", "batch": 16},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8}],
                      limits={"max_devices": 32, "memory_headroom": 0.0},
                      search={"cp": [1, 2], "virtual_stages": [2, 3]})
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    w = plan.workload
    checked = 0
    for hw in hardware(plan, small_catalog()):
        for c in _space(plan, hw):
            own = c.plan()
            shared = _stage_key(own, whole=False)
            assert memory_stages(w, shared) == memory_stages(w, own)
            for st in memory_stages(w, own):
                opts = Context(plan, hw, profile, sharing).options
                assert stage_memory_terms(w, profile, sharing, shared, opts, st) == \
                    stage_memory_terms(w, profile, sharing, own, opts, st), (c.name, st)
            for index in range(own.pp):
                assert stage_params(w, profile, sharing, shared, index) == stage_params(w, profile, sharing, own,
                                                                                        index)
            checked += 1
    assert checked > 100


def test_only_groups_with_a_row_that_fits_are_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory first, as evaluate: the work is built once per group with a row that fits, never for a group whose
    rows all overflow; those rows have NaN step columns and no error (evaluate stops at the memory verdict)."""
    from llmsim.planner import table as table_module

    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": "train", "batch": 16},
                      hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4}],
                      limits={"max_devices": 16, "memory_headroom": 0.0})
    sharing = sharing_choice(plan)
    hw = hardware(plan, small_catalog())[0]
    ctx = Context(plan, hw, workload_profile(plan.workload, sharing), sharing)
    configs = _space(plan, hw)
    timed: list = []  # one micro-batch size per group built (train_works builds a family's at once)
    real = table_module.train_works
    monkeypatch.setattr(table_module, "train_works", lambda *args: timed.extend(args[5]) or real(*args))
    table = price_table(ctx, configs)
    fits = table.columns["fits"]
    keys = [table_module.group_key(ctx, c) for c in configs]
    with_fit = {k for k, ok in zip(keys, fits) if ok}
    assert 0 < len(with_fit) < len(set(keys))   # the small GPU overflows some whole groups
    assert len(timed) == len(with_fit)
    assert np.isnan(table.columns["step_time_s"][~fits]).all()
    assert not np.isnan(table.columns["step_time_s"][fits]).any()
    assert all(table.error[i] == "" for i in np.flatnonzero(~fits))


def test_float8_memory_terms_follow_each_devices_fp8_gemm_layouts() -> None:
    """One search over an H100 (two FP8 copies of each weight) and a B200 (one: delayed scaling on SM 10.0,
    precision.copies): the table shares stage memory terms between hardware choices, so it must key them by
    the device's FP8 GEMM layouts; both paths give the same rows, and a B200 row keeps less than an H100 row
    of the same shape."""
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 4}, "mode": "train", "batch": 8,
                                "dtype": "float8", "fp8": {"recipe": "delayed"}},
                      hardware=[{"name": "h100-sxm", "usd_per_device_hour": 3.0, "devices_per_node": 4},
                                {"name": "b200", "usd_per_device_hour": 5.0, "devices_per_node": 4}],
                      limits={"max_devices": 8, "memory_headroom": 0.0})
    hw = hardware(plan, small_catalog())
    table_rows, _ = search(plan, hw, pricing="table")
    scalar_rows, _ = search(plan, hw, pricing="scalar")
    assert [e.config for e in table_rows] == [e.config for e in scalar_rows]
    assert np.allclose([e.memory_bytes for e in table_rows], [e.memory_bytes for e in scalar_rows], rtol=1e-9, atol=0)
    memory = {(e.config.hardware, replace(e.config, hardware="")): e.memory_bytes for e in table_rows}
    pairs = [(memory[("h100-sxm", c)], m) for (name, c), m in memory.items() if name == "b200"]
    assert pairs and all(b200 < h100 for h100, b200 in pairs)


def test_table_combines_each_stage_count_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step is combined per width (`_combine_by_width`): each `_combine` call gets the groups with one count
    of distinct stages (1 without a pipeline, 3 for first | middle | last, one per stage when interleaved), not
    every row padded to the widest group's; the rows still agree with `evaluate` (_compare), over 1 to 12 stages."""
    from llmsim.planner import table
    widths: list[set[int]] = []
    combine = table._combine

    def recorded(ctx, r, groups, group_of, *shared):
        widths.append({len(g.steps) for g in groups})
        return combine(ctx, r, groups, group_of, *shared)
    monkeypatch.setattr(table, "_combine", recorded)
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 12}, "mode": "train", "batch": 16},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8}],
                      limits={"max_devices": 64, "memory_headroom": 0.0}, search={"cp": [1], "virtual_stages": [2, 3]})
    assert _compare(plan) > 1000
    assert all(len(w) == 1 for w in widths), widths
    seen = set().union(*widths)
    assert {1, 2, 3} <= seen and max(seen) >= 4, seen


def test_dense_stage_terms_split_into_static_and_activation_terms_agree() -> None:
    """A dense model's memory terms are shared in two parts (table._stage_terms): the terms without activations
    per `_static_key` (no micro-batch, recompute, sp, cp) and the activation terms per stage kind and what sizes
    them; put together, on every training configuration of a space (in a shuffled order, so that each part is
    first computed for another configuration), they equal the configuration's own stage_memory_terms."""
    from llmsim.costmodel.memory import memory_stages, stage_memory_terms
    from llmsim.planner.table import MEMORY_FIELDS, _stage_terms

    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 7}, "mode": "train", "batch": 16},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8}],
                      limits={"max_devices": 32, "memory_headroom": 0.0},
                      search={"cp": [1, 2], "virtual_stages": [2, 3],
                              "recompute": ["none", "selective-op", "selective-dots", "full"]})
    sharing = sharing_choice(plan)
    profile = workload_profile(plan.workload, sharing)
    w = plan.workload
    checked = 0
    for hw in hardware(plan, small_catalog()):
        ctx = Context(plan, hw, profile, sharing)
        space = _space(plan, hw)
        random.Random(1).shuffle(space)
        shared: dict = {}
        for c in space:
            own = c.plan()
            got = _stage_terms(ctx, c, shared)
            want = [stage_memory_terms(w, profile, sharing, own, ctx.options, st, device=hw.device)
                    for st in memory_stages(w, own)]
            assert [tuple(t) for t in got] == [tuple(getattr(t, f) for f in MEMORY_FIELDS) for t in want], c.name
            checked += 1
    assert checked > 100


def test_rows_are_grouped_as_group_key_says() -> None:
    """price_table tells the rows apart by integer columns (table._grouped) and calls group_key once per
    distinct one: the same groups, numbered in the order of their first rows, as group_key row by row, for a
    dense bf16 workload (GPipe and 1F1B together), float8 (the micro-batch count in the key) and TPU slices
    (each configuration its own group, several slices with replicas over the data-center network)."""
    from llmsim.planner import table as table_module

    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": "train", "batch": 16},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8},
                                {"name": "h100-sxm", "usd_per_device_hour": 3.0}, {"name": "tpu-v5p"}],
                      search={"dtype": ["bfloat16", "float8"], "cp": [1, 2], "virtual_stages": [2]},
                      limits={"max_devices": 64, "memory_headroom": 0.0})
    sharing = sharing_choice(plan)
    rng = random.Random(1)
    seen = set()
    for hw, label, ctx in precision_contexts(plan, hardware(plan, small_catalog()), sharing,
                                             workload_profile(plan.workload, sharing)):
        configs = _space(ctx.plan, hw, label)
        rng.shuffle(configs)
        keys, firsts, group_of, rows = table_module._grouped(ctx, configs)
        want: dict[tuple, int] = {}
        expected = [want.setdefault(table_module.group_key(ctx, c), len(want)) for c in configs]
        assert keys == want and group_of.tolist() == expected
        assert firsts == [expected.index(g) for g in range(len(want))]
        assert rows.edp.tolist() == [c.plan().edp for c in configs]
        assert rows.zero_dp.tolist() == [c.plan().zero_dp for c in configs]
        assert rows.v.tolist() == [c.v for c in configs] and rows.schedule.tolist() == [c.schedule for c in configs]
        seen.add((hw.node.is_torus, label, any(c.dcn_replicas > 1 for c in configs)))
    assert {(False, "", False), (False, "float8-delayed", False), (True, "", True)} <= seen


def test_groups_that_differ_only_in_the_micro_batch_size_are_built_as_one_family() -> None:
    """table._families puts the groups whose keys differ only in the micro-batch size together (a dense bf16
    workload; every group alone with float8, whose groups fix the micro-batch count), and _family builds
    each member's numbers (_Group.steps: every stage's seconds per micro-batch, parameters, bytes, ZeRO-3
    terms) as it builds that group alone. A number of a family's first member given to the others (one that
    follows the micro-batch size) fails here; so does a family missing from the space (families of one)."""
    from llmsim.planner import table as table_module

    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": "train", "batch": 16},
                      sharing={"tie_embeddings": True},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8},
                                {"name": "h100-sxm", "usd_per_device_hour": 3.0}],
                      search={"dtype": ["bfloat16", "float8"], "cp": [1, 2], "virtual_stages": [2, 3]},
                      limits={"max_devices": 32, "memory_headroom": 0.0})
    sharing = sharing_choice(plan)
    families_seen = 0
    for hw, label, ctx in precision_contexts(plan, hardware(plan, small_catalog()), sharing,
                                             workload_profile(plan.workload, sharing)):
        configs = _space(ctx.plan, hw, label)
        random.Random(2).shuffle(configs)
        keys, firsts, _, _ = table_module._grouped(ctx, configs)
        families = table_module._families(ctx, list(keys))
        assert sorted(g for f in families for g in f) == list(range(len(keys)))
        if label:  # float8: the key holds the micro-batch count
            assert all(len(f) == 1 for f in families)
            continue
        several = [f for f in families if len(f) > 1]
        assert several
        for family in several[:40]:
            members = [configs[firsts[g]] for g in family]
            assert len({m.micro_batch for m in members}) == len(members)
            together = table_module._family(ctx, members, {}, {})
            alone = [table_module._family(ctx, [m], {}, {})[0] for m in members]
            assert [(g.steps, g.error, g.node) for g in together] == [(g.steps, g.error, g.node) for g in alone]
            families_seen += 1
    assert families_seen >= 40


def test_widths_share_data_parallel_placements_and_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """_combine_by_width hands one `_DpPrices` to every width's `_combine`: each data-parallel collective is
    priced once per distinct (fabric, placed group, op, bytes) over the whole table, and every column is
    exactly what a fresh one per width gives (the placement numbers differ; the prices they stand for do
    not). A memo keyed by something coarser than the placed group (two placements one number) fails the
    equality; one keyed finer (tp, cp, pp, dp) prices a collective twice and fails the count."""
    from llmsim.planner import table as table_module

    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 12}, "mode": "train", "batch": 16},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8}],
                      limits={"max_devices": 64, "memory_headroom": 0.0},
                      search={"cp": [1, 2], "zero": [0, 1, 3], "virtual_stages": [2, 3]})
    sharing = sharing_choice(plan)
    (hw, label, ctx), = precision_contexts(plan, hardware(plan, small_catalog()), sharing,
                                           workload_profile(plan.workload, sharing))
    configs = _space(ctx.plan, hw, label)
    asked: list[tuple] = []
    comm, unit_times = table_module.Comm, table_module.zero3_unit_times

    def counted_comm(op, size, group, *rest):
        asked.append((op, size, group))
        return comm(op, size, group, *rest)

    def counted_units(group, fabric, *units):
        asked.append(("zero3", group, *units))
        return unit_times(group, fabric, *units)
    monkeypatch.setattr(table_module, "Comm", counted_comm)
    monkeypatch.setattr(table_module, "zero3_unit_times", counted_units)
    shared = price_table(ctx, configs).columns
    assert len(asked) == len(set(asked)) > 100   # one fabric here: each collective priced once
    widths = set()
    combine = table_module._combine

    def fresh(ctx, r, groups, group_of, *_shared):  # the placements and prices of this width alone
        widths.add(len(groups[0].steps))
        return combine(ctx, r, groups, group_of)
    monkeypatch.setattr(table_module, "_combine", fresh)
    alone = price_table(ctx, configs).columns
    assert len(widths) >= 3
    assert len(asked) > 2 * len(set(asked))   # width by width, the same collectives asked again
    for k in PRICED:
        np.testing.assert_array_equal(shared[k], alone[k], err_msg=k)
