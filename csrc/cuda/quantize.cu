// Row-wise absmax int8 quantization fused with the outlier bookkeeping (LLM.int8() step 1): one
// launch quantizes the rows, marks the outlier columns, and its last block turns the marks into
// the ascending column list the GEMM's outlier epilogue reads, zeroes q's outlier columns and
// leaves its workspace zero; plus the grid-wide column zeroing for many rows.
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

// ---- the outlier list, built by the last block of the quantize launch ----
//
// Every block marks the outlier columns of its rows in the byte mask (book.mask, in global
// memory), then counts itself in book.arrivals. The block that arrives last sees every mark (the
// threadFenceReduction pattern: each thread's stores, a fence, the counter) and
//   * compacts the mask into book.cols (ascending, as nonzero() gives it) and *book.n_cols,
//     clearing the marks as it reads them;
//   * with book.zero_q, zeroes q's outlier columns in every row (M * n bytes: cheap for the
//     few rows of decode; many rows use launch_zero_outlier_columns, the whole GPU);
//   * puts the counter back to 0.
// So the mask and the counter are zero after the launch as before it, and the next launch on the
// stream reuses them without a memset. No host ever reads the count.

// Block-wide compaction: kThreads threads walk the mask in chunks of kThreads * 16 bytes; each
// thread turns its 16 bytes into a bit set, a block-wide exclusive scan of the popcounts (warp
// shuffles, then one warp over the warp totals) gives where its columns go, and thread order =
// column order. Returns the count (the same in every thread). K <= 131071 (checks.h kMaxK).
template <int kThreads>
INT8KERN_D int32_t compact_and_clear_mask(uint8_t* mask, int64_t K, int32_t* cols) {
  constexpr int kItems = 16;
  constexpr int kWarps = kThreads / 32;
  static_assert(kThreads % 32 == 0 && kWarps <= 32, "one warp scans the warp totals");
  __shared__ int32_t warp_incl[kWarps];  // inclusive scan of the warp totals
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32, warp = tid / 32;
  int32_t base = 0;  // columns found in earlier chunks
  for (int64_t chunk = 0; chunk < K; chunk += static_cast<int64_t>(kThreads) * kItems) {
    const int64_t first = chunk + static_cast<int64_t>(tid) * kItems;
    uint32_t bits = 0;
    // Written by other blocks: read from L2 (.cg), never from a stale L1 line.
    if (first + kItems <= K && is_aligned(mask + first, 16)) {
      const uint4 v = __ldcg(reinterpret_cast<const uint4*>(mask + first));
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < kItems; ++i)
        if ((w[i / 4] >> (8 * (i % 4))) & 0xffu) bits |= 1u << i;
    } else {
#pragma unroll
      for (int i = 0; i < kItems; ++i)
        if (first + i < K && __ldcg(mask + first + i) != 0) bits |= 1u << i;
    }
    const int count = __popc(bits);
    int incl = count;  // inclusive scan within the warp
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += v;
    }
    if (lane == 31) warp_incl[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int t = lane < kWarps ? warp_incl[lane] : 0;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, t, off);
        if (lane >= off) t += v;
      }
      if (lane < kWarps) warp_incl[lane] = t;  // each lane rewrites only its own entry
    }
    __syncthreads();
    int32_t pos = base + (warp > 0 ? warp_incl[warp - 1] : 0) + incl - count;
    while (bits != 0u) {
      const int i = __ffs(static_cast<int>(bits)) - 1;
      bits &= bits - 1u;
      cols[pos++] = static_cast<int32_t>(first + i);
#ifndef INT8KERN_PLANT_OUTLIER_MASK_NOT_CLEARED  // test plant for tests/test_emu_selftest.py; never defined in a normal build
      mask[first + i] = 0;  // left zero for the next launch
#endif
    }
    base += warp_incl[kWarps - 1];
    __syncthreads();  // warp_incl is rewritten by the next chunk
  }
  return base;
}

template <int kThreads>
INT8KERN_D void finish_outlier_list(const OutlierBookkeeping& book, int8_t* q, int64_t M, int64_t K) {
  __shared__ int s_last;
  const int tid = static_cast<int>(threadIdx.x);
  // Release: this thread's mask marks and q stores are visible device-wide before thread 0
  // counts the block in.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const unsigned arrived = atomicAdd(book.arrivals, 1u);
    s_last = arrived == gridDim.x - 1 ? 1 : 0;
    if (s_last) __threadfence();  // acquire: pairs with the other blocks' fences
  }
  __syncthreads();
  if (s_last == 0) return;  // block-uniform
  const int32_t n = compact_and_clear_mask<kThreads>(book.mask, K, book.cols);
  __syncthreads();  // book.cols (global, this block's stores) visible to the whole block
  if (book.zero_q) {
    for (int64_t e = tid; e < M * n; e += kThreads) q[(e / n) * K + book.cols[e % n]] = 0;
  }
  if (tid == 0) {
    *book.n_cols = n;
    *book.arrivals = 0u;  // every block has arrived: nothing else touches it in this launch
  }
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
                            float* __restrict__ row_absmax, const OutlierBookkeeping book) {
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
  uint8_t* const outlier_mask = book.mask;

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

  if (outlier_mask != nullptr) finish_outlier_list<kGroup * kRowsPerBlock>(book, q, M, K);
}

template <typename T, bool kVec, int kCache>
void launch_quantize_variant(const T* x, int64_t M, int64_t K, int64_t ldx, float threshold,
                             int8_t* q, float* row_absmax, const OutlierBookkeeping& book,
                             cudaStream_t stream) {
  constexpr int E = RowUnit<T, kVec>::kElems;
  const int64_t units = K / E;
  if (units <= 32 * kCache) {
    constexpr int kRows = 8;  // 8 warps, one row each
    const int64_t grid = min_of(ceil_div<int64_t>(M, kRows), kMaxGridX);
    INT8KERN_LAUNCH(static_cast<unsigned>(grid), 32 * kRows, 0, stream,
                    quantize_rowwise_kernel<T, kVec, 32, kRows, kCache>)(x, M, K, ldx, threshold, q, row_absmax, book);
  } else {
    constexpr int kThreads = 256;  // one block per row
    const int64_t grid = min_of(M, kMaxGridX);
    INT8KERN_LAUNCH(static_cast<unsigned>(grid), kThreads, 0, stream,
                    quantize_rowwise_kernel<T, kVec, kThreads, 1, kCache>)(x, M, K, ldx, threshold, q, row_absmax, book);
  }
}

template <typename T>
void launch_quantize_typed(const void* xv, int64_t M, int64_t K, int64_t ldx, float threshold,
                           int8_t* q, float* row_absmax, const OutlierBookkeeping& book,
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
    launch_quantize_variant<T, true, 8>(x, M, K, ldx, threshold, q, row_absmax, book, stream);
  } else {
    // 16 elements cached per thread: rows up to 512 (warp) / 4096 (block) elements.
    launch_quantize_variant<T, false, 16>(x, M, K, ldx, threshold, q, row_absmax, book, stream);
  }
}

// zero_outlier_columns_kernel: block (32, 8); threadIdx.y picks one of 8 rows, threadIdx.x
// strides over the column list; rows by grid-stride loop. Writes M * n bytes, reads the column
// list (cached in L1/L2) once per row; the count is read on the device.
__global__ void __launch_bounds__(256)
    zero_outlier_columns_kernel(int8_t* __restrict__ q, int64_t M, int64_t K,
                                const int32_t* __restrict__ cols, const int32_t* __restrict__ n_cols) {
  const int n = *n_cols;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < M;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    int8_t* qrow = q + r * K;
    for (int c = threadIdx.x; c < n; c += blockDim.x) qrow[cols[c]] = 0;
  }
}

}  // namespace

void launch_quantize_rowwise(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx,
                             float threshold, int8_t* q, float* row_absmax,
                             const OutlierBookkeeping& book, cudaStream_t stream) {
  // K == 0 still launches: every row_absmax becomes 0 (and the outlier count 0).
  if (M <= 0 || K < 0) return;
  switch (x_dtype) {
    case DType::Float16:
      launch_quantize_typed<__half>(x, M, K, ldx, threshold, q, row_absmax, book, stream);
      break;
    case DType::BFloat16:
      launch_quantize_typed<__nv_bfloat16>(x, M, K, ldx, threshold, q, row_absmax, book, stream);
      break;
    default:
      launch_quantize_typed<float>(x, M, K, ldx, threshold, q, row_absmax, book, stream);
      break;
  }
}

void launch_zero_outlier_columns(int8_t* q, int64_t M, int64_t K, const int32_t* cols,
                                 const int32_t* n_cols, cudaStream_t stream) {
  if (M <= 0 || K <= 0) return;
  const dim3 block(32, 8);
  const int64_t grid = min_of(ceil_div<int64_t>(M, 8), kMaxGridX);
  INT8KERN_LAUNCH(static_cast<unsigned>(grid), block, 0, stream, zero_outlier_columns_kernel)(q, M, K, cols, n_cols);
}

}  // namespace cuda
}  // namespace int8kern
