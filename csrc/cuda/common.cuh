// Shared device helpers for the int8kern CUDA kernels (quantize.cu, the GEMMs,
// dequantize.cu). CUDA headers only: no torch/ATen/c10, so every .cu compiles in seconds.
//
// Numerics contract (the pure-PyTorch reference computes the same float32 operations in the
// same order, so results match bit for bit):
//   * every float multiply/add/divide that is part of the spec goes through fmul_rn /
//     fadd_rn / fdiv_rn below: inline PTX `mul.rn.f32` etc. WITHOUT .ftz, so the result is
//     the IEEE round-to-nearest-even value whatever -ftz / -fmad / --use_fast_math the build
//     uses, and nvcc can never contract a multiply and an add into one FMA.
//   * float -> int8 is round-half-to-even, saturated to [-127, 127], NaN -> 0.
//   * absmax is NaN-propagating (fmaxf is not: it drops NaN), computed on bit patterns.
#pragma once

#include <cstdint>
#ifdef INT8KERN_EMU
#include "../emu/cuda_emu.h"  // the same sources on the CPU, under the warp-level emulator
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

#include "launchers.h"

namespace int8kern {
namespace cuda {

#define INT8KERN_HD __host__ __device__ __forceinline__
#define INT8KERN_D __device__ __forceinline__

// ----------------------------------------------------------------------------------------
// Integer / index helpers. All element offsets are int64_t: M * ld can exceed 2^31.
// ----------------------------------------------------------------------------------------
template <typename T>
INT8KERN_HD constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

template <typename T>
INT8KERN_HD T min_of(T a, T b) {
  return a < b ? a : b;
}

// True when p is aligned to `bytes` (a power of two).
INT8KERN_HD bool is_aligned(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

// Runs the callable with `constexpr bool NAME` = cond, so that a runtime flag picks one of two
// template instantiations in one line (causal-conv1d's BOOL_SWITCH).
#define INT8KERN_BOOL_SWITCH(cond, NAME, ...) \
  [&] {                                       \
    if (cond) {                               \
      constexpr bool NAME = true;             \
      return __VA_ARGS__();                   \
    } else {                                  \
      constexpr bool NAME = false;            \
      return __VA_ARGS__();                   \
    }                                         \
  }()

// kernel<<<grid, block, smem, stream>>>(args...), written INT8KERN_LAUNCH(grid, block, smem,
// stream, kernel)(args...) so that a host compiler can follow it under the emulator.
#ifdef INT8KERN_EMU
#define INT8KERN_LAUNCH(grid, block, smem, stream, ...) INT8KERN_EMU_LAUNCH(grid, block, smem, stream, __VA_ARGS__)
#else
#define INT8KERN_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

// Under the emulator each PTX wrapper also takes its caller's file and line, so that a fault or
// deadlock report names the call site (which mbarrier wait, which ldmatrix), not the wrapper.
#ifdef INT8KERN_EMU
#define INT8KERN_CALL_SITE , const char* file = __builtin_FILE(), int line = __builtin_LINE()
#define INT8KERN_CALL_SITE_ONLY const char* file = __builtin_FILE(), int line = __builtin_LINE()
#else
#define INT8KERN_CALL_SITE
#define INT8KERN_CALL_SITE_ONLY
#endif

// `extern __shared__ __align__(align) type name[]` (dynamic shared memory).
#ifdef INT8KERN_EMU
#define INT8KERN_DYNAMIC_SHARED(type, name, align) type* name = static_cast<type*>(::int8kern::emu::dynamic_smem())
#else
#define INT8KERN_DYNAMIC_SHARED(type, name, align) extern __shared__ __align__(align) type name[]
#endif

// Shared-memory address of a generic pointer to shared memory, as PTX operands take it.
INT8KERN_D uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A flag that several threads may set at once, all to the same value: a relaxed store, so that
// the concurrent stores are not a data race (a plain store would be one, which ThreadSanitizer
// reports under the emulator).
INT8KERN_D void set_flag_relaxed(uint8_t* p) {
#ifdef INT8KERN_EMU
  __atomic_store_n(p, static_cast<uint8_t>(1), __ATOMIC_RELAXED);
#else
  asm volatile("st.relaxed.gpu.u8 [%0], %1;\n" ::"l"(p), "r"(1u) : "memory");
#endif
}

// Largest grid.x we ever launch; kernels that may need more blocks use grid-stride loops.
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1

// Largest grid.y: 65535 on every GPU. Under the emulator INT8KERN_EMU_MAX_GRID_Y may lower it
// (the emulator then refuses larger launches), so that the tests of the grid-stride loops past
// it need far fewer tiles: the loop is the same code whatever the bound.
#ifdef INT8KERN_EMU
inline int64_t max_grid_y() { return ::int8kern::emu::max_grid_y(); }
#else
INT8KERN_HD constexpr int64_t max_grid_y() { return 65535; }
#endif

// ----------------------------------------------------------------------------------------
// DType -> C++ type.
// ----------------------------------------------------------------------------------------
template <DType D>
struct DTypeTraits;
template <>
struct DTypeTraits<DType::Float32> {
  using type = float;
};
template <>
struct DTypeTraits<DType::Float16> {
  using type = __half;
};
template <>
struct DTypeTraits<DType::BFloat16> {
  using type = __nv_bfloat16;
};

INT8KERN_HD int dtype_size(DType d) { return d == DType::Float32 ? 4 : 2; }

// ----------------------------------------------------------------------------------------
// Exact float32 arithmetic (no FTZ, no FMA contraction), see header comment.
// ----------------------------------------------------------------------------------------
INT8KERN_D float fmul_rn(float a, float b) {
#ifdef INT8KERN_EMU
  return a * b;  // IEEE binary32, round to nearest even (-ffp-contract=off: never an FMA)
#else
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#endif
}
INT8KERN_D float fadd_rn(float a, float b) {
#ifdef INT8KERN_EMU
  return a + b;  // IEEE binary32, round to nearest even (-ffp-contract=off: never an FMA)
#else
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#endif
}
INT8KERN_D float fdiv_rn(float a, float b) {
#ifdef INT8KERN_EMU
  return a / b;  // IEEE binary32, round to nearest even (-ffp-contract=off: never an FMA)
#else
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#endif
}
// int32 -> float32, round to nearest even (what torch's .float() does).
INT8KERN_D float i2f_rn(int32_t v) { return __int2float_rn(v); }

INT8KERN_D bool is_nan(float v) { return v != v; }

// Absmax on bit patterns. For x >= 0 (sign bit clear) the IEEE bit pattern is monotone in the
// value, and every NaN pattern (> 0x7f800000) is above +inf, so an unsigned max over
// abs_bits(x) is exactly a NaN-propagating max of |x| (fmaxf would drop NaN), and it does
// not depend on -ftz (a float compare under .ftz treats denormals as 0).
constexpr uint32_t kInfBits = 0x7f800000u;
INT8KERN_D uint32_t abs_bits(float v) { return __float_as_uint(v) & 0x7fffffffu; }
INT8KERN_D uint32_t umax(uint32_t a, uint32_t b) { return a > b ? a : b; }
// For abs_bits values: the value is a number (not NaN) > 0.
INT8KERN_D bool abs_bits_positive(uint32_t a) { return a != 0u && a <= kInfBits; }
// For abs_bits a and a positive threshold's bits t: threshold <= |x| < inf, i.e. x is an
// outlier. NaN and Inf never are (see launchers.h): they stay in their row's absmax.
INT8KERN_D bool is_outlier_bits(uint32_t a, uint32_t t) { return a >= t && a < kInfBits; }

// round-half-to-even(v), saturated to [-127, 127]; NaN -> 0. cvt.rni.s32.f32 (what
// __float2int_rn emits) already rounds half to even, saturates to the int32 range for
// +-inf / huge values and gives 0 for NaN; the explicit NaN test is belt and braces.
INT8KERN_D int8_t float_to_int8_sat127(float v) {
  int r = __float2int_rn(v);
  r = r > 127 ? 127 : r;
  r = r < -127 ? -127 : r;
  return is_nan(v) ? int8_t(0) : static_cast<int8_t>(r);
}

// ----------------------------------------------------------------------------------------
// Load-as-float / store-from-float, static and dynamic (runtime DType) versions.
// ----------------------------------------------------------------------------------------
INT8KERN_D float to_float(float v) { return v; }
INT8KERN_D float to_float(__half v) { return __half2float(v); }
INT8KERN_D float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
INT8KERN_D T from_float(float v);
template <>
INT8KERN_D float from_float<float>(float v) {
  return v;
}
template <>
INT8KERN_D __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
INT8KERN_D __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// p[idx] of runtime dtype d, as float (exact: every f16/bf16 value is a float32 value).
INT8KERN_D float load_as_float(const void* p, DType d, int64_t idx) {
  switch (d) {
    case DType::Float16:
      return __half2float(static_cast<const __half*>(p)[idx]);
    case DType::BFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[idx]);
    default:
      return static_cast<const float*>(p)[idx];
  }
}

// p[idx] = v rounded once (nearest even) to runtime dtype d.
INT8KERN_D void store_from_float(void* p, DType d, int64_t idx, float v) {
  switch (d) {
    case DType::Float16:
      static_cast<__half*>(p)[idx] = __float2half_rn(v);
      break;
    case DType::BFloat16:
      static_cast<__nv_bfloat16*>(p)[idx] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(p)[idx] = v;
      break;
  }
}

// ----------------------------------------------------------------------------------------
// Dequantize numerics, shared by the GEMM epilogue and launch_dequantize so both produce the
// same bits: out = ((float(acc) * (row_absmax / 127)) * (col_absmax / 127) + bias) + add.
// ----------------------------------------------------------------------------------------
INT8KERN_D float absmax_to_scale(float absmax) { return fdiv_rn(absmax, 127.0f); }
INT8KERN_D float dequant_core(int32_t acc, float row_scale, float col_scale) {
  return fmul_rn(fmul_rn(i2f_rn(acc), row_scale), col_scale);
}

}  // namespace cuda
}  // namespace int8kern
