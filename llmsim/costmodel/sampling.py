"""Choosing each generated token: the work an engine does per token after the LM head (Options.sampler).

A decode step ends with the LM head's logits for every sequence (b x vocab); the engine then picks one token
per sequence. What that costs is the engine's: a greedy argmax fused into the head is nearly free, a top-p
sampler that sorts the whole vocabulary is not. Options.sampler names the sampler; "none" (the default)
prices nothing after the head, as before.

`sort-top-p` is FasterTransformer v5's top-p sampling (NVIDIA/FasterTransformer a44c381, the version of the
GPT performance table in docs/gpt_guide.md, which states top_p = 0.9 and top_k = 0 for its GPT rows):

* ParallelGpt.cc (step loop): the LM head GEMM writes the logits in fp32 (`CUDA_R_32F` output, `logits_buf_`
  is float); with tp > 1 each rank computes its vocab shard, the shards are all-gathered over the
  tensor-parallel group (`ftNcclAllGather` of b x vocab_padded/tp fp32 per rank), the host waits
  (`cudaStreamSynchronize`) and `invokeTransposeAxis01` reorders the gathered (tp, b, vocab/tp) logits to
  (b, vocab) (one read and one write); then every rank runs the same sampling on the whole vocabulary.
* DynamicDecodeLayer -> TopPSamplingLayer::runSampling (top_k = 0, top_p > 0), per sequence and padded
  vocabulary entry (kernels/sampling_topp_kernels.cu):
    invokeTopPInitialize          writes the int32 ids to sort                                  4 B
    invokeAddBiasSoftMax          three passes over the fp32 logits (bias add + max, exp + sum,
                                  normalise), each a read and a write                         24 B
    beam_topK_kernel_for_topP     reads the probabilities once (top-1: skip the sort when it
                                  alone holds top_p)                                            4 B
    cub::DeviceSegmentedRadixSort::SortPairsDescending over (fp32 probability, int32 id), one
                                  segment per sequence (`ENABLE_SINGLE_PASS_TOP_P = 0`: the
                                  radix sort always runs): ceil(32 / 6) = 6 digit passes (CUB's
                                  SEGMENTED_RADIX_BITS = 6 for keys wider than a byte,
                                  cub/device/dispatch/dispatch_radix_sort.cuh); each pass reads
                                  the keys for the digit histogram, then reads keys and values
                                  and scatters them (4 + 8 + 8 B)                          6 x 20 B
    top_p_sampling_opt            a block-wide scan of the sorted probabilities that stops at
                                  the sampled cumulative mass: a prefix of the vocabulary,
                                  not priced
  and the fp32 logits write costs 2 B more per entry than the workload-dtype output the profile traced.
  The padded vocabulary is ceil(vocab / tp) rounded up to a multiple of 8 (fp16), times tp (ParallelGpt's
  constructor, `vocab_size_padded_`).

Priced as memory-bound passes at the device's streaming bandwidth (Rates.memory_time), plus the device's
fixed time per kernel (Efficiency.kernel_latency_s) for each kernel launched; the all-gather goes through the
communication model. Both are lower bounds: the segmented sort and the softmax run one thread block per
sequence, which a batch smaller than the SM count does not spread over the whole GPU, and the top-1 early
exit (a sequence whose most likely token holds top_p skips the sort) is not taken (it depends on the
weights). Pure functions of numbers: no torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from llmsim.costmodel.plan import DTYPE_BYTES, Options, Plan

if TYPE_CHECKING:
    from llmsim.config import Workload
    from llmsim.costmodel.compute import Rates

# FasterTransformer v5 sorts fp32 probabilities with int32 token ids as values.
LOGIT_BYTES = 4
ID_BYTES = 4
# CUB's segmented radix sort digit width for keys wider than one byte (SEGMENTED_RADIX_BITS, every Policy
# from SM50 on in cub/device/dispatch/dispatch_radix_sort.cuh) and the passes it takes over 32-bit keys.
SEGMENTED_RADIX_BITS = 6
SORT_KEY_BITS = 8 * LOGIT_BYTES
SORT_PASSES = math.ceil(SORT_KEY_BITS / SEGMENTED_RADIX_BITS)  # 6
# One pass: the digit histogram reads the keys, the downsweep reads keys and values and writes both.
SORT_BYTES_PER_PASS = LOGIT_BYTES + 2 * (LOGIT_BYTES + ID_BYTES)  # 20
# invokeAddBiasSoftMax: three loops over the row, each reading and writing the fp32 logit.
SOFTMAX_PASSES = 3
# fp16 vocab shards are padded to a multiple of 8 entries (ParallelGpt constructor).
VOCAB_PAD = 8
# Kernels per sampled token: topPInitialize, addBiasSoftMax, beam_topK_kernel_for_topP, one segmented-sort
# kernel per digit pass, top_p_sampling_opt; with tp > 1 also invokeTransposeAxis01 of the gathered logits.
SORT_TOP_P_KERNELS = 3 + SORT_PASSES + 1
GATHER_KERNELS = 1


def padded_vocab(vocab: int, tp: int) -> int:
    """Vocabulary entries the sampler reads per sequence: ceil(vocab / tp) rounded up to VOCAB_PAD, times tp
    (FasterTransformer's `vocab_size_padded_`). GPT's 51,200 stays 51,200 at every tp of 1-8."""
    local = math.ceil(vocab / tp)
    return VOCAB_PAD * math.ceil(local / VOCAB_PAD) * tp


def sort_top_p_bytes_per_entry(workload_elem: int) -> float:
    """Bytes `sort-top-p` moves per (sequence, padded vocabulary entry) and generated token on one rank, beyond
    what the LM head's traced output already counts (module docstring): 2 + 4 + 24 + 4 + 6 x 20 = 154 B for a
    16-bit workload."""
    fp32_logits_extra = max(LOGIT_BYTES - workload_elem, 0)
    return (fp32_logits_extra + ID_BYTES + SOFTMAX_PASSES * 2 * LOGIT_BYTES + LOGIT_BYTES
            + SORT_PASSES * SORT_BYTES_PER_PASS)


def sampling_bytes(workload: "Workload", plan: Plan, sequences: int, options: Options) -> float:
    """Bytes one rank moves to choose one token for each of `sequences` (0 for sampler "none"); with tp > 1
    also the transpose of the gathered fp32 logits (a read and a write)."""
    if options.sampler == "none" or sequences <= 0:
        return 0.0
    vocab = padded_vocab(workload.model.vocab, plan.tp)
    per_entry = sort_top_p_bytes_per_entry(DTYPE_BYTES[workload.dtype])
    if plan.tp > 1:
        per_entry += 2 * LOGIT_BYTES
    return sequences * vocab * per_entry


def sampling_kernels(plan: Plan, options: Options) -> int:
    """Kernels one rank launches per generated token for the sampler (0 for "none")."""
    if options.sampler == "none":
        return 0
    return SORT_TOP_P_KERNELS + (GATHER_KERNELS if plan.tp > 1 else 0)


def sampling_time(workload: "Workload", plan: Plan, rates: "Rates", sequences: int, options: Options) -> float:
    """Seconds one rank spends choosing one token for each of `sequences`: the sampler's bytes at the
    device's streaming bandwidth plus its kernels at the device's fixed time per kernel."""
    if options.sampler == "none" or sequences <= 0:
        return 0.0
    return (rates.memory_time(sampling_bytes(workload, plan, sequences, options))
            + rates.efficiency.kernel_latency_s * sampling_kernels(plan, options))


def logits_gather_bytes(workload: "Workload", plan: Plan, sequences: int, options: Options) -> float:
    """Size of the all-gather of the fp32 logits over the tensor-parallel group before sampling (the whole
    gathered buffer, b x vocab_padded x 4 B; 0 without tensor parallelism or for sampler "none")."""
    if options.sampler == "none" or plan.tp <= 1 or sequences <= 0:
        return 0.0
    return sequences * padded_vocab(workload.model.vocab, plan.tp) * LOGIT_BYTES
