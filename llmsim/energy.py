"""Energy meters: read real counters where the machine exposes them, or say why not.

A meter measures one span of work: ``start()`` then ``stop()`` returns joules. Meters are provided by
plugins through the ``llmsim_energy_meters`` hook; the RAPL meter for CPUs is built in here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

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
