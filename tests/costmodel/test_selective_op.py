"""torchtitan's op-level selective activation checkpointing (`recompute: selective-op`): what a layer keeps,
what its backward recomputes, and the collectives the recomputation repeats, against values worked out by
hand from torchtitan's policy (parallelize_llama.py `_save_list`, `_custom_policy`: every mm output but
the 2nd, 4th, ..., the flash attention outputs and the reduce-scatter outputs are kept; in a Llama block
the mm calls are wq, wk, wv, wo, w1, w3, w2, so q, v, gate and down are kept and k, o and up recomputed).

Llama 3 8B (h 4096, 32 heads and 8 KV heads of 128, f 14336), bf16, per token of a micro-batch:
    kept      h (block input) + 4096 (q) + 1024 (v) + 4096 (O) + 14336 (gate) + 4096 (down) = 31744 elements
              x 2 bytes + 32 heads x 4 bytes of logsumexp = 63616 bytes
    rebuilt   what `none` keeps beside that while one layer is recomputed: norm1 output, q and k (rotated),
              norm2 input and output (4096 each), fc output (2 x 14336), activation output (14336) = 60416
              elements x 2 + two fp32 RMSNorm rstd = 120840 bytes
    recompute the forward GEMMs of k, o and up: (4096 x 1024 + 4096 x 4096 + 4096 x 14336) / (2 x 4096 x 4096
              + 2 x 4096 x 1024 + 3 x 4096 x 14336) = 79691776 / 218103808 of the forward GEMM FLOPs.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan
from llmsim.costmodel.activations import layer_inventory, op_sac_projections
from llmsim.costmodel.compute import op_sac_recomputed_share
from llmsim.costmodel.memory import activation_bytes_per_layer
from llmsim.costmodel.work import Comm, layer_phase_times, train_work
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.cluster import plan_on
from tests.costmodel.helpers import a100_cluster, profiled

S, B = 8192, 2
KEPT_PER_TOKEN = 31744 * 2 + 32 * 4
REBUILT_PER_TOKEN = 60416 * 2 + 2 * 4


def _llama8b(**model: object) -> Workload:
    return Workload(model=ModelSpec(preset="llama3-8b", layers=2, **model), mode="train", batch=B)


def test_llama_block_keeps_q_v_gate_down_and_recomputes_k_o_up() -> None:
    assert op_sac_projections(_llama8b().model) == (("q", "v", "gate", "down"), ("k", "o", "up"))
    # GELU: q k v o fc proj -> q, v and fc kept
    gelu = ModelSpec(preset="gpt2-small")
    assert op_sac_projections(gelu) == (("q", "v", "up"), ("k", "o", "down"))


def test_llama3_8b_layer_keeps_its_op_outputs() -> None:
    plan = Plan(micro_batch=B, recompute="selective-op")
    kept, working = activation_bytes_per_layer(_llama8b(), SharingChoice(True), plan, Options())
    assert kept == S * B * KEPT_PER_TOKEN            # 1,042,284,544 bytes
    assert working == S * B * REBUILT_PER_TOKEN      # 1,979,842,560 bytes
    none, _ = activation_bytes_per_layer(_llama8b(), SharingChoice(True), Plan(micro_batch=B), Options())
    # `none` is the rebuilt set plus the tensors both keep: block input, v, O (4096 + 1024 + 4096) and logsumexp
    assert none == S * B * (REBUILT_PER_TOKEN + (4096 + 1024 + 4096) * 2 + 32 * 4)


def test_tensor_and_sequence_parallel_split() -> None:
    """tp 8 with sp: the block input, q, v (8 KV heads over 8 ranks), O, logsumexp, gate and the two
    reduce-scatter outputs divide by 8; down's output is the row-parallel partial sum, h on every rank:
    (4096 + 4096 + 1024 + 4096 + 14336 + 2 x 4096) / 8 + 4096 = 8576 elements x 2 + 128 / 8 bytes."""
    plan = Plan(tp=8, sp=True, micro_batch=B, recompute="selective-op")
    kept, _ = activation_bytes_per_layer(_llama8b(), SharingChoice(True), plan, Options())
    assert kept == S * B * (8576 * 2 + 16)
    names = [t.name for t in layer_inventory(_llama8b().model, "flash", "selective-op", 2, reduce_scatters=True)]
    assert names.count("o.reduce_scatter_output") == names.count("down.reduce_scatter_output") == 1


def test_recomputed_gemm_share_of_llama3_8b() -> None:
    assert Fraction(op_sac_recomputed_share(_llama8b(), Plan())).limit_denominator(10**9) == Fraction(
        79691776, 218103808)


@pytest.mark.parametrize("tp,sp", [(1, False), (2, True), (2, False)])
def test_recompute_time_and_collectives(tp: int, sp: bool) -> None:
    """The backward recomputes the share of the forward GEMMs above plus every elementwise op of the
    forward; flash attention is cached. The policy caches reduce-scatters, not all-gathers: with sp the
    two all-gathers run again, without sp the two all-reduces."""
    workload = Workload(model=ModelSpec(preset="llama3-8b", layers=2, hidden=512, heads=8, kv_heads=2,
                                        ffn_hidden=1792, vocab=1024, seq_len=256), mode="train", batch=2)
    profile, sharing = profiled(workload)
    cluster = a100_cluster()
    plan = Plan(tp=tp, sp=sp, dp=1, micro_batch=1, microbatches=2, recompute="selective-op")
    stage = train_work(workload, profile, sharing, plan, cluster).stages[0]
    fwd = layer_phase_times(profile, workload, plan_on(plan, cluster), Options(),
                            device_rates(cluster, workload.dtype), "forward")
    # k: 512 x 128, o: 512 x 512, up: 512 x 1792 of q 512 x 512, k, v, o, gate, up, down (per rank: / tp)
    share = (512 * 128 + 512 * 512 + 512 * 1792) / (2 * 512 * 512 + 2 * 512 * 128 + 3 * 512 * 1792)
    assert stage.recompute_layer_s == pytest.approx(fwd.matmul * share + fwd.other, rel=1e-12)
    assert stage.recompute_layer_s < fwd.total
    size = 1 * 256 * 512 * 2
    if tp == 1:
        assert stage.tp_recompute == ()
    else:
        kind = "all-gather" if sp else "all-reduce"
        assert [(c.op, c.size, c.count) for c in stage.tp_recompute] == [(kind, size, 2)]
        assert isinstance(stage.tp_recompute[0], Comm)
