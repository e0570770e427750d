"""Energy meters: read real counters where the machine exposes them, or say why not.

A meter measures one span of work: ``start()`` then ``stop()`` returns joules. Meters are provided by
plugins through the ``llmsim_energy_meters`` hook; the RAPL meter for CPUs is built in here.
`find_meter` is how a measured backend picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

RAPL_ROOT = Path("/sys/class/powercap")


class EnergyMeter(ABC):
    """One energy counter. Subclasses set `name` (the result's energy_source) and `device_kind`."""

    name: ClassVar[str]
    device_kind: ClassVar[str]

    @classmethod
    @abstractmethod
    def available(cls) -> str | None:
        """None when the counters can be read here, else the reason they cannot."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> float:
        """Joules since start()."""


class RaplMeter(EnergyMeter):
    """Intel RAPL package energy through the Linux powercap sysfs files (energy_uj, wraps at max_energy_range_uj)."""

    name = "rapl"
    device_kind = "cpu"

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        self.zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        self._start: list[int] = []

    @classmethod
    def available(cls, root: Path = RAPL_ROOT) -> str | None:
        zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not zones:
            return f"no RAPL zones under {root}"
        try:
            int((zones[0] / "energy_uj").read_text())
        except (OSError, ValueError) as exc:
            return f"RAPL counters not readable: {exc}"
        return None

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self.zones]

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        total = 0
        for zone, before, after in zip(self.zones, self._start, self._read()):
            if after < before:  # the counter wrapped
                after += int((zone / "max_energy_range_uj").read_text())
            total += after - before
        return total / 1e6


def find_meter(manager: Any, device_kind: str, builtins: Sequence[type[EnergyMeter]] = (),
               exclude: Sequence[type[EnergyMeter]] = ()) -> type[EnergyMeter] | None:
    """The first available meter class for `device_kind`: the plugins' (the `llmsim_energy_meters` hook of
    `manager`, if any) before `builtins`, even where a plugin also returns a built-in; None when no meter
    can read counters here. `exclude`: meters the caller builds itself (the cuda backend's NVML meter on
    the case's own GPU), never offered."""
    found: list[type[EnergyMeter]] = []
    if manager is not None:
        for _, meters in manager.call_each("llmsim_energy_meters", device_kind=device_kind):
            found += [m for m in meters if m not in builtins]
    seen: set[type[EnergyMeter]] = set(exclude)
    for meter in [*found, *builtins]:
        if meter in seen or getattr(meter, "device_kind", None) != device_kind:
            continue
        seen.add(meter)
        if meter.available() is None:
            return meter
    return None
