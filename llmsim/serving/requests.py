"""The request list of a serving run: when each request arrives and how long its prompt and answer are.

Seeded and independent of the backend, so that the same list goes to every backend (the modeled
simulation and a measured engine). Arrival gaps and lengths come from two separate streams, so the lengths
are the same at every rate of a sweep and only the gaps scale (common random numbers: the latency-load
curve is smooth). The first request arrives at t = 0, as vLLM's `bench serve` sends its first request
at once and then sleeps each gap (vllm/benchmarks/serve.py, `get_request`).

A closed loop (arrival kind `concurrency`) has the same list, the same lengths in the same order, but no arrival
times in advance: every request is queued at t = 0 (arrival_s 0 in the list, as vLLM's `bench serve` creates every
request task at once and lets a semaphore hold all but N back) and is *sent* when a client is free; the simulation
and the measured client give each request its send time as arrival_s (`ClosedLoop`). Bounded by `duration_s`, the
list is drawn lazily (`iter_requests`): a client sends nothing at or after duration_s.

Both `requests` and `duration_s` given: arrivals stop at whichever limit comes first (a benchmark's trial of N
requests with a time limit, e.g. sarathi-serve's capacity search: 2,048 requests, 30 minutes). The list is then the
prefix of either one-limit list of the same seed that both limits allow: the same draws, cut earlier.

Trace files: JSONL (one object per line) or CSV (a header line), with the columns TRACE_COLUMNS:
arrival_s (seconds, any origin: the first arrival becomes t = 0), input_tokens and output_tokens. UTF-8 with or
without a byte-order mark; numbers as JSON numbers or text (a CSV field is text; so may a JSON string be), never a
boolean; the arrivals span at most MAX_SIMULATED_S, as requests / rate may (read_trace, trace_span_problem).
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmsim.serving.spec import (MAX_REQUESTS, MAX_SIMULATED_S, TRACE_COLUMNS, ExponentialLength, Length, Lengths,
                                 LognormalLength, QuantileLength, ServingCase, ServingSpec, UniformLength,
                                 burst_text, length_bounds)
from llmsim.strict import MAX_DIMENSION
from llmsim.userinput import not_a_regular_file
from llmsim.wording import count, shown_value


@dataclass(frozen=True)
class Request:
    """One request: its index in the list, arrival time (s) and token counts."""

    id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int


class TraceError(ValueError):
    """A trace file that cannot be read as written: `column` names what is wrong where it is one column."""

    def __init__(self, path: str, message: str, column: str | None = None) -> None:
        self.path = path
        self.column = column
        super().__init__(f"{path}: {message}")


def _stream(seed: int, what: str) -> random.Random:
    """A named random stream of the run (a str seed is hashed with SHA-512: the same on every platform)."""
    return random.Random(f"llmsim-serving-{what}-{seed}")


# Redraws of one request's (prompt, output) pair before the filter is taken as unpassable in practice. The
# spec refuses a filter no pair can pass (Lengths._passable); this bounds one that almost none can.
MAX_REDRAWS = 10_000


# ln of the largest float: math.exp of more overflows (a lognormal of sigma 200 draws such exponents)
_MAX_EXPONENT = math.log(sys.float_info.max)


def _tokens(drawn: float) -> int:
    """A drawn token count: rounded, at least 1 and at most MAX_DIMENSION (a wider tail, e.g. an exponential of
    mean 1e9, draws past it or to inf; such a request is longer than any context, rejected either way)."""
    return max(1, round(min(drawn, MAX_DIMENSION)))


def draw_length(spec: Length, rng: random.Random) -> int:
    """One token count of a length distribution (a fixed number, uniform, lognormal, exponential, quantiles)."""
    if isinstance(spec, int):
        return spec
    if isinstance(spec, UniformLength):
        return rng.randint(spec.min, spec.max)
    if isinstance(spec, ExponentialLength):
        return _tokens(spec.mean * rng.expovariate(1.0))
    if isinstance(spec, QuantileLength):
        return _tokens(quantile_tokens(spec, rng.random()))
    assert isinstance(spec, LognormalLength)
    exponent = spec.sigma * rng.gauss(0.0, 1.0)
    return MAX_DIMENSION if exponent > _MAX_EXPONENT else _tokens(spec.median * math.exp(exponent))


def quantile_tokens(spec: QuantileLength, u: float) -> float:
    """F^-1(u) of a quantiles form: linear between the published (p, tokens) points; u in [0, 1]."""
    points = spec.points
    for (p0, t0), (p1, t1) in zip(points, points[1:]):
        if u <= p1:
            return t0 + (t1 - t0) * (u - p0) / (p1 - p0)
    return points[-1][1]


# Pairs drawn to check, before a run, that a lengths block with an unbounded form (lognormal, exponential) can
# produce a request at all: one its filter passes (Lengths._passable) and that fits the model's context
# (config.check_serving). As many as MAX_REDRAWS: a filter none of them passes would fail the run's first request.
PROBE_DRAWS = MAX_REDRAWS


def probe_pairs(lengths: Lengths) -> list[tuple[int, int]]:
    """PROBE_DRAWS unfiltered (prompt, output) pairs of the lengths block's forms, from a fixed stream (the same
    answer on every call and platform)."""
    rng = _stream(0, "probe")
    return [(draw_length(lengths.input, rng), draw_length(lengths.output, rng)) for _ in range(PROBE_DRAWS)]


def lengths_past_context_note(lengths: Lengths, context: int) -> str | None:
    """A note when some, not all, requests the lengths block draws are longer than `context` (prompt + output
    tokens; the workload's seq_len): they are rejected and counted (rejected_context), as vLLM rejects prompt +
    max_tokens > max_model_len. The share is that of the probe's pairs (probe_pairs) that pass the filter: an
    estimate for the run's own draws. None when none of them is (config refuses a block of which all are)."""
    pairs = [p for p in probe_pairs(lengths) if lengths.passes(*p)]
    long = sum(1 for n_in, n_out in pairs if n_in + n_out > context)
    if not pairs or long == 0 or long == len(pairs):
        return None
    return (f"about {long / len(pairs):.1%} of the requests these lengths draw are longer than the context "
            f"(workload.model.seq_len = {context:,} tokens, prompt + output; {long:,} of {len(pairs):,} pairs drawn "
            f"to check): rejected and counted (rejected_context), as vLLM does; a max_total filter keeps them out")


def filter_problem(lengths: Lengths) -> tuple[str, str] | None:
    """(key, message) when a lengths block's filter refuses every pair of the probe (probe_pairs), else None.

    Lengths itself refuses a filter that its forms' bounds rule out; an unbounded form (lognormal, exponential)
    may still put almost no mass where the filter passes (median 1e6 under max_input 100). The key is the filter
    key that refused the most of the pairs, relative to the lengths block."""
    if not lengths.filtered or math.inf not in (length_bounds(lengths.input)[1], length_bounds(lengths.output)[1]):
        return None
    pairs = probe_pairs(lengths)
    if any(lengths.passes(n_in, n_out) for n_in, n_out in pairs):
        return None
    refused = {"min": sum(1 for a, b in pairs if lengths.min is not None and min(a, b) < lengths.min),
               "max_input": sum(1 for a, _ in pairs if lengths.max_input is not None and a > lengths.max_input),
               "max_total": sum(1 for a, b in pairs if lengths.max_total is not None and a + b > lengths.max_total)}
    key = max(refused, key=lambda k: refused[k])
    return key, (f"{getattr(lengths, key)}: none of {PROBE_DRAWS:,} drawn pairs passes the filter ({refused[key]:,} "
                 f"fail {key}); allowed: a filter some drawn lengths pass")


def draw_pair(lengths: Lengths, rng: random.Random) -> tuple[int, int]:
    """One request's (prompt, output) tokens: drawn, and drawn again while the lengths block's filter refuses
    the pair (rejection sampling, as vLLM's ShareGPT samplers skip a conversation out of range and take the
    next). Raises ValueError naming the filter if MAX_REDRAWS draws all fail."""
    for _ in range(MAX_REDRAWS):
        n_in, n_out = draw_length(lengths.input, rng), draw_length(lengths.output, rng)
        if lengths.passes(n_in, n_out):
            return n_in, n_out
    raise ValueError(f"serving.lengths: {MAX_REDRAWS} draws in a row failed the filter (min {lengths.min}, "
                     f"max_input {lengths.max_input}, max_total {lengths.max_total}); widen it")


def draw_lengths(lengths: Lengths, count: int, seed: int) -> list[tuple[int, int]]:
    """The (prompt, output) tokens of `count` requests from the run's lengths stream of `seed`: what
    build_requests gives the requests of a synthetic arrival kind, in order (the same seed, the same list)."""
    rng = _stream(seed, "lengths")
    return [draw_pair(lengths, rng) for _ in range(count)]


def _gaps(spec: ServingSpec, rng: random.Random):  # noqa: ANN202 - a generator of floats
    """Inter-arrival gaps in seconds for a synthetic arrival kind at the spec's one rate."""
    rate = float(spec.arrival.rate)  # type: ignore[arg-type]
    kind = spec.arrival.kind
    while True:
        if kind == "constant":
            yield 1.0 / rate
        elif kind == "poisson":
            yield rng.expovariate(rate)
        else:  # gamma: shape k = 1/cv^2, mean k * theta = 1/rate
            shape = 1.0 / (spec.arrival.cv or 1.0) ** 2
            yield rng.gammavariate(shape, 1.0 / (rate * shape))


def _number(value: object) -> float | None:
    """A trace field as a number: a JSON number, or text holding one (every CSV field is text, and a JSON string
    holding a number reads as a CSV field would); None for anything else. A boolean is no number, though Python's
    bool is an int (JSON `true` read as 1.0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None
    except OverflowError:   # a JSON integer past float's range (1 followed by 400 zeros)
        return math.inf


def read_trace(path: str | Path) -> list[tuple[float, int, int]]:
    """(arrival_s, input_tokens, output_tokens) of every row of a JSONL or CSV trace, sorted by arrival (rows of
    one arrival time in file order); read_trace_in_file_order says how to read one."""
    return arrival_order(read_trace_in_file_order(path)[0])


def arrival_order(rows: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """The rows sorted by arrival_s, a stable sort: rows of one time keep their order (their request ids)."""
    return sorted(rows, key=lambda r: r[0])


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object hook: a JSON object's key given twice raises _DuplicateKey (the default keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def read_trace_in_file_order(path: str | Path) -> tuple[list[tuple[float, int, int]], list[int]]:
    """(arrival_s, input_tokens, output_tokens) of every row of a JSONL or CSV trace in file order, and the line
    each came from (for trace_order_notes).

    UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8" writes one). A number is a JSON number or text
    holding one (`_number`); token counts are whole numbers >= 1. The arrivals may span at most MAX_SIMULATED_S
    (as requests / rate may: a token time added to an arrival far beyond it is rounded away).
    Raises TraceError naming the file, and the column or line, for anything unreadable."""
    file = str(path)
    special = not_a_regular_file(path)
    if special:
        raise TraceError(file, special)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise TraceError(file, f"cannot read the trace: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(file, "not UTF-8 text (a trace is JSONL or CSV)") from None
    records: list[tuple[int, dict]] = []
    if file.endswith(".csv"):
        reader = csv.reader(text.splitlines())
        header = next(reader, [])
        twice = next((c for c in TRACE_COLUMNS if header.count(c) > 1), None)
        if twice is not None:   # which one is meant? (a scenario's duplicate YAML key is refused alike)
            raise TraceError(file, f"the header names column {twice!r} {header.count(twice)} times; allowed: each of "
                                   f"{', '.join(TRACE_COLUMNS)} once", twice)
        for column in TRACE_COLUMNS:
            if column not in header:
                raise TraceError(file, f"missing column {column!r} (the header has {', '.join(header) or 'nothing'}; "
                                       f"needed: {', '.join(TRACE_COLUMNS)})", column)
        for fields in reader:
            if not fields:   # a blank line
                continue
            if len(fields) != len(header):   # csv.DictReader would file extras under None, fill missing with None
                raise TraceError(file, f"line {reader.line_num}: {len(fields)} fields, the header has {len(header)} "
                                       f"({', '.join(header)})")
            records.append((reader.line_num, dict(zip(header, fields))))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_unique_keys)
            except _DuplicateKey as exc:   # json.loads keeps the last silently: which one is meant?
                raise TraceError(file, f"line {number}: key {exc.key!r} given twice; allowed: each of "
                                       f"{', '.join(TRACE_COLUMNS)} once", exc.key) from None
            except json.JSONDecodeError as exc:
                # a file not named *.csv is read as JSONL: say so where its name ends otherwise (a CSV named .txt)
                hint = "" if file.endswith((".jsonl", ".json")) else \
                    " (a trace whose name does not end in .csv is read as JSONL; allowed: .csv, .jsonl)"
                raise TraceError(file, f"line {number}: not JSON ({exc.msg}){hint}") from None
            except ValueError:   # an integer of more than sys.get_int_max_str_digits() digits
                raise TraceError(file, f"line {number}: not a usable JSON object (a number of more than "
                                       f"{sys.get_int_max_str_digits():,} digits)") from None
            except RecursionError:
                raise TraceError(file, f"line {number}: not a usable JSON object (nested too deeply)") from None
            if not isinstance(row, dict):
                raise TraceError(file, f"line {number}: expected an object with {', '.join(TRACE_COLUMNS)}")
            for column in TRACE_COLUMNS:
                if column not in row:
                    raise TraceError(file, f"line {number}: missing column {column!r} (needed: "
                                           f"{', '.join(TRACE_COLUMNS)})", column)
            records.append((number, row))
    if not records:
        raise TraceError(file, "has no requests")
    out: list[tuple[float, int, int]] = []
    lines: list[int] = []
    for number, row in records:
        arrival = _number(row["arrival_s"])
        if arrival is None:
            raise TraceError(file, f"line {number}: arrival_s {shown_value(row['arrival_s'])} is not a number",
                             "arrival_s")
        if not math.isfinite(arrival):
            raise TraceError(file, f"line {number}: arrival_s {shown_value(row['arrival_s'])} is not finite",
                             "arrival_s")
        counts = []
        for column in ("input_tokens", "output_tokens"):
            value = _number(row[column])
            if value is not None and (math.isinf(value) or value > MAX_DIMENSION):
                raise TraceError(file, f"line {number}: {column} {shown_value(row[column])} is too large; allowed: "
                                       f"a whole number >= 1 and <= {MAX_DIMENSION}", column)
            if value is None or not math.isfinite(value) or not value.is_integer() or value < 1:
                raise TraceError(file, f"line {number}: {column} {shown_value(row[column])} is not a whole number >= 1",
                                 column)
            counts.append(int(value))
        out.append((arrival, counts[0], counts[1]))
        lines.append(number)
    first = min(range(len(out)), key=lambda i: out[i][0])
    last = max(range(len(out)), key=lambda i: out[i][0])
    span = out[last][0] - out[first][0]
    if span > MAX_SIMULATED_S:
        raise TraceError(file, f"line {lines[last]}: arrival_s {out[last][0]:g} is {span:.3g} s after the first "
                               f"arrival (line {lines[first]}); allowed: a trace spanning at most "
                               f"{MAX_SIMULATED_S:g} s (the simulated clock's resolution)", "arrival_s")
    return out, lines


def trace_order_notes(rows: list[tuple[float, int, int]], lines: list[int]) -> list[tuple[str, str]]:
    """(key, note) for a trace file whose arrivals a replay does not take as written (read_trace_in_file_order's
    rows and lines): rows out of arrival order are replayed sorted, and times are relative to the first arrival
    (a negative first time shifts every arrival). Valid input, said before a run, not refused."""
    notes = []
    back = next((i for i in range(1, len(rows)) if rows[i][0] < rows[i - 1][0]), None)
    if back is not None:
        notes.append(("serving.arrival.path", f"the trace's rows are not in arrival order (line {lines[back]}'s "
                                              f"arrival_s {rows[back][0]:g} is before line {lines[back - 1]}'s "
                                              f"{rows[back - 1][0]:g}): replayed sorted by arrival_s"))
    first = min(range(len(rows)), key=lambda i: rows[i][0])
    if rows[first][0] < 0:
        notes.append(("serving.arrival.path", f"the first arrival is at {rows[first][0]:g} s (line {lines[first]}): "
                                              f"times are taken relative to it, so the replay starts it at t = 0"))
    return notes


def trace_span_problem(spec: ServingSpec, rows: list[tuple[float, int, int]]) -> tuple[str, str] | None:
    """(key relative to the serving block, message) when a trace scaled to a rate would span more simulated time
    than MAX_SIMULATED_S (read_trace holds the recorded span to it; ServingSpec holds requests / rate to it when
    requests is given, but a prefix of uneven gaps may span more), else None. Scaled to `rate`, the whole trace's
    n arrivals span (n - 1) / rate (build_requests); those sent (`requests` cuts) their share of it; duration_s,
    when given, cuts the arrivals inside the limit."""
    rates = [r for r in spec.arrival.rates if r is not None]
    total = rows[-1][0] - rows[0][0]
    if not rates or spec.duration_s is not None or total == 0:   # no gap to scale: every arrival at t = 0
        return None
    slowest = min(rates)
    times = replay_times(rows, slowest)
    sent = replay_count(spec, times)
    span = times[sent - 1]
    if span <= MAX_SIMULATED_S:
        return None
    return "arrival.rate", (f"{slowest:g} requests/s: the trace's {count(sent, 'request')} would span {span:.3g} s "
                            f"of simulated time (its mean gap scaled to 1 / rate); allowed: a replay spanning at "
                            f"most {MAX_SIMULATED_S:g} s (the simulated clock's resolution)")


def replay_times(rows: list[tuple[float, int, int]], rate: float | None) -> list[float]:
    """The arrival times (s) a replay of the trace's `rows` (in arrival order) gives: relative to the first, as
    recorded (`rate` None), or with every gap scaled so that the mean rate is `rate` (requests/s): n arrivals then
    span (n - 1) / rate. A trace whose arrivals are all at one time has no gap to scale."""
    start = rows[0][0]
    recorded = [t - start for t, _, _ in rows]
    span = recorded[-1]
    scale = (len(rows) - 1) / span / rate if rate is not None and len(rows) > 1 and span > 0 else 1.0
    return [t * scale for t in recorded]


def replay_count(spec: ServingSpec, times: list[float]) -> int:
    """How many of a replay's arrivals (`replay_times`, rising) are sent: all, cut by `requests` and by duration_s
    (those before it: a prefix), whichever comes first."""
    keep = len(times) if spec.requests is None else min(len(times), spec.requests)
    if spec.duration_s is not None:
        keep = min(keep, bisect.bisect_left(times, spec.duration_s))
    return keep


def trace_count_problem(spec: ServingSpec, rows: list[tuple[float, int, int]]) -> tuple[str, str] | None:
    """(key relative to the serving block, message) when a replay of the trace (rows in arrival order) would send
    more than MAX_REQUESTS requests, the bound a count or a rate x duration_s has (trial 35: a trace of 1,000,001
    rows ran uncapped), else None. `requests` cuts the replay; `duration_s` cuts it at the arrivals before it,
    scaled to the sweep's highest rate as build_requests scales them."""
    rates = [r for r in spec.arrival.rates if r is not None]
    sent = replay_count(spec, replay_times(rows, max(rates) if rates else None))   # the fastest sends the most
    if sent <= MAX_REQUESTS:
        return None
    return "arrival.path", (f"the trace replays {sent:,} requests; allowed: at most {MAX_REQUESTS:,} in one run "
                            f"(cut it with serving.requests, or duration_s)")


def trace_notes(spec: ServingSpec, rows: list[tuple[float, int, int]], context: int | None = None
                ) -> list[tuple[str, str]]:
    """(key, note) for a trace replay that does not do what its file alone says (read_trace's `rows`): a `lengths`
    block replaces the recorded token counts (the arrival times are kept: build_requests), `requests` above the
    trace's length sends only the trace's requests, requests longer than `context` (prompt + output tokens;
    the workload's seq_len) are rejected and counted, as vLLM does, and arrivals all at one time have no mean rate
    (request_rate is left empty) and no gap a rate could scale, and a replay that brings every request within
    BURST_SPAN_S is a burst (spec.burst_text). Said before a run, not refused: all are valid."""
    notes = []
    long = sum(1 for _, n_in, n_out in rows if context is not None and n_in + n_out > context)
    if long and spec.lengths is None:
        notes.append(("serving.arrival.path", f"{long:,} of the trace's {count(len(rows), 'request')} "
                                              f"{'is' if long == 1 else 'are'} longer than the context "
                                              f"(workload.model.seq_len = {context:,} tokens, prompt + output): "
                                              f"rejected and counted (rejected_context), as vLLM does"))
    if spec.lengths is not None:
        notes.append(("serving.lengths", "the lengths block replaces the trace's recorded input_tokens and "
                                         "output_tokens (its arrival times are kept); omit lengths to replay the "
                                         "recorded lengths"))
    sent = len(rows) if spec.requests is None else min(len(rows), spec.requests)
    if sent > 1 and rows[sent - 1][0] == rows[0][0]:   # rows are sorted: those sent are a prefix
        burst = (f"every arrival of the trace is at the same time ({count(sent, 'request')} at t = 0, a burst): ")
        if spec.arrival.rate is None:   # metrics.summarize: (sent - 1) / span has no value
            notes.append(("serving.arrival.path", burst + "it has no mean arrival rate, so request_rate is left "
                                                          "empty"))
        else:
            notes.append(("serving.arrival.rate", burst + "there is no gap for the rate to scale, so every request "
                                                          "arrives at t = 0 whatever the rate (request_rate says the "
                                                          "rate asked)"))
    elif sent > 1:   # arrivals apart, but all within BURST_SPAN_S once replayed (trial 40: 500 in 50 us, no note)
        rates = [r for r in spec.arrival.rates if r is not None]
        times = replay_times(rows, max(rates) if rates else None)
        sent = replay_count(spec, times)
        note = burst_text("the trace's replay" + (f" scaled to {max(rates):g} requests/s" if rates else ""),
                          sent, times[sent - 1] if sent else 0.0)
        if note is not None:
            notes.append(("serving.arrival.rate" if rates else "serving.arrival.path", note))
    if spec.requests is not None and spec.requests > len(rows):
        held = count(len(rows), "request")
        # with duration_s too, arrivals also stop at the span (trial 29: "they are all sent" beside 2 of 3 sent)
        sent_all = ("all sent" if spec.duration_s is None
                    else f"sent up to duration_s={spec.duration_s:g} s, at most all of them")
        notes.append(("serving.requests", f"{spec.requests:,} asked but the trace has {held}: "
                                          f"{'it is' if len(rows) == 1 else 'they are'} {sent_all}"))
    return notes


@dataclass(frozen=True)
class ClosedLoop:
    """A closed loop: `clients` clients, each sending its next request `think_s` seconds after its previous one's
    last token (the client's clock), none at or after `until_s` (serving.duration_s; None: bounded by the request
    count). Requests are taken in id order by whichever client is free first."""

    clients: int
    think_s: float = 0.0
    until_s: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.clients, int) and self.clients >= 1):
            raise ValueError(f"clients must be a whole number >= 1 (got {self.clients!r})")
        if not self.think_s >= 0:
            raise ValueError(f"think_s must be >= 0 seconds (got {self.think_s!r})")


def closed_loop_of(case: ServingCase) -> ClosedLoop | None:
    """The closed loop of a (case, clients) point, or None for an open-loop arrival."""
    if case.clients is None:
        return None
    return ClosedLoop(case.clients, case.think_s, case.spec.duration_s)


def iter_requests(case: ServingCase) -> Iterator[Request]:
    """The request list of one (case, point) in id order, lazily: what build_requests gives, and for a closed loop
    bounded by duration_s an endless stream (the clients stop taking from it at duration_s). Request i has the
    same lengths in an open and a closed loop of the same seed."""
    if not case.spec.arrival.closed:
        yield from build_requests(case)
        return
    spec = case.spec
    assert spec.lengths is not None, "a closed loop draws its lengths (ServingSpec._count)"
    lengths = _stream(case.seed, "lengths")
    i = 0
    while spec.requests is None or i < spec.requests:
        if i >= MAX_REQUESTS:   # bounded by duration_s only: the same bound as an open loop's rate x duration_s
            raise ValueError(f"serving.duration_s: a closed loop of {case.clients} clients sent {MAX_REQUESTS:,} "
                             f"requests before duration_s={spec.duration_s:g} s; allowed: at most {MAX_REQUESTS:,} "
                             f"in one run (shorten duration_s, or give requests)")
        n_in, n_out = draw_pair(spec.lengths, lengths)
        yield Request(i, 0.0, n_in, n_out)
        i += 1


def build_requests(case: ServingCase) -> list[Request]:
    """The request list of one (case, rate): deterministic for the seed, the same for every backend.

    A closed loop's list has every arrival_s 0 (all queued at t = 0; see ClosedLoop); one bounded by duration_s
    has no list in advance (ValueError: use iter_requests)."""
    spec = case.spec
    if spec.arrival.closed:
        if spec.requests is None:
            raise ValueError("a closed loop bounded by duration_s has no request list in advance: use iter_requests")
        return list(iter_requests(case))
    lengths = _stream(case.seed, "lengths")
    times: list[float] = []
    trace_lengths: list[tuple[int, int]] = []
    if spec.arrival.kind == "trace":
        assert case.trace is not None, "the runner resolves the trace path"
        rows = read_trace(case.trace)
        times = replay_times(rows, case.rate)
        keep = replay_count(spec, times)
        times, trace_lengths = times[:keep], [(i, o) for _, i, o in rows[:keep]]
    else:
        gaps = _gaps(spec, _stream(case.seed, "arrivals"))
        t = 0.0
        # arrivals stop at whichever limit comes first (one given: that one; ServingSpec needs at least one)
        while (spec.requests is None or len(times) < spec.requests) and \
                (spec.duration_s is None or t < spec.duration_s):
            times.append(t)
            t += next(gaps)
    out: list[Request] = []
    for i, arrival in enumerate(times):
        if spec.lengths is not None:
            n_in, n_out = draw_pair(spec.lengths, lengths)
        else:
            n_in, n_out = trace_lengths[i]
        out.append(Request(i, arrival, n_in, n_out))
    return out
