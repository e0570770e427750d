"""Uneven pipeline stages in the cost model (issue 14 item 9): each stage prices its own layers, the slowest
sets the pace and the bubble, memory is read on the heaviest stage; the simulation plays each stage's own
time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmsim.config import SharingChoice
from llmsim.costmodel import Options, Plan, estimate, memory_breakdown
from llmsim.costmodel.memory import activation_bytes_per_layer, memory_stages, stage_params
from llmsim.costmodel.pipeline import bubble_fraction
from llmsim.costmodel.step import _per_microbatch, price
from llmsim.costmodel.work import forward_work, train_work
from llmsim.sim.simulate import placement_of, simulate
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import a100_cluster, gpt2

TIED = SharingChoice(True)
WORKLOAD = gpt2(batch=16, layers=12)
CLUSTER = a100_cluster()


def _profile():
    return profile_workload(WORKLOAD, TIED)


def _plan(split: tuple[int, ...] | None, **kw) -> Plan:
    return Plan(pp=4, dp=2, microbatches=8, stage_layers=split, **kw)


def test_each_stage_holds_its_own_layers() -> None:
    work = train_work(WORKLOAD, _profile(), TIED, _plan((1, 5, 4, 2)), CLUSTER)
    assert [st.layers for st in work.stages] == [1, 5, 4, 2]
    even = train_work(WORKLOAD, _profile(), TIED, _plan(None), CLUSTER)
    assert [st.layers for st in even.stages] == [3, 3, 3, 3]
    # one layer costs the same wherever it runs
    assert work.stages[1].fwd_layer_s == even.stages[1].fwd_layer_s
    assert work.stages[1].fwd_layer_s == pytest.approx(even.stages[0].fwd_layer_s, rel=1e-12)
    # a stage's gradient and parameter bytes are its own layers'
    assert work.grad_bytes(work.stages[1]) == pytest.approx(5 / 3 * even.grad_bytes(even.stages[1]), rel=1e-12)


def test_a_stated_split_that_is_the_default_prices_like_the_default() -> None:
    stated = estimate(WORKLOAD, _profile(), TIED, _plan((3, 3, 3, 3)), CLUSTER)
    default = estimate(WORKLOAD, _profile(), TIED, _plan(None), CLUSTER)
    assert stated.step_time_s == default.step_time_s and stated.memory == default.memory


def _pipelined(work, plan) -> list[float]:
    return [plan.microbatches * sum(_per_microbatch(work, st, CLUSTER.fabric)[:2]) + st.accumulate_s
            for st in work.stages]


def test_the_slowest_stage_sets_the_pace_and_the_others_the_bubble() -> None:
    """(2, 8, 1, 1): the 8-layer stage is the slowest and busiest (GPT-2's LM head on the last stage costs
    fewer than 7 layers); the step is its busy time plus one pass of each other stage's time per micro-batch
    (a flow shop of identical jobs); with equal stages that is (p-1) of a stage's (Narayanan et al. 2021)."""
    profile = _profile()
    plan = _plan((2, 8, 1, 1))
    work = train_work(WORKLOAD, profile, TIED, plan, CLUSTER)
    t = price(work, CLUSTER.fabric)
    assert t.critical_stage == 1
    stage = _pipelined(work, plan)
    assert max(stage) == stage[1]
    assert t.bubble == pytest.approx((stage[0] + stage[2] + stage[3]) / plan.microbatches, rel=1e-12)
    assert t.bubble < (plan.pp - 1) * stage[1] / plan.microbatches  # the slowest stage's pace overestimates it
    # moving a layer from the slowest stage onto a light one makes the step shorter
    better = price(train_work(WORKLOAD, profile, TIED, _plan((3, 7, 1, 1)), CLUSTER), CLUSTER.fabric)
    assert better.step < t.step and better.critical_stage == 1


def test_equal_stages_have_narayanan_s_bubble() -> None:
    profile = _profile()
    for schedule, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 3)):
        plan = _plan(None, schedule=schedule, virtual_stages=v)
        work = train_work(WORKLOAD, profile, TIED, plan, CLUSTER)
        work = replace(work, stages=(work.stages[1],) * plan.pp)  # four middle stages: alike
        t = price(work, CLUSTER.fabric)
        stage = _pipelined(work, plan)[0]
        assert t.bubble == pytest.approx(bubble_fraction(schedule, plan.pp, plan.microbatches, v) * stage,
                                         rel=1e-12)


@pytest.mark.parametrize("split", [None, (1, 1, 1, 9), (4, 2, 2, 4), (2, 4, 4, 2)])
def test_the_roofline_follows_the_simulation_on_uneven_stages(split) -> None:
    """The flow-shop bubble against the cluster simulation, which plays every stage's own time (docs/costmodel.md
    quotes the figures): within 3% where the slowest stage is not the first."""
    profile = _profile()
    plan = _plan(split)
    work = train_work(WORKLOAD, profile, TIED, plan, CLUSTER)
    simulated = simulate(work, placement_of(plan, CLUSTER), CLUSTER.fabric).step_s
    assert price(work, CLUSTER.fabric).step == pytest.approx(simulated, rel=0.03)


def test_a_lighter_last_stage_balances_the_lm_head() -> None:
    """GPT-2's LM head (vocabulary 50257) costs several layers: taking layers off the last stage shortens
    the step (Megatron-LM's decoder_last_pipeline_num_layers)."""
    profile = _profile()
    even = estimate(WORKLOAD, profile, TIED, _plan(None), CLUSTER)
    lighter = estimate(WORKLOAD, profile, TIED, _plan((4, 4, 3, 1)), CLUSTER)
    assert even.critical_stage == 3
    assert lighter.step_time_s < even.step_time_s


def test_the_critical_stage_is_the_one_that_finishes_last() -> None:
    """A stage whose optimizer is heavy becomes critical: its busy time plus the fill and drain through the
    other stages is the step; the breakdown is its own."""
    profile = _profile()
    plan = _plan((2, 8, 1, 1))
    work = train_work(WORKLOAD, profile, TIED, plan, CLUSTER)
    heavy_optimizer = replace(work.stages[0], optimizer_s=1.0)  # the first stage: busiest, not slowest
    work = replace(work, stages=(heavy_optimizer,) + work.stages[1:])
    t = price(work, CLUSTER.fabric)
    assert t.critical_stage == 0 and t.other == 1.0
    stage = _pipelined(work, plan)
    assert t.bubble == pytest.approx((sum(stage) - stage[0]) / plan.microbatches, rel=1e-12)


def test_memory_is_read_on_the_heaviest_stage_among_all_of_them() -> None:
    """A middle stage holding most layers needs the most memory; the first and last are no longer enough."""
    profile = _profile()
    plan = _plan((1, 8, 2, 1))
    assert memory_stages(WORKLOAD, plan) == [0, 1, 2, 3]
    mem = memory_breakdown(WORKLOAD, profile, TIED, plan)
    every = [memory_breakdown(WORKLOAD, profile, TIED, plan, stage=i) for i in range(plan.pp)]
    assert mem.stage_index == 1 and mem.stage == "middle"
    assert mem.total == max(m.total for m in every)
    assert every[1].total > every[0].total and every[1].total > every[3].total
    # by hand: 8 blocks' parameters on stage 1, no embedding or head
    per_block = profile.layer_params / WORKLOAD.model.layers
    assert stage_params(WORKLOAD, profile, TIED, plan, 1) == (8 * per_block, 8 * per_block)
    assert every[1].params == pytest.approx(8 * per_block * 2)  # bfloat16
    # activations: 1F1B keeps p - 1 = 3 micro-batches in flight on stage 1, of its 8 layers each
    per_layer, working = activation_bytes_per_layer(WORKLOAD, TIED, plan, Options())
    assert working == 0.0 and every[1].activations == pytest.approx(3 * 8 * per_layer, rel=1e-12)


def test_memory_stages_cover_every_stage_they_skip() -> None:
    profile = _profile()
    for split in [(2, 3, 3, 4), (1, 4, 4, 3), (3, 3, 3, 3), (0, 5, 5, 2)]:
        for schedule in ("gpipe", "1f1b"):
            plan = _plan(split, schedule=schedule)
            mem = memory_breakdown(WORKLOAD, profile, TIED, plan)
            assert mem.total == max(memory_breakdown(WORKLOAD, profile, TIED, plan, stage=i).total
                                    for i in range(plan.pp))


def test_inference_splits_the_kv_cache_by_layers() -> None:
    prefill = gpt2(mode="prefill", batch=16, layers=12)
    profile = profile_workload(prefill, TIED)
    plan = _plan((2, 6, 2, 2))
    kv = [memory_breakdown(prefill, profile, TIED, plan, stage=i).kv_cache for i in range(4)]
    assert kv[1] == pytest.approx(profile.kv_cache_bytes * 6 / 12 / plan.dp, rel=1e-12)
    assert sum(kv) == pytest.approx(profile.kv_cache_bytes / plan.dp, rel=1e-12)
    work = forward_work(prefill, profile, plan, CLUSTER)
    assert [st.layers for st in work.stages] == [2, 6, 2, 2]


def test_an_embedding_only_first_stage_is_priced() -> None:
    profile = _profile()
    plan = _plan((0, 4, 4, 4))
    work = train_work(WORKLOAD, profile, TIED, plan, CLUSTER)
    assert work.stages[0].layers == 0 and work.stages[0].grad_bytes_layer == 0.0
    assert work.stages[0].embed_fwd_s > 0
    r = estimate(WORKLOAD, profile, TIED, plan, CLUSTER)
    assert r.step_time_s > 0
    z3 = estimate(WORKLOAD, profile, TIED, replace(plan, zero=3), CLUSTER)
    assert z3.step_time_s > 0


def test_the_simulation_plays_each_stage_s_own_time() -> None:
    """The cluster backend's engine: each stage's compute is its own layers' (and embedding/head), and the
    heaviest stage is the critical one."""
    profile = _profile()
    plan = _plan((1, 1, 1, 9))
    work = train_work(WORKLOAD, profile, TIED, plan, CLUSTER)
    out = simulate(work, placement_of(plan, CLUSTER), CLUSTER.fabric)
    assert out.critical_stage == 3
    for st, ledger in zip(work.stages, out.ledgers):
        per_mb = (st.layers * (st.fwd_layer_s + st.bwd_layer_s) + st.embed_fwd_s + st.embed_bwd_s
                  + st.head_fwd_s + st.head_bwd_s)
        assert ledger.compute_s == pytest.approx(plan.microbatches * per_mb + st.accumulate_s, rel=1e-9)
    even = simulate(train_work(WORKLOAD, profile, TIED, _plan(None), CLUSTER), placement_of(_plan(None), CLUSTER),
                    CLUSTER.fabric)
    assert out.step_s > even.step_s


def test_the_simulation_reduces_the_gradients_of_a_stage_without_layers() -> None:
    """An embedding-only first stage still reduces its embedding gradient over data parallel (and gathers it
    under ZeRO-3): its one unit is the embedding, which runs no layer."""
    profile = _profile()
    exposed = {}
    for dp in (1, 2):
        plan = replace(_plan((0, 4, 4, 4)), dp=dp, overlap_grad_reduce=False)
        work = train_work(WORKLOAD, profile, TIED, plan, CLUSTER)
        out = simulate(work, placement_of(plan, CLUSTER), CLUSTER.fabric)
        exposed[dp] = out.ledgers[0].comm_s
        st = work.stages[0]
        per_mb = st.embed_fwd_s + st.embed_bwd_s  # no layer time on the first stage
        assert out.ledgers[0].compute_s == pytest.approx(plan.microbatches * per_mb + st.accumulate_s, rel=1e-9)
    assert exposed[2] > exposed[1]
    plan = replace(_plan((0, 4, 4, 4)), zero=3)
    out = simulate(train_work(WORKLOAD, profile, TIED, plan, CLUSTER), placement_of(plan, CLUSTER), CLUSTER.fabric)
    assert out.ledgers[0].comm_s > 0
