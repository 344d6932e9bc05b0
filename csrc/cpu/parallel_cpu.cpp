// parallel.h: the CPU thread budget and parallel_chunks.
#include "parallel.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace int8kern {
namespace cpu {
namespace {

// ---------------------------------------------------------------- the budget

std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  for (std::string part; std::getline(ss, part, sep);) parts.push_back(part);
  return parts;
}

bool has_token(const std::string& list, const std::string& token) {
  const auto parts = split(list, ',');
  return std::find(parts.begin(), parts.end(), token) != parts.end();
}

// One cgroup mount from /proc/self/mountinfo: "id parent maj:min ROOT MOUNTPOINT opts
// [optional...] - FSTYPE source SUPEROPTS".
struct CgroupMount {
  std::string root, mount_point, fs_type, super_options;
};

std::vector<CgroupMount> cgroup_mounts(const std::string& root) {
  std::vector<CgroupMount> mounts;
  for (const auto& line : read_lines(root + "/proc/self/mountinfo")) {
    const auto fields = split(line, ' ');
    const auto dash = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 5 || dash == fields.end() || fields.end() - dash < 4) continue;
    CgroupMount m{fields[3], fields[4], dash[1], dash[3]};
    if (m.fs_type == "cgroup2" || m.fs_type == "cgroup") mounts.push_back(m);
  }
  return mounts;
}

// The directories of a cgroup, itself first, then each parent up to the mount point: a
// parent's quota caps its children too. `path` is the process's cgroup from /proc/self/cgroup,
// which is relative to the hierarchy's root, while the mount may show only a subtree (`root`
// in mountinfo, as inside a container); a path outside that subtree falls back to the mount
// point itself.
std::vector<std::string> cgroup_dirs(const std::string& fs_root, const CgroupMount& m, std::string path) {
  if (m.root != "/" && path.compare(0, m.root.size(), m.root) == 0) path = path.substr(m.root.size());
  else if (m.root != "/") path = "/";
  std::vector<std::string> dirs;
  while (true) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    dirs.push_back(fs_root + m.mount_point + (path == "/" ? "" : path));
    if (path.empty() || path == "/") break;
    path = path.substr(0, path.rfind('/'));
    if (path.empty()) path = "/";
  }
  return dirs;
}

// The tightest quota (CPUs = quota / period) along the cgroup's directories; 0 when none.
double tightest_quota(const std::vector<std::string>& dirs, double (*read_quota)(const std::string&)) {
  double best = 0.0;
  for (const auto& dir : dirs) {
    const double q = read_quota(dir);
    if (q > 0.0 && (best == 0.0 || q < best)) best = q;
  }
  return best;
}

double parse_positive(const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  return (end != s.c_str() && errno == 0 && std::isfinite(v) && v > 0.0) ? v : 0.0;
}

// cgroup v2: cpu.max is "QUOTA PERIOD" in microseconds, QUOTA "max" when unlimited.
double quota_v2(const std::string& dir) {
  const auto lines = read_lines(dir + "/cpu.max");
  if (lines.empty()) return 0.0;
  const auto parts = split(lines[0], ' ');
  if (parts.size() < 2 || parts[0] == "max") return 0.0;
  const double quota = parse_positive(parts[0]), period = parse_positive(parts[1]);
  return quota > 0.0 && period > 0.0 ? quota / period : 0.0;
}

// cgroup v1: cpu.cfs_quota_us (-1 when unlimited) and cpu.cfs_period_us.
double quota_v1(const std::string& dir) {
  const auto q = read_lines(dir + "/cpu.cfs_quota_us"), p = read_lines(dir + "/cpu.cfs_period_us");
  if (q.empty() || p.empty()) return 0.0;
  const double quota = parse_positive(q[0]), period = parse_positive(p[0]);
  return quota > 0.0 && period > 0.0 ? quota / period : 0.0;
}

double cgroup_quota_cpus(const std::string& root) {
  const auto mounts = cgroup_mounts(root);
  double best = 0.0;
  auto take = [&](double q) {
    if (q > 0.0 && (best == 0.0 || q < best)) best = q;
  };
  // /proc/self/cgroup: "0::PATH" for v2; "ID:CONTROLLERS:PATH" for each v1 hierarchy.
  for (const auto& line : read_lines(root + "/proc/self/cgroup")) {
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1), path = line.substr(second + 1);
    for (const auto& m : mounts) {
      if (controllers.empty() && m.fs_type == "cgroup2")
        take(tightest_quota(cgroup_dirs(root, m, path), quota_v2));
      else if (!controllers.empty() && has_token(controllers, "cpu") && m.fs_type == "cgroup" &&
               has_token(m.super_options, "cpu"))
        take(tightest_quota(cgroup_dirs(root, m, path), quota_v1));
    }
  }
  return best;
}

int64_t affinity_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// ---------------------------------------------------------------- parallel_chunks

std::atomic<int64_t> regions_offered{0};
thread_local bool inside_chunk = false;

// Backing off after a stall (parallel.h): while serial_until_ns lies ahead, calls run on the
// calling thread alone. Each stall doubles the next backoff up to kMaxBackoff; a call in
// which a helper did its share without stalling halves it back towards kMinBackoff. Under a
// neighbour that keeps the core, that costs one stall (a few scheduler ticks) per
// kMaxBackoff at worst; on a quiet machine, a stray stall costs kMinBackoff of one thread.
constexpr int64_t kMinBackoffNs = 10'000'000;
constexpr int64_t kMaxBackoffNs = 1'000'000'000;
// A wait for a helper's chunk counts as a stall when it exceeds twice the caller's own mean
// chunk time plus this slack (a wake-up and a cache miss or two on a VM).
constexpr int64_t kStallSlackNs = 100'000;
std::atomic<int64_t> serial_until_ns{0};
std::atomic<int64_t> backoff_ns{kMinBackoffNs};
std::atomic<int64_t> stalls_seen{0};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A stall was seen: the calls of the next backoff_ns run on one thread, and the next backoff
// is twice as long.
void back_off() {
  stalls_seen.fetch_add(1);
  const int64_t b = backoff_ns.load();
  serial_until_ns.store(now_ns() + b);
  backoff_ns.store(std::min(kMaxBackoffNs, 2 * b));
}

// Involuntary context switches of the calling thread so far: the OS took the CPU from it to
// run something else, which on a quiet machine does not happen within a sub-millisecond call.
int64_t preemptions_of_this_thread() {
  struct rusage usage;
  return getrusage(RUSAGE_THREAD, &usage) == 0 ? usage.ru_nivcsw : 0;
}

// One parallel_chunks call, shared with the helpers it wakes. The helpers hold it by
// shared_ptr, so a helper that starts after the call has returned finds no chunk left and
// touches nothing else: fn (on the caller's stack) is only reached through a successful claim,
// and the caller does not return while a claimed chunk is unfinished.
struct Job {
  int64_t n = 0, grain = 1, n_chunks = 0;
  const ChunkFn* fn = nullptr;
  int max_workers = 1;
  std::atomic<int64_t> next_chunk{0};
  std::atomic<int64_t> done_chunks{0};
  std::atomic<int> next_worker{1};  // 0 is the caller
  std::mutex error_mutex;
  std::exception_ptr error;

  // Runs chunks until none is left; returns how many this worker ran.
  int64_t work(int worker) {
    inside_chunk = true;
    int64_t ran = 0;
    for (int64_t c; (c = next_chunk.fetch_add(1)) < n_chunks; ++ran) {
      try {
        const int64_t begin = c * grain;
        (*fn)(worker, begin, std::min(n, begin + grain));
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      if (done_chunks.fetch_add(1) + 1 == n_chunks) done_chunks.notify_all();
    }
    inside_chunk = false;
    return ran;
  }
};

// The helper threads: cpu_budget().threads - 1 of them, started on first use and never
// destroyed (joining them from a static destructor at exit could wait on a thread the exit
// already stopped). After fork() the child has none of them; it starts its own.
//
// Offers go through one slot: the latest Job and a sequence number bumped with every offer.
// A helper that has finished its work keeps polling the sequence number for poll_ns() before it
// sleeps on it (a futex): the calls of a decode step come tens of microseconds apart, and a
// polling helper takes an offer within a microsecond, where waking a sleeping one costs 10-50
// us on a VM, as much as the smaller layers' whole GEMV. So work down to
// kMinParallelWorkPolled is shared while a helper polls, and kMinParallelWork's rule holds
// otherwise; a call too small for a sleeping helper pokes it awake (no work, just the bump) so
// that the next calls find it polling. A helper that never gets the CPU (a neighbour holds
// its core) leaves every chunk to the caller: nothing waits for it.
// INT8KERN_CPU_POLL_US overrides the window (0: helpers sleep at once, every call below
// kMinParallelWork runs on one thread).
constexpr int64_t kDefaultPollNs = 200'000;
int64_t poll_ns() {
  static const int64_t ns = [] {
    const char* env = std::getenv("INT8KERN_CPU_POLL_US");
    if (env == nullptr) return kDefaultPollNs;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && errno == 0 && v >= 0 && v <= 1'000'000,
                "int8kern: INT8KERN_CPU_POLL_US must be a whole number of microseconds from 0 to 1000000, got '",
                env, "'");
    return static_cast<int64_t>(v) * 1000;
  }();
  return ns;
}
constexpr int64_t kMinParallelWorkPolled = int64_t{96} << 10;

// ---------------------------------------------------------------- prefetching the next weight
//
// See parallel.h (prefetch_after_stream). The calling thread keeps, under `mutex`, which
// stream followed which the last time (keyed by the stream's address) and publishes a plan:
// the streams expected next, up to the budget. The first helper runs the plan in slices
// between its polls of offer_seq, leaves it when work is offered, and goes on with it after
// unless a newer plan has come.
struct Stream {
  const char* data = nullptr;
  int64_t bytes = 0;
};
constexpr int kMaxPlannedStreams = 16;
constexpr size_t kMaxRememberedStreams = 1 << 14;  // then forget them all (weights freed and reallocated)
std::atomic<int64_t> prefetch_bytes{-1};  // the budget; -1: not read from the environment yet
std::atomic<int64_t> prefetched_bytes{0};  // a debug counter (the tests)
struct Prefetcher {
  std::mutex mutex;
  std::unordered_map<const char*, Stream> follower;
  Stream latest;
  Stream plan[kMaxPlannedStreams];
  int plan_size = 0;
  std::atomic<uint32_t> plan_seq{0};
};
constexpr int64_t kDefaultPrefetchBytes = int64_t{2} << 20;
int64_t prefetch_budget() {
  int64_t b = prefetch_bytes.load(std::memory_order_relaxed);
  if (b >= 0) return b;
  b = kDefaultPrefetchBytes;
  if (const char* env = std::getenv("INT8KERN_CPU_PREFETCH_KB")) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && errno == 0 && v >= 0 && v <= (1 << 20),
                "int8kern: INT8KERN_CPU_PREFETCH_KB must be a whole number of KiB from 0 to 1048576, got '", env, "'");
    b = static_cast<int64_t>(v) << 10;
  }
  prefetch_bytes.store(b, std::memory_order_relaxed);
  return b;
}

// The helper's side: where it is in the latest plan it took.
struct PrefetchCursor {
  Prefetcher& prefetcher;
  uint32_t plan_seen = 0;
  Stream todo[kMaxPlannedStreams];
  int size = 0, index = 0;
  int64_t offset = 0;

  // Prefetches one slice of the plan; false when there is nothing left to do.
  bool step() {
    if (prefetcher.plan_seq.load(std::memory_order_acquire) != plan_seen) {
      std::lock_guard<std::mutex> lock(prefetcher.mutex);
      plan_seen = prefetcher.plan_seq.load();
      size = prefetcher.plan_size;
      std::copy(prefetcher.plan, prefetcher.plan + size, todo);
      index = 0;
      offset = 0;
    }
    if (index >= size) return false;
    constexpr int64_t kSlice = 4096;
    const Stream& s = todo[index];
    const int64_t end = std::min(s.bytes, offset + kSlice);
    // A prefetch never faults, so a weight freed since the plan was made is harmless.
    for (int64_t o = offset; o < end; o += 64) _mm_prefetch(s.data + o, _MM_HINT_T0);
    prefetched_bytes.fetch_add(end - offset, std::memory_order_relaxed);
    offset = end;
    if (offset >= s.bytes) {
      ++index;
      offset = 0;
    }
    return true;
  }
};

struct Helpers {
  int size = 0;
  Prefetcher prefetcher;  // here, not global: a child after fork() starts from a fresh one
  std::mutex job_mutex;
  std::shared_ptr<Job> job;  // the latest offer (null after a poke)
  std::atomic<uint32_t> offer_seq{0};
  std::atomic<int> polling{0};   // helpers within their poll_ns() window now
  std::atomic<int> sleeping{0};  // helpers asleep on offer_seq

  void offer(std::shared_ptr<Job> j) {
    {
      std::lock_guard<std::mutex> lock(job_mutex);
      job = std::move(j);
    }
    offer_seq.fetch_add(1);
    if (sleeping.load() > 0) offer_seq.notify_all();
  }

  void run_helper(int index) {
    uint32_t seen = offer_seq.load();
    const int64_t window = poll_ns();
    PrefetchCursor cursor{prefetcher};
    while (true) {
      polling.fetch_add(1);
      int64_t deadline = now_ns() + window;
      for (int i = 0; offer_seq.load(std::memory_order_relaxed) == seen; ++i) {
        // Prefetching restarts the window: the gap between two tokens (Python, sampling) is
        // longer than the window, and the first layers' weights are fetched in it (0.84x of
        // no prefetch per token against 0.91x without the restart, NOTES 2026-12-05). Plans
        // come only from two-thread calls, and each is at most the budget.
        if (index == 0 && cursor.step()) {
          deadline = now_ns() + window;
          continue;
        }
        _mm_pause();
        if ((i & 63) != 63) continue;
        if (now_ns() > deadline) break;
        // Another runnable thread on this core (torch's OpenMP workers between our calls, a
        // neighbour) runs now instead of this poll.
        sched_yield();
      }
      polling.fetch_sub(1);
      if (offer_seq.load() == seen) {
        sleeping.fetch_add(1);
        // The offer may have come between the check and the increment: wait returns at once
        // when the value differs from `seen`.
        offer_seq.wait(seen);
        sleeping.fetch_sub(1);
        continue;
      }
      seen = offer_seq.load();
      std::shared_ptr<Job> j;
      {
        std::lock_guard<std::mutex> lock(job_mutex);
        j = job;
      }
      if (!j) continue;
      const int worker = j->next_worker.fetch_add(1);
      if (worker < j->max_workers) j->work(worker);
    }
  }
};
std::mutex helpers_mutex;
std::atomic<Helpers*> helpers_now{nullptr};

Helpers& helpers() {
  std::lock_guard<std::mutex> lock(helpers_mutex);
  if (helpers_now.load() == nullptr) {
    static const bool registered = [] {
      pthread_atfork(nullptr, nullptr, [] { helpers_now = nullptr; });  // leaks the parent's, on purpose
      return true;
    }();
    (void)registered;
    (void)poll_ns();  // a bad INT8KERN_CPU_POLL_US throws here, not in a helper thread
    (void)prefetch_budget();  // and a bad INT8KERN_CPU_PREFETCH_KB
    auto* h = new Helpers;
    h->size = static_cast<int>(std::max<int64_t>(1, cpu_budget().threads - 1));
    for (int t = 0; t < h->size; ++t) std::thread([h, t] { h->run_helper(t); }).detach();
    helpers_now.store(h);
  }
  return *helpers_now.load();
}

}  // namespace

CpuBudget compute_cpu_budget(const std::string& root, const char* override_value, int64_t affinity) {
  CpuBudget b;
  b.affinity_cpus = std::max<int64_t>(1, affinity);
  b.quota_cpus = cgroup_quota_cpus(root);
  if (override_value != nullptr) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(override_value, &end, 10);
    TORCH_CHECK(end != override_value && *end == '\0' && errno == 0 && v >= 1 && v <= 4096,
                "int8kern: INT8KERN_NUM_THREADS must be a whole number of threads from 1 to 4096, got '",
                override_value, "'");
    b.override_threads = v;
    b.threads = v;
    return b;
  }
  b.threads = b.affinity_cpus;
  // A fractional quota rounds down: 1.5 CPUs on 2 threads gets throttled for the rest of each
  // period once the quota is spent, which is the wait this file exists to avoid.
  if (b.quota_cpus > 0.0) b.threads = std::min<int64_t>(b.threads, std::max<int64_t>(1, std::floor(b.quota_cpus)));
  return b;
}

const CpuBudget& cpu_budget() {
  static const CpuBudget budget = compute_cpu_budget("", std::getenv("INT8KERN_NUM_THREADS"), affinity_cpus());
  return budget;
}

namespace {
std::atomic<int> threads_set_at_run_time{0};  // set_cpu_threads(); 0: not set
}  // namespace

void set_cpu_threads(int64_t n) {
  TORCH_CHECK(n >= 0 && n <= 4096, "int8kern.set_num_threads: n must be 0 (back to the default) or a whole number "
              "of threads from 1 to 4096, got ", n);
  threads_set_at_run_time.store(static_cast<int>(n), std::memory_order_relaxed);
}

int cpu_threads() {
  const int set = threads_set_at_run_time.load(std::memory_order_relaxed);
  if (set > 0) return set;
  const CpuBudget& b = cpu_budget();
  if (b.override_threads > 0) return static_cast<int>(b.override_threads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), b.threads)));
}

int64_t parallel_regions() { return regions_offered.load(); }
int64_t parallel_stalls() { return stalls_seen.load(); }

void reset_parallel_backoff() {
  serial_until_ns.store(0);
  backoff_ns.store(kMinBackoffNs);
}

void prefetch_after_stream(const void* data, int64_t bytes) {
  const int64_t budget = prefetch_budget();
  Helpers* h = helpers_now.load(std::memory_order_acquire);
  // One thread: the user gave us one core; a helper polling still (its window after the last
  // two-thread call) finishes the plan it has and gets no more.
  if (budget == 0 || h == nullptr || cpu_threads() < 2) return;
  Prefetcher& pf = h->prefetcher;
  const Stream done{static_cast<const char*>(data), bytes};
  std::lock_guard<std::mutex> lock(pf.mutex);
  auto& follower = pf.follower;
  if (follower.size() >= kMaxRememberedStreams) follower.clear();
  if (pf.latest.data != nullptr && pf.latest.data != done.data) follower[pf.latest.data] = done;
  pf.latest = done;
  if (h->polling.load(std::memory_order_relaxed) == 0) return;  // asleep: learn the order only
  int n = 0;
  int64_t planned = 0;
  for (const char* at = done.data; n < kMaxPlannedStreams && planned < budget;) {
    const auto next = follower.find(at);
    if (next == follower.end() || next->second.data == done.data) break;  // not known, or round again
    Stream s = next->second;
    s.bytes = std::min(s.bytes, budget - planned);
    pf.plan[n++] = s;
    planned += s.bytes;
    at = s.data;
  }
  pf.plan_size = n;
  pf.plan_seq.fetch_add(1, std::memory_order_release);
}

void set_prefetch_bytes(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "int8kern._set_cpu_prefetch_bytes: bytes must be >= 0, got ", bytes);
  prefetch_bytes.store(bytes, std::memory_order_relaxed);
}

void parallel_chunks(int64_t n, int64_t grain, int64_t work, const ChunkFn& fn, int max_workers) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t n_chunks = (n + grain - 1) / grain;
  const int max_threads = max_workers > 0 ? max_workers : cpu_threads();
  if (inside_chunk || at::in_parallel_region() || n_chunks < 2 || max_threads < 2 ||
      work < kMinParallelWorkPolled || (work < kMinParallelWork && poll_ns() == 0) ||
      now_ns() < serial_until_ns.load(std::memory_order_relaxed)) {
    fn(0, 0, n);
    return;
  }
  Helpers& h = helpers();
  if (work < kMinParallelWork && h.polling.load() == 0) {
    // Too small to wait for a sleeping helper: run it here, and poke the helpers so that the
    // calls that follow find them polling (see Helpers). A poked helper that finds no idle
    // core polls on this one: the caller preempted during the call is a stall, as below.
    if (h.sleeping.load() == 0) {
      fn(0, 0, n);
      return;
    }
    const int64_t preempted_before = preemptions_of_this_thread();
    h.offer(nullptr);
    fn(0, 0, n);
    if (preemptions_of_this_thread() > preempted_before) back_off();
    return;
  }
  const int threads = static_cast<int>(std::min<int64_t>(max_threads, n_chunks));
  auto job = std::make_shared<Job>();
  job->n = n;
  job->grain = grain;
  job->n_chunks = n_chunks;
  job->fn = &fn;
  job->max_workers = threads;
  h.offer(job);
  regions_offered.fetch_add(1);
  const int64_t preempted_before = preemptions_of_this_thread();
  const int64_t start = now_ns();
  const int64_t own_chunks = job->work(0);
  const int64_t own_end = now_ns();
  // Every chunk is claimed; wait for those still running on a helper. Spin first (a chunk
  // takes microseconds), then sleep on the counter so that this core is free for the helper.
  for (int spin = 0; spin < 4096 && job->done_chunks.load() < n_chunks; ++spin) _mm_pause();
  for (int64_t d; (d = job->done_chunks.load()) < n_chunks;) job->done_chunks.wait(d);
  const int64_t waited = now_ns() - own_end;
  // A stall: a long wait for a helper, or the caller itself preempted (waking a helper on a
  // core that is not idle puts it in line with whatever else runs there; the caller then
  // waits for its turn behind other processes, for a whole time slice of theirs).
  const bool preempted = preemptions_of_this_thread() > preempted_before;
  if (preempted || waited > kStallSlackNs + 2 * (own_end - start) / std::max<int64_t>(1, own_chunks)) {
    back_off();
  } else if (own_chunks < n_chunks) {  // a helper did its share, in time
    backoff_ns.store(std::max(kMinBackoffNs, backoff_ns.load() / 2));
  }
  if (job->error) std::rethrow_exception(job->error);
}

std::atomic<int64_t> openmp_regions{0};

int64_t openmp_team_regions() { return openmp_regions.load(); }

void parallel_chunks_large(int64_t n, int64_t grain, int64_t work, const ChunkFn& fn) {
  grain = std::max<int64_t>(1, grain);
  const int64_t n_chunks = n > 0 ? (n + grain - 1) / grain : 0;
  const int threads = static_cast<int>(std::min<int64_t>(cpu_threads(), n_chunks));
  if (work < kOpenMpTeamWork || threads < 2 || at::get_num_threads() < threads || inside_chunk ||
      at::in_parallel_region() || now_ns() < serial_until_ns.load(std::memory_order_relaxed)) {
    parallel_chunks(n, grain, work, fn);
    return;
  }
  openmp_regions.fetch_add(1);
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel num_threads(threads)
  {
    inside_chunk = true;  // a nested call runs serially, as on a helper
    const int worker = omp_get_thread_num();
    for (int64_t c; (c = next.fetch_add(1)) < n_chunks;) {
      try {
        fn(worker, c * grain, std::min(n, (c + 1) * grain));
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
    inside_chunk = false;
  }
  if (error) std::rethrow_exception(error);
}

namespace {

// int8kern.get_num_threads / set_num_threads wrap the first two; the rest are for the tests
// and benchmarks.
int64_t cpu_threads_op() { return cpu_threads(); }
void set_cpu_threads_op(int64_t n) { set_cpu_threads(n); }

std::tuple<int64_t, double, int64_t, int64_t> cpu_budget_op() {
  const CpuBudget& b = cpu_budget();
  return {b.threads, b.quota_cpus, b.affinity_cpus, b.override_threads};
}

std::tuple<int64_t, double, int64_t, int64_t> cpu_budget_from_op(std::string root,
                                                                  std::optional<std::string> override_value,
                                                                  int64_t affinity) {
  const CpuBudget b = compute_cpu_budget(root, override_value ? override_value->c_str() : nullptr, affinity);
  return {b.threads, b.quota_cpus, b.affinity_cpus, b.override_threads};
}

int64_t parallel_regions_op() { return parallel_regions(); }
int64_t parallel_stalls_op() { return parallel_stalls(); }
int64_t openmp_team_regions_op() { return openmp_team_regions(); }
void set_prefetch_bytes_op(int64_t bytes) { set_prefetch_bytes(bytes); }
int64_t prefetched_bytes_op() { return prefetched_bytes.load(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8kern, m) {
  // Threads the CPU kernels use now.
  m.def("_cpu_threads() -> int", &cpu_threads_op);
  // set_cpu_threads() (parallel.h).
  m.def("_set_cpu_threads(int n) -> ()", &set_cpu_threads_op);
  // The process's cached budget: (threads, quota_cpus, affinity_cpus, override_threads).
  m.def("_cpu_budget() -> (int, float, int, int)", &cpu_budget_op);
  // The same computed from a file tree laid out like / (tests).
  m.def("_cpu_budget_from(str root, str? override_value, int affinity_cpus) -> (int, float, int, int)",
        &cpu_budget_from_op);
  // parallel_regions() (parallel.h).
  m.def("_cpu_parallel_regions() -> int", &parallel_regions_op);
  // parallel_stalls() (parallel.h).
  m.def("_cpu_parallel_stalls() -> int", &parallel_stalls_op);
  // reset_parallel_backoff() (parallel.h).
  m.def("_cpu_reset_parallel_backoff() -> ()", &reset_parallel_backoff);
  // openmp_team_regions() (parallel.h).
  m.def("_cpu_openmp_team_regions() -> int", &openmp_team_regions_op);
  // set_prefetch_bytes() (parallel.h).
  m.def("_set_cpu_prefetch_bytes(int bytes) -> ()", &set_prefetch_bytes_op);
  // Bytes the helpers have prefetched since the process started.
  m.def("_cpu_prefetched_bytes() -> int", &prefetched_bytes_op);
}

}  // namespace cpu
}  // namespace int8kern
