// How the CPU kernels use more than one thread, and how many they may use.
//
// Why not at::parallel_for (OpenMP): an OpenMP region ends in a join, and the calling thread
// waits there for every thread of the team, including one that the OS has not scheduled. When
// another process holds the second core (a busy laptop, a shared server, a vCPU the host has
// descheduled), that wait is a scheduler tick or more: on 2 Zen 4 vCPUs with a busy loop at
// nice -10 pinned to the second one, a 12 us torch add_ took 44 ms at its 90th percentile, and
// Int8LinearLt at M = 1 took 24 ms on two threads against 1.1 ms on one (benchmarks/NOTES.md,
// 2026-12-03). parallel_chunks() below never waits for a thread that has not started: the
// calling thread claims chunks of the work itself, helper threads claim the rest when they get
// CPU time, and the caller waits only for chunks a helper has already claimed. Work too small
// to pay for a second thread runs on the calling thread alone. The one exception, large GEMMs
// while torch's own OpenMP workers are there to take them, is parallel_chunks_large below.
//
// A helper can still be preempted inside a chunk it claimed, and the caller then waits for it
// (a chunk's inputs live on the caller's stack, so the caller cannot return before it ends).
// Such a stall (a wait well beyond the caller's own time per chunk), and the caller itself
// being preempted during the call (a woken helper that finds no idle core is queued on the
// caller's, and the caller then waits behind whatever else runs there), are taken as signs
// that other processes hold the cores: the following calls run on one thread for a backoff
// time that doubles with every further stall, up to a second, and shrinks again once a helper
// keeps up. Under a neighbour that never lets go, that is one stall per second at most.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace int8kern {
namespace cpu {

// What the process may really use, read once (see cpu_budget()).
struct CpuBudget {
  int64_t affinity_cpus = 0;     // CPUs in sched_getaffinity
  double quota_cpus = 0.0;       // cgroup CPU quota / period (v2 cpu.max, v1 cfs_quota_us); 0: none
  int64_t override_threads = 0;  // INT8KERN_NUM_THREADS; 0: not set
  int64_t threads = 1;           // the override if set, else min(affinity, floor(quota)), >= 1
};

// The budget from a file tree laid out like / (root "" is the real one: proc/self/cgroup,
// proc/self/mountinfo, the cgroup files under the mount points it names), an override value
// (nullptr: none) and the affinity count. Separate from the cached one so tests can feed it
// fake trees. Throws (naming INT8KERN_NUM_THREADS) when the override is not a positive integer.
CpuBudget compute_cpu_budget(const std::string& root, const char* override_value, int64_t affinity_cpus);

// The process's budget, computed on first use and cached.
const CpuBudget& cpu_budget();

// Threads the kernels use now: set_cpu_threads()'s n when set, else INT8KERN_NUM_THREADS when
// set, else min(torch.get_num_threads(), cpu_budget().threads). The overrides win over torch's
// count too, so that a shared machine can run torch's own OpenMP ops on one thread
// (torch.set_num_threads(1): their regions still join on every thread) and int8kern's, which
// do not wait for an unscheduled thread, on more.
int cpu_threads();

// int8kern.set_num_threads(n): the kernels' thread count from now on, whatever torch's (n = 0:
// back to the rule above). More than cpu_budget().threads only lets the calling thread and the
// budget's helpers share the work: helpers are started once, from the budget.
void set_cpu_threads(int64_t n);

// Below this much work (bytes streamed, or the equivalent in multiply-accumulates, see the
// callers) a call runs on one thread unless a helper is polling for work already (then the
// floor is 96 KiB, parallel_cpu.cpp): waking a sleeping helper costs 10-50 us on a VM, about
// what a single thread needs to stream this many bytes from L3.
constexpr int64_t kMinParallelWork = int64_t{1} << 20;

// fn(worker, begin, end) for consecutive ranges covering [0, n), each at most `grain` long.
// `work` is the whole call's work in the unit of kMinParallelWork. worker is in
// [0, max_workers) (max_workers 0: cpu_threads()): 0 is the calling thread; ranges given to one worker never overlap in
// time, so per-worker scratch needs no lock. Returns when every range is done; an exception
// from fn is rethrown here. fn must not call parallel_chunks itself (a nested call runs
// serially).
using ChunkFn = std::function<void(int worker, int64_t begin, int64_t end)>;
void parallel_chunks(int64_t n, int64_t grain, int64_t work, const ChunkFn& fn, int max_workers = 0);

// parallel_chunks, except that a call of at least kOpenMpTeamWork runs on torch's OpenMP team
// when torch's ops use at least as many threads as int8kern's kernels would. Why: after each
// of torch's parallel ops its OpenMP workers spin before they sleep (libgomp's default wait
// policy), on the very cores the helpers need; in a prefill, where int8kern's
// GEMMs alternate with torch's ops, a helper then shared its core with a spinning worker, its
// chunks stalled, and the backoff ran the GEMMs on one thread: on an AVX2 CPU (emulated), 25-34
// stalls per SmolLM2 prefill of 512 tokens and 1.3-1.4x its time (benchmarks/NOTES.md,
// 2026-12-05). torch's own workers, spinning, take the work at once, and a join costs
// microseconds next to a call of a millisecond or more. The GEMMs of a decode step are below
// the size, and with torch.set_num_threads(1) (the recipe for shared cores: no worker spins
// then) every call takes the helpers. The chunks are claimed dynamically, as the helpers do.
void parallel_chunks_large(int64_t n, int64_t grain, int64_t work, const ChunkFn& fn);
constexpr int64_t kOpenMpTeamWork = int64_t{2} << 20;

// How many calls of parallel_chunks_large have run on torch's OpenMP team (a debug counter).
int64_t openmp_team_regions();

// How many calls of parallel_chunks have offered work to a helper thread since the process
// started (a debug counter: the tests count the parallel regions of one op call with it).
int64_t parallel_regions();

// How many times a caller waited for a helper's chunk long enough to back off (see the top).
int64_t parallel_stalls();

// Forgets the stalls seen so far: the next call may take the helpers, and the next backoff is
// the shortest. For a benchmark that times several setups in one process, so that one setup
// does not start on one thread because of the previous one's stalls (torch's OpenMP workers
// spinning beside the helpers, say); the counter of parallel_stalls() is kept.
void reset_parallel_backoff();

// A decode step streams the same weights in the same order every token, and between two of
// its GEMVs the calling thread runs the framework's code (Python, the dispatcher, the small
// fused kernels) while the helpers poll. Called after a GEMV has streamed [data, data +
// bytes), this remembers that it followed the previous one and hands the polling helper the
// weights that followed it last time, up to the prefetch budget, to prefetch into its cache
// until the next offer of work. Nothing is dereferenced (prefetches do not fault), so a
// wrong guess only costs idle bandwidth.
void prefetch_after_stream(const void* data, int64_t bytes);

// The budget in bytes (0: off); INT8KERN_CPU_PREFETCH_KB sets it at start.
void set_prefetch_bytes(int64_t bytes);

}  // namespace cpu
}  // namespace int8kern
