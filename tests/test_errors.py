"""User-facing errors stay one line whatever characters the user's file holds."""

from __future__ import annotations

from llmsim.config import parse_scenario
from llmsim.errors import ScenarioError, one_line
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.runner import plan_cases


def test_a_key_with_a_newline_is_escaped_in_the_one_line_error() -> None:
    """Found by tests/test_fuzz.py: a backend named "\\n" put a line break into the key path."""
    scenario = parse_scenario({"name": "x", "workload": {"model": {"preset": "gpt2-small"}, "mode": "train",
                                                         "batch": 2},
                               "strategies": [{"name": "a"}], "backends": {"\n": {}}}, "f.yaml")
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "roofline"}))
    try:
        plan_cases(scenario, registry, "f.yaml")
    except ScenarioError as exc:
        assert str(exc) == "f.yaml: backends.\\n: unknown backend '\\n'; allowed: roofline (`llmsim backends` says which can run here)"
    else:
        raise AssertionError("an unknown backend must be refused")


def test_one_line_escapes_control_characters_and_keeps_other_text() -> None:
    assert one_line("a\tb\r\nc µs ×") == "a\\tb\\r\\nc µs ×"
