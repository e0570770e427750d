"""search() on forked workers (executor.ForkExecutor: one (hardware, precision) per process) against search() in
this process: the same rows in the same order, the same counts, the same progress lines; Rows pickled as columns."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from llmsim.executor import ForkExecutor, fork_available
from llmsim.hardware import load_catalog
from llmsim.planner.columns import CONFIG_FIELDS, ConfigColumns
from llmsim.planner.config import parse_plan
from llmsim.planner.search import NAMES, Rows, SearchStats, resolve_hardware, search
from tests.planner.helpers import hardware, small_catalog, small_plan

needs_fork = pytest.mark.skipif(not fork_available(), reason="forked workers need Linux")


def _fp8_plan() -> Any:
    """Two hardware choices, three contexts: bf16 on both, float8 on the H100 (a precision other than the plan's
    as written: its pruned groups are counted apart, search.SearchCaches.counted)."""
    return parse_plan({
        "name": "fp8-parallel",
        "workload": {"model": {"preset": "gpt3-1.3b", "layers": 4}, "mode": "train", "batch": 16},
        "goal": {"tokens": 1e8},
        "hardware": [{"name": "a100-80gb", "usd_per_device_hour": 1.8}, {"name": "h100-sxm", "usd_per_device_hour": 3}],
        "limits": {"max_devices": 8},
        "search": {"tp": [1, 2], "pp": [1, 2], "cp": [1], "zero": [0, 1, 3], "recompute": ["none"], "sp": [False],
                   "dtype": ["bfloat16", "float8"]},
        "objective": "cost", "simulate": False, "top_k": 2,
    })


CASES = {
    "train, two choices, pruned groups": lambda: (small_plan(), small_catalog(2e6)),
    "train, three precision contexts": lambda: (_fp8_plan(), load_catalog()),
    "prefill, evaluated one by one": lambda: (small_plan(workload={"model": {"preset": "tiny", "layers": 4},
                                                                   "mode": "prefill", "batch": 8},
                                                         goal={"tokens_per_s": 1e5}), small_catalog()),
}


def _searched(plan: Any, catalog: Any, executor: Any) -> tuple[Rows, SearchStats, list[str]]:
    lines: list[str] = []
    rows, stats = search(plan, hardware(plan, catalog), progress=lines.append, executor=executor)
    return rows, stats, lines


def _same_rows(a: Rows, b: Rows) -> None:
    assert len(a) == len(b)
    assert list(a.configs) == list(b.configs)
    assert a.names().tolist() == b.names().tolist()
    for name in CONFIG_FIELDS:
        x, y = a.field(name), b.field(name)
        assert x.dtype == y.dtype and x.tolist() == y.tolist(), name
    assert a.columns.keys() == b.columns.keys()
    for k in a.columns:
        np.testing.assert_array_equal(a.columns[k], b.columns[k], err_msg=k)
    assert (a.limits, a.reasons, a.errors) == (b.limits, b.reasons, b.errors)
    assert list(a) == list(b)  # every Evaluation, made from the columns


@needs_fork
@pytest.mark.parametrize("case", CASES)
def test_forked_search_equals_the_search_in_this_process(case: str) -> None:
    plan, catalog = CASES[case]()
    here, here_stats, here_lines = _searched(plan, catalog, None)
    forked, forked_stats, forked_lines = _searched(plan, catalog, ForkExecutor(max_workers=2))
    _same_rows(forked, here)
    here_stats.seconds = forked_stats.seconds = 0.0
    assert forked_stats == here_stats
    assert forked_lines == here_lines and len(here_lines) == len(set(here_lines)) >= 2  # one per context, in order
    if plan.workload.mode == "train":  # a worker's rows came back as columns: the pipe was crossed
        assert isinstance(forked.configs, ConfigColumns) and not isinstance(here.configs, ConfigColumns)


def test_rows_pickle_as_columns_and_read_back_the_same() -> None:
    plan = small_plan()
    rows, _ = search(plan, hardware(plan, small_catalog(2e6)))
    first = rows[0]  # an Evaluation made before pickling travels as it is
    back = pickle.loads(pickle.dumps(rows))
    assert isinstance(back.configs, ConfigColumns)
    _same_rows(back, rows)
    assert back[0] == first
    order = np.arange(len(rows))[::-1]
    _same_rows(back.take(order), rows.take(order))
    _same_rows(Rows.concat([back, rows]), Rows.concat([rows, rows]))  # columns and Configs joined: columns
    assert NAMES in pickle.loads(pickle.dumps(back))._fields


def test_config_columns_give_python_values() -> None:
    plan = small_plan()
    rows, _ = search(plan, hardware(plan, small_catalog()))
    columns = ConfigColumns({name: rows.field(name) for name in CONFIG_FIELDS})
    assert list(columns) == list(rows.configs) and columns[-1] == rows.configs[-1]
    c = columns[0]
    assert type(c.dp) is int and type(c.sp) is bool and type(c.stage_layers) is tuple  # not numpy scalars
    assert hash(c) == hash(rows.configs[0]) and c.name == rows.configs[0].name
    assert columns[1:3] == list(rows.configs[1:3])
    with pytest.raises(IndexError):
        columns[len(rows)]
    with pytest.raises(ValueError, match="missing: hardware"):
        ConfigColumns({name: rows.field(name) for name in CONFIG_FIELDS[1:]})


def test_one_hardware_choice_runs_in_this_process() -> None:
    """A single context is no reason to fork: the rows keep their Configs."""
    plan = small_plan(hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 4}])
    rows, _ = search(plan, resolve_hardware(plan, small_catalog()), executor=ForkExecutor(max_workers=2))
    assert not isinstance(rows.configs, ConfigColumns)
