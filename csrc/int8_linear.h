#pragma once
#include <ATen/ATen.h>

namespace int8kern {
// The argument checks of int8_linear, shared by the CPU and CUDA forwards.
void check_int8_linear_args(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& weight_absmax, const c10::optional<at::Tensor>& bias,
                            double threshold);
}  // namespace int8kern
