"""The `cluster` backend: a SimPy discrete-event simulation of one step on a catalog cluster.

Same cluster description and sweep as the roofline (its Settings, extended with faults and variance):
the roofline sums closed forms; this backend runs the step — stage by stage, micro-batch by micro-batch,
each collective over the links it crosses — so waiting, contention and faults show in the step time.
One pipeline replica is simulated and stands for the symmetric rest (entities.py), so a GPT-3 175B step
on 1024 GPUs takes seconds and 8192 GPUs cost little more (fewer micro-batches per replica).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, Case, Result
from llmsim.costmodel import ClusterSpec, CostModelError, Options, Plan, memory_breakdown
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.step import device_rates
from llmsim.errors import ScenarioError
from llmsim.results import fill_derived
from llmsim.workload.profile import profile_workload
from llmsim_plugins.cluster.entities import Faults, Placement
from llmsim_plugins.cluster.processes import Outcome, simulate
from llmsim_plugins.cluster.program import (DEFAULT_BUCKET_BYTES, fabric_of, forward_step, placement_of,
                                            train_step)
from llmsim_plugins.cluster.trace import gantt_figure, write_trace
from llmsim_plugins.roofline import RooflineBackend, RooflineSettings  # catalog lookup and errors name self.name

SETTINGS_KEY = "backends.cluster"
MIB = 2**20


class Straggler(BaseModel):
    """A slow device: every kernel on it takes `slowdown` times as long."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rank: int = Field(0, ge=0, description="global rank of the slow device (Megatron order: tp, cp, pp, dp)")
    slowdown: float = Field(1.5, ge=1.0, description="kernel time factor (1 = healthy)")


class DegradedLink(BaseModel):
    """A device's port at a fraction of its bandwidth (a flapping NIC, a downgraded NVLink)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rank: int = Field(0, ge=0, description="global rank whose port is degraded")
    link: Literal["intra_node", "inter_node"] = "inter_node"
    bandwidth_factor: float = Field(0.5, gt=0, le=1, description="fraction of the healthy bandwidth")


class ClusterSettings(RooflineSettings):
    """The roofline's cluster description and sweep, plus the simulation's own knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    straggler: Straggler | None = Field(None, description="one slow device")
    degraded_link: DegradedLink | None = Field(None, description="one slow port")
    jitter: float = Field(0.0, ge=0, lt=1, description="per-kernel time noise, std as a fraction (seeded)")
    bucket_mb: Annotated[float, Field(gt=0)] = Field(DEFAULT_BUCKET_BYTES / MIB,
                                                     description="gradient bucket, MiB (PyTorch DDP: 25)")
    prefetch: int = Field(1, ge=0, description="ZeRO-3 all-gathers issued ahead of use")
    trace: bool = Field(True, description="write a Chrome trace and a Gantt PNG per case into the run folder")


def faults_of(settings: ClusterSettings, placement: Placement, seed: int) -> Faults:
    s, d = settings.straggler, settings.degraded_link
    return Faults(straggler_stage=placement.stage_of_rank(s.rank) if s else None,
                  straggler_slowdown=s.slowdown if s else 1.0,
                  degraded_stage=placement.stage_of_rank(d.rank) if d else None,
                  degraded_tier="intra" if d and d.link == "intra_node" else "inter",
                  degraded_bandwidth_factor=d.bandwidth_factor if d else 1.0,
                  jitter_std=settings.jitter, seed=seed)


class ClusterBackend(RooflineBackend):
    name = "cluster"
    kind = "modeled"
    description = "SimPy discrete-event simulation of a step on a catalog cluster (links, streams, schedules)"
    Settings = ClusterSettings

    def run(self, case: Case, settings: ClusterSettings) -> Result:  # type: ignore[override]
        cluster = self.cluster(settings)
        options = Options(attention=settings.attention, main_grads_fp32=settings.main_grads_fp32)
        profile = profile_workload(case.workload, case.sharing)
        plan = Plan.of(case.strategy, case.layout)
        where = dict(hardware=cluster.device.name, nodes=cluster.nodes, params=profile.params,
                     trainable_params=profile.trainable_params, energy_source="modeled",
                     model_flops_per_step=profile.model_flops_per_step)
        try:
            device_rates(cluster, case.workload.dtype)
            one_device = self._one_device_time(case, profile, plan, cluster, options)
        except CostModelError as exc:
            return case.result(self, status="skipped", error=str(exc), **where)
        mem = memory_breakdown(case.workload, profile, case.sharing, plan, options)
        extra: dict[str, object] = {f"mem_{k}_bytes": v for k, v in mem.as_dict().items()}
        extra.update(memory_stage=mem.stage, attention_kernel=options.attention)
        values = dict(where, peak_memory_bytes_per_device=mem.total, extra=extra)
        capacity = cluster.device.memory_bytes
        if capacity and mem.total > capacity:
            return case.result(self, status="does-not-fit", error=mem.describe(capacity), **values)

        for key, fault in (("straggler", settings.straggler), ("degraded_link", settings.degraded_link)):
            if fault is not None and fault.rank >= plan.world:
                raise ScenarioError(None, f"{SETTINGS_KEY}.{key}.rank",
                                    f"rank {fault.rank} is outside the {plan.world} devices of this case")
        sim = simulate_case(case.workload, profile, case.sharing, plan, cluster, options, settings,
                            case.seed, record=settings.trace and self.context.run_dir is not None)
        extra.update(sim_events=sim.events, critical_stage=sim.critical_stage)
        values.update(step_time_s=sim.step_s, latency_p50_s=sim.step_s, latency_p99_s=sim.step_s,
                      ttft_s=sim.ttft_s, tpot_s=sim.tpot_s,
                      mfu=profile.model_flops_per_step / sim.step_s / plan.world / device_rates(
                          cluster, case.workload.dtype).peak_flops,
                      energy_j_per_step=sim.energy_j, c_per_submodel_s=one_device / case.strategy.m_submodels,
                      compute_time_s=sim.compute_s, comm_time_s=sim.comm_s, bubble_time_s=sim.bubble_s,
                      other_time_s=sim.other_s)
        if sim.outcome.spans and self.context.run_dir is not None:
            extra.update(self._write_timeline(case, sim.outcome, self.context.run_dir))
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)

    @staticmethod
    def _write_timeline(case: Case, outcome: Outcome, run_dir: Path) -> dict[str, str]:
        """The Chrome trace and the Gantt PNG of the case, beside each other under run_dir/trace/."""
        folder = run_dir / "trace"
        trace = write_trace(outcome.spans, folder / f"{case.name}.json", title=f"{case.scenario} {case.name}")
        fig, _ = gantt_figure(outcome.spans, title=f"{case.name}: one pipeline replica (simulated)")
        png = folder / f"{case.name}.png"
        fig.savefig(png, dpi=100)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return {"trace_file": str(trace.relative_to(run_dir)), "gantt_file": str(png.relative_to(run_dir))}


class SimResult:
    """A simulated case: step (train, prefill, or the whole generation), its breakdown and energy."""

    def __init__(self, outcome: Outcome, step_s: float, compute_s: float, comm_s: float, bubble_s: float,
                 other_s: float, energy_j: float, events: int, wall_s: float, ttft_s: float | None = None,
                 tpot_s: float | None = None) -> None:
        self.outcome, self.step_s, self.compute_s, self.comm_s = outcome, step_s, compute_s, comm_s
        self.bubble_s, self.other_s, self.energy_j, self.events = bubble_s, other_s, energy_j, events
        self.wall_s, self.ttft_s, self.tpot_s = wall_s, ttft_s, tpot_s
        self.critical_stage = outcome.critical_stage


def _energy(outcome: Outcome, cluster: ClusterSpec, plan: Plan) -> float:
    """Idle power over the step plus the busy increment while computing, for every device a stage stands for."""
    peers = plan.tp * plan.cp * plan.dp
    return sum(step_energy_j(cluster.device, peers, outcome.step_s, ledger.busy_s) for ledger in outcome.ledgers)


def simulate_case(workload, profile, sharing, plan: Plan, cluster: ClusterSpec,  # noqa: ANN001
                  options: Options = Options(), settings: ClusterSettings | None = None, seed: int = 0,
                  record: bool = False) -> SimResult:
    """Simulate one step (train) or one request batch (prefill; decode = prefill + token steps)."""
    settings = settings or ClusterSettings()
    placement = placement_of(plan, cluster)
    fabric = fabric_of(cluster)
    faults = faults_of(settings, placement, seed)
    start = time.perf_counter()
    if workload.mode == "train":
        work = train_step(workload, profile, sharing, plan, cluster, options, settings.bucket_mb * MIB,
                          settings.prefetch)
        out = simulate(work, placement, fabric, faults, record)
        return SimResult(out, out.step_s, out.compute_s, out.comm_s, out.bubble_s, out.other_s,
                         _energy(out, cluster, plan), out.events, time.perf_counter() - start)
    pre = simulate(forward_step(workload, profile, plan, cluster, options, "prefill"), placement, fabric, faults,
                   record)
    if workload.mode != "decode" or workload.decode_tokens <= 1:
        return SimResult(pre, pre.step_s, pre.compute_s, pre.comm_s, pre.bubble_s, pre.other_s,
                         _energy(pre, cluster, plan), pre.events, time.perf_counter() - start)
    # Every decode step costs the same in the cost model (priced at the mean cache length), so one token
    # step is simulated and repeated; jitter therefore varies within a token step, not across them.
    n = workload.decode_tokens - 1
    tok = simulate(forward_step(workload, profile, plan, cluster, options, "decode", n), placement, fabric,
                   faults, False)
    energy = _energy(pre, cluster, plan) + n * _energy(tok, cluster, plan)
    return SimResult(pre, pre.step_s + n * tok.step_s, pre.compute_s + n * tok.compute_s,
                     pre.comm_s + n * tok.comm_s, pre.bubble_s + n * tok.bubble_s, 0.0, energy,
                     pre.events + tok.events, time.perf_counter() - start, ttft_s=pre.step_s, tpot_s=tok.step_s)
