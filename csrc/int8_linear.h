#pragma once
#include <ATen/ATen.h>

namespace int8kern {
void check_int8_linear_args(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& weight_absmax, const c10::optional<at::Tensor>& bias,
                            double threshold);
at::Tensor int8_linear_composite(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& weight_absmax,
                                 const c10::optional<at::Tensor>& bias, double threshold);
}  // namespace int8kern
