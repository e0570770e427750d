"""Where a serving row's decode time goes: per-step GEMM / attention / other / rest / collectives (analysis aid).

Runs the serving rows of a dev table through validate.py's simulation with costmodel.iteration.iteration_times
wrapped, keeps every decode-only iteration (no prompt tokens), and prints, per row: the error, the mean decode batch,
the mean KV length a decoding sequence attends over, the KV bytes vs the GEMM weight bytes read per step (one rank),
and the decode time's split (seconds summed over the decode iterations, the components of
costmodel.iteration._stage_work recomputed with its own formulas), with whether the GEMMs and the attention are
priced compute- or memory-bound. `rest` is the step's compute not in the three layer parts: the LM head, the
embedding and a mixture of experts' routed experts (large for MoE rows). Usage: scripts/decode_breakdown.py --table trtllm-blog [--rows TB01,TB02]
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate as v  # noqa: E402

import llmsim.modeled_serving as ms  # noqa: E402
from llmsim.costmodel import iteration as it  # noqa: E402
from llmsim.costmodel.step import StepTimes  # noqa: E402
from llmsim.costmodel.compute import (KERNELS_PER_LAYER_FORWARD, decode_kv_reads,  # noqa: E402
                                      layer_matmul_time)

RECORD: list[tuple[it.IterationModel, it.Mix, StepTimes]] = []   # every iteration the simulation prices
_orig = ms.iteration_times


def _rec(model: it.IterationModel, mix: it.Mix, ranks: tuple[it.Mix, ...] = ()) -> StepTimes:
    """costmodel.iteration.iteration_times, each call recorded in RECORD."""
    t = _orig(model, mix, ranks)
    RECORD.append((model, mix, t))
    return t


ms.iteration_times = _rec


def components(model: it.IterationModel, mix: it.Mix) -> dict[str, float]:
    """One decode-only iteration's per-rank seconds by part (pp = 1 assumed), _stage_work's formulas: gemm (and
    gemm_c, its FLOP-bound time), att (att_c FLOP-bound, att_m the cache read), other (elementwise bytes and the
    fixed time per kernel), summed over the layers; kv_bytes and w_bytes the cache and GEMM weight bytes read."""
    c, plan, w, rates = model.costs, model.plan, model.workload, model.rates
    spec = w.model
    tp, L = plan.tp, c.layers
    div = tp * L
    dec = mix.decode_seqs
    rows = max(1, math.ceil(dec))
    gemm = rates.gemm if rates.gemm is not None else rates
    mm_flops = dec * c.mm_flops_decode / div + dec * model.replicated_kv_flops_per_token
    mm_bytes = dec * c.mm_bytes_decode / div
    wave = model.wave("layers", rows)
    mm = layer_matmul_time(w, plan, rates, mm_flops, mm_bytes, model.layer_weight_bytes, wave)
    mm_compute = mm_flops / (gemm.sustained_flops * gemm.efficiency.matmul * wave)
    att_rate = rates.sustained_flops * model.attention_fraction * model.attention_rate_scale
    kv_read = c.kv_bytes_per_token / L / spec.kv_split(tp)
    reads = decode_kv_reads(model.options.attention, spec.heads, spec.kv_heads or spec.heads, tp, spec.mla is not None)
    decode_pair = (c.attention_flops_per_pair if c.decode_attention_flops_per_pair is None
                   else c.decode_attention_flops_per_pair) / div
    att_c = mix.decode_keys * decode_pair / att_rate
    kv_bytes = mix.decode_keys * kv_read * reads
    att_m = rates.decode_kv_time(kv_bytes, c.kv_cache_dtype == "float8")
    other = rates.memory_time(dec * c.other_bytes_decode / div) + rates.efficiency.kernel_latency_s * (
        KERNELS_PER_LAYER_FORWARD + mix.layer_kernels + c.adapter_layer_kernels)
    return {"gemm": mm * L, "gemm_c": mm_compute * L, "att": max(att_c, att_m) * L, "att_c": att_c * L,
            "att_m": att_m * L, "other": other * L, "kv_bytes": kv_bytes * L,
            "w_bytes": model.layer_weight_bytes * L}


def main() -> None:
    """Print one line per serving row of --table (and --rows): the decode iterations' means and time split."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", required=True)
    ap.add_argument("--rows", default="")
    a = ap.parse_args()
    table = v.TABLES[a.table]
    want = set(filter(None, a.rows.split(",")))
    cases = [c for c in table.cases(table.default) if c.row is not None and (not want or c.row_id in want)]
    print(f"{'row':6} {'err':>7} {'batch':>6} {'kvlen':>6} {'KV/W':>6} {'dec%':>5} {'gemm%':>6} {'att%':>5} "
          f"{'oth%':>5} {'rest%':>5} {'comm%':>5} {'gemm':>4} {'att':>4} {'Wt GB':>6} {'KV GB':>6} {'ms/step':>7} "
          f"{'metric'}")
    seen: dict[str, list[tuple[it.IterationModel, it.Mix, StepTimes]]] = {}
    for case in cases:
        key = repr(v.serving_scenario(case.row))
        RECORD.clear()
        out = v.run_serving_case(case)
        if key not in seen:
            seen[key] = list(RECORD)
        calls = seen[key]
        err = out.error
        tot = defaultdict(float)
        n = 0
        all_s = sum(t.step for _, _, t in calls) or 1.0
        for model, mix, t in calls:
            if mix.prefill_tokens or not mix.decode_seqs:
                continue
            n += 1
            comp = components(model, mix)
            for k, x in comp.items():
                tot[k] += x
            tot["seqs"] += mix.decode_seqs
            tot["keys"] += mix.decode_keys
            tot["comm"] += t.comm
            tot["step"] += t.step
            tot["rest"] += t.compute - comp["gemm"] - comp["att"] - comp["other"]
        if not n:
            print(f"{case.row_id:6} no decode-only iteration")
            continue
        s = tot["step"]
        pct = lambda k: f"{100 * tot[k] / s:5.0f}"  # noqa: E731
        print(f"{case.row_id:6} {(err or 0):+7.1%} {tot['seqs'] / n:6.0f} {tot['keys'] / tot['seqs']:6.0f} "
              f"{tot['kv_bytes'] / tot['w_bytes']:6.2f} {100 * s / all_s:5.0f} {pct('gemm'):>6} {pct('att')} "
              f"{pct('other')} {pct('rest')} {pct('comm')} "
              f"{'C' if tot['gemm_c'] >= 0.999 * tot['gemm'] else 'M':>4} {'C' if tot['att_c'] > tot['att_m'] else 'M':>4} "
              f"{tot['w_bytes'] / n / 1e9:6.1f} {tot['kv_bytes'] / n / 1e9:6.1f} {1e3 * s / n:7.2f} {case.metric}")


if __name__ == "__main__":
    main()
