"""The SimPy engine: one training step or request batch played on devices, streams and links.

The cost model says what each pipeline stage does and how much (llmsim.costmodel.work: seconds per
layer, collectives with their groups and sizes); this package decides when it happens and what it waits
for, so waiting, port contention, stragglers, slow links and jitter show in the step time.

* entities   what exists: links (fair-share ports + propagation delay), devices with a compute and a
             communication stream, their placement, faults
* schedules  the order of a stage's forward and backward passes (gpipe, 1f1b, interleaved)
* processes  what happens: one generator per stage, collectives as the cost model's port phases,
             bucketed gradient reduction, ZeRO-3 gathers
* simulate   run one step (`simulate`) or one case (`simulate_case`: train, prefill, decode) and say
             where the time went, with the roofline's definition of the breakdown
* trace      the timeline as a Chrome trace

Used by the `cluster` backend (plugins/cluster.py) and the planner's re-check (llmsim.planner); the
request-level serving simulation (llmsim.serving) runs its replicas on the same engine
(entities.CountingEnvironment).
"""

from llmsim.sim.entities import Faults, Placement
from llmsim.sim.processes import DEFAULT_BUCKET_BYTES, SimOptions
from llmsim.sim.simulate import Outcome, SimResult, placement_of, simulate, simulate_case

__all__ = ["DEFAULT_BUCKET_BYTES", "Faults", "Outcome", "Placement", "SimOptions", "SimResult", "placement_of",
           "simulate", "simulate_case"]
