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
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.9.0" "torch_xla==2.9.0"
# llmsim itself and its other dependencies; torch 2.9.0 already satisfies torch>=2.4, so pip keeps it.
python -m pip install --quiet -e '.[test]'
echo "xla-check: environment ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
PJRT_DEVICE=CPU python -c "import torch, torch_xla; print('xla-check: torch', torch.__version__, 'torch_xla', torch_xla.__version__)"

PJRT_DEVICE=CPU python -m pytest -q -m xla -s -p no:cacheprovider tests/plugins/test_xla.py
