"""The paged KV cache of one replica and the sequences that hold it.

PagedAttention (Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention", SOSP '23): the cache is cut into blocks of `block_tokens` tokens; a sequence holds
ceil(cached tokens / block_tokens) of them and gets one more when its next token crosses a block edge.
vLLM's `KVCacheManager.allocate_slots` (vllm/v1/core/kv_cache_manager.py) refuses an allocation that needs
more blocks than are free, and the scheduler then preempts; a preempted sequence frees all its blocks and
recomputes its tokens later (vLLM's default, preemption by recompute). No prefix caching is modelled:
every request's prompt is its own.
"""

from __future__ import annotations

from array import array

from llmsim.costmodel.window import KVLayout
from llmsim.serving.requests import Request


class Sequence:
    """A request inside a replica: what is cached, what was generated, when each token came out.

    `computed`: tokens whose K and V are in the cache; `generated`: output tokens emitted so far. The
    tokens known are the prompt and the generated ones (`tokens`); an iteration computes some of the rest
    and, when it reaches them all, samples the next token (vLLM v1's num_computed_tokens / num_tokens).
    """

    __slots__ = ("request", "replica", "computed", "generated", "blocks", "scheduled_s", "token_times",
                 "preemptions", "finished")

    def __init__(self, request: Request, replica: int) -> None:
        self.request = request
        self.replica = replica
        self.computed = 0
        self.generated = 0
        self.blocks = 0
        self.scheduled_s: float | None = None   # first time a scheduler put it in an iteration
        self.token_times = array("d")           # when each output token came out, seconds
        self.preemptions = 0
        self.finished = False

    @property
    def tokens(self) -> int:
        """Tokens known: the prompt and the output generated so far."""
        return self.request.input_tokens + self.generated

    @property
    def pending(self) -> int:
        """Tokens to compute before the next one can be sampled."""
        return self.request.input_tokens + self.generated - self.computed

    @property
    def peak_tokens(self) -> int:
        """The most tokens it ever caches: the prompt and every output token but the last (never fed back)."""
        return self.request.input_tokens + self.request.output_tokens - 1


class KVCache:
    """`blocks` blocks of `block_tokens` tokens; tracks the peak in use. `layout`: how full and sliding-window
    layers share the blocks (costmodel.window.KVLayout; default every layer full, a block = B tokens of every
    layer)."""

    def __init__(self, blocks: int, block_tokens: int, layout: KVLayout = KVLayout()) -> None:
        if blocks < 0 or block_tokens < 1:
            raise ValueError(f"a KV cache needs blocks >= 0 and block_tokens >= 1 (got {blocks}, {block_tokens})")
        self.blocks = blocks
        self.block_tokens = block_tokens
        self.layout = layout
        self.free = blocks
        self.peak_used = 0

    @property
    def used(self) -> int:
        return self.blocks - self.free

    @property
    def window(self) -> int | None:
        """The sliding window of the model's windowed layers (None: every layer full)."""
        return self.layout.window

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens (of every group: KVLayout.blocks_for)."""
        if self.layout.window is None and self.layout.full_groups == 1:
            return -(-tokens // self.block_tokens)
        return self.layout.blocks_for(tokens, self.block_tokens)

    def grow(self, seq: Sequence, tokens: int) -> bool:
        """Give `seq` the blocks to hold `tokens` tokens; False (nothing changes) when too few are free."""
        need = self.blocks_for(tokens) - seq.blocks
        if need <= 0:
            return True
        if need > self.free:
            return False
        self.free -= need
        seq.blocks += need
        used = self.blocks - self.free
        if used > self.peak_used:
            self.peak_used = used
        return True

    def release(self, seq: Sequence) -> None:
        """Free every block of `seq`."""
        self.free += seq.blocks
        seq.blocks = 0
