// The AVX2 int8 GEMM tile without VNNI: the sign trick with vpmaddubsw (as llama.cpp's
// mul_sum_i8_pairs multiplies int8 on AVX2). Included by gemm_cpu.cpp only.
//
// vpmaddubsw multiplies 32 unsigned bytes by 32 signed bytes and adds adjacent pairs into 16
// int16 lanes, saturating. With a u8 operand up to 255 a pair reaches 255 * 127 * 2 > 32767
// and saturates (the earlier note in benchmarks/NOTES.md). Here the u8 operand is |b| and the
// s8 operand is a * sign(b) (vpsignb), so each product is |b| * (a * sign(b)) = a * b and
// |b| <= 128. The s8 operand a * sign(b) is exact only when a != -128 (vpsignb negates -128
// to -128), so this tile is used only when a holds no -128 (gemm_cpu.cpp checks it per call;
// quantize_rowwise never produces it: its values are in [-127, 127]); b, the weight, may hold
// any int8 value, -128 included (|-128| = 128 as u8). Worst pair then:
//   |b| * |a| * 2 <= 128 * 127 * 2 = 32512 <= 32767,
// so vpmaddubsw never saturates. vpmaddwd with ones adds the int16 pairs into int32 lanes
// (4 products each, |.| <= 65024) and vpaddd accumulates; the true result fits int32 for
// K <= 131071 (|C| <= K * 128 * 127), and so does every partial sum of it.
//
// Cost per 32 multiply-accumulates of one (i, j) pair: vpsignb, vpmaddubsw, vpmaddwd, vpaddd,
// against vpmaddwd + vpaddd per 16 for int8 widened to int16: the same 2 multiply-pipe uops
// per 32 MACs, but the operands stay int8 (half the loads and cache footprint of an int16
// copy of a, no widening of b, no widened copy of a per call), and |b| is taken once per b
// vector and shared by the tile's MR rows.
//
// Registers (16 ymm): a 4 x 2 tile holds 8 accumulators, 2 |b| and 2 b (the sign source),
// one row of a, one product and the int16 ones: 15.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace int8kern {
namespace cpu {

#define INT8KERN_AVX2 __attribute__((target("avx2")))

// Lane sums of eight vectors into one: {sum(v[0]), ..., sum(v[7])}. The hadds pair up
// vectors within each 128-bit lane; the two lanes' partial sums are added at the end.
INT8KERN_AVX2 inline __m256i lane_sums8_avx2(const __m256i* v) {
  const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i q0 = _mm256_hadd_epi32(h01, h23), q1 = _mm256_hadd_epi32(h45, h67);
  // q0 = {v0 v1 v2 v3 (low lane) | v0 v1 v2 v3 (high lane)}, q1 likewise for v4..v7.
  return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

INT8KERN_AVX2 inline int32_t lane_sum_avx2(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// c[i * ldc + j] += sum_k a[i][k] * b[j][k] for an MR_ x NR_ tile over a K slice; a must hold
// no -128 (see the top). The K % 32 tail is summed in scalar code.
template <int MR_, int NR_>
INT8KERN_AVX2 void tile_sign_avx2(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                                  int64_t K, int32_t* c, int64_t ldc) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR_ * NR_];
  for (int t = 0; t < MR_ * NR_; ++t) acc[t] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m256i bv[NR_], bu[NR_];
    for (int j = 0; j < NR_; ++j) {
      bv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * ldb + k));
      bu[j] = _mm256_abs_epi8(bv[j]);  // |b| as u8: |-128| = 0x80 = 128
    }
    for (int i = 0; i < MR_; ++i) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * lda + k));
      for (int j = 0; j < NR_; ++j) {
        const __m256i as = _mm256_sign_epi8(av, bv[j]);       // a * sign(b), 0 where b = 0
        const __m256i p16 = _mm256_maddubs_epi16(bu[j], as);  // |b| * a * sign(b) = a * b, pairs
        acc[i * NR_ + j] = _mm256_add_epi32(acc[i * NR_ + j], _mm256_madd_epi16(p16, ones));
      }
    }
  }
  int32_t sums[MR_ * NR_];
  if constexpr (MR_ * NR_ == 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums), lane_sums8_avx2(acc));
  } else {
    for (int t = 0; t < MR_ * NR_; ++t) sums[t] = lane_sum_avx2(acc[t]);
  }
  for (int i = 0; i < MR_; ++i)
    for (int j = 0; j < NR_; ++j) {
      int32_t sum = sums[i * NR_ + j];
      for (int64_t kk = k; kk < K; ++kk)  // K % 32 tail
        sum += static_cast<int32_t>(a[i * lda + kk]) * static_cast<int32_t>(b[j * ldb + kk]);
      c[i * ldc + j] += sum;
    }
}

// Decode (a few rows of a): weight rows one after another in address order, R_ of them, each
// against the MR_ rows of a: c[i * ldc + j] = sum_k a[i][k] b[j][k] (assigned). Why this order
// and not the tile's: rows_dot_vnni in gemm_cpu.cpp. a must hold no -128.
template <int MR_, int R_>
INT8KERN_AVX2 void rows_dot_sign_avx2(const int8_t* a, int64_t K, const int8_t* b, int32_t* c, int64_t ldc) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int j = 0; j < R_; ++j) {
    const int8_t* bj = b + j * K;
    __m256i acc[MR_];
    for (int i = 0; i < MR_; ++i) acc[i] = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bj + k));
      const __m256i bu = _mm256_abs_epi8(bv);
      for (int i = 0; i < MR_; ++i) {
        const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * K + k));
        const __m256i p16 = _mm256_maddubs_epi16(bu, _mm256_sign_epi8(av, bv));
        acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p16, ones));
      }
    }
    for (int i = 0; i < MR_; ++i) {
      int32_t sum = lane_sum_avx2(acc[i]);
      for (int64_t kk = k; kk < K; ++kk)  // K % 32 tail
        sum += static_cast<int32_t>(a[i * K + kk]) * static_cast<int32_t>(bj[kk]);
      c[i * ldc + j] = sum;
    }
  }
}

// Whether a[0..n) holds -128 (then the sign-trick tile is not exact; see the top).
INT8KERN_AVX2 inline bool contains_int8_min_avx2(const int8_t* a, int64_t n) {
  const __m256i min8 = _mm256_set1_epi8(-128);
  __m256i any = _mm256_setzero_si256();
  int64_t t = 0;
  for (; t + 32 <= n; t += 32)
    any = _mm256_or_si256(any, _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + t)), min8));
  bool found = !_mm256_testz_si256(any, any);
  for (; t < n; ++t) found |= a[t] == -128;
  return found;
}

#undef INT8KERN_AVX2

}  // namespace cpu
}  // namespace int8kern
