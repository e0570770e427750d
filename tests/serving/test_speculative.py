"""Speculative decoding in the simulation (llmsim.serving.speculative): bursts of accepted drafts + the bonus
token, the token budget and KV slots of k + 1, the seeded acceptance, the per-chunk ITL and Little's law."""

from __future__ import annotations

import numpy as np
import pytest

from llmsim.costmodel.iteration import Mix
from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.metrics import summarize
from llmsim.serving.requests import Request
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.simulate import simulate_serving
from llmsim.serving.spec import SchedulerSpec, Speculative
from llmsim.serving.speculative import Speculator

from tests.serving.helpers import fixed_requests, linear_price, linear_seconds


def _run(requests: list[Request], speculative: Speculative | None, kind: str = "continuous", seed: int = 0,
         blocks: int = 100_000, price=linear_price, **scheduler):  # noqa: ANN001, ANN003, ANN202
    spec = SchedulerSpec(kind=kind, **scheduler)
    return simulate_serving(requests, replicas=1, make_scheduler=lambda kv: BUILTIN[kind](spec, kv),
                            kv_blocks=blocks, block_tokens=16, price=price, router="round-robin",
                            context_tokens=100_000, speculative=speculative, speculative_seed=seed)


def _ngram(k: int, acceptance: float | list[float]) -> Speculative:
    return Speculative(method="ngram", num_draft_tokens=k, acceptance=acceptance)


def test_acceptance_one_emits_k_plus_one_tokens_every_step_in_one_burst() -> None:
    k, out = 3, 13
    outcome = _run([Request(0, 0.0, 100, out)], _ngram(k, 1.0))
    times = list(outcome.sequences[0].token_times)
    assert len(times) == out
    # the prompt's pass samples the first token; then (13 - 1) / 4 = 3 verify steps of 4 tokens each
    bursts = [times.count(t) for t in dict.fromkeys(times)]
    assert bursts == [1, 4, 4, 4]
    assert outcome.iterations == [4]
    assert outcome.extra["accept_length"] == k + 1
    row = summarize(outcome, None, None)
    assert row["accept_length"] == k + 1
    # ITL per streamed chunk: three gaps, each one verify step (vLLM bench serve appends one ITL per chunk)
    gaps = np.diff(np.unique(times))
    assert row["itl_mean_s"] == pytest.approx(float(gaps.mean()), rel=1e-12)
    # TPOT still divides by every token after the first
    assert row["tpot_mean_s"] == pytest.approx((times[-1] - times[0]) / (out - 1), rel=1e-12)


def test_a_verify_step_prices_k_plus_one_rows_and_its_drafts_pairs() -> None:
    seen: list[Mix] = []

    def price(replica: int):  # noqa: ANN202
        def one(mix: Mix) -> tuple[float, float]:
            seen.append(mix)
            return linear_seconds(mix), linear_seconds(mix)
        return one

    _run([Request(0, 0.0, 100, 5)], _ngram(2, 1.0), price=price)
    verify = seen[1]            # the step after the prompt: cache 100 + 1 sampled token, 2 drafts
    assert (verify.decode_seqs, verify.verify_tokens, verify.tokens) == (1, 2, 3)
    assert verify.decode_keys == 101
    assert verify.verify_pairs == 2 * 101 + 1 + 2      # draft j attends 101 + j keys


def test_the_last_step_emits_no_more_than_the_output_left() -> None:
    outcome = _run([Request(0, 0.0, 50, 6)], _ngram(4, 1.0))
    times = list(outcome.sequences[0].token_times)
    assert len(times) == 6 and [times.count(t) for t in dict.fromkeys(times)] == [1, 5]
    outcome = _run([Request(0, 0.0, 50, 8)], _ngram(4, 1.0))
    assert [list(outcome.sequences[0].token_times).count(t) for t in dict.fromkeys(outcome.sequences[0].token_times)
            ] == [1, 5, 2]


def test_acceptance_is_drawn_per_position_conditionally_and_the_mean_matches() -> None:
    spec = Speculative(method="eagle", num_draft_tokens=3, acceptance=[0.8, 0.5, 0.5])
    assert spec.mean_accept_length == pytest.approx(1 + 0.8 + 0.4 + 0.2)
    speculator = Speculator(spec, seed=1, replica=0)
    draws = [speculator.accept(3) for _ in range(40_000)]
    counts = np.bincount(draws, minlength=4) / len(draws)
    assert counts == pytest.approx([0.2, 0.4, 0.2, 0.2], abs=0.01)
    assert all(speculator.accept(1) <= 1 for _ in range(100))     # a trimmed step verifies fewer drafts


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    requests = fixed_requests(30, 0.05, 64, 40)

    def times(seed: int) -> list[list[float]]:
        return [list(s.token_times) for s in _run(requests, _ngram(3, 0.6), seed=seed).sequences]

    assert times(7) == times(7)
    assert times(7) != times(8)


def test_littles_law_holds_with_speculation() -> None:
    requests = [Request(i, t, 200, 60) for i, t in enumerate(np.cumsum(np.random.default_rng(3).exponential(0.02,
                                                                                                          400)))]
    outcome = _run(requests, _ngram(3, 0.7), kind="chunked-prefill", max_batched_tokens=512)
    row = summarize(outcome, None, None)
    done = len(outcome.sequences)
    mean_e2e = float(np.mean([s.token_times[-1] - s.request.arrival_s for s in outcome.sequences]))
    assert outcome.occupancy_s == pytest.approx(done * mean_e2e, rel=1e-9)
    assert row["extra"]["mean_in_system"] == pytest.approx(row["requests_per_s"] * mean_e2e, rel=1e-9)
    assert 1 < row["accept_length"] < 4


def test_the_token_budget_counts_k_plus_one_per_decoding_sequence_and_the_kv_its_slots() -> None:
    spec = SchedulerSpec(kind="chunked-prefill", max_batched_tokens=10)
    sched = BUILTIN["chunked-prefill"](spec, KVCache(1000, 16))
    sched.draft_tokens, sched.lookahead = 3, 3
    seqs = []
    for i in range(3):                                   # three decoding sequences: prompt 20 cached, 1 token out
        seq = Sequence(Request(i, 0.0, 20, 50), 0)
        seq.computed, seq.generated = 20, 1
        sched.kv.grow(seq, 20)
        sched.running.append(seq)
        seqs.append(seq)
    waiting = Sequence(Request(9, 0.0, 30, 5), 0)
    sched.add(waiting)
    it = sched.schedule(0.0)
    assert it is not None
    # 4 + 4 of the budget of 10, the third decoding sequence's drafts trimmed to the 2 left (1 + 1 draft);
    # nothing left for the waiting prompt
    assert [n for _, n in it.work] == [4, 4, 2]
    # KV for the verify window and the lookahead: 20 + 4 + 3 = 27 tokens -> 2 blocks
    assert seqs[0].blocks == 2


def test_without_speculation_nothing_changes_and_accept_length_is_empty() -> None:
    requests = fixed_requests(20, 0.01, 64, 20)
    plain = _run(requests, None)
    row = summarize(plain, None, None)
    assert row["accept_length"] is None and "accept_length" not in plain.extra
    assert all(len(set(s.token_times)) == len(s.token_times) for s in plain.sequences)


def _llama_model():  # noqa: ANN202
    from llmsim.config import ModelSpec, SharingChoice, Workload
    from llmsim.costmodel import Plan
    from llmsim.costmodel.iteration import IterationModel, token_costs
    from llmsim.hardware import load_catalog
    from llmsim.modeled_serving import serving_profile
    served = Workload(model=ModelSpec(preset="llama3-8b"), dtype="bfloat16")
    ref, profile = serving_profile(served, SharingChoice(tie_embeddings=False))
    cluster = load_catalog().cluster("h100-sxm", 1, 8, None, None)
    return IterationModel(token_costs(ref, profile), ref, Plan(), cluster)


def _verify_step(model, head, keys: int, k: int) -> float:  # noqa: ANN001
    """One speculative iteration of one sequence alone at `keys` keys, by hand: the (k + 1)-token verify and the
    k draft passes of the head."""
    from llmsim.costmodel.iteration import draft_times, iteration_time
    mix = Mix(decode_seqs=1, decode_keys=keys, rows=1, verify_tokens=k, verify_pairs=k * keys + k * (k + 1) // 2)
    return iteration_time(model, mix) + draft_times(head, mix, k).step


def test_at_a_vanishing_rate_tpot_is_the_draft_and_verify_step_over_the_accept_length() -> None:
    """One request at a time (Llama 3 8B on one H100, EAGLE head of 1 layer, k = 3): with acceptance 1 every
    step emits 4 tokens and costs the verify at its cache length plus 3 draft passes, exactly; with acceptance
    0.6 TPOT is the mean step over the mean accept length 1 + 0.6 + 0.36 + 0.216, within the sampling noise;
    with a tiny acceptance TPOT is worse than without speculation (the verify and the draft for ~1 token)."""
    from llmsim.costmodel.iteration import draft_head_model, iteration_time
    from llmsim.modeled_serving import ServingFaults, pricers
    model = _llama_model()
    head = draft_head_model(model, 1)
    price = pricers(model, ServingFaults(), draft=(head, 3))
    prompt, k = 300, 3
    eagle = Speculative(method="eagle", num_draft_tokens=k, acceptance=1.0)
    outcome = _run(fixed_requests(3, 100.0, prompt, 13), eagle, price=price)
    steps = [_verify_step(model, head, prompt + 1 + 4 * j, k) for j in range(3)]
    row = summarize(outcome, 0.01, None)
    assert row["tpot_mean_s"] == pytest.approx(sum(steps) / 12, rel=1e-9)
    assert row["accept_length"] == 4

    output = 400
    requests = fixed_requests(40, 100.0, prompt, output)
    half = Speculative(method="eagle", num_draft_tokens=k, acceptance=0.6)
    row = summarize(_run(requests, half, price=price), 0.01, None)
    mean_step = _verify_step(model, head, prompt + output // 2, k)
    assert row["tpot_mean_s"] == pytest.approx(mean_step / half.mean_accept_length, rel=0.03)
    assert row["accept_length"] == pytest.approx(half.mean_accept_length, rel=0.02)

    plain = summarize(_run(requests, None, price=pricers(model, ServingFaults())), 0.01, None)
    assert plain["tpot_mean_s"] == pytest.approx(iteration_time(model, Mix.decode(prompt + output // 2)), rel=0.01)
    tiny = Speculative(method="eagle", num_draft_tokens=k, acceptance=0.001)
    worse = summarize(_run(requests, tiny, price=price), 0.01, None)
    assert worse["tpot_mean_s"] > 1.1 * plain["tpot_mean_s"]
    assert row["tpot_mean_s"] < plain["tpot_mean_s"] < worse["tpot_mean_s"]
