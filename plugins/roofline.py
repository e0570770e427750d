"""The `roofline` backend: predicts a case on a catalog cluster with the analytic cost model.

Nothing runs: the workload's op costs come from the same module the real backends execute, traced on
the meta device (llmsim.workload.profile), and llmsim.costmodel prices them on `nodes` x
`devices_per_node` devices of `hardware` joined by the `intra_node` and `inter_node` links. A list of
nodes sweeps the cluster size (one case per point, suffixed "@nodes=N").
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmsim import Backend, Case, Result, RunContext, hookimpl
from llmsim.costmodel import ClusterSpec, CostModelError, Options, Plan, estimate, single_device_step_time
from llmsim.errors import ScenarioError
from llmsim.hardware import Catalog
from llmsim.results import fill_derived
from llmsim.workload.profile import WorkloadProfile, profile_workload

PositiveInt = Annotated[int, Field(ge=1)]


class RooflineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware: str = Field("a100-80gb", description="catalog device name (llmsim hardware lists them)")
    nodes: PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)] = Field(
        1, description="nodes; a list sweeps")
    devices_per_node: PositiveInt = 8
    intra_node: str | None = Field(None, description="link inside a node; default: the device's")
    inter_node: str | None = Field(None, description="link between nodes; default: the device's")
    attention: Literal["flash", "fused-softmax", "math"] = Field(
        "flash", description="attention kernel modeled (costmodel.plan.Options)")
    main_grads_fp32: bool = Field(False, description="accumulate and reduce gradients in fp32 (Megatron-LM)")


def cluster_spec(settings: RooflineSettings, catalog: Catalog) -> ClusterSpec:
    """The catalog cluster that settings describe; a ScenarioError keyed inside the settings otherwise."""
    device = catalog.device(settings.hardware, key="hardware")
    links = {}
    for key in ("intra_node", "inter_node"):
        name = getattr(settings, key) or getattr(device, key)
        if name is None:
            raise ScenarioError(None, key, f"device {device.name!r} names no default link; set one of: "
                                           f"{', '.join(catalog.links)}")
        links[key] = catalog.link(name, key=key)
    nodes = settings.nodes[0] if isinstance(settings.nodes, list) else settings.nodes
    return ClusterSpec(device=device, intra=links["intra_node"], inter=links["inter_node"], nodes=nodes,
                       devices_per_node=settings.devices_per_node)


class RooflineBackend(Backend):
    name = "roofline"
    kind = "modeled"
    description = "analytic roofline + communication + pipeline model on a catalog cluster"
    Settings = RooflineSettings

    @classmethod
    def sweep(cls, settings: RooflineSettings) -> list[tuple[str, RooflineSettings]]:  # type: ignore[override]
        if isinstance(settings.nodes, list):
            return [(f"@nodes={n}" if len(settings.nodes) > 1 else "", settings.model_copy(update={"nodes": n}))
                    for n in settings.nodes]
        return [("", settings)]

    @classmethod
    def world_size(cls, settings: RooflineSettings) -> int:  # type: ignore[override]
        nodes = settings.nodes[0] if isinstance(settings.nodes, list) else settings.nodes
        return nodes * settings.devices_per_node

    def __init__(self, context: RunContext | None = None) -> None:
        super().__init__(context)
        # m*C (the whole step on one device) depends only on the workload, micro-batch and recompute, not on
        # the strategy's degrees or the cluster size: a sweep computes it once per such combination.
        self._one_device: dict[tuple, tuple[object, float]] = {}

    def _one_device_time(self, case: Case, profile: WorkloadProfile, plan: Plan, cluster: ClusterSpec,
                         options: Options) -> float:
        key = (id(profile), plan.single_device(), cluster.device.name, options)
        hit = self._one_device.get(key)
        if hit is None or hit[0] is not profile:
            value = single_device_step_time(case.workload, profile, case.sharing, plan, cluster, options)
            hit = self._one_device[key] = (profile, value)
        return hit[1]

    @classmethod
    def check_settings(cls, settings: BaseModel, catalog: Catalog) -> tuple[str, str] | None:
        """Unknown device or link names are validation errors, before any case runs."""
        try:
            cluster_spec(settings, catalog)  # type: ignore[arg-type]
        except ScenarioError as exc:
            return exc.key or "hardware", exc.message
        return None

    def cluster(self, settings: RooflineSettings) -> ClusterSpec:
        """The catalog cluster the settings describe; unknown names are one clear error."""
        try:
            return cluster_spec(settings, self.context.catalog)
        except ScenarioError as exc:
            raise ScenarioError(None, f"backends.{self.name}.{exc.key}", exc.message) from None

    def run(self, case: Case, settings: RooflineSettings) -> Result:  # type: ignore[override]
        cluster = self.cluster(settings)
        options = Options(attention=settings.attention, main_grads_fp32=settings.main_grads_fp32)
        profile = profile_workload(case.workload, case.sharing)
        plan = Plan.of(case.strategy, case.layout)
        sharing = case.sharing
        where = dict(hardware=cluster.device.name, nodes=cluster.nodes, params=profile.params,
                     trainable_params=profile.trainable_params, energy_source="modeled")
        try:
            est = estimate(case.workload, profile, sharing, plan, cluster, options)
            one_device = self._one_device_time(case, profile, plan, cluster, options)
        except CostModelError as exc:
            return case.result(self, status="skipped", error=str(exc),
                               model_flops_per_step=profile.model_flops_per_step, **where)
        mem = est.memory
        extra = {f"mem_{k}_bytes": v for k, v in mem.as_dict().items()}
        extra.update({f"comm_{k}_s": v for k, v in est.comm_detail.items()},
                     memory_stage=mem.stage, attention_kernel=options.attention)
        values = dict(where, model_flops_per_step=est.model_flops, peak_memory_bytes_per_device=mem.total,
                      extra=extra)
        if not est.fits:
            extra["modeled_step_time_s"] = est.step_time_s
            return case.result(self, status="does-not-fit", error=mem.describe(cluster.device.memory_bytes),
                               **values)
        values.update(step_time_s=est.step_time_s, latency_p50_s=est.step_time_s, latency_p99_s=est.step_time_s,
                      ttft_s=est.ttft_s, tpot_s=est.tpot_s, mfu=est.mfu, energy_j_per_step=est.energy_j,
                      c_per_submodel_s=one_device / case.strategy.m_submodels, compute_time_s=est.compute_time_s,
                      comm_time_s=est.comm_time_s, bubble_time_s=est.bubble_time_s, other_time_s=est.other_time_s)
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [RooflineBackend]
