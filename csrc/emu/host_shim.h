// The device plumbing of csrc/cuda/ops_cuda.cpp when it is the emulated CUDA backend's host code
// (INT8KERN_EMU): tensors live on the CPU, there is one emulated device and one stream, and every
// allocation, memset, library call and host synchronisation the CUDA code would make is counted
// (int8kern.emu.stats()), so launch and sync counts can be tested without a GPU.
#pragma once

#include <ATen/ATen.h>

#include "cuda_emu.h"
#include "emu_api.h"

namespace int8kern {
namespace cuda {
namespace {

struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
int device_index(const at::Tensor&) { return 0; }
// Fresh device memory holds no defined value: filled with 0xFF bytes (NaN in every float dtype,
// -1 in integers), so an output element no kernel wrote cannot pass for a result.
// Memory allocated during a capture belongs to the graph too (its replays write it), as a CUDA
// graph's private pool keeps the blocks of its capture.
at::Tensor held_by_capture(at::Tensor t) {
  if (emu::is_capturing()) emu::hold_while_captured(std::make_shared<at::Tensor>(t));
  return t;
}
at::Tensor device_empty(at::IntArrayRef sizes, const at::TensorOptions& o) {
  emu::count_allocation();
  auto t = at::empty(sizes, o);
  if (t.numel() > 0) std::memset(t.data_ptr(), 0xFF, t.nbytes());
  return held_by_capture(t);
}
at::Tensor device_zeros(at::IntArrayRef sizes, const at::TensorOptions& o) {
  emu::count_allocation();
  emu::count_memset();
  return held_by_capture(at::zeros(sizes, o));
}
void host_sync_point() {
  // A GPU refuses it too: cudaStreamSynchronize / a blocking copy invalidates a stream capture.
  TORCH_CHECK(!emu::is_capturing(), "int8kern (CUDA emulator): operation not permitted when stream is "
              "capturing: a host synchronisation inside int8kern.emu.graph()");
  emu::count_host_sync();
}

[[noreturn]] void launch_failed(const char* file, int line, int code, const std::string& report) {
  TORCH_CHECK(false, "int8kern (CUDA emulator): error ", code, ": ", report, " [", file, ":",
              line, "]");
}
#define INT8KERN_LAUNCH_CHECK()                                                   \
  do {                                                                            \
    int code_ = 0;                                                                \
    const std::string report_ = ::int8kern::emu::take_error(&code_);              \
    if (code_ != 0) launch_failed(__FILE__, __LINE__, code_, report_);            \
  } while (0)
#define INT8KERN_CUDA_CHECK(e)                                                                      \
  do {                                                                                              \
    const cudaError_t e_ = (e);                                                                     \
    if (e_ != cudaSuccess) launch_failed(__FILE__, __LINE__, static_cast<int>(e_), "a device query failed"); \
  } while (0)

}  // namespace
}  // namespace cuda
}  // namespace int8kern
