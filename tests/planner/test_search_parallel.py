"""search() on forked workers (executor.ForkExecutor: one (hardware, precision) per process) against search() in
this process: the same rows in the same order, the same counts, the same progress lines; Rows pickled as columns."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmsim.executor import ForkExecutor, fork_available
from llmsim.hardware import load_catalog
from llmsim.planner.columns import CONFIG_FIELDS, ConfigColumns
from llmsim.planner import search as search_module
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


_PRICE_CONTEXT = search_module.price_context
_PIDS_AT: Path | None = None  # where _recorded writes (set by _pricing_pids)


def _recorded(caches: Any, task: Any) -> Any:
    """search.price_context, leaving a file named by the process that ran it (module-level: the executor pickles
    it by name; a forked worker inherits the patched module)."""
    assert _PIDS_AT is not None
    (_PIDS_AT / f"priced-{os.getpid()}-{task[1].name}-{task[2]}").touch()
    return _PRICE_CONTEXT(caches, task)


def _pricing_pids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], set[int]]:
    """Record the process that prices each context (search.price_context, looked up when search runs): the ids
    of those processes, read back from files in tmp_path."""
    monkeypatch.setattr(search_module, "price_context", _recorded)
    monkeypatch.setattr(sys.modules[__name__], "_PIDS_AT", tmp_path)
    return lambda: {int(p.name.split("-")[1]) for p in tmp_path.glob("priced-*")}


@needs_fork
@pytest.mark.parametrize("case", CASES)
def test_forked_search_equals_the_search_in_this_process(case: str, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    plan, catalog = CASES[case]()
    here, here_stats, here_lines = _searched(plan, catalog, None)
    pids = _pricing_pids(monkeypatch, tmp_path)
    forked, forked_stats, forked_lines = _searched(plan, catalog, ForkExecutor(max_workers=2))
    _same_rows(forked, here)
    here_stats.seconds = forked_stats.seconds = 0.0
    assert forked_stats == here_stats
    assert forked_lines == here_lines and len(here_lines) == len(set(here_lines)) >= 2  # one per context, in order
    assert len(pids()) == 2 and os.getpid() in pids()  # a worker priced a context: the pipe was crossed
    if plan.workload.mode == "train":  # table pricing: the rows' configurations are columns in either process
        assert isinstance(forked.configs, ConfigColumns) and isinstance(here.configs, ConfigColumns)


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


def test_one_hardware_choice_runs_in_this_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A single context is no reason to fork: it is priced in this process."""
    plan = small_plan(hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 4}])
    pids = _pricing_pids(monkeypatch, tmp_path)
    rows, _ = search(plan, resolve_hardware(plan, small_catalog()), executor=ForkExecutor(max_workers=2))
    assert len(rows) and pids() == {os.getpid()}


def _said(text: str) -> None:
    """search's `live`, appending each line to a file named by the process that said it (module-level: pickled by
    name into a forked worker, which inherits `_PIDS_AT`)."""
    assert _PIDS_AT is not None
    with open(_PIDS_AT / f"said-{os.getpid()}", "a") as f:
        f.write(text + "\n")


def _moe_two_choices() -> Any:
    """A mixture of experts (every configuration its own group: planner.table._whole) on two hardware choices."""
    return small_plan(workload={"model": {"preset": "tiny-moe"}, "mode": "train", "batch": 16},
                      hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4},
                                {"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8}],
                      limits={"max_devices": 16, "memory_headroom": 0.0})


def _pricing_lines(lines: list[str], name: str) -> tuple[int, list[tuple[int, int]]]:
    """(the count a context's first line says it prices, the (done, total) of its later lines), of `name`."""
    mine = [line.removeprefix(f"{name}: ") for line in lines if line.startswith(f"{name}: ")]
    first = mine[0].removeprefix("pricing ").removesuffix(" configurations (the groups whose weights fit, every "
                                                          "micro-batch)")
    ticks = [tuple(int(x.replace(",", "")) for x in line.removesuffix(" configurations priced").split(" of "))
             for line in mine[1:]]
    return int(first.replace(",", "")), ticks  # type: ignore[misc]


def test_pricing_says_how_many_it_prices_and_how_far_it_got(monkeypatch: pytest.MonkeyPatch) -> None:
    """search's `live` (issue 18: a long pricing is silent): a line as each context's pricing starts with the count
    it screens, then (every table.PROGRESS_EVERY_S seconds, here every group) how many are priced; the rows and the
    ordered progress lines are those of a search without it."""
    plan, catalog = _moe_two_choices(), small_catalog()
    quiet, quiet_stats, quiet_lines = _searched(plan, catalog, None)
    from llmsim.planner import table as table_module

    monkeypatch.setattr(table_module, "PROGRESS_EVERY_S", 0.0)
    said: list[str] = []
    lines: list[str] = []
    rows, stats = search(plan, hardware(plan, catalog), progress=lines.append, live=said.append)
    _same_rows(rows, quiet)
    assert lines == quiet_lines
    for hw in ("small-gpu", "a100-80gb"):
        total, ticks = _pricing_lines(said, hw)
        assert 0 < total <= stats.per_hardware[hw]  # the groups pruned for their weights alone are not priced
        assert len(ticks) >= 2 and all(t == total for _, t in ticks)
        done = [d for d, _ in ticks]
        assert done == sorted(done) and 0 < done[0] and done[-1] == total


@needs_fork
def test_a_forked_worker_says_its_pricing_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The context a forked worker prices says its lines from there (search's `live`, pickled by name)."""
    from llmsim.planner import table as table_module
    monkeypatch.setattr(table_module, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(sys.modules[__name__], "_PIDS_AT", tmp_path)
    plan, catalog = _moe_two_choices(), small_catalog()
    search(plan, hardware(plan, catalog), executor=ForkExecutor(max_workers=2), live=_said)
    by_pid = {int(p.name.split("-")[1]): p.read_text().splitlines() for p in tmp_path.glob("said-*")}
    assert len(by_pid) == 2 and os.getpid() in by_pid
    worker = next(lines for pid, lines in by_pid.items() if pid != os.getpid())
    name = worker[0].split(":")[0]
    total, ticks = _pricing_lines(worker, name)
    assert total > 0 and ticks and ticks[-1] == (total, total)
