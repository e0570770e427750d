"""The RAPL meter on a fake powercap tree (this machine has none)."""

from __future__ import annotations

from pathlib import Path

from llmsim.energy import RaplMeter


def _zone(root: Path, name: str, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(str(energy_uj))
    (zone / "max_energy_range_uj").write_text(str(max_uj))
    return zone


def test_unavailable_without_zones(tmp_path: Path) -> None:
    assert "no RAPL zones" in (RaplMeter.available(tmp_path) or "")


def test_reads_joules_across_packages_and_a_wrap(tmp_path: Path) -> None:
    a = _zone(tmp_path, "intel-rapl:0", 100)
    b = _zone(tmp_path, "intel-rapl:1", 999_000)
    _zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone (core) is part of package 0: not counted twice
    assert RaplMeter.available(tmp_path) is None
    meter = RaplMeter(tmp_path)
    meter.start()
    (a / "energy_uj").write_text(str(2_000_100))  # +2 J
    (b / "energy_uj").write_text(str(500))        # wrapped: +1500 uJ
    assert abs(meter.stop() - 2.0015) < 1e-9


def test_a_meter_from_the_hook_is_used_by_the_cpu_backend() -> None:
    from llmsim import hookimpl
    from llmsim.backend import RunContext
    from llmsim.energy import EnergyMeter
    from llmsim.plugins import get_plugin_manager
    from llmsim_plugins.cpu import CpuBackend, CpuSettings
    from tests.plugins.test_cpu import _case

    class FixedMeter(EnergyMeter):
        name = "nvml"  # any contract value; a real plugin would read hardware counters
        device_kind = "cpu"

        @classmethod
        def available(cls):
            return None

        def start(self) -> None:
            pass

        def stop(self) -> float:
            return 12.0

    class MeterPlugin:
        @hookimpl
        def llmsim_energy_meters(self):
            return [FixedMeter]

    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(MeterPlugin(), name="meter")
    result = CpuBackend(RunContext(manager=manager)).run(_case(), CpuSettings(steps=3, warmup=0))
    assert result.energy_source == "nvml"
    assert result.energy_j_per_step == 4.0  # 12 J over 3 timed steps
