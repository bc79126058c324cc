// The global CPU thread pool: a job (a chunked range) is published by bumping a generation
// counter; workers claim chunks with an atomic counter and the caller works too. Decode runs
// a few hundred short parallel regions per token, so waking a worker through a condition
// variable (tens of microseconds, more than a small GEMV takes) would dominate: workers and
// the waiting caller spin on the counters (yielding between polls) for a short while (kSpin)
// before they block.
#include "nibble/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace nibble {

namespace {

// How long an idle worker (or a caller waiting for the last chunks) polls before it sleeps:
// longer than the gap between two regions of a decode step, short enough that a pool left
// idle gives its cores back at once.
constexpr std::chrono::microseconds kSpin{250};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls ready() until it holds or kSpin has passed; true if it holds.
template <class F>
bool spin_until(F ready) {
  if (ready()) return true;
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - start > kSpin) return ready();
    // On a machine with more runnable threads than cores, hand the core to them meanwhile
    // (among them this pool's caller, when a worker spins); on an idle one this returns at once.
    std::this_thread::yield();
  }
}

// One parallel region: its own chunk counter, so a worker still finishing an old job can
// never claim chunks of a newer one.
struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, chunks;
  alignas(64) std::atomic<int64_t> next{0};
  alignas(64) std::atomic<int64_t> done{0};
  std::mutex error_mu;
  std::exception_ptr error;  // guarded by error_mu
};

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    stop();
    stopping_ = false;
    // A worker starts from the generation of now: a job published before it runs is still new to it.
    const uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, gen] { loop(gen); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    int64_t max_chunks = (n + grain - 1) / grain;
    // Nested calls (from a worker, or from the caller while it runs chunks) run serially:
    // the caller holds run_mu_, so a nested region could never start anyway.
    if (max_chunks <= 1 || workers_.empty() || in_region_) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    struct RegionFlag {
      RegionFlag() { in_region_ = true; }
      ~RegionFlag() { in_region_ = false; }
    } region_flag;
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->chunks = std::min<int64_t>(max_chunks, int64_t(size()) * 4);
    bool wake;
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = job;
      generation_.fetch_add(1, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    work(*job);
    const auto all_done = [&] { return job->done.load(std::memory_order_acquire) == job->chunks; };
    if (!spin_until(all_done)) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, all_done);
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_.reset();
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void loop(uint64_t seen) {
    in_region_ = true;  // a worker is always inside some region
    for (;;) {
      const auto fresh = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      std::shared_ptr<Job> job;
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lk(mu_);
        ++sleepers_;
        cv_.wait(lk, [&] { return stopping_ || fresh(); });
        --sleepers_;
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (stopping_) return;
        seen = generation_.load(std::memory_order_relaxed);
        job = job_;
      }
      if (job) work(*job);
    }
  }

  void work(Job& job) {
    for (;;) {
      int64_t c = job.next.fetch_add(1, std::memory_order_relaxed);
      if (c >= job.chunks) return;
      int64_t b = job.n * c / job.chunks, e = job.n * (c + 1) / job.chunks;
      try {
        (*job.fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lk(job.error_mu);
        if (!job.error) job.error = std::current_exception();
      }
      if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
        std::lock_guard<std::mutex> lk(mu_);  // the caller checks done under mu_ before it sleeps
        done_cv_.notify_all();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::shared_ptr<Job> job_;                // guarded by mu_
  std::atomic<uint64_t> generation_{0};     // bumped (under mu_) for each job and at stop
  int sleepers_ = 0;                        // workers blocked on cv_; guarded by mu_
  bool stopping_ = false;                   // guarded by mu_
  static thread_local bool in_region_;  // this thread is a worker or is running a region's chunks
};

thread_local bool Pool::in_region_ = false;

int default_threads() {
  if (const char* e = std::getenv("NIBBLE_NUM_THREADS")) {
    int n = std::atoi(e);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) { pool().resize(n > 0 ? n : default_threads()); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

}  // namespace nibble
