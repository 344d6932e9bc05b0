// Per-lane / per-element mappings of the PTX instructions int8kern's CUDA kernels use, as pure
// constexpr host functions: the warp-level emulator (csrc/emu/cuda_emu.h) moves bytes between
// emulated lanes, registers and shared memory with exactly these, and nothing else.
//
// The oracle is NVIDIA's own encoding, not our reading of the PTX manual:
// csrc/emu/tests/layout_oracle.cpp enumerates every (thread, value) of CuTe's definitions (the
// nvidia-cutlass wheel's cute/ headers) and compares them with these functions
// (tests/test_emu_layouts.py builds and runs it). The CuTe definition each function is checked
// against is named next to it, as is the PTX ISA section (cited by title; section numbers move
// between ISA versions) that describes the same mapping.
//
// Conventions: lane in [0, 32); g = lane >> 2 ("groupID"), t = lane & 3 ("threadID_in_group").
// A .b32 register holding four 8-bit elements keeps element b in bits 8b..8b+7 ("byte b").
// Functions return {-1, -1} (or -1 / kNoAddress) for arguments outside their domain, so the
// emulator can report the call instead of reading something made up.
//
// Header-only, C++17, depends on <cstdint> alone.
#pragma once

#include <cstdint>

namespace int8kern {
namespace emu {
namespace layout {

struct Coord {
  int row;
  int col;
};

// --------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32
// PTX ISA: "Warp-level Matrix Multiply-Accumulate Instructions" > "Matrix Fragments for
// mma.m16n8k32" (.s8/.u8 multiplicands, .s32 accumulators).
// CuTe: MMA_Traits<SM80_16x8x32_S32S8S8S32_TN> (cute/atom/mma_traits_sm80.hpp):
//   ALayout ((4,8),(4,2,2)):((64,1),(16,8,256)) over the column-major 16 x 32 (M x K) tile,
//   BLayout ((4,8),(4,2)):((32,1),(8,128)) over 8 x 32 (N x K), CLayout SM80_16x8_Row
//   ((4,8),(2,2)):((32,1),(16,8)) over 16 x 8 (M x N); thread index = lane. CuTe's value v of
//   an 8-bit fragment is byte v % 4 of register v / 4 (mma_unpack recasts the fragment to the
//   instruction's uint32 registers).
// --------------------------------------------------------------------------------------------

// A fragment, 16 x 32 (row = m, col = k); reg in [0, 4), byte in [0, 4):
//   reg 0: row g,     k 4t + byte        reg 1: row g + 8, k 4t + byte
//   reg 2: row g,     k 16 + 4t + byte   reg 3: row g + 8, k 16 + 4t + byte
constexpr Coord mma_m16n8k32_a(int lane, int reg, int byte) {
  if (lane < 0 || lane >= 32 || reg < 0 || reg >= 4 || byte < 0 || byte >= 4) return {-1, -1};
  return {(lane >> 2) + 8 * (reg & 1), 16 * (reg >> 1) + 4 * (lane & 3) + byte};
}

// B fragment, the 32 x 8 (K x N) matrix given as (row = n, col = k); reg in [0, 2), byte in
// [0, 4):  reg 0: n g, k 4t + byte      reg 1: n g, k 16 + 4t + byte
constexpr Coord mma_m16n8k32_b(int lane, int reg, int byte) {
  if (lane < 0 || lane >= 32 || reg < 0 || reg >= 2 || byte < 0 || byte >= 4) return {-1, -1};
  return {lane >> 2, 16 * reg + 4 * (lane & 3) + byte};
}

// C/D fragment, 16 x 8 s32 (row = m, col = n); reg in [0, 4):
//   reg 0, 1: row g, cols 2t, 2t + 1        reg 2, 3: row g + 8, cols 2t, 2t + 1
constexpr Coord mma_m16n8k32_c(int lane, int reg) {
  if (lane < 0 || lane >= 32 || reg < 0 || reg >= 4) return {-1, -1};
  return {(lane >> 2) + 8 * (reg >> 1), 2 * (lane & 3) + (reg & 1)};
}

// --------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4.shared.b16
// PTX ISA: "Warp-level matrix load instruction: ldmatrix" (the m8n8 fragment figure: each
// thread receives one .b32 = two b16 elements of a row; row i of matrix m is read, 16 bytes,
// from the address in lane 8m + i).
// CuTe: Copy_Traits<SM75_U32x4_LDSM_N> (cute/atom/copy_traits_sm75.hpp), in bits:
//   SrcLayout (32,128):(128,1) (lane s supplies the 128 bits at its address),
//   DstLayout (32,(32,4)):(32,(1,1024)) (bit j of register r of lane t).
// --------------------------------------------------------------------------------------------

struct LdmatrixSrc {
  int matrix;
  int row;
  int byte;
};

// Destination register `reg` (0..3) of `lane`, byte `byte` (0..3), holds byte `byte` of the
// result: row lane >> 2 of matrix `reg`, byte 4 * (lane & 3) + byte of that 16-byte row.
constexpr LdmatrixSrc ldmatrix_x4(int lane, int reg, int byte) {
  if (lane < 0 || lane >= 32 || reg < 0 || reg >= 4 || byte < 0 || byte >= 4) return {-1, -1, -1};
#ifdef PLANT_SWAP_LDMATRIX
  // Planted bug (tests/test_emu_layouts.py, issue 17 item 6): matrices 0 <-> 1 and 2 <-> 3
  // swapped. The oracle must reject this build.
  return {reg ^ 1, lane >> 2, 4 * (lane & 3) + byte};
#else
  return {reg, lane >> 2, 4 * (lane & 3) + byte};
#endif
}

// The lane whose address row `row` (0..7) of matrix `matrix` (0..3) is read from.
constexpr int ldmatrix_x4_row_provider(int matrix, int row) {
  if (matrix < 0 || matrix >= 4 || row < 0 || row >= 8) return -1;
  return 8 * matrix + row;
}

// --------------------------------------------------------------------------------------------
// wgmma.mma_async.sync.aligned.m64nNk32.s32.s8.s8 accumulator D
// PTX ISA: "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions", the
// register fragment layout of the accumulator D for wgmma .m64nNk32 (.s32, 8-bit inputs).
// CuTe: SM90::GMMA::CLayout_64xN<N> = ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) over a
// column-major 64 x N tile (cute/atom/mma_traits_sm90_gmma.hpp).
// --------------------------------------------------------------------------------------------

// Thread t of the warpgroup [0, 128), register d[i], i in [0, N/2); N a multiple of 8 in
// [8, 256]. Warp w = t >> 5 holds rows 16w..16w+15; with g, tq = lane >> 2, lane & 3:
//   row 16w + g + 8 * ((i >> 1) & 1),   col 8 * (i >> 2) + 2 tq + (i & 1).
constexpr Coord wgmma_m64nNk32_d(int t, int i, int N) {
  if (N < 8 || N > 256 || N % 8 != 0 || t < 0 || t >= 128 || i < 0 || i >= N / 2) return {-1, -1};
  const int lane = t & 31;
  return {16 * (t >> 5) + (lane >> 2) + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)};
}

// --------------------------------------------------------------------------------------------
// 128-byte swizzle: CuTe Swizzle<3,4,3> (cute/swizzle.hpp); TMA CU_TENSOR_MAP_SWIZZLE_128B (CuTe
// get_tma_swizzle_bits(Swizzle<3,4,3>) = B128, cute/atom/copy_traits_sm90_tma_swizzle.hpp); wgmma
// descriptor swizzle mode 1 (PTX ISA "Shared Memory Matrix Layout" > "Swizzling Modes").
// Bits [4:6] (16-byte chunk within a 128-byte row) ^= bits [7:9] (row within an 8-row,
// 1024-byte pattern). `offset` is counted from a 1024-byte-aligned base (or is an absolute
// shared-memory address: the pattern repeats every 1024 bytes).
// --------------------------------------------------------------------------------------------
constexpr uint32_t swizzle_128b(uint32_t offset) { return offset ^ ((offset >> 3) & 0x70u); }

// --------------------------------------------------------------------------------------------
// wgmma shared-memory matrix descriptor.
// PTX ISA: "Asynchronous Warpgroup Level Matrix Shared Memory Layout" > "Matrix Descriptor
// Format". CuTe: union GmmaDescriptor (cute/arch/mma_sm90_desc.hpp).
//   bits  0-13  start address >> 4        bits 16-29  leading dimension byte offset >> 4
//   bits 32-45  stride dimension byte offset >> 4
//   bits 49-51  matrix base offset (3 bits, not shifted)
//   bits 62-63  layout type / swizzle mode: 0 interleave (none), 1 128B, 2 64B, 3 32B
// Other bits are reserved (decode ignores them, encode writes 0).
// --------------------------------------------------------------------------------------------
struct GmmaDesc {
  uint32_t start_address;        // bytes (field << 4), < 2^18
  uint32_t leading_byte_offset;  // bytes (field << 4)
  uint32_t stride_byte_offset;   // bytes (field << 4)
  uint32_t base_offset;          // the 3-bit field as is
  int layout_type;               // 0..3 as above
};

constexpr GmmaDesc gmma_desc_decode(uint64_t desc) {
  return {static_cast<uint32_t>(desc & 0x3FFFu) << 4,
          static_cast<uint32_t>((desc >> 16) & 0x3FFFu) << 4,
          static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4,
          static_cast<uint32_t>((desc >> 49) & 0x7u),
          static_cast<int>((desc >> 62) & 0x3u)};
}

// Keeps bits 4..17 of each byte value (what the 14-bit fields can hold); the low 4 bits are
// dropped, as the hardware ignores them.
constexpr uint64_t gmma_desc_encode(const GmmaDesc& d) {
  return (static_cast<uint64_t>((d.start_address >> 4) & 0x3FFFu)) |
         (static_cast<uint64_t>((d.leading_byte_offset >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((d.stride_byte_offset >> 4) & 0x3FFFu) << 32) |
         (static_cast<uint64_t>(d.base_offset & 0x7u) << 49) |
         (static_cast<uint64_t>(static_cast<unsigned>(d.layout_type) & 0x3u) << 62);
}

// --------------------------------------------------------------------------------------------
// Where wgmma reads a K-major, 128B-swizzled 8-bit operand element from.
// PTX ISA: "Asynchronous Warpgroup Level Matrix Shared Memory Layout" (K-major canonical layout
// with 128B swizzle; "Strides": LBO is not used for swizzled K-major layouts, SBO is the
// distance between 8-row groups). CuTe: make_gmma_desc<Major::K> on
// GMMA::Layout_K_SW128_Atom<int8_t> = Sw<3,4,3> o (8,128):(128,1) tiles, whose canonical form is
// Swizzle<3,4,3> o smem_ptr o ((8,n),(T,2)):((8T,SBO),(1,T)) with T = 16 bytes.
// --------------------------------------------------------------------------------------------

constexpr uint32_t kNoAddress = 0xFFFFFFFFu;

// The operand (A: 64 rows = m; B: N rows = n) of one k32 step: element (row, k), k in [0, 32),
// is read from the shared-memory address (same address space as start_address)
//   swizzle_128b(start + SBO * (row / 8) + 128 * (row % 8) + k).
// The swizzle XORs absolute address bits, so the 8-row pattern is anchored at 1024-byte
// boundaries of shared memory; gemm_wgmma.cu's make_desc_sw128 puts each operand tile at a
// 1024-aligned address and advances start by 32 bytes per k step (+2 in the field), which stays
// inside the first 128 bytes of the pattern, so base_offset stays 0. Returns kNoAddress for a
// descriptor this does not model: a layout type other than 128B, or a non-zero base offset (the
// kernels use neither), or row / k out of range.
constexpr uint32_t wgmma_kmajor_sw128_address(uint64_t desc, int row, int k) {
  const GmmaDesc d = gmma_desc_decode(desc);
  if (d.layout_type != 1 || d.base_offset != 0 || row < 0 || row >= 256 || k < 0 || k >= 32)
    return kNoAddress;
  const uint32_t logical = d.start_address + d.stride_byte_offset * static_cast<uint32_t>(row / 8) +
                           128u * static_cast<uint32_t>(row % 8) + static_cast<uint32_t>(k);
  return swizzle_128b(logical);
}

// --------------------------------------------------------------------------------------------
// TMA (cp.async.bulk.tensor) 2-D box with CU_TENSOR_MAP_SWIZZLE_128B and a 128-byte inner box
// dimension: the box lands row-major (row r at 128 r) from the 1024-aligned destination, then
// 128B-swizzled. CUDA Driver API: cuTensorMapEncodeTiled / CUtensorMapSwizzle; CUDA C++
// Programming Guide, "Asynchronous Data Copies using the Tensor Memory Accelerator (TMA)" >
// "TMA Swizzle". CuTe: a TMA copy whose shared-memory layout is Swizzle<3,4,3> o (rows,128):(128,1)
// (GMMA::Layout_K_SW128_Atom<int8_t> tiled) is encoded with CU_TENSOR_MAP_SWIZZLE_128B.
// --------------------------------------------------------------------------------------------
constexpr uint32_t tma_box_sw128_offset(int box_row, int box_byte) {
  if (box_row < 0 || box_row >= 256 || box_byte < 0 || box_byte >= 128) return kNoAddress;
  return swizzle_128b(128u * static_cast<uint32_t>(box_row) + static_cast<uint32_t>(box_byte));
}

}  // namespace layout
}  // namespace emu
}  // namespace int8kern
