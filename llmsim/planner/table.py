"""Price a whole table of candidate configurations at once: numpy columns over the candidates.

The scalar path (search.evaluate) prices one configuration: `memory_breakdown`, then `estimate`. This
module gives the same numbers for thousands at once, through the same code:

* the candidates are grouped by the fields that fix a step's per-micro-batch work (tp, pp, cp, sp,
  micro_batch, recompute, schedule, virtual stages, split, and the node the devices sit on; GPipe with
  1F1B, whose work per micro-batch is the same): within a group only dp, ZeRO, the micro-batch count
  m = B / (dp x micro_batch) and (GPipe or 1F1B) the bubble and the micro-batches in flight vary;
* memory first, for every row (as search.evaluate, which prices the step only where the configuration
  fits): the step's work is built only for the groups with a row that fits;
* per such group, the cost model's own scalar functions build the work once (costmodel.work.train_work; the
  groups that differ only in the micro-batch size together, `_families`: work.train_works builds what the size
  does not change once for them, and `_family` reads each stage's parameters and bytes once; its
  phase times asked once per distinct question: compute.phase_memo; the stage parameter counts likewise for
  the whole table: memory.params_memo, memory.stage_param_counts; and each stage's per-step terms, which the
  micro-batch size, recompute and sp do not change: work.stage_step_memo), and
  price what does not depend on dp, ZeRO or m: each stage's compute and exposed communication per
  micro-batch (`step._per_microbatch`), its parameters (the counts train_work read), and the memory terms
  (`memory.stage_memory_terms`, shared by the groups of one `_stage_key`, which differ only by the node, and by
  the hardware choices of a search through `shared`, the memory terms per FP8 GEMM layout trait of the device:
  precision.any_layout; a dense model's memory terms in two parts, those without activations per
  `_static_key` and the activation terms per what sizes them: `_stage_terms`); each data-parallel
  group is placed once (`_dp_placements`) and each of its collectives priced once per distinct size
  (`_dp_times`, `Comm.time`), over every width of the table (`_DpPrices`), ZeRO-3's exposed time computed on
  the ZeRO-3 rows only;
* the formulas that combine them are the cost model's array-generic ones, called with columns:
  `step.zero3_exposed`, `step.data_parallel_exposed`, `step.combine_stages`, `pipeline.bubble_fraction`,
  `pipeline.in_flight_microbatches`, `work.accumulate_time`, `work.optimizer_step_time`,
  `memory.stage_memory`, `energy.step_energy_j`, and the planner's `goal_metrics` (defined here, used by
  search.evaluate too), once per width: the rows of the groups with the same count of distinct stages
  together (`_combine_by_width`), so that a row has its own group's stage slots, not the widest group's.

Exact by construction where the grouping holds; a float8 workload's groups also fix m (its weights' FP8
casts are spread over the micro-batches), so dp and ZeRO vary in them (its FP8 weight copies are sharded by
ZeRO-3 in memory.stage_memory, a column formula); where the grouping does not hold (a TPU torus, whose axes
are laid out together and whose ZeRO spans slices; a mixture of experts; inference, whose batch per replica
follows dp) every configuration is its own group, still through the same code (torus, MoE; a MoE group's
memory terms, which read none of dp, ZeRO or m, still shared per `_stage_key`: `_memory_plan`), or the search
prices it row by row with search.evaluate (inference). tests/planner/test_table.py checks both paths agree to 1e-9 on
thousands of random configurations.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from llmsim.costmodel import CostModelError
from llmsim.costmodel import moe, precision
from llmsim.costmodel.compute import phase_memo, workload_rates
from llmsim.costmodel.energy import step_energy_j
from llmsim.costmodel.power import busy_power_w
from llmsim.costmodel.memory import (StageMemoryTerms, memory_stages, params_memo, stage_activation_terms,
                                     stage_memory, stage_memory_terms, stage_param_counts)
from llmsim.costmodel.pipeline import bubble_fraction, in_flight_microbatches
from llmsim.costmodel.plan import DTYPE_BYTES
from llmsim.costmodel.step import (StageParts, _per_microbatch, combine_stages, data_parallel_exposed, zero3_exposed,
                                   zero3_unit_terms, zero3_unit_times)
from llmsim.costmodel.work import (Comm, Groups, _optimizer_totals, accumulate_time, optimizer_shard,
                                   optimizer_step_time, stage_step_memo, train_works)
from llmsim.planner.collector import collector_paused
from llmsim.planner.config import PlanFile
from llmsim.planner.columns import ChainedConfigs
from llmsim.planner.space import Config

HOUR_S = 3600.0


def _steps(plan: PlanFile) -> int:
    """Optimizer steps to train on goal.tokens tokens (the last one partial counts whole)."""
    return math.ceil((plan.goal.tokens or 0) / plan.workload.tokens_per_step)


def goal_metrics(plan: PlanFile, n: int, price: float, step_s: float, energy_step_j: float,
                 tpot_s: float | None) -> dict[str, float]:
    """time_to_goal_s, cost_usd, energy_j, tokens_per_s, latency_s of one priced configuration.

    Training: the whole run (steps x step time; cost = devices x hours x price). Inference: a service
    held for one hour at its throughput: cost and energy per hour, time_to_goal_s = the step latency
    (decode: one token step; prefill: the step), the figure max_step_latency_s limits.
    """
    w = plan.workload
    tps = w.tokens_per_step / step_s
    if w.mode == "train":
        steps = _steps(plan)
        total = steps * step_s
        return dict(time_to_goal_s=total, cost_usd=n * price * total / HOUR_S, energy_j=steps * energy_step_j,
                    tokens_per_s=tps, latency_s=step_s)
    latency = tpot_s if (w.mode == "decode" and tpot_s) else step_s
    return dict(time_to_goal_s=latency, cost_usd=n * price, energy_j=energy_step_j / step_s * HOUR_S,
                tokens_per_s=tps, latency_s=latency)


# The priced columns, one value per candidate (NaN where not priced: over memory, or a cost-model error).
MEMORY_PARTS = ("params", "grads", "optimizer", "activations", "kv_cache")
PRICED = ("step_time_s", "compute_time_s", "comm_time_s", "bubble_time_s", "other_time_s", "mfu", "time_to_goal_s",
          "cost_usd", "energy_j", "tokens_per_s", "latency_s")
COLUMNS = ("memory_bytes", *MEMORY_PARTS, "fits", "power_w", *PRICED)


@dataclass
class PricedTable:
    """Columns over the candidates (`COLUMNS`, numpy arrays of len(configs)); `error[i]` the cost model's
    message where it could not price candidate i (else ""). `configs`: the candidates as chains (a Config made
    for a row when read)."""

    configs: ChainedConfigs
    columns: dict[str, np.ndarray]
    error: list[str]

    def __len__(self) -> int:
        return len(self.configs)


# The Config fields that vary inside a group; every other field (and any dimension added to Config later)
# is part of the group key, so a new dimension splits groups until it is known not to change the work.
VARY_IN_GROUP = ("hardware", "n_devices", "dp", "zero", "microbatches")
KEY_FIELDS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in VARY_IN_GROUP)
GROUP_FIELDS = len(KEY_FIELDS) + 1
_key_of = operator.attrgetter(*KEY_FIELDS)
_key_less_micro_batch = operator.attrgetter(*(f for f in KEY_FIELDS if f != "micro_batch"))  # a chain's
_SCHEDULE_AT = KEY_FIELDS.index("schedule")
_MICRO_BATCH_AT = KEY_FIELDS.index("micro_batch")
_NODE_AT = len(KEY_FIELDS)  # group_key: the devices per node of the group's cluster, after the key fields


def _whole(ctx) -> bool:
    """Whether every configuration is its own group (module docstring): a torus, inference, a mixture of
    experts (whose gradient traffic and optimizer shard follow dp: moe.edp_equivalent_share)."""
    w = ctx.plan.workload
    return ctx.hardware.node.is_torus or w.mode != "train" or w.model.moe is not None


def _row_fields(ctx) -> tuple[str, ...]:
    """The fields that vary in a group (VARY_IN_GROUP) which its key holds all the same, but for the node: where
    every configuration is its own group (`_whole`) dp, ZeRO and the micro-batch count; with float8 the
    micro-batch count (the weights' FP8 casts, once per step, are spread over the micro-batches' forwards:
    compute.phase_times), so only dp and ZeRO vary in its groups; else none."""
    if _whole(ctx):
        return ("dp", "zero", "microbatches")
    if precision.is_fp8(ctx.plan.workload):
        return ("microbatches",)
    return ()


def group_key(ctx, c: Config) -> tuple:
    """The fields that fix the per-micro-batch work (KEY_FIELDS), the devices per node of the group's cluster
    (a part of one node is a node of that many devices: ClusterSpec.with_devices) and `_row_fields`. Without
    row fields GPipe is keyed as 1F1B: they run the same work per micro-batch; only the bubble and the
    micro-batches in flight differ, which _combine computes per row from its own schedule."""
    fields = _row_fields(ctx)
    key = (*_key_of(c), min(c.n_devices, ctx.hardware.devices_per_node), *(getattr(c, f) for f in fields))
    if not fields and c.schedule == "gpipe":
        return key[:_SCHEDULE_AT] + ("1f1b",) + key[_SCHEDULE_AT + 1:]
    return key


def _grouped(ctx, configs: ChainedConfigs) -> tuple[dict[tuple, int], list[int], np.ndarray, "_Rows"]:
    """(each group's key (group_key), numbered in the order of its first row; each group's first row; each
    row's group; the rows' columns). group_key is called once per distinct (KEY_FIELDS, node, row fields),
    not once per row: the rows are first told apart by those as integer columns (a row's kind: its chain's
    KEY_FIELDS less the micro-batch, read once per chain by one C-level pass and numbered by a dict, with the
    row's micro-batch; `_Rows.of` reads what a kind fixes once). `configs` as any sequence: each its own chain."""
    configs = ChainedConfigs.of_configs(configs)
    number: dict[tuple, int] = {}
    chain_kind = np.fromiter((number.setdefault(k, len(number)) for k in map(_key_less_micro_batch, configs.heads)),
                             dtype=np.int64, count=len(configs.heads))
    kind_code = chain_kind[configs.chain_of] * (int(configs.micro_batch.max(initial=0)) + 1) + configs.micro_batch
    _, kinds, kind_of = np.unique(kind_code, return_index=True, return_inverse=True)
    kind_of = kind_of.reshape(-1)
    rows = _Rows.of(configs, kind_of, kinds)
    columns = {"dp": rows.dp, "zero": rows.zero, "microbatches": rows.m}
    node = np.minimum(rows.devices, ctx.hardware.devices_per_node)
    subgroups, sub_of = _distinct([kind_of, node, *(columns[f] for f in _row_fields(ctx))])
    keys: dict[tuple, int] = {}
    firsts: list[int] = []
    group_of_sub = np.empty(len(subgroups), dtype=np.int64)
    for s in np.argsort(subgroups).tolist():  # in the order of their first rows: groups numbered as they appear
        row = int(subgroups[s])
        g = keys.setdefault(group_key(ctx, configs[row]), len(keys))
        if g == len(firsts):
            firsts.append(row)
        group_of_sub[s] = g
    return keys, firsts, group_of_sub[sub_of], rows


@dataclass
class _Group:
    """What a group's configurations share, as Python numbers (one cost-model call each)."""

    plan: object                     # a costmodel Plan of the group's (its tp, cp, pp: _dp_placements; its
    #                                  family's first where `_family` built several)
    fabric: object
    dp_group: object | None          # the work's own data-parallel group where the key pins dp (torus)
    node: int                        # devices per node of the group's cluster
    steps: list[tuple]               # per distinct stage: (index, compute_mb, comm_mb, backward_mb, the
    #                                  parameters the accumulation pass adds (memory.accumulated_params),
    #                                  parameters the optimizer updates (moe.optimizer_params), optimizer share, grad bytes, ZeRO-3 weight bytes, ZeRO 1/2 gather bytes,
    #                                  grad bytes of a model chunk's layers, of the head's, of the embedding's, sync,
    #                                  copies: how many of the pipeline's stages are this one)
    error: str = ""


ZERO3_FIELDS = ("units", "window_f", "window_b", "first_f", "first_b", "last_f", "last_b", "layer_params",
                "embed_params", "head_params", "layer_grads", "unit_embed_grads", "unit_head_grads")  # zero3_unit_terms
STEP_FIELDS = ("index", "compute_mb", "comm_mb", "backward_mb", "accumulated", "updated", "share", "grads", "weights",
               "gathered", "chunk_grads", "head_grads", "embed_grads", *ZERO3_FIELDS, "sync", "copies")
# the step fields _combine reads on every row; the others on the ZeRO-3 rows only (ZeRO-3's unit terms) or per
# (group, dp) pair (the bytes of the data-parallel collectives: _dp_times)
ROW_STEP_FIELDS = ("index", "compute_mb", "comm_mb", "backward_mb", "accumulated", "updated", "share", "sync",
                   "copies")
MEMORY_FIELDS = ("index", "params", "trainable", "elem", "grad_elem", "state_bytes", "zero3_params", "zero3_grads",
                 "fp8_copy", "layers", "per_layer_activation", "working", "edge_activation", "kv_cache", "expert_params")


def price_table(ctx, configs: Sequence[Config] | ChainedConfigs, shared: dict[tuple, object] | None = None,
                progress: Callable[[int, int], None] | None = None) -> PricedTable:
    """Memory, step and goal metrics of every configuration in `configs` (one hardware choice: `ctx`, a
    search.Context), as columns. The same numbers as search.evaluate row by row.

    Memory first, for every row (the stage memory terms of each group); then the step only for the rows
    that fit, as evaluate does: a group none of whose rows fits is never timed (no `train_work`), its step
    columns NaN and its error "". `shared`: the stage memory terms of earlier calls for the
    same plan file (they do not depend on the hardware), filled in here; pass one dict to the calls of every
    hardware choice."""
    configs = ChainedConfigs.of_configs(configs)
    if not len(configs):
        return PricedTable(configs, {k: np.empty(0, dtype=bool if k == "fits" else float) for k in COLUMNS}, [])
    if ctx.plan.workload.mode != "train":
        raise ValueError("inference is priced row by row (search.evaluate): its batch per replica follows dp")
    with params_memo(), collector_paused():  # params_memo: the micro-batch, dp, recompute ... do not change them
        return _price_table(ctx, configs, {} if shared is None else shared, progress)


PROGRESS_EVERY_S = 5.0  # price_table's progress: at most one call per this many seconds while groups are timed


def _price_table(ctx, configs: ChainedConfigs, shared: dict[tuple, object],
                 progress: Callable[[int, int], None] | None = None) -> PricedTable:
    """price_table of a non-empty training table, inside params_memo."""
    n = len(configs)
    keys, first_rows, group_of, rows = _grouped(ctx, configs)
    firsts = [configs[i] for i in first_rows]
    # the memory terms follow the key less the node (_stage_key drops it): found by it before a Plan is built,
    # and the device's FP8 GEMM layouts (the float8 weight copies: _stage_terms)
    layouts = precision.any_layout(ctx.hardware.device)
    terms, tkeys = [], []
    by_plan = _memory_plan(ctx)  # off a torus the row fields do not change the memory terms
    for k, g in keys.items():
        tkeys.append(k[:_NODE_AT] + k[_NODE_AT + 1:] if by_plan else k[:_NODE_AT])
        if ("terms", tkeys[-1], layouts) not in shared:
            shared[("terms", tkeys[-1], layouts)] = _stage_terms(ctx, firsts[g], shared)
        terms.append(shared[("terms", tkeys[-1], layouts)])
    out = _memory(ctx, rows, terms, group_of)
    fit = np.flatnonzero(out["fits"])  # the rows to time, and their groups (`local`: numbered 0.. among them)
    timed, local = np.unique(group_of[fit], return_inverse=True)
    # the groups' phase times (pp, the schedule, the split and recompute do not change them) and their stages'
    # per-step terms (the micro-batch size, recompute and sp do not change them)
    with phase_memo(), stage_step_memo():
        clusters: dict[int, object] = {}  # off a torus, the cluster of n devices (and its fabric) built once
        timed_keys = list(keys)
        timed_keys = [timed_keys[g] for g in timed.tolist()]
        groups: list[_Group] = [None] * len(timed_keys)  # type: ignore[list-item]
        rows_of = np.bincount(local.reshape(-1), minlength=len(timed_keys)).tolist()  # fitting rows per timed group
        done, last = n - len(fit), time.monotonic()  # the rows over memory are done: screened, never timed
        for family in _families(ctx, timed_keys):
            for at, grp in zip(family, _family(ctx, [firsts[timed[at]] for at in family], shared, clusters)):
                groups[at] = grp
                done += rows_of[at]
            if progress is not None and time.monotonic() - last >= PROGRESS_EVERY_S:
                progress(done, n)
                last = time.monotonic()
    error = [""] * n
    if any(g.error for g in groups):  # the rows of groups the cost model could not price carry its message
        for i, g in zip(fit.tolist(), local.tolist()):
            error[i] = groups[g].error
    step = _combine_by_width(ctx, rows.take(fit), groups, local.reshape(-1))
    for k in PRICED:
        out[k] = np.full(n, np.nan)
        out[k][fit] = step[k]
    return PricedTable(configs, out, error)


def _combine_by_width(ctx, r: "_Rows", groups: list[_Group], group_of: np.ndarray) -> dict[str, np.ndarray]:
    """`_combine` of rows `r`, called once per width: the rows of the groups with the same count of distinct
    stages (`_Group.steps`) together. One call over all of them would give every row the widest group's stage
    slots (an interleaved pipeline of 32 stages has 32 where most groups have 3), the missing ones zeros that
    never win (`_slots`) and cost as much as real ones; each row's numbers are the same either way (its own
    slots in the same order; a zero slot only adds 0.0). Rows of groups that could not be priced (no
    stages) are NaN, as `_combine` makes them. The widths share one `_DpPrices`: a data-parallel group placed,
    or a collective priced, for one width is not placed or priced again for another (the two tables of
    scenarios/plan-train-70b.yaml asked ~39,000 prices width by width, ~11,000 of them distinct)."""
    out = {k: np.full(len(group_of), np.nan) for k in PRICED}
    prices = _DpPrices()
    width = np.array([len(g.steps) for g in groups], dtype=np.int64)
    row_width = width[group_of]
    for w in np.unique(row_width).tolist():
        if w == 0:
            continue
        members = np.flatnonzero(width == w)
        renumber = np.full(len(groups), -1, dtype=np.int64)
        renumber[members] = np.arange(len(members))
        at = np.flatnonzero(row_width == w)
        part = _combine(ctx, r.take(at), [groups[g] for g in members.tolist()], renumber[group_of[at]], prices)
        for k in PRICED:
            out[k][at] = part[k]
    return out


@dataclass
class _Rows:
    """The configurations' numbers as integer columns (and the schedule's name), read once."""

    dp: np.ndarray
    zero: np.ndarray
    m: np.ndarray          # micro-batches per step
    devices: np.ndarray
    pp: np.ndarray
    v: np.ndarray          # model chunks per device (Config.v)
    dp_cp: np.ndarray      # the weights' replicas: gradients and ZeRO span dp x cp (plan.Plan.dp_cp)
    edp: np.ndarray        # expert data parallel cp*dp/ep (plan.Plan.edp; etp = tp: space.Config)
    zero_dp: np.ndarray    # ZeRO shards over dp x cp less the TPU slices' replicas (Plan.zero_dp)
    schedule: np.ndarray

    _FIELDS = ("dp", "zero", "n_devices")  # the fields that vary in a group but not along a chain

    @classmethod
    def of(cls, configs: ChainedConfigs, kind_of: np.ndarray, kinds: np.ndarray) -> "_Rows":
        """The columns of `configs`, of which `kind_of[i]` numbers row i's KEY_FIELDS (its kind) and `kinds[k]`
        is a row of kind k: what those fix (pp, cp, ep, the chunks per device, the schedule) read once per
        kind (from its chain's head); dp, ZeRO and the devices, which a chain's members share, once per chain
        in one flat pass (np.fromiter); the micro-batch count the rows' own."""
        heads, chain_of = configs.heads, configs.chain_of
        get = operator.attrgetter(*cls._FIELDS)
        table = np.fromiter(itertools.chain.from_iterable(map(get, heads)), dtype=np.int64,
                            count=len(heads) * len(cls._FIELDS)).reshape(len(heads), len(cls._FIELDS))
        dp, zero, devices = table[chain_of].T
        m = configs.microbatches
        reps = [heads[i] for i in chain_of[kinds].tolist()]
        pp, cp, ep, v = (np.array([getattr(c, f) for c in reps], dtype=np.int64)[kind_of]
                         for f in ("pp", "cp", "ep", "v"))
        # only several TPU slices have replicas (Config.dcn_replicas, of fields a chain's members share)
        dcn = np.array([c.dcn_replicas if c.slices > 1 else 1 for c in heads], dtype=np.int64)[chain_of]
        dp_cp = cp * dp
        return cls(dp, zero, m, devices, pp, v, dp_cp, np.maximum(dp_cp // ep, 1), np.maximum(dp_cp // dcn, 1),
                   np.array([c.schedule for c in reps])[kind_of])

    def take(self, at: np.ndarray) -> "_Rows":
        return _Rows(**{f.name: getattr(self, f.name)[at] for f in dataclasses.fields(self)})


def _stage_key(plan, whole: bool):
    """What a stage's memory terms and parameters (memory.stage_memory_terms, stage_params) depend on: the
    plan less dp, the ZeRO stage and the micro-batch count (the grouping's premise), with the schedule only
    through its chunks per device (Plan.v, which fixes the default split); the node is not in it, so groups
    that differ only by the node share them. The whole plan where the grouping is not exact."""
    if whole:
        return plan
    return replace(plan, dp=1, zero=0, microbatches=1, schedule="interleaved" if plan.v > 1 else "1f1b",
                   virtual_stages=plan.v)


def _memory_plan(ctx) -> bool:
    """Whether a stage's memory terms are keyed by the whole plan (`_stage_key`): on a torus (its slices) only.
    memory.stage_memory_terms of a training stage reads neither dp, the ZeRO stage nor the micro-batch count (they
    enter through memory.stage_memory's columns; a mixture of experts' edp too), so where every configuration is
    its own group for its work (`_whole`: a mixture of experts) its memory terms are still shared by the
    configurations of one `_stage_key`: the MoE plan of issue 18 (qwen3-30b-a3b, 512 h100-sxm) built them once per
    configuration, 76% of its pricing (107 of 140 s under cProfile at max_devices 64: branch moeSpeed)."""
    return ctx.hardware.node.is_torus


def _static_key(c: Config) -> tuple:
    """What a dense training stage's memory terms other than the activations (`memory.stage_memory_terms` with
    activations=False) depend on, of the fields `_stage_key` keeps: tp (= etp), pp, the chunks per device
    (Config.v, which fixes the default split), the split and ep; not the micro-batch, recompute, sp or cp,
    which only the activation terms read (`memory.stage_activation_terms`, sized by
    `memory.activation_plan_key`). tests/planner/test_table.py checks the split terms against the whole."""
    return (c.tp, c.pp, c.v, c.stage_layers, c.ep)


def _stage_terms(ctx, c: Config, shared: dict[tuple, object]) -> list[StageMemoryTerms] | list[tuple]:
    """The memory terms (memory.stage_memory_terms) of each stage of `c`'s group that can be the busiest, kept
    in `shared`, which the hardware choices of one precision share; keyed by the device trait they read (the
    FP8 GEMM layouts: precision.any_layout). A dense model's (not float8, grouping exact): the terms without
    activations once per `_static_key`, the activation terms once per what sizes them (the stage's kind; tp,
    cp, micro-batch, sp and recompute: memory.activation_plan_key), as tuples of MEMORY_FIELDS; else the
    whole terms once per `_stage_key`."""
    w = ctx.plan.workload
    device = ctx.hardware.device
    layouts = precision.any_layout(device)
    whole = _whole(ctx)
    if whole or precision.is_fp8(w) or w.model.moe is not None:
        plan = c.plan()
        skey = ("memory", _stage_key(plan, _memory_plan(ctx)), layouts)
        memory = shared.get(skey)
        if memory is None:
            memory = shared[skey] = [stage_memory_terms(w, ctx.profile, ctx.sharing, plan, ctx.options, st,
                                                        device=device)
                                     for st in memory_stages(w, plan)]
        return memory  # type: ignore[return-value]
    plan = None  # built only where a part is computed
    skey = ("static", *_static_key(c), layouts)
    static = shared.get(skey)
    if static is None:
        plan = c.plan()
        static = shared[skey] = [stage_memory_terms(w, ctx.profile, ctx.sharing, plan, ctx.options, st,
                                                    activations=False, device=device)
                                 for st in memory_stages(w, plan)]
    sized_by = ("activations", c.tp, c.cp, c.micro_batch, c.sp, c.recompute)
    out = []
    for t in static:  # type: ignore[attr-defined]
        akey = (*sized_by, t.kind if c.pp > 1 else "only")
        act = shared.get(akey)
        if act is None:
            plan = plan or c.plan()
            act = shared[akey] = stage_activation_terms(w, ctx.sharing, plan, ctx.options, t.index)
        out.append((t.index, t.params, t.trainable, t.elem, t.grad_elem, t.state_bytes, t.zero3_params,
                    t.zero3_grads, t.fp8_copy, t.layers, *act, t.kv_cache, t.expert_params))
    return out


def _families(ctx, keys: list[tuple]) -> list[list[int]]:
    """The groups of `keys` (their group_key, in order) by their key less the micro-batch size, each family in
    the order of its groups, the families in the order of their first ones: the groups `_family` builds at once.
    Every group is its own family where the key holds row fields (`_row_fields`: the work follows the
    micro-batch count, dp or ZeRO, which the first rows of a family's groups need not share)."""
    if _row_fields(ctx):
        return [[g] for g in range(len(keys))]
    families: dict[tuple, list[int]] = {}
    for g, k in enumerate(keys):
        families.setdefault(k[:_MICRO_BATCH_AT] + k[_MICRO_BATCH_AT + 1:], []).append(g)
    return list(families.values())


def _family(ctx, members: list[Config], shared: dict[tuple, object], clusters: dict[int, object]) -> list[_Group]:
    """Each group's shared numbers (`_Group`) from the cost model's scalar functions, for the groups whose first
    rows are `members` (a `_families` family: their keys differ only in the micro-batch size). Their work is
    built at once (costmodel.work.train_works: the first member's plan with each member's micro-batch size; by
    the groups' premise what is priced here does not follow dp, ZeRO or the micro-batch count, in which the
    first members may differ); what the micro-batch size does not change of each stage (the parameter counts
    train_work read: memory.stage_param_counts, one per stage and params_plan_key inside price_table's
    params_memo; the gradient and parameter bytes; the sharing syncs) is read once, from the first member's
    work, whose stages stand for the others' (train_works builds the same stages alike for every size).
    `shared` keeps one object per distinct fabric; `clusters` the clusters (off a torus) of the earlier groups'
    device counts (search.Hardware.cluster_of)."""
    w, hw, options = ctx.plan.workload, ctx.hardware, ctx.options
    c = members[0]
    plan = c.plan()
    whole = _whole(ctx)
    if c.topology:
        cluster = hw.cluster_of(c)
    else:  # off a torus only its device, fabric and devices per node matter here
        cluster = clusters.get(c.n_devices)
        if cluster is None:
            cluster = clusters[c.n_devices] = hw.cluster_of(c)
    try:
        works = train_works(w, ctx.profile, ctx.sharing, plan, cluster, [m.micro_batch for m in members], options)
    except CostModelError as exc:
        if len(members) > 1:  # each group its own message
            return [grp for m in members for grp in _family(ctx, [m], shared, clusters)]
        return [_Group(plan, cluster.fabric, None, 1, [], str(exc))]
    # one object per distinct fabric: the cached collective prices (Comm.time) find it by identity
    fabric = shared.setdefault(("fabric", cluster.fabric), cluster.fabric)
    elem = DTYPE_BYTES[w.dtype]
    work = works[0]
    syncs = [(s.stages, s.comm.time(fabric)) for s in work.syncs]  # each priced once, not once per stage
    ranked = work.v > 1  # interleaved: a stage's exposed reductions depend on its rank
    stages = work.stages
    # equal stages: the first stands for them (the first of equals), counted; a stage is told apart by its
    # StageWork and, where they apply, its sharing syncs and its rank (step.interleaved_reduce_exposed): the
    # same sum, in the same order, as step's over work.syncs
    keys: list = ([(id(st), sum(t for where, t in syncs if index in where) if syncs else 0, index if ranked else 0)
                   for index, st in enumerate(stages)] if syncs or ranked else list(map(id, stages)))
    copies = collections.Counter(keys)
    first = dict(zip(reversed(keys), reversed(range(len(keys)))))  # each key's first stage (the last one written)
    order = [(first[key], key[1] if syncs or ranked else 0, copies[key]) for key in dict.fromkeys(keys)]
    standing: dict[int, int] = {}  # each distinct StageWork: the first stage in `order` that it is
    for index, _, _ in order:
        standing.setdefault(id(stages[index]), index)
    fixed = {}  # per distinct StageWork (by that stage): what the micro-batch size does not change
    for at in standing.values():
        st = stages[at]
        # as train_work counted them (params_memo: one count per stage and params_plan_key)
        counts = stage_param_counts(w, ctx.profile, ctx.sharing, plan, at, options)
        trainable, experts = counts.trainable, counts.experts  # as train_work (a MoE group is whole)
        share = trainable / ctx.profile.trainable_params if ctx.profile.trainable_params else 0.0
        fixed[at] = (counts.accumulated, moe.optimizer_params(plan, trainable, experts, ctx.sharing.lora is None),
                     share, work.grad_bytes(st), work.param_bytes(st),
                     moe.data_parallel_params(plan, counts.params, experts) * elem,
                     st.layers * st.grad_bytes_layer, st.grad_bytes_head, st.grad_bytes_embed)
    out = []
    for work in works:
        steps, alike = [], {}
        for index, sync, count in order:  # in the order of their first stages
            at = standing[id(stages[index])]
            if at not in alike:
                st = work.stages[at]
                alike[at] = (*_per_microbatch(work, st, fabric), *fixed[at], *zero3_unit_terms(work, st, fabric))
            steps.append((index, *alike[at], sync, count))
        out.append(_Group(plan, fabric, work.dp_group if whole else None, cluster.devices_per_node, steps))
    return out


def _slots(per_group: list[list], fields: tuple[str, ...], group_of: np.ndarray,
           per_row: tuple[str, ...] | None = None) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Per stage slot (the k-th distinct stage of each group: `per_group[g]`, tuples or objects with `fields`),
    (the fields `per_row` (default: all) as columns over the rows, every field as a column over the groups); a
    group with fewer stages gets an empty stage (zeros: never the busiest, never the largest)."""
    width = max(len(items) for items in per_group)
    values = operator.attrgetter(*fields)
    empty = (0.0,) * len(fields)
    # every slot's values at once, (groups, width, fields): one flat pass over the groups' tuples (each value made a
    # float as an assignment would)
    flat = itertools.chain.from_iterable(
        itertools.chain.from_iterable(itertools.chain((item if isinstance(item, tuple) else values(item)
                                                       for item in items), itertools.repeat(empty, width - len(items))))
        for items in per_group)
    table = np.fromiter(flat, dtype=float, count=len(per_group) * width * len(fields)).reshape(
        len(per_group), width, len(fields))
    rows = [fields.index(f) for f in (fields if per_row is None else per_row)]
    out = []
    for k in range(width):
        by_group = np.ascontiguousarray(table[:, k, :].T)  # (fields, groups)
        # the row fields gathered in one pass: (row fields, rows), each a contiguous row
        gathered = np.take(by_group[rows], group_of, axis=1)
        out.append(({fields[i]: column for i, column in zip(rows, gathered)}, dict(zip(fields, by_group))))
    return out


def _memory(ctx, r: _Rows, terms: list[list[StageMemoryTerms]], group_of: np.ndarray) -> dict[str, np.ndarray]:
    """Every row's memory (the busiest stage, the first of equals, as memory_breakdown), `fits` and power."""
    hw = ctx.hardware
    out: dict[str, np.ndarray] = {}
    best_total = None
    for slot, _ in _slots(terms, MEMORY_FIELDS, group_of):
        st = StageMemoryTerms(kind="", train=True, experts_trainable=ctx.sharing.lora is None,
                              **{f: slot[f] for f in MEMORY_FIELDS if f not in ("index",)}, index=slot["index"])
        held = in_flight_microbatches(r.schedule, r.pp, r.m, r.v, slot["index"])
        parts = stage_memory(st, r.zero, r.dp_cp, r.zero_dp, held, r.edp)
        total = parts["params"] + parts["grads"] + parts["optimizer"] + parts["activations"] + parts["kv_cache"]
        if best_total is None:
            out.update(parts)
            best_total = total
            continue
        larger = total > best_total
        out.update({k: np.where(larger, v, out[k]) for k, v in parts.items()})
        best_total = np.where(larger, total, best_total)
    assert best_total is not None
    cap = hw.capacity
    out["memory_bytes"] = best_total
    out["fits"] = (best_total <= cap) if cap else np.ones(len(group_of), dtype=bool)
    out["power_w"] = r.devices * busy_power_w(hw.device)
    return out


def _combine(ctx, r: _Rows, groups: list[_Group], group_of: np.ndarray,
             prices: "_DpPrices | None" = None) -> dict[str, np.ndarray]:
    """The step and goal metrics (`PRICED`) of rows `r` (group_of[i]: row i's group in `groups`): the cost
    model's array-generic formulas over columns (module docstring); NaN where the group could not be priced.
    `prices`: the placements and collective prices of earlier calls on the same table (`_DpPrices`), added to."""
    prices = _DpPrices() if prices is None else prices
    w, hw, options = ctx.plan.workload, ctx.hardware, ctx.options
    # the distinct (group, dp) pairs in order, found as one integer each (np.unique of rows sorts far slower)
    span = int(r.dp.max()) + 1
    codes, pair_of = np.unique(group_of * span + r.dp, return_inverse=True)
    pair_of = pair_of.reshape(-1)
    pairs = np.column_stack([codes // span, codes % span])
    rates = workload_rates(hw.cluster(1), w)
    hides = hw.device.overlaps_communication
    optimizer_bytes, optimizer_ops = _optimizer_totals(ctx.profile)
    zero, m, dp_cp = r.zero, r.m, r.dp_cp
    shard = optimizer_shard(dp_cp, zero)
    fraction = bubble_fraction(r.schedule, r.pp, m, r.v)
    parts_list = []
    placement = _dp_placements(groups, [(int(g), int(d)) for g, d in pairs.tolist()], prices)
    reads = _dp_reads(placement[0], pair_of, _dp_needs(zero, dp_cp, r.v))
    memo = prices.memo
    # ZeRO-3's exposed seconds (step.zero3_exposed) computed on its own rows only, 0 elsewhere
    sharded = np.flatnonzero(zero >= 3)
    sharded_pair, sharded_group, sharded_m = pair_of[sharded], group_of[sharded], m[sharded]
    for slot, by_group in _slots([g.steps for g in groups], STEP_FIELDS, group_of, ROW_STEP_FIELDS):
        per_pair, per_pair3 = _dp_times(placement, by_group, pairs[:, 0], reads, memo)
        times = {name: t[pair_of] if isinstance(t, np.ndarray) else t for name, t in per_pair.items()}
        reduce = np.where(zero == 0, times["all-reduce"], times["reduce-scatter"])
        gather = np.where(((zero == 1) | (zero == 2)) & (dp_cp > 1), times["gather"], 0.0)
        zero3 = np.zeros(len(zero))
        if len(sharded):
            zero3[sharded] = zero3_exposed(sharded_m, hides, *(by_group[f][sharded_group] for f in ZERO3_FIELDS[:7]),
                                           *np.take(per_pair3, sharded_pair, axis=1))
        parts_list.append((slot["index"].astype(np.int64), StageParts(
            slot["compute_mb"], slot["comm_mb"],
            data_parallel_exposed(zero, hides, True, slot["backward_mb"], zero3, reduce,
                                  gather, r.v, r.pp, slot["index"],
                                  tuple(np.where(zero == 0, times[f"all-reduce {c}"], times[f"reduce-scatter {c}"])
                                        for c in CHUNKS)),
            accumulate_time(rates, slot["accumulated"], m, w.dtype, options),
            slot["sync"],
            optimizer_step_time(rates, slot["updated"], shard, w.dtype, options,
                                (optimizer_bytes * slot["share"], optimizer_ops * slot["share"])),
            slot["copies"])))
    t = combine_stages(m, fraction, r.pp, parts_list)
    step = t.compute + t.comm + t.bubble + t.other  # StepTimes.step
    devices = r.devices
    energy = step_energy_j(hw.device, devices, step, busy_s=t.device_busy)
    mfu = ctx.profile.model_flops_per_step / step / devices / rates.peak_flops
    metrics = goal_metrics(ctx.plan, devices, hw.usd_per_device_hour, step, energy, None)
    priced = np.array([not g.error for g in groups])[group_of]
    return {k: np.where(priced, val, np.nan)
            for k, val in dict(step_time_s=step, compute_time_s=t.compute, comm_time_s=t.comm, bubble_time_s=t.bubble,
                               other_time_s=t.other, mfu=mfu, **metrics).items()}


@dataclass
class _DpPrices:
    """What the `_combine` calls of one table share about data parallelism: the distinct fabrics (numbered),
    the distinct placed (fabric, data-parallel group) pairs (`placed`, numbered by `numbers`; `ids` the number of
    each placement question asked: `_dp_placements`) and the price of each collective asked of one (`memo`, keyed by that number: `_dp_times`). Pure caches of
    the cost model's own answers: a row's numbers are the same with a fresh one."""

    fabric_ids: dict[object, int] = dataclasses.field(default_factory=dict)
    ids: dict[tuple, int] = dataclasses.field(default_factory=dict)
    numbers: dict[tuple, int] = dataclasses.field(default_factory=dict)
    placed: list[tuple] = dataclasses.field(default_factory=list)
    memo: dict[tuple, object] = dataclasses.field(default_factory=dict)


def _dp_placements(groups: list[_Group], pairs: list[tuple[int, int]], prices: _DpPrices | None = None
                   ) -> tuple[np.ndarray, list[tuple]]:
    """Per (group, dp) pair, the index of its (fabric, data-parallel group) among the distinct ones, each
    placed once per distinct (fabric, node, tp, cp, pp, dp) by the cost model (`Groups.of`, which places dp
    from tp, cp, pp and the devices per node; a torus group's own); -1 where the group could not be priced. `prices` (`_DpPrices`) numbers them as
    earlier calls did, and keeps the new ones."""
    prices = _DpPrices() if prices is None else prices
    fabric_ids, ids, numbers, placed = prices.fabric_ids, prices.ids, prices.numbers, prices.placed
    group_fabric = [fabric_ids.setdefault(g.fabric, len(fabric_ids)) for g in groups]
    out = np.full(len(pairs), -1, dtype=np.int64)
    for p, (g, d) in enumerate(pairs):
        grp = groups[g]
        if grp.error:
            continue
        pl = grp.plan
        key = ((group_fabric[g], grp.node, pl.tp, pl.cp, pl.pp, d) if grp.dp_group is None
               else (group_fabric[g], grp.dp_group))
        at = ids.get(key)
        if at is None:  # degrees that place the same group on the same fabric share its number (and prices)
            group = grp.dp_group or Groups.of(replace(pl, dp=d), grp.node).dp
            at = ids[key] = numbers.setdefault((group_fabric[g], group), len(placed))
            if at == len(placed):
                placed.append((grp.fabric, group))
        out[p] = at
    return out, placed


CHUNKS = ("first", "middle", "last")  # a stage's model chunks, in the order their gradients are final
# ZeRO-3's per-unit collectives (step.zero3_unit_times): gathers, then reduce-scatters, of these units
ZERO3_TIMES = tuple(f"{op} {u}" for op in ("gather", "reduce") for u in ("mid", "first", "last", "only"))


# Each data-parallel collective _combine reads but ZeRO-3's: (op, the slot's byte columns it moves, summed). A
# model chunk's reduction (step.chunk_reduce_times): final first (with the head's), middle, last (with the
# embedding's). ZeRO-3's per-unit collectives come from step.zero3_unit_times (ZERO3_TIMES).
DP_COLLECTIVES = {"all-reduce": ("all-reduce", ("grads",)), "reduce-scatter": ("reduce-scatter", ("grads",)),
                  "gather": ("all-gather", ("gathered",)),
                  **{f"{op} {c}": (op, ("chunk_grads", *extra)) for op in ("all-reduce", "reduce-scatter")
                     for c, extra in zip(CHUNKS, (("head_grads",), (), ("embed_grads",)))}}


def _dp_needs(zero: np.ndarray, dp_cp: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Which rows read each data-parallel collective (_combine and step.data_parallel_exposed pick by the ZeRO
    stage and the chunks per device; a row's unread collectives are left 0 and never picked): ZeRO-0 the
    all-reduces, ZeRO 1/2 the reduce-scatters and (dp x cp > 1) the parameter gather, ZeRO-3 its per-unit
    collectives ("zero3"); the per-chunk reductions only with v > 1 (interleaved)."""
    chunked = v > 1
    out = {"all-reduce": zero == 0, "reduce-scatter": zero > 0, "gather": ((zero == 1) | (zero == 2)) & (dp_cp > 1),
           "zero3": zero >= 3}
    for c in CHUNKS:
        out[f"all-reduce {c}"] = (zero == 0) & chunked
        out[f"reduce-scatter {c}"] = ((zero == 1) | (zero == 2)) & chunked
    return out


def _distinct(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each distinct row of `columns`, each row's distinct number), by a lexsort (no row-wise
    np.unique)."""
    order = np.lexsort(columns[::-1])
    new = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        new[1:] = np.any(np.stack([col[order][1:] != col[order][:-1] for col in columns]), axis=0)
    distinct_of = np.empty(len(order), dtype=np.int64)
    distinct_of[order] = np.cumsum(new) - 1
    return order[new], distinct_of


def _dp_reads(where: np.ndarray, pair_of: np.ndarray, needs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per data-parallel collective (DP_COLLECTIVES, and "zero3": ZeRO-3's per-unit ones), the (group, dp) pairs
    with a row that reads it (`needs`, _dp_needs) and a placement (`where` >= 0: a priced group): the same for
    every stage slot of one _combine."""
    out = {}
    for name in (*DP_COLLECTIVES, "zero3"):
        pairs = np.zeros(len(where), dtype=bool)
        pairs[pair_of[needs[name]]] = True
        out[name] = np.flatnonzero(pairs & (where >= 0))
    return out


def _dp_times(placement: tuple[np.ndarray, list[tuple]], slot: dict[str, np.ndarray], pair_group: np.ndarray,
              reads: dict[str, np.ndarray], memo: dict[tuple, object]
              ) -> tuple[dict[str, np.ndarray | float], np.ndarray]:
    """Each data-parallel collective of one stage slot (DP_COLLECTIVES, and ZeRO-3's per-unit ones: ZERO3_TIMES),
    priced once per distinct (fabric and group, bytes) among the (group, dp) pairs with a row that reads it
    (`reads`, _dp_reads; `Comm.time`, step.zero3_unit_times; `memo` keeps each price for the other slots and
    widths of the same table, whose placements it indexes: `_DpPrices`), per pair: (DP_COLLECTIVES' by name,
    each 0 where no row of the pair reads it, a plain 0.0 where no row reads it at all; ZeRO-3's, (ZERO3_TIMES, pairs)). `slot`: the
    slot's fields over the groups, `pair_group` each pair's group."""
    where, placed = placement
    out: dict[str, np.ndarray | float] = {}
    for name, (op, parts) in DP_COLLECTIVES.items():
        at = reads[name]
        if not len(at):
            out[name] = 0.0
            continue
        per_pair = np.zeros(len(where))
        groups = pair_group[at]
        nbytes = slot[parts[0]][groups]
        for extra in parts[1:]:
            nbytes = nbytes + slot[extra][groups]
        place = where[at]
        firsts, distinct_of = _distinct([place, nbytes])
        priced = np.empty(len(firsts))
        for u, (p, size) in enumerate(zip(place[firsts].tolist(), nbytes[firsts].tolist())):
            key = (p, op, size)  # the same collective recurs in other slots: priced once (memo)
            t = memo.get(key)
            if t is None:
                fabric, group = placed[p]
                t = memo[key] = Comm(op, size, group).time(fabric)
            priced[u] = t
        per_pair[at] = priced[distinct_of]
        out[name] = per_pair
    per_pair3 = np.zeros((len(ZERO3_TIMES), len(where)))
    at = reads["zero3"]
    if not len(at):
        return out, per_pair3
    groups = pair_group[at]
    columns = [where[at], *(slot[f][groups] for f in ZERO3_FIELDS[7:])]
    firsts, distinct_of = _distinct(columns)
    priced3 = np.empty((len(firsts), len(ZERO3_TIMES)))
    for u, (p, *units) in enumerate(zip(*(col[firsts].tolist() for col in columns))):
        key = (p, "zero3", *units)
        t3 = memo.get(key)
        if t3 is None:
            fabric, group = placed[p]
            t3 = memo[key] = zero3_unit_times(group, fabric, *units)
        priced3[u] = t3
    per_pair3[:, at] = priced3[distinct_of].T
    return out, per_pair3
