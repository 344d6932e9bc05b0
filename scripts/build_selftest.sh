#!/usr/bin/env bash
# Builds the standalone CUDA self-test (csrc/cuda/selftest, no torch) into $1 (default
# build/selftest/selftest): gemm_wgmma.cu for sm_90a alone (wgmma exists nowhere else), the
# other kernels for ARCHS, host code with -ffp-contract=off (its bitwise CPU references must
# not be contracted into FMAs; an aarch64 host compiler contracts by default).
#   ARCHS="80 90a"   the -gencode list for everything but gemm_wgmma.cu (default: sm_80, sm_90a)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/selftest/selftest}
NVCC=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
flags=(-std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -Xcompiler -ffp-contract=off)
gencode=()
for a in ${ARCHS:-80 90a}; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
mkdir -p "$(dirname "$out")"
obj="$(dirname "$out")/gemm_wgmma_sm90a.o"
"$NVCC" "${flags[@]}" -gencode arch=compute_90a,code=sm_90a -c csrc/cuda/gemm_wgmma.cu -o "$obj"
others=$(ls csrc/cuda/*.cu | grep -v gemm_wgmma.cu)
"$NVCC" "${flags[@]}" "${gencode[@]}" csrc/cuda/selftest/gemm_selftest.cu $others "$obj" -o "$out"
echo "built $out"
