"""The composed step: breakdown consistency, sharing effects on communication, inference, errors."""

from __future__ import annotations

import dataclasses

import pytest

from llmsim.config import LoraSpec, ModelSpec, Workload
from llmsim.costmodel import (CostModelError, Options, Plan, estimate, memory_breakdown, single_device_step_time,
                              step_time)
from llmsim.costmodel.cluster import Group, collective_time
from llmsim.costmodel.compute import phase_times
from llmsim.costmodel.step import _per_microbatch
from llmsim.costmodel.work import train_work
from llmsim.costmodel.efficiency import SUSTAINED_OVER_BURST_H200_NODE, wave_efficiency
from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD, device_rates
from tests.costmodel.helpers import (CATALOG, a100_cluster, gpt2, gpt3_175b, megatron_tp_comm_per_microbatch,
                                     profiled, tp8_case)


def test_step_is_the_sum_of_its_parts_and_energy_follows_power() -> None:
    workload, profile, sharing = gpt3_175b()
    plan = Plan(dp=4, tp=8, pp=8, microbatches=384, schedule="interleaved", virtual_stages=2, recompute="full")
    cluster = a100_cluster(nodes=32)
    r = estimate(workload, profile, sharing, plan, cluster)
    assert r.step_time_s == pytest.approx(r.compute_time_s + r.comm_time_s + r.bubble_time_s + r.other_time_s)
    assert r.bubble_time_s > 0 and r.comm_time_s > 0 and r.fits
    # MFU (Chowdhery et al. 2022, "PaLM", App. B): model FLOPs per step / (step time x devices x peak)
    peak = cluster.device.peak_flops["bfloat16"]
    assert r.model_flops == profile.model_flops_per_step and r.peak_flops == peak
    assert r.mfu == pytest.approx(profile.model_flops_per_step / (r.step_time_s * 256 * peak), rel=1e-12)
    # interleaved 1F1B (Narayanan et al. 2021, Sec. 2.2.2): the bubble is (p-1)/(v m) of a stage's ideal
    # time; the fill and drain pass each other stage once (flow shop: costmodel.step.price), and the first
    # (embedding) and middle stages are lighter than the last (LM head)
    stage = r.compute_time_s + r.comm_detail["pipeline_and_tensor"]
    assert r.bubble_time_s < (8 - 1) / (2 * 384) * stage
    work = train_work(workload, profile, sharing, plan, cluster)
    each = [384 * sum(_per_microbatch(work, st, cluster.fabric)[:2]) + st.accumulate_s for st in work.stages]
    assert each[7] == pytest.approx(stage, rel=1e-12)
    assert r.bubble_time_s == pytest.approx((sum(each) - each[7]) / (2 * 384), rel=1e-12)
    # compute of the busiest stage, the last (the LM head outweighs the embedding): per micro-batch its
    # forward, backward, and forward again (full recompute, Chen et al. 2016), plus the head; then m-1
    # gradient accumulations over its own parameters, its layers and the tied head's copy of the embedding
    # (read accumulator and new gradient, write: 3 x bf16).
    rates = device_rates(cluster, "bfloat16")
    fwd, bwd = (phase_times(profile, workload, plan, Options(), rates, ph, "layers", 8 * 8)
                for ph in ("forward", "backward"))
    edge = max(sum(phase_times(profile, workload, plan, Options(), rates, ph, region, 8).total
                   for ph in ("forward", "backward")) for region in ("embed", "head"))
    h, vocab = 12288, 50257
    # layernorms and out/proj biases (6h per layer) and the final LayerNorm (2h) stay whole on every TP rank
    # (Megatron-LM)
    last_stage = (96 // 8 * (12 * h * h + 7 * h) + vocab * h) / 8 + 96 // 8 * 6 * h + 2 * h
    accumulate = (384 - 1) * rates.memory_time(last_stage * 3 * 2)
    assert r.critical_stage == 7
    assert r.compute_time_s == pytest.approx(384 * (2 * fwd.total + bwd.total + edge) + accumulate, rel=1e-12)
    # energy: every device idles through the step and draws busy power while its own stage computes (the
    # stages' mean of compute + optimizer, as the simulation's ledgers count it), not the critical stage's
    dev = cluster.device
    busy = [384 * _per_microbatch(work, st, cluster.fabric)[0] + st.accumulate_s + st.optimizer_s for st in work.stages]
    assert busy[7] == pytest.approx(r.compute_time_s + r.other_time_s, rel=1e-12) and min(busy) < busy[7]
    assert r.energy_j == pytest.approx(256 * (dev.idle_power_w * r.step_time_s
                                             + (dev.max_power_w - dev.idle_power_w) * sum(busy) / 8))


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_step_time_alone_is_the_estimates_step_time(mode: str) -> None:
    """What the calibration fit prices per evaluation: the same figure as estimate's, without its memory."""
    workload = gpt2(mode).model_copy(update={"decode_tokens": 8})
    profile, sharing = profiled(workload)
    plan = Plan(dp=1, tp=2, pp=2, microbatches=4 if mode == "train" else 1)
    cluster = a100_cluster(nodes=1)
    assert step_time(workload, profile, sharing, plan, cluster) == estimate(workload, profile, sharing, plan,
                                                                            cluster).step_time_s > 0


def test_more_data_parallel_replicas_shorten_the_step_but_not_below_ideal() -> None:
    workload, profile, sharing = gpt3_175b()
    times = []
    for nodes in (16, 32, 64):
        dp = nodes * 8 // 64
        plan = Plan(dp=dp, tp=8, pp=8, microbatches=1536 // dp, recompute="full")
        times.append(estimate(workload, profile, sharing, plan, a100_cluster(nodes)).step_time_s)
    assert times[0] > times[1] > times[2]
    one = single_device_step_time(workload, profile, sharing, Plan(dp=8, tp=8, pp=8, microbatches=192,
                                                                   recompute="full"), a100_cluster(64))
    assert one / 512 < times[2]


def test_lora_shrinks_gradient_reduction_and_optimizer() -> None:
    workload = gpt2()
    plan = Plan(dp=8, microbatches=1, overlap_grad_reduce=False)
    full = estimate(workload, *profiled(workload), plan, a100_cluster())
    lora = estimate(workload, *profiled(workload, lora=LoraSpec(rank=8)), plan, a100_cluster())
    # LoRA (Hu et al. 2021): r*(in+out) per adapted projection (PEFT's); per layer q, k, v, o (h -> h),
    # up (h -> 4h), down (4h -> h) = r*18h. Only those are reduced over dp and updated by Adam.
    h, layers = workload.model.hidden, workload.model.layers
    adapters = layers * 8 * (4 * 2 * h + 5 * h + 5 * h)
    everything = layers * (12 * h * h + 13 * h) + (50257 + 1024 + 2) * h  # blocks, tok/pos embedding, final norm
    dp8 = Group(size=8, per_node=8, nodes=1)
    for r, trainable in ((lora, adapters), (full, everything)):
        assert r.comm_detail["data_parallel"] == pytest.approx(
            collective_time("all-reduce", trainable * 2, dp8, a100_cluster()), rel=1e-12)
        # fused Adam streams fp32 master, m, v (read+write: 24 B), reads the bf16 gradient, writes bf16 weights
        assert r.other_time_s == pytest.approx(
            device_rates(a100_cluster(), "bfloat16").memory_time(trainable * (24 + 2 + 2)), rel=1e-12)
    # frozen weights need no weight-gradient GEMMs: the profile's backward already lacks them
    assert profiled(workload, lora=LoraSpec(rank=8))[0].flops("backward") < profiled(workload)[0].flops("backward")


def test_tied_embeddings_add_a_first_last_stage_all_reduce_only_with_pipelining() -> None:
    workload = gpt2()
    pp = Plan(pp=4, microbatches=8)
    tied = estimate(workload, *profiled(workload, tie=True), pp, a100_cluster())
    untied = estimate(workload, *profiled(workload, tie=False), pp, a100_cluster())
    no_pp = estimate(workload, *profiled(workload, tie=True), Plan(microbatches=8), a100_cluster())
    # the tied embedding's gradient (vocab x hidden, bf16) is all-reduced between the first and last stage
    # (Narayanan et al. 2021 / Megatron-LM's embedding group): two ranks of one node
    m = workload.model
    assert tied.comm_detail["sharing_sync"] == pytest.approx(
        collective_time("all-reduce", m.vocab * m.hidden * 2, Group(size=2, per_node=2, nodes=1), a100_cluster()),
        rel=1e-12)
    assert untied.comm_detail["sharing_sync"] == 0
    assert no_pp.comm_detail["sharing_sync"] == 0


def test_layer_groups_keep_flops_but_shrink_the_gradient_reduction() -> None:
    workload = gpt2()
    plan = Plan(dp=8, microbatches=1, overlap_grad_reduce=False)
    plain = estimate(workload, *profiled(workload), plan, a100_cluster())
    shared = estimate(workload, *profiled(workload, layer_groups=2), plan, a100_cluster())
    assert shared.model_flops == pytest.approx(plain.model_flops)
    # ALBERT-style sharing (Lan et al. 2020): 2 distinct blocks instead of 12 carry gradients
    h, layers = workload.model.hidden, workload.model.layers
    per_block = 12 * h * h + 13 * h
    edge = (50257 + 1024 + 2) * h  # token and position embeddings, final norm
    dp8 = Group(size=8, per_node=8, nodes=1)
    for r, blocks in ((plain, layers), (shared, 2)):
        assert r.comm_detail["data_parallel"] == pytest.approx(
            collective_time("all-reduce", (blocks * per_block + edge) * 2, dp8, a100_cluster()), rel=1e-12)
    # the same FLOPs; autograd sums the gradient of a weight used L/k times with L/k - 1 adds (read two,
    # write one, bf16), memory-bound work on this micro-batch's share (1 of the batch's 4 sequences)
    adds = (layers - 2) * per_block * 3 * 2
    extra = device_rates(a100_cluster(), "bfloat16").memory_time(adds / 4)
    assert shared.compute_time_s == pytest.approx(plain.compute_time_s + extra, rel=1e-12)


def test_overlapping_the_gradient_reduction_hides_part_of_it() -> None:
    workload = gpt2()
    profile, sharing = profiled(workload)
    plan = Plan(dp=16, microbatches=1, overlap_grad_reduce=False)
    exposed = estimate(workload, profile, sharing, plan, a100_cluster(nodes=2))
    hidden = estimate(workload, profile, sharing, dataclasses.replace(plan, overlap_grad_reduce=True),
                      a100_cluster(nodes=2))
    assert hidden.comm_time_s < exposed.comm_time_s


def test_flash_attention_is_faster_than_the_math_path_it_replaces() -> None:
    workload = gpt2(seq_len=1024)
    profile, sharing = profiled(workload)
    plan = Plan(microbatches=8)
    flash = estimate(workload, profile, sharing, plan, a100_cluster(), Options(attention="flash"))
    fused = estimate(workload, profile, sharing, plan, a100_cluster(), Options(attention="fused-softmax"))
    math = estimate(workload, profile, sharing, plan, a100_cluster(), Options(attention="math"))
    assert flash.step_time_s < fused.step_time_s < math.step_time_s


def test_decode_reports_time_to_first_token_and_per_output_token() -> None:
    workload = Workload(model=ModelSpec(preset="gpt2-small", seq_len=512), mode="decode", batch=4,
                        decode_tokens=33)
    r = estimate(workload, *profiled(workload), Plan(tp=2, microbatches=4), a100_cluster())
    assert r.ttft_s and r.tpot_s and r.tpot_s < r.ttft_s
    assert r.step_time_s == pytest.approx(r.ttft_s + 32 * r.tpot_s)
    # K and V per layer of 4 sequences x (512 + 33) positions x hidden, bf16 (Pope et al. 2022, Sec. 2.1); tp=2
    # splits the heads, so each rank holds half
    m = workload.model
    assert r.memory.kv_cache == 2 * m.layers * 4 * (512 + 33) * m.hidden * 2 / 2


def test_a_device_without_a_peak_for_the_dtype_is_an_error_not_a_guess() -> None:
    workload = gpt2().model_copy(update={"dtype": "float32"})
    cluster = dataclasses.replace(a100_cluster(), device=CATALOG.device("tpu-v4"))
    with pytest.raises(CostModelError, match="no peak FLOP/s for float32"):
        estimate(workload, *profiled(workload), Plan(), cluster)
    cpu = dataclasses.replace(a100_cluster(), device=CATALOG.device("cpu-host"))
    with pytest.raises(CostModelError, match="calibrate"):
        estimate(gpt2(), *profiled(gpt2()), Plan(), cpu)


def test_wave_quantization() -> None:
    assert wave_efficiency(256 * 27, 128 * 4, 108) == pytest.approx(1.0)   # exactly one full wave
    assert wave_efficiency(128, 128, 108) == pytest.approx(1 / 108)        # one tile on 108 SMs
    assert wave_efficiency(128, 128, None) == 1.0


def test_fused_softmax_prices_attention_dropout_as_its_own_pass_and_flash_fuses_it() -> None:
    from llmsim.costmodel.compute import (DROPOUT_MASK_BYTES, DROPOUT_PASSES_BACKWARD, DROPOUT_PASSES_FORWARD,
                                          phase_times)
    from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD, device_rates

    plain_w, dropped_w = gpt2(layers=2, seq_len=512), gpt2(layers=2, seq_len=512, dropout=0.1)
    (plain, sharing), (dropped, _) = profiled(plain_w), profiled(dropped_w)
    plan, cluster = Plan(micro_batch=4, microbatches=1), a100_cluster(1, 1)
    rates = device_rates(cluster, dropped_w.dtype)
    m = dropped_w.model
    elem = 2  # bf16
    matrix = plan.micro_batch * m.heads * m.seq_len * m.seq_len * elem * m.layers
    for phase, passes in (("forward", DROPOUT_PASSES_FORWARD), ("backward", DROPOUT_PASSES_BACKWARD)):
        fused = Options(attention="fused-softmax")
        extra = (phase_times(dropped, dropped_w, plan, fused, rates, phase, "layers", 1).attention
                 - phase_times(plain, plain_w, plan, fused, rates, phase, "layers", 1).attention)
        assert extra == pytest.approx(rates.memory_time(passes * matrix + DROPOUT_MASK_BYTES * matrix / elem))
        flash = Options(attention="flash")
        assert (phase_times(dropped, dropped_w, plan, flash, rates, phase, "layers", 1).attention
                == phase_times(plain, plain_w, plan, flash, rates, phase, "layers", 1).attention)
        # the hidden dropout on the residual branches is memory-bound `other` time for every kernel
        assert (phase_times(dropped, dropped_w, plan, flash, rates, phase, "layers", 1).other
                > phase_times(plain, plain_w, plan, flash, rates, phase, "layers", 1).other)
    # a full recompute repeats the forward, dropout included
    full = dataclasses.replace(plan, recompute="full")
    fused = Options(attention="fused-softmax")
    gain_none = (estimate(dropped_w, dropped, sharing, plan, cluster, fused).step_time_s
                 - estimate(plain_w, plain, sharing, plan, cluster, fused).step_time_s)
    gain_full = (estimate(dropped_w, dropped, sharing, full, cluster, fused).step_time_s
                 - estimate(plain_w, plain, sharing, full, cluster, fused).step_time_s)
    assert gain_full > gain_none > 0


def test_a_sustained_clock_slows_flop_bound_work_and_leaves_memory_bound_work_alone() -> None:
    workload = gpt2()
    profile, sharing = profiled(workload)
    plan = Plan(microbatches=1, micro_batch=4)
    burst = a100_cluster(devices_per_node=1)
    efficiency = burst.efficiency.model_copy(update={"sustained": 1.0})
    burst = dataclasses.replace(burst, device=burst.device.model_copy(update={"efficiency": efficiency}))
    held = dataclasses.replace(burst, device=burst.device.model_copy(
        update={"efficiency": efficiency.model_copy(update={"sustained": 0.5})}))
    options = Options(attention="flash")
    fast, slow = estimate(workload, profile, sharing, plan, burst, options), estimate(workload, profile, sharing,
                                                                                      plan, held, options)
    # The optimizer streams memory (no FLOPs): untouched. Compute is FLOP-bound GEMMs and attention plus
    # memory-bound elementwise ops: slower, but by less than the 2x of the clock alone.
    assert slow.other_time_s == pytest.approx(fast.other_time_s)
    assert fast.compute_time_s < slow.compute_time_s < 2 * fast.compute_time_s
    assert slow.mfu < fast.mfu
    # exactly: the FLOP ceiling is peak x sustained (Rates.sustained_flops), so holding half the clock prices
    # every op like a device with half the peak at full clock
    halved = dataclasses.replace(burst, device=burst.device.model_copy(
        update={"peak_flops": {k: v / 2 for k, v in burst.device.peak_flops.items()}}))
    same = estimate(workload, profile, sharing, plan, halved, options)
    assert slow.compute_time_s == pytest.approx(same.compute_time_s, rel=1e-12)
    assert slow.step_time_s == pytest.approx(same.step_time_s, rel=1e-12)
    # the catalog's NVIDIA boards carry the sourced factor (measured on H200, an estimate for the others)
    for name in ("a100-40gb", "a100-80gb", "h100-sxm", "h200"):
        assert CATALOG.device(name).efficiency.sustained == pytest.approx(SUSTAINED_OVER_BURST_H200_NODE, abs=5e-4)


def test_a_device_that_computes_its_collectives_hides_none_of_them() -> None:
    """gloo on a CPU host: the DP reduction the overlap would hide, and ZeRO-3's prefetched gathers, are
    all exposed when the device's cores are the ones that communicate."""
    workload = gpt2()
    profile, sharing = profiled(workload)
    engines = a100_cluster(nodes=2)
    cores = dataclasses.replace(engines, device=engines.device.model_copy(update={"overlaps_communication": False}))
    for plan in (Plan(dp=16, microbatches=1, overlap_grad_reduce=True), Plan(dp=16, microbatches=2, zero=3)):
        hidden, exposed = (estimate(workload, profile, sharing, plan, c) for c in (engines, cores))
        assert exposed.comm_time_s > hidden.comm_time_s
        assert exposed.compute_time_s == pytest.approx(hidden.compute_time_s)
    assert CATALOG.device("cpu-host").overlaps_communication is False


def test_memory_exactly_equal_to_the_capacity_fits_and_one_byte_over_does_not() -> None:
    """The busiest device fits when it needs no more than the device has (<=); one byte less capacity, not."""
    workload = gpt2()
    profile, sharing = profiled(workload)
    plan = Plan(dp=2, tp=2, pp=2, microbatches=2)
    need = memory_breakdown(workload, profile, sharing, plan).total
    cluster = a100_cluster()
    for capacity, fits in ((need, True), (need - 1, False), (need + 1, True)):
        device = cluster.device.model_copy(update={"memory_bytes": capacity})
        r = estimate(workload, profile, sharing, plan, dataclasses.replace(cluster, device=device))
        assert r.memory.total == need and r.memory_capacity_bytes == capacity
        assert r.fits is fits, capacity - need


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_tensor_parallel_communication_is_megatrons_four_collectives_per_layer(recompute: str, sp: bool) -> None:
    """One node, tp=8, no dp/pp/cp: the exposed communication is the tensor-parallel collectives alone."""
    workload, profile, sharing, cluster = tp8_case()
    plan = Plan(tp=8, micro_batch=2, microbatches=3, sp=sp, recompute=recompute)
    r = estimate(workload, profile, sharing, plan, cluster)
    expected = 3 * megatron_tp_comm_per_microbatch(workload, plan, cluster)
    assert r.comm_time_s == pytest.approx(expected, rel=1e-12)
    assert r.comm_detail["pipeline_and_tensor"] == pytest.approx(expected, rel=1e-12)
    assert r.comm_detail["data_parallel"] == 0 and r.comm_detail["sharing_sync"] == 0


def test_the_options_reach_the_memory_and_the_single_device_step() -> None:
    """Software choices change both the time and the memory of a case: the math attention path keeps the
    s x s scores (costmodel.memory) and runs slower than flash; m*C prices with the same choices."""
    workload = gpt2()
    profile, sharing = profiled(workload)
    plan, cluster, math = Plan(dp=2, microbatches=2), a100_cluster(), Options(attention="math")
    r = estimate(workload, profile, sharing, plan, cluster, math)
    assert r.memory == memory_breakdown(workload, profile, sharing, plan, math)
    assert r.memory.activations > memory_breakdown(workload, profile, sharing, plan).activations
    one = single_device_step_time(workload, profile, sharing, plan, cluster, math)
    assert one == estimate(workload, profile, sharing, Plan(microbatches=4), a100_cluster(1, 1), math).step_time_s
    assert one > single_device_step_time(workload, profile, sharing, plan, cluster)


# -- the roofline's sum of a hand-made step (module docstring of costmodel.step) -------------------------------------

def _fabric():
    from llmsim.costmodel.collectives import Channel, Fabric

    return Fabric(intra=Channel(bandwidth=1e11, latency=1e-6), inter=Channel(bandwidth=1e10, latency=1e-5))


def _stage(**fields: object):
    from llmsim.costmodel.work import Comm, StageWork

    tp = Group(2, 2, 1)
    base = dict(layers=3, fwd_layer_s=1e-3, bwd_layer_s=2e-3, recompute_layer_s=5e-4, cp_layer_s=1e-4,
                tp_fwd=(Comm("all-reduce", 4e6, tp, 2),), tp_recompute=(Comm("all-reduce", 4e6, tp, 2),),
                tp_bwd=(Comm("all-reduce", 4e6, tp, 2),), recv_gather=(Comm("all-gather", 4e6, tp),),
                accumulate_s=3e-3, optimizer_s=7e-3, grad_bytes_layer=1e8, param_bytes_layer=5e7)
    return StageWork(**{**base, **fields})


def test_price_sums_each_stage_and_the_busiest_sets_the_step() -> None:
    from llmsim.costmodel.step import price
    from llmsim.costmodel.work import Comm, StepWork, SyncWork, comms_time

    f = _fabric()
    tp, dp = Group(2, 2, 1), Group(4, 1, 4)
    first = _stage(embed_fwd_s=1e-3, embed_bwd_s=2e-3, tp_embed=(Comm("all-reduce", 4e6, tp),), grad_bytes_embed=2e8)
    last = _stage(head_fwd_s=4e-3, head_bwd_s=8e-3, tp_head=(Comm("all-reduce", 4e6, tp),), grad_bytes_head=3e8,
                  optimizer_s=9e-3)
    p2p = Comm("p2p", 2e6, Group(2, 2, 1))
    sync = SyncWork("tied-embedding", (0, 1), Comm("all-reduce", 1e8, Group(2, 2, 1)))
    work = StepWork(stages=(first, last), microbatches=8, schedule="interleaved", virtual_stages=2, p2p=p2p,
                    dp_op="all-reduce", dp_group=dp, zero=0, overlap_grad_reduce=True, syncs=(sync,))
    t = price(work, f)
    # by hand, the last stage (its head outweighs the first's embedding); 2 chunks: 6 layers a micro-batch
    layers = 6
    compute = layers * (1e-3 + 2e-3 + 5e-4) + 4e-3 + 8e-3
    per_layer = comms_time(last.tp_fwd + last.tp_recompute + last.tp_bwd, f) + 1e-4
    messages = 2 * 2 * (p2p.time(f) + Comm("all-gather", 4e6, tp).time(f))   # sent and received, per chunk
    comm = layers * per_layer + Comm("all-reduce", 4e6, tp).time(f) + messages
    # interleaved: each chunk's all-reduce issued (rank 1) one backward after its last micro-batch's; chunk 1
    # (with the head's gradients) is final pp = 2 chunk backwards before the end, chunk 0 at the end
    chunk_backward = 3 * (2e-3 + 5e-4)
    chunk1, chunk0 = Comm("all-reduce", 3e8 + 3e8, dp).time(f), Comm("all-reduce", 3e8, dp).time(f)
    reduce = max(chunk0, chunk1 + chunk0 - (2 - 1) * chunk_backward)
    assert reduce > chunk0
    pipelined = 8 * (compute + comm) + 3e-3
    assert t.critical_stage == 1
    assert t.compute == pytest.approx(8 * compute + 3e-3, rel=1e-12)
    assert t.comm == pytest.approx(8 * comm + reduce + sync.comm.time(f), rel=1e-12)
    # the fill and drain pass the other (first) stage once: its embedding instead of the head
    first_pipelined = 8 * (layers * (1e-3 + 2e-3 + 5e-4) + 1e-3 + 2e-3 + comm) + 3e-3
    assert t.bubble == pytest.approx((2 - 1) / (2 * 8) * first_pipelined, rel=1e-12)
    assert t.bubble < (2 - 1) / (2 * 8) * pipelined
    assert t.other == 9e-3
    assert t.detail == {"pipeline_and_tensor": pytest.approx(8 * comm, rel=1e-12),
                        "data_parallel": pytest.approx(reduce, rel=1e-12),
                        "sharing_sync": pytest.approx(sync.comm.time(f), rel=1e-12)}
    assert t.step == pytest.approx(t.compute + t.comm + t.bubble + t.other, rel=1e-15)
    # a sync only the first stage takes part in leaves the last stage's comm alone
    only_first = dataclasses.replace(work, syncs=(SyncWork("x", (0,), sync.comm),))
    assert price(only_first, f).comm == pytest.approx(8 * comm + reduce, rel=1e-12)


def test_equally_busy_stages_report_the_first() -> None:
    from llmsim.costmodel.step import price
    from llmsim.costmodel.work import StepWork

    work = StepWork(stages=(_stage(), _stage(), _stage()), microbatches=4)
    assert price(work, _fabric()).critical_stage == 0


@pytest.mark.parametrize("part", ["compute", "comm", "other"])
def test_any_part_of_a_stages_time_can_make_it_the_critical_one(part: str) -> None:
    """The busiest stage is the one with the most compute + exposed communication + optimizer time."""
    from llmsim.costmodel.step import price
    from llmsim.costmodel.work import Comm, StepWork

    more = {"compute": dict(embed_fwd_s=1.0), "comm": dict(tp_embed=(Comm("all-reduce", 1e9, Group(2, 2, 1)),)),
            "other": dict(optimizer_s=1.0)}[part]
    busy = _stage(**more)
    for stages, critical in (((busy, _stage()), 0), ((_stage(), busy), 1), ((_stage(), _stage(), busy), 2)):
        assert price(StepWork(stages=stages, microbatches=2), _fabric()).critical_stage == critical


def test_without_overlap_or_on_compute_cores_the_reduction_is_exposed_whole() -> None:
    from llmsim.costmodel.step import price
    from llmsim.costmodel.work import Comm, StepWork

    f, dp = _fabric(), Group(4, 1, 4)
    gather = (Comm("all-gather", 5e8, dp),)
    st = _stage(gather_after_step=gather)
    whole = Comm("all-reduce", 3 * 1e8, dp).time(f) + gather[0].time(f)
    for overlap, shares in ((False, False), (True, True), (False, True)):
        work = StepWork(stages=(st,), microbatches=2, dp_group=dp, zero=1, overlap_grad_reduce=overlap,
                        comm_shares_cores=shares)
        assert price(work, f).detail["data_parallel"] == pytest.approx(whole, rel=1e-12)
    hidden = StepWork(stages=(st,), microbatches=2, dp_group=dp, zero=1)
    backward = 3 * (2e-3 + 5e-4)
    assert price(hidden, f).detail["data_parallel"] == pytest.approx(
        max(0.0, whole - gather[0].time(f) - backward) + gather[0].time(f), rel=1e-12)
    # ZeRO 2: a reduce-scatter instead of the all-reduce
    rs = StepWork(stages=(st,), microbatches=2, dp_group=dp, zero=2, dp_op="reduce-scatter", overlap_grad_reduce=False)
    assert price(rs, f).detail["data_parallel"] == pytest.approx(
        Comm("reduce-scatter", 3e8, dp).time(f) + gather[0].time(f), rel=1e-12)
    # a backward longer than the reduction hides all of it
    long = _stage(bwd_layer_s=10.0)
    assert price(StepWork(stages=(long,), microbatches=2, dp_group=dp), f).detail["data_parallel"] == 0.0


def test_zero_3_gathers_and_reduces_every_unit_one_ahead_of_its_compute() -> None:
    """Rajbhandari et al. 2020 / PyTorch FSDP: each layer's parameters all-gathered before its forward and its
    backward and its gradients reduce-scattered after its backward, one collective per layer each, issued one
    layer ahead: a layer's pass (its compute and tensor-parallel waits) hides the next layer's gather (and in
    the backward the previous one's reduce-scatter), no more; the step's first gather and last reduce-scatter
    have nothing to hide under. Without overlap (collectives on the compute cores) every collective shows."""
    from llmsim.costmodel.step import price
    from llmsim.costmodel.work import Comm, StepWork, comms_time

    f, dp = _fabric(), Group(4, 1, 4)
    st = _stage(fwd_layer_s=1e-6, bwd_layer_s=1e-6, recompute_layer_s=0.0, cp_layer_s=0.0)
    gather, reduce = Comm("all-gather", 5e7, dp).time(f), Comm("reduce-scatter", 1e8, dp).time(f)
    window_f = 1e-6 + comms_time(st.tp_fwd, f)
    window_b = 1e-6 + comms_time(st.tp_bwd + st.tp_recompute, f)
    assert gather > window_f and gather + reduce > window_b   # communication-bound: every layer exposes some
    per_layer = (gather - window_f) + (gather + reduce - window_b)
    hidden = StepWork(stages=(st,), microbatches=4, dp_group=dp, zero=3, dp_op="reduce-scatter")
    assert price(hidden, f).detail["data_parallel"] == pytest.approx(4 * 3 * per_layer + gather + reduce, rel=1e-12)
    on_cores = StepWork(stages=(st,), microbatches=4, dp_group=dp, zero=3, dp_op="reduce-scatter",
                        comm_shares_cores=True)
    assert price(on_cores, f).detail["data_parallel"] == pytest.approx(4 * 3 * (2 * gather + reduce), rel=1e-12)
    busy = _stage(fwd_layer_s=10.0, bwd_layer_s=10.0)   # long layers: only the first gather and last reduction
    assert price(StepWork(stages=(busy,), microbatches=4, dp_group=dp, zero=3), f).detail["data_parallel"] == \
        pytest.approx(gather + reduce, rel=1e-12)


def test_zero_3_pays_a_ring_latency_per_layer_not_per_step() -> None:
    """A layer's gather that its pass hides when priced alone stays hidden however many layers the stage has,
    even where the whole stage's weights in one collective (one latency) would take less than the compute:
    the per-layer latency is what a pooled estimate drops (issue 18: 1024 ZeRO-3 ranks)."""
    from llmsim.costmodel.step import price
    from llmsim.costmodel.work import Comm, StepWork

    f, dp = _fabric(), Group(512, 8, 64)   # 64 nodes: a ring of 63 inter-node steps per collective
    gather = Comm("all-gather", 5e7, dp).time(f)
    reduce = Comm("reduce-scatter", 1e8, dp).time(f)
    pooled = Comm("all-gather", 40 * 5e7, dp, 2).time(f) + Comm("reduce-scatter", 40 * 1e8, dp).time(f)
    # layers whose compute covers the pooled collectives but not the per-layer ones
    fwd = 0.9 * gather
    st = _stage(layers=40, fwd_layer_s=fwd, bwd_layer_s=2 * fwd, recompute_layer_s=0.0, cp_layer_s=0.0,
                tp_fwd=(), tp_bwd=(), tp_recompute=())
    assert 40 * 3 * fwd > pooled
    work = StepWork(stages=(st,), microbatches=2, dp_group=dp, zero=3, dp_op="reduce-scatter")
    per_layer = (gather - fwd) + max(0.0, gather + reduce - 2 * fwd)
    assert price(work, f).detail["data_parallel"] == pytest.approx(2 * 40 * per_layer + gather + reduce, rel=1e-12)
    assert price(work, f).detail["data_parallel"] > 0.1 * 2 * 40 * gather


def test_a_forward_only_step_sends_one_message_per_chunk_fills_like_gpipe_and_reduces_nothing() -> None:
    from llmsim.costmodel.step import price
    from llmsim.costmodel.work import Comm, StepWork, comms_time

    f = _fabric()
    st = _stage(bwd_layer_s=0.0, recompute_layer_s=0.0, tp_recompute=(), tp_bwd=(), accumulate_s=0.0, optimizer_s=0.0)
    p2p = Comm("p2p", 2e6, Group(2, 2, 1))
    work = StepWork(stages=(st, st), microbatches=4, schedule="interleaved", virtual_stages=2, forward_only=True,
                    p2p=p2p, dp_group=Group(4, 1, 4))
    t = price(work, f)
    layers = 6
    comm = layers * (comms_time(st.tp_fwd, f) + 1e-4) + 2 * (p2p.time(f) + comms_time(st.recv_gather, f))
    assert t.comm == pytest.approx(4 * comm, rel=1e-12)
    assert t.detail["data_parallel"] == 0.0
    assert t.bubble == pytest.approx((2 - 1) / 4 * 4 * (layers * 1e-3 + comm), rel=1e-12)   # GPipe: no v
    assert price(dataclasses.replace(work, p2p=None), f).comm == pytest.approx(4 * layers * (comms_time(st.tp_fwd, f)
                                                                                          + 1e-4), rel=1e-12)


def test_decode_is_the_prefill_then_n_minus_1_token_steps() -> None:
    from llmsim.costmodel.step import price, step_times
    from llmsim.costmodel.work import forward_work

    workload = Workload(model=ModelSpec(preset="gpt2-small", layers=2, seq_len=64), mode="decode", batch=4,
                        decode_tokens=5)
    profile, sharing = profiled(workload)
    plan, cluster = Plan(tp=2, pp=2, microbatches=2, micro_batch=2), a100_cluster()
    t = step_times(workload, profile, sharing, plan, cluster)
    prefill = price(forward_work(workload, profile, plan, cluster, Options(), "prefill"), cluster.fabric)
    token = price(forward_work(workload, profile, plan, cluster, Options(), "decode", 4), cluster.fabric)
    assert t.ttft == prefill.step and t.tpot == token.step
    assert t.compute == pytest.approx(prefill.compute + 4 * token.compute, rel=1e-12)
    assert t.comm == pytest.approx(prefill.comm + 4 * token.comm, rel=1e-12)
    assert t.bubble == pytest.approx(prefill.bubble + 4 * token.bubble, rel=1e-12)
    # The last stage: the LM head's 2-row GEMM streams its half of the 38.6M-parameter embedding (a GEMV,
    # efficiency.gemm_efficiency) once per micro-batch, which outweighs the first stage's embedding
    # all-reduce (tp=2, latency-bound).
    assert t.other == 0.0 and t.critical_stage == token.critical_stage == 1
    # two generated tokens: the prefill and one token step
    two = Workload(model=workload.model, mode="decode", batch=4, decode_tokens=2)
    t2 = step_times(two, *profiled(two), plan, cluster)
    token2 = price(forward_work(two, profiled(two)[0], plan, cluster, Options(), "decode", 1), cluster.fabric)
    assert t2.tpot == token2.step > 0 and t2.step == pytest.approx(t2.ttft + token2.step, rel=1e-12)
    # one generated token: the prefill alone, no token step
    one = Workload(model=workload.model, mode="decode", batch=4, decode_tokens=1)
    t1 = step_times(one, *profiled(one), plan, cluster)
    p1 = price(forward_work(one, profiled(one)[0], plan, cluster, Options(), "prefill"), cluster.fabric)
    assert (t1.step, t1.ttft, t1.tpot) == (pytest.approx(p1.step, rel=1e-12), p1.step, 0.0)
    # a prefill request batch reports no ttft/tpot of its own
    pre = Workload(model=workload.model, mode="prefill", batch=4)
    tp_ = step_times(pre, *profiled(pre), plan, cluster)
    assert tp_.ttft is None and tp_.tpot is None
    assert tp_ == price(forward_work(pre, profiled(pre)[0], plan, cluster), cluster.fabric)


def test_decode_at_batch_1_streams_the_weights_at_memory_bandwidth() -> None:
    """Issue 14, item 2: Llama-2-7B, one sequence, 128-token prompt, 128 generated tokens on one A100 80GB.
    A token step reads the 13.21 GB of bf16 weights and the KV cache at its mean length (128 + 64 of 256
    positions of 134 MB: 0.10 GB) at 2.039 TB/s x 1.80/2.04 (the catalog's HBM stream efficiency): 7.40 ms.
    Its GEMMs have one row (about 0.05 ms of compute at the 16-row MMA padding), so they are memory-bound;
    the 128-row tile model had priced them compute-bound at 13.91 ms. The norms, rotary and residual
    traffic of the eager trace add the last 0.5%. On top of that read, each of the step's kernels (9 per
    layer, the embedding lookup, the final norm and the LM head) takes the catalog's 18,300 SM cycles beyond
    its roofline, 13.0 us at the A100's 1,410 MHz (Efficiency.kernel_latency_cycles; FasterTransformer and vLLM
    decode on A100-H200 imply 16,500-20,200 cycles): 3.78 ms, for 11.2 ms per token in all."""
    workload = Workload(model=ModelSpec(preset="llama2-7b", seq_len=128), mode="decode", batch=1,
                        decode_tokens=128)
    cluster = a100_cluster(1, 1)
    r = estimate(workload, *profiled(workload), Plan(), cluster)
    weights = r.memory.params
    kv = r.memory.kv_cache * (128 + 128 / 2) / (128 + 128)
    stream = cluster.device.memory_bw_bytes_per_s * (1.80 / 2.04)
    assert weights == pytest.approx(13.21e9, rel=1e-3) and kv == pytest.approx(0.10e9, rel=1e-2)
    kernels = 32 * KERNELS_PER_LAYER_FORWARD + KERNELS_EMBED + KERNELS_HEAD
    latency = cluster.device.efficiency.kernel_latency_s
    assert latency == pytest.approx(18300 / 1.41e9)
    assert r.tpot_s == pytest.approx((weights + kv) / stream + kernels * latency, rel=0.01)
    assert r.tpot_s - kernels * latency == pytest.approx(7.42e-3, rel=0.01)   # the closed form


def test_pipelined_decode_keeps_one_micro_batch_per_stage_in_flight() -> None:
    """Issue 14, item 2 (pp > 1): Llama-2-7B decoding 64 sequences on 4 pipeline stages of one node. A
    server keeps pp = 4 micro-batches of 16 sequences in flight (work.inference_plan); each token step
    fills and drains the pipeline (FasterTransformer broadcasts the sampled tokens before the next step):
    (m + p - 1) = 7 stage-times of one 16-sequence micro-batch, each reading the stage's quarter of the
    weights. Weight-bound, that is 7/4 of one device reading them all, not the 67 stage-times the
    training micro_batch of 1 sequence would take (64 micro-batches, each re-reading the weights)."""
    workload = Workload(model=ModelSpec(preset="llama2-7b", seq_len=128), mode="decode", batch=64,
                        decode_tokens=16)
    profile, sharing = profiled(workload)
    cluster = a100_cluster(1, 4)
    piped = estimate(workload, profile, sharing, Plan(pp=4, micro_batch=1, microbatches=64), cluster)
    whole = estimate(workload, profile, sharing, Plan(micro_batch=1, microbatches=64), a100_cluster(1, 1))
    stream = cluster.device.memory_bw_bytes_per_s * (1.80 / 2.04)
    # the busiest (last) stage reads its 8 layers and the LM head once per micro-batch, plus its share of
    # the 16 sequences' KV cache; the token step is 7 of those (+ the messages between stages, ~0.1%)
    kv_per_stage = whole.memory.kv_cache / 4 / 4 * (128 + 16 / 2) / (128 + 16)
    kernels = 8 * KERNELS_PER_LAYER_FORWARD + KERNELS_HEAD      # Efficiency.kernel_latency_s each
    stage = (piped.memory.params + kv_per_stage) / stream + kernels * cluster.device.efficiency.kernel_latency_s
    assert piped.tpot_s == pytest.approx(7 * stage, rel=0.05)
    assert 1.0 < piped.tpot_s / whole.tpot_s < 7 / 4  # the KV cache is read once either way
