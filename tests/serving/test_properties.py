"""Invariants of every scheduler on random request lists and small KV caches (hypothesis)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llmsim.serving.kvcache import KVCache
from llmsim.serving.requests import Request
from llmsim.serving.schedulers import BUILTIN, Iteration
from llmsim.serving.simulate import simulate_serving
from llmsim.serving.spec import SchedulerSpec
from tests.serving.helpers import linear_price

REQUESTS = st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(requests=REQUESTS, kind=st.sampled_from(sorted(BUILTIN)), blocks=st.integers(7, 40),
       block=st.sampled_from([1, 4, 16]), seqs=st.integers(1, 8), budget=st.integers(100, 300),
       chunk=st.integers(1, 100))
# found by CI: one request filling all 8 blocks; V0's one-free-block decode rule made it preempt itself forever
@example(requests=[(0.0, 1, 30)], kind="prefill-first", blocks=8, block=4, seqs=1, budget=100, chunk=1)
def test_every_request_finishes_with_its_tokens_and_the_cache_never_overflows(requests, kind, blocks, block, seqs,
                                                                               budget, chunk) -> None:
    reqs = [Request(i, t, n_in, n_out) for i, (t, n_in, n_out) in enumerate(sorted(requests))]
    spec = SchedulerSpec(kind=kind, max_num_seqs=seqs, max_batched_tokens=budget,
                         chunk_tokens=chunk if kind == "chunked-prefill" else None)
    seen: list[tuple[int, int]] = []   # (blocks in use, tokens scheduled) per iteration

    def make(kv: KVCache):
        scheduler = BUILTIN[kind](spec, kv)
        original = scheduler.schedule

        def schedule(now: float) -> Iteration | None:
            it = original(now)
            if it is not None:
                seen.append((kv.used, sum(n for _, n in it.work)))
            return it

        scheduler.schedule = schedule  # type: ignore[method-assign]
        return scheduler

    outcome = simulate_serving(reqs, replicas=1, make_scheduler=make, kv_blocks=blocks, block_tokens=block,
                               price=linear_price, router="round-robin", context_tokens=100)
    assert len(outcome.sequences) + len(outcome.rejected) == len(reqs)
    for seq in outcome.sequences:
        r = seq.request
        assert len(seq.token_times) == r.output_tokens
        assert list(seq.token_times) == sorted(seq.token_times) and seq.token_times[0] > r.arrival_s
        assert seq.blocks == 0   # freed at the end
    assert all(used <= blocks for used, _ in seen)
    # tgi's prefill budget is max_batched_tokens rounded up to the block (TGI's queue.rs)
    limit = -(-budget // block) * block if kind == "tgi" else budget
    assert all(0 < tokens <= limit for _, tokens in seen) or kind == "static"
    if kind in ("static", "tgi"):   # whole lengths reserved up front: never preempted
        assert outcome.preemptions == 0
