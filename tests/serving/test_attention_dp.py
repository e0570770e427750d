"""A replica of attention-DP ranks (serving.replica.LockstepReplica): each rank its own scheduler and KV cache, the
requests assigned to ranks (round-robin or least-outstanding), every iteration run by all ranks together and priced
from the tuple of their mixes."""

from __future__ import annotations

import pytest

from llmsim.costmodel.iteration import Mix
from llmsim.serving.requests import ClosedLoop, Request
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.simulate import simulate_serving
from llmsim.serving.spec import SchedulerSpec

STEP_S = 0.01


def _run(requests, ranks: int, router: str = "round-robin", price=None, max_num_seqs: int = 256,
         blocks: int = 100_000, closed_loop=None):  # noqa: ANN001, ANN202
    spec = SchedulerSpec(kind="continuous", max_num_seqs=max_num_seqs, max_batched_tokens=100_000)
    seen: list[tuple[Mix, ...]] = []

    def lockstep(replica: int):  # noqa: ANN202 - a pricer of the ranks' mixes
        def one(mixes: tuple[Mix, ...]) -> tuple[float, float]:
            seen.append(mixes)
            return (price(mixes) if price else STEP_S), STEP_S
        return one

    outcome = simulate_serving(requests, replicas=1, make_scheduler=lambda kv: BUILTIN["continuous"](spec, kv),
                               kv_blocks=blocks, block_tokens=16, price=lockstep, router=router,
                               context_tokens=100_000, attention_dp=ranks, closed_loop=closed_loop)
    return outcome, seen


def test_every_iteration_is_priced_with_one_mix_per_rank_and_requests_go_round_robin() -> None:
    """4 requests at t = 0 over 2 ranks, round-robin: ranks 0 and 1 get two each; every priced iteration carries
    two mixes, the prefill one holding each rank's two prompts."""
    requests = [Request(i, 0.0, 10 + i, 3) for i in range(4)]
    outcome, seen = _run(requests, 2)
    assert all(len(m) == 2 for m in seen)
    first = seen[0]
    assert first[0].prefill_tokens == 10 + 12 and first[1].prefill_tokens == 11 + 13
    assert outcome.iterations == [len(seen)] and len(outcome.sequences) == 4


def test_the_ranks_run_in_lockstep_so_a_lone_rank_waits_for_the_slowest() -> None:
    """All requests on rank 0 (one request, one rank idle): the idle rank's mix is empty, and the step is priced
    from both; the request's tokens come out at the lockstep iterations' ends."""
    outcome, seen = _run([Request(0, 0.0, 8, 4)], 2)
    assert all(m[1] == Mix() for m in seen)
    assert list(outcome.sequences[0].token_times) == pytest.approx([STEP_S * (i + 1) for i in range(4)])


def test_an_unbalanced_assignment_runs_longer_than_a_balanced_one() -> None:
    """Requests alternating long (40 tokens out) and short (1 out), one every 10 ms, on 2 ranks, each step priced by
    its busiest rank's tokens: round-robin puts every long request on rank 0, least-outstanding (the short ones
    finish at once) spreads them over both ranks, so the same work takes fewer, cheaper steps."""
    def slowest(mixes: tuple[Mix, ...]) -> float:
        return 0.001 + 0.001 * max(m.tokens for m in mixes)

    requests = [Request(i, 0.01 * i, 4, 40 if i % 2 == 0 else 1) for i in range(16)]
    piled, seen_piled = _run(requests, 2, price=slowest)
    even, seen_even = _run(requests, 2, router="least-outstanding", price=slowest)
    assert max(m[1].decode_seqs for m in seen_piled) == 0          # rank 1 never decodes: its requests end at once
    assert max(m[1].decode_seqs for m in seen_even) > 0
    longest = [s.token_times[-1] - s.request.arrival_s for s in piled.sequences]
    longest_even = [s.token_times[-1] - s.request.arrival_s for s in even.sequences]
    assert sum(longest_even) < sum(longest)


def test_least_outstanding_keeps_the_ranks_even_in_a_closed_loop() -> None:
    """A closed loop of 4 clients on 2 ranks, requests of mixed lengths: least-outstanding gives each new request to
    the rank with fewer unfinished ones, so neither rank ever holds more than 3 of the 4 in flight (round-robin can
    put all 4 on one), and every request is served."""
    requests = [Request(i, 0.0, 4, 2 if i % 3 else 30) for i in range(40)]
    even, seen = _run(requests, 2, router="least-outstanding", closed_loop=ClosedLoop(clients=4))
    assert len(even.sequences) == 40
    assert all(m[0].rows <= 3 and m[1].rows <= 3 for m in seen)
