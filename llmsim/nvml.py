"""A thin seam over NVML (the `pynvml` module of nvidia-ml-py): GPU names, energy counters, power.

Why a seam: the cuda backend's energy numbers depend on how NVML behaves on a given board and driver
(a total-energy counter that some boards lack, a counter that can wrap or reset, power readings that
are averaged), and none of that can be exercised on a machine without an NVIDIA GPU. Everything here
takes the `nvml` module as an argument, so tests drive it with recorded counter sequences and the
error classes pynvml raises (``NVMLError_NotSupported``, ``NVMLError_LibraryNotFound``, ...).

pynvml itself is imported lazily (only when no module is injected): importing llmsim never needs it.

Energy of one span of work (`NvmlEnergy`):
* ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded, Volta and newer) read
  at start and stop; the difference is the energy. The counter is unsigned 64-bit: a stop value below
  the start value is taken as one wrap-around (modulo 2**64); a difference above what the board could
  draw at its power limit in that time (a driver reload or GPU reset in between) is rejected.
* alongside, a background thread samples ``nvmlDeviceGetPowerUsage`` (milliwatts) and integrates it
  with the trapezoid rule. It is the fallback where the counter is missing (NVMLError_NotSupported)
  or rejected, and it is reported next to the counter's energy so the two can be compared.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

COUNTER_MODULUS = 2**64          # nvmlDeviceGetTotalEnergyConsumption is an unsigned long long (mJ)
DEFAULT_SAMPLE_INTERVAL_S = 0.02
# A counter delta is plausible when below this power (W) times the span; above it the counter was reset.
# 2 kW is above any single board's limit today (H200 SXM: 700 W, B200: 1 kW).
IMPLAUSIBLE_POWER_W = 2000.0

NOT_INSTALLED = "nvidia-ml-py is not installed (pip install 'llmsim[cuda]')"
LIBRARY_NOT_FOUND = ("NVML library not found (libnvidia-ml.so.1 comes with the NVIDIA driver; "
                     "is the driver installed and visible in this container?)")


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here; the message is the plain reason shown to users."""


def load_pynvml() -> Any:
    """The pynvml module, or NvmlUnavailable when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(NOT_INSTALLED) from exc
    return pynvml


def _is(nvml: Any, exc: BaseException, kind: str) -> bool:
    """Whether exc is pynvml's NVMLError_<kind> (looked up on the injected module, so fakes work)."""
    cls = getattr(nvml, f"NVMLError_{kind}", None)
    return isinstance(cls, type) and isinstance(exc, cls)


def _nvml_error(nvml: Any) -> tuple[type[BaseException], ...]:
    cls = getattr(nvml, "NVMLError", None)
    return (cls,) if isinstance(cls, type) else ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """NVML calls the cuda backend needs, on an injectable `nvml` module (default: pynvml)."""

    def __init__(self, nvml: Any | None = None) -> None:
        self.nvml = nvml if nvml is not None else load_pynvml()
        self._initialized = False

    def init(self) -> "Nvml":
        """nvmlInit, translating its failures into NvmlUnavailable with a plain reason."""
        if self._initialized:
            return self
        try:
            self.nvml.nvmlInit()
        except _nvml_error(self.nvml) as exc:
            if _is(self.nvml, exc, "LibraryNotFound"):
                raise NvmlUnavailable(LIBRARY_NOT_FOUND) from exc
            if _is(self.nvml, exc, "DriverNotLoaded"):
                raise NvmlUnavailable("NVML: the NVIDIA driver is not loaded") from exc
            if _is(self.nvml, exc, "NoPermission"):
                raise NvmlUnavailable("NVML: no permission to open the GPU devices") from exc
            raise NvmlUnavailable(f"NVML could not start: {exc}") from exc
        self._initialized = True
        return self

    def shutdown(self) -> None:
        if self._initialized:
            try:
                self.nvml.nvmlShutdown()
            except _nvml_error(self.nvml):
                pass
            self._initialized = False

    def device_count(self) -> int:
        return int(self.nvml.nvmlDeviceGetCount())

    def handle(self, index: int, uuid: str | None = None) -> Any:
        """The NVML handle of a GPU: by UUID where torch gave one (CUDA_VISIBLE_DEVICES renumbers torch's
        devices, NVML's indices are the physical ones), else by index."""
        if uuid:
            try:
                return self.nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            except (*_nvml_error(self.nvml), AttributeError):
                pass
        return self.nvml.nvmlDeviceGetHandleByIndex(index)

    def name(self, handle: Any) -> str:
        return _text(self.nvml.nvmlDeviceGetName(handle))

    def total_energy_mj(self, handle: Any) -> int | None:
        """The total-energy counter in mJ, or None where the board/driver does not support it."""
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except _nvml_error(self.nvml) as exc:
            if _is(self.nvml, exc, "NotSupported") or _is(self.nvml, exc, "FunctionNotFound"):
                return None
            raise

    def power_w(self, handle: Any) -> float | None:
        """Board power draw in watts, or None where unsupported."""
        try:
            return float(self.nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0
        except _nvml_error(self.nvml) as exc:
            if _is(self.nvml, exc, "NotSupported") or _is(self.nvml, exc, "FunctionNotFound"):
                return None
            raise


def counter_delta_mj(before: int, after: int, modulus: int = COUNTER_MODULUS) -> int:
    """Energy between two counter reads, allowing one wrap-around of the unsigned counter."""
    return after - before if after >= before else after + modulus - before


def trapezoid_j(samples: Sequence[tuple[float, float]]) -> float:
    """Integral of (time s, power W) samples by the trapezoid rule, in joules."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))


@dataclass
class EnergyReading:
    """Energy of one span on all metered GPUs. `joules` is what the result reports; `method` says which."""

    joules: float | None
    method: str                           # "counter" | "power-sampling" | "none"
    counter_j: float | None = None
    sampled_j: float | None = None
    samples: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class NvmlEnergy:
    """Energy of a span on some GPUs: the total-energy counter, with power sampling alongside.

    `clock` and `interval_s` are injectable so tests can replay recorded sequences deterministically;
    `sample()` is what the background thread calls, and tests may call it by hand (`thread=False`).
    """

    def __init__(self, nvml: Nvml, handles: Sequence[Any], *, interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, thread: bool = True,
                 sampling: bool = True) -> None:
        self.nvml = nvml
        self.handles = list(handles)
        self.interval_s = interval_s
        self.clock = clock
        self.use_thread = thread
        self.sampling = sampling
        self._start_counter: list[int | None] = []
        self._t0 = 0.0
        self._samples: list[list[tuple[float, float]]] = [[] for _ in self.handles]
        self._power_supported = [True] * len(self.handles)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def counter_supported(self) -> bool:
        """Whether every metered GPU has the total-energy counter."""
        return all(self.nvml.total_energy_mj(h) is not None for h in self.handles)

    def sample(self) -> None:
        """One power sample per GPU (watts, at this clock's time)."""
        now = self.clock()
        for i, h in enumerate(self.handles):
            if not self._power_supported[i]:
                continue
            watts = self.nvml.power_w(h)
            if watts is None:
                self._power_supported[i] = False
                continue
            with self._lock:
                self._samples[i].append((now, watts))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self._samples = [[] for _ in self.handles]
        self._power_supported = [True] * len(self.handles)
        self._t0 = self.clock()
        self._start_counter = [self.nvml.total_energy_mj(h) for h in self.handles]
        # Sample even where the counter works: both numbers are reported, so they can be compared.
        if self.sampling or any(c is None for c in self._start_counter):
            self.sample()
            if self.use_thread:
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="llmsim-nvml-power", daemon=True)
                self._thread.start()

    def stop(self) -> EnergyReading:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        sampled_any = any(self._samples)
        if sampled_any:
            self.sample()
        end_counter = [self.nvml.total_energy_mj(h) for h in self.handles]
        seconds = max(self.clock() - self._t0, 0.0)
        notes: list[str] = []

        counter_j: float | None = 0.0
        for i, (before, after) in enumerate(zip(self._start_counter, end_counter)):
            if before is None or after is None:
                counter_j = None
                notes.append(f"GPU {i}: no total-energy counter (NVMLError_NotSupported)")
                break
            delta_j = counter_delta_mj(before, after) / 1000.0
            limit = IMPLAUSIBLE_POWER_W * max(seconds, self.interval_s)
            if delta_j > limit:
                counter_j = None
                notes.append(f"GPU {i}: energy counter jumped by {delta_j:.3g} J in {seconds:.3g} s "
                             f"(> {IMPLAUSIBLE_POWER_W:g} W): counter reset (driver reload?), not used")
                break
            if delta_j == 0 and seconds > 0:
                # A board under load draws tens of watts at least: a counter that did not move was not updated
                # inside the span (NVML refreshes it about every 100 ms), it is not a reading of zero joules.
                counter_j = None
                notes.append(f"GPU {i}: energy counter did not advance in {seconds * 1e3:.3g} ms (NVML updates it "
                             f"about every 100 ms): not used")
                break
            counter_j += delta_j

        sampled_j: float | None = None
        n_samples = sum(len(s) for s in self._samples)
        if all(len(s) >= 2 for s in self._samples) and self._samples:
            sampled_j = sum(trapezoid_j(s) for s in self._samples)
        elif sampled_any or not all(self._power_supported):
            notes.append("power sampling: too few readings or nvmlDeviceGetPowerUsage unsupported")

        if counter_j is not None:
            return EnergyReading(counter_j, "counter", counter_j, sampled_j, n_samples, seconds, notes)
        if sampled_j is not None:
            return EnergyReading(sampled_j, "power-sampling", None, sampled_j, n_samples, seconds, notes)
        return EnergyReading(None, "none", None, None, n_samples, seconds, notes)


# -- which catalog device an NVML name is ---------------------------------------------------------
# (pattern in the lower-cased NVML name, catalog name). Only boards whose datasheet figures equal the
# catalog entry's: the 80 GB PCIe A100 has its own entry (a100-80gb-pcie: 1,935 GB/s, its 300 W rating as
# max_power_w and its own measured GEMM rate, NVIDIA A100 datasheet); the 40 GB PCIe A100 has the SXM4 40 GB part's peaks and 1,555 GB/s (its 250 W
# limit is not modelled); the PCIe/NVL H100 and the H200 NVL do not (lower clocks), so they are not
# matched to the SXM entries.
NVML_NAME_TO_CATALOG: tuple[tuple[str, str], ...] = (
    ("a100-sxm4-80gb", "a100-80gb"),
    ("a100 80gb pcie", "a100-80gb-pcie"),
    ("a100-pcie-80gb", "a100-80gb-pcie"),
    ("a100 pcie 80gb", "a100-80gb-pcie"),
    ("a100-sxm4-40gb", "a100-40gb"),
    ("a100-pcie-40gb", "a100-40gb"),
    ("h100 80gb hbm3", "h100-sxm"),
    ("h100 sxm", "h100-sxm"),
)

# Whole names (lower-cased, spaces collapsed), matched exactly: each is a prefix of another board's name that is not
# the same part ("NVIDIA L40" of "NVIDIA L40S"; "NVIDIA H800" of "NVIDIA H800 PCIe", 114 SMs and a lower clock), so a
# substring rule would price the wrong board. Where each name comes from (the string NVML's nvmlDeviceGetName and
# torch.cuda.get_device_name report; vLLM and SGLang name their tuned kernel-config files after it, spaces as "_"):
# "NVIDIA H800": vllm-project/vllm@36d3567f vllm/model_executor/layers/fused_moe/configs/E=128,N=192,
#   device_name=NVIDIA_H800,dtype=fp8_w8a8.json (the H800 SXM5; the PCIe card reports "NVIDIA H800 PCIe").
# "NVIDIA L40S": vllm-project/vllm@b4ba912c, same folder, E=128,N=1856,device_name=NVIDIA_L40S.json.
# "NVIDIA L40": the nvidia-smi names GPU clouds list as their type ids ("L40": "NVIDIA L40", "L40S": "NVIDIA L40S"
#   beside "H100 SXM": "NVIDIA H100 80GB HBM3", "H200 SXM": "NVIDIA H200") and DCGM exporter settings that take
#   "exact nvidia-smi names" ("NVIDIA L40"); vLLM PR #6384 (the serving_online rows SF02-SF04) ran on one.
# "NVIDIA B300 SXM6 AC": SGLang's fused-MoE configs (E=160,N=192,device_name=NVIDIA_B300_SXM6_AC,dtype=fp8_w8a8.json)
#   and nvidia-smi output of B300 hosts in public benchmark notes ("8x NVIDIA B300 SXM6 AC", compute capability 10.3).
# "NVIDIA GB300": SGLang's fused-MoE configs (configs/triton_3_7_1/E=512,N=512,device_name=NVIDIA_GB300.json) and the
#   CUDA compute-capability tables of public tools ("NVIDIA GB300": "10.3").
# "NVIDIA B200": vllm-project/vllm vllm/model_executor/layers/fused_moe/configs/E=128,N=704,device_name=NVIDIA_B200,
#   dtype=fp8_w8a8.json (and SGLang's triton_3_4_0/E=384,N=256,device_name=NVIDIA_B200,... configs).
# "NVIDIA GB200": vLLM's E=128,N=512,device_name=NVIDIA_GB200,dtype=fp8_w8a8.json (vLLM PR #29757, Mistral Large 3).
NVML_EXACT_NAME_TO_CATALOG: dict[str, str] = {
    "nvidia b200": "b200",
    "nvidia gb200": "gb200",
    "nvidia h800": "h800",
    "nvidia l40s": "l40s",
    "nvidia l40": "l40",
    "nvidia b300 sxm6 ac": "b300",
    "nvidia gb300": "gb300",
}


# A MIG (Multi-Instance GPU) instance is named after its board plus its profile: "NVIDIA A100 80GB PCIe MIG 1g.10gb",
# "NVIDIA A100-SXM4-40GB MIG 3g.20gb", "NVIDIA H100 80GB HBM3 MIG 1g.10gb+me". A profile <g>g.<m>gb is g of the
# board's compute slices (7 on A100 and H100) and m GB of its memory (NVIDIA Multi-Instance GPU User Guide, "Supported
# MIG Profiles": A100 80GB 1g.10gb ... 7g.80gb, A100 40GB 1g.5gb ... 7g.40gb, "+me" adds a media engine).
MIG_PROFILE = re.compile(r"\bmig\s+(\d+)g\.(\d+)gb(\+me)?\b", re.IGNORECASE)


def mig_profile(nvml_name: str) -> str | None:
    """The MIG profile of an NVML name ("1g.10gb"), or None for a whole board."""
    found = MIG_PROFILE.search(nvml_name)
    return None if found is None else found.group(0).split(None, 1)[1].lower()


def mig_reason(nvml_name: str) -> str | None:
    """Why a MIG instance gets no catalog device (catalog_name_for), as one line naming backends.cuda.hardware, or
    None for a whole board: an instance has a slice of the board's compute and memory, so the board's peak FLOP/s,
    bandwidth and power would price it as the whole board."""
    found = MIG_PROFILE.search(nvml_name)
    if found is None:
        return None
    slices, gb = int(found.group(1)), int(found.group(2))
    return (f"GPU {nvml_name!r} is a MIG instance ({mig_profile(nvml_name)}: {slices} compute "
            f"slice{'s' if slices > 1 else ''} and {gb} GB of the board's memory), not a whole board; the catalog "
            f"prices whole boards, so MFU and modeled energy are left empty (backends.cuda.hardware names a whole "
            f"board: setting it would price this part as the board)")


def catalog_name_for(nvml_name: str) -> str | None:
    """The catalog device for a GPU name as NVML reports it ("NVIDIA H200" -> "h200"), None if unknown, and None for
    a MIG instance of a catalog board (mig_reason: a slice of its compute and memory, not the board)."""
    if MIG_PROFILE.search(nvml_name):
        return None
    lowered = " ".join(nvml_name.lower().split())
    if lowered in ("nvidia h200", "nvidia h200 141gb hbm3e"):
        return "h200"
    if lowered in NVML_EXACT_NAME_TO_CATALOG:
        return NVML_EXACT_NAME_TO_CATALOG[lowered]
    for pattern, name in NVML_NAME_TO_CATALOG:
        if pattern in lowered:
            return name
    return None
