"""The plan file (contract: design.md "Plan file") as pydantic models, and its loader.

A plan names one workload (exactly as a scenario does), the goal it must meet, the hardware to choose
from with the user's own prices, the limits, and what to minimise. Loading is the scenario
loader's own (`load_file_model`: safe YAML, `--set`, validation), so a bad plan gets the same one-line message that
names the file, the key path and what is allowed, and exit code 2.

Beyond the contract keys a plan may narrow the search (`search`), set parameter sharing (`sharing`,
as in a scenario) and switch the cluster-simulation re-check off (`simulate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator


from llmsim.config import (NAME_PATTERN, Sharing, Workload, _KeyedError, check_sharing, load_file_model,
                           parse_file_model)
from llmsim.errors import ScenarioError
from llmsim.hardware import Catalog
from llmsim.strict import StrictModel

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]

# Illustrative on-demand cloud prices, USD per device-hour, used only when a plan gives none. They are
# examples to make a first plan run, not facts: prices differ by provider, region, commitment and month.
# Put your own in `usd_per_device_hour`; the report says when an example price was used.
EXAMPLE_USD_PER_DEVICE_HOUR: dict[str, float] = {
    "a100-40gb": 1.5, "a100-80gb": 1.8, "h100-sxm": 3.5, "h200": 4.5,
    "tpu-v4": 3.2, "tpu-v5e": 1.2, "tpu-v5p": 4.2,
}


class _Strict(StrictModel):
    """Unknown keys refused, values frozen, no boolean for a number (llmsim.strict)."""


class Goal(_Strict):
    """Training: {tokens, deadline_days}. Inference (prefill, decode): {tokens_per_s, max_step_latency_s}.

    One model with all four keys (not a union), so a misplaced key gets a message that says which mode
    wants which keys instead of pydantic's union error list.
    """

    tokens: PositiveFloat | None = Field(None, description="train: tokens to train on")
    deadline_days: PositiveFloat | None = Field(None, description="train: wall-clock limit; null = none")
    tokens_per_s: PositiveFloat | None = Field(None, description="inference: tokens per second to sustain")
    max_step_latency_s: PositiveFloat | None = Field(
        None, description="inference: latency limit of one step (decode: one token step; prefill: the step)")

    @property
    def deadline_s(self) -> float | None:
        return None if self.deadline_days is None else self.deadline_days * 86400.0


class HardwareChoice(_Strict):
    """One device type the planner may choose, and how its nodes are built. Prices are the user's."""

    name: str = Field(description="catalog device name (llmsim hardware lists them)")
    usd_per_device_hour: PositiveFloat | None = Field(
        None, description="your price; default: an example price (EXAMPLE_USD_PER_DEVICE_HOUR), not a quote")
    devices_per_node: PositiveInt | None = Field(None, description="default: the catalog device's")
    intra_node: str | None = Field(None, description="link inside a node; default: the device's")
    inter_node: str | None = Field(None, description="link between nodes; default: the device's")


# The model counts tensors; a framework also needs memory it does not: the caching allocator's fragmentation,
# the CUDA context, cuBLAS/attention workspaces and NCCL buffers. vLLM's default is to use 90% of a GPU
# (EngineArgs / CacheConfig gpu_memory_utilization = 0.9, vllm/config.py), leaving 10% for exactly these;
# the plan keeps the same share free unless told otherwise (limits.memory_headroom).
DEFAULT_MEMORY_HEADROOM = 0.1


class Limits(_Strict):
    max_devices: PositiveInt = Field(4096, description="most devices one configuration may use")
    max_power_w: PositiveFloat | None = Field(None, description="most watts the devices may draw at full load")
    memory_headroom: float = Field(DEFAULT_MEMORY_HEADROOM, ge=0, lt=1,
                                   description="fraction of device memory kept free (allocator fragmentation, CUDA "
                                               "context, workspaces, communication buffers); default 0.1, the "
                                               "share vLLM leaves by default (gpu_memory_utilization 0.9)")


Recompute = Literal["none", "selective", "full"]
Schedule = Literal["gpipe", "1f1b", "interleaved"]


class SearchSpace(_Strict):
    """Narrow the enumerated degrees (null = the default: every value the model and batch allow).

    Defaults: tp = powers of two up to devices_per_node that divide the heads; pp = divisors of the
    layers and powers of two up to the layers (where they do not divide, the default split and
    Megatron-LM's first/last-stage counts are searched: planner.space.split_candidates); cp = 1, 2, 4, 8
    (1 for decode); dp = divisors of the batch; micro_batch = divisors of the per-replica batch;
    virtual_stages = 2..4 for interleaved; ep (mixture-of-experts workloads) = the divisors of the routed
    experts, with the expert tensor-parallel size = tp (Megatron-Core's default).
    """

    tp: list[PositiveInt] | None = None
    pp: list[PositiveInt] | None = None
    cp: list[PositiveInt] | None = None
    dp: list[PositiveInt] | None = None
    zero: list[Literal[0, 1, 2, 3]] | None = None
    micro_batch: list[PositiveInt] | None = None
    recompute: list[Recompute] | None = None
    schedule: list[Schedule] | None = None
    virtual_stages: list[Annotated[int, Field(ge=2)]] | None = None
    sp: list[bool] | None = None
    ep: list[PositiveInt] | None = Field(None, description="expert-parallel sizes (MoE workloads; default: the "
                                         "divisors of the routed experts; expert tensor parallel = tp)")


class PlanFile(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    workload: Workload
    sharing: Sharing = Field(default_factory=Sharing)
    goal: Goal
    hardware: list[HardwareChoice] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    objective: Literal["cost", "time", "energy", "devices"] = "cost"
    top_k: PositiveInt = 5
    search: SearchSpace = Field(default_factory=SearchSpace)
    simulate: bool = Field(True, description="re-check the top_k with the SimPy cluster simulation")

    @model_validator(mode="after")
    def _check(self) -> "PlanFile":
        train = self.workload.mode == "train"
        g = self.goal
        wanted, unwanted = (("tokens",), ("tokens_per_s", "max_step_latency_s")) if train else \
            (("tokens_per_s",), ("tokens", "deadline_days"))
        what = "training takes {tokens, deadline_days}" if train else \
            f"{self.workload.mode} takes {{tokens_per_s, max_step_latency_s}}"
        for key in unwanted:
            if getattr(g, key) is not None:
                raise _KeyedError(f"goal.{key}", f"not a goal of mode {self.workload.mode!r}: {what}")
        for key in wanted:
            if getattr(g, key) is None:
                raise _KeyedError(f"goal.{key}", f"required key is missing: {what}")
        problem = check_sharing(self.sharing, self.workload.model)  # e.g. lora target gate on a GELU model
        if problem is not None:
            raise _KeyedError(f"sharing.{problem[0]}", problem[1])
        names = [h.name for h in self.hardware]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise _KeyedError(f"hardware[{i}].name", f"{name!r} is listed twice")
        return self


def parse_plan(data: dict[str, Any], file: str = "<plan>") -> PlanFile:
    return parse_file_model(PlanFile, data, file)


def load_plan(path: str | Path, overrides: list[str] | None = None) -> PlanFile:
    """Load and validate a plan file: safe YAML, `--set` overrides, schema and cross-key rules."""
    return load_file_model(PlanFile, path, overrides, other_kind=("strategies", "run"))


def check_hardware(plan: PlanFile, catalog: Catalog, file: str) -> None:
    """Device and link names exist in the catalog and every device can be priced (a ScenarioError otherwise)."""
    for i, h in enumerate(plan.hardware):
        try:
            device = catalog.cluster(h.name, 1, h.devices_per_node, h.intra_node, h.inter_node).device
        except ScenarioError as exc:  # keyed hardware / intra_node / inter_node: where in the plan
            key = "name" if exc.key == "hardware" else exc.key
            raise ScenarioError(file, f"hardware[{i}].{key}", exc.message) from None
        if not device.peak_flops.get(plan.workload.dtype) or not device.memory_bw_bytes_per_s:
            raise ScenarioError(file, f"hardware[{i}].name", f"device {h.name!r} has no catalog peak FLOP/s for "
                                                             f"{plan.workload.dtype} or no memory bandwidth")
        if h.usd_per_device_hour is None and h.name not in EXAMPLE_USD_PER_DEVICE_HOUR:
            raise ScenarioError(file, f"hardware[{i}].usd_per_device_hour",
                                f"required for {h.name!r} (example prices exist only for "
                                f"{', '.join(EXAMPLE_USD_PER_DEVICE_HOUR)})")


def price_of(choice: HardwareChoice) -> tuple[float, bool]:
    """(USD per device-hour, whether it is an example default rather than the user's own price)."""
    if choice.usd_per_device_hour is not None:
        return choice.usd_per_device_hour, False
    return EXAMPLE_USD_PER_DEVICE_HOUR[choice.name], True
