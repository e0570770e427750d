"""A mixture-of-experts case through the cost model: memory by hand for Mixtral at ep 8, the all-to-alls in the
step's work, their overlap, decode reading only the experts it touches, and ep in the cluster simulation."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, estimate, memory_breakdown
from llmsim.costmodel import moe
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.memory import ADAM_STATE_BYTES_MIXED
from llmsim.costmodel.scaling import with_layers
from llmsim.costmodel.work import forward_work, train_work
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG

# Mixtral-8x7B (Jiang et al. 2024): 32 layers, hidden 4096, 8 experts of width 14336 (w1, w2, w3), top-2.
MIXTRAL_PARAMS = 46_702_792_704                  # the published total (the issue; Hugging Face model card)
MIXTRAL_EXPERT_PARAMS = 32 * 8 * 3 * 4096 * 14336  # every routed expert of every layer
H100 = functools.partial(CATALOG.cluster, "h100-sxm", intra_node="nvlink4", inter_node="ib-ndr400x8")


def mixtral(mode: str = "train", batch: int = 64, seq_len: int = 4096, **moe_keys: object) -> Workload:
    model = ModelSpec(preset="mixtral-8x7b", seq_len=seq_len, **({"moe": moe_keys} if moe_keys else {}))
    return Workload(model=model, mode=mode, batch=batch, dtype="bfloat16",
                    **({"decode_tokens": 4} if mode == "decode" else {}))


@functools.lru_cache(maxsize=8)
def _profile(workload: Workload):
    spec = workload.model
    short = workload.model_copy(update={"model": spec.model_copy(update={"layers": 2})})
    return with_layers(profile_workload(short, SharingChoice(tie_embeddings=spec.tie_embeddings)), spec.layers)


def _sharing(workload: Workload) -> SharingChoice:
    return SharingChoice(tie_embeddings=workload.model.tie_embeddings)


def test_the_profile_counts_mixtral_as_published() -> None:
    prof = _profile(mixtral())
    assert prof.params == MIXTRAL_PARAMS
    assert prof.expert_params == MIXTRAL_EXPERT_PARAMS
    assert prof.moe_layers == 32


def test_mixtral_memory_at_ep8_by_hand() -> None:
    """dp 64 (tp = pp = 1), ep 8, ZeRO-1, bf16 with bf16 gradients: every device holds the non-expert part and
    1 of the 8 experts of each layer; Adam's 12 bytes per parameter shard over dp = 64 for the non-expert part
    and over edp = tp*cp*dp/(ep*etp) = 8 for the experts."""
    w = mixtral(batch=64)
    plan = Plan(dp=64, micro_batch=1, microbatches=1, zero=1, ep=8, etp=1)
    assert plan.edp == 8
    mem = memory_breakdown(w, _profile(w), _sharing(w), plan, Options())
    non_expert = MIXTRAL_PARAMS - MIXTRAL_EXPERT_PARAMS          # 1,605,636,096
    experts_here = MIXTRAL_EXPERT_PARAMS // 8                   # 5,637,144,576
    assert mem.params == pytest.approx((non_expert + experts_here) * 2, rel=1e-12)
    assert mem.grads == pytest.approx((non_expert + experts_here) * 2, rel=1e-12)
    assert mem.optimizer == pytest.approx(non_expert * ADAM_STATE_BYTES_MIXED / 64
                                          + experts_here * ADAM_STATE_BYTES_MIXED / 8, rel=1e-12)
    # 14.5 + 14.5 + 8.8 GB of states
    assert (mem.params + mem.grads + mem.optimizer) / 1e9 == pytest.approx(37.7, abs=0.1)


def test_ep_divides_the_expert_memory_tp_everything() -> None:
    w = mixtral(batch=64)
    ep1 = memory_breakdown(w, _profile(w), _sharing(w), Plan(dp=8, micro_batch=1, microbatches=8), Options())
    ep8 = memory_breakdown(w, _profile(w), _sharing(w), Plan(dp=8, micro_batch=1, microbatches=8, ep=8), Options())
    assert ep8.params == pytest.approx(ep1.params - MIXTRAL_EXPERT_PARAMS * 7 / 8 * 2, rel=1e-9)


def _a2a(comms) -> list:
    return [c for c in comms if c.op == "all-to-all"]


def test_the_all_to_alls_are_in_the_step_with_the_volume_of_the_formula() -> None:
    w = mixtral(batch=64)
    plan = Plan(dp=64, micro_batch=1, microbatches=1, ep=8, etp=1)
    cluster = H100(nodes=8, devices_per_node=8)
    work = train_work(w, _profile(w), _sharing(w), plan, cluster)
    st = work.stages[0]
    [fwd], [bwd] = _a2a(st.tp_fwd), _a2a(st.tp_bwd)
    assert fwd.count == moe.A2A_PER_MOE_LAYER_FORWARD and bwd.count == moe.A2A_PER_MOE_LAYER_BACKWARD
    assert fwd.size == 4096 * 2 * 4096 * 2                      # tokens x top_k x hidden x bf16: the buffer
    assert fwd.group.size == 8 and not fwd.group.crosses_nodes  # ep 8 inside a node
    (phase,) = fwd.phases(cluster.fabric)
    assert phase.nbytes == pytest.approx(2 * moe.a2a_bytes_per_rank(4096, 2, 4096, 2, 8))
    # no expert parallelism, no all-to-all
    dense_like = train_work(w, _profile(w), _sharing(w), replace(plan, ep=1, etp=1), cluster)
    assert _a2a(dense_like.stages[0].tp_fwd) == []


def test_ep_comm_overlap_hides_the_all_to_alls() -> None:
    w = mixtral(batch=64)
    cluster = H100(nodes=8, devices_per_node=8)
    plan = Plan(dp=64, micro_batch=1, microbatches=1, ep=16, etp=1, zero=1)   # ep 16: across two nodes
    exposed = estimate(w, _profile(w), _sharing(w), plan, cluster)
    hidden = estimate(w, _profile(w), _sharing(w), replace(plan, ep_comm_overlap=True), cluster)
    assert hidden.comm_time_s < exposed.comm_time_s
    assert hidden.step_time_s < exposed.step_time_s
    assert hidden.compute_time_s == pytest.approx(exposed.compute_time_s)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_full_recompute_repeats_the_experts_and_their_all_to_alls(overlap: bool) -> None:
    w = mixtral(batch=64)
    cluster = H100(nodes=8, devices_per_node=8)
    plan = Plan(dp=64, micro_batch=1, microbatches=1, ep=8, etp=1, recompute="full", ep_comm_overlap=overlap)
    st = train_work(w, _profile(w), _sharing(w), plan, cluster).stages[0]
    assert st.recompute_layer_s == pytest.approx(st.fwd_layer_s)
    assert st.tp_recompute == st.tp_fwd and st.tp_recompute_overlap == st.tp_fwd_overlap
    assert bool(_a2a(st.tp_recompute)) != overlap


def test_imbalance_slows_the_expert_time() -> None:
    w = mixtral(batch=64)
    heavy = mixtral(batch=64, load_imbalance=2.0)
    cluster = H100(nodes=8, devices_per_node=8)
    plan = Plan(dp=64, micro_batch=1, microbatches=1, ep=8, etp=1)
    rates = device_rates(cluster, "bfloat16")
    base = moe.experts_layer_time(_profile(w), w, plan, rates, "forward")
    slow = moe.experts_layer_time(_profile(heavy), heavy, plan, rates, "forward")
    # one expert per rank: the rank carries the expert's imbalance; compute-bound at 8,192 rows per expert
    assert moe.assumed_imbalance(heavy, plan) == 2.0
    assert slow / base == pytest.approx(2.0 / moe.assumed_imbalance(w, plan), rel=0.02)


def test_expert_flops_on_a_rank_are_its_tokens_top_k_flops() -> None:
    """The expert GEMMs of one MoE layer and micro-batch on one rank: 2 x tokens x top_k x 3 x h x f FLOPs
    (top-k FLOPs of its own tokens; ep does not divide them) at one expert per rank."""
    w = mixtral(batch=64)
    prof = _profile(w)
    tokens = 4096
    costs = moe.expert_token_costs(prof, w, "forward", 64 * 4096)
    assert costs.mm_flops * tokens / 32 == pytest.approx(2 * tokens * 2 * 3 * 4096 * 14336, rel=1e-9)


def test_decode_reads_only_the_experts_the_batch_touches() -> None:
    """Weight-bound decode: at batch 1 one token reads 2 of 8 experts per layer, at batch 64 nearly all:
    the expert time of a step grows ~4x from batch 1 to 64, not 64x, and not 1x (the fixed time per kernel
    set apart: it is the same at both batches)."""
    cluster = H100(nodes=1, devices_per_node=1)
    rates = device_rates(cluster, "bfloat16")
    rates = replace(rates, efficiency=rates.efficiency.model_copy(update={"kernel_latency_s": 0.0}))
    times = {}
    for batch in (1, 64):
        w = mixtral("decode", batch=batch, seq_len=128)
        plan = Plan(dp=1, micro_batch=batch, microbatches=1)
        times[batch] = moe.experts_layer_time(_profile(w), w, plan, rates, "decode", steps=w.decode_tokens - 1)
    touched_1 = moe.expected_distinct_experts(8, 2, 1)      # 2
    touched_64 = moe.expected_distinct_experts(8, 2, 64)    # ~8
    assert times[64] / times[1] == pytest.approx(touched_64 / touched_1, rel=0.05)


def test_forward_work_of_a_moe_decode_step_has_its_all_to_alls_when_ep_spans_replicas() -> None:
    """ep 8 over 8 data-parallel replicas of tp 1 (vLLM's DP + EP): each rank's own tokens are dispatched."""
    w = mixtral("decode", batch=8, seq_len=128)
    cluster = H100(nodes=1, devices_per_node=8)
    plan = Plan(dp=8, tp=1, micro_batch=8, microbatches=1, ep=8, etp=1, sp=False)
    work = forward_work(w, _profile(w), plan, cluster, phase="decode", steps=w.decode_tokens - 1)
    [a2a] = _a2a(work.stages[0].tp_fwd)
    assert a2a.size == 8 * 2 * 4096 * 2   # one token per sequence, top-2, bf16


def test_forward_work_with_ep_inside_the_tp_group_exchanges_no_tokens() -> None:
    """ep 8 over the 8 ranks of one tp 8 replica: the ranks hold the same tokens and the tp all-reduce combines
    (moe.ep_inside_tp): the same collectives as tp 8 without ep."""
    w = mixtral("decode", batch=8, seq_len=128)
    cluster = H100(nodes=1, devices_per_node=8)
    plan = Plan(dp=1, tp=8, micro_batch=8, microbatches=1, ep=8, etp=1, sp=False)
    work = forward_work(w, _profile(w), plan, cluster, phase="decode", steps=w.decode_tokens - 1)
    plain = forward_work(w, _profile(w), replace(plan, ep=1, etp=8), cluster, phase="decode",
                         steps=w.decode_tokens - 1)
    assert not _a2a(work.stages[0].tp_fwd)
    assert [(c.op, c.size) for c in work.stages[0].tp_fwd] == [(c.op, c.size) for c in plain.stages[0].tp_fwd]
    assert moe.ep_inside_tp(plan) and not moe.ep_inside_tp(replace(plan, tp=4))


def test_the_cluster_simulation_plays_the_all_to_alls() -> None:
    """The simulation schedules the same all-to-all phases as the roofline: alone on their links they take
    what the closed form says (the step agrees within the simulation's usual few percent)."""
    from llmsim.sim import simulate_case

    w = mixtral(batch=16, seq_len=1024)
    cluster = H100(nodes=2, devices_per_node=8)
    plan = Plan(dp=16, micro_batch=1, microbatches=1, ep=16, etp=1, zero=1)
    roof = estimate(w, _profile(w), _sharing(w), plan, cluster)
    sim = simulate_case(w, _profile(w), _sharing(w), plan, cluster)
    assert sim.times.step == pytest.approx(roof.step_time_s, rel=0.1)
    assert sim.times.comm > 0
    overlapped = simulate_case(w, _profile(w), _sharing(w), replace(plan, ep_comm_overlap=True), cluster)
    assert overlapped.times.comm < sim.times.comm


def test_the_experts_grouped_launch_has_no_cliff_at_a_full_tile() -> None:
    """DeepSeek-V3's 256 experts at tp 8 (1/8 of each, 512 / 256 columns) on a B200: a prompt of 4,096 tokens gives
    each expert 128 rows, a full 128-row tile. The experts run as one grouped launch (fused_moe), so their 1,024
    tiles fill the SMs: the routed experts cost about as much at 128 rows as at 127 (compute-bound, 0.8% more
    rows), not the ~10x of 256 launches of 4 tiles each on 148 SMs."""
    cluster = CATALOG.cluster("b200", nodes=1, devices_per_node=8, intra_node="nvlink5", inter_node="ib-ndr400x8")
    w = Workload(model=ModelSpec(preset="deepseek-v3", seq_len=8192), mode="decode", batch=1, dtype="float8")
    spec = w.model
    plan = Plan(tp=8, etp=8)
    rates = device_rates(cluster, "float8")
    layers = spec.moe_layers
    per_token = 2 * spec.moe.top_k * 3 * spec.hidden * spec.expert_ffn * layers   # every MoE layer's routed FLOPs
    costs = moe.ExpertTokenCosts(mm_flops=per_token)
    t127 = moe.experts_time(w, plan, rates, costs, 4064, layers, "prefill", trainable=False)
    t128 = moe.experts_time(w, plan, rates, costs, 4096, layers, "prefill", trainable=False)
    assert t128 / t127 < 1.1
