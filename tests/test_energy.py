"""Energy meters: RAPL on a fake powercap tree (this machine has none), plugin meters through the hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsim import hookimpl
from llmsim.energy import EnergyMeter, RaplMeter
from llmsim.plugins import get_plugin_manager


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
    from llmsim.backend import RunContext
    from llmsim_plugins.cpu import CpuBackend, CpuSettings
    from tests.plugins.test_cpu import _case

    fixed = _meter("cpu", "fixed-meter", joules=12.0)  # a plugin meter's own name becomes the energy_source

    asked: list[str] = []

    class MeterPlugin:
        @hookimpl
        def llmsim_energy_meters(self, device_kind):
            asked.append(device_kind)
            return [fixed]

    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(MeterPlugin(), name="meter")
    result = CpuBackend(RunContext(manager=manager)).run(_case(), CpuSettings(steps=3, warmup=0))
    assert result.energy_source == "fixed-meter"
    assert asked == ["cpu"]
    assert result.energy_j_per_step == 4.0  # 12 J over 3 timed steps


def _meter(kind: str, name: str, why: str | None = None, joules: float = 0.0) -> type[EnergyMeter]:
    """A meter class for `kind` named `name`: unavailable for `why` (None = available), reading `joules`."""
    class Meter(EnergyMeter):
        device_kind = kind

        @classmethod
        def available(cls):
            return why

        def start(self) -> None:
            pass

        def stop(self) -> float:
            return joules

    Meter.name = name
    return Meter


def test_find_meter_prefers_plugin_meters_of_the_kind_and_skips_unavailable_ones() -> None:
    from llmsim.energy import find_meter

    builtin = _meter("cpu", "builtin")
    wrong_kind, broken, good = _meter("cuda", "gpu"), _meter("cpu", "broken", "no counters"), _meter("cpu", "good")

    class MeterPlugin:
        @hookimpl
        def llmsim_energy_meters(self):  # a subset of the hook's parameters is allowed
            return [builtin, wrong_kind, broken, good]

    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(MeterPlugin(), name="meters")
    assert find_meter(manager, "cpu", [builtin]) is good  # the plugin's copy of a built-in keeps its rank
    assert find_meter(None, "cpu", [builtin]) is builtin
    assert find_meter(manager, "cpu", [builtin], exclude=[good]) is builtin
    assert find_meter(manager, "tpu") is None


def test_energy_source_takes_a_plugin_meter_name_but_not_free_text() -> None:
    from pydantic import ValidationError

    from llmsim.results import Result

    base = dict(scenario="s", case="c", backend="b", kind="measured", strategy="c", mode="train", batch=1,
                seq_len=8, dtype="float32")
    assert Result(**base, energy_source="my-meter").energy_source == "my-meter"
    with pytest.raises(ValidationError):
        Result(**base, energy_source="Not A Name!")
