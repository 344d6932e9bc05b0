// GEMM epilogues, shared by the int8 GEMM main loops (gemm_mma.cu, gemm_wgmma.cu) and the
// standalone dequantize kernel (dequantize.cu), so that every path produces the same bits.
// CUDA headers only.
#pragma once

#include "common.cuh"

namespace int8kern {
namespace cuda {

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
#ifdef INT8KERN_PLANT_TILE_EDGE_STORE_OFF_BY_ONE  // test plant for tests/test_emu_selftest.py; never defined in a normal build
      if (i < c.M && j <= c.N) out[i * ldo + j] = acc[idx];
#else
      if (i < c.M && j < c.N) out[i * ldo + j] = acc[idx];
#endif
    }
  }
};

// out[i, j] = round_to_out_dtype((((float(acc) * (row_absmax[i] / 127)) * (col_absmax[j] / 127)
//                                 + bias[j]) + float(add[i, j])) + outlier[i, j])
// each float op rounded to float32 in exactly this order; bias / add / outlier optional (null).
// outlier: LLM.int8()'s 16-bit product over the outlier columns (launchers.h, Int8GemmParams),
// summed in float64 here, in the epilogue, from x and the int8 weight.
struct DequantEpilogue {
  void* out;
  int64_t ldo;
  DType out_dtype;
  const float* row_absmax;  // [M]
  const float* col_absmax;  // [N]
  const void* bias;         // [N] or null
  DType bias_dtype;         // Float32 or out_dtype (converted exactly, as the reference's bias.float())
  const void* add;          // [M, N] row stride ld_add, or null
  DType add_dtype;          // Float32 or out_dtype
  int64_t ld_add;
  const void* x;            // [M, K] in out_dtype, row stride ldx: the outlier product's x, or null
  int64_t ldx;
  const int8_t* w;          // [N, K] row stride ldw: the GEMM's b
  int64_t ldw;
  const int32_t* cols;      // the outlier columns cols[0, *n_cols), ascending
  const int32_t* n_cols;

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
  // its 128-register budget. (With the outlier product's float64 sums, ptxas 13 still spills
  // 28 bytes of it on sm_80, none on sm_90a; chunks of 8 or 4, or a separate path for calls
  // with outliers, all spilled more.)
  template <class Layout>
  INT8KERN_D void apply(const int32_t (&acc)[Layout::kCount], const Layout& lay,
                        const TileCtx& c) const {
    constexpr int kChunk = Layout::kCount % 16 == 0 ? 16 : Layout::kCount;
    const int n_outliers = x != nullptr ? *n_cols : 0;  // written by the quantize launch
#pragma unroll
    for (int base = 0; base < Layout::kCount; base += kChunk) {
      float v[kChunk];
#pragma unroll
      for (int k = 0; k < kChunk; ++k)
        v[k] = dequant_core(acc[base + k], c.s_row[lay.row(base + k)],
                            c.s_col[lay.col(base + k)]);
      if (bias != nullptr) {
        switch (bias_dtype) {
          case DType::Float16:
            bias_chunk<__half>(v, base, lay, c);
            break;
          case DType::BFloat16:
            bias_chunk<__nv_bfloat16>(v, base, lay, c);
            break;
          default:
            bias_chunk<float>(v, base, lay, c);
            break;
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
      if (n_outliers > 0) {
        switch (out_dtype) {
          case DType::Float16:
            outlier_chunk<__half>(v, base, lay, c, n_outliers);
            break;
          case DType::BFloat16:
            outlier_chunk<__nv_bfloat16>(v, base, lay, c, n_outliers);
            break;
          default:
            outlier_chunk<float>(v, base, lay, c, n_outliers);
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

  // v[k] += bias[column of element base + k], bounds-checked.
  template <typename T, int kChunk, class Layout>
  INT8KERN_D void bias_chunk(float (&v)[kChunk], int base, const Layout& lay,
                             const TileCtx& c) const {
    const T* p = static_cast<const T*>(bias);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      const int64_t j = c.n0 + lay.col(base + k);
      if (j < c.N) v[k] = fadd_rn(v[k], to_float(p[j]));
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

  // v[k] += the outlier product of element base + k (int8kern.reference's contract): for each
  // element, sum_c double(x[i, col_c]) * double(T(float(w[j, col_c]) * col_scale[j])) over the
  // columns in ascending order, each product exact in float64 (two values of <= 24 significant
  // bits), then rounded to float32, then to T, and added in float32. Two elements at a time
  // (two float64 sums live): with four, the 128x128 tile spilled (ptxas: 76-116 bytes) under its
  // 128-register cap; a pair shares its row, so one x load serves both. Reads x and
  // the weight bytes from L2 / L1 (the GEMM just streamed those weight rows), n per element.
  template <typename T, int kChunk, class Layout>
  INT8KERN_D void outlier_chunk(float (&v)[kChunk], int base, const Layout& lay, const TileCtx& c,
                                int n) const {
    constexpr int kGroup = 2;
    static_assert(kChunk % kGroup == 0, "whole groups of elements");
    const T* xp = static_cast<const T*>(x);
#pragma unroll
    for (int g = 0; g < kChunk; g += kGroup) {
      double sum[kGroup];
#pragma unroll
      for (int k = 0; k < kGroup; ++k) sum[k] = 0.0;
#pragma unroll 1
      for (int oc = 0; oc < n; ++oc) {
        const int64_t col = cols[oc];
#pragma unroll
        for (int k = 0; k < kGroup; ++k) {
          const int64_t i = c.m0 + lay.row(base + g + k);
          const int64_t j = c.n0 + lay.col(base + g + k);
          if (i < c.M && j < c.N) {
            const T w_deq = from_float<T>(fmul_rn(static_cast<float>(w[j * ldw + col]),
                                                  c.s_col[lay.col(base + g + k)]));
            sum[k] = fma(static_cast<double>(to_float(xp[i * ldx + col])),
                         static_cast<double>(to_float(w_deq)), sum[k]);  // exact product
          }
        }
      }
#pragma unroll
      for (int k = 0; k < kGroup; ++k)
        v[g + k] = fadd_rn(v[g + k], to_float(from_float<T>(static_cast<float>(sum[k]))));  // f64 -> f32 -> T
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
    if (bias != nullptr) v = fadd_rn(v, load_as_float(bias, bias_dtype, j));
    if (add != nullptr) v = fadd_rn(v, load_as_float(add, add_dtype, add_idx));
    return v;
  }
};

// Calls f(epilogue) with the epilogue p asks for: the int32 store or the fused dequantize.
// Each main loop's launcher is then written once, for whichever epilogue type it is given.
template <class F>
void with_epilogue(const Int8GemmParams& p, F&& f) {
  if (p.out_int32) {
    f(Int32Epilogue{static_cast<int32_t*>(p.out), p.ldo});
  } else {
    f(DequantEpilogue{p.out,  p.ldo, p.out_dtype, p.row_absmax, p.col_absmax,
                      p.bias, p.bias_dtype, p.add, p.add_dtype, p.ld_add,
                      p.outlier_x, p.ld_outlier_x, p.b, p.ldb, p.outlier_cols, p.n_outlier_cols});
  }
}

}  // namespace cuda
}  // namespace int8kern
