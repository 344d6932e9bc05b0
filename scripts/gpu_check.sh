#!/usr/bin/env bash
# `make gpu-check`: the runbook for a GPU machine, written for the lent H200 (one prepared
# command, about 8 minutes of wall time, no network, nothing compiled there when the prebuilt
# files came along: ../shared/tools/device-prebuild.sh makes the extension .so for that
# machine's Python and torch and build/device/selftest; without them it builds both first;
# scripts/device_site.sh makes .device-site/, the packages that machine lacks). On the lent
# H200, one `run` call:
#   carry: int8kern/_C.cpython-312-x86_64-linux-gnu.so  build/device  .device-site
#   command: GPU_CHECK_LOG=$OUT bash scripts/gpu_check.sh
#
#   1. the standalone self-test (csrc/cuda/selftest), then again with INT8KERN_CUDA_GEMM=wgmma:
#      a protocol error in the wgmma pipeline shows up as a hang, so each under `timeout`;
#   2. at once: the CUDA tests with the mma.sync default and with wgmma (pytest-timeout per
#      test), and compute-sanitizer memcheck / racecheck / synccheck / initcheck on
#      `selftest --small` (wgmma cases included) and memcheck on a small pytest selection;
#   3. alone on the GPU: a short benchmark (bench_ops.py --quick) and wgmma vs mma timings.
#
# A failing or hanging step never stops the next one. Step logs are appended to
# $LOG/gpu-check.log as each step ends, and $LOG/summary.json is rewritten after every step, so
# a run cut short still says what passed. Exit status: 0 when every step passed.
# Environment:
#   GPU_CHECK_LOG       folder for gpu-check.log, summary.json and the benchmark JSON/PNG
#                       (default build/gpu-check; on the lent machine $OUT: at most 8 files)
#   GPU_CHECK_BUDGET_S  wall-time budget in seconds (default 480); every step's timeout is
#                       cut to what is left of it
#   GPU_CHECK_DRY_RUN=1 check the script, its paths and its time budget; run nothing
#   SELFTEST            the self-test binary (default build/device/selftest, else
#                       build/selftest/selftest, else built here by scripts/build_selftest.sh)
#   PY                  the Python (default: scripts/env.sh's choice)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${GPU_CHECK_LOG:-build/gpu-check}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
DRY=${GPU_CHECK_DRY_RUN:-0}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
PY=${PY:-$(scripts/env.sh)}
[ "${GPU_CHECK_DRY_RUN:-0}" = 0 ] && source scripts/device_env.sh  # the carried .device-site, if any
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$LOG"
: > "$LOG/gpu-check.log"
START=$(date +%s)
STEPS=()

# Per-step timeouts (s). Phase 2 runs its steps side by side, so it costs its largest.
T_SETUP=30 T_BUILD=300 T_SELFTEST=90 T_TESTS=180 T_SANITIZE=180 T_BENCH=60 T_CHOICE=30
PHASE_MAX=$((T_SETUP + 2 * T_SELFTEST + (T_TESTS > T_SANITIZE ? T_TESTS : T_SANITIZE) + T_BENCH + T_CHOICE))

left() { echo $((BUDGET - ($(date +%s) - START))); }

summary() {  # rewrite summary.json from the steps so far
  "$PY" - "$WORK" "$LOG/summary.json" "$(date +%s)" "$START" "${STEPS[@]}" <<'EOF'
import json, os, re, sys
work, out, now, start, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
facts = {"selftest": r"(wgmma kernel: .*|ALL PASSED.*|FAILED: .*)", "tests": r"(\d+ (passed|failed).*)",
         "sanitize": r"(ERROR SUMMARY: .*)", "bench": r"(wrote .*|speedup.*)"}
steps = {}
for name in names:
    rec = {}
    for key in ("rc", "seconds"):
        p = os.path.join(work, f"{name}.{key}")
        rec[key] = int(open(p).read()) if os.path.exists(p) else None
    rec["status"] = ("running" if rec["rc"] is None else "pass" if rec["rc"] == 0
                     else "timeout" if rec["rc"] in (124, 137) else "fail")
    log = os.path.join(work, f"{name}.log")
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    pattern = next((v for k, v in facts.items() if name.startswith(k)), None)
    rec["facts"] = [m.group(1) for m in re.finditer(pattern, text)][-3:] if pattern else []
    rec["tail"] = text.strip().splitlines()[-3:]
    steps[name] = rec
ok = bool(steps) and all(r["status"] == "pass" for r in steps.values())
json.dump({"elapsed_s": now - start, "all_passed": ok, "steps": steps}, open(out, "w"), indent=1)
EOF
}

finish_step() {  # NAME RC SECONDS: record, append the log, rewrite the summary
  echo "$2" > "$WORK/$1.rc"
  echo "$3" > "$WORK/$1.seconds"
  { echo "===== $1: rc $2, $3 s"; cat "$WORK/$1.log"; echo; } | flock "$LOG/gpu-check.log" tee -a "$LOG/gpu-check.log" > /dev/null
  echo "=== $1: rc $2 in $3 s"
  tail -n 3 "$WORK/$1.log" | sed 's/^/    /'
  summary
}

run_step() {  # NAME TIMEOUT CMD...: run CMD under timeout (cut to the budget left)
  local name=$1 limit=$2; shift 2
  local t=$(( limit < $(left) ? limit : $(left) ))
  STEPS+=("$name")
  if [ "$DRY" != 0 ]; then echo "[dry] $name (timeout ${limit}s): $*"; return 0; fi
  if [ "$t" -le 5 ]; then echo "budget spent" > "$WORK/$name.log"; finish_step "$name" 124 0; return 0; fi
  local s=$(date +%s) rc=0
  timeout -k 10 "$t" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
  finish_step "$name" "$rc" $(( $(date +%s) - s ))
}

run_bg() {  # like run_step, in the background (phase 2); `wait` collects them
  local name=$1; shift
  STEPS+=("$name")
  if [ "$DRY" != 0 ]; then echo "[dry] $name (in parallel, timeout $1s): ${*:2}"; return 0; fi
  ( local t=$(( $1 < $(left) ? $1 : $(left) )); shift; local s=$(date +%s) rc=0
    timeout -k 10 "$t" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
    finish_step "$name" "$rc" $(( $(date +%s) - s )) ) &
}

# ---------------------------------------------------------------- phase 0: what is here
if [ "$DRY" != 0 ]; then
  echo "gpu-check dry run: budget ${BUDGET}s, worst case of the plan ${PHASE_MAX}s (+${T_BUILD}s if it must build)"
  [ "$PHASE_MAX" -le "$BUDGET" ] || { echo "dry run: the plan's timeouts exceed the budget"; exit 1; }
  for f in scripts/build_selftest.sh benchmarks/bench_ops.py benchmarks/gemm_choice.py tests/test_wgmma.py tests/test_cuda_hardware.py; do
    [ -e "$f" ] || { echo "dry run: missing $f"; exit 1; }
  done
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
run_step setup "$T_SETUP" "$PY" -c "
import torch, int8kern, int8kern._C as C
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print('int8kern', int8kern.__version__, 'from', C.__file__)
assert torch._C._dispatch_has_kernel_for_dispatch_key('int8kern::int8_matmul', 'CUDA'), 'no CUDA kernels in this build'"
if [ "$DRY" = 0 ] && [ "$(cat "$WORK/setup.rc")" != 0 ]; then
  # No usable prebuilt extension (another torch?): build it here, as a user would.
  run_step build "$T_BUILD" env MAX_JOBS=16 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
fi
SELFTEST=${SELFTEST:-}
for cand in build/device/selftest build/selftest/selftest; do
  [ -z "$SELFTEST" ] && [ -x "$cand" ] && SELFTEST=$cand
done
if [ -z "$SELFTEST" ]; then
  SELFTEST=build/selftest/selftest
  run_step selftest-build "$T_BUILD" scripts/build_selftest.sh "$SELFTEST"
fi

# ---------------------------------------------------------------- phase 1: the self-test
run_step selftest "$T_SELFTEST" "$SELFTEST"
run_step selftest-wgmma "$T_SELFTEST" env INT8KERN_CUDA_GEMM=wgmma "$SELFTEST"

# ---------------------------------------------------------------- phase 2: side by side
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts= -rs)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 90)  # a hung test fails alone
run_bg tests-mma "$T_TESTS" env INT8KERN_CUDA_GEMM=mma "${PYTEST[@]}" tests -k "cuda or wgmma"
run_bg tests-wgmma "$T_TESTS" env INT8KERN_CUDA_GEMM=wgmma "${PYTEST[@]}" tests -k "cuda or wgmma"
for tool in memcheck racecheck synccheck initcheck; do
  run_bg "sanitize-$tool" "$T_SANITIZE" compute-sanitizer --tool "$tool" --error-exitcode 1 "$SELFTEST" --small
done
run_bg sanitize-pytest "$T_SANITIZE" compute-sanitizer --tool memcheck --error-exitcode 1 --target-processes all \
  "$PY" -m pytest -q -p no:cacheprovider -o addopts= tests/test_ops.py tests/test_robustness.py tests/test_wgmma.py \
  -k "cuda and (M7 or M83 or extremes or outlier_semantics or zero_rows or capacity or M17K16N1 or M131K272N67)"
[ "$DRY" != 0 ] || wait

# ---------------------------------------------------------------- phase 3: timings, alone
run_step bench "$T_BENCH" "$PY" benchmarks/bench_ops.py --device cuda --quick --budget-s $((T_BENCH - 20)) --out "$LOG"
run_step gemm-choice "$T_CHOICE" "$PY" benchmarks/gemm_choice.py --out "$LOG"
[ "$DRY" = 0 ] && ls -t "$LOG" | tail -n +9 | sed 's/^/more than 8 files in the log folder (the lent machine returns 8): /'

echo; echo "=== gpu-check summary ($(( $(date +%s) - START )) s of ${BUDGET} s)"
if [ "$DRY" != 0 ]; then echo "dry run: ${#STEPS[@]} steps planned, paths present"; rm -rf "$WORK"; exit 0; fi
summary
"$PY" - "$LOG/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
for name, r in s["steps"].items():
    print(f"{name:18} {r['status']:8} {r['seconds'] if r['seconds'] is not None else '-':>4} s  {' | '.join(r['facts'][-2:])}")
sys.exit(0 if s["all_passed"] else 1)
EOF
rc=$?
rm -rf "$WORK"
exit $rc
