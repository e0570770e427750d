#!/usr/bin/env bash
# The xla backend for real, on the PJRT CPU device, in an environment of its own: torch_xla 2.9.0 needs
# exactly torch 2.9.0, while the main environment has torch 2.13. Runs the `xla`-marked tests (tiny
# preset, train and decode; results compared with plain torch on the CPU in this same environment).
#
# Cost, measured on the 2-core CI machine: the pinned pair from PyPI is a CUDA build of torch
# (~3.9 GB of wheels, 7.1-7.3 GB installed); the pair took 114 s to install on a quiet machine and the
# whole script 455 s (environment 354 s, tests 39 s) while other test suites shared the 2 cores. The
# tests are mostly XLA compiling graphs. Set XLA_VENV to put (or reuse) the environment elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${XLA_VENV:-.venv-xla}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    echo '*' > "$VENV/.gitignore"   # keep the environment out of git without touching the repo's .gitignore
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
start=$(date +%s)
# ~3.9 GB from PyPI: a dropped connection mid-wheel is the usual failure (seen in CI: nvidia-cublas stopped at
# 455 of 594 MB six times). pip resumes a partial wheel (--resume-retries) and the whole install is retried;
# when the registry still cannot be reached the script exits 75 (EX_TEMPFAIL) so that CI can tell a network
# outage from a broken backend.
install() {
    local attempt
    for attempt in 1 2 3; do
        if python -m pip install --quiet --timeout 60 --resume-retries 20 "$@"; then
            return 0
        fi
        echo "xla-check: pip install $* failed (attempt $attempt of 3)" >&2
        sleep $(( attempt * 10 ))
    done
    return 1
}
python -m pip install --quiet --upgrade pip || { echo "xla-check: cannot reach the package registry" >&2; exit 75; }
install "torch==2.9.0" "torch_xla==2.9.0" || { echo "xla-check: torch 2.9.0 + torch_xla could not be downloaded" >&2; exit 75; }
# llmsim itself and its other dependencies; torch 2.9.0 already satisfies torch>=2.4, so pip keeps it.
install -e '.[test]' || { echo "xla-check: llmsim's dependencies could not be downloaded" >&2; exit 75; }
echo "xla-check: environment ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
PJRT_DEVICE=CPU python -c "import torch, torch_xla; print('xla-check: torch', torch.__version__, 'torch_xla', torch_xla.__version__)"

PJRT_DEVICE=CPU python -m pytest -q -m xla -s -p no:cacheprovider tests/plugins/test_xla.py
