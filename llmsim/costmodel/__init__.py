"""The analytic cost model: pure functions from (profile, plan, hardware) to time, memory and energy.

Modules, each small and torch-free at call time:
* efficiency   achievable fractions of peak (sourced defaults, calibratable, carried by catalog entries)
* collectives  ring / tree / hierarchical collective time
* cluster      devices and links, and where each parallel group lands
* pipeline     bubble and activations in flight per schedule
* compute      roofline time of the profile's ops
* memory       parameters, gradients, optimizer state, activations, KV cache per device
* step         the composition: StepBreakdown of one case
* energy       joules of a step from idle/max power

The hardware catalog imports `efficiency`; nothing here imports the catalog or torch at run time.
"""

from llmsim.costmodel.cluster import ClusterSpec
from llmsim.costmodel.efficiency import DEFAULT_EFFICIENCY, Efficiency
from llmsim.costmodel.memory import MemoryBreakdown, memory_breakdown
from llmsim.costmodel.plan import Options, Plan
from llmsim.costmodel.step import CostModelError, StepBreakdown, estimate, single_device_step_time

__all__ = ["DEFAULT_EFFICIENCY", "ClusterSpec", "CostModelError", "Efficiency", "MemoryBreakdown", "Options",
           "Plan", "StepBreakdown", "estimate", "memory_breakdown", "single_device_step_time"]
