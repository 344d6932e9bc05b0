// The oracle for csrc/emu/ptx_layouts.h: every lane/element mapping the emulator uses, compared
// element by element with NVIDIA's own definitions in CuTe (the nvidia-cutlass wheel's
// cutlass_library/source/include). Also checks the kernels' own addressing (the lines of
// gemm_mainloop.cuh and gemm_wgmma.cu quoted in the "kernel" section below; the test asserts they
// are still in the kernel sources, verbatim) against the same CuTe definitions.
//
// Build (tests/test_emu_layouts.py does this):
//   g++ -std=c++17 -O0 -w -I<repo> -I<cutlass include> -I<CUDA>/include -I<CUDA>/include/cccl \
//       csrc/emu/tests/layout_oracle.cpp -o layout_oracle
// CuTe on the host: CuTe 4.x includes <cuda_runtime_api.h> (cute/util/debug.hpp) and libcu++
// (<cuda/std/...>, in include/cccl of a CUDA 13 toolkit); with those on the include path the
// cute/ headers compile as plain host C++ with g++ 12. Two host shims, both before any CuTe
// header:
//   * CUTE_CVTA_GENERIC_TO_SHARED_ACTIVATED plus a host __cvta_generic_to_shared that returns
//     the offset into g_smem (a 1024-aligned host array standing for shared memory), so CuTe's
//     own make_gmma_desc builds real descriptors (start address = that offset) on the host.
//   * cute/arch/copy_sm90_desc.hpp is included first with __CUDACC_VER_MAJOR__ = 12, which it
//     needs to declare TMA::to_CUtensorMapSwizzle (the Swizzle -> CUtensorMapSwizzle mapping CuTe
//     hands to cuTensorMapEncodeTiled); the macros are undefined again right after.
//
// Output: one "MISMATCH <layout>: ..." line per disagreement (at most 64 a layout, then a count),
// one "ok|FAIL <layout>: N checked" line per layout; exit status 1 on any mismatch.
// -DPLANT_SWAP_LDMATRIX builds ptx_layouts.h's planted ldmatrix bug, which must fail here.

#include <cstddef>
#include <cstdint>

static unsigned char* g_smem_base = nullptr;
static inline size_t __cvta_generic_to_shared(const void* p) {
  return static_cast<size_t>(static_cast<const unsigned char*>(p) - g_smem_base);
}
#define CUTE_CVTA_GENERIC_TO_SHARED_ACTIVATED 1

#define __CUDACC_VER_MAJOR__ 12
#define __CUDACC_VER_MINOR__ 0
#include <cute/arch/copy_sm90_desc.hpp>
#undef __CUDACC_VER_MAJOR__
#undef __CUDACC_VER_MINOR__

#include <cute/tensor.hpp>
#include <cute/swizzle.hpp>
#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/copy_traits_sm90_tma_swizzle.hpp>
#include <cute/atom/mma_traits_sm80.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>

#include <cinttypes>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "csrc/emu/ptx_layouts.h"

using namespace cute;
namespace L = int8kern::emu::layout;

// The emulator may use these in constant expressions: they must be constexpr-evaluable.
static_assert(L::mma_m16n8k32_a(5, 3, 2).row == 9 && L::mma_m16n8k32_a(5, 3, 2).col == 22, "constexpr");
static_assert(L::mma_m16n8k32_b(31, 1, 3).col == 31 && L::mma_m16n8k32_c(6, 3).col == 5, "constexpr");
static_assert(L::ldmatrix_x4(13, 2, 1).row == 3 && L::ldmatrix_x4_row_provider(3, 7) == 31, "constexpr");
static_assert(L::wgmma_m64nNk32_d(127, 63, 128).row == 63 && L::wgmma_m64nNk32_d(0, 64, 128).row == -1, "constexpr");
static_assert(L::swizzle_128b(0x380) == 0x3F0 && L::tma_box_sw128_offset(1, 0) == 0x90, "constexpr");
static_assert(L::gmma_desc_encode(L::gmma_desc_decode(0x4000004000010080ull)) == 0x4000004000010080ull, "constexpr");
static_assert(L::wgmma_kmajor_sw128_address(0x4000004000010080ull, 9, 5) == 2048 + 1024 + 128 + 16 + 5, "constexpr");

// ---------------------------------------------------------------------------------------------
// Bookkeeping
// ---------------------------------------------------------------------------------------------
struct Section {
  const char* name;
  long checked = 0;
  long bad = 0;
  explicit Section(const char* n) : name(n) {}
  // One compared element; `what` is printed on a mismatch.
  template <class... Args>
  void check(bool ok, const char* fmt, Args... args) {
    ++checked;
    if (ok) return;
    if (++bad <= 64) {
      std::printf("MISMATCH %s: ", name);
      std::printf(fmt, args...);
      std::printf("\n");
    }
  }
};
static int g_failed_sections = 0;
static void finish(const Section& s) {
  if (s.bad > 64) std::printf("MISMATCH %s: ... and %ld more\n", s.name, s.bad - 64);
  std::printf("%s %s: %ld checked, %ld mismatches\n", s.bad ? "FAIL" : "ok", s.name, s.checked,
              s.bad);
  if (s.bad) ++g_failed_sections;
}

// CuTe's layouts map (thread, value) to an index into a column-major tile.
template <class Layout>
static int cute_at(Layout const& l, int thr, int val) {
  return static_cast<int>(l(thr, val));
}

// ---------------------------------------------------------------------------------------------
// mma.sync m16n8k32 s8
// ---------------------------------------------------------------------------------------------
using MmaTraits = MMA_Traits<SM80_16x8x32_S32S8S8S32_TN>;

// CuTe's value v of an 8-bit fragment sits in byte v % 4 of register v / 4: mma_unpack recasts
// the value array to the instruction's uint32 registers. Confirm the recast does that here.
static void check_fragment_recast() {
  Section s("mma_fragment_recast_s8_to_u32");
  Tensor frag = make_tensor<int8_t>(Shape<_16>{});
  for (int v = 0; v < 16; ++v) frag(v) = static_cast<int8_t>(v + 1);
  Tensor regs = recast<uint32_t>(frag);
  s.check(size(regs) == 4, "recast gives %d registers", int(size(regs)));
  for (int v = 0; v < 16; ++v) {
    const uint32_t r = regs(v / 4);
    const int got = static_cast<int>((r >> (8 * (v % 4))) & 0xFF);
    s.check(got == v + 1, "value %d: register %d byte %d holds %d", v, v / 4, v % 4, got);
  }
  finish(s);
}

static void check_mma_a() {
  Section s("mma_m16n8k32_a (MMA_Traits<SM80_16x8x32_S32S8S8S32_TN>::ALayout)");
  typename MmaTraits::ALayout al{};
  static_assert(decltype(size<0>(al))::value == 32 && decltype(size<1>(al))::value == 16, "A");
  for (int lane = 0; lane < 32; ++lane)
    for (int v = 0; v < 16; ++v) {
      const int idx = cute_at(al, lane, v);  // m + 16 k
      const int m = idx % 16, k = idx / 16;
      const L::Coord c = L::mma_m16n8k32_a(lane, v / 4, v % 4);
      s.check(c.row == m && c.col == k, "lane %d reg %d byte %d: cute (m %d, k %d), ours (%d, %d)",
              lane, v / 4, v % 4, m, k, c.row, c.col);
    }
  finish(s);
}

static void check_mma_b() {
  Section s("mma_m16n8k32_b (MMA_Traits<SM80_16x8x32_S32S8S8S32_TN>::BLayout)");
  typename MmaTraits::BLayout bl{};
  static_assert(decltype(size<0>(bl))::value == 32 && decltype(size<1>(bl))::value == 8, "B");
  for (int lane = 0; lane < 32; ++lane)
    for (int v = 0; v < 8; ++v) {
      const int idx = cute_at(bl, lane, v);  // n + 8 k
      const int n = idx % 8, k = idx / 8;
      const L::Coord c = L::mma_m16n8k32_b(lane, v / 4, v % 4);
      s.check(c.row == n && c.col == k, "lane %d reg %d byte %d: cute (n %d, k %d), ours (%d, %d)",
              lane, v / 4, v % 4, n, k, c.row, c.col);
    }
  finish(s);
}

static void check_mma_c() {
  Section s("mma_m16n8k32_c (MMA_Traits<SM80_16x8x32_S32S8S8S32_TN>::CLayout = SM80_16x8_Row)");
  typename MmaTraits::CLayout cl{};
  static_assert(decltype(size<0>(cl))::value == 32 && decltype(size<1>(cl))::value == 4, "C");
  for (int lane = 0; lane < 32; ++lane)
    for (int v = 0; v < 4; ++v) {
      const int idx = cute_at(cl, lane, v);  // m + 16 n
      const int m = idx % 16, n = idx / 16;
      const L::Coord c = L::mma_m16n8k32_c(lane, v);
      s.check(c.row == m && c.col == n, "lane %d reg %d: cute (m %d, n %d), ours (%d, %d)", lane, v,
              m, n, c.row, c.col);
    }
  finish(s);
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.x4 (SM75_U32x4_LDSM_N), in bits
// ---------------------------------------------------------------------------------------------
struct LdsmSource {
  int lane;  // whose address supplies this bit
  int bit;   // bit within the 128 bits read from that address
};

// For destination (lane t, register r, bit j): which source lane and bit, by CuTe's layouts.
static std::vector<LdsmSource> cute_ldsm_table() {
  using CT = Copy_Traits<SM75_U32x4_LDSM_N>;
  typename CT::SrcLayout src{};  // (32 lanes, 128 bits) -> reference bit
  typename CT::DstLayout dst{};  // (32 lanes, (32 bits, 4 regs)) -> reference bit
  static_assert(decltype(size(src))::value == 4096 && decltype(size(dst))::value == 4096, "x4");
  std::vector<LdsmSource> inv(4096, LdsmSource{-1, -1});
  for (int s = 0; s < 32; ++s)
    for (int b = 0; b < 128; ++b) inv[static_cast<int>(src(s, b))] = LdsmSource{s, b};
  std::vector<LdsmSource> table(32 * 4 * 32);
  for (int t = 0; t < 32; ++t)
    for (int r = 0; r < 4; ++r)
      for (int j = 0; j < 32; ++j) table[(t * 4 + r) * 32 + j] = inv[static_cast<int>(dst(t, j + 32 * r))];
  return table;
}

static void check_ldmatrix(const std::vector<LdsmSource>& table) {
  Section s("ldmatrix_x4 (Copy_Traits<SM75_U32x4_LDSM_N>)");
  for (int t = 0; t < 32; ++t)
    for (int r = 0; r < 4; ++r)
      for (int byte = 0; byte < 4; ++byte) {
        const L::LdmatrixSrc ours = L::ldmatrix_x4(t, r, byte);
        const int provider = L::ldmatrix_x4_row_provider(ours.matrix, ours.row);
        // all 8 bits of the byte come from the same lane's byte, in order
        bool ok = true;
        int cl = -1, cb = -1;
        for (int i = 0; i < 8; ++i) {
          const LdsmSource src = table[(t * 4 + r) * 32 + 8 * byte + i];
          if (i == 0) cl = src.lane, cb = src.bit / 8;
          ok = ok && src.lane == provider && src.bit == 8 * ours.byte + i;
        }
        s.check(ok,
                "lane %d reg %d byte %d: cute reads lane %d's byte %d, ours matrix %d row %d byte %d "
                "(lane %d)",
                t, r, byte, cl, cb, ours.matrix, ours.row, ours.byte, provider);
      }
  // Every (matrix, row) is supplied by a distinct lane (the address operand of that lane).
  bool seen[32] = {};
  for (int m = 0; m < 4; ++m)
    for (int row = 0; row < 8; ++row) {
      const int p = L::ldmatrix_x4_row_provider(m, row);
      const bool ok = p >= 0 && p < 32 && !seen[p];
      if (ok) seen[p] = true;
      s.check(ok, "row provider of matrix %d row %d = %d (out of range or repeated)", m, row, p);
    }
  finish(s);
}

// ---------------------------------------------------------------------------------------------
// wgmma m64nNk32 .s32 accumulators (CLayout_64xN)
// ---------------------------------------------------------------------------------------------
template <int N>
static void check_wgmma_d() {
  char name[96];
  std::snprintf(name, sizeof name, "wgmma_m64nNk32_d N=%d (GMMA::CLayout_64xN<%d>)", N, N);
  Section s(name);
  SM90::GMMA::CLayout_64xN<N> cl{};
  static_assert(decltype(size<0>(cl))::value == 128 && decltype(size<1>(cl))::value == N / 2, "D");
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < N / 2; ++i) {
      const int idx = cute_at(cl, t, i);  // m + 64 n
      const int m = idx % 64, n = idx / 64;
      const L::Coord c = L::wgmma_m64nNk32_d(t, i, N);
      s.check(c.row == m && c.col == n, "thread %d d[%d]: cute (m %d, n %d), ours (%d, %d)", t, i, m,
              n, c.row, c.col);
    }
  finish(s);
}

// ---------------------------------------------------------------------------------------------
// GmmaDescriptor
// ---------------------------------------------------------------------------------------------
static void check_gmma_desc() {
  Section s("gmma_desc encode/decode (GmmaDescriptor bitfields)");
  constexpr uint64_t kDefined = 0x3FFFull | (0x3FFFull << 16) | (0x3FFFull << 32) |
                                (0x7ull << 49) | (0x3ull << 62);
  std::mt19937_64 rng(20261201);
  for (int it = 0; it < 20000; ++it) {
    // Random 64-bit words (reserved bits set too): decode = CuTe's fields, encode(decode) = the
    // defined bits.
    const uint64_t raw = (it < 4) ? (it == 0 ? 0ull : it == 1 ? ~0ull : it == 2 ? kDefined : ~kDefined)
                                  : rng();
    GmmaDescriptor cd(raw);
    const L::GmmaDesc d = L::gmma_desc_decode(raw);
    const bool ok = d.start_address == (uint32_t(cd.bitfield.start_address_) << 4) &&
                    d.leading_byte_offset == (uint32_t(cd.bitfield.leading_byte_offset_) << 4) &&
                    d.stride_byte_offset == (uint32_t(cd.bitfield.stride_byte_offset_) << 4) &&
                    d.base_offset == uint32_t(cd.bitfield.base_offset_) &&
                    d.layout_type == int(cd.bitfield.layout_type_);
    s.check(ok, "decode 0x%016" PRIx64 ": ours start %u lbo %u sbo %u base %u type %d", raw,
            d.start_address, d.leading_byte_offset, d.stride_byte_offset, d.base_offset,
            d.layout_type);
    s.check(L::gmma_desc_encode(d) == (raw & kDefined), "encode(decode(0x%016" PRIx64 ")) = 0x%016" PRIx64,
            raw, L::gmma_desc_encode(d));

    // Random field values written through CuTe's bitfields = our encoding of the same fields.
    const uint32_t start = uint32_t(rng() & 0x3FFF), lbo = uint32_t(rng() & 0x3FFF),
                   sbo = uint32_t(rng() & 0x3FFF), base = uint32_t(rng() & 7);
    const int type = int(rng() & 3);
    GmmaDescriptor w;
    w.bitfield.start_address_ = uint16_t(start);
    w.bitfield.leading_byte_offset_ = uint16_t(lbo);
    w.bitfield.stride_byte_offset_ = uint16_t(sbo);
    w.bitfield.base_offset_ = uint8_t(base);
    w.bitfield.layout_type_ = uint8_t(type);
    const L::GmmaDesc f{start << 4, lbo << 4, sbo << 4, base, type};
    s.check(L::gmma_desc_encode(f) == w.desc_, "encode(start %u lbo %u sbo %u base %u type %d) = 0x%016" PRIx64
            ", cute 0x%016" PRIx64, start, lbo, sbo, base, type, L::gmma_desc_encode(f), uint64_t(w.desc_));
  }
  // The layout-type values CuTe's enum gives (wgmma swizzle mode 1 = 128B).
  s.check(int(SM90::GMMA::LayoutType::B128) == 1 && int(SM90::GMMA::LayoutType::B64) == 2 &&
              int(SM90::GMMA::LayoutType::B32) == 3 && int(SM90::GMMA::LayoutType::INTERLEAVE) == 0,
          "LayoutType enum values");
  finish(s);
}

// ---------------------------------------------------------------------------------------------
// Swizzle<3,4,3>, and CuTe's TMA mapping of it
// ---------------------------------------------------------------------------------------------
static void check_swizzle() {
  Section s("swizzle_128b (Swizzle<3,4,3>, 0..8191)");
  Swizzle<3, 4, 3> sw{};
  for (uint32_t o = 0; o < 8192; ++o)
    s.check(L::swizzle_128b(o) == uint32_t(sw(int(o))), "offset %u: cute %d, ours %u", o, int(sw(int(o))),
            L::swizzle_128b(o));
  // CuTe hands Swizzle<3,4,3> to the TMA unit as CU_TENSOR_MAP_SWIZZLE_128B (the swizzle
  // gemm_wgmma.cu's tensor maps use), and its GMMA K-major 128B atom is that swizzle.
  const auto bits = detail::get_tma_swizzle_bits(Swizzle<3, 4, 3>{});
  const auto base = detail::get_tma_swizzle_base(Swizzle<3, 4, 3>{});
  s.check(TMA::to_CUtensorMapSwizzle(bits, base) == CU_TENSOR_MAP_SWIZZLE_128B,
          "CuTe maps Swizzle<3,4,3> to CUtensorMapSwizzle %d, not SWIZZLE_128B",
          int(TMA::to_CUtensorMapSwizzle(bits, base)));
  s.check(std::is_same<decltype(get_swizzle_portion(GMMA::Layout_K_SW128_Atom<int8_t>{})),
                       Swizzle<3, 4, 3>>::value,
          "GMMA::Layout_K_SW128_Atom<int8_t>'s swizzle is not Swizzle<3,4,3>");
  s.check(GMMA::Layout_K_SW128_Atom<int8_t>{}.layout_b() == Layout<Shape<_8, _128>, Stride<_128, _1>>{},
          "GMMA::Layout_K_SW128_Atom<int8_t> is not (8,128):(128,1)");
  finish(s);
}

// ---------------------------------------------------------------------------------------------
// The kernels' own addressing, quoted verbatim (tests/test_emu_layouts.py checks every line
// marked KERNEL is still present, whitespace-normalised, in the kernel source it names).
// ---------------------------------------------------------------------------------------------
#define INT8KERN_D inline
namespace kernel {
struct Cfg {  // a warp tile of 2 x 2 m16 x n16 blocks, two k32 steps (the kernels' BK = 64)
  static constexpr int WM = 32, WN = 32, MI = WM / 16, NI = WN / 8, BK = 64;
};
// gemm_mainloop.cuh, compute_stage: the shared-memory element (row, col) lane's ldmatrix
// address points at, for A (mi) and for B (np).
static L::Coord a_ldsm_addr(int warp_m, int mi, int kk, int lane) {
  const int row = warp_m * Cfg::WM + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;  // KERNEL gemm_mainloop.cuh
  const int col = kk + (lane >> 4) * 16;  // KERNEL gemm_mainloop.cuh
  return {row, col};
}
static L::Coord b_ldsm_addr(int warp_n, int np, int kk, int lane) {
  const int row = warp_n * Cfg::WN + np * 16 + (lane & 7) + (lane >> 4) * 8;  // KERNEL gemm_mainloop.cuh
  const int col = kk + ((lane >> 3) & 1) * 16;  // KERNEL gemm_mainloop.cuh
  return {row, col};
}
// gemm_mainloop.cuh: which mma B fragment each ldmatrix register of the B load becomes.
static void b_regs_to_frags(int np, const uint32_t (&r)[4], uint32_t (&bf)[Cfg::NI][2]) {
  bf[2 * np][0] = r[0];      // KERNEL gemm_mainloop.cuh
  bf[2 * np][1] = r[1];      // KERNEL gemm_mainloop.cuh
  bf[2 * np + 1][0] = r[2];  // KERNEL gemm_mainloop.cuh
  bf[2 * np + 1][1] = r[3];  // KERNEL gemm_mainloop.cuh
}
// gemm_mainloop.cuh, MmaAccLayout
template <int MI, int NI>
struct MmaAccLayout {
  int wm0, wn0;
  int g, t;
  INT8KERN_D int row(int idx) const {
    const int mi = idx / (NI * 4);  // KERNEL gemm_mainloop.cuh
    const int half = (idx >> 1) & 1;  // c2, c3 are 8 rows down  // KERNEL gemm_mainloop.cuh
    return wm0 + mi * 16 + half * 8 + g;  // KERNEL gemm_mainloop.cuh
  }
  INT8KERN_D int col(int idx) const {
    const int ni = (idx / 4) % NI;  // KERNEL gemm_mainloop.cuh
    return wn0 + ni * 8 + 2 * t + (idx & 1);  // KERNEL gemm_mainloop.cuh
  }
};
// gemm_wgmma.cu: WgmmaAccLayout and how a consumer thread builds it.
struct WgmmaAccLayout {
  int row0;
  int t;
  INT8KERN_D int row(int idx) const { return row0 + ((idx >> 1) & 1) * 8; }  // KERNEL gemm_wgmma.cu
  INT8KERN_D int col(int idx) const { return (idx >> 2) * 8 + 2 * t + (idx & 1); }  // KERNEL gemm_wgmma.cu
};
static WgmmaAccLayout wgmma_lay(int c, int warp_in_wg, int lane) {
  const WgmmaAccLayout lay{64 * c + 16 * warp_in_wg + (lane >> 2), lane & 3};  // KERNEL gemm_wgmma.cu
  return lay;
}
// gemm_wgmma.cu: make_desc_sw128, the operand tiles' addresses, the per-k-step advance.
INT8KERN_D uint64_t make_desc_sw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (1ull << 16) |  // KERNEL gemm_wgmma.cu
         (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);  // KERNEL gemm_wgmma.cu
}
struct T {  // WgmmaTile's numbers used below
  static constexpr int BM = 128, BN = 128;  // KERNEL gemm_wgmma.cu
  static constexpr int BK = 128;  // KERNEL gemm_wgmma.cu
  static constexpr int kK = 32;  // KERNEL gemm_wgmma.cu
  static constexpr int kStages = 5;  // KERNEL gemm_wgmma.cu
  static constexpr int kABytes = BM * BK, kBBytes = BN * BK;  // KERNEL gemm_wgmma.cu
  static constexpr int kStageBytes = kABytes + kBBytes;  // KERNEL gemm_wgmma.cu
};
static uint32_t a_tile(uint32_t sbase, int stage, int c) {
  const uint32_t sa = sbase + stage * T::kStageBytes + c * (64 * T::BK);  // KERNEL gemm_wgmma.cu
  return sa;
}
static uint32_t b_tile(uint32_t sbase, int stage) {
  const uint32_t sb = sbase + stage * T::kStageBytes + T::kABytes;  // KERNEL gemm_wgmma.cu
  return sb;
}
static void k_step_descs(uint64_t da, uint64_t db, int ks, uint64_t& a, uint64_t& b) {
  // wgmma_m64n128k32_s8(acc, da + 2 * ks, db + 2 * ks);  // KERNEL gemm_wgmma.cu
  a = da + 2 * ks;
  b = db + 2 * ks;
}
}  // namespace kernel

// The mma.sync main loop: lane `lane`'s A and B fragments, loaded by the kernel's ldmatrix
// addressing through CuTe's ldmatrix, hold the elements CuTe's mma layouts say they must.
static void check_kernel_mainloop(const std::vector<LdsmSource>& ldsm) {
  using namespace kernel;
  Section s("kernel gemm_mainloop.cuh ldmatrix addressing -> mma A/B fragments (CuTe ldsm + mma)");
  typename MmaTraits::ALayout al{};
  typename MmaTraits::BLayout bl{};
  for (int kk = 0; kk < Cfg::BK; kk += 32)
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r)
        for (int byte = 0; byte < 4; ++byte) {
          const LdsmSource src = ldsm[(lane * 4 + r) * 32 + 8 * byte];
          for (int mi = 0; mi < Cfg::MI; ++mi) {
            const L::Coord at = a_ldsm_addr(0, mi, kk, src.lane);
            const int got_m = at.row, got_k = at.col + src.bit / 8;
            const int idx = cute_at(al, lane, 4 * r + byte);
            const int want_m = mi * 16 + idx % 16, want_k = kk + idx / 16;
            s.check(got_m == want_m && got_k == want_k,
                    "A mi %d kk %d lane %d a%d byte %d: kernel loads (m %d, k %d), mma needs (%d, %d)",
                    mi, kk, lane, r, byte, got_m, got_k, want_m, want_k);
          }
          for (int np = 0; np < Cfg::NI / 2; ++np) {
            // which fragment register r becomes
            uint32_t regs[4] = {0, 1, 2, 3}, bf[Cfg::NI][2] = {};
            for (auto& f : bf) f[0] = f[1] = 99;
            b_regs_to_frags(np, regs, bf);
            int ni = -1, breg = -1;
            for (int i = 0; i < Cfg::NI; ++i)
              for (int j = 0; j < 2; ++j)
                if (bf[i][j] == uint32_t(r)) ni = i, breg = j;
            const L::Coord at = b_ldsm_addr(0, np, kk, src.lane);
            const int got_n = at.row, got_k = at.col + src.bit / 8;
            const int idx = cute_at(bl, lane, 4 * breg + byte);
            const int want_n = ni * 8 + idx % 8, want_k = kk + idx / 8;
            s.check(ni >= 0 && got_n == want_n && got_k == want_k,
                    "B np %d kk %d lane %d reg %d (b%d of n-block %d) byte %d: kernel loads (n %d, "
                    "k %d), mma needs (%d, %d)",
                    np, kk, lane, r, breg, ni, byte, got_n, got_k, want_n, want_k);
          }
        }
  finish(s);
}

// The epilogues' idea of where each accumulator sits, against CuTe's C layouts.
static void check_kernel_acc_layouts() {
  using namespace kernel;
  {
    Section s("kernel MmaAccLayout (gemm_mainloop.cuh, vs CLayout SM80_16x8_Row)");
    typename MmaTraits::CLayout cl{};
    for (int lane = 0; lane < 32; ++lane) {
      const MmaAccLayout<Cfg::MI, Cfg::NI> lay{0, 0, lane >> 2, lane & 3};
      for (int mi = 0; mi < Cfg::MI; ++mi)
        for (int ni = 0; ni < Cfg::NI; ++ni)
          for (int c = 0; c < 4; ++c) {
            const int idx = (mi * Cfg::NI + ni) * 4 + c;
            const int e = cute_at(cl, lane, c);
            const int want_r = mi * 16 + e % 16, want_c = ni * 8 + e / 16;
            s.check(lay.row(idx) == want_r && lay.col(idx) == want_c,
                    "lane %d mi %d ni %d c%d: kernel (%d, %d), cute (%d, %d)", lane, mi, ni, c,
                    lay.row(idx), lay.col(idx), want_r, want_c);
          }
    }
    finish(s);
  }
  {
    Section s("kernel WgmmaAccLayout (gemm_wgmma.cu, vs GMMA::CLayout_64xN<128>)");
    SM90::GMMA::CLayout_64xN<128> cl{};
    for (int c = 0; c < 2; ++c)
      for (int w = 0; w < 4; ++w)
        for (int lane = 0; lane < 32; ++lane) {
          const WgmmaAccLayout lay = wgmma_lay(c, w, lane);
          for (int i = 0; i < 64; ++i) {
            const int e = cute_at(cl, 32 * w + lane, i);
            const int want_r = 64 * c + e % 64, want_c = e / 64;
            s.check(lay.row(i) == want_r && lay.col(i) == want_c,
                    "consumer %d warp %d lane %d d[%d]: kernel (%d, %d), cute (%d, %d)", c, w, lane, i,
                    lay.row(i), lay.col(i), want_r, want_c);
          }
        }
    finish(s);
  }
}

// ---------------------------------------------------------------------------------------------
// K-major SW128 int8 operands: CuTe's descriptor and addresses vs the kernel's descriptor and
// wgmma_kmajor_sw128_address; the TMA box vs tma_box_sw128_offset.
// ---------------------------------------------------------------------------------------------
alignas(1024) static int8_t g_smem[kernel::T::kStages * kernel::T::kStageBytes];  // the kernel's stages

template <int ROWS>
static void check_operand(Section& s, uint32_t tile, const char* what) {
  // The stage's operand tile in CuTe's terms: GMMA::Layout_K_SW128_Atom<int8_t> tiled to
  // ROWS x 128 (one 128-byte swizzled row per tile row, as TMA writes it); k-step ks is its
  // ROWS x 32 slice, the tensor CUTLASS hands to make_gmma_desc<Major::K> for that wgmma.
  auto layout = tile_to_shape(GMMA::Layout_K_SW128_Atom<int8_t>{}, Shape<Int<ROWS>, _128>{});
  Tensor full = make_tensor(make_smem_ptr(g_smem + tile), layout);
  const uint64_t kd = kernel::make_desc_sw128(tile);
  s.check(kd == L::gmma_desc_encode(L::GmmaDesc{tile, 16, 1024, 0, 1}),
          "%s tile %u: make_desc_sw128 0x%016" PRIx64 " != encode{start, 16, 1024, 0, 1}", what, tile, kd);
  for (int ks = 0; ks < kernel::T::BK / kernel::T::kK; ++ks) {
    Tensor sk = local_tile(full, Shape<Int<ROWS>, _32>{}, make_coord(0, ks));
    const uint64_t cute_desc = SM90::GMMA::make_gmma_desc<SM90::GMMA::Major::K>(sk).desc_;
    uint64_t da = 0, db = 0;
    kernel::k_step_descs(kd, kd, ks, da, db);
    s.check(da == cute_desc, "%s tile %u k-step %d: kernel descriptor 0x%016" PRIx64
            ", CuTe make_gmma_desc 0x%016" PRIx64, what, tile, ks, da, cute_desc);
    for (int row = 0; row < ROWS; ++row)
      for (int k = 0; k < 32; ++k) {
        const uint32_t cute_addr = uint32_t(reinterpret_cast<const unsigned char*>(&sk(row, k)) - g_smem_base);
        const uint32_t ours = L::wgmma_kmajor_sw128_address(da, row, k);
        // and where TMA put that element of the box: (row, 32 ks + k) from the tile base
        const uint32_t tma = tile + L::tma_box_sw128_offset(row, 32 * ks + k);
        s.check(ours == cute_addr && tma == cute_addr,
                "%s tile %u k-step %d (row %d, k %d): cute %u, wgmma_kmajor_sw128_address %u, "
                "tma_box %u", what, tile, ks, row, k, cute_addr, ours, tma);
      }
  }
}

static void check_wgmma_operands() {
  Section s("wgmma_kmajor_sw128_address (make_gmma_desc<K> on Layout_K_SW128_Atom<int8_t> tiles, 64x32 and 128x32 k-slices)");
  g_smem_base = reinterpret_cast<unsigned char*>(g_smem);
  for (int stage = 0; stage < kernel::T::kStages; ++stage) {
    for (int c = 0; c < 2; ++c) check_operand<64>(s, kernel::a_tile(0, stage, c), "A");
    check_operand<128>(s, kernel::b_tile(0, stage), "B");
  }
  // Descriptors this does not model are refused, not guessed.
  const uint64_t d0 = kernel::make_desc_sw128(0);
  s.check(L::wgmma_kmajor_sw128_address(d0 | (1ull << 49), 0, 0) == L::kNoAddress, "base offset 1 accepted");
  s.check(L::wgmma_kmajor_sw128_address((d0 & ~(3ull << 62)) | (2ull << 62), 0, 0) == L::kNoAddress,
          "64B swizzle accepted");
  finish(s);
}

static void check_tma_box() {
  Section s("tma_box_sw128_offset (box rows 0..255 x 128 bytes, Layout_K_SW128_Atom<int8_t> tiled to 256x128)");
  auto layout = tile_to_shape(GMMA::Layout_K_SW128_Atom<int8_t>{}, Shape<_256, _128>{});
  for (int r = 0; r < 256; ++r)
    for (int b = 0; b < 128; ++b) {
      const uint32_t want = uint32_t(layout(r, b));
      s.check(L::tma_box_sw128_offset(r, b) == want, "box (row %d, byte %d): cute %u, ours %u", r, b,
              want, L::tma_box_sw128_offset(r, b));
    }
  finish(s);
}

int main() {
  check_fragment_recast();
  check_mma_a();
  check_mma_b();
  check_mma_c();
  const std::vector<LdsmSource> ldsm = cute_ldsm_table();
  check_ldmatrix(ldsm);
  check_wgmma_d<8>();
  check_wgmma_d<64>();
  check_wgmma_d<128>();
  check_wgmma_d<256>();
  check_gmma_desc();
  check_swizzle();
  check_kernel_mainloop(ldsm);
  check_kernel_acc_layouts();
  check_wgmma_operands();
  check_tma_box();
  std::printf("%s: %d layout(s) with mismatches\n", g_failed_sections ? "FAILED" : "PASSED",
              g_failed_sections);
  return g_failed_sections ? 1 : 0;
}
