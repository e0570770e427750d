"""Property-based tests: random and malformed scenarios against the validator and the modeled backends.

Every rejection must be one clear line (file, key, what is wrong); every accepted scenario must run on
the modeled backends without an exception escaping (rows may be skipped or not fit, never crash).
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmsim.backend import RunContext
from llmsim.config import Scenario, parse_scenario
from llmsim.errors import ScenarioError
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases

FILE = "fuzz.yaml"
MAX_MESSAGE = 600  # characters of a one-line error
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)

small_model = st.fixed_dictionaries({
    "layers": st.sampled_from([1, 2, 3, 4]),
    "hidden": st.sampled_from([32, 48, 64]),
    "heads": st.sampled_from([1, 2, 3, 4, 8]),
    "vocab": st.integers(8, 300),
    "seq_len": st.sampled_from([8, 16, 32]),
}, optional={
    "kv_heads": st.sampled_from([1, 2, 4]),
    "ffn_hidden": st.sampled_from([64, 96, 128]),
    "activation": st.sampled_from(["gelu", "swiglu", "relu"]),
    "norm": st.sampled_from(["layernorm", "rmsnorm"]),
    "causal": st.booleans(),
    "positions": st.sampled_from(["learned", "rotary"]),
    "max_positions": st.sampled_from([16, 64, 256]),
})
strategy = st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c", "Bad"])}, optional={
    "dp": st.integers(0, 4), "tp": st.integers(1, 4), "pp": st.integers(1, 4), "cp": st.integers(1, 2),
    "sp": st.booleans(), "zero": st.integers(0, 4), "micro_batch": st.integers(1, 4),
    "schedule": st.sampled_from(["gpipe", "1f1b", "interleaved", "zigzag"]),
    "virtual_stages": st.integers(1, 2),
    "recompute": st.sampled_from(["none", "selective", "selective-op", "selective-dots", "full"]),
    "sharing": st.fixed_dictionaries({}, optional={"layer_groups": st.integers(1, 4),
                                                   "tie_embeddings": st.booleans()}),
})
scenario_dict = st.fixed_dictionaries({
    "name": st.sampled_from(["fuzz", "fuzz-2", "fuzz-3", "../escape", "UPPER"]),
    "workload": st.fixed_dictionaries({"model": small_model}, optional={
        "mode": st.sampled_from(["train", "prefill", "decode"]), "batch": st.integers(1, 8),
        "decode_tokens": st.integers(1, 4), "dtype": st.sampled_from(["float32", "bfloat16", "int8"])}),
    "strategies": st.lists(strategy, min_size=1, max_size=3),
    "backends": st.just({"roofline": {"hardware": "a100-80gb", "nodes": 1, "devices_per_node": 4}}),
}, optional={"sharing": st.fixed_dictionaries({}, optional={
    "layer_groups": st.integers(0, 4), "lora": st.none() | st.fixed_dictionaries({"rank": st.integers(1, 8)})})})


def _parse_or_clear_error(data: Any) -> Scenario | None:
    try:
        return parse_scenario(data, FILE)
    except ScenarioError as exc:
        message = str(exc)
        # short enough to read in a terminal: a strategy's allowed keys alone take ~300 characters, with the
        # key, the value and "(and 1 more problem: KEY)" around them
        assert message.startswith(f"{FILE}: ") and "\n" not in message and len(message) < MAX_MESSAGE, message
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anything)
def test_garbage_is_rejected_with_one_line(data: Any) -> None:
    _parse_or_clear_error(data)


@settings(max_examples=200, deadline=None)
@given(scenario_dict, st.data())
def test_mutated_scenarios_are_rejected_with_one_line(data: dict, draw: st.DataObject) -> None:
    """Replace one random key anywhere in a plausible scenario with garbage."""
    data = copy.deepcopy(data)  # strategies may share objects between examples: never mutate them
    node: Any = data
    while isinstance(node, dict) and node:
        key = draw.draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict) or draw.draw(st.booleans()):
            node[key] = draw.draw(anything)
            break
        node = node[key]
    _parse_or_clear_error(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_dict)
def test_accepted_scenarios_run_on_the_modeled_backends(data: dict) -> None:
    scenario = _parse_or_clear_error(data)
    if scenario is None:
        return
    assert ".." not in scenario.name and "/" not in scenario.name  # the run folder stays under --out
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "roofline"}))
    try:
        planned = plan_cases(scenario, registry, FILE)
    except ScenarioError as exc:
        assert str(exc).startswith(f"{FILE}: ") and "\n" not in str(exc)
        return
    event("ran on roofline")
    context = RunContext()
    for item in planned:
        result = item.backend(context).run(item.case, item.settings)
        assert result.status in ("ok", "skipped", "does-not-fit"), result.error
        if result.status == "ok":
            assert result.step_time_s and result.step_time_s > 0
