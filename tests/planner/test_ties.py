"""A runner-up that ties the winner on the objective is described as a tie, with the measure that ranks them
(planner.search.objective_key's tie-breaks); it used to read as a different result ('cost +0%')."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from llmsim.planner import run_plan
from llmsim.planner.explain import CHANGE_FIELDS, describe, distinct_runner_up, prices_alike, tie_line, tie_text, versus
from llmsim.planner.search import Rows, objective_key, search
from tests.planner.helpers import hardware, small_catalog, small_plan


def _e(cost: float, time: float, devices: int, energy: float = 1e7, name: str = "a") -> Any:
    return SimpleNamespace(cost_usd=cost, time_to_goal_s=time, energy_j=energy, feasible=True, step_time_s=1.0,
                           shortfall=0.0, config=SimpleNamespace(n_devices=devices, name=name))


def test_a_tie_on_the_objective_names_the_tie_break_that_ranks_the_winner_first() -> None:
    winner, runner = _e(72.0, 0.0072, 16), _e(72.0, 0.0075, 16)
    assert sorted([runner, winner], key=objective_key("cost"))[0] is winner  # what the text must explain
    text = versus(runner, winner, "cost", "token step")
    assert text.startswith("ties the winner on cost (cost $72.00 each); ranked below it by the tie-break, token step: "
                           "7.5 ms against the winner's 7.2 ms; against the winner: cost +0%"), text


def test_a_tie_that_serves_more_tokens_per_s_says_the_ranking_does_not_count_it() -> None:
    """The trial of 2026-12-01: plan-serve-8b's #2 served 20,246 tokens/s against the winner's 20,134 at the same
    cost and ranked below it on token step; the line did not say why more throughput did not rank it first."""
    winner, runner = _e(72.0, 0.0072, 16), _e(72.0, 0.0075, 16)
    winner.tokens_per_s, runner.tokens_per_s = 20134.0, 20246.0
    text = tie_text(runner, winner, "cost", "token step", rate_goal=True)
    assert text is not None and text.endswith(
        "; it serves more tokens/s (20,246 against 20,134), which the ranking does not count once the goal's rate "
        "is met"), text
    assert "tokens/s" not in (tie_text(runner, winner, "cost", "token step") or "")  # a training plan: no rate goal
    winner.tokens_per_s = 20246.0
    assert "tokens/s" not in (tie_text(runner, winner, "cost", "token step", rate_goal=True) or "")


def test_the_same_time_under_objective_time_is_a_tie_broken_by_cost() -> None:
    winner, runner = _e(1000.0, 86400.0 * 3, 64), _e(1500.0, 86400.0 * 3, 64)
    assert tie_text(runner, winner, "time") == ("ties the winner on time to goal (time to goal 3.0 days each); "
                                               "ranked below it by the tie-break, cost: $1,500 against the "
                                               "winner's $1,000")


def test_equal_on_every_measure_says_either_is_as_good() -> None:
    winner, runner = _e(72.0, 0.0072, 16, name="a"), _e(72.0, 0.0072, 16, name="b")
    assert tie_text(runner, winner, "cost") == ("ties the winner on cost and time to goal and devices (cost $72.00 "
                                               "each; time to goal 7.2 ms each; devices 16 each): the "
                                               "configurations' names order them only, so either is as good")


@pytest.mark.parametrize("objective", ["cost", "time", "energy", "devices"])
def test_no_tie_no_tie_text(objective: str) -> None:
    assert tie_text(_e(80.0, 0.008, 32, 2e7), _e(72.0, 0.0072, 16), objective) is None


# --- the runner-up the limits and the sensitivity compare: the best that does not price alike (issue 18 item 5)

@pytest.fixture(scope="module")
def feasible_row() -> Any:
    """A real feasible row of a small plan's search (its Config and memory numbers; the prices are set below)."""
    plan = small_plan(hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 4}])
    rows, _ = search(plan, hardware(plan, small_catalog()))
    return next(e for e in rows if e.feasible)


def _priced(row: Any, cost: float, devices: int | None = None, step: float = 1.0) -> Any:
    """`row` with every PRICE_FIELDS number set from `cost` (the same cost: the same prices), a new object."""
    config = row.config if devices is None else SimpleNamespace(n_devices=devices)
    return replace(row, cost_usd=cost, time_to_goal_s=cost * 10, energy_j=cost * 1e5, step_time_s=step,
                   tokens_per_s=None, latency_s=None, sim={}, config=config)


def test_prices_alike_needs_every_priced_number_and_the_device_count(feasible_row: Any) -> None:
    a = _priced(feasible_row, 72.0)
    assert prices_alike(a, _priced(feasible_row, 72.0))
    assert prices_alike(a, _priced(feasible_row, 72.0 * (1 + 1e-12)))    # a float reordering
    assert not prices_alike(a, _priced(feasible_row, 72.0 * (1 + 1e-6)))  # a real difference, however small
    assert not prices_alike(a, _priced(feasible_row, 72.0, devices=feasible_row.config.n_devices * 2))
    assert not prices_alike(a, _priced(feasible_row, 72.0, step=1.5))
    resimulated = _priced(feasible_row, 72.0)
    a.sim, resimulated.sim = {"cost_usd": 70.0}, {"cost_usd": 71.0}  # alike by the table, not by the simulation
    assert not prices_alike(a, resimulated)


def test_the_runner_up_skips_configurations_that_price_exactly_as_the_winner(feasible_row: Any) -> None:
    winner, tie1, tie2, other, later = (_priced(feasible_row, c) for c in (72.0, 72.0, 72.0, 73.0, 80.0))
    rows = [winner, tie1, tie2, other, later]
    for given in (rows, Rows.from_evaluations(rows)):   # a list, and the search's columns
        top = list(given)[:3]                           # every re-checked one ties: the runner-up is found beyond
        runner, ties = distinct_runner_up(top, given)
        assert runner is other and [id(e) for e in ties] == [id(tie1), id(tie2)]   # equal as dataclasses
        runner, ties = distinct_runner_up([winner, other], given)
        assert runner is other and [id(e) for e in ties] == [id(tie1), id(tie2)]
    line = tie_line([tie1, tie2], other)
    assert line is not None and line.startswith("2 other configurations price exactly as the winner")
    assert line.endswith("the runner-up is the best that prices differently: " + describe(other))
    assert tie_line([], other) is None


def test_without_a_distinct_configuration_there_is_no_runner_up(feasible_row: Any) -> None:
    winner, tie = _priced(feasible_row, 72.0), _priced(feasible_row, 72.0)
    runner, ties = distinct_runner_up([winner, tie], [winner, tie])
    assert runner is None and len(ties) == 1 and ties[0] is tie
    assert "there is no runner-up to compare" in (tie_line(ties, runner) or "")


def test_a_plan_whose_best_ties_compares_the_winner_with_a_runner_up_that_prices_differently(tmp_path: Any) -> None:
    """Llama-3-8B at 4k on 32 H100s: dp 16 x cp 2 x micro-batch 4 and dp 32 x micro-batch 2 put the same tokens
    on each device, and the context-parallel exchange hides under attention, so they price alike; the sensitivity
    used to compare two such configurations ('tie in every case') and said nothing."""
    plan = small_plan(workload={"model": {"preset": "llama3-8b", "seq_len": 4096}, "mode": "train", "batch": 64},
                      hardware=[{"name": "h100-sxm", "usd_per_device_hour": 1.0, "devices_per_node": 8}],
                      search={"cp": [1, 2, 4]}, limits={"max_devices": 32, "memory_headroom": 0.1},
                      goal={"tokens": 1e9, "deadline_days": 30})
    outcome = run_plan(plan, small_catalog(), tmp_path)
    why, winner = outcome.explanation, outcome.top[0]
    assert prices_alike(outcome.top[1], winner)                  # the case under test: the first runner-up ties
    s = why.sensitivity
    assert s is not None and s.runner_up != describe(outcome.top[1]) and s.base[0] != s.base[1]
    assert why.choice[0].startswith(("1 other configuration prices exactly", "2 other configurations price exactly"))
    assert why.choice[0].endswith("the runner-up is the best that prices differently: " + s.runner_up)
    assert not any("tie in every case" in line for line in why.choice)
    assert why.choice[0] in (outcome.run_dir / "plan.md").read_text()


def test_a_difference_under_half_a_percent_is_not_printed_as_plus_zero() -> None:
    assert "cost +0.07%" in versus(_e(1000.7, 1.0, 8), _e(1000.0, 1.0, 8), "cost")
    assert "cost +10%" in versus(_e(1100.0, 1.0, 8), _e(1000.0, 1.0, 8), "cost")
    assert "cost -<0.01%" in versus(_e(999.9999, 1.0, 8), _e(1000.0, 1.0, 8), "cost")


def test_the_tie_line_names_the_fields_the_ties_differ_in(feasible_row: Any) -> None:
    winner = feasible_row
    moved = replace(winner, config=SimpleNamespace(**{f: getattr(winner.config, f) for f in CHANGE_FIELDS},
                                                   n_devices=winner.config.n_devices))
    moved.config.micro_batch, moved.config.cp = winner.config.micro_batch * 2, winner.config.cp * 2
    line = tie_line([moved], None, winner, shown=0)
    assert line is not None and "(they differ from it only in cp, micro-batch: the same step" in line
