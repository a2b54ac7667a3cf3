#!/usr/bin/env bash
# The GPU run, in stages that each fit one 10-minute command on a fresh H100/H200 (every new
# Triton specialisation compiles for 2-8 s; the counts below are what each stage compiles):
#   bash bench/run_gpu.sh 1    versions, the GPU-only tests (pytest -m gpu: no host sync, CUDA-graph
#                              replay, Nash-MTL's warm start under replay, 2^31+ columns) and the
#                              headline benchmark cases (K = 8, N = 1e8, float32/bfloat16; K = 2,
#                              N = 1e7, float32). ~35 specialisations, 2-5 min.
#   bash bench/run_gpu.sh 2    the other benchmark cases (K in {2, 8, 32}, N in {1e7, 1e8}). ~8, 1-3 min.
#   bash bench/run_gpu.sh 3    the launch-shape / precision sweep at N = 1e8. ~30, 2-5 min.
#   bash bench/run_gpu.sh 4    every Triton test on the device (not only the GPU-only ones): hundreds
#                              of specialisations, longer than one slot; run where time allows.
#   bash bench/run_gpu.sh      stages 1-3 in a row.
# Needs torch, triton, numpy and pytest (hypothesis optional: its property tests then skip). The
# solve tests that compare with the C++ solver need the extension built for this torch
# (python setup.py build_ext --inplace); without it they skip, and the header says so.
# Results (JSON + Markdown + each stage's log, with device, date and command) go to
# $MTLK_BENCH_RESULTS (default bench/results), rewritten after every benchmark case, so a run cut
# short still leaves its numbers. Extra arguments go to every pytest run (e.g. -x).
#   MTLK_BENCH_RESULTS=$OUT PYTHON=python3 bash bench/run_gpu.sh 1     # on a lent device machine
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
stages=${1:-all}
[ $# -gt 0 ] && shift
export MTLK_BENCH_RESULTS=${MTLK_BENCH_RESULTS:-bench/results}
export PYTHONUNBUFFERED=1
mkdir -p "$MTLK_BENCH_RESULTS"
case "$stages" in
  1|2|3|4) ;;
  all) stages="1 2 3" ;;
  *) echo "usage: bash bench/run_gpu.sh [1|2|3|4|all] [pytest arguments]" >&2; exit 2 ;;
esac

# the GPU-only tests: every module here collects without hypothesis
GPU_TESTS=(
  tests/kernels/test_gram_triton.py tests/kernels/test_combine_triton.py
  tests/kernels/test_solve_pcgrad.py tests/kernels/test_solve_imtl.py tests/kernels/test_solve_nash_mtl.py
  tests/kernels/test_solve_mgda.py tests/kernels/test_solve_cagrad.py
  tests/methods/test_nash_mtl.py tests/methods/test_pcgrad.py tests/test_no_host_sync.py
  tests/bench/test_timing.py tests/bench/test_step.py
)
BENCH=bench/test_gram_combine_gpu.py
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

versions() {
  echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC') — $MTLK_BENCH_COMMAND"
  "$PY" - <<'PYEOF'
import platform, torch, triton, numpy, pytest
print(f"python {platform.python_version()} | torch {torch.__version__} (CUDA {torch.version.cuda}) | triton {triton.__version__} | numpy {numpy.__version__} | pytest {pytest.__version__}")
try:
    import hypothesis
    print(f"hypothesis {hypothesis.__version__}")
except ImportError:
    print("hypothesis not installed: the property tests skip")
try:
    from mtlkernels import _extension
    print("C++ extension:", "built" if _extension.available else
          f"not importable ({_extension.import_error}): the tests that compare with the C++ solver skip")
except Exception as error:  # the header must print whatever is broken
    print(f"import mtlkernels failed: {error!r}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name} | sm_{p.major}{p.minor} | {p.multi_processor_count} SMs | {p.total_memory / 2**30:.0f} GiB")
PYEOF
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | head -3
  else
    echo "nvidia-smi: not found (no driver version)"
  fi
}

status=0
for stage in $stages; do
  export MTLK_BENCH_COMMAND="bash bench/run_gpu.sh $stage${*:+ $*}"
  log="$MTLK_BENCH_RESULTS/gpu_stage${stage}_$(date -u +%Y%m%dT%H%M%SZ).log"
  versions 2>&1 | tee "$log"
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: the GPU tests and benchmarks would all be skipped" | tee -a "$log" >&2
    exit 1
  fi
  start=$SECONDS
  case "$stage" in
    1) "${PYTEST[@]}" -rs -m gpu "${GPU_TESTS[@]}" "$@" 2>&1 | tee -a "$log"
       rc=${PIPESTATUS[0]}
       "${PYTEST[@]}" -s -m headline -k test_gram_and_combine "$BENCH" "$@" 2>&1 | tee -a "$log"
       rc2=${PIPESTATUS[0]} ;;
    2) "${PYTEST[@]}" -s -m "not headline" -k test_gram_and_combine "$BENCH" "$@" 2>&1 | tee -a "$log"
       rc=${PIPESTATUS[0]}; rc2=0 ;;
    3) "${PYTEST[@]}" -s -k test_sweep_launch_shapes "$BENCH" "$@" 2>&1 | tee -a "$log"
       rc=${PIPESTATUS[0]}; rc2=0 ;;
    4) "${PYTEST[@]}" -rs tests/kernels/test_gram_triton.py tests/kernels/test_combine_triton.py \
         tests/kernels/test_solve_*.py "$@" 2>&1 | tee -a "$log"
       rc=${PIPESTATUS[0]}; rc2=0 ;;
  esac
  echo "stage $stage: exit $rc / $rc2 in $((SECONDS - start)) s; results in $MTLK_BENCH_RESULTS" | tee -a "$log"
  [ "$rc" -ne 0 ] && status=$rc
  [ "$rc2" -ne 0 ] && status=$rc2
done
exit $status
