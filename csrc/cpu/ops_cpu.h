// CPU functions that one CPU file calls in another.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "epilogue.h"

namespace int8kern {
namespace cpu {

// quantize_cpu.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rowwise_cpu(const at::Tensor& x, double threshold);

// gemm_cpu.cpp: int8_scaled_matmul with its epilogue operands already formed (arguments
// already checked), so that int8_linear can pass the outlier columns instead of an [M, N] add.
at::Tensor int8_scaled_matmul_operands_cpu(const at::Tensor& a, const at::Tensor& b,
                                           const EpilogueOperands& operands, at::ScalarType out_dtype);

}  // namespace cpu
}  // namespace int8kern
