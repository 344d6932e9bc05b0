// int8 GEMM on the CPU, exact in int32: int8_matmul (int32 out) and int8_scaled_matmul
// (the dequantize epilogue applied to each tile while it is still in registers/L1, so the
// int32 matrix never reaches memory).
//
// C[i, j] = sum_k a[i, k] * b[j, k]; both operands K-major (b is nn.Linear's weight).
// Inner kernels, picked at run time by cpu_isa() (isa.h: CPUID, capped by INT8KERN_CPU_ISA):
//  * AVX512-VNNI (vpdpbusd: 64 u8 x s8 products per instruction, summed by fours into int32
//    WITHOUT saturation). It multiplies unsigned by signed bytes, so a is shifted to
//    a + 128 (a ^ 0x80 as u8) once per call and 128 * sum_k b[j, k] is subtracted at the end:
//    sum_k (a+128) b - 128 sum_k b = sum_k a b. Every step wraps modulo 2^32 (vpdpbusd and
//    the vector adds do; the correction is done in uint32), and the true result fits in
//    int32 (|C| <= K * 128 * 128 < 2^31 for K <= 131071), so the wrapped result is exact.
//  * AVX2: vpmaddubsw with the sign trick (gemm_tiles_avx2_sign.h): |b| as the unsigned
//    operand, a * sign(b) as the signed one, so no pair sum exceeds 128 * 127 * 2 and nothing
//    saturates. Exact when a holds no -128, which quantize_rowwise guarantees; a call whose a
//    does hold -128 (checked per call, a pass over a's M x K bytes) takes the int16 tiles.
//  * int16 tiles (AVX2, or a portable loop without AVX2): products formed in int16 lanes and
//    summed pairwise into int32 (vpmaddwd): |a*b + a'*b'| <= 2^15, exact for any int8. a is
//    widened to int16 once per call; b, the weight, is widened on the fly.
// All read the weight as int8 straight from nn.Linear's layout, so decode (M = 1..16)
// streams it once; none needs a repacked copy.
//
// Blocking: tasks are (BLOCK_M rows of a) x (BLOCK_N rows of b); a task keeps its BLOCK_N x K
// slice of b (128 KiB at K = 4096) in L2 and walks its rows of a in MR x NR register tiles
// over K slices of BLOCK_K (a's MR rows and b's NR rows of one slice stay in L1).
// VNNI tiles are dot products along k: each (i, j) of a 6 x 4 tile accumulates a 16-lane
// vector (24 zmm; 10 loads per 24 vpdpbusd) that is summed across lanes once per K slice
// (four at a time), so the slice is long (4096: a's 6 rows take 24 KiB of L1).
//
// On AVX512-VNNI/AMX CPUs, M >= 256 goes to oneDNN's int8 GEMM (at::_int_mm): on 2 Zen 4
// cores the tiles below match it at M = 256 and are ~10% slower at M = 512 (see
// benchmarks/NOTES.md). Its int32 result then takes one dequantize pass. Not for K < 16: on
// this project's Zen 4 CPU, torch 2.14.1's _int_mm returns garbage for K = 1.
// INT8KERN_CPU_ONEDNN=0 turns it off; so does INT8KERN_CPU_ISA below vnni (an AVX2 machine's
// torch runs _int_mm as a plain loop, benchmarks/NOTES.md).
#include <ATen/cpu/Utils.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "epilogue.h"
#include "gemm_tiles_avx2_sign.h"
#include "isa.h"
#include "parallel.h"

namespace int8kern {
namespace cpu {
namespace {

constexpr int MR = 4;
constexpr int NR = 2;
constexpr int NR_GEMV = 4;  // a single row of a: four weight rows in flight instead of two
constexpr int64_t BLOCK_N = 32;
constexpr int64_t BLOCK_M = 128;

// ---------------------------------------------------------------- int16 tiles (AVX2 / portable)

// One MR_ x NR_ tile over a K slice: c[i * ldc + j] += sum_k a[i][k] * b[j][k].
template <int MR_, int NR_>
__attribute__((target("avx2"))) void tile_avx2(const int16_t* a, int64_t lda, const int8_t* b,
                                               int64_t ldb, int64_t K, int32_t* c, int64_t ldc) {
  __m256i acc[MR_][NR_];
  for (int i = 0; i < MR_; ++i)
    for (int j = 0; j < NR_; ++j) acc[i][j] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m256i bv[NR_];
    for (int j = 0; j < NR_; ++j)
      bv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + j * ldb + k)));
    for (int i = 0; i < MR_; ++i) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * lda + k));
      for (int j = 0; j < NR_; ++j)
        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av, bv[j]));
    }
  }
  for (int i = 0; i < MR_; ++i)
    for (int j = 0; j < NR_; ++j) {
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[i][j]), _mm256_extracti128_si256(acc[i][j], 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
      int32_t sum = _mm_cvtsi128_si32(s);
      for (int64_t kk = k; kk < K; ++kk)  // K % 16 tail
        sum += static_cast<int32_t>(a[i * lda + kk]) * static_cast<int32_t>(b[j * ldb + kk]);
      c[i * ldc + j] += sum;
    }
}

// Portable version of the same tile for CPUs without AVX2; a plain int32 loop.
template <int MR_, int NR_>
void tile_generic(const int16_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t K,
                  int32_t* c, int64_t ldc) {
  for (int i = 0; i < MR_; ++i)
    for (int j = 0; j < NR_; ++j) {
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k)
        sum += static_cast<int32_t>(a[i * lda + k]) * static_cast<int32_t>(b[j * ldb + k]);
      c[i * ldc + j] += sum;
    }
}

using TileFn = void (*)(const int16_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t);

template <int MR_, int NR_>
TileFn pick_tile(bool avx2) {
  return avx2 ? &tile_avx2<MR_, NR_> : &tile_generic<MR_, NR_>;
}

// Tile functions for every edge size (mr in 1..MR, nr in 1..NR; nr up to NR_GEMV for mr = 1).
struct TileTable {
  TileFn fn[MR + 1][NR_GEMV + 1];
  explicit TileTable(bool avx2) {
    fn[1][3] = pick_tile<1, 3>(avx2); fn[1][4] = pick_tile<1, 4>(avx2);
    fn[1][1] = pick_tile<1, 1>(avx2); fn[1][2] = pick_tile<1, 2>(avx2);
    fn[2][1] = pick_tile<2, 1>(avx2); fn[2][2] = pick_tile<2, 2>(avx2);
    fn[3][1] = pick_tile<3, 1>(avx2); fn[3][2] = pick_tile<3, 2>(avx2);
    fn[4][1] = pick_tile<4, 1>(avx2); fn[4][2] = pick_tile<4, 2>(avx2);
  }
};


// a widened to int16 once: [M, K] contiguous.
at::Tensor widen_to_int16(const at::Tensor& a) {
  auto a16 = at::empty(a.sizes(), a.options().dtype(at::kShort));
  const int8_t* src = a.data_ptr<int8_t>();
  int16_t* dst = a16.data_ptr<int16_t>();
  parallel_chunks(a.numel(), 1 << 16, a.numel() * 3, [&](int, int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) dst[t] = src[t];
  });
  return a16;
}

// ---------------------------------------------------------------- AVX512-VNNI tiles

#define INT8KERN_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))
// GCC 12's own _mm512_extracti64x4_epi64 reads an undefined vector and warns about it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
constexpr int VNNI_MR = 6;
constexpr int VNNI_NR = 4;
constexpr int VNNI_NR_GEMV = 8;  // a single row of a: eight weight rows streamed at once

// Lane sums of four vectors: {sum(z0), sum(z1), sum(z2), sum(z3)}. Within each 128-bit lane
// the unpacks pair up z0/z1 and z2/z3 and the 64-bit unpacks gather one partial per vector;
// the four lanes are then added. 13 instructions for four sums instead of ~28.
INT8KERN_VNNI inline __m128i lane_sums4(__m512i z0, __m512i z1, __m512i z2, __m512i z3) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(z0, z1), _mm512_unpackhi_epi32(z0, z1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(z2, z3), _mm512_unpackhi_epi32(z2, z3));
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// acc += dot4(au, b) per int32 lane (vpdpbusd), written as asm with the accumulator tied in
// and out ("+v"): with the intrinsic, GCC 12 copied all 16 accumulators of the 4x4 tile to
// other registers and back around every step (32 extra zmm moves per 16 vpdpbusd).
INT8KERN_VNNI inline __attribute__((always_inline)) __m512i dpbusd(__m512i acc, __m512i au, __m512i b) {
  asm("vpdpbusd %[b], %[au], %[acc]" : [acc] "+v"(acc) : [au] "v"(au), [b] "v"(b));
  return acc;
}

// One 64-byte k step of an MR_ x NR_ tile, loading with LOAD (plain, or masked for the tail).
// A macro, not a helper taking the accumulators by reference: GCC then keeps them on the
// stack, a load and a store around every vpdpbusd.
#define INT8KERN_VNNI_STEP(LOAD)                                                        \
  {                                                                                    \
    __m512i bv[NR_];                                                                   \
    for (int j = 0; j < NR_; ++j) bv[j] = LOAD(b + j * ldb + k);                       \
    for (int i = 0; i < MR_; ++i) {                                                    \
      const __m512i av = LOAD(a + i * lda + k);                                        \
      for (int j = 0; j < NR_; ++j)                                                    \
        acc[i * NR_ + j] = dpbusd(acc[i * NR_ + j], av, bv[j]);                        \
    }                                                                                  \
  }

// c[i * ldc + j] += sum_k au[i][k] * b[j][k] over one K slice (au: a + 128 as u8). The last
// partial 64-byte step uses masked loads: the bytes past K read as 0 in both operands.
template <int MR_, int NR_>
INT8KERN_VNNI void tile_vnni(const uint8_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                             int64_t K, int32_t* c, int64_t ldc) {
  __m512i acc[MR_ * NR_];
  for (int t = 0; t < MR_ * NR_; ++t) acc[t] = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) INT8KERN_VNNI_STEP(_mm512_loadu_si512)
  if (k < K) {
    const __mmask64 tail = (__mmask64{1} << (K - k)) - 1;
#define INT8KERN_LOAD_TAIL(p) _mm512_maskz_loadu_epi8(tail, p)
    INT8KERN_VNNI_STEP(INT8KERN_LOAD_TAIL)
#undef INT8KERN_LOAD_TAIL
  }
  for (int i = 0; i < MR_; ++i) {
    int j = 0;
    for (; j + 4 <= NR_; j += 4) {
      __m128i* dst = reinterpret_cast<__m128i*>(c + i * ldc + j);
      const __m128i s = lane_sums4(acc[i * NR_ + j], acc[i * NR_ + j + 1], acc[i * NR_ + j + 2],
                                   acc[i * NR_ + j + 3]);
      _mm_storeu_si128(dst, _mm_add_epi32(_mm_loadu_si128(dst), s));
    }
    for (; j < NR_; ++j) c[i * ldc + j] += _mm512_reduce_add_epi32(acc[i * NR_ + j]);
  }
}

// sum_k b[k], exact (|sum| <= 128 K), for the u8 shift correction.
INT8KERN_VNNI int32_t row_sum_vnni(const int8_t* b, int64_t K) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(b + k));
  if (k < K) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8((__mmask64{1} << (K - k)) - 1, b + k));
  return _mm512_reduce_add_epi32(acc);
}

// Decode (a few rows of a): weight rows read one after another in address order, R_ of them
// per call (R_ <= 4), each against MR_ rows of a (MR_ <= 4): c[i * ldc + j] = sum_k a[i][k] b[j][k]
// (exact, assigned, not added). The tiles above read their NR weight rows side by side, a
// 64-byte step of each in turn: on Zen 4, one thread streaming 256 MiB of rows 576 bytes long
// that way ran at 8-10 GB/s, and row after row at 18-25 GB/s (at K = 4096 both ~18 GB/s;
// benchmarks/NOTES.md): the hardware prefetcher follows one long stream, not eight streams
// of nine lines. The u8 shift's correction (128 * sum_k b[j, k], see the top) is summed in the
// same pass, one more vpdpbusd per 64 weight bytes, which costs nothing while the loop waits
// for memory, and is applied per lane before the lane sums.
template <int MR_, int R_>
INT8KERN_VNNI void rows_dot_vnni(const uint8_t* au, int64_t K, const int8_t* b, int32_t* c, int64_t ldc) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[MR_][4], bsum[4];
  for (int j = 0; j < 4; ++j) {
    bsum[j] = _mm512_setzero_si512();
    for (int i = 0; i < MR_; ++i) acc[i][j] = _mm512_setzero_si512();
  }
  for (int j = 0; j < R_; ++j) {
    const int8_t* bj = b + j * K;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      const __m512i bv = _mm512_loadu_si512(bj + k);
      bsum[j] = dpbusd(bsum[j], ones, bv);
      for (int i = 0; i < MR_; ++i) acc[i][j] = dpbusd(acc[i][j], _mm512_loadu_si512(au + i * K + k), bv);
    }
    if (k < K) {
      const __mmask64 tail = (__mmask64{1} << (K - k)) - 1;
      const __m512i bv = _mm512_maskz_loadu_epi8(tail, bj + k);
      bsum[j] = dpbusd(bsum[j], ones, bv);
      for (int i = 0; i < MR_; ++i)
        acc[i][j] = dpbusd(acc[i][j], _mm512_maskz_loadu_epi8(tail, au + i * K + k), bv);
    }
  }
  for (int i = 0; i < MR_; ++i) {
    __m512i d[4];
    for (int j = 0; j < 4; ++j) d[j] = _mm512_sub_epi32(acc[i][j], _mm512_slli_epi32(bsum[j], 7));
    alignas(16) int32_t s[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(s), lane_sums4(d[0], d[1], d[2], d[3]));
    for (int j = 0; j < R_; ++j) c[i * ldc + j] = s[j];
  }
}

#pragma GCC diagnostic pop

// ---------------------------------------------------------------- the paths

// The kernel-specific parts of the blocked GEMM: how a is prepared once per call, the tile
// functions, the K slice, and the correction applied to a finished block.
struct Int16Path {
  using AType = int16_t;
  static constexpr int kMR = MR, kNR = NR, kNRGemv = NR_GEMV;
  static constexpr int64_t kBlockK = 1024;  // a multiple of 16: only the last slice has a tail
  TileTable table;
  explicit Int16Path(bool avx2) : table(avx2) {}
  static at::Tensor prepare_a(const at::Tensor& a) { return widen_to_int16(a); }
  TileFn tile(int mr, int nr) const { return table.fn[mr][nr]; }
  // Nothing to correct: int16 products are the true products.
  void finish(const int8_t*, int64_t, int64_t, int64_t, int32_t*, int64_t, int64_t) const {}
};

// AVX2 sign-trick tiles; a used as it is (int8, no copy). Only for an a without -128.
struct SignAvx2Path {
  using AType = int8_t;
  using Fn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t);
  static constexpr int kMR = MR, kNR = NR, kNRGemv = NR_GEMV;
  // A multiple of 32: only the last slice has a tail. Long, as the tiles' lane sums are paid
  // once per slice: 60 GMAC/s at 1024 against 67 at 4096 on one Zen 4 core (NOTES); a's 4
  // rows and b's 2 rows of a 4096 slice take 24 KiB of L1 (int8, not int16).
  static constexpr int64_t kBlockK = 4096;
  Fn fn[MR + 1][NR_GEMV + 1] = {};
  SignAvx2Path() {
    fn[1][1] = &tile_sign_avx2<1, 1>; fn[1][2] = &tile_sign_avx2<1, 2>;
    fn[1][3] = &tile_sign_avx2<1, 3>; fn[1][4] = &tile_sign_avx2<1, 4>;
    fn[2][1] = &tile_sign_avx2<2, 1>; fn[2][2] = &tile_sign_avx2<2, 2>;
    fn[3][1] = &tile_sign_avx2<3, 1>; fn[3][2] = &tile_sign_avx2<3, 2>;
    fn[4][1] = &tile_sign_avx2<4, 1>; fn[4][2] = &tile_sign_avx2<4, 2>;
  }
  static at::Tensor prepare_a(const at::Tensor& a) { return a; }
  Fn tile(int mr, int nr) const { return fn[mr][nr]; }
  void finish(const int8_t*, int64_t, int64_t, int64_t, int32_t*, int64_t, int64_t) const {}
};

struct VnniPath {
  using AType = uint8_t;
  using Fn = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t);
  static constexpr int kMR = VNNI_MR, kNR = VNNI_NR, kNRGemv = VNNI_NR_GEMV;
  static constexpr int64_t kBlockK = 4096;  // a multiple of 64
  Fn fn[VNNI_MR + 1][VNNI_NR_GEMV + 1] = {};
  VnniPath() {
    fn[1][1] = &tile_vnni<1, 1>; fn[1][2] = &tile_vnni<1, 2>; fn[1][3] = &tile_vnni<1, 3>;
    fn[1][4] = &tile_vnni<1, 4>; fn[1][5] = &tile_vnni<1, 5>; fn[1][6] = &tile_vnni<1, 6>;
    fn[1][7] = &tile_vnni<1, 7>; fn[1][8] = &tile_vnni<1, 8>;
    fn[2][1] = &tile_vnni<2, 1>; fn[2][2] = &tile_vnni<2, 2>; fn[2][3] = &tile_vnni<2, 3>; fn[2][4] = &tile_vnni<2, 4>;
    fn[3][1] = &tile_vnni<3, 1>; fn[3][2] = &tile_vnni<3, 2>; fn[3][3] = &tile_vnni<3, 3>; fn[3][4] = &tile_vnni<3, 4>;
    fn[4][1] = &tile_vnni<4, 1>; fn[4][2] = &tile_vnni<4, 2>; fn[4][3] = &tile_vnni<4, 3>; fn[4][4] = &tile_vnni<4, 4>;
    fn[5][1] = &tile_vnni<5, 1>; fn[5][2] = &tile_vnni<5, 2>; fn[5][3] = &tile_vnni<5, 3>; fn[5][4] = &tile_vnni<5, 4>;
    fn[6][1] = &tile_vnni<6, 1>; fn[6][2] = &tile_vnni<6, 2>; fn[6][3] = &tile_vnni<6, 3>; fn[6][4] = &tile_vnni<6, 4>;
  }
  // a + 128 as u8, i.e. the sign bit flipped.
  static at::Tensor prepare_a(const at::Tensor& a) {
    auto au = at::empty(a.sizes(), a.options().dtype(at::kByte));
    const uint8_t* src = reinterpret_cast<const uint8_t*>(a.data_ptr<int8_t>());
    uint8_t* dst = au.data_ptr<uint8_t>();
    parallel_chunks(a.numel(), 1 << 16, a.numel() * 2, [&](int, int64_t s, int64_t e) {
      for (int64_t t = s; t < e; ++t) dst[t] = src[t] ^ 0x80u;
    });
    return au;
  }
  Fn tile(int mr, int nr) const { return fn[mr][nr]; }
  // acc[i][j] -= 128 * sum_k b[j, k] for the block's rows i and weight rows j0..j0+nb, in
  // uint32 arithmetic (wraps like the vector sums; the result is exact, see the top).
  void finish(const int8_t* b, int64_t K, int64_t j0, int64_t nb, int32_t* acc, int64_t ld,
              int64_t rows) const {
    uint32_t corr[BLOCK_N];
    for (int64_t jj = 0; jj < nb; ++jj)
      corr[jj] = 128u * static_cast<uint32_t>(row_sum_vnni(b + (j0 + jj) * K, K));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t jj = 0; jj < nb; ++jj)
        acc[r * ld + jj] = static_cast<int32_t>(static_cast<uint32_t>(acc[r * ld + jj]) - corr[jj]);
  }
};

// Runs the blocked GEMM and hands each finished [mr, BLOCK_N] strip of int32 results to
// sink(i0, mr, j0, nb, acc, ld_acc) while it is hot in cache. before_sink(j_block) runs once a
// task's products are done and before its results go to sink, on the thread that runs it:
// int8_linear gathers the task's outlier weight columns there, from weight rows the task has
// just brought into L1/L2 (gathered before the products, the same bytes cost a cache miss
// each and broke the rows' stream: 1/3 of the GEMV's time in a SmolLM2 decode profile).
// One parallel region for the whole product.
template <class Path, typename Sink, typename BeforeSink>
void gemm_blocked_with(const Path& path, const at::Tensor& a, const at::Tensor& b, Sink&& sink,
                       BeforeSink&& before_sink) {
  using AType = typename Path::AType;
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  const auto ap_t = Path::prepare_a(a);
  const AType* ap = reinterpret_cast<const AType*>(ap_t.data_ptr());
  const int8_t* bp = b.data_ptr<int8_t>();
  const int64_t m_blocks = (M + BLOCK_M - 1) / BLOCK_M;
  const int64_t n_blocks = (N + BLOCK_N - 1) / BLOCK_N;
  // The work estimate, in bytes: the weight streamed once per block of a's rows, plus the
  // multiply-accumulates at the ~16 per byte-time that one core of either path sustains.
  const int64_t work = m_blocks * N * K + M * N * K / 16;
  parallel_chunks_large(m_blocks * n_blocks, 1, work, [&](int, int64_t t0, int64_t t1) {
    thread_local std::vector<int32_t> acc;
    acc.resize(BLOCK_M * BLOCK_N);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i_begin = (t / n_blocks) * BLOCK_M, j_begin = (t % n_blocks) * BLOCK_N;
      const int64_t i_end = std::min(M, i_begin + BLOCK_M), j_end = std::min(N, j_begin + BLOCK_N);
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t k0 = 0; k0 < K; k0 += Path::kBlockK) {
        const int64_t kc = std::min(Path::kBlockK, K - k0);
        for (int64_t i = i_begin; i < i_end; i += Path::kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(Path::kMR, i_end - i));
          const int nr_max = mr == 1 ? Path::kNRGemv : Path::kNR;
          for (int64_t j = j_begin; j < j_end; j += nr_max) {
            const int nr = static_cast<int>(std::min<int64_t>(nr_max, j_end - j));
            path.tile(mr, nr)(ap + i * K + k0, K, bp + j * K + k0, K, kc,
                              acc.data() + (i - i_begin) * BLOCK_N + (j - j_begin), BLOCK_N);
          }
        }
      }
      path.finish(bp, K, j_begin, j_end - j_begin, acc.data(), BLOCK_N, i_end - i_begin);
      before_sink(t % n_blocks);
      for (int64_t i = i_begin; i < i_end; i += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, i_end - i));
        sink(i, mr, j_begin, j_end - j_begin, acc.data() + (i - i_begin) * BLOCK_N, BLOCK_N);
      }
    }
  });
}

// Decode sizes (use_row_stream below): the weight is read in address order, four rows at a
// time (rows_dot_vnni, rows_dot_sign_avx2) against up to kDotMaxM rows of a; further rows of
// a meet the same four weight rows again while they are in L1. Tasks of BLOCK_N weight rows
// as in gemm_blocked_with (before_sink and sink are called the same way). Beyond that the
// tiles win: they load a's rows once per NR weight rows, not once per weight row, and at
// long K they stream well anyway. On one Zen 4 core (benchmarks/NOTES.md, 2026-12-04): at
// K = 576..2048, M = 5..8 took 0.4-0.7x the tiles' time; at K = 4096, 1.0-1.2x.
constexpr int64_t kRowStreamMaxM = 8;
constexpr int kDotMaxM = 4;
bool use_row_stream(int64_t M, int64_t K) { return M <= kDotMaxM || (M <= kRowStreamMaxM && K <= 2048); }
constexpr int kRowsPerDot = 4;

template <typename AType>
struct RowsDotTable {
  using Fn = void (*)(const AType*, int64_t, const int8_t*, int32_t*, int64_t);
  Fn fn[kDotMaxM + 1][kRowsPerDot + 1] = {};
};
template <typename AType>
RowsDotTable<AType> rows_dot_table();
// rows_dot_table<AType>(): the table of `kernel`<m, r> for every m <= kDotMaxM, r <= kRowsPerDot.
#define INT8KERN_ROWS_DOT_FOR(kernel, m)                 \
  t.fn[m][1] = &kernel<m, 1>; t.fn[m][2] = &kernel<m, 2>; \
  t.fn[m][3] = &kernel<m, 3>; t.fn[m][4] = &kernel<m, 4>;
#define INT8KERN_ROWS_DOT_TABLE(AType, kernel)                                            \
  template <>                                                                             \
  RowsDotTable<AType> rows_dot_table<AType>() {                                           \
    RowsDotTable<AType> t;                                                                \
    INT8KERN_ROWS_DOT_FOR(kernel, 1) INT8KERN_ROWS_DOT_FOR(kernel, 2)                     \
    INT8KERN_ROWS_DOT_FOR(kernel, 3) INT8KERN_ROWS_DOT_FOR(kernel, 4)                     \
    return t;                                                                             \
  }
INT8KERN_ROWS_DOT_TABLE(uint8_t, rows_dot_vnni)
INT8KERN_ROWS_DOT_TABLE(int8_t, rows_dot_sign_avx2)
#undef INT8KERN_ROWS_DOT_TABLE
#undef INT8KERN_ROWS_DOT_FOR

template <typename AType, typename Sink, typename BeforeSink>
void gemm_rows_streamed(const AType* ap, int64_t M, const int8_t* bp, int64_t N, int64_t K, Sink&& sink,
                        BeforeSink&& before_sink) {
  static const RowsDotTable<AType> table = rows_dot_table<AType>();
  const int64_t n_blocks = (N + BLOCK_N - 1) / BLOCK_N;
  parallel_chunks(n_blocks, 1, N * K + M * N * K / 16, [&](int, int64_t t0, int64_t t1) {
    int32_t acc[kRowStreamMaxM * BLOCK_N];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j_begin = t * BLOCK_N, j_end = std::min(N, j_begin + BLOCK_N);
      for (int64_t j = j_begin; j < j_end; j += kRowsPerDot) {
        const int64_t r = std::min<int64_t>(kRowsPerDot, j_end - j);
        for (int64_t i = 0; i < M; i += kDotMaxM)
          table.fn[std::min<int64_t>(kDotMaxM, M - i)][r](ap + i * K, K, bp + j * K,
                                                          acc + i * BLOCK_N + (j - j_begin), BLOCK_N);
      }
      before_sink(t);
      for (int64_t i = 0; i < M; i += kDotMaxM)
        sink(i, static_cast<int>(std::min<int64_t>(kDotMaxM, M - i)), j_begin, j_end - j_begin,
             acc + i * BLOCK_N, BLOCK_N);
    }
  });
  prefetch_after_stream(bp, N * K);
}

template <typename Sink, typename BeforeSink>
void gemm_blocked(const at::Tensor& a, const at::Tensor& b, Sink&& sink, BeforeSink&& before_sink) {
  const CpuIsa isa = cpu_isa();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  const int8_t* ap = a.data_ptr<int8_t>();
  const bool sign_trick_exact = isa >= CpuIsa::kAvx2 && isa < CpuIsa::kAvx512Vnni &&
                                !contains_int8_min_avx2(ap, a.numel());
  if (isa >= CpuIsa::kAvx512Vnni && use_row_stream(M, K)) {
    uint8_t au[kRowStreamMaxM * 4096];  // a + 128 as u8 (see the top); on the heap past 32 KiB
    std::vector<uint8_t> au_heap(M * K > kRowStreamMaxM * 4096 ? M * K : 0);
    uint8_t* aup = au_heap.empty() ? au : au_heap.data();
    for (int64_t t = 0; t < M * K; ++t) aup[t] = static_cast<uint8_t>(ap[t]) ^ 0x80u;
    gemm_rows_streamed(aup, M, b.data_ptr<int8_t>(), N, K, sink, before_sink);
  } else if (sign_trick_exact && use_row_stream(M, K)) {
    gemm_rows_streamed(ap, M, b.data_ptr<int8_t>(), N, K, sink, before_sink);
  } else if (isa >= CpuIsa::kAvx512Vnni) {
    static const VnniPath vnni;
    gemm_blocked_with(vnni, a, b, sink, before_sink);
  } else if (sign_trick_exact) {
    static const SignAvx2Path sign_avx2;
    gemm_blocked_with(sign_avx2, a, b, sink, before_sink);
  } else {
    static const Int16Path int16(isa >= CpuIsa::kAvx2);
    gemm_blocked_with(int16, a, b, sink, before_sink);
  }
}

void no_task_epilogue(int64_t) {}

// oneDNN for the large-M GEMMs (see the top): M >= 256, K >= 16, VNNI or AMX present.
bool use_onednn(int64_t M, int64_t K) {
  static const bool enabled = [] {
    const char* env = std::getenv("INT8KERN_CPU_ONEDNN");
    const bool allowed = !(env && std::strcmp(env, "0") == 0);
    return allowed && cpu_isa() >= CpuIsa::kAvx512Vnni &&
           (at::cpu::is_avx512_vnni_supported() || at::cpu::init_amx());
  }();
  return enabled && M >= 256 && K >= 16;
}

}  // namespace

at::Tensor int8_matmul_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_int8_operands("int8_matmul", a_in, b_in);
  const int64_t M = a_in.size(0), N = b_in.size(0);
  auto a = a_in.contiguous(), b = b_in.contiguous();
  if (M == 0 || N == 0) return at::zeros({M, N}, a.options().dtype(at::kInt));
  if (use_onednn(M, a.size(1))) return at::_int_mm(a, b.t());
  auto out = at::empty({M, N}, a.options().dtype(at::kInt));
  int32_t* op = out.data_ptr<int32_t>();
  gemm_blocked(a, b, [&](int64_t i, int mr, int64_t j0, int64_t nb, const int32_t* acc, int64_t ld) {
    for (int ii = 0; ii < mr; ++ii) std::memcpy(op + (i + ii) * N + j0, acc + ii * ld, nb * sizeof(int32_t));
  }, no_task_epilogue);
  return out;
}

at::Tensor int8_scaled_matmul_operands_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                           const EpilogueOperands& operands, at::ScalarType out_dtype) {
  const int64_t M = a_in.size(0), N = b_in.size(0);
  auto out = at::empty({M, N}, a_in.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  auto a = a_in.contiguous(), b = b_in.contiguous();
  const EpilogueArgs e = operands.args();
  // int8_linear's outlier weight columns, when not gathered yet: inside the GEMM's tasks if
  // each weight block is visited once (one block of a's rows; no parallel region of their
  // own), else in a pass of their own first.
  const OutlierColumns* gather_outliers_per_task = operands.pending_outlier_weights();
  if (gather_outliers_per_task && (use_onednn(M, a.size(1)) || M > BLOCK_M)) {
    const int64_t blocks = gather_outliers_per_task->wo.size(0);
    parallel_chunks(blocks, 1, N * gather_outliers_per_task->cols.numel() * 64, [&](int, int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) gather_outliers_per_task->gather_block(blk);
    });
    gather_outliers_per_task = nullptr;
  }
  dispatch_epilogue_types(out_dtype, operands.add_is_float(),
                          [&]<typename OutT, typename AddT>() {
    OutT* o = static_cast<OutT*>(out.data_ptr());
    if (use_onednn(M, a.size(1))) {
      // oneDNN's int32 result, then one dequantize pass. Asked for transposed, b @ a.T: oneDNN
      // repacks its second operand on every call, and a.T (M x K) is smaller than the weight
      // (a quarter of it at M = 1024, K = N = 4096): 20.5-20.8 ms instead of 22.1-23.1 ms at
      // M = 512 on 2 Zen 4 cores (a contiguous copy of a.T: 22.0 ms).
      const auto acc_t = at::_int_mm(b, a.t());  // [N, M]
      const int32_t* accp = acc_t.data_ptr<int32_t>();
      constexpr int64_t kRows = 16;  // one 64-byte line of acc_t per column
      parallel_chunks((M + kRows - 1) / kRows, 1, M * N * 8, [&](int, int64_t g0, int64_t g1) {
        for (int64_t g = g0; g < g1; ++g) {
          const int64_t i = g * kRows, rows = std::min(kRows, M - i);
          dequantize_rows_transposed<OutT, AddT>(e, i, rows, accp + i, M, o + i * N, N);
        }
      });
      return;
    }
    gemm_blocked(a, b, [&](int64_t i, int mr, int64_t j0, int64_t nb, const int32_t* acc, int64_t ld) {
      dequantize_tile<OutT, AddT>(e, i, mr, j0, nb, acc, ld, o + i * N + j0, N);
    }, [&](int64_t j_block) {
      if (gather_outliers_per_task) gather_outliers_per_task->gather_block(j_block, /*rows_cached=*/true);
    });
  });
  return out;
}

at::Tensor int8_scaled_matmul_cpu(const at::Tensor& a, const at::Tensor& b,
                                  const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                                  const c10::optional<at::Tensor>& bias,
                                  const c10::optional<at::Tensor>& add, at::ScalarType out_dtype) {
  const char* op = "int8_scaled_matmul";
  check_int8_operands(op, a, b);
  check_epilogue_args(op, a, a.size(0), b.size(0), row_absmax, col_absmax, bias, add, out_dtype);
  const EpilogueOperands operands(row_absmax, col_absmax, bias, add, out_dtype);
  return int8_scaled_matmul_operands_cpu(a, b, operands, out_dtype);
}

TORCH_LIBRARY_IMPL(int8kern, CPU, m) {
  m.impl("int8_matmul", &int8_matmul_cpu);
  m.impl("int8_scaled_matmul", &int8_scaled_matmul_cpu);
}

}  // namespace cpu
}  // namespace int8kern
