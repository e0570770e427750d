"""Backend name -> class, collected from the `llmsim_backends` hook of every plugin."""

from __future__ import annotations

from dataclasses import dataclass

from llmsim.backend import Backend
from llmsim.errors import PluginError
from llmsim.plugins import PluginManager


@dataclass(frozen=True)
class BackendRegistry:
    backends: dict[str, type[Backend]]
    owners: dict[str, str]            # backend name -> plugin name
    broken: dict[str, str]            # plugin name -> why it is not usable

    @classmethod
    def from_manager(cls, manager: PluginManager) -> "BackendRegistry":
        backends: dict[str, type[Backend]] = {}
        owners: dict[str, str] = {}
        for plugin, classes in manager.call_each("llmsim_backends"):
            for backend in classes:
                name = getattr(backend, "name", None)
                if not (isinstance(backend, type) and issubclass(backend, Backend) and name):
                    manager.broken[plugin] = f"llmsim_backends returned {backend!r}, not a named Backend subclass"
                    continue
                if name in backends:
                    raise PluginError(f"backend name {name!r} is registered twice: by plugin "
                                      f"{owners[name]!r} and by plugin {plugin!r}")
                backends[name], owners[name] = backend, plugin
        return cls(backends, owners, dict(manager.broken))

    def get(self, name: str) -> type[Backend]:
        if name not in self.backends:
            raise KeyError(name)
        return self.backends[name]

    @property
    def names(self) -> list[str]:
        return sorted(self.backends)
