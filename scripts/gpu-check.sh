#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the suite's CUDA tests, then a small scenario on the cuda backend,
# printing tokens/s, MFU, energy per token and NVML's energy counter next to power-sampled energy.
# Needs a CUDA build of torch and nvidia-ml-py (pip install -e '.[cuda,test]'). Not run in CI (no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/llmsim-gpu-check}"

python - <<'PY'
import torch
from llmsim_plugins.cuda import CudaBackend
reason = CudaBackend.availability()
print("gpu-check: torch", torch.__version__, "CUDA", torch.version.cuda,
      "| cuda backend:", "available" if reason is None else f"NOT available: {reason}")
if reason:
    raise SystemExit(1)
PY

python -m pytest -q -m gpu -p no:cacheprovider tests/plugins/test_cuda.py

run() { llmsim run scenarios/gpu-check.yaml --backend cuda --out "$OUT" "$@" | tail -n 1; }
runs=("$(run)"
      "$(run --set workload.mode=decode --set workload.decode_tokens=32)"
      "$(run --set 'workload.model={preset: tiny}' --set workload.batch=32)")

python - "${runs[@]}" <<'PY'
import sys
import pandas as pd

cols = ["mode", "seq_len", "params", "hardware", "tokens_per_s", "mfu", "joules_per_token",
        "energy_counter_j_per_step", "energy_sampled_j_per_step", "energy_method"]
for run in sys.argv[1:]:
    df = pd.read_csv(f"{run}/results.csv")
    for _, row in df.iterrows():
        if row["status"] != "ok":
            print(f"{run}: {row['status']}: {row['error']}")
            continue
        print(f"{row['mode']:7s} params={row['params']:.3g} on {row['hardware']}: "
              f"{row['tokens_per_s']:.4g} tokens/s, MFU {row['mfu'] if pd.notna(row['mfu']) else '-'}"
              f"{'' if pd.notna(row['mfu']) else ' (' + str(row.get('mfu_reason')) + ')'}, "
              f"{row['joules_per_token']:.4g} J/token ({row['energy_source']}, {row.get('energy_method')})")
        counter, sampled = row.get("energy_counter_j_per_step"), row.get("energy_sampled_j_per_step")
        if pd.notna(counter) and pd.notna(sampled):
            print(f"        energy per step: NVML counter {counter:.4g} J, power sampling {sampled:.4g} J "
                  f"({(sampled - counter) / counter * 100:+.1f}%)")
        print(f"        run folder: {run}")
PY
