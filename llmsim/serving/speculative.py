"""Speculative decoding in the serving simulation: how many draft tokens each decoding sequence verifies, how many
it keeps, and the counters of the run's accept length.

The mechanism (serving.speculative, llmsim.serving.spec.Speculative; Leviathan et al. 2023; vLLM V1's
vllm/v1/core/sched/scheduler.py and vllm/v1/sample/rejection_sampler.py; SGLang's EAGLE worker,
python/sglang/srt/speculative/eagle_worker.py), per decode iteration and per decoding sequence:

1. the draft proposes k tokens one after the other (priced by costmodel.iteration.draft_times: k passes of the draft
   head or the draft model; ngram's prompt lookup runs on the host, no device work);
2. the target runs the sequence's last token and its k drafts as one (k + 1)-token query over its cache
   (costmodel.iteration.Mix.verify_tokens): the scheduler counts k + 1 tokens in the iteration's budget (vLLM's
   `num_tokens_with_spec - num_computed_tokens`, trimmed to the budget left, the spec tokens cut first) and gives it KV
   slots for them and, for a draft that writes K and V ahead, k more (`num_lookahead_tokens`);
3. the rejection sampler keeps the drafts up to the first rejected one and adds one token of the target's own (the
   bonus token, or the correction at the first rejection): a in [0, m] accepted of the m drafts verified, a + 1
   tokens emitted at the iteration's end, in one streamed chunk. Draft i is accepted with probability p_i given
   draft i - 1 was (the user's `acceptance`), drawn per sequence per step from a seeded stream
   (`Speculator.accept`). The cache keeps the K and V of the last token and the accepted drafts (vLLM:
   num_computed_tokens -= rejected), so the sequence stays at "every known token but the last computed".
A request emits no more than its output length: the tokens past it are dropped (vLLM's stop check per token).
"""

from __future__ import annotations

import random

from llmsim.serving.spec import Speculative


class Speculator:
    """One replica's speculative decoding: k, the acceptance probabilities, a seeded random stream and the counters
    of verify steps and tokens emitted (accept length = emitted / steps, SGLang's "accept length")."""

    def __init__(self, spec: Speculative, seed: int, replica: int) -> None:
        self.k = spec.num_draft_tokens
        self.lookahead = spec.lookahead
        self.probabilities = spec.probabilities
        self.rng = random.Random(f"llmsim-speculative-{seed}-{replica}")
        self.steps = 0            # verify steps (a decoding sequence with at least one draft in an iteration)
        self.emitted = 0          # tokens those steps emitted

    def accept(self, drafts: int) -> int:
        """Drafts accepted of the first `drafts` positions verified: the unbroken run of successes from the first,
        position i accepted with probability p_i."""
        accepted = 0
        random_ = self.rng.random
        for p in self.probabilities[:drafts]:
            if p < 1.0 and random_() >= p:
                break
            accepted += 1
        return accepted

    def record(self, emitted: int) -> None:
        self.steps += 1
        self.emitted += emitted


def accept_length(speculators: list[Speculator]) -> float | None:
    """Mean tokens emitted per verify step over the replicas (None when nothing was verified)."""
    steps = sum(s.steps for s in speculators)
    return sum(s.emitted for s in speculators) / steps if steps else None
