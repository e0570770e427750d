"""Placing strategies on a backend's world of devices."""

from __future__ import annotations

from llmsim.config import ModelSpec, Strategy, Workload
from llmsim.strategy import Layout, resolve_layout

WORKLOAD = Workload(model=ModelSpec(preset="gpt2-small"), batch=64)


def test_dp_omitted_fills_the_world() -> None:
    layout = resolve_layout(Strategy(name="t", tp=4, pp=2), WORKLOAD, 32, "roofline")
    assert isinstance(layout, Layout)
    assert (layout.dp, layout.world, layout.microbatches) == (4, 32, 16)


def test_dp_omitted_on_a_real_backend_means_one_replica() -> None:
    layout = resolve_layout(Strategy(name="t", tp=2), WORKLOAD, None, "cpu")
    assert isinstance(layout, Layout) and layout.dp == 1 and layout.world == 2


def test_world_mismatch_names_the_product() -> None:
    problem = resolve_layout(Strategy(name="t", dp=2, tp=2), WORKLOAD, 8, "roofline")
    assert problem == ("dp", "dp*tp*pp*cp = 2*2*1*1 = 4 but backend 'roofline' has 8 devices (omit dp to fill "
                             "the world)")


def test_batch_must_split_into_micro_batches() -> None:
    problem = resolve_layout(Strategy(name="t", dp=3), WORKLOAD, None, "cpu")
    # dp=3 does not divide batch 64: dp is the degree to change (micro_batch 1 is not the cause)
    assert problem is not None and problem[0] == "dp" and "3 does not divide batch=64" in problem[1]
    problem = resolve_layout(Strategy(name="t", dp=2, micro_batch=3), WORKLOAD, None, "cpu")
    assert problem == ("micro_batch", "3 does not divide the batch=64 / dp=2 = 32 sequences of a replica; "
                                      "allowed: 1, 2, 4, 8, 16, 32")


def test_interleaved_needs_microbatches_multiple_of_pp() -> None:
    workload = Workload(model=ModelSpec(preset="gpt2-small"), batch=6)
    strategy = Strategy(name="t", pp=4, schedule="interleaved", virtual_stages=3)
    problem = resolve_layout(strategy, workload, None, "cpu")
    assert problem is not None and problem[0] == "schedule"
