"""One step as data (costmodel.work): each helper's numbers by hand, from the module docstring's sources.

Round device numbers (tests.costmodel.helpers.Device) make every expected value a short formula:
memory_time(n) = n / (2e12 B/s x 0.5 streaming efficiency) = n / 1e12 s.
"""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.costmodel import Options, Plan
from llmsim.costmodel.cluster import ClusterSpec, Group, place_group
from llmsim.costmodel.collectives import Channel, Fabric
from llmsim.costmodel.compute import Rates
from llmsim.costmodel.efficiency import Efficiency
from llmsim.costmodel.work import (ADAM_STATE_RW_BYTES, Comm, Groups, StageWork, StepWork, _pipeline_message,
                                   _stage_kinds, _tp_collectives, accumulate_time, comms_time, inference_plan,
                                   optimizer_time)
from tests.costmodel.helpers import Device, Link

EFF = Efficiency(memory=0.5)
RATES = Rates(peak_flops=1e15, memory_bw=2e12, efficiency=EFF)
STREAM = 1e12  # bytes/s that RATES streams


# -- gradient accumulation and the optimizer ------------------------------------------------------------------

@pytest.mark.parametrize("dtype,elem", [("bfloat16", 2), ("float16", 2), ("float32", 4)])
def test_accumulation_is_m_minus_1_adds_of_read_two_write_one_in_the_workload_dtype(dtype: str, elem: int) -> None:
    trainable, m = 1e9, 8
    assert accumulate_time(RATES, trainable, m, dtype, Options()) == pytest.approx(
        (m - 1) * trainable * 3 * elem / STREAM, rel=1e-12)
    assert accumulate_time(RATES, trainable, 1, dtype, Options()) == 0.0


def test_fp32_main_grads_accumulate_all_m_micro_batches_into_4_byte_buffers() -> None:
    """Megatron's main_grad: every micro-batch's 16-bit gradient is added into the fp32 buffer (m adds):
    read the fp32 accumulator and the bf16 gradient, write the fp32 accumulator."""
    trainable, m = 1e9, 8
    assert accumulate_time(RATES, trainable, m, "bfloat16", Options(main_grads_fp32=True)) == pytest.approx(
        m * trainable * (4 + 2 + 4) / STREAM, rel=1e-12)
    assert accumulate_time(RATES, trainable, 1, "bfloat16", Options(main_grads_fp32=True)) == pytest.approx(
        trainable * 10 / STREAM, rel=1e-12)


@pytest.mark.parametrize("dtype,per_param", [("bfloat16", 24 + 2 + 2), ("float32", 24 + 4)])
def test_fused_adam_streams_its_state_the_gradient_and_a_16_bit_working_copy(dtype: str, per_param: int) -> None:
    trainable = 1e9
    assert ADAM_STATE_RW_BYTES == 24
    assert optimizer_time(RATES, trainable, Plan(), dtype, Options()) == pytest.approx(
        trainable * per_param / STREAM, rel=1e-12)


def test_fp32_main_grads_make_adam_read_a_4_byte_gradient() -> None:
    assert optimizer_time(RATES, 1e9, Plan(), "bfloat16", Options(main_grads_fp32=True)) == pytest.approx(
        1e9 * (24 + 4 + 2) / STREAM, rel=1e-12)


@pytest.mark.parametrize("zero,shard", [(0, 1), (1, 4), (2, 4), (3, 4)])
def test_zero_1_and_up_update_a_dp_th_of_the_parameters(zero: int, shard: int) -> None:
    plan = Plan(dp=4, zero=zero)
    assert optimizer_time(RATES, 1e9, plan, "bfloat16", Options()) == pytest.approx(
        1e9 / shard * 28 / STREAM, rel=1e-12)


def test_an_eager_host_runs_the_traced_optimizer_loop_and_pays_each_operator() -> None:
    host = Rates(peak_flops=1e12, memory_bw=2e12, efficiency=Efficiency(memory=0.5, op_overhead_s=1e-5))
    traced = (8e9, 300.0)  # bytes, operators
    assert optimizer_time(host, 1e9, Plan(), "float32", Options(), traced) == pytest.approx(
        8e9 / STREAM + 300 * 1e-5, rel=1e-12)
    # ZeRO divides the bytes of every tensor, not the number of operators
    assert optimizer_time(host, 1e9, Plan(dp=4, zero=1), "float32", Options(), traced) == pytest.approx(
        8e9 / 4 / STREAM + 300 * 1e-5, rel=1e-12)
    # an accelerator (no per-operator cost) ignores the trace and runs the fused kernel
    assert optimizer_time(RATES, 1e9, Plan(), "float32", Options(), traced) == pytest.approx(
        1e9 * 28 / STREAM, rel=1e-12)
    # no trace: the fused formula even on a host
    assert optimizer_time(host, 1e9, Plan(), "float32", Options()) == pytest.approx(1e9 * 28 / STREAM, rel=1e-12)


# -- groups, collectives and messages -------------------------------------------------------------------------

def test_groups_follow_megatron_order_tp_cp_pp_dp() -> None:
    plan = Plan(dp=2, tp=2, pp=2, cp=2)
    assert Groups.of(plan, 4) == Groups(tp=place_group(2, 1, 4), cp=place_group(2, 2, 4),
                                        pp=place_group(2, 4, 4), dp=place_group(2, 8, 4))
    assert Groups.of(plan, 4) == Groups(tp=Group(2, 2, 1), cp=Group(2, 2, 1), pp=Group(2, 1, 2), dp=Group(2, 1, 2))


def test_tensor_parallel_collectives_are_all_reduces_or_with_sp_a_reduce_scatter_and_an_all_gather() -> None:
    g = Group(4, 4, 1)
    assert _tp_collectives(8e6, Plan(tp=4), g, 2) == (Comm("all-reduce", 8e6, g, 2),)
    assert _tp_collectives(8e6, Plan(tp=4, sp=True), g, 3) == (Comm("reduce-scatter", 8e6, g, 3),
                                                              Comm("all-gather", 8e6, g, 3))
    assert _tp_collectives(8e6, Plan(tp=1), g, 2) == ()
    assert _tp_collectives(8e6, Plan(tp=4), g, 0) == ()
    assert _tp_collectives(8e6, Plan(tp=2), Group(2, 2, 1), 1) == (Comm("all-reduce", 8e6, Group(2, 2, 1), 1),)


def test_a_pipeline_message_is_sent_whole_or_scattered_over_tp_and_gathered_by_the_receiver() -> None:
    groups = Groups.of(Plan(tp=4, pp=2), 8)
    # no pipeline: no message
    assert _pipeline_message(8e6, Plan(tp=4), Options(), groups) == (None, ())
    # tp = 1: the whole activation
    assert _pipeline_message(8e6, Plan(pp=2), Options(), Groups.of(Plan(pp=2), 8)) == (
        Comm("p2p", 8e6, Groups.of(Plan(pp=2), 8).pp), ())
    # tp = 4, scatter/gather (Narayanan 2021, Sec. 4.1): 1/tp sent, then an all-gather of the whole over tp
    assert _pipeline_message(8e6, Plan(tp=4, pp=2), Options(), groups) == (
        Comm("p2p", 2e6, groups.pp), (Comm("all-gather", 8e6, groups.tp),))
    # without the optimization: the whole activation, nothing to gather
    assert _pipeline_message(8e6, Plan(tp=4, pp=2), Options(p2p_scatter_gather=False), groups) == (
        Comm("p2p", 8e6, groups.pp), ())
    # sequence parallelism already holds 1/tp of the activation: sent as it is, and its own all-gather follows
    for options in (Options(), Options(p2p_scatter_gather=False)):
        assert _pipeline_message(8e6, Plan(tp=4, pp=2, sp=True), options, groups) == (Comm("p2p", 2e6, groups.pp), ())


def test_stage_kinds() -> None:
    assert _stage_kinds(1) == ["first"]
    assert _stage_kinds(2) == ["first", "last"]
    assert _stage_kinds(4) == ["first", "middle", "middle", "last"]


def test_comm_time_is_its_collective_repeated_count_times() -> None:
    fabric = Fabric(intra=Channel(1e9, 1e-6), inter=Channel(1e8, 1e-5))
    g = Group(2, 2, 1)
    one = Comm("all-reduce", 1e6, g)
    # 2 ranks: 2 hops and 2 S 1/2 = S bytes
    assert one.time(fabric) == pytest.approx(8.4e-6 + 2e-6 + 1e6 / 1e9, rel=1e-12)
    assert Comm("all-reduce", 1e6, g, 3).time(fabric) == pytest.approx(3 * one.time(fabric), rel=1e-12)
    assert Comm("all-reduce", 1e6, g, 3).phases(fabric)[0].nbytes == pytest.approx(3e6)
    assert Comm("p2p", 1e6, Group(2, 1, 2)).time(fabric) == pytest.approx(1e6 / 1e8 + 1e-5, rel=1e-12)
    assert Comm("p2p", 1e6, g).time(fabric) == pytest.approx(1e6 / 1e9 + 1e-6, rel=1e-12)
    assert comms_time((one, Comm("p2p", 1e6, g)), fabric) == pytest.approx(
        one.time(fabric) + 1e6 / 1e9 + 1e-6, rel=1e-12)
    assert comms_time((), fabric) == 0


def test_a_stage_runs_its_layers_once_per_chunk_and_reduces_its_layers_and_edges() -> None:
    st = StageWork(layers=3, fwd_layer_s=1.0, grad_bytes_layer=10.0, grad_bytes_embed=5.0, grad_bytes_head=7.0,
                   param_bytes_layer=20.0, param_bytes_embed=11.0, param_bytes_head=13.0)
    interleaved = StepWork(stages=(st, st), microbatches=4, schedule="interleaved", virtual_stages=2)
    assert interleaved.v == 2 and interleaved.pp == 2 and interleaved.layers_on(st) == 6
    assert interleaved.grad_bytes(st) == 6 * 10 + 5 + 7
    assert interleaved.param_bytes(st) == 6 * 20 + 11 + 13
    plain = dataclasses.replace(interleaved, schedule="1f1b")
    assert plain.v == 1 and plain.layers_on(st) == 3
    assert plain.grad_bytes(st) == 3 * 10 + 5 + 7 and plain.param_bytes(st) == 3 * 20 + 11 + 13
    assert plain.p2p_bytes == 0.0
    assert dataclasses.replace(plain, p2p=Comm("p2p", 5e6, Group(2, 2, 1))).p2p_bytes == 5e6


def test_inference_runs_its_whole_share_of_the_batch_at_once_without_a_pipeline() -> None:
    assert inference_plan(Plan(micro_batch=2, microbatches=4)) == Plan(micro_batch=8, microbatches=1)
    piped = Plan(pp=2, micro_batch=2, microbatches=4)
    assert inference_plan(piped) == piped


def _cluster(nodes: int = 1, devices_per_node: int = 8) -> ClusterSpec:
    return ClusterSpec(device=Device(efficiency=EFF), intra=Link("nv", 200e9, 2e-6, 1.0),
                       inter=Link("ib", 25e9, 5e-6, 1.0), nodes=nodes, devices_per_node=devices_per_node)


# -- inference: one forward pass per stage, a GPipe fill ---------------------------------------------------------

def _stage_times(profile, workload, plan, cluster, phase: str, steps: int = 1):
    """(seconds per layer, embedding, head) of one micro-batch on one device, from the compute roofline."""
    from llmsim.costmodel.compute import device_rates, phase_times

    rates = device_rates(cluster, workload.dtype)
    layers = phase_times(profile, workload, plan, Options(), rates, phase, "layers", plan.tp * plan.pp * plan.cp,
                         steps).total / (workload.model.layers // plan.pp)
    embed = phase_times(profile, workload, plan, Options(), rates, phase, "embed", plan.tp * plan.cp, steps).total
    head = phase_times(profile, workload, plan, Options(), rates, phase, "head", plan.tp * plan.cp, steps).total
    return layers, embed, head


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_pipelined_forward_pass_prices_each_stage_and_its_messages(phase: str) -> None:
    """pp = 2, tp = 2 on one node: the first stage runs the embedding and its half of the layers, the last
    its half and the LM head; Megatron's 2 all-reduces per layer forward and one after the embedding
    (Shoeybi et al. 2019); the activation b x s x h (one token per sequence when decoding) crosses to the
    next stage scattered over tp and is all-gathered there (Narayanan et al. 2021, Sec. 4.1)."""
    from llmsim.config import ModelSpec, Workload
    from llmsim.costmodel.work import forward_work
    from tests.costmodel.helpers import a100_cluster, profiled

    workload = Workload(model=ModelSpec(preset="gpt2-small", layers=4, seq_len=128), mode="decode", batch=8,
                        decode_tokens=5)
    profile, _ = profiled(workload)
    cluster = a100_cluster()
    plan = Plan(tp=2, pp=2, micro_batch=2, microbatches=4, schedule="interleaved", virtual_stages=2)
    steps = 4 if phase == "decode" else 1
    work = forward_work(workload, profile, plan, cluster, Options(), phase, steps)
    flat = dataclasses.replace(plan, schedule="1f1b", virtual_stages=1)
    per_layer, embed, head = _stage_times(profile, workload, flat, cluster, phase, steps)
    assert per_layer > 0 and embed > 0 and head > 0
    tokens = 2 * (1 if phase == "decode" else 128)
    activation = tokens * 768 * 2  # bf16
    tp, pp = Group(2, 2, 1), Group(2, 2, 1)
    first = StageWork(layers=2, fwd_layer_s=pytest.approx(per_layer, rel=1e-12), embed_fwd_s=embed,
                      tp_fwd=(Comm("all-reduce", activation, tp, 2),), tp_embed=(Comm("all-reduce", activation, tp),),
                      recv_gather=(Comm("all-gather", activation, tp),))
    last = dataclasses.replace(first, embed_fwd_s=0.0, head_fwd_s=head, tp_embed=())
    assert work == StepWork(stages=(first, last), microbatches=4, schedule="gpipe", virtual_stages=1,
                            forward_only=True, p2p=Comm("p2p", activation / 2, pp))
    assert work.v == 1


def test_an_unpipelined_forward_pass_runs_the_whole_share_at_once_on_one_stage() -> None:
    from llmsim.config import ModelSpec, Workload
    from llmsim.costmodel.work import forward_work
    from tests.costmodel.helpers import a100_cluster, profiled

    workload = Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=128), mode="prefill", batch=8)
    profile, _ = profiled(workload)
    cluster = a100_cluster()
    plan = Plan(dp=2, micro_batch=1, microbatches=4)
    work = forward_work(workload, profile, plan, cluster)     # the defaults: the prefill, one step
    whole = Plan(dp=2, micro_batch=4, microbatches=1)          # inference_plan: 4 sequences in one pass
    per_layer, embed, head = _stage_times(profile, workload, whole, cluster, "prefill")
    only = StageWork(layers=2, fwd_layer_s=pytest.approx(per_layer, rel=1e-12), embed_fwd_s=embed, head_fwd_s=head)
    assert work == StepWork(stages=(only,), microbatches=1, schedule="gpipe", forward_only=True)
    # a device whose collectives run on its compute cores says so
    cores = dataclasses.replace(cluster, device=cluster.device.model_copy(update={"overlaps_communication": False}))
    assert forward_work(workload, profile, plan, cores).comm_shares_cores is True
    assert work.comm_shares_cores is False


def test_a_decode_step_defaults_to_one_traced_step() -> None:
    from llmsim.config import ModelSpec, Workload
    from llmsim.costmodel.work import forward_work
    from tests.costmodel.helpers import a100_cluster, profiled

    workload = Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=64), mode="decode", batch=2,
                        decode_tokens=3)
    profile, _ = profiled(workload)
    plan = Plan(micro_batch=2)
    one = forward_work(workload, profile, plan, a100_cluster(), Options(), "decode")
    assert one == forward_work(workload, profile, plan, a100_cluster(), Options(), "decode", 1)
    # the traced totals of 2 steps, priced as 2: each step is cheaper than all of them at once
    two = forward_work(workload, profile, plan, a100_cluster(), Options(), "decode", 2)
    assert two.stages[0].fwd_layer_s < one.stages[0].fwd_layer_s
