"""The replica's work and output timing: with `async_output` (vLLM V0's asynchronous output processor) a token is
still streamed when the iteration that sampled it ends (the server sends it from the next pass's callback, right
after that pass is launched), and a request's finish costs one wasted decode step, alone when nothing else runs
(llmsim.serving.replica); with `overlap_schedule` an arrival joins one iteration later."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmsim.costmodel.iteration import Mix
from llmsim.serving.requests import Request
from llmsim.serving.spec import SchedulerSpec
from tests.serving.helpers import linear_seconds, run

PROMPT, OUTPUT = 100, 6


def _decode(keys: int) -> float:
    """One decode step of one sequence attending over `keys` keys, at the tests' linear price."""
    return linear_seconds(Mix(decode_seqs=1, decode_keys=keys, rows=1))


@pytest.mark.parametrize("kind", ["prefill-first", "continuous"])
def test_one_request_alone_streams_each_token_when_its_iteration_ends_and_then_pays_the_wasted_step(kind: str) -> None:
    """A lone request: its prefill P, then decode steps d_j (keys PROMPT + j) for j = 1..OUTPUT-1. The OpenAI server
    streams each token from the async callback of the next pass, right after that pass is launched, so token i is
    out when iteration i ends, with or without the processor; what the processor adds is the step V0 wastes on the
    finished request (keys PROMPT + OUTPUT), after the last token: one iteration more, priced, and the run (an
    offline generate call's wall time) that much longer."""
    request = [Request(0, 0.0, PROMPT, OUTPUT)]
    plain = run(request, kind)
    wasteful = run(request, kind, async_output=True)
    assert list(wasteful.sequences[0].token_times) == list(plain.sequences[0].token_times)
    assert plain.sequences[0].token_times[0] == pytest.approx(linear_seconds(Mix.prefill(PROMPT)), rel=1e-12)
    wasted = _decode(PROMPT + OUTPUT)
    assert wasteful.iterations == [plain.iterations[0] + 1]
    assert wasteful.busy_s[0] == pytest.approx(plain.busy_s[0] + wasted, rel=1e-12)
    assert wasteful.duration_s == pytest.approx(plain.duration_s + wasted, rel=1e-12)
    assert plain.duration_s == plain.sequences[0].token_times[-1]


def test_a_token_is_streamed_when_its_own_iteration_ends_whatever_runs_next() -> None:
    """Two overlapping requests under prefill-first, every iteration priced STEP_S whatever it holds: the
    scheduler forms the same iterations with and without the processor (it sees every token at once), and the
    server streams a token sampled by iteration i when i + 1 is launched, i.e. at i's end, even when i + 1 is the
    second request's prefill: every token time is the plain run's. The only difference is the wasted step after
    the last token (the short request's wasted row rides in a decode iteration that runs anyway)."""
    step_s = 0.01

    def constant(replica: int):  # noqa: ANN202 - a Pricer factory
        return lambda mix: (step_s, step_s)

    requests = [Request(0, 0.0, PROMPT, 40), Request(1, 0.05, 60, 5)]
    plain = run(requests, "prefill-first", price=constant)
    wasteful = run(requests, "prefill-first", price=constant, async_output=True)
    for p, q in zip(plain.sequences, wasteful.sequences):
        assert list(q.token_times) == list(p.token_times)
    assert wasteful.iterations == [plain.iterations[0] + 1]
    assert wasteful.duration_s == pytest.approx(plain.duration_s + step_s, rel=1e-12)


def test_a_finished_request_is_priced_as_a_row_of_the_next_decode_iteration() -> None:
    """V0 schedules a finished request once more, with the other decodes, before it knows it is finished: the
    decode iteration after the short request's last token carries its row (one more sequence and its keys)."""
    requests = [Request(0, 0.0, PROMPT, 40), Request(1, 0.0, PROMPT, 3)]
    priced: list[Mix] = []

    def recording(replica: int):  # noqa: ANN202 - a Pricer factory
        def price(mix: Mix) -> tuple[float, float]:
            priced.append(mix)
            return linear_seconds(mix), linear_seconds(mix)
        return price

    run(requests, "prefill-first", async_output=True, price=recording)
    # iteration 0: both prompts; 1, 2: both decode (the short one's tokens 2 and 3); 3: the long one decodes and
    # the short one, finished at iteration 2, runs its wasted row; 4 on: the long one alone
    assert [m.decode_seqs for m in priced[:5]] == [0, 2, 2, 2, 1]
    assert priced[3].decode_keys == (PROMPT + 3) + (PROMPT + 3)
    assert sum(1 for m in priced if m.decode_seqs) == 39 + 1     # the long one's 39 decodes + its wasted step


def test_the_flag_defaults_off_and_takes_only_a_boolean() -> None:
    assert SchedulerSpec().async_output is False
    assert SchedulerSpec(async_output=True).async_output is True
    with pytest.raises(ValidationError, match="not a boolean"):
        SchedulerSpec.model_validate({"async_output": 1})


# --------------------------------------------------------------------------- overlap_schedule (SGLang)

def test_an_arrival_during_an_iteration_joins_the_one_after_the_next_with_overlap_schedule() -> None:
    """Request 0 alone at t = 0 (a prefill, then decode steps of the linear price's 10 ms and a bit); request 1
    arrives during its second iteration. Without overlap it is prefilled in the third iteration; with
    overlap_schedule (SGLang's overlap loop forms the third iteration when the second starts) in the fourth, so
    its TTFT is one decode step of request 0 longer; request 0, alone at first, is not delayed (an idle replica
    schedules at once) and its token times do not change before request 1 joins."""
    requests = [Request(0, 0.0, 100, 20), Request(1, 0.015, 100, 5)]
    plain = {s.request.id: s for s in run(requests, "prefill-first").sequences}
    overlap = {s.request.id: s for s in run(requests, "prefill-first", overlap_schedule=True).sequences}
    assert overlap[0].token_times[:2] == plain[0].token_times[:2]
    assert plain[1].scheduled_s == pytest.approx(plain[0].token_times[1])       # the third iteration's start
    assert overlap[1].scheduled_s == pytest.approx(overlap[0].token_times[2])   # the fourth's
    step = overlap[0].token_times[2] - overlap[0].token_times[1]
    ttft = lambda s: s.token_times[0] - s.request.arrival_s  # noqa: E731
    assert ttft(overlap[1]) - ttft(plain[1]) == pytest.approx(step, rel=1e-9)


def test_overlap_schedule_schedules_an_arrival_at_once_when_nothing_runs() -> None:
    """Two requests far apart: each finds the replica idle and is prefilled at its arrival, as without it."""
    requests = [Request(0, 0.0, 100, 3), Request(1, 5.0, 100, 3)]
    plain = run(requests, "continuous").sequences
    overlap = run(requests, "continuous", overlap_schedule=True).sequences
    assert [s.token_times for s in overlap] == [s.token_times for s in plain]
    assert SchedulerSpec().overlap_schedule is False
    with pytest.raises(ValidationError):
        SchedulerSpec.model_validate({"overlap_schedule": 1})


# --------------------------------------------------------------------------- recv_interval (SGLang's recv skipper)

STEP_S = 0.01


def _constant(replica: int):  # noqa: ANN202 - a Pricer factory
    return lambda mix: (STEP_S, STEP_S)


def _scheduled(arrival_s: float, overlap: bool, **scheduler: object) -> float:
    """When a request arriving at `arrival_s` is first scheduled, request 0 (alone at t = 0, a prefill and 29
    decode steps, every iteration STEP_S, iteration k starting at k x STEP_S) running."""
    requests = [Request(0, 0.0, PROMPT, 30), Request(1, arrival_s, PROMPT, 3)]
    seqs = {s.request.id: s for s in run(requests, "prefill-first", price=_constant, overlap_schedule=overlap,
                                         **scheduler).sequences}
    return seqs[1].scheduled_s


def test_an_arrival_while_decoding_waits_for_the_nth_decode_iteration_since_the_last_read() -> None:
    """recv_interval 4, no overlap: the loop reads before iteration 1 (after the prefill, iteration 0: at once),
    then counts the decode iterations that ran, reading before iteration 5 (4 decodes since), 9, 13. A request
    arriving during iteration 2 (t = 0.025) is scheduled at iteration 5 (t = 0.05), not 3 as with the default; one
    arriving during iteration 5 at iteration 9. With overlap_schedule the read follows the forming of the next
    iteration and counts it: iterations 1..4 formed, the read after forming 4, so iteration 5 (plain overlap: 4)."""
    assert _scheduled(0.025, False) == pytest.approx(0.03)
    assert _scheduled(0.025, False, recv_interval=4) == pytest.approx(0.05)
    assert _scheduled(0.055, False, recv_interval=4) == pytest.approx(0.09)
    assert _scheduled(0.025, True) == pytest.approx(0.04)
    assert _scheduled(0.025, True, recv_interval=4) == pytest.approx(0.05)
    assert _scheduled(0.045, True, recv_interval=4) == pytest.approx(0.09)


def test_recv_interval_one_is_the_default_and_changes_nothing() -> None:
    requests = [Request(0, 0.0, PROMPT, 30), Request(1, 0.025, PROMPT, 3), Request(2, 0.107, 50, 9)]
    for overlap in (False, True):
        plain = run(requests, "prefill-first", overlap_schedule=overlap).sequences
        one = run(requests, "prefill-first", overlap_schedule=overlap, recv_interval=1).sequences
        assert [s.token_times for s in one] == [s.token_times for s in plain]
    assert SchedulerSpec().recv_interval == 1
    with pytest.raises(ValidationError):
        SchedulerSpec(recv_interval=0)


def test_after_a_prompt_pass_or_with_nothing_running_an_arrival_is_read_at_once() -> None:
    """recv_interval 10: a request arriving while request 1's prompt pass runs is read right after it (the
    extend's weight forces the read), and one arriving at an idle replica is prefilled at its arrival."""
    requests = [Request(0, 0.0, PROMPT, 30), Request(1, 0.025, PROMPT, 3), Request(2, 0.115, PROMPT, 3)]
    seqs = {s.request.id: s for s in run(requests, "prefill-first", price=_constant, recv_interval=10).sequences}
    assert seqs[1].scheduled_s == pytest.approx(0.11)     # read before iteration 11 (10 decodes since iteration 1)
    assert seqs[2].scheduled_s == pytest.approx(0.12)     # arrived during request 1's prefill (iteration 11)
    alone = run([Request(0, 0.0, PROMPT, 3), Request(1, 5.0, PROMPT, 3)], "continuous", recv_interval=10).sequences
    assert alone[1].scheduled_s == pytest.approx(5.0)
