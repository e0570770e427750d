"""The hardware catalog: devices and links with sourced numbers.

Built-in entries live in catalog.yaml beside this file; users add YAML files (scenario key
`hardware_catalog`, or `--hardware FILE`), plugins add entries through the `llmsim_hardware` hook.
Every entry must say where its numbers come from (`source`); an entry without one is rejected.
"""

from __future__ import annotations

import functools
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from llmsim.costmodel.cluster import ClusterSpec
from llmsim.costmodel.efficiency import MAX_FIXED_TIME_S, MAX_TILE_SIDE, Efficiency, kernel_latency_seconds
from llmsim.costmodel.torus import SliceShapes, TorusError, parse_topology
from llmsim.config import NUMBER_WANTED, allowed_keys, allowed_range, describe_error, out_of_range
from llmsim.errors import KeyedValueError, ScenarioError, format_key_path, one_line
from llmsim.strict import BooleansAreNotNumbers
from llmsim.wording import shown_number, shown_value

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
# Devices per node where neither the caller nor the catalog entry says: an NVIDIA HGX/DGX board's 8 GPUs.
DEFAULT_DEVICES_PER_NODE = 8
Source = Annotated[str, Field(min_length=3, description="datasheet, paper or measurement the numbers come from")]
# A backend setting that names a catalog entry says so in its JSON Schema (pydantic json_schema_extra):
# `hardware: str = Field(..., json_schema_extra=CATALOG_DEVICE)`. `llmsim schema` lists the catalog's names there
# (llmsim.schema), from the catalog the plugin manager's hooks give, without knowing which backend declared it.
CATALOG_KEY = "x-llmsim-catalog"
CATALOG_DEVICE: dict[str, str] = {CATALOG_KEY: "device"}
CATALOG_LINK: dict[str, str] = {CATALOG_KEY: "link"}


class TorusSpec(BooleansAreNotNumbers):
    """How a TPU's chips join into slices: a `dims`-dimensional torus of ICI links (costmodel.torus)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dims: Literal[2, 3] = Field(description="2 = 2D torus (v5e), 3 = 3D torus (v4, v5p)")
    wrap_multiple: int = Field(ge=1, description="a slice dimension gets wrap-around links when its length is a "
                                                 "multiple of this")
    shapes: list[str] = Field(default_factory=list, description="slice shapes offered as listed (e.g. 2x2x1); "
                                                                "with cube_multiple empty, the only ones")
    cube_multiple: int | None = Field(None, ge=1, description="also offered: every side a multiple of this "
                                                              "(slices of whole 4x4x4 cubes)")
    max_side: int | None = Field(None, ge=1, description="longest side of a cube-built slice")
    max_chips: int | None = Field(None, ge=1, description="most chips in one slice")
    source: Source

    @field_validator("shapes")
    @classmethod
    def _shapes(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                parse_topology(text)
            except TorusError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def slice_shapes(self) -> SliceShapes:
        """The offered shapes as the cost model checks and searches them (costmodel.torus.SliceShapes)."""
        return SliceShapes(listed=tuple(parse_topology(t) for t in self.shapes), multiple=self.cube_multiple,
                           max_dim=self.max_side, max_chips=self.max_chips)


def _finite_number(value: object) -> bool:
    """Whether a raw catalog value is a finite int or float as YAML read it (not text, a boolean, inf or nan)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: object) -> float | None:
    """A YAML scalar as a float (PyYAML reads 1.41e9 as a string), None for anything else (booleans too)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# Floors on a catalog entry's rates: a rate below them is a unit slip (989 for an H100's 989e12 FLOP/s, 3.35 for its
# 3.35e12 B/s), not a device, and priced it gives times past any clock (1e-300 gave NaN times in "ok" rows: trial 34).
MIN_PEAK_FLOPS = 1e8              # FLOP/s: 100 MFLOP/s, under a single 2006 CPU core's ~5 GFLOP/s (and any GPU's)
MIN_MEMORY_BW_BYTES_PER_S = 1e8   # B/s: 100 MB/s, under a slow laptop's DRAM (llmsim calibrate's lower bound too)
MIN_LINK_BYTES_PER_S = 1e6        # B/s: 1 MB/s, under 10 Mbit/s Ethernet
MIN_CLOCK_HZ = 1e8                # Hz: 100 MHz, under any accelerator's boost clock (1830 is MHz written as Hz)
MAX_LATENCY_S = MAX_FIXED_TIME_S  # s: 10 ms, far above any link hop (built-in largest 165 us) or kernel launch (35 us)


class DeviceSpec(BooleansAreNotNumbers):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    type: Literal["device"] = "device"
    peak_flops: dict[Literal["float32", "bfloat16", "float16", "float8", "float4", "int8"],
                     Annotated[float, Field(ge=MIN_PEAK_FLOPS)]] = Field(
        default_factory=dict, description="dense peak FLOP/s per dtype (float8: E4M3/E5M2 tensor-core GEMMs; "
                                          "float4 where published, for reference; int8 for reference); empty = measured at run time")
    memory_bytes: float = Field(ge=0, description="0 = read from the machine at run time")
    memory_bw_bytes_per_s: float = Field(ge=0, description=f"0 = not modeled (cpu-host); else at least "
                                                           f"{MIN_MEMORY_BW_BYTES_PER_S:g}")
    idle_power_w: float = Field(ge=0)
    max_power_w: float = Field(ge=0)
    power_limit_w: float | None = Field(
        None, gt=0, description="enforced board power limit (nvidia-smi -pl) in watts, above idle_power_w "
                                "and at most max_power_w: compute runs at the lower clock that limit holds "
                                "(costmodel.power) and a busy device draws the limit; None = max_power_w")
    power_per_core: bool = Field(False, description="power figures are per CPU core, scaled by cores in use")
    compute_units: int | None = Field(None, ge=1, description="SMs (GPU): matmul wave quantization; None = not modeled")
    sm_clock_hz: float | None = Field(None, ge=MIN_CLOCK_HZ,
                                      description="boost SM clock from the datasheet, Hz: turns "
                                                             "efficiency.kernel_latency_cycles into seconds")
    devices_per_node: int | None = Field(None, ge=1, description="devices in one node (host) by default")
    intra_node: str | None = Field(None, description="default link between devices of one node")
    inter_node: str | None = Field(None, description="default link between nodes")
    efficiency: Efficiency | None = Field(None, description="achievable fractions of peak; None = generic defaults")
    torus: TorusSpec | None = Field(None, description="chips form torus slices (TPU): `topology` applies")
    compiled: bool = Field(False, description="every program runs compiled, its elementwise ops fused (TPU: "
                                              "XLA); False = eager unless the backend's `compile` says otherwise")
    microscaling: bool = Field(
        False, description="tensor cores that take OCP MX block-scaled operands natively (MXFP8: one E8M0 scale "
                           "per 32 elements): NVIDIA Blackwell, SM 10.0+ (Transformer Engine docs, 'MXFP8'); the "
                           "fp8 recipe mxfp8 runs only where true")
    nvfp4: bool = Field(
        False, description="tensor cores that take NVFP4 operands natively (E2M1 values with an E4M3 scale per 16 "
                           "elements): NVIDIA Blackwell's 5th-generation tensor cores (NVIDIA technical blog "
                           "'Introducing NVFP4 for Efficient and Accurate Low-Precision Inference', 2025; Transformer "
                           "Engine's NVFP4BlockScaling needs Blackwell). A float4 peak without it (AMD CDNA4, MI355X: "
                           "OCP MX block scales only, one E8M0 per 32 elements: MXFP4) runs the mxfp4 recipe at that "
                           "peak and nvfp4 weight-only (costmodel.precision.has_fp4_units)")
    fp8_gemm_any_layout: bool = Field(
        False, description="FP8 GEMMs with per-tensor scales take their operands in any layout (not only TN): "
                           "Transformer Engine's nvte_is_non_tn_fp8_gemm_supported(), compute capability 10.x-11.x "
                           "and 13.0+ (Blackwell B200/GB200 = SM 10.0; transformer_engine/common/"
                           "transformer_engine.cpp). Where true, the delayed and current recipes keep one FP8 copy "
                           "of each tensor in training, not a row-wise and a transposed one (costmodel.precision."
                           "copies); mxfp8 keeps two everywhere")
    overlaps_communication: bool = Field(
        True, description="collectives run on their own engines (copy engines, NIC) and can hide behind "
                          "compute; False where they run on the cores that compute (gloo on a CPU host)")
    request_overhead_s: float = Field(
        0.0, ge=0, description="seconds a served request spends outside the engine's forward passes, paid once per "
                               "request: from its arrival to its admission by the scheduler plus from the engine's "
                               "token to the client (API server, tokenisation, IPC hop, detokenisation); added to "
                               "TTFT and end-to-end latency, not to TPOT/ITL, and it does not occupy the engine "
                               "(docs/serving.md). 0 = not modeled: no sourced figure for the GPU entries; "
                               "`llmsim calibrate` fits it from measured serving rows")
    step_overhead_s: float = Field(
        0.0, ge=0, description="host (CPU) seconds of each engine iteration that do not overlap the device's "
                               "work, fixed part: scheduling, input preparation, sampling bookkeeping, output "
                               "processing between forward passes (vLLM V0-style engines, which run them in line); "
                               "added to every iteration's time by the serving simulation with "
                               "step_overhead_per_seq_s x the sequences it runs (docs/serving.md). 0 = not "
                               "modeled: an engine-and-host property, no sourced figure for a device in general; a "
                               "scenario's serving.step_overhead_s overrides it")
    step_overhead_per_seq_s: float = Field(
        0.0, ge=0, description="host seconds of each engine iteration per sequence it runs (the part of "
                               "step_overhead_s that grows with the batch: per-sequence input preparation, sampler "
                               "results, detokenisation); 0 = not modeled; serving.step_overhead_per_seq_s "
                               "overrides it")
    eager_launch_s: float = Field(
        0.0, ge=0, le=MAX_LATENCY_S,
        description="host (CPU) seconds to launch one kernel of a forward pass eagerly from Python (module "
                    "code, dispatcher, driver launch): a pass an engine does not replay from a CUDA "
                    "graph (vLLM V0's passes that hold a prompt; every pass of an engine without "
                    "graphs: serving.scheduler.eager) takes max(device time, this x the kernels it "
                    "launches) (costmodel.eager); 0 = not modeled")
    allreduce_rms_fusion_max_bytes: dict[int, float] = Field(
        default_factory=dict,
        description="tp size -> the largest all-reduce input in bytes (tokens x hidden x 2 B) for which vLLM folds "
                    "a tensor-parallel all-reduce and the RMSNorm after it into one FlashInfer kernel "
                    "(serving.scheduler.fuse_allreduce_rms; vLLM's FI_ALLREDUCE_FUSION_MAX_SIZE_MB for the "
                    "device's compute capability, vllm/compilation/passes/fusion/allreduce_rms_fusion.py); "
                    "empty = the fusion does not run on this device (vLLM enables it on Hopper and Blackwell only)")
    source: Source

    @model_validator(mode="before")
    @classmethod
    def _fusion_limits(cls, data: object) -> object:
        """allreduce_rms_fusion_max_bytes: tp sizes (whole numbers >= 2) to bytes (> 0), each refused at its own
        key with what is allowed there (one rule for the key, another for the value: trial 48 read "allowed: >= 2
        and > 0" of a byte count)."""
        limits = data.get("allreduce_rms_fusion_max_bytes") if isinstance(data, dict) else None
        key = "allreduce_rms_fusion_max_bytes"
        if limits is None:
            return data
        if not isinstance(limits, dict):
            raise KeyedValueError(key, f"{shown_value(limits)}: expected a mapping of tp size to bytes, e.g. "
                                       f"{{2: 67108864, 4: 2097152, 8: 524288}}")
        read: dict[int, float] = {}
        for tp, limit in limits.items():
            if isinstance(tp, str) and tp.strip().isdigit():   # a JSON round trip writes the tp sizes as text
                tp = int(tp)
            if isinstance(tp, bool) or not isinstance(tp, int) or tp < 2:
                raise KeyedValueError(f"{key}[{tp}]", f"{shown_value(tp)}: a tp size; allowed: whole numbers >= 2")
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
                raise KeyedValueError(f"{key}[{tp}]", f"{shown_value(limit)}: the largest all-reduce input in bytes; "
                                                      f"allowed: a number of bytes > 0")
            read[tp] = float(limit)
        return {**data, key: read}

    @model_validator(mode="before")
    @classmethod
    def _kernel_latency_from_cycles(cls, data: object) -> object:
        """efficiency.kernel_latency_cycles -> kernel_latency_s at this device's SM clock (an explicit
        kernel_latency_s wins: a calibrated entry states seconds)."""
        if not isinstance(data, dict) or data.get("efficiency") is None:
            return data
        eff = data["efficiency"]
        if isinstance(eff, Efficiency):
            cycles, seconds = eff.kernel_latency_cycles, eff.kernel_latency_s
        elif isinstance(eff, dict):
            cycles, seconds = eff.get("kernel_latency_cycles"), eff.get("kernel_latency_s")
        else:
            return data
        if not _finite_number(cycles) or (seconds is not None and not _finite_number(seconds)):
            return data  # text, a boolean, inf or nan: field validation says which (trial 37: .inf cycles passed)
        cycles, seconds = _number(cycles), _number(seconds)
        if not cycles or cycles <= 0:
            return data  # nothing to convert (field validation checks signs)
        clock = _number(data.get("sm_clock_hz"))
        if clock is not None and clock >= MIN_CLOCK_HZ and kernel_latency_seconds(cycles, clock) > MAX_FIXED_TIME_S:
            # checked here, in the cycles the user wrote, also beside an explicit kernel_latency_s that wins
            raise KeyedValueError("efficiency.kernel_latency_cycles",
                                  f"{cycles:.12g}: out of range at sm_clock_hz {shown_number(clock)}; "
                                  f"allowed: >= 0 and <= {shown_number(MAX_FIXED_TIME_S * clock)} (0.01 s)")
        if seconds:
            return data  # an explicit kernel_latency_s wins (field validation checks it)
        if data.get("sm_clock_hz") is None:
            raise ValueError("efficiency.kernel_latency_cycles needs sm_clock_hz (the SM boost clock, Hz) to be "
                             "turned into seconds; allowed: set sm_clock_hz, or give efficiency.kernel_latency_s")
        if not clock or clock < MIN_CLOCK_HZ:
            return data  # field validation reports sm_clock_hz
        seconds = kernel_latency_seconds(cycles, clock)
        if isinstance(eff, Efficiency):
            eff = eff.model_copy(update={"kernel_latency_s": seconds})
        else:
            eff = {**eff, "kernel_latency_s": seconds}
        return {**data, "efficiency": eff}

    @field_validator("memory_bw_bytes_per_s")
    @classmethod
    def _bandwidth_or_none(cls, value: float) -> float:
        """0 = not modeled (cpu-host before `llmsim calibrate`); any other figure is a bandwidth, at least the floor."""
        if 0 < value < MIN_MEMORY_BW_BYTES_PER_S:
            raise ValueError(f"{value:g} B/s is below {MIN_MEMORY_BW_BYTES_PER_S:g} (100 MB/s): a bandwidth in other "
                             f"units? allowed: 0 (not modeled) or bytes/s >= {MIN_MEMORY_BW_BYTES_PER_S:g}")
        return value

    @field_validator("max_power_w")
    @classmethod
    def _max_at_least_idle(cls, value: float, info: ValidationInfo) -> float:
        """A busy device draws at least what an idle one does (costmodel.energy interpolates between them)."""
        idle = info.data.get("idle_power_w")  # declared above: validated first
        if idle is not None and value < idle:
            raise ValueError(f"{value:g} W is below idle_power_w ({idle:g} W); allowed: >= idle_power_w")
        return value

    @field_validator("power_limit_w")
    @classmethod
    def _limit_above_idle(cls, value: float | None, info: ValidationInfo) -> float | None:
        idle, top = info.data.get("idle_power_w"), info.data.get("max_power_w")  # declared above: validated first
        if value is not None and idle is not None and value <= idle:
            raise ValueError(f"{value:g} W is at or below idle_power_w ({idle:g} W); allowed: above it, "
                             f"where a clock still runs")
        if value is not None and top is not None and value > top:
            raise ValueError(f"{value:g} W is above max_power_w ({top:g} W); allowed: at most the rated power")
        return value


class LinkSpec(BooleansAreNotNumbers):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    type: Literal["link"] = "link"
    bandwidth_bytes_per_s: float = Field(ge=MIN_LINK_BYTES_PER_S,
                                         description="per device, per direction (per node if shared_per_node)")
    latency_s: float = Field(ge=0, le=MAX_LATENCY_S, description="per hop of a ring / per message")
    efficiency: float = Field(1.0, gt=0, le=1, description="achievable fraction of the line rate for large messages")
    shared_per_node: bool = Field(False, description="one port per node, shared by the devices that use it at once")
    peer_access: bool = Field(False, description="GPUs load and store each other's memory over this link (NVLink, "
                                                 "PCIe peer-to-peer, xGMI): what an engine's custom all-reduce needs")
    fully_connected: bool = Field(False, description="every device of a node reaches every other directly over this "
                                                     "link (NVSwitch, a full xGMI mesh): peer loads and stores "
                                                     "between any pair, what vLLM's custom all-reduce needs beyond "
                                                     "2 devices")
    max_devices: int | None = Field(None, ge=2, description="most devices the link can join (an NVLink bridge: one "
                                                        "pair, 2); None = as many as a node or cluster has")
    flag_latency_s: float | None = Field(None, ge=0, le=MAX_LATENCY_S,
                                         description="one small store seen by a peer spinning on it (a kernel's "
                                                     "barrier flag); default latency_s")
    collective_efficiency: dict[Literal["all-reduce", "reduce-scatter", "all-gather"], float] = Field(
        default_factory=dict,
        description="per collective, the share of the ring model's bandwidth term it reaches on this link "
                    "(measured against an all-reduce-calibrated bandwidth; missing = 1)")
    source: Source

    @field_validator("collective_efficiency")
    @classmethod
    def _positive_efficiency(cls, value: dict[str, float]) -> dict[str, float]:
        for op, eff in value.items():
            if not 0 < eff <= 4:
                raise ValueError(f"collective_efficiency.{op} = {eff}: allowed 0 < value <= 4")
        return value


Entry = Annotated[DeviceSpec | LinkSpec, Field(discriminator="type")]


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entries: list[Entry]


ONE_DEVICE_LINK = "loopback"   # the link a cluster of one device names where its device names none (Catalog.cluster)

class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    devices: dict[str, DeviceSpec]
    links: dict[str, LinkSpec]
    # entry name -> the absolute path of the user's hardware file that defines it (built-in and plugin entries are
    # not here): a scenario written for these entries (a plan's best.yaml) names the files it needs (files_for)
    files: dict[str, str] = Field(default_factory=dict)
    # plugin -> why its llmsim_hardware entries were left out (a malformed or duplicate entry): said as a warning,
    # the other plugins' and the user's entries kept, as a plugin whose hook raises (docs/plugins.md)
    broken_plugins: dict[str, str] = Field(default_factory=dict)

    def files_for(self, *names: str) -> list[str]:
        """The user hardware files that define these entries, each once, in order (none for built-in entries)."""
        return list(dict.fromkeys(self.files[n] for n in names if n in self.files))

    def device(self, name: str, key: str = "hardware", file: str | None = None) -> DeviceSpec:
        if name not in self.devices:
            raise ScenarioError(file, key, f"unknown device {shown_value(name)}; allowed: {', '.join(self.devices)}")
        return self.devices[name]

    def link(self, name: str, key: str = "link", file: str | None = None) -> LinkSpec:
        if name not in self.links:
            raise ScenarioError(file, key, f"unknown link {shown_value(name)}; allowed: {', '.join(self.links)}")
        return self.links[name]

    def cluster(self, hardware: str, nodes: int = 1, devices_per_node: int | None = None,
                intra_node: str | None = None, inter_node: str | None = None, topology: str | None = None,
                mesh: dict[str, str] | None = None) -> ClusterSpec:
        """The one route from a hardware name to a cluster, for every caller (modeled backends, planner).

        `nodes` x `devices_per_node` devices of `hardware`, joined by `intra_node` links inside a node and
        `inter_node` links between nodes; each of the last three defaults to the device entry's own
        (devices per node to DEFAULT_DEVICES_PER_NODE where the entry has none). Raises ScenarioError
        keyed `hardware`, `intra_node` or `inter_node`: the caller prefixes the path of its settings.

        A device with a `torus` block (TPU) is always modeled as torus slices: `nodes` slices of shape
        `topology` ("4x4x8"), ICI `intra_node` links along the torus, `inter_node` = the data-center network
        between slices, `mesh` pinning mesh axes to torus dimensions (costmodel.torus). Without a topology,
        the `nodes` x `devices_per_node` chips form one slice of the most even shape (torus.default_shape).
        """
        device = self.device(hardware, key="hardware")
        if device.torus is not None:
            return self._torus_cluster(device, nodes, devices_per_node, intra_node, inter_node, topology, mesh)
        if topology is not None or mesh:
            raise ScenarioError(None, "topology" if topology is not None else "mesh",
                                f"device {device.name!r} is not a TPU: topology and mesh apply to devices whose "
                                f"catalog entry has a torus block ({', '.join(self.torus_devices()) or 'none'})")
        names = {"intra_node": intra_node or device.intra_node, "inter_node": inter_node or device.inter_node}
        missing = [key for key, name in names.items() if name is None]
        per_node = devices_per_node or device.devices_per_node or DEFAULT_DEVICES_PER_NODE
        if missing and nodes == 1 and per_node == 1 and ONE_DEVICE_LINK in self.links:
            # one device moves nothing over a link (trial 39: a device file without links was asked for two);
            # the host's loopback stands in for the links no collective uses
            names.update({key: ONE_DEVICE_LINK for key in missing})
            missing = []
        if missing:  # both at once when both are missing (trial 30: a plugin's device asked for one, then the other)
            raise ScenarioError(None, missing[0], f"device {device.name!r} names no default "
                                                  f"{' or '.join(missing)} link; set {' and '.join(missing)}, "
                                                  f"{'each ' if len(missing) > 1 else ''}one of: "
                                                  f"{', '.join(self.links)}")
        links = {key: self.link(name, key=key) for key, name in names.items() if name is not None}
        # A link that joins only a few devices (an NVLink bridge: one pair) cannot carry a larger node, nor join
        # nodes whose devices together outnumber it.
        checks = [("devices_per_node", links["intra_node"], per_node, f"devices_per_node {per_node}",
                   "set devices_per_node <= {n}, or an intra_node link that joins more")]
        if nodes > 1:
            checks.append(("inter_node", links["inter_node"], nodes * per_node, f"{nodes} nodes of {per_node}",
                           "join the nodes with a link that joins more"))
        for key, link, joined, what, fix in checks:
            if link.max_devices is not None and joined > link.max_devices:
                wider = ", ".join(n for n, ln in self.links.items() if ln.max_devices is None)
                raise ScenarioError(None, key, f"link {link.name!r} joins at most {link.max_devices} devices, not "
                                               f"{what}; {fix.format(n=link.max_devices)}: {wider}")
        return ClusterSpec(device=device, intra=links["intra_node"], inter=links["inter_node"], nodes=nodes,
                           devices_per_node=per_node)

    def torus_devices(self) -> list[str]:
        return [name for name, d in self.devices.items() if d.torus is not None]

    def _torus_cluster(self, device: DeviceSpec, slices: int, devices_per_node: int | None, intra_node: str | None,
                       inter_node: str | None, topology: str | None, mesh: dict[str, str] | None) -> ClusterSpec:
        from llmsim.costmodel.torus import check_mesh, check_shape, wraps

        assert device.torus is not None
        offered = device.torus.slice_shapes
        try:
            if topology is None:  # nodes x devices_per_node chips (hosts) in one slice of the most even shape
                per_host = devices_per_node or device.devices_per_node or DEFAULT_DEVICES_PER_NODE
                chips, slices = slices * per_host, 1
                shapes = offered.shapes_of(chips, device.torus.dims)
                if not shapes:
                    raise TorusError(f"{chips} chips (nodes x devices_per_node) form no {device.name} slice; "
                                     f"allowed: {offered.describe(device.torus.dims)} (set topology, and nodes "
                                     f"for several slices)")
                shape = shapes[0]
            else:
                shape = parse_topology(topology, device.torus.dims)
                check_shape(shape, offered, device.name)
        except TorusError as exc:  # without a topology the chip count comes from nodes x devices_per_node
            raise ScenarioError(None, "topology" if topology is not None else "nodes", str(exc)) from None
        chips = math.prod(shape)
        if topology is not None and devices_per_node is not None and devices_per_node != chips:
            raise ScenarioError(None, "devices_per_node", f"{devices_per_node} contradicts topology {topology} "
                                                          f"({chips} chips per slice); leave it out")
        try:
            check_mesh(mesh or {}, len(shape))
        except TorusError as exc:
            key, _, message = str(exc).partition(": ")
            raise ScenarioError(None, key, message) from None
        intra = self.link(intra_node or device.intra_node or "", key="intra_node")
        inter_name = inter_node or device.inter_node
        if slices > 1 and (inter_name is None or inter_name == intra.name):
            raise ScenarioError(None, "inter_node", f"{slices} slices of {device.name} talk over the data-center "
                                                    f"network: name its link (inter_node); the catalog has "
                                                    f"{', '.join(n for n in self.links if n.startswith('dcn')) or 'none'}")
        inter = self.link(inter_name, key="inter_node") if inter_name else intra
        return ClusterSpec(device=device, intra=intra, inter=inter, nodes=slices, devices_per_node=chips,
                           topology=shape, wrap=wraps(shape, device.torus.wrap_multiple),
                           mesh=tuple(sorted((mesh or {}).items())))


def parse_entries(data: object, origin: str) -> list[DeviceSpec | LinkSpec]:
    """The device and link entries of one catalog file's parsed YAML. ScenarioError (file, key, what) on the first
    problem, the others' places counted."""
    if isinstance(data, dict) and "entries" not in data:  # a file written with other top-level keys (devices: ...)
        unknown = ", ".join(str(k) for k in data)
        raise ScenarioError(origin, "entries", "required key is missing: a catalog file holds "
                                               "entries: [{type: device, name: ...}, {type: link, name: ...}]"
                                               + (f" (unknown top-level key: {unknown})" if unknown else ""))
    try:
        return _CatalogFile.model_validate(data).entries
    except ValidationError as exc:
        raise _entries_error(exc, origin) from None


_ENTRY_MODELS = {"device": DeviceSpec, "link": LinkSpec}  # pydantic's discriminator tag in an error's loc


def _entry_problem(err: dict, loc: tuple) -> str:
    """One pydantic error inside a catalog file in the words of a scenario's errors (config.describe_error): an
    unknown key with the keys its entry type allows, a number out of range with every bound of its field."""
    tag = next((p for p in loc if p in _ENTRY_MODELS), None)
    model = _ENTRY_MODELS.get(tag)
    inner = loc[loc.index(tag) + 1:] if tag is not None else loc
    if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
        given = (err.get("ctx") or {}).get("tag")
        return (f"{given!r}: allowed: device, link" if given is not None else
                "each entry needs type: device or type: link (allowed: device, link)")
    if err["type"] == "list_type" and loc == ("entries",):
        return "expected a list of entries ({type: device, name: ...} or {type: link, name: ...})"
    if model is None:
        return describe_error(err)
    if err["type"] == "extra_forbidden":
        return describe_error(err) + allowed_keys(model, inner)
    if err["type"].startswith(("greater_than", "less_than")):
        return out_of_range(model, err, inner)
    if inner == ("peak_flops",) and err["type"] == "dict_type":   # one number where a mapping by dtype belongs
        dtypes = ", ".join(typing.get_args(typing.get_args(DeviceSpec.model_fields["peak_flops"].annotation)[0]))
        return (f"{shown_number(err.get('input'))}: expected a mapping of dtype to dense peak FLOP/s; allowed: keys "
                f"{dtypes}, e.g. {{bfloat16: 9.89e14}}")
    if "matmul_tiles" in inner:   # a list of pairs: one sentence for every way to get it wrong, with its shape
        return (f"{shown_value(err.get('input'))}: expected a list of [rows, cols] GEMM output tiles, each side a "
                f"whole number from 1 to {MAX_TILE_SIDE}; allowed: e.g. [[128, 128], [128, 256]]")
    if err["type"] in NUMBER_WANTED:
        return describe_error(err) + (allowed_range(model, inner) or "")
    return describe_error(err)


def _entries_error(exc: ValidationError, origin: str) -> ScenarioError:
    """A catalog file's validation errors as one ScenarioError (file, key, what): the first problem, the others'
    places counted."""
    errors = exc.errors(include_url=False)
    # pydantic's "[key]" marks a mapping's key that failed (peak_flops' dtype names): the path to it is enough
    where_of = lambda e: format_key_path(tuple(p for p in e["loc"] if p not in _ENTRY_MODELS  # noqa: E731
                                               and p != "[key]"))
    err = errors[0]
    where = where_of(err)
    msg = _entry_problem(err, tuple(err["loc"]))
    keyed = (err.get("ctx") or {}).get("error")
    if isinstance(keyed, KeyedValueError):   # a rule that names its key (strict.boolean_for_a_number)
        where, msg = f"{where}.{keyed.key}" if where else keyed.key, keyed.message
        tag = next((p for p in err["loc"] if p in _ENTRY_MODELS), None)
        if tag is not None and "allowed:" not in msg:   # a mapping's value (peak_flops.bfloat16: '1e15'): its range
            inner = tuple(p for p in err["loc"][err["loc"].index(tag) + 1:] if p != "[key]")
            msg += allowed_range(_ENTRY_MODELS[tag], inner + tuple(keyed.key.split(".")))
    if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
        where = f"{where}.type" if where else "type"
    # pydantic drops a list's failed item and then says the list is too short: an echo of that item's own error
    echoes = [e for e in errors if e["type"] == "too_short"
              and any(tuple(o["loc"][:len(e["loc"])]) == tuple(e["loc"]) and len(o["loc"]) > len(e["loc"])
                      for o in errors)]
    others = [where_of(e) or "the file" for e in errors[1:] if e not in echoes]
    if others:  # where the others are, so that the user need not fix one to learn of the next
        named = ", ".join(dict.fromkeys(others[:3])) + (", ..." if len(others) > 3 else "")
        msg += f" (and {len(others)} more problem{'' if len(others) == 1 else 's'}: {named})"
    return ScenarioError(origin, where or None, msg)


@functools.cache
def _builtin_entries() -> tuple[DeviceSpec | LinkSpec, ...]:
    """The built-in catalog's entries (frozen models), read once per process: the file ships with the package and
    does not change while it runs, and reading its YAML (with userinput's duplicate-key checks) took 0.28 s, most
    of what a small run's report spends outside its figures (session 34)."""
    from llmsim.userinput import read_yaml  # the built-in file too: a key written twice in it is an error

    return tuple(parse_entries(read_yaml(CATALOG_FILE), str(CATALOG_FILE)))


def load_catalog(extra_files: list[Path] | None = None, plugin_entries: list[tuple[str, dict]] | None = None) -> Catalog:
    """Built-ins, then user files, then plugin entries. A name defined twice is an error."""
    from llmsim.userinput import read_yaml

    devices: dict[str, DeviceSpec] = {}
    links: dict[str, LinkSpec] = {}
    defined_in: dict[str, str] = {}  # entry name -> the file (or plugin) that defines it, for its errors
    sources: list[tuple[str, object]] = [(str(CATALOG_FILE), _builtin_entries())]
    user_files = {str(path): str(Path(path).resolve()) for path in extra_files or []}
    seen: dict[str, str] = {}
    for path in extra_files or []:
        resolved = str(Path(path).resolve())
        if resolved in seen:   # trial 41: `--hardware hw.yaml --hardware ./hw.yaml` said its entries were defined twice
            also = f" (also as {seen[resolved]})" if seen[resolved] != str(path) else ""
            raise ScenarioError(str(path), None, f"the same hardware file is given twice{also}; give it once")
        seen[resolved] = str(path)
        sources.append((str(path), read_yaml(path, "entries: [{type: device, name: ...}, ...]")))
    by_plugin: dict[str, list[dict]] = {}   # a plugin's entries as one list: an error's entries[i] counts in it
    for plugin, entry in plugin_entries or []:
        by_plugin.setdefault(plugin, []).append(entry)
    sources += [(f"plugin {plugin}", {"entries": entries}) for plugin, entries in by_plugin.items()]
    index_of: dict[str, int] = {}   # entry name -> its place in the entries: list of its file (or plugin)
    broken: dict[str, str] = {}     # plugin -> why its entries are left out
    for origin, data in sources:
        if origin.startswith("plugin "):   # a plugin's bad entries leave that plugin's hardware out, not every run
            try:
                _add_entries(origin, parse_entries(data, origin), devices, links, defined_in, index_of)
            except ScenarioError as exc:
                broken[origin.removeprefix("plugin ")] = one_line(str(exc))
                for name in [n for n, o in defined_in.items() if o == origin]:   # the entries added before it
                    devices.pop(name, None)
                    links.pop(name, None)
                    del defined_in[name], index_of[name]
            continue
        _add_entries(origin, data if isinstance(data, tuple) else parse_entries(data, origin), devices, links,
                     defined_in, index_of)
    for device in devices.values():  # a device's default links must exist once every source is read
        for key in ("intra_node", "inter_node"):
            link = getattr(device, key)
            if link is not None and link not in links:
                raise ScenarioError(defined_in[device.name], f"entries[{index_of[device.name]}].{key}",
                                    f"unknown link {link!r} (device {device.name!r}); allowed: {', '.join(links)}")
    return Catalog(devices=devices, links=links,
                   files={name: user_files[origin] for name, origin in defined_in.items() if origin in user_files},
                   broken_plugins=broken)


def _add_entries(origin: str, entries: Any, devices: dict[str, DeviceSpec], links: dict[str, LinkSpec],
                 defined_in: dict[str, str], index_of: dict[str, int]) -> None:
    """Add one source's parsed entries (the built-in file, a user file, a plugin's) to the catalog being built;
    ScenarioError on a name already defined, naming both entries."""
    for index, entry in enumerate(entries):
        if entry.name in devices or entry.name in links:
            first, at = defined_in[entry.name], f"entries[{index_of[entry.name]}].name"
            # keyed entries[i], as the same file's validation errors are (entries.NAME read beside entries[0]);
            # the first entry named by its place too (a fresh-user trial: a file's own duplicate named the
            # file, which the user had open, but not which entry came first)
            if first == origin:
                raise ScenarioError(origin, f"entries[{index}].name", f"{entry.name!r}: {at} of this file has "
                                    f"this name already; give each entry its own name")
            where = "the built-in catalog" if first == str(CATALOG_FILE) else f"{first}, {at}"
            raise ScenarioError(origin, f"entries[{index}].name", f"{entry.name!r}: a catalog entry with this "
                                f"name already exists (in {where}); give yours another name")
        (devices if isinstance(entry, DeviceSpec) else links)[entry.name] = entry
        defined_in[entry.name] = origin
        index_of[entry.name] = index
