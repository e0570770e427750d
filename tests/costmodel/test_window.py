"""Sliding-window layers priced (costmodel.window, costmodel.iteration): the pairs and cached tokens a windowed layer
keeps, vLLM's hybrid KV cache layout, the serving KV capacity and decode price of a model with windowed layers, and
MXFP4 routed experts in the memory model and the decode price."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Plan
from llmsim.costmodel.iteration import IterationModel, Mix, iteration_time, kv_capacity, token_costs
from llmsim.costmodel.memory import memory_breakdown
from llmsim.costmodel.moe import MXFP4_BYTES_PER_WEIGHT
from llmsim.costmodel.window import KVLayout, causal_window_share, window_blocks, window_pairs
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG, a100_cluster

UNTIED = SharingChoice(tie_embeddings=False)


def _h100():
    return replace(a100_cluster(1, 1), device=CATALOG.device("h100-sxm"))


@pytest.mark.parametrize("queries,prefix,window", [(1, 0, 4), (10, 0, 4), (3, 2, 4), (7, 9, 4), (5, 0, None),
                                                   (64, 100, 128), (300, 0, 128), (1, 5000, 128)])
def test_window_pairs_count_each_querys_keys(queries: int, prefix: int, window: int | None) -> None:
    """Position i attends to min(i + 1, W) keys (Hugging Face's sliding_window: the query and W - 1 before it)."""
    brute = sum(min(i + 1, window) if window else i + 1 for i in range(prefix, prefix + queries))
    assert window_pairs(queries, prefix, window) == brute


def test_causal_share_is_one_up_to_the_window_and_about_2w_over_s_past_it() -> None:
    assert causal_window_share(64, 128) == 1.0 == causal_window_share(128, 128)
    share = causal_window_share(8192, 128)
    assert share == window_pairs(8192, 0, 128) / (8192 * 8193 / 2)
    assert 2 * 128 / 8192 * 0.99 < share < 2 * 128 / 8192


def test_vllm_keeps_window_plus_block_rounding_blocks_for_a_windowed_layer() -> None:
    """SlidingWindowManager.remove_skipped_blocks keeps cdiv(W - 1, B) + 1 blocks at most: 9 of 16 for W 128."""
    assert window_blocks(128, 16) == 9
    assert window_blocks(4096, 16) == 257
    gpt_oss = KVLayout.of(24, 12, 128)                       # 12 full + 12 sliding: one group each
    assert (gpt_oss.full_groups, gpt_oss.window_groups, gpt_oss.group_layers) == (1, 1, 12)
    gemma3 = KVLayout.of(62, 52, 1024)                       # groups of the 10 full layers; 52 sliding pad to 6
    assert (gemma3.full_groups, gemma3.window_groups, gemma3.group_layers) == (1, 6, 10)
    assert gpt_oss.blocks_for(20_000, 16) == 1250 + 9
    assert gpt_oss.blocks_for(100, 16) == 7 + 7
    assert KVLayout().blocks_for(20_000, 16) == 1250


def _gpt_oss(seq_len: int = 4096, **model) -> Workload:
    spec = ModelSpec(preset="gpt-oss-20b", layers=4, seq_len=seq_len, **model)
    return Workload(model=spec, mode="decode", batch=1, decode_tokens=3)


def test_windowed_layers_free_the_serving_kv_cache() -> None:
    """Half the layers windowed at 128: a pool block is 16 tokens of 2 of the 4 layers, so the same leftover holds
    twice the blocks, and a 20k-token sequence needs its full layers' blocks plus 9 (module window)."""
    full, windowed = _gpt_oss(sliding_window=None, full_attention_every=None), _gpt_oss()
    caps = []
    for w in (full, windowed):
        profile = profile_workload(w, UNTIED)
        caps.append(kv_capacity(w, profile, UNTIED, Plan(), _h100(), token_costs(w, profile), 0.9, 16, 8192, 256))
    plain, hybrid = caps
    assert hybrid.bytes_per_token == plain.bytes_per_token          # every layer full, per token
    assert hybrid.kv_bytes == plain.kv_bytes
    assert hybrid.blocks in (2 * plain.blocks, 2 * plain.blocks + 1)
    assert hybrid.layout.blocks_for(20_000, 16) == 1250 + 9
    assert hybrid.tokens == (hybrid.blocks - 9) * 16 > 1.9 * plain.tokens


def test_the_trace_and_the_decode_price_cap_windowed_layers_at_the_window() -> None:
    """The windowed layers' K/V bytes and attention FLOPs stop at W: the traced per-token costs are every layer's
    full-context ones (token_costs undoes the caps exactly), and a long decode reads the windowed layers' last
    128 tokens only."""
    full, windowed = _gpt_oss(sliding_window=None, full_attention_every=None), _gpt_oss()
    pf, pw = profile_workload(full, UNTIED), profile_workload(windowed, UNTIED)
    cache_len = 4096 + 3
    assert pw.kv_cache_bytes == pf.kv_cache_bytes * (2 * cache_len + 2 * 128) / (4 * cache_len)
    share = causal_window_share(4096, 128)
    pre_full, pre_win = pf.flops("prefill", "attention"), pw.flops("prefill", "attention")
    assert pre_win == pytest.approx(pre_full * (2 + 2 * share) / 4, rel=1e-9)
    dec_full, dec_win = pf.flops("decode", "attention"), pw.flops("decode", "attention")
    assert dec_win == pytest.approx(dec_full * (2 * 4097.5 + 2 * 128) / (4 * 4097.5), rel=1e-9)
    cf, cw = token_costs(full, pf), token_costs(windowed, pw)
    assert cw.kv_bytes_per_token == pytest.approx(cf.kv_bytes_per_token, rel=1e-12)
    assert cw.attention_flops_per_pair == pytest.approx(cf.attention_flops_per_pair, rel=1e-12)
    assert (cw.window, cw.windowed_layers) == (128, 2)
    model_f = IterationModel(cf, full, Plan(), _h100())
    model_w = IterationModel(cw, windowed, Plan(), _h100())
    keys = 64 * 20_000
    long_f = iteration_time(model_f, Mix(decode_seqs=64, decode_keys=keys, rows=64))
    long_w = iteration_time(model_w, Mix(decode_seqs=64, decode_keys=keys, rows=64, window_keys=64 * 128))
    short = iteration_time(model_w, Mix(decode_seqs=64, decode_keys=64 * 128, rows=64, window_keys=64 * 128))
    assert long_w < long_f
    # the windowed half of the layers reads 128 keys: the attention time over `short` is the full layers' alone
    assert long_w - short == pytest.approx((long_f - iteration_time(
        model_f, Mix(decode_seqs=64, decode_keys=64 * 128, rows=64))) / 2, rel=0.02)


def test_mxfp4_experts_weigh_4_25_bits_in_memory_and_in_the_decode_price() -> None:
    """moe.expert_weight_dtype mxfp4: the routed experts' stored bytes drop from 2 to 4.25/8 a weight in the
    served replica's weights, and a weight-bound decode step reads them so (faster)."""
    bf16 = _gpt_oss(moe={"expert_weight_dtype": None})
    mx = _gpt_oss()
    assert mx.model.moe.expert_weight_dtype == "mxfp4" and bf16.model.moe.expert_weight_dtype is None
    pb, pm = profile_workload(bf16, UNTIED), profile_workload(mx, UNTIED)
    wb = memory_breakdown(bf16, pb, UNTIED, Plan(), stage=0).params
    wm = memory_breakdown(mx, pm, UNTIED, Plan(), stage=0).params
    assert MXFP4_BYTES_PER_WEIGHT == 4.25 / 8
    assert wb - wm == pytest.approx(pm.expert_params * (2 - 4.25 / 8), rel=1e-9)
    mix = Mix(decode_seqs=8, decode_keys=8 * 1000, rows=8, window_keys=8 * 128)
    tb = iteration_time(IterationModel(token_costs(bf16, pb), bf16, Plan(), _h100()), mix)
    tm = iteration_time(IterationModel(token_costs(mx, pm), mx, Plan(), _h100()), mix)
    assert tm < 0.6 * tb
    train = mx.model_copy(update={"mode": "train"})      # a training step keeps 16-bit experts
    assert memory_breakdown(train, profile_workload(train, UNTIED), UNTIED, Plan(), stage=0).params > wm
