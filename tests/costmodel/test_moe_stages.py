"""Which MoE layers each pipeline stage holds (uneven splits, dense layers first, every k-th layer, interleaved
chunks), counted by hand, and what follows from it: the stage's expert parameters, expert time and
all-to-alls. And expert tensor parallelism's token all-gather and reduce-scatter (Megatron-Core's all-to-all
token dispatcher) in the step's work."""

from __future__ import annotations

import functools

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan, memory_breakdown
from llmsim.costmodel import moe
from llmsim.costmodel.memory import stage_expert_params, stage_memory_terms
from llmsim.costmodel.work import train_work
from llmsim.stages import stage_layer_ranges
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG

H100 = functools.partial(CATALOG.cluster, "h100-sxm", intra_node="nvlink4", inter_node="ib-ndr400x8")


def tiny(layers: int, first_dense: int = 0, freq: int = 1, shared: int = 0, batch: int = 8) -> Workload:
    model = ModelSpec(preset="tiny-moe", layers=layers, seq_len=64,
                      moe={"first_dense_layers": first_dense, "layer_freq": freq, "shared_experts": shared})
    return Workload(model=model, mode="train", batch=batch, dtype="bfloat16")


@functools.lru_cache(maxsize=16)
def _profile(w: Workload):
    return profile_workload(w, SharingChoice(tie_embeddings=w.model.tie_embeddings))


def _sharing(w: Workload) -> SharingChoice:
    return SharingChoice(tie_embeddings=w.model.tie_embeddings)


def test_stage_layer_ranges_follow_megatron_order() -> None:
    assert stage_layer_ranges((13, 16, 16, 16)) == ((range(0, 13),), (range(13, 29),), (range(29, 45),),
                                                    (range(45, 61),))
    # interleaved, 2 chunks of 2: chunk 0 of every stage before chunk 1
    assert stage_layer_ranges((4, 4), 2) == ((range(0, 2), range(4, 6)), (range(2, 4), range(6, 8)))


def test_deepseek_pattern_over_an_uneven_split_by_hand() -> None:
    """61 layers, the first 3 dense (DeepSeek-V3's first_k_dense_replace = 3), 58 MoE; pp 4 split 13, 16, 16, 16.
    Stage 0 holds layers 0-12: 3 dense and 10 MoE; the others 16 MoE each. A proportional share would give
    stage 0 13 x 58/61 = 12.4."""
    w = Workload(model=ModelSpec(preset="tiny-moe", layers=61, seq_len=64, moe={"first_dense_layers": 3}),
                 mode="train", batch=8, dtype="bfloat16")
    plan = Plan(pp=4, microbatches=8, stage_layers=(13, 16, 16, 16))
    assert w.model.moe_layers == 58
    assert moe.stage_moe_layers(w, plan) == (10, 16, 16, 16)
    assert moe.stage_moe_share(w, plan, 0) == pytest.approx(10 / 13)


def test_every_other_layer_and_interleaving_by_hand() -> None:
    # layer_freq 2: MoE layers 0, 2, 4, ..., 14; split 3, 5, 5, 3 -> {0, 2}, {4, 6}, {8, 10, 12}, {14}
    w = tiny(16, freq=2)
    assert moe.stage_moe_layers(w, Plan(pp=4, microbatches=4, stage_layers=(3, 5, 5, 3))) == (2, 2, 3, 1)
    # 8 layers, first 3 dense, pp 2 interleaved with 2 chunks: stage 0 holds {0, 1, 4, 5} (MoE: 4, 5),
    # stage 1 holds {2, 3, 6, 7} (MoE: 3, 6, 7)
    w = tiny(8, first_dense=3)
    plan = Plan(pp=2, microbatches=4, schedule="interleaved", virtual_stages=2)
    assert moe.stage_moe_layers(w, plan) == (2, 3)


def test_a_stage_of_dense_layers_holds_no_expert_and_runs_no_all_to_all() -> None:
    """8 layers, the first 4 dense, pp 2: stage 0 is all dense, stage 1 all MoE. Each stage's expert
    parameters, expert time and all-to-alls follow its own layers (the mean over the model, 4 MoE layers of 8,
    would give both stages half)."""
    w = tiny(8, first_dense=4)
    plan = Plan(dp=2, pp=2, microbatches=4, ep=2)
    cluster = H100(nodes=1, devices_per_node=4)
    prof = _profile(w)
    assert stage_expert_params(w, prof, plan, 0) == 0
    assert stage_expert_params(w, prof, plan, 1) == pytest.approx(prof.expert_params / 2)  # 1 of 2 experts each
    work = train_work(w, prof, _sharing(w), plan, cluster)
    first, last = work.stages
    assert [c for c in first.tp_fwd if c.op == "all-to-all"] == []
    [a2a] = [c for c in last.tp_fwd if c.op == "all-to-all"]
    assert a2a.size == moe.a2a_buffer_bytes(64, w.model.moe.top_k, w.model.hidden, 2)  # a whole MoE layer's
    # same dense part: the MoE stage's layers cost more by one MoE layer's experts
    assert last.fwd_layer_s > first.fwd_layer_s
    # the routed experts' saved tensors: one MoE layer's on each layer of stage 1, none on stage 0
    t0, t1 = (stage_memory_terms(w, prof, _sharing(w), plan, Options(), i) for i in (0, 1))
    assert t1.per_layer_activation - t0.per_layer_activation == pytest.approx(
        moe.expert_activation_bytes(w, plan, 1.0))
    assert t0.expert_params == 0 and memory_breakdown(w, prof, _sharing(w), plan, Options()).stage_index == 1


def _etp(comms) -> list:
    return [c for c in comms if c.group.size == 2 and c.op in ("all-gather", "reduce-scatter")]


def test_expert_tensor_parallel_gathers_and_scatters_the_routed_tokens() -> None:
    """tp 2 with sp, etp 2 (= tp), ep 2 of dp 2: per MoE layer and pass an all-gather and a reduce-scatter of
    etp x tokens x top_k x hidden x 2 bytes over the etp group, tokens = micro-batch x seq / tp = 32; the
    dense MLP's sequence-parallel pair is gone from the MoE layers (no shared experts), the attention's stays."""
    w = tiny(2)
    cluster = H100(nodes=1, devices_per_node=8)
    plan = Plan(dp=2, tp=2, sp=True, microbatches=4, ep=2, etp=2)
    st = train_work(w, _profile(w), _sharing(w), plan, cluster).stages[0]
    k, h = w.model.moe.top_k, w.model.hidden
    routed = 2 * 32 * k * h * 2
    assert moe.etp_token_bytes(32, k, h, 2, 2) == routed
    activation = 64 * h * 2
    for comms in (st.tp_fwd, st.tp_bwd):
        sizes = sorted((c.op, c.size, c.count) for c in comms if c.op in ("all-gather", "reduce-scatter"))
        assert sizes == sorted([("all-gather", activation, 1), ("reduce-scatter", activation, 1),
                                ("all-gather", routed, 1), ("reduce-scatter", routed, 1)])
    # etp 1: no expert-tensor-parallel collective, and still no MLP pair on the MoE layers
    st1 = train_work(w, _profile(w), _sharing(w), Plan(dp=2, tp=2, sp=True, microbatches=4, ep=2, etp=1),
                     cluster).stages[0]
    assert sorted((c.op, c.size, c.count) for c in st1.tp_fwd if c.op != "all-to-all") == sorted(
        [("all-gather", activation, 1), ("reduce-scatter", activation, 1)])


def test_shared_experts_keep_the_tensor_parallel_pair() -> None:
    w = tiny(2, shared=1)
    cluster = H100(nodes=1, devices_per_node=8)
    st = train_work(w, _profile(w), _sharing(w), Plan(dp=2, tp=2, sp=True, microbatches=4, ep=2, etp=2),
                    cluster).stages[0]
    activation = 64 * w.model.hidden * 2
    assert [(c.op, c.count) for c in st.tp_fwd if c.size == activation and c.op != "all-to-all"] == [("reduce-scatter", 2), ("all-gather", 2)]


def test_etp_costs_time_in_the_step() -> None:
    w = tiny(2)
    cluster = H100(nodes=1, devices_per_node=8)
    from llmsim.costmodel import estimate
    base = Plan(dp=4, tp=2, sp=True, microbatches=2, ep=2, etp=1)
    with_etp = Plan(dp=4, tp=2, sp=True, microbatches=2, ep=2, etp=2)
    a = estimate(w, _profile(w), _sharing(w), base, cluster)
    b = estimate(w, _profile(w), _sharing(w), with_etp, cluster)
    assert b.comm_time_s > a.comm_time_s


def test_the_cluster_simulation_plays_the_etp_collectives_and_the_stages_moe_layers() -> None:
    """The simulation runs the same StageWork: etp's collectives add communication there as in the roofline,
    and an uneven MoE pattern over the stages (stage 0 all dense) agrees with the roofline's step."""
    from llmsim.costmodel import estimate
    from llmsim.sim import simulate_case

    w = tiny(2, batch=16)
    cluster = H100(nodes=1, devices_per_node=8)
    base = Plan(dp=4, tp=2, sp=True, microbatches=2, ep=2, etp=1)
    one = simulate_case(w, _profile(w), _sharing(w), base, cluster)
    two = simulate_case(w, _profile(w), _sharing(w), Plan(dp=4, tp=2, sp=True, microbatches=2, ep=2, etp=2), cluster)
    assert two.times.comm > one.times.comm
    w = tiny(8, first_dense=4, batch=16)
    plan = Plan(dp=2, pp=2, microbatches=8, ep=2)
    cluster = H100(nodes=1, devices_per_node=4)
    roof = estimate(w, _profile(w), _sharing(w), plan, cluster)
    sim = simulate_case(w, _profile(w), _sharing(w), plan, cluster)
    assert sim.times.step == pytest.approx(roof.step_time_s, rel=0.1)


def test_each_stage_holds_the_parameters_of_its_own_dense_and_moe_layers() -> None:
    """8 layers, the first 3 dense with a wider dense MLP (ffn 256) than the experts (128), one shared expert;
    pp 2 split 3, 5 and 5, 3: each stage's block parameters (tp 1, ep 1) equal those of the module's blocks it
    holds, counted from the torch module itself."""
    from llmsim.costmodel.memory import stage_block_params
    from llmsim.workload.model import build_model

    model = ModelSpec(preset="tiny-moe", layers=8, seq_len=64, ffn_hidden=256,
                      moe={"first_dense_layers": 3, "expert_ffn_hidden": 128, "shared_experts": 1})
    w = Workload(model=model, mode="train", batch=8, dtype="bfloat16")
    module = build_model(model, tie_embeddings=False)
    per_block = [sum(p.numel() for p in module.blocks[i].parameters()) for i in range(8)]
    for split in ((3, 5), (5, 3), (1, 7)):
        plan = Plan(pp=2, microbatches=4, stage_layers=split)
        for index, layers in enumerate(stage_layer_ranges(split)):
            held = sum(per_block[i] for r in layers for i in r)
            params, _ = stage_block_params(w, _profile(w), _sharing(w), plan, index)
            assert params == pytest.approx(held, rel=1e-12), (split, index)
