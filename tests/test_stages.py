"""Uneven pipeline stages (issue 14 item 9): Megatron-LM's split rules (llmsim.stages) and the scenario keys
that state them, with one-line errors naming the key and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from llmsim.config import parse_scenario
from llmsim.errors import ScenarioError
from llmsim.stages import SplitError, default_split, describe_split, split_keys, split_layers
from llmsim.strategy import resolve_layout
from tests.conftest import TINY_SCENARIO


def _scenario(layers: int, **strategy: Any) -> dict[str, Any]:
    model = {"preset": "tiny", "layers": layers}
    return dict(TINY_SCENARIO, workload=dict(TINY_SCENARIO["workload"], model=model, batch=8),
                strategies=[dict(name="s", **strategy)])


# ------------------------------------------------------------------------------------ the default split
def test_an_even_split_is_layers_over_pp() -> None:
    assert default_split(12, 4) == (3, 3, 3, 3)
    assert default_split(12, 1) == (12,)


def test_the_default_puts_the_extra_layers_on_the_middle_stages() -> None:
    """70 layers on 12 stages and 126 on 16: the first and last stage hold one layer fewer (they also hold the
    embedding and the LM head)."""
    assert default_split(70, 12) == (5,) + (6,) * 10 + (5,)
    assert default_split(126, 16) == (7,) + (8,) * 14 + (7,)


def test_fewer_extra_layers_go_to_the_later_middle_stages_then_the_first() -> None:
    assert default_split(9, 4) == (2, 2, 3, 2)      # one extra: the last middle stage
    assert default_split(10, 4) == (2, 3, 3, 2)
    assert default_split(11, 4) == (3, 3, 3, 2)     # pp - 1 extra: the middle ones, then the first
    assert default_split(5, 2) == (3, 2)


def test_interleaved_splits_in_chunks_of_virtual_stages_layers() -> None:
    assert default_split(12, 4, 2) == (2, 4, 4, 2)
    assert default_split(16, 4, 2) == (4, 4, 4, 4)
    with pytest.raises(SplitError) as info:
        default_split(9, 2, 2)
    assert info.value.key == "virtual_stages"


def test_more_stages_than_layers_is_an_error() -> None:
    with pytest.raises(SplitError, match="pp=3 is more than layers=2") as info:
        default_split(2, 3)
    assert info.value.key == "pp"


# --------------------------------------------------------------------------------- Megatron-LM's keys
def test_first_and_last_stage_counts_split_the_rest_evenly() -> None:
    assert split_layers(126, 16, first_stage_layers=7, last_stage_layers=7) == (7,) + (8,) * 14 + (7,)
    assert split_layers(126, 16, first_stage_layers=6) == (6,) + (8,) * 15
    assert split_layers(70, 12, last_stage_layers=4) == (6,) * 11 + (4,)
    assert split_layers(5, 2, first_stage_layers=2) == (2, 3)


def test_embedding_and_loss_count_as_a_layer() -> None:
    """Megatron-LM's account_for_embedding/loss_in_pipeline_split: (L + 1 + 1) / pp per stage, one fewer
    Transformer layer on the first and the last stage."""
    assert split_layers(126, 16, embedding_as_layer=True, loss_as_layer=True) == (7,) + (8,) * 14 + (7,)
    assert split_layers(15, 4, embedding_as_layer=True) == (3, 4, 4, 4)
    assert split_layers(15, 4, loss_as_layer=True) == (4, 4, 4, 3)
    assert split_layers(3, 4, embedding_as_layer=True) == (0, 1, 1, 1)  # an embedding-only first stage


def test_an_explicit_list_is_taken_as_given() -> None:
    assert split_layers(70, 12, stage_layers=[5] + [6] * 10 + [5]) == (5,) + (6,) * 10 + (5,)
    assert split_layers(3, 2, stage_layers=[0, 3]) == (0, 3)   # the first stage: the embedding alone
    assert split_layers(12, 4, 2, stage_layers=[2, 4, 4, 2]) == (2, 4, 4, 2)


@pytest.mark.parametrize(("layers", "pp", "v", "keys", "key", "message"), [
    (12, 4, 1, dict(stage_layers=[3, 3, 3]), "stage_layers", "3 counts for pp=4"),
    (12, 4, 1, dict(stage_layers=[3, 3, 3, 4]), "stage_layers", "add up to 13, not layers=12"),
    (12, 4, 1, dict(stage_layers=[6, 0, 3, 3]), "stage_layers", "stage 1 is a middle stage with 0 layers"),
    (12, 4, 1, dict(stage_layers=[-1, 5, 4, 4]), "stage_layers", "stage 0 has -1 layers (allowed: 0 or more)"),
    (12, 4, 2, dict(stage_layers=[3, 3, 4, 2]), "stage_layers", "stage 0 has 3 layers; with schedule interleaved"),
    (12, 4, 1, dict(stage_layers=[3, 3, 3, 3], first_stage_layers=3), "stage_layers", "not both"),
    (12, 4, 1, dict(stage_layers=[3, 3, 3, 3], embedding_as_layer=True), "embedding_as_layer",
     "cannot be combined with stage_layers"),
    (12, 4, 1, dict(first_stage_layers=2, loss_as_layer=True), "loss_as_layer",
     "cannot be combined with first_stage_layers"),
    (12, 1, 1, dict(first_stage_layers=12), "first_stage_layers", "needs pp > 1"),
    (12, 4, 1, dict(last_stage_layers=0), "last_stage_layers", "0 (allowed: 1 or more"),
    (126, 16, 1, dict(first_stage_layers=6, last_stage_layers=7), "first_stage_layers",
     "leaves 113 layers for the other 14 stage(s), which must split them evenly with at least one each "
     "(Megatron-LM's rule) (allowed first_stage_layers with last_stage_layers=7: 7, 21, 35"),
    (126, 16, 1, dict(last_stage_layers=5), "last_stage_layers", "(allowed last_stage_layers: 6, 21, 36"),
    (12, 4, 1, dict(first_stage_layers=11), "first_stage_layers", "leaves 1 layer for the other 3 stage(s)"),
    (5, 2, 1, dict(first_stage_layers=2, last_stage_layers=2), "first_stage_layers",
     "the two stages hold 4 layers, not layers=5"),
    (12, 4, 2, dict(first_stage_layers=3, last_stage_layers=3), "first_stage_layers",
     "first_stage_layers has 3 layers; with schedule interleaved each stage runs virtual_stages=2"),
    (126, 16, 1, dict(embedding_as_layer=True), "embedding_as_layer",
     "layers + 1 (embedding) = 127 is not divisible by pp=16"),
    (126, 16, 2, dict(embedding_as_layer=True, loss_as_layer=True), "embedding_as_layer",
     "is not modeled with schedule interleaved"),
])
def test_a_split_that_cannot_be_built_names_its_key(layers: int, pp: int, v: int, keys: dict[str, Any], key: str,
                                                    message: str) -> None:
    with pytest.raises(SplitError) as info:
        split_layers(layers, pp, v, **keys)
    assert info.value.key == key
    assert message in info.value.message


def test_split_keys_state_a_split_as_simply_as_it_can() -> None:
    """What the planner writes into best.yaml: nothing for the default, Megatron-LM's counts, else the list."""
    for layers, counts in [(126, (7,) + (8,) * 14 + (7,)), (126, (6,) + (8,) * 15), (126, (8,) * 15 + (6,)),
                           (70, (6,) * 11 + (4,)), (3, (0, 3)), (12, (1, 5, 4, 2)), (12, (3, 3, 3, 3))]:
        keys = split_keys(counts, layers)
        assert split_layers(layers, len(counts), **keys) == counts
    assert split_keys((7,) + (8,) * 14 + (7,), 126) == {}
    assert split_keys((6,) + (8,) * 15, 126) == {"first_stage_layers": 6}
    assert split_keys((1, 5, 4, 2), 12) == {"stage_layers": [1, 5, 4, 2]}
    assert describe_split((5, 6, 6, 5)) == "5,6,6,5"


# ------------------------------------------------------------------------------------- the scenario
def test_an_uneven_pipeline_is_accepted_and_laid_out() -> None:
    """layers % pp != 0 was an error; now the default split (or a stated one) lays it out."""
    scenario = parse_scenario(_scenario(7, pp=2))
    layout = resolve_layout(scenario.strategies[0], scenario.workload, None, "cpu")
    assert not isinstance(layout, tuple) and layout.stage_layers == (4, 3)
    scenario = parse_scenario(_scenario(7, pp=3, stage_layers=[1, 3, 3]))
    layout = resolve_layout(scenario.strategies[0], scenario.workload, None, "cpu")
    assert not isinstance(layout, tuple) and layout.stage_layers == (1, 3, 3)


@pytest.mark.parametrize(("layers", "strategy", "expected"), [
    (7, dict(pp=3, stage_layers=[1, 3, 2]), "strategies[0].stage_layers: the counts add up to 6, not layers=7"),
    (7, dict(pp=3, stage_layers=[1, 3]), "strategies[0].stage_layers: 2 counts for pp=3 (one per pipeline stage)"),
    (7, dict(pp=3, stage_layers=[1, -3, 9]), "strategies[0].stage_layers[1]: -3: out of range; "
                                             "allowed: >= 0"),
    (8, dict(pp=4, first_stage_layers=3), "strategies[0].first_stage_layers: 3: leaves 5 layers for the other 3"),
    (8, dict(pp=4, first_stage_layers=0), "strategies[0].first_stage_layers: 0: out of range; "
                                          "allowed: >= 1"),
    (8, dict(pp=2, embedding_as_layer=True), "strategies[0].embedding_as_layer: layers + 1 (embedding) = 9 is not "
                                            "divisible by pp=2"),
    (8, dict(pp=2, stage_layers=[4, 4], last_stage_layers=4), "strategies[0].stage_layers: give either"),
    (8, dict(pp=2, schedule="interleaved", virtual_stages=2, stage_layers=[3, 5]),
     "strategies[0].stage_layers: stage 0 has 3 layers; with schedule interleaved"),
])
def test_bad_splits_are_one_line_errors_naming_the_key(layers: int, strategy: dict[str, Any], expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_scenario(layers, **strategy), "s.yaml")
    message = str(info.value)
    assert message.startswith(f"s.yaml: {expected}")
    assert "\n" not in message


def test_the_command_line_says_it_in_one_line_and_exits_2(write_scenario, capsys) -> None:
    from llmsim.cli import main

    data = _scenario(8, pp=4, first_stage_layers=3)
    path = write_scenario(data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"llmsim: error: {path}: strategies[0].first_stage_layers: 3: leaves 5 layers")
    assert "\n" not in err and "Traceback" not in err
    assert main(["validate", str(write_scenario(_scenario(7, pp=2)))]) == 0  # 7 layers on 2 stages: 4 + 3


def test_the_allowed_end_counts_are_computed_not_enumerated() -> None:
    """The error's 'allowed' lists come from arithmetic (a model may have 10^8 layers: enumerating them hung
    `llmsim plan`); they equal the brute-force lists on small models (the divisors: tests/test_divisors.py)."""
    from llmsim.stages import _end_counts

    for layers in range(1, 30):
        for middle_stages in range(0, 5):
            for other in range(0, layers + 1):
                def even(f: int) -> bool:
                    rest = layers - f - other
                    return rest == 0 if middle_stages == 0 else rest >= middle_stages and rest % middle_stages == 0
                assert list(_end_counts(layers, other, middle_stages)) == \
                    [f for f in range(1, layers + 1) if even(f)]
    assert len(_end_counts(100_000_000, 0, 14)) > 7_000_000
