// The outlier half of LLM.int8() on the CPU, gathered for the epilogue (epilogue.h):
//   xo = x[:, cols] in float32, wo[c, j] = float(dtype(float(weight[j, cols[c]]) * absmax[j] / 127))
// both stored as float64 (exactly: they are float32 values), which the epilogue's double sums
// read without converting; wo in 32-column blocks [ceil(N / 32), n, 32]. The weight columns
// are rounded to x's dtype, as the reference does. The product xo @ wo is then formed inside
// the dequantize epilogue, in double, 32 output columns at a time, so the [M, N] outlier term
// never goes through memory. wo takes 8 * N * n bytes: with nearly every column an outlier
// (a tiny threshold) that is twice the reference's float32 copy of the weight columns.
//
// Why not ATen: for these shapes ([M, n_out] @ [n_out, N] with n_out ~ 0.5% of K) MKL's
// sgemm takes ~15 ms at M = 16, N = 4096, n_out = 20 on this project's first CPU (1.3 M
// MACs), more than the int8 GEMM itself, and adding its [M, N] result in the epilogue costs
// a write and a read of M * N floats.
#include <ATen/Dispatch.h>

#include <immintrin.h>

#include <algorithm>

#include "epilogue.h"
#include "isa.h"
#include "parallel.h"

namespace int8kern {
namespace cpu {

namespace {

// gather_block for a float32 x from rows already in cache, 16 rows at a time: the same values
// as the scalar loop below (float(w) * (absmax / 127), one rounding each, then exact in
// double), from dword gathers. A dword is read at the column's byte when 4 bytes fit in the
// row there, else at the byte 3 before it (the column's byte then on top): never past a row.
// GCC 12's shift intrinsics read an undefined vector and warn about it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void gather_block_f32_avx512(const int8_t* wp, const float* ap, int64_t K,
                                                                 const int64_t* cp, int64_t n, int64_t j0,
                                                                 int64_t j1, double* dst_block) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i row_offsets = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(K)));
  for (int64_t j = j0; j < j1; j += 16) {
    const __mmask16 rows = static_cast<__mmask16>(j1 - j >= 16 ? 0xFFFF : (1u << (j1 - j)) - 1);
    const __m512 scale = _mm512_div_ps(_mm512_maskz_loadu_ps(rows, ap + j), _mm512_set1_ps(127.0f));
    const int8_t* base = wp + j * K;
    double* dst = dst_block + (j - j0);
    for (int64_t k = 0; k < n; ++k) {
      const bool low = cp[k] + 4 <= K;
      const __m512i dword = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), rows,
                                                        _mm512_add_epi32(row_offsets, _mm512_set1_epi32(
                                                            static_cast<int>(low ? cp[k] : cp[k] - 3))),
                                                        base, 1);
      const __m512i w = _mm512_srai_epi32(low ? _mm512_slli_epi32(dword, 24) : dword, 24);
      const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(w), scale);
      _mm512_mask_storeu_pd(dst + k * 32, static_cast<__mmask8>(rows), _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
      _mm512_mask_storeu_pd(dst + k * 32 + 8, static_cast<__mmask8>(rows >> 8),
                            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
  }
}
#pragma GCC diagnostic pop

}  // namespace

void OutlierColumns::gather_block(int64_t b, bool rows_cached) const {
  const int64_t K = weight.size(1), N = weight.size(0), n = cols.size(0);
  const int64_t* cp = cols.data_ptr<int64_t>();
  const int8_t* wp = weight.data_ptr<int8_t>();
  const float* ap = weight_absmax.data_ptr<float>();
  double* dst_block = wo.data_ptr<double>() + b * n * 32;
  const int64_t j0 = b * 32, j1 = std::min(N, j0 + 32);
  static const bool avx512 = cpu_isa() >= CpuIsa::kAvx512;
  if (rows_cached && dtype == at::kFloat && avx512 && K >= 4 && K * 32 < (int64_t{1} << 31)) {
    gather_block_f32_avx512(wp, ap, K, cp, n, j0, j1, dst_block);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "int8_linear", [&] {
      // n bytes from each weight row: one cache line (and, in a large weight, one page) per byte
      // apart from neighbours, so the rows a few ahead are prefetched to keep misses in flight,
      // unless they are in cache already: then prefetching the next block's rows would pull
      // them in ahead of the GEMM's stream over them, a miss each.
      constexpr int64_t kAhead = 8;
      for (int64_t j = j0; j < j1; ++j) {
        if (!rows_cached && j + kAhead < N)
          for (int64_t k = 0; k < n; ++k) __builtin_prefetch(wp + (j + kAhead) * K + cp[k]);
        const float scale = ap[j] / 127.0f;  // a true division, as the reference's
        double* dst = dst_block + j % 32;
        for (int64_t k = 0; k < n; ++k)
          dst[k * 32] = static_cast<float>(static_cast<scalar_t>(static_cast<float>(wp[j * K + cp[k]]) * scale));
      }
    });
  }
  // The last block's columns past N stay zero, so the epilogue reads whole blocks unmasked.
  for (int64_t k = 0; k < n; ++k) std::fill(dst_block + k * 32 + (j1 - j0), dst_block + k * 32 + 32, 0.0);
}

OutlierColumns gather_outlier_columns(const at::Tensor& x2, const at::Tensor& weight,
                                      const at::Tensor& weight_absmax, const at::Tensor& cols,
                                      bool gather_weight_now) {
  const auto x = x2.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0), n = cols.numel();
  const int64_t blocks = (N + 31) / 32;
  // at::empty, not at::zeros: filling a tensor this size would open an OpenMP region of its own.
  OutlierColumns out{at::empty({M, n}, x.options().dtype(at::kDouble)),
                     at::empty({blocks, n, 32}, x.options().dtype(at::kDouble)),
                     weight.contiguous(), weight_absmax.contiguous(), cols.contiguous(), x.scalar_type()};
  const int64_t* cp = out.cols.data_ptr<int64_t>();
  double* xo = out.xo.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int8_linear", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    parallel_chunks(M, std::max<int64_t>(1, 4096 / n), M * n * 64, [&](int, int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t k = 0; k < n; ++k) xo[i * n + k] = static_cast<float>(xp[i * K + cp[k]]);  // exact in double
    });
  });
  if (gather_weight_now)
    parallel_chunks(blocks, 1, N * n * 64, [&](int, int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) out.gather_block(b);
    });
  return out;
}

}  // namespace cpu
}  // namespace int8kern
