"""The engines' own policies on cases checked by hand: `prefill-first` (vLLM V0's default scheduler), `tgi`
(TGI 2.1's router) and `sglang` (SGLang 0.3's scheduler), and the queueing laws and reproducibility for all."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.metrics import requests_table, summarize
from llmsim.serving.policies.sglang import INIT_NEW_TOKEN_RATIO, NEW_TOKEN_RATIO_DECAY
from llmsim.serving.requests import Request, build_requests
from llmsim.serving.schedulers import BUILTIN, Iteration, mix_of
from llmsim.serving.simulate import ServingOutcome, simulate_serving
from llmsim.serving.spec import ServingCase, ServingSpec, SchedulerSpec
from tests.serving.helpers import linear_price, linear_seconds, run

# per iteration: its work as (request id, tokens), the preemptions so far, the blocks in use, its priced seconds
Log = list[tuple[list[tuple[int, int]], int, int, float]]


def _recording(kind: str, requests: list[Request], blocks: int = 10_000, block_tokens: int = 16,
               **spec: object) -> tuple[ServingOutcome, Log]:
    """Run `requests` on one replica; per iteration record its work, the preemptions so far, the blocks in use
    and its priced seconds (the linear price of tests.serving.helpers)."""
    log: Log = []

    def make(kv: KVCache):
        scheduler = BUILTIN[kind](SchedulerSpec(kind=kind, **spec), kv)
        original = scheduler.schedule

        def schedule(now: float) -> Iteration | None:
            it = original(now)
            if it is not None:
                log.append(([(s.request.id, n) for s, n in it.work], scheduler.preemptions, kv.used,
                            linear_seconds(mix_of(it.work))))
            return it

        scheduler.schedule = schedule  # type: ignore[method-assign]
        return scheduler

    outcome = simulate_serving(requests, replicas=1, make_scheduler=make, kv_blocks=blocks, block_tokens=block_tokens,
                               price=linear_price, router="round-robin", context_tokens=100_000)
    return outcome, log


def _ids(work: list[tuple[int, int]]) -> set[int]:
    return {r for r, _ in work}


# --------------------------------------------------------------------------- prefill-first (vLLM V0)

def test_prefill_first_an_arrival_during_decoding_gets_one_iteration_without_the_decodes() -> None:
    """A decodes; B arrives. V0 runs B's prompt in an iteration of its own (A skips it), then both decode. A's
    inter-token gap across it is that prefill plus the decode step after it; every other gap is one decode."""
    requests = [Request(0, 0.0, 100, 40), Request(1, 0.1, 300, 5)]
    outcome, log = _recording("prefill-first", requests)
    a = next(s for s in outcome.sequences if s.request.id == 0)
    first_a, last_a = 0, max(i for i, (work, *_) in enumerate(log) if 0 in _ids(work))
    without_a = [i for i in range(first_a, last_a) if 0 not in _ids(log[i][0])]
    assert len(without_a) == 1
    [j] = without_a
    assert log[j][0] == [(1, 300)]                        # B's whole prompt, alone
    assert log[j + 1][0] == [(0, 1), (1, 1)]              # then both decode
    gaps = np.diff(np.frombuffer(a.token_times, dtype=np.float64))
    stall = log[j][3] + log[j + 1][3]
    assert max(gaps) == pytest.approx(stall, rel=1e-12)
    assert sum(g == pytest.approx(stall, rel=1e-12) for g in gaps) == 1
    # vLLM V1 without chunking (continuous) runs B's prompt beside A's decode: no iteration leaves A out
    _, mixed = _recording("continuous", requests)
    last = max(i for i, (work, *_) in enumerate(mixed) if 0 in _ids(work))
    assert all(0 in _ids(mixed[i][0]) for i in range(last))
    assert [(0, 1), (1, 300)] in [work for work, *_ in mixed]


def test_prefill_first_preempts_when_no_block_is_free_and_recomputes_in_a_prompt_iteration() -> None:
    """4 blocks of 4 tokens; two 4-token prompts, 10 tokens each. Both prefill (a block each); the first decode
    step takes a second block each (5 tokens): no block free. V0's block manager v1 lets a decode go on only
    while a block is free (`can_append_slots`), so the next step preempts the most recent request although A
    needs no new block (V1, `continuous`, waits until A needs its third). B then recomputes its prompt and its
    2 tokens in an iteration of its own."""
    requests = [Request(0, 0.0, 4, 10), Request(1, 0.0, 4, 10)]
    outcome, log = _recording("prefill-first", requests, blocks=4, block_tokens=4)
    assert [work for work, *_ in log[:4]] == [[(0, 4), (1, 4)], [(0, 1), (1, 1)], [(0, 1)], [(1, 6)]]
    assert [count for _, count, *_ in log[:4]] == [0, 0, 1, 1]
    assert [used for _, _, used, _ in log[:3]] == [2, 4, 2]
    assert all(len(s.token_times) == 10 for s in outcome.sequences)
    _, v1 = _recording("continuous", requests, blocks=4, block_tokens=4)
    assert [count for _, count, *_ in v1[:5]] == [0] * 5


def test_prefill_first_keeps_the_watermark_free_when_admitting_a_prompt() -> None:
    """100 blocks: V0 keeps int(0.01 x 100) = 1 free when it admits a prompt (block manager v1's watermark). A
    (768-token prompt, 3 tokens) holds 49 blocks after its first decode step, when B arrives; B's prompt needs
    51 of the 51 free, which would leave 0: B waits for A to finish. vLLM V1 (continuous) has no watermark and
    admits it beside A's last decode step."""
    requests = [Request(0, 0.0, 48 * 16, 3), Request(1, 0.025, 51 * 16, 2)]
    outcome, _ = _recording("prefill-first", requests, blocks=100)
    a, b = sorted(outcome.sequences, key=lambda s: s.request.id)
    assert b.scheduled_s >= a.token_times[-1]
    v1, _ = _recording("continuous", requests, blocks=100)
    a1, b1 = sorted(v1.sequences, key=lambda s: s.request.id)
    assert b1.scheduled_s < a1.token_times[-1]


def test_prefill_first_delay_factor_holds_prompts_back_while_others_run() -> None:
    """`_passed_delay`: with delay_factor 1000 a prompt waits until it has waited 1000 x the last prompt
    iteration, or until nothing runs: B starts only after A's last token. With V0's default (0) it starts at
    the first iteration after its arrival."""
    requests = [Request(0, 0.0, 100, 20), Request(1, 0.05, 100, 2)]
    held, _ = _recording("prefill-first", requests, delay_factor=1000)
    a, b = sorted(held.sequences, key=lambda s: s.request.id)
    assert b.scheduled_s >= a.token_times[-1]
    free, log = _recording("prefill-first", requests)
    a, b = sorted(free.sequences, key=lambda s: s.request.id)
    assert b.scheduled_s < a.token_times[1 + next(i for i, (w, *_) in enumerate(log) if 1 in _ids(w))]


# --------------------------------------------------------------------------- tgi (TGI 2.1)

def _tgi_case(late: int, ratio: float = 0.3, max_waiting_tokens: int = 20) -> tuple[ServingOutcome, Log]:
    """10 requests at t = 0 (one batch of 10, 100-token prompts, 60 tokens each), then `late` requests arriving
    together at 0.03 s, during the batch's first decode step."""
    requests = [Request(i, 0.0, 100, 60) for i in range(10)]
    requests += [Request(10 + i, 0.03, 50, 3) for i in range(late)]
    return _recording("tgi", requests, waiting_served_ratio=ratio, max_waiting_tokens=max_waiting_tokens)


def test_tgi_a_lone_waiting_request_joins_only_after_max_waiting_tokens_decode_steps() -> None:
    """Batch of 10, ratio 0.3: min_size = floor(10 x 0.3) = 3, so one or two waiting requests do not join
    until 20 decode steps ran since the last admission (`waiting_tokens`: 1 after the prefill, +1 per step,
    checked before each step). The prefill is iteration 0, decode steps 1..19, the late prefill iteration 20,
    alone; then one decode step of all of them (no second admission attempt in between)."""
    for late in (1, 2):
        _, log = _tgi_case(late)
        assert log[0][0] == [(i, 100) for i in range(10)]
        assert all(_ids(log[i][0]) == set(range(10)) and all(n == 1 for _, n in log[i][0]) for i in range(1, 20))
        assert log[20][0] == [(10 + i, 50) for i in range(late)]
        assert _ids(log[21][0]) == set(range(10 + late))


def test_tgi_the_waiting_served_ratio_rule_admits_enough_waiting_requests_at_once() -> None:
    """Three waiting requests against a batch of 10 meet min_size = 3: they join at the first check after they
    arrive (before decode step 2), in a prefill of their own."""
    _, log = _tgi_case(3)
    assert [work for work, *_ in log[:3]] == [[(i, 100) for i in range(10)], [(i, 1) for i in range(10)],
                                              [(10, 50), (11, 50), (12, 50)]]
    assert _ids(log[3][0]) == set(range(13))
    # a ratio of 0 (min_size 0) admits even one at once; max_waiting_tokens 3 lets one in before step 3
    assert _tgi_case(1, ratio=0.0)[1][2][0] == [(10, 50)]
    assert _tgi_case(1, max_waiting_tokens=3)[1][3][0] == [(10, 50)]


def test_tgi_reserves_each_requests_whole_length_and_never_preempts() -> None:
    """20 blocks of 16 tokens; prompts of 16 and 144 new tokens reserve ceil(159 / 16) = 10 blocks each at
    admission (TGI's block allocator), so the third request waits for a finished one; vLLM V1 admits it (its
    prompt takes one block) and preempts later."""
    requests = [Request(i, 0.0, 16, 144) for i in range(3)]
    outcome, log = _recording("tgi", requests, blocks=20)
    assert log[0][0] == [(0, 16), (1, 16)] and log[0][2] == 20
    seqs = sorted(outcome.sequences, key=lambda s: s.request.id)
    assert seqs[2].scheduled_s >= min(s.token_times[-1] for s in seqs[:2])
    assert outcome.preemptions == 0
    v1, _ = _recording("continuous", requests, blocks=20)
    assert v1.preemptions > 0


def test_tgi_the_prefill_budget_and_max_batch_total_tokens_bound_a_new_batch() -> None:
    """max_batch_prefill_tokens (max_batched_tokens, padded up to the block: 70 -> 80) caps the prompts of one
    prefill: 30 + 30 fit, a third 30 does not. max_batch_total_tokens caps prompt + new tokens of everything
    admitted: 100 holds one request of 30 + 40 but not two."""
    requests = [Request(i, 0.0, 30, 40) for i in range(3)]
    _, log = _recording("tgi", requests, max_batched_tokens=70)
    assert log[0][0] == [(0, 30), (1, 30)]
    _, log = _recording("tgi", requests, max_batch_total_tokens=100)
    assert log[0][0] == [(0, 30)]
    assert all(len(work) == 1 for work, *_ in log)


def test_tgi_prices_the_kernels_its_server_launches_beyond_a_fused_engines() -> None:
    """TGI 2.1's passes carry its own kernels (policies/tgi.py, counted in its source): 2 per layer (rotary in two
    calls, SiLU and the product unfused); after the LM head 29 per pass and 8 per sampled sequence (the top-p
    sampler the benchmark's requests turn on, the batch update), 8 more per decode step (the CUDA graph's input
    copies), 2 more per prompt in a prefill. Other policies price none."""
    from llmsim.serving.kvcache import Sequence
    kv = KVCache(10_000, 16)
    tgi = BUILTIN["tgi"](SchedulerSpec(kind="tgi", max_batched_tokens=4096), kv)
    for i in range(3):
        tgi.add(Sequence(Request(i, 0.0, 100, 5), 0))
    prefill = tgi.schedule(0.0)
    assert prefill is not None and prefill.mix is not None
    assert prefill.mix.layer_kernels == 2 and prefill.mix.pass_kernels == 29 + 3 * (8 + 2)
    assert replace(prefill.mix, layer_kernels=0, pass_kernels=0) == mix_of(prefill.work)
    for seq, n in prefill.work:        # what the replica does at the pass's end: the prompt is cached, a token out
        seq.computed += n
        seq.generated += 1
    decode = tgi.schedule(0.1)
    assert decode is not None and decode.mix is not None and all(n == 1 for _, n in decode.work)
    assert decode.mix.layer_kernels == 2 and decode.mix.pass_kernels == 29 + 8 + 3 * 8
    kv2 = KVCache(10_000, 16)
    v1 = BUILTIN["continuous"](SchedulerSpec(kind="continuous", max_batched_tokens=4096), kv2)
    v1.add(Sequence(Request(0, 0.0, 100, 5), 0))
    first = v1.schedule(0.0)
    assert first is not None and (first.mix is None or (first.mix.layer_kernels, first.mix.pass_kernels) == (0, 0))


# --------------------------------------------------------------------------- sglang (SGLang 0.3)

def test_sglang_admits_a_request_only_while_the_cache_can_reserve_its_whole_output() -> None:
    """1,000 one-token slots. A (100 + 500) is admitted: 600 < 1,000. B (100 + 500) would need 600 more, but the
    cache has 900 free less 0.7 x A's 500 still to come = 550 (PrefillAdder: prompt + max_new_tokens >=
    rem_total_tokens refuses): B waits, and A decodes alone. V0's prefill-first admits both at once (their
    prompts fit)."""
    requests = [Request(0, 0.0, 100, 500), Request(1, 0.0, 100, 500)]
    _, log = _recording("sglang", requests, blocks=1000, block_tokens=1)
    assert log[0][0] == [(0, 100)] and log[1][0] == [(0, 1)]
    _, v0 = _recording("prefill-first", requests, blocks=1000, block_tokens=1)
    assert v0[0][0] == [(0, 100), (1, 100)]


def test_sglang_new_token_ratio_decays_per_decode_step_and_lets_a_waiting_request_in() -> None:
    """Same cache and A; B asks 100 + 300 and waits while 0.7 x A's remaining tokens leave too little. Each decode
    step lowers the ratio by 0.001 (and A's remaining output falls by one): B joins at the first step where
    100 + 300 < 1,000 - (100 + generated) - ratio x (500 - generated), in a prompt batch of its own."""
    requests = [Request(0, 0.0, 100, 500), Request(1, 0.0, 100, 300)]
    _, log = _recording("sglang", requests, blocks=1000, block_tokens=1)
    joined = next(i for i, (work, *_) in enumerate(log) if (1, 100) in work)
    expected = next(g for g in range(1, 500)
                    if 400 < 1000 - (100 + g) - (INIT_NEW_TOKEN_RATIO - g * NEW_TOKEN_RATIO_DECAY) * (500 - g))
    assert joined == expected and log[joined][0] == [(1, 100)]        # g decode steps ran before it
    assert all(work == [(0, 1)] for work, *_ in log[1:joined])
    # idle: the ratio returns to 0.7
    scheduler = BUILTIN["sglang"](SchedulerSpec(kind="sglang"), KVCache(100, 1))
    scheduler.new_token_ratio = 0.2
    assert scheduler.schedule(0.0) is None and scheduler.new_token_ratio == INIT_NEW_TOKEN_RATIO
    seq = Sequence(Request(0, 0.0, 10, 5), 0)
    scheduler.add(seq)
    assert scheduler.schedule(0.0).work == [(seq, 10)]


def test_sglang_retracts_the_fewest_generated_to_the_back_of_the_queue_when_the_cache_runs_out() -> None:
    """Driven by hand: A and B (10 + 40 each) run, A has generated 20 tokens and B 5, C waits, and no slot is
    free. No prompt batch fits, and the decode step finds fewer free slots than requests: retract_decode frees
    from the back of (generated, -prompt) descending, B first, until 20 slots per request left are free (here
    B's 14 cannot reach 20 but A is the last: kept); B goes behind C, the ratio is re-estimated from A alone,
    min(1, (20 + 20 x 1) / 40) = 1.0, and A decodes."""
    kv = KVCache(60, 1)
    scheduler = BUILTIN["sglang"](SchedulerSpec(kind="sglang"), kv)
    a, b, c = (Sequence(Request(i, 0.0, 10, 40), 0) for i in range(3))
    for seq, generated in ((a, 20), (b, 5)):
        scheduler.add(seq)
        scheduler.admit(seq, 0.0)
        seq.generated, seq.computed = generated, 10 + generated - 1
        assert kv.grow(seq, seq.computed)
    kv.free = 0                                  # the rest of the cache held elsewhere
    scheduler.add(c)
    it = scheduler.schedule(1.0)
    assert scheduler.running == [a] and list(scheduler.waiting) == [c, b] and scheduler.preemptions == 1
    assert b.computed == 0 and b.blocks == 0 and b.generated == 5
    assert scheduler.new_token_ratio == pytest.approx(1.0)
    assert it is not None and it.work == [(a, 1)] and kv.free == 13


def test_sglang_splits_the_prompt_past_the_chunk_and_continues_it_first() -> None:
    """Budget 64: A's 100-token prompt runs as 64 then 36 (the inflight request continues first, with no
    admission check); B's 30 tokens take the 28 left of the second batch and its last 2 a batch of their own
    (A's first decode waits for it); then both decode."""
    requests = [Request(0, 0.0, 100, 3), Request(1, 0.0, 30, 3)]
    _, log = _recording("sglang", requests, blocks=1000, block_tokens=1, max_batched_tokens=64)
    assert [work for work, *_ in log[:4]] == [[(0, 64)], [(0, 36), (1, 28)], [(1, 2)], [(0, 1), (1, 1)]]


# --------------------------------------------------------------------------- laws that hold for every policy

def _spec(**serving) -> ServingSpec:
    return ServingSpec.model_validate({"requests": 2000, "arrival": {"kind": "poisson", "rate": 20},
                                       "lengths": {"input": {"kind": "uniform", "min": 20, "max": 400},
                                                   "output": {"kind": "lognormal", "median": 40, "sigma": 0.7}},
                                       **serving})


@pytest.mark.parametrize("kind", ["prefill-first", "tgi", "sglang"])
def test_littles_law_holds_for_the_engine_policies(kind: str) -> None:
    case = ServingCase(_spec(), seed=1, scheduler=BUILTIN[kind])
    outcome = run(build_requests(case), kind, replicas=2)
    row = summarize(outcome, 20.0, None)
    mean_in_system = row["extra"]["mean_in_system"]
    assert mean_in_system == pytest.approx(row["requests_per_s"] * row["e2e_mean_s"], rel=1e-9)
    assert mean_in_system > 1
    assert row["requests_per_s"] == pytest.approx(20.0, rel=0.05)


@pytest.mark.parametrize("kind", ["prefill-first", "tgi", "sglang"])
def test_the_engine_policies_are_deterministic(kind: str) -> None:
    def once(seed: int) -> str:
        case = ServingCase(_spec(requests=300), seed=seed, scheduler=BUILTIN[kind])
        return requests_table(run(build_requests(case), kind, replicas=2, router="least-outstanding", blocks=150,
                                  max_batched_tokens=512))

    assert once(7) == once(7)
    assert once(7) != once(8)
