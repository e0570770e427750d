"""Plugin loading through the entry-point group, the autoload opt-out, selection and isolation."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest

from llmsim import Backend, hookimpl
from llmsim.errors import PluginError
from llmsim.plugins import get_plugin_manager
from llmsim.registry import BackendRegistry


def _fake_plugin(module_name: str, backend_name: str) -> types.ModuleType:
    """A plugin module importable by name, as an installed distribution's would be."""
    module = types.ModuleType(module_name)

    class FakeBackend(Backend):
        name = backend_name
        kind = "modeled"

        def run(self, case, settings):  # pragma: no cover - never run here
            raise NotImplementedError

    @hookimpl
    def llmsim_backends():
        return [FakeBackend]

    module.llmsim_backends = llmsim_backends
    return module


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch):
    def make(**plugins: str) -> list[importlib.metadata.EntryPoint]:
        eps = []
        for ep_name, backend_name in plugins.items():
            module_name = f"llmsim_test_plugin_{ep_name}"
            monkeypatch.setitem(sys.modules, module_name, _fake_plugin(module_name, backend_name))
            eps.append(importlib.metadata.EntryPoint(ep_name, module_name, "llmsim"))
        return eps
    return make


def test_backends_come_from_entry_points(fake_entry_points) -> None:
    manager = get_plugin_manager(fake_entry_points(alpha="alpha-sim"), environ={})
    registry = BackendRegistry.from_manager(manager)
    assert registry.names == ["alpha-sim"]
    assert registry.owners["alpha-sim"] == "alpha"


def test_builtin_cpu_backend_is_registered_through_the_same_group() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group="llmsim")}
    assert "cpu" in names
    registry = BackendRegistry.from_manager(get_plugin_manager(environ={}))
    assert "cpu" in registry.names


def test_autoload_can_be_disabled(fake_entry_points) -> None:
    manager = get_plugin_manager(fake_entry_points(alpha="alpha-sim"),
                                 environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert BackendRegistry.from_manager(manager).names == []


def test_llmsim_plugins_selects_by_name(fake_entry_points) -> None:
    eps = fake_entry_points(alpha="alpha-sim", beta="beta-sim")
    manager = get_plugin_manager(eps, environ={"LLMSIM_PLUGINS": "beta"})
    assert BackendRegistry.from_manager(manager).names == ["beta-sim"]
    assert manager.broken == {}


def test_a_name_in_llmsim_plugins_that_no_plugin_has_is_reported(fake_entry_points) -> None:
    """Trial 49: LLMSIM_PLUGINS=toy,nosuch loaded toy and dropped nosuch without a word."""
    eps = fake_entry_points(alpha="alpha-sim", beta="beta-sim")
    manager = get_plugin_manager(eps, environ={"LLMSIM_PLUGINS": "beta,nosuch"})
    assert BackendRegistry.from_manager(manager).names == ["beta-sim"]
    assert manager.broken == {"nosuch": "LLMSIM_PLUGINS names it, but no installed plugin has that entry point "
                                        "(installed: alpha, beta)"}


def test_a_plugin_that_fails_to_import_is_reported_and_others_work(fake_entry_points) -> None:
    eps = fake_entry_points(alpha="alpha-sim")
    eps.append(importlib.metadata.EntryPoint("broken", "llmsim_no_such_module_xyz", "llmsim"))
    manager = get_plugin_manager(eps, environ={})
    registry = BackendRegistry.from_manager(manager)
    assert registry.names == ["alpha-sim"]
    assert "broken" in registry.broken and "ModuleNotFoundError" in registry.broken["broken"]


def test_a_plugin_whose_hook_raises_is_isolated(fake_entry_points) -> None:
    manager = get_plugin_manager(fake_entry_points(alpha="alpha-sim"), environ={})

    class Raising:
        @hookimpl
        def llmsim_backends(self):
            raise RuntimeError("boom")

    manager.register(Raising(), name="raising")
    registry = BackendRegistry.from_manager(manager)
    assert registry.names == ["alpha-sim"]
    assert registry.broken["raising"] == "llmsim_backends raised RuntimeError: boom"


def test_duplicate_backend_names_are_a_clear_error(fake_entry_points) -> None:
    manager = get_plugin_manager(fake_entry_points(alpha="same", beta="same"), environ={})
    with pytest.raises(PluginError, match="backend name 'same' is registered twice: by plugin 'alpha' and by "
                                          "plugin 'beta'"):
        BackendRegistry.from_manager(manager)


def test_every_hook_has_a_docstring() -> None:
    from llmsim import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("llmsim_")]
    assert hooks == ["llmsim_backends", "llmsim_energy_meters", "llmsim_hardware", "llmsim_serving_schedulers"]
    for name in hooks:
        assert len((getattr(hookspecs, name).__doc__ or "").strip()) > 80, name


class HardwarePlugin:
    def __init__(self, entry: dict) -> None:
        self.entry = entry

    @hookimpl
    def llmsim_hardware(self):
        return [self.entry]


def _catalog_with(entry: dict):
    from llmsim.hardware import load_catalog

    manager = get_plugin_manager(environ={"LLMSIM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(HardwarePlugin(entry), name="hw")
    return load_catalog(plugin_entries=[(p, e) for p, es in manager.call_each("llmsim_hardware") for e in es])


NPU = {"name": "npu-x", "type": "device", "peak_flops": {"bfloat16": 1e15}, "memory_bytes": 64e9,
       "memory_bw_bytes_per_s": 2e12, "idle_power_w": 50, "max_power_w": 500, "source": "vendor datasheet v1"}


def test_hardware_hook_adds_catalog_entries() -> None:
    assert _catalog_with(NPU).device("npu-x").peak_flops["bfloat16"] == 1e15


def test_hardware_hook_entry_without_source_is_left_out_naming_the_plugin() -> None:
    """A plugin's malformed entry leaves that plugin's entries out (a warning), not every scenario (trial 49)."""
    entry = {k: v for k, v in NPU.items() if k != "source"}
    catalog = _catalog_with(entry)
    assert entry["name"] not in catalog.devices
    assert "plugin hw: entries[0].source: required key is missing" in catalog.broken_plugins["hw"]


def test_hardware_hook_cannot_redefine_a_builtin() -> None:
    catalog = _catalog_with(dict(NPU, name="cpu-host"))
    assert "already exists" in catalog.broken_plugins["hw"]
    assert catalog.devices["cpu-host"].source != NPU["source"]     # the built-in entry stays


def test_an_entry_point_named_like_a_loaded_plugin_is_reported_not_silently_dropped(fake_entry_points) -> None:
    """A third-party package whose entry point is called `cpu` cannot replace the built-in one, and says so
    (`llmsim backends` prints the broken plugins as warnings); the same entry point listed twice loads once."""
    eps = fake_entry_points(alpha="alpha-sim")
    clash = importlib.metadata.EntryPoint("alpha", "llmsim_test_plugin_other", "llmsim")
    manager = get_plugin_manager([*eps, eps[0], clash], environ={})
    registry = BackendRegistry.from_manager(manager)
    assert registry.names == ["alpha-sim"]
    [(name, why)] = registry.broken.items()
    assert name == "alpha (llmsim_test_plugin_other)"
    assert why == ("entry point 'alpha' -> llmsim_test_plugin_other is not loaded: the name is taken by "
                   "llmsim_test_plugin_alpha; give the plugin's entry point another name")
