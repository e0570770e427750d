"""The host time to launch a forward pass eagerly from Python, and the time of a pass that is launched so.

An engine that does not replay a pass from a captured CUDA graph launches every kernel of it from Python:
vLLM V0 runs only decode through its graphs (vllm/worker/model_runner.py, `ModelRunner.execute_model`: the
graph runner only when `prefill_meta is None`), so every pass that holds a prompt is eager; the sarathi-serve
code base (microsoft/sarathi-serve@02d2567e) captures no graph at all. Each launch costs the host the Python
module code around it, the dispatcher and the driver's launch call. The host runs ahead of the GPU (launches are
asynchronous), so the GPU waits only where the host launches more slowly than the GPU runs: an eager pass takes
max(device time, host launch time) (`eager_pass_seconds`), a graph replay its device time.

The host time is counted per launched kernel (`eager_launch_seconds`): the device entry's `eager_launch_s` (host
seconds per kernel, its source in the catalog) times the kernels the pass launches on one rank's host
(`pass_launches`): every layer's fused kernels (compute.KERNELS_PER_LAYER_FORWARD, and an engine policy's own
beyond them: Mix.layer_kernels), the KV-cache write the attention backends launch apart from the attention kernel
(KV_WRITE_KERNELS), one kernel per tensor-parallel collective (vLLM's custom all-reduce), the embedding and the
LM head. This is the count the GPU-side fixed time per kernel (Efficiency.kernel_latency_s) is priced over, plus
the cache write and the collectives; the two constants are not the same time: kernel_latency_s is what a kernel
takes on the GPU beyond its bytes (it holds with CUDA graphs too), eager_launch_s what its launch takes on the
host, and only the larger of the two sums bounds an eager pass.

Pure and torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmsim.costmodel.compute import KERNELS_EMBED, KERNELS_HEAD, KERNELS_PER_LAYER_FORWARD
from llmsim.costmodel.iteration import inference_microbatches
from llmsim.costmodel.work import tp_collectives_per_layer

if TYPE_CHECKING:
    from llmsim.costmodel.iteration import IterationModel, Mix

# vLLM's attention backends write the new tokens' K and V into the paged cache with a kernel of their own before
# the attention kernel (vllm/attention/backends/flash_attn.py: `reshape_and_cache_flash`, then
# `flash_attn_varlen_func`; csrc/cache_kernels.cu), which KERNELS_PER_LAYER_FORWARD's 9 leave out (their GPU
# time is priced as the attention's bytes).
KV_WRITE_KERNELS = 1

# Where a serving engine runs its passes eagerly (serving.scheduler.eager): "none" = every pass replays a captured
# graph; "prompt" = the passes that hold a prompt (chunk) run eagerly, pure-decode passes replay graphs (vLLM V0);
# "all" = every pass is eager (no CUDA graphs: the sarathi-serve code base, vLLM's --enforce-eager).
EAGER_PASSES = ("none", "prompt", "all")


def layer_launches(layer_kernels: float, tp: int, tp_collectives: int) -> float:
    """Kernels one layer launches on one rank's host in one pass: the fused layer's (KERNELS_PER_LAYER_FORWARD),
    an engine's own beyond them (`layer_kernels`, Mix.layer_kernels), the KV-cache write (KV_WRITE_KERNELS) and,
    at tp > 1, one per tensor-parallel collective (`tp_collectives`, work.tp_collectives_per_layer)."""
    return KERNELS_PER_LAYER_FORWARD + layer_kernels + KV_WRITE_KERNELS + (tp_collectives if tp > 1 else 0)


def pass_launches(model: "IterationModel", mix: "Mix") -> float:
    """Kernels the busiest pipeline stage's host launches for one pass of `mix`: its layers' (`layer_launches`, with
    a served LoRA's Punica kernels: TokenCosts.adapter_layer_kernels),
    plus the embedding (KERNELS_EMBED, and its all-reduce at tp > 1) on the first stage and the LM head
    (KERNELS_HEAD, and an engine's own sampler kernels, Mix.pass_kernels) on the last, once per micro-batch
    (costmodel.iteration.inference_microbatches). Each rank's host launches its own kernels, in parallel with the
    other ranks' (one worker process per GPU), so the count is per rank, not per replica."""
    plan = model.plan
    per_layer = layer_launches(mix.layer_kernels + model.costs.adapter_layer_kernels, plan.tp,
                               tp_collectives_per_layer(model.workload.model))
    stages = model.stage_layers
    busiest = 0.0
    for i, layers in enumerate(stages):
        kernels = layers * per_layer
        if i == 0:
            kernels += KERNELS_EMBED + (1 if plan.tp > 1 else 0)
        if i == len(stages) - 1:
            kernels += KERNELS_HEAD + mix.pass_kernels
        busiest = max(busiest, kernels)
    return busiest * inference_microbatches(plan, max(1, round(mix.rows)))


def eager_launch_seconds(kernels: float, per_kernel_s: float) -> float:
    """Host seconds to launch `kernels` kernels eagerly at `per_kernel_s` host seconds each (the device entry's
    eager_launch_s)."""
    return kernels * per_kernel_s


def eager_pass_seconds(device_s: float, host_s: float) -> float:
    """Seconds of an eagerly launched pass whose kernels take `device_s` on the GPU and `host_s` to launch: the
    host runs ahead asynchronously, so the GPU waits only when the host is slower (max of the two)."""
    return max(device_s, host_s)


def runs_eagerly(eager: str, mix: "Mix") -> bool:
    """Whether an engine whose eager passes are `eager` (EAGER_PASSES) launches the pass of `mix` eagerly: every
    pass ("all"), the passes that compute prompt tokens ("prompt"), or none ("none")."""
    if eager == "all":
        return True
    if eager == "prompt":
        return mix.prefill_tokens > 0
    return False


def priced_pass_seconds(model: "IterationModel", mix: "Mix", device_s: float, eager: str,
                        per_kernel_s: float) -> float:
    """The seconds of one pass of `mix` whose device time is `device_s`, in an engine whose eager passes are
    `eager`, on a host that launches a kernel in `per_kernel_s`: max(device, host launch) for an eager pass
    (`eager_pass_seconds`), the device time for a graph replay (or where per_kernel_s is 0: not modeled)."""
    if per_kernel_s <= 0 or not runs_eagerly(eager, mix):
        return device_s
    return eager_pass_seconds(device_s, eager_launch_seconds(pass_launches(model, mix), per_kernel_s))
