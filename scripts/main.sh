#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: the CPU-sized benchmark suite — every method's
# aggregate() beside plain torch, torchjd, LibMTL and the memory floor measured in the same run,
# plus the Gram and combination passes alone — printing the table and writing
# bench/out/results.{json,csv} and PNG plots. Extra arguments go to `python -m mtlkernels.bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Our extension's OpenMP runtime and torch's are separate: spinning idle threads of one steal the
# cores of the other (8 ms stalls on a 2-core machine), so idle OpenMP threads sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
python -m mtlkernels.bench --suite cpu-small --out bench/out "$@"
