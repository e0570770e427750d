"""The workload profile: what one step costs, read off the very module the real backends run.

One step of the workload is traced on the meta device (llmsim.workload.trace: FLOPs, bytes and op
counts of every aten op by (phase, region, kind), parameters, saved activations, KV cache) into a
`WorkloadProfile` (llmsim.workload.profile_data), the numbers the cost model prices. This module is the
entry point (`profile_workload`, cached per process) and the depth logic: a model deeper than
MAX_TRACED_LAYERS is traced with SCALE_FROM_LAYERS layers and scaled (`profile_at_depth`, exact for
identical layers). It imports torch only when it traces (`_trace`), so importing it, or holding a
profile, does not load torch.

Decode is traced for its first and its last generated token and the decode totals are the mean of
the two times the step count: every cost of one decode step is affine in the cache length, so this
is exact and keeps a 175B/64-token profile cheap.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict

from llmsim.config import SharingChoice, Workload
from llmsim.costmodel.scaling import with_layers
from llmsim.errors import ScenarioError
from llmsim.workload.profile_data import KINDS, REGIONS, OpTotals, WorkloadProfile

__all__ = ["KINDS", "REGIONS", "MAX_TRACED_LAYERS", "SCALE_FROM_LAYERS", "OpTotals", "WorkloadProfile",
           "profile_workload", "profile_at_depth"]

# Tracing builds and runs every layer on the meta device, milliseconds each: a model 10^8 layers deep would
# trace for days. Deeper than MAX_TRACED_LAYERS, a SCALE_FROM_LAYERS-layer slice is traced and scaled to the
# full depth (costmodel.scaling.with_layers: exact for identical layers, tests/costmodel/test_scaling.py),
# so any depth is profiled in the time of two layers. 256 is above every published dense model (GPT-3
# 175B: 96; Megatron-Turing NLG 530B: 105) and traces in about a second.
MAX_TRACED_LAYERS = 256
SCALE_FROM_LAYERS = 2


@functools.lru_cache(maxsize=256)
def profile_workload(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    """Trace one step of `workload` on the meta device. Cached: the same inputs give the same profile.

    A model deeper than MAX_TRACED_LAYERS is traced with SCALE_FROM_LAYERS layers and scaled to its depth,
    which is exact only when every layer is alike: with shared blocks (layer_groups) or LoRA (its first
    layer differs) such a depth is refused with a ScenarioError naming the key.
    """
    try:
        return _profile(workload, sharing)
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        spec = workload.model
        raise ScenarioError(None, "workload", f"a tensor of this step exceeds what torch can address (2^63 bytes): "
                                              f"batch={workload.batch}, seq_len={spec.seq_len}, hidden={spec.hidden}, "
                                              f"ffn_hidden={spec.ffn_hidden}, vocab={spec.vocab}; allowed: sizes whose "
                                              f"products (e.g. batch*seq_len*vocab logits) stay below 2^63 bytes "
                                              f"({exc})") from None


def _profile(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    layers = workload.model.layers
    if layers > MAX_TRACED_LAYERS:
        if sharing.layer_groups is not None or sharing.lora is not None:
            what = "sharing.layer_groups" if sharing.layer_groups is not None else "sharing.lora"
            raise ScenarioError(None, "workload.model.layers",
                                f"{layers} layers with {what} cannot be profiled; allowed: at most "
                                f"{MAX_TRACED_LAYERS} layers with {what}, any depth without it")
        return profile_at_depth(workload, sharing, layers)
    return _trace(workload, sharing)


def _short(workload: Workload, moe: bool | None) -> Workload:
    """The workload with SCALE_FROM_LAYERS layers, all dense (moe False), all MoE (True) or as written (None)."""
    update: dict[str, object] = {"layers": SCALE_FROM_LAYERS}
    if moe is False:
        update["moe"] = None
    elif moe is True:
        assert workload.model.moe is not None
        update["moe"] = workload.model.moe.model_copy(update={"layer_freq": 1, "first_dense_layers": 0})
    return workload.model_copy(update={"model": workload.model.model_copy(update=update)})


def profile_at_depth(workload: Workload, sharing: SharingChoice, layers: int) -> WorkloadProfile:
    """The profile of `workload` with `layers` layers (the file's MoE pattern applied to that depth) from
    SCALE_FROM_LAYERS-layer traces, without tracing every layer (costmodel.scaling.with_layers).

    Dense: one short trace, scaled. With MoE layers: a short all-dense and a short all-MoE trace, each scaled
    to its count of layers, added, and the embedding/head/optimizer edges (a 0-layer scaling) taken once:
    exact, since the layers of each kind are alike and every quantity is edges + per-layer sums."""
    spec = workload.model
    if spec.moe is None:
        return with_layers(_trace(_short(workload, None), sharing), layers)
    full = spec.model_copy(update={"layers": layers})
    n_moe = full.moe_layers
    n_dense = layers - n_moe
    moe_part = with_layers(_trace(_short(workload, True), sharing), n_moe)
    if n_dense == 0:
        return dataclasses.replace(moe_part, moe_layers=n_moe)
    dense_trace = _trace(_short(workload, False), sharing)
    dense_part, edges = with_layers(dense_trace, n_dense), with_layers(dense_trace, 0)
    summed = {f: getattr(moe_part, f) + getattr(dense_part, f) - getattr(edges, f) for f in _ADDITIVE}
    ops: dict[tuple[str, str, str], OpTotals] = defaultdict(OpTotals)
    for part, sign in ((moe_part, 1.0), (dense_part, 1.0), (edges, -1.0)):
        for key, totals in part.ops.items():
            ops[key].add(totals, sign)
    layer_activations = summed["activation_bytes"] - edges.activation_bytes
    return dataclasses.replace(moe_part, layers=layers, moe_layers=n_moe, ops=dict(ops),
                               activation_bytes_per_layer=layer_activations // layers, **summed)


# Fields of a profile that are sums of an edge part (embeddings, head, optimizer state) and per-layer parts.
_ADDITIVE = ("params", "trainable_params", "param_bytes", "trainable_param_bytes", "layer_params",
             "activation_bytes", "kv_cache_bytes", "expert_params", "active_params")


def _trace(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    """The traced profile of `workload` as written (every layer built and run on the meta device): torch and
    the tracer imported here, when a profile is first traced, not with this module."""
    from llmsim.workload.trace import trace_workload

    return trace_workload(workload, sharing)
