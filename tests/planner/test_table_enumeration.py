"""The candidates the table prices, as space.chains makes them (space.make_config: each slot set directly)."""

from __future__ import annotations

import dataclasses
import pickle
import random

import pytest

from llmsim.planner.space import Config, axes_of, chains, groups, is_candidate, make_config, member_count
from tests.planner.helpers import hardware, small_catalog, small_plan


def _random_args(rng: random.Random) -> tuple:
    return (rng.choice(["a100-80gb", "h100-sxm"]), rng.choice([8, 16, 64]), rng.randint(1, 64), rng.choice([1, 2, 8]),
            rng.randint(1, 80), rng.choice([1, 2, 4]), rng.random() < 0.5, rng.randint(0, 3), rng.choice([1, 2, 4]),
            rng.randint(1, 128), rng.choice(["none", "full", "selective-op"]), rng.choice(["gpipe", "1f1b"]),
            rng.randint(1, 4), rng.choice([(), (3, 4, 4, 5)]), rng.choice([1, 2]), rng.choice(["", "fp8"]),
            rng.choice([(), (4, 4, 4)]), rng.choice([1, 2]), rng.choice([(), (("tp", "z"),)]))


def test_make_config_is_config() -> None:
    """Equal, hashing alike, the same fields, immutable, and pickled alike, positional or by keyword."""
    rng = random.Random(0)
    names = [f.name for f in dataclasses.fields(Config)]
    for _ in range(2000):
        args = _random_args(rng)
        made, built = make_config(*args), Config(*args)
        assert type(made) is Config
        assert made == built and hash(made) == hash(built)
        assert dataclasses.astuple(made) == dataclasses.astuple(built)
        assert make_config(**dict(zip(names, args))) == built
        assert pickle.loads(pickle.dumps(made)) == built
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.dp = 2  # type: ignore[misc]


def test_make_config_defaults_are_configs() -> None:
    args = ("a100-80gb", 8, 2, 2, 2, 1, False, 0, 1, 4, "none", "1f1b", 1)
    assert make_config(*args) == Config(*args)
    assert make_config(*args).name == Config(*args).name


def test_chains_yield_only_candidates_in_micro_batch_order() -> None:
    """Every configuration chains yields is a candidate (space.is_candidate), each chain's micro-batch ascending
    and its other fields alike."""
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": "train", "batch": 16},
                      hardware=[{"name": "a100-80gb", "usd_per_device_hour": 2.0, "devices_per_node": 8}],
                      limits={"max_devices": 32, "memory_headroom": 0.0},
                      search={"cp": [1, 2], "virtual_stages": [2, 3], "recompute": ["none", "selective", "full"]})
    seen = 0
    for hw in hardware(plan, small_catalog()):
        axes = axes_of(plan, hw.devices_per_node)
        for g in groups(plan, hw.name, hw.devices_per_node, axes):
            for chain in chains(plan, g, axes, {}):
                assert [c.micro_batch for c in chain] == sorted(c.micro_batch for c in chain)
                assert len({dataclasses.replace(c, micro_batch=1, microbatches=1) for c in chain}) == 1
                for c in chain:
                    assert is_candidate(plan, hw.devices_per_node, c) is None, c.name
                    seen += 1
    assert seen > 100


@pytest.mark.parametrize("mode", ["train", "prefill"])
def test_member_count_counts_the_chains_members(mode: str) -> None:
    """member_count (the pruned groups' count, training: without making the members) is the members of chains."""
    plan = small_plan(workload={"model": {"preset": "tiny", "layers": 6}, "mode": mode, "batch": 16},
                      goal={"tokens": 5e5, "deadline_days": 1.0} if mode == "train" else {"tokens_per_s": 1e3},
                      search={"cp": [1, 2], "virtual_stages": [2, 3], "recompute": ["none", "selective", "full"]})
    seen = 0
    for hw in hardware(plan, small_catalog()):
        axes = axes_of(plan, hw.devices_per_node)
        for g in groups(plan, hw.name, hw.devices_per_node, axes):
            want = sum(map(len, chains(plan, g, axes)))
            assert member_count(plan, g, axes) == want == member_count(plan, g, axes, {})
            seen += want
    assert seen > 100
