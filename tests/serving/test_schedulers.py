"""The schedulers: what each iteration holds, and preemption exactly when the KV cache runs out of blocks."""

from __future__ import annotations

from llmsim.costmodel.iteration import Mix
from llmsim.serving.kvcache import KVCache, Sequence
from llmsim.serving.requests import Request
from llmsim.serving.schedulers import BUILTIN, ContinuousScheduler, Iteration, mix_of
from llmsim.serving.spec import SchedulerSpec
from tests.serving.helpers import fixed_requests, linear_seconds, run


def _recording(kind: str, blocks: int, block_tokens: int, requests: list[Request], **spec: int):
    """Run `requests`, and per iteration record (work as (request id, tokens), preemptions so far, blocks used)."""
    log: list[tuple[list[tuple[int, int]], int, int]] = []
    made = []

    def make(kv: KVCache):
        scheduler = BUILTIN[kind](SchedulerSpec(kind=kind, **spec), kv)
        original = scheduler.schedule

        def schedule(now: float) -> Iteration | None:
            it = original(now)
            if it is not None:
                log.append(([(s.request.id, n) for s, n in it.work], scheduler.preemptions, kv.used))
            return it

        scheduler.schedule = schedule  # type: ignore[method-assign]
        made.append(scheduler)
        return scheduler

    from llmsim.serving.simulate import simulate_serving
    from tests.serving.helpers import linear_price
    outcome = simulate_serving(requests, replicas=1, make_scheduler=make, kv_blocks=blocks, block_tokens=block_tokens,
                               price=linear_price, router="round-robin", context_tokens=10_000)
    return outcome, log


def test_preemption_happens_exactly_when_the_blocks_run_out() -> None:
    """4 blocks of 4 tokens; two 4-token prompts generating 10 tokens each. Both prefill (1 block each), then
    decode: 5..8 cached tokens need 2 blocks each, all 4. The iteration in which the first needs a 3rd block
    (9 tokens) preempts the second (the most recently admitted), not one iteration earlier."""
    requests = [Request(0, 0.0, 4, 10), Request(1, 0.0, 4, 10)]
    outcome, log = _recording("continuous", 4, 4, requests)
    preempted_at = [i for i, (_, count, _) in enumerate(log) if count == 1][0]
    assert [work for work, _, _ in log[:5]] == [[(0, 4), (1, 4)]] + [[(0, 1), (1, 1)]] * 4
    assert [used for _, _, used in log[:5]] == [2, 4, 4, 4, 4]
    assert all(count == 0 for _, count, _ in log[:5])
    assert preempted_at == 5 and log[5][0] == [(0, 1)] and log[5][2] == 3   # A holds 3 blocks, B none
    assert outcome.preemptions == 1
    # B came back and recomputed its prompt and the 5 tokens it had generated (4 + 5 = 9) as one prompt
    resumed = [work for work, _, _ in log if (1, 9) in work]
    assert len(resumed) == 1
    b = next(s for s in outcome.sequences if s.request.id == 1)
    assert b.preemptions == 1 and len(b.token_times) == 10


def test_nothing_is_preempted_while_the_cache_holds_every_request() -> None:
    requests = [Request(0, 0.0, 4, 10), Request(1, 0.0, 4, 10)]
    outcome, log = _recording("continuous", 8, 4, requests)   # 2 x ceil(13 / 4) = 8 blocks: both fit whole
    assert outcome.preemptions == 0 and max(used for _, _, used in log) == 8


def test_continuous_runs_decodes_first_then_whole_prompts_in_the_same_iteration() -> None:
    """Iteration-level scheduling: a prompt that arrives while another request decodes joins the next
    iteration beside it (vLLM v1: running requests first, then waiting ones within the token budget)."""
    requests = [Request(0, 0.0, 100, 50), Request(1, 0.015, 300, 5)]
    _, log = _recording("continuous", 1000, 16, requests)
    joined = next(work for work, _, _ in log if any(r == 1 for r, _ in work))
    assert joined == [(0, 1), (1, 300)]


def test_continuous_never_splits_a_prompt_and_chunked_prefill_does() -> None:
    """A 600-token prompt with a 256-token budget... continuous needs the budget to hold it (the scenario
    refuses such a budget below the context); chunked-prefill runs it in chunks of chunk_tokens."""
    requests = [Request(0, 0.0, 600, 3)]
    _, log = _recording("chunked-prefill", 1000, 16, requests, max_batched_tokens=256, chunk_tokens=200)
    assert [work for work, _, _ in log] == [[(0, 200)], [(0, 200)], [(0, 200)], [(0, 1)], [(0, 1)]]
    _, whole = _recording("continuous", 1000, 16, requests, max_batched_tokens=1024)
    assert [work for work, _, _ in whole] == [[(0, 600)], [(0, 1)], [(0, 1)]]


def test_chunked_prefill_fills_the_budget_beside_the_decodes() -> None:
    """Sarathi-Serve: decodes first, then the prompt chunk takes what is left of the token budget."""
    requests = [Request(0, 0.0, 10, 40), Request(1, 0.0, 10, 40), Request(2, 0.025, 1000, 2)]
    _, log = _recording("chunked-prefill", 1000, 16, requests, max_batched_tokens=128)
    mixed = next(work for work, _, _ in log if any(r == 2 for r, _ in work))
    assert mixed == [(0, 1), (1, 1), (2, 126)]


def test_max_num_seqs_caps_the_running_requests() -> None:
    requests = fixed_requests(10, 0.0, 10, 5)
    _, log = _recording("continuous", 1000, 16, requests, max_num_seqs=3)
    assert max(len(work) for work, _, _ in log) == 3


def test_static_batches_wait_for_the_longest_answer_and_pad() -> None:
    """FasterTransformer-style: the batch's prompts padded to the longest, every row computing until the
    longest answer is done; a request that arrives meanwhile waits for the next batch."""
    requests = [Request(0, 0.0, 10, 3), Request(1, 0.001, 30, 6), Request(2, 0.002, 5, 2)]
    outcome, log = _recording("static", 1000, 16, requests)
    # request 0 alone (it arrived first, at t = 0), then 1 and 2 together
    assert [work for work, _, _ in log[:3]] == [[(0, 10)], [(0, 1)], [(0, 1)]]
    assert log[3][0] == [(1, 30), (2, 5)]
    assert [len(work) for work, _, _ in log[4:]] == [2, 1, 1, 1, 1]   # row 2 done after 1 decode step
    second = [s for s in outcome.sequences if s.request.id in (1, 2)]
    assert {s.request.id: len(s.token_times) for s in second} == {1: 6, 2: 2}


def test_static_prices_the_padded_batch() -> None:
    kv = KVCache(1000, 16)
    scheduler = BUILTIN["static"](SchedulerSpec(kind="static"), kv)
    for r in (Request(0, 0.0, 10, 3), Request(1, 0.0, 30, 6)):
        scheduler.add(Sequence(r, 0))
    it = scheduler.schedule(0.0)
    assert it is not None and it.mix == Mix(prefill_tokens=60, prefill_square=2 * 900, rows=2)


def test_mix_of_tells_a_decode_from_a_prompt_chunk() -> None:
    a, b, c = Sequence(Request(0, 0, 100, 5), 0), Sequence(Request(1, 0, 50, 5), 0), Sequence(Request(2, 0, 80, 5), 0)
    a.computed, a.generated = 102, 3       # decoding: cached 102, attends over 103 keys
    b.computed = 20                         # a chunk of 30 after 20 cached
    c.computed, c.generated = 0, 2         # preempted: recomputes 82 tokens as one prompt
    mix = mix_of([(a, 1), (b, 30), (c, 82)])
    assert mix == Mix(prefill_tokens=112, prefill_pairs=30 * 20, prefill_square=30 * 30 + 82 * 82, prefix_tokens=20,
                      decode_seqs=1, decode_keys=103, rows=3, longest_chunk=82, longest_prefix=0)
    assert linear_seconds(mix) > 0


def test_a_plugin_policy_needs_only_schedule() -> None:
    """The base class holds the queue, the running set, the cache and preemption: a shortest-prompt-first
    policy is a few lines."""

    class ShortestFirst(ContinuousScheduler):
        kind = "shortest-first"

        def schedule(self, now: float) -> Iteration | None:
            self.waiting = type(self.waiting)(sorted(self.waiting, key=lambda s: s.request.input_tokens))
            return super().schedule(now)

    requests = [Request(0, 0.0, 10, 30), Request(1, 0.001, 500, 2), Request(2, 0.002, 20, 2)]
    spec = SchedulerSpec(kind="continuous", max_num_seqs=2)
    from llmsim.serving.simulate import simulate_serving
    from tests.serving.helpers import linear_price
    outcome = simulate_serving(requests, replicas=1, make_scheduler=lambda kv: ShortestFirst(spec, kv), kv_blocks=1000,
                               block_tokens=16, price=linear_price, router="round-robin", context_tokens=10_000)
    order = sorted(outcome.sequences, key=lambda s: s.token_times[0])
    assert [s.request.id for s in order] == [0, 2, 1]
    fcfs = run(requests, max_num_seqs=2)
    assert [s.request.id for s in sorted(fcfs.sequences, key=lambda s: s.token_times[0])] == [0, 1, 2]
