"""Workloads and clusters shared by the cost-model tests (profiles are cached by profile_workload)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmsim.config import LoraSpec, ModelSpec, Workload
from llmsim.costmodel import ClusterSpec, Plan
from llmsim.costmodel.cluster import Group, collective_time
from llmsim.costmodel.efficiency import Efficiency
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.workload.profile import WorkloadProfile, profile_workload
from llmsim.config import SharingChoice

CATALOG = load_catalog()


@dataclass(frozen=True)
class Link:
    """The fields of a catalog link the cost model reads (costmodel.cluster.LinkSpec)."""

    name: str = "link"
    bandwidth_bytes_per_s: float = 100e9
    latency_s: float = 1e-6
    efficiency: float = 0.5
    shared_per_node: bool = False
    collective_efficiency: dict = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, self.bandwidth_bytes_per_s, self.latency_s, self.efficiency, self.shared_per_node))


@dataclass(frozen=True)
class Device:
    """The fields of a catalog device the cost model reads (costmodel.cluster.DeviceSpec)."""

    name: str = "dev"
    peak_flops: dict = field(default_factory=lambda: {"bfloat16": 1e15})
    memory_bytes: float = 80e9
    memory_bw_bytes_per_s: float = 2e12
    idle_power_w: float = 100.0
    max_power_w: float = 400.0
    power_limit_w: float | None = None
    compute_units: int | None = None
    efficiency: Efficiency | None = None
    overlaps_communication: bool = True
    compiled: bool = False
    fp8_gemm_any_layout: bool = False

    def __hash__(self) -> int:
        return hash((self.name, self.memory_bytes, self.memory_bw_bytes_per_s, self.compute_units))


def a100_cluster(nodes: int = 1, devices_per_node: int = 8) -> ClusterSpec:
    return ClusterSpec(device=CATALOG.device("a100-80gb"), intra=CATALOG.link("nvlink3"),
                       inter=CATALOG.link("ib-hdr200x8"), nodes=nodes, devices_per_node=devices_per_node)


def gpt2(mode: str = "train", batch: int = 4, **model: object) -> Workload:
    """GPT-2 small at a short context: every mechanism shows, and it traces in a fraction of a second."""
    return Workload(model=ModelSpec(preset="gpt2-small", **{"seq_len": 256, **model}), mode=mode, batch=batch)


def profiled(workload: Workload, tie: bool = True, layer_groups: int | None = None,
             lora: LoraSpec | None = None) -> tuple[WorkloadProfile, SharingChoice]:
    sharing = SharingChoice(tie, layer_groups, lora)
    return profile_workload(workload, sharing), sharing


def gpt3_175b(batch: int = 1536) -> tuple[Workload, WorkloadProfile, SharingChoice]:
    """GPT-3 175B, profiled with 2 layers and scaled to 96 (exact: costmodel.scaling)."""
    full = Workload(model=ModelSpec(preset="gpt3-175b"), mode="train", batch=batch)
    short = Workload(model=ModelSpec(preset="gpt3-175b", layers=2), mode="train", batch=batch)
    profile, sharing = profiled(short)
    return full, with_layers(profile, 96), sharing


def tp8_case() -> tuple[Workload, WorkloadProfile, SharingChoice, ClusterSpec]:
    """GPT-2 medium (16 heads: tp=8 divides them) cut to 4 layers, on one 8-GPU A100 node."""
    workload = Workload(model=ModelSpec(preset="gpt2-medium", layers=4, seq_len=256), mode="train", batch=6)
    profile, sharing = profiled(workload)
    return workload, profile, sharing, a100_cluster(nodes=1, devices_per_node=8)


def megatron_tp_comm_per_microbatch(workload: Workload, plan: Plan, cluster: ClusterSpec) -> float:
    """Tensor-parallel communication of one micro-batch, by hand from Shoeybi et al. 2019 ("Megatron-LM",
    Sec. 3, Fig. 4): per layer 2 all-reduces of the b x s x h activation in the forward pass (after
    attention, after the MLP: the g operators) and 2 in the backward pass (the f operators); a full
    recompute runs the forward, and its 2, once more. Two more at the edges: the embedding's output
    forward and the LM head's input gradient. With sequence parallelism (Korthikanti et al. 2022, Sec. 4.2.2)
    each all-reduce becomes a reduce-scatter plus an all-gather of the same buffer."""
    m = workload.model
    size = plan.micro_batch * m.seq_len * m.hidden * 2  # bf16
    group = Group(size=plan.tp, per_node=plan.tp, nodes=1)
    if plan.sp:
        one = (collective_time("reduce-scatter", size, group, cluster)
               + collective_time("all-gather", size, group, cluster))
    else:
        one = collective_time("all-reduce", size, group, cluster)
    forward, backward, edges = 2, 2, 2
    per_layer = forward * (2 if plan.recompute == "full" else 1) + backward
    return (m.layers * per_layer + edges) * one

