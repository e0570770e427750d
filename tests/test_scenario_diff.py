"""Where two saved scenarios differ, and how a value is written in the one line that says so (llmsim.scenario_diff)."""

from __future__ import annotations

from llmsim.scenario_diff import MAX_VALUE_CHARS, brief, differences


def test_differences_walk_mappings_and_lists_of_one_length_item_by_item() -> None:
    a = {"workload": {"batch": 8}, "strategies": [{"tp": 1}, {"tp": 2}], "rates": [1, 2]}
    b = {"workload": {"batch": 16}, "strategies": [{"tp": 1}, {"tp": 4}], "rates": [1, 2, 4], "new": True}
    assert list(differences(a, b)) == [("workload.batch", 8, 16), ("strategies[1].tp", 2, 4),
                                       ("rates", [1, 2], [1, 2, 4]), ("new", None, True)]


def test_a_short_value_is_written_whole_and_a_long_one_is_summarised() -> None:
    """Trial 42: a --resume refusal printed both full strategy lists, ~1.6 KB on one line."""
    assert brief("fused") == "'fused'" and brief([1, 2]) == "[1, 2]"
    strategies = [{"name": f"s{i}", "tp": 2 ** i, "pp": 1, "zero_stage": 3} for i in range(6)]
    assert brief(strategies) == "6 entries: s0, s1, s2, s3, s4, s5"
    unnamed = [{"tp": i, "pp": 1, "cp": 1, "ep": 1} for i in range(8)]
    assert brief(unnamed) == "8 entries"
    backends = {name: {"hardware": "h100-sxm", "nodes": [1, 2, 4, 8]} for name in ("roofline", "cluster")}
    assert brief(backends) == "2 keys: roofline, cluster"
    # trial 43: long names fell back to the cut text, the same on both sides of a comparison
    long_names = [{"name": f"strategy-long-name-{i}", "tp": 1, "pp": 1} for i in range(14)]
    said = brief(long_names)
    assert said.startswith("14 entries: strategy-long-name-0, strategy-long-name-1, ") and said.endswith(" more)")
    assert len(said) <= MAX_VALUE_CHARS
    assert brief([{"name": "x" * 200, "tp": 1}]) == "1 entry"
    long_text = "x" * 300
    assert len(brief(long_text)) == MAX_VALUE_CHARS and brief(long_text).endswith("…")
