"""Comm and Group hash once (their prices are cached per collective and fabric); Groups.of is cached. Their
values stay those of the dataclasses' own: equal objects hash alike, after pickling too."""

from __future__ import annotations

import dataclasses
import pickle
import random

from llmsim.costmodel.cluster import Group, place_group
from llmsim.costmodel.plan import Plan
from llmsim.costmodel.work import Comm, Groups, _groups_of


def _groups(rng: random.Random) -> list[Group]:
    return [place_group(rng.choice([1, 2, 4, 8, 16, 64]), rng.choice([1, 2, 8]), rng.choice([4, 8])) for _ in range(50)]


def test_group_and_comm_hash_as_their_fields() -> None:
    rng = random.Random(0)
    for g in _groups(rng):
        assert hash(g) == hash(tuple(getattr(g, f.name) for f in dataclasses.fields(g)))
        again = Group(g.size, g.per_node, g.nodes, g.rings)
        assert again == g and hash(again) == hash(g)
        c = Comm(rng.choice(["all-reduce", "all-gather", "p2p"]), rng.random() * 1e9, g, rng.randint(1, 4))
        assert hash(c) == hash(tuple(getattr(c, f.name) for f in dataclasses.fields(c)))
        bigger = dataclasses.replace(c, size=c.size * 2)  # replace hashes the new fields, not the old ones
        assert hash(bigger) == hash((c.op, c.size * 2, g, c.count, c.algorithm)) and bigger != c


def test_group_and_comm_pickle_by_their_fields() -> None:
    """Unpickled, they hash where they are (a hash pickled from another process would differ: str hashing is
    salted per process)."""
    g = Group(4, 2, 2)
    c = Comm("reduce-scatter", 3e6, g, 2)
    for obj in (g, c):
        back = pickle.loads(pickle.dumps(obj))
        assert back == obj and hash(back) == hash(obj)
        assert "_hash" not in pickle.dumps(obj).decode("latin-1")


def test_groups_of_is_the_placement_of_each_axis() -> None:
    rng = random.Random(1)
    for _ in range(200):
        plan = Plan(dp=rng.choice([1, 2, 4, 16]), tp=rng.choice([1, 2, 8]), pp=rng.choice([1, 2, 4]),
                    cp=rng.choice([1, 2]))
        node = rng.choice([4, 8])
        got = Groups.of(plan, node)
        assert got == _groups_of.__wrapped__(plan.tp, plan.cp, plan.pp, plan.dp, plan.ep, plan.etp, node)
        assert got.tp == place_group(plan.tp, 1, node) and got.pp == place_group(plan.pp, plan.tp * plan.cp, node)
