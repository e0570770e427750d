"""The serving simulation as a whole: queueing laws, bounds at saturation, the cost model at a vanishing rate,
the schedulers against each other, reproducibility and rejections."""

from __future__ import annotations

import math

import pytest

from llmsim.config import ModelSpec, SharingChoice, Workload
from llmsim.costmodel import Plan
from llmsim.costmodel.iteration import IterationModel, Mix, iteration_time, token_costs
from llmsim.hardware import load_catalog
from llmsim.modeled_serving import ServingFaults, pricers, serving_profile
from llmsim.serving.kvcache import KVCache
from llmsim.serving.metrics import requests_table, summarize
from llmsim.serving.requests import Request, build_requests
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.spec import HostStep, ServingCase, ServingSpec
from tests.serving.helpers import fixed_requests, linear_seconds, run

CATALOG = load_catalog()


def _spec(**serving) -> ServingSpec:
    return ServingSpec.model_validate({"requests": 2000, "arrival": {"kind": "poisson", "rate": 20},
                                       "lengths": {"input": {"kind": "uniform", "min": 20, "max": 400},
                                                   "output": {"kind": "lognormal", "median": 40, "sigma": 0.7}},
                                       **serving})


def test_littles_law_holds() -> None:
    """L = lambda W: the time-average number of requests in the system (integrated by the simulation as
    requests arrive and leave) equals the throughput times the mean time in the system, and the
    throughput is the offered rate for a stable system."""
    case = ServingCase(_spec(), seed=1, scheduler=BUILTIN["continuous"])
    outcome = run(build_requests(case), replicas=2)
    row = summarize(outcome, 20.0, None)
    mean_in_system = row["extra"]["mean_in_system"]
    assert mean_in_system == pytest.approx(row["requests_per_s"] * row["e2e_mean_s"], rel=1e-9)
    assert mean_in_system > 1   # not trivially empty
    assert row["requests_per_s"] == pytest.approx(20.0, rel=0.05)


def _batch_time(rows: int, prompt: int, output: int) -> float:
    """One static batch of identical requests under the linear price: the padded prefill, then output - 1
    decode steps of every row at prompt + step keys."""
    t = linear_seconds(Mix(prefill_tokens=rows * prompt, prefill_square=rows * prompt ** 2, rows=rows))
    for step in range(1, output):
        t += linear_seconds(Mix(decode_seqs=rows, decode_keys=rows * (prompt + step), rows=rows))
    return t


def test_at_saturation_static_throughput_is_the_batch_limited_bound() -> None:
    """Requests arrive far faster than served: the first batch holds the one request there at t = 0, every
    later one max_num_seqs requests; the run takes T(1) + k T(B) and its throughput tends to B / T(B)."""
    b, k = 8, 5
    requests = fixed_requests(1 + k * b, 1e-7, 100, 20)
    outcome = run(requests, "static", max_num_seqs=b)
    expected = _batch_time(1, 100, 20) + k * _batch_time(b, 100, 20)
    assert outcome.duration_s == pytest.approx(expected, rel=1e-9)
    row = summarize(outcome, 1e7, None)
    assert row["requests_per_s"] == pytest.approx((1 + k * b) / expected, rel=1e-9)


def test_at_saturation_static_throughput_is_the_memory_limited_bound() -> None:
    """With room in the KV cache for only C whole requests (prompt + answer), batches hold C, not
    max_num_seqs, and the throughput is the memory-limited C / T(C)."""
    c, k, prompt, output = 3, 4, 100, 20
    per_request = math.ceil((prompt + output - 1) / 16)
    requests = fixed_requests(1 + k * c, 1e-7, prompt, output)
    outcome = run(requests, "static", max_num_seqs=64, blocks=c * per_request + per_request - 1)
    assert outcome.duration_s == pytest.approx(_batch_time(1, prompt, output) + k * _batch_time(c, prompt, output),
                                               rel=1e-9)
    assert max(outcome.max_batch) == c


def test_at_saturation_continuous_throughput_is_the_batch_limited_bound() -> None:
    """Continuous batching keeps max_num_seqs requests in flight: each holds its slot for `output`
    iterations (its prefill, then output - 1 decode steps), so requests/s = B / (output x the mean
    iteration time), and every iteration is full once the queue formed."""
    b, output = 16, 30
    requests = fixed_requests(400, 1e-7, 50, output)
    outcome = run(requests, max_num_seqs=b)
    mean_iteration = sum(outcome.busy_s) / sum(outcome.iterations)
    row = summarize(outcome, 1e7, None)
    assert row["requests_per_s"] == pytest.approx(b / (output * mean_iteration), rel=0.02)
    assert max(outcome.max_batch) == b


def test_iterations_at_max_num_seqs_count_only_those_that_left_requests_waiting() -> None:
    """Trial 45: a batch that touched max_num_seqs with nobody waiting was reported as held back. The count
    (serving.metrics.seq_limit_iterations) takes the iterations whose batch was full while requests waited: every
    iteration once the queue formed at saturation, none when the limit is exactly what the arrivals fill."""
    b = 16
    saturated = run(fixed_requests(400, 1e-7, 50, 30), max_num_seqs=b)
    held = summarize(saturated, 1e7, None, [b])["extra"]["iterations_at_max_num_seqs"]
    assert 0 < held <= sum(saturated.iterations)
    exact = run(fixed_requests(b, 1e-7, 50, 30), max_num_seqs=b)   # 16 requests, 16 slots: the batch is full, alone
    assert max(exact.max_batch) == b
    assert summarize(exact, 1e7, None, [b])["extra"]["iterations_at_max_num_seqs"] == 0
    assert "iterations_at_max_num_seqs" not in summarize(exact, 1e7, None)["extra"]   # no limits given: not counted


def _llama_model(tp: int = 1) -> tuple[IterationModel, Workload]:
    served = Workload(model=ModelSpec(preset="llama3-8b"), dtype="bfloat16")
    ref, profile = serving_profile(served, SharingChoice(tie_embeddings=False))
    cluster = CATALOG.cluster("h100-sxm", 1, 8, None, None)
    return IterationModel(token_costs(ref, profile), ref, Plan(tp=tp), cluster), served


def test_at_a_vanishing_rate_ttft_is_the_priced_prefill_and_tpot_the_priced_decode_step() -> None:
    """One request at a time on an idle replica: no queueing, TTFT = the prefill iteration, each later
    token one decode iteration at its own cache length, TPOT their mean."""
    model, _ = _llama_model(tp=2)
    prompt, output = 300, 12
    requests = fixed_requests(4, 100.0, prompt, output)   # 100 s apart: each alone
    outcome = run(requests, price=pricers(model, ServingFaults()))
    prefill = iteration_time(model, Mix.prefill(prompt))
    steps = [iteration_time(model, Mix.decode(prompt + k)) for k in range(1, output)]
    for seq in outcome.sequences:
        assert seq.token_times[0] - seq.request.arrival_s == pytest.approx(prefill, rel=1e-12)
        gaps = [b - a for a, b in zip(seq.token_times, seq.token_times[1:])]
        assert gaps == pytest.approx(steps, rel=1e-9)
    row = summarize(outcome, 0.01, None)
    assert row["ttft_p99_s"] == pytest.approx(prefill, rel=1e-12)
    assert row["tpot_mean_s"] == pytest.approx(sum(steps) / len(steps), rel=1e-9)
    assert row["queue_p50_s"] == 0.0


def test_at_a_vanishing_rate_ttft_is_the_priced_prefill_plus_the_request_overhead_and_tpot_unchanged() -> None:
    """A request's fixed time outside the engine (API server, IPC, detokenising) adds to its TTFT and end-to-end
    latency once; the engine's iterations, TPOT and ITL are those of a run without it."""
    model, _ = _llama_model(tp=2)
    prompt, output, overhead = 300, 12, 0.006
    requests = fixed_requests(4, 100.0, prompt, output)
    plain = run(requests, price=pricers(model, ServingFaults()))
    outcome = run(requests, price=pricers(model, ServingFaults()), request_overhead_s=overhead)
    prefill = iteration_time(model, Mix.prefill(prompt))
    for seq in outcome.sequences:
        assert seq.token_times[0] - seq.request.arrival_s == pytest.approx(prefill + overhead, rel=1e-12)
    row, before = summarize(outcome, 0.01, None), summarize(plain, 0.01, None)
    assert row["ttft_p50_s"] == pytest.approx(prefill + overhead, rel=1e-12)
    assert row["e2e_mean_s"] == pytest.approx(before["e2e_mean_s"] + overhead, rel=1e-12)
    for key in ("tpot_mean_s", "tpot_p99_s", "itl_mean_s", "itl_p99_s", "queue_p50_s"):
        assert row[key] == pytest.approx(before[key], rel=1e-12), key
    assert outcome.busy_s == plain.busy_s and outcome.iterations == plain.iterations   # not on the engine


def test_at_a_vanishing_rate_every_iteration_pays_the_host_step() -> None:
    """The engine's host time per iteration (scheduling, input preparation, sampling, output processing, not
    overlapped in a V0-style engine) adds fixed + per-sequence x sequences to every iteration: one request alone
    runs one sequence, so its TTFT and each inter-token gap grow by fixed + per_seq, and the engine is busy that
    much longer."""
    model, _ = _llama_model(tp=2)
    prompt, output, host = 300, 12, HostStep(0.002, 0.0005)
    requests = fixed_requests(4, 100.0, prompt, output)
    plain = run(requests, price=pricers(model, ServingFaults()))
    outcome = run(requests, price=pricers(model, ServingFaults(), host))
    prefill = iteration_time(model, Mix.prefill(prompt))
    steps = [iteration_time(model, Mix.decode(prompt + k)) for k in range(1, output)]
    for seq in outcome.sequences:
        assert seq.token_times[0] - seq.request.arrival_s == pytest.approx(prefill + 0.0025, rel=1e-12)
        gaps = [b - a for a, b in zip(seq.token_times, seq.token_times[1:])]
        assert gaps == pytest.approx([s + 0.0025 for s in steps], rel=1e-9)
    assert outcome.iterations == plain.iterations
    assert sum(outcome.busy_s) == pytest.approx(sum(plain.busy_s) + 0.0025 * sum(plain.iterations), rel=1e-9)


def test_the_host_step_grows_with_the_sequences_an_iteration_runs() -> None:
    assert HostStep(0.002, 0.0005).seconds(8) == pytest.approx(0.006)
    assert HostStep(0.002, 0.0005).seconds(0) == 0.0          # no iteration, no host time
    assert HostStep().seconds(64) == 0.0                      # the default: not modeled


def test_the_request_overhead_keeps_littles_law_and_does_not_change_scheduling_under_load() -> None:
    case = ServingCase(_spec(), seed=1, scheduler=BUILTIN["continuous"])
    requests = build_requests(case)
    plain, outcome = run(requests, replicas=2), run(requests, replicas=2, request_overhead_s=0.05)
    row = summarize(outcome, 20.0, None)
    assert row["extra"]["mean_in_system"] == pytest.approx(row["requests_per_s"] * row["e2e_mean_s"], rel=1e-9)
    assert [s.token_times[0] - a.token_times[0] for s, a in zip(outcome.sequences, plain.sequences)] == \
        pytest.approx([0.05] * len(requests), rel=1e-9)
    assert row["tpot_p99_s"] == pytest.approx(summarize(plain, 20.0, None)["tpot_p99_s"], rel=1e-12)
    with pytest.raises(ValueError, match="request_overhead_s must be >= 0"):
        run(requests[:2], request_overhead_s=-1.0)


def test_continuous_batching_beats_static_batching_on_ttft_at_moderate_load() -> None:
    """Llama 3 8B on one H100 at 3 requests/s: a static batch keeps new requests waiting for its longest
    answer; iteration-level scheduling lets them in at the next iteration."""
    model, _ = _llama_model()
    case = ServingCase(ServingSpec.model_validate({"requests": 150, "arrival": {"kind": "poisson", "rate": 3},
                                                   "lengths": {"input": 467, "output": 256}}),
                       seed=0, scheduler=BUILTIN["continuous"])
    requests = build_requests(case)
    rows = {kind: summarize(run(requests, kind, price=pricers(model, ServingFaults())), 3.0, None)
            for kind in ("static", "continuous")}
    assert rows["continuous"]["ttft_p50_s"] < rows["static"]["ttft_p50_s"] / 10
    assert rows["continuous"]["ttft_mean_s"] < rows["static"]["ttft_mean_s"]
    assert rows["continuous"]["requests_per_s"] == pytest.approx(3.0, rel=0.15)


def test_the_same_seed_gives_the_same_result_and_another_seed_another() -> None:
    def once(seed: int) -> str:
        case = ServingCase(_spec(requests=300), seed=seed, scheduler=BUILTIN["chunked-prefill"])
        return requests_table(run(build_requests(case), "chunked-prefill", replicas=2, router="least-outstanding",
                                  blocks=200, max_batched_tokens=512))

    assert once(7) == once(7)
    assert once(7) != once(8)


def test_requests_the_engine_cannot_serve_are_rejected_and_counted() -> None:
    """Longer than the context (vLLM answers with an error), or more blocks than a replica has: rejected on
    arrival, counted, the rest served."""
    requests = [Request(0, 0.0, 100, 10), Request(1, 0.1, 950, 100), Request(2, 0.2, 300, 100),
                Request(3, 0.3, 50, 5)]
    outcome = run(requests, context=1000, blocks=20, block_tokens=16)   # 320 tokens of cache
    assert [(r.request.id, r.reason) for r in outcome.rejected] == [(1, "context"), (2, "kv-cache")]
    assert [s.request.id for s in outcome.sequences] == [0, 3]
    row = summarize(outcome, 10.0, None)
    assert row["extra"]["requests_rejected"] == 2 and row["extra"]["requests_done"] == 2
    table = requests_table(outcome).splitlines()
    assert table[2].startswith("1,,rejected,context") and table[3].startswith("2,,rejected,kv-cache")


def test_least_outstanding_routing_evens_out_unequal_requests() -> None:
    """Alternating long and short requests: round-robin sends every long one to replica 0; least
    outstanding spreads them."""
    requests = [Request(i, 0.05 * i, 200, 200 if i % 2 == 0 else 2) for i in range(40)]
    rr = run(requests, replicas=2, router="round-robin")
    lo = run(requests, replicas=2, router="least-outstanding")
    assert {s.replica for s in rr.sequences if s.request.id % 2 == 0} == {0}
    assert {s.replica for s in lo.sequences if s.request.id % 2 == 0} == {0, 1}
    assert summarize(lo, 20.0, None)["e2e_p99_s"] < summarize(rr, 20.0, None)["e2e_p99_s"]


def test_a_scheduler_that_never_schedules_is_reported() -> None:
    from llmsim.serving.schedulers import Scheduler
    from llmsim.serving.simulate import StalledError, simulate_serving

    class Lazy(Scheduler):
        kind = "lazy"

        def schedule(self, now):  # noqa: ANN001, ANN201
            return None

    with pytest.raises(StalledError, match="2 of 2 requests unfinished"):
        simulate_serving(fixed_requests(2, 0.1, 10, 2), replicas=1, make_scheduler=lambda kv: Lazy(None, kv),
                         kv_blocks=100, block_tokens=16, price=lambda i: (lambda m: (1.0, 1.0)),
                         router="round-robin", context_tokens=1000)


def test_kv_peak_utilization_is_the_fullest_replicas_peak_share() -> None:
    outcome = run(fixed_requests(6, 0.0, 64, 16), blocks=100, block_tokens=16)
    # six requests in flight at once, each peaking at ceil((64 + 15) / 16) = 5 blocks
    assert outcome.kv_peak_utilization == pytest.approx(30 / 100)
    assert isinstance(outcome.sequences[0].request, Request)
    assert KVCache(10, 16).blocks_for(17) == 2


def test_the_timeline_records_every_iteration_batch_and_kv_use_and_is_thinned_when_written() -> None:
    """Per replica, one entry per iteration: the batch it ran, its KV blocks in use, the queue; the peaks agree
    with the run's own counters, and the CSV keeps every k-th iteration once there are more than max_rows."""
    import csv as _csv
    import io

    from llmsim.serving.metrics import TIMELINE_COLUMNS, timeline_table

    requests = fixed_requests(40, 0.002, 64, 20)
    outcome = run(requests, blocks=120, block_tokens=16, replicas=2, max_num_seqs=8, max_batched_tokens=512)
    assert [len(t) for t in outcome.timelines] == outcome.iterations
    for t, peak, biggest in zip(outcome.timelines, outcome.kv_peak_used, outcome.max_batch):
        assert max(t.batch) == biggest and max(t.kv_blocks_used) == peak > 0
        assert list(t.time_s) == sorted(t.time_s)
    assert max(max(t.waiting) for t in outcome.timelines) > 0      # 8 sequences at most: the rest queue
    rows = list(_csv.DictReader(io.StringIO(timeline_table(outcome))))
    assert tuple(rows[0]) == TIMELINE_COLUMNS and len(rows) == sum(outcome.iterations)
    first = outcome.timelines[0]
    assert float(rows[1]["kv_utilization"]) == pytest.approx(first.kv_blocks_used[1] / 120, rel=1e-5)
    thin = list(_csv.DictReader(io.StringIO(timeline_table(outcome, max_rows=10))))
    for replica, n in enumerate(outcome.iterations):
        kept = [int(r["iteration"]) for r in thin if r["replica"] == str(replica)]
        stride = -(-n // 10)
        assert kept == list(range(0, n, stride)) and len(kept) <= 10
