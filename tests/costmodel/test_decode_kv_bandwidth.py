"""A decode step's attention kernel streams the KV cache at its own measured bandwidth (Efficiency.decode_kv_memory).

TensorRT-LLM's Skip Softmax Attention blog ("Decode Baseline", seqlen 16k) measures its decode kernels at H200 BF16
4.31, FP8 4.03 TB/s (XQA; the H100 SXM takes the same fractions, an estimate) and B200 BF16 7.08 TB/s
(trtllm-gen); a device without a measurement streams its cache as any copy (`memory`), so every other entry prices
as before.
"""

from __future__ import annotations

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan
from llmsim.costmodel.compute import device_rates
from llmsim.costmodel.efficiency import Efficiency
from llmsim.costmodel.iteration import IterationModel, Mix, iteration_times, token_costs
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import CATALOG, a100_cluster

UNTIED = SharingChoice(tie_embeddings=False)


def test_the_decode_fractions_fall_back_to_the_stream_fraction() -> None:
    """An FP8 cache without its own figure takes the 16-bit decode figure, and that one `memory`."""
    plain = Efficiency(memory=0.8)
    assert plain.decode_kv_memory(False) == plain.decode_kv_memory(True) == 0.8
    sixteen = Efficiency(memory=0.8, decode_attention_memory=0.9)
    assert sixteen.decode_kv_memory(False) == sixteen.decode_kv_memory(True) == 0.9
    both = Efficiency(memory=0.8, decode_attention_memory=0.9, decode_attention_memory_float8=0.7)
    assert (both.decode_kv_memory(False), both.decode_kv_memory(True)) == (0.9, 0.7)


@pytest.mark.parametrize("hardware,bf16_tb_s,fp8_tb_s", [
    ("h200", 4.31, 4.03), ("h100-sxm", 4.31 * 3.35 / 4.8, 4.03 * 3.35 / 4.8),   # H100: the H200's fractions
    ("b200", 7.08, 7.08)])   # B200: no FP8 figure set (the two published ones disagree), the 16-bit one
def test_the_catalog_streams_a_decode_cache_at_the_measured_rate(hardware: str, bf16_tb_s: float,
                                                                 fp8_tb_s: float) -> None:
    """One TB of cache takes 1 / the blog's TB/s on the measured parts, to the catalog's three-digit rounding."""
    rates = device_rates(CATALOG.cluster(hardware, devices_per_node=1), "bfloat16")
    assert rates.decode_kv_time(1e12, kv_float8=False) == pytest.approx(1 / bf16_tb_s, rel=2e-3)
    assert rates.decode_kv_time(1e12, kv_float8=True) == pytest.approx(1 / fp8_tb_s, rel=2e-3)
    assert rates.decode_kv_time(0.0, kv_float8=True) == 0.0


def test_an_unmeasured_device_streams_its_decode_cache_as_any_copy() -> None:
    rates = device_rates(a100_cluster(1, 1), "bfloat16")
    assert rates.decode_kv_time(1e12, True) == rates.decode_kv_time(1e12, False) == rates.memory_time(1e12)


def _decode_step(hardware: str, kv_cache_dtype: str) -> tuple[float, float]:
    """(step seconds, the cache bytes it reads) of a memory-bound decode step: 64 sequences over 16k keys each,
    a 4-layer Llama 3 8B slice with a `kv_cache_dtype` cache on one `hardware` device."""
    w = Workload(model=ModelSpec(preset="llama3-8b", layers=4, seq_len=64), mode="decode", batch=1,
                 decode_tokens=3, dtype="bfloat16")
    costs = token_costs(w, profile_workload(w, UNTIED), kv_cache_dtype)
    model = IterationModel(costs, w, Plan(), CATALOG.cluster(hardware, devices_per_node=1), Options(attention="flash"))
    mix = sum((Mix.decode(16384) for _ in range(64)), Mix())
    return iteration_times(model, mix).step, mix.decode_keys * costs.kv_bytes_per_token


@pytest.mark.parametrize("hardware", ["h200", "h100-sxm"])
def test_an_fp8_cache_saves_less_than_half_the_decode_read(hardware: str) -> None:
    """Halving the cache bytes (FP8) saves their read at the 16-bit rate less the FP8 read at the slower FP8
    rate: the step difference is exactly bytes/bw x (1/f16 - 1/(2 f8)), the rest of the step unchanged."""
    sixteen, bytes16 = _decode_step(hardware, "auto")
    eight, bytes8 = _decode_step(hardware, "float8")
    assert bytes8 == pytest.approx(bytes16 / 2)
    device = CATALOG.device(hardware)
    eff, bw = device.efficiency, device.memory_bw_bytes_per_s
    saved = bytes16 / (bw * eff.decode_kv_memory(False)) - bytes8 / (bw * eff.decode_kv_memory(True))
    assert sixteen - eight == pytest.approx(saved, rel=1e-9)
    # the FP8 kernel's lower bandwidth is what keeps the saving below half the 16-bit read
    assert saved < 0.5 * bytes16 / (bw * eff.decode_kv_memory(False))


def test_the_memory_what_if_moves_the_decode_kernel_fractions_too() -> None:
    """The planner's memory knob (planner.whatif) scales every fraction a decode step's reads run at, so on a
    measured part the sensitivity still moves the cache reads."""
    from llmsim.planner.whatif import perturb_cluster
    node = CATALOG.cluster("h200", devices_per_node=1)
    eff = node.device.efficiency
    moved = perturb_cluster(node, "memory", 0.8).device.efficiency
    assert moved.memory == pytest.approx(0.8 * eff.memory)
    assert moved.decode_kv_memory(False) == pytest.approx(0.8 * eff.decode_kv_memory(False))
    assert moved.decode_kv_memory(True) == pytest.approx(0.8 * eff.decode_kv_memory(True))
