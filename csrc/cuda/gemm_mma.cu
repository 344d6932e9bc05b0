// int8 x int8 -> int32 GEMM on tensor cores (mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32,
// sm_80+), C[i, j] = sum_k a[i, k] * b[j, k], with an exact int32 accumulator and a separable
// epilogue (int32 store, or the LLM.int8() dequantize + bias + residual add of common.cuh).
//
// Layouts: a is [M, K] (row stride lda), b is [N, K] (row stride ldb), both K-major; this is
// exactly mma's .row.col: A row-major, B "column-major" K x N = b's rows with K contiguous.
// Shared memory keeps the same K-major layout, so one ldmatrix (b16 view of 8 rows x 16 bytes)
// produces the int8 fragments directly, for A and for B alike.
//
// Fragment layouts (PTX ISA, mma.m16n8k32 .s8; g = lane >> 2, t = lane & 3; each .b32 holds
// four consecutive-k int8, lowest k in the low byte):
//   A (4 regs):  a0: row g,   k 4t..4t+3     a1: row g+8, k 4t..4t+3
//                a2: row g,   k 16+4t..+3    a3: row g+8, k 16+4t..+3
//   B (2 regs):  b0: col g,   k 4t..4t+3     b1: col g,   k 16+4t..+3
//   C (4 s32):   c0, c1: row g, cols 2t, 2t+1        c2, c3: row g+8, cols 2t, 2t+1
// ldmatrix.x4 gives register r[m] = matrix m (8 rows x 16 bytes, rows addressed by lanes
// 8m..8m+7), thread `lane` receiving row lane>>2, bytes 4*(lane&3)..+3 of it. So for A the
// four matrices are (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31),
// (rows 8-15, k 16-31) = a0..a3; for B, (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15),
// (n 8-15, k 16-31) = b0, b1 of n-block 0 then b0, b1 of n-block 1.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "common.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
#define INT8KERN_NO_MMA 1  // cp.async / int8 mma.m16n8k32 need sm_80: kernels trap
#endif

namespace int8kern {
namespace cuda {
namespace {

// ----------------------------------------------------------------------------------------
// PTX wrappers.
// ----------------------------------------------------------------------------------------
INT8KERN_D uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy, L1 bypass. Caller guarantees 16B alignment of both and that
// all 16 source bytes are in bounds.
INT8KERN_D void cp_async_16(uint32_t dst, const void* src) {
#ifndef INT8KERN_NO_MMA
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(src))
               : "memory");
#else
  __trap();
#endif
}
INT8KERN_D void cp_async_commit() {
#ifndef INT8KERN_NO_MMA
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
INT8KERN_D void cp_async_wait() {
#ifndef INT8KERN_NO_MMA
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

INT8KERN_D void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
#ifndef INT8KERN_NO_MMA
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#else
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

// c += a (16x32, row) * b (32x8, col), exact int32.
INT8KERN_D void mma_s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifndef INT8KERN_NO_MMA
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// ----------------------------------------------------------------------------------------
// Tile configuration.
// ----------------------------------------------------------------------------------------
template <int BM_, int BN_, int WM_, int WN_, int kMinBlocks_, int BK_ = 64, int kStages_ = 2>
struct TileConfig {
  static constexpr int BM = BM_;  // block tile rows (of a / C)
  static constexpr int BN = BN_;  // block tile cols (rows of b)
  static constexpr int BK = BK_;  // k bytes per stage (BK / 32 mma k-steps)
  static constexpr int WM = WM_;  // warp tile
  static constexpr int WN = WN_;
  static constexpr int kWarpsM = BM / WM;
  static constexpr int kWarpsN = BN / WN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int MI = WM / 16;  // m16 fragments per warp
  static constexpr int NI = WN / 8;   // n8 fragments per warp
  // Shared row stride in bytes: BK data + 16 pad. For BK = 64, 80 B = 20 banks, so the 8
  // 16-byte rows one ldmatrix phase reads start at banks 0, 20, 8, 28, 16, 4, 24, 12; for
  // BK = 128, 144 B = 36 banks: 0, 4, 8, ..., 28. Conflict free either way. It is a multiple
  // of 16, as cp.async 16 and ldmatrix need.
  static constexpr int kStride = BK + 16;
  static constexpr int kChunksPerRow = BK / 16;  // 16-byte chunks per tile row
  // Shared-memory stages: int8_gemm_kernel double-buffers (2); int8_gemm_splitk_kernel runs a
  // kStages-deep cp.async pipeline.
  static constexpr int kStages = kStages_;
  // __launch_bounds__ min blocks per SM: caps registers at 65536 / (kThreads * kMinBlocks)
  // so that ptxas does not trade occupancy for hoisting epilogue loads.
  static constexpr int kMinBlocks = kMinBlocks_;

  static_assert(BK % 32 == 0, "whole mma k-steps per stage");
  static_assert(BM % WM == 0 && BN % WN == 0, "warp tiling");
  static_assert(WM % 16 == 0 && WN % 16 == 0, "B fragments are loaded 2 n8-blocks at a time");
  static_assert((BM * kChunksPerRow) % kThreads == 0 && (BN * kChunksPerRow) % kThreads == 0,
                "every thread copies the same number of chunks");
  static_assert(kStages * (BM + BN) * kStride + 4 * (BM + BN) <= 48 * 1024,
                "static shared memory limit (stages + epilogue row/col data)");
};

// 128x128x64 tile, 8 warps as 2 (m) x 4 (n), each warp 64x32 = 4 x 4 mma tiles.
using BigTile = TileConfig<128, 128, 64, 32, 2>;
// 64x64x64 tile, 4 warps as 2 x 2, each warp 32x32 = 2 x 4 mma tiles (small problems: more
// blocks in flight, less zero padding).
using SmallTile = TileConfig<64, 64, 32, 32, 4>;

// Copy rows [row0, row0 + ROWS) x k bytes [k0, k0 + BK) of g (row stride ld, rows_total rows,
// K columns) into one shared stage laid out [ROWS][kStride]. Each 16-byte chunk is either
//   * cp.async'ed (kAligned and the whole chunk in bounds: the host checked g and ld are
//     16B aligned, and k0 + kc is a multiple of 16), or
//   * assembled from guarded byte loads, zero-filled past K (K tail; every chunk when
//     !kAligned), or
//   * zero (row past rows_total or chunk entirely past K).
// Never reads out of bounds. Ordering: the caller's cp.async.wait_group + __syncthreads makes
// both kinds of writes visible before any warp reads the stage.
template <class Cfg, int ROWS, bool kAligned>
INT8KERN_D void load_tile(int8_t* stage, const int8_t* __restrict__ g, int64_t ld,
                          int64_t rows_total, int64_t K, int64_t row0, int64_t k0, int tid) {
  constexpr int kChunks = ROWS * Cfg::kChunksPerRow;
#pragma unroll
  for (int it = 0; it < kChunks / Cfg::kThreads; ++it) {
    const int c = tid + it * Cfg::kThreads;
    const int r = c / Cfg::kChunksPerRow;
    const int kc = (c % Cfg::kChunksPerRow) * 16;
    int8_t* dst = stage + r * Cfg::kStride + kc;
    const int64_t gr = row0 + r;
    const int64_t gk = k0 + kc;
    if (gr < rows_total && gk < K) {
      const int8_t* src = g + gr * ld + gk;
      if (kAligned && gk + 16 <= K) {
        cp_async_16(smem_u32(dst), src);
      } else {
        const int64_t n = K - gk;  // >= 1 valid bytes
        uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int bi = 0; bi < 16; ++bi) {
          if (bi < n) w[bi >> 2] |= static_cast<uint32_t>(static_cast<uint8_t>(src[bi])) << ((bi & 3) * 8);
        }
        *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
      }
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// One BK = 64 stage: 2 k-steps of 32; per k-step each warp loads MI A fragments and NI B
// fragments with ldmatrix.x4 and issues MI * NI mma.m16n8k32.
template <class Cfg>
INT8KERN_D void compute_stage(const int8_t* sa, const int8_t* sb,
                              int32_t (&acc)[Cfg::MI][Cfg::NI][4], int warp_m, int warp_n,
                              int lane) {
#pragma unroll
  for (int kk = 0; kk < Cfg::BK; kk += 32) {
    uint32_t af[Cfg::MI][4];
    uint32_t bf[Cfg::NI][2];
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi) {
      // lanes 8m..8m+7 address matrix m: rows +8 for m odd, k +16 for m >= 2.
      const int row = warp_m * Cfg::WM + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      const int col = kk + (lane >> 4) * 16;
      ldmatrix_x4(af[mi], smem_u32(sa + row * Cfg::kStride + col));
    }
#pragma unroll
    for (int np = 0; np < Cfg::NI / 2; ++np) {
      // matrix m: n +8 for m >= 2, k +16 for m odd.
      const int row = warp_n * Cfg::WN + np * 16 + (lane & 7) + (lane >> 4) * 8;
      const int col = kk + ((lane >> 3) & 1) * 16;
      uint32_t r[4];
      ldmatrix_x4(r, smem_u32(sb + row * Cfg::kStride + col));
      bf[2 * np][0] = r[0];
      bf[2 * np][1] = r[1];
      bf[2 * np + 1][0] = r[2];
      bf[2 * np + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < Cfg::MI; ++mi) {
#pragma unroll
      for (int ni = 0; ni < Cfg::NI; ++ni) mma_s8_16832(acc[mi][ni], af[mi], bf[ni]);
    }
  }
}

// Where a warp's mma accumulators sit in the block tile, flattened for the epilogue:
// acc index idx = (mi * NI + ni) * 4 + c, with c the mma C register (c0..c3, see top).
template <int MI, int NI>
struct MmaAccLayout {
  static constexpr int kCount = MI * NI * 4;
  int wm0, wn0;  // warp tile origin inside the block tile
  int g, t;      // lane >> 2, lane & 3
  INT8KERN_D int row(int idx) const {
    const int mi = idx / (NI * 4);
    const int half = (idx >> 1) & 1;  // c2, c3 are 8 rows down
    return wm0 + mi * 16 + half * 8 + g;
  }
  INT8KERN_D int col(int idx) const {
    const int ni = (idx / 4) % NI;
    return wn0 + ni * 8 + 2 * t + (idx & 1);
  }
};

// int8_gemm_kernel
//   Block tile BM x BN, k-stage BK = 64 bytes, 2-stage shared-memory double buffer
//   (cp.async for stage k+1 is in flight while stage k is computed). Warps tile the block as
//   kWarpsM x kWarpsN; each warp owns a WM x WN sub-tile = MI x NI mma.m16n8k32 tiles held
//   in MI * NI * 4 int32 registers. Block tiles are visited with a 2-D grid-stride loop
//   (grid.x over M tiles, grid.y <= 65535 over N tiles).
//   Per block tile: (BM + BN) * K bytes loaded, 2 * BM * BN * K int ops, BM * BN outputs.
template <class Cfg, bool kAligned, class Epilogue>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    int8_gemm_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ b, int64_t M,
                     int64_t N, int64_t K, int64_t lda, int64_t ldb, const Epilogue epi) {
#ifdef INT8KERN_NO_MMA
  __trap();  // built for < sm_80 (never by default): the PTX wrappers below trap as well
#endif
  static_assert(Cfg::kStages == 2, "the k loop below is a double buffer");
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK;
  __shared__ __align__(16) int8_t sa[Cfg::kStages][BM * Cfg::kStride];
  __shared__ __align__(16) int8_t sb[Cfg::kStages][BN * Cfg::kStride];
  __shared__ float s_row[BM];  // per-tile epilogue data (row / column scales)
  __shared__ float s_col[BN];

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_m = warp / Cfg::kWarpsN;
  const int warp_n = warp % Cfg::kWarpsN;
  const int64_t tiles_m = ceil_div<int64_t>(M, BM);
  const int64_t tiles_n = ceil_div<int64_t>(N, BN);
  const int64_t ktiles = ceil_div<int64_t>(K, BK);
  const MmaAccLayout<Cfg::MI, Cfg::NI> lay{warp_m * Cfg::WM, warp_n * Cfg::WN, lane >> 2, lane & 3};

  for (int64_t tn = blockIdx.y; tn < tiles_n; tn += gridDim.y) {
    for (int64_t tm = blockIdx.x; tm < tiles_m; tm += gridDim.x) {
      const TileCtx ctx{tm * BM, tn * BN, BM, BN, M, N, s_row, s_col};

      // Every warp is done with the previous tile (its shared stages and its epilogue's
      // reads of s_row / s_col) before anything is overwritten.
      __syncthreads();
      epi.prologue(s_row, s_col, ctx, tid, Cfg::kThreads);

      int32_t acc[Cfg::MI][Cfg::NI][4];
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0;

      // Prologue: stage 0 <- k-tile 0.
      load_tile<Cfg, BM, kAligned>(sa[0], a, lda, M, K, ctx.m0, 0, tid);
      load_tile<Cfg, BN, kAligned>(sb[0], b, ldb, N, K, ctx.n0, 0, tid);
      cp_async_commit();

      for (int64_t kt = 0; kt < ktiles; ++kt) {
        const int cur = static_cast<int>(kt & 1);
        // Prefetch k-tile kt+1 into the other stage; it was last read at iteration kt-1,
        // which ended with __syncthreads.
        if (kt + 1 < ktiles) {
          load_tile<Cfg, BM, kAligned>(sa[cur ^ 1], a, lda, M, K, ctx.m0, (kt + 1) * BK, tid);
          load_tile<Cfg, BN, kAligned>(sb[cur ^ 1], b, ldb, N, K, ctx.n0, (kt + 1) * BK, tid);
        }
        cp_async_commit();   // possibly empty group: keeps the group count uniform
        cp_async_wait<1>();  // everything but the newest group (k-tile kt+1) has landed
        __syncthreads();     // ... for every thread's copies and plain stores
        compute_stage<Cfg>(sa[cur], sb[cur], acc, warp_m, warp_n, lane);
        __syncthreads();  // stage `cur` is overwritten by the prefetch of the next iteration
      }
      cp_async_wait<0>();  // nothing should be pending; keep it that way across tiles
      __syncthreads();     // prologue's shared writes visible even when K == 0 (no k loop)

      // Epilogue straight from the accumulator registers (flattened view, same storage).
      epi.apply(reinterpret_cast<const int32_t(&)[Cfg::MI * Cfg::NI * 4]>(acc), lay, ctx);
    }
  }
}

// ----------------------------------------------------------------------------------------
// Few output tiles (decode, M <= 16; mid sizes): a deeper pipeline and split-K across blocks.
// ----------------------------------------------------------------------------------------
// Decode: one m16 row block, so the weight is streamed once. 16x64 block tile with 128-byte k stages (each weight row contributes one full 128 B line per
// stage), 4 warps side by side in n (each 16x16 = 1 x 2 mma tiles, 8 accumulators), and a
// 4-stage cp.async pipeline: while one stage is computed, 3 x 64 x 128 B = 24 KiB of weight
// are in flight per block, ~96 KiB per H100 SM at the 4 blocks/SM its 46 KiB of shared memory
// allows. Little's law wants ~16 KB per SM (3.35 TB/s x ~600 ns = 2 MB over 132 SMs), so the
// pipeline covers latency even at 1-2 blocks per SM. At M = 1 only row 0 of the A tile is
// real: A is 1/5 of the shared bytes but ~1/64 of the global bytes (zero rows are st.shared).
using DecodeTile = TileConfig<16, 64, 16, 16, 4, 128, 4>;
// Mid sizes (16 < M, few tiles): SmallTile's shape and warps in the split-K kernel with a
// 3-stage pipeline (31 KiB of shared memory). 3 blocks per SM: at 4 (128 registers) sm_80
// spills.
using MidTile = TileConfig<64, 64, 32, 32, 3, 64, 3>;

// int8_gemm_splitk_kernel
//   Used where BigTile / SmallTile would leave SMs idle (see plan_gemm).
//   Block tile BM x BN over one K-slice: blockIdx.z = s of gridDim.z slices covers k-tiles
//   [s * kt_per_split, min(ktiles, (s + 1) * kt_per_split)) of BK bytes. kStages-deep
//   cp.async pipeline: local k-tile j sits in stage j % kStages and is commit group j, and
//   while it is computed the copies of k-tiles j+1 .. j+kStages-1 are in flight. Warps tile
//   the block as in int8_gemm_kernel; block tiles are visited by the same 2-D grid-stride loop.
//   gridDim.z == 1: the epilogue runs from the registers, as in int8_gemm_kernel.
//   gridDim.z > 1 (split-K): each block adds its int32 partial sums into ws [M, N] (row
//   stride N) with atomicAdd, then counts itself in counters[tile]; the block that arrives
//   last reads the finished sums back and applies the epilogue, once per element. Integer
//   addition is associative (and even wraps modulo 2^32 consistently), so the sums are exact
//   and do not depend on the order the slices arrive in: bit-exact, deterministic.
//   Self-cleaning: ws and counters must be all zero at launch, and the last block of each tile
//   puts zeros back (its ws elements after reading them, its counter), so the launch leaves
//   them all zero; a caller may reuse one buffer for successive launches on one stream.
//   Per block: (BM + BN) * K_slice bytes loaded, 2 * BM * BN * K_slice int ops, and with
//   split-K min(M, BM) * BN atomics plus one counter atomic.
template <class Cfg, bool kAligned, class Epilogue>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    int8_gemm_splitk_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ b,
                            int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                            int64_t kt_per_split, int32_t* __restrict__ ws,
                            int32_t* __restrict__ counters, const Epilogue epi) {
#ifdef INT8KERN_NO_MMA
  __trap();  // built for < sm_80 (never by default): the PTX wrappers trap as well
#endif
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, S = Cfg::kStages;
  static_assert(S >= 2, "a pipeline needs at least two stages");
  using Layout = MmaAccLayout<Cfg::MI, Cfg::NI>;
  __shared__ __align__(16) int8_t sa[S][BM * Cfg::kStride];
  __shared__ __align__(16) int8_t sb[S][BN * Cfg::kStride];
  __shared__ float s_row[BM];  // per-tile epilogue data (row / column scales)
  __shared__ float s_col[BN];
  __shared__ int s_last;  // split-K: this block arrived last at the current tile

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int warp_m = warp / Cfg::kWarpsN;
  const int warp_n = warp % Cfg::kWarpsN;
  const int64_t tiles_m = ceil_div<int64_t>(M, BM);
  const int64_t tiles_n = ceil_div<int64_t>(N, BN);
  const int64_t ktiles = ceil_div<int64_t>(K, BK);
  const int nsplit = static_cast<int>(gridDim.z);
  const int64_t kt0 = static_cast<int64_t>(blockIdx.z) * kt_per_split;
  // k-tiles of this slice; the host never makes an empty slice, but one would still be
  // correct (it adds zeros and arrives).
  const int64_t nkt = kt0 < ktiles ? min_of<int64_t>(kt_per_split, ktiles - kt0) : 0;
  const Layout lay{warp_m * Cfg::WM, warp_n * Cfg::WN, lane >> 2, lane & 3};

  for (int64_t tn = blockIdx.y; tn < tiles_n; tn += gridDim.y) {
    for (int64_t tm = blockIdx.x; tm < tiles_m; tm += gridDim.x) {
      const TileCtx ctx{tm * BM, tn * BN, BM, BN, M, N, s_row, s_col};

      // Every warp is done with the previous tile (its stages, s_row / s_col, s_last) before
      // anything is overwritten.
      __syncthreads();

      int32_t acc[Cfg::MI][Cfg::NI][4];
#pragma unroll
      for (int mi = 0; mi < Cfg::MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::NI; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0;

      // Fill: local k-tiles 0 .. S-2 into stages 0 .. S-2, one commit group each (empty past
      // the slice, so that group g always holds local k-tile g). Not unrolled: unrolled,
      // ptxas hoists the byte-path loads of all S-1 stages (15 chunks x 16 bytes) and spills.
#pragma unroll 1
      for (int st = 0; st < S - 1; ++st) {
        if (st < nkt) {
          const int64_t k0 = (kt0 + st) * BK;
          load_tile<Cfg, BM, kAligned>(sa[st], a, lda, M, K, ctx.m0, k0, tid);
          load_tile<Cfg, BN, kAligned>(sb[st], b, ldb, N, K, ctx.n0, k0, tid);
        }
        cp_async_commit();
      }
      int rd = 0;      // stage of local k-tile j
      int wr = S - 1;  // stage of local k-tile j + S - 1 (= the stage k-tile j - 1 used)
#pragma unroll 1
      for (int64_t j = 0; j < nkt; ++j) {
        // S - 1 + j groups committed; group j (k-tile j) has landed once at most the S - 2
        // newer ones are pending.
        cp_async_wait<S - 2>();
        // k-tile j visible to every thread (cp.async and plain zero / byte-path stores), and
        // every warp is done computing k-tile j - 1, whose stage `wr` is refilled next.
        __syncthreads();
        if (j + S - 1 < nkt) {
          const int64_t k0 = (kt0 + j + S - 1) * BK;
          load_tile<Cfg, BM, kAligned>(sa[wr], a, lda, M, K, ctx.m0, k0, tid);
          load_tile<Cfg, BN, kAligned>(sb[wr], b, ldb, N, K, ctx.n0, k0, tid);
        }
        cp_async_commit();  // possibly empty: keeps "group j = k-tile j"
        compute_stage<Cfg>(sa[rd], sb[rd], acc, warp_m, warp_n, lane);
        rd = rd + 1 == S ? 0 : rd + 1;
        wr = wr + 1 == S ? 0 : wr + 1;
      }
      cp_async_wait<0>();  // only empty groups can be left; keep none across tiles

      int32_t(&flat)[Layout::kCount] = reinterpret_cast<int32_t(&)[Layout::kCount]>(acc);
      if (nsplit > 1) {
        const int64_t tile = tm * tiles_n + tn;
#pragma unroll
        for (int idx = 0; idx < Layout::kCount; ++idx) {
          const int64_t i = ctx.m0 + lay.row(idx);
          const int64_t j = ctx.n0 + lay.col(idx);
          if (i < M && j < N) atomicAdd(ws + i * N + j, flat[idx]);  // result unused: RED
        }
        // Release: this thread's adds are visible device-wide before thread 0 counts the
        // block in (the threadFenceReduction pattern of the CUDA samples).
        __threadfence();
        __syncthreads();
        if (tid == 0) {
          const int arrived = atomicAdd(counters + tile, 1);
          const bool last = arrived == nsplit - 1;
          if (last) {
            // Every slice has arrived: nothing else touches this counter in this launch.
            atomicExch(counters + tile, 0);
            __threadfence();  // acquire: pairs with the other slices' fences above
          }
          s_last = last ? 1 : 0;
        }
        __syncthreads();
        if (s_last == 0) continue;  // block-uniform
        // The finished sums, from L2 (.cg: never a stale L1 line), and zeros put back.
#pragma unroll
        for (int idx = 0; idx < Layout::kCount; ++idx) {
          const int64_t i = ctx.m0 + lay.row(idx);
          const int64_t j = ctx.n0 + lay.col(idx);
          if (i < M && j < N) {
            int32_t* p = ws + i * N + j;
            flat[idx] = __ldcg(p);
            __stcg(p, 0);
          }
        }
      }
      // Once per output element: by the only block (no split) or by the last slice's block.
      epi.prologue(s_row, s_col, ctx, tid, Cfg::kThreads);
      __syncthreads();
      epi.apply(flat, lay, ctx);
    }
  }
}

// cp.async path: every row start of a and b is 16B aligned, so every 16-byte chunk at a
// k offset that is a multiple of 16 is aligned; chunks crossing K use byte loads.
bool operands_aligned(const Int8GemmParams& p) {
  return is_aligned(p.a, 16) && is_aligned(p.b, 16) && p.lda % 16 == 0 && p.ldb % 16 == 0;
}

// Multiprocessor count and shared memory per SM of the current device, queried once per
// device (the attribute queries cost microseconds, a decode GEMM a few microseconds).
struct DeviceInfo {
  int sms;
  int smem_per_sm;
};
DeviceInfo current_device_info() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached_sms[kMaxDevices] = {};  // 0: not queried yet
  static std::atomic<int> cached_smem[kMaxDevices] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
  const bool cacheable = dev >= 0 && dev < kMaxDevices;
  if (cacheable) {
    const int sms = cached_sms[dev].load(std::memory_order_relaxed);
    const int smem = cached_smem[dev].load(std::memory_order_relaxed);
    if (sms > 0 && smem > 0) return {sms, smem};
  }
  int sms = 0, smem = 0;
  if (dev < 0 || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess ||
      sms <= 0 || smem <= 0) {
    return {132, 228 * 1024};  // H100 SXM; only the split factor depends on it, never results
  }
  if (cacheable) {  // racing threads store the same values
    cached_sms[dev].store(sms, std::memory_order_relaxed);
    cached_smem[dev].store(smem, std::memory_order_relaxed);
  }
  return {sms, smem};
}

// How launch_int8_gemm runs a problem. The one place that decides it: the launch and
// int8_gemm_workspace_elems both call plan_gemm, so they agree on the split.
enum class Family { kTiled, kDecode, kMid };
struct GemmPlan {
  Family family = Family::kTiled;  // kTiled: int8_gemm_kernel with BigTile / SmallTile
  int64_t split = 1;               // K-slices per output tile (gridDim.z); > 1 needs the workspace
  int64_t kt_per_split = 0;        // k-tiles (Cfg::BK bytes) per slice
  int64_t tiles = 0;               // output tiles of the family's Cfg (= split-K counters)
};

// Below 512 bytes of K per slice, a block's pipeline fill, drain and atomics cost more than
// the bytes it streams.
constexpr int64_t kMinSliceBytes = 512;

// Split factor for int8_gemm_splitk_kernel<Cfg>: enough blocks for at least 2 per SM, up to
// one full wave of resident blocks; no more, since every extra slice adds M x N atomics and a
// pipeline fill. Even slices, none empty.
template <class Cfg>
void choose_split(GemmPlan& plan, const Int8GemmParams& p, bool can_split) {
  const int64_t ktiles = ceil_div<int64_t>(p.K, Cfg::BK);
  plan.tiles = ceil_div<int64_t>(p.M, Cfg::BM) * ceil_div<int64_t>(p.N, Cfg::BN);
  plan.split = 1;
  plan.kt_per_split = ktiles;
  if (!can_split) return;
  const DeviceInfo dev = current_device_info();
  // Blocks one SM holds at once: shared memory (1 KiB per block reserved by the runtime) or
  // the register cap of __launch_bounds__. DecodeTile: 4 on H100, 3 on A100.
  constexpr int64_t kSmem =
      Cfg::kStages * (Cfg::BM + Cfg::BN) * Cfg::kStride + 4 * (Cfg::BM + Cfg::BN) + 4;
  const int64_t resident = std::max<int64_t>(
      1, std::min<int64_t>(Cfg::kMinBlocks, dev.smem_per_sm / (kSmem + 1024)));
  int64_t split = std::max<int64_t>(ceil_div<int64_t>(2 * dev.sms, plan.tiles),
                                    resident * dev.sms / plan.tiles);
  split = std::min<int64_t>(split, ktiles / (kMinSliceBytes / Cfg::BK));
  if (split <= 1) return;
  // split >= 2 and ktiles >= 2 * (slice minimum) here, so kt_per_split < ktiles and the
  // recomputed split is >= 2 with its last slice non-empty.
  plan.kt_per_split = ceil_div<int64_t>(ktiles, split);
  plan.split = ceil_div<int64_t>(ktiles, plan.kt_per_split);
}

GemmPlan plan_gemm(const Int8GemmParams& p, bool can_split) {
  GemmPlan plan;
  if (p.M <= DecodeTile::BM) {
    // Decode: M fits one m16 row block, so each weight byte is read from HBM once, and the
    // BigTile / SmallTile alternatives would pad A to 64-128 rows and leave most SMs idle.
    plan.family = Family::kDecode;
    choose_split<DecodeTile>(plan, p, can_split);
    return plan;
  }
  // Mid sizes (batched decode, short prompts): where SmallTile would be picked but its tiles
  // leave SMs idle, the same tile split along K (MidTile) fills them.
  const int64_t big_tiles = ceil_div<int64_t>(p.M, BigTile::BM) * ceil_div<int64_t>(p.N, BigTile::BN);
  const int64_t small_tiles =
      ceil_div<int64_t>(p.M, SmallTile::BM) * ceil_div<int64_t>(p.N, SmallTile::BN);
  if (can_split && big_tiles < 132 && small_tiles < current_device_info().sms) {
    GemmPlan mid;
    mid.family = Family::kMid;
    choose_split<MidTile>(mid, p, can_split);
    if (mid.split > 1) return mid;
  }
  return plan;  // kTiled; launch_gemm_epi picks BigTile or SmallTile
}

template <class Cfg, class Epilogue>
void launch_gemm_splitk(const Int8GemmParams& p, const GemmPlan& plan, const Epilogue& epi,
                        cudaStream_t stream) {
  const int64_t tiles_m = ceil_div<int64_t>(p.M, Cfg::BM);
  const int64_t tiles_n = ceil_div<int64_t>(p.N, Cfg::BN);
  // plan.split > 1 only when the caller gave a workspace (plan_gemm's can_split).
  int32_t* ws = plan.split > 1 ? p.workspace : nullptr;
  int32_t* counters = ws != nullptr ? ws + p.M * p.N : nullptr;
  const dim3 grid(static_cast<unsigned>(min_of<int64_t>(tiles_m, kMaxGridX)),
                  static_cast<unsigned>(min_of<int64_t>(tiles_n, 65535)),
                  static_cast<unsigned>(plan.split));  // <= K / 512 <= 256
  if (operands_aligned(p)) {
    int8_gemm_splitk_kernel<Cfg, true, Epilogue><<<grid, Cfg::kThreads, 0, stream>>>(
        p.a, p.b, p.M, p.N, p.K, p.lda, p.ldb, plan.kt_per_split, ws, counters, epi);
  } else {
    int8_gemm_splitk_kernel<Cfg, false, Epilogue><<<grid, Cfg::kThreads, 0, stream>>>(
        p.a, p.b, p.M, p.N, p.K, p.lda, p.ldb, plan.kt_per_split, ws, counters, epi);
  }
}

template <class Cfg, class Epilogue>
void launch_gemm_cfg(const Int8GemmParams& p, const Epilogue& epi, cudaStream_t stream) {
  const bool aligned = operands_aligned(p);
  const int64_t tiles_m = ceil_div<int64_t>(p.M, Cfg::BM);
  const int64_t tiles_n = ceil_div<int64_t>(p.N, Cfg::BN);
  const dim3 grid(static_cast<unsigned>(min_of<int64_t>(tiles_m, kMaxGridX)),
                  static_cast<unsigned>(min_of<int64_t>(tiles_n, 65535)));
  if (aligned) {
    int8_gemm_kernel<Cfg, true, Epilogue>
        <<<grid, Cfg::kThreads, 0, stream>>>(p.a, p.b, p.M, p.N, p.K, p.lda, p.ldb, epi);
  } else {
    int8_gemm_kernel<Cfg, false, Epilogue>
        <<<grid, Cfg::kThreads, 0, stream>>>(p.a, p.b, p.M, p.N, p.K, p.lda, p.ldb, epi);
  }
}

template <class Epilogue>
void launch_gemm_epi(const Int8GemmParams& p, const Epilogue& epi, cudaStream_t stream) {
  // Decode regime (M <= 16): DecodeTile, split-K when a workspace was given; mid sizes with
  // few tiles: MidTile split-K (only with a workspace).
  const GemmPlan plan = plan_gemm(p, p.workspace != nullptr);
  if (plan.family == Family::kDecode) {
    launch_gemm_splitk<DecodeTile>(p, plan, epi, stream);
    return;
  }
  if (plan.family == Family::kMid) {
    launch_gemm_splitk<MidTile>(p, plan, epi, stream);
    return;
  }
  // Big tiles only when they alone give about one wave on an A100/H100 (108 / 132 SMs).
  const int64_t big_tiles = ceil_div<int64_t>(p.M, BigTile::BM) * ceil_div<int64_t>(p.N, BigTile::BN);
  if (big_tiles >= 132) {
    launch_gemm_cfg<BigTile>(p, epi, stream);
  } else {
    launch_gemm_cfg<SmallTile>(p, epi, stream);
  }
}

// INT8KERN_CUDA_GEMM selects the GEMM main loop: "mma" (default, any other value too) or
// "wgmma" (gemm_wgmma.cu on sm_90a, falling back to mma.sync wherever it does not apply).
// The default stays mma.sync because the wgmma kernel has been checked only by reasoning and
// compilation, never run on hardware; an H100 session validates it first (selftest,
// tests/test_wgmma.py). Read on every call, not once: getenv is a short scan of the
// environment, small next to a kernel launch, and tests and benchmarks can then switch
// kernels inside one process (os.environ writes reach the C environment).
bool wgmma_requested() {
  const char* v = std::getenv("INT8KERN_CUDA_GEMM");
  return v != nullptr && std::strcmp(v, "wgmma") == 0;
}

}  // namespace

int64_t int8_gemm_workspace_elems(const Int8GemmParams& p) {
  if (p.M <= 0 || p.N <= 0 || p.K < 0) return 0;  // launch_int8_gemm launches nothing
  // [M, N] int32 partial sums, then one arrival counter per output tile.
  const GemmPlan plan = plan_gemm(p, /*can_split=*/true);
  return plan.split > 1 ? p.M * p.N + plan.tiles : 0;
}

void launch_int8_gemm(const Int8GemmParams& p, cudaStream_t stream) {
  // K == 0 is allowed: the k loop does not run and the epilogue sees acc = 0.
  if (p.M <= 0 || p.N <= 0 || p.K < 0) return;
  if (wgmma_requested() && launch_int8_gemm_wgmma(p, stream)) return;
  if (p.out_int32) {
    const Int32Epilogue epi{static_cast<int32_t*>(p.out), p.ldo};
    launch_gemm_epi(p, epi, stream);
  } else {
    const DequantEpilogue epi{p.out,        p.ldo,  p.out_dtype, p.row_absmax, p.col_absmax,
                              p.bias,       p.add,  p.add_dtype, p.ld_add};
    launch_gemm_epi(p, epi, stream);
  }
}

}  // namespace cuda
}  // namespace int8kern
