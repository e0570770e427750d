"""Workloads and clusters shared by the cost-model tests (profiles are cached by profile_workload)."""

from __future__ import annotations

from llmsim.config import LoraSpec, ModelSpec, Workload
from llmsim.costmodel import ClusterSpec
from llmsim.costmodel.scaling import with_layers
from llmsim.hardware import load_catalog
from llmsim.workload.profile import WorkloadProfile, profile_workload
from llmsim.config import SharingChoice

CATALOG = load_catalog()


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
