// The mma.sync GEMM's tile configurations and its planner: which kernel, tile and K split
// run a problem (launch_int8_gemm and int8_gemm_workspace_elems both ask plan_gemm, so the
// launch and the workspace it needs always agree). The tuning decisions of gemm_mma.cu live
// here, apart from its main loops.
#pragma once

#include <algorithm>

#include "common.cuh"

namespace int8kern {
namespace cuda {

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
  // BK = 128, 144 B = 36 banks: 0, 4, 8, ..., 28. Conflict free either way (and the cp.async
  // stores too, with load_tile's chunk order). It is a multiple of 16, as cp.async 16 and
  // ldmatrix need.
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

// Few output tiles (decode, M <= 16; mid sizes) run int8_gemm_splitk_kernel: a deeper
// pipeline, and K split across blocks.
// Decode: one m16 row block, so the weight is streamed once. 16x64 block tile with 128-byte k
// stages (each weight row contributes one full 128 B line per stage), 4 warps side by side in n (each 16x16 = 1 x 2 mma tiles, 8 accumulators), and a
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

// cp.async path: every row start of a and b is 16B aligned, so every 16-byte chunk at a
// k offset that is a multiple of 16 is aligned; chunks crossing K use byte loads.
inline bool operands_aligned(const Int8GemmParams& p) {
  return is_aligned(p.a, 16) && is_aligned(p.b, 16) && p.lda % 16 == 0 && p.ldb % 16 == 0;
}

// How launch_int8_gemm runs a problem. The one place that decides it: the launch and
// int8_gemm_workspace_elems both call plan_gemm, so they agree on the split.
//   kBig / kSmall: int8_gemm_kernel with BigTile / SmallTile, no split (the plain tiled plans,
//                  the only ones the wgmma kernel may take over);
//   kDecode / kMid: int8_gemm_splitk_kernel with DecodeTile / MidTile, split when it pays.
enum class Family { kBig, kSmall, kDecode, kMid };
struct GemmPlan {
  Family family = Family::kSmall;
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
void choose_split(GemmPlan& plan, const Int8GemmParams& p, bool can_split, const DeviceProps& dev) {
  const int64_t ktiles = ceil_div<int64_t>(p.K, Cfg::BK);
  plan.tiles = ceil_div<int64_t>(p.M, Cfg::BM) * ceil_div<int64_t>(p.N, Cfg::BN);
  plan.split = 1;
  plan.kt_per_split = ktiles;
  if (!can_split) return;
  if (dev.error != cudaSuccess || dev.sms <= 0) return;  // no split: correct, just slower
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

// dev: the device the GEMM runs on (current_device_props(); a test passes others).
inline GemmPlan plan_gemm(const Int8GemmParams& p, bool can_split, const DeviceProps& dev) {
  GemmPlan plan;
  if (p.M <= DecodeTile::BM) {
    // Decode: M fits one m16 row block, so each weight byte is read from HBM once, and the
    // BigTile / SmallTile alternatives would pad A to 64-128 rows and leave most SMs idle.
    plan.family = Family::kDecode;
    choose_split<DecodeTile>(plan, p, can_split, dev);
    return plan;
  }
  // Mid sizes (batched decode, short prompts): where SmallTile would be picked but its tiles
  // leave SMs idle, the same tile split along K (MidTile) fills them.
  const int64_t big_tiles = ceil_div<int64_t>(p.M, BigTile::BM) * ceil_div<int64_t>(p.N, BigTile::BN);
  const int64_t small_tiles =
      ceil_div<int64_t>(p.M, SmallTile::BM) * ceil_div<int64_t>(p.N, SmallTile::BN);
  if (can_split && big_tiles < 132 && small_tiles < dev.sms) {
    GemmPlan mid;
    mid.family = Family::kMid;
    choose_split<MidTile>(mid, p, can_split, dev);
    if (mid.split > 1) return mid;
  }
  // Big tiles only when they alone give about one wave on an A100/H100 (108 / 132 SMs).
  plan.family = big_tiles >= 132 ? Family::kBig : Family::kSmall;
  return plan;
}

inline bool is_plain_tiled(const GemmPlan& plan) {
  return plan.family == Family::kBig || plan.family == Family::kSmall;
}

}  // namespace cuda
}  // namespace int8kern
