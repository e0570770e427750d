"""costmodel.eager: an eagerly launched pass takes max(device time, host launch time); a graph replay its device
time; the kernels counted are the fused layer's, the KV-cache write, the tensor-parallel collectives, the embedding
and the head, per rank."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Plan
from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD
from llmsim.costmodel.eager import (KV_WRITE_KERNELS, allreduce_rms_fusion_max_tokens, eager_launch_seconds,
                                    eager_pass_seconds, engine_iteration, engine_layer_kernels,
                                    fused_allreduce_rms_sites, layer_launches, pass_launches, priced_pass_seconds,
                                    runs_eagerly, sglang_dsv3_layer_launches, with_engine_kernels)
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


# ---------------------------------------------------------------- SGLang's model code (serving.scheduler.engine_kernels)

def _dsv3(layers: int = 4, dense: int = 1, tp: int = 8, dtype: str = "float8") -> IterationModel:
    """A DeepSeek-V3-shaped slice (MLA with q_lora 1536, MoE, the first `dense` layers dense) on H100s."""
    from llmsim.costmodel.cluster import ClusterSpec
    from tests.costmodel.helpers import CATALOG
    model = ModelSpec(preset="deepseek-v3", layers=layers, seq_len=64, moe={"first_dense_layers": dense})
    w = Workload(model=model, mode="decode", batch=1, decode_tokens=3, dtype=dtype)
    cluster = ClusterSpec(device=CATALOG.device("h100-sxm"), intra=CATALOG.link("nvlink4"),
                          inter=CATALOG.link("ib-ndr400x8"), nodes=1, devices_per_node=8)
    return IterationModel(token_costs(w, profile_workload(w, UNTIED)), w, Plan(tp=tp), cluster)


def test_sglang_launches_a_deepseek_v3_extend_layer_as_counted_by_hand() -> None:
    """DeepSeek-V3 (61 layers, 3 dense), tp 8, float8: SGLang 0.5.6.post1 on CUDA launches 19 kernels on the
    attention side and 12 in a MoE layer's MLP, 5 in a dense one's; SGLang 0.5.7 on ROCm 32, 5 and 6. Beyond the
    fused count (9 + the KV write + 2 all-reduces = 12) that is, averaged over the layers:"""
    spec = ModelSpec(preset="deepseek-v3")
    assert spec.layers == 61 and spec.moe is not None and spec.moe.first_dense_layers == 3
    cuda = 19 + (3 * 5 + 58 * 12) / 61
    rocm = 32 + (3 * 6 + 58 * 5) / 61
    assert sglang_dsv3_layer_launches(spec, False, 8, 1000) == pytest.approx(cuda)
    assert engine_layer_kernels("sglang", spec, "float8", 8, 1000, 1000) == pytest.approx(cuda - 12)
    assert engine_layer_kernels("sglang-rocm", spec, "float8", 8, 1000, 1000) == pytest.approx(rocm - 12)
    # above 2,048 tokens in the pass SGLang's flashinfer all-reduce + RMSNorm fusion is off: 2 kernels more
    assert engine_layer_kernels("sglang", spec, "float8", 8, 8000, 8000) == pytest.approx(cuda - 12 + 2)
    # at tp 1 there is no all-reduce: the fused count is 10; ROCm launches its two all-reduces no more
    assert engine_layer_kernels("sglang", spec, "float8", 1, 8000, 8000) == pytest.approx(cuda - 10)
    assert engine_layer_kernels("sglang-rocm", spec, "float8", 1, 100, 100) == pytest.approx(
        31 + (3 * 5 + 58 * 4) / 61 - 10)


def test_sglang_launches_an_nvfp4_deepseek_extend_layer_as_counted_by_hand() -> None:
    """ModelOpt's NVFP4 checkpoint on CUDA (SGLang 0.5.6.post1, modelopt_fp4, flashinfer_trtllm): a MoE layer's MLP
    10 (the FP8 path's 12 less the scales' transpose and the bias cast: fp4_quantize, the logits cast and one
    trtllm_fp4_block_scale_moe), a dense one's 5; the attention side 19 with every projection in NVFP4 (quant +
    GEMM, as FP8) or 14 with them 16-bit (fp4.layers mlp: one F.linear each, kv_b_proj called twice); an FP8 KV
    cache adds the write's two casts. Not counted on ROCm nor for mxfp4."""
    spec = ModelSpec(preset="deepseek-v3")
    moe = (3 * 5 + 58 * 10) / 61
    assert sglang_dsv3_layer_launches(spec, False, 8, 1000, "float4") == pytest.approx(19 + moe)
    assert sglang_dsv3_layer_launches(spec, False, 8, 1000, "float4", "mlp") == pytest.approx(14 + moe)
    assert sglang_dsv3_layer_launches(spec, False, 8, 1000, "float4", "mlp", "float8") == pytest.approx(16 + moe)
    assert sglang_dsv3_layer_launches(spec, False, 8, 1000, "float8", "all", "float8") == pytest.approx(
        21 + (3 * 5 + 58 * 12) / 61)
    assert engine_layer_kernels("sglang", spec, "float4", 8, 1000, 1000, "nvfp4", "mlp", "float8") == pytest.approx(
        16 + moe - 12)
    assert engine_layer_kernels("sglang", spec, "float4", 8, 8000, 8000, "nvfp4", "mlp") == pytest.approx(
        14 + 2 + moe - 12)
    assert engine_layer_kernels("sglang-rocm", spec, "float4", 8, 1000, 1000) == 0
    assert engine_layer_kernels("sglang", spec, "float4", 8, 1000, 1000, "mxfp4") == 0


def test_an_nvfp4_iteration_model_passes_its_fp4_layers_and_cache_dtype_to_the_count() -> None:
    """with_engine_kernels reads fp4.layers from the workload and the cache's dtype from the token costs."""
    from llmsim.costmodel.cluster import ClusterSpec
    from tests.costmodel.helpers import CATALOG
    model = ModelSpec(preset="deepseek-v3", layers=4, seq_len=64, moe={"first_dense_layers": 1})
    w = Workload(model=model, mode="decode", batch=1, decode_tokens=3, dtype="float4", fp4={"layers": "mlp"})
    cluster = ClusterSpec(device=CATALOG.device("b200"), intra=CATALOG.link("nvlink5"),
                          inter=CATALOG.link("ib-ndr400x8"), nodes=1, devices_per_node=8)
    for kv, write in (("auto", 0), ("float8", 2)):
        it = IterationModel(token_costs(w, profile_workload(w, UNTIED), kv), w, Plan(tp=8), cluster)
        mix = with_engine_kernels(it, Mix.prefill(64), "sglang")
        assert mix.layer_kernels == pytest.approx(14 + write + (5 + 3 * 10) / 4 - 12)


def test_sglang_kernels_only_in_a_deepseek_float8_extend_pass() -> None:
    spec = ModelSpec(preset="deepseek-v3")
    assert engine_layer_kernels("fused", spec, "float8", 8, 1000, 1000) == 0           # vLLM's model code
    assert engine_layer_kernels("sglang", spec, "float8", 8, 0, 64) == 0               # decode: not counted
    assert engine_layer_kernels("sglang", spec, "bfloat16", 8, 1000, 1000) == 0        # not the FP8 block path
    assert engine_layer_kernels("sglang", ModelSpec(preset="llama3-8b"), "float8", 8, 1000, 1000) == 0
    assert engine_layer_kernels("sglang", ModelSpec(preset="deepseek-v3", moe=None), "float8", 8, 1000, 1000) == 0


def test_an_eager_sglang_prefill_of_a_deepseek_shaped_model_waits_for_its_launches_by_hand() -> None:
    """4 layers (1 dense), tp 8, one 64-token prompt: per layer 19 + (5 + 3 x 12) / 4 = 29.25 launches, the pass
    4 x 29.25 + the embedding and its all-reduce + the head = 121; at 1 s a launch the host binds (121 s), at
    1 ns the device time does."""
    model = _dsv3()
    mix = with_engine_kernels(model, Mix.prefill(64), "sglang")
    assert mix.layer_kernels == pytest.approx(29.25 - 12)
    kernels = 4 * 29.25 + KERNELS_EMBED + 1 + KERNELS_HEAD
    assert pass_launches(model, mix) == pytest.approx(kernels) == pytest.approx(121)
    device = iteration_times(model, mix).step
    assert priced_pass_seconds(model, mix, device, "prompt", 1.0) == pytest.approx(121.0)
    assert priced_pass_seconds(model, mix, device, "prompt", 1e-9) == device
    # the same prompt in the fused engine's code: 12 a layer, 4 x 12 + 4 = 52 launches
    assert pass_launches(model, with_engine_kernels(model, Mix.prefill(64), "fused")) == 52
    # the GPU prices the extra kernels too, at the device's fixed time per kernel
    eff = model.cluster.device.efficiency
    assert eff is not None
    extra = iteration_times(model, mix).step - iteration_times(model, Mix.prefill(64)).step
    assert extra == pytest.approx(4 * (29.25 - 12) * eff.kernel_latency_s, rel=1e-6)
    # a decode step replays SGLang's graph of another path: unchanged
    assert with_engine_kernels(model, Mix.decode(64), "sglang") == Mix.decode(64)


# ---------------------------------------------------------------- decode batches past the captured graphs

def _decodes(seqs: int, keys: int = 64) -> Mix:
    """A pure-decode pass of `seqs` sequences of `keys` keys each."""
    return functools.reduce(lambda a, b: a + b, [Mix.decode(keys)] * seqs)


def test_a_decode_pass_past_the_largest_captured_graph_runs_eagerly() -> None:
    """serving.scheduler.graph_max_batch: a pure-decode pass of more sequences than the engine captured a graph for
    runs from Python (vLLM V0 `batch_size <= _BATCH_SIZES_TO_CAPTURE[-1]`, SGLang CudaGraphRunner.can_run); one of
    at most that many replays its graph; a pass with a prompt follows `eager` as before; None = no limit."""
    at, past = _decodes(256), _decodes(257)
    assert not runs_eagerly("prompt", at, 256) and runs_eagerly("prompt", past, 256)
    assert not runs_eagerly("none", at, 256) and runs_eagerly("none", past, 256)
    assert not runs_eagerly("none", past, None) and not runs_eagerly("none", past)
    assert not runs_eagerly("none", Mix.prefill(64) + _decodes(300), 256)   # not pure decode: `eager` decides
    assert runs_eagerly("prompt", Mix.prefill(64) + _decodes(300), 256)


def test_a_decode_pass_of_one_more_than_the_graph_costs_the_eager_price_one_at_it_the_graph_price() -> None:
    model = _model(tp=4)
    slow = 1.0                                             # a second per kernel: any eager pass would show it
    at, past = _decodes(8), _decodes(9)
    device_at, device_past = iteration_times(model, at).step, iteration_times(model, past).step
    assert priced_pass_seconds(model, at, device_at, "prompt", slow, 8) == device_at
    assert priced_pass_seconds(model, past, device_past, "prompt", slow, 8) == pytest.approx(
        eager_pass_seconds(device_past, eager_launch_seconds(pass_launches(model, past), slow)))
    assert priced_pass_seconds(model, past, device_past, "prompt", slow, 8) > 100 * device_past
    assert priced_pass_seconds(model, past, device_past, "prompt", slow) == device_past     # default: no limit
    assert priced_pass_seconds(model, past, device_past, "prompt", 0.0, 8) == device_past   # host not modeled


def _h200_model(tp: int, pp: int = 1, dtype: str = "bfloat16", attention_dp: int = 1, device: str = "h200",
                parallel_block: bool = False) -> IterationModel:
    """A 4-layer Llama-3-8B (hidden 4096) on one 8-GPU node of `device`."""
    from llmsim.costmodel import ClusterSpec
    from tests.costmodel.helpers import CATALOG
    w = Workload(model=ModelSpec(preset="llama3-8b", layers=4, seq_len=64, parallel_block=parallel_block),
                 mode="decode", batch=1, decode_tokens=3, dtype=dtype)
    cluster = ClusterSpec(device=CATALOG.device(device), intra=CATALOG.link("nvlink4"),
                          inter=CATALOG.link("ib-ndr400x8"), nodes=1, devices_per_node=8)
    return IterationModel(token_costs(w, profile_workload(w, UNTIED)), w,
                          Plan(tp=tp, pp=pp, attention_dp=attention_dp), cluster)


def test_the_allreduce_rms_fusion_limit_is_the_devices_bytes_over_a_tokens_hidden_state() -> None:
    """vLLM's FI_ALLREDUCE_FUSION_MAX_SIZE_MB for Hopper: tp 8 0.5 MiB, tp 4 2 MiB, tp 2 64 MiB, over hidden x 2 B."""
    from tests.costmodel.helpers import CATALOG
    h200, a100 = CATALOG.device("h200"), CATALOG.device("a100-80gb")
    assert allreduce_rms_fusion_max_tokens(h200, 8, 4096) == 64           # 524,288 / 8,192
    assert allreduce_rms_fusion_max_tokens(h200, 4, 4096) == 256
    assert allreduce_rms_fusion_max_tokens(h200, 2, 4096) == 8192
    assert allreduce_rms_fusion_max_tokens(h200, 16, 4096) == 0            # a tp size FlashInfer does not take
    assert allreduce_rms_fusion_max_tokens(a100, 8, 4096) == 0             # Ampere: vLLM does not enable it
    assert allreduce_rms_fusion_max_tokens(CATALOG.device("b200"), 8, 4096) == 128


def test_the_fusion_folds_each_allreduce_site_of_a_pass_within_the_limit() -> None:
    model = _h200_model(tp=8)
    assert fused_allreduce_rms_sites(model, 64) == 2                      # both all-reduces of a layer
    assert fused_allreduce_rms_sites(model, 65) == 0                      # past the fused graph's token range
    assert fused_allreduce_rms_sites(model, 0) == 0
    assert fused_allreduce_rms_sites(_h200_model(tp=8, parallel_block=True), 64) == 1   # one all-reduce a layer
    # where vLLM does not run it: no tensor parallelism, a pipeline, attention data parallelism, an fp32 model,
    # a device outside Hopper and Blackwell
    assert fused_allreduce_rms_sites(_h200_model(tp=1), 8) == 0
    assert fused_allreduce_rms_sites(_h200_model(tp=4, pp=2), 8) == 0
    assert fused_allreduce_rms_sites(_h200_model(tp=8, attention_dp=2), 8) == 0
    assert fused_allreduce_rms_sites(_h200_model(tp=8, dtype="float32"), 8) == 0
    assert fused_allreduce_rms_sites(_h200_model(tp=8, device="a100-80gb"), 8) == 0


def test_a_fused_pass_launches_two_kernels_fewer_a_layer_and_costs_that_much_less() -> None:
    """The fused kernel replaces the all-reduce and the norm after it: the device time drops by two kernels'
    fixed time a layer (the all-reduce itself is priced as before), and an eager pass launches two fewer."""
    model = _h200_model(tp=8)
    decode = Mix.decode(300) + Mix.decode(200)
    fused = with_engine_kernels(model, decode, "fused", fuse_allreduce_rms=True)
    assert fused.layer_kernels == -2
    assert with_engine_kernels(model, decode, "fused") is decode          # off: unchanged
    saved = iteration_times(model, decode).step - iteration_times(model, fused).step
    assert saved == pytest.approx(4 * 2 * model.cluster.device.efficiency.kernel_latency_s, rel=1e-6)
    assert pass_launches(model, decode) - pass_launches(model, fused) == 4 * 2
    big = Mix.prefill(1024)                                                # 8 MiB of hidden state: not fused
    assert with_engine_kernels(model, big, "fused", fuse_allreduce_rms=True) is big
    whole, ranks = engine_iteration(model, decode, "fused", True)
    assert (whole.layer_kernels, ranks) == (-2, ())
