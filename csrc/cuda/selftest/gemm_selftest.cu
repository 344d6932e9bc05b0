// Standalone self-test of the int8kern CUDA kernels (no torch). Needs an sm_80+ GPU; the wgmma
// GEMM is tested on sm_90 (H100/H200) and checked to refuse elsewhere.
// Build: scripts/build_selftest.sh (gemm_wgmma.cu for sm_90a alone, the rest for sm_80 and
// sm_90a, host code with -ffp-contract=off), then run build/selftest/selftest. Run it again
// with INT8KERN_CUDA_GEMM=wgmma to send every plain tiled GEMM case to the wgmma kernel.
// (no -lcuda: gemm_wgmma.cu reaches cuTensorMapEncodeTiled through cudaGetDriverEntryPoint).
// Exit status 0 when every check passes. All comparisons are exact (bitwise for floats, NaN
// matching NaN): the kernels promise the same float32 operations as the CPU references here
// (-ffp-contract=off keeps the host compiler from fusing them into FMAs).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../common.cuh"

using namespace int8kern::cuda;

#define CK(x)                                                                        \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                  \
    }                                                                                \
  } while (0)

static int g_failures = 0;
static std::mt19937 g_rng(1234);

static void report(bool ok, const char* what) {
  std::printf("%s  %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) ++g_failures;
}

template <typename T>
struct DevBuf {  // raw device allocation of n elements of T
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t n_) : n(n_) { CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T))); }
  ~DevBuf() { cudaFree(p); }
  void up(const std::vector<T>& h) { CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> down() const {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

static bool same_float(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// Split-K workspace as ops_cuda.cpp makes it: int8_gemm_workspace_elems int32, zeroed once.
// Tests launch twice on one workspace without re-zeroing it: the kernel promises to leave it
// all zero, and a counter or partial sum left behind would corrupt the second launch.
struct Workspace {
  int64_t elems;
  DevBuf<int32_t> buf;
  explicit Workspace(const Int8GemmParams& p)
      : elems(int8_gemm_workspace_elems(p)), buf((size_t)std::max<int64_t>(elems, 0)) {
    CK(cudaMemset(buf.p, 0, std::max<size_t>(buf.n, 1) * sizeof(int32_t)));
  }
  void attach(Int8GemmParams& p) const { p.workspace = elems > 0 ? buf.p : nullptr; }
  bool all_zero() const {
    const auto h = buf.down();
    return std::all_of(h.begin(), h.end(), [](int32_t v) { return v == 0; });
  }
};

// ---------------------------------------------------------------------------------------
// GEMM, int32 output, against a naive GPU kernel.
// ---------------------------------------------------------------------------------------
__global__ void ref_gemm_kernel(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K,
                                int64_t lda, int64_t ldb, int32_t* c, int64_t ldc) {
  const int64_t total = M * N;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = idx / N, j = idx % N;
    int64_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += (int64_t)a[i * lda + k] * (int64_t)b[j * ldb + k];
    c[i * ldc + j] = (int32_t)s;
  }
}

// a_off / b_off: byte offsets of the matrices inside their buffers (1 forces the byte path).
static void test_gemm_int32(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                            int64_t ldo, int a_off, int b_off, int fill /*0 random, 1 -128*/) {
  char what[200];
  std::snprintf(what, sizeof(what), "gemm int32 M=%lld N=%lld K=%lld lda=%lld ldb=%lld ldo=%lld off=%d/%d%s",
                (long long)M, (long long)N, (long long)K, (long long)lda, (long long)ldb,
                (long long)ldo, a_off, b_off, fill ? " all=-128" : "");
  const size_t a_bytes = (size_t)((M - 1) * lda + K) + a_off, b_bytes = (size_t)((N - 1) * ldb + K) + b_off;
  std::vector<int8_t> ha(a_bytes), hb(b_bytes);
  std::uniform_int_distribution<int> d(-128, 127);
  for (auto& v : ha) v = fill ? (int8_t)-128 : (int8_t)d(g_rng);
  for (auto& v : hb) v = fill ? (int8_t)-128 : (int8_t)d(g_rng);
  DevBuf<int8_t> da(a_bytes), db(b_bytes);
  da.up(ha);
  db.up(hb);
  const size_t c_elems = (size_t)((M - 1) * ldo + N);
  DevBuf<int32_t> dc(c_elems + 64), dr(c_elems + 64);
  CK(cudaMemset(dc.p, 0x5a, (c_elems + 64) * 4));  // sentinel: 0x5a5a5a5a
  CK(cudaMemset(dr.p, 0x5a, (c_elems + 64) * 4));

  Int8GemmParams p;
  p.a = da.p + a_off;
  p.b = db.p + b_off;
  p.M = M; p.N = N; p.K = K; p.lda = lda; p.ldb = ldb;
  p.out = dc.p; p.ldo = ldo; p.out_int32 = true;
  const Workspace ws(p);
  ws.attach(p);
  if (ws.elems > 0) std::strncat(what, " split-K", sizeof(what) - std::strlen(what) - 1);
  INT8KERN_LAUNCH(1024, 256, 0, 0, ref_gemm_kernel)(p.a, p.b, M, N, K, lda, ldb, dr.p, ldo);
  CK(cudaGetLastError());
  std::vector<int32_t> first;
  for (int run = 0; run < 2; ++run) {  // second run: same workspace, not re-zeroed
    launch_int8_gemm(p, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    if (run == 0) {
      first = dc.down();
      CK(cudaMemset(dc.p, 0x5a, (c_elems + 64) * 4));
    }
  }
  const auto hc = dc.down(), hr = dr.down();
  int64_t bad = first == hc ? 0 : 1;
  if (bad) std::printf("   the two launches differ\n");
  if (!ws.all_zero()) {
    std::printf("   workspace not all zero after the launches\n");
    ++bad;
  }
  for (size_t x = 0; x < hc.size(); ++x) {
    if (hc[x] != hr[x]) {  // includes the sentinel gaps between rows and after the end
      if (bad < 5) std::printf("   mismatch at flat %zu (row %lld col %lld): got %d want %d\n", x,
                               (long long)(x / ldo), (long long)(x % ldo), hc[x], hr[x]);
      ++bad;
    }
  }
  report(bad == 0, what);
}

// ---------------------------------------------------------------------------------------
// Few output tiles (decode M <= 16: DecodeTile; mid sizes: MidTile; split-K through the
// workspace), int32 against a CPU loop on random nonzero int8, launched twice on one
// workspace; with use_ws false, the no-workspace fallback (no split).
// ---------------------------------------------------------------------------------------
static void test_decode_int32(int64_t M, int64_t N, int64_t K, bool aligned, bool use_ws) {
  const int64_t k16 = (K + 15) / 16 * 16;
  const int64_t lda = aligned ? k16 : K + 3, ldb = aligned ? k16 + 16 : K + 1, ldo = N + 5;
  const int a_off = aligned ? 0 : 1, b_off = aligned ? 0 : 3;
  const size_t a_bytes = (size_t)((M - 1) * lda + K) + a_off, b_bytes = (size_t)((N - 1) * ldb + K) + b_off;
  std::vector<int8_t> ha(a_bytes), hb(b_bytes);
  std::uniform_int_distribution<int> d(-128, 126);
  for (auto& v : ha) { const int x = d(g_rng); v = (int8_t)(x >= 0 ? x + 1 : x); }  // nonzero
  for (auto& v : hb) { const int x = d(g_rng); v = (int8_t)(x >= 0 ? x + 1 : x); }
  DevBuf<int8_t> da(a_bytes), db(b_bytes);
  da.up(ha);
  db.up(hb);
  const size_t c_elems = (size_t)((M - 1) * ldo + N);
  DevBuf<int32_t> dc(c_elems);
  Int8GemmParams p;
  p.a = da.p + a_off;
  p.b = db.p + b_off;
  p.M = M; p.N = N; p.K = K; p.lda = lda; p.ldb = ldb;
  p.out = dc.p; p.ldo = ldo; p.out_int32 = true;
  const Workspace ws(p);
  if (use_ws) ws.attach(p);
  char what[200];
  std::snprintf(what, sizeof(what), "%s int32 M=%lld N=%lld K=%lld %s%s", M <= 16 ? "decode" : "mid", (long long)M, (long long)N,
                (long long)K, aligned ? "aligned" : "unaligned",
                !use_ws ? " no workspace" : ws.elems > 0 ? " split-K" : "");
  // CPU reference; the sentinel 0x5a5a5a5a stays in the row padding.
  std::vector<int32_t> want(c_elems, 0x5a5a5a5a);
  const int8_t* A = ha.data() + a_off;
  const int8_t* B = hb.data() + b_off;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      int32_t acc = 0;  // |sum| <= 128 * 128 * 5137: no overflow
      for (int64_t k = 0; k < K; ++k) acc += (int32_t)A[i * lda + k] * (int32_t)B[j * ldb + k];
      want[i * ldo + j] = acc;
    }
  int64_t bad = 0;
  for (int run = 0; run < 2; ++run) {  // second run: same workspace, not re-zeroed
    CK(cudaMemset(dc.p, 0x5a, c_elems * 4));
    launch_int8_gemm(p, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const auto got = dc.down();
    for (size_t x = 0; x < c_elems; ++x) {
      if (got[x] != want[x]) {
        if (bad < 5) std::printf("   run %d mismatch at (%lld, %lld): got %d want %d\n", run,
                                 (long long)(x / ldo), (long long)(x % ldo), got[x], want[x]);
        ++bad;
      }
    }
  }
  if (!ws.all_zero()) {
    std::printf("   workspace not all zero after the launches\n");
    ++bad;
  }
  report(bad == 0, what);
}

// ---------------------------------------------------------------------------------------
// Dequantize numerics (GEMM epilogue and launch_dequantize) against the CPU.
// ---------------------------------------------------------------------------------------
static float round_to(DType d, float v) {
  if (d == DType::Float16) return __half2float(__float2half_rn(v));
  if (d == DType::BFloat16) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}
static std::vector<uint8_t> encode(DType d, const std::vector<float>& v) {  // float -> dtype bytes
  const int s = dtype_size(d);
  std::vector<uint8_t> out(v.size() * s);
  for (size_t x = 0; x < v.size(); ++x) {
    if (d == DType::Float32) std::memcpy(&out[x * 4], &v[x], 4);
    else if (d == DType::Float16) { __half h = __float2half_rn(v[x]); std::memcpy(&out[x * 2], &h, 2); }
    else { __nv_bfloat16 h = __float2bfloat16_rn(v[x]); std::memcpy(&out[x * 2], &h, 2); }
  }
  return out;
}
static float decode(DType d, const uint8_t* p) {
  if (d == DType::Float32) { float f; std::memcpy(&f, p, 4); return f; }
  if (d == DType::Float16) { __half h; std::memcpy(&h, p, 2); return __half2float(h); }
  __nv_bfloat16 h; std::memcpy(&h, p, 2); return __bfloat162float(h);
}
static const char* dname(DType d) { return d == DType::Float32 ? "f32" : d == DType::Float16 ? "f16" : "bf16"; }

// CPU: ((float(acc) * (ra / 127)) * (ca / 127) + bias) + add, then rounded to `out`.
static float ref_dequant(int32_t acc, float ra, float ca, const float* bias, const float* add) {
  const float rs = ra / 127.0f, cs = ca / 127.0f;
  float v = (float)acc * rs;
  v = v * cs;
  if (bias) v = v + *bias;
  if (add) v = v + *add;
  return v;
}

// Runs the GEMM with the fused epilogue and launch_dequantize on the GEMM's int32 result; both
// are compared with the CPU formula applied to that (already verified) int32 result.
static void test_dequant(int64_t M, int64_t N, int64_t K, DType out_d, bool use_bias, int add_mode /*0 none, 1 f32, 2 out dtype*/,
                         bool aligned = false) {
  char what[200];
  std::snprintf(what, sizeof(what), "dequant M=%lld N=%lld K=%lld out=%s bias=%d add=%s%s", (long long)M,
                (long long)N, (long long)K, dname(out_d), (int)use_bias,
                add_mode == 0 ? "none" : add_mode == 1 ? "f32" : dname(out_d), aligned ? " aligned" : "");
  // Odd strides by default: the unaligned GEMM path too.
  const int64_t ld = aligned ? (K + 15) / 16 * 16 : K + 5, ldo = N + 3, ld_add = N + 7;
  std::uniform_int_distribution<int> d8(-127, 127);
  std::uniform_real_distribution<float> du(0.01f, 20.0f), dn(-3.0f, 3.0f);
  std::vector<int8_t> ha(M * ld), hb(N * ld);
  for (auto& v : ha) v = (int8_t)d8(g_rng);
  for (auto& v : hb) v = (int8_t)d8(g_rng);
  std::vector<float> ra(M), ca(N), bias(N), addv(M * ld_add);
  for (auto& v : ra) v = du(g_rng);
  for (auto& v : ca) v = du(g_rng);
  ra[0] = 0.0f;  // a zero row scale
  for (auto& v : bias) v = dn(g_rng);
  const DType add_d = add_mode == 2 ? out_d : DType::Float32;
  for (auto& v : addv) v = round_to(add_d, dn(g_rng));
  DevBuf<int8_t> da(ha.size()), db(hb.size());
  da.up(ha);
  db.up(hb);
  DevBuf<float> dra(M), dca(N), dbias(N);
  dra.up(ra);
  dca.up(ca);
  dbias.up(bias);
  const auto add_bytes = encode(add_d, addv);
  DevBuf<uint8_t> dadd(add_bytes.size());
  dadd.up(add_bytes);
  const int os = dtype_size(out_d);
  DevBuf<int32_t> dacc(M * N);
  DevBuf<uint8_t> dout(M * ldo * os), dout2(M * N * os);
  CK(cudaMemset(dout.p, 0x77, M * ldo * os));

  Int8GemmParams p;
  p.a = da.p; p.b = db.p; p.M = M; p.N = N; p.K = K; p.lda = ld; p.ldb = ld;
  p.out = dacc.p; p.ldo = N; p.out_int32 = true;
  const Workspace ws(p);  // one workspace for all three launches, zeroed once
  ws.attach(p);
  if (ws.elems > 0) std::strncat(what, " split-K", sizeof(what) - std::strlen(what) - 1);
  launch_int8_gemm(p, 0);  // int32 acc, verified by the int32 tests
  p.out = dout.p; p.ldo = ldo; p.out_int32 = false; p.out_dtype = out_d;
  p.row_absmax = dra.p; p.col_absmax = dca.p; p.bias = use_bias ? dbias.p : nullptr;
  if (add_mode) { p.add = dadd.p; p.add_dtype = add_d; p.ld_add = ld_add; }
  launch_int8_gemm(p, 0);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  const auto o1_first = dout.down();
  CK(cudaMemset(dout.p, 0x77, M * ldo * os));
  launch_int8_gemm(p, 0);  // again, same workspace: must give the same bits
  CK(cudaGetLastError());
  // launch_dequantize wants a contiguous add: repack rows.
  std::vector<float> add_c(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) add_c[i * N + j] = addv[i * ld_add + j];
  const auto add_c_bytes = encode(add_d, add_c);
  DevBuf<uint8_t> dadd_c(add_c_bytes.size());
  dadd_c.up(add_c_bytes);
  launch_dequantize(dacc.p, M, N, dra.p, dca.p, use_bias ? dbias.p : nullptr,
                    add_mode ? dadd_c.p : nullptr, add_d, dout2.p, out_d, 0);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  const auto acc = dacc.down();
  const auto o1 = dout.down(), o2 = dout2.down();
  int64_t bad = o1 == o1_first ? 0 : 1;
  if (bad) std::printf("   the two fused launches differ\n");
  if (!ws.all_zero()) {
    std::printf("   workspace not all zero after the launches\n");
    ++bad;
  }
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < ldo; ++j) {
      if (j >= N) {  // padding must be untouched
        for (int s = 0; s < os; ++s) if (o1[(i * ldo + j) * os + s] != 0x77) ++bad;
        continue;
      }
      const float want = round_to(out_d, ref_dequant(acc[i * N + j], ra[i], ca[j], use_bias ? &bias[j] : nullptr,
                                                     add_mode ? &addv[i * ld_add + j] : nullptr));
      const float g1 = decode(out_d, &o1[(i * ldo + j) * os]);
      const float g2 = decode(out_d, &o2[(i * N + j) * os]);
      if (!same_float(g1, want) || !same_float(g2, want)) {
        if (bad < 5) std::printf("   mismatch (%lld, %lld): gemm %.9g dequant %.9g want %.9g\n", (long long)i,
                                 (long long)j, g1, g2, want);
        ++bad;
      }
    }
  }
  report(bad == 0, what);
}

// ---------------------------------------------------------------------------------------
// The sm_90a wgmma GEMM (gemm_wgmma.cu), called directly through launch_int8_gemm_wgmma so
// that a silent fallback cannot pass for it: on an sm_90 device every eligible case must be
// accepted (return true), every ineligible one refused (false, nothing launched).
// ---------------------------------------------------------------------------------------
// a [M, lda] and b [N, ldb] int8, random in [-128, 127] (never all zero) or all -128.
static void fill_int8(std::vector<int8_t>& v, int fill) {
  std::uniform_int_distribution<int> d(-128, 127);
  for (auto& x : v) x = fill ? (int8_t)-128 : (int8_t)d(g_rng);
}
// acc[i, j] over the first K columns; on the CPU when small, else the naive GPU kernel above.
static std::vector<int32_t> reference_acc(const std::vector<int8_t>& ha, const std::vector<int8_t>& hb,
                                          const int8_t* da, const int8_t* db, int64_t M, int64_t N,
                                          int64_t K, int64_t lda, int64_t ldb) {
  std::vector<int32_t> r((size_t)(M * N));
  if (M * N * K <= (int64_t)200 * 1000 * 1000) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        int64_t s = 0;
        for (int64_t k = 0; k < K; ++k) s += (int64_t)ha[i * lda + k] * (int64_t)hb[j * ldb + k];
        r[i * N + j] = (int32_t)s;
      }
  } else {
    DevBuf<int32_t> dr((size_t)(M * N));
    INT8KERN_LAUNCH(1024, 256, 0, 0, ref_gemm_kernel)(da, db, M, N, K, lda, ldb, dr.p, N);
    CK(cudaGetLastError());
    r = dr.down();
  }
  return r;
}

static void test_wgmma_int32(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldo,
                             int fill) {
  char what[200];
  std::snprintf(what, sizeof(what), "wgmma int32 M=%lld N=%lld K=%lld lda=%lld ldb=%lld ldo=%lld%s",
                (long long)M, (long long)N, (long long)K, (long long)lda, (long long)ldb,
                (long long)ldo, fill ? " all=-128" : "");
  std::vector<int8_t> ha((size_t)(M * lda)), hb((size_t)(N * ldb));
  fill_int8(ha, fill);
  fill_int8(hb, fill);
  DevBuf<int8_t> da(ha.size()), db(hb.size());
  da.up(ha);
  db.up(hb);
  const size_t c_elems = (size_t)(M * ldo);
  DevBuf<int32_t> dc(c_elems);
  CK(cudaMemset(dc.p, 0x5a, c_elems * 4));  // sentinel 0x5a5a5a5a in the row padding
  Int8GemmParams p;
  p.a = da.p; p.b = db.p; p.M = M; p.N = N; p.K = K; p.lda = lda; p.ldb = ldb;
  p.out = dc.p; p.ldo = ldo; p.out_int32 = true;
  const WgmmaStatus st = launch_int8_gemm_wgmma(p, 0);
  if (st != WgmmaStatus::kLaunched) {
    report(false, (std::string(what) + " (refused an eligible case: " + wgmma_status_message(st) + ")").c_str());
    return;
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  const auto want = reference_acc(ha, hb, da.p, db.p, M, N, K, lda, ldb);
  const auto got = dc.down();
  int64_t bad = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < ldo; ++j) {
      const int32_t w = j < N ? want[i * N + j] : 0x5a5a5a5a;
      if (got[i * ldo + j] != w) {
        if (bad < 5) std::printf("   mismatch (%lld, %lld): got %d want %d\n", (long long)i, (long long)j,
                                 got[i * ldo + j], w);
        ++bad;
      }
    }
  report(bad == 0, what);
}

// The fused dequantize epilogue on the wgmma kernel, bitwise against the CPU formula applied to
// the exact int32 product.
static void test_wgmma_dequant(int64_t M, int64_t N, int64_t K, DType out_d, bool use_bias,
                               int add_mode /*0 none, 1 f32, 2 out dtype*/) {
  char what[200];
  std::snprintf(what, sizeof(what), "wgmma dequant M=%lld N=%lld K=%lld out=%s bias=%d add=%s",
                (long long)M, (long long)N, (long long)K, dname(out_d), (int)use_bias,
                add_mode == 0 ? "none" : add_mode == 1 ? "f32" : dname(out_d));
  const int64_t ld = (K + 15) / 16 * 16, ldo = N + 3, ld_add = N + 7;
  std::vector<int8_t> ha((size_t)(M * ld)), hb((size_t)(N * ld));
  fill_int8(ha, 0);
  fill_int8(hb, 0);
  std::uniform_real_distribution<float> du(0.01f, 20.0f), dn(-3.0f, 3.0f);
  std::vector<float> ra(M), ca(N), bias(N), addv((size_t)(M * ld_add));
  for (auto& v : ra) v = du(g_rng);
  for (auto& v : ca) v = du(g_rng);
  ra[0] = 0.0f;
  for (auto& v : bias) v = dn(g_rng);
  const DType add_d = add_mode == 2 ? out_d : DType::Float32;
  for (auto& v : addv) v = round_to(add_d, dn(g_rng));
  DevBuf<int8_t> da(ha.size()), db(hb.size());
  da.up(ha);
  db.up(hb);
  DevBuf<float> dra(M), dca(N), dbias(N);
  dra.up(ra);
  dca.up(ca);
  dbias.up(bias);
  const auto add_bytes = encode(add_d, addv);
  DevBuf<uint8_t> dadd(add_bytes.size());
  dadd.up(add_bytes);
  const int os = dtype_size(out_d);
  DevBuf<uint8_t> dout((size_t)(M * ldo * os));
  CK(cudaMemset(dout.p, 0x77, (size_t)(M * ldo * os)));
  Int8GemmParams p;
  p.a = da.p; p.b = db.p; p.M = M; p.N = N; p.K = K; p.lda = ld; p.ldb = ld;
  p.out = dout.p; p.ldo = ldo; p.out_int32 = false; p.out_dtype = out_d;
  p.row_absmax = dra.p; p.col_absmax = dca.p; p.bias = use_bias ? dbias.p : nullptr;
  if (add_mode) { p.add = dadd.p; p.add_dtype = add_d; p.ld_add = ld_add; }
  const WgmmaStatus st = launch_int8_gemm_wgmma(p, 0);
  if (st != WgmmaStatus::kLaunched) {
    report(false, (std::string(what) + " (refused an eligible case: " + wgmma_status_message(st) + ")").c_str());
    return;
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  const auto acc = reference_acc(ha, hb, da.p, db.p, M, N, K, ld, ld);
  const auto o = dout.down();
  int64_t bad = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < ldo; ++j) {
      if (j >= N) {
        for (int s = 0; s < os; ++s) bad += o[(i * ldo + j) * os + s] != 0x77;
        continue;
      }
      const float want = round_to(out_d, ref_dequant(acc[i * N + j], ra[i], ca[j], use_bias ? &bias[j] : nullptr,
                                                     add_mode ? &addv[i * ld_add + j] : nullptr));
      const float g = decode(out_d, &o[(i * ldo + j) * os]);
      if (!same_float(g, want)) {
        if (bad < 5) std::printf("   mismatch (%lld, %lld): got %.9g want %.9g\n", (long long)i, (long long)j, g, want);
        ++bad;
      }
    }
  report(bad == 0, what);
}

// Cases the TMA path must refuse (return false) without launching anything.
static void test_wgmma_refusals() {
  DevBuf<int8_t> buf(4096);
  DevBuf<int32_t> out(4096);
  struct Case { const char* what; int off; int64_t M, N, K, lda, ldb; };
  const Case cases[] = {{"misaligned a", 1, 4, 4, 32, 32, 32},
                        {"row stride not a multiple of 16", 0, 4, 4, 24, 24, 32},
                        {"K = 0", 0, 4, 4, 0, 16, 16}};
  for (const auto& c : cases) {
    Int8GemmParams p;
    p.a = buf.p + c.off; p.b = buf.p; p.M = c.M; p.N = c.N; p.K = c.K; p.lda = c.lda; p.ldb = c.ldb;
    p.out = out.p; p.ldo = c.N; p.out_int32 = true;
    const WgmmaStatus st = launch_int8_gemm_wgmma(p, 0);
    report(st == WgmmaStatus::kNotApplicable && cudaGetLastError() == cudaSuccess,
           (std::string("wgmma refuses: ") + c.what).c_str());
  }
}

static void test_wgmma_all() {
  // K a multiple of 16 but not of 128 (a partial last k-stage zero-filled by TMA), odd M and N
  // (partial tiles), K tails inside padded rows, one and many k-stages, more tiles than SMs
  // (the persistent loop and the stage/phase wrap across tiles).
  const int64_t shapes[][3] = {{1, 1, 16},     {3, 5, 7},       {17, 9, 48},     {64, 128, 128},
                               {131, 67, 272}, {129, 130, 144}, {200, 300, 1000}, {255, 257, 1040},
                               {1, 4096, 4096}, {4096, 1, 80},  {33, 2000, 80},  {1500, 1700, 1040}};
  for (const auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    const int64_t k16 = (K + 15) / 16 * 16;
    if (K % 16 == 0) test_wgmma_int32(M, N, K, K, K, N, 0);  // contiguous
    test_wgmma_int32(M, N, K, k16 + 16, k16 + 48, N + 5, 0);  // padded strides, K tail
  }
  test_wgmma_int32(300, 257, 4096, 4096, 4096, 257, 1);   // |acc| max: -128 * -128 * K
  test_wgmma_int32(129, 131, 131072 - 16, 131072, 131072, 131, 1);  // near the K limit
  const DType dts[] = {DType::Float32, DType::Float16, DType::BFloat16};
  for (DType od : dts) {
    test_wgmma_dequant(37, 45, 96, od, false, 0);
    test_wgmma_dequant(130, 68, 64, od, true, 1);
    test_wgmma_dequant(131, 133, 1040, od, true, 2);
    test_wgmma_dequant(1500, 1500, 48, od, true, 2);  // more tiles than SMs
  }
  test_wgmma_refusals();
}

// launch_int8_gemm with INT8KERN_CUDA_GEMM=wgmma: split-K plans (decode, mid sizes) stay on
// mma.sync and are never offered to wgmma; a plain tiled plan runs on wgmma (sm_90) with the
// same result as mma.sync.
static void test_wgmma_routing(bool sm90) {
  struct Case { int64_t M, N, K; bool plain; };
  const Case cases[] = {{1, 4096, 4096, false}, {16, 200, 40000, false}, {100, 1000, 5137, false},
                        {256, 4096, 1024, true}, {1500, 1500, 48, true}};
  const char* saved = std::getenv("INT8KERN_CUDA_GEMM");
  const std::string saved_value = saved ? saved : "";
  for (const auto& c : cases) {
    std::vector<int8_t> ha((size_t)(c.M * c.K)), hb((size_t)(c.N * c.K));
    fill_int8(ha, 0);
    fill_int8(hb, 0);
    DevBuf<int8_t> da(ha.size()), db(hb.size());
    da.up(ha);
    db.up(hb);
    DevBuf<int32_t> d_mma((size_t)(c.M * c.N)), d_wg((size_t)(c.M * c.N));
    Int8GemmParams p;
    p.a = da.p; p.b = db.p; p.M = c.M; p.N = c.N; p.K = c.K; p.lda = c.K; p.ldb = c.K;
    p.ldo = c.N; p.out_int32 = true;
    const Workspace ws(p);
    ws.attach(p);
    setenv("INT8KERN_CUDA_GEMM", "mma", 1);
    p.out = d_mma.p;
    const GemmLaunch l_mma = launch_int8_gemm(p, 0);
    setenv("INT8KERN_CUDA_GEMM", "wgmma", 1);
    p.out = d_wg.p;
    const GemmLaunch l_wg = launch_int8_gemm(p, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const WgmmaStatus want = !c.plain ? WgmmaStatus::kNotApplicable
                             : sm90   ? WgmmaStatus::kLaunched
                                      : WgmmaStatus::kNotSm90;
    char what[200];
    std::snprintf(what, sizeof(what), "routing M=%lld N=%lld K=%lld workspace=%lld: %s", (long long)c.M,
                  (long long)c.N, (long long)c.K, (long long)ws.elems, wgmma_status_message(l_wg.wgmma));
    const bool ok = !l_mma.wgmma_requested && l_wg.wgmma_requested && l_wg.wgmma == want &&
                    (c.plain == (ws.elems == 0)) && d_mma.down() == d_wg.down() && ws.all_zero();
    report(ok, what);
  }
  if (saved) setenv("INT8KERN_CUDA_GEMM", saved_value.c_str(), 1); else unsetenv("INT8KERN_CUDA_GEMM");
}

// ---------------------------------------------------------------------------------------
// Quantize with the fused outlier bookkeeping against the CPU: q (outlier columns zeroed by the
// launch's last block, or by launch_zero_outlier_columns for many rows), row absmax, the
// ascending column list and count; launched twice on one workspace, which must be left zero.
// ---------------------------------------------------------------------------------------
static void test_quantize(DType d, int64_t M, int64_t K, int64_t ldx, int elem_off, float threshold) {
  char what[200];
  std::snprintf(what, sizeof(what), "quantize %s M=%lld K=%lld ldx=%lld off=%d thr=%g", dname(d), (long long)M,
                (long long)K, (long long)ldx, elem_off, threshold);
  std::normal_distribution<float> dn(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> dcol(0, K - 1);
  std::vector<float> x((M - 1) * ldx + K + elem_off, 0.0f);
  float* xv = x.data() + elem_off;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t k = 0; k < K; ++k) xv[i * ldx + k] = dn(g_rng);
    const int kind = (int)(i % 8);
    if (kind == 1) for (int64_t k = 0; k < K; ++k) xv[i * ldx + k] = 0.0f;        // zero row
    if (kind == 2) xv[i * ldx + dcol(g_rng)] = NAN;                                // NaN row
    if (kind == 3) xv[i * ldx + dcol(g_rng)] = (i & 8) ? INFINITY : -INFINITY;     // inf
    if (kind == 4) {  // absmax 127 -> scale 1: exact .5 ties, round half to even
      for (int64_t k = 0; k < K; ++k) xv[i * ldx + k] = (float)((k % 9) - 4) + 0.5f;
      xv[i * ldx + (K - 1)] = -127.0f;
    }
    if (kind == 5 || kind == 6) xv[i * ldx + dcol(g_rng)] = 8.0f * (kind == 5 ? 1 : -1);  // outliers
  }
  for (auto& v : x) v = round_to(d, v);  // the CPU works on the values the GPU sees
  const auto xb = encode(d, x);
  DevBuf<uint8_t> dx(xb.size());
  dx.up(xb);
  DevBuf<int8_t> dq(M * K);
  DevBuf<float> dam(M);
  // Workspace as ops_cuda.cpp carves it: a 16-byte counter slot, then the mask; zeroed once.
  DevBuf<uint8_t> dws(16 + K);
  CK(cudaMemset(dws.p, 0, 16 + K));
  DevBuf<int32_t> dcols(K + 1);
  const bool outliers = threshold > 0.0f;
  OutlierBookkeeping book;
  if (outliers) {
    book.arrivals = reinterpret_cast<uint32_t*>(dws.p);
    book.mask = dws.p + 16;
    book.cols = dcols.p;
    book.n_cols = dcols.p + K;
    book.zero_q = M <= kZeroOutliersInQuantizeMaxRows;
  }
  std::vector<std::vector<int8_t>> qs;
  for (int launch = 0; launch < 2; ++launch) {
    CK(cudaMemset(dcols.p, 0xff, (K + 1) * 4));
    CK(cudaMemset(dq.p, 0x55, M * K));  // whatever the quantize does not write shows
    launch_quantize_rowwise(dx.p + (size_t)elem_off * dtype_size(d), d, M, K, ldx, threshold, dq.p, dam.p,
                            book, 0);
    if (outliers && !book.zero_q) launch_zero_outlier_columns(dq.p, M, K, book.cols, book.n_cols, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    qs.push_back(dq.down());
  }
  const auto& q = qs[1];
  const auto am = dam.down();
  const auto cols = dcols.down();
  const auto ws = dws.down();
  // CPU reference.
  std::vector<uint8_t> rmask(K, 0);
  int64_t bad = qs[0] == qs[1] ? 0 : 1;
  if (bad) std::printf("   the two launches differ\n");
  for (int64_t i = 0; i < M; ++i) {
    float m = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float a = std::fabs(xv[i * ldx + k]);
      if (outliers && a >= threshold && std::isfinite(a)) { rmask[k] = 1; continue; }
      if (a > m || std::isnan(a)) m = a;
    }
    if (!same_float(am[i], m)) {
      if (bad < 5) std::printf("   absmax row %lld: got %g want %g\n", (long long)i, am[i], m);
      ++bad;
    }
  }
  for (int64_t i = 0; i < M; ++i) {
    const float m = am[i];
    const float scale = m > 0.0f && !std::isnan(m) && !std::isinf(m) ? 127.0f / m : 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float pv = xv[i * ldx + k] * scale;
      int8_t want = 0;
      if (!std::isnan(pv) && !rmask[k]) want = (int8_t)std::min(127.0f, std::max(-127.0f, std::nearbyint(pv)));
      if (q[i * K + k] != want) {
        if (bad < 5) std::printf("   q(%lld, %lld): got %d want %d (x=%g)\n", (long long)i, (long long)k,
                                 q[i * K + k], want, xv[i * ldx + k]);
        ++bad;
      }
    }
  }
  if (outliers) {
    std::vector<int32_t> want_cols;
    for (int64_t k = 0; k < K; ++k) if (rmask[k]) want_cols.push_back((int32_t)k);
    if (cols[K] != (int32_t)want_cols.size()) {
      std::printf("   n_cols: got %d want %zu\n", cols[K], want_cols.size());
      ++bad;
    } else {
      for (size_t c = 0; c < want_cols.size(); ++c) bad += cols[c] != want_cols[c];
    }
    for (auto b : ws) bad += b != 0;  // mask and counter left zero
    std::snprintf(what + std::strlen(what), sizeof(what) - std::strlen(what), " n_cols=%zu%s", want_cols.size(),
                  book.zero_q ? "" : " (zero kernel)");
  }
  report(bad == 0, what);
}

// ---------------------------------------------------------------------------------------
// The GEMM's outlier epilogue (LLM.int8()'s 16-bit half, summed in float64 in the epilogue)
// against the CPU, bit for bit: ((float(acc) * rs) * cs + bias) + float(T(float(sum))), the
// sum of the exact products double(x[i, c]) * double(T(float(w[j, c]) * cs)) in float64,
// columns ascending. n_out random columns; x and the weight rows padded (ldx, ld > K).
// ---------------------------------------------------------------------------------------
static void test_outlier_epilogue(DType d, int64_t M, int64_t N, int64_t K, int64_t n_out, bool bias_in_d,
                                  bool aligned) {
  char what[200];
  std::snprintf(what, sizeof(what), "outlier epilogue %s M=%lld N=%lld K=%lld n_out=%lld bias=%s%s", dname(d),
                (long long)M, (long long)N, (long long)K, (long long)n_out, bias_in_d ? dname(d) : "f32",
                aligned ? " aligned" : "");
  const int64_t ld = aligned ? (K + 15) / 16 * 16 : K + 1, ldx = K + 3, ldo = N + 2;
  std::vector<int32_t> perm(K);
  for (int64_t k = 0; k < K; ++k) perm[k] = (int32_t)k;
  std::shuffle(perm.begin(), perm.end(), g_rng);
  std::vector<int32_t> cols(perm.begin(), perm.begin() + n_out);
  std::sort(cols.begin(), cols.end());
  cols.push_back((int32_t)n_out);  // the count, after the list (as ops_cuda.cpp keeps it)

  std::normal_distribution<float> dn(0.0f, 4.0f);
  std::uniform_int_distribution<int> di(-127, 127);
  std::uniform_real_distribution<float> da(0.5f, 2.0f), db(-3.0f, 3.0f);
  std::vector<int8_t> ha(M * ld), hb(N * ld);
  for (auto& v : ha) v = (int8_t)di(g_rng);
  for (auto& v : hb) v = (int8_t)di(g_rng);
  std::vector<float> x(M * ldx), ra(M), ca(N), bias(N);
  for (auto& v : x) v = round_to(d, dn(g_rng));
  for (auto& v : ra) v = da(g_rng);
  for (auto& v : ca) v = da(g_rng);
  const DType bias_d = bias_in_d ? d : DType::Float32;
  for (auto& v : bias) v = round_to(bias_d, db(g_rng));

  const int os = dtype_size(d);
  DevBuf<int8_t> dA(ha.size()), dB(hb.size());
  dA.up(ha);
  dB.up(hb);
  DevBuf<float> dra(M), dca(N);
  dra.up(ra);
  dca.up(ca);
  const auto xb = encode(d, x), biasb = encode(bias_d, bias);
  DevBuf<uint8_t> dx(xb.size()), dbias(biasb.size()), dout(M * ldo * os);
  dx.up(xb);
  dbias.up(biasb);
  DevBuf<int32_t> dcols(cols.size()), dacc(M * N);
  dcols.up(cols);

  Int8GemmParams p;
  p.a = dA.p; p.b = dB.p; p.M = M; p.N = N; p.K = K; p.lda = ld; p.ldb = ld;
  p.out = dacc.p; p.ldo = N; p.out_int32 = true;
  const Workspace ws(p);
  ws.attach(p);
  if (ws.elems > 0) std::strncat(what, " split-K", sizeof(what) - std::strlen(what) - 1);
  launch_int8_gemm(p, 0);  // the int32 product, verified by the int32 tests
  p.out = dout.p; p.ldo = ldo; p.out_int32 = false; p.out_dtype = d;
  p.row_absmax = dra.p; p.col_absmax = dca.p; p.bias = dbias.p; p.bias_dtype = bias_d;
  p.outlier_x = dx.p; p.ld_outlier_x = ldx; p.outlier_cols = dcols.p; p.n_outlier_cols = dcols.p + n_out;
  CK(cudaMemset(dout.p, 0x77, M * ldo * os));
  launch_int8_gemm(p, 0);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  const auto acc = dacc.down();
  const auto out = dout.down();
  int64_t bad = ws.all_zero() ? 0 : 1;
  if (bad) std::printf("   workspace not all zero after the launches\n");
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < ldo; ++j) {
      if (j >= N) {  // padding must be untouched
        for (int s = 0; s < os; ++s) bad += out[(i * ldo + j) * os + s] != 0x77;
        continue;
      }
      const float cs = ca[j] / 127.0f;
      double sum = 0.0;
      for (int64_t c = 0; c < n_out; ++c) {
        const float w_deq = round_to(d, (float)hb[j * ld + cols[c]] * cs);
        sum += (double)x[i * ldx + cols[c]] * (double)w_deq;
      }
      float v = ref_dequant(acc[i * N + j], ra[i], ca[j], &bias[j], nullptr);
      v = v + round_to(d, (float)sum);
      const float want = round_to(d, v);
      const float got = decode(d, &out[(i * ldo + j) * os]);
      if (!same_float(got, want)) {
        if (bad < 5) std::printf("   (%lld, %lld): got %.9g want %.9g\n", (long long)i, (long long)j, got, want);
        ++bad;
      }
    }
  }
  report(bad == 0, what);
}

// `selftest --small`: one or two cases of every kernel and path (wgmma included, with more
// tiles than SMs for its persistent loop), sized for compute-sanitizer, whose memcheck,
// racecheck, synccheck and initcheck run each launch 10-100x slower.
// `selftest --small --only GROUP` runs one group of them (gemm: the plain tiled mma.sync GEMM;
// decode: the split-K decode/mid GEMMs, whose outputs are allocated at their exact size;
// wgmma; dequant; quantize; outliers): the emulator's planted-bug tests
// (tests/test_emu_selftest.py) run only the group their bug is in.
static const char* const kSmallGroups[] = {"gemm", "decode", "wgmma", "dequant", "quantize", "outliers"};

static int run_small(bool sm90, const char* only) {
  const auto want = [only](const char* group) { return only == nullptr || std::strcmp(only, group) == 0; };
  if (want("gemm")) {
    const int64_t shapes[][3] = {{3, 5, 7}, {17, 9, 33}, {129, 130, 131}, {200, 300, 1000}};
    for (const auto& s : shapes) {
      const int64_t M = s[0], N = s[1], K = s[2], k16 = (K + 15) / 16 * 16;
      test_gemm_int32(M, N, K, K, K, N, 0, 0, 0);
      test_gemm_int32(M, N, K, k16 + 16, k16 + 32, N + 5, 0, 0, 0);
      test_gemm_int32(M, N, K, K + 3, K + 1, N, 1, 3, 0);
    }
    test_gemm_int32(1600, 1600, 64, 64, 64, 1600, 0, 0, 0);  // 128x128 tiles
  }
  if (want("decode")) {
    for (int64_t M : {1, 16})
      for (bool aligned : {true, false}) test_decode_int32(M, 200, 5137, aligned, true);  // split-K
    test_decode_int32(100, 1000, 5137, true, true);  // mid split-K
  }
  if (want("wgmma")) {
    test_wgmma_routing(sm90);
    if (sm90) {
      test_wgmma_int32(131, 67, 272, 288, 320, 72, 0);
      test_wgmma_int32(300, 257, 1040, 1040, 1040, 257, 1);
      for (DType od : {DType::Float32, DType::Float16, DType::BFloat16})
        test_wgmma_dequant(131, 133, 1040, od, true, 2);
      test_wgmma_dequant(1500, 1500, 48, DType::BFloat16, true, 1);  // more tiles than SMs
      test_wgmma_refusals();
    }
  }
  if (want("dequant")) {
    test_dequant(3, 500, 5137, DType::Float16, true, 2, true);
    test_dequant(37, 45, 100, DType::BFloat16, true, 1);
  }
  if (want("quantize")) {
    for (DType d : {DType::Float32, DType::Float16, DType::BFloat16}) {
      test_quantize(d, 37, 67, 67, 0, 6.0f);
      test_quantize(d, 9, 40000, 40000, 0, 6.0f);
    }
  }
  if (want("outliers")) {
    test_quantize(DType::Float16, 16, 300, 300, 0, 6.0f);        // last block zeroes q's columns
    test_quantize(DType::BFloat16, 70, 300, 300, 0, 6.0f);       // launch_zero_outlier_columns
    test_outlier_epilogue(DType::Float16, 1, 200, 5137, 5, true, true);      // decode split-K
    test_outlier_epilogue(DType::BFloat16, 70, 130, 300, 150, false, false);  // many columns
  }
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "ALL PASSED", g_failures);
  return g_failures ? 1 : 0;
}

int main(int argc, char** argv) {
  int dev = 0;
  cudaDeviceProp prop;
  CK(cudaGetDevice(&dev));
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  if (prop.major < 8) {
    std::printf("needs sm_80+\n");
    return 2;
  }
  const bool sm90 = prop.major == 9 && prop.minor == 0;
  std::printf("wgmma kernel: %d registers per thread loaded (the setmaxnreg hand-off needs %d)\n",
              wgmma_kernel_registers(), wgmma_registers_needed());
  // Fewer would make launch_int8_gemm_wgmma refuse (kRegisterShortfall) instead of hanging;
  // on an sm_90 device the build is expected to give exactly what the hand-off needs.
  if (sm90) report(wgmma_kernel_registers() >= wgmma_registers_needed(), "wgmma kernel has its hand-off registers");
  if (argc > 1 && std::strcmp(argv[1], "--small") == 0) {
    const char* only = nullptr;
    if (argc == 4 && std::strcmp(argv[2], "--only") == 0) {
      only = argv[3];
      bool known = false;
      for (const char* g : kSmallGroups) known |= std::strcmp(g, only) == 0;
      if (!known) {
        std::fprintf(stderr, "selftest: unknown group %s (gemm, decode, wgmma, dequant, quantize, outliers)\n", only);
        return 2;
      }
    } else if (argc != 2) {
      std::fprintf(stderr, "usage: selftest [--small [--only GROUP]]\n");
      return 2;
    }
    return run_small(sm90, only);
  }

  // GEMM int32: odd shapes, both tile configs (>= 132 big tiles selects 128x128), aligned
  // (cp.async) and unaligned (byte) paths, K tails, padded output rows.
  const int64_t shapes[][3] = {{1, 1, 1},     {1, 1, 17},     {3, 5, 7},      {16, 8, 32},
                               {17, 9, 33},   {64, 64, 64},   {65, 63, 65},   {128, 128, 64},
                               {129, 130, 131}, {200, 300, 1000}, {1, 4096, 4096}, {4096, 1, 80},
                               {33, 2000, 80}, {1536, 1536, 96}, {1600, 1700, 200}, {2047, 2049, 1},
                               {5, 7, 0}};
  for (const auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    const int64_t k16 = (K + 15) / 16 * 16;
    test_gemm_int32(M, N, K, std::max<int64_t>(K, 1), std::max<int64_t>(K, 1), N, 0, 0, 0);  // contiguous
    test_gemm_int32(M, N, K, k16 + 16, k16 + 32, N + 5, 0, 0, 0);  // aligned strides, K tail
    test_gemm_int32(M, N, K, K + 3, K + 1, N, 1, 3, 0);            // unaligned: byte path
  }
  test_gemm_int32(300, 257, 4096, 4096, 4096, 257, 0, 0, 1);   // |acc| max: -128 * -128 * K
  test_gemm_int32(1600, 1600, 1040, 1056, 1056, 1600, 0, 0, 1);  // 128x128 tiles, K tail
  // More N tiles than grid.y may hold (max_grid_y(): 65535 on a GPU; the emulator's tests lower it).
  const int64_t n_past_grid_y = 128 * max_grid_y() + 100;
  test_gemm_int32(1, n_past_grid_y, 16, 16, 16, n_past_grid_y, 0, 0, 0);   // decode plan
  test_gemm_int32(17, n_past_grid_y, 16, 16, 16, n_past_grid_y, 0, 0, 0);  // grid.y loop (128x128 tiles)

  // Decode regime: M <= 16, split-K (K >= 1024 on an H100-sized chip) and not, K tails in
  // the last slice (5137), aligned and byte paths, and the no-workspace fallback.
  for (int64_t M : {1, 3, 16})
    for (int64_t N : {1, 5, 4097})
      for (int64_t K : {1, 67, 4096, 5137})
        for (bool aligned : {true, false}) test_decode_int32(M, N, K, aligned, true);
  test_decode_int32(3, 4097, 5137, true, false);
  test_decode_int32(16, 200, 40000, false, true);   // many slices, byte path
  test_decode_int32(1, 70000, 1024, true, true);    // 1094 tiles: enough blocks, no split
  // Mid sizes with few 64x64 tiles: MidTile split-K (K tail in the last slice).
  for (int64_t M : {17, 100})
    for (int64_t N : {5, 1000})
      for (bool aligned : {true, false}) test_decode_int32(M, N, 5137, aligned, true);
  test_decode_int32(64, 4097, 1024, true, true);

  // The wgmma kernel, on the devices it is built for (sm_90a code runs on 9.0 only).
  test_wgmma_routing(sm90);
  if (sm90) {
    test_wgmma_all();
  } else {
    Int8GemmParams p;  // everywhere else it must refuse (and launch nothing)
    int8_t* dummy = nullptr;
    CK(cudaMalloc(&dummy, 256));
    p.a = dummy; p.b = dummy; p.M = p.N = 1; p.K = 16; p.lda = p.ldb = 16;
    p.out = dummy; p.ldo = 1;
    report(launch_int8_gemm_wgmma(p, 0) == WgmmaStatus::kNotSm90 && cudaGetLastError() == cudaSuccess,
           "wgmma refuses: not an sm_90 device");
    CK(cudaFree(dummy));
  }

  const DType dts[] = {DType::Float32, DType::Float16, DType::BFloat16};
  for (DType od : dts) {
    test_dequant(3, 4097, 5137, od, true, 2, true);   // decode split-K, fused epilogue
    test_dequant(16, 1000, 4096, od, true, 1, false);  // decode split-K, byte path
    test_dequant(100, 1000, 5137, od, true, 2, true);  // mid split-K
    test_dequant(37, 45, 100, od, false, 0);
    test_dequant(37, 44, 100, od, true, 0);
    test_dequant(130, 68, 64, od, true, 1);
    test_dequant(130, 68, 64, od, true, 2);
    test_dequant(1500, 1500, 33, od, true, 2);  // 128x128 tiles
  }

  for (DType d : dts) {
    for (float thr : {0.0f, 6.0f}) {
      test_quantize(d, 37, 64, 64, 0, thr);        // warp per row, vector path
      test_quantize(d, 37, 67, 67, 0, thr);        // K not a multiple of the vector: scalar
      test_quantize(d, 37, 64, 80, 1, thr);        // misaligned base: scalar
      test_quantize(d, 21, 3000, 3008, 0, thr);    // block per row, cached (vector)
      test_quantize(d, 21, 3001, 3001, 0, thr);    // block per row, cached (scalar)
      test_quantize(d, 9, 40000, 40000, 0, thr);   // block per row, two-pass (vector)
      test_quantize(d, 9, 9999, 10007, 0, thr);    // block per row, two-pass (scalar)
      test_quantize(d, 1, 1, 1, 0, thr);
      test_quantize(d, 5000, 8, 8, 0, thr);        // many short rows
    }
  }

  for (DType d : dts) {
    for (int64_t M : {1, 16}) {  // decode split-K: none, a few, many columns
      test_outlier_epilogue(d, M, 1000, 2100, 0, true, true);
      test_outlier_epilogue(d, M, 1001, 2100, 7, true, true);
      test_outlier_epilogue(d, M, 200, 2100, 300, false, false);
    }
    test_outlier_epilogue(d, 100, 1000, 2100, 20, true, true);    // mid split-K
    test_outlier_epilogue(d, 130, 68, 64, 64, false, false);      // 64x64 tiles, every column
    test_outlier_epilogue(d, 1500, 1500, 33, 5, true, true);      // 128x128 tiles
  }
  for (int64_t M : {64, 65})  // the last block zeroes q's outlier columns / the zero kernel does
    test_quantize(DType::Float16, M, 4096, 4096, 0, 6.0f);
  test_quantize(DType::Float32, 7, 131071, 131071, 0, 6.0f);  // K max: 32 compaction chunks

  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "ALL PASSED", g_failures);
  return g_failures ? 1 : 0;
}
