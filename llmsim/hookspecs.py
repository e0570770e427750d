"""Every hook llmsim calls: the reference manual for plugin authors.

A plugin is a module (or object) registered through the ``llmsim`` entry-point group; it implements any
of these hooks with ``@llmsim.hookimpl``. The built-in backends in ``plugins/`` use the same group.

How hooks are called: ``PluginManager.call_each`` calls each plugin's implementation separately (so one
raising plugin is reported as broken and the others keep working) and concatenates what they return.
An implementation may declare any subset of a hook's parameters, by name, as pluggy allows: a plugin
that does not care about ``device_kind`` may leave it out. When each hook is called is said in its
docstring; nothing here is cached across plugin managers, and a fresh manager calls them afresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from llmsim.backend import Backend
    from llmsim.energy import EnergyMeter
    from llmsim.serving.schedulers import Scheduler

PROJECT = "llmsim"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------------
# discovery: what a plugin adds (called while a command sets up, before any case runs)
# ---------------------------------------------------------------------------------------------------

@hookspec
def llmsim_backends() -> list[type["Backend"]]:
    """Return the backend classes this plugin provides.

    Called once per plugin manager, when the backend registry is built (``llmsim backends``,
    ``validate``, ``run``). Takes no parameters.

    Returns a list of classes, each a subclass of ``llmsim.Backend`` that sets ``name`` (unique across
    all plugins: a duplicate is an error naming both plugins), ``kind`` (``measured`` | ``modeled``) and
    a pydantic ``Settings`` model for its block under ``backends:`` in a scenario. Anything else in the
    list marks the plugin as broken (reported, not fatal for the others). The order in which the runner
    calls a backend's methods is in ``llmsim.backend.Backend``'s docstring.
    """


@hookspec
def llmsim_hardware() -> list[dict[str, Any]]:
    """Return extra hardware catalog entries (devices or links) as dicts.

    Called once each time a catalog is built: by ``llmsim run`` / ``validate`` (with the scenario's
    ``hardware_catalog`` files), ``llmsim hardware`` and ``llmsim plan``. Takes no parameters.

    Returns a list of dicts, each validated like an entry of a hardware YAML file (docs/hardware.md): a
    ``name``, a ``type`` (``device`` | ``link``) and a ``source`` for its numbers are required. A name
    that already exists is an error naming the plugin, so a plugin cannot silently change a built-in.
    """


@hookspec
def llmsim_serving_schedulers() -> list[type["Scheduler"]]:
    """Return serving scheduler classes (policies that form each iteration of a replica) this plugin adds.

    Called once per plugin manager, when the backend registry is built (``llmsim validate``, ``run``).
    Takes no parameters.

    Returns a list of subclasses of ``llmsim.serving.schedulers.Scheduler``, each with a ``kind`` (the
    name a scenario gives as ``serving.scheduler.kind``; unique: a kind already taken by a built-in
    policy — static, continuous, chunked-prefill, prefill-first, tgi, sglang — or another plugin is an error naming
    both) and a ``schedule(now)`` method returning the next ``Iteration`` or None. The class is built once per replica
    with the scenario's ``serving.scheduler`` block and the replica's KV cache; the base class's docstring
    says what state it may use. Anything else in the list marks the plugin as broken.
    """


# ---------------------------------------------------------------------------------------------------
# measurement: asked by measured backends while a case runs
# ---------------------------------------------------------------------------------------------------

@hookspec
def llmsim_energy_meters(device_kind: str) -> list[type["EnergyMeter"]]:
    """Return energy meter classes that can measure devices of ``device_kind``.

    Called by a measured backend each time a case starts timing, with the kind of device the case runs
    on: ``"cpu"`` (the cpu backend), ``"cuda"`` (the cuda backend), or a plugin backend's own kind.

    Parameters: ``device_kind`` -- the device type being measured; a plugin may return meters of other
    kinds too, they are filtered by their ``device_kind`` attribute.

    Returns a list of ``llmsim.energy.EnergyMeter`` subclasses. Each sets ``name`` (written to the row's
    ``energy_source`` column), ``device_kind``, ``available()`` (None or the reason it cannot read
    counters here), ``start()`` and ``stop()`` -> joules. The first available meter of the right kind
    wins, plugin meters before the built-in ones (RAPL for cpu, NVML for cuda); when none is available
    the backend models energy from the catalog's power figures and writes ``energy_source: modeled``.
    """
