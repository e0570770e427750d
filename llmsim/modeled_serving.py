"""How a modeled backend answers a serving scenario: the request-level simulation of llmsim.serving, each
iteration priced by the cost model (costmodel.iteration) on the backend's catalog cluster.

Both built-in modeled backends run it the same way: the `roofline` with the cost model's prices as they
are, the `cluster` with its faults and variance on top (a straggler or a degraded link on one replica,
per-iteration jitter; `ServingFaults`). One row per (case, rate) with the serving columns
(llmsim.results), and a per-request CSV under the run folder's `requests/`.

The per-token costs come from the workload's module traced once, in decode mode, at a reference shape
(`reference_workload`): GEMM and attention costs are exact per token and per query-key pair at any length;
what a prompt pass spends per sequence rather than per token (rotary tables) is spread over the reference
prompt.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from llmsim.config import ModelSpec, Sharing, SharingChoice, Workload
from llmsim.costmodel import ClusterSpec, Options, Plan
from llmsim.costmodel.cluster import torus_groups
from llmsim.costmodel.compute import CostModelError
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.eager import engine_iteration, priced_pass_seconds
from llmsim.costmodel.efficiency import DEFAULT_EFFICIENCY
from llmsim.costmodel.plan import master_weights_apply
from llmsim.costmodel.iteration import (IterationModel, KVCapacity, Mix, TokenCosts, draft_head_model, draft_times,
                                        iteration_times, kv_bytes_per_token, kv_capacity, token_costs,
                                        with_draft_memory)
from llmsim.costmodel.torus import TorusError
from llmsim.hardware import DeviceSpec
from llmsim.results import Result
from llmsim.serving.metrics import requests_table, summarize, timeline_table
from llmsim.serving.replica import PRICED_MIXES_KEPT, Pricer
from llmsim.serving.requests import closed_loop_of, iter_requests
from llmsim.serving.simulate import ServingOutcome, simulate_serving
from llmsim.serving.spec import EagerLaunch, HostStep, ServingCase, Speculative
from llmsim.workload.profile import WorkloadProfile, profile_at_depth
from llmsim.workload.profile_store import stored_profile

if TYPE_CHECKING:
    from llmsim.backend import Backend, Case

# The prompt of the reference trace. Per-token costs of GEMMs and attention do not depend on it; the part
# of a prompt pass that is per sequence (rotary cos/sin tables, ~37 kB per layer for Llama-3-8B, measured
# on the traced module) is under 1% of the per-token bytes at 128 tokens and is spread over them.
REFERENCE_PROMPT_TOKENS = 128
# Decode steps traced: the profile traces the first and the last of n = decode_tokens - 1 steps (profile.py),
# and token_costs needs both to be decode steps.
REFERENCE_DECODE_TOKENS = 3


@dataclass(frozen=True)
class ServingFaults:
    """Faults of one serving run (all off by default): a straggler makes one replica's compute (and its
    pipeline's fill and drain) `slowdown` times longer, its tensor-parallel peers waiting every layer; a
    degraded link puts one replica's `tier` at `bandwidth_factor` of its bandwidth (a ring moves at its
    slowest port); jitter multiplies every iteration by 1 + N(0, jitter), clipped at 0, seeded per replica."""

    straggler_replica: int | None = None
    slowdown: float = 1.0
    degraded_replica: int | None = None
    degraded_tier: str = "inter"
    bandwidth_factor: float = 1.0
    jitter: float = 0.0
    seed: int = 0


def reference_workload(workload: Workload) -> Workload:
    """The decode workload traced for per-token costs: the served model and dtype, one sequence, a
    REFERENCE_PROMPT_TOKENS prompt (shorter when the context is) and REFERENCE_DECODE_TOKENS tokens. The
    learned position table keeps the served model's size, so its parameters (and weights in memory) are
    the served ones."""
    spec = workload.model
    prompt = max(2, min(REFERENCE_PROMPT_TOKENS, spec.seq_len - REFERENCE_DECODE_TOKENS))
    model = spec.model_copy(update={"seq_len": prompt, "max_positions": max(spec.max_positions or 0,
                                                                            prompt + REFERENCE_DECODE_TOKENS)})
    return Workload(model=model, mode="decode", batch=1, decode_tokens=REFERENCE_DECODE_TOKENS, dtype=workload.dtype,
                    fp8=workload.fp8, fp4=workload.fp4)


def serving_profile(workload: Workload, sharing: SharingChoice) -> tuple[Workload, WorkloadProfile]:
    """(reference workload, its profile at the served depth, traced short where that is exact:
    workload.profile.profile_at_depth), so a 126-layer model, LoRA adapters included, profiles in the time of a
    few layers; the profile is kept on disk between runs (llmsim.workload.profile_store), so a serving run or
    plan of a model served before skips the trace and torch's import."""
    ref = reference_workload(workload)
    return ref, stored_profile(ref, sharing, partial(profile_at_depth, ref, sharing), recipe="serving-reference")


def _degraded(cluster: ClusterSpec, tier: str, factor: float) -> ClusterSpec:
    """The cluster with one tier's link at `factor` of its bandwidth."""
    if tier == "intra":
        return replace(cluster, intra=cluster.intra.model_copy(  # type: ignore[attr-defined]
            update={"bandwidth_bytes_per_s": cluster.intra.bandwidth_bytes_per_s * factor}))
    return replace(cluster, inter=cluster.inter.model_copy(  # type: ignore[attr-defined]
        update={"bandwidth_bytes_per_s": cluster.inter.bandwidth_bytes_per_s * factor}))


def pricers(model: IterationModel, faults: ServingFaults,  # noqa: ANN201 - Callable[[int], Pricer]
            host: HostStep = HostStep(), eager: EagerLaunch = EagerLaunch(),
            draft: tuple[IterationModel, int] | None = None):
    """price(i): replica i's iteration pricer, (seconds, compute seconds) of a Mix, with its faults; `host` adds
    the engine's host time of the iteration (HostStep.seconds of its sequences, Mix.rows), which the device does
    not overlap (vLLM V0-style engines: scheduling, input preparation, sampling, output processing in line);
    `eager` says which passes the engine launches from Python, each taking at least its host launch time
    (costmodel.eager.priced_pass_seconds), and whose model code's kernels a pass launches (EagerLaunch.engine_kernels:
    costmodel.eager.engine_iteration, on the GPU and at launch). `draft` (speculative decoding): the draft's model
    and k, whose k draft passes over the iteration's decoding sequences run after the verify pass on the same devices
    (costmodel.iteration.draft_times), a straggler's slowdown on their compute too."""

    memos: dict[tuple[bool, float], Callable[[Mix | tuple[Mix, ...]], tuple[float, float, float]]] = {}

    def price(i: int) -> Pricer:
        degraded = faults.degraded_replica == i and faults.bandwidth_factor < 1
        slowdown = faults.slowdown if faults.straggler_replica == i else 1.0
        if (degraded, slowdown) not in memos:   # replicas alike share one memo
            memos[degraded, slowdown] = _priced_mixes(model, faults, host, eager, draft, degraded, slowdown)
        priced = memos[degraded, slowdown]
        rng = random.Random(f"llmsim-serving-jitter-{faults.seed}-{i}") if faults.jitter > 0 else None

        def one(mix: Mix | tuple[Mix, ...]) -> tuple[float, float]:
            seconds, compute, host_s = priced(mix)
            if rng is not None:
                seconds *= max(0.0, 1.0 + rng.gauss(0.0, faults.jitter))
            return seconds + host_s, compute

        return one

    return price


def _priced_mixes(model: IterationModel, faults: ServingFaults, host: HostStep, eager: EagerLaunch,
                  draft: tuple[IterationModel, int] | None, degraded: bool,
                  slowdown: float) -> Callable[[Mix | tuple[Mix, ...]], tuple[float, float, float]]:
    """The deterministic part of `pricers`' iteration price for a replica (`degraded`: its link tier slowed by the
    faults; `slowdown`: a straggler's factor on compute), remembered per mix: (device-and-launch seconds, compute
    seconds, host seconds) of one mix, before any jitter."""
    here = model
    if degraded:
        here = replace(model, cluster=_degraded(model.cluster, faults.degraded_tier, faults.bandwidth_factor))

    @lru_cache(maxsize=PRICED_MIXES_KEPT)
    def priced(mix: Mix | tuple[Mix, ...]) -> tuple[float, float, float]:
        # attention data parallelism (plan.attention_dp > 1): the ranks' mixes of one lockstep iteration
        # (serving.replica.LockstepReplica), each rank's host step in parallel, the longest one counted; each
        # pass launches its engine's kernels (costmodel.eager.engine_iteration)
        whole, ranks = engine_iteration(here, mix, eager.engine_kernels, eager.fuse_allreduce_rms)
        t = iteration_times(here, whole, ranks)
        compute = t.compute * slowdown
        device_s = compute + t.comm + t.bubble * slowdown + t.other
        if draft is not None and whole.decode_seqs:
            d = draft_times(draft[0], whole, draft[1], ranks)
            compute += d.compute * slowdown
            device_s += d.compute * slowdown + d.comm + d.bubble * slowdown + d.other
        seconds = priced_pass_seconds(here, whole, device_s, eager.passes, eager.per_kernel_s,
                                      eager.graph_max_batch)
        return seconds, compute, host.seconds(max(m.rows for m in ranks) if ranks else whole.rows)

    return priced


def requests_file_name(case: str, backend: str) -> str:
    """The per-request CSV of a (case, backend) under the run folder's requests/ (one name rule for every backend)."""
    return re.sub(r"[^A-Za-z0-9_.=@-]", "_", f"{backend}-{case}") + ".csv"


def write_requests_file(run_dir: str | Path | None, case: str, backend: str, outcome: ServingOutcome) -> str | None:
    """Write the per-request CSV (serving.metrics.requests_table) under run_dir/requests/; its path relative to
    the run folder, for the row's `requests_file` (None without a run folder). Every serving backend's one rule."""
    if run_dir is None:
        return None
    return _write_beside_requests(Path(run_dir), requests_file_name(case, backend), requests_table(outcome))


def _write_beside_requests(run_dir: Path, name: str, text: str) -> str:
    """Write `text` to run_dir/requests/name; the path relative to the run folder (a row's *_file column)."""
    folder = run_dir / "requests"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path.relative_to(run_dir))


def timeline_file_name(case: str, backend: str) -> str:
    """The per-iteration timeline CSV beside the per-request one: '<requests file stem>.timeline.csv'."""
    return requests_file_name(case, backend)[:-len(".csv")] + ".timeline.csv"


def write_timeline_file(run_dir: str | Path | None, case: str, backend: str, outcome: ServingOutcome) -> str | None:
    """Write the simulation's per-iteration timeline (serving.metrics.timeline_table) beside the request CSV
    under run_dir/requests/; its path relative to the run folder, for the row's `timeline_file` (None without a
    run folder or without iterations recorded: a measured engine has none)."""
    if run_dir is None or not any(len(t) for t in outcome.timelines):
        return None
    return _write_beside_requests(Path(run_dir), timeline_file_name(case, backend), timeline_table(outcome))


def replica_plan(case: "Case", cluster: ClusterSpec) -> Plan:
    """The plan one replica's iterations are priced on: the strategy's tp and pp, one micro-batch, dp 1 (each
    replica serves alone), except on a TPU slice, whose mesh must be mapped whole (costmodel.cluster.torus_groups):
    there dp is serving.replicas, the replicas side by side in the slice (dp prices nothing in an iteration)."""
    assert case.serving is not None
    dp = case.serving.spec.replicas if cluster.is_torus else 1
    return replace(Plan.of(case.strategy, case.layout), dp=dp, micro_batch=1, microbatches=1)


def torus_problem(plan: Plan, cluster: ClusterSpec) -> str | None:
    """Why the replicas' mesh does not tile the TPU slice (a skipped row, not a failure mid-simulation), or None."""
    if not cluster.is_torus:
        return None
    try:
        torus_groups({"tp": plan.tp, "pp": plan.pp, "dp": plan.dp}, cluster)
    except TorusError as exc:
        return f"{exc}: serving.replicas x tp x pp must tile the slice"
    return None


def replica_capacity(case: "Case", ref: Workload, profile: WorkloadProfile, plan: Plan, cluster: ClusterSpec,
                     costs: TokenCosts, options: Options) -> KVCapacity:
    """One replica's KV cache (costmodel.iteration.kv_capacity) under the case's serving settings: its
    memory_utilization, block size and the largest pass its scheduler may form."""
    assert case.serving is not None
    spec = case.serving.spec
    return kv_capacity(ref, profile, case.sharing, plan, cluster, costs, spec.memory_utilization, spec.kv_block_tokens,
                       spec.scheduler.max_batched_tokens, spec.scheduler.max_num_seqs, options)


def unknown_memory(cluster: ClusterSpec) -> str | None:
    """Why a serving case cannot be priced on a device whose memory is not known (memory_bytes 0, which a training
    or step case takes as "assumed to fit"), or None: a replica's KV cache is the memory its weights leave, so its
    blocks, and with them the batch and every queue, cannot be sized (a `skipped` row, not `does-not-fit`)."""
    return unknown_device_memory(cluster.device)


def unknown_device_memory(device: DeviceSpec) -> str | None:
    """unknown_memory's reason for one device (llmsim validate says it before a run: runner.skip_notes)."""
    if device.memory_bytes:
        return None
    return (f"{device.name}: memory_bytes is 0 (unknown); a serving replica's KV cache is the memory its "
            f"weights leave, so it cannot be sized: give the device's memory_bytes in its hardware file")


def none_served(outcome: ServingOutcome, context_tokens: int) -> str | None:
    """Why a run whose every request was rejected has no result (a row of dashes would read as `ok`): how many
    were longer than the context, how many larger than the whole KV cache; None when any request was served."""
    if outcome.sequences or not outcome.rejected:
        return None
    long = sum(r.reason == "context" for r in outcome.rejected)
    large = len(outcome.rejected) - long
    why = [f"{long:,} longer, prompt + output, than the context of {context_tokens:,} tokens, "
           f"workload.model.seq_len"] if long else []
    why += [f"{large:,} larger than the replica's whole KV cache"] if large else []
    n = len(outcome.rejected)
    return (f"no request was served: {'its one request was' if n == 1 else f'all {n:,} requests were'} rejected "
            f"({'; '.join(why)}), as vLLM rejects them")


def capacity_problem(capacity: KVCapacity, memory_utilization: float, context_tokens: int) -> str | None:
    """Why a replica with this KV cache cannot serve (the words of its `does-not-fit` row), or None: no room
    for a cache at all, or a cache below one request of the whole context (KVCapacity.misses_context)."""
    if capacity.blocks == 0:
        return (f"no room for a KV cache: {capacity.device_bytes / 1e9:.1f} GB usable (memory_utilization "
                f"{memory_utilization}) - weights {capacity.weights_bytes / 1e9:.1f} GB - workspace "
                f"{capacity.workspace_bytes / 1e9:.1f} GB leaves {capacity.kv_bytes / 1e9:.1f} GB per device")
    return capacity.misses_context(context_tokens)


def kv_fit_problem(case: "Case", cluster: ClusterSpec, options: Options) -> str | None:
    """What serve_case (or modeled_disaggregated.serve_disaggregated, of each side) would say of a serving case that
    cannot fit on `cluster` (capacity_problem), without
    simulating anything: `llmsim validate`'s note (ModeledBackend.known_does_not_fit). None when it fits, or
    when pricing it fails (the run's row says that)."""
    serving = case.serving
    assert isinstance(serving, ServingCase)
    spec = serving.spec
    plan = replica_plan(case, cluster)
    ref, profile = serving_profile(case.workload, case.sharing)
    disagg = spec.disaggregation
    # a disaggregated case: each side's instance at its own tp and layout (modeled_disaggregated's words)
    sides = [("", plan)] if disagg is None else [
        (f"a {side} instance (tp {s.tp}): ", replace(plan, tp=s.tp, ep=s.ep, etp=s.expert_tp,
                                                      attention_dp=s.attention_dp))
        for side in ("prefill", "decode") for s in [disagg.side_strategy(side, case.strategy)]]
    if unknown_memory(cluster) is not None:   # a skipped row, which the run's row says, not a does-not-fit
        return None
    for words, side_plan in sides:
        try:
            costs = token_costs(ref, profile, spec.kv_cache_dtype)
            capacity = replica_capacity(case, ref, profile, side_plan, cluster, costs, options)
        except CostModelError:
            return None
        short = capacity_problem(capacity, spec.memory_utilization, case.workload.model.seq_len)
        if short is not None:
            return words + short
    return None


def speculative_draft(case: "Case", speculative: Speculative, model: IterationModel, capacity: KVCapacity
                      ) -> tuple[IterationModel | None, float, float]:
    """The draft of speculative decoding on one replica: (its IterationModel, None for ngram's host-side lookup;
    its weights per device, bytes; its K and V per token per device, bytes).

    mtp / eagle: a head of draft_layers of the target's mean layers (costmodel.iteration.draft_head_model), whose
    weights are that share of the device's parameters (weights x draft_layers / layers) and whose cache is that
    share of a token's K and V. draft: the preset `draft_model` traced like the target (serving_profile) and run on
    the same tp (vLLM's draft_tensor_parallel_size defaults to the target's), its parameters over tp and its own
    cache per token (costmodel.iteration.kv_bytes_per_token). CostModelError as token_costs."""
    assert case.serving is not None
    return workload_draft(case.workload, case.serving.spec.kv_cache_dtype, speculative, model, capacity)


def workload_draft(workload: Workload, kv_cache_dtype: str, speculative: Speculative, model: IterationModel,
                   capacity: KVCapacity) -> tuple[IterationModel | None, float, float]:
    """speculative_draft of a served `workload` (its model, context and precision) with the serving block's
    `kv_cache_dtype`: the one rule, for a scenario's case and for a serving plan's candidate (planner.serve)."""
    if speculative.method == "ngram":
        return None, 0.0, 0.0
    layers = workload.model.layers
    if speculative.method in ("mtp", "eagle"):
        share = speculative.head_layers / layers
        return (draft_head_model(model, speculative.head_layers), capacity.weights_bytes * share,
                capacity.bytes_per_token * share)
    assert speculative.draft_model is not None
    # on the target's sequences: its context is the target's (config.draft_model_problem checked that it holds it)
    spec = ModelSpec.model_validate({"preset": speculative.draft_model, "seq_len": workload.model.seq_len})
    drafted = Workload(model=spec, mode="decode", dtype=workload.dtype, fp8=workload.fp8, fp4=workload.fp4)
    ref, profile = serving_profile(drafted, SharingChoice.resolve(Sharing(), spec))
    costs = token_costs(ref, profile, kv_cache_dtype)
    draft = IterationModel(costs, ref, model.plan, model.cluster, model.options)
    return draft, profile.param_bytes / model.plan.tp, kv_bytes_per_token(costs, ref, model.plan)


def priced_options(options: Options, mode: str, dtype: str = "bfloat16",
                   device: DeviceSpec | None = None) -> dict[str, str | bool | None]:
    """The result columns `attention_kernel`, `all_reduce`, `optimizer` and `master_weights` of a modeled row
    (llmsim.results.COLUMNS): the kernel, all-reduce library and training recipe it was priced with, each only where
    it prices something, else empty:
      all_reduce      an inference pass or a serving iteration (costmodel.plan.Options: training passes keep NCCL);
      optimizer       a training step on an accelerator (an eager host, `op_overhead_s` > 0, prices the traced loop
                      whatever the setting: costmodel.work.optimizer_step_time);
      master_weights  a training step in a 16-bit `dtype` without `params_fp32` (fp32 parameters are their own
                      master)."""
    train = mode == "train"
    eager_host = device is not None and (device.efficiency or DEFAULT_EFFICIENCY).op_overhead_s > 0
    return dict(attention_kernel=options.attention, all_reduce=None if train else options.all_reduce,
                optimizer=options.optimizer if train and not eager_host else None,
                master_weights=(options.master_weights if train and master_weights_apply(dtype, options.params_fp32)
                                else None))


def run_extras(backend: "Backend", case: "Case", cluster: ClusterSpec, outcome: ServingOutcome,
               energy_j: float) -> dict[str, Any]:
    """The extras every modeled serving row carries (colocated or disaggregated): the engine's host settings it
    was priced with, the energy, the simulation's speed, and the per-request and timeline CSVs written under the
    run folder (write_requests_file, write_timeline_file)."""
    serving = case.serving
    assert isinstance(serving, ServingCase)
    spec = serving.spec
    host = spec.host_step_on(cluster.device)
    eager = spec.eager_launch_on(cluster.device)
    extra: dict[str, Any] = dict(
        eager_passes=eager.passes, eager_launch_s=eager.per_kernel_s, engine_kernels=eager.engine_kernels,
        fuse_allreduce_rms=eager.fuse_allreduce_rms,
        energy_j=energy_j, scheduler=spec.scheduler.kind, request_overhead_s=spec.overhead_on(cluster.device),
        step_overhead_s=host.fixed_s, step_overhead_per_seq_s=host.per_seq_s, router=spec.router,
        events_per_s=outcome.events / outcome.wall_s if outcome.wall_s > 0 else None,
        sim_s_per_wall_s=outcome.duration_s / outcome.wall_s if outcome.wall_s > 0 else None)
    written = write_requests_file(backend.context.run_dir, case.name, backend.name, outcome)
    if written is not None:
        extra["requests_file"] = written
    timeline = write_timeline_file(backend.context.run_dir, case.name, backend.name, outcome)
    if timeline is not None:
        extra["timeline_file"] = timeline
    return extra


def serve_case(backend: "Backend", case: "Case", cluster: ClusterSpec, options: Options,
               faults: ServingFaults = ServingFaults()) -> Result:
    """Simulate the case's serving run on `cluster`; the row with the serving columns (or a skipped /
    does-not-fit row saying why it cannot run)."""
    serving = case.serving
    assert isinstance(serving, ServingCase)
    spec = serving.spec
    plan = replica_plan(case, cluster)
    devices = spec.replicas * plan.tp * plan.pp
    ref, profile = serving_profile(case.workload, case.sharing)
    sched = spec.scheduler
    base: dict[str, Any] = dict(hardware=cluster.device.name, nodes=math.ceil(devices / cluster.devices_per_node),
                                n_devices=devices, dp=spec.replicas, mode="serve", batch=sched.max_num_seqs,
                                params=profile.params, trainable_params=profile.trainable_params,
                                params_active=profile.active_params, energy_source="modeled",
                                **priced_options(options, "serve"))
    if (mesh := torus_problem(plan, cluster)) is not None:
        return case.result(backend, status="skipped", error=mesh, **base)
    try:
        costs = token_costs(ref, profile, spec.kv_cache_dtype)
        model = IterationModel(costs, ref, plan, cluster, options,
                               pipeline_in_flight=serving.scheduler.pipeline_in_flight)
        _ = model.rates, model.attention_fraction  # CostModelError now (a skipped row), not inside the simulation
    except CostModelError as exc:
        return case.result(backend, status="skipped", error=str(exc), **base)
    unknown = unknown_memory(cluster)
    if unknown is not None:
        return case.result(backend, status="skipped", error=unknown, **base)
    capacity = replica_capacity(case, ref, profile, plan, cluster, costs, options)
    draft: tuple[IterationModel, int] | None = None
    speculative = spec.speculative
    if speculative is not None:
        try:
            draft_model, draft_weights, draft_kv = speculative_draft(case, speculative, model, capacity)
        except CostModelError as exc:
            return case.result(backend, status="skipped", error=f"serving.speculative: {exc}", **base)
        capacity = with_draft_memory(capacity, draft_weights, draft_kv)
        if draft_model is not None:
            draft = (draft_model, speculative.num_draft_tokens)
    memory = dict(mem_params_bytes=capacity.weights_bytes, mem_workspace_bytes=capacity.workspace_bytes,
                  mem_kv_cache_bytes=max(capacity.kv_bytes, 0.0), kv_blocks_per_replica=capacity.blocks,
                  kv_capacity_tokens=capacity.tokens, kv_bytes_per_token=capacity.bytes_per_token)
    short = capacity_problem(capacity, spec.memory_utilization, case.workload.model.seq_len)
    if short is not None:
        return case.result(backend, status="does-not-fit", extra=memory, **base, error=short)
    outcome = simulate_serving(
        iter_requests(serving), replicas=spec.replicas, make_scheduler=lambda kv: serving.scheduler(sched, kv),
        kv_blocks=capacity.blocks, block_tokens=spec.kv_block_tokens,
        price=pricers(model, faults, spec.host_step_on(cluster.device), spec.eager_launch_on(cluster.device), draft),
        router=spec.router, context_tokens=case.workload.model.seq_len,
        request_overhead_s=spec.overhead_on(cluster.device), closed_loop=closed_loop_of(serving),
        kv_layout=capacity.layout, attention_dp=plan.attention_dp, speculative=speculative,
        speculative_seed=serving.seed)
    row = summarize(outcome, serving.rate, spec.slo, [sched.max_num_seqs * plan.attention_dp] * spec.replicas)
    extra = {**row.pop("extra"), **memory}
    if (nothing := none_served(outcome, case.workload.model.seq_len)) is not None:
        return case.result(backend, status="skipped", error=nothing, extra=extra, **base)
    energy = sum(step_energy_j(cluster.device, plan.tp * plan.pp, outcome.duration_s, busy)
                 for busy in outcome.compute_s)
    output_tokens = sum(s.request.output_tokens for s in outcome.sequences)
    extra.update(run_extras(backend, case, cluster, outcome, energy),
                 replicas=spec.replicas, **({"attention_dp": plan.attention_dp} if plan.attention_dp > 1 else {}),
                 **({"speculative_method": speculative.method, "num_draft_tokens": speculative.num_draft_tokens,
                     "expected_accept_length": speculative.mean_accept_length} if speculative is not None else {}))
    tokens_per_s = row["output_tokens_per_s"]
    return case.result(backend, **base, **row, extra=extra, ttft_s=row["ttft_mean_s"], tpot_s=row["tpot_mean_s"],
                       latency_p50_s=row["e2e_p50_s"], latency_p99_s=row["e2e_p99_s"], tokens_per_s=tokens_per_s,
                       tokens_per_s_per_device=tokens_per_s / devices if tokens_per_s else None,
                       # the engine allocates its whole KV pool at start (vLLM's gpu_memory_utilization), so
                       # the device holds weights + workspace + the pool; kv_peak_utilization says how much of
                       # the pool the requests used (the memory columns and figure add up to this)
                       peak_memory_bytes_per_device=(capacity.weights_bytes + capacity.workspace_bytes
                                                     + max(capacity.kv_bytes, 0.0)),
                       joules_per_token=energy / output_tokens if output_tokens else None)
