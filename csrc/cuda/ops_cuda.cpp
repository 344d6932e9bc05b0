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

#include <map>
#include <mutex>
#include <utility>
#include <vector>
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
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
int device_index(const at::Tensor& t) { return t.device().index(); }
// Device memory for outputs and scratch (the caching allocator: graph-safe, no sync).
at::Tensor device_empty(at::IntArrayRef sizes, const at::TensorOptions& o) { return at::empty(sizes, o); }
// Zero-filled device memory: one memset on the current stream.
at::Tensor device_zeros(at::IntArrayRef sizes, const at::TensorOptions& o) { return at::zeros(sizes, o); }
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
  p.bias = bias_f ? bias_f->data_ptr() : nullptr;
  p.bias_dtype = bias_f ? to_dtype(bias_f->scalar_type()) : DType::Float32;
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

// Scratch that the kernels find all zero and leave all zero: the split-K partial sums and
// arrival counters of launch_int8_gemm, the outlier mask and arrival counter of
// launch_quantize_rowwise. One buffer per (device, stream), zeroed once when it is allocated,
// so no call pays a memset; two streams never share one (their launches may overlap). Grown
// when a call needs more. Buffers are never freed: a CUDA graph captured with one keeps its
// address, and a graph replayed on its capture stream runs in that stream's order. (A graph
// replayed concurrently with eager calls on the stream it was captured on would share the
// buffer: replay it on the stream it was captured on, as torch.cuda.graph does.)
class ZeroWorkspaces {
 public:
  uint8_t* get(const at::Tensor& like, cudaStream_t stream, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& kept = buffers_[{device_index(like), stream}];
    if (kept.empty() || kept.back().numel() < bytes) {
      const int64_t grown = kept.empty() ? bytes : std::max(bytes, 2 * kept.back().numel());
      kept.push_back(device_zeros({grown}, like.options().dtype(at::kByte)));
    }
    return kept.back().data_ptr<uint8_t>();
  }

 private:
  std::mutex mutex_;
  std::map<std::pair<int, cudaStream_t>, std::vector<at::Tensor>> buffers_;
};

ZeroWorkspaces& zero_workspaces() {
  static ZeroWorkspaces* w = new ZeroWorkspaces();  // never destroyed: no CUDA calls at exit
  return *w;
}

constexpr int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// The zeroed scratch of one call on the current stream, carved from its stream's buffer: the
// outlier bookkeeping (when mask_bytes > 0; a 16-byte counter slot, then the mask) and the
// split-K workspace of p (when its plan splits; attached to p).
struct CallWorkspace {
  uint32_t* arrivals = nullptr;
  uint8_t* mask = nullptr;
};
CallWorkspace attach_workspaces(const at::Tensor& like, cudaStream_t stream, int64_t mask_bytes,
                                Int8GemmParams* p) {
  const int64_t book_bytes = mask_bytes > 0 ? 16 + align16(mask_bytes) : 0;
  const int64_t gemm_elems = p != nullptr ? int8_gemm_workspace_elems(*p) : 0;
  CallWorkspace w;
  if (book_bytes + gemm_elems == 0) return w;
  uint8_t* base = zero_workspaces().get(like, stream, book_bytes + 4 * gemm_elems);
  if (book_bytes > 0) {
    w.arrivals = reinterpret_cast<uint32_t*>(base);
    w.mask = base + 16;
  }
  if (gemm_elems > 0) p->workspace = reinterpret_cast<int32_t*>(base + book_bytes);
  return w;
}

// The outlier bookkeeping of one quantize launch: the call's workspace, and the column list
// (and count, at cols[K]) in the caller's int32 [K + 1] buffer.
OutlierBookkeeping bookkeeping(const CallWorkspace& w, int32_t* cols, int64_t M, int64_t K) {
  OutlierBookkeeping book;
  book.mask = w.mask;
  book.arrivals = w.arrivals;
  book.cols = cols;
  book.n_cols = cols + K;
  book.zero_q = M <= kZeroOutliersInQuantizeMaxRows;
  return book;
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
  if (!find_outliers || M == 0) {
    launch_quantize_rowwise(xc.data_ptr(), to_dtype(x.scalar_type()), M, K, row_stride(xc),
                            static_cast<float>(threshold), q.data_ptr<int8_t>(),
                            row_absmax.data_ptr<float>(), OutlierBookkeeping{}, stream);
    INT8KERN_LAUNCH_CHECK();
    return {q, row_absmax, device_empty({0}, x.options().dtype(at::kLong))};
  }
  auto cols = device_empty({K + 1}, x.options().dtype(at::kInt));  // the list, then the count
  const auto book = bookkeeping(attach_workspaces(x, stream, K, nullptr), cols.data_ptr<int32_t>(), M, K);
  launch_quantize_rowwise(xc.data_ptr(), to_dtype(x.scalar_type()), M, K, row_stride(xc),
                          static_cast<float>(threshold), q.data_ptr<int8_t>(),
                          row_absmax.data_ptr<float>(), book, stream);
  INT8KERN_LAUNCH_CHECK();
  if (!book.zero_q) {
    launch_zero_outlier_columns(q.data_ptr<int8_t>(), M, K, book.cols, book.n_cols, stream);
    INT8KERN_LAUNCH_CHECK();
  }
  // The op returns the columns as a tensor of their count: the host reads it (and so waits).
  // int8_linear never does: its GEMM reads the count on the device.
  host_sync_point();
  const int64_t n = cols[K].item<int32_t>();
  return {q, row_absmax, cols.narrow(0, 0, n).to(at::kLong)};
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
  attach_workspaces(a, current_stream(), 0, &p);  // split-K scratch at decode sizes
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
  auto bias_f = bias_for_epilogue(bias, out_dtype);
  auto add_e = add_for_epilogue(add, out_dtype);
  auto p = gemm_params(a, b, out);
  fill_epilogue(p, row_c, col_c, bias_f, add_e, out_dtype);
  attach_workspaces(a, current_stream(), 0, &p);  // split-K scratch at decode sizes
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
// graph (a forward composed of the other ops would read the outlier count on the host), in two
// launches for up to kZeroOutliersInQuantizeMaxRows rows:
//   1. quantize x with the outlier bookkeeping fused: q, row_absmax, and (threshold > 0) the
//      ascending outlier column list and its count on the device, q's outlier columns zeroed
//      (for more rows, one more launch zeroes them on the whole GPU);
//   2. the int8 GEMM (split-K at decode sizes) whose epilogue dequantizes, adds the bias and
//      adds the outlier product, summed in float64 from x and the int8 weight (the contract of
//      int8kern.reference: the same bits as the CPU kernels and the reference).
// No memset (the workspaces are cached per stream and left zero by the kernels), no library
// call, no host sync; two allocations from the caching allocator (y and one scratch block).
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
  check_tensor_cores(op, x);
  const auto stream = current_stream();
  const auto w = weight.contiguous();
  const auto w_absmax = weight_absmax.contiguous();
  const auto bias_e = bias_for_epilogue(bias, x.scalar_type());
  const bool find_outliers = threshold > 0.0;

  // One scratch block: q [M, K] int8, row_absmax [M] float32, the outlier list int32 [K + 1].
  const int64_t q_bytes = align16(M * K), absmax_bytes = align16(4 * M);
  auto scratch = device_empty({q_bytes + absmax_bytes + (find_outliers ? 4 * (K + 1) : 0)},
                              x.options().dtype(at::kByte));
  int8_t* q = reinterpret_cast<int8_t*>(scratch.data_ptr<uint8_t>());
  float* row_absmax = reinterpret_cast<float*>(scratch.data_ptr<uint8_t>() + q_bytes);
  int32_t* cols = reinterpret_cast<int32_t*>(scratch.data_ptr<uint8_t>() + q_bytes + absmax_bytes);

  Int8GemmParams gp;
  gp.a = q;
  gp.b = w.data_ptr<int8_t>();
  gp.M = M;
  gp.N = N;
  gp.K = K;
  gp.lda = K;
  gp.ldb = row_stride(w);
  gp.out = y.data_ptr();
  gp.ldo = N;
  gp.out_int32 = false;
  gp.out_dtype = to_dtype(x.scalar_type());
  gp.row_absmax = row_absmax;
  gp.col_absmax = w_absmax.data_ptr<float>();
  gp.bias = bias_e ? bias_e->data_ptr() : nullptr;
  gp.bias_dtype = bias_e ? to_dtype(bias_e->scalar_type()) : DType::Float32;
  const CallWorkspace ws = attach_workspaces(x, stream, find_outliers ? K : 0, &gp);
  const OutlierBookkeeping book = find_outliers ? bookkeeping(ws, cols, M, K) : OutlierBookkeeping{};

  launch_quantize_rowwise(x2.data_ptr(), gp.out_dtype, M, K, row_stride(x2),
                          static_cast<float>(threshold), q, row_absmax, book, stream);
  INT8KERN_LAUNCH_CHECK();
  if (find_outliers) {
    if (!book.zero_q) {
      launch_zero_outlier_columns(q, M, K, book.cols, book.n_cols, stream);
      INT8KERN_LAUNCH_CHECK();
    }
    gp.outlier_x = x2.data_ptr();
    gp.ld_outlier_x = row_stride(x2);
    gp.outlier_cols = book.cols;
    gp.n_outlier_cols = book.n_cols;
  }
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
