#!/usr/bin/env bash
# `make gpu-bench`: issue 11's speed run on a lent GPU, after `make gpu-check` has passed
# (timings of wrong kernels are worth nothing). One prepared command, about 7 minutes:
#   1. benchmarks/bench_ops.py --device cuda: the H200 suite (ceilings measured in the same
#      run, quantize vs copy bandwidth, int8_matmul vs torch._int_mm and bf16 mm, Int8LinearLt
#      vs F.linear fp16 and bitsandbytes at threshold 6 and 0, the wgmma rows on sm_90);
#   2. benchmarks/bench_model.py: a TinyLlama-shaped model, int8kern vs float16 vs bitsandbytes,
#      eager and CUDA-graph decode, 2048-token prefill, peak memory.
# Each under `timeout` with its own budget (the scripts write their JSON after every section,
# so a step cut short keeps what it measured); a failing step never stops the next.
# Results (JSON, PNG) and one log go to GPU_BENCH_OUT (default benchmarks/results; on the lent
# machine $OUT). GPU_BENCH_DRY_RUN=1: the same steps with --dry-run, any machine.
# On the lent H200, one `run` call (files as for gpu_check.sh; .device-site brings bitsandbytes):
#   carry: int8kern/_C.cpython-312-x86_64-linux-gnu.so  .device-site
#   command: GPU_BENCH_OUT=$OUT bash scripts/gpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${GPU_BENCH_OUT:-benchmarks/results}
PY=${PY:-$(scripts/env.sh)}
[ "${GPU_BENCH_DRY_RUN:-0}" = 0 ] && source scripts/device_env.sh  # the carried .device-site, if any
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUTDIR"
DRY=()
[ "${GPU_BENCH_DRY_RUN:-0}" != 0 ] && DRY=(--dry-run)
rc=0
step() {  # NAME TIMEOUT CMD...
  local name=$1 t=$2; shift 2
  echo "=== $name (timeout ${t}s): $*" | tee -a "$OUTDIR/gpu-bench.log"
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$OUTDIR/gpu-bench.log"
  local r=${PIPESTATUS[0]}
  echo "=== $name: rc $r" | tee -a "$OUTDIR/gpu-bench.log"
  [ "$r" = 0 ] || rc=1
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader 2>/dev/null | tee -a "$OUTDIR/gpu-bench.log"
step bench-ops 230 "$PY" benchmarks/bench_ops.py --device "${GPU_BENCH_DEVICE:-cuda}" --budget-s 190 --out "$OUTDIR" "${DRY[@]}"
step bench-model 200 "$PY" benchmarks/bench_model.py --budget-s 160 --out "$OUTDIR" "${DRY[@]}"
exit $rc
