"""The `mla` block of a model (multi-head latent attention, docs/scenario.md): defaults, fills, and the one-line
message for what it refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llmsim.cli import main
from llmsim.config import ModelSpec, parse_scenario
from llmsim.errors import ScenarioError
from tests.conftest import TINY_SCENARIO

MLA = {"kv_lora_rank": 32}


def _scenario(model: dict[str, Any], **top: Any) -> dict[str, Any]:
    data = copy.deepcopy(TINY_SCENARIO)
    data["workload"]["model"] = model
    data.update(top)
    return data


def test_defaults_are_hugging_face_deepseek_configs_and_head_dim_is_nope_plus_rope() -> None:
    spec = ModelSpec(preset="tiny-moe", mla=MLA)
    assert spec.mla is not None
    m = spec.mla
    assert (m.q_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim) == (None, 128, 64, 128)
    assert spec.head_dim == 192 and spec.kv_heads == spec.heads
    assert spec.attention_width == spec.heads * 128           # the out projection reads heads x v_head_dim
    assert spec.cache_elements_per_layer == 32 + 64           # the latent and the shared rotary key
    assert spec.kv_split(8) == 1                              # whole on every tensor-parallel rank
    dense = ModelSpec(preset="tiny-moe", kv_heads=2)
    assert dense.mla is None and dense.kv_split(8) == 2 and dense.cache_elements_per_layer == 2 * 2 * 16


def test_a_preset_s_mla_keys_override_one_by_one() -> None:
    spec = ModelSpec(preset="deepseek-v3", mla={"kv_lora_rank": 256})
    assert spec.mla is not None and (spec.mla.kv_lora_rank, spec.mla.q_lora_rank) == (256, 1536)


@pytest.mark.parametrize("model, expected", [
    ({"preset": "tiny-moe", "kv_heads": 2, "mla": MLA},
     "workload.model.kv_heads: kv_heads=2 with mla: multi-head latent attention decompresses keys and values for "
     "every head (allowed: omit kv_heads, or 4 = heads)"),
    ({"preset": "tiny-moe", "head_dim": 64, "mla": MLA},
     "workload.model.head_dim: head_dim=64 with mla: it is qk_nope_head_dim + qk_rope_head_dim (allowed: omit "
     "head_dim, or 192)"),
    ({"preset": "tiny", "mla": MLA},
     "workload.model.positions: positions=learned with mla: its decoupled key is rotary (allowed: rotary)"),
    ({"preset": "tiny-moe", "qk_norm": True, "mla": MLA},
     "workload.model.qk_norm: qk_norm=True with mla: the latents have their own RMSNorms (allowed: false)"),
    ({"preset": "tiny-moe", "parallel_block": True, "mla": MLA},
     "workload.model.parallel_block: parallel_block=true with mla is not modelled (allowed: false)"),
    ({"preset": "tiny-moe", "sliding_window": 16, "mla": MLA},
     "workload.model.sliding_window: sliding_window=16 with mla is not modelled (allowed: null)"),
    ({"preset": "tiny-moe", "attention_sinks": True, "mla": MLA},
     "workload.model.attention_sinks: attention_sinks=true with mla is not modelled (allowed: false)"),
    ({"preset": "tiny-moe", "mla": {"q_lora_rank": 16}},
     "workload.model.mla.kv_lora_rank: required key is missing"),
    ({"preset": "tiny-moe", "mla": {"kv_lora_rank": 32, "qk_rope_head_dim": 7}},
     "workload.model.mla.qk_rope_head_dim: qk_rope_head_dim=7 must be even"),
    ({"preset": "tiny-moe", "mla": {"kv_lora_rank": 32, "latent": 3}},
     "workload.model.mla.latent: unknown key; allowed: kv_lora_rank, q_lora_rank"),
])
def test_refusals_are_one_line_naming_the_key(model: dict[str, Any], expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_scenario(model), "s.yaml")
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_lora_on_an_mla_model_is_refused() -> None:
    data = _scenario({"preset": "tiny-mla"}, sharing={"lora": {"rank": 4}})
    with pytest.raises(ScenarioError, match=r"sharing\.lora: LoRA on a multi-head latent attention model"):
        parse_scenario(data, "s.yaml")


def test_the_vllm_backend_refuses_an_mla_model_exit_2(write_scenario, capsys) -> None:
    """The vllm backend writes Llama/GPT-2 checkpoints only: one line naming workload.model.mla, exit 2."""
    data = _scenario({"preset": "tiny-mla"}, backends={"vllm": {}},
                     serving={"requests": 4, "arrival": {"kind": "poisson", "rate": 1},
                              "lengths": {"input": 8, "output": 4}})
    data["workload"].pop("mode")
    assert main(["validate", str(write_scenario(data))]) == 2
    err = capsys.readouterr().err.strip()
    assert "workload.model.mla: the vllm backend writes Llama- or GPT-2-style checkpoints" in err
    assert "\n" not in err
