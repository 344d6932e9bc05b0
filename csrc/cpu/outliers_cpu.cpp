// The outlier half of LLM.int8() on the CPU:
//   add[i, j] = sum_c x[i, cols[c]] * w_c[j, c],  w_c = dtype(weight[:, cols] * absmax / 127)
// returned in float32 [M, N] and added in the GEMM epilogue, where it is rounded once with
// the rest. The weight columns are rounded to x's dtype (as the reference does); the sum is
// kept in double and returned in float32, which is never less accurate than x's dtype.
//
// Why not ATen: for these shapes ([M, n_out] @ [n_out, N] with n_out ~ 0.5% of K) MKL's
// sgemm takes ~15 ms at M = 16, N = 4096, n_out = 20 on this machine (1.3 M MACs), more than
// the int8 GEMM itself; and gathering n_out scattered columns with index_select is slower
// still. One pass over the weight rows with a small transposed block does both.
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "../int8_linear.h"

namespace int8kern {
namespace cpu {
namespace {

constexpr int64_t kBlockN = 32;  // weight rows per block: 32 output columns, 4 zmm of doubles
constexpr int kRows = 4;         // rows of x per register tile (AVX-512 path)

// Products of two floats are exact in double and the sums are kept in double, so each
// output is within half an ulp of float32 whatever n is (a float32 running sum over
// hundreds of outlier columns drifts by several ulps). Both paths below add the products in
// the same order (c = 0, 1, ..., n-1) and fused or not, an exact product added to a double
// rounds the same way, so they give identical results.

// o[r][jj] = sum_c xo[r][c] * wt[c][jj] for r < rows, jj < jb; wt is [n][kBlockN] doubles.
void outlier_tile_generic(const float* xo, int64_t n, int rows, const double* wt, int64_t jb,
                          float* out, int64_t ldo) {
  for (int r = 0; r < rows; ++r) {
    double acc[kBlockN] = {};
    for (int64_t c = 0; c < n; ++c) {
      const double xv = xo[r * n + c];
      for (int64_t jj = 0; jj < jb; ++jj) acc[jj] += xv * wt[c * kBlockN + jj];
    }
    for (int64_t jj = 0; jj < jb; ++jj) out[r * ldo + jj] = static_cast<float>(acc[jj]);
  }
}

// The same with kRows x 32 accumulators in 16 zmm registers: per outlier column, 4 loads of
// the weight block (L1), one broadcast per row and 16 FMAs. wt is zero past jb, so only the
// stores need a mask.
template <int R>
__attribute__((target("avx512f,avx512vl"))) void outlier_tile_avx512(const float* xo, int64_t n,
                                                            const double* wt, int64_t jb,
                                                            float* out, int64_t ldo) {
  static_assert(kBlockN == 32, "4 zmm of 8 doubles per row");
  __m512d acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_pd();
  for (int64_t c = 0; c < n; ++c) {
    __m512d w[4];
    for (int v = 0; v < 4; ++v) w[v] = _mm512_loadu_pd(wt + c * kBlockN + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m512d xv = _mm512_set1_pd(static_cast<double>(xo[r * n + c]));
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_fmadd_pd(xv, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) {
      const int64_t left = jb - 8 * v;
      if (left <= 0) break;
      const __mmask8 m = left >= 8 ? 0xFF : static_cast<__mmask8>((1u << left) - 1);
      _mm256_mask_storeu_ps(out + r * ldo + 8 * v, m, _mm512_cvtpd_ps(acc[r][v]));
    }
}

void outlier_tile(bool avx512, const float* xo, int64_t n, int rows, const double* wt,
                  int64_t jb, float* out, int64_t ldo) {
  if (!avx512) return outlier_tile_generic(xo, n, rows, wt, jb, out, ldo);
  switch (rows) {
    case 4: return outlier_tile_avx512<4>(xo, n, wt, jb, out, ldo);
    case 3: return outlier_tile_avx512<3>(xo, n, wt, jb, out, ldo);
    case 2: return outlier_tile_avx512<2>(xo, n, wt, jb, out, ldo);
    default: return outlier_tile_avx512<1>(xo, n, wt, jb, out, ldo);
  }
}

template <typename T>
void outlier_product(const T* x, int64_t M, int64_t K, const int8_t* w, const float* absmax,
                     int64_t N, const int64_t* cols, int64_t n, float* out) {
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  std::vector<float> xo(static_cast<size_t>(M) * n);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t c = 0; c < n; ++c) xo[i * n + c] = static_cast<float>(x[i * K + cols[c]]);
  const int64_t blocks = (N + kBlockN - 1) / kBlockN;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    // The block's dequantized weight columns, transposed to [n][kBlockN], rounded to x's
    // dtype as the reference does, held as doubles; zero past the last weight row.
    std::vector<double> wt(static_cast<size_t>(n) * kBlockN);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kBlockN, jb = std::min(kBlockN, N - j0);
      std::fill(wt.begin(), wt.end(), 0.0);
      for (int64_t jj = 0; jj < jb; ++jj) {
        const int64_t j = j0 + jj;
        const float scale = absmax[j] / 127.0f;
        for (int64_t c = 0; c < n; ++c)
          wt[c * kBlockN + jj] = static_cast<float>(static_cast<T>(static_cast<float>(w[j * K + cols[c]]) * scale));
      }
      for (int64_t i = 0; i < M; i += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, M - i));
        outlier_tile(avx512, xo.data() + i * n, n, rows, wt.data(), jb, out + i * N + j0, N);
      }
    }
  });
}

}  // namespace

at::Tensor outlier_product_cpu(const at::Tensor& x2, const at::Tensor& weight,
                               const at::Tensor& weight_absmax, const at::Tensor& cols) {
  const auto x = x2.contiguous(), w = weight.contiguous(), absmax = weight_absmax.contiguous();
  const auto c = cols.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), n = c.numel();
  auto out = at::empty({M, N}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int8_linear", [&] {
    outlier_product<scalar_t>(x.data_ptr<scalar_t>(), M, K, w.data_ptr<int8_t>(), absmax.data_ptr<float>(),
                              N, c.data_ptr<int64_t>(), n, out.data_ptr<float>());
  });
  return out;
}

}  // namespace cpu
}  // namespace int8kern
