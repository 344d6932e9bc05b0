// int8_linear's autograd kernel, in C++: gradients for x and bias (the int8 weight is frozen, as
// in bitsandbytes' Linear8bitLt with has_fp16_weights=False).
//
// Why not torch.library.register_autograd (Python): its kernel sits at the Autograd key, so
// every call, even under torch.no_grad() and from torch.compile's generated code, runs a
// Python function before reaching the CPU/CUDA kernel: 4 us per call on a Zen 4 core, 211
// calls per SmolLM2 decode step (benchmarks/NOTES.md, 2026-12-04). Here a call that needs no
// gradient goes straight to the backend kernel.
//
// The backward is int8kern/ops.py's former Python one, op for op (tests/test_ops.py compares
// it with autograd through the reference):
//   grad_x = grad @ dtype(weight * weight_absmax[:, None] / 127),  grad_bias = sum of grad rows.
// The emulated CUDA backend (int8kern_emu, csrc/emu) keeps the Python version: this file is
// linked into _C only.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace int8kern {
namespace {

at::Tensor int8_linear_below_autograd(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& weight_absmax, const c10::optional<at::Tensor>& bias,
                                      double threshold) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("int8kern::int8_linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const c10::optional<at::Tensor>&, double)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, weight, weight_absmax, bias, threshold);
}

class Int8LinearFunction : public torch::autograd::Function<Int8LinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& weight_absmax, const c10::optional<at::Tensor>& bias,
                            double threshold) {
    ctx->save_for_backward({weight, weight_absmax});
    ctx->saved_data["bias_dtype"] = bias.has_value() ? static_cast<int64_t>(bias->scalar_type()) : int64_t{-1};
    return int8_linear_below_autograd(x, weight, weight_absmax, bias, threshold);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[0];
    const at::Tensor& weight_absmax = saved[1];
    const at::Tensor& grad = grads[0];
    at::Tensor grad_x, grad_bias;
    if (ctx->needs_input_grad(0)) {
      const auto w = (weight.to(at::kFloat) * (weight_absmax.unsqueeze(1) / 127.0)).to(grad.scalar_type());
      grad_x = at::matmul(grad, w);
    }
    const int64_t bias_dtype = ctx->saved_data["bias_dtype"].toInt();
    if (bias_dtype >= 0 && ctx->needs_input_grad(3))
      grad_bias = grad.reshape({-1, grad.size(-1)}).sum(0).to(static_cast<at::ScalarType>(bias_dtype));
    return {grad_x, at::Tensor(), at::Tensor(), grad_bias, at::Tensor()};
  }
};

at::Tensor int8_linear_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_absmax,
                                const c10::optional<at::Tensor>& bias, double threshold) {
  // The no-gradient case (inference) skips building a graph node.
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || (bias.has_value() && bias->requires_grad())))
    return int8_linear_below_autograd(x, weight, weight_absmax, bias, threshold);
  return Int8LinearFunction::apply(x, weight, weight_absmax, bias, threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(int8kern, Autograd, m) { m.impl("int8_linear", &int8_linear_autograd); }

}  // namespace int8kern
