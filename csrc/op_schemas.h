// The op schemas, written once: torch.ops.int8kern.* (int8kern.cpp) and the emulated CUDA
// backend's torch.ops.int8kern_emu.* (csrc/emu/ops_emu.cpp) declare exactly these.
#pragma once

#include <torch/library.h>

namespace int8kern {
inline void define_ops(torch::Library& m) {
  // x [M, K] float -> (q int8 [M, K], row_absmax float32 [M], outlier_cols int64 [n_out])
  m.def("quantize_rowwise(Tensor x, float threshold) -> (Tensor, Tensor, Tensor)");
  // a int8 [M, K], b int8 [N, K] -> a @ b.T, int32 [M, N], exact
  m.def("int8_matmul(Tensor a, Tensor b) -> Tensor");
  // acc int32 [M, N] -> acc * row_absmax[:, None] * col_absmax / 127^2 + bias + add
  m.def(
      "dequantize_matmul(Tensor acc, Tensor row_absmax, Tensor col_absmax, Tensor? bias, "
      "Tensor? add, ScalarType out_dtype) -> Tensor");
  // dequantize_matmul(int8_matmul(a, b), ...) without the int32 matrix in memory
  m.def(
      "int8_scaled_matmul(Tensor a, Tensor b, Tensor row_absmax, Tensor col_absmax, "
      "Tensor? bias, Tensor? add, ScalarType out_dtype) -> Tensor");
  // The LLM.int8() forward: y = x @ dequant(weight).T + bias, outliers in 16-bit
  m.def(
      "int8_linear(Tensor x, Tensor weight, Tensor weight_absmax, Tensor? bias, "
      "float threshold) -> Tensor");
}
}  // namespace int8kern
