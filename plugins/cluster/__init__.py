"""The `cluster` backend: a SimPy model of a multi-node training or inference step.

entities.py   what exists: links (fair-share ports + propagation delay), devices with a compute and a
              communication stream, their placement, faults
processes.py  what happens: collectives as ring/tree/hierarchical phases over the links, pipeline
              schedules, bucketed gradient reduction, ZeRO-3 gathers, one generator per stage
program.py    what each stage is asked to do, priced by the shared cost model (llmsim.costmodel)
trace.py      the timeline as a Chrome trace and a Gantt chart
backend.py    the Backend (settings = the roofline's plus faults and variance)
"""

from __future__ import annotations

from llmsim import Backend, hookimpl
from llmsim_plugins.cluster.backend import ClusterBackend, ClusterSettings

__all__ = ["ClusterBackend", "ClusterSettings", "llmsim_backends"]


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [ClusterBackend]
