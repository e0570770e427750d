"""The layer split as a search dimension (issue 14 item 9): where the layers do not divide over the stages
the planner tries the default split and Megatron-LM's first/last-stage counts, and proposes one."""

from __future__ import annotations

import yaml

from llmsim.config import parse_scenario
from llmsim.costmodel import memory_breakdown
from llmsim.hardware import load_catalog
from llmsim.planner.config import parse_plan
from llmsim.planner.report import best_scenario, plan_frame
from llmsim.planner.search import (Context, resolve_hardware, search, sharing_choice, static_lower_bound,
                                   workload_profile)
from llmsim.planner.space import Group, axes_of, default_pp, members, split_candidates
from llmsim.strategy import resolve_layout
from tests.planner.helpers import brute_force, hardware, small_catalog, small_plan

# A Llama-3-405B-shaped model (meta-llama/Llama-3.1-405B config.json: 126 layers, hidden 16384, 128 heads,
# 8 KV heads, intermediate 53248, vocabulary 128256) on the llama3-70b preset's conventions.
MODEL_405B = {"preset": "llama3-70b", "layers": 126, "hidden": 16384, "heads": 128, "kv_heads": 8,
              "ffn_hidden": 53248}
LLAMA_SPLIT = (7,) + (8,) * 14 + (7,)


def test_split_candidates_are_megatron_first_and_last_counts() -> None:
    assert split_candidates(126, 16) == [(8,) * 15 + (6,), (6,) + (8,) * 15]  # (7, 8 x 14, 7) is the default
    assert split_candidates(70, 12) == [(6,) * 11 + (4,), (4,) + (6,) * 11]  # (5, 6 x 10, 5) is the default
    assert split_candidates(5, 2) == [(2, 3)]       # (3, 2) is the default
    assert split_candidates(12, 4) == []            # it divides: the even split only
    assert split_candidates(9, 8) == []             # no first/last counts of 1 or more leave 2 a stage


def test_the_default_pipeline_depths_include_powers_of_two() -> None:
    assert default_pp(126) == [1, 2, 3, 4, 6, 7, 8, 9, 14, 16, 18, 21, 32, 42, 63, 64, 126]
    assert default_pp(70)[:8] == [1, 2, 4, 5, 7, 8, 10, 14]


def test_the_planner_proposes_an_uneven_split_for_126_layers_on_16_stages() -> None:
    plan = parse_plan({
        "name": "p405", "workload": {"model": MODEL_405B, "mode": "train", "batch": 2048},
        "goal": {"tokens": 1e12}, "hardware": [{"name": "h100-sxm", "usd_per_device_hour": 3.5}],
        "limits": {"max_devices": 16384}, "objective": "time", "simulate": False,
        "search": {"tp": [8], "pp": [16], "cp": [1], "dp": [128], "zero": [1], "micro_batch": [1],
                   "schedule": ["1f1b"], "recompute": ["full"], "sp": [True]}})
    hw = resolve_hardware(plan, load_catalog())
    rows, stats = search(plan, hw)
    splits = {e.config.plan().layers_per_stage(126) for e in rows}
    assert splits == {LLAMA_SPLIT, (6,) + (8,) * 15, (8,) * 15 + (6,)}  # the three searched splits
    winner = rows[0]
    assert winner.feasible and winner.config.pp == 16
    assert winner.config.plan().layers_per_stage(126) == LLAMA_SPLIT
    frame = plan_frame(rows, hw, 126)
    assert frame.loc[0, "stage_layers"] == ",".join(map(str, LLAMA_SPLIT))
    # best.yaml reproduces the winner: `llmsim run` lays out the same split
    scenario = parse_scenario(yaml.safe_load(yaml.safe_dump(best_scenario(plan, winner, hw[0]))))
    layout = resolve_layout(scenario.strategies[0], scenario.workload, None, "roofline")
    assert not isinstance(layout, tuple) and layout.stage_layers == LLAMA_SPLIT
    # a Megatron split the planner states: its keys are in best.yaml
    first6 = next(e for e in rows if e.config.stage_layers == (6,) + (8,) * 15)
    assert "first6" in first6.config.name
    strategy = best_scenario(plan, first6, hw[0])["strategies"][0]
    assert strategy["first_stage_layers"] == 6 and "stage_layers" not in strategy


def test_the_group_bound_covers_every_split_its_members_run() -> None:
    """With the default split an interleaved member splits in chunks of v layers (12 layers on 4 stages:
    3 x 4, or 2, 4, 4, 2 with v = 2): the group's weight bound is the least over those, never above a
    member's weights, gradients and optimizer state. With a 50,000-word vocabulary the first stage's
    embedding outweighs a layer, so 2, 4, 4, 2 holds less than 3 x 4."""
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 12, "vocab": 50000}, "mode": "train",
                                "batch": 8},
                      search={"cp": [1], "virtual_stages": [2], "schedule": ["1f1b", "interleaved"]})
    hw = hardware(plan, small_catalog())[0]
    sharing = sharing_choice(plan)
    ctx = Context(plan, hw, workload_profile(plan.workload, sharing), sharing)
    axes = axes_of(plan, hw.devices_per_node)
    group = Group(hw.name, 4, 1, 4, 1, 1, 0)
    bound = static_lower_bound(ctx, group, axes)

    def weights(c) -> float:
        return max(sum(memory_breakdown(plan.workload, ctx.profile, sharing, c.plan(), stage=i).as_dict()[k]
                       for k in ("params", "grads", "optimizer")) for i in range(c.pp))

    configs = list(members(plan, group, axes))
    assert {c.plan().layers_per_stage(12) for c in configs} == {(3, 3, 3, 3), (2, 4, 4, 2)}
    by_split = {c.plan().layers_per_stage(12): weights(c) for c in configs}
    assert by_split[(2, 4, 4, 2)] < by_split[(3, 3, 3, 3)]
    assert bound == min(by_split.values())


def test_pruning_never_drops_a_feasible_uneven_split() -> None:
    """The exhaustive evaluation (which enumerates the splits itself) and the search agree where the layers
    do not divide: 5 layers on 2 and 4 stages, 7 on 2 and 4."""
    for layers in (5, 7):
        for memory in (2e6, 80e9):
            catalog = small_catalog(memory)
            plan = small_plan(workload={"model": {"preset": "tiny", "layers": layers}, "mode": "train", "batch": 8},
                              hardware=[{"name": "small-gpu", "usd_per_device_hour": 1.0, "devices_per_node": 4}],
                              limits={"max_devices": 8}, goal={"tokens": 2e5, "deadline_days": 1.0},
                              search={"cp": [1], "virtual_stages": [2]})
            rows, stats = search(plan, hardware(plan, catalog))
            truth = brute_force(plan, catalog)
            assert any(c.stage_layers for c in truth), "a searched uneven split"
            assert {e.config for e in rows if e.feasible} == {c for c, (ok, _) in truth.items() if ok}
            assert stats.screened == len(truth)
