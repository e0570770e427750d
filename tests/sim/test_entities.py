"""Links share their bandwidth; collectives are the cost model's algorithms, phase by phase."""

from __future__ import annotations

import pytest

from llmsim.costmodel.cluster import Group, collective_phases
from llmsim.costmodel.collectives import Channel, Fabric, hierarchical_time, phases_time
from llmsim.sim.entities import CountingEnvironment, Link

GBPS = 1e9                 # bytes/s
MB = 1e6                   # bytes
LATENCY_S = 2e-6


def _finish_times(sizes: list[float], starts: list[float], bandwidth: float = 10 * GBPS) -> list[float]:
    """When each transfer (size, start) finishes on one shared link."""
    env = CountingEnvironment()
    link = Link(env, "port", bandwidth, LATENCY_S)
    done: list[float] = [0.0] * len(sizes)

    def sender(i: int):
        yield env.timeout(starts[i])
        yield from link.transfer(sizes[i], LATENCY_S)
        done[i] = env.now

    for i in range(len(sizes)):
        env.process(sender(i))
    env.run()
    return done


def test_one_transfer_takes_size_over_bandwidth_plus_latency() -> None:
    assert _finish_times([100 * MB], [0.0]) == [pytest.approx(100 * MB / (10 * GBPS) + LATENCY_S, rel=1e-12)]


def test_two_transfers_sharing_a_link_take_twice_as_long_as_one() -> None:
    alone = _finish_times([100 * MB], [0.0])[0] - LATENCY_S
    both = _finish_times([100 * MB, 100 * MB], [0.0, 0.0])
    assert [t - LATENCY_S for t in both] == [pytest.approx(2 * alone, rel=1e-12)] * 2


def test_a_late_transfer_shares_only_while_it_overlaps() -> None:
    # A: 100 MB from t=0; B: 20 MB from t=5 ms. Alone until 5 ms (50 MB sent), then half rate each:
    # B needs 4 ms at 5 GB/s, A's remaining 50 MB: 20 at half rate (4 ms), 30 at full rate (3 ms).
    a, b = _finish_times([100 * MB, 20 * MB], [0.0, 5e-3])
    assert b - LATENCY_S == pytest.approx(9e-3, rel=1e-9)
    assert a - LATENCY_S == pytest.approx(12e-3, rel=1e-9)


def test_hierarchical_all_reduce_alone_costs_what_the_cost_model_says() -> None:
    fabric = Fabric(intra=Channel(240 * GBPS, 3.4e-6), inter=Channel(24 * GBPS, 9.6e-6))
    group = Group(size=32, per_node=8, nodes=4)
    c = collective_phases("all-reduce", 1e9, group, fabric)
    assert [ph.tier for ph in c] == ["intra", "inter", "intra"]
    assert phases_time(c, fabric) == pytest.approx(
        hierarchical_time("all-reduce", 1e9, 8, 4, fabric.intra, fabric.inter), rel=1e-12)


def test_a_transfer_shorter_than_one_clock_tick_finishes_late_in_a_long_simulation() -> None:
    """At now = 10^4 s a double's spacing is 1.8e-12 s (math.ulp), in which a 10^11 B/s link moves 0.18 B: a
    10^-3 B transfer needs 10^-14 s, now + delay rounds back to now and nothing drains. It must finish
    within the step it was due (the deep-pipeline livelock of issue 14, item 8), not reschedule forever."""
    env = CountingEnvironment(initial_time=1e4)
    link = Link(env, "nic", bandwidth=1e11, latency=0.0)
    done = link.send(1e-3)
    for _ in range(100):
        if done.triggered:
            break
        env.step()
    assert done.triggered and env.now == 1e4


def _concurrent_on_torus(*groups_of: str) -> tuple[list[float], list[float]]:
    """Each named group's all-reduce of 256 MB on a v5p 4x4x8 slice (tp pinned to z, dp on x and y), all
    started together on one simulated chip: (finish times together, times alone = the roofline's)."""
    from llmsim.costmodel.cluster import torus_groups
    from llmsim.hardware import load_catalog
    from llmsim.sim.entities import Device, Faults, Placement, Replica
    from llmsim.sim.processes import run_phases

    cluster = load_catalog().cluster("tpu-v5p", topology="4x4x8", mesh={"tp": "z"})
    placed = torus_groups({"tp": 8, "dp": 16}, cluster)
    fabric = cluster.fabric
    phases = [collective_phases("all-reduce", 256 * MB, placed[name], fabric) for name in groups_of]
    env = CountingEnvironment()
    replica = Replica.build(env, Placement(tp=8, cp=1, pp=1, devices_per_node=128, torus_dims=3),
                            fabric.intra.bandwidth, fabric.intra.latency, fabric.inter.bandwidth,
                            fabric.inter.latency, Faults())
    device: Device = replica.devices[0]
    done = [0.0] * len(phases)

    def collective(i: int):
        yield from run_phases(device, phases[i])
        done[i] = env.now

    for i in range(len(phases)):
        env.process(collective(i))
    env.run()
    return done, [phases_time(p, fabric) for p in phases]


def test_collectives_of_axes_on_different_torus_dimensions_run_side_by_side() -> None:
    """Issue 19: each torus dimension has its own links. tp's all-reduce (the z ring) and dp's (x, then y)
    started together take the time of the slower one, not the sum (one shared ICI port did that)."""
    together, alone = _concurrent_on_torus("tp", "dp")
    assert together == [pytest.approx(a, rel=1e-9) for a in alone]
    assert max(together) < sum(alone) * 0.99


def test_collectives_of_one_axis_share_its_dimension_links() -> None:
    """Two all-reduces over tp (both on z) share z's links: with equal bytes each takes the bandwidth part
    twice over (its latency once)."""
    from llmsim.hardware import load_catalog
    together, alone = _concurrent_on_torus("tp", "tp")
    latency = 2 * (8 - 1) * load_catalog().link("ici-v5p").latency_s   # 2(p-1) ring steps, one hop each
    assert together == [pytest.approx(2 * (alone[0] - latency) + latency, rel=1e-9)] * 2
