"""The workload profile: what one step costs, read off the very module the real backends run.

One step of the workload is traced on the meta device (llmsim.workload.trace: FLOPs, bytes and op
counts of every aten op by (phase, region, kind), parameters, saved activations, KV cache) into a
`WorkloadProfile` (llmsim.workload.profile_data), the numbers the cost model prices. This module is the
entry point and the one place of the depth logic:

* `profile_workload` (cached per process) traces every layer, up to MAX_TRACED_LAYERS; deeper, it is
  `profile_at_depth`;
* `profile_at_depth` is the profile at the workload's depth, traced short wherever that is exact: the
  planner (planner.profiling), the serving reference (modeled_serving.serving_profile) and models deeper
  than MAX_TRACED_LAYERS all take it.

It imports torch only when it traces (`_trace`), so importing it, or holding a profile, does not load torch.

Decode is traced for its first and its last generated token and the decode totals are the mean of
the two times the step count: every cost of one decode step is affine in the cache length, so this
is exact and keeps a 175B/64-token profile cheap.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from llmsim.config import SharingChoice, Workload
from llmsim.costmodel.scaling import with_layers
from llmsim.errors import ScenarioError
from llmsim.workload.profile_data import KINDS, REGIONS, OpTotals, WorkloadProfile

__all__ = ["KINDS", "REGIONS", "MAX_TRACED_LAYERS", "SCALE_FROM_LAYERS", "OpTotals", "WorkloadProfile",
           "profile_workload", "profile_at_depth", "slice_depths"]

# Tracing builds and runs every layer on the meta device, milliseconds each: a model 10^8 layers deep would
# trace for days. Deeper than MAX_TRACED_LAYERS, short slices are traced and scaled to the full depth
# (profile_at_depth: exact, tests/costmodel/test_scaling.py), so any depth is profiled in the time of a few
# layers. 256 is above every published dense model (GPT-3 175B: 96; Megatron-Turing NLG 530B: 105) and traces
# in about a second.
MAX_TRACED_LAYERS = 256
SCALE_FROM_LAYERS = 2


@functools.lru_cache(maxsize=256)
def profile_workload(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    """Trace one step of `workload` on the meta device, every layer. Cached: the same inputs give the same profile.

    A model deeper than MAX_TRACED_LAYERS is `profile_at_depth`'s: traced short and scaled to its depth where that
    is exact, refused with a ScenarioError naming the key where it is not (`slice_depths`)."""
    if workload.model.layers > MAX_TRACED_LAYERS:
        if slice_depths(workload, sharing) is None:
            raise ScenarioError(None, "workload.model.layers",
                                f"{workload.model.layers} layers with sharing.layer_groups and both dense and MoE "
                                f"layers cannot be profiled; allowed: at most {MAX_TRACED_LAYERS} layers with "
                                f"sharing.layer_groups and a mixed MoE pattern, any depth without either")
        return profile_at_depth(workload, sharing)
    return _traced(workload, sharing)


# -- the depth logic -------------------------------------------------------------------------------------------
# Every quantity of a profile (parameters, FLOPs, bytes, operator counts, saved activations, KV cache) is a sum
# of an edge part (embeddings, head, loss, the optimizer's per-step scalars) and one part per layer. Where every
# layer is alike, one SCALE_FROM_LAYERS-layer trace gives both (costmodel.scaling.with_layers). Where the first
# layers differ from the rest, two traces d and d+1 layers deep give them: the per-layer part is their difference
# and the first layers' own difference stays in the edges, so the profile is affine in the depth from d on
# (`_at`). They differ
#   * with LoRA in training: layer 0's input is the frozen embedding's output, which needs no gradient, so layer 0
#     saves less and its backward computes no input gradient for the frozen base (every later layer's input comes
#     from LoRA adapters and does);
#   * with cross-layer sharing (layer_groups = k): the k weight sets are parameters once, whatever the depth, and
#     in training each layer past the k-th adds its gradients into its block's (autograd sums a parameter's
#     gradients from every use), so d >= k.
# A plain training plan still traces once: it is exact up to AdamW's per-tensor scalars (with_layers).


def slice_depths(workload: Workload, sharing: SharingChoice) -> tuple[int, ...] | None:
    """The depths to trace for `workload`'s profile at its depth: (d,) one short trace scaled (every layer alike),
    (d, d+1) two short traces extrapolated (the first layers differ: LoRA in training, layer_groups), () every
    layer traced (no shorter slice is exact and cheaper), None when no slice is exact and the model
    is deeper than MAX_TRACED_LAYERS would allow tracing it whole."""
    spec = workload.model
    layers = spec.layers
    two = sharing.layer_groups is not None or (sharing.lora is not None and workload.mode == "train")
    mixed = spec.moe is not None and 0 < spec.moe_layers < layers
    if mixed and sharing.layer_groups is not None:
        # the k blocks hold both kinds: an all-dense and an all-MoE slice would each count k blocks of its own kind
        return None if layers > MAX_TRACED_LAYERS else ()
    d = max(SCALE_FROM_LAYERS, sharing.layer_groups or 0)
    k = spec.full_attention_every if spec.sliding_window is not None else None
    if k is not None:
        # windowed and full layers in a period of k (ModelSpec.is_windowed_layer): a slice of whole periods is
        # every layer's kind in proportion only when the depth is whole periods too, and only with one MoE kind
        if layers % k or mixed or two:
            return None if layers > MAX_TRACED_LAYERS else ()
        d = -(-d // k) * k
    depths = (d, d + 1) if two else (d,)
    traced = sum(depths) * (2 if mixed else 1)
    return depths if traced < layers else ()


@functools.lru_cache(maxsize=256)
def profile_at_depth(workload: Workload, sharing: SharingChoice, layers: int | None = None) -> WorkloadProfile:
    """The profile of `workload` with `layers` layers (default its own; the file's MoE pattern applied to that
    depth), traced short wherever that is exact (`slice_depths`), else every layer. Cached per process.

    Dense: the short traces, scaled or extrapolated. With MoE layers among dense ones: an all-dense and an
    all-MoE slice each taken to its count of layers, added, and one kind's edges (that kind at 0 layers) taken
    away: exact, since the layers of each kind are alike and every quantity is edges + per-layer sums (with two
    depths the edges taken away are those of the kind layer 0 is not, so its first layer's difference counts
    once)."""
    spec = workload.model
    full = workload if layers in (None, spec.layers) else _with(workload, layers=layers)
    depths = slice_depths(full, sharing)
    if not depths:
        return _traced(full, sharing)
    n = full.model.layers
    if full.model.moe is None or full.model.moe_layers == n:
        return _at(_slices(workload, sharing, None, depths), n)
    n_moe = full.model.moe_layers
    moe, dense = _slices(workload, sharing, True, depths), _slices(workload, sharing, False, depths)
    # one depth: every layer alike, the dense slice's edges; two: the kind of layer 0 keeps its first layer's
    # difference, so the edges taken away are the other kind's
    other = moe if len(depths) == 2 and not full.model.is_moe_layer(0) else dense
    return _combine([(1, _at(moe, n_moe)), (1, _at(dense, n - n_moe)), (-1, _at(other, 0))])


def _slices(workload: Workload, sharing: SharingChoice, moe: bool | None,
            depths: Sequence[int]) -> list[WorkloadProfile]:
    """The traces of `workload` at `depths`: all dense (moe False), all MoE (True) or as written (None)."""
    update: dict[str, object] = {}
    if moe is False:
        update["moe"] = None
    elif moe is True:
        assert workload.model.moe is not None
        update["moe"] = workload.model.moe.model_copy(update={"layer_freq": 1, "first_dense_layers": 0})
    return [_traced(_with(workload, layers=d, **update), sharing) for d in depths]


def _at(traces: Sequence[WorkloadProfile], layers: int) -> WorkloadProfile:
    """The profile at `layers` layers from the traces of one or two depths: one scaled (with_layers), two
    extrapolated linearly (P(d) + (layers - d) (P(d+1) - P(d)), an affine combination: `_combine`)."""
    if len(traces) == 1:
        return with_layers(traces[0], layers)
    shallow, deep = traces
    steps = layers - shallow.layers
    return _combine([(1 - steps, shallow), (steps, deep)])


def _combine(terms: Sequence[tuple[int, WorkloadProfile]]) -> WorkloadProfile:
    """sum(weight * profile) with integer weights that sum to 1 (an affine combination: the depth, the batch and
    every edge quantity come out as the profiles'), field by field in integers and per op key in the terms'
    order; activation_bytes_per_layer follows from the layers' activations, as the trace computes it."""
    assert sum(w for w, _ in terms) == 1, terms
    first = terms[0][1]
    values: dict[str, object] = {}
    for f in dataclasses.fields(first):
        if f.name in ("ops", "activation_bytes_per_layer"):
            continue
        own = [getattr(p, f.name) for _, p in terms]
        if isinstance(own[0], int):
            values[f.name] = sum(w * v for (w, _), v in zip(terms, own))
        else:
            assert all(v == own[0] for v in own), (f.name, own)
            values[f.name] = own[0]
    ops: dict[tuple[str, str, str], OpTotals] = {}
    for weight, profile in terms:
        for key, totals in profile.ops.items():
            ops.setdefault(key, OpTotals()).add(totals, weight)
    layers = values["layers"]
    assert isinstance(layers, int) and isinstance(values["activation_bytes_in_layers"], int)
    per_layer = values["activation_bytes_in_layers"] // layers if layers else 0
    return dataclasses.replace(first, **values, ops=ops, activation_bytes_per_layer=per_layer)


def _with(workload: Workload, **model: object) -> Workload:
    return workload.model_copy(update={"model": workload.model.model_copy(update=model)})


@functools.lru_cache(maxsize=256)
def _traced(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    """`_trace` of `workload` as written, once per process; a step whose tensors torch cannot address is a
    ScenarioError naming its sizes."""
    try:
        return _trace(workload, sharing)
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        spec = workload.model
        raise ScenarioError(None, "workload", f"a tensor of this step exceeds what torch can address (2^63 bytes): "
                                              f"batch={workload.batch}, seq_len={spec.seq_len}, hidden={spec.hidden}, "
                                              f"ffn_hidden={spec.ffn_hidden}, vocab={spec.vocab}; allowed: sizes whose "
                                              f"products (e.g. batch*seq_len*vocab logits) stay below 2^63 bytes "
                                              f"({exc})") from None


def _trace(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    """The traced profile of `workload` as written (every layer built and run on the meta device): torch and
    the tracer imported here, when a profile is first traced, not with this module."""
    from llmsim.workload.trace import trace_workload

    return trace_workload(workload, sharing)
