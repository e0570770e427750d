"""Prefill-decode disaggregation (llmsim.serving.disaggregation): a vanishing rate priced by hand (prefill, KV
transfer from the link, decode steps), the DistServe interference point under a prefill-heavy load, Little's law,
reproducibility, rejections, the decode side's wait for room, layerwise transfer, closed loop."""

from __future__ import annotations

import pytest

from llmsim.costmodel.iteration import Mix
from llmsim.serving.disaggregation import (Pool, TransferLink, kv_bytes_per_port, simulate_disaggregated,
                                           transfer_link, transfer_seconds)
from llmsim.serving.metrics import requests_table, summarize
from llmsim.serving.requests import ClosedLoop, Request, build_requests
from llmsim.serving.schedulers import BUILTIN
from llmsim.serving.spec import SchedulerSpec, ServingCase, ServingSpec
from tests.serving.helpers import fixed_requests, linear_price, linear_seconds, run

# A link priced by hand: 10 GB/s x 0.5 efficiency = 5 GB/s per port, 1 ms latency; 128 KiB of KV per token
# (Llama-3-8B in bfloat16: 2 x 32 layers x 8 KV heads x 128 x 2 bytes).
LINK = transfer_link(10e9, 1e-3, 0.5, False, 1)
KV_PER_TOKEN = 131072.0


def _transfer(layerwise: bool = False, layers: int = 4):  # noqa: ANN202
    def transfer(request: Request, span_s: float) -> tuple[float, float]:
        per_port = kv_bytes_per_port(KV_PER_TOKEN, request.input_tokens, 1, 1, 1)
        return transfer_seconds(per_port, LINK, layers, span_s, layerwise)
    return transfer


def _pool(replicas: int, kind: str, blocks: int = 100_000, **scheduler) -> Pool:  # noqa: ANN003
    spec = SchedulerSpec(kind=kind, **scheduler)
    return Pool(replicas, blocks, lambda kv: BUILTIN[kind](spec, kv), linear_price)


def _pd(requests: list[Request], kind: str = "continuous", *, prefill: int = 1, decode: int = 1,
        decode_blocks: int = 100_000, layerwise: bool = False, context: int = 100_000,
        prefill_blocks: int = 100_000, closed_loop: ClosedLoop | None = None, router: str = "round-robin",
        **scheduler):  # noqa: ANN003, ANN202
    return simulate_disaggregated(requests, prefill=_pool(prefill, kind, prefill_blocks, **scheduler),
                                  decode=_pool(decode, kind, decode_blocks, **scheduler), block_tokens=16,
                                  router=router, context_tokens=context, transfer=_transfer(layerwise),
                                  closed_loop=closed_loop)


def test_the_link_prices_a_transfer_as_latency_plus_bytes_over_bandwidth_times_efficiency() -> None:
    assert LINK == TransferLink(5e9, 1e-3)
    assert transfer_seconds(1e9, LINK, 4, 0.0, False) == (0.2, 1e-3)
    # layerwise: the last layer's share after the prefill, or what the link could not send during it
    assert transfer_seconds(1e9, LINK, 4, 1.0, True) == (0.05, 1e-3)
    assert transfer_seconds(1e9, LINK, 4, 0.1, True) == pytest.approx((0.1, 1e-3))
    # one port per node: shared by the devices that send at once
    assert transfer_link(10e9, 0.0, 1.0, True, 4).bandwidth_bytes_per_s == 2.5e9


def test_the_busiest_port_carries_the_decode_devices_shares_over_the_prefill_ports() -> None:
    # 8 KV heads: tp 2 -> tp 2 each port one half; tp 1 -> tp 4 the one prefill port sends every quarter
    assert kv_bytes_per_port(100.0, 10, 2, 2, 2) == 500.0
    assert kv_bytes_per_port(100.0, 10, 1, 4, 4) == 1000.0
    # MLA (kv_split 1): every decode device receives the whole latent; 2 prefill ports send 4 copies
    assert kv_bytes_per_port(100.0, 10, 2, 4, 1) == 2000.0


def test_at_a_vanishing_rate_ttft_is_the_prefill_and_the_second_token_waits_for_the_kv_transfer() -> None:
    """One request at a time: TTFT = the priced prefill alone (prefill queue empty); the first-to-second token gap =
    latency + prompt KV bytes / (bandwidth x efficiency) + one decode step; later gaps one decode step each."""
    prompt, output = 300, 6
    outcome = _pd(fixed_requests(3, 100.0, prompt, output))
    prefill = linear_seconds(Mix.prefill(prompt))
    transfer = 1e-3 + prompt * KV_PER_TOKEN / 5e9                       # 1 ms + 39.3 MB / 5 GB/s = 8.9 ms
    steps = [linear_seconds(Mix.decode(prompt + k)) for k in range(1, output)]
    for seq in outcome.sequences:
        assert seq.token_times[0] - seq.request.arrival_s == pytest.approx(prefill, rel=1e-12)
        gaps = [b - a for a, b in zip(seq.token_times, seq.token_times[1:])]
        assert gaps[0] == pytest.approx(transfer + steps[0], rel=1e-9)
        assert gaps[1:] == pytest.approx(steps[1:], rel=1e-9)
        assert seq.replica == 1                                          # the decode instance (after 1 prefill)
    row = summarize(outcome, 0.01, None)
    assert row["ttft_p99_s"] == pytest.approx(prefill, rel=1e-12)
    assert row["tpot_mean_s"] == pytest.approx((transfer + sum(steps)) / len(steps), rel=1e-9)
    assert outcome.extra["kv_transfer_mean_s"] == pytest.approx(transfer, rel=1e-12)
    assert outcome.extra["decode_waits"] == 0
    # the prefill instance ran prompts only, the decode instance decode steps only
    assert outcome.iterations == [3, 3 * (output - 1)]


def test_layerwise_transfer_leaves_only_the_last_layers_share_after_the_prefill() -> None:
    prompt = 300
    whole = _pd(fixed_requests(1, 1.0, prompt, 3)).sequences[0]
    layered = _pd(fixed_requests(1, 1.0, prompt, 3), layerwise=True).sequences[0]
    span = linear_seconds(Mix.prefill(prompt))
    full = prompt * KV_PER_TOKEN / 5e9
    saved = full - max(full / 4, full - span)
    assert (whole.token_times[1] - whole.token_times[0]) - (layered.token_times[1] - layered.token_times[0]) \
        == pytest.approx(saved, rel=1e-9)
    assert saved > 0


def test_a_one_token_answer_is_done_at_its_prefill_with_nothing_to_transfer() -> None:
    outcome = _pd(fixed_requests(2, 10.0, 100, 1))
    assert [len(s.token_times) for s in outcome.sequences] == [1, 1]
    assert outcome.extra["kv_transfer_mean_s"] == 0.0 and outcome.iterations == [2, 0]


def _spec(**serving) -> ServingSpec:  # noqa: ANN003
    return ServingSpec.model_validate({"requests": 600, "arrival": {"kind": "poisson", "rate": 6},
                                       "lengths": {"input": {"kind": "uniform", "min": 1000, "max": 3000},
                                                   "output": {"kind": "uniform", "min": 20, "max": 80}},
                                       **serving})


def test_under_a_prefill_heavy_load_disaggregation_beats_colocated_on_tpot_p99() -> None:
    """DistServe's point (Zhong et al. 2024, Sec. 2.2): colocated, a decode step that carries prompt chunks takes
    their time too, more often the more prompts arrive; on a decode instance it never does. Two devices either way:
    2 colocated replicas vs 1P1D, at 4 and 8 requests/s of 1,000-3,000-token prompts."""
    p99: dict[str, list[float]] = {"colocated": [], "split": []}
    for rate in (4.0, 8.0):
        case = ServingCase(_spec(arrival={"kind": "poisson", "rate": rate}), seed=3,
                           scheduler=BUILTIN["chunked-prefill"])
        colocated = summarize(run(build_requests(case), "chunked-prefill", replicas=2, max_batched_tokens=1024),
                              rate, None)
        split = summarize(_pd(build_requests(case), "chunked-prefill", max_batched_tokens=1024), rate, None)
        assert split["tpot_p99_s"] < colocated["tpot_p99_s"]
        assert split["requests_per_s"] == pytest.approx(colocated["requests_per_s"], rel=0.01)
        p99["colocated"].append(colocated["tpot_p99_s"])
        p99["split"].append(split["tpot_p99_s"])
    assert p99["colocated"][1] > 1.1 * p99["colocated"][0]     # more prompts, more interference
    assert p99["split"][1] < 1.03 * p99["split"][0]             # none on the decode instance


def test_littles_law_holds() -> None:
    case = ServingCase(_spec(), seed=1, scheduler=BUILTIN["chunked-prefill"])
    outcome = _pd(build_requests(case), "chunked-prefill", prefill=2, decode=1, max_batched_tokens=1024,
                  router="least-outstanding")
    row = summarize(outcome, 6.0, None)
    mean_in_system = row["extra"]["mean_in_system"]
    assert mean_in_system == pytest.approx(row["requests_per_s"] * row["e2e_mean_s"], rel=1e-9)
    assert mean_in_system > 1


def test_the_same_seed_gives_the_same_result_and_another_seed_another() -> None:
    def once(seed: int) -> str:
        case = ServingCase(_spec(requests=200), seed=seed, scheduler=BUILTIN["chunked-prefill"])
        return requests_table(_pd(build_requests(case), "chunked-prefill", prefill=2, decode=2,
                                  max_batched_tokens=512, decode_blocks=2000))

    assert once(7) == once(7)
    assert once(7) != once(8)


def test_requests_neither_side_can_hold_are_rejected_and_counted() -> None:
    """Longer than the context; a prompt larger than a prefill instance's cache; a whole length larger than a
    decode instance's: rejected on arrival, the rest served."""
    requests = [Request(0, 0.0, 100, 10), Request(1, 0.1, 950, 100), Request(2, 0.2, 200, 10),
                Request(3, 0.3, 100, 300), Request(4, 0.4, 50, 5)]
    outcome = _pd(requests, context=1000, prefill_blocks=10, decode_blocks=20)   # 160 and 320 tokens
    assert [(r.request.id, r.reason) for r in outcome.rejected] == [(1, "context"), (2, "kv-cache"),
                                                                    (3, "kv-cache")]
    assert [s.request.id for s in outcome.sequences] == [0, 4]


def test_a_full_decode_pool_makes_requests_wait_for_room_and_they_are_counted() -> None:
    """20 requests of 200 + 50 tokens at once on a decode cache of 64 blocks (1,024 tokens: 4 requests at a time):
    the others wait on the decode side (counted), none is lost; with room for all, none waits."""
    requests = fixed_requests(20, 0.0, 200, 50)
    tight = _pd(requests, decode_blocks=64)
    roomy = _pd(fixed_requests(20, 0.0, 200, 50))
    assert len(tight.sequences) == 20 and tight.extra["decode_waits"] >= 10
    assert tight.extra["decode_queue_mean_s"] > roomy.extra["decode_queue_mean_s"]
    assert roomy.extra["decode_waits"] == 0
    assert max(tight.kv_peak_used[1:]) <= 64


def test_a_closed_loop_runs_through_both_sides() -> None:
    requests = fixed_requests(40, 0.0, 200, 20)
    outcome = _pd(requests, closed_loop=ClosedLoop(clients=4, think_s=0.0))
    assert len(outcome.sequences) == 40 and outcome.clients == 4
    row = summarize(outcome, None, None)
    assert row["extra"]["mean_in_system"] == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("kind", ["continuous", "chunked-prefill", "prefill-first", "tgi", "sglang"])
def test_every_iteration_level_policy_serves_both_sides_to_the_end(kind: str) -> None:
    """A decode instance's new arrivals have their prompt cached: each policy admits them as one-token work, priced as
    decode steps; every request finishes, on a decode cache small enough to make some wait."""
    case = ServingCase(_spec(requests=150), seed=2, scheduler=BUILTIN[kind])
    outcome = _pd(build_requests(case), kind, decode_blocks=1500, max_batched_tokens=4096)
    row = summarize(outcome, 6.0, None)
    assert len(outcome.sequences) == 150
    assert row["extra"]["mean_in_system"] == pytest.approx(row["requests_per_s"] * row["e2e_mean_s"], rel=1e-9)


def test_speculative_decoding_with_disaggregation_is_refused_in_one_line() -> None:
    """The two blocks landed on separate branches: the disaggregated decode instances price no draft, so a
    scenario with both is refused naming serving.speculative (it ran, the speculation silently ignored)."""
    from llmsim.config import parse_scenario
    from llmsim.errors import ScenarioError
    data = {"name": "t", "workload": {"model": {"preset": "tiny"}},
            "strategies": [{"tp": 1}],
            "serving": {"requests": 10, "arrival": {"kind": "poisson", "rate": 1}, "lengths": {"input": 8, "output": 4},
                        "speculative": {"method": "ngram", "num_draft_tokens": 2, "acceptance": 0.5},
                        "disaggregation": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}},
            "backends": {"roofline": {"hardware": "h100-sxm"}}}
    with pytest.raises(ScenarioError, match="serving.speculative: speculative decoding is not modeled with "
                                            "serving.disaggregation"):
        parse_scenario(data, "t.yaml")


def _lockstep_pool(replicas: int, ranks: int, seen: list) -> Pool:  # noqa: ANN001
    """Instances of `ranks` attention-DP ranks, every lockstep iteration STEP_S, its mixes recorded in `seen`."""
    spec = SchedulerSpec(kind="continuous", max_num_seqs=64, max_batched_tokens=100_000)

    def price(_: int):  # noqa: ANN202 - a pricer of the ranks' mixes
        def one(mixes: tuple[Mix, ...]) -> tuple[float, float]:
            seen.append(mixes)
            return 0.01, 0.01
        return one
    return Pool(replicas, 100_000, lambda kv: BUILTIN["continuous"](spec, kv), price, attention_dp=ranks)


def test_attention_dp_instances_run_their_ranks_in_lockstep_and_each_rank_sends_from_its_own_ports() -> None:
    """Two prompts at t = 0 on one prefill instance: with 2 attention-DP ranks each rank prefills one (every priced
    iteration carries one mix per rank) and sends its KV from its own devices' ports, so both transfers run at once
    and both second tokens come out together (with one rank they queue: the next test). The decode instance's ranks
    take one request each."""
    prompt = 300
    seen_p: list = []
    seen_d: list = []
    outcome = simulate_disaggregated([Request(i, 0.0, prompt, 3) for i in range(2)],
                                     prefill=_lockstep_pool(1, 2, seen_p),
                                     decode=_lockstep_pool(1, 2, seen_d), block_tokens=16, router="round-robin",
                                     context_tokens=100_000, transfer=_transfer())
    assert len(outcome.sequences) == 2
    assert all(len(m) == 2 for m in seen_p + seen_d)
    assert [m.prefill_tokens for m in seen_p[0]] == [prompt, prompt]
    first, second = (s.token_times[1] for s in outcome.sequences)
    assert first == second
    assert outcome.extra["kv_transfer_mean_s"] == pytest.approx(1e-3 + prompt * KV_PER_TOKEN / 5e9, rel=1e-12)
    assert max(len(m) and max(x.decode_seqs for x in m) for m in seen_d) == 1  # one request per decode rank


def test_one_attention_dp_rank_sends_its_transfers_one_after_another() -> None:
    """The contrast: plain instances (one rank), the same two prompts prefilled in one iteration: the second
    transfer waits for the first on the instance's ports (39.3 MB / 5 GB/s), the mean over the two half that."""
    outcome = _pd([Request(i, 0.0, 300, 3) for i in range(2)])
    transfer = 1e-3 + 300 * KV_PER_TOKEN / 5e9
    waited = 300 * KV_PER_TOKEN / 5e9
    assert outcome.extra["kv_transfer_mean_s"] == pytest.approx(transfer + waited / 2, rel=1e-9)
