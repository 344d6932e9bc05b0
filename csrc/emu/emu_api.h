// What the CUDA emulator tells its users beyond the CUDA runtime API: counters of what the
// kernels and the host code did (launches, memsets, host syncs, bank-conflict wavefronts), which
// device it pretends to be, and the last error with its full report. Plain C++, no CUDA headers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>


namespace int8kern {
namespace emu {

struct Stats {
  uint64_t launches = 0;      // kernel launches that ran
  uint64_t blocks = 0;        // blocks they ran
  uint64_t memsets = 0;       // cudaMemset* and zero-filled allocations of the host code
  uint64_t mallocs = 0;       // cudaMalloc and device allocations of the host code
  uint64_t memcpys = 0;
  uint64_t library_calls = 0;  // cuBLAS calls of the CUDA host code (at::mm): one launch or more each
  uint64_t host_syncs = 0;    // device-to-host copies, synchronize calls, .item() of device data
  uint64_t cp_async_16 = 0;
  uint64_t mma_sync = 0;
  uint64_t wgmma = 0;
  uint64_t tma_loads = 0;
  uint64_t ldmatrix_requests = 0;    // one per 8-row matrix of an ldmatrix
  uint64_t ldmatrix_wavefronts = 0;  // shared-memory wavefronts they took (1 each: conflict-free)
  uint64_t cp_async_requests = 0;    // warp-wide cp.async 16-byte requests
  uint64_t cp_async_wavefronts = 0;  // their shared-memory store wavefronts (4 each: conflict-free)
  uint64_t cp_async_sectors = 0;     // global 32-byte sectors they read (16 each when coalesced)
};

Stats stats();
void reset_stats();
// "h200" (sm_90, 132 SMs; the default, or INT8KERN_EMU_DEVICE) or "a100" (sm_80, 108 SMs).
bool set_device_kind(const char* key);
const char* device_kind_key();
// The grid.y limit launches are held to: 65535, as on every GPU, or INT8KERN_EMU_MAX_GRID_Y
// (1 .. 65535, read once) so that tests of the loops past it run on fewer tiles.
int64_t max_grid_y();
// The last error (a cudaError_t value, 0: none) and its report (kernel, block, thread, source
// line), cleared.
std::string take_error(int* code);
// Stream capture and replay (int8kern.emu.graph): begin_capture starts recording the launches and
// memsets of the (one) emulated stream instead of running them; end_capture stops and returns the
// graph's id; replay_graph runs its recorded work in order; drop_graph forgets it. A host sync
// while capturing is an error (as cudaStreamSynchronize during capture is on a GPU).
void begin_capture();
int64_t end_capture();
bool replay_graph(int64_t id);
void drop_graph(int64_t id);
bool is_capturing();
// Keeps owner alive as long as the graph being captured (no-op when not capturing): the device
// memory the host code allocates during a capture, which replays write.
void hold_while_captured(std::shared_ptr<void> owner);
void count_host_sync();
void count_memset();
void count_allocation();
void count_library_call();

}  // namespace emu
}  // namespace int8kern
