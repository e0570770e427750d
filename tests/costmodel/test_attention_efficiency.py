"""Flash attention's fraction of peak per device and pass (Efficiency.attention, attention_backward).

H100 and H200 carry FlashAttention-2's measured H100 fractions (FlashAttention-3 paper, Shah et al. 2024,
Fig. 5-6, head dim 128, seq 8k: 333 TFLOP/s forward with causal mask, 318 backward, of 989); the backward
of a flash kernel is priced with its own fraction when the device gives one, else with the forward's."""

from __future__ import annotations

import pytest

from llmsim.costmodel import Options, Plan
from llmsim.costmodel.compute import (CAUSAL_FLOP_SHARE, FLASH_BACKWARD_FLOP_RATIO, Rates, device_rates,
                                      phase_times)
from llmsim.costmodel.efficiency import (FLASH_ATTENTION2_H100_BACKWARD, FLASH_ATTENTION2_H100_FORWARD,
                                         Efficiency)
from tests.costmodel.helpers import CATALOG, a100_cluster, gpt2, profiled


@pytest.mark.parametrize("device", ["h100-sxm", "h200"])
def test_hopper_entries_carry_flash_attention2_on_h100(device: str) -> None:
    eff = CATALOG.device(device).efficiency
    assert eff.attention == pytest.approx(FLASH_ATTENTION2_H100_FORWARD, abs=5e-4)   # 0.337
    assert eff.attention_backward == pytest.approx(FLASH_ATTENTION2_H100_BACKWARD, abs=5e-4)  # 0.321
    assert CATALOG.device("a100-80gb").efficiency.attention_backward is None  # FA2 paper: one figure


def test_flash_backward_uses_its_own_fraction() -> None:
    """Hand-computed: the traced attention FLOPs of one micro-batch's layers, halved by the causal mask,
    times 5/4 in the backward (flash recomputes the scores), over the sustained peak times the fraction."""
    workload = gpt2(batch=4)
    profile, _ = profiled(workload)
    rates = device_rates(a100_cluster(), "bfloat16")
    both = Rates(rates.peak_flops, rates.memory_bw, rates.efficiency.model_copy(update=dict(attention=0.4, attention_backward=0.25)))
    plan = Plan(micro_batch=4)
    layers = workload.model.layers
    for phase, fraction, ratio in (("forward", 0.4, 1.0), ("backward", 0.25, FLASH_BACKWARD_FLOP_RATIO)):
        at = profile.ops[(phase, "layers", "attention")]
        # one layer's share of the traced micro-batch (divide = the model's layers)
        expected = at.flops / layers * CAUSAL_FLOP_SHARE * ratio / (both.sustained_flops * fraction)
        got = phase_times(profile, workload, plan, Options(), both, phase, "layers", layers).attention
        assert got == pytest.approx(expected, rel=1e-12)
    # without a backward figure the backward takes the forward's fraction (the old single-figure behaviour)
    one = Rates(rates.peak_flops, rates.memory_bw, rates.efficiency.model_copy(update=dict(attention=0.4)))
    at = profile.ops[("backward", "layers", "attention")]
    got = phase_times(profile, workload, plan, Options(), one, "backward", "layers", layers).attention
    assert got == pytest.approx(at.flops / layers * CAUSAL_FLOP_SHARE * FLASH_BACKWARD_FLOP_RATIO
                                / (one.sustained_flops * 0.4), rel=1e-12)


def test_efficiency_rejects_a_backward_fraction_above_one() -> None:
    with pytest.raises(ValueError):
        Efficiency(attention_backward=1.5)
