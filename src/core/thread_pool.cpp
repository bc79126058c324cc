// The global CPU thread pool: workers wait on a condition variable for a job (a chunked range),
// claim chunks with an atomic counter, and the caller works too.
#include "nibble/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace nibble {

namespace {

// One parallel region: its own chunk counter, so a worker still finishing an old job can
// never claim chunks of a newer one.
struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, chunks;
  std::atomic<int64_t> next{0};
  int64_t done = 0;  // guarded by Pool::mu_
  std::exception_ptr error;
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
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { loop(); });
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
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = job;
      ++generation_;
    }
    cv_.notify_all();
    work(*job);
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return job->done == job->chunks; });
    job_.reset();
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void loop() {
    in_region_ = true;  // a worker is always inside some region
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || (job_ && generation_ != seen); });
        if (stopping_) return;
        seen = generation_;
        job = job_;
      }
      work(*job);
    }
  }

  void work(Job& job) {
    for (;;) {
      int64_t c = job.next.fetch_add(1);
      if (c >= job.chunks) return;
      int64_t b = job.n * c / job.chunks, e = job.n * (c + 1) / job.chunks;
      std::exception_ptr err;
      try {
        (*job.fn)(b, e);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(mu_);
      if (err && !job.error) job.error = err;
      if (++job.done == job.chunks) done_cv_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  bool stopping_ = false;
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
