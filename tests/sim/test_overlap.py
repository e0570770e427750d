"""Megatron-Core's communication overlaps in the simulation: each hides exposed communication where it
exists, changes nothing where it does not, and agrees with the roofline (where nothing contends to 1e-9,
elsewhere within tests/plugins/test_cluster.py's AGREEMENT)."""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.config import ModelSpec, Workload
from llmsim.costmodel import ClusterSpec, Plan, estimate
from llmsim.sim import simulate_case
from tests.costmodel.helpers import a100_cluster, gpt2, profiled
from tests.plugins.test_cluster import AGREEMENT, SAME


def _both(workload: Workload, plan: Plan, cluster: ClusterSpec):
    profile, sharing = profiled(workload)
    return (estimate(workload, profile, sharing, plan, cluster),
            simulate_case(workload, profile, sharing, plan, cluster).times)


def _on_cores(cluster: ClusterSpec) -> ClusterSpec:
    return dataclasses.replace(cluster, device=cluster.device.model_copy(update={"overlaps_communication": False}))


GPT3_LAYERS = Workload(model=ModelSpec(preset="gpt3-175b", layers=2), mode="train", batch=4)


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_tp_comm_overlap_is_played_chunk_beside_gemm_as_the_roofline_sums_it(recompute: str) -> None:
    """Two GPT-3 175B layers at tp 8 with sp on one node, no data parallelism: nothing else uses the
    ports, so the simulated split equals the roofline's, and it hides most tensor-parallel traffic."""
    cluster = a100_cluster(nodes=1)
    plan = Plan(tp=8, sp=True, micro_batch=1, microbatches=4, recompute=recompute)
    roof_off, sim_off = _both(GPT3_LAYERS, plan, cluster)
    roof, sim = _both(GPT3_LAYERS, dataclasses.replace(plan, tp_comm_overlap=True), cluster)
    for column in ("compute", "comm", "bubble", "other"):
        assert getattr(sim, column) == pytest.approx(getattr(roof, f"{column}_time_s"), rel=SAME, abs=1e-15)
    assert 0 < sim.comm < sim_off.comm / 2 and sim.step < sim_off.step


def test_overlap_param_gather_waits_layer_by_layer_for_the_previous_steps_gather() -> None:
    """ZeRO-1 over 16 GPUs on two nodes: the gather after the optimizer moves under the forward; the
    simulation gathers in buckets (25 MiB) where the roofline prices layers, and both reduce the gradients
    bucket by bucket under the backward, so they agree within AGREEMENT."""
    workload = Workload(model=ModelSpec(preset="gpt2-medium", layers=8, seq_len=1024), mode="train", batch=32)
    cluster = a100_cluster(nodes=2)
    plan = Plan(dp=16, zero=1, micro_batch=2, microbatches=1)
    _, off = _both(workload, plan, cluster)
    roof, on = _both(workload, dataclasses.replace(plan, overlap_param_gather=True), cluster)
    assert on.comm < off.comm and on.compute == pytest.approx(off.compute, rel=SAME)
    assert on.step == pytest.approx(roof.step_time_s, rel=AGREEMENT)


def test_overlap_p2p_sends_asynchronously_and_agrees_with_the_roofline() -> None:
    """GPT-2 small in 4 stages on 4 nodes (every message crosses InfiniBand), interleaved over 3 chunks:
    asynchronous sends expose less than blocking ones in both, and the exposed communication agrees."""
    workload = gpt2(batch=8)
    cluster = a100_cluster(nodes=4, devices_per_node=1)
    plan = Plan(pp=4, microbatches=8, schedule="interleaved", virtual_stages=3, overlap_p2p=False)
    roof_off, off = _both(workload, plan, cluster)
    roof, on = _both(workload, dataclasses.replace(plan, overlap_p2p=True), cluster)
    assert on.comm < off.comm and roof.comm_time_s < roof_off.comm_time_s
    assert on.compute == pytest.approx(off.compute, rel=SAME)
    assert on.comm == pytest.approx(roof.comm_time_s, rel=AGREEMENT)
    assert on.step == pytest.approx(roof.step_time_s, rel=AGREEMENT)


@pytest.mark.parametrize(("plan", "option"), [
    (Plan(dp=8, microbatches=1), "tp_comm_overlap"),                  # no tensor parallelism
    (Plan(dp=8, microbatches=1), "overlap_p2p"),                      # no pipeline
    (Plan(dp=8, zero=3, microbatches=1), "overlap_param_gather"),     # ZeRO-3 gathers per layer anyway
    (Plan(dp=8, zero=0, microbatches=1), "overlap_param_gather"),     # no sharded optimizer
])
def test_an_overlap_without_its_communication_changes_nothing(plan: Plan, option: str) -> None:
    workload = gpt2(batch=8)
    cluster = a100_cluster(nodes=1)
    _, base = _both(workload, plan, cluster)
    _, with_option = _both(workload, dataclasses.replace(plan, **{option: True}), cluster)
    assert with_option == base


@pytest.mark.parametrize(("plan", "option"), [
    (Plan(tp=2, sp=True, dp=4, microbatches=2), "tp_comm_overlap"),
    (Plan(pp=2, dp=4, microbatches=2, schedule="interleaved", virtual_stages=2, overlap_p2p=False), "overlap_p2p"),
    (Plan(dp=8, zero=1, microbatches=1), "overlap_param_gather"),
])
def test_a_device_that_computes_its_collectives_overlaps_none_of_them(plan: Plan, option: str) -> None:
    """gloo on a CPU host (DeviceSpec.overlaps_communication False): every option runs as if off, in the
    simulation as in the roofline."""
    workload = gpt2(batch=8)
    cluster = _on_cores(a100_cluster(nodes=1))
    roof_base, base = _both(workload, plan, cluster)
    roof, with_option = _both(workload, dataclasses.replace(plan, **{option: True}), cluster)
    assert with_option == base
    assert roof.step_time_s == roof_base.step_time_s and roof.comm_time_s == roof_base.comm_time_s
