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
    assert problem == ("dp", "dp*tp*pp*cp = 2*2*1*1 = 4 but backend 'roofline' has 8 devices (allowed: dp 4 (= 8 "
                             "/ tp*pp*cp), or omit dp to fill the world)")


def test_a_degree_that_does_not_fit_the_world_lists_the_values_that_fit_it_and_the_model() -> None:
    """tp 5 on 64 devices of a 40-head model: the values offered both divide the heads and fill the devices (trial
    48: the list offered 5, 10, 20 and 40, which the device count then refused)."""
    workload = Workload(model=ModelSpec(preset="gpt2-small", heads=40, hidden=1280), batch=64)
    problem = resolve_layout(Strategy(name="t", tp=5), workload, 64, "roofline")
    assert problem == ("tp", "tp*pp*cp=5 does not divide the 64 devices of backend 'roofline' (allowed: tp among "
                             "1, 2, 4, 8 with pp=1, cp=1; tp*pp*cp among 1, 2, 4, 8, 16, 32, 64, or more devices)")
    problem = resolve_layout(Strategy(name="t", dp=2, tp=5), workload, 64, "roofline")
    assert problem is not None and problem[1].endswith("(allowed: tp among 1, 2, 4, 8 with pp=1, cp=1; tp*pp*cp "
                                                       "among 1, 2, 4, 8, 16, 32, 64 and dp omitted)")


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
