"""The `cluster` backend: a SimPy discrete-event simulation of one step on a catalog cluster.

The same cluster description and sweep as the roofline (llmsim.modeled), plus faults and variance. The
roofline sums the cost model's work in closed form; this backend plays the same work (llmsim.sim) —
stage by stage, micro-batch by micro-batch, each collective over the links it crosses — so waiting,
contention and faults show in the step time. One pipeline replica is simulated and stands for the
symmetric rest, so a GPT-3 175B step on 1024 GPUs takes seconds and 8192 GPUs cost little more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, Case, hookimpl
from llmsim.costmodel import ClusterSpec, Plan
from llmsim.hardware import Catalog
from llmsim.modeled import ModeledBackend, ModeledSettings, Priced
from llmsim.modeled_serving import ServingFaults
from llmsim.sim import DEFAULT_BUCKET_BYTES, Faults, Outcome, Placement, SimOptions, placement_of, simulate_case
from llmsim.sim.trace import write_trace
from llmsim.workload.profile import WorkloadProfile

MIB = 2**20


# A device 1000x slower than its peers is a failed one, not a straggler (and 1e300 priced a TTFT of 1e299 s as
# an `ok` row, trial 28): the bound keeps the fault a slowdown.
MAX_STRAGGLER_SLOWDOWN = 1000.0


class Straggler(BaseModel):
    """A slow device: every kernel on it takes `slowdown` times as long."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    rank: int = Field(0, ge=0, description="global rank of the slow device (Megatron order: tp, cp, pp, dp)")
    slowdown: float = Field(1.5, ge=1.0, le=MAX_STRAGGLER_SLOWDOWN,
                            description="kernel time factor (1 = healthy), at most MAX_STRAGGLER_SLOWDOWN (1000)")


class DegradedLink(BaseModel):
    """A device's port at a fraction of its bandwidth (a flapping NIC, a downgraded NVLink)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    rank: int = Field(0, ge=0, description="global rank whose port is degraded")
    link: Literal["intra_node", "inter_node"] = "inter_node"
    bandwidth_factor: float = Field(0.5, gt=0, le=1, description="fraction of the healthy bandwidth")


class ClusterSettings(ModeledSettings):
    """The modeled cluster (llmsim.modeled.ModeledSettings), plus the simulation's own knobs."""

    straggler: Straggler | None = Field(None, description="one slow device")
    degraded_link: DegradedLink | None = Field(None, description="one slow port")
    jitter: float = Field(0.0, ge=0, lt=1, description="per-kernel time noise, std as a fraction (seeded)")
    bucket_mb: Annotated[float, Field(gt=0)] = Field(DEFAULT_BUCKET_BYTES / MIB,
                                                     description="gradient bucket, MiB (PyTorch DDP: 25)")
    prefetch: int = Field(1, ge=0, description="ZeRO-3 all-gathers issued ahead of use")
    trace: bool = Field(True, description="write a Chrome trace and a Gantt PNG per step case into the run folder "
                                          "(a serving case writes none: docs/cluster.md)")

    @property
    def sim_options(self) -> SimOptions:
        return SimOptions(bucket_bytes=self.bucket_mb * MIB, prefetch=self.prefetch)


def faults_of(settings: ClusterSettings, placement: Placement, seed: int) -> Faults:
    """The settings' faults on the simulated replica (a rank's fault sits on that rank's pipeline stage)."""
    s, d = settings.straggler, settings.degraded_link
    return Faults(straggler_stage=placement.stage_of_rank(s.rank) if s else None,
                  straggler_slowdown=s.slowdown if s else 1.0,
                  degraded_stage=placement.stage_of_rank(d.rank) if d else None,
                  degraded_tier="intra" if d and d.link == "intra_node" else "inter",
                  degraded_bandwidth_factor=d.bandwidth_factor if d else 1.0,
                  jitter_std=settings.jitter, seed=seed)


class ClusterBackend(ModeledBackend):
    name = "cluster"
    description = "SimPy discrete-event simulation of a step on a catalog cluster (links, streams, schedules)"
    Settings = ClusterSettings

    @classmethod
    def check_settings(cls, settings: BaseModel, catalog: Catalog) -> tuple[str, str] | None:
        """Names the catalog must know, and faults on a rank the cluster has."""
        problem = super().check_settings(settings, catalog)
        if problem:
            return problem
        assert isinstance(settings, ClusterSettings)
        world = cls.world_size(settings)
        for key, fault in (("straggler", settings.straggler), ("degraded_link", settings.degraded_link)):
            if fault is not None and fault.rank >= world:
                return f"{key}.rank", f"rank {fault.rank} is outside the {world} devices of this cluster " \
                                      f"(allowed: 0 to {world - 1})"
        return None

    def serving_faults(self, case: Case, settings: ClusterSettings, cluster: ClusterSpec) -> ServingFaults:  # type: ignore[override]
        """A serving run: the straggler's and the degraded port's rank sit on replica rank // (tp x pp)
        (replicas outermost, as data parallelism in Megatron's rank order); jitter on every iteration."""
        per_replica = case.layout.tp * case.layout.pp
        s, d = settings.straggler, settings.degraded_link
        return ServingFaults(straggler_replica=s.rank // per_replica if s else None, slowdown=s.slowdown if s else 1.0,
                             degraded_replica=d.rank // per_replica if d else None,
                             degraded_tier="intra" if d and d.link == "intra_node" else "inter",
                             bandwidth_factor=d.bandwidth_factor if d else 1.0, jitter=settings.jitter,
                             seed=case.seed)

    def price(self, case: Case, settings: ClusterSettings, profile: WorkloadProfile, plan: Plan,  # type: ignore[override]
              cluster: ClusterSpec) -> Priced:
        faults = faults_of(settings, placement_of(plan, cluster), case.seed)
        record = settings.trace and self.context.run_dir is not None
        sim = simulate_case(case.workload, profile, case.sharing, plan, cluster, settings.options, faults,
                            settings.sim_options, record=record)
        extra: dict[str, object] = {"sim_events": sim.events}
        if sim.outcome.spans and self.context.run_dir is not None:
            extra.update(self._write_timeline(case, sim.outcome, self.context.run_dir))
        return Priced(sim.times, sim.energy_j, extra)

    @staticmethod
    def _write_timeline(case: Case, outcome: Outcome, run_dir: Path) -> dict[str, str]:
        """The Chrome trace and its Gantt PNG (the report's own figure), beside each other under run_dir/trace/."""
        from llmsim.report.figures import gantt
        from llmsim.report.raster import png
        from llmsim.report.trace import load_trace

        folder = run_dir / "trace"
        trace = write_trace(outcome.spans, folder / f"{case.name}.json", title=f"{case.scenario} {case.name}")
        fig, ax = gantt(load_trace(trace), case=f"{case.name} on cluster (simulated)")
        image = folder / f"{case.name}.png"
        image.write_bytes(png(fig))
        return {"trace_file": str(trace.relative_to(run_dir)), "gantt_file": str(image.relative_to(run_dir))}


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [ClusterBackend]
