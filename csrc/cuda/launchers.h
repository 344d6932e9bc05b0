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

#include "../outlier_capacity.h"

namespace int8kern {
namespace cuda {

// Floating dtypes the kernels read and write. Values are fixed: host code maps at::ScalarType.
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Row-wise absmax quantization with outlier-column detection, one pass over x.
//   x: [M, K] row-major with row stride ldx (elements), dtype x_dtype.
//   q: int8 [M, K] contiguous. row_absmax: float32 [M].
//   threshold > 0: elements with |x| >= threshold are excluded from the row absmax and
//   their column is marked in outlier_mask (uint8 [K], zeroed by the caller; the kernel
//   only ever stores 1). threshold <= 0: outlier_mask may be null and is not touched.
//   NaN and +-Inf are never outliers (outlier: threshold <= |x| < inf): they stay in their
//   row and make its absmax NaN/Inf; q is 0 where x*scale is NaN.
//   q is NOT yet zeroed in outlier columns: launch_zero_columns does that once the mask
//   has been compacted into a column list.
void launch_quantize_rowwise(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx,
                             float threshold, int8_t* q, float* row_absmax,
                             uint8_t* outlier_mask, cudaStream_t stream);

// q[:, cols[c]] = 0 for c in [0, n_cols). q: int8 [M, K] contiguous.
void launch_zero_columns(int8_t* q, int64_t M, int64_t K, const int64_t* cols, int64_t n_cols,
                         cudaStream_t stream);

// ---- the sync-free outlier path of int8_linear (outliers.cu) ----
// The outlier count lives only in device memory (n_cols); every kernel below reads it there,
// so the host never waits and the sequence can be captured in a CUDA graph.

// Turns the byte mask of launch_quantize_rowwise (uint8 [K], nonzero = outlier column) into
// the ascending column list cols[0, n) (int32 [K], entries past n are left unwritten) and
// *n_cols = n (int32 scalar). One block; K <= 131071 (checks.h kMaxK) so int32 holds it.
void launch_compact_columns(const uint8_t* mask, int64_t K, int32_t* cols, int32_t* n_cols,
                            cudaStream_t stream);

// Operands of the outlier kernels; T below is `dtype`, x's dtype.
struct OutlierParams {
  DType dtype = DType::Float32;
  const void* x = nullptr;  // [M, K], row stride ldx (elements)
  int64_t M = 0, K = 0, ldx = 0;
  int8_t* q = nullptr;  // int8 [M, K] contiguous (launch_quantize_rowwise's output)
  const int8_t* weight = nullptr;  // int8 [N, K], row stride ldw
  int64_t N = 0, ldw = 0;
  const float* weight_absmax = nullptr;  // float32 [N]
  const int32_t* cols = nullptr;         // launch_compact_columns' list and count
  const int32_t* n_cols = nullptr;
  void* x_out = nullptr;  // [M, kOutlierCapacity] contiguous, T
  void* w_out = nullptr;  // [N, kOutlierCapacity] contiguous, T
  void* add = nullptr;    // [M, N] row stride ld_add, T
  int64_t ld_add = 0;
};

// With n = *n_cols and CAP = kOutlierCapacity:
//   q[:, cols[c]] = 0 for every c < n;
//   x_out[m, c] = x[m, cols[c]] for c < min(n, CAP), 0 beyond;
//   w_out[j, c] = T(float(weight[j, cols[c]]) * (weight_absmax[j] / 127)) for c < min(n, CAP),
//                 0 beyond (float32, true division, rounded once: the reference's formula).
// Then x_out @ w_out.T is the outlier product when n <= CAP (the zero columns add exact 0s).
void launch_gather_outliers(const OutlierParams& p, cudaStream_t stream);

// When n = *n_cols > CAP (it returns at once otherwise):
//   add[m, j] = T(sum_{c < n} float(x[m, cols[c]]) * float(w_deq[j, cols[c]]))
// with w_deq as in w_out above, the sum in float64 in ascending c (exact products): the whole outlier product,
// rounded once, overwriting the truncated cuBLAS product (which must precede it on the stream).
// max_blocks bounds the grid (a small multiple of the SM count): with n <= CAP, the common
// case, the launch is that many blocks that each read one int and exit.
void launch_outlier_spill(const OutlierParams& p, int max_blocks, cudaStream_t stream);

// C = A @ B.T on int8 tensor cores (mma.sync.m16n8k32.s32.s8.s8.s32, sm_80+), exact int32
// accumulation, with either an int32 output or the fused dequantize epilogue:
//   out[i, j] = (float(acc[i, j]) * (row_absmax[i] / 127) * (col_absmax[j] / 127)
//                + bias[j] + add[i, j])            computed in float32, rounded once.
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
  const float* bias = nullptr;        // [N] float32, or null
  const void* add = nullptr;          // [M, N] with row stride ld_add, or null
  DType add_dtype = DType::Float32;   // add is either out_dtype or Float32
  int64_t ld_add = 0;

  // Split-K scratch for the decode regime (M <= 16): int8_gemm_workspace_elems(params) int32
  // elements, all ZERO at launch (at::zeros: a memset on the same stream), left all zero by
  // the launch. Private to one launch at a time: launches that may overlap (other streams)
  // each need their own. Null: no split-K (correct, slower at small M).
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
