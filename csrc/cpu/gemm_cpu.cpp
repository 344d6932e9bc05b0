// int8 GEMM on the CPU, exact in int32: int8_matmul (int32 out) and int8_scaled_matmul
// (the dequantize epilogue applied to each tile while it is still in registers/L1, so the
// int32 matrix never reaches memory).
//
// C[i, j] = sum_k a[i, k] * b[j, k]; both operands K-major (b is nn.Linear's weight).
// Products are formed in int16 lanes and summed pairwise into int32 (AVX2 vpmaddwd):
// |a*b + a'*b'| <= 2^15, so nothing saturates, unlike vpmaddubsw, and every step is exact.
// a is widened to int16 once per call (M*K*2 bytes, small next to the weight); b, the weight,
// is read as int8 and widened on the fly, so decode (M = 1..16) streams the weight once.
//
// Blocking: tasks are (BLOCK_M rows of a) x (BLOCK_N rows of b); a task keeps its BLOCK_N x K
// slice of b (128 KiB at K = 4096) in L2 and walks its rows of a in MR x NR register tiles:
// 4 x 2 tiles hold 8 accumulators, 4 a vectors and 2 b vectors (14 of 16 ymm registers).
//
// Where oneDNN has a fast exact int8 GEMM (AVX512-VNNI or AMX: at::_int_mm's CPU path),
// int8_matmul uses it for M >= 16; INT8KERN_CPU_ONEDNN=0 turns that off.
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "epilogue.h"

namespace int8kern {
namespace cpu {
namespace {

constexpr int MR = 4;
constexpr int NR = 2;
constexpr int NR_GEMV = 4;  // a single row of a: four weight rows in flight instead of two
constexpr int64_t BLOCK_N = 32;
constexpr int64_t BLOCK_M = 128;
constexpr int64_t BLOCK_K = 1024;  // a multiple of 16: only the last K slice has a tail

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

const TileTable& tiles() {
  static const TileTable table(__builtin_cpu_supports("avx2"));
  return table;
}

// a widened to int16 once: [M, K] contiguous.
at::Tensor widen_to_int16(const at::Tensor& a) {
  auto a16 = at::empty(a.sizes(), a.options().dtype(at::kShort));
  const int8_t* src = a.data_ptr<int8_t>();
  int16_t* dst = a16.data_ptr<int16_t>();
  at::parallel_for(0, a.numel(), 1 << 16, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) dst[t] = src[t];
  });
  return a16;
}

// Runs the blocked GEMM and hands each finished [mr, BLOCK_N] strip of int32 results to
// sink(i0, mr, j0, nb, acc, ld_acc) while it is hot in cache.
template <typename Sink>
void gemm_blocked(const at::Tensor& a, const at::Tensor& b, Sink&& sink) {
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  const auto a16 = widen_to_int16(a);
  const int16_t* ap = a16.data_ptr<int16_t>();
  const int8_t* bp = b.data_ptr<int8_t>();
  const TileTable& table = tiles();
  const int64_t m_blocks = (M + BLOCK_M - 1) / BLOCK_M;
  const int64_t n_blocks = (N + BLOCK_N - 1) / BLOCK_N;
  at::parallel_for(0, m_blocks * n_blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int32_t> acc(BLOCK_M * BLOCK_N);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i_begin = (t / n_blocks) * BLOCK_M, j_begin = (t % n_blocks) * BLOCK_N;
      const int64_t i_end = std::min(M, i_begin + BLOCK_M), j_end = std::min(N, j_begin + BLOCK_N);
      std::fill(acc.begin(), acc.end(), 0);
      for (int64_t k0 = 0; k0 < K; k0 += BLOCK_K) {
        const int64_t kc = std::min(BLOCK_K, K - k0);
        for (int64_t i = i_begin; i < i_end; i += MR) {
          const int mr = static_cast<int>(std::min<int64_t>(MR, i_end - i));
          const int nr_max = mr == 1 ? NR_GEMV : NR;
          for (int64_t j = j_begin; j < j_end; j += nr_max) {
            const int nr = static_cast<int>(std::min<int64_t>(nr_max, j_end - j));
            table.fn[mr][nr](ap + i * K + k0, K, bp + j * K + k0, K, kc,
                             acc.data() + (i - i_begin) * BLOCK_N + (j - j_begin), BLOCK_N);
          }
        }
      }
      for (int64_t i = i_begin; i < i_end; i += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, i_end - i));
        sink(i, mr, j_begin, j_end - j_begin, acc.data() + (i - i_begin) * BLOCK_N, BLOCK_N);
      }
    }
  });
}

bool use_onednn(int64_t M) {
  static const bool enabled = [] {
    const char* env = std::getenv("INT8KERN_CPU_ONEDNN");
    const bool allowed = !(env && std::strcmp(env, "0") == 0);
    return allowed && (at::cpu::is_avx512_vnni_supported() || at::cpu::init_amx());
  }();
  return enabled && M >= 16;
}

}  // namespace

at::Tensor int8_matmul_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_int8_operands("int8_matmul", a_in, b_in);
  const int64_t M = a_in.size(0), N = b_in.size(0);
  auto a = a_in.contiguous(), b = b_in.contiguous();
  if (M == 0 || N == 0) return at::zeros({M, N}, a.options().dtype(at::kInt));
  if (use_onednn(M)) return at::_int_mm(a, b.t());
  auto out = at::empty({M, N}, a.options().dtype(at::kInt));
  int32_t* op = out.data_ptr<int32_t>();
  gemm_blocked(a, b, [&](int64_t i, int mr, int64_t j0, int64_t nb, const int32_t* acc, int64_t ld) {
    for (int ii = 0; ii < mr; ++ii) std::memcpy(op + (i + ii) * N + j0, acc + ii * ld, nb * sizeof(int32_t));
  });
  return out;
}

at::Tensor int8_scaled_matmul_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                  const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                                  const c10::optional<at::Tensor>& bias,
                                  const c10::optional<at::Tensor>& add, at::ScalarType out_dtype) {
  const char* op = "int8_scaled_matmul";
  check_int8_operands(op, a_in, b_in);
  const int64_t M = a_in.size(0), N = b_in.size(0);
  check_epilogue_args(op, a_in, M, N, row_absmax, col_absmax, bias, add, out_dtype);
  auto out = at::empty({M, N}, a_in.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  auto a = a_in.contiguous(), b = b_in.contiguous();
  const EpilogueOperands operands(row_absmax, col_absmax, bias, add, out_dtype);
  const EpilogueArgs e = operands.args();
  dispatch_epilogue_types(out_dtype, operands.add_is_float(),
                          [&]<typename OutT, typename AddT>() {
    OutT* o = static_cast<OutT*>(out.data_ptr());
    if (use_onednn(M)) {  // oneDNN's int32 result, then one dequantize pass
      const auto acc = at::_int_mm(a, b.t());
      const int32_t* accp = acc.data_ptr<int32_t>();
      at::parallel_for(0, M, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i) dequantize_row<OutT, AddT>(e, i, accp + i * N, 0, N, o + i * N);
      });
      return;
    }
    gemm_blocked(a, b, [&](int64_t i, int mr, int64_t j0, int64_t nb, const int32_t* acc, int64_t ld) {
      for (int ii = 0; ii < mr; ++ii)
        dequantize_row<OutT, AddT>(e, i + ii, acc + ii * ld, j0, nb, o + (i + ii) * N + j0);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(int8kern, CPU, m) {
  m.impl("int8_matmul", &int8_matmul_cpu);
  m.impl("int8_scaled_matmul", &int8_scaled_matmul_cpu);
}

}  // namespace cpu
}  // namespace int8kern
