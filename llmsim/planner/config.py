"""The plan file (contract: design.md "Plan file") as pydantic models, and its loader.

A plan names one workload (exactly as a scenario does), the goal it must meet, the hardware to choose
from with the user's own prices, the limits, and what to minimise. Loading is the scenario
loader's own (`load_file_model`: safe YAML, `--set`, validation), so a bad plan gets the same one-line message that
names the file, the key path and what is allowed, and exit code 2.

Beyond the contract keys a plan may narrow the search (`search`), set parameter sharing (`sharing`,
as in a scenario) and switch the cluster-simulation re-check off (`simulate`).
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_serializer, model_validator


from llmsim.config import (NAME_MAX_LENGTH, NAME_PATTERN, Sharing, Workload, _KeyedError, check_serving, check_sharing,
                           load_file_model, parse_file_model)
from llmsim.engine_options import EngineOptions, serving_attention_problem
from llmsim.errors import KeyedValueError, ScenarioError
from llmsim.serving.disagg_spec import CATALOG_LINK
from llmsim.hardware import Catalog
from llmsim.serving.schedulers import BUILTIN as BUILTIN_SCHEDULERS
from llmsim.serving.spec import ServingSpec, arrival_count_problem
from llmsim.strict import Count, StrictModel, sweep_repeats

PositiveInt = Count   # >= 1 and <= strict.MAX_DIMENSION, as every count of a scenario
PositiveFloat = Annotated[float, Field(gt=0)]

# Illustrative on-demand cloud prices, USD per device-hour, used only when a plan gives none. They are
# examples to make a first plan run, not facts: prices differ by provider, region, commitment and month.
# Put your own in `usd_per_device_hour`; the report says when an example price was used.
EXAMPLE_USD_PER_DEVICE_HOUR: dict[str, float] = {
    "a100-40gb": 1.5, "a100-80gb": 1.8, "h100-sxm": 3.5, "h200": 4.5,
    "tpu-v4": 3.2, "tpu-v5e": 1.2, "tpu-v5p": 4.2,
}


class _Strict(StrictModel):
    """Unknown keys refused, values frozen, no boolean for a number (llmsim.strict)."""


class Goal(_Strict):
    """Training: {tokens, deadline_days}. Inference (prefill, decode): {tokens_per_s, max_step_latency_s}.
    Serving (a `serving:` block): {request_rate}, met under the block's SLO.

    One model with all four keys (not a union), so a misplaced key gets a message that says which mode
    wants which keys instead of pydantic's union error list.
    """

    tokens: PositiveFloat | None = Field(None, description="train: tokens to train on")
    deadline_days: PositiveFloat | None = Field(None, description="train: wall-clock limit; null = none")
    tokens_per_s: PositiveFloat | None = Field(None, description="inference: tokens per second to sustain")
    max_step_latency_s: PositiveFloat | None = Field(
        None, description="inference: latency limit of one step (decode: one token step; prefill: the step)")
    request_rate: PositiveFloat | None = Field(
        None, description="serving: requests/s the service must sustain under serving.slo (the arrival rate)")

    @property
    def deadline_s(self) -> float | None:
        return None if self.deadline_days is None else self.deadline_days * 86400.0


class HardwareChoice(_Strict):
    """One device type the planner may choose, and how its nodes are built. Prices are the user's."""

    name: str = Field(description="catalog device name (llmsim hardware lists them)")
    usd_per_device_hour: PositiveFloat | None = Field(
        None, description="your price; default: an example price (EXAMPLE_USD_PER_DEVICE_HOUR), not a quote")
    devices_per_node: PositiveInt | None = Field(None, description="default: the catalog device's")
    intra_node: str | None = Field(None, description="link inside a node; default: the device's")
    inter_node: str | None = Field(None, description="link between nodes; default: the device's")


# The model counts tensors; a framework also needs memory it does not: the caching allocator's fragmentation,
# the CUDA context, cuBLAS/attention workspaces and NCCL buffers. vLLM's default is to use 90% of a GPU
# (EngineArgs / CacheConfig gpu_memory_utilization = 0.9, vllm/config.py), leaving 10% for exactly these;
# the plan keeps the same share free unless told otherwise (limits.memory_headroom).
DEFAULT_MEMORY_HEADROOM = 0.1

# A serving plan's rate search (planner.serve) stops when the highest rate found to meet the SLO and the
# lowest found to miss it differ by at most this fraction of the latter: a setting of the search (precision
# against simulations spent: each halving of it costs one more simulation per candidate), not a fact.
DEFAULT_RATE_TOLERANCE = 0.05

# What a serving plan searches (beside hardware and replicas), and the arrivals it plans for: the rate is the goal,
# so a trace replay or a closed loop of clients has no place in one.
SERVING_SEARCH_KEYS = ("tp", "pp", "ep", "attention_dp", "dtype", "disaggregation")
PLAN_ARRIVAL_KINDS = ("poisson", "gamma", "constant")
NOT_A_SERVING_KEY = ("a serving plan searches hardware x dtype x tp x pp (x ep x attention_dp for a mixture of "
                     f"experts) x replicas: allowed search keys are {', '.join(SERVING_SEARCH_KEYS)}")


class Limits(_Strict):
    max_devices: PositiveInt = Field(4096, description="most devices one configuration may use")
    min_devices: PositiveInt = Field(1, description="fewest devices one configuration may use (devices rented: whole "
                                                    "nodes); equal to max_devices, exactly that many: the cluster "
                                                    "you have")
    max_power_w: PositiveFloat | None = Field(None, description="most watts the devices may draw at full load")
    memory_headroom: float = Field(DEFAULT_MEMORY_HEADROOM, ge=0, lt=1,
                                   description="fraction of device memory kept free (allocator fragmentation, CUDA "
                                               "context, workspaces, communication buffers); default 0.1, the "
                                               "share vLLM leaves by default (gpu_memory_utilization 0.9)")
    _given_null: frozenset[str] = PrivateAttr(default=frozenset())   # limits written null (= left out)

    @model_validator(mode="wrap")
    @classmethod
    def _null_is_unset(cls, data: Any, handler: Any) -> "Limits":
        """A null limit is the limit left out, its default, as max_power_w's null (its default) always was: a fresh
        user's `min_devices: null` ("no floor") was refused. Which ones were null is kept for planner.run.plan_notes:
        max_devices null is the default 4,096, a ceiling, not "no limit"."""
        nulls = frozenset(k for k, v in data.items() if v is None) if isinstance(data, dict) else frozenset()
        out = handler({k: v for k, v in data.items() if v is not None} if nulls else data)
        out._given_null = nulls
        return out

    @model_validator(mode="after")
    def _min_within_max(self) -> "Limits":
        if self.min_devices > self.max_devices:   # trial 41: a plan could not pin the device count
            raise KeyedValueError("min_devices", f"{self.min_devices:,} is more than max_devices "
                                                 f"({self.max_devices:,}); allowed: 1 to max_devices (equal to pin "
                                                 f"the count)")
        return self


Recompute = Literal["none", "selective", "selective-op", "selective-dots", "full"]
Schedule = Literal["gpipe", "1f1b", "interleaved"]


class PlanKVTransfer(_Strict):
    """How a searched disaggregated unit's KV cache moves (serving.disaggregation.kv_transfer of a scenario): over
    `link` for every unit searched, else over each hardware choice's own links, intra_node when the unit fits one
    node, else inter_node."""

    link: str | None = Field(None, description="a catalog link (llmsim hardware lists them) every searched unit's "
                                               "KV cache crosses; default each hardware choice's intra_node link "
                                               "when the unit fits one node, else its inter_node link "
                                               "(serving.disaggregation.kv_transfer.link)",
                             json_schema_extra=CATALOG_LINK)
    layerwise: bool = Field(False, description="send each layer's KV as soon as the prefill has computed it "
                                               "(serving.disaggregation.kv_transfer.layerwise)")


class DisaggregationSearch(_Strict):
    """search.disaggregation of a serving plan: prefill-decode disaggregated units searched beside the colocated
    replicas (planner.serve). A unit is x prefill instances of tp a and y decode instances of tp b on one
    hardware choice (x in `prefill`, y in `decode`, a and b each from search.tp), pp 1; for a mixture of experts
    each side takes each expert layout (ep, etp, attention_dp) a colocated replica of its tp is searched with
    (planner.serve.candidate_units)."""

    prefill: list[PositiveInt] = Field(min_length=1, description="prefill instances per unit to search")
    decode: list[PositiveInt] = Field(min_length=1, description="decode instances per unit to search")
    kv_transfer: PlanKVTransfer = Field(default_factory=PlanKVTransfer,
                                        description="how a prompt's KV cache moves (layerwise)")

    @model_validator(mode="before")
    @classmethod
    def _counts(cls, data: Any) -> Any:
        """prefill and decode are sweep lists of instance counts (_refuse_bad_sweeps); one count stands for a list
        of it, as search.tp's does (trial 46: `prefill=2` was told 'expected a list')."""
        scalars = _scalar_keys(data, ("prefill", "decode"))
        for key in ("prefill", "decode"):   # trial 48: `prefill: {a: 1}` was told 'expected a list' alone
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                raise _KeyedError(key, "a mapping, not a list; allowed: a list of instance counts, integers >= 1 "
                                       "(e.g. [1, 2]), or one count")
        if scalars:
            data = {key: [value] if key in scalars else value for key, value in data.items()}
        return _refuse_bad_sweeps(data, ("prefill", "decode"), "an instance count", scalars)


def _refuse_bad_sweeps(data: Any, keys: tuple[str, ...], what: str, scalars: frozenset[str] = frozenset(),
                       allowed: str = "integers >= 1") -> Any:
    """The integer sweep lists `keys` of a search mapping `data`: a boolean (`[true]`, which pydantic's lax mode reads
    as 1) and a repeated value (which would search the same candidates twice) are refused, as a scenario's sweep
    lists refuse repeats (strict.sweep_repeats). Raises _KeyedError naming `key[i]`, or `key` for a key in `scalars`
    (the user gave one value, not a list: `--set search.tp=true`); returns `data` unchanged."""
    if not isinstance(data, dict):
        return data
    for key in keys:
        values = data.get(key)
        if not isinstance(values, list):
            continue
        for i, v in enumerate(values):
            if isinstance(v, bool):
                raise _KeyedError(key if key in scalars else f"{key}[{i}]",
                                  f"{str(v).lower()} is a boolean, not {what} (allowed: {allowed})")
        problem = sweep_repeats(values)
        if problem is not None:
            raise _KeyedError(key, problem)
    return data


def _scalar_keys(data: Any, keys: tuple[str, ...] | None = None) -> frozenset[str]:
    """The keys of a search mapping given one value instead of a list (SearchSpace._sweeps makes it a list of it);
    `keys`: only those (default: every key but disaggregation, a mapping)."""
    if not isinstance(data, dict):
        return frozenset()
    return frozenset(key for key, value in data.items() if (key in keys if keys is not None else
                                                            key != "disaggregation")
                     and isinstance(value, (int, float, str)))


# What each list of `search` takes, for the message of a value of the wrong kind (`tp: {a: 1}`, `sp: [1]`)
SEARCH_VALUES = {"zero": "0, 1, 2, 3", "recompute": "none, selective, selective-op, selective-dots, full",
                 "schedule": "gpipe, 1f1b, interleaved", "sp": "true, false", "virtual_stages": "integers >= 2",
                 "dtype": "float32, bfloat16, float16, float8, float4"}


class SearchSpace(_Strict):
    """Narrow the enumerated degrees (null = the default: every value the model and batch allow).

    Defaults: tp = powers of two up to devices_per_node that divide the heads; pp = divisors of the
    layers and powers of two up to the layers (where they do not divide, the default split and
    Megatron-LM's first/last-stage counts are searched: planner.space.split_candidates); cp = 1, 2, 4, 8
    (1 for decode); dp = divisors of the batch; micro_batch = divisors of the per-replica batch;
    virtual_stages = 2..4 for interleaved (a stated one: any v >= 2 that forms an interleaved pipeline of the
    model, planner.narrowing); ep (mixture-of-experts workloads) = the divisors of the routed
    experts, with the expert tensor-parallel size = tp (Megatron-Core's default); dtype = the workload's
    (planner.precisions: the FP8 recipe and which hardware can run it). A serving plan of a mixture of experts
    searches its replicas' expert layouts instead (planner.serve.expert_layouts): ep = 1 and tp (the grid
    filling the replica's tp ranks, etp = tp / ep) and attention_dp = 1 and tp (at pp 1); search.ep and
    search.attention_dp narrow them.
    """

    tp: list[PositiveInt] | None = None
    pp: list[PositiveInt] | None = None
    cp: list[PositiveInt] | None = None
    dp: list[PositiveInt] | None = None
    zero: list[Literal[0, 1, 2, 3]] | None = None
    micro_batch: list[PositiveInt] | None = None
    recompute: list[Recompute] | None = None
    schedule: list[Schedule] | None = None
    virtual_stages: list[Annotated[int, Field(ge=2)]] | None = None
    sp: list[bool] | None = None
    ep: list[PositiveInt] | None = Field(None, description="expert-parallel sizes (MoE workloads; default: the "
                                         "divisors of the routed experts; expert tensor parallel = tp)")
    attention_dp: list[PositiveInt] | None = Field(None, description="attention data-parallel sizes of a serving "
                                                   "plan's mixture-of-experts replicas (default: 1 and tp at pp 1; "
                                                   "values not dividing tp are left out)")
    dtype: list[Literal["float32", "bfloat16", "float16", "float8", "float4"]] | None = Field(
        None, description="precisions (default: the workload's dtype); float8 runs the workload's fp8 recipe, else "
                          "the device's default (mxfp8 on Blackwell, delayed elsewhere); hardware without FP8 "
                          "has no float8 candidates; float4 runs the workload's fp4 recipe (default nvfp4): "
                          "weight-only for inference where the tensor cores do not take it, no candidate for "
                          "training there")
    disaggregation: DisaggregationSearch | None = Field(
        None, description="serving plans: prefill-decode disaggregated units searched beside the colocated "
                          "replicas, {prefill: [instances], decode: [instances], kv_transfer: {layerwise}}; each "
                          "side's tp from search.tp, pp 1; default none (colocated replicas only)")

    @model_validator(mode="before")
    @classmethod
    def _sweeps(cls, data: Any) -> Any:
        """The searched degrees are sweep lists: no booleans, no repeats (_refuse_bad_sweeps); no list is empty (an
        empty one would silently mean the default, every value). One value stands for a list of it (`--set
        search.tp=8` searches tp 8 alone: trial 43 was told 'expected a list'), as a scenario's sweeps take one."""
        scalars = _scalar_keys(data)
        if isinstance(data, dict):
            data = {key: [value] if key in scalars else value for key, value in data.items()}
            for key, values in data.items():
                if key == "disaggregation" or key not in cls.model_fields:
                    continue
                allowed = SEARCH_VALUES.get(key, "integers >= 1")
                if isinstance(values, dict):   # trial 46: `tp: {a: 1}` was told 'expected a list' alone
                    raise _KeyedError(key, f"a mapping, not a list; allowed: a list of {allowed} (e.g. "
                                           f"[{allowed.split(', ')[0].replace('integers >= ', '')}]), or one value")
                if isinstance(values, list) and not values:
                    raise _KeyedError(key, "an empty list searches nothing; allowed: at least one value, or leave "
                                           "the key out for the default")
                if key == "sp" and isinstance(values, list):   # lax mode reads 1 as true: sp is a boolean axis
                    for i, v in enumerate(values):
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            raise _KeyedError(key if key in scalars else f"{key}[{i}]",
                                              f"{v} is a number, not a boolean (allowed: true, false)")
                if isinstance(values, list) and key in ("recompute", "schedule", "sp", "dtype"):
                    # as tp [8, 8]: the same candidates searched twice (a boolean as the file writes it)
                    problem = sweep_repeats([str(v).lower() if isinstance(v, bool) else v for v in values])
                    if problem is not None:
                        raise _KeyedError(key, problem)
        data = _refuse_bad_sweeps(data, ("zero",), "a ZeRO stage", scalars, SEARCH_VALUES["zero"])
        data = _refuse_bad_sweeps(data, ("virtual_stages",), "a count of virtual stages", scalars,
                                  SEARCH_VALUES["virtual_stages"])   # trial 47: it said "integers >= 1"
        return _refuse_bad_sweeps(data, ("tp", "pp", "cp", "dp", "micro_batch", "ep", "attention_dp"),
                                  "a parallel degree or size", scalars)

    @model_validator(mode="wrap")
    @classmethod
    def _scalar_errors_at_the_key(cls, data: Any, handler: Any) -> Any:
        """A bad value given as one value, not a list (`--set search.tp=0`, `schedule: foo`), is named at its key,
        `search.tp`, not at `search.tp[0]`, an index of a list the user did not write (_sweeps makes the list)."""
        scalars = _scalar_keys(data)
        try:
            return handler(data)
        except ValidationError as exc:
            if not scalars:
                raise
            errors = [{k: v for k, v in e.items() if k in ("type", "loc", "input", "ctx")} for e in exc.errors()]
            for e in errors:
                if e["loc"][:1] and e["loc"][0] in scalars and e["loc"][1:2] == (0,):
                    e["loc"] = (e["loc"][0], *e["loc"][2:])
            raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]

    @model_serializer(mode="wrap")
    def _without_unset_disaggregation(self, handler: Any) -> dict[str, Any]:
        """The resolved plan (plan.yaml) of a plan without search.disaggregation is the one written before the key
        existed: a null `disaggregation` is left out."""
        data = handler(self)
        if isinstance(data, dict) and "disaggregation" in data and data["disaggregation"] is None:
            del data["disaggregation"]
        return data


class PlanFile(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)]
    workload: Workload
    sharing: Sharing = Field(default_factory=Sharing)
    goal: Goal
    hardware: list[HardwareChoice] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    objective: Literal["cost", "time", "energy", "devices"] = "cost"
    top_k: PositiveInt = 5
    csv_top: PositiveInt = Field(
        20, description="plan.csv keeps the feasible Pareto front and the best csv_top configurations of each "
                        "hardware choice (default 20); plan.parquet holds every configuration evaluated")
    search: SearchSpace = Field(default_factory=SearchSpace)
    options: EngineOptions = Field(default_factory=EngineOptions,
                                   description="the modeled software choices every candidate is priced with (attention "
                                               "kernel, fp32 main grads, gradient-accumulation fusion, fp32 params, "
                                               "compile, sampler, all_reduce): the keys of a modeled backend's "
                                               "settings; best.yaml's backends carry them")
    simulate: bool = Field(True, description="re-check the top_k with the SimPy cluster simulation")
    serving: ServingSpec | None = Field(None, description="a serving goal: the scenario's serving block (lengths, "
                                                          "arrival kind, scheduler, KV cache, slo); the rate is "
                                                          "goal.request_rate, the replicas are searched")
    rate_tolerance: float = Field(DEFAULT_RATE_TOLERANCE, gt=0, lt=1,
                                  description="serving: the rate search stops when the highest rate that meets "
                                              "the SLO and the lowest that misses it are within this fraction")

    @model_validator(mode="before")
    @classmethod
    def _serving_attention(cls, data: Any) -> Any:
        """A serving plan's options.attention is one of the fused kernels a serving iteration prices: a value
        that is not, a known kernel or none, is named with those (engine_options.serving_attention_problem), not
        with every kernel a training plan allows."""
        if isinstance(data, dict) and isinstance(data.get("serving"), dict) and isinstance(data.get("options"), dict) \
                and "attention" in data["options"]:
            problem = serving_attention_problem(data["options"]["attention"])
            if problem:
                raise _KeyedError("options.attention", problem)
        return data

    @model_validator(mode="before")
    @classmethod
    def _serving_plan_keys(cls, data: Any) -> Any:
        """A serving plan's mistyped search key or arrival kind is named with what a serving plan allows
        (SERVING_SEARCH_KEYS, PLAN_ARRIVAL_KINDS), not with every key a training plan searches or every arrival a
        scenario replays."""
        if not isinstance(data, dict) or not isinstance(data.get("serving"), dict):
            return data
        search = data.get("search")
        if isinstance(search, dict):
            for key, value in search.items():
                if key not in SearchSpace.model_fields:
                    raise _KeyedError(f"search.{key}", f"unknown key; allowed: {', '.join(SERVING_SEARCH_KEYS)}")
                if key not in SERVING_SEARCH_KEYS and value is not None:
                    # before its values are checked: `schedule: [foo]` was told the schedules a training plan takes
                    raise _KeyedError(f"search.{key}", NOT_A_SERVING_KEY)
        arrival = data["serving"].get("arrival")
        kind = arrival.get("kind") if isinstance(arrival, dict) else None
        if kind is not None and kind not in PLAN_ARRIVAL_KINDS + ("trace", "concurrency"):  # those two: own words
            raise _KeyedError("serving.arrival.kind", f"{kind!r} is not one of the allowed values "
                                                      f"(allowed: {', '.join(PLAN_ARRIVAL_KINDS)})")
        return data

    @model_validator(mode="before")
    @classmethod
    def _goal_rate_is_the_arrival_rate(cls, data: Any) -> Any:
        """A serving plan's arrival rate is goal.request_rate: filled in, so the block validates as a scenario's."""
        goal = data.get("goal") if isinstance(data, dict) else None
        if isinstance(goal, dict) and "concurrency" in goal:
            raise _KeyedError("goal.concurrency", "a serving plan's goal is a request rate, not a closed loop's "
                                                  "clients: write goal.request_rate (allowed: request_rate)")
        if not isinstance(data, dict) or not isinstance(data.get("serving"), dict):
            return data
        arrival = data["serving"].get("arrival")
        if isinstance(arrival, dict) and arrival.get("kind") == "concurrency":
            raise _KeyedError("serving.arrival.kind", "a plan's goal is a rate: a closed loop (concurrency) is not "
                                                      f"planned (allowed: {', '.join(PLAN_ARRIVAL_KINDS)})")
        if not isinstance(arrival, dict):
            return data
        if not isinstance(goal, dict):
            # the goal's own check names it (missing, or not a mapping); the arrival gets a stand-in rate so that the
            # same mistake is not counted again under serving.arrival (trial 29: "and 1 more problem")
            if "rate" in arrival or arrival.get("kind") == "trace":
                return data
            return {**data, "serving": {**data["serving"], "arrival": {**arrival, "rate": 1.0}}}
        if "rate" in arrival:
            raise _KeyedError("serving.arrival.rate", "a plan's rate is its goal: write goal.request_rate "
                                                      "and leave serving.arrival.rate out")
        rate = goal.get("request_rate")
        if arrival.get("kind") == "trace":
            return data  # the after-check refuses it
        if rate is None:
            raise _KeyedError("goal.request_rate", "required key is missing: a serving plan takes {request_rate}")
        serving = data["serving"]
        usable = isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate < math.inf
        if not usable:
            # goal.request_rate's own check names the bad value; the arrival gets a stand-in so that the same
            # mistake is not reported a second time under a key the user never wrote (serving.arrival.rate)
            return {**data, "serving": {**serving, "arrival": {**arrival, "rate": 1.0}}}
        # a count or span that is itself bad (0, negative, text) is left to its own field's check, which names it:
        # here it would read as a rate expecting too few requests (trial 29: duration_s -3 blamed the goal's rate)
        problem = arrival_count_problem(*(v if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                          else None for v in (serving.get("requests"), serving.get("duration_s"))),
                                        [float(rate)], at_least_one=True)
        if problem is not None:  # the rate the plan states is its goal: the error names that key
            key, message = problem
            raise _KeyedError("goal.request_rate" if key == "arrival.rate" else f"serving.{key}", message)
        return {**data, "serving": {**serving, "arrival": {**arrival, "rate": rate}}}

    @model_validator(mode="after")
    def _check(self) -> "PlanFile":
        if self.serving is None and self.search.disaggregation is not None:
            raise _KeyedError("search.disaggregation", "prefill-decode disaggregation is searched in serving plans "
                                                       "(a serving: block and goal.request_rate) only")
        if self.serving is not None:
            self._check_serving()
        elif self.goal.request_rate is not None:
            raise _KeyedError("goal.request_rate", "a serving goal needs a serving: block (lengths, scheduler, "
                                                   "slo) beside the workload")
        train = self.workload.mode == "train" and self.serving is None
        g = self.goal
        if self.serving is not None:
            wanted, unwanted = ("request_rate",), ("tokens", "deadline_days", "tokens_per_s", "max_step_latency_s")
            what = "a serving plan takes {request_rate}"
        elif train:
            wanted, unwanted = ("tokens",), ("tokens_per_s", "max_step_latency_s")
            what = "training takes {tokens, deadline_days}"
        else:
            wanted, unwanted = ("tokens_per_s",), ("tokens", "deadline_days")
            what = f"{self.workload.mode} takes {{tokens_per_s, max_step_latency_s}}"
        mode = "serving" if self.serving is not None else repr(self.workload.mode)
        for key in unwanted:
            if getattr(g, key) is not None:
                raise _KeyedError(f"goal.{key}", f"not a goal of mode {mode}: {what}")
        for key in wanted:
            if getattr(g, key) is None:
                raise _KeyedError(f"goal.{key}", f"required key is missing: {what}")
        self._check_search_ep()
        problem = check_sharing(self.sharing, self.workload.model)  # e.g. lora target gate on a GELU model
        if problem is not None:
            raise _KeyedError(f"sharing.{problem[0]}", problem[1])
        names = [h.name for h in self.hardware]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise _KeyedError(f"hardware[{i}].name", f"{name!r} is listed twice")
        return self

    def _check_search_ep(self) -> None:
        """search.ep: expert parallelism needs a mixture of experts whose routed experts each size divides
        (the scenario's rule, llmsim.strategy); search.attention_dp: a serving plan of a mixture of experts
        (Strategy.attention_dp's rules)."""
        adps = self.search.attention_dp if self.search is not None else None
        if adps and any(d > 1 for d in adps):
            if self.serving is None:
                raise _KeyedError("search.attention_dp", "attention data parallelism is searched in serving plans "
                                                         "(a serving: block) only; allowed here: [1]")
            if self.workload.model.moe is None:
                raise _KeyedError("search.attention_dp", "attention data parallelism is modeled for a "
                                                         "mixture-of-experts model only (this one is dense); "
                                                         "allowed: [1]")
        sizes = self.search.ep if self.search is not None else None
        if not sizes:
            return
        moe = self.workload.model.moe
        if moe is None:
            if any(ep > 1 for ep in sizes):
                raise _KeyedError("search.ep", "expert parallelism needs a mixture-of-experts model "
                                               "(workload.model.moe); this one is dense (allowed: [1], or omit "
                                               "search.ep)")
            return
        allowed = [d for d in range(1, moe.experts + 1) if moe.experts % d == 0]
        for i, ep in enumerate(sizes):
            if ep not in allowed:
                raise _KeyedError(f"search.ep[{i}]", f"{ep} does not divide the {moe.experts} routed experts; "
                                                     f"allowed: {', '.join(map(str, allowed))}")

    def _check_serving(self) -> None:
        """The rules a serving goal adds: a scenario's serving rules, an SLO, a synthetic arrival at the goal's
        rate, replicas and strategy left to the search (tp and pp; a mixture of experts' ep and attention_dp), a
        built-in scheduler."""
        s = self.serving
        assert s is not None
        problem = check_serving(s, self.workload, "mode" in self.workload.model_fields_set)
        if problem is not None:
            raise _KeyedError(*problem)
        if s.arrival.kind == "trace":
            raise _KeyedError("serving.arrival.kind", "a plan's goal is a rate: trace replay is not planned "
                                                      f"(allowed: {', '.join(PLAN_ARRIVAL_KINDS)})")
        if s.slo is None:
            raise _KeyedError("serving.slo", "required key is missing: a serving plan meets an SLO "
                                             "{ttft_s, tpot_s, percentile} (or the run-level itl_s, queue_s)")
        if "replicas" in s.model_fields_set:
            raise _KeyedError("serving.replicas", "the plan searches the replicas: leave it out")
        if s.disaggregation is not None:
            raise _KeyedError("serving.disaggregation", "a plan searches the deployment: write "
                                                        "search.disaggregation {prefill: [instances], decode: "
                                                        "[instances]} instead (each side's tp from search.tp)")
        pps = self.search.pp
        if s.speculative is not None and pps and 1 not in pps:
            # the serving simulation prices speculative decoding at pp 1 only (config.check_serving_strategy)
            raise _KeyedError("search.pp", f"[{', '.join(map(str, pps))}]: serving.speculative is modeled at pp 1 "
                                           f"only, so no candidate can run it (allowed: a list with 1, or no "
                                           f"serving.speculative)")
        disagg = self.search.disaggregation
        if disagg is not None and s.speculative is not None:
            raise _KeyedError("search.disaggregation", "the disaggregated simulation runs no speculative decoding "
                                                       "(serving.speculative): allowed: one of the two")
        if disagg is not None and s.scheduler.kind == "static":   # ServingSpec._count's refusal, at the plan's key
            kinds = ", ".join(k for k in BUILTIN_SCHEDULERS if k != "static")
            raise _KeyedError("search.disaggregation", f"static batching is not modeled with disaggregation (a decode "
                                                       f"instance admits requests every iteration), and "
                                                       f"serving.scheduler.kind is static (allowed: "
                                                       f"serving.scheduler.kind {kinds}, or omit "
                                                       f"search.disaggregation)")
        if disagg is not None and pps and 1 not in pps:
            raise _KeyedError("search.disaggregation", f"disaggregated units run at pp 1, and search.pp "
                                                       f"[{', '.join(map(str, pps))}] lists no 1 (allowed: add 1 to "
                                                       f"search.pp, or omit search.disaggregation)")
        if s.scheduler.kind not in BUILTIN_SCHEDULERS:
            raise _KeyedError("serving.scheduler.kind", f"unknown scheduler {s.scheduler.kind!r}; a plan "
                                                        f"allows: {', '.join(BUILTIN_SCHEDULERS)}")
        for axis in [k for k in SearchSpace.model_fields if k not in SERVING_SEARCH_KEYS
                     and getattr(self.search, k) is not None]:
            raise _KeyedError(f"search.{axis}", NOT_A_SERVING_KEY)
        if not self.simulate:
            raise _KeyedError("simulate", "a serving plan is found by simulation; it cannot be switched off")
        problem = serving_attention_problem(self.options.attention)
        if problem:
            raise _KeyedError("options.attention", problem)


def parse_plan(data: dict[str, Any], file: str = "<plan>") -> PlanFile:
    return parse_file_model(PlanFile, data, file)


def load_plan(path: str | Path, overrides: list[str] | None = None) -> PlanFile:
    """Load and validate a plan file: safe YAML, `--set` overrides, schema and cross-key rules."""
    try:
        return load_file_model(PlanFile, path, overrides, other_kind=("strategies", "run"))
    except ScenarioError as exc:
        if exc.key != "hardware_catalog":
            raise
        # a scenario's key: a plan takes hardware files on its command line (one catalog for every choice)
        raise ScenarioError(exc.file, exc.key, f"{exc.message} (a plan takes hardware files of its own devices with "
                                               f"`llmsim plan PLAN.yaml --hardware FILE`)") from None


def check_hardware(plan: PlanFile, catalog: Catalog, file: str) -> None:
    """Device and link names exist in the catalog and every device can be priced (a ScenarioError otherwise).

    float8 is the exception: a device without FP8 tensor cores (or without MX units, for the mxfp8 recipe) just
    has no float8 candidates (planner.precisions); the plan is refused only when no hardware choice has any."""
    from llmsim.costmodel.compute import rates_problem
    from llmsim.planner.precisions import candidates, plan_dtypes

    search = plan.search.disaggregation
    link = search.kv_transfer.link if search is not None else None
    if link is not None and link not in catalog.links:
        raise ScenarioError(file, "search.disaggregation.kv_transfer.link",
                            f"unknown link {link!r}; allowed: {', '.join(catalog.links)}")
    devices, tori = [], []
    for i, h in enumerate(plan.hardware):
        try:
            cluster = catalog.cluster(h.name, 1, h.devices_per_node, h.intra_node, h.inter_node)
            device = cluster.device
        except ScenarioError as exc:  # keyed hardware / intra_node / inter_node: where in the plan
            key = "name" if exc.key == "hardware" else exc.key
            hint = (" (a device or link of your own: its hardware file, with --hardware FILE)"
                    if exc.message.startswith("unknown ") else "")   # trial 43
            raise ScenarioError(file, f"hardware[{i}].{key}", exc.message + hint) from None
        devices.append(device)
        if cluster.is_torus:
            tori.append(h.name)
        lacking = [d for d in plan_dtypes(plan)  # float8 / float4: decided per device by planner.precisions
                   if d not in ("float8", "float4") and not device.peak_flops.get(d)]  # type: ignore[call-overload]
        if lacking or not device.memory_bw_bytes_per_s:   # which one is missing, as `run` says it (trial 32)
            problem = rates_problem(device, lacking[0] if lacking else plan.workload.dtype)
            raise ScenarioError(file, f"hardware[{i}].name", problem or f"device {h.name!r} has no catalog peak "
                                                                        f"FLOP/s or memory bandwidth")
    unpriced = [i for i, h in enumerate(plan.hardware)
                if h.usd_per_device_hour is None and h.name not in EXAMPLE_USD_PER_DEVICE_HOUR]
    if unpriced:  # every one named at once, not one per run
        names = ", ".join(repr(plan.hardware[i].name) for i in unpriced)
        raise ScenarioError(file, f"hardware[{unpriced[0]}].usd_per_device_hour",
                            f"{'device' if len(unpriced) == 1 else 'devices'} {names} "
                            f"(hardware[{'], hardware['.join(map(str, unpriced))}]) {'has' if len(unpriced) == 1 else 'have'} "
                            f"no example price: give "
                            f"your own usd_per_device_hour (example prices exist for "
                            f"{', '.join(EXAMPLE_USD_PER_DEVICE_HOUR)})")
    if plan.serving is not None and len(tori) == len(plan.hardware):
        # planner.serve drops a TPU candidate (it rents devices by the node; slices are not searched): a plan of
        # TPUs alone would search nothing and answer "nothing meets the goal" (trial 30)
        raise ScenarioError(file, "hardware", f"a serving plan does not search TPU slices yet ({', '.join(tori)}): "
                                              f"name a GPU or CPU device, or run a serving scenario with "
                                              f"backends.roofline.topology")
    if plan.serving is not None and not any(d.memory_bytes for d in devices):
        # planner.serve answers each candidate "memory_bytes is 0": a plan of such devices alone would search
        # nothing and answer "nothing meets the goal" with exit 0 (trial 34), as TPUs did
        from llmsim.modeled_serving import unknown_device_memory
        raise ScenarioError(file, "hardware", f"no hardware choice can serve: {unknown_device_memory(devices[0])}")
    if not any(candidates(plan, d)[0] for d in devices):  # every searched precision is float8, and none runs it
        mx = any(d.peak_flops.get("float8") for d in devices)  # FP8 units, but the stated recipe is mxfp8
        key = "search.dtype" if plan.search.dtype else "workload.fp8.recipe" if mx else "workload.dtype"
        what = ("fp8 recipe mxfp8 needs MX block-scaled tensor cores (Blackwell)" if mx else
                "dtype float8 needs FP8 tensor cores")
        capable = [d.name for d in catalog.devices.values()
                   if (d.microscaling if mx else d.peak_flops.get("float8"))]
        raise ScenarioError(file, key, f"{what}; none of the plan's hardware has them "
                                       f"({', '.join(d.name for d in devices)}); hardware that does: "
                                       f"{', '.join(capable) or 'none in the catalog'}")


def price_of(choice: HardwareChoice) -> tuple[float, bool]:
    """(USD per device-hour, whether it is an example default rather than the user's own price)."""
    if choice.usd_per_device_hour is not None:
        return choice.usd_per_device_hour, False
    return EXAMPLE_USD_PER_DEVICE_HOUR[choice.name], True
