"""The decode attention kernel's cache reads (Options.attention `trtllm-mmha`: costmodel.compute.decode_kv_reads).

TensorRT-LLM's masked multi-head attention generation kernel (before XQA) runs one thread block per (sequence,
query head), each reading its KV head's whole cache: a decode step of a grouped-query model reads the cache
heads / kv_heads times, where the flash-style kernels read it once. Its prefill is the fused kernel's, priced as
FlashAttention-2; a multi-head model (heads = kv_heads) prices the same under either kernel.
"""

from __future__ import annotations

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan
from llmsim.costmodel.compute import decode_kv_reads, device_rates, phase_times
from llmsim.costmodel.iteration import IterationModel, Mix, iteration_times, token_costs
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import a100_cluster

UNTIED = SharingChoice(tie_embeddings=False)
MMHA, FLASH = Options(attention="trtllm-mmha"), Options(attention="flash")


def _workload(kv_heads: int | None, seq_len: int = 64, batch: int = 1) -> Workload:
    """A 4-layer slice of Llama 3 8B (32 query heads of 128), with `kv_heads` KV heads (None: MHA)."""
    return Workload(model=ModelSpec(preset="llama3-8b", layers=4, seq_len=seq_len, kv_heads=kv_heads),
                    mode="decode", batch=batch, decode_tokens=3, dtype="bfloat16")


@pytest.mark.parametrize("kernel,heads,kv_heads,tp,reads", [
    ("flash", 64, 8, 1, 1.0), ("flash3", 64, 8, 2, 1.0), ("cudnn", 32, 8, 1, 1.0),
    ("trtllm-mmha", 64, 8, 1, 8.0), ("trtllm-mmha", 64, 8, 2, 8.0), ("trtllm-mmha", 64, 8, 8, 8.0),
    # tp 16 > 8 KV heads: a rank holds 4 query heads and one (replicated) KV head
    ("trtllm-mmha", 64, 8, 16, 4.0), ("trtllm-mmha", 40, 40, 1, 1.0), ("trtllm-mmha", 40, 40, 4, 1.0),
    ("trtllm-mmha", 32, 1, 4, 8.0)])
def test_decode_kv_reads_is_query_heads_per_kv_head_on_a_rank(kernel: str, heads: int, kv_heads: int, tp: int,
                                                              reads: float) -> None:
    assert decode_kv_reads(kernel, heads, kv_heads, tp) == reads


@pytest.mark.parametrize("kv_heads,tp", [(8, 1), (8, 2), (4, 1), (None, 1), (None, 2)])
def test_a_serving_decode_step_reads_the_cache_once_per_query_head(kv_heads: int | None, tp: int) -> None:
    """A decode step over a long cache (memory-bound attention) costs, under trtllm-mmha, the flash price plus
    (heads / kv_heads - 1) times the flash kernel's cache read, layer by layer: the KV bytes read times
    heads / kv_heads; a multi-head model (kv_heads = heads) and a prompt chunk price the same under both."""
    w = _workload(kv_heads)
    costs = token_costs(w, profile_workload(w, UNTIED))
    cluster = a100_cluster(1, 8)
    plan = Plan(tp=tp)
    flash = IterationModel(costs, w, plan, cluster, FLASH)
    mmha = IterationModel(costs, w, plan, cluster, MMHA)
    keys = 32768
    decode = sum((Mix.decode(keys) for _ in range(8)), Mix())
    spec = w.model
    kv = spec.kv_heads or spec.heads
    kv_read = costs.kv_bytes_per_token / costs.layers / min(tp, kv)      # one rank's K and V of a token, a layer
    flash_read = flash.rates.memory_time(decode.decode_keys * kv_read) * spec.layers
    # the read is the bound of the flash kernel's decode attention here (else the test proves nothing)
    assert flash_read > decode.decode_keys * costs.attention_flops_per_pair / tp / (
        flash.rates.sustained_flops * flash.attention_fraction)
    factor = spec.heads / kv
    extra = iteration_times(mmha, decode).step - iteration_times(flash, decode).step
    assert extra == pytest.approx((factor - 1) * flash_read, rel=1e-9, abs=1e-15)
    chunk = Mix.prefill(4096, 2048)
    assert iteration_times(mmha, chunk).step == pytest.approx(iteration_times(flash, chunk).step, rel=1e-12)


def test_an_inference_decode_pass_reads_the_cache_once_per_query_head() -> None:
    """The roofline's decode pass (compute.phase_times) counts the same factor: at a long cache (attention bound
    by the read) its attention time is the flash kernel's times heads / kv_heads (4: 32 heads over 8 KV heads),
    and a multi-head model's is the flash kernel's."""
    cluster = a100_cluster(1, 8)
    rates = device_rates(cluster, "bfloat16")
    plan = Plan(micro_batch=8)

    def attention(kv_heads: int | None, options: Options) -> float:
        w = _workload(kv_heads, seq_len=16384, batch=8)
        profile = profile_workload(w, UNTIED)
        return phase_times(profile, w, plan, options, rates, "decode", "layers", 1, steps=3).attention

    assert attention(8, MMHA) == pytest.approx(4 * attention(8, FLASH), rel=1e-12)
    assert attention(None, MMHA) == pytest.approx(attention(None, FLASH), rel=1e-12)


def test_the_kernels_prefill_is_flash_at_flash_attentions_fraction() -> None:
    """No measured fraction of its own: the catalog's FlashAttention-2 figures."""
    eff = a100_cluster(1, 1).device.efficiency
    assert eff.attention_fractions("trtllm-mmha") == eff.attention_fractions("flash")
