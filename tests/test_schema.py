"""`llmsim schema` (llmsim.schema): each installed backend's block, with the values known to be allowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, hookimpl
from llmsim.cli import main
from llmsim.hardware import CATALOG_DEVICE, CATALOG_LINK
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.schema import scenario_schema


def _schema(capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["schema"]) == 0
    return json.loads(capsys.readouterr().out)


def _names(prop: dict) -> list[str]:
    """The catalog names a setting's schema offers (its anyOf's enum branch)."""
    return next(b["enum"] for b in prop["anyOf"] if "enum" in b)


def test_the_schema_lists_each_installed_backend_with_its_allowed_values(capsys: pytest.CaptureFixture[str]) -> None:
    """The modeled backends' blocks: hardware and link names from the catalog (any other string stays allowed: a
    scenario's own hardware_catalog entry), the attention kernels and all-reduce libraries enumerated."""
    schema = _schema(capsys)
    backends = schema["properties"]["backends"]["properties"]
    assert {"roofline", "cluster", "cpu"} <= set(backends)
    roofline = backends["roofline"]["properties"]
    assert {"a100-80gb", "a100-80gb-pcie", "h100-sxm", "tpu-v5e"} <= set(_names(roofline["hardware"]))
    assert {"string"} == {b.get("type") for b in roofline["hardware"]["anyOf"] if "enum" not in b}
    assert {"pcie4", "nvlink3-bridge", "ib-ndr400x8"} <= set(_names(roofline["inter_node"]))
    assert {"type": "null"} in roofline["intra_node"]["anyOf"]  # default: the device's
    assert roofline["attention"]["enum"] == ["flash", "cudnn", "flash3", "trtllm-mmha", "fused-softmax", "math"]
    assert roofline["all_reduce"]["enum"] == ["nccl", "vllm"]
    assert backends["roofline"]["additionalProperties"] is False
    # a nested model of a backend's settings is defined under its own name
    straggler = backends["cluster"]["properties"]["straggler"]
    assert "#/$defs/cluster.Straggler" in json.dumps(straggler) and "cluster.Straggler" in schema["$defs"]


class NpuSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hardware: str = Field("npu-x", json_schema_extra=CATALOG_DEVICE)
    fabric: str | None = Field(None, json_schema_extra=CATALOG_LINK)


class NpuBackend(Backend):
    name = "npu-sim"
    kind = "modeled"
    Settings = NpuSettings

    def run(self, case, settings):  # a concrete backend (an abstract one is a broken plugin)
        raise NotImplementedError


class NpuPlugin:
    @hookimpl
    def llmsim_backends(self):
        return [NpuBackend]

    @hookimpl
    def llmsim_hardware(self):
        return [{"name": "npu-x", "type": "device", "peak_flops": {"bfloat16": 1e15}, "memory_bytes": 64e9,
                 "memory_bw_bytes_per_s": 2e12, "idle_power_w": 50, "max_power_w": 500, "source": "vendor sheet"}]


def test_a_plugins_backend_and_hardware_reach_the_schema_through_the_hooks() -> None:
    """A plugin's backend settings and its catalog entries come from the plugin manager (no built-in imported):
    its device is listed wherever a setting marks itself as naming one, its own included."""
    from llmsim.hardware import load_catalog

    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(NpuPlugin(), name="npu")
    catalog = load_catalog(plugin_entries=[(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es])
    schema = scenario_schema(BackendRegistry.from_manager(manager), catalog)
    npu = schema["properties"]["backends"]["properties"]["npu-sim"]["properties"]
    assert list(schema["properties"]["backends"]["properties"]) == ["npu-sim"]
    assert "npu-x" in _names(npu["hardware"]) and "a100-80gb" in _names(npu["hardware"])
    assert "pcie4" in _names(npu["fabric"]) and {"type": "null"} in npu["fabric"]["anyOf"]


def test_the_schema_module_imports_no_built_in_plugin() -> None:
    code = ("import sys, llmsim.schema; bad = [m for m in sys.modules if m.split('.')[0] in ('plugins', "
            "'llmsim_plugins')]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in SCENARIOS if not p.name.startswith("plan-")],  # plans: not scenarios
                         ids=lambda p: p.name)
def test_every_shipped_scenario_passes_the_schema(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An editor or CI that checks a scenario with `llmsim schema`'s output accepts the files we ship (a model
    named by its preset, without layers / hidden / heads / vocab / seq_len, was refused)."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(yaml.safe_load(path.read_text()), _schema(capsys))


def test_a_model_without_a_preset_still_needs_its_shape(capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _schema(capsys)
    scenario = {"name": "x", "workload": {"model": {"layers": 2, "hidden": 64}}, "strategies": [{"name": "s"}],
                "backends": {"roofline": {}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scenario, schema)


@pytest.mark.parametrize("change", [{"slo": {"ttft_s": 1, "percentile": 101}},
                                    {"slo": {"ttft_s": 1, "percentile": 0}},
                                    {"slo": {"itl_s": 1, "itl_percentile": 150}},
                                    {"speculative": {"method": "ngram", "num_draft_tokens": 2, "acceptance": 1.5}},
                                    {"speculative": {"method": "ngram", "num_draft_tokens": 2, "acceptance": [0.5, 0]}}])
def test_the_schema_bounds_what_the_command_refuses(capsys: pytest.CaptureFixture[str], change: dict) -> None:
    """An editor checking with the schema flagged no percentile of 101 or acceptance of 1.5, which the command line
    refuses (trial 23): the schema carries the same ranges."""
    jsonschema = pytest.importorskip("jsonschema")
    scenario = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios" / "serve-8b.yaml").read_text())
    schema = _schema(capsys)
    jsonschema.validate(scenario, schema)
    scenario["serving"].update(change)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scenario, schema)


def test_presets_and_expert_weight_dtypes_are_offered_as_choices(capsys: pytest.CaptureFixture[str]) -> None:
    from llmsim.workload.presets import PRESETS

    defs = _schema(capsys)["$defs"]
    preset = defs["ModelSpec"]["properties"]["preset"]
    assert {"enum": list(PRESETS)} in preset["anyOf"] and "deepseek-v3" in PRESETS and "gpt-oss-20b" in PRESETS
    assert {"enum": ["mxfp4"]} in defs["MoeSpec"]["properties"]["expert_weight_dtype"]["anyOf"]


def test_each_disaggregated_side_offers_its_own_expert_layout(capsys: pytest.CaptureFixture[str]) -> None:
    """serving.disaggregation.prefill / decode: replicas, tp and the strategy's ep, etp, attention_dp (null = the
    strategy's), nothing else; kv_transfer.link offers the catalog's links."""
    defs = _schema(capsys)["$defs"]
    side = defs["DisaggPool"]
    assert set(side["properties"]) == {"replicas", "tp", "ep", "etp", "attention_dp"}
    assert side["additionalProperties"] is False
    for key in ("ep", "etp", "attention_dp"):
        prop = side["properties"][key]
        assert prop["default"] is None and {"minimum": 1, "maximum": 2**31 - 1, "type": "integer"} in prop["anyOf"]
        assert "strategy's" in prop["description"]
    assert "nvlink4" in _names(defs["KVTransfer"]["properties"]["link"])
