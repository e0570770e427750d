"""Backend name -> class, collected from the `llmsim_backends` hook of every plugin."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from llmsim.backend import Backend
from llmsim.errors import PluginError
from llmsim.plugins import PluginManager
from llmsim.serving.schedulers import BUILTIN as BUILTIN_SCHEDULERS, Scheduler


@dataclass(frozen=True)
class BackendRegistry:
    backends: dict[str, type[Backend]]
    owners: dict[str, str]            # backend name -> plugin name
    broken: dict[str, str]            # plugin name -> why it is not usable
    # serving scheduler kind -> class: the built-in policies and those of the llmsim_serving_schedulers hook
    schedulers: dict[str, type[Scheduler]] = field(default_factory=lambda: dict(BUILTIN_SCHEDULERS))

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
                if inspect.isabstract(backend):   # trial 49: listed as available, then every case failed
                    missing = ", ".join(sorted(backend.__abstractmethods__))
                    manager.broken[plugin] = (f"backend {name!r} ({backend.__name__}) does not implement "
                                              f"{missing}, which every Backend must (docs/plugins.md)")
                    continue
                if name in backends:
                    raise PluginError(f"backend name {name!r} is registered twice: by plugin "
                                      f"{owners[name]!r} and by plugin {plugin!r}")
                backends[name], owners[name] = backend, plugin
        schedulers: dict[str, type[Scheduler]] = dict(BUILTIN_SCHEDULERS)
        scheduler_owners = {kind: "llmsim" for kind in schedulers}
        for plugin, classes in manager.call_each("llmsim_serving_schedulers"):
            for policy in classes:
                kind = getattr(policy, "kind", None)
                if not (isinstance(policy, type) and issubclass(policy, Scheduler) and isinstance(kind, str) and kind):
                    manager.broken[plugin] = (f"llmsim_serving_schedulers returned {policy!r}, not a "
                                              f"llmsim.serving.schedulers.Scheduler subclass with a kind")
                    continue
                if kind in schedulers:
                    raise PluginError(f"serving scheduler {kind!r} is registered twice: by "
                                      f"{scheduler_owners[kind]!r} and by plugin {plugin!r}")
                schedulers[kind], scheduler_owners[kind] = policy, plugin
        return cls(backends, owners, dict(manager.broken), schedulers)

    def get(self, name: str) -> type[Backend]:
        if name not in self.backends:
            raise KeyError(name)
        return self.backends[name]

    @property
    def names(self) -> list[str]:
        return sorted(self.backends)
