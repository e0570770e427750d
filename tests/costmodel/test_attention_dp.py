"""Attention data parallelism in a serving replica (Strategy.attention_dp, costmodel.iteration.attention_dp_times):
each rank's own attention and dense work on tp / attention_dp devices, the routed experts of every rank's tokens on
the replica's tp x ep devices, the all-gather / reduce-scatter exchange, the slowest rank setting the step; and the
KV cache per rank from the memory model with the attention weights replicated."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Plan
from llmsim.costmodel.iteration import (IterationModel, Mix, _experts, attention_rank_plan, exchange_bytes,
                                       iteration_times, iteration_work, kv_capacity, token_costs)
from llmsim.costmodel.work import Comm
from llmsim.modeled_serving import reference_workload
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG, a100_cluster

UNTIED = SharingChoice(tie_embeddings=False)


@pytest.fixture(scope="module")
def tiny_mla():  # noqa: ANN201 - (reference workload, profile, costs, cluster)
    w = reference_workload(Workload(model=ModelSpec(preset="tiny-mla", seq_len=64), dtype="bfloat16"))
    profile = profile_workload(w, UNTIED)
    cluster = replace(a100_cluster(1, 4), device=CATALOG.device("h100-sxm"))
    return w, profile, token_costs(w, profile), cluster


def _decodes(n: int, keys: int) -> Mix:
    return sum((Mix.decode(keys) for _ in range(n)), Mix())


def test_the_rank_plan_is_the_replica_split_into_attention_dp_data_parallel_ranks() -> None:
    plan = Plan(tp=8, ep=8, etp=1, attention_dp=4)
    rank = attention_rank_plan(plan)
    assert (rank.tp, rank.dp, rank.ep, rank.etp, rank.attention_dp) == (2, 4, 8, 1, 1)
    assert rank.tp * rank.dp == plan.tp


def test_the_exchange_gathers_every_ranks_tokens_and_scatters_their_bf16_outputs() -> None:
    """Per MoE layer: the gathered buffer is all ranks' tokens x hidden at the dispatch element (1 byte for FP8),
    the reduce-scattered one the same tokens at 2 bytes (bfloat16 outputs)."""
    assert exchange_bytes(1000, 7168, 1) == (1000 * 7168 * 1, 1000 * 7168 * 2)
    assert exchange_bytes(3, 64, 2) == (3 * 64 * 2, 3 * 64 * 2)


def test_the_exchange_is_priced_as_an_all_gather_and_a_reduce_scatter_of_all_ranks_tokens(tiny_mla) -> None:
    w, _, costs, cluster = tiny_mla
    model = IterationModel(costs, w, Plan(tp=4, ep=4, etp=1, attention_dp=4), cluster)
    ranks = (_decodes(3, 40), _decodes(1, 40), Mix(), _decodes(2, 40))
    total = sum(ranks, Mix())
    share = model.stage_moe_shares[0]
    gathered, scattered = exchange_bytes(total.tokens, w.model.hidden, 2)
    seconds = _experts(model, total, model.rates, share)
    work = iteration_work(model.rank_model, ranks[0], (seconds, (
        Comm("all-gather", gathered * share, model.groups.tp),
        Comm("reduce-scatter", scattered * share, model.groups.tp))))
    comms = [c for c in work.stages[0].tp_fwd if c.op in ("all-gather", "reduce-scatter")]
    assert sorted((c.op, c.size) for c in comms) == [("all-gather", gathered * share),
                                                     ("reduce-scatter", scattered * share)]
    assert iteration_times(model, total, ranks).comm > 0


def test_an_unbalanced_assignment_is_slower_than_a_balanced_one_of_the_same_tokens(tiny_mla) -> None:
    """Same 64 decodes over 4 ranks: 16 each, or all on one rank. The experts and the exchange see the same tokens;
    the slowest rank's attention sets the step, so the unbalanced step is longer."""
    w, _, costs, cluster = tiny_mla
    model = IterationModel(costs, w, Plan(tp=4, ep=4, etp=1, attention_dp=4), cluster)
    balanced = (_decodes(16, 60),) * 4
    unbalanced = (_decodes(64, 60), Mix(), Mix(), Mix())
    total = _decodes(64, 60)
    fast = iteration_times(model, total, balanced).step
    slow = iteration_times(model, total, unbalanced).step
    assert slow > fast
    # a bare mix is taken as attention_dp equal shares
    assert iteration_times(model, total).step == pytest.approx(fast, rel=1e-9)


def test_the_slowest_rank_sets_the_step(tiny_mla) -> None:
    """A lockstep step is the maximum over the ranks: adding work to a lighter rank (still the lighter one) does
    not change the step beyond what the experts' extra tokens cost, while the heavy rank alone sets it."""
    w, _, costs, cluster = tiny_mla
    model = IterationModel(costs, w, Plan(tp=4, ep=4, etp=1, attention_dp=2), cluster)
    heavy, light = _decodes(20, 60), _decodes(2, 60)
    both = iteration_times(model, heavy + light, (heavy, light)).step
    swapped = iteration_times(model, heavy + light, (light, heavy)).step
    assert both == swapped


def test_without_attention_dp_nothing_changes(tiny_mla) -> None:
    """attention_dp 1 (the default) prices exactly what the plan without the key does, ranks or not."""
    w, _, costs, cluster = tiny_mla
    plain = IterationModel(costs, w, Plan(tp=4, ep=4, etp=1), cluster)
    keyed = IterationModel(costs, w, Plan(tp=4, ep=4, etp=1, attention_dp=1), cluster)
    mix = _decodes(8, 50) + Mix.prefill(30, 10)
    assert iteration_times(plain, mix) == iteration_times(keyed, mix)
    assert keyed.rank_model is keyed


def test_the_kv_cache_is_per_rank_with_the_attention_weights_replicated(tiny_mla) -> None:
    """A rank's device holds the attention and dense weights whole (tp / attention_dp = 1) and 1/ep of the
    experts: more weights than the tensor-parallel replica's, the same latent bytes per token (MLA's latent is
    whole on every rank either way), so fewer blocks; the blocks are what that device leaves, per rank."""
    w, profile, costs, cluster = tiny_mla
    tp_plan = Plan(tp=4, ep=4, etp=1)
    dp_plan = Plan(tp=4, ep=4, etp=1, attention_dp=4)
    tp = kv_capacity(w, profile, UNTIED, tp_plan, cluster, costs, 0.9, 16, 256, 32)
    dp = kv_capacity(w, profile, UNTIED, dp_plan, cluster, costs, 0.9, 16, 256, 32)
    assert dp.weights_bytes > tp.weights_bytes
    assert dp.bytes_per_token == tp.bytes_per_token
    assert dp.kv_bytes == pytest.approx(dp.device_bytes - dp.weights_bytes - dp.workspace_bytes)
    assert dp.blocks == math.floor(dp.kv_bytes / (dp.bytes_per_token * 16))
    assert dp.blocks < tp.blocks
    # the replicated part: everything but the routed experts, once whole instead of 1/4
    rank = kv_capacity(w, profile, UNTIED, attention_rank_plan(dp_plan), cluster, costs, 0.9, 16, 256, 32)
    assert rank.weights_bytes == dp.weights_bytes


@pytest.mark.parametrize("dtype, fp4, hardware, expected", [
    ("bfloat16", None, "b200", 2.0),
    ("float8", None, "h100-sxm", 1.0),                   # post-quant dispatch: FP8 inputs
    ("float4", {"recipe": "nvfp4"}, "b200", 4.5 / 8),     # NVFP4 inputs with their E4M3 scales
    ("float4", {"recipe": "nvfp4"}, "h100-sxm", 2.0),     # weight-only: the GEMMs take 16-bit activations
])
def test_the_dispatch_carries_the_experts_gemm_inputs(dtype: str, fp4, hardware: str, expected: float) -> None:  # noqa: ANN001
    from llmsim.costmodel.compute import workload_rates
    from llmsim.costmodel.iteration import dispatch_element_bytes
    w = Workload(model=ModelSpec(preset="tiny-mla", seq_len=64), dtype=dtype, **({"fp4": fp4} if fp4 else {}))
    rates = workload_rates(CATALOG.cluster(hardware, nodes=1, devices_per_node=1), w)
    assert dispatch_element_bytes(w, rates) == pytest.approx(expected)


def test_expert_parallelism_inside_the_tp_group_exchanges_no_tokens(tiny_mla) -> None:
    """Without attention data parallelism every tp rank holds the whole pass's tokens, so ep over those ranks
    adds no all-to-all: the iteration's collectives are the tp all-reduces of the same replica without ep
    (vLLM's use_all2all_kernels needs dp_size > 1; SGLang's StandardDispatcher moves no data). The experts'
    own time still changes with ep (whole experts on fewer ranks' weights)."""
    w, _, costs, cluster = tiny_mla
    mix = _decodes(6, 50) + Mix.prefill(30)
    with_ep = IterationModel(costs, w, Plan(tp=4, ep=4, etp=1), cluster)
    without = IterationModel(costs, w, Plan(tp=4, ep=1, etp=4), cluster)
    ops = {c.op for st in iteration_work(with_ep, mix).stages for c in st.tp_fwd}
    assert "all-to-all" not in ops
    assert [(c.op, c.size, c.count) for c in iteration_work(with_ep, mix).stages[0].tp_fwd] == \
        [(c.op, c.size, c.count) for c in iteration_work(without, mix).stages[0].tp_fwd]
    assert iteration_times(with_ep, mix).comm == pytest.approx(iteration_times(without, mix).comm, rel=1e-12)
