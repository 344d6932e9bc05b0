// Shared device helpers for the int8kern CUDA kernels (quantize.cu, gemm_mma.cu,
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
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

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

// Largest grid.x we ever launch; kernels that may need more blocks use grid-stride loops.
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1

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
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
INT8KERN_D float fadd_rn(float a, float b) {
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
INT8KERN_D float fdiv_rn(float a, float b) {
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
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

// ----------------------------------------------------------------------------------------
// GEMM epilogues. Kept apart from the main loop so that richer fused epilogues and other main
// loops (an sm_90a wgmma one) can reuse them. An epilogue is a trivially copyable struct
// passed by value as a kernel argument, with two device members:
//
//   prologue(s_row, s_col, TileCtx, tid, nthreads)
//     called by every thread of the block at the start of a block tile, before the main
//     loop; may fill per-tile row data s_row[0, bm) and column data s_col[0, bn) in shared
//     memory (the kernel puts a __syncthreads between prologue and apply, and between apply
//     and the next tile's prologue). Divisions live here, where few registers are live: an
//     IEEE division has a called slow path, and a call next to 64 live accumulators spills.
//
//   apply(acc, layout, TileCtx)
//     called by every thread after the main loop with its accumulator fragment
//     acc[Layout::kCount]; element idx sits at tile-local row layout.row(idx), column
//     layout.col(idx) (compile-time foldable under full unrolling). apply bounds-checks
//     every global access against M and N itself.
// ----------------------------------------------------------------------------------------
struct TileCtx {
  int64_t m0, n0;  // block tile origin in C
  int bm, bn;      // block tile extent (rows, cols) before clipping to M, N
  int64_t M, N;
  const float* s_row;  // shared, [bm]
  const float* s_col;  // shared, [bn]
};

// out[i, j] = int32 acc.
struct Int32Epilogue {
  int32_t* out;
  int64_t ldo;

  INT8KERN_D void prologue(float*, float*, const TileCtx&, int, int) const {}

  template <class Layout>
  INT8KERN_D void apply(const int32_t (&acc)[Layout::kCount], const Layout& lay,
                        const TileCtx& c) const {
#pragma unroll
    for (int idx = 0; idx < Layout::kCount; ++idx) {
      const int64_t i = c.m0 + lay.row(idx);
      const int64_t j = c.n0 + lay.col(idx);
      if (i < c.M && j < c.N) out[i * ldo + j] = acc[idx];
    }
  }
};

// out[i, j] = round_to_out_dtype(((float(acc) * (row_absmax[i] / 127)) * (col_absmax[j] / 127)
//                                 + bias[j]) + float(add[i, j]))
// each float op rounded to float32 in exactly this order; bias / add optional (null).
struct DequantEpilogue {
  void* out;
  int64_t ldo;
  DType out_dtype;
  const float* row_absmax;  // [M]
  const float* col_absmax;  // [N]
  const float* bias;        // [N] or null
  const void* add;          // [M, N] row stride ld_add, or null
  DType add_dtype;          // Float32 or out_dtype
  int64_t ld_add;

  // Per-tile row / column scales (0 past M / N: never used, keeps shared memory defined).
  INT8KERN_D void prologue(float* s_row, float* s_col, const TileCtx& c, int tid,
                           int nthreads) const {
    for (int r = tid; r < c.bm; r += nthreads) {
      const int64_t i = c.m0 + r;
      s_row[r] = i < c.M ? absmax_to_scale(row_absmax[i]) : 0.0f;
    }
    for (int q = tid; q < c.bn; q += nthreads) {
      const int64_t j = c.n0 + q;
      s_col[q] = j < c.N ? absmax_to_scale(col_absmax[j]) : 0.0f;
    }
  }

  // Works through the fragment in chunks of 16 elements: the dtype switches are uniform and
  // hoisted out of each chunk's unrolled loops, and only one chunk's float values (plus the
  // not yet converted accumulators) are live at a time, which keeps the 128x128 tile under
  // its 128-register budget.
  template <class Layout>
  INT8KERN_D void apply(const int32_t (&acc)[Layout::kCount], const Layout& lay,
                        const TileCtx& c) const {
    constexpr int kChunk = Layout::kCount % 16 == 0 ? 16 : Layout::kCount;
#pragma unroll
    for (int base = 0; base < Layout::kCount; base += kChunk) {
      float v[kChunk];
#pragma unroll
      for (int k = 0; k < kChunk; ++k)
        v[k] = dequant_core(acc[base + k], c.s_row[lay.row(base + k)],
                            c.s_col[lay.col(base + k)]);
      if (bias != nullptr) {
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
          const int64_t j = c.n0 + lay.col(base + k);
          if (j < c.N) v[k] = fadd_rn(v[k], bias[j]);
        }
      }
      if (add != nullptr) {
        switch (add_dtype) {
          case DType::Float16:
            add_chunk<__half>(v, base, lay, c);
            break;
          case DType::BFloat16:
            add_chunk<__nv_bfloat16>(v, base, lay, c);
            break;
          default:
            add_chunk<float>(v, base, lay, c);
            break;
        }
      }
      switch (out_dtype) {
        case DType::Float16:
          store_chunk<__half>(v, base, lay, c);
          break;
        case DType::BFloat16:
          store_chunk<__nv_bfloat16>(v, base, lay, c);
          break;
        default:
          store_chunk<float>(v, base, lay, c);
          break;
      }
    }
  }

  // v[k] += add[element base + k], bounds-checked.
  template <typename T, int kChunk, class Layout>
  INT8KERN_D void add_chunk(float (&v)[kChunk], int base, const Layout& lay,
                            const TileCtx& c) const {
    const T* p = static_cast<const T*>(add);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const int64_t i = c.m0 + lay.row(base + k);
      const int64_t j = c.n0 + lay.col(base + k);
      if (i < c.M && j < c.N) v[k] = fadd_rn(v[k], to_float(p[i * ld_add + j]));
    }
  }

  // out[element base + k] = v[k] rounded to T, bounds-checked.
  template <typename T, int kChunk, class Layout>
  INT8KERN_D void store_chunk(const float (&v)[kChunk], int base, const Layout& lay,
                              const TileCtx& c) const {
    T* p = static_cast<T*>(out);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const int64_t i = c.m0 + lay.row(base + k);
      const int64_t j = c.n0 + lay.col(base + k);
      if (i < c.M && j < c.N) p[i * ldo + j] = from_float<T>(v[k]);
    }
  }

  // Single element, for launch_dequantize (no tile): same operations, same order.
  INT8KERN_D float value(int64_t i, int64_t j, int32_t acc, int64_t add_idx) const {
    float v = dequant_core(acc, absmax_to_scale(row_absmax[i]), absmax_to_scale(col_absmax[j]));
    if (bias != nullptr) v = fadd_rn(v, bias[j]);
    if (add != nullptr) v = fadd_rn(v, load_as_float(add, add_dtype, add_idx));
    return v;
  }
};

}  // namespace cuda
}  // namespace int8kern
