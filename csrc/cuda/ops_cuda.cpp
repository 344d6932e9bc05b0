// CUDA backend, host side: argument checks, output allocation, device guard and current
// stream, then one launcher call per kernel (csrc/cuda/*.cu) and a launch check. Compiled by
// the host compiler; the .cu files see no torch header.
// c10's stream and guard headers, not ATen/cuda/CUDAContext.h: that one pulls in the
// cuBLAS/cuSPARSE headers, which a bare CUDA toolkit (nvcc and the runtime) may not have.
//
// The same file is the emulated CUDA backend's host code (csrc/emu/ops_emu.cpp compiles it with
// INT8KERN_EMU): tensors on the CPU, the kernels under the warp-level emulator, and the device
// plumbing below (guard, stream, launch check, scratch allocation) from csrc/emu/host_shim.h,
// which also counts allocations, memsets and host syncs.
#include <ATen/ATen.h>
#include <torch/library.h>
#ifdef INT8KERN_EMU
#include "../emu/host_shim.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include "../checks.h"
#include "../int8_linear.h"
#include "launchers.h"

namespace int8kern {
namespace cuda {
namespace {

#ifndef INT8KERN_EMU
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return current_stream(); }
int device_index(const at::Tensor& t) { return t.device().index(); }
// Device memory for outputs and scratch (the caching allocator: graph-safe, no sync).
at::Tensor device_empty(at::IntArrayRef sizes, const at::TensorOptions& o) { return at::empty(sizes, o); }
// Zero-filled device memory: one memset on the current stream.
at::Tensor device_zeros(at::IntArrayRef sizes, const at::TensorOptions& o) { return at::zeros(sizes, o); }
// A cuBLAS call (through ATen) is one more launch on the stream.
at::Tensor library_mm(const at::Tensor& a, const at::Tensor& b) { return at::mm(a, b); }
// Where the host reads device data (and so waits for the stream).
void host_sync_point() {}
#define INT8KERN_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define INT8KERN_CUDA_CHECK(e) C10_CUDA_CHECK(e)
#endif

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "int8kern: no CUDA kernel for dtype ", t);
  }
}

// mma.sync.m16n8k32 on int8 needs sm_80; say so instead of failing with "no kernel image".
// Returns the device's properties (queried once per device, device_props.cu).
const DeviceProps& check_tensor_cores(const char* op, const at::Tensor& t) {
  const DeviceProps& dev = device_props(device_index(t));
  INT8KERN_CUDA_CHECK(dev.error);
  TORCH_CHECK(dev.major >= 8, "int8kern.", op,
              ": the CUDA int8 GEMM needs compute capability 8.0 or newer (A100, H100, ...), "
              "got ", dev.major, ".", dev.minor, " on ", t.device());
  return dev;
}

// The row stride the kernels are given for a 2-D tensor made contiguous. A single row keeps
// whatever stride its size-1 dimension had through .contiguous() (any value is "contiguous"
// there), and the stride decides the vector / cp.async / TMA paths: give it K.
int64_t row_stride(const at::Tensor& t) { return t.size(0) == 1 ? t.size(1) : t.stride(0); }

// Every CUDA GEMM goes through here: launch, check the launch, and say once per process when
// INT8KERN_CUDA_GEMM=wgmma asked for a kernel that cannot run here (not for shapes it does not
// take: decode and mid sizes are the mma.sync kernels' by design).
void run_gemm(const Int8GemmParams& p, cudaStream_t stream) {
  const GemmLaunch launch = launch_int8_gemm(p, stream);
  INT8KERN_LAUNCH_CHECK();
  if (launch.wgmma_requested && launch.wgmma != WgmmaStatus::kLaunched &&
      launch.wgmma != WgmmaStatus::kNotApplicable) {
    TORCH_WARN_ONCE("int8kern: INT8KERN_CUDA_GEMM=wgmma, but ", wgmma_status_message(launch.wgmma),
                    "; using the mma.sync GEMM");
  }
}

void fill_epilogue(Int8GemmParams& p, const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                   const c10::optional<at::Tensor>& bias_f, const c10::optional<at::Tensor>& add_e,
                   at::ScalarType out_dtype) {
  p.out_int32 = false;
  p.out_dtype = to_dtype(out_dtype);
  p.row_absmax = row_absmax.data_ptr<float>();
  p.col_absmax = col_absmax.data_ptr<float>();
  p.bias = bias_f ? bias_f->data_ptr<float>() : nullptr;
  p.add = add_e ? add_e->data_ptr() : nullptr;
  p.add_dtype = add_e ? to_dtype(add_e->scalar_type()) : p.out_dtype;
  p.ld_add = add_e ? row_stride(*add_e) : 0;
}

Int8GemmParams gemm_params(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  Int8GemmParams p;
  p.a = a.data_ptr<int8_t>();
  p.b = b.data_ptr<int8_t>();
  p.M = a.size(0);
  p.N = b.size(0);
  p.K = a.size(1);
  p.lda = row_stride(a);
  p.ldb = row_stride(b);
  p.out = out.data_ptr();
  p.ldo = row_stride(out);
  return p;
}

// Split-K scratch for launch_int8_gemm's decode regime, zeroed on the current stream (a
// memset node under graph capture). One per call, never shared: launches on other streams
// could overlap with this one. Returned so that it outlives the launch call; the caching
// allocator reuses the block only after the stream's queued work.
at::Tensor attach_gemm_workspace(Int8GemmParams& p, const at::Tensor& like) {
  const int64_t elems = int8_gemm_workspace_elems(p);
  if (elems == 0) return at::Tensor();
  auto ws = device_zeros({elems}, like.options().dtype(at::kInt));
  p.workspace = ws.data_ptr<int32_t>();
  return ws;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rowwise_cuda(const at::Tensor& x,
                                                                     double threshold) {
  const char* op = "quantize_rowwise";
  check_float_tensor(op, "x", x, 2, "[M, K]");
  check_threshold(op, threshold);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K >= 1, "int8kern.", op, ": x must have at least one column (K >= 1), got ",
              describe(x));
  const DeviceGuard guard(x.device());
  const auto stream = current_stream();
  auto xc = x.contiguous();
  auto q = device_empty({M, K}, x.options().dtype(at::kChar));
  auto row_absmax = device_empty({M}, x.options().dtype(at::kFloat));
  const bool find_outliers = threshold > 0.0;
  auto mask = find_outliers ? device_zeros({K}, x.options().dtype(at::kByte)) : at::Tensor();
  if (M > 0) {
    launch_quantize_rowwise(xc.data_ptr(), to_dtype(x.scalar_type()), M, K, row_stride(xc),
                            static_cast<float>(threshold), q.data_ptr<int8_t>(),
                            row_absmax.data_ptr<float>(),
                            find_outliers ? mask.data_ptr<uint8_t>() : nullptr, stream);
    INT8KERN_LAUNCH_CHECK();
  }
  if (!find_outliers) return {q, row_absmax, device_empty({0}, x.options().dtype(at::kLong))};
  // nonzero() reads the count on the host: the one sync of this first version.
  host_sync_point();
  auto cols = mask.nonzero().squeeze(1);
  if (cols.numel() > 0 && M > 0) {
    launch_zero_columns(q.data_ptr<int8_t>(), M, K, cols.data_ptr<int64_t>(), cols.numel(), stream);
    INT8KERN_LAUNCH_CHECK();
  }
  return {q, row_absmax, cols};
}

at::Tensor int8_matmul_cuda(const at::Tensor& a_in, const at::Tensor& b_in) {
  const char* op = "int8_matmul";
  check_int8_operands(op, a_in, b_in);
  const DeviceGuard guard(a_in.device());
  const int64_t M = a_in.size(0), N = b_in.size(0);
  auto out = device_empty({M, N}, a_in.options().dtype(at::kInt));
  if (M == 0 || N == 0) return out;
  check_tensor_cores(op, a_in);
  auto a = a_in.contiguous(), b = b_in.contiguous();
  auto p = gemm_params(a, b, out);
  p.out_int32 = true;
  const auto ws = attach_gemm_workspace(p, a);
  run_gemm(p, current_stream());
  return out;
}

at::Tensor int8_scaled_matmul_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                                   const at::Tensor& row_absmax, const at::Tensor& col_absmax,
                                   const c10::optional<at::Tensor>& bias,
                                   const c10::optional<at::Tensor>& add, at::ScalarType out_dtype) {
  const char* op = "int8_scaled_matmul";
  check_int8_operands(op, a_in, b_in);
  const int64_t M = a_in.size(0), N = b_in.size(0);
  check_epilogue_args(op, a_in, M, N, row_absmax, col_absmax, bias, add, out_dtype);
  const DeviceGuard guard(a_in.device());
  auto out = device_empty({M, N}, a_in.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  check_tensor_cores(op, a_in);
  auto a = a_in.contiguous(), b = b_in.contiguous();
  auto row_c = row_absmax.contiguous(), col_c = col_absmax.contiguous();
  auto bias_f = bias_as_float(bias);
  auto add_e = add_for_epilogue(add, out_dtype);
  auto p = gemm_params(a, b, out);
  fill_epilogue(p, row_c, col_c, bias_f, add_e, out_dtype);
  const auto ws = attach_gemm_workspace(p, a);
  run_gemm(p, current_stream());
  return out;
}

at::Tensor dequantize_matmul_cuda(const at::Tensor& acc_in, const at::Tensor& row_absmax,
                                  const at::Tensor& col_absmax, const c10::optional<at::Tensor>& bias,
                                  const c10::optional<at::Tensor>& add, at::ScalarType out_dtype) {
  const char* op = "dequantize_matmul";
  check_tensor(op, "acc", acc_in, at::kInt, 2, "[M, N]");
  const int64_t M = acc_in.size(0), N = acc_in.size(1);
  check_epilogue_args(op, acc_in, M, N, row_absmax, col_absmax, bias, add, out_dtype);
  const DeviceGuard guard(acc_in.device());
  auto out = device_empty({M, N}, acc_in.options().dtype(out_dtype));
  if (M == 0 || N == 0) return out;
  auto acc = acc_in.contiguous();
  auto row_c = row_absmax.contiguous(), col_c = col_absmax.contiguous();
  auto bias_f = bias_as_float(bias);
  auto add_e = add_for_epilogue(add, out_dtype);
  launch_dequantize(acc.data_ptr<int32_t>(), M, N, row_c.data_ptr<float>(), col_c.data_ptr<float>(),
                    bias_f ? bias_f->data_ptr<float>() : nullptr, add_e ? add_e->data_ptr() : nullptr,
                    add_e ? to_dtype(add_e->scalar_type()) : to_dtype(out_dtype), out.data_ptr(),
                    to_dtype(out_dtype), current_stream());
  INT8KERN_LAUNCH_CHECK();
  return out;
}

// The LLM.int8() forward with no host synchronisation, so that it can be captured in a CUDA
// graph (a forward composed of the other ops would read the outlier count on the host):
//   quantize (outlier byte mask) -> compact the mask into cols + n_cols on the device ->
//   gather (zero q's outlier columns; x_out [M, CAP], w_out [N, CAP], zero-padded) ->
//   add = x_out @ w_out.T (cuBLAS, fixed shapes, x's dtype) -> spill (only if n > CAP: the
//   whole outlier product recomputed on CUDA cores and rounded once, overwriting add) ->
//   int8 GEMM with the dequantize epilogue, add and bias applied in float32, rounded once.
// CAP = kOutlierCapacity (csrc/outlier_capacity.h). Everything is allocated with at::empty /
// at::zeros on x's device (the caching allocator is graph-safe); no count ever reaches the
// host. threshold <= 0: the quantize kernel and the GEMM only.
at::Tensor int8_linear_cuda(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& weight_absmax, const c10::optional<at::Tensor>& bias,
                            double threshold) {
  const char* op = "int8_linear";
  check_int8_linear_args(x, weight, weight_absmax, bias, threshold);
  const DeviceGuard guard(x.device());
  const int64_t K = x.size(-1), N = weight.size(0);
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  const auto x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  auto y = device_empty({M, N}, x.options());
  if (M == 0 || N == 0) return y.view(out_shape);
  const DeviceProps& dev = check_tensor_cores(op, x);
  const auto stream = current_stream();
  const auto w = weight.contiguous();
  const auto w_absmax = weight_absmax.contiguous();
  const DType dtype = to_dtype(x.scalar_type());

  auto q = device_empty({M, K}, x.options().dtype(at::kChar));
  auto row_absmax = device_empty({M}, x.options().dtype(at::kFloat));
  const bool find_outliers = threshold > 0.0;
  auto mask = find_outliers ? device_zeros({K}, x.options().dtype(at::kByte)) : at::Tensor();
  launch_quantize_rowwise(x2.data_ptr(), dtype, M, K, row_stride(x2), static_cast<float>(threshold),
                          q.data_ptr<int8_t>(), row_absmax.data_ptr<float>(),
                          find_outliers ? mask.data_ptr<uint8_t>() : nullptr, stream);
  INT8KERN_LAUNCH_CHECK();

  c10::optional<at::Tensor> add;
  if (find_outliers) {
    auto cols = device_empty({K}, x.options().dtype(at::kInt));
    auto n_cols = device_empty({}, x.options().dtype(at::kInt));
    launch_compact_columns(mask.data_ptr<uint8_t>(), K, cols.data_ptr<int32_t>(),
                           n_cols.data_ptr<int32_t>(), stream);
    INT8KERN_LAUNCH_CHECK();

    auto x_out = device_empty({M, kOutlierCapacity}, x.options());
    auto w_out = device_empty({N, kOutlierCapacity}, x.options());
    OutlierParams p;
    p.dtype = dtype;
    p.x = x2.data_ptr();
    p.M = M;
    p.K = K;
    p.ldx = row_stride(x2);
    p.q = q.data_ptr<int8_t>();
    p.weight = w.data_ptr<int8_t>();
    p.N = N;
    p.ldw = row_stride(w);
    p.weight_absmax = w_absmax.data_ptr<float>();
    p.cols = cols.data_ptr<int32_t>();
    p.n_cols = n_cols.data_ptr<int32_t>();
    p.x_out = x_out.data_ptr();
    p.w_out = w_out.data_ptr();
    launch_gather_outliers(p, stream);
    INT8KERN_LAUNCH_CHECK();

    // In x's dtype, as the reference's outlier product; zero columns past the count add 0.
    // float32 in float64: at::mm of float32 follows torch's global TF32 switch, which would
    // drop 13 mantissa bits of the largest terms; in float64 the products are exact and the
    // sum is rounded to float32 once, as the CPU epilogue does, whatever that switch says.
    auto product = dtype == DType::Float32
                       ? library_mm(x_out.to(at::kDouble), w_out.to(at::kDouble).t()).to(at::kFloat)
                       : library_mm(x_out, w_out.t()).contiguous();
    p.add = product.data_ptr();
    p.ld_add = row_stride(product);
    launch_outlier_spill(p, 2 * dev.sms, stream);
    INT8KERN_LAUNCH_CHECK();
    add = product;
  }

  auto bias_f = bias_as_float(bias);
  auto gp = gemm_params(q, w, y);
  fill_epilogue(gp, row_absmax, w_absmax, bias_f, add, x.scalar_type());
  const auto ws = attach_gemm_workspace(gp, q);  // split-K scratch at decode sizes
  run_gemm(gp, stream);
  return y.view(out_shape);
}

#ifdef INT8KERN_EMU
TORCH_LIBRARY_IMPL(int8kern_emu, CPU, m) {
#else
TORCH_LIBRARY_IMPL(int8kern, CUDA, m) {
#endif
  m.impl("quantize_rowwise", &quantize_rowwise_cuda);
  m.impl("int8_matmul", &int8_matmul_cuda);
  m.impl("int8_scaled_matmul", &int8_scaled_matmul_cuda);
  m.impl("dequantize_matmul", &dequantize_matmul_cuda);
  m.impl("int8_linear", &int8_linear_cuda);
}

}  // namespace cuda
}  // namespace int8kern
