#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on the CPU; Triton kernels run under
# TRITON_INTERPRET=1 (tests/conftest.py sets it when there is no CUDA device).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
set +e
python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$status"
