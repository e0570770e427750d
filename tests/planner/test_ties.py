"""A runner-up that ties the winner on the objective is described as a tie, with the measure that ranks them
(planner.search.objective_key's tie-breaks); it used to read as a different result ('cost +0%')."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from llmsim.planner.explain import tie_text, versus
from llmsim.planner.search import objective_key


def _e(cost: float, time: float, devices: int, energy: float = 1e7, name: str = "a") -> Any:
    return SimpleNamespace(cost_usd=cost, time_to_goal_s=time, energy_j=energy, feasible=True, step_time_s=1.0,
                           shortfall=0.0, config=SimpleNamespace(n_devices=devices, name=name))


def test_a_tie_on_the_objective_names_the_tie_break_that_ranks_the_winner_first() -> None:
    winner, runner = _e(72.0, 0.0072, 16), _e(72.0, 0.0075, 16)
    assert sorted([runner, winner], key=objective_key("cost"))[0] is winner  # what the text must explain
    text = versus(runner, winner, "cost", "token step")
    assert text.startswith("ties the winner on cost (cost $72.00 each); ranked below it by the tie-break, token step: "
                           "7.5 ms against the winner's 7.2 ms; against the winner: cost +0%"), text


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
