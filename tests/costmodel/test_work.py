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
    plan = Plan(dp=2, tp=2, pp=2, cp=1)
    assert Groups.of(plan, 4) == Groups(tp=place_group(2, 1, 4), cp=place_group(1, 2, 4),
                                        pp=place_group(2, 2, 4), dp=place_group(2, 4, 4))
    assert Groups.of(plan, 4) == Groups(tp=Group(2, 2, 1), cp=Group(1, 1, 1), pp=Group(2, 2, 1), dp=Group(2, 1, 2))


def test_gradient_group_spans_dp_and_cp() -> None:
    """Gradients and ZeRO span dp x cp (Megatron-Core's data-parallel group with context parallelism): ranks
    r = t + 2c + 4p + 8d on nodes of 4; the group of rank 0 is {0, 2} (cp, one node) x {0, 8} (dp, two nodes)."""
    plan = Plan(dp=2, tp=2, pp=2, cp=2)
    assert Groups.of(plan, 4) == Groups(tp=Group(2, 2, 1), cp=Group(2, 2, 1), pp=Group(2, 1, 2), dp=Group(4, 2, 2))
    # cp alone (dp = 1): the cp ranks are the whole gradient group; pp = 1: the group is contiguous at stride tp
    assert Groups.of(Plan(dp=1, cp=8), 8).dp == Group(8, 8, 1)
    assert Groups.of(Plan(dp=2, cp=4, tp=2), 8).dp == place_group(8, 2, 8) == Group(8, 4, 2)


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


def test_inference_keeps_one_micro_batch_per_pipeline_stage_in_flight() -> None:
    """FasterTransformer's getLocalBatchSize and vLLM's pp concurrent batches: batch/pp per micro-batch,
    whatever the training micro_batch says; a batch pp does not divide runs whole."""
    assert inference_plan(Plan(pp=2, micro_batch=2, microbatches=4)) == Plan(pp=2, micro_batch=4, microbatches=2)
    assert inference_plan(Plan(pp=4, micro_batch=1, microbatches=64)) == Plan(pp=4, micro_batch=16,
                                                                                microbatches=4)
    assert inference_plan(Plan(pp=4, micro_batch=1, microbatches=6)) == Plan(pp=4, micro_batch=6, microbatches=1)


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
    # a server keeps pp micro-batches of batch/pp = 4 sequences in flight (work.inference_plan)
    flat = dataclasses.replace(plan, schedule="1f1b", virtual_stages=1, micro_batch=4, microbatches=2)
    per_layer, embed, head = _stage_times(profile, workload, flat, cluster, phase, steps)
    assert per_layer > 0 and embed > 0 and head > 0
    tokens = 4 * (1 if phase == "decode" else 128)
    activation = tokens * 768 * 2  # bf16
    tp, pp = Group(2, 2, 1), Group(2, 2, 1)
    first = StageWork(layers=2, fwd_layer_s=pytest.approx(per_layer, rel=1e-12), embed_fwd_s=embed,
                      tp_fwd=(Comm("all-reduce", activation, tp, 2),), tp_embed=(Comm("all-reduce", activation, tp),),
                      recv_gather=(Comm("all-gather", activation, tp),))
    last = dataclasses.replace(first, embed_fwd_s=0.0, head_fwd_s=head, tp_embed=())
    assert work == StepWork(stages=(first, last), microbatches=2, schedule="gpipe", virtual_stages=1,
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


def test_a_context_parallel_prefill_divides_the_work_and_sends_s_over_cp_tokens() -> None:
    from llmsim.config import ModelSpec, Workload
    from llmsim.costmodel.work import forward_work
    from tests.costmodel.helpers import a100_cluster, profiled

    workload = Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=256), mode="prefill", batch=4)
    profile, _ = profiled(workload)
    cluster = a100_cluster()
    plan = Plan(tp=2, pp=2, cp=2, micro_batch=1, microbatches=4)
    in_flight = Plan(tp=2, pp=2, cp=2, micro_batch=2, microbatches=2)  # pp micro-batches (work.inference_plan)
    per_layer, embed, head = _stage_times(profile, workload, in_flight, cluster, "prefill")
    work = forward_work(workload, profile, plan, cluster)
    assert work.stages[0].fwd_layer_s == pytest.approx(per_layer, rel=1e-12)
    assert work.stages[0].embed_fwd_s == pytest.approx(embed, rel=1e-12)
    assert work.stages[1].head_fwd_s == pytest.approx(head, rel=1e-12)
    activation = 2 * (256 // 2) * H * 2
    assert work.stages[0].tp_fwd == (Comm("all-reduce", activation, Group(2, 2, 1), 2),)
    assert work.p2p.size == activation / 2


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


# -- training: each stage's work by hand --------------------------------------------------------------------------

H, VOCAB, POSITIONS = 768, 50257, 1024          # GPT-2 small
PER_LAYER = 12 * H * H + 13 * H                  # QKV, out, fc, proj weights and biases, two layernorms
# On one of 2 tensor-parallel ranks (Megatron-LM): the two layernorms (weight + bias) and the out/proj biases
# (6H) stay whole, the rest splits; outside the layers the position table and final norm stay whole.
PER_LAYER_TP2 = (PER_LAYER - 6 * H) / 2 + 6 * H
EDGE_WHOLE = (POSITIONS + 2) * H


def _train_case(layers: int = 8):
    from llmsim.config import ModelSpec, Workload
    from tests.costmodel.helpers import a100_cluster, profiled

    workload = Workload(model=ModelSpec(preset="gpt2-small", layers=layers, seq_len=128), batch=16)
    return workload, a100_cluster(nodes=2)


def _phase(profile, workload, plan, options, cluster, phase, region, divide):
    from llmsim.costmodel.compute import device_rates, phase_times

    return phase_times(profile, workload, plan, options, device_rates(cluster, "bfloat16"), phase, region, divide)


def test_a_four_stage_interleaved_step_by_hand() -> None:
    """pp = 4 (first, two middle, last), tp = 2, dp = 2 with ZeRO-1, two chunks per stage, full recompute,
    tied embeddings, bf16. Every field of every stage from the sources in the module docstring."""
    from llmsim.costmodel.compute import device_rates
    from llmsim.costmodel.work import SyncWork, train_work
    from tests.costmodel.helpers import profiled

    workload, cluster = _train_case()
    profile, sharing = profiled(workload)
    plan = Plan(dp=2, tp=2, pp=4, micro_batch=2, microbatches=4, schedule="interleaved", virtual_stages=2,
                zero=1, recompute="full")
    options = Options()
    work = train_work(workload, profile, sharing, plan, cluster, options)

    fwd = _phase(profile, workload, plan, options, cluster, "forward", "layers", 8)
    bwd = _phase(profile, workload, plan, options, cluster, "backward", "layers", 8)
    embed = [_phase(profile, workload, plan, options, cluster, ph, "embed", 2).total for ph in ("forward", "backward")]
    head = [_phase(profile, workload, plan, options, cluster, ph, "head", 2).total for ph in ("forward", "backward")]
    stage_layers = 8 // 4
    # tp ranks 0-1 (a node holds 8), cp none, pp stride 2 (4 stages in one node), dp stride 8 (the next node)
    tp, pp, dp = Group(2, 2, 1), Group(4, 4, 1), Group(2, 1, 2)
    activation = 2 * 128 * H * 2
    rates = device_rates(cluster, "bfloat16")

    middle = stage_layers * PER_LAYER_TP2                     # a middle stage's parameters on one tp rank
    first = middle + VOCAB * H / 2 + POSITIONS * H            # + token and (whole) position embeddings
    last = middle + VOCAB * H / 2 + 2 * H                     # + the tied LM head's copy, the (whole) final norm

    def stage(params: float, is_first: bool, is_last: bool) -> StageWork:
        edge = params - middle
        return StageWork(
            layers=1, fwd_layer_s=pytest.approx(fwd.total / 2, rel=1e-12),
            bwd_layer_s=pytest.approx(bwd.total / 2, rel=1e-12),
            recompute_layer_s=pytest.approx(fwd.total / 2, rel=1e-12), cp_layer_s=0.0,
            embed_fwd_s=embed[0] if is_first else 0.0, embed_bwd_s=embed[1] if is_first else 0.0,
            head_fwd_s=head[0] if is_last else 0.0, head_bwd_s=head[1] if is_last else 0.0,
            tp_fwd=(Comm("all-reduce", activation, tp, 2),), tp_recompute=(Comm("all-reduce", activation, tp, 2),),
            tp_bwd=(Comm("all-reduce", activation, tp, 2),),
            tp_embed=(Comm("all-reduce", activation, tp),) if is_first else (),
            tp_head=(Comm("all-reduce", activation, tp),) if is_last else (),
            recv_gather=(Comm("all-gather", activation, tp),),
            accumulate_s=pytest.approx((4 - 1) * rates.memory_time(params * 3 * 2), rel=1e-12),
            optimizer_s=pytest.approx(rates.memory_time(params / 2 * (24 + 2 + 2)), rel=1e-12),
            grad_bytes_layer=pytest.approx(middle / stage_layers * 2, rel=1e-12),
            grad_bytes_embed=pytest.approx(edge * 2 if is_first else 0.0, rel=1e-12, abs=1e-6),
            grad_bytes_head=pytest.approx(edge * 2 if is_last else 0.0, rel=1e-12, abs=1e-6),
            param_bytes_layer=pytest.approx(middle / stage_layers * 2, rel=1e-12),
            param_bytes_embed=pytest.approx(edge * 2 if is_first else 0.0, rel=1e-12, abs=1e-6),
            param_bytes_head=pytest.approx(edge * 2 if is_last else 0.0, rel=1e-12, abs=1e-6),
            gather_after_step=(Comm("all-gather", pytest.approx(params * 2, rel=1e-12), dp),))

    # the tied embedding's gradient is all-reduced between the first and the last stage (one node: a pair
    # inside it), vocab x hidden / tp in bf16
    tied = SyncWork("tied-embedding", (0, 3), Comm("all-reduce", VOCAB * H / 2 * 2, Group(2, 2, 1)))
    assert work == StepWork(stages=(stage(first, True, False), stage(middle, False, False),
                                    stage(middle, False, False), stage(last, False, True)),
                            microbatches=4, schedule="interleaved", virtual_stages=2, forward_only=False,
                            p2p=Comm("p2p", activation / 2, pp), dp_op="reduce-scatter", dp_group=dp, zero=1,
                            overlap_grad_reduce=True, overlap_p2p=True,  # Megatron-Core's default when interleaved
                            syncs=(tied,), comm_shares_cores=False)
    assert work.stages[1] is work.stages[2]     # middle stages are alike: one StageWork for all


@pytest.mark.parametrize("zero,dp_op", [(0, "all-reduce"), (1, "reduce-scatter"), (2, "reduce-scatter"),
                                         (3, "reduce-scatter")])
def test_a_single_stage_with_sequence_parallelism_by_hand(zero: int, dp_op: str) -> None:
    """pp = 1: the only stage holds the embedding and the head (half of the edge parameters counted for each),
    sp turns each tp all-reduce into a reduce-scatter and an all-gather (Korthikanti et al. 2022);
    selective recompute with the fused-softmax kernel recomputes the attention core; fp32 main grads make
    every gradient 4 bytes and accumulate all m micro-batches; ZeRO 1/2 gather the updated parameters."""
    from llmsim.costmodel.compute import device_rates
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import profiled

    workload, cluster = _train_case(layers=4)
    profile, sharing = profiled(workload, tie=False)
    plan = Plan(dp=4, tp=2, micro_batch=4, microbatches=2, sp=True, recompute="selective", zero=zero,
                overlap_grad_reduce=False)
    options = Options(attention="fused-softmax", main_grads_fp32=True)
    work = train_work(workload, profile, sharing, plan, cluster, options)
    rates = device_rates(cluster, "bfloat16")
    fwd = _phase(profile, workload, plan, options, cluster, "forward", "layers", 2)
    bwd = _phase(profile, workload, plan, options, cluster, "backward", "layers", 2)
    edge_time = {region: [_phase(profile, workload, plan, options, cluster, ph, region, 2).total
                          for ph in ("forward", "backward")] for region in ("embed", "head")}
    tp, dp = Group(2, 2, 1), Group(4, 4, 1)
    activation = 4 * 128 * H * 2
    layers = 4 * PER_LAYER_TP2
    edge = 2 * VOCAB * H / 2 + EDGE_WHOLE                     # untied: token, position, final norm, LM head
    params = layers + edge
    shard = 1 if zero == 0 else 4
    expected = StageWork(
        layers=4, fwd_layer_s=pytest.approx(fwd.total / 4, rel=1e-12), bwd_layer_s=pytest.approx(bwd.total / 4,
                                                                                                 rel=1e-12),
        recompute_layer_s=pytest.approx(fwd.attention / 4, rel=1e-12),
        embed_fwd_s=edge_time["embed"][0], embed_bwd_s=edge_time["embed"][1],
        head_fwd_s=edge_time["head"][0], head_bwd_s=edge_time["head"][1],
        tp_fwd=(Comm("reduce-scatter", activation, tp, 2), Comm("all-gather", activation, tp, 2)),
        tp_bwd=(Comm("reduce-scatter", activation, tp, 2), Comm("all-gather", activation, tp, 2)),
        tp_embed=(Comm("reduce-scatter", activation, tp), Comm("all-gather", activation, tp)),
        tp_head=(Comm("reduce-scatter", activation, tp), Comm("all-gather", activation, tp)),
        accumulate_s=pytest.approx(2 * rates.memory_time(params * (4 + 4 + 2)), rel=1e-12),
        optimizer_s=pytest.approx(rates.memory_time(params / shard * (24 + 4 + 2)), rel=1e-12),
        grad_bytes_layer=pytest.approx(layers / 4 * 4, rel=1e-12),
        grad_bytes_embed=pytest.approx(edge * 4 / 2, rel=1e-12), grad_bytes_head=pytest.approx(edge * 4 / 2,
                                                                                               rel=1e-12),
        param_bytes_layer=pytest.approx(layers / 4 * 2, rel=1e-12),
        param_bytes_embed=pytest.approx(edge * 2 / 2, rel=1e-12), param_bytes_head=pytest.approx(edge * 2 / 2,
                                                                                                 rel=1e-12),
        gather_after_step=(Comm("all-gather", pytest.approx(params * 2, rel=1e-12), dp),) if zero in (1, 2) else ())
    assert work == StepWork(stages=(expected,), microbatches=2, schedule="1f1b", virtual_stages=1, p2p=None,
                            dp_op=dp_op, dp_group=dp, zero=zero, overlap_grad_reduce=False, syncs=())


def test_recompute_choices_per_layer() -> None:
    """none: nothing again; full: the whole forward; selective: the attention core (Korthikanti et al. 2022,
    Sec. 5), which the flash kernel never stores, so it recomputes nothing more than it already does."""
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import profiled

    workload, cluster = _train_case(layers=2)
    profile, sharing = profiled(workload)
    for kernel in ("flash", "fused-softmax", "math"):
        options = Options(attention=kernel)
        fwd = _phase(profile, workload, Plan(micro_batch=2, microbatches=8), options, cluster, "forward", "layers", 1)

        def layer(recompute: str) -> StageWork:
            plan = Plan(micro_batch=2, microbatches=8, recompute=recompute)
            return train_work(workload, profile, sharing, plan, cluster, options).stages[0]

        assert layer("none").recompute_layer_s == 0.0
        assert layer("full").recompute_layer_s == pytest.approx(fwd.total / 2, rel=1e-12)
        assert layer("selective").recompute_layer_s == pytest.approx(
            0.0 if kernel == "flash" else fwd.attention / 2, rel=1e-12)
        assert fwd.attention > 0


# -- context parallelism and parameter sharing ---------------------------------------------------------------------

def test_ring_attention_exposes_only_what_the_attention_compute_does_not_hide() -> None:
    """cp = 4: per layer forward, 3 K/V block exchanges with the ring neighbour, each block K and V of the local
    sequence chunk (2 x b x s/cp x kv_heads/tp x head_dim, bf16); backward twice that; each direction hides
    behind that layer's attention compute."""
    from llmsim.config import ModelSpec, Workload
    from llmsim.costmodel.compute import PhaseTimes
    from llmsim.costmodel.work import cp_exposed_time

    workload = Workload(model=ModelSpec(preset="llama3-8b", layers=2, seq_len=8192), batch=4)  # 32 heads, 8 KV
    cluster = _cluster(nodes=2, devices_per_node=8)
    plan = Plan(tp=2, cp=4, micro_batch=1)
    groups = Groups.of(plan, 8)
    assert groups.cp == Group(4, 4, 1)
    block = 2 * 1 * (8192 // 4) * (8 // 2) * 128 * 2
    exchange = 3 * (block / 200e9 + 2e-6)                  # the node's link: 200 GB/s, 2 us a message

    def exposed(fwd_attention: float, bwd_attention: float, plan: Plan = plan, cluster: ClusterSpec = cluster,
                layers: int = 2) -> float:
        return cp_exposed_time(workload, plan, PhaseTimes(attention=fwd_attention), PhaseTimes(attention=bwd_attention),
                               Groups.of(plan, 8), cluster, layers)

    assert exposed(0.0, 0.0) == pytest.approx(2 * 3 * exchange, rel=1e-12)
    # half the exchange hidden forward (per layer the stage's attention / layers), all of it backward
    assert exposed(2 * exchange / 2, 2 * 2 * exchange) == pytest.approx(2 * exchange / 2, rel=1e-12)
    assert exposed(10.0, 10.0) == 0.0
    # backward alone half hidden: per layer the forward's exchange plus half the backward's 2 exchanges
    assert exposed(0.0, 2 * exchange) == pytest.approx(2 * (exchange + exchange), rel=1e-12)
    # two sequences a micro-batch: twice the block
    two = dataclasses.replace(plan, micro_batch=2)
    assert exposed(0.0, 0.0, two) == pytest.approx(2 * 3 * 3 * (2 * block / 200e9 + 2e-6), rel=1e-12)
    # a full recompute repeats the forward's exchanges
    full = dataclasses.replace(plan, recompute="full")
    assert exposed(0.0, 0.0, full) == pytest.approx(2 * 4 * exchange, rel=1e-12)
    # collectives on the compute cores hide nothing
    cores = dataclasses.replace(cluster, device=Device(efficiency=EFF, overlaps_communication=False))
    assert exposed(10.0, 10.0, cluster=cores) == pytest.approx(2 * 3 * exchange, rel=1e-12)
    # tp = 16 > 8 KV heads: each rank holds one replicated KV head
    wide = Plan(tp=16, cp=2)
    one_head = 2 * 1 * 4096 * 1 * 128 * 2
    assert cp_exposed_time(workload, wide, PhaseTimes(), PhaseTimes(), Groups.of(wide, 8), cluster, 1) == \
        pytest.approx(3 * (one_head / 25e9 + 5e-6), rel=1e-12)   # the cp pair spans two nodes: the slow link
    assert exposed(0.0, 0.0, Plan(tp=2, cp=1)) == 0.0


def test_a_tied_embedding_is_reduced_between_the_first_and_last_stage() -> None:
    from llmsim.config import SharingChoice
    from llmsim.costmodel.work import SyncWork, sharing_syncs
    from tests.costmodel.helpers import profiled

    workload, _ = _train_case()
    profile, tied = profiled(workload)
    size = VOCAB * H / 2 * 2                      # vocab x hidden over tp = 2, bf16
    assert sharing_syncs(workload, profile, tied, Plan(tp=2, pp=4), 8, 2) == (
        SyncWork("tied-embedding", (0, 3), Comm("all-reduce", size, Group(2, 2, 1))),)
    # stages on different nodes (tp = 2 x pp = 4 over nodes of 4): one rank on each of two nodes; fp32 grads
    assert sharing_syncs(workload, profile, tied, Plan(tp=2, pp=4), 4, 4) == (
        SyncWork("tied-embedding", (0, 3), Comm("all-reduce", 2 * size, Group(2, 1, 2))),)
    assert sharing_syncs(workload, profile, tied, Plan(tp=2), 8, 2) == ()
    assert sharing_syncs(workload, profile, SharingChoice(False), Plan(tp=2, pp=4), 8, 2) == ()


@pytest.mark.parametrize("k,pp,stages,blocks", [
    (2, 4, 4, 2),     # 8 layers, 2 blocks round-robin: each block's layers lie on all 4 stages, each stage uses both
    (4, 4, 2, 2),     # 4 blocks: block i on layers i and i+4, two stages apart; each stage holds 2 blocks
    (2, 2, 2, 2),
    (1, 4, 4, 1),     # ALBERT: one block on every stage
])
def test_shared_layers_reduce_a_blocks_gradient_between_the_stages_using_it(k: int, pp: int, stages: int,
                                                                             blocks: int) -> None:
    from llmsim.costmodel.work import SyncWork, sharing_syncs
    from tests.costmodel.helpers import profiled

    workload, _ = _train_case()
    profile, sharing = profiled(workload, tie=False, layer_groups=k)
    assert profile.layer_params == k * PER_LAYER
    plan = Plan(tp=2, pp=pp)
    size = PER_LAYER_TP2 * blocks * 2             # a block's gradient per tp rank, bf16, for the blocks a stage holds
    assert sharing_syncs(workload, profile, sharing, plan, 8, 2) == (
        SyncWork("shared-layers", tuple(range(pp)), Comm("all-reduce", pytest.approx(size, rel=1e-12),
                                                        place_group(stages, 2, 8))),)


def test_sharing_syncs_place_their_groups_past_tensor_and_context_parallel_ranks() -> None:
    """Stages lie tp x cp ranks apart: with tp = cp = 2 in nodes of 4, each stage has a node of its own."""
    from llmsim.costmodel.work import sharing_syncs
    from tests.costmodel.helpers import profiled

    workload, _ = _train_case()
    profile, sharing = profiled(workload, tie=True, layer_groups=2)
    tied, shared = sharing_syncs(workload, profile, sharing, Plan(tp=2, cp=2, pp=4), 4, 2)
    assert tied.comm.group == Group(2, 1, 2)
    assert shared.comm.group == Group(4, 1, 4)
    tied, shared = sharing_syncs(workload, profile, sharing, Plan(tp=2, cp=2, pp=4), 16, 2)
    assert tied.comm.group == Group(2, 2, 1) and shared.comm.group == Group(4, 4, 1)


def test_no_sharing_sync_where_no_block_spans_stages_and_none_with_lora() -> None:
    from llmsim.config import LoraSpec
    from llmsim.costmodel.work import sharing_syncs
    from tests.costmodel.helpers import profiled

    workload, _ = _train_case()
    for k in (5, 8):           # 8 // 5 = 1 stage per block; k = L: no sharing at all
        profile, sharing = profiled(workload, tie=False, layer_groups=k)
        assert sharing_syncs(workload, profile, sharing, Plan(pp=2), 8, 2) == ()
    profile, sharing = profiled(workload, tie=True, layer_groups=2, lora=LoraSpec(rank=4))
    assert sharing_syncs(workload, profile, sharing, Plan(pp=2), 8, 2) == ()


def test_an_eager_host_stage_runs_its_share_of_the_traced_optimizer_loop() -> None:
    """On a host (op_overhead_s > 0) the optimizer is PyTorch's traced AdamW: a stage holding a share of the
    trainable parameters streams that share of the traced bytes (a dp-th of it with ZeRO) and launches that
    share of the traced operators."""
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import profiled

    workload, _ = _train_case(layers=4)
    profile, sharing = profiled(workload)
    host_eff = Efficiency(memory=0.5, op_overhead_s=1e-4)
    loopback = Link("lo", 1e10, 1e-5, 1.0)
    host = ClusterSpec(device=Device(efficiency=host_eff, overlaps_communication=False), intra=loopback,
                       inter=loopback, nodes=1, devices_per_node=8)
    opt = [t for key, t in profile.ops.items() if key[0] == "optimizer"]
    opt_bytes, opt_ops = sum(t.bytes for t in opt), sum(t.count for t in opt)
    assert opt_bytes > 0 and opt_ops > 0
    plan = Plan(dp=2, pp=2, zero=1, microbatches=2)
    work = train_work(workload, profile, sharing, plan, host)
    first = 2 * PER_LAYER + (VOCAB + POSITIONS) * H           # the first stage's trainable parameters
    last = 2 * PER_LAYER + (VOCAB + 2) * H                    # the head and the final norm
    for st, trainable in zip(work.stages, (first, last)):
        share = trainable / profile.trainable_params
        assert st.optimizer_s == pytest.approx(opt_bytes * share / 2 / STREAM + 1e-4 * opt_ops * share, rel=1e-12)
    assert work.comm_shares_cores is True


def test_lora_trains_only_the_adapters_of_each_stage() -> None:
    from llmsim.config import LoraSpec
    from llmsim.costmodel.compute import device_rates
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import profiled

    workload, cluster = _train_case(layers=4)
    profile, sharing = profiled(workload, lora=LoraSpec(rank=8))
    adapters = 4 * 18 * H * 8                                 # r (in + out) per PEFT projection: 18 h r per layer
    assert profile.trainable_params == adapters
    work = train_work(workload, profile, sharing, Plan(dp=2, pp=2, microbatches=2), cluster)
    rates = device_rates(cluster, "bfloat16")
    for st in work.stages:                                    # each stage: 2 of the 4 layers' adapters
        assert st.grad_bytes_layer == pytest.approx(adapters / 4 * 2, rel=1e-12)
        assert st.grad_bytes_embed == 0.0 and st.grad_bytes_head == 0.0
        assert st.optimizer_s == pytest.approx(rates.memory_time(adapters / 2 * 28), rel=1e-12)
        assert st.accumulate_s == pytest.approx(rates.memory_time(adapters / 2 * 6), rel=1e-12)
    assert work.syncs == ()


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_1_2_gather_only_the_updated_adapters_under_lora(zero: int) -> None:
    """ZeRO 1/2 hand the updated parameters round after the step (an all-gather over dp): under LoRA only
    the adapters are updated, the frozen base never is (Megatron-Core's distributed optimizer builds its
    buffers from the parameters that require grad), so only the adapters travel."""
    from llmsim.config import LoraSpec
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import profiled

    workload, cluster = _train_case(layers=4)
    profile, sharing = profiled(workload, lora=LoraSpec(rank=8))
    adapters = 4 * 18 * H * 8
    work = train_work(workload, profile, sharing, Plan(dp=2, zero=zero, microbatches=2), cluster)
    [gather] = work.stages[0].gather_after_step
    assert gather.op == "all-gather" and gather.size == pytest.approx(adapters * 2, rel=1e-12)  # bf16
    assert gather.size < profile.params  # not the frozen base (the old pricing gathered every parameter)


def test_context_parallelism_divides_the_work_and_prices_the_ring_exchange_per_layer() -> None:
    """cp = 2: each device computes 1/(tp pp cp) of the layers' work of a micro-batch and 1/(tp cp) of the
    edges', sends activations of s/cp tokens, and pays the exposed ring exchange spread over its layers."""
    from llmsim.config import ModelSpec, Workload
    from llmsim.costmodel.work import cp_exposed_time, train_work
    from tests.costmodel.helpers import a100_cluster, profiled

    workload = Workload(model=ModelSpec(preset="gpt2-small", layers=4, seq_len=256), batch=8)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(nodes=2)
    plan = Plan(dp=2, tp=2, pp=2, cp=2, micro_batch=1, microbatches=4)
    options = Options()
    work = train_work(workload, profile, sharing, plan, cluster, options)
    fwd = _phase(profile, workload, plan, options, cluster, "forward", "layers", 8)
    bwd = _phase(profile, workload, plan, options, cluster, "backward", "layers", 8)
    embed = _phase(profile, workload, plan, options, cluster, "forward", "embed", 4).total
    head = _phase(profile, workload, plan, options, cluster, "backward", "head", 4).total
    exposed = cp_exposed_time(workload, plan, fwd, bwd, Groups.of(plan, 8), cluster, 2)
    assert exposed > 0
    first, last = work.stages
    assert first.fwd_layer_s == pytest.approx(fwd.total / 2, rel=1e-12)
    assert first.bwd_layer_s == pytest.approx(bwd.total / 2, rel=1e-12)
    assert first.embed_fwd_s == pytest.approx(embed, rel=1e-12) and last.head_bwd_s == pytest.approx(head, rel=1e-12)
    assert first.cp_layer_s == last.cp_layer_s == pytest.approx(exposed / 2, rel=1e-12)
    activation = 1 * (256 // 2) * H * 2
    assert first.tp_fwd == (Comm("all-reduce", activation, Group(2, 2, 1), 2),)
    # tp ranks 0-1, cp stride 2, pp stride 4: the two stages share a node of 8
    assert work.p2p == Comm("p2p", activation / 2, Group(2, 2, 1))


def test_zero_1_without_data_parallelism_gathers_nothing() -> None:
    from llmsim.costmodel.work import train_work
    from tests.costmodel.helpers import profiled

    workload, cluster = _train_case(layers=2)
    profile, sharing = profiled(workload)
    for dp, gathers in ((1, 0), (2, 1)):
        work = train_work(workload, profile, sharing, Plan(dp=dp, zero=1, microbatches=2), cluster)
        assert len(work.stages[0].gather_after_step) == gathers


def test_the_step_carries_the_sharing_syncs_of_its_layer_groups() -> None:
    from llmsim.costmodel.work import sharing_syncs, train_work
    from tests.costmodel.helpers import profiled

    workload, cluster = _train_case()
    profile, sharing = profiled(workload, tie=True, layer_groups=2)
    plan = Plan(pp=4, microbatches=4)
    work = train_work(workload, profile, sharing, plan, cluster, Options(main_grads_fp32=True))
    assert [s.name for s in work.syncs] == ["tied-embedding", "shared-layers"]
    assert work.syncs == sharing_syncs(workload, profile, sharing, plan, 8, 4)
    assert work.syncs[1].comm.size == pytest.approx(PER_LAYER * 2 * 4, rel=1e-12)   # 2 blocks, fp32 gradients


# -- the per-step terms of a stage, memoized on the plan fields they read ------------------------------------

def test_the_stage_step_memo_builds_the_work_as_without_it_for_plans_that_differ_in_what_its_key_drops() -> None:
    """Inside stage_step_memo, train_work's per-stage step terms (stage_step_terms: layers per chunk, amax
    seconds, accumulation and optimizer seconds, the gradient and parameter bytes, ZeRO 1/2's gather) are keyed
    by stage_step_plan_key; plans that share a key and differ in the micro-batch size, recompute, sp, the
    schedule or the overlaps, and plans that differ in a key field, get the work made without the memo, whatever
    the order they are asked in: a dense model (plain, LoRA, shared layers), float8 under delayed scaling (its
    amax bookkeeping) and a mixture of experts. A key missing a field the terms read fails here (the first
    plan asked would answer for the others)."""
    import random

    from llmsim.config import LoraSpec
    from llmsim.costmodel.work import stage_step_memo, train_work
    from llmsim.hardware import load_catalog
    from tests.costmodel.helpers import profiled

    rng = random.Random(11)
    cluster = load_catalog().cluster("h100-sxm", nodes=2, devices_per_node=8)
    dense, fp8, moe_w = _dense_fp8_moe_workloads()
    cases = []
    for w, sharings in ((dense, [dict(), dict(tie=False, layer_groups=4), dict(lora=LoraSpec(rank=8))]),
                        (fp8, [dict()]), (moe_w, [dict()])):
        for kw in sharings:
            profile, sharing = profiled(w, **kw)
            for _ in range(12):
                pp = rng.choice([1, 2, 4])
                base = Plan(dp=rng.choice([1, 2]), tp=rng.choice([1, 2]), pp=pp, cp=rng.choice([1, 2]),
                            microbatches=rng.choice([1, 2, 4]), zero=rng.choice([0, 1, 2, 3]),
                            ep=rng.choice([1, 2]) if w is moe_w else 1)
                for _ in range(4):  # the same key: what it drops changes
                    plan = dataclasses.replace(base, micro_batch=rng.choice([1, 2]), sp=rng.choice([False, True]),
                                               recompute=rng.choice(["none", "selective", "full"]),
                                               schedule=rng.choice(["gpipe", "1f1b"]),
                                               overlap_param_gather=rng.choice([False, True]))
                    cases.append((w, profile, sharing, plan))
                for field in ("dp", "zero", "microbatches", "cp"):  # one key field changes
                    value = {"dp": 4, "zero": (base.zero + 1) % 4, "microbatches": 8, "cp": 3 - base.cp}[field]
                    cases.append((w, profile, sharing, dataclasses.replace(base, **{field: value})))
    want = [train_work(w, profile, sharing, plan, cluster) for w, profile, sharing, plan in cases]
    order = list(range(len(cases)))
    rng.shuffle(order)
    with stage_step_memo():
        for i in order:
            w, profile, sharing, plan = cases[i]
            assert train_work(w, profile, sharing, plan, cluster) == want[i], plan


def test_train_works_builds_each_micro_batch_size_as_train_work_does() -> None:
    """train_works (one plan at several micro-batch sizes, what the size does not change built once) gives, for
    every size, the work train_work builds for the plan with that size: equal StepWork (every stage's seconds,
    collectives and per-step terms, the syncs), outside and inside the memos, in any order of sizes. Cases: a
    dense model (plain, LoRA, tied embeddings and shared layers: their syncs), context and tensor parallelism
    with sp, every recompute policy, the interleaved schedule, tp_comm_overlap, float8 under delayed scaling
    and a mixture of experts (its shares of MoE layers per stage). A term that follows the micro-batch size but
    were built once would give the first size's value to the others and fail here."""
    import random

    from llmsim.config import LoraSpec
    from llmsim.costmodel.compute import phase_memo
    from llmsim.costmodel.work import stage_step_memo, train_work, train_works
    from llmsim.hardware import load_catalog
    from tests.costmodel.helpers import profiled

    rng = random.Random(5)
    cluster = load_catalog().cluster("h100-sxm", nodes=2, devices_per_node=8)
    dense, fp8, moe_w = _dense_fp8_moe_workloads()
    checked = 0
    for w, sharings in ((dense, [dict(), dict(tie=True, layer_groups=4), dict(lora=LoraSpec(rank=8))]),
                        (fp8, [dict()]), (moe_w, [dict()])):
        for kw in sharings:
            profile, sharing = profiled(w, **kw)
            for _ in range(10):
                pp = rng.choice([1, 2, 4])
                schedule = rng.choice(["gpipe", "1f1b", "interleaved"]) if pp > 1 else "1f1b"
                tp = rng.choice([1, 2, 4])
                plan = Plan(dp=rng.choice([1, 2]), tp=tp, pp=pp, cp=rng.choice([1, 2]),
                            sp=tp > 1 and rng.random() < 0.5,
                            microbatches=rng.choice([1, 2, 4]), zero=rng.choice([0, 1, 3]), schedule=schedule,
                            virtual_stages=2 if schedule == "interleaved" else 1,
                            recompute=rng.choice(["none", "selective", "selective-op", "full"]),
                            tp_comm_overlap=rng.random() < 0.3, micro_batch=rng.choice([1, 2]),
                            ep=rng.choice([1, 2]) if w is moe_w else 1)
                sizes = rng.sample([1, 2, 3, 4, 8], 3)
                want = [train_work(w, profile, sharing, dataclasses.replace(plan, micro_batch=b), cluster)
                        for b in sizes]
                assert train_works(w, profile, sharing, plan, cluster, sizes) == want, plan
                with phase_memo(), stage_step_memo():
                    assert train_works(w, profile, sharing, plan, cluster, sizes) == want, plan
                assert len({s.fwd_layer_s for work in want for s in work.stages}) > 1  # the sizes differ in it
                checked += 1
    assert checked == 50


def _dense_fp8_moe_workloads():
    """A dense GPT-2 (batch 16), the same under float8 delayed scaling, and an 8-layer tiny MoE whose first layer
    is dense: the three kinds of stage a memo or a family of micro-batch sizes must keep apart."""
    from llmsim.config import ModelSpec, Workload
    from tests.costmodel.helpers import gpt2

    fp8 = Workload(model=ModelSpec(preset="gpt2-small"), mode="train", batch=16, dtype="float8",
                   fp8={"recipe": "delayed"})
    moe_w = Workload(model=ModelSpec(preset="tiny-moe", layers=8, seq_len=64, moe={"first_dense_layers": 1}),
                     mode="train", batch=16)
    return gpt2(batch=16), fp8, moe_w
