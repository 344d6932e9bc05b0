// The boundary between the C++ host code (csrc/cuda/ops_cuda.cpp, compiled by the host
// compiler with ATen) and the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc with no torch
// headers at all, so that each .cu file compiles in seconds, not minutes).
//
// Host code validates arguments, allocates outputs, picks the current stream under a device
// guard, calls one of these launchers and checks the launch. Launchers only launch: they
// never allocate, never synchronise, and assume their arguments were validated.
#pragma once

#include <cstdint>
#ifdef INT8KERN_EMU
#include "../emu/cuda_emu.h"  // the CUDA runtime of the warp-level emulator
#else
#include <cuda_runtime_api.h>
#endif


namespace int8kern {
namespace cuda {

// Floating dtypes the kernels read and write. Values are fixed: host code maps at::ScalarType.
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// The outlier bookkeeping of launch_quantize_rowwise (threshold > 0): where the outlier columns
// are marked and listed. mask and arrivals are workspace: ALL ZERO at launch, and the launch
// leaves them all zero (its last block clears them), so one buffer serves every launch on a
// stream without a memset; launches that may overlap (other streams) each need their own.
struct OutlierBookkeeping {
  uint8_t* mask = nullptr;        // uint8 [K] workspace; null: no outlier columns (threshold <= 0)
  uint32_t* arrivals = nullptr;   // one uint32 workspace counter
  int32_t* cols = nullptr;        // int32 [K]: the outlier columns, ascending, in cols[0, n)
  int32_t* n_cols = nullptr;      // int32 scalar: n (only ever read on the device by int8_linear)
  bool zero_q = true;             // the launch zeroes q[:, cols]; false: the caller launches
                                  // launch_zero_outlier_columns (many rows: the whole GPU)
};

// Row-wise absmax quantization with the outlier bookkeeping, one pass over x, one launch.
//   x: [M, K] row-major with row stride ldx (elements), dtype x_dtype.
//   q: int8 [M, K] contiguous. row_absmax: float32 [M].
//   threshold > 0 (book.mask non-null): elements with |x| >= threshold are excluded from the row
//   absmax; their columns are listed in book.cols / *book.n_cols (ascending, any count up to
//   K) and, with book.zero_q, zeroed in q. threshold <= 0: book.mask must be null.
//   NaN and +-Inf are never outliers (outlier: threshold <= |x| < inf): they stay in their
//   row and make its absmax NaN/Inf; q is 0 where x*scale is NaN.
void launch_quantize_rowwise(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx,
                             float threshold, int8_t* q, float* row_absmax,
                             const OutlierBookkeeping& book, cudaStream_t stream);

// q[:, cols[c]] = 0 for c < *n_cols (read on the device). q: int8 [M, K] contiguous.
void launch_zero_outlier_columns(int8_t* q, int64_t M, int64_t K, const int32_t* cols,
                                 const int32_t* n_cols, cudaStream_t stream);

// Rows up to which int8_linear lets the quantize launch zero q's outlier columns itself (its last
// block writes M * n bytes, a few microseconds at most here); above, one more launch does it on
// the whole GPU. Decode (M <= 16) and batched decode stay at two launches.
constexpr int64_t kZeroOutliersInQuantizeMaxRows = 64;

// C = A @ B.T on int8 tensor cores (mma.sync.m16n8k32.s32.s8.s8.s32, sm_80+), exact int32
// accumulation, with either an int32 output or the fused dequantize epilogue:
//   out[i, j] = (float(acc[i, j]) * (row_absmax[i] / 127) * (col_absmax[j] / 127)
//                + bias[j] + add[i, j] + outlier[i, j])   in float32, each step rounded,
// outlier (LLM.int8()'s 16-bit half, when outlier_cols is set) as int8kern.reference defines it:
//   outlier[i, j] = float(T(float(sum_c double(x[i, col_c]) * double(w_deq[j, col_c]))))
//   w_deq[j, k] = T(float(b[j, k]) * (col_absmax[j] / 127)),  T = out_dtype,
// the sum in float64 over the listed columns in ascending order (products exact), rounded to
// float32 and then to T: the same bits as the CPU kernels and the reference.
struct Int8GemmParams {
  const int8_t* a = nullptr;  // [M, K], row stride lda (elements), K-major
  const int8_t* b = nullptr;  // [N, K], row stride ldb (elements), K-major (nn.Linear weight)
  int64_t M = 0, N = 0, K = 0;
  int64_t lda = 0, ldb = 0;

  void* out = nullptr;  // [M, N], row stride ldo (elements)
  int64_t ldo = 0;
  bool out_int32 = true;                 // true: out is int32 acc, epilogue fields ignored
  DType out_dtype = DType::Float32;      // when !out_int32

  const float* row_absmax = nullptr;  // [M]
  const float* col_absmax = nullptr;  // [N]
  const void* bias = nullptr;         // [N] in bias_dtype, or null
  DType bias_dtype = DType::Float32;  // Float32 or out_dtype
  const void* add = nullptr;          // [M, N] with row stride ld_add, or null
  DType add_dtype = DType::Float32;   // add is either out_dtype or Float32
  int64_t ld_add = 0;

  // The outlier product (LLM.int8()), computed in the epilogue from x and the int8 weight b:
  // no 16-bit copy of the weight columns, no extra launch, any number of columns.
  const void* outlier_x = nullptr;        // [M, K] in out_dtype, row stride ld_outlier_x; null: none
  int64_t ld_outlier_x = 0;
  const int32_t* outlier_cols = nullptr;  // launch_quantize_rowwise's column list and count
  const int32_t* n_outlier_cols = nullptr;

  // Split-K scratch for the decode regime (M <= 16): int8_gemm_workspace_elems(params) int32
  // elements, all ZERO at launch and left all zero by the launch (so a buffer cached per stream
  // is zeroed once, not per call). Private to one launch at a time: launches that may overlap
  // (other streams) each need their own. Null: no split-K (correct, slower at small M).
  int32_t* workspace = nullptr;
};

// Why the sm_90a wgmma GEMM did not run a launch (kLaunched: it did). kNotApplicable is the
// shape or the operands (decode and mid sizes are split-K work for mma.sync; TMA needs
// 16-byte alignment); the others mean it cannot run in this process at all.
enum class WgmmaStatus : int {
  kLaunched = 0,
  kNotApplicable,
  kNotBuilt,          // the extension was built without sm_90a (TORCH_CUDA_ARCH_LIST lacks 9.0a)
  kNotSm90,           // the device is not compute capability 9.0
  kRegisterShortfall, // ptxas gave the kernel fewer registers than its setmaxnreg hand-off needs
  kNoTensorMaps,      // the driver has no cuTensorMapEncodeTiled, or a query failed
};
const char* wgmma_status_message(WgmmaStatus status);

// Which main loop ran a GEMM. wgmma_requested: INT8KERN_CUDA_GEMM is "wgmma" (read on every
// launch, so tests and benchmarks can switch inside a process); then wgmma == kLaunched if the
// wgmma kernel ran it, else why the mma.sync kernels did (the caller may warn once).
struct GemmLaunch {
  bool wgmma_requested = false;
  WgmmaStatus wgmma = WgmmaStatus::kNotApplicable;
};
GemmLaunch launch_int8_gemm(const Int8GemmParams& params, cudaStream_t stream);

// int32 elements of the zeroed workspace launch_int8_gemm uses for params on the current
// device (0: none, leave params.workspace null). Depends on M, N, K and the device's SM
// count only; call it under the same device as the launch.
int64_t int8_gemm_workspace_elems(const Int8GemmParams& params);

// The same GEMM on sm_90a: wgmma.mma_async + TMA + an mbarrier pipeline (gemm_wgmma.cu, built
// only for sm_90a and linked only into builds whose arch list has 9.0a). Launches and returns
// kLaunched only where it applies: an sm_90 device, K >= 1, a and b 16-byte aligned with row
// strides lda, ldb multiples of 16 bytes (TMA's rules), M, N < 2^31, the kernel given the
// registers its hand-off needs, and the driver's cuTensorMapEncodeTiled found. Otherwise
// launches nothing and says why (the caller falls back to the mma.sync kernels).
// Not yet run on hardware: launch_int8_gemm tries it only when INT8KERN_CUDA_GEMM=wgmma.
WgmmaStatus launch_int8_gemm_wgmma(const Int8GemmParams& params, cudaStream_t stream);
// Registers per thread of the wgmma kernel image loaded on the current device (0 when none
// loads), and the count its setmaxnreg hand-off needs: for the self-test's report.
int wgmma_kernel_registers();
int wgmma_registers_needed();

// The properties of a device that the kernels' planning and checks use, queried once per
// device (device_props.cu). error != cudaSuccess: a query failed, the other fields are 0.
struct DeviceProps {
  int device = -1;
  cudaError_t error = cudaSuccess;
  int major = 0, minor = 0;     // compute capability
  int sms = 0;                  // multiprocessors
  int smem_per_sm = 0;          // bytes of shared memory per multiprocessor
  int smem_per_block_optin = 0; // bytes of dynamic shared memory one block may opt in to
};
const DeviceProps& device_props(int device);
const DeviceProps& current_device_props();  // of cudaGetDevice()

// Standalone dequantize of an int32 accumulator, same formula as the GEMM epilogue.
//   acc: int32 [M, N] contiguous; out: [M, N] contiguous in out_dtype;
//   bias float32 [N] or null; add [M, N] contiguous in add_dtype (out_dtype or Float32) or null.
void launch_dequantize(const int32_t* acc, int64_t M, int64_t N, const float* row_absmax,
                       const float* col_absmax, const float* bias, const void* add,
                       DType add_dtype, void* out, DType out_dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace int8kern
