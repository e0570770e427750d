"""The `roofline` backend: predicts a case on a catalog cluster with the analytic cost model.

Nothing runs: the workload's op costs come from the same module the real backends execute, traced on
the meta device (llmsim.workload.profile); llmsim.costmodel prices each pipeline stage's work and sums it
in closed form (costmodel.step) on `nodes` x `devices_per_node` devices of `hardware` joined by the
`intra_node` and `inter_node` links. A list of nodes sweeps the cluster size (one case per point,
suffixed "@nodes=N"). What all modeled backends share is llmsim.modeled.
"""

from __future__ import annotations

from llmsim import Backend, Case, hookimpl
from llmsim.costmodel import ClusterSpec, Plan
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.step import step_times
from llmsim.modeled import ModeledBackend, ModeledSettings, Priced
from llmsim.workload.profile import WorkloadProfile


class RooflineSettings(ModeledSettings):
    """The cluster to model and the software choices of the cost model (llmsim.modeled.ModeledSettings)."""


class RooflineBackend(ModeledBackend):
    name = "roofline"
    description = "analytic roofline + communication + pipeline model on a catalog cluster"
    Settings = RooflineSettings
    prices_what_does_not_fit = True  # a closed form is cheap: the row says what the step would take

    def price(self, case: Case, settings: RooflineSettings, profile: WorkloadProfile, plan: Plan,  # type: ignore[override]
              cluster: ClusterSpec) -> Priced:
        t = step_times(case.workload, profile, case.sharing, plan, cluster, settings.options)
        energy = step_energy_j(cluster.device, plan.world, t.step, busy_s=t.device_busy)
        return Priced(t, energy, extra={f"comm_{k}_s": v for k, v in t.detail.items()})


@hookimpl
def llmsim_backends() -> list[type[Backend]]:
    return [RooflineBackend]
