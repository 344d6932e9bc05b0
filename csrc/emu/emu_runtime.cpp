// The warp-level CUDA emulator's runtime: fibers and their scheduler, the per-lane semantics of
// every instruction the kernels use, and the part of the CUDA runtime API they call. See
// cuda_emu.h for the model and csrc/emu/README.md for what it proves and what it cannot.
//
// Sanitizers: this file is compiled with AddressSanitizer when the kernels are, but never with
// ThreadSanitizer: its bookkeeping is shared by all fibers of a block on purpose, and would read as
// races. The memory accesses that the emulated instructions make on a thread's behalf (cp.async
// landing, ldmatrix rows, TMA boxes, wgmma operand reads) are reported to ThreadSanitizer
// explicitly, from the fiber that makes them, and every barrier, mbarrier and launch boundary is a
// release/acquire pair; fibers switch with the no-sync flag, so nothing else orders them.
#include "cuda_emu.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu_api.h"
#include "ptx_layouts.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define INT8KERN_EMU_ASAN 1
#endif
#if defined(INT8KERN_EMU_TSAN)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_read_range(void* addr, unsigned long size);
void __tsan_write_range(void* addr, unsigned long size);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif

namespace int8kern {
namespace emu {

ThreadIds* g_current = nullptr;

namespace {

// ---------------------------------------------------------------------------------------------
// Fiber switch (x86-64 System V): saves the callee-saved registers on the old stack, swaps stack
// pointers, restores them from the new one. A new fiber's stack is laid out so that the first
// switch "returns" into fiber_entry.
// ---------------------------------------------------------------------------------------------
extern "C" void int8kern_emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.p2align 4
.globl int8kern_emu_switch
.hidden int8kern_emu_switch
.type int8kern_emu_switch,@function
int8kern_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size int8kern_emu_switch, .-int8kern_emu_switch
)");

// Every entry point of the emulator runs its bookkeeping inside an EmulatorScope: ThreadSanitizer
// then ignores it (allocations and memsets included, which it would otherwise see through its
// interceptors even in this uninstrumented file). The accesses an instruction makes for its
// thread, and the synchronisation it implies, are reported explicitly below, outside the ignore.
int* ignore_depth();  // of the running fiber, or of the scheduler
struct EmulatorScope {
#if defined(INT8KERN_EMU_TSAN)
  EmulatorScope() {
    __tsan_ignore_thread_begin();
    ++*ignore_depth();
  }
  ~EmulatorScope() {
    --*ignore_depth();
    __tsan_ignore_thread_end();
  }
#else
  EmulatorScope() {}  // nothing to do; user-provided so that a scope is not an "unused variable"
#endif
};
// Before a fiber leaves for good (it exited, or faulted inside an entry point): its
// ThreadSanitizer fiber is reused by the next block's thread in the same slot, which must not
// start inside an ignore.
void end_all_ignores() {
#if defined(INT8KERN_EMU_TSAN)
  for (int* d = ignore_depth(); *d > 0; --*d) __tsan_ignore_thread_end();
#endif
}
inline void tsan_read(const void* p, size_t n) {
#if defined(INT8KERN_EMU_TSAN)
  __tsan_ignore_thread_end();
  __tsan_read_range(const_cast<void*>(p), n);
  __tsan_ignore_thread_begin();
#else
  (void)p, (void)n;
#endif
}
inline void tsan_write(void* p, size_t n) {
#if defined(INT8KERN_EMU_TSAN)
  __tsan_ignore_thread_end();
  __tsan_write_range(p, n);
  __tsan_ignore_thread_begin();
#else
  (void)p, (void)n;
#endif
}
inline void tsan_release(void* p) {
#if defined(INT8KERN_EMU_TSAN)
  __tsan_ignore_thread_end();
  __tsan_release(p);
  __tsan_ignore_thread_begin();
#else
  (void)p;
#endif
}
inline void tsan_acquire(void* p) {
#if defined(INT8KERN_EMU_TSAN)
  __tsan_ignore_thread_end();
  __tsan_acquire(p);
  __tsan_ignore_thread_begin();
#else
  (void)p;
#endif
}

// Byte values the emulator writes where the rules say a value is not yet defined: memory from
// cudaMalloc, a cp.async / TMA destination before its copy lands, wgmma accumulators between the
// issue and the wait that completes them. 0xFF bytes read as NaN in every float type and as -1.
constexpr uint8_t kPoison = 0xFF;
constexpr int32_t kPoisonAcc = 0x7f7f7f7f;

// ---------------------------------------------------------------------------------------------
// Devices the emulator can pretend to be.
// ---------------------------------------------------------------------------------------------
struct DeviceKind {
  const char* key;
  const char* name;
  int major, minor, sms, smem_per_sm, smem_optin, max_threads_per_sm, regs_per_sm;
};
const DeviceKind kDevices[] = {
    {"h200", "NVIDIA H200 (int8kern CUDA emulator)", 9, 0, 132, 233472, 232448, 2048, 65536},
    {"a100", "NVIDIA A100-SXM4-80GB (int8kern CUDA emulator)", 8, 0, 108, 167936, 166912, 2048, 65536},
};
constexpr size_t kDefaultDynamicSmem = 48 * 1024;  // without cudaFuncSetAttribute
constexpr size_t kMaxDynamicSmem = 232448;         // the largest opt-in above

// Registers per thread that cudaFuncGetAttributes reports and that setmaxnreg's pool is made of:
// the most a full 384-thread block may have (65536 / 384, rounded down to the allocation unit of
// 8). The emulator has no ptxas; the real count is checked on the GPU (make gpu-check).
constexpr int kEmuRegsPerThread = 168;

// ---------------------------------------------------------------------------------------------
// Per-thread, per-warp and per-block state.
// ---------------------------------------------------------------------------------------------
struct CpAsyncCopy {
  uint8_t* dst;
  const uint8_t* src;
};

struct ThreadState {
  ThreadIds ids;
  int linear = 0, lane = 0, warp = 0, warpgroup = 0;
  void* sp = nullptr;
  char* stack = nullptr;
  bool done = false;
  // Blocked: resumed only once *watch != seen.
  const uint64_t* watch = nullptr;
  uint64_t seen = 0;
  const char* wait_what = nullptr;
  const char* wait_file = nullptr;
  int wait_line = 0;
  std::vector<CpAsyncCopy> cp_open;                 // issued, not yet committed
  uint64_t cp_issued = 0;                           // this thread's cp.async count (requests)
  std::deque<std::vector<CpAsyncCopy>> cp_groups;   // committed, not yet landed
  int ignore_depth = 0;                             // EmulatorScopes open in this fiber
  void* tsan_fiber = nullptr;
  void* asan_fake_stack = nullptr;
};

// One round of a collective: the lanes (or warpgroup threads) deposit, the last one completes it.
struct Collective {
  int arrived = 0;
  uint64_t generation = 0;
  const char* what = nullptr;
  const char* file = nullptr;
  int line = 0;
  int first_thread = 0;
  uint32_t mask = 0;
};

// A warp's n-th cp.async of the block, gathered lane by lane (each lane's n-th call is taken as
// the same instruction: the main loops issue theirs convergently), for the bank-conflict and
// sector counts of that request.
struct CpAsyncRequest {
  uint32_t smem[32];
  uintptr_t global[32];
  int count = 0;
};

struct WarpState {
  Collective coll;
  std::unordered_map<uint64_t, CpAsyncRequest> cp_requests;
  uint32_t in[32][10];
  uint32_t out[32][4];
  uint32_t arg[32];
};

struct Barrier {
  int arrived = 0;
  int expected = 0;
  uint64_t generation = 0;
  const char* file = nullptr;
  int line = 0;
};

struct PendingTma {
  uint8_t* dst;
  CUtensorMap map;
  int32_t x, y;
};

struct MBarrier {
  uint32_t expected = 0, pending = 0;
  int64_t tx = 0;
  uint64_t phase = 0;  // completed phases; the current phase's parity is phase & 1
  std::vector<PendingTma> tma;
};

struct WgmmaOp {
  uint64_t desc_a, desc_b;
  int n;
  std::vector<int32_t*> d;     // each thread's accumulator array
  std::vector<int32_t> input;  // [thread][n / 2]: the accumulators at the issue, unless chained
  bool chained;                // the input is the result of an earlier pending op on the same d
};

struct WarpgroupState {
  Collective coll;
  uint64_t desc_a[128], desc_b[128];
  int32_t* d[128];
  int regs = kEmuRegsPerThread;
  std::vector<WgmmaOp> open;                 // issued, not committed
  std::deque<std::vector<WgmmaOp>> groups;   // committed, not completed
  std::map<int32_t*, std::vector<int32_t>> running;  // pending results per accumulator array
};

struct BlockState {
  std::vector<ThreadState> threads;
  std::vector<WarpState> warps;
  std::vector<WarpgroupState> warpgroups;
  Barrier barriers[16];
  std::unordered_map<uint32_t, MBarrier> mbarriers;
  // cp.async chunks issued and not landed: shared address -> issuing thread (for the read check).
  std::unordered_map<uintptr_t, int> cp_pending;
  int exited = 0;
  uint64_t reg_pool_version = 0;
  int64_t reg_pool_free = 0;
};

// ---------------------------------------------------------------------------------------------
// Global emulator state (one launch at a time: g_launch_mutex).
// ---------------------------------------------------------------------------------------------
std::recursive_mutex g_launch_mutex;
ThreadState* g_thread = nullptr;
BlockState* g_block = nullptr;
const LaunchConfig* g_cfg = nullptr;
void* g_sched_sp = nullptr;
[[maybe_unused]] void* g_sched_tsan_fiber = nullptr;
[[maybe_unused]] const void* g_sched_stack_bottom = nullptr;
[[maybe_unused]] size_t g_sched_stack_size = 0;
void (*g_body)(void*) = nullptr;
void* g_body_arg = nullptr;
bool g_faulted = false;
std::string g_fault_message;
cudaError_t g_last_error = cudaSuccess;
std::string g_last_error_message;
int g_launch_sync;  // the address of the launch's release/acquire pairs (ThreadSanitizer)
Stats g_stats;
std::unordered_map<const void*, int> g_max_dynamic_smem;
int g_device_kind = -1;

alignas(4096) uint8_t g_dynamic_smem[kMaxDynamicSmem + 1024];
int g_scheduler_ignore_depth = 0;
[[maybe_unused]] std::vector<void*> g_tsan_fibers;  // per thread slot, reused (prepare_fiber)

int* ignore_depth() { return g_thread != nullptr ? &g_thread->ignore_depth : &g_scheduler_ignore_depth; }

const DeviceKind& device_kind() {
  if (g_device_kind < 0) {
    const char* env = std::getenv("INT8KERN_EMU_DEVICE");
    g_device_kind = 0;
    if (env != nullptr && std::strcmp(env, "a100") == 0) g_device_kind = 1;
  }
  return kDevices[g_device_kind];
}

void set_error(cudaError_t e, const std::string& message) {
  g_last_error = e;
  g_last_error_message = message;
}

// ---------------------------------------------------------------------------------------------
// Fiber stacks: one mapping, a guard page below each stack.
// ---------------------------------------------------------------------------------------------
#if defined(INT8KERN_EMU_ASAN) || defined(INT8KERN_EMU_TSAN)
constexpr size_t kStackSize = 512 * 1024;
#else
constexpr size_t kStackSize = 128 * 1024;
#endif
constexpr size_t kGuard = 4096;
char* g_stacks = nullptr;
size_t g_stack_count = 0;

char* stack_of(size_t i) {
  if (i >= g_stack_count) {
    const size_t want = std::max<size_t>(1024, i + 1);
    if (g_stacks != nullptr) munmap(g_stacks, g_stack_count * (kStackSize + kGuard));
    void* p = mmap(nullptr, want * (kStackSize + kGuard), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "int8kern emulator: cannot map %zu fiber stacks\n", want);
      std::abort();
    }
    g_stacks = static_cast<char*>(p);
    g_stack_count = want;
    for (size_t s = 0; s < want; ++s) mprotect(g_stacks + s * (kStackSize + kGuard), kGuard, PROT_NONE);
  }
  return g_stacks + i * (kStackSize + kGuard) + kGuard;
}

// ---------------------------------------------------------------------------------------------
// Switching between the scheduler and the fibers.
// ---------------------------------------------------------------------------------------------
void switch_to_thread(ThreadState* t) {
  g_thread = t;
  g_current = &t->ids;
#if defined(INT8KERN_EMU_TSAN)
  __tsan_switch_to_fiber(t->tsan_fiber, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
#if defined(INT8KERN_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t->stack, kStackSize);
#endif
  int8kern_emu_switch(&g_sched_sp, t->sp);
#if defined(INT8KERN_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  g_thread = nullptr;
  g_current = nullptr;
}

// From a fiber back to the scheduler. `finished`: this fiber will never run again.
void switch_to_scheduler(bool finished) {
  ThreadState* t = g_thread;
#if defined(INT8KERN_EMU_TSAN)
  __tsan_switch_to_fiber(g_sched_tsan_fiber, 1);
#endif
#if defined(INT8KERN_EMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &t->asan_fake_stack, g_sched_stack_bottom,
                                 g_sched_stack_size);
#endif
  int8kern_emu_switch(&t->sp, g_sched_sp);
#if defined(INT8KERN_EMU_ASAN)
  __sanitizer_finish_switch_fiber(t->asan_fake_stack, nullptr, nullptr);
#endif
}

[[noreturn]] void fiber_entry() {
#if defined(INT8KERN_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
#if defined(INT8KERN_EMU_TSAN)
  __tsan_acquire(&g_launch_sync);
#endif
  g_body(g_body_arg);
#if defined(INT8KERN_EMU_TSAN)
  __tsan_release(&g_launch_sync);
#endif
  ThreadState* t = g_thread;
  t->done = true;
  ++g_block->exited;
  switch_to_scheduler(true);
  __builtin_unreachable();
}

void prepare_fiber(ThreadState* t) {
  char* top = t->stack + kStackSize;
#if defined(INT8KERN_EMU_ASAN)
  __asan_unpoison_memory_region(t->stack, kStackSize);
#endif
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                  // fiber_entry's "return address"
  *--sp = reinterpret_cast<void*>(&fiber_entry);    // where the first switch returns to
  for (int r = 0; r < 6; ++r) *--sp = nullptr;      // rbp rbx r12 r13 r14 r15
  t->sp = sp;
#if defined(INT8KERN_EMU_TSAN)
  // One ThreadSanitizer fiber per stack slot, kept across blocks and launches (creating one is
  // costly, and blocks run one after another, fully ordered by the launch's release/acquire).
  const size_t slot = static_cast<size_t>(t->linear);
  if (slot >= g_tsan_fibers.size()) g_tsan_fibers.resize(slot + 1, nullptr);
  if (g_tsan_fibers[slot] == nullptr) g_tsan_fibers[slot] = __tsan_create_fiber(0);
  t->tsan_fiber = g_tsan_fibers[slot];
#endif
}

// Blocks the running fiber until *watch changes.
void wait_for_change(const uint64_t* watch, const char* what, const char* file, int line) {
  ThreadState* t = g_thread;
  t->watch = watch;
  t->seen = *watch;
  t->wait_what = what;
  t->wait_file = file;
  t->wait_line = line;
  switch_to_scheduler(false);
  t->watch = nullptr;
}

std::string where() {
  char buf[256];
  if (g_thread == nullptr || g_cfg == nullptr) return "host";
  const ThreadIds& id = g_thread->ids;
  std::snprintf(buf, sizeof(buf), "kernel %s, block (%u, %u, %u), thread (%u, %u, %u) [warp %d lane %d]",
                g_cfg->kernel, id.block_idx.x, id.block_idx.y, id.block_idx.z, id.thread_idx.x,
                id.thread_idx.y, id.thread_idx.z, g_thread->warp, g_thread->lane);
  return buf;
}

bool same_site(const char* f1, int l1, const char* f2, int l2) {
  return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

// Joins the current round of `c` with `participants` threads; `complete` runs once, in the last
// arriving thread, before anyone leaves.
template <class F>
void rendezvous(Collective& c, int participants, uint32_t mask, const char* what, const char* file,
                int line, F&& complete) {
  if (c.arrived == 0) {
    c.what = what;
    c.file = file;
    c.line = line;
    c.mask = mask;
    c.first_thread = g_thread->linear;
  } else if (c.what != what || !same_site(c.file, c.line, file, line)) {
    fault(file, line,
          "%s here, while other threads of its %s wait at %s (%s:%d): a .sync.aligned collective "
          "reached by diverged threads (undefined on hardware)",
          what, participants == 128 ? "warpgroup" : "warp", c.what, c.file, c.line);
  } else if (c.mask != mask) {
    fault(file, line, "%s with member mask 0x%08x, while thread %d of its warp gave 0x%08x", what,
          mask, c.first_thread, c.mask);
  }
  ++c.arrived;
  if (c.arrived == participants) {
    complete();
    c.arrived = 0;
    ++c.generation;
    return;
  }
  const uint64_t gen = c.generation;
  while (c.generation == gen) wait_for_change(&c.generation, what, file, line);
}

WarpState& warp_of_current() { return g_block->warps[g_thread->warp]; }

int lanes_in_warp(int warp) {
  const int total = static_cast<int>(g_block->threads.size());
  return std::min(32, total - 32 * warp);
}

// ---------------------------------------------------------------------------------------------
// The scheduler.
// ---------------------------------------------------------------------------------------------
void report_deadlock() {
  std::string msg = "deadlock: every live thread waits for something no other thread will do";
  int shown = 0;
  for (auto& t : g_block->threads) {
    if (t.done) continue;
    if (shown++ < 8) {
      char buf[320];
      std::snprintf(buf, sizeof(buf), "\n  thread (%u, %u, %u) [warp %d lane %d] waits at %s (%s:%d)",
                    t.ids.thread_idx.x, t.ids.thread_idx.y, t.ids.thread_idx.z, t.warp, t.lane,
                    t.wait_what, t.wait_file, t.wait_line);
      msg += buf;
    }
  }
  const int live = static_cast<int>(g_block->threads.size()) - g_block->exited;
  if (live > 8) msg += "\n  ... and " + std::to_string(live - 8) + " more";
  char head[256];
  const uint3 b = g_block->threads[0].ids.block_idx;
  std::snprintf(head, sizeof(head), "kernel %s, block (%u, %u, %u): ", g_cfg->kernel, b.x, b.y, b.z);
  g_fault_message = head + msg + " (on hardware: a hang)";
  g_faulted = true;
}

// Runs one block to completion; false on a fault (g_fault_message says what).
bool run_block(const uint3& block_idx, int nthreads) {
  BlockState& blk = *g_block;
  for (int i = 0; i < nthreads; ++i) {
    ThreadState& t = blk.threads[i];
    // Reset field by field: the containers keep their storage from the previous block (a fresh
    // ThreadState would allocate for each of a launch's threads in every block).
    t.done = false;
    t.watch = nullptr;
    t.seen = 0;
    t.wait_what = t.wait_file = nullptr;
    t.wait_line = 0;
    t.cp_open.clear();
    t.cp_groups.clear();
    t.cp_issued = 0;
    t.ignore_depth = 0;
    t.tsan_fiber = t.asan_fake_stack = nullptr;
    const dim3& bd = g_cfg->block;
    t.ids.thread_idx = make_uint3(i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
    t.ids.block_idx = block_idx;
    t.ids.block_dim = g_cfg->block;
    t.ids.grid_dim = g_cfg->grid;
    t.linear = i;
    t.lane = i % 32;
    t.warp = i / 32;
    t.warpgroup = i / 128;
    t.stack = stack_of(static_cast<size_t>(i));
    prepare_fiber(&t);
  }
  for (auto& w : blk.warps) {
    w.coll = Collective();
    w.cp_requests.clear();
  }
  for (auto& wg : blk.warpgroups) {
    wg.coll = Collective();
    wg.regs = kEmuRegsPerThread;
    wg.open.clear();
    wg.groups.clear();
    wg.running.clear();
  }
  for (auto& b : blk.barriers) b = Barrier();
  blk.mbarriers.clear();
  blk.cp_pending.clear();
  blk.exited = 0;
  blk.reg_pool_free = 0;
  ++blk.reg_pool_version;
  // Dynamic shared memory starts undefined.
  if (g_cfg->dynamic_smem > 0) std::memset(g_dynamic_smem, kPoison, g_cfg->dynamic_smem + 1024);

  bool ok = true;
  while (blk.exited < nthreads) {
    bool ran = false;
    for (int i = 0; i < nthreads && !g_faulted; ++i) {
      ThreadState& t = blk.threads[i];
      if (t.done) continue;
      if (t.watch != nullptr && *t.watch == t.seen) continue;
      ran = true;
      switch_to_thread(&t);
    }
    if (g_faulted) {
      ok = false;
      break;
    }
    if (!ran) {
      report_deadlock();
      ok = false;
      break;
    }
  }
#if defined(INT8KERN_EMU_TSAN)
  // Threads abandoned mid-instruction may sit inside an ignore: their slots get fresh fibers.
  if (!ok)
    for (auto& t : blk.threads)
      if (!t.done) g_tsan_fibers[static_cast<size_t>(t.linear)] = nullptr;
#endif
  return ok;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------------------------
void fault(const char* file, int line, const char* fmt, ...) {
  end_all_ignores();  // this fiber never runs again (see end_all_ignores)
#if defined(INT8KERN_EMU_TSAN)
  __tsan_ignore_thread_begin();  // for the report's allocations; ended below
#endif
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  char site[512];
  std::snprintf(site, sizeof(site), " [%s:%d]", file, line);
  if (g_thread == nullptr) {
    std::fprintf(stderr, "int8kern emulator: %s%s (outside a kernel)\n", buf, site);
    std::abort();
  }
  g_fault_message = where() + ": " + buf + site;
  g_faulted = true;
#if defined(INT8KERN_EMU_TSAN)
  __tsan_ignore_thread_end();
#endif
  switch_to_scheduler(true);
  __builtin_unreachable();
}

// ---------------------------------------------------------------------------------------------
// Barriers and warp collectives.
// ---------------------------------------------------------------------------------------------
void bar_sync(int id, int count, const char* file, int line) {
  EmulatorScope scope;
  BlockState& blk = *g_block;
  const int nthreads = static_cast<int>(blk.threads.size());
  if (id < 0 || id > 15) fault(file, line, "bar.sync %d: barrier ids are 0..15", id);
  if (count != 0 && (count % 32 != 0 || count > nthreads))
    fault(file, line, "bar.sync %d, %d: the count must be a multiple of 32 and at most the block's %d threads",
          id, count, nthreads);
  Barrier& b = blk.barriers[id];
  // __syncthreads (no count): the block's threads that have not exited (as on sm_70+).
  const int expected = count == 0 ? nthreads - blk.exited : count;
  if (b.arrived == 0) {
    b.expected = count == 0 ? -1 : count;
    b.file = file;
    b.line = line;
  } else if ((b.expected == -1) != (count == 0) || (count != 0 && b.expected != count)) {
    fault(file, line, "bar.sync %d with count %d while other threads wait on it with count %d (%s:%d)", id,
          count, b.expected, b.file, b.line);
  } else if (id == 0 && count == 0 && !same_site(b.file, b.line, file, line)) {
    fault(file, line,
          "__syncthreads here while other threads of the block wait at the one at %s:%d: divergent "
          "barrier (undefined on hardware)",
          b.file, b.line);
  }
  tsan_release(&b);
  ++b.arrived;
  if (b.arrived >= expected) {
    b.arrived = 0;
    ++b.generation;
  } else {
    const uint64_t gen = b.generation;
    while (b.generation == gen) wait_for_change(&b.generation, "bar.sync", file, line);
  }
  tsan_acquire(&b);
}

uint32_t shfl_sync(uint32_t mask, uint32_t v, int arg, int width, int mode, const char* file, int line) {
  EmulatorScope scope;
  (void)width;
  ThreadState& t = *g_thread;
  WarpState& w = warp_of_current();
  if (((mask >> t.lane) & 1u) == 0)
    fault(file, line, "__shfl_*_sync by lane %d, which is not in its member mask 0x%08x", t.lane, mask);
  const int lanes = lanes_in_warp(t.warp);
  const uint32_t present = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  w.in[t.lane][0] = v;
  w.arg[t.lane] = static_cast<uint32_t>(arg);
  rendezvous(w.coll, __builtin_popcount(mask & present), mask, "__shfl_sync", file, line, [&] {
    for (int l = 0; l < 32; ++l) {
      if (((mask & present) >> l & 1u) == 0) continue;
      const int a = static_cast<int>(w.arg[l]);
      int src = l;
      switch (mode) {
        case kShflIdx: src = a & 31; break;
        case kShflUp: src = l - a >= 0 ? l - a : l; break;
        case kShflDown: src = l + a < 32 ? l + a : l; break;
        default: src = (l ^ a) & 31; break;
      }
      // A source lane outside the mask gives an undefined value on hardware: keep the lane's own.
      if (((mask & present) >> src & 1u) == 0) src = l;
      w.out[l][0] = w.in[src][0];
    }
  });
  return w.out[t.lane][0];
}

void threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------------------------------------
// Shared memory addresses: offsets from the dynamic shared memory window, which is 1024-byte
// aligned, so an address's low bits (swizzles, alignment) are those of the pointer. Static
// __shared__ arrays live in the same module, within +-2 GiB of it.
// ---------------------------------------------------------------------------------------------
uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(reinterpret_cast<intptr_t>(p) - reinterpret_cast<intptr_t>(g_dynamic_smem));
}
void* smem_pointer(uint32_t addr, int bytes, const char* file, int line) {
  if (bytes > 0 && (addr % static_cast<uint32_t>(bytes)) != 0 && (bytes == 16 || bytes == 8 || bytes == 4))
    fault(file, line, "shared address 0x%x is not %d-byte aligned", addr, bytes);
  return g_dynamic_smem + static_cast<int32_t>(addr);
}
void* dynamic_smem() { return g_dynamic_smem; }

// ---------------------------------------------------------------------------------------------
// cp.async: the copy lands at the issuing thread's cp.async.wait_group that covers its group (the
// latest point the PTX rules allow); until then the destination reads as poison, and an ldmatrix
// of it is reported.
// ---------------------------------------------------------------------------------------------
namespace {
// Shared-memory wavefronts of one request of 16-byte accesses by `n` lanes: processed 8 lanes
// (128 bytes) at a time; within each group a bank (4 bytes of 32) serving k distinct words costs k.
int64_t wavefronts_16b(const uint32_t* addr, int n) {
  int64_t total = 0;
  for (int g = 0; g < n; g += 8) {
    int words_per_bank[32] = {0};
    uint32_t seen[32][8];
    for (int i = g; i < std::min(n, g + 8); ++i)
      for (int word = 0; word < 4; ++word) {
        const uint32_t wa = (addr[i] >> 2) + word;
        const int bank = static_cast<int>(wa & 31u);
        bool dup = false;
        for (int k = 0; k < words_per_bank[bank]; ++k) dup |= seen[bank][k] == wa;
        if (!dup && words_per_bank[bank] < 8) seen[bank][words_per_bank[bank]++] = wa;
      }
    total += *std::max_element(words_per_bank, words_per_bank + 32);
  }
  return total;
}

void record_cp_async(ThreadState& t, uint32_t dst, const void* src) {
  WarpState& w = g_block->warps[t.warp];
  CpAsyncRequest& r = w.cp_requests[t.cp_issued++];
  r.smem[t.lane] = dst;
  r.global[t.lane] = reinterpret_cast<uintptr_t>(src);
  if (++r.count < lanes_in_warp(t.warp)) return;
  const int n = r.count;
  ++g_stats.cp_async_requests;
  g_stats.cp_async_wavefronts += wavefronts_16b(r.smem, n);
  // Global memory sectors (32 bytes) the request touches.
  uintptr_t sectors[64];
  int ns = 0;
  for (int i = 0; i < n; ++i)
    for (uintptr_t s = r.global[i] / 32; s <= (r.global[i] + 15) / 32; ++s) {
      bool dup = false;
      for (int k = 0; k < ns; ++k) dup |= sectors[k] == s;
      if (!dup) sectors[ns++] = s;
    }
  g_stats.cp_async_sectors += ns;
  w.cp_requests.erase(t.cp_issued - 1);
}
}  // namespace

void cp_async_16(uint32_t dst, const void* src, const char* file, int line) {
  EmulatorScope scope;
  auto* d = static_cast<uint8_t*>(smem_pointer(dst, 16, file, line));
  if ((reinterpret_cast<uintptr_t>(src) & 15u) != 0)
    fault(file, line, "cp.async 16 from global address %p: not 16-byte aligned", src);
  ThreadState& t = *g_thread;
  tsan_write(d, 16);
  std::memset(d, kPoison, 16);
  t.cp_open.push_back({d, static_cast<const uint8_t*>(src)});
  g_block->cp_pending[reinterpret_cast<uintptr_t>(d)] = t.linear;
  ++g_stats.cp_async_16;
  record_cp_async(t, dst, src);
}

void cp_async_commit(const char* file, int line) {
  EmulatorScope scope;
  (void)file, (void)line;
  ThreadState& t = *g_thread;
  t.cp_groups.push_back(std::move(t.cp_open));
  t.cp_open.clear();
}

void cp_async_wait(int n, const char* file, int line) {
  EmulatorScope scope;
  (void)file, (void)line;
  ThreadState& t = *g_thread;
  while (static_cast<int>(t.cp_groups.size()) > n) {
    for (const auto& c : t.cp_groups.front()) {
      tsan_read(c.src, 16);
      tsan_write(c.dst, 16);
      std::memcpy(c.dst, c.src, 16);
      g_block->cp_pending.erase(reinterpret_cast<uintptr_t>(c.dst));
    }
    t.cp_groups.pop_front();
  }
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4.shared.b16 and mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32.
// ---------------------------------------------------------------------------------------------
namespace {
void check_no_pending_copy(const uint8_t* p, int bytes, const char* what, const char* file, int line) {
  if (g_block->cp_pending.empty()) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{15};
  for (uintptr_t c = first; c < reinterpret_cast<uintptr_t>(p) + bytes; c += 16) {
    auto it = g_block->cp_pending.find(c);
    if (it != g_block->cp_pending.end()) {
      const ThreadState& w = g_block->threads[it->second];
      fault(file, line,
            "%s reads shared bytes at 0x%x that a cp.async of thread (%u, %u, %u) has not landed yet "
            "(no cp.async.wait_group, or no barrier, between that copy and this read)",
            what, smem_address(reinterpret_cast<const void*>(c)), w.ids.thread_idx.x,
            w.ids.thread_idx.y, w.ids.thread_idx.z);
    }
  }
}
}  // namespace

void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr, const char* file, int line) {
  EmulatorScope scope;
  ThreadState& t = *g_thread;
  WarpState& w = warp_of_current();
  if (lanes_in_warp(t.warp) != 32) fault(file, line, "ldmatrix in a partial warp");
  // Each lane's row: read by the lane itself (ThreadSanitizer sees who reads what).
  const auto* row = static_cast<const uint8_t*>(smem_pointer(addr, 16, file, line));
  check_no_pending_copy(row, 16, "ldmatrix", file, line);
  tsan_read(row, 16);
  std::memcpy(w.in[t.lane], row, 16);
  w.arg[t.lane] = addr;
  rendezvous(w.coll, 32, 0xffffffffu, "ldmatrix.x4", file, line, [&] {
    for (int l = 0; l < 32; ++l) {
      for (int reg = 0; reg < 4; ++reg) {
        uint32_t v = 0;
        for (int byte = 0; byte < 4; ++byte) {
          const layout::LdmatrixSrc s = layout::ldmatrix_x4(l, reg, byte);
          const int provider = layout::ldmatrix_x4_row_provider(s.matrix, s.row);
          const uint8_t b = reinterpret_cast<const uint8_t*>(w.in[provider])[s.byte];
          v |= static_cast<uint32_t>(b) << (8 * byte);
        }
        w.out[l][reg] = v;
      }
    }
    // Bank conflicts: each 8 x 16-byte matrix is one request of 8 row reads.
    for (int m = 0; m < 4; ++m) {
      ++g_stats.ldmatrix_requests;
      g_stats.ldmatrix_wavefronts += wavefronts_16b(&w.arg[8 * m], 8);
    }
  });
  for (int reg = 0; reg < 4; ++reg) r[reg] = w.out[t.lane][reg];
}

void mma_s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
                  int line) {
  EmulatorScope scope;
  ThreadState& t = *g_thread;
  WarpState& w = warp_of_current();
  if (lanes_in_warp(t.warp) != 32) fault(file, line, "mma.sync in a partial warp");
  for (int i = 0; i < 4; ++i) w.in[t.lane][i] = a[i];
  for (int i = 0; i < 2; ++i) w.in[t.lane][4 + i] = b[i];
  for (int i = 0; i < 4; ++i) w.in[t.lane][6 + i] = static_cast<uint32_t>(c[i]);
  rendezvous(w.coll, 32, 0xffffffffu, "mma.sync.m16n8k32.s8", file, line, [&] {
    int8_t A[16][32], B[8][32];
    int32_t C[16][8];
    for (int l = 0; l < 32; ++l) {
      for (int reg = 0; reg < 4; ++reg)
        for (int byte = 0; byte < 4; ++byte) {
          const layout::Coord e = layout::mma_m16n8k32_a(l, reg, byte);
          A[e.row][e.col] = static_cast<int8_t>(w.in[l][reg] >> (8 * byte));
        }
      for (int reg = 0; reg < 2; ++reg)
        for (int byte = 0; byte < 4; ++byte) {
          const layout::Coord e = layout::mma_m16n8k32_b(l, reg, byte);
          B[e.row][e.col] = static_cast<int8_t>(w.in[l][4 + reg] >> (8 * byte));
        }
      for (int reg = 0; reg < 4; ++reg) {
        const layout::Coord e = layout::mma_m16n8k32_c(l, reg);
        C[e.row][e.col] = static_cast<int32_t>(w.in[l][6 + reg]);
      }
    }
    for (int l = 0; l < 32; ++l)
      for (int reg = 0; reg < 4; ++reg) {
        const layout::Coord e = layout::mma_m16n8k32_c(l, reg);
        uint32_t acc = static_cast<uint32_t>(C[e.row][e.col]);  // wraps modulo 2^32, as .s32 does
        for (int k = 0; k < 32; ++k)
          acc += static_cast<uint32_t>(static_cast<int32_t>(A[e.row][k]) * static_cast<int32_t>(B[e.col][k]));
        w.out[l][reg] = acc;
      }
    ++g_stats.mma_sync;
  });
  for (int i = 0; i < 4; ++i) c[i] = static_cast<int32_t>(w.out[t.lane][i]);
}

// ---------------------------------------------------------------------------------------------
// mbarrier and TMA (cp.async.bulk.tensor.2d with a tensor map from the emulated encoder).
// ---------------------------------------------------------------------------------------------
namespace {
constexpr uint64_t kTensorMapMagic = 0x696e74386b656d75ull;  // "int8kemu"
struct EmuTensorMap {  // laid over CUtensorMap's 128 opaque bytes
  uint64_t magic;
  uint64_t address;
  uint64_t dims[2];
  uint64_t stride1;  // bytes between rows
  uint32_t box[2];
  uint32_t elem_bytes;
  uint32_t swizzle;  // CUtensorMapSwizzle
};
static_assert(sizeof(EmuTensorMap) <= sizeof(CUtensorMap), "fits the opaque map");

MBarrier& mbarrier_at(uint32_t bar, const char* what, const char* file, int line) {
  if (bar % 8 != 0) fault(file, line, "%s on shared address 0x%x: an mbarrier is 8-byte aligned", what, bar);
  auto it = g_block->mbarriers.find(bar);
  if (it == g_block->mbarriers.end())
    fault(file, line, "%s on shared address 0x%x, where no mbarrier was initialised", what, bar);
  return it->second;
}

void complete_phase(MBarrier& m) {
  ++m.phase;
  m.pending = m.expected;
  m.tx = 0;
}

// Writes one TMA box into shared memory (in the calling fiber) and returns its bytes.
int64_t land_tma(const PendingTma& p) {
  EmuTensorMap tm;
  std::memcpy(&tm, &p.map, sizeof(tm));
  const auto* g = reinterpret_cast<const uint8_t*>(tm.address);
  const int64_t row_bytes = static_cast<int64_t>(tm.box[0]) * tm.elem_bytes;
  for (uint32_t r = 0; r < tm.box[1]; ++r) {
    const int64_t gy = static_cast<int64_t>(p.y) + r;
    for (int64_t b = 0; b < row_bytes; ++b) {
      const int64_t gx = static_cast<int64_t>(p.x) * tm.elem_bytes + b;
      uint8_t v = 0;  // out of bounds: zero fill
      if (gy >= 0 && gy < static_cast<int64_t>(tm.dims[1]) && gx >= 0 &&
          gx < static_cast<int64_t>(tm.dims[0] * tm.elem_bytes)) {
        const uint8_t* src = g + gy * static_cast<int64_t>(tm.stride1) + gx;
        tsan_read(src, 1);
        v = *src;
      }
      const uint32_t off = tm.swizzle == CU_TENSOR_MAP_SWIZZLE_128B
                               ? layout::tma_box_sw128_offset(static_cast<int>(r), static_cast<int>(b))
                               : static_cast<uint32_t>(r * row_bytes + b);
      tsan_write(p.dst + off, 1);
      p.dst[off] = v;
    }
  }
  return row_bytes * tm.box[1];
}
}  // namespace

void mbar_init(uint32_t bar, uint32_t count, const char* file, int line) {
  EmulatorScope scope;
  if (bar % 8 != 0) fault(file, line, "mbarrier.init at 0x%x: not 8-byte aligned", bar);
  if (count == 0 || count > (1u << 20) - 1) fault(file, line, "mbarrier.init with count %u", count);
  MBarrier& m = g_block->mbarriers[bar];
  m = MBarrier();
  m.expected = m.pending = count;
}

void mbar_arrive(uint32_t bar, uint32_t tx_bytes, const char* file, int line) {
  EmulatorScope scope;
  MBarrier& m = mbarrier_at(bar, "mbarrier.arrive", file, line);
  if (m.pending == 0)
    fault(file, line, "mbarrier.arrive at 0x%x: more arrivals than its count %u in one phase", bar, m.expected);
  m.tx += tx_bytes;
  tsan_release(&m);
  if (--m.pending == 0 && m.tx == 0) complete_phase(m);
}

void mbar_wait(uint32_t bar, uint32_t parity, const char* file, int line) {
  EmulatorScope scope;
  for (;;) {
    MBarrier& m = mbarrier_at(bar, "mbarrier.try_wait", file, line);
    // The phase of parity `parity` has completed once the current phase has the other parity.
    if ((m.phase & 1u) != (parity & 1u)) break;
    if (m.pending == 0 && !m.tma.empty()) {
      // Every arrival is in: the transfers complete now, the latest point they can, after
      // everything the arrivals released (the producer issued them after its own waits).
      tsan_acquire(&m);
      std::vector<PendingTma> land;
      land.swap(m.tma);
      for (const auto& p : land) m.tx -= land_tma(p);
      tsan_release(&m);
      if (m.tx == 0) complete_phase(m);
      continue;
    }
    wait_for_change(&m.phase, "mbarrier.try_wait.parity", file, line);
  }
  MBarrier& m = mbarrier_at(bar, "mbarrier.try_wait", file, line);
  tsan_acquire(&m);
}

void tma_load_2d(uint32_t dst, const CUtensorMap* map, int32_t x, int32_t y, uint32_t bar,
                 const char* file, int line) {
  EmulatorScope scope;
  EmuTensorMap tm;
  std::memcpy(&tm, map, sizeof(tm));
  if (tm.magic != kTensorMapMagic)
    fault(file, line, "cp.async.bulk.tensor with a tensor map the (emulated) cuTensorMapEncodeTiled did not write");
  if (dst % 128 != 0) fault(file, line, "cp.async.bulk.tensor to shared 0x%x: not 128-byte aligned", dst);
  if (tm.swizzle == CU_TENSOR_MAP_SWIZZLE_128B && dst % 1024 != 0)
    fault(file, line, "cp.async.bulk.tensor with 128B swizzle to shared 0x%x: the emulator models it from 1024-byte aligned boxes only", dst);
  MBarrier& m = mbarrier_at(bar, "cp.async.bulk.tensor (complete_tx)", file, line);
  auto* d = static_cast<uint8_t*>(smem_pointer(dst, 0, file, line));
  const size_t bytes = static_cast<size_t>(tm.box[0]) * tm.elem_bytes * tm.box[1];
  if (d + bytes > g_dynamic_smem + kMaxDynamicSmem + 1024 || d < g_dynamic_smem)
    fault(file, line, "cp.async.bulk.tensor box of %zu bytes at 0x%x is outside dynamic shared memory", bytes, dst);
  std::memset(d, kPoison, bytes);  // undefined until the transfer completes
  m.tma.push_back(PendingTma{d, *map, x, y});
  ++g_stats.tma_loads;
}

// ---------------------------------------------------------------------------------------------
// setmaxnreg and wgmma (warpgroup collectives).
// ---------------------------------------------------------------------------------------------
namespace {
WarpgroupState& warpgroup_of_current(const char* what, const char* file, int line) {
  const int nthreads = static_cast<int>(g_block->threads.size());
  if (nthreads % 128 != 0)
    fault(file, line, "%s in a block of %d threads: warpgroups are 128 threads", what, nthreads);
  return g_block->warpgroups[g_thread->warpgroup];
}
}  // namespace

void setmaxnreg(bool increase, int regs, const char* file, int line) {
  EmulatorScope scope;
  if (regs < 24 || regs > 256 || regs % 8 != 0)
    fault(file, line, "setmaxnreg %d: the count must be a multiple of 8 in [24, 256]", regs);
  WarpgroupState& wg = warpgroup_of_current("setmaxnreg", file, line);
  rendezvous(wg.coll, 128, 0xffffffffu, increase ? "setmaxnreg.inc" : "setmaxnreg.dec", file, line, [&] {
    if (increase && regs < wg.regs)
      fault(file, line, "setmaxnreg.inc %d below the warpgroup's current %d registers", regs, wg.regs);
    if (!increase && regs > wg.regs)
      fault(file, line, "setmaxnreg.dec %d above the warpgroup's current %d registers", regs, wg.regs);
    if (!increase) {
      g_block->reg_pool_free += static_cast<int64_t>(wg.regs - regs) * 128;
      wg.regs = regs;
      ++g_block->reg_pool_version;
    }
  });
  if (!increase) return;
  // .inc waits until the block's pool holds what it asks for (hardware: forever if it never does).
  for (;;) {
    if (wg.regs >= regs) return;  // another thread of the warpgroup took them
    const int64_t need = static_cast<int64_t>(regs - wg.regs) * 128;
    if (g_block->reg_pool_free >= need) {
      g_block->reg_pool_free -= need;
      wg.regs = regs;
      ++g_block->reg_pool_version;
      return;
    }
    wait_for_change(&g_block->reg_pool_version, "setmaxnreg.inc (registers)", file, line);
  }
}

void wgmma_fence(const char* file, int line) {
  EmulatorScope scope;
  WarpgroupState& wg = warpgroup_of_current("wgmma.fence", file, line);
  rendezvous(wg.coll, 128, 0xffffffffu, "wgmma.fence", file, line, [] {});
}

void wgmma_m64nNk32_s8(int32_t* d, int n, uint64_t desc_a, uint64_t desc_b, const char* file, int line) {
  EmulatorScope scope;
  WarpgroupState& wg = warpgroup_of_current("wgmma.mma_async", file, line);
  const int t = g_thread->linear % 128;
  wg.desc_a[t] = desc_a;
  wg.desc_b[t] = desc_b;
  wg.d[t] = d;
  rendezvous(wg.coll, 128, 0xffffffffu, "wgmma.mma_async.m64nNk32.s8", file, line, [&] {
    for (int i = 1; i < 128; ++i)
      if (wg.desc_a[i] != wg.desc_a[0] || wg.desc_b[i] != wg.desc_b[0])
        fault(file, line, "wgmma.mma_async: thread %d of the warpgroup gave other descriptors than thread 0", i);
    WgmmaOp op;
    op.desc_a = desc_a;
    op.desc_b = desc_b;
    op.n = n;
    op.d.assign(wg.d, wg.d + 128);
    op.chained = wg.running.count(wg.d[0]) != 0;
    if (!op.chained) {
      op.input.resize(static_cast<size_t>(128) * (n / 2));
      for (int i = 0; i < 128; ++i)
        for (int r = 0; r < n / 2; ++r) op.input[i * (n / 2) + r] = wg.d[i][r];
      wg.running[wg.d[0]];  // pending from now on
    }
    // The accumulators are undefined until the wait that completes this op.
    for (int i = 0; i < 128; ++i)
      for (int r = 0; r < n / 2; ++r) wg.d[i][r] = kPoisonAcc;
    wg.open.push_back(std::move(op));
    ++g_stats.wgmma;
  });
}

void wgmma_commit(const char* file, int line) {
  EmulatorScope scope;
  WarpgroupState& wg = warpgroup_of_current("wgmma.commit_group", file, line);
  rendezvous(wg.coll, 128, 0xffffffffu, "wgmma.commit_group", file, line, [&] {
    wg.groups.push_back(std::move(wg.open));
    wg.open.clear();
  });
}

namespace {
// Reads the operands from shared memory now (the latest point) and computes one op.
void complete_wgmma(WarpgroupState& wg, WgmmaOp& op, const char* file, int line) {
  const layout::GmmaDesc da = layout::gmma_desc_decode(op.desc_a);
  const layout::GmmaDesc db = layout::gmma_desc_decode(op.desc_b);
  if (da.layout_type != 1 || db.layout_type != 1)
    fault(file, line, "wgmma descriptor layout type %d / %d: the emulator models 128B swizzle (1) only",
          da.layout_type, db.layout_type);
  auto operand = [&](uint64_t desc, int rows, int8_t (*out)[32]) {
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < 32; ++k) {
        const uint32_t addr = layout::wgmma_kmajor_sw128_address(desc, r, k);
        if (addr == layout::kNoAddress)
          fault(file, line, "wgmma descriptor 0x%016llx: a layout the emulator does not model (128B swizzle, base offset 0 only)",
                static_cast<unsigned long long>(desc));
        if (addr >= kMaxDynamicSmem) fault(file, line, "wgmma operand address 0x%x outside shared memory", addr);
        const uint8_t* p = g_dynamic_smem + addr;
        tsan_read(p, 1);
        out[r][k] = static_cast<int8_t>(*p);
      }
  };
  static int8_t A[64][32], B[256][32];
  operand(op.desc_a, 64, A);
  operand(op.desc_b, op.n, B);
  std::vector<int32_t>& run = wg.running[op.d[0]];
  if (!op.chained) run = op.input;
  for (int t = 0; t < 128; ++t)
    for (int r = 0; r < op.n / 2; ++r) {
      const layout::Coord e = layout::wgmma_m64nNk32_d(t, r, op.n);
      uint32_t acc = static_cast<uint32_t>(run[t * (op.n / 2) + r]);
      for (int k = 0; k < 32; ++k)
        acc += static_cast<uint32_t>(static_cast<int32_t>(A[e.row][k]) * static_cast<int32_t>(B[e.col][k]));
      run[t * (op.n / 2) + r] = static_cast<int32_t>(acc);
    }
}
}  // namespace

void wgmma_wait(int n, const char* file, int line) {
  EmulatorScope scope;
  WarpgroupState& wg = warpgroup_of_current("wgmma.wait_group", file, line);
  // The operations completed here (their shared-memory reads, done by the completing thread)
  // happen before any thread of the warpgroup goes on: a release by it, an acquire by each.
  tsan_release(&wg.coll);
  rendezvous(wg.coll, 128, 0xffffffffu, "wgmma.wait_group", file, line, [&] {
    tsan_acquire(&wg.coll);
    while (static_cast<int>(wg.groups.size()) > n) {
      std::vector<WgmmaOp> group = std::move(wg.groups.front());
      wg.groups.pop_front();
      for (auto& op : group) complete_wgmma(wg, op, file, line);
      // Accumulators no later pending op writes get their values.
      for (auto& op : group) {
        bool later = false;
        for (const auto& g : wg.groups)
          for (const auto& o : g) later |= o.d[0] == op.d[0];
        for (const auto& o : wg.open) later |= o.d[0] == op.d[0];
        auto it = wg.running.find(op.d[0]);
        if (later || it == wg.running.end()) continue;
        for (int t = 0; t < 128; ++t)
          for (int r = 0; r < op.n / 2; ++r) op.d[t][r] = it->second[t * (op.n / 2) + r];
        wg.running.erase(it);
      }
    }
    tsan_release(&wg.coll);
  });
  tsan_acquire(&wg.coll);
}

// ---------------------------------------------------------------------------------------------
// Launches.
// ---------------------------------------------------------------------------------------------
void launch(const void* kernel, const LaunchConfig& cfg, void (*body)(void*), void* arg) {
  EmulatorScope scope;
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  const DeviceKind& dev = device_kind();
  const uint64_t threads = static_cast<uint64_t>(cfg.block.x) * cfg.block.y * cfg.block.z;
  char msg[512];
  if (threads == 0 || threads > 1024 || cfg.block.x > 1024 || cfg.block.y > 1024 || cfg.block.z > 64 ||
      cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 || cfg.grid.x > 2147483647u ||
      cfg.grid.y > static_cast<uint64_t>(max_grid_y()) || cfg.grid.z > 65535) {
    std::snprintf(msg, sizeof(msg),
                  "launch of %s (%s:%d): grid (%u, %u, %u) x block (%u, %u, %u) is beyond the device's limits",
                  cfg.kernel, cfg.file, cfg.line, cfg.grid.x, cfg.grid.y, cfg.grid.z, cfg.block.x,
                  cfg.block.y, cfg.block.z);
    set_error(cudaErrorInvalidConfiguration, msg);
    return;
  }
  auto limit = g_max_dynamic_smem.find(kernel);
  const size_t smem_limit = limit == g_max_dynamic_smem.end() ? kDefaultDynamicSmem : static_cast<size_t>(limit->second);
  if (cfg.dynamic_smem > smem_limit || cfg.dynamic_smem > static_cast<size_t>(dev.smem_optin)) {
    std::snprintf(msg, sizeof(msg),
                  "launch of %s (%s:%d): %zu bytes of dynamic shared memory, above the kernel's limit of %zu "
                  "(cudaFuncSetAttribute raises it, up to %d on %s)",
                  cfg.kernel, cfg.file, cfg.line, cfg.dynamic_smem, smem_limit, dev.smem_optin, dev.name);
    set_error(cudaErrorInvalidValue, msg);
    return;
  }
  ++g_stats.launches;
  BlockState block;
  block.threads.resize(threads);
  block.warps.resize((threads + 31) / 32);
  block.warpgroups.resize((threads + 127) / 128);
  const LaunchConfig* saved_cfg = g_cfg;
  BlockState* saved_block = g_block;
  g_cfg = &cfg;
  g_block = &block;
  g_body = body;
  g_body_arg = arg;
  g_faulted = false;
#if defined(INT8KERN_EMU_TSAN)
  g_sched_tsan_fiber = __tsan_get_current_fiber();
#endif
  tsan_release(&g_launch_sync);
  bool ok = true;
  for (unsigned z = 0; z < cfg.grid.z && ok; ++z)
    for (unsigned y = 0; y < cfg.grid.y && ok; ++y)
      for (unsigned x = 0; x < cfg.grid.x && ok; ++x) {
        ok = run_block(make_uint3(x, y, z), static_cast<int>(threads));
        ++g_stats.blocks;
      }
  tsan_acquire(&g_launch_sync);
  g_cfg = saved_cfg;
  g_block = saved_block;
  if (!ok) set_error(cudaErrorLaunchFailure, g_fault_message);
}

// ---------------------------------------------------------------------------------------------
// The runtime API.
// ---------------------------------------------------------------------------------------------
cudaError_t Malloc(void** p, size_t bytes) {
  void* q = nullptr;
  if (posix_memalign(&q, 256, std::max<size_t>(bytes, 1)) != 0) {
    *p = nullptr;
    set_error(cudaErrorMemoryAllocation, "cudaMalloc: out of memory");
    return cudaErrorMemoryAllocation;
  }
  std::memset(q, kPoison, bytes);  // fresh device memory holds no defined value
  *p = q;
  ++g_stats.mallocs;
  return cudaSuccess;
}
cudaError_t Free(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t Memcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  EmulatorScope scope;
  tsan_acquire(&g_launch_sync);
  if (bytes > 0) std::memcpy(dst, src, bytes);
  ++g_stats.memcpys;
  if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault) ++g_stats.host_syncs;
  tsan_release(&g_launch_sync);
  return cudaSuccess;
}
cudaError_t MemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  EmulatorScope scope;
  if (bytes > 0) std::memcpy(dst, src, bytes);
  ++g_stats.memcpys;
  (void)kind;
  return cudaSuccess;
}
// ---------------------------------------------------------------------------------------------
// Stream capture: graphs of recorded launches and memsets.
// ---------------------------------------------------------------------------------------------
namespace {
// A graph: its work in order, and the memory allocated while it was captured, which it owns (as
// a CUDA graph's private memory pool keeps the blocks its capture allocated, freed or not).
struct Graph {
  std::vector<std::function<void()>> work;
  std::vector<std::shared_ptr<void>> held;
};
bool g_capturing = false;
Graph g_recording;
std::map<int64_t, Graph> g_graphs;
int64_t g_next_graph = 1;
}  // namespace

bool capturing() { return g_capturing; }
bool is_capturing() { return g_capturing; }
void record(std::function<void()> work) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  g_recording.work.push_back(std::move(work));
}
void hold_while_captured(std::shared_ptr<void> owner) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  if (g_capturing) g_recording.held.push_back(std::move(owner));
}
void begin_capture() {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  g_recording = Graph();
  g_capturing = true;
}
int64_t end_capture() {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  g_capturing = false;
  const int64_t id = g_next_graph++;
  g_graphs[id] = std::move(g_recording);
  g_recording = Graph();
  return id;
}
bool replay_graph(int64_t id) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  auto it = g_graphs.find(id);
  if (it == g_graphs.end()) return false;
  for (auto& work : it->second.work) work();
  return true;
}
void drop_graph(int64_t id) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  g_graphs.erase(id);
}

cudaError_t Memset(void* p, int value, size_t bytes) {
  if (capturing()) {
    ++g_stats.memsets;
    record([p, value, bytes] { Memset(p, value, bytes); });
    return cudaSuccess;
  }
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  EmulatorScope scope;
  if (bytes > 0) std::memset(p, value, bytes);
  ++g_stats.memsets;
  return cudaSuccess;
}
cudaError_t MemsetAsync(void* p, int value, size_t bytes, cudaStream_t) { return Memset(p, value, bytes); }
cudaError_t DeviceSynchronize() {
  ++g_stats.host_syncs;
  return cudaSuccess;
}
cudaError_t StreamSynchronize(cudaStream_t) {
  ++g_stats.host_syncs;
  return cudaSuccess;
}
cudaError_t GetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t PeekAtLastError() { return g_last_error; }
const char* GetErrorString(cudaError_t e) {
  if (e == cudaSuccess) return "no error";
  if (!g_last_error_message.empty()) return g_last_error_message.c_str();
  return e == cudaErrorLaunchFailure ? "unspecified launch failure" : "emulated CUDA error";
}
cudaError_t GetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t DeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const DeviceKind& d = device_kind();
  if (device != 0) {
    set_error(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: the emulator has device 0 only");
    return cudaErrorInvalidDevice;
  }
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = d.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = d.minor; break;
    case cudaDevAttrMultiProcessorCount: *value = d.sms; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = d.smem_per_sm; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d.smem_optin; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    default:
      set_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute not emulated");
      return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t GetDeviceProperties(cudaDeviceProp* prop, int device) {
  const DeviceKind& d = device_kind();
  if (device != 0) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "%s", d.name);
  prop->major = d.major;
  prop->minor = d.minor;
  prop->multiProcessorCount = d.sms;
  prop->sharedMemPerMultiprocessor = d.smem_per_sm;
  prop->sharedMemPerBlockOptin = d.smem_optin;
  prop->sharedMemPerBlock = kDefaultDynamicSmem;
  prop->maxThreadsPerBlock = 1024;
  prop->warpSize = 32;
  prop->regsPerMultiprocessor = d.regs_per_sm;
  prop->maxThreadsPerMultiProcessor = d.max_threads_per_sm;
  return cudaSuccess;
}
cudaError_t FuncGetAttributesImpl(cudaFuncAttributes* attr, const void* func) {
  std::memset(attr, 0, sizeof(*attr));
  attr->numRegs = kEmuRegsPerThread;
  attr->maxThreadsPerBlock = 1024;
  auto it = g_max_dynamic_smem.find(func);
  attr->maxDynamicSharedSizeBytes = it == g_max_dynamic_smem.end() ? kDefaultDynamicSmem : it->second;
  return cudaSuccess;
}
cudaError_t FuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > device_kind().smem_optin) {
    set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: more dynamic shared memory than the device has");
    return cudaErrorInvalidValue;
  }
  g_max_dynamic_smem[func] = value;
  return cudaSuccess;
}

namespace {
// cuTensorMapEncodeTiled as the driver documents its checks, for the 2-D maps the kernels use.
CUresult encode_tiled(CUtensorMap* map, CUtensorMapDataType dtype, cuuint32_t rank, void* address,
                      const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                      const cuuint32_t* elem_strides, CUtensorMapInterleave interleave,
                      CUtensorMapSwizzle swizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill) {
  if (rank != 2 || interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) return CUDA_ERROR_INVALID_VALUE;
  uint32_t elem = 0;
  switch (dtype) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: elem = 1; break;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: elem = 2; break;
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32: elem = 4; break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  if ((reinterpret_cast<uintptr_t>(address) & 15u) != 0) return CUDA_ERROR_INVALID_VALUE;
  for (int i = 0; i < 2; ++i) {
    if (dims[i] == 0 || dims[i] > (1ull << 32)) return CUDA_ERROR_INVALID_VALUE;
    if (box[i] == 0 || box[i] > 256) return CUDA_ERROR_INVALID_VALUE;
    if (elem_strides[i] != 1) return CUDA_ERROR_INVALID_VALUE;  // the only stride emulated
  }
  if (strides[0] % 16 != 0 || strides[0] >= (1ull << 40)) return CUDA_ERROR_INVALID_VALUE;
  if ((box[0] * elem) % 16 != 0) return CUDA_ERROR_INVALID_VALUE;
  if (swizzle == CU_TENSOR_MAP_SWIZZLE_128B) {
    if (box[0] * elem > 128) return CUDA_ERROR_INVALID_VALUE;
  } else if (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE) {
    return CUDA_ERROR_INVALID_VALUE;  // 32B / 64B: not used, not emulated
  }
  EmuTensorMap tm{};
  tm.magic = kTensorMapMagic;
  tm.address = reinterpret_cast<uint64_t>(address);
  tm.dims[0] = dims[0];
  tm.dims[1] = dims[1];
  tm.stride1 = strides[0];
  tm.box[0] = box[0];
  tm.box[1] = box[1];
  tm.elem_bytes = elem;
  tm.swizzle = swizzle;
  std::memset(map, 0, sizeof(*map));
  std::memcpy(map, &tm, sizeof(tm));
  return CUDA_SUCCESS;
}
}  // namespace

cudaError_t GetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned, unsigned long long,
                                         cudaDriverEntryPointQueryResult* status) {
  if (std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0) {
    *fn = reinterpret_cast<void*>(&encode_tiled);
    if (status) *status = cudaDriverEntryPointSuccess;
    return cudaSuccess;
  }
  *fn = nullptr;
  if (status) *status = cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// emu_api.h: what the emulated backend's host code and the tests read.
// ---------------------------------------------------------------------------------------------
Stats stats() {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  return g_stats;
}
void reset_stats() {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  g_stats = Stats();
}
bool set_device_kind(const char* key) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  for (int i = 0; i < static_cast<int>(sizeof(kDevices) / sizeof(kDevices[0])); ++i)
    if (std::strcmp(kDevices[i].key, key) == 0) {
      g_device_kind = i;
      return true;
    }
  return false;
}
const char* device_kind_key() { return device_kind().key; }
std::string take_error(int* code) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  *code = static_cast<int>(g_last_error);
  std::string m = g_last_error == cudaSuccess ? "" : g_last_error_message;
  g_last_error = cudaSuccess;
  g_last_error_message.clear();
  return m;
}
namespace {
void count(uint64_t Stats::*field) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  ++(g_stats.*field);
}
}  // namespace
int64_t max_grid_y() {
  static const int64_t limit = [] {
    const char* v = std::getenv("INT8KERN_EMU_MAX_GRID_Y");
    if (v == nullptr || *v == '\0') return int64_t{65535};
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end != '\0' || n < 1 || n > 65535) {
      std::fprintf(stderr, "int8kern CUDA emulator: INT8KERN_EMU_MAX_GRID_Y must be 1 .. 65535, got '%s'\n", v);
      std::abort();
    }
    return static_cast<int64_t>(n);
  }();
  return limit;
}

void count_host_sync() { count(&Stats::host_syncs); }
void count_memset() { count(&Stats::memsets); }
void count_library_call() { count(&Stats::library_calls); }
void count_allocation() { count(&Stats::mallocs); }

}  // namespace emu
}  // namespace int8kern
