"""Gradient accumulation fused into the weight-gradient GEMMs (Options.grad_accumulation_fusion).

Megatron-LM `--gradient-accumulation-fusion` / NeMo `gradient_accumulation_fusion: True`: every Linear's
weight-gradient GEMM adds into `main_grad` itself (cuBLAS beta = 1), so the per-micro-batch accumulation pass
(read the accumulator and the new gradient, write the accumulator) is left only for the word embedding, whose
gradient the DDP hook adds (memory.accumulated_params). Hand-computed on GPT-3 175B, tp 8, pp 8.
"""

from __future__ import annotations

import pytest

from llmsim.costmodel import Options, Plan, estimate
from llmsim.costmodel.compute import device_rates, phase_times
from llmsim.costmodel.memory import accumulated_params
from llmsim.costmodel.work import train_work
from tests.costmodel.helpers import a100_cluster, gpt3_175b

H, VOCAB, POSITIONS, LAYERS = 12288, 50257, 2048, 96
PLAN = Plan(dp=4, tp=8, pp=8, microbatches=384, schedule="interleaved", virtual_stages=2, recompute="full")
FUSED = Options(grad_accumulation_fusion=True)


def test_fusion_leaves_only_the_word_and_position_embeddings_to_the_accumulation_pass() -> None:
    workload, profile, sharing = gpt3_175b()
    # first stage: the word embedding split over tp 8 and the learned position table whole on every rank
    assert accumulated_params(workload, profile, sharing, PLAN, 0, FUSED) == pytest.approx(
        VOCAB * H / 8 + POSITIONS * H, rel=1e-12)
    # middle and last stages: the blocks' Linears and the LM head (a ColumnParallelLinear) accumulate in the GEMM
    for stage in (1, 7):
        assert accumulated_params(workload, profile, sharing, PLAN, stage, FUSED) == 0.0
    # unfused: every trainable parameter of the stage, e.g. the last stage's 12 layers and the tied head's copy
    last = (LAYERS // 8 * (12 * H * H + 7 * H) + VOCAB * H) / 8 + LAYERS // 8 * 6 * H + 2 * H
    assert accumulated_params(workload, profile, sharing, PLAN, 7, Options()) == pytest.approx(last, rel=1e-12)


def test_fused_step_drops_the_accumulation_term_and_nothing_else() -> None:
    workload, profile, sharing = gpt3_175b()
    cluster = a100_cluster(nodes=32)
    rates = device_rates(cluster, "bfloat16")
    plain = train_work(workload, profile, sharing, PLAN, cluster, Options())
    fused = train_work(workload, profile, sharing, PLAN, cluster, FUSED)
    first = VOCAB * H / 8 + POSITIONS * H
    # m - 1 adds of read 2 + read 2 + write 2 bytes per accumulated parameter (bf16 gradients)
    assert fused.stages[0].accumulate_s == pytest.approx(383 * rates.memory_time(first * 3 * 2), rel=1e-12)
    assert fused.stages[7].accumulate_s == 0.0 and plain.stages[7].accumulate_s > 0.0
    # the critical (last) stage's compute is the plain step's less its accumulation pass
    r_plain = estimate(workload, profile, sharing, PLAN, cluster, Options())
    r_fused = estimate(workload, profile, sharing, PLAN, cluster, FUSED)
    fwd, bwd = (phase_times(profile, workload, PLAN, Options(), rates, ph, "layers", 8 * 8)
                for ph in ("forward", "backward"))
    edge = max(sum(phase_times(profile, workload, PLAN, Options(), rates, ph, region, 8).total
                   for ph in ("forward", "backward")) for region in ("embed", "head"))
    assert r_fused.critical_stage == 7
    assert r_fused.compute_time_s == pytest.approx(384 * (2 * fwd.total + bwd.total + edge), rel=1e-12)
    assert r_plain.compute_time_s - r_fused.compute_time_s == pytest.approx(plain.stages[7].accumulate_s,
                                                                            rel=1e-12)
