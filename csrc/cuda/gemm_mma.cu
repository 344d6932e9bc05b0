// int8 x int8 -> int32 GEMM on tensor cores with mma.sync (sm_80+): the two kernels, their
// launchers, and launch_int8_gemm, the entry point of every CUDA GEMM (it also hands plain
// tiled problems to the sm_90a wgmma kernel when INT8KERN_CUDA_GEMM=wgmma).
// C[i, j] = sum_k a[i, k] * b[j, k], with an exact int32 accumulator and a separable epilogue
// (epilogue.cuh: int32 store, or the LLM.int8() dequantize + bias + residual add).
// Where the pieces are: PTX wrappers and fragment layouts in mma_ptx.cuh; tile copies, the
// per-stage ldmatrix + mma and the accumulator layout in gemm_mainloop.cuh; tile
// configurations and the planner (which kernel, tile and K split) in gemm_plan.cuh.
#include <cstdlib>
#include <cstring>

#include "epilogue.cuh"
#include "gemm_mainloop.cuh"
#include "gemm_plan.cuh"

namespace int8kern {
namespace cuda {
namespace {

// int8_gemm_kernel
//   Block tile BM x BN, k-stage BK = 64 bytes, 2-stage shared-memory double buffer
//   (cp.async for stage k+1 is in flight while stage k is computed). Warps tile the block as
//   kWarpsM x kWarpsN; each warp owns a WM x WN sub-tile = MI x NI mma.m16n8k32 tiles held
//   in MI * NI * 4 int32 registers. Block tiles are visited with a 2-D grid-stride loop
//   (grid.x over M tiles, grid.y <= max_grid_y() = 65535 over N tiles).
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
#ifndef INT8KERN_PLANT_MISSING_CP_ASYNC_WAIT  // test plant for tests/test_emu_selftest.py; never defined in a normal build
        cp_async_wait<1>();  // everything but the newest group (k-tile kt+1) has landed
#endif
#ifndef INT8KERN_PLANT_MISSING_SYNCTHREADS  // test plant for tests/test_emu_selftest.py; never defined in a normal build
        __syncthreads();     // ... for every thread's copies and plain stores
#endif
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

template <class Cfg, class Epilogue>
void launch_gemm_splitk(const Int8GemmParams& p, const GemmPlan& plan, const Epilogue& epi,
                        cudaStream_t stream) {
  const int64_t tiles_m = ceil_div<int64_t>(p.M, Cfg::BM);
  const int64_t tiles_n = ceil_div<int64_t>(p.N, Cfg::BN);
  // plan.split > 1 only when the caller gave a workspace (plan_gemm's can_split).
  int32_t* ws = plan.split > 1 ? p.workspace : nullptr;
  int32_t* counters = ws != nullptr ? ws + p.M * p.N : nullptr;
  const dim3 grid(static_cast<unsigned>(min_of<int64_t>(tiles_m, kMaxGridX)),
                  static_cast<unsigned>(min_of<int64_t>(tiles_n, max_grid_y())),
                  static_cast<unsigned>(plan.split));  // <= K / 512 <= 256
  INT8KERN_BOOL_SWITCH(operands_aligned(p), kAligned, [&] {
    INT8KERN_LAUNCH(grid, Cfg::kThreads, 0, stream, int8_gemm_splitk_kernel<Cfg, kAligned, Epilogue>)(
        p.a, p.b, p.M, p.N, p.K, p.lda, p.ldb, plan.kt_per_split, ws, counters, epi);
  });
}

template <class Cfg, class Epilogue>
void launch_gemm_tiled(const Int8GemmParams& p, const Epilogue& epi, cudaStream_t stream) {
  const int64_t tiles_m = ceil_div<int64_t>(p.M, Cfg::BM);
  const int64_t tiles_n = ceil_div<int64_t>(p.N, Cfg::BN);
  const dim3 grid(static_cast<unsigned>(min_of<int64_t>(tiles_m, kMaxGridX)),
                  static_cast<unsigned>(min_of<int64_t>(tiles_n, max_grid_y())));
  INT8KERN_BOOL_SWITCH(operands_aligned(p), kAligned, [&] {
    INT8KERN_LAUNCH(grid, Cfg::kThreads, 0, stream, int8_gemm_kernel<Cfg, kAligned, Epilogue>)(p.a, p.b, p.M, p.N, p.K, p.lda, p.ldb, epi);
  });
}

template <class Epilogue>
void launch_mma(const Int8GemmParams& p, const GemmPlan& plan, const Epilogue& epi,
                cudaStream_t stream) {
  switch (plan.family) {
    case Family::kDecode: launch_gemm_splitk<DecodeTile>(p, plan, epi, stream); break;
    case Family::kMid: launch_gemm_splitk<MidTile>(p, plan, epi, stream); break;
    case Family::kBig: launch_gemm_tiled<BigTile>(p, epi, stream); break;
    case Family::kSmall: launch_gemm_tiled<SmallTile>(p, epi, stream); break;
  }
}

// INT8KERN_CUDA_GEMM selects the main loop of plain tiled GEMMs: "mma" (default, any other
// value too) or "wgmma" (gemm_wgmma.cu on sm_90a, falling back to mma.sync wherever it does
// not apply). The default stays mma.sync because the wgmma kernel has been checked only by
// reasoning and compilation, never run on hardware; an H100/H200 session validates it first
// (selftest, tests/test_wgmma.py). Read on every call, not once: getenv is a short scan of the
// environment, small next to a kernel launch, and tests and benchmarks can then switch
// kernels inside one process (os.environ writes reach the C environment).
bool wgmma_requested() {
  const char* v = std::getenv("INT8KERN_CUDA_GEMM");
  return v != nullptr && std::strcmp(v, "wgmma") == 0;
}

}  // namespace

// gemm_wgmma.cu is sm_90a-only code, compiled and linked only when the build's arch list has
// 9.0a (setup.py). This weak declaration resolves to it when it is linked and to null when it
// is not, so this file needs no build flag to know which.
WgmmaStatus launch_int8_gemm_wgmma(const Int8GemmParams& params, cudaStream_t stream)
    __attribute__((weak));

int64_t int8_gemm_workspace_elems(const Int8GemmParams& p) {
  if (p.M <= 0 || p.N <= 0 || p.K < 0) return 0;  // launch_int8_gemm launches nothing
  // [M, N] int32 partial sums, then one arrival counter per output tile.
  const GemmPlan plan = plan_gemm(p, /*can_split=*/true, current_device_props());
  return plan.split > 1 ? p.M * p.N + plan.tiles : 0;
}

GemmLaunch launch_int8_gemm(const Int8GemmParams& p, cudaStream_t stream) {
  GemmLaunch launch;
  // K == 0 is allowed: the k loop does not run and the epilogue sees acc = 0.
  if (p.M <= 0 || p.N <= 0 || p.K < 0) return launch;
  // Decode and mid sizes are split-K plans (the weight streamed by every SM), which wgmma's
  // 128x128 tiles would run on a few SMs with most A rows zero: it takes plain tiled plans only.
  const GemmPlan plan = plan_gemm(p, p.workspace != nullptr, current_device_props());
  launch.wgmma_requested = wgmma_requested();
  if (launch.wgmma_requested && is_plain_tiled(plan)) {
    launch.wgmma = launch_int8_gemm_wgmma != nullptr ? launch_int8_gemm_wgmma(p, stream)
                                                     : WgmmaStatus::kNotBuilt;
    if (launch.wgmma == WgmmaStatus::kLaunched) return launch;
  }
  with_epilogue(p, [&](const auto& epi) { launch_mma(p, plan, epi, stream); });
  return launch;
}

const char* wgmma_status_message(WgmmaStatus status) {
  switch (status) {
    case WgmmaStatus::kLaunched: return "the wgmma kernel ran";
    case WgmmaStatus::kNotApplicable: return "the wgmma kernel does not apply to this shape or these strides";
    case WgmmaStatus::kNotBuilt:
      return "this build has no sm_90a code (TORCH_CUDA_ARCH_LIST had no 9.0a), so no wgmma kernel";
    case WgmmaStatus::kNotSm90: return "the wgmma kernel runs on compute capability 9.0 only";
    case WgmmaStatus::kRegisterShortfall:
      return "ptxas gave the wgmma kernel fewer registers than its setmaxnreg hand-off needs";
    case WgmmaStatus::kNoTensorMaps: return "the driver could not encode TMA tensor maps";
  }
  return "unknown";
}

}  // namespace cuda
}  // namespace int8kern
