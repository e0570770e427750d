"""The roofline backend: registered like any plugin, every column filled, sweeps, does-not-fit rows."""

from __future__ import annotations

from typing import Any

import pytest

from llmsim.backend import RunContext
from llmsim.config import parse_scenario
from llmsim.errors import ScenarioError
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry
from llmsim.results import COLUMNS, SERVING_COLUMNS
from llmsim.runner import PlannedCase, plan_cases
from llmsim_plugins.roofline import RooflineBackend, RooflineSettings

REGISTRY = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "roofline"}))


def _planned(workload: dict[str, Any], strategies: list[dict[str, Any]], **settings: Any) -> list[PlannedCase]:
    scenario = parse_scenario({"name": "roofline-test", "workload": workload, "strategies": strategies,
                               "backends": {"roofline": settings}})
    return plan_cases(scenario, REGISTRY)


def _run(planned: PlannedCase):
    return RooflineBackend(RunContext()).run(planned.case, planned.settings)


GPT2 = {"model": {"preset": "gpt2-small", "seq_len": 256}, "mode": "train", "batch": 16}


def test_registered_through_the_entry_point_group() -> None:
    assert REGISTRY.get("roofline") is RooflineBackend
    assert RooflineBackend.kind == "modeled"


def test_every_contract_column_is_filled_for_a_training_case() -> None:
    [planned] = _planned(GPT2, [{"name": "tp2", "tp": 2, "sp": True}], nodes=1, devices_per_node=8)
    r = _run(planned)
    assert r.status == "ok", r.error
    row = r.row()
    # train has no first token; no sharing was asked for
    not_applicable = {"error", "ttft_s", "tpot_s", "layer_groups", "lora_rank", "step_time_p10_s",
                      "step_time_p90_s",  # a modeled row has no measured spread
                      "expert_load_imbalance",  # dense: no experts
                      "all_reduce"} | set(SERVING_COLUMNS)  # a training pass's all-reduces are NCCL's, not a setting
    missing = [c for c in COLUMNS if row[c] is None and c not in not_applicable]
    assert missing == []
    assert (r.dp, r.tp, r.n_devices, r.hardware, r.energy_source) == (4, 2, 8, "a100-80gb", "modeled")
    assert r.latency_p50_s == r.latency_p99_s == r.step_time_s
    assert r.compute_time_s + r.comm_time_s + r.bubble_time_s + r.other_time_s == pytest.approx(r.step_time_s)
    assert r.t_ideal_s == pytest.approx(r.m_submodels * r.c_per_submodel_s / r.n_devices)
    # MFU = model FLOPs / (step x devices x peak) (Chowdhery et al. 2022, App. B); T = m*C/n with m*C the
    # whole step on one device of the cluster
    from llmsim.costmodel import ClusterSpec, Plan, single_device_step_time
    from llmsim.hardware import load_catalog
    from llmsim.workload.profile import profile_workload

    case = planned.case
    profile = profile_workload(case.workload, case.sharing)
    catalog = load_catalog()
    device = catalog.device("a100-80gb")
    assert r.mfu == pytest.approx(profile.model_flops_per_step / (r.step_time_s * 8 * device.peak_flops["bfloat16"]),
                                  rel=1e-12)
    cluster = ClusterSpec(device=device, intra=catalog.link(device.intra_node), inter=catalog.link(device.inter_node),
                          nodes=1, devices_per_node=8)
    one = single_device_step_time(case.workload, profile, case.sharing, Plan.of(case.strategy, case.layout), cluster)
    assert r.scaling_efficiency == pytest.approx(one / 8 / r.step_time_s, rel=1e-12)
    assert {"mem_params_bytes", "mem_grads_bytes", "mem_optimizer_bytes", "mem_activations_bytes",
            "mem_kv_cache_bytes"} <= set(r.extra)


def test_a_list_of_nodes_sweeps_the_cluster() -> None:
    planned = _planned(GPT2, [{"name": "dp"}], nodes=[1, 2])
    assert [p.case.name for p in planned] == ["dp@nodes=1", "dp@nodes=2"]
    assert [p.case.layout.dp for p in planned] == [8, 16]
    rows = [_run(p) for p in planned]
    assert [r.nodes for r in rows] == [1, 2]
    assert rows[1].step_time_s < rows[0].step_time_s
    assert RooflineBackend.world_size(RooflineSettings(nodes=3, devices_per_node=4)) == 12


def test_a_case_that_cannot_fit_is_a_does_not_fit_row_with_the_breakdown() -> None:
    workload = {"model": {"preset": "gpt3-175b", "layers": 8}, "mode": "train", "batch": 8}
    [planned] = _planned(workload, [{"name": "dp"}], hardware="a100-40gb", nodes=1)
    r = _run(planned)
    assert r.status == "does-not-fit"
    assert r.error.startswith("needs ") and "optimizer" in r.error and "> 42.9 GB" in r.error
    assert r.step_time_s is None and r.peak_memory_bytes_per_device > 42.9e9
    assert r.extra["mem_optimizer_bytes"] > r.extra["mem_params_bytes"]


def test_decode_fills_time_to_first_token_and_per_output_token() -> None:
    workload = {"model": {"preset": "llama2-7b", "layers": 4, "seq_len": 512}, "mode": "decode", "batch": 8,
                "decode_tokens": 16}
    [planned] = _planned(workload, [{"name": "tp8", "tp": 8}], hardware="h100-sxm")
    r = _run(planned)
    assert r.status == "ok", r.error
    assert r.step_time_s == pytest.approx(r.ttft_s + 15 * r.tpot_s)
    assert r.tokens_per_s == pytest.approx(8 * 16 / r.step_time_s)
    # K and V of 4 layers x 8 sequences x (512 + 16) positions x 32 KV heads x 128, bf16, split over tp=8
    assert r.extra["mem_kv_cache_bytes"] == 2 * 4 * 8 * (512 + 16) * 32 * 128 * 2 / 8


def test_a_metric_the_case_does_not_define_is_empty() -> None:
    """Issue 15 item 12: one generated token has no time per output token *after the first* (the roofline
    wrote 0.0, the cpu backend 3.2e-05 s); a training step has neither TTFT nor TPOT."""
    one = {"model": {"preset": "tiny"}, "mode": "decode", "batch": 2, "decode_tokens": 1}
    [planned] = _planned(one, [{"name": "single"}], nodes=1, devices_per_node=1)
    r = _run(planned)
    assert r.status == "ok" and r.ttft_s is not None and r.ttft_s > 0
    assert r.tpot_s is None
    [planned] = _planned({"model": {"preset": "tiny"}, "mode": "train", "batch": 2}, [{"name": "single"}],
                         nodes=1, devices_per_node=1)
    r = _run(planned)
    assert r.ttft_s is None and r.tpot_s is None
    # whatever a backend passes, the row keeps the case's rule (Case.result is every backend's row)
    assert planned.case.result(RooflineBackend, ttft_s=1.0, tpot_s=2.0).tpot_s is None


def test_a_device_the_model_cannot_price_yields_a_skipped_row() -> None:
    [planned] = _planned(dict(GPT2, dtype="float32"), [{"name": "one"}], hardware="tpu-v4",
                         devices_per_node=4)   # one v4 host: a 2x2x1 slice, the smallest v4 offers
    r = _run(planned)
    assert r.status == "skipped" and "float32" in r.error


def test_unknown_hardware_names_the_setting() -> None:
    [planned] = _planned(GPT2, [{"name": "one"}], hardware="a100-80gb", devices_per_node=1)
    settings = planned.settings.model_copy(update={"hardware": "z80"})
    with pytest.raises(ScenarioError, match="backends.roofline.hardware: unknown device 'z80'"):
        RooflineBackend(RunContext()).run(planned.case, settings)


def _capacity_boundary_rows(backend: type, planned: PlannedCase) -> dict[float, object]:
    """Run `planned` on catalog devices whose memory is the modeled need, one byte less and one byte more."""
    from llmsim.costmodel import Options, Plan, memory_breakdown
    from llmsim.workload.profile import profile_workload
    from tests.planner.helpers import small_catalog

    case = planned.case
    profile = profile_workload(case.workload, case.sharing)
    need = memory_breakdown(case.workload, profile, case.sharing, Plan.of(case.strategy, case.layout),
                            Options()).total
    rows = {}
    for delta in (0, -1, 1):
        context = RunContext(catalog=small_catalog(need + delta))
        settings = planned.settings.model_copy(update={"hardware": "small-gpu"})
        rows[delta] = backend(context).run(case, settings)
        assert rows[delta].peak_memory_bytes_per_device == need
    return rows


def test_memory_exactly_equal_to_the_capacity_runs_and_one_byte_over_does_not_fit() -> None:
    [planned] = _planned(GPT2, [{"name": "tp2-pp2", "tp": 2, "pp": 2}], nodes=1, devices_per_node=8)
    rows = _capacity_boundary_rows(RooflineBackend, planned)
    assert rows[0].status == "ok" and rows[0].step_time_s > 0, rows[0].error
    assert rows[1].status == "ok"
    assert rows[-1].status == "does-not-fit" and rows[-1].step_time_s is None


def test_the_activation_column_of_issue_14s_scenario_is_the_derived_inventory() -> None:
    """gpt3-175b, 2 layers, dropout 0.1, batch 1, micro_batch 1, roofline on one h200 with fused-softmax:
    per layer 34 sbh + 5 a s^2 b without recomputation, 34 sbh with selective (+ 16 s b of LayerNorm
    statistics each, which the closed forms leave out), plus the edges (costmodel.activations)."""
    from llmsim.costmodel import Plan
    from llmsim.costmodel.memory import edge_activation_bytes

    workload = {"model": {"preset": "gpt3-175b", "layers": 2, "dropout": 0.1}, "mode": "train", "batch": 1}
    strategies = [{"name": "none", "micro_batch": 1}, {"name": "selective", "micro_batch": 1, "recompute": "selective"}]
    rows = [_run(p) for p in _planned(workload, strategies, hardware="h200", devices_per_node=1,
                                      attention="fused-softmax")]
    s, h, a, stats = 2048, 12288, 96, 16 * 2048
    case = _planned(workload, strategies[:1], hardware="h200", devices_per_node=1)[0].case
    edges = sum(edge_activation_bytes(case.workload, case.sharing, Plan()))
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    assert rows[0].extra["mem_activations_bytes"] == 2 * (34 * s * h + 5 * a * s * s + stats) + edges
    assert rows[1].extra["mem_activations_bytes"] == 2 * (34 * s * h + stats) + edges


@pytest.mark.parametrize("kernel", ["cudnn", "flash3"])
def test_a_fused_kernel_the_device_has_no_figure_for_is_a_skipped_row_with_the_reason(kernel: str) -> None:
    """A100 has no cuDNN-attention figure and no FlashAttention-3 (Hopper only); on H100 both price, faster
    than FlashAttention-2 (costmodel.efficiency: the FlashAttention-3 paper's figures)."""
    [planned] = _planned(GPT2, [{"name": "single"}], nodes=1, devices_per_node=1, attention=kernel)
    r = _run(planned)
    assert r.status == "skipped"
    assert f"attention kernel '{kernel}' has no measured efficiency" in r.error
    [fused] = _planned(GPT2, [{"name": "single"}], hardware="h100-sxm", nodes=1, devices_per_node=1,
                       attention=kernel)
    [fa2] = _planned(GPT2, [{"name": "single"}], hardware="h100-sxm", nodes=1, devices_per_node=1)
    fast, slow = _run(fused), _run(fa2)
    assert fast.status == slow.status == "ok"
    assert fast.step_time_s < slow.step_time_s
    assert (fast.attention_kernel, slow.attention_kernel) == (kernel, "flash")   # result columns (results.COLUMNS)


def test_an_unknown_attention_kernel_is_a_scenario_error_naming_the_choices() -> None:
    with pytest.raises(ScenarioError, match="cudnn.*flash3"):
        _planned(GPT2, [{"name": "single"}], attention="flash4")


def test_the_vllm_all_reduce_setting_prices_a_tp_decode_with_vllms_custom_all_reduce() -> None:
    workload = {"model": {"preset": "llama2-7b", "layers": 4, "seq_len": 512}, "mode": "decode", "batch": 8,
                "decode_tokens": 16}
    [nccl] = _planned(workload, [{"name": "tp4", "tp": 4}], hardware="h100-sxm")
    [vllm] = _planned(workload, [{"name": "tp4", "tp": 4}], hardware="h100-sxm", all_reduce="vllm")
    assert nccl.settings.all_reduce == "nccl"
    a, b = _run(nccl), _run(vllm)
    assert a.status == b.status == "ok"
    assert b.tpot_s < a.tpot_s and b.comm_time_s < a.comm_time_s
    with pytest.raises(ScenarioError, match="all_reduce"):
        _planned(workload, [{"name": "tp4", "tp": 4}], hardware="h100-sxm", all_reduce="mpi")
