"""Tensor parallelism wider than the KV heads (issue 14, item 5): each rank keeps a whole K and V projection.

Llama 3 8B (32 layers, hidden 4096, 32 query / 8 KV heads of 128, FFN 14336, vocabulary 128,256, untied,
RMSNorm) at tp = 16: a rank holds 2 of the 32 query heads and one whole KV head, replicated on 16/8 = 2 ranks
(Megatron-LM GQA with num_query_groups < tp; llmsim.distributed.parallelize), and, as in Megatron-LM, the
RMSNorm weights whole. Per layer and rank:
    q, out  4096 x 4096 / 16 each        = 1,048,576 each
    k, v    2 x 4096 x 128 (one head)    = 1,048,576
    MLP     3 x 4096 x 14336 / 16        = 11,010,048
    norms   2 x 4096 (whole)             = 8,192          -> 14,163,968 (GEMM weights 14,155,776)
Embedding and head 2 x 128256 x 4096 / 16 = 65,667,072, final norm 4,096 whole.
"""

from __future__ import annotations

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, memory_breakdown
from llmsim.costmodel.compute import Rates, phase_times, replicated_kv_projection
from llmsim.costmodel.efficiency import Efficiency
from llmsim.costmodel.memory import stage_params, tp_block_params
from llmsim.workload.profile import profile_workload

LAYER_RANK = 14_163_968          # parameters of one layer on one of 16 ranks (module docstring)
GEMM_RANK = 14_155_776           # of which GEMM weights (every token does 2 FLOPs per weight)
EDGE_RANK = 65_667_072 + 4_096   # embedding + head over 16, final norm whole
UNTIED = SharingChoice(False)


def _llama3_8b(mode: str, **kw: object) -> Workload:
    return Workload(model=ModelSpec(preset="llama3-8b", seq_len=128), mode=mode, batch=2, **kw)


def test_decode_tp16_holds_a_whole_kv_head_per_rank() -> None:
    """Issue 14: 518,918,144 parameters = 1,037,836,288 B of bf16 weights per device (not 8.03B / 16)."""
    w = _llama3_8b("decode", decode_tokens=5)
    profile = profile_workload(w, UNTIED)
    assert profile.params == 8_030_261_248
    assert 32 * LAYER_RANK + EDGE_RANK == 518_918_144
    assert stage_params(w, profile, UNTIED, Plan(tp=16), "first") == (518_918_144, 518_918_144)
    mem = memory_breakdown(w, profile, UNTIED, Plan(tp=16))
    assert mem.params == 1_037_836_288
    # the KV cache was already split 8 ways, not 16
    assert mem.kv_cache == profile.kv_cache_bytes / 8
    # tp <= kv_heads: no KV replication, only the norms stay whole
    assert tp_block_params(w.model, 218_112_000, 8) == (218_112_000 - 8192) / 8 + 8192
    assert tp_block_params(w.model, 218_112_000, 1) == 218_112_000


def test_training_tp16_pp2_zero1_gradients_and_optimizer_follow_the_replicated_weights() -> None:
    """pp = 2 puts 16 layers on a stage: the first adds the input embedding (over 16); the last the LM head
    (over 16) and the final norm (whole). Gradients (bf16) and Adam state
    (12 B, over dp = 2 with ZeRO-1) follow the parameters each rank holds."""
    w = _llama3_8b("train")
    profile = profile_workload(w, UNTIED)
    plan = Plan(dp=2, tp=16, pp=2, zero=1, microbatches=2)
    first = 16 * LAYER_RANK + 128256 * 4096 // 16
    last = 16 * LAYER_RANK + 128256 * 4096 // 16 + 4096
    assert (first, last) == (259_457_024, 259_461_120)
    assert stage_params(w, profile, UNTIED, plan, "first") == (first, first)
    assert stage_params(w, profile, UNTIED, plan, "last") == (last, last)
    mem = memory_breakdown(w, profile, UNTIED, plan, stage="first")
    assert (mem.params, mem.grads, mem.optimizer) == (2 * first, 2 * first, 12 * first / 2)
    zero3 = memory_breakdown(w, profile, UNTIED, Plan(dp=2, tp=16, pp=2, zero=3, microbatches=2), stage="first")
    # + the units in flight, unsharded (memory.zero3_gathered): the largest, this stage's embedding slice
    # (128256 x 4096 / 16) with its bf16 gradient, and the next block prefetched
    embedding = 128256 * 4096 // 16
    assert (zero3.params, zero3.grads, zero3.optimizer) == (2 * first / 2 + 2 * (embedding + LAYER_RANK),
                                                            2 * first / 2 + 2 * embedding, 12 * first / 2)


def test_replicated_kv_projection_flops_and_bytes() -> None:
    """Beyond its 1/16 share of 2 x 4096 x 8 x 128 K/V weights (524,288) a rank multiplies its whole KV head
    (1,048,576): 524,288 more weights, 2 FLOPs each per token, read once in bf16."""
    w = _llama3_8b("decode")
    assert replicated_kv_projection(w, Plan(tp=16), 3) == (2 * 3 * 524_288, 524_288 * 2)
    assert replicated_kv_projection(w, Plan(tp=8), 3) == (0.0, 0.0)


# A device whose memory is free and whose GEMMs reach peak: matmul seconds x peak = FLOPs.
PEAK = 1e15
FLOP_COUNTER = Rates(peak_flops=PEAK, memory_bw=1e30, efficiency=Efficiency(matmul=1.0))


@pytest.mark.parametrize("pp", [1, 2])
def test_the_gemm_flops_of_a_rank_are_its_own_weights(pp: int) -> None:
    """Per token a rank multiplies its GEMM weights (14,155,776 a layer) once forward, twice backward, on its
    32/pp layers: decode (one token per sequence and step), prefill and training."""
    layers = 32 // pp
    decode = _llama3_8b("decode", decode_tokens=5)
    profile = profile_workload(decode, UNTIED)
    plan = Plan(tp=16, pp=pp, micro_batch=2)
    step = phase_times(profile, decode, plan, Options(), FLOP_COUNTER, "decode", "layers", 16 * pp, steps=4)
    assert step.matmul * PEAK == pytest.approx(2 * 2 * layers * GEMM_RANK, rel=1e-9)
    prefill = phase_times(profile, decode, plan, Options(), FLOP_COUNTER, "prefill", "layers", 16 * pp)
    assert prefill.matmul * PEAK == pytest.approx(2 * 2 * 128 * layers * GEMM_RANK, rel=1e-9)
    train = _llama3_8b("train")
    tprofile = profile_workload(train, UNTIED)
    fwd = phase_times(tprofile, train, Plan(tp=16, pp=pp), Options(), FLOP_COUNTER, "forward", "layers", 16 * pp)
    bwd = phase_times(tprofile, train, Plan(tp=16, pp=pp), Options(), FLOP_COUNTER, "backward", "layers", 16 * pp)
    assert fwd.matmul * PEAK == pytest.approx(2 * 128 * layers * GEMM_RANK, rel=1e-9)
    assert bwd.matmul * PEAK == pytest.approx(2 * 2 * 128 * layers * GEMM_RANK, rel=1e-9)
