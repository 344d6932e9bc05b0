#!/usr/bin/env bash
# `make gpu-check`, for a machine with an NVIDIA GPU (sm_80 or newer): build with that
# machine's own torch, run the whole test suite with CUDA, run the standalone kernel self-test,
# then compute-sanitizer (memcheck, racecheck, initcheck) over a small CUDA test selection.
# Prints a summary; exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(scripts/env.sh)}
export MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
LOG=${GPU_CHECK_LOG:-build/gpu-check}
mkdir -p "$LOG"
declare -A status
step() {  # step NAME CMD...: run, log, remember pass/fail
  local name=$1; shift
  echo "=== $name: $*"
  if "$@" > "$LOG/$name.log" 2>&1; then status[$name]=pass; else status[$name]="FAIL (see $LOG/$name.log)"; fi
  tail -n 5 "$LOG/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
step build "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
step tests env HYPOTHESIS_PROFILE=gpu "$PY" -m pytest -q -x tests
NVCC=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
step selftest-build "$NVCC" -std=c++17 -O3 -Icsrc -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
  csrc/cuda/selftest/gemm_selftest.cu csrc/cuda/gemm_mma.cu csrc/cuda/gemm_wgmma.cu csrc/cuda/quantize.cu \
  csrc/cuda/dequantize.cu csrc/cuda/outliers.cu -o build/selftest
step selftest build/selftest
SEL=(tests/test_ops.py tests/test_robustness.py -k "cuda and (M7 or M83 or M1K or extremes or outlier_semantics or zero_rows or capacity)" -q -p no:cacheprovider)
for tool in memcheck racecheck initcheck; do
  step "sanitize-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all "$PY" -m pytest "${SEL[@]}"
done
echo; echo "=== gpu-check summary"
rc=0
for name in build tests selftest-build selftest sanitize-memcheck sanitize-racecheck sanitize-initcheck; do
  printf '%-20s %s\n' "$name" "${status[$name]:-not run}"
  [ "${status[$name]:-}" = pass ] || rc=1
done
grep -E "passed|failed" "$LOG/tests.log" | tail -n 1
grep -hE "ERROR SUMMARY" "$LOG"/sanitize-*.log || true
exit $rc
