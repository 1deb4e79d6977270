#!/usr/bin/env bash
# Create ./.venv (once) and install fewshot into it with the CPU build of torch.
# torch==2.13.0 is named explicitly so that pip takes the CPU wheel on disk and never a CUDA build.
# Usage: bash scripts/setup.sh [extra]   (extra: "test" adds pytest, hypothesis, h5py, ruff)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
spec="."
if [ "${1:-}" != "" ]; then spec=".[$1]"; fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e "$spec"
