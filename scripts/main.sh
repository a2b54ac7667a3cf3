#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job: the CPU-sized benchmark suite — every method's
# aggregate() beside plain torch, torchjd, LibMTL and the memory floor measured in the same run,
# plus the Gram and combination passes alone — printing the table and writing
# bench/out/results.{json,csv} and PNG plots. Extra arguments go to `python -m mtlkernels.bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# Idle OpenMP threads spin-wait by default; on a small shared machine that stalls short calls by a
# scheduler quantum (8 ms seen on 2 cores), so idle OpenMP threads sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
python -m mtlkernels.bench --suite cpu-small --out bench/out "$@"
