"""The plan the formulas read: degrees from a placed strategy, and the same step on one device."""

from __future__ import annotations

import dataclasses

from llmsim.config import Strategy
from llmsim.costmodel import Plan
from llmsim.strategy import Layout


def test_plan_of_copies_every_degree_from_the_layout_and_every_choice_from_the_strategy() -> None:
    strategy = Strategy(name="s", dp=3, tp=2, pp=4, cp=5, sp=True, zero=2, micro_batch=7, schedule="interleaved",
                        virtual_stages=6, recompute="selective", overlap_grad_reduce=False)
    # the layout's numbers differ from the strategy's on purpose: the placed ones win
    layout = Layout(dp=11, tp=13, pp=17, cp=19, micro_batch=23, microbatches=29)
    assert Plan.of(strategy, layout) == Plan(dp=11, tp=13, pp=17, cp=19, micro_batch=23, microbatches=29,
                                             virtual_stages=6, sp=True, zero=2, schedule="interleaved",
                                             recompute="selective", overlap_grad_reduce=False)


def test_the_single_device_plan_runs_every_micro_batch_of_the_global_batch_alone() -> None:
    """m*C in T = m*C/n: no parallelism, the same micro-batch size, dp times the micro-batches; the software
    choices that do not depend on parallelism (recompute, overlap) stay."""
    plan = Plan(dp=3, tp=2, pp=4, cp=5, micro_batch=7, microbatches=11, virtual_stages=6, sp=True, zero=3,
                schedule="interleaved", recompute="full", overlap_grad_reduce=False)
    assert plan.single_device() == Plan(dp=1, tp=1, pp=1, cp=1, micro_batch=7, microbatches=33, virtual_stages=1,
                                        sp=False, zero=0, schedule="1f1b", recompute="full",
                                        overlap_grad_reduce=False)
    assert plan.single_device().world == 1
    gpipe = dataclasses.replace(plan, schedule="gpipe")
    assert gpipe.single_device().schedule == "1f1b"


def test_world_and_chunks() -> None:
    plan = Plan(dp=3, tp=2, pp=4, cp=5, schedule="interleaved", virtual_stages=6)
    assert plan.world == 120 and plan.v == 6
    assert dataclasses.replace(plan, schedule="1f1b").v == 1


def test_plan_of_copies_the_communication_overlaps_and_leaves_p2p_to_the_schedule_when_unset() -> None:
    layout = Layout(dp=2, tp=2, pp=2, cp=1, micro_batch=1, microbatches=4)
    strategy = Strategy(name="s", tp=2, pp=2, sp=True, zero=1, schedule="interleaved", virtual_stages=2,
                        tp_comm_overlap=True, overlap_param_gather=True)
    plan = Plan.of(strategy, layout)
    assert (plan.tp_comm_overlap, plan.overlap_param_gather, plan.overlap_p2p) == (True, True, None)
    assert plan.p2p_overlapped  # Megatron-Core's default with a virtual pipeline
    assert not Plan.of(strategy.model_copy(update={"overlap_p2p": False}), layout).p2p_overlapped
    assert not Plan.of(strategy.model_copy(update={"schedule": "1f1b", "virtual_stages": 1}), layout).p2p_overlapped
    assert not Plan().p2p_overlapped


def test_the_single_device_plan_has_no_communication_to_overlap() -> None:
    plan = Plan(dp=2, tp=2, pp=2, sp=True, zero=1, schedule="interleaved", virtual_stages=2, tp_comm_overlap=True,
                overlap_param_gather=True, overlap_p2p=True)
    one = plan.single_device()
    assert (one.tp_comm_overlap, one.overlap_param_gather, one.p2p_overlapped) == (False, False, False)
