// The argument checks of int8_linear (the LLM.int8() forward), shared by its backends: the
// CPU forward (cpu/linear_cpu.cpp) and the sync-free CUDA one (int8_linear_cuda in
// cuda/ops_cuda.cpp).
#include <ATen/ATen.h>

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

}  // namespace int8kern
