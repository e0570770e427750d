#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the suite's CUDA tests, then small scenarios on the cuda backend.
#  1. scenarios/gpu-check.yaml (train, decode, tiny preset): tokens/s, MFU, energy per token and NVML's energy
#     counter next to power-sampled energy.
#  2. scenarios/gpu-model-check.yaml (a Llama-3-8B shape, prefill, decode, an 8-layer training step): the cuda
#     backend's measured step beside the roofline backend's price for the GPU's catalog entry, in one run each.
#  3. scripts/gpu_decode_launches.py: one eager decode token of that shape, its GPU operations, GPU-busy and wall
#     time (why an eager decode is slower than the roofline's graph-replayed one).
#  4. scripts/gpu_train_breakdown.py: the 8-layer training step's GPU time by phase and kind of kernel (GEMMs,
#     attention, the rest by aten op), each GEMM shape's TFLOP/s and the SM clock, beside the roofline's price
#     of each kind.
# Needs a CUDA build of torch and nvidia-ml-py (pip install -e '.[cuda,test]'). Not run in CI (no GPU).
# Each part runs even when an earlier one failed; the exit status is 1 when any did. Run folders go under
# $RUNS (default /tmp/llmsim-gpu-check). PYTHON picks the interpreter (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-/tmp/llmsim-gpu-check}"
PY="${PYTHON:-python3}"
failed=0

"$PY" - <<'PY' || exit 1
import torch
from llmsim_plugins.cuda import CudaBackend
reason = CudaBackend.availability()
print("gpu-check: torch", torch.__version__, "CUDA", torch.version.cuda,
      "| cuda backend:", "available" if reason is None else f"NOT available: {reason}")
if reason:
    raise SystemExit(1)
print("gpu-check:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
PY

# the whole file: the gpu-marked tests, and the faked-GPU tests, which must hold where a real GPU is present too
"$PY" -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py || failed=1

# One run; prints its folder (the last line `llmsim run` writes), or nothing when it failed.
run() { "$PY" -m llmsim run "$1" --out "$RUNS" "${@:2}" | tail -n 1; }

check=("$(run scenarios/gpu-check.yaml --backend cuda)"
       "$(run scenarios/gpu-check.yaml --backend cuda --set workload.mode=decode --set workload.decode_tokens=32)"
       "$(run scenarios/gpu-check.yaml --backend cuda --set 'workload.model={preset: tiny}' --set workload.batch=32)")
model=("$(run scenarios/gpu-model-check.yaml)"
       "$(run scenarios/gpu-model-check.yaml --set workload.mode=decode --set workload.batch=16 \
                                             --set workload.model.seq_len=512)"
       "$(run scenarios/gpu-model-check.yaml --set workload.mode=train --set workload.model.layers=8 \
                                             --set workload.batch=2)")

"$PY" - "${check[@]}" <<'PY' || failed=1
import sys
import pandas as pd

bad = 0
for run in sys.argv[1:]:
    if not run:
        print("gpu-check: a run failed (its output is above)")
        bad = 1
        continue
    df = pd.read_csv(f"{run}/results.csv")
    for _, row in df.iterrows():
        if row["status"] != "ok":
            print(f"{run}: {row['status']}: {row['error']}")
            bad = 1
            continue
        mfu = f"{row['mfu']:.3f}" if pd.notna(row["mfu"]) else f"- ({row.get('mfu_reason')})"
        print(f"{row['mode']:7s} params={row['params']:.3g} on {row['hardware']}: "
              f"{row['tokens_per_s']:.4g} tokens/s, step {row['step_time_s'] * 1e3:.3g} ms, MFU {mfu}, "
              f"{row['joules_per_token']:.4g} J/token ({row['energy_source']}, {row.get('energy_method')}), "
              f"peak memory {row['peak_memory_bytes_per_device'] / 1e9:.3g} GB")
        counter, sampled = row.get("energy_counter_j_per_step"), row.get("energy_sampled_j_per_step")
        if pd.notna(counter) and pd.notna(sampled):
            print(f"        energy per step: NVML counter {counter:.4g} J, power sampling {sampled:.4g} J "
                  f"({(sampled - counter) / counter * 100:+.1f}%)")
        print(f"        run folder: {run}")
sys.exit(bad)
PY

"$PY" - "${model[@]}" <<'PY' || failed=1
import sys
import pandas as pd

bad = 0
print("\nmeasured (cuda) against modeled (roofline), same scenario, same run:")
cols = ["step_time_s", "ttft_s", "tpot_s", "tokens_per_s", "mfu", "peak_memory_bytes_per_device", "joules_per_token"]
for run in sys.argv[1:]:
    if not run:
        print("gpu-check: a run failed (its output is above)")
        bad = 1
        continue
    df = pd.read_csv(f"{run}/results.csv").set_index("backend")
    if "cuda" not in df.index or df.loc["cuda", "status"] != "ok":
        print(f"{run}: cuda row not ok: {df.loc['cuda', 'error'] if 'cuda' in df.index else 'missing'}")
        bad = 1
        continue
    m, r = df.loc["cuda"], df.loc["roofline"]
    print(f"{m['mode']} batch {m['batch']} x {m['seq_len']} tokens, {m['params']:.3g} params, {m['dtype']}, "
          f"on {m['hardware']} ({run}):")
    print(f"    attention kernel: the cuda backend ran {m.get('attention_kernel')}, "
          f"the roofline priced {r.get('attention_kernel')}")
    for c in cols:
        a, b = m.get(c), r.get(c)
        if pd.isna(a) and pd.isna(b):
            continue
        ratio = f"modeled/measured {b / a:.3f}" if pd.notna(a) and pd.notna(b) and a else ""
        print(f"    {c:30s} measured {a:<12.5g} modeled {b:<12.5g} {ratio}")
sys.exit(bad)
PY

# 3. One eager decode token of the same 8B shape: GPU operations launched, GPU-busy time and wall time per token.
"$PY" scripts/gpu_decode_launches.py || failed=1

# 4. The training step of part 2 split by phase and kind of kernel, measured and priced (one JSON object).
"$PY" scripts/gpu_train_breakdown.py || failed=1

exit "$failed"
