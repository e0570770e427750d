"""serving.early_stop: a run stops once more of its requests are certain to miss the SLO than its percentile
allows, and what it says then holds for the whole run: the verdict is "missed", and the full run's attainment
lies between the stop's bounds. A run that meets the SLO is simulated exactly as without the stop."""

from __future__ import annotations

import random

import pytest

from llmsim.serving.metrics import summarize
from llmsim.serving.requests import ClosedLoop, Request
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.simulate import simulate_serving
from llmsim.serving.spec import SchedulerSpec, Slo
from tests.serving.helpers import linear_price, run


def _requests(n: int, rate: float, seed: int, long_every: int = 0) -> list[Request]:
    """Poisson arrivals at `rate`/s, prompts 50-400 tokens, answers 2-60; every `long_every`-th request longer
    than the context below (rejected on arrival)."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        prompt = 5000 if long_every and i % long_every == 0 else rng.randint(50, 400)
        out.append(Request(i, t, prompt, rng.randint(2, 60)))
    return out


CASES = [  # (rate, slo, overhead_s, long_every, stops under continuous batching)
    (2.0, Slo(ttft_s=0.5, tpot_s=0.05, percentile=99), 0.0, 0, False),     # light load: met, runs to the end
    (60.0, Slo(ttft_s=0.2, tpot_s=0.05, percentile=99), 0.0, 0, True),     # overload: TTFT deadlines pass
    (60.0, Slo(ttft_s=0.2, percentile=50), 0.03, 0, True),                 # with the request path's overhead
    (40.0, Slo(tpot_s=0.0112, percentile=90), 0.0, 0, True),               # TPOT only: counted as requests finish
    (2.0, Slo(ttft_s=0.5, percentile=95), 0.0, 10, True),                  # rejections (too long) are misses
    (2.0, Slo(ttft_s=0.5, percentile=85), 0.0, 10, False),                 # ... that the percentile allows
]


@pytest.mark.parametrize("rate, slo, overhead, long_every, stops", CASES)
@pytest.mark.parametrize("kind", ["continuous", "static"])
def test_the_stop_is_sound_and_a_met_run_is_unchanged(rate: float, slo: Slo, overhead: float, long_every: int,
                                                      stops: bool, kind: str) -> None:
    requests = _requests(300, rate, seed=3, long_every=long_every)
    common = dict(kind=kind, context=2048, request_overhead_s=overhead, max_num_seqs=16, max_batched_tokens=2048)
    full = run(requests, **common)
    early = run(requests, stop_on_miss=slo, **common)
    row = summarize(full, rate, slo)
    attainment, met = row["slo_attainment"], row["extra"]["slo_met"]
    assert (early.stopped is not None) == (not met)
    assert kind != "continuous" or met != stops   # the cases cover both
    if early.stopped is None:  # the same run, to every token time and counter
        again = summarize(early, rate, slo)
        for extra in (row, again):
            extra["extra"].pop("sim_wall_s"), extra["extra"].pop("sim_events")
        assert again == row
        assert [list(s.token_times) for s in early.sequences] == [list(s.token_times) for s in full.sequences]
        return
    stop = early.stopped
    assert stop.attainment_at_least <= attainment <= stop.attainment_at_most < slo.percentile / 100
    assert (stop.requests - stop.allowed) / stop.requests >= slo.percentile / 100   # one miss fewer could meet
    assert stop.rejected <= row["extra"]["requests_rejected"]
    assert stop.misses <= stop.requests - row["extra"]["slo_good_requests"]
    assert stop.time_s < full.duration_s and early.events < full.events   # it did stop early
    if slo.ttft_s is not None:   # and no later than just after the deadline of the first TTFT miss too many
        late = sorted(s.request.arrival_s + slo.ttft_s - overhead for s in full.sequences
                      if s.token_times[0] - s.request.arrival_s > slo.ttft_s)
        if len(late) > stop.allowed:
            assert stop.time_s <= late[stop.allowed] + 1e-6
    assert all(s.finished for s in early.sequences)


def test_a_stopped_run_has_no_result_row_and_a_closed_loop_cannot_stop() -> None:
    slo = Slo(ttft_s=0.2, percentile=99)
    stopped = run(_requests(300, 60.0, seed=1), stop_on_miss=slo, max_num_seqs=16, max_batched_tokens=2048)
    assert stopped.stopped is not None
    with pytest.raises(ValueError, match="stopped early has no result row"):
        summarize(stopped, 60.0, slo)
    spec = SchedulerSpec(kind="continuous")
    with pytest.raises(ValueError, match="stop_on_miss needs an open loop"):
        simulate_serving(_requests(10, 1.0, seed=1), replicas=1,
                         make_scheduler=lambda kv: BUILTIN["continuous"](spec, kv), kv_blocks=1000, block_tokens=16, price=linear_price, router="round-robin",
                         context_tokens=4096, closed_loop=ClosedLoop(clients=2), stop_on_miss=slo)
