// dequantize_tile (epilogue.h): the dequantize epilogue over a tile of the int32 accumulator,
// in AVX-512 when the CPU has it, with a scalar version of the same arithmetic otherwise (its
// outlier sums in AVX2 when the CPU has that).
//
// The AVX-512 strip is R <= 4 rows by 32 columns: the outlier term's R x 32 double sums live
// in 16 zmm registers while the outlier columns are walked once (4 loads of wo and R
// broadcasts of xo per column, 4R FMAs), then each row is dequantized 8 columns at a time in
// float32 (ymm) with the same operations, in the same order, as the scalar code: float(acc)
// * r, * c, + bias, + add, + float(outlier sum); stores round to the output dtype as c10
// does (round half to even; bfloat16 NaN as 0x7FC0). -ffp-contract=off keeps the multiplies
// and adds separate, as they are in the reference.
#include <ATen/ATen.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include "epilogue.h"
#include "isa.h"

namespace int8kern {
namespace cpu {
namespace {

// ---------------------------------------------------------------- outlier sums, AVX2

// Without AVX-512, the outlier term is the epilogue's one costly part: n_out multiply-adds in
// double per output element, one dependent chain each when scalar (~4 cycles a column), which
// made int8_linear on an AVX2 CPU 3-8x slower with 32-128 outlier columns than without
// (benchmarks/NOTES.md, 2026-12-05). Here 16 columns of up to 2 rows at a time in ymm: 8 double
// accumulators, c ascending as in the scalar loop. Each product is exact in double (two float32
// values), so the FMA rounds exactly as the scalar code's separate add does: the same sums, bit
// for bit. The rest of the epilogue stays scalar: a few float operations per element.
template <int R>
__attribute__((target("avx2,fma"))) void outlier_sums_avx2(const EpilogueArgs& e, int64_t i, int64_t j0,
                                                          double (*sums)[32]) {
  const int64_t n_out = e.n_out;
  const double* xo = e.xo + i * n_out;
  for (int h = 0; h < 32; h += 16) {
    __m256d o[R][4];
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) o[r][v] = _mm256_setzero_pd();
    const double* wo = e.wo + j0 * n_out + h;  // this block's [n_out][32] (zero past N), columns h ..
    for (int64_t c = 0; c < n_out; ++c, wo += 32) {
      __m256d w[4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) w[v] = _mm256_loadu_pd(wo + 4 * v);
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) {
        const __m256d xv = _mm256_broadcast_sd(xo + r * n_out + c);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) o[r][v] = _mm256_fmadd_pd(xv, w[v], o[r][v]);  // exact product
      }
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) _mm256_storeu_pd(&sums[r][h + 4 * v], o[r][v]);
  }
}

// INT8KERN_CPU_SCALAR_EPILOGUE set: the scalar epilogue and outlier sums, whatever the CPU
// (the tests compare them with the vector ones); read once per process.
bool scalar_epilogue_forced() {
  static const bool forced = std::getenv("INT8KERN_CPU_SCALAR_EPILOGUE") != nullptr;
  return forced;
}

bool cpu_has_avx2_outlier_sums() {
  static const bool has = cpu_isa() >= CpuIsa::kAvx2 && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("fma") && !scalar_epilogue_forced();
  return has;
}

// sums[r][j] = sum_c xo[i + r, c] * wo[c, j0 + j] in double, c ascending, for rows r < rows
// (<= 2) and the 32-column block at j0 (j0 % 32 == 0).
void outlier_sums(const EpilogueArgs& e, int64_t i, int64_t rows, int64_t j0, double (*sums)[32]) {
  if (cpu_has_avx2_outlier_sums()) {
    if (rows == 2) outlier_sums_avx2<2>(e, i, j0, sums);
    else outlier_sums_avx2<1>(e, i, j0, sums);
    return;
  }
  const double* wo = e.wo + j0 * e.n_out;
  for (int64_t r = 0; r < rows; ++r) {
    const double* xo = e.xo + (i + r) * e.n_out;
    for (int64_t j = 0; j < 32; ++j) {
      double s = 0.0;
      for (int64_t c = 0; c < e.n_out; ++c) s += xo[c] * wo[c * 32 + j];
      sums[r][j] = s;
    }
  }
}

// ---------------------------------------------------------------- scalar

template <typename OutT, typename AddT>
void dequantize_tile_scalar(const EpilogueArgs& e, int64_t i, int64_t rows, int64_t j0, int64_t n,
                            const int32_t* acc, int64_t ld, OutT* out, int64_t ldo) {
  double sums[2][32];
  for (int64_t jb = 0; jb < n; jb += 32) {  // with an outlier term, j0 + jb starts a block of wo
    const int64_t nb = std::min<int64_t>(32, n - jb);
    for (int64_t r0 = 0; r0 < rows; r0 += 2) {
      const int64_t pair = std::min<int64_t>(2, rows - r0);
      if (e.n_out > 0) outlier_sums(e, i + r0, pair, j0 + jb, sums);
      for (int64_t r = r0; r < r0 + pair; ++r) {
        const float rs = e.row_absmax[i + r] / 127.0f;
        const AddT* add = e.add ? static_cast<const AddT*>(e.add) + (i + r) * e.N + j0 + jb : nullptr;
        for (int64_t j = 0; j < nb; ++j) {
          float v = static_cast<float>(acc[r * ld + jb + j]) * rs * e.col_scale[j0 + jb + j];
          if (e.bias) v += e.bias[j0 + jb + j];
          if (add) v += static_cast<float>(add[j]);
          // float64 -> float32 -> OutT (x's dtype), then added in float32: the reference's
          // outlier_product and `+ add.float()`.
          if (e.n_out > 0) v += static_cast<float>(static_cast<OutT>(static_cast<float>(sums[r - r0][j])));
          out[r * ldo + jb + j] = static_cast<OutT>(v);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- AVX-512

#define INT8KERN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))

INT8KERN_AVX512 inline __m256 load8(const float* p, __mmask8 m) { return _mm256_maskz_loadu_ps(m, p); }
INT8KERN_AVX512 inline __m256 load8(const at::Half* p, __mmask8 m) {
  return _mm256_cvtph_ps(_mm_maskz_loadu_epi16(m, p));  // exact
}
INT8KERN_AVX512 inline __m256 load8(const at::BFloat16* p, __mmask8 m) {  // exact: the high half
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(m, p)), 16));
}

INT8KERN_AVX512 inline void store8(float* p, __m256 v, __mmask8 m) { _mm256_mask_storeu_ps(p, m, v); }
INT8KERN_AVX512 inline void store8(at::Half* p, __m256 v, __mmask8 m) {
  _mm_mask_storeu_epi16(p, m, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// c10's float -> bfloat16: add 0x7FFF + the lowest kept bit, keep the high half; NaN -> 0x7FC0.
// (vcvtneps2bf16 would flush denormals, which c10 does not.)
INT8KERN_AVX512 inline void store8(at::BFloat16* p, __m256 v, __mmask8 m) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i h = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  h = _mm256_mask_mov_epi32(h, _mm256_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm256_set1_epi32(0x7FC0));
  _mm_mask_storeu_epi16(p, m, _mm256_cvtepi32_epi16(h));
}

// float(T(v)): the outlier term is rounded to the output (x's) dtype before it is added, as the
// reference's outlier_product is; the round trip is the stores' and loads' own conversion.
template <typename T>
INT8KERN_AVX512 inline __m256 round_through(__m256 v) {
  if constexpr (std::is_same<T, float>::value) {
    return v;
  } else {
    alignas(32) T tmp[8];
    store8(tmp, v, __mmask8(0xFF));
    return load8(tmp, __mmask8(0xFF));
  }
}

template <int R, typename OutT, typename AddT>
INT8KERN_AVX512 void strip_avx512(const EpilogueArgs& e, int64_t i, int64_t j0, int64_t nb,
                                  const int32_t* acc, int64_t ld, OutT* out, int64_t ldo) {
  __mmask8 m[4];
  for (int v = 0; v < 4; ++v) {
    const int64_t left = nb - 8 * v;
    m[v] = left >= 8 ? __mmask8(0xFF) : left > 0 ? __mmask8((1u << left) - 1) : __mmask8(0);
  }
  // The outlier term, rounded to float32. The double sums stay in registers through the
  // loop over outlier columns and are stored once (constant indices only: GCC otherwise keeps
  // the array in memory and stores all 16 vectors on every iteration).
  alignas(32) float term[R][32];
  if (e.n_out > 0) {
    __m512d o[R][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) o[r][v] = _mm512_setzero_pd();
    const double* xo = e.xo + i * e.n_out;
    const int64_t n_out = e.n_out;
    const double* wo = e.wo + j0 * n_out;  // this strip's block: [n_out][32], contiguous
    for (int64_t c = 0; c < n_out; ++c, wo += 32) {
      __m512d w[4];  // zero past N: no mask needed
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) w[v] = _mm512_loadu_pd(wo + 8 * v);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512d xv = _mm512_set1_pd(xo[r * n_out + c]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) o[r][v] = _mm512_fmadd_pd(xv, w[v], o[r][v]);  // exact product
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) _mm256_store_ps(&term[r][8 * v], round_through<OutT>(_mm512_cvtpd_ps(o[r][v])));
  }
  for (int r = 0; r < R; ++r) {
    const __m256 rs = _mm256_set1_ps(e.row_absmax[i + r] / 127.0f);
    const AddT* add = e.add ? static_cast<const AddT*>(e.add) + (i + r) * e.N + j0 : nullptr;
    for (int v = 0; v < 4; ++v) {
      if (!m[v]) continue;
      __m256 f = _mm256_cvtepi32_ps(_mm256_maskz_loadu_epi32(m[v], acc + r * ld + 8 * v));
      f = _mm256_mul_ps(_mm256_mul_ps(f, rs), _mm256_maskz_loadu_ps(m[v], e.col_scale + j0 + 8 * v));
      if (e.bias) f = _mm256_add_ps(f, _mm256_maskz_loadu_ps(m[v], e.bias + j0 + 8 * v));
      if (add) f = _mm256_add_ps(f, load8(add + 8 * v, m[v]));
      if (e.n_out > 0) f = _mm256_add_ps(f, _mm256_load_ps(&term[r][8 * v]));
      store8(out + r * ldo + 8 * v, f, m[v]);
    }
  }
}

template <typename OutT, typename AddT>
void dequantize_tile_avx512(const EpilogueArgs& e, int64_t i, int64_t rows, int64_t j0, int64_t n,
                            const int32_t* acc, int64_t ld, OutT* out, int64_t ldo) {
  for (int64_t jb = 0; jb < n; jb += 32) {
    const int64_t nb = std::min<int64_t>(32, n - jb);
    for (int64_t r = 0; r < rows; r += 4) {
      const int32_t* a = acc + r * ld + jb;
      OutT* o = out + r * ldo + jb;
      switch (std::min<int64_t>(4, rows - r)) {
        case 4: strip_avx512<4, OutT, AddT>(e, i + r, j0 + jb, nb, a, ld, o, ldo); break;
        case 3: strip_avx512<3, OutT, AddT>(e, i + r, j0 + jb, nb, a, ld, o, ldo); break;
        case 2: strip_avx512<2, OutT, AddT>(e, i + r, j0 + jb, nb, a, ld, o, ldo); break;
        default: strip_avx512<1, OutT, AddT>(e, i + r, j0 + jb, nb, a, ld, o, ldo); break;
      }
    }
  }
}

// acc_t holds the int32 result transposed (acc_t[j * ldt + r] is row i + r, column j; rows <=
// 16): each 32-column block is transposed back through 8 x 8 register transposes into a small
// row-major tile in L1, which the strips above then read. 16 rows = one 64-byte line of acc_t
// per column, so every line is read once.
INT8KERN_AVX512 inline void transpose8x8(__m256i r[8]) {
  __m256i t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_epi32(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_epi32(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_unpacklo_epi64(t[k], t[k + 2]);
    u[k + 1] = _mm256_unpackhi_epi64(t[k], t[k + 2]);
    u[k + 2] = _mm256_unpacklo_epi64(t[k + 1], t[k + 3]);
    u[k + 3] = _mm256_unpackhi_epi64(t[k + 1], t[k + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x20);
    r[k + 4] = _mm256_permute2x128_si256(u[k], u[k + 4], 0x31);
  }
}

template <typename OutT, typename AddT>
INT8KERN_AVX512 void dequantize_rows_transposed_avx512(const EpilogueArgs& e, int64_t i, int64_t rows,
                                                       const int32_t* acc_t, int64_t ldt, OutT* out,
                                                       int64_t ldo) {
  alignas(64) int32_t tile[16][32];
  const int64_t N = e.N;
  for (int64_t jb = 0; jb < N; jb += 32) {
    const int64_t nb = std::min<int64_t>(32, N - jb);
    for (int64_t h = 0; h < rows; h += 8) {  // 8 rows of the tile at a time
      const int64_t hr = std::min<int64_t>(8, rows - h);
      const __mmask8 row_mask = static_cast<__mmask8>((1u << hr) - 1);
      for (int64_t c = 0; c < nb; c += 8) {
        __m256i r[8];
        for (int t = 0; t < 8; ++t)
          r[t] = c + t < nb ? _mm256_maskz_loadu_epi32(row_mask, acc_t + (jb + c + t) * ldt + h)
                            : _mm256_setzero_si256();
        transpose8x8(r);  // r[s]: row i + h + s, columns jb + c .. + 7
        for (int s = 0; s < 8; ++s) _mm256_store_si256(reinterpret_cast<__m256i*>(&tile[h + s][c]), r[s]);
      }
    }
    dequantize_tile_avx512<OutT, AddT>(e, i, rows, jb, nb, &tile[0][0], 32, out + jb, ldo);
  }
}

bool cpu_has_avx512_epilogue() {
  static const bool has = cpu_isa() >= CpuIsa::kAvx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("f16c") && !scalar_epilogue_forced();
  return has;
}

}  // namespace

template <typename OutT, typename AddT>
void dequantize_tile(const EpilogueArgs& e, int64_t i, int64_t rows, int64_t j0, int64_t n,
                     const int32_t* acc, int64_t ld, OutT* out, int64_t ldo) {
  TORCH_INTERNAL_ASSERT(e.n_out == 0 || j0 % 32 == 0, "outlier term needs 32-column blocks");
  if (cpu_has_avx512_epilogue()) dequantize_tile_avx512<OutT, AddT>(e, i, rows, j0, n, acc, ld, out, ldo);
  else dequantize_tile_scalar<OutT, AddT>(e, i, rows, j0, n, acc, ld, out, ldo);
}

template <typename OutT, typename AddT>
void dequantize_rows_transposed(const EpilogueArgs& e, int64_t i, int64_t rows, const int32_t* acc_t,
                                int64_t ldt, OutT* out, int64_t ldo) {
  TORCH_INTERNAL_ASSERT(rows <= 16, "dequantize_rows_transposed takes at most 16 rows");
  if (cpu_has_avx512_epilogue()) return dequantize_rows_transposed_avx512<OutT, AddT>(e, i, rows, acc_t, ldt, out, ldo);
  int32_t row[32];  // scalar: gather 32 columns of one row, then the scalar tile
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t jb = 0; jb < e.N; jb += 32) {
      const int64_t nb = std::min<int64_t>(32, e.N - jb);
      for (int64_t c = 0; c < nb; ++c) row[c] = acc_t[(jb + c) * ldt + r];
      dequantize_tile_scalar<OutT, AddT>(e, i + r, 1, jb, nb, row, 32, out + r * ldo + jb, ldo);
    }
}

#define INT8KERN_INSTANTIATE(OutT, AddT)                                                   \
  template void dequantize_tile<OutT, AddT>(const EpilogueArgs&, int64_t, int64_t, int64_t, \
                                            int64_t, const int32_t*, int64_t, OutT*, int64_t); \
  template void dequantize_rows_transposed<OutT, AddT>(const EpilogueArgs&, int64_t, int64_t,     \
                                                       const int32_t*, int64_t, OutT*, int64_t);
INT8KERN_INSTANTIATE(float, float)
INT8KERN_INSTANTIATE(at::Half, at::Half)
INT8KERN_INSTANTIATE(at::Half, float)
INT8KERN_INSTANTIATE(at::BFloat16, at::BFloat16)
INT8KERN_INSTANTIATE(at::BFloat16, float)
#undef INT8KERN_INSTANTIATE

}  // namespace cpu
}  // namespace int8kern
