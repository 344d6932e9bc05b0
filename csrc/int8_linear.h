#pragma once
#include <ATen/ATen.h>

namespace int8kern {
void check_int8_linear_args(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& weight_absmax, const c10::optional<at::Tensor>& bias,
                            double threshold);
at::Tensor int8_linear_composite(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& weight_absmax,
                                 const c10::optional<at::Tensor>& bias, double threshold);
namespace cpu {
// x2[:, cols] @ (weight[:, cols] * weight_absmax / 127).T as float32 [M, N] (outliers_cpu.cpp).
at::Tensor outlier_product_cpu(const at::Tensor& x2, const at::Tensor& weight,
                               const at::Tensor& weight_absmax, const at::Tensor& cols);
}  // namespace cpu
}  // namespace int8kern
