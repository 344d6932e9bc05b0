// int8kern._emu: the CUDA backend on the CPU. torch.ops.int8kern_emu.* take CPU tensors and run
// ops_cuda.cpp's host code (included below, compiled with INT8KERN_EMU) and the CUDA kernels
// under the warp-level emulator (csrc/emu). int8kern.emu selects it as a third backend beside the
// CPU kernels and real CUDA; the emulator's counters and device choice are ops too.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../op_schemas.h"
#include "emu_api.h"

extern "C" {
PyObject* PyInit__emu(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_emu", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {
std::vector<int64_t> emu_stats() {
  const auto s = int8kern::emu::stats();
  return {static_cast<int64_t>(s.launches),          static_cast<int64_t>(s.blocks),
          static_cast<int64_t>(s.memsets),           static_cast<int64_t>(s.mallocs),
          static_cast<int64_t>(s.memcpys),           static_cast<int64_t>(s.library_calls),
          static_cast<int64_t>(s.host_syncs),        static_cast<int64_t>(s.cp_async_16),
          static_cast<int64_t>(s.mma_sync),          static_cast<int64_t>(s.wgmma),
          static_cast<int64_t>(s.tma_loads),         static_cast<int64_t>(s.ldmatrix_requests),
          static_cast<int64_t>(s.ldmatrix_wavefronts),   static_cast<int64_t>(s.cp_async_requests),
          static_cast<int64_t>(s.cp_async_wavefronts),   static_cast<int64_t>(s.cp_async_sectors)};
}
void emu_reset_stats() { int8kern::emu::reset_stats(); }
bool emu_set_device(std::string kind) { return int8kern::emu::set_device_kind(kind.c_str()); }
std::string emu_device() { return int8kern::emu::device_kind_key(); }
}  // namespace

TORCH_LIBRARY(int8kern_emu, m) {
  int8kern::define_ops(m);
  m.def("emu_stats", &emu_stats);
  m.def("emu_reset_stats", &emu_reset_stats);
  m.def("emu_set_device", &emu_set_device);
  m.def("emu_device", &emu_device);
}

#include "../cuda/ops_cuda.cpp"
