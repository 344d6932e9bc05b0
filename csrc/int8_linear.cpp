// The LLM.int8() forward, composed from the other ops through the dispatcher so that the
// same code serves every backend:
//   q, row_absmax, cols = quantize_rowwise(x, threshold)        # q[:, cols] == 0
//   add = x[:, cols] @ (weight[:, cols] * weight_absmax / 127).T  # 16-bit outlier part
//   y   = int8_scaled_matmul(q, weight, row_absmax, weight_absmax, bias, add)
// The number of outlier columns is data-dependent, so on a GPU this version would read it on
// the host (one sync per call): the CUDA backend registers its own sync-free forward instead
// (int8_linear_cuda in cuda/ops_cuda.cpp); the CPU uses this one.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "checks.h"
#include "int8_linear.h"

namespace int8kern {

void check_int8_linear_args(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& weight_absmax, const c10::optional<at::Tensor>& bias,
                            double threshold) {
  const char* op = "int8_linear";
  INT8KERN_CHECK_ARG(is_float_dtype(x.scalar_type()) && x.dim() >= 1, op, "x",
                     "float16, bfloat16 or float32 [..., K]", describe(x));
  check_tensor(op, "weight", weight, at::kChar, 2, "[N, K]");
  check_same_device(op, "weight", weight, x);
  const int64_t K = x.size(-1), N = weight.size(0);
  INT8KERN_CHECK_ARG(weight.size(1) == K, op, "weight",
                     std::string("int8 [N, K] with K = ") + std::to_string(K) +
                         " (x's last dimension)",
                     describe(weight));
  check_inner_dim(op, K);
  check_tensor(op, "weight_absmax", weight_absmax, at::kFloat, 1, "[N]");
  check_size(op, "weight_absmax", weight_absmax, 0, N, "N, one scale per weight row");
  check_same_device(op, "weight_absmax", weight_absmax, x);
  check_bias(op, bias, N, x);
  check_threshold(op, threshold);
}

namespace {

// weight[:, cols] * (weight_absmax / 127)[:, None] in `dtype`: the dequantized weight columns
// that meet the outlier columns of x.
at::Tensor dequantize_weight_columns(const at::Tensor& weight, const at::Tensor& weight_absmax,
                                     const at::Tensor& cols, at::ScalarType dtype) {
  // A true division by 127, as the CPU kernels do (dividing by a scalar on CUDA multiplies by
  // a rounded 1/127).
  const auto scale = weight_absmax / at::full_like(weight_absmax, 127.0f);
  return (weight.index_select(1, cols).to(at::kFloat) * scale.unsqueeze(1)).to(dtype);
}

}  // namespace

at::Tensor int8_linear_composite(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& weight_absmax,
                                 const c10::optional<at::Tensor>& bias, double threshold) {
  check_int8_linear_args(x, weight, weight_absmax, bias, threshold);
  static auto quantize = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("int8kern::quantize_rowwise", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, double)>();
  static auto scaled_matmul =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("int8kern::int8_scaled_matmul", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const c10::optional<at::Tensor>&,
                            const c10::optional<at::Tensor>&, at::ScalarType)>();

  const int64_t K = x.size(-1), N = weight.size(0);
  const auto x2 = x.reshape({-1, K});
  auto [q, row_absmax, cols] = quantize.call(x2, threshold);
  c10::optional<at::Tensor> add;
  if (cols.numel() > 0) {
    if (x2.is_cpu()) {
      add = cpu::outlier_product_cpu(x2, weight, weight_absmax, cols);  // float32 [M, N]
    } else {
      const auto w_outliers = dequantize_weight_columns(weight, weight_absmax, cols, x.scalar_type());
      add = at::matmul(x2.index_select(1, cols), w_outliers.t());
    }
  }
  auto y = scaled_matmul.call(q, weight, row_absmax, weight_absmax, bias, add, x.scalar_type());
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  return y.view(out_shape);
}

TORCH_LIBRARY_IMPL(int8kern, CPU, m) { m.impl("int8_linear", &int8_linear_composite); }

}  // namespace int8kern
