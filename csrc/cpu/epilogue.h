// The dequantize epilogue shared by the CPU kernels (dequantize_matmul, int8_scaled_matmul
// and int8_linear): for row i of the int32 accumulator,
//   out[j] = float(acc[j]) * (row_absmax[i] / 127) * (col_absmax[j] / 127) + bias[j] + add[j]
// computed in float32 in exactly that order and rounded once to the output dtype, which is
// the order int8kern.reference uses, so float32 results match it bit for bit.
//
// For int8_linear, `add` is LLM.int8()'s outlier term, computed here from the few outlier
// columns instead of being read from an [M, N] tensor (which would cost a write and a read of
// M * N floats, more than the rest of the epilogue):
//   add[i, j] = float(sum_c xo[i, c] * wo[c, j])   (c = 0, 1, ..., in double)
// with xo = x[:, cols] and wo = dtype(weight[:, cols] * absmax / 127).T, float32 values held
// as doubles (converted once, not in the inner loop). Their products are exact in double and
// the sum stays in double, so the term is within half a float32 ulp of the exact value
// whatever the number of outlier columns. wo is stored in blocks of 32 output columns,
// [ceil(N / 32), n_out, 32], so that a 32-column strip reads one contiguous run of it.
#pragma once

#include <ATen/ATen.h>

#include "../checks.h"

#include <cstdint>
#include <vector>

namespace int8kern {
namespace cpu {

struct EpilogueArgs {
  const float* row_absmax;  // [M]
  const float* col_scale;   // [N], col_absmax / 127, precomputed once per call
  const float* bias;        // [N] float32 or null
  const void* add;          // [M, N] contiguous in out dtype or float32, or null
  int64_t N;
  // LLM.int8()'s outlier term (see the top); n_out == 0 when there is none.
  const double* xo = nullptr;  // [M, n_out]
  const double* wo = nullptr;  // [ceil(N / 32), n_out, 32], zero past N (see the top)
  int64_t n_out = 0;
};

// out[r * ldo + j - j0] for rows i .. i + rows - 1 and columns j0 .. j0 + n - 1, from
// acc[r * ld + j - j0]. AVX-512 when the CPU has it (epilogue_cpu.cpp), the same arithmetic
// scalar otherwise (its outlier sums in AVX2 where the CPU has that); all give identical
// results. With an outlier term, j0 % 32 == 0. OutT is float, at::Half or at::BFloat16;
// AddT is OutT or float.
template <typename OutT, typename AddT>
void dequantize_tile(const EpilogueArgs& e, int64_t i, int64_t rows, int64_t j0, int64_t n,
                     const int32_t* acc, int64_t ld, OutT* out, int64_t ldo);

// The same for rows i .. i + rows - 1 (rows <= 16) and all N columns, from the int32 result
// stored transposed: acc_t[j * ldt + r] is row i + r, column j.
template <typename OutT, typename AddT>
void dequantize_rows_transposed(const EpilogueArgs& e, int64_t i, int64_t rows, const int32_t* acc_t,
                                int64_t ldt, OutT* out, int64_t ldo);

// The dequantized weight columns that meet x's outlier columns, transposed:
// wo[c, j] = float(dtype(float(weight[j, cols[c]]) * (absmax[j] / 127))) (blocked, see the
// top), as the reference rounds them; and xo = x[:, cols] as float. Both are float32 values
// stored as float64, which is what EpilogueArgs' outlier term reads.
struct OutlierColumns {
  at::Tensor xo;  // float64 [M, n_out]
  at::Tensor wo;  // float64 [ceil(N / 32), n_out, 32], zero past N
  // What gather_block reads: the weight, its scales, the columns, x's dtype.
  at::Tensor weight, weight_absmax, cols;
  at::ScalarType dtype;
  // Fills wo's block b (weight rows 32 b .. 32 b + 31). int8_linear calls it from the GEMM
  // task that has just streamed those weight rows, at decode sizes, so that the gather needs
  // no parallel region of its own and finds the rows in L1/L2 (rows_cached: no prefetching).
  void gather_block(int64_t b, bool rows_cached = false) const;
};
// xo gathered; wo gathered too when gather_weight_now, else left for gather_block.
OutlierColumns gather_outlier_columns(const at::Tensor& x2, const at::Tensor& weight,
                                      const at::Tensor& weight_absmax, const at::Tensor& cols,
                                      bool gather_weight_now = true);

// col_absmax / 127 once per call, so the per-element work is two multiplies.
inline std::vector<float> column_scales(const at::Tensor& col_absmax) {
  const float* c = col_absmax.data_ptr<float>();
  std::vector<float> scale(col_absmax.numel());
  for (size_t j = 0; j < scale.size(); ++j) scale[j] = c[j] / 127.0f;
  return scale;
}

// The epilogue's operands in the form the kernels read (contiguous float32 scales and bias,
// add in the output dtype or float32, the outlier columns), kept alive for a call.
class EpilogueOperands {
 public:
  EpilogueOperands(const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& add,
                   at::ScalarType out_dtype, c10::optional<OutlierColumns> outliers = c10::nullopt,
                   bool outlier_weights_gathered = true)
      : row_(row_absmax.contiguous()),
        bias_(bias_as_float(bias)),
        add_(add_for_epilogue(add, out_dtype)),
        col_scale_(column_scales(col_absmax.contiguous())),
        outliers_(std::move(outliers)),
        outlier_weights_gathered_(outlier_weights_gathered) {}
  EpilogueArgs args() const {
    EpilogueArgs e{row_.data_ptr<float>(), col_scale_.data(),
                   bias_ ? bias_->data_ptr<float>() : nullptr, add_ ? add_->data_ptr() : nullptr,
                   static_cast<int64_t>(col_scale_.size())};
    if (outliers_ && outliers_->xo.size(1) > 0) {
      e.xo = outliers_->xo.data_ptr<double>();
      e.wo = outliers_->wo.data_ptr<double>();
      e.n_out = outliers_->xo.size(1);
    }
    return e;
  }
  bool add_is_float() const { return add_ && add_->scalar_type() == at::kFloat; }
  // The outlier columns whose wo the GEMM must still gather (gather_outlier_columns with
  // gather_weight_now = false), or null.
  const OutlierColumns* pending_outlier_weights() const {
    return outliers_ && !outlier_weights_gathered_ && outliers_->xo.size(1) > 0 ? &*outliers_ : nullptr;
  }

 private:
  at::Tensor row_;
  c10::optional<at::Tensor> bias_, add_;
  std::vector<float> col_scale_;
  c10::optional<OutlierColumns> outliers_;
  bool outlier_weights_gathered_;
};

// Calls f.template operator()<OutT, AddT>() for the output dtype and the add dtype, which is
// either the output dtype or float32 (see add_for_epilogue in checks.h).
template <typename F>
inline void dispatch_epilogue_types(at::ScalarType out_dtype, bool add_is_float, F&& f) {
  switch (out_dtype) {
    case at::kFloat:
      f.template operator()<float, float>();
      break;
    case at::kHalf:
      if (add_is_float) f.template operator()<at::Half, float>();
      else f.template operator()<at::Half, at::Half>();
      break;
    case at::kBFloat16:
      if (add_is_float) f.template operator()<at::BFloat16, float>();
      else f.template operator()<at::BFloat16, at::BFloat16>();
      break;
    default:
      TORCH_CHECK(false, "int8kern: unsupported output dtype ", out_dtype);
  }
}

}  // namespace cpu
}  // namespace int8kern
