#!/usr/bin/env bash
# One command for a CUDA machine: the Triton gram/combine tests on the device (incl. no host sync,
# CUDA-graph replay, 2^31+ columns), then their benchmark against torch and the copy bandwidth.
# Results (JSON + Markdown + the test log, each with device name, date and command) go to
# $MTLK_BENCH_RESULTS (default bench/results). Extra arguments go to both pytest runs (e.g. -x).
#   bash bench/run_gpu.sh
#   MTLK_BENCH_RESULTS=$OUT PYTHON=python3 bash bench/run_gpu.sh     # on a lent device machine
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export MTLK_BENCH_RESULTS=${MTLK_BENCH_RESULTS:-bench/results}
export MTLK_BENCH_COMMAND="bash bench/run_gpu.sh $*"
export PYTHONUNBUFFERED=1
mkdir -p "$MTLK_BENCH_RESULTS"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log="$MTLK_BENCH_RESULTS/gram_combine_gpu_tests_$stamp.log"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: the GPU tests and benchmarks would all be skipped" >&2
  exit 1
fi
{
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC') — $MTLK_BENCH_COMMAND"
  "$PY" -c "import torch, triton; print(torch.cuda.get_device_name(), '| torch', torch.__version__, '| triton', triton.__version__)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null
} | tee "$log"

"$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_gram_triton.py tests/kernels/test_combine_triton.py "$@" 2>&1 | tee -a "$log"
tests=${PIPESTATUS[0]}
"$PY" -m pytest -q -s -p no:cacheprovider bench/test_gram_combine_gpu.py "$@" 2>&1 | tee -a "$log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, benchmark exit $bench; results in $MTLK_BENCH_RESULTS" | tee -a "$log"
exit $(( tests != 0 ? tests : bench ))
