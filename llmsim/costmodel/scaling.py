"""Scale a profile traced with few layers to the full depth, without tracing again.

Every layer of a Transformer without cross-layer sharing costs the same, so a profile of a 2-layer
variant predicts the L-layer model exactly: the `layers` region (and `experts`, the routed experts of MoE
layers) scales by L/L0, embedding and head stay.
Tracing a 175B model takes seconds; this takes microseconds, which sweeps and validation tables use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, TypeVar


class _Profile(Protocol):
    """The fields of llmsim.workload.profile.WorkloadProfile this module reads (a protocol rather than an
    import: the profile scales deep models with with_layers, so importing it here would be a cycle)."""

    layers: int
    params: int
    trainable_params: int
    param_bytes: int
    layer_params: int
    embed_params: int
    activation_bytes: int
    activation_bytes_per_layer: int
    activation_bytes_in_layers: int
    kv_cache_bytes: int
    ops: dict[Any, Any]
    moe_layers: int
    expert_params: int
    active_params: int


ProfileT = TypeVar("ProfileT", bound=_Profile)


def _scaled_count(count: int, layers: int, traced: int) -> int:
    """count * layers / traced, in integers when that is exact (a 10^8-layer model's parameter count passes
    2^53, where a float factor would round it)."""
    product = count * layers
    return product // traced if product % traced == 0 else round(product / traced)


def with_layers(profile: ProfileT, layers: int) -> ProfileT:
    """The profile of the same workload with `layers` identical layers (no layer_groups sharing). Every layer
    is alike: all dense or all mixture-of-experts (a mixed depth: workload.profile.profile_at_depth)."""
    factor = layers / profile.layers
    frozen = profile.params - profile.trainable_params
    trainable_layers = profile.trainable_params - (profile.embed_params if frozen == 0 else 0)
    trainable = (_scaled_count(trainable_layers, layers, profile.layers)
                 + (profile.embed_params if frozen == 0 else 0))
    ops = {}
    for key, totals in profile.ops.items():
        # The optimizer runs outside every module (traced under region "head"): it scales with what it updates.
        scale = (trainable / profile.trainable_params if key[0] == "optimizer"
                 else factor if key[1] in ("layers", "experts") else 1.0)
        ops[key] = totals.scaled(scale)
    edge_activations = profile.activation_bytes - profile.layers * profile.activation_bytes_per_layer
    layer_params = _scaled_count(profile.layer_params, layers, profile.layers)
    params = layer_params + profile.embed_params
    elem = profile.param_bytes // profile.params if profile.params else 0
    return dataclasses.replace(
        profile, layers=layers, params=params, trainable_params=trainable, param_bytes=params * elem,
        trainable_param_bytes=trainable * elem, layer_params=layer_params,
        activation_bytes=edge_activations + layers * profile.activation_bytes_per_layer,
        activation_bytes_in_layers=_scaled_count(profile.activation_bytes_in_layers, layers, profile.layers),
        kv_cache_bytes=_scaled_count(profile.kv_cache_bytes, layers, profile.layers), ops=ops,
        moe_layers=_scaled_count(profile.moe_layers, layers, profile.layers),
        expert_params=_scaled_count(profile.expert_params, layers, profile.layers),
        active_params=(profile.embed_params
                       + _scaled_count(profile.active_params - profile.embed_params, layers, profile.layers)))
