// int8 x int8 -> int32 GEMM for sm_90a (H100, H200): wgmma.mma_async from shared memory, TMA loads
// completing on mbarriers, a warp-specialised producer/consumer pipeline, and the epilogues of
// common.cuh applied to the accumulators in registers (same float ops, same bits as the
// mma.sync kernel in gemm_mma.cu). C[i, j] = sum_k a[i, k] * b[j, k], exact int32.
//
// STATUS: written and compiled without a GPU; it has not run on hardware. launch_int8_gemm uses
// it only when INT8KERN_CUDA_GEMM=wgmma (see gemm_mma.cu); the selftest and tests/test_wgmma.py
// are what an H100/H200 session runs to validate it before it may become the default on sm_90.
// This file is sm_90a code only: setup.py compiles it alone with -gencode
// arch=compute_90a,code=sm_90a and links it only into builds whose arch list has 9.0a.
//
// int8_gemm_wgmma_kernel
//   Block tile 128 x 128 (M x N), k-stage 128 bytes, kStages = 5 stages of 32 KB in dynamic
//   shared memory. 384 threads = 3 warpgroups:
//     warpgroup 0: producer. One thread issues, per k-stage, two TMA box loads (A: 128 rows x
//       128 bytes, B: 128 rows x 128 bytes) onto the stage's `full` mbarrier, after waiting on
//       its `empty` mbarrier. setmaxnreg.dec gives its registers to the consumers.
//     warpgroups 1, 2: consumers. Warpgroup c owns tile rows 64c..64c+63 x all 128 columns:
//       per k-stage 4 x wgmma.m64n128k32.s32.s8.s8 (64 int32 accumulators a thread), then the
//       epilogue straight from registers.
//   Persistent: grid = min(tiles, SMs), tiles visited M-fastest (blocks running together share
//   the B tile; A, the activations, is the small operand for LLM shapes and stays in L2); the
//   producer runs ahead into the next tile while the consumers do the epilogue.
//   Per tile: 256 * K bytes loaded (zero-filled past M, N, K by TMA), 2 * 128 * 128 * K int ops.
//
// Shared-memory operand layout, and why TMA and wgmma agree on it:
//   Each stage holds A as 128 rows x 128 bytes (row r at byte 128 r) and B likewise, each base
//   1024-byte aligned. The tensor maps use CU_TENSOR_MAP_SWIZZLE_128B with a 128-byte inner box
//   (the maximum that swizzle mode allows), so TMA stores the 16-byte chunk c of row r at chunk
//   c ^ (r % 8) of that row: the "128B swizzle" is an XOR of address bits [4:6] with bits
//   [7:9]. wgmma's 128B-swizzle mode (descriptor bits 62-63 = 1) applies the same XOR to the
//   addresses it generates, which is why every operand base must be 1024-byte aligned (base
//   offset field 0): bits [7:9] of a row's address are then r % 8 for both.
//   Descriptor (PTX ISA "matrix descriptor format"): bits 0-13 start address >> 4, bits 16-29
//   LBO >> 4, bits 32-45 SBO >> 4, bits 49-51 base offset, bits 62-63 swizzle mode.
//     K-major + 128B swizzle: the 8-row x 16-byte core matrices adjacent in K are the
//     consecutive 16-byte chunks of the same 128-byte swizzled rows, so LBO is not used (set to
//     1, as CUTLASS does); SBO = 1024 = the distance between 8-row groups along M (or N).
//     For k-step s (32 bytes = k32 of int8) the start address advances by 32 s bytes inside the
//     128-byte row: the hardware adds the offset before swizzling, i.e. it reads logical chunks
//     2s, 2s+1 of each row, exactly where TMA put them (DeepGEMM/CUTLASS advance the same way).
//     Consumer c's A starts 64c rows = 8192 c bytes in: still 1024-aligned.
//   int8 wgmma requires both operands K-major (transpose is f16/bf16 only), which is what a
//   [M, K] and b [N, K] (nn.Linear weight) are.
//
// Accumulator fragment of wgmma.m64nNk32 .s32 (PTX ISA, "WGMMA .m64nNk32 register fragment
// layout for accumulator matrix D"; CuTe's CLayout_64xN, stride ((128,1,16),(64,8,512)) over a
// column-major 64 x N tile, says the same): warp w (0-3) of the warpgroup holds rows 16w..16w+15;
// with g = lane >> 2, t = lane & 3, register d[i] for i in [0, N/2) holds
//   row 16w + g + 8 * ((i >> 1) & 1),   column 8 * (i >> 2) + 2t + (i & 1).
// (The same per-8x8 pattern as mma.m16n8k32's C fragment, repeated along N.)
//
// Pipeline protocol (per stage s; phase bit flips each time the stage index wraps):
//   full[s]  (count 1): producer arrive.expect_tx(32768) then 2 TMA loads complete_tx on it;
//                       consumers wait parity `phase`.
//   empty[s] (count 8): lane 0 of each of the 8 consumer warps arrives once the wgmma group that
//                       read stage s has completed (wgmma.wait_group); the producer waits parity
//                       `phase ^ 1` before refilling (passes at once on the first round: a fresh
//                       mbarrier's preceding phase, parity 1, counts as complete).
//   Consumers keep one wgmma group in flight: after committing k-stage kt they wait until at
//   most 1 group is pending, so k-stage kt-1's reads are done and its stage is released.
//   TMA writes and wgmma reads both go through the async proxy, ordered by the mbarriers; no
//   generic-proxy shared-memory write ever feeds a wgmma or a TMA, so no proxy fence is needed.
#include <cuda.h>          // CUtensorMap and its enums (types only: no libcuda link)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

#include <atomic>

#include "epilogue.cuh"

// wgmma and setmaxnreg exist only on sm_90a; nvcc 13 defines __CUDA_ARCH_FEAT_SM90_ALL for
// -gencode arch=compute_90a,code=sm_90a (plain sm_90 and sm_80 do not).
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "gemm_wgmma.cu is sm_90a code: compile it with -gencode arch=compute_90a,code=sm_90a only"
#endif

namespace int8kern {
namespace cuda {
namespace {

struct WgmmaTile {
  static constexpr int BM = 128, BN = 128;
  static constexpr int BK = 128;           // bytes of K per stage = the 128B swizzle width
  static constexpr int kK = 32;            // K of one wgmma (int8)
  static constexpr int kStages = 5;
  static constexpr int kConsumerWGs = 2;   // each owns 64 rows
  static constexpr int kThreads = 128 * (1 + kConsumerWGs);
  static constexpr int kConsumerWarps = 4 * kConsumerWGs;
  static constexpr int kAcc = BN / 2;      // int32 accumulators per consumer thread
  static constexpr int kABytes = BM * BK, kBBytes = BN * BK;
  static constexpr int kStageBytes = kABytes + kBBytes;  // TMA transaction bytes per stage
  // Dynamic shared memory: stages, then the 2 x kStages mbarriers, then s_row / s_col; plus
  // 1024 bytes of slack to align the base by hand (the runtime only promises 16).
  static constexpr int kBarOffset = kStages * kStageBytes;
  static constexpr int kRowOffset = kBarOffset + 2 * kStages * 8;
  static constexpr int kColOffset = kRowOffset + BM * 4;
  static constexpr int kSmemBytes = kColOffset + BN * 4 + 1024;
  // Register hand-off: the block starts with kLaunchRegs per thread (what __launch_bounds__
  // (384, 1) lets ptxas use: 65536 / 384 rounded down to the allocation unit of 8); the
  // producer gives some back (setmaxnreg.dec) and the consumers take them (setmaxnreg.inc).
  // The .inc waits until the block's pool holds what it asks for, so the kernel hangs unless
  // 128 * kProducerRegs + 256 * kConsumerRegs <= 384 * (registers ptxas actually allocated):
  // checked here against kLaunchRegs, and at run time against the loaded kernel's count.
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;  // 168
  static constexpr int kProducerRegs = 40;   // 128 * 40 + 256 * 232 = 64512 = 384 * 168
  static constexpr int kConsumerRegs = 232;
  static constexpr int kHandOffRegs = 128 * kProducerRegs + 128 * kConsumerWGs * kConsumerRegs;
  static_assert(kABytes % 1024 == 0 && kBBytes % 1024 == 0, "1024B-aligned operand tiles");
  static_assert(BK == 128, "one 128B swizzle row per tile row");
  static_assert(kSmemBytes <= 227 * 1024, "H100 opt-in shared memory per block");
  static_assert(kHandOffRegs <= kThreads * kLaunchRegs, "setmaxnreg hand-off exceeds the block's registers");
};

// Where consumer thread's accumulator d[idx] sits in the 128 x 128 block tile (see top).
struct WgmmaAccLayout {
  static constexpr int kCount = WgmmaTile::kAcc;
  int row0;  // 64 * consumer warpgroup + 16 * warp in warpgroup + (lane >> 2)
  int t;     // lane & 3
  INT8KERN_D int row(int idx) const { return row0 + ((idx >> 1) & 1) * 8; }
  INT8KERN_D int col(int idx) const { return (idx >> 2) * 8 + 2 * t + (idx & 1); }
};

// ----------------------------------------------------------------------------------------
// PTX wrappers (sm_90a only).
// ----------------------------------------------------------------------------------------
INT8KERN_D void mbar_init(uint32_t bar, uint32_t count INT8KERN_CALL_SITE) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::mbar_init(bar, count, file, line);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
// Makes the mbarrier inits visible to the async proxy (TMA complete_tx) before first use.
INT8KERN_D void fence_mbar_init() {
#ifdef INT8KERN_EMU
  // the emulated mbarriers are visible to the emulated TMA at once
#else
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
INT8KERN_D void mbar_arrive(uint32_t bar INT8KERN_CALL_SITE) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::mbar_arrive(bar, 0, file, line);
#else
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
INT8KERN_D void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes INT8KERN_CALL_SITE) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::mbar_arrive(bar, bytes, file, line);
#else
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
#endif
}
// Spins until the phase of parity `parity` has completed (try_wait suspends for a
// system-dependent time between polls, so the loop is not a hot spin).
INT8KERN_D void mbar_wait(uint32_t bar, uint32_t parity INT8KERN_CALL_SITE) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::mbar_wait(bar, parity, file, line);
#else
  asm volatile(
      "{\n"
      ".reg .pred P;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P, [%0], %1;\n"
      "@!P bra WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}

INT8KERN_D void prefetch_tmap(const CUtensorMap* m) {
#ifdef INT8KERN_EMU
  (void)m;  // a hint
#else
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(m)) : "memory");
#endif
}
// 2-D TMA box load: box origin (x = k element, y = row), completing on mbarrier `bar`.
// Out-of-bounds parts of the box are zero-filled, and still count towards complete_tx.
INT8KERN_D void tma_load_2d(uint32_t dst, const CUtensorMap* m, int32_t x, int32_t y,
                            uint32_t bar INT8KERN_CALL_SITE) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::tma_load_2d(dst, m, x, y, bar, file, line);
#else
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(m)), "r"(x), "r"(y), "r"(bar)
      : "memory");
#endif
}

template <int kRegs>
INT8KERN_D void setmaxnreg_inc(INT8KERN_CALL_SITE_ONLY) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::setmaxnreg(true, kRegs, file, line);
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
INT8KERN_D void setmaxnreg_dec(INT8KERN_CALL_SITE_ONLY) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::setmaxnreg(false, kRegs, file, line);
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}

INT8KERN_D void named_barrier_sync(int id, int threads INT8KERN_CALL_SITE) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::bar_sync(id, threads, file, line);
#else
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
#endif
}

// K-major, 128B-swizzled operand descriptor for a tile starting at shared address `addr`
// (1024-aligned; see top): LBO field 1 (unused), SBO 1024 >> 4, swizzle mode 1 (128B).
INT8KERN_D uint64_t make_desc_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (1ull << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

INT8KERN_D void wgmma_fence(INT8KERN_CALL_SITE_ONLY) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::wgmma_fence(file, line);
#else
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
INT8KERN_D void wgmma_commit(INT8KERN_CALL_SITE_ONLY) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::wgmma_commit(file, line);
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
INT8KERN_D void wgmma_wait(INT8KERN_CALL_SITE_ONLY) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::wgmma_wait(N, file, line);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// The compiler sees the accumulators only as asm operands; this empty asm "redefines" each
// after a wgmma.wait_group, so no read of them can be scheduled above the wait (and no write
// below the next wgmma.fence).
INT8KERN_D void fence_acc(int32_t (&d)[WgmmaTile::kAcc]) {
#ifdef INT8KERN_EMU
  (void)d;  // the emulated wait has written the accumulators
#else
#pragma unroll
  for (int i = 0; i < WgmmaTile::kAcc; ++i) asm volatile("" : "+r"(d[i])::"memory");
#endif
}

// d (64 x 128, s32) += A (64 x 32, s8, K-major smem) * B (32 x 128, s8, K-major smem).
// scale-d = 1 always: the accumulators are zeroed in registers at the start of each tile.
INT8KERN_D void wgmma_m64n128k32_s8(int32_t (&d)[WgmmaTile::kAcc], uint64_t desc_a,
                                    uint64_t desc_b INT8KERN_CALL_SITE) {
#ifdef INT8KERN_EMU
  ::int8kern::emu::wgmma_m64nNk32_s8(d, 128, desc_a, desc_b, file, line);
#else
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p;\n"
      "}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),
        "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]),
        "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]),
        "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]),
        "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
        "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]),
        "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]),
        "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]),
        "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]),
        "+r"(d[62]), "+r"(d[63])
      : "l"(desc_a), "l"(desc_b), "n"(1));
#endif
}

template <class Epilogue>
__global__ void __launch_bounds__(WgmmaTile::kThreads, 1)
    int8_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_a,
                           const __grid_constant__ CUtensorMap tmap_b, int64_t M, int64_t N,
                           int64_t K, const Epilogue epi) {
  using T = WgmmaTile;
  INT8KERN_DYNAMIC_SHARED(uint8_t, smem_raw, 1024);
  // 128B swizzle needs 1024-aligned operand tiles (see top); align the base by hand.
  const uint32_t raw = smem_u32(smem_raw);
  uint8_t* smem = smem_raw + ((1024u - (raw & 1023u)) & 1023u);
  const uint32_t sbase = smem_u32(smem);
  const uint32_t full_bar = sbase + T::kBarOffset;             // + 8 s
  const uint32_t empty_bar = full_bar + 8 * T::kStages;        // + 8 s
  float* s_row = reinterpret_cast<float*>(smem + T::kRowOffset);
  float* s_col = reinterpret_cast<float*>(smem + T::kColOffset);

  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid / 128;
  const int lane = tid & 31;

  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < T::kStages; ++s) {
      mbar_init(full_bar + 8 * s, 1);
      mbar_init(empty_bar + 8 * s, T::kConsumerWarps);
    }
    fence_mbar_init();
    prefetch_tmap(&tmap_a);
    prefetch_tmap(&tmap_b);
  }
  __syncthreads();  // barriers initialised before anyone waits on or arrives at them

  const int64_t tiles_m = ceil_div<int64_t>(M, T::BM);
  const int64_t tiles = tiles_m * ceil_div<int64_t>(N, T::BN);
  const int ktiles = static_cast<int>(ceil_div<int64_t>(K, T::BK));  // K <= 2^31 checked

  if (wg == 0) {
    // ---------------------------------------------------------------- producer
    setmaxnreg_dec<T::kProducerRegs>();
    if (tid == 0) {
      int stage = 0;
      uint32_t phase = 0;
      for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int32_t m0 = static_cast<int32_t>((tile % tiles_m) * T::BM);
        const int32_t n0 = static_cast<int32_t>((tile / tiles_m) * T::BN);
        for (int kt = 0; kt < ktiles; ++kt) {
#ifdef INT8KERN_PLANT_WRONG_MBARRIER_PARITY_EMPTY  // test plant for tests/test_emu_selftest.py; never defined in a normal build
          mbar_wait(empty_bar + 8 * stage, phase);
#else
          mbar_wait(empty_bar + 8 * stage, phase ^ 1u);
#endif
          const uint32_t fb = full_bar + 8 * stage;
          mbar_arrive_expect_tx(fb, T::kStageBytes);
          const uint32_t sa = sbase + stage * T::kStageBytes;
          tma_load_2d(sa, &tmap_a, kt * T::BK, m0, fb);
          tma_load_2d(sa + T::kABytes, &tmap_b, kt * T::BK, n0, fb);
          if (++stage == T::kStages) {
            stage = 0;
            phase ^= 1u;
          }
        }
      }
    }
  } else {
    // ---------------------------------------------------------------- consumers
    setmaxnreg_inc<T::kConsumerRegs>();
    const int c = wg - 1;                  // consumer warpgroup: tile rows 64c..64c+63
    const int ctid = tid - 128;            // 0..255
    const int warp_in_wg = (tid >> 5) & 3;
    const WgmmaAccLayout lay{64 * c + 16 * warp_in_wg + (lane >> 2), lane & 3};
    int stage = 0;
    uint32_t phase = 0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const TileCtx ctx{(tile % tiles_m) * T::BM, (tile / tiles_m) * T::BN, T::BM, T::BN, M, N,
                        s_row, s_col};
      // Both consumer warpgroups are done reading the previous tile's s_row / s_col ...
      named_barrier_sync(1, 128 * T::kConsumerWGs);
      epi.prologue(s_row, s_col, ctx, ctid, 128 * T::kConsumerWGs);
      // ... and this tile's are written, before any epilogue reads them.
      named_barrier_sync(1, 128 * T::kConsumerWGs);

      int32_t acc[T::kAcc];
#pragma unroll
      for (int i = 0; i < T::kAcc; ++i) acc[i] = 0;

      int prev_stage = 0;
      for (int kt = 0; kt < ktiles; ++kt) {
#ifdef INT8KERN_PLANT_WRONG_MBARRIER_PARITY_FULL  // test plant for tests/test_emu_selftest.py; never defined in a normal build
        mbar_wait(full_bar + 8 * stage, phase ^ 1u);
#else
        mbar_wait(full_bar + 8 * stage, phase);
#endif
        const uint32_t sa = sbase + stage * T::kStageBytes + c * (64 * T::BK);
        const uint32_t sb = sbase + stage * T::kStageBytes + T::kABytes;
        const uint64_t da = make_desc_sw128(sa), db = make_desc_sw128(sb);
        wgmma_fence();  // orders the zeroing / earlier register accesses before the wgmmas
#pragma unroll
        for (int ks = 0; ks < T::BK / T::kK; ++ks) {
          // +32 bytes per k-step = +2 in the start-address field (16-byte units).
          wgmma_m64n128k32_s8(acc, da + 2 * ks, db + 2 * ks);
        }
        wgmma_commit();
        wgmma_wait<1>();  // k-stage kt-1's group has completed: its stage may be refilled
        fence_acc(acc);
        if (kt > 0 && lane == 0) mbar_arrive(empty_bar + 8 * prev_stage);
        prev_stage = stage;
        if (++stage == T::kStages) {
          stage = 0;
          phase ^= 1u;
        }
      }
      wgmma_wait<0>();
      fence_acc(acc);
      if (lane == 0) mbar_arrive(empty_bar + 8 * prev_stage);  // ktiles >= 1 (K >= 1)

      epi.apply(acc, lay, ctx);
    }
  }
}

// ----------------------------------------------------------------------------------------
// Host side.
// ----------------------------------------------------------------------------------------

// cuTensorMapEncodeTiled through the runtime's driver entry point, so the extension needs no
// -lcuda. CUDA 12.5+ has the versioned query (the unversioned one is deprecated in 13); ask for
// the 12.0 ABI of the function, the one PFN_cuTensorMapEncodeTiled_v12000 describes.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q);
#else
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &q);
#endif
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();  // a refusal here must not surface as the next launch's error
      p = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// 2-D int8 tensor map over rows x K (row stride ld bytes), box 128 x 128, 128B swizzle,
// out-of-bounds elements read as zero (OOB_FILL_NONE fills zeros; the NaN fill is for floats).
bool encode_operand_map(CUtensorMap* m, const int8_t* base, int64_t rows, int64_t K, int64_t ld,
                        int box_rows) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld)};  // bytes, dims 1.. only
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(WgmmaTile::BK),
                             static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode(m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2,
                            const_cast<void*>(static_cast<const void*>(base)), dims, strides, box,
                            elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

// Per device, computed once: 0 = not yet known, else 1 + the WgmmaStatus of the kernel there
// (kLaunched: usable). Usable means: compute capability exactly 9.0 (sm_90a code runs on 9.0
// only), enough opt-in shared memory, the kernels given the registers their hand-off needs,
// and their dynamic shared-memory limit raised (done here, once per device).
constexpr int kMaxDevices = 64;
std::atomic<int> g_device_state[kMaxDevices];

template <class Epilogue>
WgmmaStatus prepare_kernel() {
  const auto kernel = int8_gemm_wgmma_kernel<Epilogue>;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) return WgmmaStatus::kNotSm90;
  // Another nvcc, -maxrregcount or a retune can change the count: then the consumers'
  // setmaxnreg.inc would wait forever for registers the block never had.
  if (attr.numRegs * WgmmaTile::kThreads < WgmmaTile::kHandOffRegs) return WgmmaStatus::kRegisterShortfall;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           WgmmaTile::kSmemBytes) != cudaSuccess)
    return WgmmaStatus::kNotSm90;
  return WgmmaStatus::kLaunched;
}

WgmmaStatus device_status(const DeviceProps& dev) {
  if (dev.device < 0 || dev.device >= kMaxDevices) return WgmmaStatus::kNotSm90;
  int state = g_device_state[dev.device].load(std::memory_order_acquire);
  if (state != 0) return static_cast<WgmmaStatus>(state - 1);
  WgmmaStatus s = WgmmaStatus::kLaunched;
  if (dev.error != cudaSuccess || dev.major != 9 || dev.minor != 0 || dev.sms <= 0 ||
      dev.smem_per_block_optin < WgmmaTile::kSmemBytes)
    s = WgmmaStatus::kNotSm90;
  if (s == WgmmaStatus::kLaunched) s = prepare_kernel<Int32Epilogue>();
  if (s == WgmmaStatus::kLaunched) s = prepare_kernel<DequantEpilogue>();
  if (s == WgmmaStatus::kLaunched && tensor_map_encoder() == nullptr) s = WgmmaStatus::kNoTensorMaps;
  if (s != WgmmaStatus::kLaunched) (void)cudaGetLastError();  // must not fail the next launch
  g_device_state[dev.device].store(1 + static_cast<int>(s), std::memory_order_release);  // idempotent if raced
  return s;
}

template <class Epilogue>
void launch_wgmma(const Int8GemmParams& p, const CUtensorMap& ta, const CUtensorMap& tb,
                  int sms, const Epilogue& epi, cudaStream_t stream) {
  const int64_t tiles = ceil_div<int64_t>(p.M, WgmmaTile::BM) * ceil_div<int64_t>(p.N, WgmmaTile::BN);
  const unsigned grid = static_cast<unsigned>(min_of<int64_t>(tiles, sms));
  INT8KERN_LAUNCH(grid, WgmmaTile::kThreads, WgmmaTile::kSmemBytes, stream, int8_gemm_wgmma_kernel<Epilogue>)(
      ta, tb, p.M, p.N, p.K, epi);
}

}  // namespace

int wgmma_kernel_registers() {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, int8_gemm_wgmma_kernel<DequantEpilogue>) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return attr.numRegs;
}
int wgmma_registers_needed() { return WgmmaTile::kHandOffRegs / WgmmaTile::kThreads; }

WgmmaStatus launch_int8_gemm_wgmma(const Int8GemmParams& p, cudaStream_t stream) {
  // Shapes: TMA box coordinates are int32; K = 0 has no k-stage (the mma path handles it).
  if (p.M <= 0 || p.N <= 0 || p.K <= 0) return WgmmaStatus::kNotApplicable;
  // (tile origins m0, n0 < M + 128 must fit too).
  if (p.M > INT32_MAX - 256 || p.N > INT32_MAX - 256 || p.K > INT32_MAX - 256)
    return WgmmaStatus::kNotApplicable;
  // TMA: global base 16-byte aligned, row strides (bytes) multiples of 16. Any K works: the box
  // is zero-filled past K, as it is past M and N.
  if (!is_aligned(p.a, 16) || !is_aligned(p.b, 16) || p.lda % 16 != 0 || p.ldb % 16 != 0 ||
      p.lda < p.K || p.ldb < p.K)
    return WgmmaStatus::kNotApplicable;
  const DeviceProps& dev = current_device_props();
  const WgmmaStatus status = device_status(dev);
  if (status != WgmmaStatus::kLaunched) return status;
  CUtensorMap ta, tb;
  if (!encode_operand_map(&ta, p.a, p.M, p.K, p.lda, WgmmaTile::BM) ||
      !encode_operand_map(&tb, p.b, p.N, p.K, p.ldb, WgmmaTile::BN))
    return WgmmaStatus::kNoTensorMaps;
  with_epilogue(p, [&](const auto& epi) { launch_wgmma(p, ta, tb, dev.sms, epi, stream); });
  return WgmmaStatus::kLaunched;
}

}  // namespace cuda
}  // namespace int8kern
