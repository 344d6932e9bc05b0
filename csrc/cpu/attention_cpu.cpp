// decode_attention: softmax(q k^T * scale + mask) v for ONE query position per head, over a KV
// cache, with grouped-query attention (Hq query heads share each of Hkv key/value heads).
//
// Why int8kern has it: on a CPU a decode step of a small model spends as much time in
// attention as in all its int8 GEMVs. torch's SDPA reads the static KV cache through MKL gemv
// calls per 512-position block, ~6 GB/s on Zen 4 (benchmarks/NOTES.md, 2026-12-04): at
// SmolLM2-135M's 3 KV heads and ~660 positions, ~5 ms of a ~18 ms token. This kernel reads each
// K and V row once, for all the query heads of its group, in address order, and skips the rows
// the mask hides (a static cache's unused tail), so that it runs at the speed of memory.
//
// Split-K ("flash decoding"): the positions of each (batch, KV head) are cut into blocks of
// kBlock; a task computes one block's softmax numerator and denominator against the block's
// own maximum; the caller merges the blocks. Tasks share no state, so they run on
// parallel_chunks' threads (parallel.h) without an OpenMP join.
//
// Semantics (int8kern.reference.decode_attention, and torch's SDPA on the CPU): scores in
// float32 (q is scaled first); a position whose mask is false counts for nothing, whatever its
// K and V rows hold (its V row is never read, its K row only when another position of its group
// of 16 is attended); a query that attends to no position gives 0 (as torch's CPU flash
// attention does); a NaN in an attended row of q, k or v gives NaN.
#include <immintrin.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "isa.h"
#include "parallel.h"

namespace int8kern {
namespace cpu {
namespace {

constexpr int64_t kBlock = 256;  // positions per task: K and V rows of 64 floats, 128 KiB
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// One (batch, KV head, block of positions) task's inputs.
template <typename T>
struct BlockArgs {
  const float* q;       // [G, D] float32, scaled
  const T* k;           // first row of the block; rows k_row apart
  const T* v;
  int64_t k_row, v_row;
  const bool* mask;     // nullptr: every position attended; else mask[j * mask_step]
  int64_t mask_step;
  int64_t n;            // positions in this block (<= kBlock)
  int64_t G, D;
};

// Its result: per query head g, the block's maximum score m[g], the sum l[g] of exp(s - m[g])
// and the weighted sum acc[g, :] of v rows.
struct BlockResult {
  float* m;
  float* l;
  float* acc;  // [G, D]
};

inline bool attended(const bool* mask, int64_t step, int64_t j) { return mask == nullptr || mask[j * step]; }

// ---------------------------------------------------------------- portable C++

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

// The three passes in plain C++ (the `omp simd` loops vectorized by the compiler), for any D.
// always_inline: each wrapper below compiles the body for its own instruction set.
template <typename T>
__attribute__((always_inline)) inline void attend_block_portable(const BlockArgs<T>& a, float* scores,
                                                                 const BlockResult& r) {
  const int64_t G = a.G, D = a.D;
  for (int64_t g = 0; g < G; ++g) r.m[g] = kNegInf;
  for (int64_t j = 0; j < a.n; ++j) {
    if (!attended(a.mask, a.mask_step, j)) {
      for (int64_t g = 0; g < G; ++g) scores[g * kBlock + j] = kNegInf;
      continue;
    }
    const T* kr = a.k + j * a.k_row;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = a.q + g * D;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += qg[d] * to_float(kr[d]);
      scores[g * kBlock + j] = s;
      r.m[g] = s > r.m[g] ? s : r.m[g];  // a NaN never becomes the maximum; it stays in s
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float l = 0.f;
    for (int64_t j = 0; j < a.n; ++j) {
      float& s = scores[g * kBlock + j];
      s = s == kNegInf ? 0.f : std::exp(s - r.m[g]);
      l += s;
    }
    r.l[g] = l;
  }
  std::fill(r.acc, r.acc + G * D, 0.f);
  for (int64_t j = 0; j < a.n; ++j) {
    if (!attended(a.mask, a.mask_step, j)) continue;
    const T* vr = a.v + j * a.v_row;
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * kBlock + j];
      float* acc = r.acc + g * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) acc[d] += p * to_float(vr[d]);
    }
  }
}

template <typename T>
void attend_block_generic(const BlockArgs<T>& a, float* scores, const BlockResult& r) {
  attend_block_portable(a, scores, r);
}

// The same loops compiled for AVX2 (8 floats a vector instead of SSE2's 4; no FMA: the build's
// -ffp-contract=off would not use it): a CPU without AVX-512, or a D not a multiple of 16.
template <typename T>
__attribute__((target("avx2"))) void attend_block_avx2(const BlockArgs<T>& a, float* scores, const BlockResult& r) {
  attend_block_portable(a, scores, r);
}

// ---------------------------------------------------------------- AVX-512

// GCC 12's AVX-512 headers start some intrinsics from _mm512_undefined_*(), which -Wall
// reports as uninitialized once inlined (as gemm_cpu.cpp and outliers_cpu.cpp note).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define INT8KERN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// 16 elements of a K or V row as float32 (rows are whole registers: D is a multiple of 16).
INT8KERN_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
INT8KERN_AVX512 inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));  // exact
}
INT8KERN_AVX512 inline __m512 load16(const at::BFloat16* p) {  // exact: the high half
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// exp(x), float32, ~1 ulp: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by Cephes' expf polynomial,
// 2^n from the exponent bits. x below -87.3 gives ~1e-38 rather than a denormal, which the
// softmax cannot tell from 0 (every weight is exp(s - max) <= 1, summed with the max's 1).
// max/min take x second so that a NaN x comes through as NaN.
INT8KERN_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), x);
  x = _mm512_max_ps(_mm512_set1_ps(-87.3365478515625f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

// out[i] = the sum of v[i]'s 16 lanes, for 16 vectors at once: 15 unpack/shuffle + add steps
// of a transpose, 45 instructions for 16 rows, where _mm512_reduce_add_ps takes ~8 a row.
INT8KERN_AVX512 inline __m512 transpose_sum16(const __m512* v) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per lane: [a, b, c, d], the lane's sums of 4 vectors
    const __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
}

// Pass 3 for H heads (H known at compile time, so that the H * C accumulators stay in
// registers; with a run-time count GCC kept them on the stack): acc[h] = sum over the attended
// rows j of p[h][j] * v[j].
template <typename T, int C, int H>
INT8KERN_AVX512 void accumulate_v_fixed(const BlockArgs<T>& a, const float* p, float* acc_out) {
  __m512 acc[H][C];
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c) acc[h][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < a.n; ++j) {
    if (!attended(a.mask, a.mask_step, j)) continue;
    const T* vr = a.v + j * a.v_row;
    __m512 vc[C];
    for (int c = 0; c < C; ++c) vc[c] = load16(vr + c * 16);
    for (int h = 0; h < H; ++h) {
      const __m512 ph = _mm512_set1_ps(p[h * kBlock + j]);
      for (int c = 0; c < C; ++c) acc[h][c] = _mm512_fmadd_ps(ph, vc[c], acc[h][c]);
    }
  }
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc_out + h * C * 16 + c * 16, acc[h][c]);
}

template <typename T, int C, int H = 1>
INT8KERN_AVX512 void accumulate_v(const BlockArgs<T>& a, const float* p, float* acc_out, int64_t heads) {
  if constexpr (H * C > 24) {
    TORCH_CHECK(false, "int8kern.decode_attention: internal error, ", heads, " heads in one pass");
  } else if (heads == H) {
    accumulate_v_fixed<T, C, H>(a, p, acc_out);
  } else {
    accumulate_v<T, C, H + 1>(a, p, acc_out, heads);
  }
}

// D = 16 * C (C known at compile time, so that a K or V row is C registers). Pass 1: the dot
// products of 16 K rows with one query head, summed across lanes together (transpose_sum16),
// head after head (the 16 rows stay in L1); a group of 16 positions all hidden by the mask is
// not read, a partly hidden one is read and its hidden scores set to -inf. Pass 2: each head's
// maximum, then the softmax weights 16 at a time. Pass 3: p * v for up to kHeadsPerPass heads
// at once into accumulators held in registers across all the block's rows (accumulating in
// memory instead, a masked store then a load of the same address every row, ran at half the
// speed on Zen 4: store forwarding); hidden rows are skipped.
template <typename T, int C>
INT8KERN_AVX512 void attend_block_avx512(const BlockArgs<T>& a, float* scores, const BlockResult& r) {
  static_assert(C <= 16, "rows of up to 16 registers (D <= 256)");
  constexpr int kHeadsPerPass = 24 / C;  // accumulators: kHeadsPerPass * C of the 32 zmm
  const int64_t G = a.G;
  const int64_t full = a.n / 16 * 16;
  for (int64_t j0 = 0; j0 < full; j0 += 16) {
    __mmask16 live = 0xFFFF;
    if (a.mask != nullptr) {
      live = 0;
      for (int i = 0; i < 16; ++i) live |= static_cast<__mmask16>(a.mask[(j0 + i) * a.mask_step] ? 1u << i : 0u);
    }
    if (live == 0) {
      for (int64_t g = 0; g < G; ++g) _mm512_storeu_ps(scores + g * kBlock + j0, _mm512_set1_ps(kNegInf));
      continue;
    }
    for (int64_t g = 0; g < G; ++g) {
      __m512 qv[C], dots[16];
      for (int c = 0; c < C; ++c) qv[c] = _mm512_loadu_ps(a.q + g * C * 16 + c * 16);
      for (int i = 0; i < 16; ++i) {
        const T* kr = a.k + (j0 + i) * a.k_row;
        __m512 s = _mm512_mul_ps(qv[0], load16(kr));
        for (int c = 1; c < C; ++c) s = _mm512_fmadd_ps(qv[c], load16(kr + c * 16), s);
        dots[i] = s;
      }
      _mm512_storeu_ps(scores + g * kBlock + j0,
                       _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), live, transpose_sum16(dots)));
    }
  }
  for (int64_t j = full; j < a.n; ++j) {  // the last < 16 rows, one at a time
    const bool row_live = attended(a.mask, a.mask_step, j);
    const T* kr = a.k + j * a.k_row;
    for (int64_t g = 0; g < G; ++g) {
      float sg = kNegInf;
      if (row_live) {
        const float* qg = a.q + g * C * 16;
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(qg), load16(kr));
        for (int c = 1; c < C; ++c) s = _mm512_fmadd_ps(_mm512_loadu_ps(qg + c * 16), load16(kr + c * 16), s);
        sg = _mm512_reduce_add_ps(s);
      }
      scores[g * kBlock + j] = sg;
    }
  }
  const int64_t padded = (a.n + 15) / 16 * 16;  // scores beyond n read as masked
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores + g * kBlock;
    for (int64_t j = a.n; j < padded; ++j) sg[j] = kNegInf;
    __m512 mv = _mm512_set1_ps(kNegInf);
    for (int64_t j = 0; j < padded; j += 16)
      mv = _mm512_max_ps(_mm512_loadu_ps(sg + j), mv);  // max_ps(NaN, m) is m: a NaN never becomes the maximum
    r.m[g] = _mm512_reduce_max_ps(mv);
    const __m512 m = _mm512_set1_ps(r.m[g]);
    __m512 l = _mm512_setzero_ps();
    for (int64_t j = 0; j < padded; j += 16) {
      const __m512 s = _mm512_loadu_ps(sg + j);
      // masked (-inf) -> 0; NaN != -inf (unordered), so a NaN stays NaN
      const __mmask16 live = _mm512_cmp_ps_mask(s, _mm512_set1_ps(kNegInf), _CMP_NEQ_UQ);
      const __m512 p = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(s, m)));
      _mm512_storeu_ps(sg + j, p);
      l = _mm512_add_ps(l, p);
    }
    r.l[g] = _mm512_reduce_add_ps(l);
  }
  for (int64_t g0 = 0; g0 < G; g0 += kHeadsPerPass)
    accumulate_v<T, C>(a, scores + g0 * kBlock, r.acc + g0 * C * 16, std::min<int64_t>(kHeadsPerPass, G - g0));
}

#pragma GCC diagnostic pop

// The block function for this head size: AVX-512 for D a multiple of 16 up to 256 (every
// common head size: 64, 80, 96, 128, 256), else the portable loops for AVX2 or for any CPU.
template <typename T>
using BlockFn = void (*)(const BlockArgs<T>&, float*, const BlockResult&);

template <typename T, int C = 1>
BlockFn<T> avx512_block_fn(int64_t chunks) {
  if constexpr (C > 16) {
    return nullptr;
  } else {
    return chunks == C ? &attend_block_avx512<T, C> : avx512_block_fn<T, C + 1>(chunks);
  }
}

template <typename T>
BlockFn<T> block_fn(int64_t D) {
  BlockFn<T> fn = nullptr;
  if (cpu_isa() >= CpuIsa::kAvx512 && D % 16 == 0) fn = avx512_block_fn<T>(D / 16);
  if (fn == nullptr && cpu_isa() >= CpuIsa::kAvx2) fn = &attend_block_avx2<T>;
  return fn ? fn : &attend_block_generic<T>;
}

// ---------------------------------------------------------------- the op

// The same checks, in the same order and words, as ops.py's _fake_decode_attention.
void check_decode_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& mask, double scale) {
  const char* op = "decode_attention";
  check_float_tensor(op, "query", q, 4, "[B, Hq, 1, D]");
  INT8KERN_CHECK_ARG(q.size(2) == 1, op, "query", "[B, Hq, 1, D] (one query position)", describe(q));
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  INT8KERN_CHECK_ARG(k.scalar_type() == q.scalar_type() && k.dim() == 4, op, "key",
                     dtype_name(q.scalar_type()) + " [B, Hkv, S, D] (query's dtype)", describe(k));
  INT8KERN_CHECK_ARG(k.size(0) == B && k.size(3) == D && k.size(1) >= 1 && Hq % k.size(1) == 0, op, "key",
                     "[B, Hkv, S, D] with B = " + std::to_string(B) + ", D = " + std::to_string(D) +
                         " and Hkv dividing Hq = " + std::to_string(Hq),
                     describe(k));
  check_same_device(op, "key", k, q);
  INT8KERN_CHECK_ARG(v.scalar_type() == k.scalar_type() && v.sizes() == k.sizes(), op, "value",
                     "of key's dtype and shape (" + describe(k) + ")", describe(v));
  check_same_device(op, "value", v, q);
  if (mask) {
    const auto& m = *mask;
    INT8KERN_CHECK_ARG(m.scalar_type() == at::kBool && m.dim() == 4 && (m.size(0) == 1 || m.size(0) == B) &&
                           m.size(1) == 1 && m.size(2) == 1 && m.size(3) == k.size(2),
                       op, "attn_mask", "bool [B or 1, 1, 1, S] with S = " + std::to_string(k.size(2)), describe(m));
    check_same_device(op, "attn_mask", m, q);
  }
  TORCH_CHECK(std::isfinite(scale), "int8kern.decode_attention: scale must be finite, got ", scale);
}

template <typename T>
void decode_attention_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor* mask,
                            double scale, at::Tensor& out) {
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3), Hkv = k.size(1), S = k.size(2), G = Hq / Hkv;
  const int64_t blocks = std::max<int64_t>(1, (S + kBlock - 1) / kBlock);
  const int64_t tasks = B * Hkv * blocks;
  // per task: m[G], l[G], acc[G, D]
  std::vector<float> partial(tasks * G * (D + 2));
  float* pp = partial.data();
  const T* qp = q.data_ptr<T>();
  const float scale_f = static_cast<float>(scale);  // as float32(q) * scale in torch
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const bool* mp = mask ? mask->data_ptr<bool>() : nullptr;
  const int64_t mask_b = mask && mask->size(0) > 1 ? mask->stride(0) : 0, mask_s = mask ? mask->stride(3) : 0;
  int64_t attended_rows = S;  // batch 0's, for the work estimate
  if (mp) {
    attended_rows = 0;
    for (int64_t j = 0; j < S; ++j) attended_rows += mp[j * mask_s];
  }
  const BlockFn<T> attend_block = block_fn<T>(D);
  // per worker thread: scores [G, kBlock], then the G query heads of a task in float32, scaled
  static thread_local std::vector<float> scratch;
  const int64_t work = B * Hkv * attended_rows * D * 2 * static_cast<int64_t>(sizeof(T));
  parallel_chunks(tasks, 1, work, [&](int, int64_t begin, int64_t end) {
    if (static_cast<int64_t>(scratch.size()) < G * (kBlock + D)) scratch.resize(G * (kBlock + D));
    float* scores = scratch.data();
    float* qf = scores + G * kBlock;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % blocks, h = t / blocks % Hkv, b = t / blocks / Hkv;
      const int64_t j0 = blk * kBlock;
      if (t == begin || blk == 0) {  // q's heads of KV head h: h * G + g (as SDPA's enable_gqa)
        for (int64_t g = 0; g < G; ++g)
          for (int64_t d = 0; d < D; ++d)
            qf[g * D + d] = to_float(qp[b * q.stride(0) + (h * G + g) * q.stride(1) + d * q.stride(3)]) * scale_f;
      }
      BlockArgs<T> a{qf,
                     kp + b * k.stride(0) + h * k.stride(1) + j0 * k.stride(2),
                     vp + b * v.stride(0) + h * v.stride(1) + j0 * v.stride(2),
                     k.stride(2), v.stride(2),
                     mp ? mp + b * mask_b + j0 * mask_s : nullptr, mask_s,
                     std::min(kBlock, S - j0), G, D};
      float* res = pp + t * G * (D + 2);
      const BlockResult r{res, res + G, res + 2 * G};
      attend_block(a, scores, r);
    }
  });
  // Merge the blocks of each (b, KV head): weights exp(m_i - M) against the largest maximum M.
  // A block with no finite maximum (all masked: l = acc = 0; or all NaN) is weighted 1, so that
  // its zeros add nothing and its NaNs come through.
  T* op = out.data_ptr<T>();
  std::vector<float> num(D);
  for (int64_t bh = 0; bh < B * Hkv; ++bh) {
    for (int64_t g = 0; g < G; ++g) {
      float M = kNegInf;
      for (int64_t i = 0; i < blocks; ++i) {
        const float m = pp[((bh * blocks + i) * G) * (D + 2) + g];
        M = m > M ? m : M;
      }
      float L = 0.f;
      std::fill(num.begin(), num.end(), 0.f);
      for (int64_t i = 0; i < blocks; ++i) {
        const float* res = pp + (bh * blocks + i) * G * (D + 2);
        const float m = res[g];
        const float w = m == kNegInf ? 1.f : std::exp(m - M);
        L += w * res[G + g];
        const float* acc = res + 2 * G + g * D;
        for (int64_t d = 0; d < D; ++d) num[d] += w * acc[d];
      }
      T* o = op + (bh * G + g) * D;  // out is [B, Hq, 1, D] contiguous: h = kvh * G + g
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(L == 0.f ? 0.f : num[d] / L);
    }
  }
}

at::Tensor decode_attention_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                const c10::optional<at::Tensor>& attn_mask, double scale) {
  check_decode_attention_args(query, key, value, attn_mask, scale);
  // Only the last dimension must be dense; a static cache's [B, Hkv, S, D] slices are used in place.
  auto dense_rows = [](const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); };
  const auto k = dense_rows(key), v = dense_rows(value);
  auto out = at::empty(query.sizes(), query.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (k.size(2) == 0) return out.zero_();
  const at::Tensor* mask = attn_mask ? &*attn_mask : nullptr;
  switch (query.scalar_type()) {
    case at::kFloat: decode_attention_typed<float>(query, k, v, mask, scale, out); break;
    case at::kHalf: decode_attention_typed<at::Half>(query, k, v, mask, scale, out); break;
    default: decode_attention_typed<at::BFloat16>(query, k, v, mask, scale, out); break;
  }
  return out;
}

// The Autograd key's kernel: decode_attention has no backward (it serves inference), so a call
// that would need one is an error here rather than an output without a gradient (torch's
// fallback only warns, and only once the backward runs). Any other call goes straight on to
// the CPU kernel, in C++: a Python autograd kernel would cost every call of a decode step a
// Python function (see csrc/int8_linear_autograd.cpp).
at::Tensor decode_attention_autograd(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                     const c10::optional<at::Tensor>& attn_mask, double scale) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && (query.requires_grad() || key.requires_grad() || value.requires_grad())),
              "int8kern.decode_attention: has no backward (inference only), but query, key or value requires grad "
              "with grad mode on; call it under torch.no_grad() or torch.inference_mode(), or use "
              "torch.nn.functional.scaled_dot_product_attention (attn_implementation=\"int8kern\" does so itself "
              "when a gradient is needed)");
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("int8kern::decode_attention", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const c10::optional<at::Tensor>&, double)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(query, key, value, attn_mask, scale);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8kern, m) {
  // softmax(query key^T * scale + mask) value for one query position (decode), grouped-query:
  // query [B, Hq, 1, D], key/value [B, Hkv, S, D] (Hkv divides Hq), attn_mask bool
  // [B or 1, 1, 1, S] or None -> [B, Hq, 1, D] in query's dtype.
  m.def("decode_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(int8kern, CPU, m) { m.impl("decode_attention", &decode_attention_cpu); }
TORCH_LIBRARY_IMPL(int8kern, Autograd, m) { m.impl("decode_attention", &decode_attention_autograd); }

}  // namespace cpu
}  // namespace int8kern
