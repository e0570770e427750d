"""costmodel.eager: an eagerly launched pass takes max(device time, host launch time); a graph replay its device
time; the kernels counted are the fused layer's, the KV-cache write, the tensor-parallel collectives, the embedding
and the head, per rank."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Plan
from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD
from llmsim.costmodel.eager import (KV_WRITE_KERNELS, eager_launch_seconds, eager_pass_seconds, layer_launches,
                                    pass_launches, priced_pass_seconds, runs_eagerly)
from llmsim.costmodel.iteration import IterationModel, Mix, iteration_times, token_costs
from llmsim.workload.profile import profile_workload
from tests.costmodel.helpers import a100_cluster

UNTIED = SharingChoice(tie_embeddings=False)


def _model(tp: int = 1, pp: int = 1, layers: int = 4) -> IterationModel:
    w = Workload(model=ModelSpec(preset="llama3-8b", layers=layers, seq_len=64), mode="decode", batch=1,
                 decode_tokens=3, dtype="bfloat16")
    return IterationModel(token_costs(w, profile_workload(w, UNTIED)), w, Plan(tp=tp, pp=pp), a100_cluster())


def test_an_eager_pass_waits_for_the_slower_of_the_device_and_the_host() -> None:
    assert eager_pass_seconds(0.028, 0.040) == 0.040       # host-bound: the GPU waits for the launches
    assert eager_pass_seconds(0.028, 0.020) == 0.028       # device-bound: the launches hide behind the GPU
    assert eager_launch_seconds(1000, 25e-6) == pytest.approx(0.025)


def test_which_passes_run_eagerly() -> None:
    prompt, decode = Mix.prefill(100), Mix.decode(300)
    mixed = prompt + decode
    assert [runs_eagerly("all", m) for m in (prompt, decode, mixed)] == [True, True, True]
    assert [runs_eagerly("prompt", m) for m in (prompt, decode, mixed)] == [True, False, True]
    assert [runs_eagerly("none", m) for m in (prompt, decode, mixed)] == [False, False, False]


def test_a_layer_launches_its_fused_kernels_the_cache_write_and_its_collectives() -> None:
    base = KERNELS_PER_LAYER_FORWARD + KV_WRITE_KERNELS
    assert layer_launches(0, 1, 2) == base                   # no collective at tp 1
    assert layer_launches(0, 4, 2) == base + 2               # vLLM's two all-reduces per layer
    assert layer_launches(3, 4, 2) == base + 5               # an engine's own kernels (Mix.layer_kernels)


@pytest.mark.parametrize("tp", [1, 4])
def test_a_pass_counts_every_layer_the_embedding_and_the_head_per_rank(tp: int) -> None:
    model = _model(tp=tp, layers=4)
    kernels = pass_launches(model, Mix.prefill(64))
    per_layer = layer_launches(0, tp, 2)
    assert kernels == 4 * per_layer + KERNELS_EMBED + KERNELS_HEAD + (1 if tp > 1 else 0)
    assert pass_launches(model, replace(Mix.prefill(64), pass_kernels=7)) == kernels + 7
    # a served LoRA's Punica kernels (TokenCosts.adapter_layer_kernels) are launched in every layer too
    lora = replace(model, costs=replace(model.costs, adapter_layer_kernels=12))
    assert pass_launches(lora, Mix.prefill(64)) == kernels + 4 * 12


def test_with_stages_the_busiest_stages_host_bounds_the_pass() -> None:
    """pp 2: each stage's host launches its own layers; the last holds the head, so it is the busiest."""
    model = _model(pp=2, layers=4)
    kernels = pass_launches(model, Mix.decode(64))
    assert kernels == 2 * layer_launches(0, 1, 2) + KERNELS_HEAD


def test_a_host_bound_eager_pass_costs_its_launches_a_device_bound_one_its_device_time() -> None:
    model = _model()
    mix = Mix.prefill(64)
    device = iteration_times(model, mix).step
    kernels = pass_launches(model, mix)
    slow_host = 10 * device / kernels                      # launching takes 10x the device time
    assert priced_pass_seconds(model, mix, device, "prompt", slow_host) == pytest.approx(10 * device)
    fast_host = 0.1 * device / kernels
    assert priced_pass_seconds(model, mix, device, "prompt", fast_host) == device


def test_a_graph_replay_and_an_unmodeled_host_keep_the_device_time() -> None:
    model = _model()
    decode = Mix.decode(64) + Mix.decode(64)
    device = iteration_times(model, decode).step
    slow = 1.0                                             # a second per kernel: any eager pass would show it
    assert priced_pass_seconds(model, decode, device, "prompt", slow) == device   # V0 replays decode graphs
    assert priced_pass_seconds(model, decode, device, "none", slow) == device
    assert priced_pass_seconds(model, Mix.prefill(64), device, "all", 0.0) == device  # 0 = not modeled
    assert priced_pass_seconds(model, decode, device, "all", slow) == pytest.approx(pass_launches(model, decode))
