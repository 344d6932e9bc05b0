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

#include <vector>

#include "../int8_linear.h"

namespace int8kern {
namespace cpu {
namespace {

constexpr int64_t kBlockN = 64;  // weight rows per block: out rows are 64 contiguous floats

// o[jj] = sum_c xrow[c] * wt[c * kBlockN + jj] for jj < jb; the jj loop is the vector one.
// Products of two floats are exact in double and the sum is kept in double, so the result
// is within half an ulp of float32 whatever n is (a float32 running sum over hundreds of
// outlier columns drifts by several ulps). The outlier part is a few % of the work.
__attribute__((target_clones("avx2", "default"))) void outlier_row(const float* xrow, int64_t n,
                                                                  const float* wt, int64_t jb, float* o) {
  double acc[kBlockN];
  for (int64_t jj = 0; jj < jb; ++jj) acc[jj] = 0.0;
  for (int64_t c = 0; c < n; ++c) {
    const double xv = xrow[c];
    const float* w = wt + c * kBlockN;
    for (int64_t jj = 0; jj < jb; ++jj) acc[jj] += xv * static_cast<double>(w[jj]);
  }
  for (int64_t jj = 0; jj < jb; ++jj) o[jj] = static_cast<float>(acc[jj]);
}

template <typename T>
void outlier_product(const T* x, int64_t M, int64_t K, const int8_t* w, const float* absmax,
                     int64_t N, const int64_t* cols, int64_t n, float* out) {
  std::vector<float> xo(static_cast<size_t>(M) * n);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t c = 0; c < n; ++c) xo[i * n + c] = static_cast<float>(x[i * K + cols[c]]);
  const int64_t blocks = (N + kBlockN - 1) / kBlockN;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> wt(static_cast<size_t>(n) * kBlockN);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kBlockN, jb = std::min(kBlockN, N - j0);
      for (int64_t jj = 0; jj < jb; ++jj) {
        const int64_t j = j0 + jj;
        const float scale = absmax[j] / 127.0f;
        for (int64_t c = 0; c < n; ++c)
          wt[c * kBlockN + jj] = static_cast<float>(static_cast<T>(static_cast<float>(w[j * K + cols[c]]) * scale));
      }
      for (int64_t i = 0; i < M; ++i) outlier_row(xo.data() + i * n, n, wt.data(), jb, out + i * N + j0);
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
