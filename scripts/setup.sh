#!/usr/bin/env bash
# Idempotent set-up from a clean clone: a virtual environment in .venv with torch (CPU build
# where there is no GPU), the package built in place (C++ extension included), and the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
pip() { python -m pip "$@" --disable-pip-version-check -q; }
if ! python -c "import torch" 2>/dev/null; then
  # A CPU machine gets the CPU build: an unpinned torch would pull a multi-GB CUDA build.
  if command -v nvidia-smi >/dev/null 2>&1; then pip install torch; else pip install torch==2.13.0; fi
fi
pip install -e ".[test]"
# LibMTL 1.1.5 is a test oracle; its metadata requires torchvision, which it does not need for
# the weighting modules the tests load (see tests/peers.py), so its own dependencies are not installed.
pip install --no-deps LibMTL==1.1.5
python -c "import mtlkernels, mtlkernels._extension as e; assert e.available, e.import_error; print('mtlkernels', mtlkernels.__version__, 'ready')"
