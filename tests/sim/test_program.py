"""The simulation's tensor-parallel collectives per layer (costmodel.work, played by llmsim.sim), against
Megatron-LM's count by hand."""

from __future__ import annotations

import pytest

from llmsim.costmodel import Plan, estimate
from llmsim.sim import simulate_case
from tests.costmodel.helpers import megatron_tp_comm_per_microbatch, tp8_case


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_simulated_tensor_parallel_communication_is_megatrons_four_collectives_per_layer(
        recompute: str, sp: bool) -> None:
    """Shoeybi et al. 2019 ("Megatron-LM"): 2 all-reduces per layer forward, 2 backward (+2 for a full
    recompute), 2 at the edges. One node, tp=8, no dp/pp/cp: nothing contends, so the simulated exposed
    communication equals that count times one collective, and the roofline's."""
    workload, profile, sharing, cluster = tp8_case()
    plan = Plan(tp=8, micro_batch=2, microbatches=3, sp=sp, recompute=recompute)
    sim = simulate_case(workload, profile, sharing, plan, cluster)
    expected = 3 * megatron_tp_comm_per_microbatch(workload, plan, cluster)
    assert sim.times.comm == pytest.approx(expected, rel=1e-9)
    assert sim.times.comm == pytest.approx(estimate(workload, profile, sharing, plan, cluster).comm_time_s, rel=1e-9)
