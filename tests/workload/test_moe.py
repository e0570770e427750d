"""Mixture of experts: the scenario keys and their rules, the published sizes (total and active), the layer
running for real (routing, capacity, the auxiliary loss's gradient), and its traced profile (top-k FLOPs under
region "experts", the parameter fields, and the 2-layer scaling with mixed dense and MoE layers)."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
import torch.nn.functional as F

from llmsim.cli import main
from llmsim.config import ModelSpec, SharingChoice, Workload, parse_scenario
from llmsim.errors import ScenarioError
from llmsim.strategy import Layout, resolve_layout
from llmsim.workload.model import build_model, count_active_parameters, count_parameters
from llmsim.workload.moe import MoELayer, balanced_counts, expert_capacity
from llmsim.workload.presets import ACTIVE_WITHOUT_EMBEDDING, PUBLISHED_MOE_PARAMS, PUBLISHED_MOE_PRECISION
from llmsim.workload.profile import _trace, profile_at_depth, profile_workload
from llmsim.workload.step import WorkloadStep


def _scenario(model: dict | None = None, strategies: list | None = None, **workload: object) -> dict:
    return {"name": "moe", "workload": {"model": {"preset": "tiny-moe", **(model or {})}, "batch": 4, **workload},
            "strategies": strategies or [{"name": "single"}]}


def _error(data: dict) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)
    return str(info.value)


# ------------------------------------------------------------------------------------------ scenario keys
def test_moe_defaults_fill_from_the_model() -> None:
    spec = ModelSpec(preset="tiny", moe={"experts": 4})
    assert spec.moe is not None and spec.moe.expert_ffn_hidden == spec.ffn_hidden == 256
    assert spec.shared_expert_ffn == 256 and spec.moe.top_k == 2 and spec.moe.capacity_factor is None
    assert spec.moe_layers == spec.layers


def test_preset_moe_keys_override_one_by_one() -> None:
    spec = ModelSpec(preset="mixtral-8x7b", moe={"top_k": 1})
    assert spec.moe is not None and (spec.moe.experts, spec.moe.top_k, spec.moe.aux_loss_coeff) == (8, 1, 0.02)


def test_layer_pattern_first_dense_and_frequency() -> None:
    """DeepSeek-V3's rule: layer i is MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0."""
    spec = ModelSpec(preset="tiny-moe", layers=8, moe={"first_dense_layers": 1, "layer_freq": 2})
    assert [spec.is_moe_layer(i) for i in range(8)] == [False, False, True, False, True, False, True, False]
    assert spec.moe_layers == 3


@pytest.mark.parametrize("model, strategy, expected", [
    ({"moe": {"top_k": 5}}, {}, "workload.model.moe.top_k: top_k=5 exceeds experts=4"),
    ({"moe": {"load_imbalance": 2.5}}, {}, "workload.model.moe.load_imbalance: load_imbalance=2.5 exceeds experts/top_k = 2"),
    ({"moe": {"experts": 1}}, {}, "workload.model.moe.experts: 1: out of range; allowed: >= 2"),
    ({"moe": {"first_dense_layers": 2}}, {}, "no layer is a mixture of experts"),
    ({"moe": {"capacity_factor": 0}}, {}, "capacity_factor"),
    ({}, {"ep": 3}, "strategies[0].ep: 3 does not divide experts=4 (allowed: 1, 2, 4)"),
    ({}, {"tp": 2, "etp": 3}, "strategies[0].etp: 3 (the expert tensor-parallel size) does not divide "
                              "moe.expert_ffn_hidden=128"),
    ({}, {"ep_comm_overlap": True}, "strategies[0].ep_comm_overlap: overlaps the expert-parallel all-to-all; "
                                    "it needs ep > 1"),
])
def test_moe_rules_are_one_line_errors_naming_the_key(model: dict, strategy: dict, expected: str) -> None:
    message = _error(_scenario(model, [{"name": "s", **strategy}]))
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("key, value", [("ep", 2), ("etp", 1)])
def test_expert_parallelism_on_a_dense_model_names_the_key(key: str, value: int) -> None:
    data = {"name": "d", "workload": {"model": {"preset": "tiny"}}, "strategies": [{"name": "s", key: value}]}
    message = _error(data)
    assert message.startswith(f"<scenario>: strategies[0].{key}: {value}: expert") and "dense" in message


def test_layer_groups_must_keep_each_layer_kind() -> None:
    message = _error({**_scenario({"layers": 4, "moe": {"layer_freq": 2}}), "sharing": {"layer_groups": 1}})
    assert "sharing.layer_groups: 1: layer 1 would reuse block 0" in message
    parse_scenario({**_scenario({"layers": 4, "moe": {"layer_freq": 2}}), "sharing": {"layer_groups": 2}})


def test_expert_group_is_carved_from_the_data_parallel_ranks() -> None:
    """Megatron-Core: per pipeline stage tp*cp*dp = etp*ep*edp."""
    sc = parse_scenario(_scenario(strategies=[{"name": "ep2", "ep": 2}, {"name": "ep4tp2", "ep": 2, "tp": 2, "etp": 1}]))
    layout = resolve_layout(sc.strategies[0], sc.workload, 2, "cpu")
    assert isinstance(layout, Layout) and (layout.dp, layout.ep, layout.etp, layout.edp) == (2, 2, 1, 1)
    layout = resolve_layout(sc.strategies[1], sc.workload, 4, "cpu")
    assert isinstance(layout, Layout) and (layout.dp, layout.tp, layout.ep, layout.etp, layout.edp) == (2, 2, 2, 1, 2)
    key, message = resolve_layout(sc.strategies[0], sc.workload, None, "cpu")  # type: ignore[misc]
    assert key == "ep" and "does not divide the tp*cp*dp = 1*1*1 = 1 ranks" in message


@pytest.mark.parametrize("strategy, world, key, allowed", [
    ({"ep": 2, "tp": 2, "etp": 4}, 4, "etp", "allowed etp: 1, 2)"),  # ep 2 fits the 4 ranks alone: etp breaks it
    ({"ep": 4, "tp": 1}, 2, "ep", "allowed ep: 1, 2)"),                # ep 4 alone does not fit 2 ranks
])
def test_an_expert_grid_that_does_not_fit_blames_the_factor_that_breaks_it(strategy: dict, world: int, key: str,
                                                                          allowed: str) -> None:
    sc = parse_scenario(_scenario(strategies=[{"name": "s", **strategy}]))
    got, message = resolve_layout(sc.strategies[0], sc.workload, world, "cpu")  # type: ignore[misc]
    assert got == key and message.endswith(allowed)


def test_validate_exits_2_on_an_expert_rule(write_scenario, capsys) -> None:
    path = write_scenario(_scenario(strategies=[{"name": "bad", "ep": 3}]))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"llmsim: error: {path}: strategies[0].ep: 3 does not divide experts=4 (allowed: 1, 2, 4)"


def test_schema_documents_the_moe_keys(capsys) -> None:
    assert main(["schema"]) == 0
    schema = capsys.readouterr().out
    for key in ("expert_ffn_hidden", "capacity_factor", "norm_topk_prob", "ep_comm_overlap", "etp"):
        assert f'"{key}"' in schema


# ------------------------------------------------------------------------------------------ published sizes
@functools.lru_cache(maxsize=None)
def _meta_model(spec: ModelSpec) -> torch.nn.Module:
    """The model on the meta device, built once per spec and test process: a preset of 128 experts a layer takes
    seconds to build, and the published-count tests and the by-hand counts build the same ones (read only; the
    tests that count one preset share an xdist group, so one worker builds it)."""
    with torch.device("meta"):
        return build_model(spec, tie_embeddings=spec.tie_embeddings)


@pytest.mark.xdist_group("moe-models")
@pytest.mark.parametrize("preset", sorted(PUBLISHED_MOE_PARAMS))
def test_moe_presets_total_and_active_match_their_sources(preset: str) -> None:
    model = _meta_model(ModelSpec(preset=preset))
    total, active = count_parameters(model)[0], count_active_parameters(model)
    published_total, published_active = PUBLISHED_MOE_PARAMS[preset]
    if preset in ACTIVE_WITHOUT_EMBEDDING:
        spec = ModelSpec(preset=preset)
        active -= spec.vocab * spec.hidden
    assert abs(total - published_total) <= PUBLISHED_MOE_PRECISION
    assert abs(active - published_active) <= PUBLISHED_MOE_PRECISION


@pytest.mark.xdist_group("moe-models")
def test_mixtral_counts_by_hand() -> None:
    """Per layer: attention q, o (h*h each) and k, v (h * 8 * 128 each), router h*8, 8 SwiGLU experts of
    3*h*f, two RMSNorms; plus the untied embedding and head and the final norm."""
    h, f, v, layers = 4096, 14336, 32000, 32
    attn, router, expert, norms = 2 * h * h + 2 * h * 1024, h * 8, 3 * h * f, 2 * h
    edges = 2 * v * h + h
    model = _meta_model(ModelSpec(preset="mixtral-8x7b"))
    assert count_parameters(model)[0] == layers * (attn + router + 8 * expert + norms) + edges == 46_702_792_704
    assert count_active_parameters(model) == layers * (attn + router + 2 * expert + norms) + edges


@pytest.mark.xdist_group("moe-models")
def test_olmoe_normalises_the_whole_q_and_k_projections() -> None:
    """OLMoE's q_norm / k_norm weigh the whole projection (2048 each), not one head (128): 16 layers x 2 x
    (2048 - 128) parameters more than a per-head norm."""
    per_projection = count_parameters(_meta_model(ModelSpec(preset="olmoe-1b-7b")))[0]
    per_head = count_parameters(_meta_model(ModelSpec(preset="olmoe-1b-7b", qk_norm=True)))[0]
    assert per_projection - per_head == 16 * 2 * (2048 - 128)
    assert per_projection == 6_919_161_856


# ------------------------------------------------------------------------------------------ the real layer
def _layer(**moe: object) -> tuple[MoELayer, ModelSpec]:
    spec = ModelSpec(preset="tiny-moe", moe={"experts": 4, "top_k": 2, **moe})
    torch.manual_seed(0)
    model = build_model(spec, tie_embeddings=False)
    layer = model.blocks[0].mlp
    assert isinstance(layer, MoELayer)
    return layer, spec


def _reference(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output written token by token: sum over the top-k experts of gate * expert(x)."""
    flat = x.reshape(-1, x.shape[-1])
    probs = layer.router(flat).float().softmax(-1)
    weights, chosen = probs.topk(layer.top_k, dim=-1)
    if layer.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    rows = []
    for i in range(flat.shape[0]):
        rows.append(sum(weights[i, j] * layer.experts[str(int(chosen[i, j]))](flat[i:i + 1])[0]
                        for j in range(layer.top_k)))
    y = torch.stack(rows)
    if layer.shared is not None:
        y = y + layer.shared(flat)
    return y.view_as(x)


@pytest.mark.parametrize("moe", [{}, {"norm_topk_prob": False}, {"shared_experts": 2}])
def test_layer_equals_the_token_by_token_sum(moe: dict) -> None:
    layer, spec = _layer(**moe)
    x = torch.randn(2, 8, spec.hidden)
    torch.testing.assert_close(layer(x), _reference(layer, x))
    assert int(layer.tokens_per_expert.sum()) == 2 * 8 * 2  # every assignment counted


def test_capacity_drops_the_lowest_gates_beyond_the_capacity() -> None:
    layer, spec = _layer(capacity_factor=0.5)
    x = torch.randn(2, 16, spec.hidden)
    n, k, e = 32, 2, 4
    capacity = expert_capacity(n, k, e, 0.5)
    assert capacity == 8
    layer(x)
    loads = layer.tokens_per_expert.tolist()
    assert sum(loads) == n * k and max(loads) > capacity  # routing demand is recorded before dropping
    flat = x.reshape(-1, spec.hidden)
    probs = layer.router(flat).float().softmax(-1)
    weights, chosen = probs.topk(k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    expected = torch.zeros_like(flat)
    for expert in range(e):
        tokens, slots = (chosen == expert).nonzero(as_tuple=True)
        gates = weights[tokens, slots]
        keep = gates.argsort(descending=True)[:capacity]
        for t, g in zip(tokens[keep].tolist(), gates[keep]):
            expected[t] += g * layer.experts[str(expert)](flat[t:t + 1])[0]
    torch.testing.assert_close(layer(x).reshape(-1, spec.hidden), expected)


def test_aux_loss_gradient_equals_that_of_the_loss_plus_aux() -> None:
    """The auto-scaler (Megatron-Core MoEAuxLossAutoScaler) gives the router the gradient of CE + aux."""
    layer, spec = _layer(aux_loss_coeff=0.5)
    layer.train()
    x = torch.randn(2, 8, spec.hidden)
    target = torch.randn(2, 8, spec.hidden)
    F.mse_loss(layer(x), target).backward()
    through_layer = layer.router.weight.grad.clone()
    layer.zero_grad()
    # The same by hand: the aux loss added to the loss (with the autoscaler's scale 0: no gradient from it).
    layer.aux_grad_scale = 0.0
    y = layer(x)
    flat = x.reshape(-1, spec.hidden)
    probs = layer.router(flat).float().softmax(-1)
    chosen = probs.topk(2, dim=-1).indices
    f = torch.zeros(4).scatter_add_(0, chosen.reshape(-1), torch.ones(chosen.numel())) / chosen.numel()
    aux = 0.5 * 4 * (f * probs.mean(0)).sum()
    (F.mse_loss(y, target) + aux).backward()
    torch.testing.assert_close(through_layer, layer.router.weight.grad)
    assert torch.count_nonzero(through_layer) > 0


def test_training_step_reports_loss_with_aux_and_runs_every_mode() -> None:
    sc = parse_scenario(_scenario({"moe": {"shared_experts": 1, "capacity_factor": 1.25}}))
    step = WorkloadStep(sc.workload, sc.sharing_choice(sc.strategies[0]))
    logits = step.model(step.tokens)  # with grad: the aux loss is computed for training forwards only
    ce = F.cross_entropy(logits.flatten(0, 1).float(), step.targets.flatten())
    aux = step.model.pop_aux_loss()
    assert aux > 0  # two layers, coefficient 0.01, about 0.01 each when balanced
    assert float(step.step()) == pytest.approx(float(ce.detach()) + aux, rel=1e-5)
    for mode in ("prefill", "decode"):
        sc = parse_scenario(_scenario(mode=mode, decode_tokens=3))
        out = WorkloadStep(sc.workload, sc.sharing_choice(sc.strategies[0])).step()
        assert out.shape == (4, 1)


# ------------------------------------------------------------------------------------------ the profile
def test_balanced_counts_add_up() -> None:
    assert balanced_counts(10, 4) == [3, 3, 2, 2]
    assert sum(balanced_counts(256 * 8, 128)) == 256 * 8


def test_traced_expert_flops_are_exactly_top_k() -> None:
    """Forward of the routed experts: each of the N*k assignments passes one SwiGLU expert, 2 FLOPs per
    multiply-add over its 3*h*f weights; backward twice that. The router (2*N*h*E) is in region layers."""
    sc = parse_scenario(_scenario({"layers": 3, "moe": {"first_dense_layers": 1, "shared_experts": 1}}))
    spec = sc.workload.model
    profile = profile_workload(sc.workload, sc.sharing_choice(sc.strategies[0]))
    n, k, h, f, e = 4 * spec.seq_len, 2, spec.hidden, spec.expert_ffn, 4
    assert profile.moe_layers == 2
    assert profile.flops("forward", region="experts") == 2 * n * k * 3 * h * f * 2
    assert profile.flops("backward", region="experts") == 2 * profile.flops("forward", region="experts")
    dense = profile_workload(Workload(model=spec.model_copy(update={"moe": None}), batch=4),
                             sc.sharing_choice(sc.strategies[0]))
    # Layers region: the dense model's, less the 2 MoE layers' dense MLPs (3*h*ffn), plus router and shared.
    mlp, router, shared = 2 * n * 3 * h * spec.ffn_hidden, 2 * n * h * e, 2 * n * 3 * h * f
    assert profile.flops("forward", region="layers") == dense.flops("forward", region="layers") + 2 * (
        router + shared - mlp)
    assert profile.expert_params == 2 * 4 * 3 * h * f
    assert profile.active_params == profile.params - 2 * 2 * 3 * h * f
    assert (dense.moe_layers, dense.expert_params, dense.active_params) == (0, 0, dense.params)


@pytest.mark.parametrize("mode", ["train", "decode"])
def test_scaling_from_two_layers_is_exact_with_mixed_layers(mode: str) -> None:
    """8 layers, layer 0 dense, then MoE every other layer (2, 4, 6): a dense and an MoE 2-layer trace,
    each scaled to its layer count, equal the 8-layer trace field by field (AdamW's operator count follows
    its tensors, which scaling does not track: its bytes are compared). tiny-moe's rotary positions: RoPE's
    cos/sin buffers, saved as views by every layer, are model state, not activations (workload.profile)."""
    sc = parse_scenario(_scenario({"layers": 8,
                                   "moe": {"first_dense_layers": 1, "layer_freq": 2, "shared_experts": 1}},
                                  mode=mode, decode_tokens=3))
    sharing = sc.sharing_choice(sc.strategies[0])
    traced, scaled = _trace(sc.workload, sharing), profile_at_depth(sc.workload, sharing, 8)
    fields = [f.name for f in dataclasses.fields(traced) if f.name != "ops"]
    assert {f: getattr(scaled, f) for f in fields} == {f: getattr(traced, f) for f in fields}
    assert scaled.ops.keys() == traced.ops.keys()
    for key in traced.ops:
        if key[0] == "optimizer":
            # up to its per-tensor step counters (an MoE layer has many small tensors)
            assert scaled.ops[key].bytes == pytest.approx(traced.ops[key].bytes, rel=1e-5)
        else:
            assert scaled.ops[key] == traced.ops[key], key


def test_scaling_a_dense_rotary_model_from_two_layers_is_exact() -> None:
    """tiny-moe's shape without experts, rotary positions: the 2-layer trace scaled to 8 layers saves the
    traced bytes (RoPE's cos/sin buffers, saved by every layer, were once counted as per-layer bytes)."""
    sc = parse_scenario(_scenario({"layers": 8, "moe": None}))
    sharing = sc.sharing_choice(sc.strategies[0])
    traced, scaled = _trace(sc.workload, sharing), profile_at_depth(sc.workload, sharing, 8)
    assert sc.workload.model.positions == "rotary"
    assert (scaled.activation_bytes, scaled.activation_bytes_per_layer) == \
        (traced.activation_bytes, traced.activation_bytes_per_layer)


@pytest.mark.xdist_group("moe-models")
def test_qwen3_30b_a3b_counts_by_hand() -> None:
    """48 layers of: q (h x 32*128), k and v (h x 4*128 each), o (32*128 x h), per-head q/k norms (2 x 128),
    router h x 128, 128 SwiGLU experts of 3*h*768, two RMSNorms; untied embedding and head, final norm."""
    h, v = 2048, 151936
    attn, norms, router, expert = 2 * h * 4096 + 2 * h * 512 + 2 * 128, 2 * h, h * 128, 3 * h * 768
    edges = 2 * v * h + h
    model = _meta_model(ModelSpec(preset="qwen3-30b-a3b"))
    assert count_parameters(model)[0] == 48 * (attn + norms + router + 128 * expert) + edges == 30_532_122_624
    assert count_active_parameters(model) == 48 * (attn + norms + router + 8 * expert) + edges == 3_353_032_704


# ------------------------------------------------------------------------------------------ measured rows
def test_cpu_backend_reports_active_parameters_and_the_measured_routing() -> None:
    from llmsim.backend import RunContext
    from llmsim.plugins import get_plugin_manager
    from llmsim.registry import BackendRegistry
    from llmsim.runner import plan_cases
    from llmsim_plugins.cpu import CpuBackend, CpuSettings

    sc = parse_scenario({**_scenario(dtype="float32"), "backends": {"cpu": {}}})
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={"LLMSIM_PLUGINS": "cpu"}))
    case = plan_cases(sc, registry)[0].case
    r = CpuBackend(RunContext()).run(case, CpuSettings(steps=1, warmup=1))
    assert r.status == "ok", r.error
    profile = profile_workload(case.workload, case.sharing)
    assert (r.params, r.params_active) == (profile.params, profile.active_params) and r.params_active < r.params
    loads = json.loads(r.extra["expert_tokens"])
    assert [sum(layer) for layer in loads] == [2 * 4 * 64 * 2] * 2  # two steps of 4 x 64 tokens, top-2
    assert r.expert_load_imbalance == max(max(layer) * 4 / sum(layer) for layer in loads) >= 1.0


def test_report_shows_total_active_parameters_and_the_loads_per_layer() -> None:
    import pandas as pd

    from llmsim.report.tables import experts_table

    frame = pd.DataFrame([
        dict(case="ep2", backend="cpu", status="ok", ep=2, params=345_000, params_active=247_000,
             expert_load_imbalance=1.25, expert_tokens=json.dumps([[10, 6, 12, 4], [8, 8, 8, 8]])),
        dict(case="dense", backend="cpu", status="ok", ep=1, params=1000, params_active=1000,
             expert_load_imbalance=None, expert_tokens=None)])
    table = experts_table(frame)
    assert table is not None and len(table.rows) == 1  # the dense row is left out
    texts = [c.text for c in table.rows[0]]
    assert texts[-1] == "layer 0: 10 · 6 · 12 · 4 (max/mean 1.5); layer 1: 8 · 8 · 8 · 8 (max/mean 1)"
    assert experts_table(frame.iloc[1:]) is None
