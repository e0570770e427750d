"""Every hook llmsim calls, the reference manual for plugin authors.

A plugin is a module (or object) registered through the ``llmsim`` entry-point group; it implements
any of these hooks with ``@llmsim.hookimpl``. Built-in backends in ``plugins/`` use the same group.
Each hook is called once per plugin manager; results of all plugins are concatenated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from llmsim.backend import Backend
    from llmsim.energy import EnergyMeter

PROJECT = "llmsim"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- discovery: called when the plugin manager is first asked for backends, hardware or meters ------

@hookspec
def llmsim_backends() -> list[type["Backend"]]:
    """Return the backend classes this plugin provides.

    Called once when the backend registry is built (``llmsim backends``, ``llmsim run``,
    ``llmsim validate``). Each class subclasses ``llmsim.Backend`` and sets ``name`` (unique
    across all plugins; a duplicate is an error naming both plugins), ``kind`` (``measured`` or
    ``modeled``) and a pydantic ``Settings`` model for its block under ``backends:`` in a scenario.
    """


@hookspec
def llmsim_hardware() -> list[dict[str, Any]]:
    """Return extra hardware catalog entries (devices or links) as dicts.

    Called once when the catalog is loaded. Each dict is validated like an entry of a hardware YAML
    file (see docs/hardware.md): it needs a ``name``, a ``type`` (device | link) and a ``source`` for
    its numbers. A name that already exists is an error, so a plugin cannot silently change a
    built-in device.
    """


@hookspec
def llmsim_energy_meters() -> list[type["EnergyMeter"]]:
    """Return energy meter classes (for example NVML for GPUs, RAPL for CPUs).

    Called by measured backends when a case starts. A meter declares the device ``kind`` it measures
    (``cpu``, ``cuda``, ...) and says in ``available()`` whether it can read counters here. The first
    available meter for a device is used; when none is, the backend models energy from the catalog's
    power figures and reports ``energy_source: modeled``.
    """
