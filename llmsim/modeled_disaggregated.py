"""How a modeled backend answers a serving scenario with `serving.disaggregation`: prefill instances and decode
instances (llmsim.serving.disaggregation), each side's iterations priced by the cost model at its own tp and, for a
mixture of experts, its own ep, etp and attention_dp (serving.disaggregation.<side>: Disaggregation.side_strategy;
costmodel.iteration), each prompt's KV transfer priced from the catalog link (hardware catalog: latency_s,
bandwidth_bytes_per_s x efficiency). The colocated path is llmsim.modeled_serving.serve_case, which hands a
disaggregated case here.

Devices: prefill replicas x tp_p + decode replicas x tp_d (pp 1); the row's n_devices, tokens_per_s_per_device and
energy (each instance's devices, busy while it computes: costmodel.energy.step_energy_j) use them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from llmsim.costmodel import ClusterSpec, Options
from llmsim.costmodel.compute import CostModelError
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.iteration import IterationModel, token_costs
from llmsim.modeled_serving import (ServingFaults, capacity_problem, none_served, pricers, priced_options,
                                    replica_capacity, replica_plan, run_extras, serving_profile, unknown_memory)
from llmsim.results import Result
from llmsim.serving.disaggregation import (Pool, kv_bytes_per_port, simulate_disaggregated, transfer_link,
                                           transfer_seconds)
from llmsim.serving.metrics import summarize
from llmsim.serving.requests import Request, closed_loop_of, iter_requests
from llmsim.serving.spec import ServingCase

if TYPE_CHECKING:
    from llmsim.backend import Backend, Case
    from llmsim.costmodel import Plan


def serve_disaggregated(backend: "Backend", case: "Case", cluster: ClusterSpec, options: Options,
                        faults: ServingFaults = ServingFaults()) -> Result:
    """Simulate the case's disaggregated serving run on `cluster` (module docstring); the row with the serving
    columns, or a skipped / does-not-fit row saying why it cannot run."""
    serving = case.serving
    assert isinstance(serving, ServingCase)
    spec = serving.spec
    disagg = spec.disaggregation
    assert disagg is not None
    tp_p, tp_d = disagg.tp_of("prefill", case.strategy.tp), disagg.tp_of("decode", case.strategy.tp)
    n_p, n_d = disagg.prefill.replicas, disagg.decode.replicas
    devices = disagg.devices(case.strategy.tp)
    ref, profile = serving_profile(case.workload, case.sharing)
    sched = spec.scheduler
    base: dict[str, Any] = dict(hardware=cluster.device.name, nodes=math.ceil(devices / cluster.devices_per_node),
                                n_devices=devices, dp=n_p + n_d, mode="serve", batch=sched.max_num_seqs,
                                params=profile.params, trainable_params=profile.trainable_params,
                                params_active=profile.active_params, energy_source="modeled",
                                **priced_options(options, "serve"))
    if cluster.is_torus:
        return case.result(backend, status="skipped", error="serving.disaggregation is not modeled on a TPU slice "
                                                            "(its instances would have to tile the torus)", **base)
    plan = replica_plan(case, cluster)

    def side_plan(side: str):  # noqa: ANN202 - Plan
        # the side's own tp, ep, etp and attention_dp where it sets them, else the strategy's; an expert grid that
        # defaulted to the strategy's tp (etp unset) follows the side's tp, as the strategy's would
        s = disagg.side_strategy(side, case.strategy)
        return replace(plan, tp=s.tp, ep=s.ep, etp=s.expert_tp, attention_dp=s.attention_dp)

    plan_p, plan_d = side_plan("prefill"), side_plan("decode")
    adp_p, adp_d = plan_p.attention_dp, plan_d.attention_dp
    in_flight = serving.scheduler.pipeline_in_flight
    try:
        costs = token_costs(ref, profile, spec.kv_cache_dtype)
        model_p = IterationModel(costs, ref, plan_p, cluster, options, pipeline_in_flight=in_flight)
        model_d = IterationModel(costs, ref, plan_d, cluster, options, pipeline_in_flight=in_flight)
        for m in (model_p, model_d):
            _ = m.rates, m.attention_fraction   # CostModelError now (a skipped row), not inside the simulation
    except CostModelError as exc:
        return case.result(backend, status="skipped", error=str(exc), **base)
    unknown = unknown_memory(cluster)
    if unknown is not None:
        return case.result(backend, status="skipped", error=unknown, **base)
    cap_p = replica_capacity(case, ref, profile, plan_p, cluster, costs, options)
    cap_d = replica_capacity(case, ref, profile, plan_d, cluster, costs, options)
    memory = dict(mem_params_bytes=cap_d.weights_bytes, mem_workspace_bytes=cap_d.workspace_bytes,
                  mem_kv_cache_bytes=max(cap_d.kv_bytes, 0.0), kv_blocks_per_replica=cap_d.blocks,
                  kv_capacity_tokens=cap_d.tokens, kv_bytes_per_token=cap_d.bytes_per_token,
                  kv_blocks_per_prefill_replica=cap_p.blocks)
    for side, cap in (("prefill", cap_p), ("decode", cap_d)):
        short = capacity_problem(cap, spec.memory_utilization, case.workload.model.seq_len)
        if short is not None:
            return case.result(backend, status="does-not-fit", extra=memory, **base,
                               error=f"a {side} instance (tp {tp_p if side == 'prefill' else tp_d}): {short}")
    # the link: the one named, else the scenario's intra-node link when every instance fits one node
    catalog = backend.context.catalog
    named = disagg.kv_transfer.link
    spec_link = catalog.links[named] if named is not None else (
        cluster.intra if devices <= cluster.devices_per_node else cluster.inter)
    link = transfer_link(spec_link.bandwidth_bytes_per_s, spec_link.latency_s, spec_link.efficiency,
                         spec_link.shared_per_node, min(max(tp_p, tp_d), cluster.devices_per_node))
    layers = case.workload.model.layers
    # with attention data parallelism a request's KV cache lives on its rank's tp / attention_dp devices: those
    # send it (prefill) and receive it (decode)
    split_d = case.workload.model.kv_split(tp_d // adp_d)
    layerwise = disagg.kv_transfer.layerwise

    def transfer(request: Request, span_s: float) -> tuple[float, float]:
        per_port = kv_bytes_per_port(costs.kv_bytes_per_token, request.input_tokens, tp_p // adp_p, tp_d // adp_d,
                                     split_d)
        return transfer_seconds(per_port, link, layers, span_s, layerwise)

    host, eager = spec.host_step_on(cluster.device), spec.eager_launch_on(cluster.device)
    price_p = pricers(model_p, faults, host, eager)
    price_d = pricers(model_d, faults, host, eager)
    outcome = simulate_disaggregated(
        iter_requests(serving),
        prefill=Pool(n_p, cap_p.blocks, lambda kv: serving.scheduler(sched, kv), price_p, cap_p.layout, adp_p),
        decode=Pool(n_d, cap_d.blocks, lambda kv: serving.scheduler(sched, kv),
                    lambda j: price_d(n_p + j), cap_d.layout, adp_d),
        block_tokens=spec.kv_block_tokens, router=spec.router, context_tokens=case.workload.model.seq_len,
        transfer=transfer, request_overhead_s=spec.overhead_on(cluster.device), closed_loop=closed_loop_of(serving))
    row = summarize(outcome, serving.rate, spec.slo,
                    [sched.max_num_seqs * adp_p] * n_p + [sched.max_num_seqs * adp_d] * n_d)
    extra = {**row.pop("extra"), **memory, **outcome.extra}
    if (nothing := none_served(outcome, case.workload.model.seq_len)) is not None:
        return case.result(backend, status="skipped", error=nothing, extra=extra, **base)
    energy = sum(step_energy_j(cluster.device, tp_p if i < n_p else tp_d, outcome.duration_s, busy)
                 for i, busy in enumerate(outcome.compute_s))
    output_tokens = sum(s.request.output_tokens for s in outcome.sequences)
    extra.update(run_extras(backend, case, cluster, outcome, energy),
                 replicas=n_p + n_d, prefill_replicas=n_p, prefill_tp=tp_p, decode_replicas=n_d, decode_tp=tp_d,
                 kv_transfer_link=spec_link.name, kv_transfer_layerwise=layerwise,
                 **side_layout_extras(disagg.sets_layout("prefill") or disagg.sets_layout("decode") or adp_p > 1
                                      or adp_d > 1, plan_p, plan_d))
    tokens_per_s = row["output_tokens_per_s"]
    peak = max(c.weights_bytes + c.workspace_bytes + max(c.kv_bytes, 0.0) for c in (cap_p, cap_d))
    return case.result(backend, **base, **row, extra=extra, ttft_s=row["ttft_mean_s"], tpot_s=row["tpot_mean_s"],
                       latency_p50_s=row["e2e_p50_s"], latency_p99_s=row["e2e_p99_s"], tokens_per_s=tokens_per_s,
                       tokens_per_s_per_device=tokens_per_s / devices if tokens_per_s else None,
                       peak_memory_bytes_per_device=peak,
                       joules_per_token=energy / output_tokens if output_tokens else None)


def side_layout_extras(shown: bool, plan_p: "Plan", plan_d: "Plan") -> dict[str, int]:
    """The row's extras of each side's expert and attention layout (prefill_ep, prefill_etp, prefill_attention_dp,
    decode_...), where `shown` (a side sets its own, or runs attention data parallelism); none otherwise, so a
    scenario without them writes the row it wrote before the keys existed."""
    if not shown:
        return {}
    return {f"{side}_{key}": getattr(plan, key) for side, plan in (("prefill", plan_p), ("decode", plan_d))
            for key in ("ep", "etp", "attention_dp")}
