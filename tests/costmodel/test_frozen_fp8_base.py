"""A LoRA base kept in FP8 only (`fp8: {frozen_weights: float8}`: Transformer Engine fp8_model_init, NeMo
fp8_params): the frozen layer GEMM weights cost their FP8 copies (1 byte each per copy: 2 copies on Hopper,
1 on Blackwell under per-tensor recipes) and no bf16 weight, and are never cast. Hand-computed sizes."""

from __future__ import annotations

import pytest

from llmsim.config import LoraSpec, ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Options, Plan
from llmsim.costmodel import precision
from llmsim.costmodel.compute import device_rates, phase_times
from llmsim.costmodel.memory import memory_breakdown
from llmsim.hardware import load_catalog
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import Device

H, FFN, VOCAB, LAYERS = 64, 128, 256, 2
SPEC = dict(layers=LAYERS, hidden=H, heads=4, ffn_hidden=FFN, vocab=VOCAB, seq_len=32, activation="swiglu",
            norm="rmsnorm", positions="rotary", bias=False)
LORA = SharingChoice(tie_embeddings=False, lora=LoraSpec(rank=4, targets=("q", "k", "v", "o")))
GEMM_PER_LAYER = 4 * H * H + 3 * H * FFN      # q, k, v, o + gate, up, down (no GQA, no bias)
EMBED_HEAD_NORMS = 2 * VOCAB * H + LAYERS * 2 * H + H
ADAPTERS = LAYERS * 4 * 4 * (H + H)           # 4 projections x rank 4 x (in + out)
PLAN = Plan(micro_batch=1, microbatches=2)


def _workload(frozen: str) -> Workload:
    return Workload(model=ModelSpec(**SPEC), mode="train", batch=2, dtype="float8",
                    fp8={"recipe": "delayed", "frozen_weights": frozen})


@pytest.mark.parametrize("any_layout,copies", [(False, 2), (True, 1)])
def test_frozen_fp8_base_holds_only_the_fp8_copies_of_its_gemm_weights(any_layout: bool, copies: int) -> None:
    device = Device(peak_flops={"bfloat16": 1e15, "float8": 2e15}, fp8_gemm_any_layout=any_layout)
    bf16_base, fp8_base = (_workload(f) for f in ("bfloat16", "float8"))
    profile = profile_workload(bf16_base, LORA)
    assert profile.params == LAYERS * GEMM_PER_LAYER + EMBED_HEAD_NORMS + ADAPTERS
    gemm = LAYERS * GEMM_PER_LAYER
    before = memory_breakdown(bf16_base, profile, LORA, PLAN, device=device).params
    after = memory_breakdown(fp8_base, profile_workload(fp8_base, LORA), LORA, PLAN, device=device).params
    # bf16 base: every parameter at 2 bytes plus the FP8 copies of the GEMM weights
    assert before == pytest.approx(2 * profile.params + copies * gemm, rel=1e-12)
    # FP8 base: the GEMM weights at `copies` bytes, the rest (embedding, head, norms, adapters) at 2
    assert after == pytest.approx(2 * (profile.params - gemm) + copies * gemm, rel=1e-12)


def test_full_training_ignores_frozen_weights() -> None:
    full = SharingChoice(tie_embeddings=False)
    bf16_base, fp8_base = (_workload(f) for f in ("bfloat16", "float8"))
    assert (memory_breakdown(bf16_base, profile_workload(bf16_base, full), full, PLAN).params
            == memory_breakdown(fp8_base, profile_workload(fp8_base, full), full, PLAN).params)


def test_a_frozen_fp8_base_is_never_cast_to_fp8() -> None:
    """The per-step cast of the weights (read 2, write the copies; precision.weight_cast_bytes) is gone: the
    forward's memory-bound time drops by exactly its share of one micro-batch."""
    cluster = load_catalog().cluster("h100-sxm", nodes=1, devices_per_node=1)
    rates = device_rates(cluster, "float8")
    forward = {}
    for frozen in ("bfloat16", "float8"):
        w = _workload(frozen)
        forward[frozen] = phase_times(profile_workload(w, LORA), w, PLAN, Options(), rates, "forward", "layers",
                                      LAYERS)
    cast = precision.weight_cast_bytes(_workload("float8"), PLAN, False)
    assert cast == GEMM_PER_LAYER * (2 + 2 * 1)  # read bf16, write the row-wise and transposed FP8 copies
    assert forward["bfloat16"].other - forward["float8"].other == pytest.approx(
        rates.memory_time(cast / PLAN.microbatches), rel=1e-9)
    assert forward["bfloat16"].matmul == forward["float8"].matmul
