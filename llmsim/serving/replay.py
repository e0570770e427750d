"""Replay a request list against an OpenAI-compatible streaming server and record when every token came out.

The measured counterpart of llmsim.serving.simulate: the *same* request list (llmsim.serving.requests), each
request sent at its arrival time from an asynchronous client (httpx; one task per request, as vLLM's
`bench serve` sends them, vllm/benchmarks/serve.py), its answer streamed (server-sent events) and the
arrival of every chunk timed with `time.perf_counter`, t = 0 when the first request is sent. The outcome is
a `ServingOutcome`, so the measured row and per-request CSV come from the same code as the modeled ones
(llmsim.serving.metrics).

Each request asks for exactly its output tokens: `/v1/completions` with the prompt as token ids,
`max_tokens` = `min_tokens` = output tokens and `ignore_eos` (vLLM's sampling extras), greedy. A chunk may
carry several tokens (the server coalesces outputs when the client reads late); they are all given the
chunk's time, so such a gap counts as 0 in ITL — vLLM's own benchmark counts it as one gap instead.

A request the server refuses (HTTP 4xx/5xx) is a rejection: `context` when the error names the context
length (vLLM's `max_model_len` check), else `error`; one that fails mid-stream, times out, or is still
open when the run's time runs out is a rejection `error`/`timeout`. None of them loses the row.

A closed loop (llmsim.serving.requests.ClosedLoop) is replayed by `clients` worker tasks instead of the arrival
schedule: each takes the next request of the list, sends it at once (its arrival_s becomes the send time, so TTFT
and E2E are timed from the send, as vLLM's `bench serve --max-concurrency` times them after its semaphore), reads
its whole answer, sleeps think_s and takes the next; none sends at or after until_s.

Several servers (replicas) are fed by the simulation's own router (llmsim.serving.router: round-robin, or
least outstanding requests, a request outstanding from its send to its last token or failure); each answer
records which server it went to.

httpx is imported when a replay runs, so llmsim imports without it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from array import array
from collections.abc import Callable, Iterable, Sequence as Seq
from dataclasses import dataclass, field, replace
from typing import Any

from llmsim.serving.kvcache import Sequence
from llmsim.serving.requests import ClosedLoop, Request
from llmsim.serving.router import Router
from llmsim.serving.simulate import Rejection, ServingOutcome

# Words of vLLM's refusal of a request longer than max_model_len (vllm/entrypoints/openai/serving_engine.py,
# `_validate_input`: "This model's maximum context length is ... tokens"; newer releases also name
# max_model_len), lower-cased.
CONTEXT_ERROR_WORDS = ("maximum context length", "max_model_len", "context length")
# How often the engine's Prometheus metrics are read during a run (KV-cache use is a gauge: its peak is
# the largest value seen at these instants), seconds.
DEFAULT_METRICS_INTERVAL_S = 0.1


def prompt_ids(request: Request, vocab: int, seed: int, first_id: int) -> list[int]:
    """The prompt of a request: input_tokens ids drawn uniformly from first_id..vocab-1, a function of the seed
    and the request's id alone (the same prompt at every rate)."""
    rng = random.Random(f"llmsim-serving-prompt-{seed}-{request.id}")
    return [rng.randrange(first_id, vocab) for _ in range(request.input_tokens)]


@dataclass
class Answer:
    """What came back for one request: chunk arrival times (s since t = 0) and the tokens each carried."""

    request: Request
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    error: str | None = None        # None = finished; else the rejection's reason
    detail: str = ""
    replica: int = 0                # the server the router sent it to

    @property
    def token_times(self) -> array:
        """One time per output token (a chunk of k tokens gives k equal times)."""
        out = array("d")
        for t, k in zip(self.chunk_times, self.chunk_tokens):
            out.extend([t] * k)
        return out


@dataclass
class Metrics:
    """What the engine's /metrics said during the run (None where the engine did not report it)."""

    kv_peak_utilization: float | None = None
    preemptions: int | None = None
    samples: int = 0


def parse_prometheus(text: str) -> dict[str, float]:
    """{metric name: value} of a Prometheus text exposition, values of one name (over label sets) summed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if "}" in line:  # name{labels} value [timestamp]; a label value may hold spaces
            cut = line.rindex("}") + 1
            name_labels, rest = line[:cut], line[cut:]
        else:            # name value [timestamp]
            name_labels, _, rest = line.partition(" ")
        name = name_labels.split("{", 1)[0].strip()
        try:
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def _first(values: dict[str, float], names: Seq[str]) -> float | None:
    return next((values[n] for n in names if n in values), None)


# vLLM v1 metric names (vllm/v1/metrics/loggers.py); the older name of the KV gauge second.
KV_USAGE_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTION_METRICS = ("vllm:num_preemptions_total", "vllm:num_preemptions")


@dataclass
class Endpoint:
    """One server behind the router (llmsim.serving.router.Routable): its URL and requests in flight."""

    index: int
    url: str
    outstanding: int = 0


class Replay:
    """Replays requests against `base_url` (an OpenAI-compatible server, or a list of them: replicas behind
    `router`) under the served `model` name.

    `prompt_of(request)` gives a request's token ids; `count_tokens(text)` the tokens in a streamed piece of
    text. `transport` (an httpx transport) replaces the network in tests."""

    def __init__(self, base_url: str | Seq[str], model: str, prompt_of: Callable[[Request], list[int]],
                 count_tokens: Callable[[str], int], *, request_timeout_s: float = 600.0,
                 run_timeout_s: float | None = None, metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S,
                 transport: Any = None, router: str = "round-robin") -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("a replay needs at least one server URL")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]
        self.router = router
        self.model = model
        self.prompt_of = prompt_of
        self.count_tokens = count_tokens
        self.request_timeout_s = request_timeout_s
        self.run_timeout_s = run_timeout_s
        self.metrics_interval_s = metrics_interval_s
        self.transport = transport

    def run(self, requests: Iterable[Request], closed_loop: ClosedLoop | None = None
            ) -> tuple[list[Answer], Metrics, float]:
        """(answers in request order, the engine's metrics, wall seconds): blocks until every request finished,
        failed or the run's time ran out. Open loop (closed_loop None): each request is sent at its arrival_s.
        Closed loop: requests (lazily: endless when closed_loop.until_s bounds them) are sent by
        closed_loop.clients workers, each answer's request carrying its send time as arrival_s."""
        return asyncio.run(self._run(requests, closed_loop))

    def body(self, request: Request) -> dict[str, Any]:
        """The /v1/completions request: exactly output_tokens tokens, streamed, greedy, prompt as ids."""
        n = request.output_tokens
        return {"model": self.model, "prompt": self.prompt_of(request), "max_tokens": n, "min_tokens": n,
                "ignore_eos": True, "temperature": 0.0, "stream": True,
                # random weights sample special tokens too: decoded, they keep one word per token
                "skip_special_tokens": False,
                "stream_options": {"include_usage": True}}

    async def _run(self, requests: Iterable[Request], closed_loop: ClosedLoop | None = None
                   ) -> tuple[list[Answer], Metrics, float]:
        import httpx

        # a closed loop bounded by duration takes requests as it goes; otherwise every answer exists from the start
        # (one never sent is a timeout)
        lazy = closed_loop is not None and closed_loop.until_s is not None
        source = iter(requests)
        answers = [] if lazy else [Answer(r) for r in source]
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(self.request_timeout_s)
        metrics = Metrics()
        endpoints = [Endpoint(i, url) for i, url in enumerate(self.base_urls)]
        route = Router(self.router, endpoints)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=self.transport) as client:
            before = [await self._read_metrics(client, e.url) for e in endpoints]
            start = time.perf_counter()
            stop = asyncio.Event()
            sampler = asyncio.create_task(self._sample(client, endpoints, metrics, stop))

            async def routed(answer: Answer, endpoint: Endpoint) -> None:
                try:
                    await self._one(client, answer, start, endpoint.url)
                finally:
                    endpoint.outstanding -= 1

            def pick(answer: Answer) -> Endpoint:
                endpoint = route.pick()
                assert isinstance(endpoint, Endpoint)
                endpoint.outstanding += 1
                answer.replica = endpoint.index
                return endpoint

            async def send_all() -> None:
                tasks = []
                for answer in answers:
                    delay = answer.request.arrival_s - (time.perf_counter() - start)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(routed(answer, pick(answer))))
                await asyncio.gather(*tasks)

            taken = iter(answers)

            def next_answer() -> Answer | None:
                """The next request in id order, for whichever client asks first (one event loop: no race)."""
                if not lazy:
                    return next(taken, None)
                request = next(source, None)
                if request is None:
                    return None
                answers.append(Answer(request))
                return answers[-1]

            async def user(loop: ClosedLoop) -> None:
                """One client of the closed loop: send, read the whole answer, think, and again."""
                while True:
                    # one clock reading decides and stamps the send: read twice, a request sent just before
                    # until_s was stamped after it (the closed-loop test saw 0.4000038 for until_s 0.4)
                    now = time.perf_counter() - start
                    if loop.until_s is not None and now >= loop.until_s:
                        return
                    answer = next_answer()
                    if answer is None:
                        return
                    answer.request = replace(answer.request, arrival_s=now)
                    await routed(answer, pick(answer))
                    if loop.think_s:
                        await asyncio.sleep(loop.think_s)

            async def clients(loop: ClosedLoop) -> None:
                await asyncio.gather(*(user(loop) for _ in range(loop.clients)))

            sender = asyncio.create_task(send_all() if closed_loop is None else clients(closed_loop))
            try:
                await asyncio.wait_for(asyncio.shield(sender), self.run_timeout_s)
            except asyncio.TimeoutError:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            finally:
                stop.set()
                await sampler
            wall = time.perf_counter() - start
            for answer in answers:   # never sent, or cut off by the run's time
                if answer.error is None and sum(answer.chunk_tokens) < answer.request.output_tokens:
                    answer.error, answer.detail = "timeout", f"run_timeout_s {self.run_timeout_s:g} s reached"
            after = [await self._read_metrics(client, e.url) for e in endpoints]
        for b, a in zip(before, after):   # the counters' rise, summed over the servers that report it
            if b is not None and a is not None:
                count_before, count_after = _first(b, PREEMPTION_METRICS), _first(a, PREEMPTION_METRICS)
                if count_before is not None and count_after is not None:
                    metrics.preemptions = (metrics.preemptions or 0) + int(round(count_after - count_before))
        return answers, metrics, wall

    async def _one(self, client: Any, answer: Answer, start: float, url: str | None = None) -> None:
        """Send one request and time its chunks; any failure becomes the answer's error."""
        import httpx

        try:
            async with client.stream("POST", f"{url or self.base_url}/v1/completions",
                                     json=self.body(answer.request)) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", errors="replace")
                    lowered = text.lower()
                    answer.error = "context" if any(w in lowered for w in CONTEXT_ERROR_WORDS) else "error"
                    answer.detail = f"HTTP {response.status_code}: {text[:200]}"
                    return
                async for line in response.aiter_lines():
                    now = time.perf_counter() - start
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        answer.error, answer.detail = "error", str(chunk["error"])[:200]
                        return
                    tokens = sum(self.count_tokens(c.get("text") or "") for c in chunk.get("choices") or [])
                    if tokens:
                        answer.chunk_times.append(now)
                        answer.chunk_tokens.append(tokens)
            got = sum(answer.chunk_tokens)
            if got != answer.request.output_tokens:
                answer.error = "error"
                answer.detail = f"{got} tokens streamed, {answer.request.output_tokens} asked"
        except asyncio.CancelledError:
            answer.error, answer.detail = "timeout", "run_timeout_s reached"
            raise
        except httpx.TimeoutException as exc:
            answer.error, answer.detail = "timeout", f"request_timeout_s: {type(exc).__name__}"
        except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
            answer.error, answer.detail = "error", f"{type(exc).__name__}: {exc}"[:200]

    async def _read_metrics(self, client: Any, url: str | None = None) -> dict[str, float] | None:
        import httpx

        try:
            response = await client.get(f"{url or self.base_url}/metrics", timeout=5.0)
        except httpx.HTTPError:
            return None
        return parse_prometheus(response.text) if response.status_code == 200 else None

    async def _sample(self, client: Any, endpoints: Seq[Endpoint], metrics: Metrics, stop: asyncio.Event) -> None:
        """Read every server's KV-cache gauge every metrics_interval_s until `stop`; keep the fullest one's peak
        (as the simulation's kv_peak_utilization: the fullest replica)."""
        while not stop.is_set():
            for endpoint in endpoints:
                values = await self._read_metrics(client, endpoint.url)
                usage = _first(values, KV_USAGE_METRICS) if values else None
                if usage is not None:
                    metrics.samples += 1
                    metrics.kv_peak_utilization = max(metrics.kv_peak_utilization or 0.0, usage)
            try:
                await asyncio.wait_for(stop.wait(), self.metrics_interval_s)
            except asyncio.TimeoutError:
                pass


def outcome_of(answers: Seq[Answer], metrics: Metrics, wall_s: float,
               closed_loop: ClosedLoop | None = None) -> ServingOutcome:
    """The measured run as a ServingOutcome: finished requests as sequences with their token times and the
    server they went to, the others as rejections; what the engine does not report per request (when it was first
    scheduled, iterations, batch sizes) is left unknown. `closed_loop`: the loop the answers were sent by."""
    sequences, rejected = [], []
    for answer in answers:
        if answer.error is not None:
            rejected.append(Rejection(answer.request, answer.error))
            continue
        seq = Sequence(answer.request, answer.replica)
        seq.token_times = answer.token_times
        seq.generated = answer.request.output_tokens
        seq.finished = True
        sequences.append(seq)
    last_token = max((s.token_times[-1] for s in sequences), default=0.0)
    last_arrival = max((a.request.arrival_s for a in answers), default=0.0)
    return ServingOutcome(
        sequences=sequences, rejected=rejected, duration_s=max(last_token, last_arrival),
        # requests in the system integrated over time = the sum of their times in it (Little's L x T)
        occupancy_s=sum(s.token_times[-1] - s.request.arrival_s for s in sequences),
        preemptions=metrics.preemptions or 0, kv_blocks=0, kv_peak_used=[0], iterations=[0], busy_s=[0.0],
        compute_s=[0.0], max_batch=[0], events=0, wall_s=wall_s,
        clients=None if closed_loop is None else closed_loop.clients,
        think_s=None if closed_loop is None else closed_loop.think_s)
