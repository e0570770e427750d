"""The `serving:` block of a scenario (contract: its key names; docs/scenario.md), as pydantic models.

```yaml
serving:
  requests: 500                                # or duration_s: 600, or both: arrivals stop at whichever
                                               # limit comes first (a benchmark's count and its time limit)
  arrival: {kind: poisson, rate: [2, 4, 8]}    # requests/s; poisson | gamma (+ cv) | constant | trace (+ path)
                                               # | concurrency (closed loop: clients, + think_s; no rate)
  lengths: {input: 467, output: 256}           # a number, or {kind: uniform|lognormal|exponential|quantiles, ...}
                                               # (+ filter: min, max_input, max_total); omitted with a trace
  scheduler: {kind: continuous, max_num_seqs: 256, max_batched_tokens: 8192}   # static | continuous |
                                               # chunked-prefill (+ chunk_tokens) | prefill-first (+ delay_factor)
                                               # | tgi (+ waiting_served_ratio, max_waiting_tokens,
                                               # max_batch_total_tokens) | a plugin's
                                               # (+ async_output: any kind)
  kv_block_tokens: 16
  memory_utilization: 0.9
  kv_cache_dtype: auto                         # | float8 (FP8 E4M3 cache: vLLM --kv-cache-dtype fp8)
  replicas: 1
  router: round-robin                          # | least-outstanding
  slo: {ttft_s: 0.5, tpot_s: 0.05, percentile: 99}   # per request; or per run: itl_s (+ itl_percentile 99),
                                               # queue_s (+ queue_percentile 50)
  seed: null                                   # default: the scenario's seed
  request_overhead_s: null                     # per request outside the engine; default: the device entry's
  step_overhead_s: null                        # host seconds per iteration, not overlapped; default: the device's
  step_overhead_per_seq_s: null                # + host seconds per iteration per sequence run; default: the device's
  speculative: null                            # {method: mtp|eagle|draft|ngram, num_draft_tokens: k, acceptance,
                                               #  draft_layers (mtp/eagle), draft_model (draft)}
  disaggregation: null                         # {prefill: {replicas, tp, ep, etp, attention_dp}, decode: {...},
                                               # kv_transfer: {link, layerwise}}: prefill-decode disaggregation
                                               # (llmsim.serving.disaggregation; replaces replicas; a side's
                                               # tp, ep, etp, attention_dp default to the strategy's)
```

Defaults that follow an engine are vLLM's (vllm/config: `block_size` 16, `gpu_memory_utilization` 0.9,
`max_num_seqs` 256); rules that need only this block are validators here, the rest (the scheduler's
name against the installed plugins, the trace file) is checked by the runner before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, ValidationError, field_validator, model_validator

from llmsim.errors import KeyedValueError, format_key_path
from llmsim.serving.disagg_spec import Disaggregation
from llmsim.strict import MAX_DIMENSION, Count, Seed, StrictModel, sweep_repeats, whole_number
from llmsim.wording import number_error, shown_value


PositiveFloat = Annotated[float, Field(gt=0)]

# vLLM's defaults (vllm/config/cache.py: block_size 16 on CUDA, gpu_memory_utilization 0.9;
# vllm/config/scheduler.py: max_num_seqs 256).
DEFAULT_BLOCK_TOKENS = 16
# The KV-cache block sizes vLLM takes: its `--block-size` choices where CacheConfig declares them (`BlockSize =
# Literal[1, 8, 16, 32, 64, 128, 256]`, vllm/config/cache.py), and any multiple of 16 on its FlashAttention kernel
# (vllm/v1/attention/backends/flash_attn.py, get_kv_cache_shape: "Block size must be a multiple of 16"; later
# releases take any positive block_size in CacheConfig and leave the size to the attention kernel). A size outside
# both is priced by the modeled backends as given, and noted (ServingSpec.block_note).
VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)
VLLM_BLOCK_MULTIPLE = 16
DEFAULT_MEMORY_UTILIZATION = 0.9
DEFAULT_MAX_NUM_SEQS = 256
# The token budget of one iteration. vLLM's own default depends on its version, the entry point and the
# device (2,048 to 16,384 in v1); llmsim takes the serving issue's example value, 8,192.
DEFAULT_MAX_BATCHED_TOKENS = 8192
BUILTIN_SCHEDULERS = ("static", "continuous", "chunked-prefill", "prefill-first", "tgi", "sglang")
# The defaults of the engines' own policies (llmsim.serving.policies): vLLM V0's SchedulerConfig.delay_factor
# (vllm/config.py, 0.0: no delay) and TGI 2.1's launcher (huggingface/text-generation-inference v2.1.0,
# launcher/src/main.rs: `waiting_served_ratio` default_value "0.3", `max_waiting_tokens` default_value "20"; the
# router's own default ratio, router/src/main.rs, is 1.2, but the launcher always passes its 0.3).
DEFAULT_DELAY_FACTOR = 0.0
DEFAULT_WAITING_SERVED_RATIO = 0.3
DEFAULT_MAX_WAITING_TOKENS = 20
# Which built-in kind each policy-specific key belongs to (a plugin's kind may read any of them).
POLICY_KEYS: dict[str, str] = {"chunk_tokens": "chunked-prefill", "delay_factor": "prefill-first",
                               "waiting_served_ratio": "tgi", "max_waiting_tokens": "tgi",
                               "max_batch_total_tokens": "tgi"}
TRACE_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


class _Strict(StrictModel):
    """Unknown keys refused, values frozen, no boolean for a number (llmsim.strict)."""


class UniformLength(_Strict):
    """Token counts drawn uniformly from the integers min..max (inclusive)."""

    kind: Literal["uniform"]
    min: Count
    max: Count

    @model_validator(mode="after")
    def _ordered(self) -> "UniformLength":
        if self.max < self.min:
            raise KeyedValueError("max", f"max={self.max} is below min={self.min} (allowed: max >= min)")
        return self


class LognormalLength(_Strict):
    """Token counts round(median * exp(sigma * Z)), Z standard normal, at least 1: a long right tail, as
    measured prompt and answer lengths have."""

    kind: Literal["lognormal"]
    median: PositiveFloat = Field(le=MAX_DIMENSION, description="median tokens")
    sigma: PositiveFloat = Field(description="standard deviation of ln(tokens)")


class ExponentialLength(_Strict):
    """Token counts round(mean * E), E standard exponential, at least 1. Of the distributions on the positive
    reals with a given mean it is the one of largest entropy (it assumes nothing else): the form to take when a
    source publishes only a mean, and the shape of a length histogram whose mode is at the short end with a
    long right tail."""

    kind: Literal["exponential"]
    mean: PositiveFloat = Field(le=MAX_DIMENSION, description="mean tokens (before any filter of the lengths block)")


QuantileTokens = Annotated[float, Field(gt=0, le=MAX_DIMENSION)]


class QuantileLength(_Strict):
    """Token counts through published quantiles: `points` [[p, tokens], ...] with p rising from 0 to 1 and
    tokens not falling; a draw is round(F^-1(U)), U uniform on [0, 1), F^-1 linear between the points (each
    interval between two published quantiles holds its share of the requests, spread evenly)."""

    kind: Literal["quantiles"]
    points: list[tuple[float, QuantileTokens]] = Field(description="[[p, tokens], ...]: p from 0 to 1 rising, "
                                                                  "tokens not falling")

    @field_validator("points")
    @classmethod
    def _cdf(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if len(points) < 2:
            raise ValueError("give at least two points [[0, tokens], ..., [1, tokens]]")
        if points[0][0] != 0 or points[-1][0] != 1:
            raise ValueError(f"the first p must be 0 and the last 1 (got {points[0][0]} and {points[-1][0]})")
        for (p0, t0), (p1, t1) in zip(points, points[1:]):
            if not p1 > p0:
                raise ValueError(f"p must rise: {p1} after {p0}")
            if t1 < t0:
                raise ValueError(f"tokens must not fall: {t1} after {t0}")
        return points


Length = Count | Annotated[UniformLength | LognormalLength | ExponentialLength | QuantileLength,
                           Field(discriminator="kind")]


LENGTH_FORMS = ("a token count >= 1, {kind: uniform, min, max}, {kind: lognormal, median, sigma}, "
                "{kind: exponential, mean} or {kind: quantiles, points: [[p, tokens], ...]}")
LENGTH_KINDS = {"uniform": UniformLength, "lognormal": LognormalLength, "exponential": ExponentialLength,
                "quantiles": QuantileLength}


def length_bounds(spec: "Length") -> tuple[int, float]:
    """The smallest and largest token count a length form can draw (math.inf: unbounded)."""
    if isinstance(spec, int):
        return spec, spec
    if isinstance(spec, UniformLength):
        return spec.min, spec.max
    if isinstance(spec, QuantileLength):
        return max(1, round(spec.points[0][1])), max(1, round(spec.points[-1][1]))
    return 1, math.inf


class Lengths(_Strict):
    """Prompt and output lengths, drawn per request, and an optional filter on each drawn pair. A pair that the
    filter refuses is drawn again (rejection sampling: the lengths that pass keep their relative frequencies,
    none is clipped), as vLLM's ShareGPT samplers drop out-of-range conversations and take the next one
    (benchmarks/benchmark_throughput.py and benchmark_serving.py, `sample_requests`: prompt or output < 4
    tokens, prompt > 1024 or prompt + output > 2048 dropped)."""

    input: Length = Field(description="prompt tokens: a number, or {kind: uniform, min, max}, "
                                      "{kind: lognormal, median, sigma}, {kind: exponential, mean} or "
                                      "{kind: quantiles, points}")
    output: Length = Field(description="generated tokens per request, the same forms")
    min: Count | None = Field(None, description="filter: prompt and output each at least this many tokens")
    max_input: Count | None = Field(None, description="filter: prompt at most this many tokens")
    max_total: Count | None = Field(None, description="filter: prompt + output at most this many tokens")

    @model_validator(mode="before")
    @classmethod
    def _two_sides(cls, data: Any) -> Any:
        """A distribution written for the block itself ({kind: lognormal, ...} in place of {input, output}) is
        named as such, with the shape that was meant, not as five missing and unknown keys."""
        if isinstance(data, dict) and "kind" in data and "input" not in data and "output" not in data:
            kind = data["kind"]
            raise ValueError(f"one distribution (kind {kind!r}) given for the whole block: a lengths block takes "
                             f"input and output, each a token count or a form, e.g. "
                             f"{{input: {{kind: {kind}, ...}}, output: 256}}; forms: {LENGTH_FORMS}")
        return data

    @field_validator("input", "output", mode="before")
    @classmethod
    def _one_form(cls, value: Any) -> Any:
        """One message naming the form that was meant (pydantic would list every branch of the union)."""
        value = whole_number(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"{value}: allowed: {LENGTH_FORMS}")
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{shown_value(value)}: allowed: {LENGTH_FORMS}")
        if "kind" not in value:
            raise ValueError(f"{shown_value(value)}: a distribution needs a kind; allowed: "
                             f"{', '.join(LENGTH_KINDS)} (or a plain token count)")
        form = LENGTH_KINDS.get(value["kind"])
        if form is None:
            raise ValueError(f"kind {shown_value(value['kind'])}: allowed: {', '.join(LENGTH_KINDS)} "
                             "(or a plain token count)")
        try:
            return form.model_validate(value)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            keyed = (err.get("ctx") or {}).get("error")
            if isinstance(keyed, KeyedValueError):  # a rule of the form that names its key (max below min)
                raise KeyedValueError(keyed.key, f"{value['kind']}: {keyed.message}") from None
            where = format_key_path(tuple(err["loc"]))   # points[1][1]: a list's index in brackets
            message = number_error(err) or err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"unknown key; allowed: {', '.join(form.model_fields)}"
            elif err["type"].startswith("int_"):   # 1e300 for a uniform bound: pydantic's 'Unable to parse ...'
                message = f"{shown_value(err.get('input'))}: expected a whole number >= 1 and <= {MAX_DIMENSION}"
            elif err["type"] == "missing":  # pydantic: 'Field required'
                needed = [k for k, f in form.model_fields.items() if f.is_required() and k != "kind"]
                message = f"required key is missing; {value['kind']} takes {', '.join(needed)}"
            raise ValueError(f"{value['kind']}: {where + ': ' if where else ''}{message}") from None

    @model_validator(mode="after")
    def _passable(self) -> "Lengths":
        """Refuse a filter that no drawn pair can pass (the redraws would never end)."""
        in_lo, in_hi = length_bounds(self.input)
        out_lo, out_hi = length_bounds(self.output)
        if self.min is not None and min(in_hi, out_hi) < self.min:
            which, most = ("input", in_hi) if in_hi < self.min else ("output", out_hi)
            raise KeyedValueError("min", f"{self.min}: no {which} length reaches it (the most is {most:g}"
                                         " tokens; allowed: min <= the longest length drawn)")
        low_in = max(in_lo, self.min or 1)
        if self.max_input is not None and low_in > self.max_input:
            raise KeyedValueError("max_input", f"{self.max_input}: every prompt is longer (at least {low_in} "
                                               "tokens; allowed: max_input >= the shortest prompt)")
        low_total = low_in + max(out_lo, self.min or 1)
        if self.max_total is not None and low_total > self.max_total:
            raise KeyedValueError("max_total", f"{self.max_total}: every prompt + output is longer (at least "
                                               f"{low_total} tokens; allowed: max_total >= the shortest pair)")
        return self

    @property
    def filtered(self) -> bool:
        return self.min is not None or self.max_input is not None or self.max_total is not None

    def passes(self, n_in: int, n_out: int) -> bool:
        """Whether a drawn (prompt, output) pair passes the filter."""
        if self.min is not None and (n_in < self.min or n_out < self.min):
            return False
        if self.max_input is not None and n_in > self.max_input:
            return False
        return self.max_total is None or n_in + n_out <= self.max_total


# The burstiest gamma arrivals drawn: gaps of shape 1 / cv^2 (random.gammavariate) underflow to exactly 0 in double
# precision below shape ~0.01 (measured, 10,000 draws: 2 zeros at cv 10, 4,387 at cv 30, 9,993 at cv 1,000, whose
# mean gap was 7e-15 of the asked one): past cv 10 the arrivals are no longer the gamma process asked for.
MAX_GAMMA_CV = 10.0


def _holds_in_a_float(value: float) -> bool:
    """Whether a number converts to a float: a YAML integer of 400 digits passes `< math.inf` but no float
    holds it (pydantic would then name its union's branches, `rate.constrained-float`, in the key path)."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _sweep(value: Any, valid: Any, one: str) -> Any:
    """A sweepable value (one, or a non-empty list that repeats none) whose every item passes `valid` (booleans
    never do); a ValueError saying `one` is allowed otherwise. One message for both forms (pydantic would name
    the branch of the union it tried last)."""
    if value is None:
        return value
    values = value if isinstance(value, list) else [value]
    if not values or not all(not isinstance(v, bool) and valid(v) for v in values):
        raise ValueError(f"{shown_value(value)}: allowed: {one}, or a non-empty list of them (a sweep)")
    repeats = sweep_repeats(values)
    if repeats:
        raise ValueError(f"{shown_value(value)}: {repeats}")
    return value


class Arrival(_Strict):
    """When requests arrive. poisson: exponential gaps; gamma: gamma gaps with coefficient of variation `cv`
    (cv > 1 bursty, < 1 smoother; cv = 1 is poisson; vLLM's `--burstiness` is 1/cv^2); constant: one every
    1/rate seconds; trace: the times (and lengths) of a JSONL/CSV file with columns arrival_s, input_tokens,
    output_tokens, sorted by arrival, shifted to start at t = 0 and replayed with the recorded gaps or, with a rate,
    gaps scaled to that mean rate.

    concurrency (a closed loop): `clients` clients, each sending its next request `think_s` seconds after the
    last token of its previous one; every request is queued at t = 0 and taken in order. With think_s = 0 this is
    vLLM's `bench serve --max-concurrency N` at its default request rate inf (vllm/benchmarks/serve.py at
    def9ce85: every request task created at t = 0, each waits on an asyncio.Semaphore(N) before it is sent, and
    its TTFT and latency are timed from the send, after the semaphore: vllm/benchmarks/lib/endpoint_request_func.py
    at 3aee4a4f, `st = time.perf_counter()` inside the request function). No rate is given: the rate is what the
    engine achieves (the row's request_rate)."""

    kind: Literal["poisson", "gamma", "constant", "trace", "concurrency"] = "poisson"
    rate: PositiveFloat | list[PositiveFloat] | None = Field(None, description="requests/s; a list sweeps")
    cv: PositiveFloat | None = Field(None, le=MAX_GAMMA_CV, description="gamma: coefficient of variation of the "
                                                                         "gaps, at most MAX_GAMMA_CV (10)")
    path: str | None = Field(None, description="trace: a .jsonl or .csv file, relative to the scenario")
    clients: Count | list[Count] | None = Field(
        None, description="concurrency: clients in the closed loop (requests in flight at most); a list sweeps")
    think_s: NonNegativeFloat | None = Field(
        None, description="concurrency: seconds between a client's last token and its next request (default 0)")

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        """One message for both forms (pydantic would name the branch of the union it tried last)."""
        return _sweep(value, lambda v: isinstance(v, (int, float)) and 0 < v < math.inf and _holds_in_a_float(v),
                      "a rate > 0 in requests/s (finite)")  # nan fails every comparison

    @field_validator("clients", mode="before")
    @classmethod
    def _clients(cls, value: Any) -> Any:
        """One message for both forms: a whole number of clients >= 1, or a non-empty list of them; at most
        MAX_REQUESTS (each client has one request in flight: more clients than a run may send never all send)."""
        value = [whole_number(v) for v in value] if isinstance(value, list) else whole_number(value)
        return _sweep(value, lambda v: isinstance(v, int) and 1 <= v <= MAX_REQUESTS,
                      f"a whole number of clients >= 1 and <= {MAX_REQUESTS:,}")

    @field_validator("think_s", mode="before")
    @classmethod
    def _think(cls, value: Any) -> Any:
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0 <= value < math.inf):
            raise ValueError(f"{value!r}: allowed: seconds >= 0 (finite)")
        return value

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "Arrival":
        if self.kind == "concurrency":
            if self.rate is not None:
                raise KeyedValueError("rate", "a closed loop (kind 'concurrency') sets no rate: its clients send "
                                              "as fast as the engine answers (allowed: clients, think_s)")
            if self.clients is None:
                raise KeyedValueError("clients", "arrival kind 'concurrency' needs clients (a whole number >= 1, "
                                                 "or a list of them)")
        else:
            for key in ("clients", "think_s"):
                if getattr(self, key) is not None:
                    raise KeyedValueError(key, f"{key} is for arrival kind 'concurrency' (got kind {self.kind!r})")
        if self.kind not in ("trace", "concurrency") and self.rate is None:
            raise KeyedValueError("rate", f"arrival kind {self.kind!r} needs a rate (requests/s)")
        if self.kind == "gamma" and self.cv is None:
            raise KeyedValueError("cv", "arrival kind 'gamma' needs cv, the coefficient of variation of the gaps "
                                        "(1 = poisson)")
        if self.kind != "gamma" and self.cv is not None:
            raise KeyedValueError("cv", f"cv is for arrival kind 'gamma' (got kind {self.kind!r})")
        if self.kind == "trace" and not self.path:
            raise KeyedValueError("path", "arrival kind 'trace' needs path, a .jsonl or .csv file with columns "
                             + ", ".join(TRACE_COLUMNS))
        if self.kind != "trace" and self.path is not None:
            raise KeyedValueError("path", f"path is for arrival kind 'trace' (got kind {self.kind!r})")
        return self

    @property
    def closed(self) -> bool:
        """Whether this is a closed loop (kind concurrency): requests go out as earlier ones finish."""
        return self.kind == "concurrency"

    @property
    def rates(self) -> list[float | None]:
        """The sweep's rates (one None for a trace replayed as recorded, and one None per point of a closed
        loop, whose rate is an outcome)."""
        if self.closed:
            return [None] * len(self.clients_list)
        if self.rate is None:
            return [None]
        return [float(r) for r in (self.rate if isinstance(self.rate, list) else [self.rate])]

    @property
    def clients_list(self) -> list[int]:
        """A closed loop's sweep of client counts (empty for an open loop)."""
        if self.clients is None:
            return []
        return list(self.clients) if isinstance(self.clients, list) else [self.clients]

    @property
    def sweep(self) -> list[tuple[str, float | int | None]]:
        """The points of the sweep, as (key, value): ("rate", r) for an open loop (("rate", None) for a trace as
        recorded), ("clients", n) for a closed loop."""
        if self.closed:
            return [("clients", n) for n in self.clients_list]
        return [("rate", r) for r in self.rates]


class SchedulerSpec(_Strict):
    """How a replica forms each iteration (llmsim.serving.schedulers)."""

    kind: str = Field("continuous", description="static | continuous | chunked-prefill | prefill-first (vLLM V0's "
                                                "default scheduler) | tgi (TGI 2.1's router) | sglang (SGLang 0.3's "
                                                "scheduler), or a plugin's policy")
    max_num_seqs: Count = Field(DEFAULT_MAX_NUM_SEQS, description="sequences in one iteration at most "
                                                                  "(vLLM max_num_seqs; TGI max_batch_size)")
    max_batched_tokens: Count = Field(DEFAULT_MAX_BATCHED_TOKENS, description="tokens one iteration "
                                      "computes at most (vLLM max_num_batched_tokens; for tgi, the prompt "
                                      "tokens of one prefill pass, TGI max_batch_prefill_tokens)")
    chunk_tokens: Count | None = Field(None, description="chunked-prefill: most prompt tokens of one request "
                                       "per iteration (vLLM long_prefill_token_threshold); default "
                                       "max_batched_tokens")
    delay_factor: NonNegativeFloat | None = Field(
        None, description="prefill-first: vLLM V0's delay_factor; waiting prompts are scheduled only once the "
                          "oldest has waited delay_factor x the last prompt iteration's time (or nothing runs); "
                          "default 0 (no delay)")
    waiting_served_ratio: NonNegativeFloat | None = Field(
        None, description="tgi: TGI's waiting_served_ratio; while fewer than max_waiting_tokens decode steps ran "
                          "since the last admission, waiting requests join the running batch only when at least "
                          "floor(running x ratio) of them fit; default 0.3 (TGI 2.1's launcher)")
    max_waiting_tokens: NonNegativeInt | None = Field(
        None, description="tgi: TGI's max_waiting_tokens; after this many decode steps without an admission, "
                          "any waiting request that fits joins; default 20 (TGI 2.1's launcher)")
    max_batch_total_tokens: Count | None = Field(
        None, description="tgi: TGI's max_batch_total_tokens, the tokens (prompt + max new tokens) all running "
                          "requests may reserve; default the replica's KV cache (TGI infers it from free memory "
                          "for flash-attention models); at most the KV cache")
    async_output: bool = Field(
        False, description="the engine processes an iteration's outputs while the next iteration runs (vLLM "
                           "V0's asynchronous output processor, on by default from v0.6.0 with CUDA graphs): a "
                           "finished request is decoded once more (alone, after its last token, when nothing else "
                           "runs); a token is still out when its iteration ends (the server streams it from the "
                           "next pass's callback); default false")
    overlap_schedule: bool = Field(
        False, description="the engine forms the next iteration while the current one runs (SGLang's overlap "
                           "scheduler, on by default from v0.4): a request that arrives while an iteration runs "
                           "is scheduled no earlier than the iteration after the next (at once when nothing "
                           "runs); default false (it can join the next iteration)")
    recv_interval: Count = Field(
        1, description="the engine reads newly arrived requests only every recv_interval decode iterations "
                       "(SGLang's --scheduler-recv-interval, python/sglang/srt/managers/scheduler_recv_skipper.py): "
                       "a request that arrives while the replica decodes joins no earlier than the iteration "
                       "formed after the recv_interval-th decode iteration since the last read; after an "
                       "iteration that computes prompt tokens, or with nothing running, it is read at once; "
                       "default 1 (read before every iteration); not with attention data parallelism (SGLang "
                       "refuses it there)")
    eager: Literal["none", "prompt", "all"] | None = Field(
        None, description="which passes the engine launches eagerly from Python instead of replaying a captured CUDA "
                          "graph: none | prompt (the passes that hold a prompt: vLLM V0, which graphs decode only) "
                          "| all (no CUDA graphs: the sarathi-serve code base, --enforce-eager); an eager pass "
                          "takes max(device time, the device entry's eager_launch_s x its kernels) "
                          "(costmodel.eager); default prompt for kind prefill-first (vLLM V0's scheduler) and "
                          "kind sglang (SGLang graphs decode only), none otherwise")
    engine_kernels: Literal["fused", "sglang", "sglang-rocm"] | None = Field(
        None, description="whose model code launches a pass's kernels: fused (the fused engine's count, vLLM's "
                          "model code) | sglang (SGLang's on CUDA) | sglang-rocm (SGLang's on ROCm): SGLang's "
                          "extend pass of a DeepSeek-V3-shaped float8 model (MLA with a query latent, MoE) "
                          "launches 31 (CUDA, 0.5.6.post1) or 37 (ROCm, 0.5.7) kernels a MoE layer, an nvfp4 "
                          "float4 one (ModelOpt's checkpoint, CUDA) 24 (fp4.layers mlp) or 29 (all), 2 more with "
                          "an FP8 KV cache, counted in "
                          "its source (costmodel.eager), priced on the GPU and, in an eager pass, at launch; "
                          "other models and decode passes as fused; default sglang for kind sglang, fused "
                          "otherwise")

    graph_max_batch: Count | None = Field(
        None, description="the most sequences a pure-decode pass may hold and still replay a captured CUDA graph; "
                          "a decode pass of more runs eagerly (priced as an eager pass: max(device time, the "
                          "device entry's eager_launch_s x its kernels), costmodel.eager). The engines' defaults: "
                          "vLLM V0 (0.4-0.6) 256 (worker/model_runner.py _BATCH_SIZES_TO_CAPTURE[-1]); vLLM V1 "
                          "0.11 min(2 x max_num_seqs, 512, max_num_batched_tokens) tokens (config "
                          "max_cudagraph_capture_size); SGLang 0.5.3-0.5.4 --cuda-graph-max-bs 256 at tp < 4, "
                          "512 at tp >= 4 on a 60-160 GiB GPU (server_args.py); TGI 2.x 32 (--cuda-graphs); "
                          "default none: every decode pass replays a graph (as before the key)")
    fuse_allreduce_rms: bool = Field(
        False, description="the engine folds each tensor-parallel all-reduce and the residual-add + RMSNorm after "
                           "it into one kernel (vLLM's all-reduce + RMSNorm fusion, PassConfig.fuse_allreduce_rms: "
                           "on by default from vLLM 0.16 at -O2 on Hopper and Blackwell with tp > 1 and FlashInfer; "
                           "off before): one kernel fewer per all-reduce a layer, in a pass of at most the device "
                           "entry's allreduce_rms_fusion_max_bytes / (hidden x 2 B) tokens, at tp > 1 with pp 1 and "
                           "attention_dp 1 (costmodel.eager); default false. Not with SGLang's or TGI's kernel "
                           "counts (engine_kernels sglang / sglang-rocm, kind sglang or tgi)")

    @property
    def eager_passes(self) -> str:
        """The passes the engine runs eagerly (costmodel.eager.EAGER_PASSES): `eager` when given, else derived from
        the policy: prefill-first is vLLM V0's scheduler, whose engine replays CUDA graphs for pure-decode passes
        only (vllm/worker/model_runner.py `ModelRunner.execute_model`: the graph runner only when `prefill_meta is
        None`), so its passes with a prompt are eager; sglang is SGLang's scheduler, whose engine does the same
        (python/sglang/srt/model_executor/model_runner.py: `forward_decode` replays the CUDA graph runner,
        `forward_extend` calls the model, sglang 0.3.0; 0.5.6.post1 and 0.5.7 the same unless
        --enable-piecewise-cuda-graph, default False in server_args.py: ForwardMode.is_cuda_graph is decode,
        target-verify, idle); every other built-in kind: none."""
        if self.eager is not None:
            return self.eager
        return "prompt" if self.kind in ("prefill-first", "sglang") else "none"

    @property
    def engine_kernels_of(self) -> str:
        """Whose model code launches a pass's kernels (costmodel.eager.ENGINE_KERNELS): `engine_kernels` when
        given, else "sglang" for kind sglang (SGLang's own scheduler), "fused" for every other kind."""
        if self.engine_kernels is not None:
            return self.engine_kernels
        return "sglang" if self.kind == "sglang" else "fused"

    @model_validator(mode="after")
    def _policy_keys(self) -> "SchedulerSpec":
        """A key of one built-in policy is refused with another built-in kind (a plugin's kind may read any)."""
        for key, owner in POLICY_KEYS.items():
            if getattr(self, key) is not None and self.kind in BUILTIN_SCHEDULERS and self.kind != owner:
                raise KeyedValueError(key, f"{key} is for kind {owner!r} (got kind {self.kind!r})")
        if self.fuse_allreduce_rms and (self.engine_kernels_of != "fused" or self.kind == "tgi"):
            engine = (f"kind {self.kind!r}" if self.kind == "tgi" else f"engine_kernels {self.engine_kernels_of!r}"
                      if self.engine_kernels is not None else
                      f"kind {self.kind!r} (whose kernel counts are SGLang's: engine_kernels {self.engine_kernels_of!r})")
            raise KeyedValueError("fuse_allreduce_rms", (
                f"true with {engine}: vLLM's all-reduce + RMSNorm fusion is priced over the fused engine's kernels "
                f"(engine_kernels fused); allowed: false, or true with engine_kernels fused and a kind other than "
                f"tgi"))
        if self.chunk_tokens is not None and self.chunk_tokens > self.max_batched_tokens:
            raise KeyedValueError("chunk_tokens", f"{self.chunk_tokens} exceeds max_batched_tokens="
                                  f"{self.max_batched_tokens}, the tokens one iteration computes at most, so a chunk "
                                  f"of it could never run (allowed: 1 ... {self.max_batched_tokens})")
        return self

    @property
    def chunk(self) -> int:
        """Most prompt tokens of one request in one iteration."""
        return min(self.chunk_tokens or self.max_batched_tokens, self.max_batched_tokens)


# JSON Schema bounds for editors (`llmsim schema`); the field validators enforce the same range with llmsim's words
PROBABILITY_SCHEMA: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}


class Slo(_Strict):
    """Service-level objective. Per request (DistServe's SLO attainment, Zhong et al. 2024, Sec. 2): a request
    is good when its TTFT and its TPOT are within the bounds given (a bound left out does not apply; a rejected
    request is never good), and the run needs at least `percentile`% of the requests sent to be good. Per run
    (Sarathi-Serve's capacity SLO, Agrawal et al. 2024, Sec. 5.1, as its capacity search checks it:
    sarathi/benchmark/capacity_search/capacity_search.py `_is_under_sla`): the `itl_percentile`-th percentile
    of every inter-token gap of the run pooled (Sarathi's "P99 TBT") is at most `itl_s`, and the
    `queue_percentile`-th percentile of the requests' queueing delays, arrival to first scheduled (Sarathi's
    "median scheduling delay"), is at most `queue_s`. The run meets the SLO when every part given holds; at
    least one bound is given."""

    ttft_s: PositiveFloat | None = Field(None, description="time to first token bound per request, seconds")
    tpot_s: PositiveFloat | None = Field(None, description="time per output token bound per request, seconds")
    percentile: float = Field(99.0, gt=0, le=100, description="share of requests that must meet the per-request bounds "
                                                "(and not be rejected), in (0, 100]")
    itl_s: PositiveFloat | None = Field(None, description="bound on the run's itl_percentile-th percentile of the "
                                                          "pooled inter-token gaps, seconds")
    itl_percentile: float = Field(99.0, gt=0, le=100, description="percentile of the pooled inter-token gaps "
                                                                  "itl_s bounds, in (0, 100]")
    queue_s: PositiveFloat | None = Field(None, description="bound on the run's queue_percentile-th percentile of "
                                                            "the queueing delays (arrival to first scheduled), "
                                                            "seconds")
    queue_percentile: float = Field(50.0, gt=0, le=100, description="percentile of the queueing delays queue_s bounds, "
                                                      "in (0, 100]")

    @model_validator(mode="after")
    def _some_bound(self) -> "Slo":
        if self.ttft_s is None and self.tpot_s is None and self.itl_s is None and self.queue_s is None:
            raise KeyedValueError("ttft_s", "an SLO needs at least one bound (allowed: ttft_s, tpot_s, itl_s, "
                                            "queue_s)")
        return self


SPECULATIVE_METHODS = ("mtp", "eagle", "draft", "ngram")
HEAD_METHODS = ("mtp", "eagle")   # the methods whose draft is a head of draft_layers layers at the target's width
# Scheduler kinds that run speculative decoding here: vLLM V1's loop (continuous, chunked-prefill), which counts the
# draft tokens in its token budget and KV slots (vllm/v1/core/sched/scheduler.py `Scheduler.schedule`).
SPECULATIVE_SCHEDULERS = ("continuous", "chunked-prefill")


class Speculative(_Strict):
    """Speculative decoding (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
    EAGLE: Li et al. 2024; DeepSeek-V3's multi-token prediction, DeepSeek-AI 2024, Sec. 2.2): each decode iteration
    every decoding sequence drafts `num_draft_tokens` k tokens, the target verifies the k + 1 positions in one
    forward, and the sequence emits its accepted drafts and one token of the target's own (the bonus token).
    vLLM `--speculative-config {method, num_speculative_tokens}`, SGLang `--speculative-algorithm EAGLE|EAGLE3|NEXTN
    --speculative-num-steps k --speculative-eagle-topk 1 --speculative-num-draft-tokens k+1`, TensorRT-LLM MTP
    `num_nextn_predict_layers`. The acceptance is an input, like the lengths: the workload's own (a model and data
    set property); llmsim.serving.speculative draws it per sequence per step."""

    method: Literal["mtp", "eagle", "draft", "ngram"] = Field(
        description="mtp | eagle: a draft head of draft_layers layers at the target's width; draft: a separate model "
                    "(draft_model) runs its own decode steps; ngram: prompt lookup, no device work")
    num_draft_tokens: Count = Field(description="k >= 1 tokens proposed per sequence per step (a chain; SGLang "
                                                "eagle topk 1)")
    acceptance: float | list[float] = Field(
        description="per-position conditional acceptance probability in (0, 1]: position i is accepted with this "
                    "probability given position i - 1 was; one for every position, or a list of k of them",
        json_schema_extra={"anyOf": [PROBABILITY_SCHEMA, {"type": "array", "items": PROBABILITY_SCHEMA,
                                                          "minItems": 1}]})
    draft_layers: Count | None = Field(None, description="mtp / eagle: transformer layers of the draft head "
                                                        "(the target's width); null or omitted: 1; with draft "
                                                        "/ ngram unused (said in a run note)")
    draft_model: str | None = Field(None, description="draft only: a model preset, the draft model (its own decode "
                                                      "steps on the replica's devices)")

    @field_validator("num_draft_tokens", mode="before")
    @classmethod
    def _k(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{shown_value(value)}: allowed: a whole number of draft tokens >= 1")
        return value

    @field_validator("acceptance", mode="before")
    @classmethod
    def _acceptance(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        ok = bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                                  for v in values)
        if not ok:
            raise ValueError(f"{shown_value(value)}: allowed: a probability in (0, 1], or a list of num_draft_tokens of them")
        return value

    @model_validator(mode="after")
    def _shape(self) -> "Speculative":
        if isinstance(self.acceptance, list) and len(self.acceptance) != self.num_draft_tokens:
            raise KeyedValueError("acceptance", f"{len(self.acceptance)} probabilities for num_draft_tokens="
                                  f"{self.num_draft_tokens} (allowed: one probability, or a list of "
                                  f"{self.num_draft_tokens}, one per draft position)")
        # method draft's draft_model names a preset: config.check_serving checks it (no model code imported here)
        if self.method != "draft" and self.draft_model is not None:
            raise KeyedValueError("draft_model", f"draft_model is for method 'draft' (got method {self.method!r}; "
                                                 f"allowed: omit it)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _head_default(cls, data: Any) -> Any:
        """draft_layers null or omitted is the method's default: a head of 1 layer for mtp / eagle (the default
        it always had: an EAGLE head is one decoder layer, Li et al. 2024; DeepSeek-V3 trains one MTP module, Sec.
        2.2), nothing for draft / ngram, which have no head. So `--set serving.speculative.method=ngram` switches
        a file that states draft_layers for its eagle head; a draft_layers stated with draft / ngram is kept as
        written and unused (`unused_note`)."""
        if isinstance(data, dict) and data.get("draft_layers") is None and data.get("method") in HEAD_METHODS:
            return {**data, "draft_layers": 1}
        return data

    @property
    def head_layers(self) -> int:
        """The draft head's layers (mtp / eagle; 1 where none is stated); 0 for draft / ngram, which have none."""
        if self.method not in HEAD_METHODS:
            return 0
        return self.draft_layers or 1

    def unused_note(self) -> tuple[str, str] | None:
        """(key inside serving.speculative, note) where a key of another method is given and not used: a
        draft_layers with method draft or ngram (a run note, not an error: switching method with `--set` leaves
        the file's draft_layers behind). None otherwise."""
        if self.method in HEAD_METHODS or self.draft_layers is None:
            return None
        return "draft_layers", (f"{self.draft_layers} is unused: method {self.method} has no draft head (draft_layers "
                                f"is for mtp and eagle); the run ignores it")

    @property
    def probabilities(self) -> tuple[float, ...]:
        """p_1 ... p_k, the conditional acceptance of each draft position."""
        if isinstance(self.acceptance, list):
            return tuple(float(p) for p in self.acceptance)
        return (float(self.acceptance),) * self.num_draft_tokens

    @property
    def mean_accept_length(self) -> float:
        """Expected tokens emitted per verify step: 1 + sum over i of p_1 x ... x p_i (the bonus token and each
        draft position reached by an unbroken run of acceptances; Leviathan et al. 2023, eq. 1, with per-position
        rates)."""
        total, run = 1.0, 1.0
        for p in self.probabilities:
            run *= p
            total += run
        return total

    @property
    def lookahead(self) -> int:
        """Extra KV slots a decoding sequence gets beyond its verify window: vLLM reserves num_speculative_tokens
        more for a draft that writes its own K and V ahead (eagle, mtp, a draft model; `num_lookahead_tokens` in
        vllm/v1/core/sched/scheduler.py `Scheduler.__init__`), none for ngram."""
        return 0 if self.method == "ngram" else self.num_draft_tokens


# The longest simulated span a run may cover, in seconds (31.7 years). The simulated clock is a float64 of
# seconds: at 1e9 s its spacing is 1.2e-7 s (IEEE 754 binary64, 52-bit fraction: 2**29 * 2**-52), so token
# times keep sub-microsecond resolution; far beyond it a 10 ms prefill added to an arrival time is rounded
# away (at a rate of 1e-300 requests/s every TTFT came out 0).
MAX_SIMULATED_S = 1e9


# The most requests one simulated run may hold: 100x the 10,000-request runs of vLLM's and Vidur's
# benchmarks. A bound against a typo (duration_s: 600 at rate: 1e9) that would otherwise simulate for days.
MAX_REQUESTS = 1_000_000


def arrival_count_problem(requests: int | None, duration_s: float | None, rates: list[float | None],
                          at_least_one: bool = False) -> tuple[str, str] | None:
    """(key, message) when the run's size is unusable, else None: more than MAX_REQUESTS requests, a span past
    MAX_SIMULATED_S, or (`at_least_one`: the user's own rates, not a rate search's probes, which may go lower)
    fewer than one request expected in duration_s. `rates` in requests/s (None: a trace as recorded); keys are
    relative to the serving block. Both limits given: arrivals stop at whichever comes first, so the count bounds
    the size (rate x duration_s may exceed it) and duration_s bounds the span (requests / rate may exceed it)."""
    rates_given = [r for r in rates if r is not None]
    if requests is not None and requests > MAX_REQUESTS:
        return "requests", f"{shown_value(requests)}: allowed: at most {MAX_REQUESTS:,} requests in one run"
    if duration_s is not None:
        if duration_s > MAX_SIMULATED_S:
            return "duration_s", (f"{duration_s:g} s: allowed: at most {MAX_SIMULATED_S:g} s (the simulated "
                                  f"clock's resolution)")
        if requests is None and rates_given and duration_s * max(rates_given) > MAX_REQUESTS:
            return "arrival.rate", (f"{max(rates_given):g} requests/s for duration_s={duration_s:g} s is "
                                    f"{duration_s * max(rates_given):.3g} requests; allowed: at most "
                                    f"{MAX_REQUESTS:,} in one run (rate x duration_s)")
        if at_least_one and rates_given and duration_s * min(rates_given) < 1:
            return "arrival.rate", (f"{min(rates_given):g} requests/s for duration_s={duration_s:g} s expects "
                                    f"{duration_s * min(rates_given):.3g} requests; allowed: rate x duration_s "
                                    f">= 1")
    if requests is not None and duration_s is None and rates_given and requests / min(rates_given) > MAX_SIMULATED_S:
        return "arrival.rate", (f"{min(rates_given):g} requests/s: {requests} requests would span "
                                f"{requests / min(rates_given):.3g} s of simulated time; allowed: requests / rate "
                                f"<= {MAX_SIMULATED_S:g} s (the simulated clock's resolution)")
    return None


# An open loop whose requests all arrive within this span is a burst, whatever its rate says: one decode step of
# the smallest model on the fastest device in the catalog takes longer (a few ms), so no iteration sees the
# arrivals apart. A note, not a limit: vLLM's `bench serve --request-rate inf` is such a burst, on purpose.
BURST_SPAN_S = 1e-3


def burst_text(what: str, count: float, span_s: float) -> str | None:
    """The burst note's words when `count` (>= 2) arrivals of `what` (a rate, a trace replay) span less than
    BURST_SPAN_S seconds, else None."""
    if count < 2 or span_s >= BURST_SPAN_S:
        return None
    return (f"{what} brings {count:,.0f} requests within {span_s:.3g} s, less than one iteration: the run is a "
            f"burst (as vLLM bench serve's --request-rate inf), and TTFT is the wait behind the whole batch; to "
            f"measure latency under load, give a rate the engine can sustain")


def burst_note(requests: int | None, duration_s: float | None, rates: list[float | None]) -> str | None:
    """A note when an open loop at the highest of `rates` (requests/s) brings its arrivals, `requests` of them or
    rate x duration_s, within BURST_SPAN_S (the first limit reached ends them): every request is then queued at
    once, and TTFT measures the queue behind them (trial 35: `rate: 1e308` ran as a burst without a word; trial 40:
    so did `duration_s: 1e-6` at 1e9 requests/s). None otherwise."""
    rates_given = [r for r in rates if r is not None]
    if not rates_given:
        return None
    rate = max(rates_given)
    count = min(requests if requests is not None else math.inf, rate * duration_s if duration_s else math.inf)
    span = min(requests / rate if requests is not None else math.inf, duration_s or math.inf)
    return burst_text(f"{rate:g} requests/s", count, span)


@dataclass(frozen=True)
class HostStep:
    """Host (CPU) time of one engine iteration that does not overlap the device: `fixed_s` + `per_seq_s` x the
    sequences the iteration runs (seconds). Vidur's CPU overhead (schedule, sampler, prepare inputs, process model
    outputs, Ray hop: vidur/entities/execution_time.py `_get_cpu_overhead`) in two terms; zero by default."""

    fixed_s: float = 0.0
    per_seq_s: float = 0.0

    def seconds(self, seqs: float) -> float:
        """Host seconds of an iteration running `seqs` sequences (0 for an empty one)."""
        return self.fixed_s + self.per_seq_s * seqs if seqs > 0 else 0.0


@dataclass(frozen=True)
class EagerLaunch:
    """Where an engine launches its passes eagerly and what a launch costs the host: `passes` one of
    costmodel.eager.EAGER_PASSES ("none", "prompt", "all"), `per_kernel_s` host seconds per kernel launched (the
    device entry's eager_launch_s), `engine_kernels` whose model code launches a pass's kernels (SchedulerSpec.
    engine_kernels_of), `graph_max_batch` the most sequences a pure-decode pass replays a graph with (SchedulerSpec.
    graph_max_batch; None = no limit), `fuse_allreduce_rms` whether the engine fuses each all-reduce with the
    RMSNorm after it (SchedulerSpec.fuse_allreduce_rms). Not modeled by default (per_kernel_s 0)."""

    passes: str = "none"
    per_kernel_s: float = 0.0
    engine_kernels: str = "fused"   # whose model code launches a pass's kernels (costmodel.eager.ENGINE_KERNELS)
    graph_max_batch: int | None = None   # most sequences of a graph-replayed decode pass (None = no limit)
    fuse_allreduce_rms: bool = False     # vLLM's all-reduce + RMSNorm fusion (SchedulerSpec.fuse_allreduce_rms)


class ServingSpec(_Strict):
    """A request-level serving run: the workload's model, dtype and the strategies' tp/pp describe one replica."""

    # ge=1 alone: arrival_count_problem says the run's own limit, MAX_REQUESTS, in its words
    requests: Annotated[int, Field(ge=1)] | None = Field(None, description="how many requests (or duration_s; with "
                                                                            "both, arrivals stop at whichever limit "
                                                                            "comes first)")
    duration_s: PositiveFloat | None = Field(None, description="requests arriving in this many seconds (or requests; "
                                                               "with both, arrivals stop at whichever limit comes "
                                                               "first)")
    arrival: Arrival
    lengths: Lengths | None = Field(None, description="prompt and output tokens; omitted: from the trace")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    kv_block_tokens: Count = Field(DEFAULT_BLOCK_TOKENS, description="tokens per KV-cache block (vLLM "
                                                                     "block_size)")
    memory_utilization: float = Field(DEFAULT_MEMORY_UTILIZATION, gt=0, le=1,
                                      description="share of device memory the replica may use (vLLM "
                                                  "gpu_memory_utilization)")
    kv_cache_dtype: Literal["auto", "float8"] = Field(
        "auto", description="element type of the KV cache: auto = the workload's 16-bit type (vLLM's "
                            "--kv-cache-dtype auto; bfloat16 for a float8 workload, whose cache engines keep 16-bit "
                            "unless asked), float8 = FP8 E4M3, one byte per element (vLLM --kv-cache-dtype fp8, "
                            "TensorRT-LLM's FP8 KV cache, SGLang fp8_e4m3): twice the tokens in the same memory, half "
                            "the K and V bytes a decode step reads, FP8 attention math where the kernel has an FP8 "
                            "path (flash3 on Hopper); costmodel.kv_dtype")
    replicas: Count = Field(1, description="data-parallel copies of the model, each tp x pp devices")
    router: Literal["round-robin", "least-outstanding"] = "round-robin"
    slo: Slo | None = None
    seed: Seed | None = Field(None, description="seed of the request list; default the scenario's seed")
    request_overhead_s: NonNegativeFloat | None = Field(
        None, description="seconds each request spends outside the engine's forward passes (API server, "
                          "tokenisation, IPC to the engine, detokenisation), added to its TTFT and end-to-end "
                          "latency, not to TPOT/ITL; default the device entry's request_overhead_s (0 on GPUs)")
    step_overhead_s: NonNegativeFloat | None = Field(
        None, description="host seconds of every engine iteration that do not overlap the forward pass (scheduling, "
                          "input preparation, sampling, output processing: vLLM V0-style engines run them in "
                          "line), the fixed part; added to the iteration's time (so to TPOT/ITL and throughput); "
                          "default the device entry's step_overhead_s (0 on every built-in entry)")
    step_overhead_per_seq_s: NonNegativeFloat | None = Field(
        None, description="host seconds of every engine iteration per sequence it runs (the part that grows with "
                          "the batch); default the device entry's step_overhead_per_seq_s (0 on every built-in "
                          "entry)")
    speculative: Speculative | None = Field(
        None, description="speculative decoding: {method: mtp|eagle|draft|ngram, num_draft_tokens, acceptance, "
                          "draft_layers, draft_model}; each decode step drafts k tokens per sequence, verifies k + 1 "
                          "and emits the accepted ones and a bonus token (llmsim.serving.speculative); default none")
    disaggregation: Disaggregation | None = Field(
        None, description="prefill-decode disaggregation: prefill instances and decode instances, each prompt's KV "
                          "cache sent from one to the other over kv_transfer.link (DistServe; SGLang "
                          "--disaggregation-mode; vLLM NixlConnector); replaces replicas; "
                          "llmsim.serving.disaggregation")

    def block_note(self) -> str | None:
        """A note where kv_block_tokens is a size vLLM does not take (none of VLLM_BLOCK_SIZES, no multiple of
        VLLM_BLOCK_MULTIPLE): the modeled backends price any size, so it is legal, but it matches no vLLM run; else
        None. The vllm backend refuses what its engine does not take before anything runs (its
        check_serving_block)."""
        tokens = self.kv_block_tokens
        if tokens in VLLM_BLOCK_SIZES or tokens % VLLM_BLOCK_MULTIPLE == 0:
            return None
        return (f"{tokens} tokens a block is a size vLLM does not take (its --block-size: "
                f"{', '.join(map(str, VLLM_BLOCK_SIZES))}, or a multiple of {VLLM_BLOCK_MULTIPLE} on its "
                f"FlashAttention kernel); the modeled backends price blocks of {tokens} tokens as given")

    @model_validator(mode="after")
    def _count(self) -> "ServingSpec":
        trace = self.arrival.kind == "trace"
        if not trace and self.requests is None and self.duration_s is None:
            raise KeyedValueError("requests", "give requests (a count), duration_s (seconds of arrivals) or both "
                                              "(arrivals stop at whichever comes first)")
        if not trace and self.lengths is None:
            raise KeyedValueError("lengths", "lengths are needed unless arrival.kind is 'trace' "
                                             "(whose file gives them)")
        # a trace sends its rows, not rate x duration_s of them (trace_count_problem counts them: trial 40)
        problem = arrival_count_problem(self.requests, self.duration_s, [] if trace else self.arrival.rates)
        if problem is not None:
            raise KeyedValueError(*problem)
        if self.speculative is not None and self.scheduler.kind not in SPECULATIVE_SCHEDULERS:
            raise KeyedValueError("speculative", f"scheduler kind {self.scheduler.kind!r} does not run speculative "
                                                 f"decoding here (allowed: scheduler kinds "
                                                 f"{', '.join(SPECULATIVE_SCHEDULERS)}, vLLM V1's loop)")
        if self.disaggregation is not None:
            if self.speculative is not None:   # the disaggregated decode instances price no draft (its own loop)
                raise KeyedValueError("speculative", "speculative decoding is not modeled with serving."
                                                     "disaggregation (allowed: one of the two blocks)")
            if self.replicas != 1:   # 1, the default, is what a saved run folder's scenario writes out
                raise KeyedValueError("replicas", f"{self.replicas}: with disaggregation the instances are "
                                                  "disaggregation.prefill.replicas and disaggregation.decode.replicas "
                                                  "(allowed: 1, or omit replicas)")
            if self.scheduler.kind == "static":
                raise KeyedValueError("scheduler.kind", "static batching is not modeled with disaggregation (a "
                                                        "decode instance admits requests every iteration); allowed: "
                                                        "continuous, chunked-prefill, prefill-first, tgi, sglang")
        think = self.arrival.think_s or 0.0
        if self.arrival.kind == "concurrency" and think:
            # a client's requests follow one another think_s apart: the run spans at least that many thinks
            turns = math.ceil(self.requests / min(self.arrival.clients_list)) - 1 if self.requests else 1
            if think > MAX_SIMULATED_S or think * turns > MAX_SIMULATED_S:
                raise KeyedValueError("arrival.think_s", (
                    f"{think:g} s: {max(turns, 1)} think{'s' if turns > 1 else ''} per client span "
                    f"{think * max(turns, 1):.3g} s of simulated time; allowed: think_s x (requests / clients - 1) "
                    f"and think_s <= {MAX_SIMULATED_S:g} s (the simulated clock's resolution)"))
        return self

    def overhead_on(self, device: Any) -> float:
        """Seconds per request outside the engine (ServingSpec.request_overhead_s, else the device entry's)."""
        if self.request_overhead_s is not None:
            return self.request_overhead_s
        return float(getattr(device, "request_overhead_s", 0.0) or 0.0)

    def host_step_on(self, device: Any) -> "HostStep":
        """The host time of one engine iteration (serving.step_overhead_s / step_overhead_per_seq_s, else the
        device entry's)."""
        def pick(key: str) -> float:
            value = getattr(self, key)
            return float(value if value is not None else getattr(device, key, 0.0) or 0.0)
        return HostStep(pick("step_overhead_s"), pick("step_overhead_per_seq_s"))

    def eager_launch_on(self, device: Any) -> "EagerLaunch":
        """Which passes run eagerly (serving.scheduler.eager, else the policy's), the host seconds per kernel
        launched (the device entry's eager_launch_s; 0 = not modeled) and whose model code's kernels a pass launches
        (serving.scheduler.engine_kernels, else the policy's) and the most sequences a decode pass replays a graph
        with (serving.scheduler.graph_max_batch), and whether the engine fuses each all-reduce with the RMSNorm
        after it (serving.scheduler.fuse_allreduce_rms)."""
        return EagerLaunch(self.scheduler.eager_passes, float(getattr(device, "eager_launch_s", 0.0) or 0.0),
                           self.scheduler.engine_kernels_of, self.scheduler.graph_max_batch,
                           self.scheduler.fuse_allreduce_rms)

    def at_rate(self, rate: float | None) -> "ServingSpec":
        """This spec with one rate of the sweep."""
        return self.model_copy(update={"arrival": self.arrival.model_copy(update={"rate": rate})})

    def at_point(self, key: str, value: float | int | None) -> "ServingSpec":
        """This spec at one point of its arrival sweep (Arrival.sweep): a rate, or a closed loop's clients."""
        return self.model_copy(update={"arrival": self.arrival.model_copy(update={key: value})})


@dataclass(frozen=True)
class ServingCase:
    """What a backend needs to run one (case, rate): the block at that rate, the seed and the scheduler class
    the runner resolved (built-in or a plugin's), and the trace file's path."""

    spec: ServingSpec
    seed: int
    scheduler: type
    trace: str | None = None      # absolute path of the trace file, if any

    @property
    def rate(self) -> float | None:
        rate = self.spec.arrival.rate
        return None if rate is None else float(rate)  # type: ignore[arg-type]

    @property
    def clients(self) -> int | None:
        """A closed loop's clients at this point of the sweep (None for an open loop)."""
        clients = self.spec.arrival.clients
        return None if clients is None else int(clients)  # type: ignore[arg-type]

    @property
    def think_s(self) -> float:
        """A closed loop's think time, seconds (0 when not given)."""
        return float(self.spec.arrival.think_s or 0.0)
