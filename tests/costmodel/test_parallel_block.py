"""The parallel attention + MLP block (`workload.model.parallel_block`: GPT-J, PaLM Sec. 2, MaxText's 2023
decoder): x + attn(norm(x)) + mlp(norm(x)). Same FLOPs; one norm per layer; one tensor-parallel reduction per
layer and pass instead of two (work.TP_COLLECTIVES_PER_PARALLEL_BLOCK), in the roofline, the cluster
simulation and the serving iteration alike; the activations of the one norm only. Values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, estimate
from llmsim.costmodel.cluster import plan_on
from llmsim.costmodel.compute import device_rates, layer_gemm_shares
from llmsim.costmodel.memory import activation_bytes_per_layer
from llmsim.costmodel.work import Comm, forward_work, layer_phase_times, train_work
from llmsim.sim import simulate_case
from llmsim.workload.model import Transformer
from tests.costmodel.helpers import CATALOG, a100_cluster, gpt2, profiled

H, S = 768, 256   # GPT-2 small at seq 256 (helpers.gpt2)


def test_the_block_is_one_norm_and_the_sum_of_both_branches() -> None:
    """One LayerNorm (weight and bias, 2h) fewer per layer; the output is x + attn(n(x)) + mlp(n(x))."""
    spec = ModelSpec(preset="gpt2-small", layers=2, seq_len=16, parallel_block=True)
    sequential = Transformer(spec.model_copy(update={"parallel_block": False}), tie_embeddings=True)
    parallel = Transformer(spec, tie_embeddings=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(sequential) - count(parallel) == 2 * 2 * H
    block = parallel.blocks[0]
    assert block.norm2 is None
    x = torch.randn(2, 16, H)
    h = block.norm1(x)
    want = x + (block.attn(h, None, None, 0) + block.mlp(h))
    assert torch.allclose(block(x, None, None, 0), want, rtol=0, atol=1e-6)


def _train(parallel_block: bool, plan: Plan, cluster=None, **model: object):
    workload = gpt2(batch=plan.dp * plan.micro_batch * plan.microbatches, parallel_block=parallel_block, **model)
    profile, sharing = profiled(workload)
    cluster = cluster or a100_cluster()
    return workload, profile, sharing, plan_on(plan, cluster), cluster


@pytest.mark.parametrize("parallel_block,count", [(False, 2), (True, 1)])
def test_one_tensor_parallel_all_reduce_per_layer_and_pass(parallel_block: bool, count: int) -> None:
    """tp 4 without sp on one A100 node, full recomputation: forward, recomputed forward and backward each
    all-reduce the b*s*h activation (2 micro-batch sequences x 256 x 768 x 2 bytes) `count` times."""
    workload, profile, sharing, plan, cluster = _train(parallel_block, Plan(tp=4, dp=2, micro_batch=2,
                                                                            microbatches=2, recompute="full"))
    st = train_work(workload, profile, sharing, plan, cluster).stages[0]
    want = (Comm("all-reduce", 2 * S * H * 2, st.tp_fwd[0].group, count),)
    assert st.tp_fwd == want and st.tp_bwd == want and st.tp_recompute == want


def test_with_sequence_parallelism_one_gather_and_one_reduce_scatter() -> None:
    workload, profile, sharing, plan, cluster = _train(True, Plan(tp=4, sp=True, micro_batch=2, microbatches=1))
    st = train_work(workload, profile, sharing, plan, cluster).stages[0]
    assert [(c.op, c.size, c.count) for c in st.tp_fwd] == [("reduce-scatter", 2 * S * H * 2, 1),
                                                             ("all-gather", 2 * S * H * 2, 1)]


def test_roofline_and_simulation_expose_half_the_layer_collectives() -> None:
    """Blocking all-reduces, nothing else moves: the tensor-parallel time of the layers halves, in the
    closed form and in the simulation (the embedding/head all-reduces stay, the same in both)."""
    plan = Plan(tp=8, dp=1, micro_batch=4, microbatches=1)
    results = {}
    for pb in (False, True):
        workload, profile, sharing, p, cluster = _train(pb, plan)
        roof = estimate(workload, profile, sharing, p, cluster)
        sim = simulate_case(workload, profile, sharing, p, cluster).times
        results[pb] = (roof.comm_time_s, sim.comm)
    st = train_work(*_train(True, plan)[:4], a100_cluster()).stages[0]
    edge = (sum(c.time(a100_cluster().fabric) for c in st.tp_embed + st.tp_head))
    for i in range(2):
        layers_seq = results[False][i] - edge
        layers_par = results[True][i] - edge
        assert layers_par == pytest.approx(layers_seq / 2, rel=1e-6)


def test_windowed_einsums_pair_the_gemms_on_each_side_of_the_layer() -> None:
    """On a TPU v5p slice with the b*s*h activation >= 256 MiB (XLA collective matmul), a parallel block has
    two windowed einsums per pass: the shared input's gather under the QKV and MLP-up GEMMs together, the
    sum's reduce-scatter under attention-out and MLP-down together; each tp - 1 = 3 messages of 1/4."""
    cluster = CATALOG.cluster("tpu-v5p", topology="4x4x4")
    workload, profile, sharing, plan, cluster = _train(True, Plan(dp=16, tp=4, sp=True, zero=3, micro_batch=256,
                                                                  microbatches=1), cluster, seq_len=1024)
    st = train_work(workload, profile, sharing, plan, cluster).stages[0]
    fwd = layer_phase_times(profile, workload, plan, Options(), device_rates(cluster, workload.dtype), "forward")
    qkv, out, up, down = layer_gemm_shares(workload, plan)
    assert [o.gemm_s for o in st.tp_fwd_overlap] == pytest.approx([(qkv + up) * fwd.matmul * 3 / 4,
                                                                  (out + down) * fwd.matmul * 3 / 4], rel=1e-12)
    for item in st.tp_fwd_overlap:
        (comm,) = item.hidden
        assert comm.op == "p2p" and comm.count == 3 and comm.size == pytest.approx(256 * 1024 * H * 2 / 4)
    assert len(st.tp_bwd_overlap) == 2 and st.tp_fwd == st.tp_bwd == ()


def test_selective_dots_regathers_the_one_norm_output_once() -> None:
    workload, profile, sharing, plan, cluster = _train(True, Plan(tp=4, sp=True, micro_batch=1, microbatches=1,
                                                                  recompute="selective-dots"))
    st = train_work(workload, profile, sharing, plan, cluster).stages[0]
    assert [(c.op, c.size, c.count) for c in st.tp_recompute] == [("all-gather", S * H * 2, 1)]


def test_inference_reduces_once_per_layer() -> None:
    workload = gpt2(mode="prefill", batch=2, parallel_block=True)
    profile, _ = profiled(workload)
    cluster = a100_cluster()
    plan = plan_on(Plan(tp=4, micro_batch=2, microbatches=1), cluster)
    st = forward_work(workload, profile, plan, cluster).stages[0]
    assert [(c.op, c.size, c.count) for c in st.tp_fwd] == [("all-reduce", 2 * S * H * 2, 1)]


def test_no_recomputation_keeps_one_norms_tensors() -> None:
    """GPT-2 small, no recomputation, flash, no dropout, per token (whole): the sequential block keeps norm2's
    input and output (2h x 2 bytes) and its mean and rstd (2 x 4 bytes) that the parallel block does not."""
    plan = Plan(micro_batch=1)
    seq, _ = activation_bytes_per_layer(gpt2(), SharingChoice(True), plan, Options())
    par, _ = activation_bytes_per_layer(gpt2(parallel_block=True), SharingChoice(True), plan, Options())
    assert seq - par == S * (2 * H * 2 + 2 * 4)


def test_the_flops_do_not_change() -> None:
    seq, _ = profiled(gpt2())
    par, _ = profiled(gpt2(parallel_block=True))
    assert par.model_flops_per_step == seq.model_flops_per_step
