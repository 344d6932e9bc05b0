// The outlier path of the sync-free CUDA int8_linear (ops_cuda.cpp): compaction of the
// outlier mask into a column list and count that stay on the device, the gather that zeroes
// q's outlier columns and builds the fixed-shape operands of the cuBLAS outlier product, and
// the spill kernel for more outlier columns than that fixed shape holds.
// Spec: csrc/cuda/launchers.h; capacity: csrc/outlier_capacity.h.
#include "common.cuh"

namespace int8kern {
namespace cuda {
namespace {

constexpr int kCap = kOutlierCapacity;

// The outlier count as the kernels use it: clamped to [0, K] so that a corrupt count can
// never index past cols (it cannot be corrupt: launch_compact_columns wrote it).
INT8KERN_D int read_count(const int32_t* n_cols, int64_t K) {
  const int n = *n_cols;
  return n < 0 ? 0 : (n > K ? static_cast<int>(K) : n);
}

// T(float(w) * scale): the reference's dequantized weight element, scale = absmax / 127.
template <typename T>
INT8KERN_D T dequant_weight(int8_t w, float scale) {
  return from_float<T>(fmul_rn(static_cast<float>(w), scale));
}

// compact_columns_kernel
//   One block of kThreads threads walks the mask in chunks of kThreads * kItems bytes; each
//   thread owns kItems consecutive bytes (one 16-byte load when aligned and in bounds), turns
//   them into a bit set, and a block-wide exclusive scan of the popcounts (warp shuffles, then
//   one warp over the 32 warp totals) gives where its columns go. Thread order = column
//   order and chunks go in order, so cols comes out ascending, as nonzero() would give it.
//   Bytes: K read, 4 per outlier column written; K <= 131071 is at most 8 chunks.
constexpr int kCompactThreads = 1024;
constexpr int kCompactItems = 16;
constexpr int kCompactWarps = kCompactThreads / 32;
static_assert(kCompactWarps == 32, "one warp scans the warp totals");

__global__ void __launch_bounds__(kCompactThreads)
    compact_columns_kernel(const uint8_t* __restrict__ mask, int64_t K, int32_t* __restrict__ cols,
                           int32_t* __restrict__ n_cols) {
  __shared__ int32_t warp_incl[kCompactWarps];  // inclusive scan of the warp totals
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32, warp = tid / 32;
  int32_t base = 0;  // columns found in earlier chunks; the same in every thread
  for (int64_t chunk = 0; chunk < K; chunk += static_cast<int64_t>(kCompactThreads) * kCompactItems) {
    const int64_t first = chunk + static_cast<int64_t>(tid) * kCompactItems;
    uint32_t bits = 0;
    if (first + kCompactItems <= K && is_aligned(mask + first, 16)) {
      const uint4 v = *reinterpret_cast<const uint4*>(mask + first);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < kCompactItems; ++i)
        if ((w[i / 4] >> (8 * (i % 4))) & 0xffu) bits |= 1u << i;
    } else {
#pragma unroll
      for (int i = 0; i < kCompactItems; ++i)
        if (first + i < K && mask[first + i] != 0) bits |= 1u << i;
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
      int t = warp_incl[lane];
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, t, off);
        if (lane >= off) t += v;
      }
      warp_incl[lane] = t;  // each lane rewrites only its own entry, after reading it
    }
    __syncthreads();
    int32_t pos = base + (warp > 0 ? warp_incl[warp - 1] : 0) + incl - count;
    while (bits != 0u) {
      const int i = __ffs(static_cast<int>(bits)) - 1;
      bits &= bits - 1u;
      cols[pos++] = static_cast<int32_t>(first + i);
    }
    base += warp_incl[kCompactWarps - 1];
    __syncthreads();  // warp_incl is rewritten by the next chunk
  }
  if (tid == 0) *n_cols = base;
}

// gather_outliers_kernel
//   Block (32, 8): threadIdx.y picks one of 8 "rows", threadIdx.x strides over columns; rows
//   [0, M) are rows of x (zero q's outlier columns, gather x_out), rows [M, M + N) rows of the
//   weight (gather and dequantize w_out), one launch for both; grid-stride over rows.
//   Bytes per x row: n bytes of q written, min(n, CAP) elements of x read, CAP written; per
//   weight row: min(n, CAP) bytes read, CAP elements written; the column list stays in L1.
template <typename T>
__global__ void __launch_bounds__(256) gather_outliers_kernel(const OutlierParams p) {
  const int n = read_count(p.n_cols, p.K);
  const int n_cap = n < kCap ? n : kCap;
  const T zero = from_float<T>(0.0f);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  T* __restrict__ x_out = static_cast<T*>(p.x_out);
  T* __restrict__ w_out = static_cast<T*>(p.w_out);
  const int64_t rows = p.M + p.N;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    if (r < p.M) {
      int8_t* qrow = p.q + r * p.K;
      for (int c = threadIdx.x; c < n; c += blockDim.x) qrow[p.cols[c]] = 0;
      const T* xrow = x + r * p.ldx;
      T* orow = x_out + r * kCap;
      for (int c = threadIdx.x; c < kCap; c += blockDim.x) orow[c] = c < n_cap ? xrow[p.cols[c]] : zero;
    } else {
      const int64_t j = r - p.M;
      const float scale = absmax_to_scale(p.weight_absmax[j]);
      const int8_t* wrow = p.weight + j * p.ldw;
      T* orow = w_out + j * kCap;
      for (int c = threadIdx.x; c < kCap; c += blockDim.x)
        orow[c] = c < n_cap ? dequant_weight<T>(wrow[p.cols[c]], scale) : zero;
    }
  }
}

// outlier_spill_kernel
//   Only when n > CAP. A plain shared-memory SGEMM over the gathered columns: 64 x 64 output
//   tile per block, 256 threads as 16 x 16, each thread 4 x 4 outputs (rows ty + 16 i,
//   columns tx + 16 jj), columns in chunks of 16 staged in shared memory as float (x values,
//   and weight values already dequantized and rounded to T, as w_out holds them). Tiles by
//   grid-stride, so the grid can stay small for the common n <= CAP case. Per tile:
//   64 * n elements of x and 64 * n weight bytes gathered, 2 * 64 * 64 * n flops.
constexpr int kSpillTile = 64;
constexpr int kSpillChunk = 16;
constexpr int kSpillThreads = 256;
static_assert(kSpillTile * kSpillChunk % kSpillThreads == 0, "every thread stages as many");
static_assert(kSpillThreads == 16 * 16 && kSpillTile == 16 * 4, "16 x 16 threads, 4 x 4 each");

template <typename T>
__global__ void __launch_bounds__(kSpillThreads) outlier_spill_kernel(const OutlierParams p) {
  const int n = read_count(p.n_cols, p.K);
  if (n <= kCap) return;  // the cuBLAS product already holds every outlier column
  // +1 pad: the loads write xs[cc][r] with 16 consecutive threads on 16 different cc.
  __shared__ float xs[kSpillChunk][kSpillTile + 1];
  __shared__ float ws[kSpillChunk][kSpillTile + 1];
  __shared__ float s_scale[kSpillTile];
  const T* __restrict__ x = static_cast<const T*>(p.x);
  T* __restrict__ add = static_cast<T*>(p.add);
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  const int64_t tiles_n = ceil_div<int64_t>(p.N, kSpillTile);
  const int64_t tiles = ceil_div<int64_t>(p.M, kSpillTile) * tiles_n;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = (tile / tiles_n) * kSpillTile;
    const int64_t n0 = (tile % tiles_n) * kSpillTile;
    if (tid < kSpillTile) {
      const int64_t j = n0 + tid;
      s_scale[tid] = j < p.N ? absmax_to_scale(p.weight_absmax[j]) : 0.0f;
    }
    __syncthreads();
    // float64: each product of two float32 values is exact, and the sum over up to K columns
    // (ascending) is rounded once at the end, as the CPU kernels do; a float32 running sum
    // of a few hundred large terms misses the reference's accuracy (the CUDA emulator's
    // property test found it: float32, every one of 200 columns an outlier).
    double acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) acc[i][jj] = 0.0;

    for (int c0 = 0; c0 < n; c0 += kSpillChunk) {
#pragma unroll
      for (int k = 0; k < kSpillTile * kSpillChunk / kSpillThreads; ++k) {
        const int e = tid + k * kSpillThreads;
        const int r = e / kSpillChunk, cc = e % kSpillChunk;
        const int c = c0 + cc;
        const bool in = c < n;
        const int64_t col = in ? p.cols[c] : 0;
        const int64_t i = m0 + r, j = n0 + r;
        xs[cc][r] = in && i < p.M ? to_float(x[i * p.ldx + col]) : 0.0f;
        ws[cc][r] = in && j < p.N ? to_float(dequant_weight<T>(p.weight[j * p.ldw + col], s_scale[r]))
                                  : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int cc = 0; cc < kSpillChunk; ++cc) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = xs[cc][ty + 16 * i];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) b[jj] = ws[cc][tx + 16 * jj];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int jj = 0; jj < 4; ++jj)
            acc[i][jj] = fma(static_cast<double>(a[i]), static_cast<double>(b[jj]), acc[i][jj]);
      }
      __syncthreads();  // xs/ws are refilled by the next chunk; s_scale by the next tile
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = m0 + ty + 16 * i;
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int64_t col = n0 + tx + 16 * jj;
        if (row < p.M && col < p.N) add[row * p.ld_add + col] = from_double<T>(acc[i][jj]);
      }
    }
  }
}

}  // namespace

void launch_compact_columns(const uint8_t* mask, int64_t K, int32_t* cols, int32_t* n_cols,
                            cudaStream_t stream) {
  // K == 0 still launches: the count must be written.
  if (K < 0) return;
  INT8KERN_LAUNCH(1, kCompactThreads, 0, stream, compact_columns_kernel)(mask, K, cols, n_cols);
}

void launch_gather_outliers(const OutlierParams& p, cudaStream_t stream) {
  if (p.M < 0 || p.N < 0 || p.M + p.N == 0) return;
  const dim3 block(32, 8);
  const unsigned grid =
      static_cast<unsigned>(min_of(ceil_div<int64_t>(p.M + p.N, 8), kMaxGridX));
  switch (p.dtype) {
    case DType::Float16:
      INT8KERN_LAUNCH(grid, block, 0, stream, gather_outliers_kernel<__half>)(p);
      break;
    case DType::BFloat16:
      INT8KERN_LAUNCH(grid, block, 0, stream, gather_outliers_kernel<__nv_bfloat16>)(p);
      break;
    default:
      INT8KERN_LAUNCH(grid, block, 0, stream, gather_outliers_kernel<float>)(p);
      break;
  }
}

void launch_outlier_spill(const OutlierParams& p, int max_blocks, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return;
  const int64_t tiles = ceil_div<int64_t>(p.M, kSpillTile) * ceil_div<int64_t>(p.N, kSpillTile);
  const int64_t cap = max_blocks > 0 ? max_blocks : 1;
  const unsigned grid = static_cast<unsigned>(min_of(tiles, cap));
  switch (p.dtype) {
    case DType::Float16:
      INT8KERN_LAUNCH(grid, kSpillThreads, 0, stream, outlier_spill_kernel<__half>)(p);
      break;
    case DType::BFloat16:
      INT8KERN_LAUNCH(grid, kSpillThreads, 0, stream, outlier_spill_kernel<__nv_bfloat16>)(p);
      break;
    default:
      INT8KERN_LAUNCH(grid, kSpillThreads, 0, stream, outlier_spill_kernel<float>)(p);
      break;
  }
}

}  // namespace cuda
}  // namespace int8kern
