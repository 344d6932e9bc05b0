// dequantize_matmul on the CPU: one pass over the int32 accumulator, parallel over rows
// (parallel.h).
#include <torch/library.h>

#include "../checks.h"
#include "epilogue.h"
#include "parallel.h"

namespace int8kern {
namespace cpu {

at::Tensor dequantize_matmul_cpu(const at::Tensor& acc, const at::Tensor& row_absmax,
                                 const at::Tensor& col_absmax, const c10::optional<at::Tensor>& bias,
                                 const c10::optional<at::Tensor>& add, at::ScalarType out_dtype) {
  const char* op = "dequantize_matmul";
  check_tensor(op, "acc", acc, at::kInt, 2, "[M, N]");
  const int64_t M = acc.size(0), N = acc.size(1);
  check_epilogue_args(op, acc, M, N, row_absmax, col_absmax, bias, add, out_dtype);

  auto out = at::empty({M, N}, acc.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  auto acc_c = acc.contiguous();
  const EpilogueOperands operands(row_absmax, col_absmax, bias, add, out_dtype);
  const EpilogueArgs e = operands.args();
  const int32_t* a = acc_c.data_ptr<int32_t>();
  dispatch_epilogue_types(out_dtype, operands.add_is_float(),
                          [&]<typename OutT, typename AddT>() {
                            OutT* o = static_cast<OutT*>(out.data_ptr());
                            const int64_t grain = std::max<int64_t>(1, 16384 / N);
                            parallel_chunks(M, grain, M * N * 8, [&](int, int64_t r0, int64_t r1) {
                              for (int64_t i = r0; i < r1; i += 4)  // 4 rows across N: 8 streams
                                dequantize_tile<OutT, AddT>(e, i, std::min<int64_t>(4, r1 - i), 0, N,
                                                            a + i * N, N, o + i * N, N);
                            });
                          });
  return out;
}

TORCH_LIBRARY_IMPL(int8kern, CPU, m) { m.impl("dequantize_matmul", &dequantize_matmul_cpu); }

}  // namespace cpu
}  // namespace int8kern
