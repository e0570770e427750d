"""The fused attention kernel as a stated choice (Options.attention: flash, cudnn, flash3).

The three fused kernels price alike (the causal half of the FLOPs, 5/4 of them again in the backward, no
s x s tensor kept) and differ only in the fraction of peak each reaches, read from the device's catalog
entry (Efficiency.attention_fractions). H100 carries the FlashAttention-3 paper's figures for all three
(Shah et al. 2024, Fig. 5d and 6, H100 80GB SXM5, bf16, head dim 128, seq 8k, TFLOP/s of 989.4):
FlashAttention-2 333 forward (causal) / 318 backward, cuDNN 529 / 518, FlashAttention-3 602 / 559.
A device without a figure for the kernel cannot price it (CostModelError: a skipped row with the reason).
"""

from __future__ import annotations

import pytest

from llmsim.costmodel import ClusterSpec, CostModelError, Options, Plan, memory_breakdown
from llmsim.costmodel.compute import (CAUSAL_FLOP_SHARE, FLASH_BACKWARD_FLOP_RATIO, device_rates, phase_times)
from llmsim.costmodel.efficiency import (CUDNN_ATTENTION_H100_BACKWARD, CUDNN_ATTENTION_H100_FORWARD,
                                         FLASH_ATTENTION3_H100_BACKWARD, FLASH_ATTENTION3_H100_FORWARD)
from llmsim.costmodel.work import train_work
from tests.costmodel.helpers import CATALOG, a100_cluster, gpt2, profiled


def h100_cluster() -> ClusterSpec:
    return ClusterSpec(device=CATALOG.device("h100-sxm"), intra=CATALOG.link("nvlink4"),
                       inter=CATALOG.link("ib-ndr400x8"), nodes=1, devices_per_node=8)


@pytest.mark.parametrize("device", ["h100-sxm", "h200"])
def test_hopper_entries_carry_cudnn_and_flash3_on_h100(device: str) -> None:
    eff = CATALOG.device(device).efficiency
    assert eff.attention_fractions("cudnn") == pytest.approx(
        (CUDNN_ATTENTION_H100_FORWARD, CUDNN_ATTENTION_H100_BACKWARD), abs=5e-4)      # 529, 518 of 989.4
    assert eff.attention_fractions("flash3") == pytest.approx(
        (FLASH_ATTENTION3_H100_FORWARD, FLASH_ATTENTION3_H100_BACKWARD), abs=5e-4)    # 602, 559 of 989.4


@pytest.mark.parametrize("kernel, fractions", [
    ("flash", (333 / 989.4, 318 / 989.4)),
    ("cudnn", (529 / 989.4, 518 / 989.4)),
    ("flash3", (602 / 989.4, 559 / 989.4)),
])
def test_each_fused_kernel_runs_at_its_own_fraction(kernel: str, fractions: tuple[float, float]) -> None:
    """Hand-computed from the traced attention FLOPs: one layer's causal half, 5/4 of it again in the backward,
    over the sustained peak times the kernel's fraction on H100 (the catalog's three-digit values)."""
    workload = gpt2(batch=4)
    profile, _ = profiled(workload)
    rates = device_rates(h100_cluster(), "bfloat16")
    layers = workload.model.layers
    for phase, fraction, ratio in (("forward", fractions[0], 1.0), ("backward", fractions[1],
                                                                     FLASH_BACKWARD_FLOP_RATIO)):
        at = profile.ops[(phase, "layers", "attention")]
        expected = at.flops / layers * CAUSAL_FLOP_SHARE * ratio / (rates.sustained_flops * fraction)
        got = phase_times(profile, workload, Plan(micro_batch=4), Options(attention=kernel), rates, phase,
                          "layers", layers).attention
        assert got == pytest.approx(expected, rel=2e-3)  # the catalog rounds each fraction to 3 digits


def test_cudnn_is_faster_than_flash_and_flash3_faster_still_on_h100() -> None:
    workload = gpt2(batch=4)
    profile, _ = profiled(workload)
    rates = device_rates(h100_cluster(), "bfloat16")
    layers = workload.model.layers
    times = {k: phase_times(profile, workload, Plan(micro_batch=4), Options(attention=k), rates, "backward",
                            "layers", layers).attention for k in ("flash", "cudnn", "flash3")}
    # the paper's ratios, within the catalog's rounding of two three-digit fractions
    assert times["flash"] / times["cudnn"] == pytest.approx(518 / 318, rel=4e-3)
    assert times["cudnn"] / times["flash3"] == pytest.approx(559 / 518, rel=4e-3)


@pytest.mark.parametrize("kernel", ["cudnn", "flash3"])
def test_a_kernel_without_a_figure_on_the_device_is_refused(kernel: str) -> None:
    """A100 has no cuDNN-attention figure and cannot run FlashAttention-3 (Hopper only): one clear reason."""
    workload = gpt2(batch=4)
    profile, sharing = profiled(workload)
    with pytest.raises(CostModelError, match=rf"attention kernel '{kernel}' has no measured efficiency.*"
                                             rf"attention_{kernel}.*kernels it has: flash, trtllm-mmha$"):
        train_work(workload, profile, sharing, Plan(micro_batch=4), a100_cluster(), Options(attention=kernel))


@pytest.mark.parametrize("recompute", ["none", "selective", "selective-op", "full"])
def test_fused_kernels_keep_what_flash_keeps(recompute: str) -> None:
    """cuDNN's fused attention and FlashAttention-3 save Q, K, V, O and the fp32 logsumexp as FlashAttention-2
    does: the same activation memory under every recompute choice, and selective recompute adds no work."""
    workload = gpt2(batch=4)
    profile, sharing = profiled(workload)
    plan = Plan(micro_batch=4, recompute=recompute)
    flash = memory_breakdown(workload, profile, sharing, plan, Options(attention="flash"))
    for kernel in ("cudnn", "flash3"):
        other = memory_breakdown(workload, profile, sharing, plan, Options(attention=kernel))
        assert other.activations == flash.activations
        assert other.total == flash.total


def test_selective_recompute_reruns_no_fused_attention() -> None:
    workload = gpt2(batch=4)
    profile, sharing = profiled(workload)
    cluster = h100_cluster()
    for kernel in ("flash", "cudnn", "flash3"):
        none = train_work(workload, profile, sharing, Plan(micro_batch=4), cluster, Options(attention=kernel))
        selective = train_work(workload, profile, sharing, Plan(micro_batch=4, recompute="selective"), cluster,
                               Options(attention=kernel))
        assert [s.recompute_layer_s for s in selective.stages] == [s.recompute_layer_s for s in none.stages] == [0.0]
