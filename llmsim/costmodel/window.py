"""Sliding-window attention layers (ModelSpec.sliding_window): the query-key pairs and the cached tokens they keep.

A windowed layer's query at position i attends to keys max(0, i - W + 1) .. i: min(i + 1, W) of them (Hugging Face's
sliding_window mask, `sliding_window` = W tokens including the query's own: transformers' sliding-window mask
keeps kv_idx > q_idx - sliding_window). So its attention FLOPs and the K/V bytes it reads per query are capped at
W, and a serving engine keeps only the last W tokens' K and V for it. vLLM V1's hybrid KV cache manager frees
every block that has left the window (vllm/v1/core/single_type_kv_cache_manager.py at 002f3491,
`SlidingWindowManager.remove_skipped_blocks`: blocks wholly before token num_computed_tokens - W + 1 go back to
the pool), so a sequence of n tokens holds ceil(n / B) - floor((n - W + 1) / B) blocks of B tokens for such a
layer: at most cdiv(W - 1, B) + 1 (`window_blocks`), 9 blocks of 16 = 144 token slots for W = 128.

Pure integer arithmetic; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


def window_pairs(queries: int, prefix: int, window: int | None) -> int:
    """Query-key pairs of a causal chunk of `queries` tokens after `prefix` cached ones: sum over positions
    i = prefix .. prefix + queries - 1 of min(i + 1, window) (window None: i + 1, full causal attention)."""
    if queries <= 0:
        return 0
    lo, hi = prefix + 1, prefix + queries          # the keys of the chunk's first and last query, uncapped
    if window is None or hi <= window:
        return (lo + hi) * queries // 2
    if lo >= window:
        return queries * window
    below = window - lo                             # queries lo .. window - 1 below the cap
    return (lo + window - 1) * below // 2 + (queries - below) * window


def causal_window_share(seq_len: int, window: int | None) -> float:
    """A windowed layer's pairs over a full causal layer's for a prompt of `seq_len` tokens from position 0:
    window_pairs(S, 0, W) / (S (S + 1) / 2); 1.0 when S <= W (or no window). The trace multiplies a windowed
    layer's counted attention FLOPs (torch counts the causal kernel's whole S x S matrix) by it
    (workload.trace), so the windowed layer's attention is capped at W keys per query."""
    if window is None or seq_len <= window:
        return 1.0
    return window_pairs(seq_len, 0, window) / window_pairs(seq_len, 0, None)


def window_blocks(window: int, block_tokens: int) -> int:
    """Blocks of `block_tokens` tokens a windowed layer's cache holds per sequence at most in vLLM V1:
    cdiv(W - 1, B) + 1 (SlidingWindowManager keeps the blocks touching tokens n - W + 1 .. n - 1 and the one
    the next token is written to; module docstring)."""
    return -(-(window - 1) // block_tokens) + 1


def window_kept_tokens(tokens: int, window: int | None) -> int:
    """Tokens a windowed layer's K/V holds for a sequence of `tokens` tokens: min(tokens, W)."""
    return tokens if window is None else min(tokens, window)


@dataclass(frozen=True)
class KVLayout:
    """How a replica's paged KV cache is shared by full and windowed layers, as vLLM V1's hybrid KV cache
    manager lays it out (vllm/v1/core/kv_cache_utils.py, `_get_kv_cache_config_uniform_page_size`, as stored at
    bbf906a8 with the comment of 2025-06-02): the layers of each type are cut into groups of g = the fewest
    layers of one type (padding the last group of a type), every group's page holds B tokens of g layers, all
    groups draw pages from one pool of available // (page bytes x g) blocks (`get_num_blocks`). A sequence of n
    tokens holds cdiv(n, B) pages in each full group and min(cdiv(n, B), window_blocks) in each windowed group
    (`blocks_for`; SlidingWindowManager frees the rest). With no windowed layer (window None): one group of
    every layer, cdiv(n, B) blocks, PagedAttention's cache as before. gpt-oss-20b: 12 full and 12 sliding
    layers, g = 12, one group each."""

    window: int | None = None
    full_groups: int = 1
    window_groups: int = 0
    group_layers: int = 0          # g; 0 = every layer (no windowed layer)

    @staticmethod
    def of(layers: int, windowed: int, window: int | None) -> "KVLayout":
        """The layout of a model of `layers` layers, `windowed` of them sliding-window layers of `window`."""
        if window is None or windowed == 0:
            return KVLayout()
        full = layers - windowed
        g = min(full, windowed) if full else windowed
        return KVLayout(window, -(-full // g), -(-windowed // g), g)

    @property
    def groups(self) -> int:
        return self.full_groups + self.window_groups

    def blocks_for(self, tokens: int, block_tokens: int) -> int:
        """Pool blocks a sequence of `tokens` cached tokens holds (each block: B tokens of one group)."""
        need = -(-tokens // block_tokens)
        if self.window is None:
            return need * self.full_groups
        return self.full_groups * need + self.window_groups * min(need, window_blocks(self.window, block_tokens))

    def tokens_in(self, blocks: int, block_tokens: int) -> int:
        """The longest sequence `blocks` pool blocks hold (blocks x B without windowed layers)."""
        if self.window is None:
            return blocks // self.full_groups * block_tokens
        if self.full_groups == 0:   # every layer windowed: any length once the window's blocks fit
            return blocks * block_tokens if blocks >= self.blocks_for(self.window + block_tokens, block_tokens) else 0
        spare = blocks - self.window_groups * window_blocks(self.window, block_tokens)
        return max(spare // self.full_groups, 0) * block_tokens
