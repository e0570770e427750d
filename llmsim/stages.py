"""How many Transformer layers each pipeline stage holds: Megatron-LM's split rules, as pure functions.

A strategy states the split in one of three ways (docs/scenario.md), mirroring Megatron-LM:
* `stage_layers: [5, 6, ..., 6, 5]`: the count of every stage, as Megatron-LM's
  `--pipeline-model-parallel-layout` states it (megatron/core/transformer/pipeline_parallel_layer_layout.py).
  The first and last stage may hold no layer (the embedding alone, the LM head and loss alone); a middle
  stage holds at least one.
* `first_stage_layers` / `last_stage_layers`: Megatron-LM's `--decoder-first-pipeline-num-layers` /
  `--decoder-last-pipeline-num-layers` (TransformerConfig.num_layers_in_first/last_pipeline_stage). Each
  is at least 1; the remaining layers are split evenly over the other stages, and must divide evenly
  (transformer_config.py `__post_init__`, "Uneven PP"; transformer_block.get_num_layers_to_build).
* `embedding_as_layer` / `loss_as_layer`: Megatron-LM's `--account-for-embedding-in-pipeline-split` /
  `--account-for-loss-in-pipeline-split`: the embedding (the loss) counts as one more layer, the
  L (+1) (+1) layers split evenly over the stages (they must divide), and the first (last) stage builds
  one Transformer layer fewer (it may build none). Not with first/last counts or an explicit list
  (Megatron-LM rejects those combinations too).
With the interleaved schedule a stage runs `virtual_stages` model chunks of equal size, so every
stage's count is a multiple of it (Megatron-LM's rule); the embedding/loss accounting, which makes the
first (last) chunk one layer shorter than the stage's others, is not modeled with interleaving.

With none of the keys, `default_split` applies: layers / pp on every stage when it divides; otherwise
the L mod pp extra layers go to the middle stages, the last middle stage first (under 1F1B a later stage
keeps fewer micro-batches in flight, Narayanan et al. 2021 Sec. 2.2), then to the first stage (its
embedding lookup costs little next to the LM head and loss on the last). 70 layers on 12 stages are
5, 6 x 10, 5; 126 on 16 are 7, 8 x 14, 7.

Nothing here imports the rest of llmsim but llmsim.divisors: the scenario's validation (llmsim.config), the cost model,
the planner and the distributed backend all read the split from here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from llmsim.divisors import divisors, listed

# The keys a strategy states a split with, in the order they are checked.
SPLIT_KEYS = ("stage_layers", "first_stage_layers", "last_stage_layers", "embedding_as_layer", "loss_as_layer")


class SplitError(ValueError):
    """A split that cannot be built: `key` is the strategy key to change, `message` says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")




def _end_counts(layers: int, other: int, middle_stages: int) -> range:
    """Counts c >= 1 for one end stage, the other end holding `other`, that leave the middle stages an even
    split of at least one layer each (Megatron-LM's rule): an arithmetic progression, never enumerated."""
    rest = layers - other
    if middle_stages == 0:
        return range(rest, rest + 1) if rest >= 1 else range(0)
    stop = rest - middle_stages            # the largest c leaves exactly one layer per middle stage
    start = stop % middle_stages or middle_stages
    return range(start, stop + 1, middle_stages) if stop >= 1 else range(0)


# A pure function of three integers that every stage-level cost (Plan.layers_per_stage) asks for again and
# again: cached.
@functools.lru_cache(maxsize=4096)
def default_split(layers: int, pp: int, virtual_stages: int = 1) -> tuple[int, ...]:
    """The layers of each of `pp` stages when the strategy states no split (module docstring).

    With `virtual_stages` v > 1 (interleaved) the split is made in units of v layers, so each stage runs v
    equal chunks. Raises SplitError when there are fewer layers (units) than stages.
    """
    v = virtual_stages
    if layers % v:
        raise SplitError("virtual_stages", f"{v} does not divide layers={layers}: each stage runs {v} model "
                                           f"chunks of equal size (allowed: {listed(divisors(layers))})")
    units = layers // v
    if units < pp:
        what = "pp" if v == 1 else "pp*virtual_stages"
        raise SplitError("pp", f"{what}={pp * v} is more than layers={layers}: every stage needs a layer "
                               f"(allowed pp: 1 to {units}; or state stage_layers)")
    q, r = divmod(units, pp)
    counts = [q] * pp
    order = list(range(pp - 2, 0, -1)) + [0, pp - 1]  # middle stages from the last one back, first, last
    for stage in order[:r]:
        counts[stage] += 1
    return tuple(c * v for c in counts)


def _check_chunks(key: str, counts: Sequence[int], v: int, which: Callable[[int], str]) -> None:
    for i, n in enumerate(counts):
        if n % v:
            raise SplitError(key, f"{which(i)} has {n} layers; with schedule interleaved each stage runs "
                                  f"virtual_stages={v} chunks of equal size (allowed: multiples of {v})")


def _explicit(layers: int, pp: int, v: int, counts: Sequence[int]) -> tuple[int, ...]:
    key = "stage_layers"
    if len(counts) != pp:
        raise SplitError(key, f"{len(counts)} counts for pp={pp} (one per pipeline stage)")
    if sum(counts) != layers:
        raise SplitError(key, f"the counts add up to {sum(counts)}, not layers={layers}")
    for i, n in enumerate(counts):
        if n < 0:
            raise SplitError(key, f"stage {i} has {n} layers (allowed: 0 or more)")
        if 0 < i < pp - 1 and n == 0:
            raise SplitError(key, f"stage {i} is a middle stage with 0 layers (allowed: 1 or more; only the "
                                  f"first and the last stage may hold none: the embedding, or the LM head "
                                  f"and loss, alone)")
    _check_chunks(key, counts, v, lambda i: f"stage {i}")
    return tuple(counts)


def _first_last(layers: int, pp: int, v: int, first: int | None, last: int | None) -> tuple[int, ...]:
    key = "first_stage_layers" if first is not None else "last_stage_layers"
    if pp == 1:
        raise SplitError(key, "needs pp > 1 (one stage holds every layer)")
    for name, n in (("first_stage_layers", first), ("last_stage_layers", last)):
        if n is not None and n < 1:
            raise SplitError(name, f"{n} (allowed: 1 or more, as Megatron-LM requires)")
    middle_stages = pp - (first is not None) - (last is not None)

    def middle(f: int | None, lst: int | None) -> int | None:
        """Layers on each other stage, or None when they do not split evenly (Megatron-LM's rule)."""
        rest = layers - (f or 0) - (lst or 0)
        if middle_stages == 0:
            return 0 if rest == 0 else None
        return rest // middle_stages if rest >= middle_stages and rest % middle_stages == 0 else None

    if middle(first, last) is None:
        rest = layers - (first or 0) - (last or 0)
        if key == "first_stage_layers":
            allowed = _end_counts(layers, last or 0, middle_stages)
            given, fixed = first, f" with last_stage_layers={last}" if last is not None else ""
        else:
            allowed = _end_counts(layers, 0, middle_stages)
            given, fixed = last, ""
        if middle_stages == 0:
            problem = f"the two stages hold {layers - rest} layers, not layers={layers}"
        else:
            problem = (f"leaves {rest} layer{'' if rest == 1 else 's'} for the other {middle_stages} stage(s), "
                       f"which must split them evenly with at least one each (Megatron-LM's rule)")
        allowed_text = f"allowed {key}{fixed}: {listed(allowed)}" if allowed else \
            f"no {key} works{fixed} on {layers} layers and pp={pp}"
        raise SplitError(key, f"{given}: {problem} ({allowed_text})")
    mid = middle(first, last)
    assert mid is not None
    counts = [mid] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    names = ["first_stage_layers" if first is not None else "stage 0"] + ["the middle stages"] * (pp - 2) + \
        ["last_stage_layers" if last is not None else f"stage {pp - 1}"]
    _check_chunks(key, counts, v, lambda i: names[i])
    return tuple(counts)


def _accounted(layers: int, pp: int, v: int, embedding: bool, loss: bool) -> tuple[int, ...]:
    key = "embedding_as_layer" if embedding else "loss_as_layer"
    if v > 1:
        raise SplitError(key, "is not modeled with schedule interleaved: Megatron-LM then shortens only the "
                              "first (last) model chunk, and llmsim's stages run chunks of equal size (use "
                              "stage_layers, or schedule 1f1b / gpipe)")
    if pp == 1:
        return (layers,)
    total = layers + embedding + loss
    if total % pp:
        what = " + ".join(["layers"] + ["1 (embedding)"] * embedding + ["1 (loss)"] * loss)
        allowed = [d for d in divisors(total) if d > 1]
        raise SplitError(key, f"{what} = {total} is not divisible by pp={pp} (Megatron-LM splits them evenly; "
                              f"allowed pp: 1, {listed(allowed)})")
    per = total // pp
    counts = [per] * pp
    counts[0] -= embedding
    counts[-1] -= loss
    return tuple(counts)


def split_layers(layers: int, pp: int, virtual_stages: int = 1, *, stage_layers: Sequence[int] | None = None,
                 first_stage_layers: int | None = None, last_stage_layers: int | None = None,
                 embedding_as_layer: bool = False, loss_as_layer: bool = False) -> tuple[int, ...]:
    """The layers of each pipeline stage (all its chunks when interleaved), from a strategy's keys.

    Returns `pp` counts that add up to `layers`; raises SplitError naming the key and what is allowed.
    """
    v = virtual_stages
    accounted = embedding_as_layer or loss_as_layer
    first_last = first_stage_layers is not None or last_stage_layers is not None
    if stage_layers is not None:
        if first_last:
            raise SplitError("stage_layers", "give either stage_layers or first_stage_layers/last_stage_layers, "
                                             "not both")
        if accounted:
            raise SplitError("embedding_as_layer" if embedding_as_layer else "loss_as_layer",
                             "cannot be combined with stage_layers, which states every stage's layers already "
                             "(Megatron-LM rejects its layout with these options too)")
        return _explicit(layers, pp, v, stage_layers)
    if first_last:
        if accounted:
            raise SplitError("embedding_as_layer" if embedding_as_layer else "loss_as_layer",
                             "cannot be combined with first_stage_layers/last_stage_layers (Megatron-LM rejects "
                             "the combination: account for the embedding by choosing the first count)")
        return _first_last(layers, pp, v, first_stage_layers, last_stage_layers)
    if accounted:
        return _accounted(layers, pp, v, embedding_as_layer, loss_as_layer)
    return default_split(layers, pp, v)


def stage_layer_ranges(counts: Sequence[int], virtual_stages: int = 1) -> tuple[tuple[range, ...], ...]:
    """The 0-based layer indices each pipeline stage holds, as one range per model chunk, for the split
    `counts` (one count per stage, all its chunks) and `virtual_stages` equal chunks per stage (1 unless
    interleaved).

    Megatron-LM's layer order (transformer_layer.get_transformer_layer_offset; llmsim.distributed.parallelize
    builds its stages the same way): chunk k of every stage comes before chunk k+1, so chunk k of stage r
    holds the counts[r]/v layers after chunks 0..k-1 of every stage and chunk k of stages 0..r-1. Without
    interleaving stage r holds the counts[r] layers after those of stages 0..r-1."""
    v = max(virtual_stages, 1)
    out: list[list[range]] = [[] for _ in counts]
    start = 0
    for _ in range(v):
        for r, n in enumerate(counts):
            size = n // v
            out[r].append(range(start, start + size))
            start += size
    return tuple(tuple(rs) for rs in out)


def split_keys(counts: Sequence[int], layers: int, virtual_stages: int = 1) -> dict[str, Any]:
    """The strategy keys that state `counts` most simply: none for the default split, Megatron-LM's
    first/last counts when the other stages are alike, else the explicit list."""
    pp, v = len(counts), virtual_stages
    counts = tuple(counts)
    if counts == default_split(layers, pp, v):
        return {}
    candidates: list[dict[str, Any]] = []
    if pp >= 2:
        candidates += [{"first_stage_layers": counts[0]}, {"last_stage_layers": counts[-1]},
                       {"first_stage_layers": counts[0], "last_stage_layers": counts[-1]}]
    for keys in candidates:
        try:
            if split_layers(layers, pp, v, **keys) == counts:
                return keys
        except SplitError:
            continue
    return {"stage_layers": list(counts)}


def compact_split(counts: Sequence[int]) -> str:
    """A split for people: runs of equal counts collapsed ("7, 8 x 14, 7")."""
    parts: list[str] = []
    i = 0
    while i < len(counts):
        j = i
        while j < len(counts) and counts[j] == counts[i]:
            j += 1
        parts.append(f"{counts[i]}" if j - i == 1 else f"{counts[i]} x {j - i}")
        i = j
    return ", ".join(parts)


def describe_split(counts: Sequence[int]) -> str:
    """The result column's form of a split: the stages' layer counts joined by commas ("5,6,6,5")."""
    return ",".join(str(n) for n in counts)
