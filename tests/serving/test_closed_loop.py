"""The closed loop (arrival kind `concurrency`): N clients, each sending its next request when its previous one
finished (+ think_s), on the simulation; Little's law with the clients as the population."""

from __future__ import annotations

from typing import Any

import pytest

from llmsim.serving.metrics import summarize
from llmsim.serving.requests import ClosedLoop, Request, build_requests, closed_loop_of, iter_requests
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.simulate import StalledError, simulate_serving
from llmsim.serving.spec import SchedulerSpec, ServingCase, ServingSpec
from tests.serving.helpers import linear_price, run

LENGTHS = {"input": {"kind": "uniform", "min": 20, "max": 400},
           "output": {"kind": "lognormal", "median": 40, "sigma": 0.7}}


def _case(clients: int = 8, think_s: float | None = None, seed: int = 1, **serving: Any) -> ServingCase:
    arrival: dict[str, Any] = {"kind": "concurrency", "clients": clients}
    if think_s is not None:
        arrival["think_s"] = think_s
    spec = ServingSpec.model_validate({"requests": 400, "arrival": arrival, "lengths": LENGTHS, **serving})
    return ServingCase(spec, seed=seed, scheduler=BUILTIN["continuous"])


def _closed(case: ServingCase, *, replicas: int = 1, router: str = "round-robin", blocks: int = 100_000,
            context: int = 100_000, request_overhead_s: float = 0.0):
    spec = SchedulerSpec(kind="continuous")
    return simulate_serving(iter_requests(case), replicas=replicas,
                            make_scheduler=lambda kv: BUILTIN["continuous"](spec, kv), kv_blocks=blocks,
                            block_tokens=16, price=linear_price, router=router, context_tokens=context,
                            request_overhead_s=request_overhead_s, closed_loop=closed_loop_of(case))


def _most_in_flight(outcome) -> int:  # noqa: ANN001
    """The most requests between their send and their last token at any instant (a send at the very time of
    another's last token counts after it: the client sends its next once the previous finished)."""
    events = sorted([(s.request.arrival_s, 1) for s in outcome.sequences]
                    + [(s.token_times[-1], -1) for s in outcome.sequences])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("replicas, router", [(1, "round-robin"), (2, "round-robin"), (3, "least-outstanding")])
def test_littles_law_the_clients_are_the_achieved_rate_times_the_mean_latency(replicas: int, router: str) -> None:
    """L = lambda W with L the clients: each client always has one request in flight until the list runs out, so
    the time-average in flight is N less the drain at the end, when clients find no request left. Hand-checked
    bound: over the run of length T the clients' idle time is at most N x (the longest latency), so
    N (1 - max e2e / T) <= lambda W <= N, lambda = requests sent / T (the row's request_rate)."""
    clients = 8
    outcome = _closed(_case(clients), replicas=replicas, router=router)
    row = summarize(outcome, None, None)
    assert row["concurrency"] == clients and outcome.clients == clients
    assert row["request_rate"] == pytest.approx(400 / outcome.duration_s, rel=1e-12)   # sent / duration
    little = row["request_rate"] * row["e2e_mean_s"]
    longest = max(s.token_times[-1] - s.request.arrival_s for s in outcome.sequences)
    assert clients * (1 - longest / outcome.duration_s) <= little <= clients * (1 + 1e-9)
    assert little == pytest.approx(clients, rel=0.05)      # 400 requests, 8 clients: the drain costs ~3.5% here
    assert row["extra"]["mean_in_system"] == pytest.approx(little, rel=1e-9)   # the simulation's own integral
    assert _most_in_flight(outcome) == clients
    assert {s.replica for s in outcome.sequences} == set(range(replicas))


def test_think_time_takes_its_share_of_each_client_s_cycle() -> None:
    """With think time Z a client's cycle is e2e + Z, so N = lambda (W + Z) (the interactive response-time law).
    Bounds: each client's cycles tile the run but for its last think (after the last token, outside the run) and
    its idle end, so N (1 - longest cycle / T) <= lambda (W + Z) <= N (1 + Z / T)."""
    clients, think = 6, 0.5
    outcome = _closed(_case(clients, think_s=think))
    row = summarize(outcome, None, None)
    cycle = row["request_rate"] * (row["e2e_mean_s"] + think)
    longest = max(s.token_times[-1] - s.request.arrival_s for s in outcome.sequences) + think
    assert clients * (1 - longest / outcome.duration_s) <= cycle <= clients * (1 + think / outcome.duration_s)
    assert row["request_rate"] * row["e2e_mean_s"] < clients * 0.9   # thinking clients have nothing in flight
    assert row["extra"]["think_s"] == think


def test_one_client_sends_each_request_when_the_previous_finished_plus_think_and_overhead() -> None:
    """N = 1: request i + 1 goes out exactly think_s after request i's last token as the client sees it (the
    engine's finish + request_overhead_s); nothing overlaps."""
    think, overhead = 0.25, 0.01
    outcome = _closed(_case(1, think_s=think, requests=30), request_overhead_s=overhead)
    seqs = outcome.sequences
    assert seqs[0].request.arrival_s == 0.0
    for before, after in zip(seqs, seqs[1:]):
        assert after.request.arrival_s == pytest.approx(before.token_times[-1] + think, abs=1e-12)
    assert _most_in_flight(outcome) == 1
    assert summarize(outcome, None, None)["ttft_p50_s"] > overhead


def test_the_closed_loop_serves_the_open_loop_s_request_list() -> None:
    """The same seed gives request i the same lengths whether it arrives by poisson or from a client."""
    closed = build_requests(_case(8))
    open_spec = ServingSpec.model_validate({"requests": 400, "arrival": {"kind": "poisson", "rate": 5},
                                            "lengths": LENGTHS})
    opened = build_requests(ServingCase(open_spec, seed=1, scheduler=BUILTIN["continuous"]))
    assert [(r.id, r.input_tokens, r.output_tokens) for r in closed] == \
           [(r.id, r.input_tokens, r.output_tokens) for r in opened]
    assert {r.arrival_s for r in closed} == {0.0}   # all queued at t = 0, as vLLM's semaphore holds them
    served = _closed(_case(8)).sequences
    assert [(s.request.id, s.request.input_tokens) for s in served] == [(r.id, r.input_tokens) for r in closed]


def test_a_closed_loop_bounded_by_duration_sends_nothing_after_it_and_drains() -> None:
    case = _case(4, requests=None, duration_s=3.0)
    with pytest.raises(ValueError, match="use iter_requests"):
        build_requests(case)
    outcome = _closed(case)
    arrivals = [s.request.arrival_s for s in outcome.sequences]
    assert max(arrivals) < 3.0 and len(arrivals) > 4
    assert outcome.duration_s > max(arrivals)                    # the last ones drain after duration_s
    assert sorted(s.request.id for s in outcome.sequences) == list(range(len(arrivals)))


@pytest.mark.parametrize("requests,binding", [(10_000, "duration_s"), (12, "requests")])
def test_a_closed_loop_with_both_limits_stops_sending_at_whichever_comes_first(requests: int, binding: str) -> None:
    """Both limits: the clients send the list's requests in order until it runs out or duration_s passes; the
    count-bound run sends exactly its requests, the time-bound one what a loop bounded by duration_s alone sends."""
    outcome = _closed(_case(4, requests=requests, duration_s=3.0))
    sent = sorted(s.request.id for s in outcome.sequences)
    assert max(s.request.arrival_s for s in outcome.sequences) < 3.0 and sent == list(range(len(sent)))
    if binding == "requests":
        assert len(sent) == 12
    else:
        alone = _closed(_case(4, requests=None, duration_s=3.0))
        assert 4 < len(sent) < requests and len(sent) == len(alone.sequences)


def test_the_closed_loop_is_deterministic_and_depends_on_the_clients() -> None:
    def once(clients: int) -> list[tuple[float, float]]:
        return [(s.request.arrival_s, s.token_times[-1]) for s in _closed(_case(clients), replicas=2).sequences]

    assert once(5) == once(5)
    assert once(5) != once(6)


def test_rejections_cost_no_time_and_a_loop_rejecting_everything_is_reported() -> None:
    """A request longer than the context is refused at once and its client sends the next; a loop bounded by
    duration whose every request is refused would never advance time: a StalledError, not a hang."""
    outcome = _closed(_case(2, requests=50), context=200)
    assert outcome.rejected and outcome.sequences
    assert len(outcome.rejected) + len(outcome.sequences) == 50
    assert summarize(outcome, None, None)["extra"]["requests_sent"] == 50
    with pytest.raises(StalledError, match="rejected"):
        _closed(_case(2, requests=None, duration_s=10.0), context=10)


def test_closed_loop_values_out_of_range_are_refused_by_the_loop_itself() -> None:
    with pytest.raises(ValueError, match="clients"):
        ClosedLoop(0)
    with pytest.raises(ValueError, match="think_s"):
        ClosedLoop(2, think_s=-1.0)


def test_a_closed_loop_bounded_by_duration_stops_at_the_run_size_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run-size bound of an open loop (MAX_REQUESTS, rate x duration_s) holds for a closed loop too, where the
    count is only known as it runs: the request list refuses the request past it, naming duration_s."""
    import llmsim.serving.requests as requests_module

    monkeypatch.setattr(requests_module, "MAX_REQUESTS", 50)
    with pytest.raises(ValueError, match="serving.duration_s: a closed loop of 4 clients sent 50 requests"):
        _closed(_case(4, requests=None, duration_s=1e6))


# ------------------------------------------------------------------ which iteration a client's next request joins

def _next_request_joins(kind: str, **flags: bool) -> tuple[float, list[float], float]:
    """Two clients on one replica: request 0 (3 tokens) finishes while request 1 (30 tokens) keeps the replica
    busy, and request 0's client sends request 2 at that instant. (When request 2 was sent, the replica's iteration
    start times, when request 2 was first scheduled.)"""
    requests = [Request(0, 0.0, 100, 3), Request(1, 0.0, 100, 30), Request(2, 0.0, 100, 3)]
    outcome = run(requests, kind, closed_loop=ClosedLoop(2), **flags)
    sent = {s.request.id: s for s in outcome.sequences}[2]
    return sent.request.arrival_s, list(outcome.timelines[0].time_s), sent.scheduled_s


@pytest.mark.parametrize("kind", ["continuous", "chunked-prefill", "prefill-first"])
@pytest.mark.parametrize("async_output", [False, True])
def test_a_client_s_next_request_joins_the_iteration_after_the_one_in_progress(kind: str, async_output: bool) -> None:
    """The client sends its next request when it reads the previous one's last token, which the engine streams
    once the iteration that sampled it ended (with async_output too: V0's server sends it from the next pass's
    callback, right after that pass was launched, and decodes the finished request once more). By then the engine has
    formed the iteration that runs next (vLLM's engine core schedules right after processing an iteration's
    output; the request makes its round trip through the HTTP server meanwhile), so the new request is first
    scheduled in the iteration after that one: here the first iteration that starts strictly after the send. It
    never joins the iteration that starts at the very instant of the send (the simulation's replica forms that
    one before the client's process runs: llmsim.serving.simulate)."""
    sent, starts, scheduled = _next_request_joins(kind, async_output=async_output)
    assert sent in starts                                   # the replica formed an iteration at that instant ...
    assert scheduled == min(t for t in starts if t > sent)  # ... and the request joins the next one


@pytest.mark.parametrize("kind", ["continuous", "chunked-prefill"])
def test_with_overlap_schedule_a_client_s_next_request_joins_one_iteration_later(kind: str) -> None:
    """With overlap_schedule (vLLM V1's async scheduling from v0.14, SGLang's overlap loop) the iteration after the
    one in progress was formed when that one started, so the request sent at an iteration's end joins the second
    iteration that starts after the send."""
    sent, starts, scheduled = _next_request_joins(kind, overlap_schedule=True)
    later = [t for t in starts if t > sent]
    assert scheduled == later[1]
    assert _next_request_joins(kind)[2] == later[0]         # the same run without it: one iteration earlier


def test_clients_beyond_the_requests_are_never_made_and_change_nothing() -> None:
    """Trial 27: 1e8 clients for 200 requests ran for minutes (one SimPy process each, all finding no request). A
    client beyond the run's requests never sends one: the run with 1,000,000 clients is the run with as many
    clients as requests, event for event, and its row still says the clients asked for."""
    few = _closed(_case(400))
    many = _closed(_case(1_000_000))
    assert many.events == few.events
    assert [s.token_times for s in many.sequences] == [s.token_times for s in few.sequences]
    assert many.clients == 1_000_000 and summarize(many, None, None)["concurrency"] == 1_000_000
