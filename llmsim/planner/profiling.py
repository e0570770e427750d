"""A plan's workload profile: read from the store, or traced in a worker forked as soon as the plan is read.

A training or inference plan prices every candidate from one `WorkloadProfile` (llmsim.workload.profile), traced
on the meta device. A first plan of a workload (the store, llmsim.workload.profile_store, holds none) spends
~1.3 s of a ~10 s 70B plan on it on a 2-core host, mostly imports: torch's and torch._dynamo's. They need nothing
but the workload, so `llmsim plan` forks a spare worker (Executor.spare) as it starts, which imports them
(llmsim.workload.warm.warm_tracer, a light module: the fork comes before the planner's imports) while the
command reads the plan file; `PlanProfile` then hands it the trace if the store lacks
the profile (else stops it), and the process goes on with its own imports (pandas, the plugins, the planner),
the catalog, the checks and the search's group shapes (search.prepare_search) while the other core traces. Under
`--executor local` it is traced here when first asked for (after those), as before. The profile is the same
either way: a pure function of the workload and the sharing choice.

A light module: it imports neither torch (the worker does, when it traces) nor the planner's search, so the CLI
can fork the worker before those imports.
"""

from __future__ import annotations

from llmsim.config import SharingChoice, Workload
from llmsim.executor import Executor, LocalExecutor, Pending, Spare
from llmsim.workload.profile import WorkloadProfile, profile_at_depth
from llmsim.workload.profile_store import keep_profile, read_profile, stored_profile
from llmsim.workload.warm import warm_tracer  # noqa: F401 (the spare worker's warm-up, beside the profile's code)

RECIPE = "planner"  # the store's name for traced_profile's way of making a profile (profile_store.profile_key)


def sharing_choice(plan) -> SharingChoice:  # noqa: ANN001 (a planner.config.PlanFile)
    return SharingChoice.resolve(plan.sharing, plan.workload.model)


def workload_profile(workload: Workload, sharing: SharingChoice) -> WorkloadProfile:
    """The profile of the full workload, traced short where that is exact (`traced_profile`); kept on disk
    between plans (llmsim.workload.profile_store: a plan of a workload profiled before imports no torch)."""
    return stored_profile(workload, sharing, lambda: traced_profile((workload, sharing)), recipe=RECIPE)


def traced_profile(task: tuple[Workload, SharingChoice]) -> WorkloadProfile:
    """The profile of (workload, sharing) at its depth, traced short where that is exact
    (workload.profile.profile_at_depth); a module-level function of one picklable task, for Executor.beside."""
    workload, sharing = task
    return profile_at_depth(workload, sharing)


class PlanProfile:
    """`workload_profile` of (workload, sharing), begun now: read from the store at once, or traced on
    `executor.few_heavy().beside` (a forked worker; under --executor local, here, when `result()` is first
    asked) and kept in the store once got. Use as `with PlanProfile(...) as profile: ...; profile.result()`;
    leaving the block without the result (an error, Ctrl-C) stops the worker."""

    def __init__(self, workload: Workload, sharing: SharingChoice, executor: Executor | None = None,
                 spare: Spare | None = None) -> None:
        """`spare`: a worker readied for the trace (`warm_tracer`: Executor.spare), used if the store lacks the
        profile; else one is forked now (Executor.beside)."""
        self.workload, self.sharing = workload, sharing
        self._got = read_profile(workload, sharing, recipe=RECIPE)
        self._pending: Pending[WorkloadProfile] | None = None
        if self._got is None:
            task = (workload, sharing)
            self._pending = (spare.begin(traced_profile, task) if spare is not None else
                             (executor or LocalExecutor()).few_heavy().beside(traced_profile, task))

    @property
    def traced(self) -> bool:
        """Whether the profile is being traced (the store had none), rather than read back."""
        return self._pending is not None

    def result(self) -> WorkloadProfile:
        """The profile, waited for (the same object at every call)."""
        if self._got is None:
            assert self._pending is not None
            self._got = self._pending.result()
            keep_profile(self.workload, self.sharing, self._got, recipe=RECIPE)
        return self._got

    def close(self) -> None:
        if self._pending is not None:
            self._pending.close()

    def __enter__(self) -> "PlanProfile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
