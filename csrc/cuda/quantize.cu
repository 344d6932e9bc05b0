// Row-wise absmax int8 quantization with outlier-column detection (LLM.int8() step 1), and
// the column-zeroing pass that follows once the outlier mask has been compacted.
// Spec: csrc/cuda/launchers.h and common.cuh (numerics).
#include <cstring>

#include "common.cuh"

namespace int8kern {
namespace cuda {
namespace {

// A "unit" is what one thread loads with one instruction: a 16-byte vector of
// 16 / sizeof(T) elements (kVec, needs 16-byte aligned rows and K % (16 / sizeof(T)) == 0),
// or a single element (any alignment, any K).
template <typename T, bool kVec>
struct RowUnit;

template <typename T>
struct RowUnit<T, true> {
  static constexpr int kElems = 16 / static_cast<int>(sizeof(T));
  using Raw = uint4;
  static INT8KERN_D Raw load(const T* row, int64_t u) {
    return __ldg(reinterpret_cast<const uint4*>(row) + u);
  }
  static INT8KERN_D void unpack(const Raw& r, float (&f)[kElems]) {
    T v[kElems];
    memcpy(v, &r, sizeof(v));
#pragma unroll
    for (int e = 0; e < kElems; ++e) f[e] = to_float(v[e]);
  }
  // q row offset u * kElems is a multiple of kElems bytes (K % kElems == 0, q 16B aligned).
  static INT8KERN_D void store_q(int8_t* qrow, int64_t u, const int8_t (&qv)[kElems]) {
    if constexpr (kElems == 4) {
      uint32_t w;
      memcpy(&w, qv, 4);
      *reinterpret_cast<uint32_t*>(qrow + u * 4) = w;
    } else {
      static_assert(kElems == 8, "16-byte vector of 2-byte elements");
      uint2 w;
      memcpy(&w, qv, 8);
      *reinterpret_cast<uint2*>(qrow + u * 8) = w;
    }
  }
};

template <typename T>
struct RowUnit<T, false> {
  static constexpr int kElems = 1;
  using Raw = T;
  static INT8KERN_D Raw load(const T* row, int64_t u) { return row[u]; }
  static INT8KERN_D void unpack(const Raw& r, float (&f)[1]) { f[0] = to_float(r); }
  static INT8KERN_D void store_q(int8_t* qrow, int64_t u, const int8_t (&qv)[1]) { qrow[u] = qv[0]; }
};

// One element's contribution to the row absmax, all on abs_bits patterns (common.cuh):
// outliers (threshold <= |v| < inf, only when threshold > 0) mark their column and are
// excluded; NaN and Inf never are, and propagate through the unsigned max (NaN bits > inf bits).
INT8KERN_D void observe(float v, int64_t col, bool use_threshold, uint32_t threshold_bits,
                        uint8_t* outlier_mask, uint32_t& amax_bits) {
  const uint32_t a = abs_bits(v);
  if (use_threshold && is_outlier_bits(a, threshold_bits)) {
    if (outlier_mask != nullptr) set_flag_relaxed(outlier_mask + col);  // many threads may set it
  } else {
    amax_bits = umax(amax_bits, a);
  }
}

template <typename U>
INT8KERN_D void quantize_unit(const typename U::Raw& raw, float scale, int8_t* qrow, int64_t u) {
  float f[U::kElems];
  U::unpack(raw, f);
  int8_t qv[U::kElems];
#pragma unroll
  for (int e = 0; e < U::kElems; ++e) qv[e] = float_to_int8_sat127(fmul_rn(f[e], scale));
  U::store_q(qrow, u, qv);
}

// quantize_rowwise_kernel
//   A "group" of kGroup threads owns one row at a time (kGroup = 32: one warp per row,
//   kRowsPerBlock = 8 rows per 256-thread block, for short rows; kGroup = 256: one block per
//   row for long rows). Rows are visited with a grid-stride loop (grid.x <= 2^31-1).
//   Pass 1 loads the row (units strided by kGroup so a warp's loads are contiguous), keeping
//   it in registers when it fits (units <= kGroup * kCache: one read of x), marks outlier
//   columns and reduces the NaN-propagating absmax (warp shuffles, then shared memory across
//   the warps of a block-wide group). Pass 2 quantizes from the register copy, or re-reads
//   the row from global (L2-resident) when it did not fit.
//   Bytes: K * sizeof(T) read (2x for rows too long to cache), K written, 4 (absmax); ~3
//   flops per element.
//   (min blocks 1 in __launch_bounds__: without it ptxas 13 aims at 64 registers and
//   spills the register-cached row.)
template <typename T, bool kVec, int kGroup, int kRowsPerBlock, int kCache>
__global__ void __launch_bounds__(kGroup* kRowsPerBlock, 1)
    quantize_rowwise_kernel(const T* __restrict__ x, int64_t M, int64_t K, int64_t ldx,
                            float threshold, int8_t* __restrict__ q,
                            float* __restrict__ row_absmax, uint8_t* __restrict__ outlier_mask) {
  static_assert(kGroup % 32 == 0, "a group is whole warps");
  // Block-wide groups use __syncthreads: every thread of the block must see the same row
  // count, which holds only with one group per block.
  static_assert(kGroup == 32 || kRowsPerBlock == 1, "multi-warp groups: one row per block");
  using U = RowUnit<T, kVec>;
  constexpr int E = U::kElems;
  constexpr int kWarps = kGroup / 32;
  __shared__ uint32_t red[kRowsPerBlock][kWarps];

  const int group = static_cast<int>(threadIdx.x) / kGroup;
  const int tid = static_cast<int>(threadIdx.x) % kGroup;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t units = K / E;  // exact: the host picks kVec only when K % E == 0
  // threshold > 0 (a positive number, +inf included) <=> sign bit clear and bits != 0; a NaN
  // threshold can match no element (is_outlier_bits is false against NaN bits).
  const uint32_t threshold_bits = __float_as_uint(threshold);
  const bool use_threshold = static_cast<int32_t>(threshold_bits) > 0;
  const bool cached = units <= static_cast<int64_t>(kGroup) * kCache;

  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + group; row < M;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const T* xrow = x + row * ldx;
    int8_t* qrow = q + row * K;
    uint32_t amax = 0u;  // abs_bits of the running absmax
    typename U::Raw cache[kCache];

    // ---- pass 1: load, outliers, absmax ----
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCache; ++c) {
        const int64_t u = tid + static_cast<int64_t>(c) * kGroup;
        if (u < units) {
          cache[c] = U::load(xrow, u);
          float f[E];
          U::unpack(cache[c], f);
#pragma unroll
          for (int e = 0; e < E; ++e)
            observe(f[e], u * E + e, use_threshold, threshold_bits, outlier_mask, amax);
        }
      }
    } else {
      for (int64_t u = tid; u < units; u += kGroup) {
        float f[E];
        U::unpack(U::load(xrow, u), f);
#pragma unroll
        for (int e = 0; e < E; ++e)
          observe(f[e], u * E + e, use_threshold, threshold_bits, outlier_mask, amax);
      }
    }

    // ---- group-wide NaN-propagating max ----
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
      amax = umax(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if constexpr (kWarps > 1) {
      if (lane == 0) red[group][tid / 32] = amax;
      __syncthreads();
      amax = red[group][0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) amax = umax(amax, red[group][w]);
      __syncthreads();  // red is rewritten for the next row
    }

    // scale = absmax > 0 ? 127 / absmax : 0 (one IEEE division per row): 0 for an all-zero
    // or all-outlier row, 0 for +inf absmax (127 / inf), and 0 for NaN absmax, whose row then
    // quantizes to all 0 (x * 0 is 0, or NaN for inf x, and NaN -> 0).
    const float amax_f = __uint_as_float(amax);
    const float scale = abs_bits_positive(amax) ? fdiv_rn(127.0f, amax_f) : 0.0f;
    if (tid == 0) row_absmax[row] = amax_f;

    // ---- pass 2: quantize ----
    if (cached) {
#pragma unroll
      for (int c = 0; c < kCache; ++c) {
        const int64_t u = tid + static_cast<int64_t>(c) * kGroup;
        if (u < units) quantize_unit<U>(cache[c], scale, qrow, u);
      }
    } else {
      for (int64_t u = tid; u < units; u += kGroup) quantize_unit<U>(U::load(xrow, u), scale, qrow, u);
    }
  }
}

template <typename T, bool kVec, int kCache>
void launch_quantize_variant(const T* x, int64_t M, int64_t K, int64_t ldx, float threshold,
                             int8_t* q, float* row_absmax, uint8_t* outlier_mask,
                             cudaStream_t stream) {
  constexpr int E = RowUnit<T, kVec>::kElems;
  const int64_t units = K / E;
  if (units <= 32 * kCache) {
    constexpr int kRows = 8;  // 8 warps, one row each
    const int64_t grid = min_of(ceil_div<int64_t>(M, kRows), kMaxGridX);
    INT8KERN_LAUNCH(static_cast<unsigned>(grid), 32 * kRows, 0, stream, quantize_rowwise_kernel<T, kVec, 32, kRows, kCache>)(x, M, K, ldx, threshold, q,
                                                                 row_absmax, outlier_mask);
  } else {
    constexpr int kThreads = 256;  // one block per row
    const int64_t grid = min_of(M, kMaxGridX);
    INT8KERN_LAUNCH(static_cast<unsigned>(grid), kThreads, 0, stream, quantize_rowwise_kernel<T, kVec, kThreads, 1, kCache>)(x, M, K, ldx, threshold, q,
                                                               row_absmax, outlier_mask);
  }
}

template <typename T>
void launch_quantize_typed(const void* xv, int64_t M, int64_t K, int64_t ldx, float threshold,
                           int8_t* q, float* row_absmax, uint8_t* outlier_mask,
                           cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  constexpr int64_t E = 16 / sizeof(T);
  // 16-byte path: every row start of x is 16B aligned, every unit stays inside the row, and
  // q's row starts (q + row * K) are aligned to the E-byte vector stores.
  const bool vec = is_aligned(x, 16) && is_aligned(q, 16) &&
                   (ldx * static_cast<int64_t>(sizeof(T))) % 16 == 0 && K % E == 0;
  if (vec) {
    // 8 x 16 B cached per thread: rows up to 256 units per warp / 2048 per block
    // (f32: 1024 / 8192 elements, f16/bf16: 2048 / 16384) are read once.
    launch_quantize_variant<T, true, 8>(x, M, K, ldx, threshold, q, row_absmax, outlier_mask,
                                        stream);
  } else {
    // 16 elements cached per thread: rows up to 512 (warp) / 4096 (block) elements.
    launch_quantize_variant<T, false, 16>(x, M, K, ldx, threshold, q, row_absmax, outlier_mask,
                                          stream);
  }
}

// zero_columns_kernel: block (32, 8); threadIdx.y picks one of 8 rows, threadIdx.x strides
// over the column list; rows by grid-stride loop. Writes M * n_cols bytes, reads the column
// list (cached in L1/L2) once per row.
__global__ void __launch_bounds__(256)
    zero_columns_kernel(int8_t* __restrict__ q, int64_t M, int64_t K,
                        const int64_t* __restrict__ cols, int64_t n_cols) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < M;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    int8_t* qrow = q + r * K;
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) {
      const int64_t col = cols[c];
      if (col >= 0 && col < K) qrow[col] = 0;  // defensive: host validated the indices
    }
  }
}

}  // namespace

void launch_quantize_rowwise(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx,
                             float threshold, int8_t* q, float* row_absmax,
                             uint8_t* outlier_mask, cudaStream_t stream) {
  // K == 0 still launches: every row_absmax becomes 0.
  if (M <= 0 || K < 0) return;
  switch (x_dtype) {
    case DType::Float16:
      launch_quantize_typed<__half>(x, M, K, ldx, threshold, q, row_absmax, outlier_mask, stream);
      break;
    case DType::BFloat16:
      launch_quantize_typed<__nv_bfloat16>(x, M, K, ldx, threshold, q, row_absmax, outlier_mask,
                                           stream);
      break;
    default:
      launch_quantize_typed<float>(x, M, K, ldx, threshold, q, row_absmax, outlier_mask, stream);
      break;
  }
}

void launch_zero_columns(int8_t* q, int64_t M, int64_t K, const int64_t* cols, int64_t n_cols,
                         cudaStream_t stream) {
  if (M <= 0 || K <= 0 || n_cols <= 0) return;
  const dim3 block(32, 8);
  const int64_t grid = min_of(ceil_div<int64_t>(M, 8), kMaxGridX);
  INT8KERN_LAUNCH(static_cast<unsigned>(grid), block, 0, stream, zero_columns_kernel)(q, M, K, cols, n_cols);
}

}  // namespace cuda
}  // namespace int8kern
