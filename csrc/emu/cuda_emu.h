// The CUDA the kernels see when they are compiled as host C++ (g++, -DINT8KERN_EMU): the warp-level
// emulator of int8kern's CUDA kernels. common.cuh includes this instead of <cuda_runtime.h>, so the
// same .cu sources run on the CPU, thread by thread (csrc/emu/README.md says what is emulated and
// what only a GPU can show).
//
// Model: every CUDA thread is a fiber (its own stack); a block's fibers take turns on one OS thread
// and only switch where a thread has to wait for others (a barrier, a warp collective, an
// mbarrier, setmaxnreg), so the code between two such points runs as one uninterrupted piece, the
// way a warp's instructions between synchronisations are ordered on hardware. Blocks run one after
// another. What is per lane on hardware (ldmatrix rows, mma fragments, shuffles, cp.async groups,
// wgmma accumulators) is per fiber here, with the lane/element mappings of csrc/emu/ptx_layouts.h
// (checked against CuTe's definitions by tests/test_emu_layouts.py).
//
// Kernel code changes only where a host compiler cannot follow: launches go through
// INT8KERN_LAUNCH, dynamic shared memory through INT8KERN_DYNAMIC_SHARED, and each PTX wrapper
// has its emulated body beside its asm (#ifdef INT8KERN_EMU).
#pragma once

#ifndef INT8KERN_EMU
#error "cuda_emu.h is the emulator's CUDA: compile with -DINT8KERN_EMU"
#endif

// Shared memory is a static array: one copy, reused by every block in turn (blocks run one at a
// time). Set before the CUDA headers, which keep a definition they find.
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__

#include <cuda_runtime_api.h>  // types and enums (the functions are renamed below)
#include <functional>
#include <memory>
#include <vector_functions.h>  // make_uint4, ...
#include <cuda_fp16.h>         // host-compilable: the same conversions as on the device
#include <cuda_bf16.h>
#include <cuda.h>              // CUtensorMap and its enums

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

namespace int8kern {
namespace emu {

// ---- the running thread ----------------------------------------------------------------------

struct ThreadIds {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
// The fiber now running (its ids first). Only one fiber runs at a time in this process: launches
// are serialised by a lock.
extern ThreadIds* g_current;

// ---- faults: reported with kernel, block, thread and source line, the launch then fails -------
[[noreturn]] void fault(const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

// ---- synchronisation -----------------------------------------------------------------------
void bar_sync(int id, int count, const char* file, int line);  // count 0: the whole block
uint32_t shfl_sync(uint32_t mask, uint32_t v, int src_lane_or_delta, int width, int mode,
                   const char* file, int line);
void threadfence();

// ---- PTX instructions (mma_ptx.cuh, gemm_wgmma.cu) ------------------------------------------
uint32_t smem_address(const void* p);  // __cvta_generic_to_shared
void* smem_pointer(uint32_t addr, int bytes, const char* file, int line);
void cp_async_16(uint32_t dst, const void* src, const char* file, int line);
void cp_async_commit(const char* file, int line);
void cp_async_wait(int n, const char* file, int line);
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, const char* file, int line);
void mma_s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
                  int line);
void mbar_init(uint32_t bar, uint32_t count, const char* file, int line);
void mbar_arrive(uint32_t bar, uint32_t tx_bytes, const char* file, int line);
void mbar_wait(uint32_t bar, uint32_t parity, const char* file, int line);
void tma_load_2d(uint32_t dst, const CUtensorMap* map, int32_t x, int32_t y, uint32_t bar,
                 const char* file, int line);
void setmaxnreg(bool increase, int regs, const char* file, int line);
void wgmma_fence(const char* file, int line);
void wgmma_commit(const char* file, int line);
void wgmma_wait(int n, const char* file, int line);
void wgmma_m64nNk32_s8(int32_t* d, int n, uint64_t desc_a, uint64_t desc_b, const char* file,
                       int line);
void* dynamic_smem();

// ---- launches ----------------------------------------------------------------------------------
struct LaunchConfig {
  dim3 grid, block;
  size_t dynamic_smem;
  cudaStream_t stream;
  const char* kernel;  // the source text of the kernel expression
  const char* file;
  int line;
};
// Runs body() once per thread of every block; the outcome is cudaGetLastError's.
void launch(const void* kernel, const LaunchConfig& cfg, void (*body)(void*), void* arg);
// Stream capture (int8kern.emu.graph, as torch.cuda.graph): while it is on, launches and memsets
// are recorded, with their arguments as they were at the call, instead of run; a replay runs
// them in order, on whatever the memory then holds.
bool capturing();
void record(std::function<void()> work);
// grid.y limit of launches (emu_api.h): 65535, or lower for tests.
int64_t max_grid_y();

template <class... P>
struct KernelCall {
  void (*kernel)(P...);
  LaunchConfig cfg;
  template <class... A>
  void operator()(A&&... a) const {
    // Kernel arguments are copied at the launch, as on the device; each thread gets its own copy.
    struct Frame {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    };
    auto frame = std::make_shared<Frame>(Frame{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)});
    auto run = [frame, cfg = cfg] {
      launch(reinterpret_cast<const void*>(frame->kernel), cfg,
             [](void* f) {
               auto* fr = static_cast<Frame*>(f);
               std::apply([&](const auto&... x) { fr->kernel(x...); }, fr->args);
             },
             frame.get());
    };
    if (capturing()) {
      record(run);  // a graph node: the arguments as they are now
    } else {
      run();
    }
  }
};
template <class... P>
KernelCall<P...> make_call(void (*kernel)(P...), const LaunchConfig& cfg) {
  return KernelCall<P...>{kernel, cfg};
}
inline dim3 to_dim3(dim3 d) { return d; }
inline dim3 to_dim3(unsigned long long x) { return dim3(static_cast<unsigned>(x)); }
inline dim3 to_dim3(long long x) { return dim3(static_cast<unsigned>(x)); }
inline dim3 to_dim3(unsigned long x) { return dim3(static_cast<unsigned>(x)); }
inline dim3 to_dim3(long x) { return dim3(static_cast<unsigned>(x)); }
inline dim3 to_dim3(unsigned x) { return dim3(x); }
inline dim3 to_dim3(int x) { return dim3(static_cast<unsigned>(x)); }

// ---- the runtime API, as the kernels' host code calls it (renamed below) ----------------------
cudaError_t Malloc(void** p, size_t bytes);
template <class T>
cudaError_t Malloc(T** p, size_t bytes) {
  return Malloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t Free(void* p);
cudaError_t Memcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t MemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                        cudaStream_t s = nullptr);
cudaError_t Memset(void* p, int value, size_t bytes);
cudaError_t MemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t DeviceSynchronize();
cudaError_t StreamSynchronize(cudaStream_t s);
cudaError_t GetLastError();
cudaError_t PeekAtLastError();
const char* GetErrorString(cudaError_t e);
cudaError_t GetDevice(int* device);
cudaError_t GetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t DeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t FuncGetAttributesImpl(cudaFuncAttributes* attr, const void* func);
cudaError_t FuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value);
template <class F>
cudaError_t FuncGetAttributes(cudaFuncAttributes* attr, F* func) {
  return FuncGetAttributesImpl(attr, reinterpret_cast<const void*>(func));
}
template <class F>
cudaError_t FuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return FuncSetAttributeImpl(reinterpret_cast<const void*>(func), attr, value);
}
cudaError_t GetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned version,
                                         unsigned long long flags,
                                         cudaDriverEntryPointQueryResult* status);

}  // namespace emu
}  // namespace int8kern

// ---- CUDA built-ins -----------------------------------------------------------------------------
#define threadIdx (::int8kern::emu::g_current->thread_idx)
#define blockIdx (::int8kern::emu::g_current->block_idx)
#define blockDim (::int8kern::emu::g_current->block_dim)
#define gridDim (::int8kern::emu::g_current->grid_dim)


#define __syncthreads() ::int8kern::emu::bar_sync(0, 0, __FILE__, __LINE__)
#define __trap() ::int8kern::emu::fault(__FILE__, __LINE__, "__trap()")
#define __threadfence() ::int8kern::emu::threadfence()

namespace int8kern {
namespace emu {
template <class T>
inline uint32_t to_bits32(T v) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}
template <class T>
inline T from_bits32(uint32_t u) {
  T v;
  std::memcpy(&v, &u, 4);
  return v;
}
enum ShflMode { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3 };
template <class T>
inline T shfl(uint32_t mask, T v, int arg, int width, int mode, const char* file, int line) {
  return from_bits32<T>(shfl_sync(mask, to_bits32(v), arg, width, mode, file, line));
}
}  // namespace emu
}  // namespace int8kern
// (width is always 32 in int8kern's kernels)
#define __shfl_sync(mask, v, src) \
  ::int8kern::emu::shfl(mask, v, src, 32, ::int8kern::emu::kShflIdx, __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, delta) \
  ::int8kern::emu::shfl(mask, v, delta, 32, ::int8kern::emu::kShflUp, __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, delta) \
  ::int8kern::emu::shfl(mask, v, delta, 32, ::int8kern::emu::kShflDown, __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask) \
  ::int8kern::emu::shfl(mask, v, lane_mask, 32, ::int8kern::emu::kShflXor, __FILE__, __LINE__)

// Device intrinsics with their PTX semantics.
inline uint32_t __cvta_generic_to_shared(const void* p) { return ::int8kern::emu::smem_address(p); }
inline uint64_t __cvta_generic_to_global(const void* p) { return reinterpret_cast<uint64_t>(p); }
inline unsigned int __float_as_uint(float v) { return ::int8kern::emu::to_bits32(v); }
inline float __uint_as_float(unsigned int v) { return ::int8kern::emu::from_bits32<float>(v); }
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
// cvt.rni.s32.f32: round half to even, saturate to the int32 range, NaN -> 0.
inline int __float2int_rn(float v) {
  if (v != v) return 0;
  if (v >= 2147483648.0f) return 2147483647;
  if (v < -2147483648.0f) return -2147483647 - 1;
  return static_cast<int>(std::nearbyint(v));  // the default rounding mode: to nearest even
}
// cvt.rn.f32.s32
inline float __int2float_rn(int v) { return static_cast<float>(v); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
template <class T>
inline void __stcg(T* p, T v) {
  *p = v;
}
// Global atomics: the GCC builtins (ThreadSanitizer understands them).
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline int atomicCAS(int* p, int cmp, int v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }

// ---- launches and dynamic shared memory --------------------------------------------------------
#define INT8KERN_EMU_LAUNCH(grid, block, smem, stream, ...)                                      \
  ::int8kern::emu::make_call(__VA_ARGS__,                                                          \
                             ::int8kern::emu::LaunchConfig{::int8kern::emu::to_dim3(grid),         \
                                                           ::int8kern::emu::to_dim3(block), smem, \
                                                           stream, #__VA_ARGS__, __FILE__, __LINE__})

// ---- the runtime API, renamed to the emulator's ------------------------------------------------
#define cudaMalloc ::int8kern::emu::Malloc
#define cudaFree ::int8kern::emu::Free
#define cudaMemcpy ::int8kern::emu::Memcpy
#define cudaMemcpyAsync ::int8kern::emu::MemcpyAsync
#define cudaMemset ::int8kern::emu::Memset
#define cudaMemsetAsync ::int8kern::emu::MemsetAsync
#define cudaDeviceSynchronize ::int8kern::emu::DeviceSynchronize
#define cudaStreamSynchronize ::int8kern::emu::StreamSynchronize
#define cudaGetLastError ::int8kern::emu::GetLastError
#define cudaPeekAtLastError ::int8kern::emu::PeekAtLastError
#define cudaGetErrorString ::int8kern::emu::GetErrorString
#define cudaGetDevice ::int8kern::emu::GetDevice
#define cudaGetDeviceProperties ::int8kern::emu::GetDeviceProperties
#define cudaDeviceGetAttribute ::int8kern::emu::DeviceGetAttribute
#define cudaFuncGetAttributes ::int8kern::emu::FuncGetAttributes
#define cudaFuncSetAttribute ::int8kern::emu::FuncSetAttribute
#define cudaGetDriverEntryPointByVersion ::int8kern::emu::GetDriverEntryPointByVersion
