"""Expert parallelism as a search dimension: only for mixture-of-experts workloads, within the rules a
scenario obeys, and the search still finds what an exhaustive evaluation finds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llmsim.config import check_strategy_shape
from llmsim.errors import ScenarioError
from llmsim.planner.explain import describe
from llmsim.planner.search import search
from llmsim.planner.space import Config, axes_of, groups, is_candidate, members
from tests.planner.helpers import brute_force, hardware, small_catalog, small_plan
from tests.planner.test_search import KEYS

TINY_MOE = {"preset": "tiny", "layers": 2, "moe": {"experts": 4, "top_k": 2}}


def _moe_plan(**over):
    return small_plan(workload={"model": TINY_MOE, "mode": "train", "batch": 8},
                      limits={"max_devices": 8, "memory_headroom": 0.0}, **over)


def _configs(plan) -> list[Config]:
    """Every configuration the planner enumerates on 4-device nodes of `small-gpu`."""
    axes = axes_of(plan, 4)
    return [c for g in groups(plan, "small-gpu", 4, axes) for c in members(plan, g, axes)]


def test_a_dense_workload_searches_no_expert_parallelism() -> None:
    plan = small_plan()
    assert axes_of(plan, 4).ep == (1,)
    assert {c.ep for c in _configs(plan)} == {1}


def test_a_moe_workload_searches_ep_over_the_divisors_of_its_experts() -> None:
    plan = _moe_plan()
    assert axes_of(plan, 4).ep == (1, 2, 4)
    configs = _configs(plan)
    assert {c.ep for c in configs} == {1, 2, 4}
    for c in configs:
        assert is_candidate(plan, 4, c) is None
        # ep divides the experts and, with etp = tp, ep * tp divides the stage's tp*cp*dp ranks
        assert 4 % c.ep == 0 and (c.tp * c.cp * c.dp) % (c.ep * c.tp) == 0
        strategy = c.strategy()
        assert strategy.ep == c.ep and check_strategy_shape(strategy, plan.workload) is None
        assert c.plan().ep == c.ep and c.plan().etp == c.tp
        assert ("ep" in c.name) == (c.ep > 1)


def test_an_ep_the_ranks_cannot_hold_is_not_a_candidate() -> None:
    plan = _moe_plan()
    good = Config("small-gpu", 4, 4, 1, 1, 1, False, 0, 1, 2, "none", "1f1b", 1, (), 4)
    bad = Config("small-gpu", 2, 2, 1, 1, 1, False, 0, 1, 4, "none", "1f1b", 1, (), 4)  # ep 4 from 2 ranks
    assert is_candidate(plan, 4, good) is None
    assert "ep" in (is_candidate(plan, 4, bad) or "")
    dense = small_plan()
    assert "ep" in (is_candidate(dense, 4, good) or "")


def test_winner_equals_exhaustive_with_ep() -> None:
    catalog = small_catalog(80e9)
    plan = _moe_plan(hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4}],
                     search={"cp": [1], "virtual_stages": [2], "zero": [0, 1]})
    truth = brute_force(plan, catalog)
    feasible = {c: m for c, (ok, m) in truth.items() if ok}
    assert any(c.ep > 1 for c in feasible)
    rows, stats = search(plan, hardware(plan, catalog))
    assert {e.config for e in rows if e.feasible} == set(feasible)
    best = min(feasible, key=lambda c: (KEYS["cost"](feasible[c], c.n_devices), c.name))
    assert KEYS["cost"](feasible[rows[0].config], rows[0].config.n_devices) == KEYS["cost"](feasible[best],
                                                                                           best.n_devices)


def test_search_ep_follows_the_scenario_rules_and_names_the_key() -> None:
    """search.ep on a dense model, or a size that does not divide the experts: the plan file's one-line
    error (it used to screen 0 configurations, or ignore ep)."""
    with pytest.raises(ScenarioError, match=r"search\.ep\[0\]: 3 does not divide the 4 routed experts; "
                                            r"allowed: 1, 2, 4"):
        _moe_plan(search={"ep": [3]})
    with pytest.raises(ScenarioError, match=r"search\.ep: expert parallelism needs a mixture-of-experts model"):
        small_plan(search={"ep": [2]})


def test_a_plan_describes_its_expert_parallelism() -> None:
    config = next(c for c in _configs(_moe_plan()) if c.ep == 2)
    assert "ep2" in describe(SimpleNamespace(config=config))  # type: ignore[arg-type]
