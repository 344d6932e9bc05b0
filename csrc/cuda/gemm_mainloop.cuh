// The mma.sync GEMM's building blocks shared by its kernels (gemm_mma.cu): global -> shared
// tile copies, one k-stage of ldmatrix + mma on a warp tile, and where the accumulators sit.
#pragma once

#include "mma_ptx.cuh"

namespace int8kern {
namespace cuda {

// Copy rows [row0, row0 + ROWS) x k bytes [k0, k0 + BK) of g (row stride ld, rows_total rows,
// K columns) into one shared stage laid out [ROWS][kStride]. Each 16-byte chunk is either
//   * cp.async'ed (kAligned and the whole chunk in bounds: the host checked g and ld are
//     16B aligned, and k0 + kc is a multiple of 16), or
//   * assembled from guarded byte loads, zero-filled past K (K tail; every chunk when
//     !kAligned), or
//   * zero (row past rows_total or chunk entirely past K).
// Never reads out of bounds. Ordering: the caller's cp.async.wait_group + __syncthreads makes
// both kinds of writes visible before any warp reads the stage.
//
// Which thread copies which chunk: shared memory serves a warp's 16-byte stores 8 lanes (128
// bytes) at a time, so each 8-lane phase must hit 8 different 16-byte bank groups, and the warp
// as a whole should read whole 32-byte sectors of global memory. With 8 chunks a row (BK = 128,
// 144-byte rows) a phase is one row's 8 consecutive chunks. With 4 (BK = 64, 80-byte rows) two
// consecutive rows would collide (row r + 1's last chunk lands on row r's first bank group:
// 80 = 5 groups), so a warp takes 8 rows x 4 chunks with phase q storing chunk q of the 8 rows
// (groups 5r + q mod 8, all different: the same pattern ldmatrix reads); the warp still reads
// each row's 64 contiguous bytes. The CUDA emulator counts the wavefronts
// (tests/test_emu_profile.py: 4 per warp request, conflict-free).
template <class Cfg>
INT8KERN_D void chunk_of(int c, int& r, int& kc) {
  if constexpr (Cfg::kChunksPerRow == 4) {
    const int lane = c % 32;
    r = (c / 32) * 8 + lane % 8;
    kc = (lane / 8) * 16;
  } else {
    static_assert(Cfg::kChunksPerRow == 8, "copy layouts for BK = 64 and BK = 128");
    r = c / Cfg::kChunksPerRow;
    kc = (c % Cfg::kChunksPerRow) * 16;
  }
}

template <class Cfg, int ROWS, bool kAligned>
INT8KERN_D void load_tile(int8_t* stage, const int8_t* __restrict__ g, int64_t ld,
                          int64_t rows_total, int64_t K, int64_t row0, int64_t k0, int tid) {
  constexpr int kChunks = ROWS * Cfg::kChunksPerRow;
  static_assert(Cfg::kChunksPerRow != 4 || ROWS % 8 == 0, "8-row copy groups");
#pragma unroll
  for (int it = 0; it < kChunks / Cfg::kThreads; ++it) {
    const int c = tid + it * Cfg::kThreads;
    int r, kc;
    chunk_of<Cfg>(c, r, kc);
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
#ifdef INT8KERN_PLANT_SWAPPED_LDMATRIX_LANES  // test plant for tests/test_emu_selftest.py; never defined in a normal build: matrices 1 and 2 swapped
      bf[2 * np][1] = r[2], bf[2 * np + 1][0] = r[1];
#endif
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

}  // namespace cuda
}  // namespace int8kern
