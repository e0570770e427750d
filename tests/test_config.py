"""The scenario schema: what it accepts, and the one-line message for what it rejects."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from llmsim.config import load_scenario, parse_scenario
from llmsim.errors import ScenarioError
from tests.conftest import REPO, TINY_SCENARIO


def _with(path: str, value) -> dict:
    """The tiny scenario with one key (dotted path, [i] for list items) replaced."""
    data = copy.deepcopy(TINY_SCENARIO)
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value
    return data


def test_design_example_scenario_is_accepted() -> None:
    data = {
        "name": "gpt-small-strategies",
        "workload": {"model": {"preset": "gpt2-small", "layers": 12, "hidden": 768, "heads": 12, "kv_heads": 12,
                               "ffn_hidden": 3072, "vocab": 50257, "seq_len": 1024, "activation": "gelu",
                               "norm": "layernorm", "causal": True},
                     "mode": "train", "batch": 8, "decode_tokens": 64, "dtype": "bfloat16"},
        "sharing": {"tie_embeddings": True, "layer_groups": None, "lora": None},
        "strategies": [{"name": "single"}, {"name": "dp2", "dp": 2}, {"name": "tp2", "tp": 2, "sp": True},
                       {"name": "pp2", "pp": 2, "micro_batch": 1, "schedule": "1f1b"},
                       {"name": "zero3", "dp": 2, "zero": 3}, {"name": "tp4-pp4", "tp": 4, "pp": 4,
                                                              "recompute": "selective"},
                       {"name": "long", "tp": 4, "cp": 4}],
        "backends": {"cpu": {"steps": 5, "warmup": 2}},
        "seed": 0,
    }
    scenario = parse_scenario(data)
    assert [s.name for s in scenario.strategies][-1] == "long"
    assert scenario.workload.model.kv_heads == 12


def test_preset_fills_and_explicit_fields_override() -> None:
    scenario = parse_scenario(_with("workload.model", {"preset": "llama2-70b", "layers": 4}))
    model = scenario.workload.model
    assert (model.layers, model.hidden, model.kv_heads, model.activation) == (4, 8192, 8, "swiglu")
    assert scenario.sharing_choice(scenario.strategies[0]).tie_embeddings is False  # Llama unties by default


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("strategies", [{"name": "bad", "tp": 3}], "strategies[0].tp: 3 does not divide heads=4"),
    ("strategies", [{"name": "bad", "pp": 3}], "strategies[0].pp: pp=3 is more than layers=2"),
    ("strategies", [{"name": "x"}, {"name": "x"}], "strategies[1].name: duplicate strategy name 'x'"),
    ("strategies", [{"name": "bad", "sp": True}], "strategies[0].sp: sequence parallelism"),
    ("strategies", [{"name": "bad", "virtual_stages": 2}], "needs schedule: interleaved"),
    ("strategies", [{"name": "bad", "tp": 2, "tp_comm_overlap": True}],
     "strategies[0].tp_comm_overlap: overlaps the all-gathers and reduce-scatters of sequence parallelism"),
    ("strategies", [{"name": "bad", "dp": 2, "overlap_param_gather": True}],
     "strategies[0].overlap_param_gather: overlaps the all-gather of the parameters the distributed optimizer "
     "updated in shards; it needs zero >= 1"),
    ("strategies", [{"name": "bad", "zero": 1, "overlap_param_gather": True, "overlap_grad_reduce": False}],
     "strategies[0].overlap_param_gather: needs overlap_grad_reduce: true"),
    ("strategies", [{"name": "bad", "pp": 2, "overlap_p2p": True}],
     "strategies[0].overlap_p2p: Megatron-Core overlaps pipeline sends and receives only in the interleaved "
     "schedule (got 1f1b"),
    ("strategies", [{"name": "bad", "tp_comm_overlap": "yes please"}],
     "strategies[0].tp_comm_overlap: 'yes please' is text, not a boolean (allowed: true, false)"),
    ("workload.model.activation", "relu", "workload.model.activation: 'relu' is not one of the allowed values "
     "(allowed: gelu, swiglu, geglu)"),
    ("workload.model.preset", "gpt5", "unknown preset 'gpt5'; allowed: tiny, bert-base"),
    ("workload.mode", "serve", "workload.mode: 'serve' is not one of the allowed values (allowed: train, prefill, "
     "decode)"),
    ("workload.batch", 0, "workload.batch: 0: out of range; allowed: >= 1"),
    ("workload.model.head_dim", 0, "workload.model.head_dim: 0: out of range; allowed: >= 1"),
    # torch.manual_seed refuses 2**64 and up: such a seed validated and failed every cpu case (trial 24)
    ("seed", 2**64, "seed: 18446744073709551616: out of range; allowed: >= 0 and <= 18446744073709551615"),
    ("seed", -1, "seed: -1: out of range; allowed: >= 0"),
    ("workload.model.qk_norm", "maybe", "workload.model.qk_norm: 'maybe': allowed: false, true (= head), head, projection"),
    ("workload.colour", "red", "workload.colour: unknown key; allowed: model, mode, batch"),
    ("sharing.layer_groups", 3, "sharing.layer_groups: 3 does not divide layers=2"),
    ("sharing.lora", {"targets": ["gate"]}, "sharing.lora.targets: target 'gate' is not a projection of a gelu "
     "block LoRA can adapt (allowed: q, k, v, o, up, down; aliases qkv, out, mlp)"),
    ("sharing.lora", {"rank": 100_000}, "sharing.lora.rank: 100000 exceeds the smallest dimension of an adapted "
     "projection"),
    ("sharing.lora", {"targets": ["q_proj"]}, "sharing.lora.targets[0]: 'q_proj' is not one of the allowed values "
     "(allowed: q, k, v,"),
    ("name", "Bad Name", "name: 'Bad Name': not a name; allowed: lowercase letters, digits and '-'"),
    ("name", "../../etc", "name: '../../etc': not a name; allowed: lowercase letters"),  # run folders stay under --out
    ("strategies", [{"name": "bad", "sharing": {"layer_groups": 5}}],
     "strategies[0].sharing.layer_groups: 5 does not divide layers=2"),
])
def test_rejections_name_key_and_allowed_values(key: str, value, expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_with(key, value), "s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_kv_heads_and_tp_must_divide_one_another() -> None:
    model = {"preset": "tiny", "heads": 8, "kv_heads": 4, "hidden": 64, "ffn_hidden": 256}
    ok = _with("workload.model", model)
    ok["strategies"] = [{"name": "split", "tp": 2}, {"name": "replicated", "tp": 8}]
    parse_scenario(ok)  # tp=2 splits 4 KV heads, tp=8 replicates them
    model3 = dict(model, heads=12, kv_heads=4, hidden=96, ffn_hidden=384)
    bad = _with("workload.model", model3)
    bad["strategies"] = [{"name": "bad", "tp": 6}]
    with pytest.raises(ScenarioError, match="kv_heads=4 must divide one another"):
        parse_scenario(bad)


def test_decode_needs_a_causal_model() -> None:
    data = _with("workload.model", {"preset": "bert-base"})
    data["workload"]["mode"] = "decode"
    with pytest.raises(ScenarioError, match="decode' needs a causal decoder"):
        parse_scenario(data)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(path)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nworkload: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"broken.yaml: not valid YAML: line \d+"):
        load_scenario(path)


def test_overrides_use_dotted_paths_and_yaml_values(write_scenario) -> None:
    path = write_scenario()
    scenario = load_scenario(path, ["workload.batch=4", "strategies[0].name=solo",
                                    "sharing.lora={rank: 4}"])
    assert scenario.workload.batch == 4
    assert scenario.strategies[0].name == "solo"
    assert scenario.sharing.lora is not None and scenario.sharing.lora.rank == 4


def test_every_shipped_scenario_and_plan_validates() -> None:
    """scenarios/ holds scenario files and plan files (those with a `goal`); each must load."""
    from llmsim.config import read_yaml
    from llmsim.planner.config import load_plan

    paths = sorted((REPO / "scenarios").glob("*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        if "goal" in read_yaml(path):
            load_plan(path)
        else:
            load_scenario(path)


def test_decode_may_fill_the_learned_position_table_exactly() -> None:
    """The learned table holds positions 0..max_positions-1 (Radford et al. 2019: a learned embedding per
    position); a prompt of seq_len tokens and decode_tokens generated ones fit when their sum is at most
    max_positions. The tiny preset: seq_len 64, max_positions 128."""
    data = _with("workload.mode", "decode")
    data["workload"]["decode_tokens"] = 64  # 64 + 64 = 128 = max_positions
    scenario = parse_scenario(data, "s.yaml")
    model = scenario.workload.model
    assert model.seq_len + scenario.workload.decode_tokens == model.max_positions == 128
    data["workload"]["decode_tokens"] = 65
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "s.yaml")
    message = str(info.value)
    assert message == ("s.yaml: workload.decode_tokens: seq_len + decode_tokens = 129 exceeds max_positions=128 of the "
                       "learned position table (allowed: decode_tokens <= 64, a shorter seq_len, or a larger "
                       "model.max_positions)")
    # rotary positions have no table: no limit
    data["workload"]["model"] = {"preset": "tiny", "positions": "rotary"}
    parse_scenario(data, "s.yaml")


EXPLICIT_MODEL = {"layers": 2, "hidden": 64, "heads": 4, "vocab": 512, "seq_len": 32}  # learned positions, no preset


def test_an_explicit_dimension_decode_sizes_the_learned_table_for_prompt_and_generated_tokens() -> None:
    """Without a given max_positions the learned table holds what the workload reads: the prompt's seq_len
    positions and the decode_tokens generated after it (Radford et al. 2019: one learned embedding per
    position). A preset's published table (gpt2-small: 1024) and an explicit one are kept."""
    data = _with("workload.model", dict(EXPLICIT_MODEL))
    data["workload"].update(mode="decode", decode_tokens=16)
    assert parse_scenario(data, "s.yaml").workload.model.max_positions == 32 + 16
    data["workload"]["mode"] = "train"
    assert parse_scenario(data, "s.yaml").workload.model.max_positions == 32  # training reads seq_len positions
    data["workload"].update(mode="decode", model=dict(EXPLICIT_MODEL, max_positions=40))
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "s.yaml")
    assert str(info.value) == ("s.yaml: workload.decode_tokens: seq_len + decode_tokens = 48 exceeds max_positions=40 of the "
                               "learned position table (allowed: decode_tokens <= 8, a shorter seq_len, or a larger "
                               "model.max_positions)")
    data["workload"]["model"] = {"preset": "gpt2-small", "seq_len": 512}
    assert parse_scenario(data, "s.yaml").workload.model.max_positions == 1024


def test_a_yaml_boolean_is_not_taken_for_a_number() -> None:
    """`zero: true` had run as ZeRO-1 and `batch: yes` as a batch of 1 (pydantic's lax mode reads a bool as an
    int; YAML reads yes/no/on/off as booleans): one line naming the key. A boolean key still takes them."""
    import pytest as _pytest

    from llmsim.config import parse_scenario
    from llmsim.errors import ScenarioError

    base = {"name": "x", "workload": {"model": {"preset": "gpt2-small"}, "mode": "train", "batch": 8},
            "strategies": [{"name": "a"}]}
    with _pytest.raises(ScenarioError, match=r"strategies\[0\]\.zero: true is a boolean"):
        parse_scenario({**base, "strategies": [{"name": "a", "zero": True}]}, "f.yaml")
    with _pytest.raises(ScenarioError, match=r"workload\.batch: true is a boolean"):
        parse_scenario({**base, "workload": {**base["workload"], "batch": True}}, "f.yaml")
    assert parse_scenario({**base, "strategies": [{"name": "a", "tp": 2, "sp": True}]}, "f.yaml")


def test_an_absurd_batch_and_fixed_requests_longer_than_the_context_are_refused_at_validation() -> None:
    """Fresh-user trial: batch 10^26 overflowed inside torch at run time (a stack dump in the row, exit 0);
    a fixed 9,000-token prompt on an 8,192-token context validated and then rejected every request."""
    import pytest as _pytest

    from llmsim.config import load_scenario, parse_scenario
    from llmsim.errors import ScenarioError

    base = {"name": "x", "workload": {"model": {"preset": "gpt2-small"}, "mode": "train", "batch": 10**26},
            "strategies": [{"name": "a"}]}
    with _pytest.raises(ScenarioError, match=r"workload.batch: [0-9]+: out of range; allowed: >= 1 and <= 2147483647"):
        parse_scenario(base, "f.yaml")
    with _pytest.raises(ScenarioError, match=r"serving.lengths: input 9000 \+ output 256 tokens exceed the "
                                             r"model's context seq_len=8192"):
        load_scenario("scenarios/serve-8b.yaml", overrides=["serving.lengths.input=9000"])


def test_a_value_of_the_wrong_shape_says_what_is_expected_in_plain_words() -> None:
    """Fresh-user trial: "Input should be a valid dictionary or instance of Fp8Spec" and "List should have at
    least 1 item after validation" were pydantic's words; the message says what the key takes instead."""
    import pytest as _pytest

    from llmsim.config import parse_scenario
    from llmsim.errors import ScenarioError

    base = {"name": "x", "workload": {"model": {"preset": "gpt2-small"}, "mode": "train", "batch": 8},
            "strategies": [{"name": "a"}]}
    cases = [({**base, "workload": {**base["workload"], "fp8": 3}},
              "workload.fp8: 3: expected a mapping of keys; allowed: recipe, saved_activations, param_all_gather, frozen_weights, "
              "attention"),
             ({**base, "strategies": []}, "strategies: []: needs at least 1 item"),
             ({**base, "strategies": 5}, "strategies: 5: expected a list")]
    for data, message in cases:
        with _pytest.raises(ScenarioError) as info:
            parse_scenario(data, "f.yaml")
        assert str(info.value) == f"f.yaml: {message}"


def test_a_number_for_a_boolean_key_is_refused_as_a_boolean_for_a_number_is():
    import pytest as _pytest

    from llmsim.config import parse_scenario
    from llmsim.errors import ScenarioError

    base = {"name": "x", "workload": {"model": {"preset": "gpt2-small", "parallel_block": 1}, "mode": "train",
                                      "batch": 8}, "strategies": [{"name": "a"}]}
    with _pytest.raises(ScenarioError, match=r"workload\.model\.parallel_block: 1 is a number, not a boolean"):
        parse_scenario(base, "f.yaml")


def test_a_frozen_fp8_base_without_lora_is_refused_not_ignored():
    import pytest as _pytest
    base = {"name": "x", "workload": {"model": {"preset": "gpt2-small"}, "dtype": "float8",
                                      "fp8": {"frozen_weights": "float8"}}}
    with _pytest.raises(ScenarioError, match=r"^f.yaml: workload.fp8.frozen_weights: float8 keeps a frozen base's "
                                             r"weights in FP8 only, and no strategy freezes a base"):
        parse_scenario({**base, "strategies": [{"name": "a"}]}, "f.yaml")
    # one strategy with LoRA over the base is enough (the others run the same scenario without it)
    parse_scenario({**base, "strategies": [{"name": "a"}, {"name": "b", "sharing": {"lora": {"rank": 8}}}]}, "f.yaml")


def test_text_or_null_for_a_boolean_key_is_refused_naming_the_allowed_values():
    """pydantic's lax mode read the text "yes", "on", "1" as true, and null gave its own "Input should be a valid
    boolean" (trial of 2026-12-01, on serving.scheduler.async_output); unquoted YAML yes/no stay booleans."""
    import pytest as _pytest

    from llmsim.config import parse_scenario
    from llmsim.errors import ScenarioError

    def scenario(value):
        return {"name": "x", "workload": {"model": {"preset": "gpt2-small", "causal": value}, "mode": "train",
                                          "batch": 8}, "strategies": [{"name": "a"}]}

    for value, says in (("yes", "'yes' is text, not a boolean (allowed: true, false); write it without quotes"),
                        ("false", "'false' is text, not a boolean (allowed: true, false); write it without quotes"),
                        ("1", "'1' is text, not a boolean (allowed: true, false)$"),
                        (None, "null is not a boolean (allowed: true, false)")):
        with _pytest.raises(ScenarioError, match=r"workload\.model\.causal: " + says.replace("(", r"\(")
                            .replace(")", r"\)")):
            parse_scenario(scenario(value), "f.yaml")
    assert parse_scenario(scenario(False), "f.yaml").workload.model.causal is False


# -- sliding-window attention, attention sinks, MXFP4 experts (ModelSpec.sliding_window, full_attention_every,
# attention_sinks; MoeSpec.expert_weight_dtype) --------------------------------------------------------------
@pytest.mark.parametrize("model,expected", [
    ({"full_attention_every": 2}, "workload.model.full_attention_every: full_attention_every=2 needs sliding_window"),
    ({"sliding_window": 8, "full_attention_every": 1}, "workload.model.full_attention_every: full_attention_every=1 "
     "makes every layer full (allowed: 2 or more"),
    ({"sliding_window": 0}, "workload.model.sliding_window: 0"),
    ({"preset": "bert-base", "sliding_window": 8}, "workload.model.sliding_window: sliding_window=8 needs a causal "
     "decoder"),
    ({"preset": "tiny-moe", "moe": {"expert_weight_dtype": "fp4"}}, "workload.model.moe.expert_weight_dtype: 'fp4': "
     "allowed: null (the workload dtype), mxfp4"),
])
def test_window_and_expert_dtype_rejections_name_key_and_allowed_values(model: dict, expected: str) -> None:
    data = _with("workload.model", {"preset": "tiny", **model})
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "s.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_layer_groups_cannot_share_blocks_across_windowed_and_full_layers() -> None:
    data = _with("workload.model", {"preset": "tiny", "sliding_window": 8, "full_attention_every": 2})
    data["strategies"] = [{"name": "shared", "sharing": {"layer_groups": 1}}]
    with pytest.raises(ScenarioError, match=r"strategies\[0\]\.sharing\.layer_groups: 1 with "
                                            r"workload.model.sliding_window"):
        parse_scenario(data, "s.yaml")


def test_which_layers_are_windowed() -> None:
    """Every k-th layer full, (i + 1) % k == 0: gpt-oss / Gemma 2 (k = 2) sliding first, Gemma 3 (k = 6) five
    sliding then one global; no k: every layer windowed (Mistral 7B v0.1); no window: none."""
    from llmsim.config import ModelSpec

    gpt_oss = ModelSpec(preset="gpt-oss-20b")
    assert [gpt_oss.is_windowed_layer(i) for i in range(4)] == [True, False, True, False]
    assert gpt_oss.windowed_layers == 12 and gpt_oss.sliding_window == 128 and gpt_oss.attention_sinks
    gemma3 = ModelSpec(preset="tiny", layers=12, sliding_window=16, full_attention_every=6)
    assert [i for i in range(12) if not gemma3.is_windowed_layer(i)] == [5, 11]
    for lo in range(12):
        for hi in range(lo, 13):
            assert gemma3.windowed_layers_in(range(lo, hi)) == sum(map(gemma3.is_windowed_layer, range(lo, hi)))
    assert ModelSpec(preset="tiny", sliding_window=16).windowed_layers == 2
    assert ModelSpec(preset="tiny").windowed_layers == 0


def test_a_bad_window_exits_2_with_one_line(write_scenario, capsys) -> None:
    from llmsim.cli import main

    workload = {**TINY_SCENARIO["workload"], "model": {"preset": "tiny", "full_attention_every": 2}}
    path = write_scenario(workload=workload)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "workload.model.full_attention_every: full_attention_every=2 needs sliding_window" in err
    assert "\n" not in err


def test_a_window_that_spans_the_whole_context_is_noted_not_refused() -> None:
    """sliding_window >= seq_len cuts nothing (every layer attends to the whole context): a note, no error, so a
    short seq_len under a preset's window still validates."""
    from llmsim.config import ModelSpec

    assert ModelSpec(preset="gpt-oss-20b", seq_len=4096).window_note() is None
    note = ModelSpec(preset="gpt-oss-20b", seq_len=4096, sliding_window=1_000_000).window_note()
    assert note is not None and "seq_len=4096" in note and "1..4095" in note
    assert ModelSpec(preset="gpt-oss-20b", seq_len=64).window_note() is not None
    assert ModelSpec(preset="llama3-8b").window_note() is None


def test_the_window_note_reaches_validate(tmp_path, capsys) -> None:
    from llmsim.cli import main

    path = tmp_path / "w.yaml"
    path.write_text("name: w\nworkload:\n  model: {preset: gpt-oss-20b, seq_len: 256, sliding_window: 4096}\n"
                    "  mode: prefill\n  batch: 1\nstrategies: [{name: s}]\nbackends: {roofline: {hardware: h100-sxm, nodes: 1, devices_per_node: 1}}\n")
    assert main(["validate", str(path)]) == 0
    assert "workload.model.sliding_window: sliding_window=4096 is not below seq_len=256" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [
    ("name", "a" * 65),
    ("strategies", [{"name": "s" * 300}]),
])
def test_a_name_too_long_for_a_file_name_is_refused(key: str, value) -> None:
    # A name becomes part of file names (the run folder; a serving case's requests/ file): one of 300 characters
    # passed validate and then failed every serving case with "File name too long" (session 24's trial).
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_with(key, value), "s.yaml")
    message = str(info.value)
    assert ": too long; allowed: at most 64 characters" in message
    assert message.startswith("s.yaml: name: " if key == "name" else "s.yaml: strategies[0].name: ")
    assert "\n" not in message
    parse_scenario(_with("name", "a" * 64), "s.yaml")
