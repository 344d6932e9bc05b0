// Argument checks shared by every backend. Each message names the op and the argument and
// says what was expected and what came, e.g.
//   "int8kern.int8_matmul: b must be int8 [N, K], got float16 [64, 32] on cpu".
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <sstream>
#include <string>

namespace int8kern {

// int32 accumulation of K products of int8 values is exact while K * 128 * 128 < 2^31
// (every product at most 2^14 in magnitude, -128 * -128 included).
constexpr int64_t kMaxK = 131071;

inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

inline std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << dtype_name(t.scalar_type()) << " " << t.sizes() << " on " << t.device();
  return s.str();
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat;
}

#define INT8KERN_CHECK_ARG(cond, op, arg, expected, got)                              \
  TORCH_CHECK(cond, "int8kern.", op, ": ", arg, " must be ", expected, ", got ", got)

// A floating tensor (float16, bfloat16 or float32) of the given rank.
inline void check_float_tensor(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                               const char* shape) {
  INT8KERN_CHECK_ARG(is_float_dtype(t.scalar_type()) && t.dim() == dim, op, arg,
                     std::string("float16, bfloat16 or float32 ") + shape, describe(t));
}

// A tensor of exactly this dtype and rank.
inline void check_tensor(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype,
                         int64_t dim, const char* shape) {
  INT8KERN_CHECK_ARG(t.scalar_type() == dtype && t.dim() == dim, op, arg,
                     dtype_name(dtype) + " " + shape, describe(t));
}

inline void check_size(const char* op, const char* arg, const at::Tensor& t, int64_t d,
                       int64_t expected, const char* what) {
  INT8KERN_CHECK_ARG(t.size(d) == expected, op, arg,
                     std::string("of size ") + std::to_string(expected) + " in dim " +
                         std::to_string(d) + " (" + what + ")",
                     describe(t));
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const at::Tensor& ref) {
  INT8KERN_CHECK_ARG(t.device() == ref.device(), op, arg,
                     std::string("on the same device as the first argument (") +
                         ref.device().str() + ")",
                     describe(t));
}

inline void check_inner_dim(const char* op, int64_t K) {
  TORCH_CHECK(K >= 1 && K <= kMaxK, "int8kern.", op, ": the inner dimension K must be in [1, ",
              kMaxK, "] (int32 accumulation is exact only up to there), got K = ", K);
}

inline void check_out_dtype(const char* op, at::ScalarType out_dtype) {
  TORCH_CHECK(is_float_dtype(out_dtype), "int8kern.", op,
              ": out_dtype must be float16, bfloat16 or float32, got ", dtype_name(out_dtype));
}

inline void check_threshold(const char* op, double threshold) {
  TORCH_CHECK(threshold == threshold, "int8kern.", op,
              ": threshold must be a number (<= 0 disables outliers), got nan");
  // The kernels compare |x| with float(threshold): a positive double below half the smallest
  // float32 denormal would become 0 there (no outliers at all), while "> 0" promised some.
  TORCH_CHECK(!(threshold > 0.0) || static_cast<float>(threshold) > 0.0f, "int8kern.", op,
              ": threshold must be <= 0 (no outliers) or at least the smallest positive float32 "
              "(1.4e-45; the kernels compare in float32), got ", threshold);
}

// An optional bias [N] in a floating dtype on the device of `ref`.
inline void check_bias(const char* op, const c10::optional<at::Tensor>& bias, int64_t N,
                       const at::Tensor& ref) {
  if (!bias.has_value()) return;
  check_float_tensor(op, "bias", *bias, 1, "[N]");
  check_size(op, "bias", *bias, 0, N, "N");
  check_same_device(op, "bias", *bias, ref);
}

// The dequantize epilogue's operands: scales [M] and [N] in float32, optional bias [N] and
// add [M, N] in a floating dtype, all on the device of `ref`.
inline void check_epilogue_args(const char* op, const at::Tensor& ref, int64_t M, int64_t N,
                                const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                                const c10::optional<at::Tensor>& bias,
                                const c10::optional<at::Tensor>& add, at::ScalarType out_dtype) {
  check_tensor(op, "row_absmax", row_absmax, at::kFloat, 1, "[M]");
  check_size(op, "row_absmax", row_absmax, 0, M, "M, one scale per row");
  check_same_device(op, "row_absmax", row_absmax, ref);
  check_tensor(op, "col_absmax", col_absmax, at::kFloat, 1, "[N]");
  check_size(op, "col_absmax", col_absmax, 0, N, "N, one scale per column");
  check_same_device(op, "col_absmax", col_absmax, ref);
  check_bias(op, bias, N, ref);
  if (add.has_value()) {
    check_float_tensor(op, "add", *add, 2, "[M, N]");
    check_size(op, "add", *add, 0, M, "M");
    check_size(op, "add", *add, 1, N, "N");
    check_same_device(op, "add", *add, ref);
  }
  check_out_dtype(op, out_dtype);
}

inline void check_int8_operands(const char* op, const at::Tensor& a, const at::Tensor& b) {
  check_tensor(op, "a", a, at::kChar, 2, "[M, K]");
  check_tensor(op, "b", b, at::kChar, 2, "[N, K]");
  check_same_device(op, "b", b, a);
  INT8KERN_CHECK_ARG(b.size(1) == a.size(1), op, "b",
                     std::string("[N, K] with K = ") + std::to_string(a.size(1)) +
                         " (a's inner dimension)",
                     describe(b));
  check_inner_dim(op, a.size(1));
}

// Epilogue operands as the kernels take them: bias as float32, add in out_dtype or float32.
inline c10::optional<at::Tensor> bias_as_float(const c10::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return c10::nullopt;
  return bias->to(at::kFloat).contiguous();
}
// The bias as a CUDA epilogue reads it: float32 or the output dtype as it is (the epilogue
// converts each element exactly, as the reference's bias.float()), any other dtype converted to
// float32 first (one more launch).
inline c10::optional<at::Tensor> bias_for_epilogue(const c10::optional<at::Tensor>& bias,
                                                   at::ScalarType out_dtype) {
  if (!bias.has_value()) return c10::nullopt;
  if (bias->scalar_type() == at::kFloat || bias->scalar_type() == out_dtype) return bias->contiguous();
  return bias->to(at::kFloat).contiguous();
}
inline c10::optional<at::Tensor> add_for_epilogue(const c10::optional<at::Tensor>& add,
                                                  at::ScalarType out_dtype) {
  if (!add.has_value()) return c10::nullopt;
  if (add->scalar_type() == out_dtype) return add->contiguous();
  return add->to(at::kFloat).contiguous();
}

}  // namespace int8kern
