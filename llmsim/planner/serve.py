"""Serving plans: the cheapest hardware x tp x pp x replicas that sustains a request rate under an SLO.

A serving plan (a plan file with a `serving:` block and `goal: {request_rate}`) is answered by the
request-level serving simulation (llmsim.serving, each iteration priced by costmodel.iteration as the
modeled backends do: llmsim.modeled_serving), not by the step roofline. For every candidate replica shape
(hardware, precision, tp, pp; the precisions of `search.dtype` a device can run, planner.precisions)
`search_candidate` does, on its own:

1. **Rate search on one replica.** A rate r is *sustained* when a run of requests arriving at r for the plan's
   span of time (serving.duration_s, or serving.requests / the goal rate, or the shorter of the two when both
   are given: `span_spec`), with the plan's
   arrival kind, lengths and seed, meets the SLO:
   slo_attainment >= percentile / 100, DistServe's attainment goal (llmsim.serving.metrics; a rejected
   request is a miss). Starting at the goal rate, the rate is halved until a run meets the SLO (or until one
   replica's share of the goal would need more than max_devices), then bisected (geometric midpoint) between
   the highest rate that met and the lowest that missed until they are within `rate_tolerance`. A replica
   that sustains the goal rate itself needs no more search (its rate is reported as "at least"), except the
   winner's: **1b.** `headroom` searches it up from the goal (doubling, then the same bisection), so that the answer
   says how far above the goal one replica goes (up to HEADROOM_MAX_FACTOR x the goal). A halving
   rate that a prefill bound proves missed is not simulated (`_proven_miss`; the same answer). The probe at the
   floor stops once its misses exceed what the percentile allows (llmsim.serving.early_stop): a miss there ends
   the search, and only its verdict and what the stop knew are reported (RunSummary.stopped).
2. **Replicas.** R0 = ceil(goal rate / sustained rate); the service of R replicas behind the router is
   simulated at the goal rate (the same span, the same seed: exactly what best.yaml runs) and R is
   moved from R0 to the fewest that meets the SLO (down while R - 1 still meets it, up while R misses,
   within max_devices). Only a run that meets the SLO is used, so a run that misses stops early too.
3. **Cost.** The devices are R x tp x pp, rented as whole nodes (or part of one node), the planner's rule;
   cost = rented devices x usd_per_device_hour (per hour of serving); energy = the modeled energy of the
   goal-rate run per hour (costmodel.energy, busy replicas at full power, idle and spare devices at idle).

The attainment of a finite run is not strictly monotone in the rate (the same request list, its gaps
scaled, is used at every rate: common random numbers make it close to monotone); the bisection finds one
boundary, and step 2 checks the answer at the goal rate by simulation in any case.

`search_candidate` is a top-level pure function of a picklable `ServingTask`, so an executor can map it
over processes or a Ray cluster; `plan_serving` calls it through the `mapper` it is given (default: the
builtin map, in process).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from llmsim.config import SharingChoice, Strategy, Workload, check_strategy_shape
from llmsim.costmodel import ClusterSpec, Options, Plan
from llmsim.hardware import LinkSpec
from llmsim.costmodel.compute import CostModelError
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.eager import engine_iteration, priced_pass_seconds
from llmsim.costmodel.power import busy_power_w
from llmsim.costmodel.iteration import (IterationModel, KVCapacity, Mix, draft_times, iteration_times, kv_capacity,
                                        prefill_rate_bound, token_costs, with_draft_memory)
from llmsim.serving.bounds import ttft_attainment_bound
from llmsim.serving.disaggregation import (Pool, kv_bytes_per_port, simulate_disaggregated, transfer_link,
                                           transfer_seconds)
from llmsim.serving.early_stop import EarlyStop
from llmsim.serving.metrics import summarize
from llmsim.serving.requests import Request, build_requests
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.simulate import simulate_serving
from llmsim.planner.config import PlanFile
from llmsim.planner.precisions import candidates
from llmsim.report.units import fmt_watts
from llmsim.wording import count
from llmsim.planner.whatif import perturb_cluster
from llmsim.serving.spec import ServingCase, ServingSpec
from llmsim.workload.profile import WorkloadProfile

HOUR_S = 3600.0
# The replica's best prefill rate (costmodel.iteration.prefill_rate_bound) is taken this many times over before
# it proves a probe missed (`_proven_miss`): a margin for what the bound leaves out (sizes between those priced),
# so that only probes far past what a replica can prefill are skipped.
PREFILL_BOUND_MARGIN = 2.0


def rented_devices(n: int, devices_per_node: int) -> int:
    """Devices rented for n in use: n inside one node, else whole nodes (planner.space.node_problem's rule)."""
    return n if n <= devices_per_node else -(-n // devices_per_node) * devices_per_node


@dataclass(frozen=True)
class ReplicaExperts:
    """How a mixture-of-experts replica spreads its routed experts and its attention over its tp devices (the
    strategy keys ep, etp, attention_dp: docs/scenario.md). The default, ep 1 with etp = tp, splits every expert
    over the tp ranks like the dense layers (vLLM's --tensor-parallel-size alone); ep = tp with etp 1 gives each
    rank whole experts (vLLM's --enable-expert-parallel, SGLang's --ep); attention_dp = tp runs attention as tp
    data-parallel ranks, each with its own batch and KV cache, the experts over all of them (SGLang
    --enable-dp-attention, TensorRT-LLM enable_attention_dp). A dense model has the default only."""

    ep: int = 1
    etp: int | None = None          # None = tp (Megatron-Core's default, Strategy.expert_tp)
    attention_dp: int = 1

    def label(self) -> str:
        """'' for the default; '-ep8' / '-adp8' / '-ep8-adp8' (a candidate's name: CandidateResult.name)."""
        return (f"-ep{self.ep}" if self.ep > 1 else "") + (f"-adp{self.attention_dp}" if self.attention_dp > 1 else "")

    def strategy(self, tp: int, pp: int) -> Strategy:
        """The strategy of a replica of this shape (the one best.yaml writes)."""
        return Strategy(tp=tp, pp=pp, ep=self.ep, etp=self.etp, attention_dp=self.attention_dp)

    def keys(self) -> dict[str, int]:
        """The strategy keys beyond tp and pp that differ from the defaults (best.yaml, plan.csv)."""
        out = {"ep": self.ep} if self.ep > 1 else {}
        if self.etp is not None:
            out["etp"] = self.etp
        if self.attention_dp > 1:
            out["attention_dp"] = self.attention_dp
        return out


@dataclass(frozen=True)
class DisaggUnit:
    """A prefill-decode disaggregated unit (search.disaggregation; llmsim.serving.disaggregation): `prefill`
    instances of `prefill_tp` devices and `decode` instances of `decode_tp` devices, pp 1, on one hardware choice,
    a mixture of experts' layout on each side (`prefill_experts`, `decode_experts`: serving.disaggregation.<side>'s
    ep, etp, attention_dp), each prompt's KV cache sent over `link` (search.disaggregation.kv_transfer.link), else
    the hardware's link (intra_node when the unit fits one node, else inter_node; modeled_disaggregated's default),
    layer by layer where `layerwise`. The simulation runs one unit (it refuses serving.replicas > 1 with
    disaggregation); a plan needs `units` of them behind a router."""

    prefill: int
    prefill_tp: int
    decode: int
    decode_tp: int
    layerwise: bool = False
    prefill_experts: ReplicaExperts = ReplicaExperts()
    decode_experts: ReplicaExperts = ReplicaExperts()
    link: str | None = None   # a catalog link named by the plan (None: the hardware's own)

    @property
    def devices(self) -> int:
        """Devices of one unit: prefill x prefill_tp + decode x decode_tp."""
        return self.prefill * self.prefill_tp + self.decode * self.decode_tp

    def label(self) -> str:
        """'1P-tp2+3D-tp4', a mixture of experts' side layouts after each side ('2P-tp8-ep8+1D-tp8-ep8-adp8';
        ReplicaExperts.label): a candidate's name."""
        return (f"{self.prefill}P-tp{self.prefill_tp}{self.prefill_experts.label()}"
                f"+{self.decode}D-tp{self.decode_tp}{self.decode_experts.label()}")

    def side_strategy(self, side: str) -> Strategy:
        """The strategy an instance of `side` ('prefill' or 'decode') runs: its tp, pp 1, its experts' layout."""
        if side == "prefill":
            return self.prefill_experts.strategy(self.prefill_tp, 1)
        return self.decode_experts.strategy(self.decode_tp, 1)

    def block(self) -> dict[str, Any]:
        """The scenario's serving.disaggregation block of one unit (best.yaml): each side's replicas, tp and, where
        not the defaults, ep, etp and attention_dp."""
        return {"prefill": {"replicas": self.prefill, "tp": self.prefill_tp, **self.prefill_experts.keys()},
                "decode": {"replicas": self.decode, "tp": self.decode_tp, **self.decode_experts.keys()},
                "kv_transfer": {**({"link": self.link} if self.link is not None else {}),
                                "layerwise": self.layerwise}}


@dataclass(frozen=True)
class ServingTask:
    """Everything one candidate's search needs, picklable (plain data, pydantic models, frozen dataclasses)."""

    hardware: str
    tp: int
    pp: int
    node: ClusterSpec              # one node of the hardware choice (planner.search.Hardware.node)
    usd_per_device_hour: float
    reference: Workload            # the traced reference workload (modeled_serving.reference_workload)
    profile: WorkloadProfile       # its profile
    sharing: SharingChoice
    context_tokens: int            # the served model's context (requests longer are rejected)
    spec: ServingSpec              # the plan's serving block at the goal rate
    seed: int
    goal_rate: float               # requests/s
    max_devices: int
    max_power_w: float | None
    rate_tolerance: float
    knob: str = ""                 # a what-if (planner.whatif): "" = the catalog's hardware
    factor: float = 1.0
    start_replicas: int | None = None  # given: skip the rate search, size the replicas from here (what-ifs)
    precision: str = ""            # planner.precisions label: "" = the plan's workload dtype as written
    options: Options = Options()   # the plan's modeled software choices (PlanFile.options)
    experts: ReplicaExperts = ReplicaExperts()   # ep, etp, attention_dp of a mixture-of-experts replica
    unit: DisaggUnit | None = None   # a disaggregated unit (search.disaggregation) in place of a colocated replica
    served: Workload | None = None   # the served workload at this precision (a speculative draft's context, dtype)
    kv_link: LinkSpec | None = None  # search.disaggregation.kv_transfer.link's catalog entry (None: the hardware's)
    min_devices: int = 1           # limits.min_devices: the fewest devices rented

    @property
    def size(self) -> int:
        """Devices of one replica (of one disaggregated unit: DisaggUnit.devices)."""
        return self.unit.devices if self.unit is not None else self.tp * self.pp

    @property
    def shape(self) -> tuple[str, int, int, ReplicaExperts, str, DisaggUnit | None]:
        """What identifies the candidate: hardware, tp, pp, the experts' layout, the precision and the unit."""
        return (self.hardware, self.tp, self.pp, self.experts, self.precision, self.unit)

    def cluster(self, n: int) -> ClusterSpec:
        return perturb_cluster(self.node.with_devices(n), self.knob, self.factor)


@dataclass(frozen=True)
class RunSummary:
    """One simulated run: the SLO verdict and where the replicas' iteration time went (seconds, summed).

    A run stopped early (`stopped`: its misses already exceeded what the percentile allows, so its verdict
    "missed" is certain; llmsim.serving.early_stop) knows only bounds: `attainment` is then the upper bound,
    `row` holds request_rate alone, the miss counts are those counted by the stop (lower bounds), and the time
    split, energy and duration cover the simulated time up to the stop."""

    rate: float
    replicas: int
    met: bool
    attainment: float                  # SLO attainment; stopped early: an upper bound on it
    row: dict[str, Any]                # the serving result columns (llmsim.serving.metrics.summarize)
    misses_ttft: int                   # requests over the TTFT bound (served ones)
    misses_tpot: int                   # requests over the TPOT bound
    rejected: int
    time_split: dict[str, float]       # compute, communication, bubble, other: over every iteration
    energy_j: float
    duration_s: float
    stopped: EarlyStop | None = None   # set when the run stopped once its SLO was certainly missed

    @property
    def attainment_at_least(self) -> float:
        """The SLO attainment, or for a run stopped early the share of its requests already known to meet the
        SLO (a lower bound)."""
        return self.attainment if self.stopped is None else self.stopped.attainment_at_least


@dataclass
class CandidateResult:
    """The answer for one replica shape: what it sustains, how many replicas the goal needs, what they cost."""

    hardware: str
    tp: int
    pp: int
    feasible: bool
    reason: str                                   # "" when feasible
    limits: tuple[str, ...]                       # memory | slo | devices | power | error
    sustained_rate: float = 0.0                   # requests/s one replica sustains (a lower bound within tolerance)
    sustained_at_least: bool = False              # the search stopped at the goal rate: it sustains at least that
    headroom_cap: float | None = None             # x the goal where the headroom search stopped still meeting the SLO
    probes: list[tuple[float, float, bool]] = field(default_factory=list)  # (rate, attainment, met) per replica
    replicas: int = 0
    n_devices: int = 0                            # rented: whole nodes, or part of one
    devices_used: int = 0                         # replicas x tp x pp
    cost_usd: float | None = None                 # per hour of serving
    energy_j: float | None = None                 # per hour of serving, at the goal rate
    power_w: float = 0.0
    kv_blocks: int = 0
    at_goal: RunSummary | None = None             # the service of `replicas` at the goal rate
    at_sustained: RunSummary | None = None        # one replica at its sustained rate
    first_miss: RunSummary | None = None          # one replica at the lowest rate that missed
    simulations: int = 0
    # rates the search did not simulate because a bound proves they miss (`_proven_miss`): (rate, an upper bound
    # on the attainment there), highest first
    proven_misses: list[tuple[float, float]] = field(default_factory=list)
    # probes stopped early once their SLO was certainly missed (RunSummary.stopped), by index into `probes`:
    # their attainment there is the upper bound
    stopped_probes: dict[int, EarlyStop] = field(default_factory=dict)
    knob: str = ""
    factor: float = 1.0
    precision: str = ""                           # planner.precisions label ("" = the plan's workload dtype)
    experts: ReplicaExperts = ReplicaExperts()    # ep, etp, attention_dp (a mixture-of-experts replica)
    unit: DisaggUnit | None = None                # a disaggregated unit: `replicas` counts units

    @property
    def name(self) -> str:
        """'tp1-pp1', 'tp8-pp1-ep8-adp8' for a mixture of experts' layout, 'tp1-pp1-float8-delayed' for a
        searched precision (the training plan's label rule), or '1P-tp2+3D-tp4' for a disaggregated unit."""
        shape = self.unit.label() if self.unit is not None else f"tp{self.tp}-pp{self.pp}" + self.experts.label()
        return shape + (f"-{self.precision}" if self.precision else "")

    @property
    def shape(self) -> tuple[str, int, int, ReplicaExperts, str, DisaggUnit | None]:
        """ServingTask.shape of the task this answers."""
        return (self.hardware, self.tp, self.pp, self.experts, self.precision, self.unit)


class _Replica:
    """The iteration model and KV capacity of one replica shape on n rented devices."""

    def __init__(self, task: ServingTask, n: int) -> None:
        spec = task.spec
        self.cluster = task.cluster(n)
        strategy = task.experts.strategy(task.tp, task.pp)
        self.plan = Plan(dp=1, tp=task.tp, pp=task.pp, micro_batch=1, microbatches=1, ep=strategy.ep,
                         etp=strategy.expert_tp, attention_dp=strategy.attention_dp)
        costs = token_costs(task.reference, task.profile, spec.kv_cache_dtype)
        self.model = IterationModel(costs, task.reference, self.plan, self.cluster, task.options,
                                    pipeline_in_flight=BUILTIN[spec.scheduler.kind].pipeline_in_flight)
        _ = self.model.rates, self.model.attention_fraction  # a CostModelError now, not inside the simulation
        sched = spec.scheduler
        # the most prompt tokens one iteration can compute: the token budget, or a batch of whole prompts where a
        # policy takes them whole (static batches of max_num_seqs prompts of up to the context)
        # (per attention-DP rank: each has its own scheduler, so the replica takes attention_dp times that)
        self.prefill_cap = (max(sched.max_batched_tokens, sched.max_num_seqs * task.context_tokens)
                            * self.plan.attention_dp)
        self.prefill_rate: float | None = None   # _prefill_tokens_per_s, when a rate search first asks
        self.capacity: KVCapacity = kv_capacity(task.reference, task.profile, task.sharing, self.plan, self.cluster,
                                                costs, spec.memory_utilization, spec.kv_block_tokens,
                                                sched.max_batched_tokens, sched.max_num_seqs, task.options)
        # speculative decoding: the draft beside the target on every device, its weights and K/V in the same
        # memory, its k passes after each verify pass (modeled_serving.serve_case's rule, workload_draft)
        self.draft: tuple[IterationModel, int] | None = None
        if spec.speculative is not None:
            from llmsim.modeled_serving import workload_draft
            served = task.served if task.served is not None else task.reference
            draft_model, weights, kv = workload_draft(served, spec.kv_cache_dtype, spec.speculative, self.model,
                                                      self.capacity)
            self.capacity = with_draft_memory(self.capacity, weights, kv)
            if draft_model is not None:
                self.draft = (draft_model, spec.speculative.num_draft_tokens)


class _Unit:
    """The iteration models and KV capacities of one disaggregated unit's two sides on n rented devices
    (modeled_disaggregated.serve_disaggregated's, side by side), and the link its KV transfers cross."""

    def __init__(self, task: ServingTask, n: int) -> None:
        unit = task.unit
        assert unit is not None
        spec = task.spec
        sched = spec.scheduler
        self.cluster = task.cluster(n)
        self.costs = token_costs(task.reference, task.profile, spec.kv_cache_dtype)
        in_flight = BUILTIN[sched.kind].pipeline_in_flight
        self.models: list[IterationModel] = []
        self.capacities: list[KVCapacity] = []
        self.plans: list[Plan] = []
        for side in ("prefill", "decode"):
            s = unit.side_strategy(side)
            plan = Plan(dp=1, tp=s.tp, pp=1, micro_batch=1, microbatches=1, ep=s.ep, etp=s.expert_tp,
                        attention_dp=s.attention_dp)
            self.plans.append(plan)
            model = IterationModel(self.costs, task.reference, plan, self.cluster, task.options,
                                   pipeline_in_flight=in_flight)
            _ = model.rates, model.attention_fraction  # a CostModelError now, not inside the simulation
            self.models.append(model)
            self.capacities.append(kv_capacity(task.reference, task.profile, task.sharing, plan, self.cluster,
                                               self.costs, spec.memory_utilization, spec.kv_block_tokens,
                                               sched.max_batched_tokens, sched.max_num_seqs, task.options))
        # the link: the plan's search.disaggregation.kv_transfer.link, else the hardware's intra-node link when the
        # unit fits one node, else its inter-node link (modeled_disaggregated's default when kv_transfer.link is
        # not named)
        c = self.cluster
        link = task.kv_link if task.kv_link is not None else (
            c.intra if unit.devices <= c.devices_per_node else c.inter)
        self.link = transfer_link(link.bandwidth_bytes_per_s, link.latency_s, link.efficiency, link.shared_per_node,
                                  min(max(unit.prefill_tp, unit.decode_tp), c.devices_per_node))
        self.layers = task.reference.model.layers
        # a request's KV cache lives on its attention-DP rank's tp / attention_dp devices (modeled_disaggregated)
        self.ranks = tuple(p.attention_dp for p in self.plans)
        self.split_d = task.reference.model.kv_split(unit.decode_tp // self.ranks[1])

    @property
    def capacity(self) -> KVCapacity:
        """The decode side's KV capacity (the unit's reported kv_blocks, as modeled_disaggregated reports it)."""
        return self.capacities[1]


def _prefill_tokens_per_s(replica: _Replica) -> float:
    """The replica's best prefill rate, tokens/s (costmodel.iteration.prefill_rate_bound up to the most prompt
    tokens one of its iterations can compute), priced once per replica."""
    if replica.prefill_rate is None:
        replica.prefill_rate = prefill_rate_bound(replica.model, replica.prefill_cap)
    return replica.prefill_rate


# Request lists memoised per process (_request_list, a pure function), by (serving block at the rate, seed): every candidate of a plan probes the same
# rates (the goal, its halvings, the floors) with the same block and seed, and a list is a pure function of those
# (serving.requests.build_requests: the replicas do not enter it), so it is built once, not once per candidate
# and again for the simulation after the bound (at 2,000 requests/s over 60 s a list is 120,000 requests). The few
# most recent are kept: a search walks down its rates, and candidates go one after another in a process.
REQUEST_LISTS_KEPT = 8


@functools.lru_cache(maxsize=REQUEST_LISTS_KEPT)
def _request_list(spec_json: str, seed: int, trace: str | None) -> tuple[Request, ...]:
    """build_requests of the serving block `spec_json` (ServingSpec as JSON: hashable, and equal for equal blocks)
    at `seed` (and its trace file, if any), as an immutable tuple (Request is frozen): a pure function, so
    memoised."""
    spec = ServingSpec.model_validate_json(spec_json)
    return tuple(build_requests(ServingCase(spec, seed, BUILTIN[spec.scheduler.kind], trace)))


def _requests(case: ServingCase) -> tuple[Request, ...]:
    """build_requests(case), the same list for every replica count (_request_list)."""
    return _request_list(case.spec.model_copy(update={"replicas": 1}).model_dump_json(), case.seed, case.trace)


def _case_at(task: ServingTask, rate: float, replicas: int) -> ServingCase:
    """The plan's serving block on `replicas` replicas with arrivals at `rate` (its request list: build_requests)."""
    spec = task.spec.model_copy(update={"replicas": replicas}).at_rate(rate)
    return ServingCase(spec, task.seed, BUILTIN[spec.scheduler.kind])


def _proven_miss(task: ServingTask, replica: "_Replica | _Unit", rate: float) -> float | None:
    """An upper bound on one replica's SLO attainment at `rate` when it proves the SLO missed (below the
    percentile), else None: the share of the requests whose prompts could be prefilled by their TTFT deadlines
    at PREFILL_BOUND_MARGIN x the replica's best prefill rate (serving.bounds.ttft_attainment_bound). None
    without a TTFT bound."""
    slo = task.spec.slo
    if slo is None or slo.ttft_s is None or isinstance(replica, _Unit):   # a unit: every probe is simulated
        return None
    case = _case_at(task, rate, 1)
    best = PREFILL_BOUND_MARGIN * _prefill_tokens_per_s(replica)
    bound = ttft_attainment_bound(_requests(case), best, slo.ttft_s,
                                  case.spec.overhead_on(replica.cluster.device))
    return bound if bound < slo.percentile / 100 else None


def _split_pricer(model: IterationModel, host: Any, eager: Any, split: dict[str, float],
                  draft: tuple[IterationModel, int] | None = None) -> Callable[[int], Callable]:
    """price(i): an iteration pricer (modeled_serving.pricers' arithmetic, without faults) that also adds up
    where the time goes in `split` (seconds: compute, communication, bubble, other). `draft` (speculative
    decoding): the draft's model and k, whose k passes over the decoding sequences follow the verify pass
    (costmodel.iteration.draft_times, as modeled_serving.pricers prices them)."""
    def price(_: int):  # noqa: ANN202 - a Pricer per replica, adding up where the time goes
        def one(mix: Mix | tuple[Mix, ...]) -> tuple[float, float]:
            # attention data parallelism: the ranks' mixes of one lockstep iteration (modeled_serving.pricers);
            # each pass launches its engine's kernels
            mix, ranks = engine_iteration(model, mix, eager.engine_kernels, eager.fuse_allreduce_rms)
            t = iteration_times(model, mix, ranks)
            compute, comm, bubble, other = t.compute, t.comm, t.bubble, t.other
            device_s = t.step
            if draft is not None and mix.decode_seqs:
                d = draft_times(draft[0], mix, draft[1], ranks)
                compute, comm, bubble, other = compute + d.compute, comm + d.comm, bubble + d.bubble, other + d.other
                device_s = t.compute + t.comm + t.bubble + t.other + d.compute + d.comm + d.bubble + d.other
            split["compute"] += compute
            split["communication"] += comm
            split["bubble"] += bubble
            cpu = host.seconds(max(m.rows for m in ranks) if ranks else mix.rows)
            step = priced_pass_seconds(model, mix, device_s, eager.passes, eager.per_kernel_s,
                                       eager.graph_max_batch)
            split["other"] += other + cpu + (step - device_s)   # the GPU waiting on an eager pass's launches
            return step + cpu, compute
        return one
    return price


def _summary(task: ServingTask, outcome: Any, rate: float, replicas: int, split: dict[str, float],
             energy: float, slo: Any) -> RunSummary:
    """A simulated outcome as a RunSummary (stopped early: what the stop knew)."""
    if outcome.stopped is not None:
        s = outcome.stopped
        return RunSummary(rate=rate, replicas=replicas, met=False, attainment=s.attainment_at_most,
                          row={"request_rate": rate}, misses_ttft=s.misses_ttft, misses_tpot=s.misses_tpot,
                          rejected=s.rejected, time_split=split, energy_j=energy, duration_s=outcome.duration_s,
                          stopped=s)
    row = summarize(outcome, rate, slo)
    extra = row.pop("extra")
    assert slo is not None
    ttft = [s.token_times[0] - s.request.arrival_s for s in outcome.sequences]
    tpot = [(s.token_times[-1] - s.token_times[0]) / (s.request.output_tokens - 1) if s.request.output_tokens > 1
            else 0.0 for s in outcome.sequences]
    return RunSummary(rate=rate, replicas=replicas, met=bool(extra["slo_met"]), attainment=row["slo_attainment"] or 0.0,
                      row=row, misses_ttft=sum(slo.ttft_s is not None and t > slo.ttft_s for t in ttft),
                      misses_tpot=sum(slo.tpot_s is not None and t > slo.tpot_s for t in tpot),
                      rejected=len(outcome.rejected),
                      time_split=split, energy_j=energy, duration_s=outcome.duration_s)


def simulate_at(task: ServingTask, replica: "_Replica | _Unit", rate: float, replicas: int,
                stop_early: bool = False) -> RunSummary:
    """`replicas` replicas behind the plan's router serving the plan's requests arriving at `rate`.
    `stop_early`: stop the run once its SLO misses exceed what the percentile allows (RunSummary.stopped; a run
    that meets the SLO is simulated to its end either way, so its summary is the same). A disaggregated unit
    (`replica` a _Unit, `replicas` 1) runs to its end (simulate_unit)."""
    if isinstance(replica, _Unit):
        assert replicas == 1
        return simulate_unit(task, replica, rate)
    case = _case_at(task, rate, replicas)
    spec = case.spec
    split = {"compute": 0.0, "communication": 0.0, "bubble": 0.0, "other": 0.0}
    host = spec.host_step_on(replica.cluster.device)   # the engine's host time per iteration (0 unless set)
    eager = spec.eager_launch_on(replica.cluster.device)  # eager passes' host launch time (costmodel.eager)
    outcome = simulate_serving(_requests(case), replicas=replicas,
                               make_scheduler=lambda kv: case.scheduler(spec.scheduler, kv),
                               kv_blocks=replica.capacity.blocks, block_tokens=spec.kv_block_tokens,
                               price=_split_pricer(replica.model, host, eager, split, replica.draft),
                               kv_layout=replica.capacity.layout,
                               router=spec.router, context_tokens=task.context_tokens,
                               request_overhead_s=spec.overhead_on(replica.cluster.device),
                               stop_on_miss=spec.slo if stop_early else None,
                               attention_dp=replica.plan.attention_dp,
                               speculative=spec.speculative, speculative_seed=task.seed)
    device = replica.cluster.device
    energy = sum(step_energy_j(device, task.size, outcome.duration_s, busy) for busy in outcome.compute_s)
    return _summary(task, outcome, rate, replicas, split, energy, spec.slo)


def simulate_unit(task: ServingTask, unit: "_Unit", rate: float) -> RunSummary:
    """One disaggregated unit serving the plan's requests arriving at `rate` (llmsim.serving.disaggregation, as
    modeled_disaggregated.serve_disaggregated runs a scenario's: the same pools, schedulers, pricers and KV
    transfer), simulated to its end."""
    shape = task.unit
    assert shape is not None
    case = _case_at(task, rate, 1)
    spec = case.spec
    sched = spec.scheduler
    split = {"compute": 0.0, "communication": 0.0, "bubble": 0.0, "other": 0.0}
    device = unit.cluster.device
    host, eager = spec.host_step_on(device), spec.eager_launch_on(device)
    price_p = _split_pricer(unit.models[0], host, eager, split)
    price_d = _split_pricer(unit.models[1], host, eager, split)
    cap_p, cap_d = unit.capacities

    adp_p, adp_d = unit.ranks

    def transfer(request: Request, span_s: float) -> tuple[float, float]:
        per_port = kv_bytes_per_port(unit.costs.kv_bytes_per_token, request.input_tokens, shape.prefill_tp // adp_p,
                                     shape.decode_tp // adp_d, unit.split_d)
        return transfer_seconds(per_port, unit.link, unit.layers, span_s, shape.layerwise)

    outcome = simulate_disaggregated(
        _requests(case),
        prefill=Pool(shape.prefill, cap_p.blocks, lambda kv: case.scheduler(sched, kv), price_p, cap_p.layout,
                     adp_p),
        decode=Pool(shape.decode, cap_d.blocks, lambda kv: case.scheduler(sched, kv),
                    lambda j: price_d(shape.prefill + j), cap_d.layout, adp_d),
        block_tokens=spec.kv_block_tokens, router=spec.router, context_tokens=task.context_tokens,
        transfer=transfer, request_overhead_s=spec.overhead_on(device))
    energy = sum(step_energy_j(device, shape.prefill_tp if i < shape.prefill else shape.decode_tp,
                               outcome.duration_s, busy) for i, busy in enumerate(outcome.compute_s))
    return _summary(task, outcome, rate, 1, split, energy, spec.slo)


def _min_replicas(task: ServingTask) -> int:
    """The fewest replicas (units) whose rented devices reach limits.min_devices (1 without it)."""
    r = 1
    while rented_devices(r * task.size, task.node.devices_per_node) < task.min_devices:
        r += 1
    return r


def _max_replicas(task: ServingTask) -> int:
    """The most replicas whose rented devices stay within max_devices (0: not even one)."""
    r = task.max_devices // task.size
    while r > 0 and rented_devices(r * task.size, task.node.devices_per_node) > task.max_devices:
        r -= 1
    return r


def _rate_search(task: ServingTask, replica: "_Replica | _Unit", out: CandidateResult, max_replicas: int) -> None:
    """Step 1 of the module docstring: out.sustained_rate, probes, at_sustained and first_miss."""
    def probe(rate: float) -> RunSummary:
        # a miss at the floor ends the search, and the report uses no more of it than its verdict and bounds:
        # that probe may stop early (a probe above the floor is reported in full, in plan.csv's rate_probes)
        run = simulate_at(task, replica, rate, 1, stop_early=rate <= floor)
        out.simulations += 1
        if run.stopped is not None:
            out.stopped_probes[len(out.probes)] = run.stopped
        out.probes.append((rate, run.attainment, run.met))
        return run

    floor = task.goal_rate / max_replicas    # below this the goal needs more than max_devices
    # the halving's rates above the floor that a bound proves missed are not simulated (the same rates, the same
    # verdicts: the search's answer does not change); the lowest of them is simulated only if it ends up the
    # first miss the report explains
    rate, proven = task.goal_rate, None
    while rate > floor and (bound := _proven_miss(task, replica, rate)) is not None:
        out.proven_misses.append((rate, bound))
        proven, rate = rate, max(rate / 2, floor)
    hi: RunSummary | float | None = proven   # a rate: proven missed, not simulated
    lo = probe(rate)
    while not lo.met:
        hi = lo
        if lo.rate <= floor:
            out.first_miss = hi
            return
        lo = probe(max(lo.rate / 2, floor))
    if hi is None:
        out.sustained_rate, out.sustained_at_least, out.at_sustained = lo.rate, True, lo
        return

    def rate_of(run: RunSummary | float) -> float:
        return run if isinstance(run, float) else run.rate
    while (rate_of(hi) - lo.rate) / rate_of(hi) > task.rate_tolerance:
        mid = probe(math.sqrt(lo.rate * rate_of(hi)))
        if mid.met:
            lo = mid
        else:
            hi = mid
    out.sustained_rate, out.at_sustained = lo.rate, lo
    out.first_miss = probe(hi) if isinstance(hi, float) else hi


def _size_replicas(task: ServingTask, out: CandidateResult, start: int, max_replicas: int,
                   min_replicas: int = 1) -> RunSummary | None:
    """Step 2: the fewest replicas from `start`, and no fewer than `min_replicas` (limits.min_devices), that meet
    the SLO at the goal rate (None: none within the limit)."""
    runs: dict[int, RunSummary] = {}

    def run(r: int) -> RunSummary:
        if r not in runs:
            if task.unit is not None:
                # r units behind a router: one unit simulated at its share of the goal, goal / r (the simulation
                # runs one disaggregated unit; a Poisson stream at goal / r is burstier than a router's share of
                # one at the goal, so this errs on the safe side)
                n = rented_devices(task.size, task.node.devices_per_node)
                runs[r] = replace(simulate_at(task, _Unit(task, n), task.goal_rate / r, 1), replicas=r)
            else:
                n = rented_devices(r * task.size, task.node.devices_per_node)
                # only a run that meets the SLO is used: one that misses may stop as soon as that is certain
                runs[r] = simulate_at(task, _Replica(task, n), task.goal_rate, r, stop_early=True)
            out.simulations += 1
        return runs[r]

    r = min(max(start, min_replicas), max_replicas)
    if run(r).met:
        while r > min_replicas and run(r - 1).met:
            r -= 1
        return runs[r]
    while r < max_replicas:
        r += 1
        if run(r).met:
            return runs[r]
    return None


def rate_search(task: ServingTask) -> tuple[CandidateResult, int]:
    """Step 1 of the module docstring alone: the highest rate one replica of (hardware, tp, pp) sustains under the
    SLO, searched down from task.goal_rate (out.sustained_rate, out.probes, at_sustained, first_miss), or why it
    cannot run (out.reason, out.limits: devices, error, memory, slo). Also the most replicas max_devices allows.
    The published-capacity dev table (scripts/validate.py --table capacity) prices its rows with this."""
    out = CandidateResult(task.hardware, task.tp, task.pp, False, "", (), knob=task.knob, factor=task.factor,
                          precision=task.precision, experts=task.experts, unit=task.unit)
    max_replicas = _max_replicas(task)
    what = "one unit" if task.unit is not None else "one replica"
    if max_replicas == 0:
        rented = rented_devices(task.size, task.node.devices_per_node)
        needs = (f"needs {task.size}" if rented == task.size else   # trial 45: '4 > max_devices=5' of 2 nodes of 3
                 f"of {task.size} rents {rented} (whole nodes of {task.node.devices_per_node})")
        out.reason, out.limits = f"devices: {what} {needs} > max_devices={task.max_devices}", ("devices",)
        return out, max_replicas
    min_replicas = _min_replicas(task)
    if min_replicas > max_replicas:   # whole nodes of this shape cannot land between the two limits: no search
        what = "units" if task.unit is not None else "replicas"
        out.reason, out.limits = (f"devices: min_devices={task.min_devices} needs {min_replicas} {what} of "
                                  f"{task.size}, {rented_devices(min_replicas * task.size, task.node.devices_per_node)}"
                                  f" devices rented, over max_devices={task.max_devices}"), ("devices",)
        return out, max_replicas
    if task.spec.speculative is not None and task.pp > 1:
        # the serving simulation's own refusal (config.check_serving_strategy): no pipelined speculative schedule
        out.reason, out.limits = (f"error: speculative decoding (serving.speculative) is modeled at pp 1 only "
                                  f"(pp {task.pp})"), ("error",)
        return out, max_replicas
    if task.unit is not None and task.node.is_torus:
        # modeled_disaggregated's own refusal: its instances would have to tile the torus
        out.reason, out.limits = "error: serving.disaggregation is not modeled on a TPU slice", ("error",)
        return out, max_replicas
    if task.node.is_torus:
        # `llmsim run` prices replicas on a TPU only where replicas x tp x pp tile a slice of the device's shapes
        # (modeled_serving.torus_problem); this search rents devices by the node, so its replica counts and its
        # best.yaml would not be slices (trial 29: a CostModelError mid-search, then a best.yaml that does not run)
        out.reason, out.limits = (f"error: {task.hardware} is a TPU slice: a serving plan does not search slices yet "
                                  f"(replicas x tp x pp must tile one); run a serving scenario with "
                                  f"backends.roofline.topology instead"), ("error",)
        return out, max_replicas
    if not task.node.device.memory_bytes:
        # `llmsim run`'s own refusal (modeled_serving.unknown_memory), not "no room for a KV cache (0.0 GB usable)"
        # (trial 29: the entry `llmsim calibrate` writes for cpu-host has memory_bytes 0)
        from llmsim.modeled_serving import unknown_memory
        out.reason, out.limits = f"error: {unknown_memory(task.cluster(task.size))}", ("error",)
        return out, max_replicas
    try:
        n = rented_devices(task.size, task.node.devices_per_node)
        replica: _Replica | _Unit = _Unit(task, n) if task.unit is not None else _Replica(task, n)
    except CostModelError as exc:
        out.reason, out.limits = f"error: {exc}", ("error",)
        return out, max_replicas
    out.kv_blocks = replica.capacity.blocks
    sides = list(zip(("prefill", "decode"), replica.capacities)) if isinstance(replica, _Unit) \
        else [("", replica.capacity)]
    for side, c in sides:
        where = f"a {side} instance: " if side else ""
        if c.blocks == 0:
            out.reason = (f"memory: {where}no room for a KV cache ({c.device_bytes / 1e9:.1f} GB usable - weights "
                          f"{c.weights_bytes / 1e9:.1f} GB - workspace {c.workspace_bytes / 1e9:.1f} GB per device)")
            out.limits = ("memory",)
            return out, max_replicas
        short = c.misses_context(task.context_tokens)
        if short is not None:
            out.reason, out.limits = f"memory: {where}{short}", ("memory",)
            return out, max_replicas
    if task.start_replicas is None:
        _rate_search(task, replica, out, max_replicas)
        if out.at_sustained is None:
            out.reason, out.limits = (f"slo: {what} misses the SLO even at {task.goal_rate / max_replicas:,.4g} "
                                      f"requests/s, its share of the goal when max_devices={task.max_devices:,} "
                                      f"allows {count(max_replicas, what.split()[1])} of {count(task.size, 'device')} "
                                      f"({task.goal_rate:,.4g} / {max_replicas:,})"), ("slo",)
    return out, max_replicas


# The winner's headroom: how far above the goal rate one replica (or unit) still meets the SLO, searched upward
# by doubling to at most this many times the goal rate, then narrowed to the task's rate_tolerance. A bound
# against a search without end (a tiny model whose replica sustains thousands of requests/s).
HEADROOM_MAX_FACTOR = 64


def headroom(task: ServingTask, result: CandidateResult) -> CandidateResult:
    """`result` with the highest rate one replica (or unit) sustains under the SLO above the goal rate, where the
    rate search stopped at the goal (sustained_at_least: one replica met it, so the search went no higher; trial
    41: the answer said '≥ 20 requests/s' of a replica that sustains 31). The rates are searched up from the goal
    by doubling until a rate misses, or up to HEADROOM_MAX_FACTOR x the goal (then sustained_at_least stays: it
    sustains at least that), then narrowed geometrically to rate_tolerance, as the search down is. Its probes join
    result.probes; result unchanged for any other candidate. Step 1b of the module docstring."""
    if not (result.feasible and result.sustained_at_least and result.at_sustained is not None):
        return result
    n = rented_devices(task.size, task.node.devices_per_node)
    replica: _Replica | _Unit = _Unit(task, n) if task.unit is not None else _Replica(task, n)
    out = replace(result, probes=list(result.probes))

    def probe(rate: float) -> RunSummary:
        run = simulate_at(task, replica, rate, 1)
        out.simulations += 1
        out.probes.append((rate, run.attainment, run.met))
        return run

    lo, hi = result.at_sustained, None
    while hi is None and lo.rate < task.goal_rate * HEADROOM_MAX_FACTOR:
        run = probe(min(lo.rate * 2, task.goal_rate * HEADROOM_MAX_FACTOR))
        lo, hi = (run, None) if run.met else (lo, run)
    while hi is not None and (hi.rate - lo.rate) / hi.rate > task.rate_tolerance:
        mid = probe(math.sqrt(lo.rate * hi.rate))
        lo, hi = (mid, hi) if mid.met else (lo, mid)
    out.sustained_rate, out.at_sustained, out.sustained_at_least = lo.rate, lo, hi is None
    if hi is not None:
        out.first_miss = hi
    else:   # stopped by the cap, not by a miss: the answer says so (trial 42: a bare '≥' looked like the goal's)
        out.headroom_cap = HEADROOM_MAX_FACTOR
    return out


def search_candidate(task: ServingTask) -> CandidateResult:
    """The highest rate one replica of (hardware, tp, pp) sustains under the SLO, the replicas the goal rate
    needs and what they cost (module docstring). Pure: the same task gives the same result, in any process."""
    out, max_replicas = rate_search(task)
    if out.limits:
        return out
    if task.start_replicas is None:
        start = math.ceil(task.goal_rate / out.sustained_rate - 1e-9)
    else:
        start = task.start_replicas
    try:
        at_goal = _size_replicas(task, out, start, max_replicas, _min_replicas(task))
    except CostModelError as exc:   # r replicas' mesh the hardware cannot hold (one that does not tile a TPU slice)
        out.reason, out.limits = f"error: {exc}", ("error",)
        return out
    if at_goal is None:
        out.reason, out.limits = (f"devices: {max_replicas} replicas (max_devices={task.max_devices}) miss the SLO "
                                  f"at {task.goal_rate:g} requests/s"), ("devices",)
        return out
    out.at_goal, out.replicas = at_goal, at_goal.replicas
    out.devices_used = out.replicas * task.size
    out.n_devices = rented_devices(out.devices_used, task.node.devices_per_node)
    device = task.node.device
    out.cost_usd = out.n_devices * task.usd_per_device_hour
    spare_j = (out.n_devices - out.devices_used) * device.idle_power_w * at_goal.duration_s
    busy_j = at_goal.energy_j * (out.replicas if task.unit is not None else 1)  # a unit's run: one of `replicas`
    out.energy_j = (busy_j + spare_j) / at_goal.duration_s * HOUR_S if at_goal.duration_s > 0 else 0.0
    out.power_w = out.n_devices * busy_power_w(device)
    if task.max_power_w is not None and out.power_w > task.max_power_w:
        out.reason, out.limits = f"power: {fmt_watts(out.power_w)} > {fmt_watts(task.max_power_w)}", ("power",)
        return out
    out.feasible = True
    return out


def objective_key(objective: str) -> Callable[[CandidateResult], tuple]:
    """Feasible first by the objective (cost or energy per hour, devices, or time = e2e p99 at the goal), ties by
    cost, devices and then the higher sustained rate; then the misses, those that run before those that cannot,
    the closer first: the higher sustained rate, then the higher attainment at the lowest rate that missed (a
    candidate that sustains no rate at all is still nearer the goal the more of its requests met the SLO; that
    probe, at the floor, stops early once its misses exceed what the percentile allows, so the attainment taken
    is what is known then, the share of its requests already finished within the SLO, RunSummary.
    attainment_at_least, a lower bound; at equal bounds, often 0 when requests take longer than the stop, the
    faster replica first: the output tokens per second it generated up to the stop, EarlyStop.
    output_tokens_per_s). Deterministic: the same tasks give the same order."""
    def key(c: CandidateResult) -> tuple:
        if not c.feasible:
            order = {"power": 0, "devices": 1, "slo": 2, "memory": 3, "error": 4}
            miss = c.first_miss
            nearest = miss.attainment_at_least if miss is not None else 0.0
            speed = miss.stopped.output_tokens_per_s if miss is not None and miss.stopped is not None else 0.0
            # searched first (it was simulated: it sustains a rate, or missed at one), then those that never ran
            # (one replica needs more devices than allowed, no KV cache, not priced): trial 29 listed four
            # `devices` candidates that never ran above a simulated one at 77% of the goal
            ran = bool(c.probes or c.proven_misses or c.at_sustained is not None)
            return (1, 0 if ran else 1, order.get(c.limits[0] if c.limits else "error", 5), -c.sustained_rate,
                    -nearest, -speed,
                    c.hardware, c.tp, c.pp, c.experts.label(), c.precision, _unit_label(c))
        e2e = c.at_goal.row.get("e2e_p99_s") if c.at_goal else None
        metric = {"cost": c.cost_usd, "devices": c.n_devices, "energy": c.energy_j, "time": e2e}[objective]
        return (0, metric, c.cost_usd, c.n_devices, -c.sustained_rate, c.hardware, c.tp, c.pp, c.experts.label(),
                c.precision, _unit_label(c))
    return key


def _unit_label(c: CandidateResult) -> str:
    """'' for a colocated replica (before every unit at equal keys), else the unit's label."""
    return c.unit.label() if c.unit is not None else ""


def what_if_key(objective: str) -> Callable[[CandidateResult], tuple]:
    """objective_key less what a what-if does not price (`what_if` re-sizes the replicas without a rate search,
    so every what-if's sustained_rate is 0, and the names after it are the plan's tie-break, not a price):
    feasible first by the objective, cost and devices; the misses by what they miss. Two what-ifs equal on this
    key tie, and a tie keeps the plan's order (planner.explain: a flip is the what-if's doing)."""
    full = objective_key(objective)

    def key(c: CandidateResult) -> tuple:
        k = full(c)
        return k[:4] if k[0] == 0 else k[:3]
    return key


def candidate_shapes(plan: PlanFile, devices_per_node: int) -> list[tuple[int, int, ReplicaExperts]]:
    """(tp, pp, experts) replica shapes: the plan's search.tp / search.pp, or powers of two up to devices_per_node
    (a replica inside one node), kept where the strategy rules accept them (heads divide over tp, ...); for a
    mixture of experts, each with every expert layout of `expert_layouts`."""
    powers = [2**k for k in range(devices_per_node.bit_length()) if 2**k <= devices_per_node]
    tps = sorted(set(plan.search.tp or powers))
    pps = sorted(set(plan.search.pp or powers))
    out = []
    for tp in tps:
        for pp in pps:
            for experts in expert_layouts(plan, tp, pp):
                if check_strategy_shape(experts.strategy(tp, pp), plan.workload, serving=True) is None:
                    out.append((tp, pp, experts))
    return out


def expert_search_problem(plan: PlanFile, devices_per_node: int) -> tuple[str, str] | None:
    """(key, one line) when search.ep or search.attention_dp lists no value any searched replica can take (each
    divides the replica's tp; attention_dp > 1 needs pp 1), so a plan of a mixture of experts would have no
    candidate at all; None otherwise. `devices_per_node`: the largest of the plan's hardware (the default tp list)."""
    if plan.workload.model.moe is None:
        return None
    powers = [2**k for k in range(devices_per_node.bit_length()) if 2**k <= devices_per_node]
    tps = sorted(set(plan.search.tp or powers))
    pps = sorted(set(plan.search.pp or powers))
    allowed = sorted({d for tp in tps for d in range(1, tp + 1) if tp % d == 0})
    for key in ("ep", "attention_dp"):
        values = getattr(plan.search, key)
        if not values:
            continue
        usable = [v for v in values if any(tp % v == 0 for tp in tps)]
        listed = ", ".join(map(str, values))
        if not usable:
            return f"search.{key}", (f"[{listed}]: no value divides a searched tp ({', '.join(map(str, tps))}), so no "
                                     f"replica can take one; allowed: {', '.join(map(str, allowed))}")
        if key == "attention_dp" and 1 not in pps and 1 not in values:
            # trial 46: the values divided the tp; what they lacked was a pipeline of one stage
            return f"search.{key}", (f"[{listed}]: attention data parallelism runs at pp 1 only, and search.pp "
                                     f"[{', '.join(map(str, plan.search.pp or []))}] lists no 1, so no replica can "
                                     f"take one; allowed: [1] at this search.pp, or add 1 to search.pp")
    return None


def expert_layouts(plan: PlanFile, tp: int, pp: int) -> list[ReplicaExperts]:
    """The expert layouts searched for a replica of tp x pp devices: the default alone for a dense model; for a
    mixture of experts, each ep of search.ep (default 1 and tp: experts split by tp, or whole experts on each
    rank) that divides tp (a serving replica's expert grid is carved from its own tp ranks: ep x etp divides tp,
    runner.serving_expert_grid_problem; here etp = tp / ep, the grid filling the replica) times each
    attention_dp of search.attention_dp (default 1 and, at pp 1, tp) that divides tp; attention data parallelism
    runs at pp 1 only (config.check_expert_parallel)."""
    if plan.workload.model.moe is None:
        return [ReplicaExperts()]
    eps = sorted(set(plan.search.ep or [1, tp]))
    adps = sorted(set(plan.search.attention_dp or ([1, tp] if pp == 1 else [1])))
    out = []
    for ep in eps:
        if tp % ep:
            continue
        for adp in adps:
            if tp % adp or (adp > 1 and pp > 1):
                continue
            out.append(ReplicaExperts(ep=ep, etp=None if ep == 1 else tp // ep, attention_dp=adp))
    return out


def span_spec(spec: ServingSpec, goal_rate: float) -> ServingSpec:
    """The block every run of a serving plan simulates: arrivals over a fixed span of time, `duration_s` as
    given or `requests / goal rate` when the block gives a count. A fixed span (not a fixed count) loads one
    replica probed at rate r for as long as each of R replicas is loaded in the goal-rate run, so the two
    judge the same steady state; a fixed count would give the R replicas 1/R of the time to build queues. A block
    with both limits (arrivals stop at whichever comes first) spans the shorter: min(duration_s, requests / goal
    rate)."""
    if spec.requests is None:
        assert spec.duration_s is not None
        return spec
    span = spec.requests / goal_rate
    if spec.duration_s is not None:
        span = min(span, spec.duration_s)
    return spec.model_copy(update={"requests": None, "duration_s": span})


def serving_tasks(plan: PlanFile, hardware: Iterable[Any], sharing: SharingChoice,
                  kv_link: LinkSpec | None = None) -> list[ServingTask]:
    """One task per hardware choice x precision it can run (planner.precisions: the plan's `search.dtype`, or the
    workload's own dtype) x replica shape (planner.search.Hardware items). Each precision's reference workload
    is traced once (modeled_serving.serving_profile) and shared by its tasks. `kv_link`: the catalog entry of
    search.disaggregation.kv_transfer.link, every unit's KV link (None: each hardware's own)."""
    from llmsim.modeled_serving import serving_profile  # llmsim.modeled_serving imports the cost model's serving side

    assert plan.serving is not None and plan.goal.request_rate is not None
    spec = span_spec(plan.serving, float(plan.goal.request_rate))
    seed = spec.seed if spec.seed is not None else 0
    traced: dict[str, tuple[Workload, WorkloadProfile]] = {}
    tasks = []
    for hw in hardware:
        for cand in candidates(plan, hw.device)[0]:
            if cand.label not in traced:
                traced[cand.label] = serving_profile(cand.workload, sharing)
            reference, profile = traced[cand.label]
            tasks += [ServingTask(hardware=hw.name, tp=tp, pp=pp, node=hw.node,
                                  usd_per_device_hour=hw.usd_per_device_hour, reference=reference, profile=profile,
                                  sharing=sharing, context_tokens=plan.workload.model.seq_len, spec=spec, seed=seed,
                                  goal_rate=float(plan.goal.request_rate), max_devices=plan.limits.max_devices,
                                  min_devices=plan.limits.min_devices,
                                  max_power_w=plan.limits.max_power_w, rate_tolerance=plan.rate_tolerance,
                                  precision=cand.label, options=plan.options.options, experts=experts,
                                  served=cand.workload)
                      for tp, pp, experts in candidate_shapes(plan, hw.devices_per_node)]
            tasks += [ServingTask(hardware=hw.name, tp=unit.prefill_tp, pp=1, node=hw.node,
                                  usd_per_device_hour=hw.usd_per_device_hour, reference=reference, profile=profile,
                                  sharing=sharing, context_tokens=plan.workload.model.seq_len, spec=spec, seed=seed,
                                  goal_rate=float(plan.goal.request_rate), max_devices=plan.limits.max_devices,
                                  min_devices=plan.limits.min_devices,
                                  max_power_w=plan.limits.max_power_w, rate_tolerance=plan.rate_tolerance,
                                  precision=cand.label, options=plan.options.options, unit=unit, served=cand.workload,
                                  kv_link=kv_link)
                      for unit in candidate_units(plan, hw.devices_per_node)]
    return tasks


def candidate_units(plan: PlanFile, devices_per_node: int) -> list[DisaggUnit]:
    """The disaggregated units of search.disaggregation (none without it): every prefill count x decode count x
    prefill side x decode side, a side being a tp from search.tp (default: the powers of two up to
    devices_per_node) with, for a mixture of experts, each expert layout a colocated replica of that tp at pp 1 is
    searched with (`expert_layouts`: search.ep x search.attention_dp, default ep 1 or tp x attention_dp 1 or tp),
    kept where the strategy rules accept it (as candidate_shapes keeps a replica's), and at most
    limits.max_devices devices in all (a larger unit could not be rented even once). The units priced are
    prefill counts x decode counts x S^2, S the sides (tp x layout) kept: for a dense model S is the tps; for a
    mixture of experts at the default tps 1, 2, 4, 8, S = 1 + 3 x 4 = 13 (narrow search.tp, search.ep or
    search.attention_dp to price fewer)."""
    return [u for u in _all_units(plan, devices_per_node) if u.devices <= plan.limits.max_devices]


def _all_units(plan: PlanFile, devices_per_node: int) -> list[DisaggUnit]:
    """candidate_units before limits.max_devices."""
    search = plan.search.disaggregation
    if search is None:
        return []
    sides = unit_sides(plan, devices_per_node)
    return [DisaggUnit(x, a, y, b, search.kv_transfer.layerwise, pe, de, search.kv_transfer.link)
            for x in sorted(set(search.prefill)) for y in sorted(set(search.decode))
            for a, pe in sides for b, de in sides]


def disaggregation_device_problem(plan: PlanFile, devices_per_node: list[int]) -> tuple[str, str] | None:
    """(key, one line) when every unit search.disaggregation's counts form takes more devices than
    limits.max_devices on every hardware choice (`devices_per_node`: each choice's), as search.tp [8] under
    max_devices 4 is refused (narrowing.device_floor_problem); None when a unit fits (counts no unit can use beside
    ones that fit are a note, unused_counts_note), or when no tp shards the model (no unit forms at all: the
    colocated replicas' own checks say why). Trial 48: it planned colocated replicas alone, with a note."""
    search = plan.search.disaggregation
    if search is None:
        return None
    units = [u for n in devices_per_node for u in _all_units(plan, n)]
    if not units or any(u.devices <= plan.limits.max_devices for u in units):
        return None
    least = min(units, key=lambda u: (u.devices, u.prefill + u.decode))
    cap = plan.limits.max_devices
    return "search.disaggregation", (
        f"prefill {_listed(search.prefill)}, decode {_listed(search.decode)} take at least {least.devices:,} devices "
        f"(the smallest unit: {least.prefill} prefill instance{'s' if least.prefill > 1 else ''} of tp "
        f"{least.prefill_tp} and {least.decode} decode instance{'s' if least.decode > 1 else ''} of tp "
        f"{least.decode_tp}), more than limits.max_devices={cap:,}; allowed: counts whose prefill + decode is at "
        f"most {cap // least.prefill_tp:,} (at tp {least.prefill_tp}), or a larger limits.max_devices")


def _listed(values: list[int]) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def unit_sides(plan: PlanFile, devices_per_node: int) -> list[tuple[int, ReplicaExperts]]:
    """(tp, experts) of one side of a searched unit (candidate_units): each tp of search.tp (default the powers of two
    up to devices_per_node) with each expert layout of expert_layouts at pp 1 that the strategy rules accept."""
    powers = [2**k for k in range(devices_per_node.bit_length()) if 2**k <= devices_per_node]
    return [(tp, experts) for tp in sorted(set(plan.search.tp or powers)) for experts in expert_layouts(plan, tp, 1)
            if check_strategy_shape(experts.strategy(tp, 1), plan.workload, serving=True) is None]


# How many requests a span must hold, per request the SLO's percentile lets miss, to say something about that
# percentile: a p99 judged on fewer than 1 / (1 - 0.99) = 100 requests is the worst request's (no miss allowed at
# all), and the count of misses among n is binomial, n (1 - p) +- sqrt(n p (1 - p)): with 3 allowed it is 3 +- 1.7,
# a verdict, with 1 a coin. Three per allowed miss (300 at p99, 30 at p90): a floor, not a confidence level; what
# it guards against is a span of a handful of requests (trial 29: 5 requests "sustained" 40 requests/s).
REQUESTS_PER_ALLOWED_MISS = 3


def short_span_note(plan: PlanFile) -> str | None:
    """A note when the span each simulation judges holds too few requests at the goal rate for the SLO's
    percentile (REQUESTS_PER_ALLOWED_MISS), else None."""
    if plan.serving is None or plan.goal.request_rate is None or plan.serving.slo is None:
        return None
    rate = float(plan.goal.request_rate)
    span = span_spec(plan.serving, rate).duration_s
    assert span is not None
    expected = span * rate
    percentile = plan.serving.slo.percentile
    needed = REQUESTS_PER_ALLOWED_MISS / (1 - percentile / 100) if percentile < 100 else math.inf
    if expected >= needed:
        return None
    want = f"{needed:,.0f} requests" if math.isfinite(needed) else "many requests"
    return (f"serving: each simulation judges {span:g} s at the goal's {rate:g} requests/s, about {expected:,.0f} "
            f"requests, too few to tell a p{percentile:g} (wanted: at least {want}, {REQUESTS_PER_ALLOWED_MISS} per "
            f"request the percentile lets miss): the answer may be noise; lengthen serving.duration_s (or requests)")


def unused_counts_note(plan: PlanFile, devices_per_node: list[int]) -> str | None:
    """The instance counts of search.disaggregation that no unit uses on any hardware choice (`devices_per_node`:
    each choice's), because every unit with them exceeds limits.max_devices (candidate_units leaves them out), in
    one note; None when every count is used, or when no tp shards the model (then no unit exists at all)."""
    search = plan.search.disaggregation
    if search is None:
        return None
    units = [u for n in devices_per_node for u in candidate_units(plan, n)]
    tps = sorted({tp for n in devices_per_node for tp, _ in unit_sides(plan, n)})
    if not tps:
        return None
    parts = []
    for side, counts, other, used in (("prefill", search.prefill, search.decode, {u.prefill for u in units}),
                                      ("decode", search.decode, search.prefill, {u.decode for u in units})):
        # the smallest unit holding n instances of this side: every instance at the smallest tp, fewest of the other
        parts += [f"{side} {n} (at least {(n + min(other)) * tps[0]} devices)" for n in counts if n not in used]
    if not parts:
        return None
    return (f"search.disaggregation: instance counts {', '.join(parts)} left out: no unit with them fits "
            f"limits.max_devices = {plan.limits.max_devices}")


Mapper = Callable[[Callable[[ServingTask], CandidateResult], list[ServingTask]], Iterable[CandidateResult]]


def plan_serving(tasks: list[ServingTask], objective: str, mapper: Mapper = map) -> list[CandidateResult]:
    """Every candidate searched (through `mapper`, e.g. an executor's map) and ranked by the objective."""
    results = list(mapper(search_candidate, tasks))
    return sorted(results, key=objective_key(objective))


def with_headroom(tasks: list[ServingTask], results: list[CandidateResult], objective: str) -> list[CandidateResult]:
    """`results` (ranked by plan_serving) with the headroom searched (`headroom`) of the winner and of every
    candidate tied with it on the objective, cost and devices, then ranked again: among those the tie-break is the
    higher sustained rate, which a rate search stopped at the goal ("≥ goal") does not know (trial 42: an H200 that
    sustains 36.7 requests/s lost the tie-break to an H100 at 32.2 by its name, both then '≥ 20')."""
    key = objective_key(objective)
    first = next((c for c in results if c.feasible), None)
    if first is None:
        return results
    by_shape = {t.shape: t for t in tasks}
    tied = key(first)[:4]   # (feasible, objective, cost, devices): what ranks before the sustained rate
    searched = [headroom(by_shape[c.shape], c) if c.feasible and key(c)[:4] == tied else c for c in results]
    return sorted(searched, key=key)


def what_if(task: ServingTask, result: CandidateResult, knob: str, factor: float) -> CandidateResult:
    """`result`'s replicas re-sized on hardware with `knob` x `factor` (the sensitivity table): the same shape,
    the fewest replicas from the chosen count that meet the SLO at the goal rate on the what-if hardware."""
    return search_candidate(replace(task, knob=knob, factor=factor, start_replicas=max(result.replicas, 1)))
