#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: the CPU-sized benchmark suite — every method's
# aggregate() beside plain torch, torchjd, LibMTL and the memory floor measured in the same run,
# plus the Gram and combination passes alone — printing the table and writing
# bench/out/results.{json,csv} and PNG plots. Extra arguments go to `python -m mtlkernels.bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m mtlkernels.bench --suite cpu-small --out bench/out "$@"
