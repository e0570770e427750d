"""Run the simulation: one step of the cost model's work on a replica of devices and links.

`simulate` plays a `StepWork` (costmodel.work) and returns where the time went; `simulate_case` does it for
a workload (train: one step; prefill: one request batch; decode: the prefill plus the token steps) and
adds energy. Both are deterministic for a given seed.

The breakdown follows the result columns' one definition (docs/results.md), the roofline's too: the
critical stage is the one with the most busy time (compute + exposed communication + other); the
bubble is the rest of the step, the time that stage spends waiting on its neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmsim.costmodel.cluster import ClusterSpec
from llmsim.costmodel.collectives import Fabric
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.plan import Options, Plan
from llmsim.costmodel.step import StepTimes
from llmsim.costmodel.work import StepWork, forward_work, train_work
from llmsim.sim.entities import CountingEnvironment, Faults, Ledger, Placement, Replica, Span
from llmsim.sim.processes import SimOptions, StepSim, stage_worker

if TYPE_CHECKING:
    from llmsim.config import SharingChoice, Workload
    from llmsim.workload.profile import WorkloadProfile

# Relative residue of float sums below which a step's remainder is rounding, not waiting.
ROUNDING = 1e-9


@dataclass(frozen=True)
class Outcome:
    """A simulated step: its time, the critical stage's breakdown, every stage's ledger, the timeline."""

    step_s: float
    compute_s: float
    comm_s: float
    bubble_s: float
    other_s: float
    critical_stage: int
    ledgers: tuple[Ledger, ...]
    events: int
    spans: tuple[Span, ...] = ()
    link_bytes: dict[str, float] = field(default_factory=dict)


def placement_of(plan: Plan, cluster: ClusterSpec) -> Placement:
    """Where the simulated replica's stages sit on the cluster (Megatron rank order)."""
    return Placement(tp=plan.tp, cp=plan.cp, pp=plan.pp, devices_per_node=cluster.devices_per_node,
                     torus_dims=len(cluster.topology))


def simulate(work: StepWork, placement: Placement, fabric: Fabric, faults: Faults = Faults(),
             options: SimOptions = SimOptions(), record: bool = False) -> Outcome:
    """Run one step of `work` and return what it took. Deterministic for a given `faults.seed`."""
    env = CountingEnvironment()
    replica = Replica.build(env, placement, fabric.intra.bandwidth, fabric.intra.latency, fabric.inter.bandwidth,
                            fabric.inter.latency, faults, record)
    sim = StepSim(replica, work, fabric, faults, options)
    for stage in range(work.pp):
        env.process(stage_worker(sim, stage))
    env.run()
    ledgers = tuple(d.ledger for d in replica.devices)
    step = max(led.end_s for led in ledgers)
    critical = max(range(len(ledgers)), key=lambda s: (ledgers[s].compute_s + ledgers[s].comm_s + ledgers[s].other_s,
                                                       -s))
    led = ledgers[critical]
    bubble = step - led.compute_s - led.comm_s - led.other_s
    if bubble < ROUNDING * step:  # summed in another order than the clock advanced: 1e-13 s is not a bubble
        bubble = 0.0
    links = {link.name: link.bytes_sent for d in replica.devices for link in d.links}
    return Outcome(step_s=step, compute_s=led.compute_s, comm_s=led.comm_s, bubble_s=bubble, other_s=led.other_s,
                   critical_stage=critical, ledgers=ledgers, events=env.events_processed,
                   spans=tuple(replica.spans or ()), link_bytes=links)


@dataclass(frozen=True)
class SimResult:
    """A simulated case: where the step (train, prefill, or the whole generation) went, and its energy."""

    outcome: Outcome           # the step (train), or the prefill (inference): its timeline
    times: StepTimes           # the breakdown, by the roofline's definitions (costmodel.step)
    energy_j: float
    events: int
    wall_s: float

    @property
    def step_s(self) -> float:
        return self.times.step

    @property
    def tpot_s(self) -> float | None:
        return self.times.tpot


def _energy(outcome: Outcome, cluster: ClusterSpec, plan: Plan) -> float:
    """Idle power over the step plus the busy increment while computing, for every device a stage stands for."""
    peers = plan.tp * plan.cp * plan.dp
    return sum(step_energy_j(cluster.device, peers, outcome.step_s, ledger.busy_s) for ledger in outcome.ledgers)


def simulate_case(workload: "Workload", profile: "WorkloadProfile", sharing: "SharingChoice", plan: Plan,
                  cluster: ClusterSpec, options: Options = Options(), faults: Faults = Faults(),
                  sim_options: SimOptions = SimOptions(), record: bool = False) -> SimResult:
    """Simulate one step (train) or one request batch (prefill; decode = prefill + token steps).

    Raises CostModelError when the cluster's device cannot be priced in the workload's dtype.
    """
    placement = placement_of(plan, cluster)
    fabric = cluster.fabric
    start = time.perf_counter()

    def run(work: StepWork, keep: bool) -> Outcome:
        return simulate(work, placement, fabric, faults, sim_options, keep)

    def times(out: Outcome, **decode: float) -> StepTimes:
        return StepTimes(out.compute_s, out.comm_s, out.bubble_s, out.other_s, out.critical_stage, **decode)

    if workload.mode == "train":
        out = run(train_work(workload, profile, sharing, plan, cluster, options), record)
        return SimResult(out, times(out), _energy(out, cluster, plan), out.events, time.perf_counter() - start)
    pre = run(forward_work(workload, profile, plan, cluster, options, "prefill"), record)
    if workload.mode != "decode" or workload.decode_tokens <= 1:
        decode = dict(ttft=pre.step_s, tpot=0.0) if workload.mode == "decode" else {}
        return SimResult(pre, times(pre, **decode), _energy(pre, cluster, plan), pre.events,
                         time.perf_counter() - start)
    # Every decode step costs the same in the cost model (priced at the mean cache length), so one token
    # step is simulated and repeated; jitter therefore varies within a token step, not across them.
    n = workload.decode_tokens - 1
    tok = run(forward_work(workload, profile, plan, cluster, options, "decode", n), False)
    total = StepTimes(pre.compute_s + n * tok.compute_s, pre.comm_s + n * tok.comm_s, pre.bubble_s + n * tok.bubble_s,
                      0.0, tok.critical_stage, ttft=pre.step_s, tpot=tok.step_s)
    energy = _energy(pre, cluster, plan) + n * _energy(tok, cluster, plan)
    return SimResult(pre, total, energy, pre.events + tok.events, time.perf_counter() - start)
