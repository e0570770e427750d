"""Megatron-Core's communication overlaps on the roofline: each hides its communication where it exists and
changes nothing where it does not (or where the device computes its own collectives)."""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.costmodel import ClusterSpec, Options, Plan, estimate
from llmsim.costmodel.cluster import Group
from llmsim.costmodel.collectives import Channel, Fabric
from llmsim.costmodel.compute import device_rates, layer_gemm_shares, phase_times
from llmsim.costmodel.work import TE_COMM_SMS, TE_PIPELINE_SPLITS, Comm, Overlapped, train_work
from tests.costmodel.helpers import a100_cluster, gpt2, gpt3_175b, profiled, tp8_case


def _on_cores(cluster: ClusterSpec) -> ClusterSpec:
    """The same cluster whose collectives run on the compute cores (gloo on a CPU host)."""
    return dataclasses.replace(cluster, device=cluster.device.model_copy(update={"overlaps_communication": False}))


def _same(a, b) -> None:
    for column in ("step_time_s", "compute_time_s", "comm_time_s", "bubble_time_s", "other_time_s"):
        assert getattr(a, column) == getattr(b, column), column


# -- the exposure of one pipelined collective ----------------------------------------------------------

def test_an_overlapped_collective_exposes_its_unhidden_chunk_and_what_the_gemm_does_not_cover() -> None:
    ch = Channel(bandwidth=100e9, latency=0.0)
    fabric = Fabric(ch, ch)
    group = Group(2, 2, 1)
    chunk = Comm("p2p", 1e9, group)             # 10 ms alone on a 100 GB/s port
    assert Overlapped(hidden=(chunk,), gemm_s=0.004).time(fabric) == pytest.approx(0.006, rel=1e-12)
    assert Overlapped(hidden=(chunk,), gemm_s=0.030).time(fabric) == 0.0
    assert Overlapped(hidden=(chunk,), gemm_s=0.030, exposed=(chunk,)).time(fabric) == pytest.approx(0.010,
                                                                                                   rel=1e-12)


# -- tp_comm_overlap -----------------------------------------------------------------------------------

def test_tp_comm_overlap_pipelines_each_collective_with_its_gemm_as_transformer_engine_does() -> None:
    """TE userbuffers' defaults (costmodel.work TE_*): forward, ring exchange of 1/tp chunks under the QKV
    and MLP-up GEMMs and 4-chunk pipelined reduce-scatters after attention-out and MLP-down, whose GEMMs
    leave 16 SMs; backward, ring exchange under the attention-out and MLP-down data-gradient GEMMs and the
    reduce-scatters whole beside the QKV and MLP-up weight-gradient GEMMs (16 SMs left too)."""
    workload, profile, sharing, cluster = tp8_case()
    plan = Plan(tp=8, sp=True, micro_batch=2, microbatches=3, recompute="full")
    plain = train_work(workload, profile, sharing, plan, cluster)
    work = train_work(workload, profile, sharing, dataclasses.replace(plan, tp_comm_overlap=True), cluster)
    st, base = work.stages[0], plain.stages[0]
    rates = device_rates(cluster, "bfloat16")
    fwd = phase_times(profile, workload, plan, Options(), rates, "forward", "layers", 8)
    bwd = phase_times(profile, workload, plan, Options(), rates, "backward", "layers", 8)
    qkv, out, up, down = layer_gemm_shares(workload, plan)
    f = [x * fwd.matmul / 4 for x in (qkv, out, up, down)]       # one layer's GEMMs (4 layers on the stage)
    b = [x * bwd.matmul / 4 / 2 for x in (qkv, out, up, down)]   # one of a backward's two passes
    units = cluster.device.compute_units
    margin = units / (units - TE_COMM_SMS)
    assert units == 108 and TE_COMM_SMS == 16 and TE_PIPELINE_SPLITS == 4
    size, tp = 2 * 256 * 1024 * 2, Group(8, 8, 1)                # micro-batch 2 x seq 256 x hidden 1024, bf16
    ring = Comm("p2p", size / 8, tp, 7)

    def pipeline(gemm: float) -> Overlapped:
        return Overlapped(hidden=(Comm("reduce-scatter", size / 4, tp, 3),),
                          gemm_s=pytest.approx(gemm * margin * 3 / 4), exposed=(Comm("reduce-scatter", size / 4, tp),))

    assert st.tp_fwd == st.tp_bwd == st.tp_recompute == ()
    assert st.tp_fwd_overlap == (Overlapped((ring,), pytest.approx(f[0] * 7 / 8)), pipeline(f[1]),
                                 Overlapped((ring,), pytest.approx(f[2] * 7 / 8)), pipeline(f[3]))
    assert st.tp_recompute_overlap == st.tp_fwd_overlap
    assert st.tp_bwd_overlap == (Overlapped((ring,), pytest.approx(b[1] * 7 / 8)),
                                 Overlapped((ring,), pytest.approx(b[3] * 7 / 8)),
                                 Overlapped((Comm("reduce-scatter", size, tp),), pytest.approx(b[0] * margin)),
                                 Overlapped((Comm("reduce-scatter", size, tp),), pytest.approx(b[2] * margin)))
    # the GEMMs that leave SMs to communication take longer; the embedding and head keep their collectives
    assert st.fwd_layer_s == pytest.approx(base.fwd_layer_s + (f[1] + f[3]) * (margin - 1), rel=1e-12)
    assert st.recompute_layer_s == pytest.approx(base.recompute_layer_s + (f[1] + f[3]) * (margin - 1), rel=1e-12)
    assert st.bwd_layer_s == pytest.approx(base.bwd_layer_s + (b[0] + b[2]) * (margin - 1), rel=1e-12)
    assert st.tp_embed == base.tp_embed and st.tp_head == base.tp_head


def test_tp_comm_overlap_hides_tensor_parallel_communication_under_the_gemms() -> None:
    """GPT-3 175B at tp 8 with sequence parallelism on one A100 node: the GEMMs are long enough to cover
    every chunk but the pipelined reduce-scatters' last ones."""
    workload, profile, sharing = gpt3_175b(batch=16)
    cluster = a100_cluster(nodes=1)
    plan = Plan(tp=8, sp=True, micro_batch=1, microbatches=16, recompute="selective")
    off = estimate(workload, profile, sharing, plan, cluster)
    on = estimate(workload, profile, sharing, dataclasses.replace(plan, tp_comm_overlap=True), cluster)
    assert 0 < on.comm_time_s < off.comm_time_s / 5
    assert on.compute_time_s > off.compute_time_s  # the SMs userbuffers keep (A100: 16 of 108)
    assert on.step_time_s < off.step_time_s
    # a device that does not say how many SMs it has loses none to communication
    bare = dataclasses.replace(cluster, device=cluster.device.model_copy(update={"compute_units": None}))
    assert (estimate(workload, profile, sharing, dataclasses.replace(plan, tp_comm_overlap=True), bare).compute_time_s
            == pytest.approx(estimate(workload, profile, sharing, plan, bare).compute_time_s, rel=1e-12))


def test_tp_comm_overlap_costs_more_than_it_hides_on_a_small_layer() -> None:
    """Each chunk is a collective of its own, paying the link's per-step latency (and a reduce-scatter
    NCCL's launch latency): under GPT-2 medium's few-microsecond GEMMs at tp 8 the 4-chunk reduce-scatters
    expose more than the whole collectives did."""
    workload, profile, sharing, cluster = tp8_case()
    plan = Plan(tp=8, sp=True, micro_batch=2, microbatches=3)
    off = estimate(workload, profile, sharing, plan, cluster)
    on = estimate(workload, profile, sharing, dataclasses.replace(plan, tp_comm_overlap=True), cluster)
    assert on.comm_time_s > off.comm_time_s


def test_tp_comm_overlap_changes_nothing_without_tensor_parallel_traffic_to_hide() -> None:
    """No tensor parallelism, inference (TE's userbuffers are set up for the training micro-batch), or a
    device that computes its own collectives: the same step as without."""
    workload, profile, sharing, cluster = tp8_case()
    for case, plan in ((workload, Plan(tp=1, dp=8, microbatches=1)),
                       (workload.model_copy(update={"mode": "prefill"}), Plan(tp=8, sp=True, micro_batch=2,
                                                                              microbatches=3))):
        p, s = profiled(case) if case is not workload else (profile, sharing)
        _same(estimate(case, p, s, dataclasses.replace(plan, tp_comm_overlap=True), cluster),
              estimate(case, p, s, plan, cluster))
    plan = Plan(tp=8, sp=True, micro_batch=2, microbatches=3)
    cores = _on_cores(cluster)
    _same(estimate(workload, profile, sharing, dataclasses.replace(plan, tp_comm_overlap=True), cores),
          estimate(workload, profile, sharing, plan, cores))


# -- overlap_p2p ---------------------------------------------------------------------------------------

def _pipeline_case() -> tuple:
    """GPT-2 small at 4 stages, each on its own node (the pipeline crosses InfiniBand), interleaved."""
    workload = gpt2(batch=8)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(nodes=4, devices_per_node=1)
    plan = Plan(pp=4, microbatches=8, schedule="interleaved", virtual_stages=3, overlap_p2p=False)
    return workload, profile, sharing, cluster, plan


def test_overlap_p2p_hides_pipeline_sends_under_the_next_chunk() -> None:
    workload, profile, sharing, cluster, plan = _pipeline_case()
    off = estimate(workload, profile, sharing, plan, cluster)
    on = estimate(workload, profile, sharing, dataclasses.replace(plan, overlap_p2p=True), cluster)
    assert on.comm_time_s < off.comm_time_s and on.bubble_time_s < off.bubble_time_s
    assert on.compute_time_s == off.compute_time_s
    # by hand: blocking, 2 v messages per micro-batch; overlapped, each only beyond the chunk that follows it
    work = train_work(workload, profile, sharing, dataclasses.replace(plan, overlap_p2p=True), cluster)
    st, send = work.stages[on.critical_stage], work.p2p.time(cluster.fabric)
    forward, backward = st.layers * st.fwd_layer_s, st.layers * (st.bwd_layer_s + st.recompute_layer_s)
    hidden = 8 * 3 * (2 * send - max(0.0, send - forward) - max(0.0, send - backward))
    assert off.comm_detail["pipeline_and_tensor"] - on.comm_detail["pipeline_and_tensor"] == pytest.approx(hidden,
                                                                                                          rel=1e-9)
    # unset, it follows Megatron-Core: on with the interleaved schedule
    _same(estimate(workload, profile, sharing, dataclasses.replace(plan, overlap_p2p=None), cluster), on)


def test_overlap_p2p_changes_nothing_without_a_pipeline_or_overlapping_hardware() -> None:
    workload, profile, sharing, cluster, plan = _pipeline_case()
    flat = Plan(dp=4, microbatches=2)
    _same(estimate(workload, profile, sharing, dataclasses.replace(flat, overlap_p2p=True), cluster),
          estimate(workload, profile, sharing, flat, cluster))
    cores = _on_cores(cluster)
    _same(estimate(workload, profile, sharing, dataclasses.replace(plan, overlap_p2p=True), cores),
          estimate(workload, profile, sharing, plan, cores))
    prefill = workload.model_copy(update={"mode": "prefill"})
    p, s = profiled(prefill)
    _same(estimate(prefill, p, s, dataclasses.replace(plan, overlap_p2p=True), cluster),
          estimate(prefill, p, s, plan, cluster))


# -- overlap_param_gather ------------------------------------------------------------------------------

def test_overlap_param_gather_hides_the_updated_parameters_gather_under_the_next_forward() -> None:
    workload = gpt2(batch=16)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(nodes=2)
    for zero in (1, 2):
        plan = Plan(dp=16, zero=zero, microbatches=1)
        off = estimate(workload, profile, sharing, plan, cluster)
        on = estimate(workload, profile, sharing, dataclasses.replace(plan, overlap_param_gather=True), cluster)
        work = train_work(workload, profile, sharing, plan, cluster)
        st, dp = work.stages[0], work.dp_group
        gather = st.gather_after_step[0].time(cluster.fabric)
        # layer by layer in forward order: the first (with the embedding) waits for its whole gather; the
        # last for what the 11 layers and the embedding before it did not cover
        first = Comm("all-gather", st.param_bytes_layer + st.param_bytes_embed, dp).time(cluster.fabric)
        last = gather - (11 * st.fwd_layer_s + st.embed_fwd_s)
        assert off.comm_time_s - on.comm_time_s == pytest.approx(gather - max(first, last), rel=1e-9)
        assert on.comm_time_s < off.comm_time_s and on.compute_time_s == off.compute_time_s


def test_overlap_param_gather_changes_nothing_where_no_gather_follows_the_optimizer() -> None:
    """No data parallelism, no sharded optimizer, ZeRO-3 (its gathers are prefetched per layer anyway),
    or a device that computes its own collectives."""
    workload = gpt2(batch=16)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(nodes=2)
    for plan, c in ((Plan(dp=1, zero=1, microbatches=16), a100_cluster(nodes=1, devices_per_node=1)),
                    (Plan(dp=16, zero=0, microbatches=1), cluster), (Plan(dp=16, zero=3, microbatches=1), cluster),
                    (Plan(dp=16, zero=1, microbatches=1), _on_cores(cluster))):
        _same(estimate(workload, profile, sharing, dataclasses.replace(plan, overlap_param_gather=True), c),
              estimate(workload, profile, sharing, plan, c))


# -- overlap_grad_reduce (existing) with the distributed optimizer -------------------------------------

def test_overlap_grad_reduce_hides_the_distributed_optimizers_reduce_scatter() -> None:
    workload = gpt2(batch=16)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(nodes=2)
    plan = Plan(dp=16, zero=1, microbatches=1, overlap_grad_reduce=False)
    assert train_work(workload, profile, sharing, plan, cluster).dp_op == "reduce-scatter"
    off = estimate(workload, profile, sharing, plan, cluster)
    on = estimate(workload, profile, sharing, dataclasses.replace(plan, overlap_grad_reduce=True), cluster)
    assert on.comm_time_s < off.comm_time_s
    single = a100_cluster(nodes=1, devices_per_node=1)
    one = Plan(microbatches=16, overlap_grad_reduce=False)
    _same(estimate(workload, profile, sharing, dataclasses.replace(one, overlap_grad_reduce=True), single),
          estimate(workload, profile, sharing, one, single))
