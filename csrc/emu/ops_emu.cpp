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
void emu_capture_begin() {
  TORCH_CHECK(!int8kern::emu::is_capturing(), "int8kern.emu.graph: already capturing (graphs do not nest)");
  int8kern::emu::begin_capture();
}
int64_t emu_capture_end() { return int8kern::emu::end_capture(); }
void emu_graph_replay(int64_t id) {
  TORCH_CHECK(int8kern::emu::replay_graph(id), "int8kern.emu.graph: no graph ", id, " (reset?)");
  int code = 0;
  const std::string report = int8kern::emu::take_error(&code);
  TORCH_CHECK(code == 0, "int8kern (CUDA emulator): error ", code, " in a graph replay: ", report);
}
void emu_graph_drop(int64_t id) { int8kern::emu::drop_graph(id); }
}  // namespace

TORCH_LIBRARY(int8kern_emu, m) {
  int8kern::define_ops(m);
  m.def("emu_stats", &emu_stats);
  m.def("emu_reset_stats", &emu_reset_stats);
  m.def("emu_set_device", &emu_set_device);
  m.def("emu_device", &emu_device);
  m.def("emu_capture_begin", &emu_capture_begin);
  m.def("emu_capture_end", &emu_capture_end);
  m.def("emu_graph_replay", &emu_graph_replay);
  m.def("emu_graph_drop", &emu_graph_drop);
}

#include "../cuda/ops_cuda.cpp"
