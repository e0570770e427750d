"""What every modeled backend shares: the cluster it models, the sweep over node counts, and the row of a
priced case.

A modeled backend (the built-in `roofline` and `cluster`, or a plugin's) describes a catalog cluster
with `ModeledSettings`, resolves it through the one route from hardware names to clusters
(`Catalog.cluster`), and implements `price`: how long one case takes on that cluster and where the time
goes. `ModeledBackend.run` does the rest the same way for all of them: profile the workload on the meta
device, check it can be priced and that it fits in memory (else a `skipped` / `does-not-fit` row with
the reason), and fill the contract columns, including C of T = m*C/n from the roofline's one-device step.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmsim.backend import Backend, Case, RunContext
from llmsim.config import Workload
from llmsim.costmodel import ClusterSpec, CostModelError, Options, Plan, memory_breakdown, single_device_step_time
from llmsim.costmodel.cluster import plan_on, torus_groups
from llmsim.costmodel import precision
from llmsim.costmodel.compute import rates_problem, workload_rates
from llmsim.costmodel.moe import assumed_imbalance
from llmsim.costmodel.plan import AttentionKernel, OptimizerKernel
from llmsim.costmodel.step import StepTimes
from llmsim.costmodel.torus import TorusError
from llmsim.costmodel.work import inference_plan
from llmsim.engine_options import engine_options, option_fields, serving_attention_problem
from llmsim.errors import KeyedValueError, ScenarioError
from llmsim.hardware import CATALOG_DEVICE, CATALOG_LINK, DEFAULT_DEVICES_PER_NODE, Catalog, DeviceSpec
from llmsim.modeled_disaggregated import serve_disaggregated
from llmsim.modeled_serving import ServingFaults, kv_fit_problem, priced_options, serve_case
from llmsim.results import Result, fill_derived
from llmsim.strategy import Layout
from llmsim.strict import MAX_DIMENSION, Count, StrictModel, sweep_repeats
from llmsim.workload.profile import WorkloadProfile, profile_workload


_OPTION = option_fields()  # the option keys' defaults and descriptions, declared once (llmsim.engine_options)


class ModeledSettings(StrictModel):
    """A catalog cluster (`nodes` x `devices_per_node` of `hardware`, joined by the two links) and the
    software choices the cost model cannot read off the scenario (costmodel.plan.Options)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hardware: str = Field("a100-80gb", description="catalog device name (llmsim hardware lists them)",
                          json_schema_extra=CATALOG_DEVICE)
    nodes: Count | Annotated[list[Count], Field(min_length=1)] = Field(
        1, description="nodes; a list sweeps")
    devices_per_node: Count | None = Field(None, description="devices in one node; default: the catalog "
                                                             "device's (8 where it names none)")
    intra_node: str | None = Field(None, description="link inside a node; default: the device's",
                                   json_schema_extra=CATALOG_LINK)
    inter_node: str | None = Field(None, description="link between nodes; default: the device's",
                                   json_schema_extra=CATALOG_LINK)
    attention: AttentionKernel = _OPTION["attention"]
    main_grads_fp32: bool = _OPTION["main_grads_fp32"]
    grad_accumulation_fusion: bool = _OPTION["grad_accumulation_fusion"]
    params_fp32: bool = _OPTION["params_fp32"]
    master_weights: bool = _OPTION["master_weights"]
    optimizer: OptimizerKernel = _OPTION["optimizer"]
    compile: bool | None = _OPTION["compile"]
    sampler: Literal["none", "sort-top-p"] = _OPTION["sampler"]
    topology: str | None = Field(None, description="TPU slice shape AxB (v5e) or AxBxC (v4, v5p): each of `nodes` "
                                                   "slices is this torus; sets devices_per_node")
    mesh: dict[str, str] | None = Field(None, description="TPU: mesh axes pinned to torus dimensions, e.g. "
                                                          "{tp: z, dp: xy}; the rest are laid innermost first")
    all_reduce: Literal["nccl", "vllm"] = _OPTION["all_reduce"]
    power_limit_w: float | None = Field(None, gt=0, description="board power limit of every device in watts "
                                        "(nvidia-smi -pl), above the device's idle_power_w and at most its "
                                        "max_power_w; below max_power_w compute runs at the lower clock the limit "
                                        "holds (docs/costmodel.md, Power limit); default: the catalog entry's")

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes(cls, value: Any) -> Any:
        """One message for both forms (pydantic would report the first branch of the union it tried)."""
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DIMENSION
                                 for v in values):
            raise ValueError(f"allowed: a node count >= 1 and <= {MAX_DIMENSION}, or a non-empty list of them "
                             f"(a sweep)")
        repeats = sweep_repeats(values)
        if repeats:
            raise ValueError(repeats)
        return value

    @field_validator("mesh", mode="before")
    @classmethod
    def _mesh_letters(cls, value: Any) -> Any:
        """Each axis takes its dimensions as one string of letters (`tp: xy`); a YAML list (`tp: [x, y]`) or a
        number is named at its own key, with the form expected (pydantic would say 'a valid string')."""
        if isinstance(value, dict):
            for axis, dims in value.items():
                if not isinstance(dims, str):
                    hint = "".join(map(str, dims)) if isinstance(dims, list) else "xy"
                    raise KeyedValueError(str(axis), (
                        f"{dims!r}: allowed: the torus dimensions this axis holds as one string of letters "
                        f"(x, y, z in topology order), e.g. {axis}: {hint}"))
        return value

    @property
    def node_count(self) -> int:
        """The nodes of one sweep point (the first of a list before the sweep splits it)."""
        return self.nodes[0] if isinstance(self.nodes, list) else self.nodes

    @property
    def options(self) -> Options:
        return engine_options(self)

    def cluster(self, catalog: Catalog) -> ClusterSpec:
        """The cluster these settings describe; ScenarioError keyed inside the settings otherwise."""
        cluster = catalog.cluster(self.hardware, self.node_count, self.devices_per_node, self.intra_node,
                                  self.inter_node, self.topology, self.mesh)
        if self.power_limit_w is None:
            return cluster
        device = cluster.device
        if not device.idle_power_w < self.power_limit_w <= device.max_power_w:
            raise ScenarioError(None, "power_limit_w", f"{self.power_limit_w:g} W; allowed for {device.name}: above "
                                                       f"its idle power {device.idle_power_w:g} W and at most its "
                                                       f"max_power_w {device.max_power_w:g} W")
        return replace(cluster, device=device.model_copy(update={"power_limit_w": self.power_limit_w}))


def _slices(cluster: ClusterSpec) -> str:
    shape = "x".join(map(str, cluster.topology))
    many = f"{cluster.nodes} slices" if cluster.nodes > 1 else "1 slice"
    return f"{many} of {cluster.device.name} topology {shape}, {cluster.devices_per_node} chips each"


@dataclass(frozen=True)
class Priced:
    """One case priced on a cluster: where the time went (costmodel.step.StepTimes, the result columns'
    definitions), the energy of the step, and the backend's extra columns."""

    times: StepTimes
    energy_j: float
    extra: dict[str, Any] = field(default_factory=dict)


class ModeledBackend(Backend):
    """A backend that predicts a case on a catalog cluster; subclasses implement `price`."""

    kind = "modeled"
    Settings: ClassVar[type[BaseModel]] = ModeledSettings
    # Whether a case that does not fit in memory is still priced (its time goes into the row's extras):
    # cheap for a closed form, a waste for a simulation.
    prices_what_does_not_fit: ClassVar[bool] = False
    serves = True  # a serving scenario runs llmsim.serving's simulation, priced on this cluster (modeled_serving)

    def __init__(self, context: RunContext | None = None) -> None:
        super().__init__(context)
        # m*C (the whole step on one device) depends only on the workload, micro-batch and recompute, not on
        # the strategy's degrees or the cluster size: a sweep computes it once per such combination.
        self._one_device: dict[tuple, tuple[WorkloadProfile, float]] = {}

    # -- validation (classmethods the runner calls before anything runs) ------------------------------
    @classmethod
    def resolve_settings(cls, settings: BaseModel, catalog: Catalog) -> BaseModel:
        """Fill devices_per_node from the catalog, so that the world size is the cluster's."""
        assert isinstance(settings, ModeledSettings)
        if settings.devices_per_node is not None:
            return settings
        device = catalog.devices.get(settings.hardware)
        if device is not None and device.torus is not None and settings.topology is None:
            # one slice of nodes x devices_per_node chips: a node stays a host of the catalog's size
            return settings.model_copy(update={"devices_per_node": device.devices_per_node or DEFAULT_DEVICES_PER_NODE})
        return settings.model_copy(update={"devices_per_node": settings.cluster(catalog).devices_per_node})

    @classmethod
    def sweep(cls, settings: BaseModel) -> list[tuple[str, BaseModel]]:
        assert isinstance(settings, ModeledSettings)
        if isinstance(settings.nodes, list):
            return [(f"@nodes={n}" if len(settings.nodes) > 1 else "", settings.model_copy(update={"nodes": n}))
                    for n in settings.nodes]
        return [("", settings)]

    @classmethod
    def world_size(cls, settings: BaseModel) -> int:
        assert isinstance(settings, ModeledSettings) and settings.devices_per_node is not None, \
            "resolve_settings fills devices_per_node before the world size is asked"
        return settings.node_count * settings.devices_per_node

    @classmethod
    def check_settings(cls, settings: BaseModel, catalog: Catalog) -> tuple[str, str] | None:
        """Unknown device or link names are validation errors, before any case runs."""
        assert isinstance(settings, ModeledSettings)
        try:
            settings.cluster(catalog)
        except ScenarioError as exc:
            return exc.key or "hardware", exc.message
        return None

    @classmethod
    def device(cls, settings: BaseModel, catalog: Catalog) -> DeviceSpec | None:
        """The catalog device the settings name (None when the catalog has no such device)."""
        assert isinstance(settings, ModeledSettings)
        return catalog.devices.get(settings.hardware)

    @classmethod
    def known_skip(cls, settings: BaseModel, workload: Workload, catalog: Catalog) -> tuple[str, str] | None:
        """The device the settings name lacks FP8 units for a float8 workload, or a peak FLOP/s or memory
        bandwidth for its dtype (cpu-host has neither until `llmsim calibrate`): run() skips every such row with
        these words (precision.device_problem, then device_rates)."""
        device = cls.device(settings, catalog)
        if device is None:
            return None
        problem = precision.device_problem(workload, device) or rates_problem(device, workload.dtype)
        return None if problem is None else ("hardware", problem)

    @classmethod
    def known_does_not_fit(cls, settings: BaseModel, case: Case, catalog: Catalog) -> str | None:
        """A serving case whose replica has no KV cache, or one below a request of the whole context
        (modeled_serving.kv_fit_problem: the memory model's leftover, no simulation); None for anything else,
        and where known_skip already skips the point."""
        assert isinstance(settings, ModeledSettings)
        if case.serving is None or cls.known_skip(settings, case.workload.model_copy(update={"mode": "decode"}),
                                                   catalog) is not None:   # served: inference (runner.inference_view)
            return None
        try:
            cluster = settings.cluster(catalog)
        except ScenarioError:
            return None
        return kv_fit_problem(case, cluster, settings.options)

    @classmethod
    def check_layout(cls, settings: BaseModel, layout: Layout, catalog: Catalog) -> tuple[str, str] | None:
        """On a TPU slice, the strategy's mesh axes must tile the torus and honour the `mesh` pins
        (costmodel.torus.map_axes): one validation error instead of a skipped row per case."""
        assert isinstance(settings, ModeledSettings)
        cluster = settings.cluster(catalog)
        if not cluster.is_torus:
            return None
        try:
            torus_groups({"tp": layout.tp, "cp": layout.cp, "pp": layout.pp, "dp": layout.dp}, cluster)
        except TorusError as exc:
            key, sep, message = str(exc).partition(": ")
            if sep and key.startswith("mesh."):
                return key, message
            return "", f"{exc} ({_slices(cluster)})"
        return None

    @classmethod
    def describe_world(cls, settings: BaseModel, catalog: Catalog) -> str | None:
        """A TPU backend's world is its slices: '2 slices of tpu-v5p 4x4x8 (128 chips each)'."""
        assert isinstance(settings, ModeledSettings)
        try:
            cluster = settings.cluster(catalog)
        except ScenarioError:
            return None
        return _slices(cluster) if cluster.is_torus else None

    @classmethod
    def check_serving(cls, settings: BaseModel) -> tuple[str, str] | None:
        """Serving prices a fused attention kernel (vLLM's FlashAttention / paged attention): flash
        (FlashAttention-2), flash3 (FlashAttention-3: vLLM on Hopper) or cudnn; not the unfused ones."""
        assert isinstance(settings, ModeledSettings)
        problem = serving_attention_problem(settings.attention)
        return ("attention", problem) if problem else None

    # -- running ----------------------------------------------------------------------------------
    def serving_faults(self, case: Case, settings: Any, cluster: ClusterSpec) -> ServingFaults:
        """Faults and variance of a serving run on this backend (none: the cost model's prices as they are)."""
        return ServingFaults()

    def cluster(self, settings: ModeledSettings) -> ClusterSpec:
        """The catalog cluster the settings describe; unknown names are one clear error."""
        try:
            return settings.cluster(self.context.catalog)
        except ScenarioError as exc:
            raise ScenarioError(None, f"backends.{self.name}.{exc.key}", exc.message) from None

    def one_device_time(self, case: Case, profile: WorkloadProfile, plan: Plan, cluster: ClusterSpec,
                        options: Options) -> float:
        """m*C of T = m*C/n: the roofline's step of the whole case on one device, cached per sweep."""
        key = (id(profile), plan.single_device(), cluster.device.name, options)
        hit = self._one_device.get(key)
        if hit is None or hit[0] is not profile:
            value = single_device_step_time(case.workload, profile, case.sharing, plan, cluster, options)
            hit = self._one_device[key] = (profile, value)
        return hit[1]

    @abstractmethod
    def price(self, case: Case, settings: Any, profile: WorkloadProfile, plan: Plan, cluster: ClusterSpec) -> Priced:
        """How long `case` takes on `cluster` and where the time goes. May raise CostModelError."""

    def run(self, case: Case, settings: Any) -> Result:
        cluster = self.cluster(settings)
        options = settings.options
        fp8_problem = precision.device_problem(case.workload, cluster.device, serving=case.serving is not None)
        if fp8_problem is not None:  # one device of several lacks FP8 (none of them: runner.check_fp8 refuses)
            return case.result(self, status="skipped", error=fp8_problem, hardware=cluster.device.name,
                               nodes=cluster.nodes, energy_source="modeled",
                               **priced_options(options, "serve" if case.serving is not None else case.workload.mode,
                                                case.workload.dtype, cluster.device))
        if case.serving is not None and case.serving.spec.disaggregation is not None:
            # prefill and decode instances (llmsim.modeled_disaggregated)
            return serve_disaggregated(self, case, cluster, options, self.serving_faults(case, settings, cluster))
        if case.serving is not None:
            return serve_case(self, case, cluster, options, self.serving_faults(case, settings, cluster))
        profile = profile_workload(case.workload, case.sharing)
        plan = plan_on(Plan.of(case.strategy, case.layout), cluster)
        where = dict(hardware=cluster.device.name, nodes=cluster.nodes, params=profile.params,
                     trainable_params=profile.trainable_params, params_active=profile.active_params,
                     expert_load_imbalance=assumed_imbalance(case.workload, plan if case.workload.mode == "train"
                                                             else inference_plan(plan)),
                     energy_source="modeled", model_flops_per_step=profile.model_flops_per_step,
                     **priced_options(options, case.workload.mode, case.workload.dtype, cluster.device))
        try:
            peak = workload_rates(cluster, case.workload).peak_flops
            one_device = self.one_device_time(case, profile, plan, cluster, options)
        except CostModelError as exc:
            return case.result(self, status="skipped", error=str(exc), **where)
        memory = memory_breakdown(case.workload, profile, case.sharing, plan, options, device=cluster.device)
        extra: dict[str, Any] = {f"mem_{k}_bytes": v for k, v in memory.as_dict().items()}
        extra.update(memory_stage=memory.stage, memory_stage_index=memory.stage_index)
        values: dict[str, Any] = dict(where, peak_memory_bytes_per_device=memory.total, extra=extra)
        capacity = cluster.device.memory_bytes
        if not memory.fits(capacity):
            if self.prices_what_does_not_fit:
                extra["modeled_step_time_s"] = self.price(case, settings, profile, plan, cluster).times.step
            return case.result(self, status="does-not-fit", error=memory.describe(capacity), **values)
        try:
            priced = self.price(case, settings, profile, plan, cluster)
        except CostModelError as exc:  # e.g. degrees that do not tile a TPU slice (costmodel.torus)
            return case.result(self, status="skipped", error=str(exc), **values)
        t = priced.times
        extra.update(priced.extra, critical_stage=t.critical_stage)
        values.update(step_time_s=t.step, latency_p50_s=t.step, latency_p99_s=t.step, ttft_s=t.ttft, tpot_s=t.tpot,
                      mfu=profile.model_flops_per_step / t.step / plan.world / peak, energy_j_per_step=priced.energy_j,
                      c_per_submodel_s=one_device / case.strategy.m_submodels, compute_time_s=t.compute,
                      comm_time_s=t.comm, bubble_time_s=t.bubble, other_time_s=t.other)
        return fill_derived(case.result(self, **values), case.workload.tokens_per_step)
