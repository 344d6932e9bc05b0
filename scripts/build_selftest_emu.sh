#!/usr/bin/env bash
# Builds the CUDA self-test (csrc/cuda/selftest/gemm_selftest.cu and every csrc/cuda/*.cu, the
# sm_90a wgmma GEMM included) as host C++ under the warp-level emulator (csrc/emu), with g++.
#   scripts/build_selftest_emu.sh [plain|asan|tsan] [OUT]
#     plain  -O2
#     asan   AddressSanitizer + UndefinedBehaviorSanitizer (any report fails the run)
#     tsan   ThreadSanitizer on the kernels (fibers annotated; the emulator's own bookkeeping is
#            not instrumented, see csrc/emu/emu_runtime.cpp)
# Extra flags (a planted bug: -DINT8KERN_PLANT_...) come from EMU_CXXFLAGS. Objects are kept
# next to OUT and rebuilt only when a source or header is newer or their flags changed (each
# object's flags are kept beside it, OBJ.flags). A -DINT8KERN_PLANT_* macro is passed only to
# the sources that mention it (in the file or a header it includes, as g++ -MM lists them); the
# other objects are copied from EMU_REUSE_OBJDIR (e.g. build/emu/plain/obj) when it has them up to
# date with the same flags, so a planted-bug build compiles one or two files.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:-plain}
out=${2:-build/emu/$variant/selftest}
cuda_home=${CUDA_HOME:-/usr/local/cuda}
CXX=${CXX:-g++}
if [ ! -f "$cuda_home/include/cuda_runtime_api.h" ]; then
  echo "build_selftest_emu: no CUDA headers under $cuda_home (set CUDA_HOME)" >&2
  exit 2
fi
common=(-std=c++17 -DINT8KERN_EMU -ffp-contract=off -fno-fast-math -Wall -Wno-psabi -Wno-unused-function -Wno-unknown-pragmas -Wno-class-memaccess
        -Icsrc -I"$cuda_home/include" -g ${EMU_CXXFLAGS:-})
runtime_flags=()
case "$variant" in
  plain) common+=(-O2) ;;
  asan)  common+=(-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all) ;;
  tsan)  common+=(-O1 -fno-omit-frame-pointer -DINT8KERN_EMU_TSAN)
         kernel_only=(-fsanitize=thread)
         # the runtime's own code is not instrumented; it links the TSan runtime through the kernels
         runtime_flags=(-fno-tree-loop-distribute-patterns) ;;
  *) echo "build_selftest_emu: unknown variant $variant (plain, asan, tsan)" >&2; exit 2 ;;
esac
objdir="$(dirname "$out")/obj"
mkdir -p "$objdir"
headers=$(ls csrc/cuda/*.cuh csrc/cuda/*.h csrc/emu/*.h csrc/*.h)
newest_header=$(ls -t $headers | head -n 1)
# The planted-bug macros of EMU_CXXFLAGS (see above); the other flags apply to every source.
plants=()
for f in ${EMU_CXXFLAGS:-}; do
  case "$f" in -DINT8KERN_PLANT_*) plants+=("$f") ;; esac
done
if [ ${#plants[@]} -gt 0 ]; then
  stripped=()  # common without EMU_CXXFLAGS' plants
  for f in "${common[@]}"; do
    case " ${plants[*]} " in *" $f "*) ;; *) stripped+=("$f") ;; esac
  done
  common=("${stripped[@]}")
fi
up_to_date() {  # up_to_date SRC OBJ FLAGS-STRING
  [ -f "$1" ] && [ -f "$2" ] && [ -f "$2.flags" ] && [ "$(cat "$2.flags")" = "$3" ] &&
    ! [ "$1" -nt "$2" ] && ! [ "$newest_header" -nt "$2" ]
}
build() {  # build SRC OBJ FLAGS...
  local src=$1 obj=$2; shift 2
  local flags=("${common[@]}" "$@")
  if [ ${#plants[@]} -gt 0 ]; then
    local deps p name
    deps=$("$CXX" "${common[@]}" "$@" -x c++ -MM "$src" | tr -d '\\' | tr ' ' '\n' | grep -v ':$' | grep -v '^$')
    for p in "${plants[@]}"; do
      name=${p#-D}; name=${name%%=*}
      if grep -qw "$name" $deps; then flags+=("$p"); fi
    done
  fi
  local stamp="${flags[*]}"
  if up_to_date "$src" "$obj" "$stamp"; then return 0; fi
  local reuse="${EMU_REUSE_OBJDIR:-}/$(basename "$obj")"
  if [ -n "${EMU_REUSE_OBJDIR:-}" ] && up_to_date "$src" "$reuse" "$stamp"; then
    cp -p "$reuse" "$obj" && cp -p "$reuse.flags" "$obj.flags"
    return 0
  fi
  rm -f "$obj.flags"
  "$CXX" "${flags[@]}" -x c++ -c "$src" -o "$obj"
  printf '%s' "$stamp" > "$obj.flags"
}
pids=()
for src in csrc/cuda/*.cu csrc/cuda/selftest/gemm_selftest.cu; do
  build "$src" "$objdir/$(basename "$src").o" ${kernel_only[@]+"${kernel_only[@]}"} &
  pids+=($!)
  # two compiles at a time: this machine has two cores
  if [ ${#pids[@]} -ge "${MAX_JOBS:-2}" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
build csrc/emu/emu_runtime.cpp "$objdir/emu_runtime.o" ${runtime_flags[@]+"${runtime_flags[@]}"}
for p in "${pids[@]}"; do wait "$p"; done
objs=()
for src in csrc/cuda/*.cu csrc/cuda/selftest/gemm_selftest.cu; do objs+=("$objdir/$(basename "$src").o"); done
objs+=("$objdir/emu_runtime.o")
link=()
case "$variant" in
  asan) link=(-fsanitize=address,undefined) ;;
  tsan) link=(-fsanitize=thread) ;;
esac
"$CXX" "${objs[@]}" ${link[@]+"${link[@]}"} -lpthread -o "$out"
echo "built $out ($variant)"
