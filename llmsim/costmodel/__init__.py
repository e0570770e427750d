"""The analytic cost model: pure functions from (profile, plan, hardware) to time, memory and energy.

Modules, each small and torch-free at call time:
* efficiency   achievable fractions of peak (sourced defaults, calibratable, carried by catalog entries)
* collectives  ring / tree / hierarchical collectives as port phases, and their time alone
* cluster      devices and links, where each parallel group lands, a collective over a placed group
* pipeline     bubble and activations in flight per schedule
* compute      roofline time of the profile's ops on one device
* activations  the tensors a layer keeps for its backward, by attention kernel, recompute and split
* memory       parameters, gradients, optimizer state, activations, KV cache per device
* work         one step as data: each stage's compute and collectives per micro-batch and per step —
               the single pricing path, summed by `step` and scheduled by the simulation (llmsim.sim)
* step         the roofline: the closed-form sum of the work, StepBreakdown of one case
* moe          mixture of experts: the dispatch/combine all-to-alls, routing imbalance, the experts' GEMMs at
               the batch each really gets, the experts a decode pass touches, the experts' memory
* iteration    one serving iteration priced for its mix of prompt chunks and decodes (as work, summed by
               step), and the KV cache's share of a device
* energy       joules of a step from idle/max power
* scaling      a profile traced with few layers scaled to the full depth
* arrays       pick / maximum / minimum on numbers or numpy columns: the combining formulas (step, memory,
               pipeline, energy) are array-generic, so the planner prices a table of candidates at once

The hardware catalog imports `efficiency`; nothing here imports the catalog or torch at run time.
"""

from llmsim.costmodel.cluster import ClusterSpec
from llmsim.costmodel.compute import CostModelError
from llmsim.costmodel.efficiency import DEFAULT_EFFICIENCY, Efficiency
from llmsim.costmodel.memory import MemoryBreakdown, memory_breakdown
from llmsim.costmodel.plan import Options, Plan
from llmsim.costmodel.step import StepBreakdown, estimate, single_device_step_time, step_time

__all__ = ["DEFAULT_EFFICIENCY", "ClusterSpec", "CostModelError", "Efficiency", "MemoryBreakdown", "Options",
           "Plan", "StepBreakdown", "estimate", "memory_breakdown", "single_device_step_time", "step_time"]
