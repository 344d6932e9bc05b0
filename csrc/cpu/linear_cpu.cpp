// The LLM.int8() forward on the CPU:
//   q, row_absmax, cols = quantize_rowwise(x, threshold)            # q[:, cols] == 0
//   y = dequant(q @ weight.T) + bias + x[:, cols] @ wo               # one epilogue pass
// where wo = dtype(weight[:, cols] * weight_absmax / 127).T. The outlier product is formed in
// the GEMM's dequantize epilogue (epilogue.h), 32 output columns at a time in registers,
// instead of as an [M, N] float32 tensor that the epilogue would read back.
//
// At decode sizes the call opens one parallel region (parallel.h): quantizing x, finding and
// gathering its outlier columns are too little work for a second thread and run on the
// calling one, and the weight's outlier columns are gathered inside the GEMM's tasks, by the
// thread that has just streamed those weight rows.
#include <torch/library.h>

#include "../int8_linear.h"
#include "ops_cpu.h"

namespace int8kern {
namespace cpu {

at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_absmax,
                           const c10::optional<at::Tensor>& bias, double threshold) {
  check_int8_linear_args(x, weight, weight_absmax, bias, threshold);
  const int64_t K = x.size(-1), N = weight.size(0);
  const auto x2 = x.reshape({-1, K});
  auto [q, row_absmax, cols] = quantize_rowwise_cpu(x2, threshold);
  c10::optional<OutlierColumns> outliers;
  if (cols.numel() > 0) outliers = gather_outlier_columns(x2, weight, weight_absmax, cols, false);
  const EpilogueOperands operands(row_absmax, weight_absmax, bias, c10::nullopt, x.scalar_type(),
                                  std::move(outliers), /*outlier_weights_gathered=*/false);
  auto y = int8_scaled_matmul_operands_cpu(q, weight, operands, x.scalar_type());
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  return y.view(out_shape);
}

TORCH_LIBRARY_IMPL(int8kern, CPU, m) { m.impl("int8_linear", &int8_linear_cpu); }

}  // namespace cpu
}  // namespace int8kern
