// Standalone dequantize of a contiguous int32 accumulator [M, N] (the int32-output GEMM path,
// e.g. after a cuBLASLt int8 matmul or for testing), with exactly the GEMM epilogue numerics:
// DequantEpilogue::value in epilogue.cuh.
#include <cstring>

#include "epilogue.cuh"

namespace int8kern {
namespace cuda {
namespace {

// Store 4 consecutive outputs p[idx .. idx+3] with one vector store (idx % 4 == 0 and p
// aligned to 4 elements, checked by the host).
INT8KERN_D void store4_from_float(void* p, DType d, int64_t idx, const float (&v)[4]) {
  switch (d) {
    case DType::Float16: {
      __half h[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) h[e] = __float2half_rn(v[e]);
      uint2 w;
      memcpy(&w, h, sizeof(w));
      *reinterpret_cast<uint2*>(static_cast<__half*>(p) + idx) = w;
      break;
    }
    case DType::BFloat16: {
      __nv_bfloat16 h[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) h[e] = __float2bfloat16_rn(v[e]);
      uint2 w;
      memcpy(&w, h, sizeof(w));
      *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(p) + idx) = w;
      break;
    }
    default:
      *reinterpret_cast<float4*>(static_cast<float*>(p) + idx) = make_float4(v[0], v[1], v[2], v[3]);
      break;
  }
}

// dequantize_kernel
//   Elementwise, grid-stride, 64-bit indices. kVec4: each thread step handles 4 consecutive
//   elements of one row (N % 4 == 0) with a 16-byte acc load and a 16 / 8-byte store;
//   otherwise one element per step. Bytes per element: 4 (acc) + out size (+ add size), plus
//   row/col absmax and bias reads that hit L1/L2; ~5 flops + 2 divisions per element.
template <bool kVec4>
__global__ void __launch_bounds__(256)
    dequantize_kernel(const int32_t* __restrict__ acc, int64_t M, int64_t N,
                      const DequantEpilogue epi) {
  const int64_t total = M * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVec4) {
    const int64_t groups = total / 4;  // exact: N % 4 == 0
    for (int64_t gi = first; gi < groups; gi += stride) {
      const int64_t idx = gi * 4;
      const int64_t i = idx / N;
      const int64_t j = idx - i * N;  // j + 3 < N: a group never crosses a row
      const int4 a = *reinterpret_cast<const int4*>(acc + idx);
      const float v[4] = {epi.value(i, j, a.x, idx), epi.value(i, j + 1, a.y, idx + 1),
                          epi.value(i, j + 2, a.z, idx + 2), epi.value(i, j + 3, a.w, idx + 3)};
      store4_from_float(epi.out, epi.out_dtype, idx, v);
    }
  } else {
    for (int64_t idx = first; idx < total; idx += stride) {
      const int64_t i = idx / N;
      const int64_t j = idx - i * N;
      store_from_float(epi.out, epi.out_dtype, idx, epi.value(i, j, acc[idx], idx));
    }
  }
}

}  // namespace

void launch_dequantize(const int32_t* acc, int64_t M, int64_t N, const float* row_absmax,
                       const float* col_absmax, const float* bias, const void* add,
                       DType add_dtype, void* out, DType out_dtype, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  // Contiguous [M, N]: out and add row strides are N.
  const DequantEpilogue epi{out, N, out_dtype, row_absmax, col_absmax, bias, DType::Float32, add, add_dtype, N,
                            nullptr, 0, nullptr, 0, nullptr, nullptr};  // no outlier product
  const bool vec4 = N % 4 == 0 && is_aligned(acc, 16) &&
                    is_aligned(out, 4 * static_cast<uintptr_t>(dtype_size(out_dtype)));
  constexpr int kThreads = 256;
  constexpr int64_t kMaxBlocks = 65536;  // grid-stride beyond that
  const int64_t units = vec4 ? (M * N) / 4 : M * N;
  const int64_t blocks = min_of(ceil_div<int64_t>(units, kThreads), kMaxBlocks);
  if (vec4) {
    INT8KERN_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, dequantize_kernel<true>)(acc, M, N, epi);
  } else {
    INT8KERN_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, dequantize_kernel<false>)(acc, M, N, epi);
  }
}

}  // namespace cuda
}  // namespace int8kern
