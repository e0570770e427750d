"""`llmsim schema`: the scenario file's JSON Schema, each installed backend's block included.

The scenario model (llmsim.config.Scenario) leaves `backends.NAME` free-form: a backend validates its own block
(its `Settings`), and which backends exist is the plugins' to say. Here they are put in from what the plugin manager
gives (the `llmsim_backends` hook through the registry, the `llmsim_hardware` hook through the catalog), so the core
imports no built-in plugin: each installed backend's settings schema under `backends.properties.NAME` (the attention
kernels and all-reduce libraries enumerated as their settings' Literals are), and, where a setting marks itself as
naming a catalog entry (llmsim.hardware.CATALOG_DEVICE / CATALOG_LINK), the catalog's device or link names.
A scenario may add devices and links of its own (`hardware_catalog` files), so a name outside the list stays
allowed: the names are offered as one branch of an anyOf, beside any string.
"""

from __future__ import annotations

from typing import Any

from llmsim.config import EXPERT_WEIGHT_DTYPES, Scenario
from llmsim.hardware import CATALOG_KEY, Catalog
from llmsim.registry import BackendRegistry
from llmsim.workload.presets import PRESETS


def _catalog_names(node: Any, names: dict[str, list[str]]) -> None:
    """Replace each schema node marked CATALOG_KEY by an anyOf: the catalog's names of that kind, or any string (a
    scenario's own hardware_catalog entry), or null where the setting allows it. In place, through the tree."""
    if isinstance(node, list):
        for item in node:
            _catalog_names(item, names)
        return
    if not isinstance(node, dict):
        return
    kind = node.pop(CATALOG_KEY, None)
    if kind in names:
        nullable = any(b.get("type") == "null" for b in node.pop("anyOf", []))
        node.pop("type", None)
        node["anyOf"] = [{"enum": names[kind], "description": f"a {kind} of the hardware catalog (built-in and "
                                                                 f"plugins': llmsim hardware)"},
                         {"type": "string", "description": f"a {kind} of the scenario's hardware_catalog files"}]
        if nullable:
            node["anyOf"].append({"type": "null"})
    for value in node.values():
        _catalog_names(value, names)


def _preset_fills_the_shape(defs: dict[str, Any]) -> None:
    """A model with a `preset` needs none of the shape's fields (the preset fills them: ModelSpec._apply_preset);
    without one it needs them all. Pydantic's schema lists them as required either way, which refused every scenario
    that names a preset; here they are required only when `preset` is absent (JSON Schema's anyOf of the two)."""
    model = defs.get("ModelSpec", {})
    required = model.pop("required", [])
    if required:
        model["anyOf"] = [{"required": ["preset"]}, {"required": required}]


def _named_choices(defs: dict[str, Any]) -> None:
    """The model keys whose values validation checks against a list pydantic cannot see (a validator, not a
    Literal): `preset` (the preset table) and `moe.expert_weight_dtype`, offered as enums so an editor completes them."""
    for model, key, values in (("ModelSpec", "preset", list(PRESETS)),
                               ("MoeSpec", "expert_weight_dtype", list(EXPERT_WEIGHT_DTYPES))):
        prop = defs.get(model, {}).get("properties", {}).get(key)
        if prop is not None:
            description = prop.get("description")
            prop.clear()
            prop["anyOf"] = [{"enum": values}, {"type": "null"}]
            if description:
                prop["description"] = description


def scenario_schema(registry: BackendRegistry, catalog: Catalog) -> dict[str, Any]:
    """The scenario's JSON Schema with `backends` spelled out: per installed backend (registry) its settings'
    schema (its definitions under $defs as `NAME.Model`), the catalog's names where a setting names an entry; a
    backend not installed here stays a free-form mapping (validation names the installed ones)."""
    schema = Scenario.model_json_schema()
    defs = schema.setdefault("$defs", {})
    _preset_fills_the_shape(defs)
    _named_choices(defs)
    names = {"device": list(catalog.devices), "link": list(catalog.links)}
    blocks: dict[str, Any] = {}
    for name in registry.names:
        try:
            settings = registry.get(name).Settings.model_json_schema(ref_template=f"#/$defs/{name}.{{model}}")
        except Exception:  # noqa: BLE001 - a plugin's settings pydantic cannot describe: its block stays free-form
            continue
        for model, definition in settings.pop("$defs", {}).items():
            defs[f"{name}.{model}"] = definition
        blocks[name] = settings
    _catalog_names(blocks, names)
    _catalog_names(defs, names)
    schema["properties"]["backends"]["properties"] = blocks
    schema["properties"]["backends"]["description"] = (
        "one block per backend (llmsim backends lists them): the installed ones as below; a backend not installed "
        "here is refused by llmsim validate")
    return schema
