// The dequantize epilogue shared by the CPU kernels (dequantize_matmul and the fused
// int8_scaled_matmul): for one row i of the int32 accumulator,
//   out[j] = float(acc[j]) * (row_absmax[i] / 127) * (col_absmax[j] / 127) + bias[j] + add[j]
// computed in float32 in exactly that order and rounded once to the output dtype, which is
// the order int8kern.reference uses, so float32 results match it bit for bit.
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
};

template <typename OutT, typename AddT>
inline void dequantize_row(const EpilogueArgs& e, int64_t i, const int32_t* acc, int64_t j0,
                           int64_t n, OutT* out) {
  const float r = e.row_absmax[i] / 127.0f;
  const float* c = e.col_scale + j0;
  const float* bias = e.bias ? e.bias + j0 : nullptr;
  const AddT* add = e.add ? static_cast<const AddT*>(e.add) + i * e.N + j0 : nullptr;
  for (int64_t j = 0; j < n; ++j) {
    float v = static_cast<float>(acc[j]) * r * c[j];
    if (bias) v += bias[j];
    if (add) v += static_cast<float>(add[j]);
    out[j] = static_cast<OutT>(v);
  }
}

// col_absmax / 127 once per call, so the per-element work is two multiplies.
inline std::vector<float> column_scales(const at::Tensor& col_absmax) {
  const float* c = col_absmax.data_ptr<float>();
  std::vector<float> scale(col_absmax.numel());
  for (size_t j = 0; j < scale.size(); ++j) scale[j] = c[j] / 127.0f;
  return scale;
}

// The epilogue's operands in the form the kernels read (contiguous float32 scales and bias,
// add in the output dtype or float32), kept alive for the duration of a call.
class EpilogueOperands {
 public:
  EpilogueOperands(const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& add,
                   at::ScalarType out_dtype)
      : row_(row_absmax.contiguous()),
        bias_(bias_as_float(bias)),
        add_(add_for_epilogue(add, out_dtype)),
        col_scale_(column_scales(col_absmax.contiguous())) {}
  EpilogueArgs args() const {
    return {row_.data_ptr<float>(), col_scale_.data(), bias_ ? bias_->data_ptr<float>() : nullptr,
            add_ ? add_->data_ptr() : nullptr, static_cast<int64_t>(col_scale_.size())};
  }
  bool add_is_float() const { return add_ && add_->scalar_type() == at::kFloat; }

 private:
  at::Tensor row_;
  c10::optional<at::Tensor> bias_, add_;
  std::vector<float> col_scale_;
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
