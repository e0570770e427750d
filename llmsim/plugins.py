"""The plugin manager: hookspecs plus every plugin found in the `llmsim` entry-point group.

No global manager exists: callers make one with get_plugin_manager() (the CLI once per command,
tests once per test), so tests never fight an import-time singleton.

Environment:
* LLMSIM_DISABLE_PLUGIN_AUTOLOAD=1 loads no entry points (register plugins by hand).
* LLMSIM_PLUGINS=cpu,roofline loads only the named entry points.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from llmsim import hookspecs

ENTRY_POINT_GROUP = "llmsim"


@dataclass
class PluginManager:
    """pluggy's manager plus the plugins that failed to load (reported, never fatal for the others)."""

    pm: pluggy.PluginManager
    broken: dict[str, str] = field(default_factory=dict)

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    def register(self, plugin: object, name: str | None = None) -> None:
        self.pm.register(plugin, name=name)

    def call_each(self, hook_name: str, **kwargs: Any) -> Iterable[tuple[str, list]]:
        """Call a hook on each plugin separately, so one raising plugin is reported and skipped.

        `kwargs` are the hook's parameters (llmsim.hookspecs); each implementation gets the ones it
        declares. Yields (plugin name, the list it returned).
        """
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            try:
                values = impl.function(*(kwargs[name] for name in impl.argnames))
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
                self.broken[plugin_name] = f"{hook_name} raised {type(exc).__name__}: {exc}"
                continue
            yield plugin_name, list(values or [])


def _selected(names: str | None) -> set[str] | None:
    if not names:
        return None
    return {n.strip() for n in names.split(",") if n.strip()}


def get_plugin_manager(entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
                       environ: dict[str, str] | None = None) -> PluginManager:
    """Make a fresh manager: add the hookspecs, then load the entry points (unless disabled).

    `entry_points` replaces the installed ones (tests pass fakes); `environ` replaces os.environ.
    """
    env = os.environ if environ is None else environ
    manager = PluginManager(pluggy.PluginManager(hookspecs.PROJECT))
    manager.pm.add_hookspecs(hookspecs)
    if env.get("LLMSIM_DISABLE_PLUGIN_AUTOLOAD", "") not in ("", "0"):
        return manager
    wanted = _selected(env.get("LLMSIM_PLUGINS"))
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    entry_points = list(entry_points)
    for name in sorted((wanted or set()) - {ep.name for ep in entry_points}):   # trial 49: ignored without a word
        installed = ", ".join(sorted({ep.name for ep in entry_points})) or "none"
        manager.broken[name] = (f"LLMSIM_PLUGINS names it, but no installed plugin has that entry point "
                                f"(installed: {installed})")
    for ep in entry_points:
        if wanted is not None and ep.name not in wanted:
            continue
        taken = manager.pm.get_plugin(ep.name)
        if taken is not None:
            if getattr(taken, "__name__", None) != ep.value:  # two distributions claim one plugin name
                dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value
                manager.broken[f"{ep.name} ({dist})"] = (f"entry point {ep.name!r} -> {ep.value} is not loaded: the "
                                                         f"name is taken by {getattr(taken, '__name__', taken)}; "
                                                         f"give the plugin's entry point another name")
            continue  # the same entry point listed twice (e.g. an editable and a regular install) loads once
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - report, keep the others working
            manager.broken[ep.name] = f"import failed: {type(exc).__name__}: {exc}"
            continue
        manager.pm.register(plugin, name=ep.name)
    manager.pm.check_pending()
    return manager
