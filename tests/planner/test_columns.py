"""planner.columns.ChainedConfigs: the search's candidates as chains (a head Config per chain, the micro-batch size
and count per row) read back as the Configs space.chains makes, field by field, name by name, and priced the same
as those Configs one chain each."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from llmsim.planner.columns import CONFIG_FIELDS, ChainedConfigs, config_columns
from llmsim.planner.search import chained_configs, precision_contexts, sharing_choice, workload_profile
from llmsim.planner.space import axes_of, chains, groups
from llmsim.planner.table import COLUMNS, price_table
from tests.planner.helpers import hardware, small_catalog, small_plan


def _plan():
    """A dense plan on a GPU (bf16 and float8) and a TPU (placements: several per chain)."""
    return small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": "train", "batch": 16},
                      hardware=[{"name": "h100-sxm", "usd_per_device_hour": 3.0, "devices_per_node": 8},
                                {"name": "tpu-v5p", "usd_per_device_hour": 4.2}],
                      search={"dtype": ["bfloat16", "float8"], "cp": [1, 2], "virtual_stages": [2]},
                      limits={"max_devices": 16, "memory_headroom": 0.0})


def _contexts(plan):
    sharing = sharing_choice(plan)
    return precision_contexts(plan, hardware(plan, small_catalog()), sharing, workload_profile(plan.workload, sharing))


def _both(ctx, hw, label):
    """(the ChainedConfigs search prices, the Configs of space.chains in the order search laid them out)."""
    axes = axes_of(ctx.plan, hw.devices_per_node)
    kept = [(g, hw.placements(g)) for g in groups(ctx.plan, hw.name, hw.devices_per_node, axes, label)]
    want = [replace(c, topology=shape, slices=slices, mesh=mesh) if shape else c
            for g, places in kept for chain in chains(ctx.plan, g, axes)
            for shape, slices, mesh in places for c in chain]
    return chained_configs(ctx.plan, kept, axes, {}), want


def test_chained_configs_read_back_the_configs_of_the_chains() -> None:
    placed = 0
    for hw, label, ctx in _contexts(_plan()):
        got, want = _both(ctx, hw, label)
        assert len(got) == len(want) > 100
        assert list(got) == want
        assert [hash(c) for c in got] == [hash(c) for c in want]
        c = got[-1]
        assert type(c.micro_batch) is int and type(c.microbatches) is int and type(c.sp) is bool
        assert got[len(got) - 1] == got[-1] and got[2:5] == want[2:5]
        with pytest.raises(IndexError):
            got[len(got)]
        columns = got.columns()
        for name, column in config_columns(want, CONFIG_FIELDS).items():
            assert columns[name].dtype == column.dtype and columns[name].tolist() == column.tolist(), name
        assert got.names().tolist() == [c.name for c in want]
        # a chain's rows one after the other, the head first, the micro-batch growing along it
        starts = np.flatnonzero(np.diff(got.chain_of, prepend=-1))
        assert got.chain_of[starts].tolist() == list(range(len(got.heads)))
        assert [got[i] for i in starts.tolist()] == list(got.heads)
        assert got.lengths().tolist() == np.diff([*starts.tolist(), len(got)]).tolist()
        order = np.array(random.Random(3).sample(range(len(got)), 50))
        taken = got.take(order)
        assert list(taken) == [want[i] for i in order.tolist()]
        assert taken.names().tolist() == [want[i].name for i in order.tolist()]
        placed += any(c.topology for c in want)
    assert placed  # the TPU's chains were placed


def test_configs_of_any_order_are_chains_of_one() -> None:
    hw, label, ctx = _contexts(_plan())[0]
    _, want = _both(ctx, hw, label)
    random.Random(4).shuffle(want)
    one = ChainedConfigs.of_configs(want)
    assert len(one.heads) == len(want) and list(one) == want
    assert ChainedConfigs.of_configs(one) is one


def test_price_table_prices_chains_as_their_configs() -> None:
    """price_table over the chains (their kinds told apart by the chain's fields and the row's micro-batch:
    table._grouped) gives every column the same as over the same Configs given one by one (a chain each)."""
    for hw, label, ctx in _contexts(_plan()):
        got, want = _both(ctx, hw, label)
        chained, listed = price_table(ctx, got), price_table(ctx, want)
        for k in COLUMNS:
            np.testing.assert_array_equal(chained.columns[k], listed.columns[k], err_msg=k)
        assert chained.error == listed.error
        assert list(chained.configs) == list(listed.configs)
