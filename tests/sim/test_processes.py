"""Pipeline schedules, bubbles, waiting and faults on small inline steps (SimPy style: seconds, no profile)."""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.costmodel.cluster import Group, collective_phases
from llmsim.costmodel.collectives import Channel, Fabric, phases_time
from llmsim.costmodel.work import StageWork, StepWork
from llmsim.sim import Faults, Placement, SimOptions, simulate
from llmsim.sim.schedules import schedule_ops

FORWARD_S = 1.0        # one layer forward, one micro-batch
BACKWARD_S = 2.0
FABRIC = Fabric(intra=Channel(100e9, 0.0), inter=Channel(10e9, 0.0))


def _pipeline(p: int, m: int, schedule: str = "1f1b", v: int = 1, **stage: object) -> tuple[StepWork, Placement]:
    """p identical stages of one layer per chunk, no communication: only the schedule shapes the step."""
    work = StageWork(layers=1, fwd_layer_s=FORWARD_S / v, bwd_layer_s=BACKWARD_S / v, **stage)  # type: ignore[arg-type]
    return (StepWork(stages=(work,) * p, microbatches=m, schedule=schedule, virtual_stages=v),  # type: ignore[arg-type]
            Placement(tp=8, cp=1, pp=p, devices_per_node=8))


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("p", "m"), [(4, 8), (8, 8), (2, 16)])
def test_gpipe_and_1f1b_bubble_is_p_minus_1_over_m_plus_p_minus_1(schedule: str, p: int, m: int) -> None:
    work, placement = _pipeline(p, m, schedule)
    out = simulate(work, placement, FABRIC)
    ideal = m * (FORWARD_S + BACKWARD_S)
    assert out.compute_s == pytest.approx(ideal)
    assert out.bubble_s / out.step_s == pytest.approx((p - 1) / (m + p - 1), rel=1e-12)


def test_interleaving_shrinks_the_bubble_by_the_number_of_chunks() -> None:
    p, m, v = 4, 8, 2
    out = simulate(*_pipeline(p, m, "interleaved", v), FABRIC)
    ideal = m * (FORWARD_S + BACKWARD_S)
    assert out.bubble_s / ideal == pytest.approx((p - 1) / (v * m), rel=1e-9)


def test_every_schedule_runs_each_forward_and_backward_once() -> None:
    for schedule, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 3)):
        for stage in range(4):
            ops = schedule_ops(schedule, 4, 8, v, stage)  # type: ignore[arg-type]
            assert sorted((o.forward, o.microbatch, o.chunk) for o in ops) == sorted(
                (f, i, c) for f in (True, False) for i in range(8) for c in range(v))


def test_without_communication_cost_the_step_is_the_sum_of_the_work() -> None:
    stage = StageWork(layers=3, fwd_layer_s=0.1, bwd_layer_s=0.2, recompute_layer_s=0.1, embed_fwd_s=0.01,
                      embed_bwd_s=0.02, head_fwd_s=0.03, head_bwd_s=0.04, accumulate_s=0.05, optimizer_s=0.06)
    work = StepWork(stages=(stage,), microbatches=4)
    out = simulate(work, Placement(1, 1, 1, 8), FABRIC)
    per_microbatch = 3 * (0.1 + 0.2 + 0.1) + 0.01 + 0.02 + 0.03 + 0.04
    assert out.step_s == pytest.approx(4 * per_microbatch + 0.05 + 0.06, rel=1e-12)
    assert (out.comm_s, out.bubble_s, out.other_s) == (0.0, 0.0, pytest.approx(0.06))


def one_f_one_b_makespan(p: int, m: int, forward: list[float], backward: list[float]) -> float:
    """A reference 1F1B step with free communication, independent of the simulator: stage s runs p-s-1
    warm-up forwards, then one forward one backward, then the remaining backwards (Narayanan et al. 2021,
    Sec. 2.2.1, Fig. 4); each pass starts once its stage is free and its input is there (the activation from
    stage s-1, the gradient from stage s+1). The step is the longest path through these dependencies."""
    orders = []
    for s in range(p):
        warm = min(p - s - 1, m)
        order = [("F", i) for i in range(warm)]
        for i in range(m - warm):
            order += [("F", warm + i), ("B", i)]
        orders.append(order + [("B", i) for i in range(m - warm, m)])
    end: dict[tuple[str, int, int], float] = {}
    nxt, free = [0] * p, [0.0] * p
    while any(nxt[s] < len(orders[s]) for s in range(p)):
        for s in range(p):
            while nxt[s] < len(orders[s]):
                kind, i = orders[s][nxt[s]]
                source = s - 1 if kind == "F" else s + 1
                if 0 <= source < p and (kind, source, i) not in end:
                    break  # its input is not there yet
                ready = end.get((kind, source, i), 0.0)
                free[s] = end[(kind, s, i)] = max(free[s], ready) + (forward if kind == "F" else backward)[s]
                nxt[s] += 1
    return max(free)


def test_a_straggler_slows_the_whole_synchronous_step() -> None:
    work, placement = _pipeline(4, 8)
    healthy = simulate(work, placement, FABRIC)
    slow = simulate(work, placement, FABRIC, Faults(straggler_stage=2, straggler_slowdown=1.5))
    # stage 2 is now the bottleneck: every stage waits for it, the step grows by about m * 0.5 stage-times
    assert slow.step_s > healthy.step_s + 0.4 * 8 * (FORWARD_S + BACKWARD_S) * 0.5
    assert all(led.end_s > healthy.step_s for led in slow.ledgers)
    # exactly the reference schedule's longest path, with stage 2's passes 1.5x as long
    assert healthy.step_s == pytest.approx(one_f_one_b_makespan(4, 8, [FORWARD_S] * 4, [BACKWARD_S] * 4), rel=1e-12)
    forward = [FORWARD_S * (1.5 if s == 2 else 1.0) for s in range(4)]
    backward = [BACKWARD_S * (1.5 if s == 2 else 1.0) for s in range(4)]
    assert slow.step_s == pytest.approx(one_f_one_b_makespan(4, 8, forward, backward), rel=1e-12)


def test_data_parallel_reduction_hides_behind_backward_until_it_cannot() -> None:
    group = Group(size=16, per_node=1, nodes=16)
    grads = 2e9  # bytes per layer: far more than a backward can hide on the inter-node fabric
    stage = StageWork(layers=4, fwd_layer_s=0.01, bwd_layer_s=0.02, grad_bytes_layer=grads)
    work = StepWork(stages=(stage,), microbatches=2, dp_group=group)
    out = simulate(work, Placement(8, 1, 1, 8), FABRIC)
    phases = collective_phases("all-reduce", grads, group, FABRIC)
    send_s, hops_s = sum(ph.nbytes for ph in phases) / 10e9, sum(ph.latency_s for ph in phases)
    reduce_s = send_s + hops_s
    assert reduce_s == pytest.approx(phases_time(phases, FABRIC), rel=1e-12)
    assert out.comm_s > 3 * reduce_s  # the first three buckets hide only behind the remaining layers
    # by hand: micro-batch 0 forward and backward (0.04 + 0.08), micro-batch 1 forward (0.04); each layer's
    # backward of the last micro-batch issues its bucket (one layer's gradients), the first at 0.18 s; the
    # four reductions queue on the communication stream and the compute is done at 0.24 s
    assert out.step_s == pytest.approx(0.18 + 4 * reduce_s, rel=1e-12)
    assert out.comm_s == pytest.approx(0.18 + 4 * reduce_s - 0.24, rel=1e-12)
    degraded = simulate(work, Placement(8, 1, 1, 8), FABRIC,
                        Faults(degraded_stage=0, degraded_tier="inter", degraded_bandwidth_factor=0.5))
    assert degraded.step_s > out.step_s + 3 * reduce_s
    assert degraded.step_s == pytest.approx(0.18 + 4 * (2 * send_s + hops_s), rel=1e-12)  # half the bandwidth


def test_jitter_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    work, placement = _pipeline(4, 8)
    a, b, c = (simulate(work, placement, FABRIC, Faults(jitter_std=0.1, seed=s)).step_s for s in (1, 1, 2))
    assert a == b != c
    assert a > simulate(work, placement, FABRIC).step_s  # the slowest of 8 tensor-parallel peers sets each layer


def test_collectives_on_the_compute_cores_cannot_hide_behind_compute() -> None:
    """A CPU host (gloo) has no engine to overlap with: the step is the sum of compute and communication."""
    group = Group(size=2, per_node=2, nodes=1)
    grads = 1e9  # one bucket per layer, each far shorter than the remaining backward on this fabric
    stage = StageWork(layers=4, fwd_layer_s=0.1, bwd_layer_s=0.2, grad_bytes_layer=grads)
    work = StepWork(stages=(stage,), microbatches=1, dp_group=group)
    one_bucket_per_layer = SimOptions(bucket_bytes=grads)
    reduce_s = phases_time(collective_phases("all-reduce", grads, group, FABRIC), FABRIC)
    hidden = simulate(work, Placement(1, 1, 1, 2), FABRIC, options=one_bucket_per_layer)
    shared = simulate(dataclasses.replace(work, comm_shares_cores=True), Placement(1, 1, 1, 2), FABRIC,
                      options=one_bucket_per_layer)
    compute = 4 * (0.1 + 0.2)
    assert hidden.step_s < compute + 2 * reduce_s  # three of the four buckets hid behind backward
    # by hand: the last bucket is issued when the backward ends and is the only one left to wait for
    assert hidden.step_s == pytest.approx(compute + reduce_s, rel=1e-12)
    assert hidden.comm_s == pytest.approx(reduce_s, rel=1e-12)
    assert shared.step_s == pytest.approx(compute + 4 * reduce_s, rel=1e-9)
    assert shared.comm_s == pytest.approx(4 * reduce_s, rel=1e-9) and shared.compute_s == pytest.approx(compute)


def test_a_slower_collective_occupies_its_port_as_long_as_the_cost_model_says() -> None:
    """A collective at a share e of the port's bandwidth holds the port 1/e times as long (one set of phases
    serves the roofline's time and the simulated transfer)."""
    from llmsim.costmodel.collectives import ring_time
    from llmsim.sim.entities import CountingEnvironment, Device, Link
    from llmsim.sim.processes import run_phases

    ch = Channel(10e9, 5e-6, op_efficiency=(1.0, 0.3, 0.8))
    fabric = Fabric(intra=ch, inter=ch)
    group = Group(size=4, per_node=4, nodes=1)
    for op in ("all-reduce", "reduce-scatter", "all-gather"):
        phases = collective_phases(op, 64e6, group, fabric)
        assert phases_time(phases, fabric) == pytest.approx(ring_time(op, 64e6, 4, ch), rel=1e-12)
        env = CountingEnvironment()
        device = Device(env, 0, 0, Link(env, "intra", ch.bandwidth, ch.latency),
                        Link(env, "inter", ch.bandwidth, ch.latency))
        env.process(run_phases(device, phases))
        env.run()
        assert env.now == pytest.approx(ring_time(op, 64e6, 4, ch), rel=1e-12)
