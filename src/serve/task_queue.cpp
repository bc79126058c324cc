// ElasticPool: a thread per busy connection, started on demand; see task_queue.h.
#include "serve/task_queue.h"

#include <algorithm>

namespace nibble::serve {

ElasticPool::ElasticPool(size_t max_threads, std::chrono::seconds idle_exit)
    : max_threads_(std::max<size_t>(1, max_threads)), idle_exit_(idle_exit) {}

ElasticPool::~ElasticPool() {
  shutdown();
}

void ElasticPool::enqueue(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  jobs_.push_back(std::move(fn));
  reap();
  // Every queued job needs a thread of its own: start one unless enough are idle.
  if (jobs_.size() > idle_ && live_ < max_threads_) {
    ++live_;
    threads_.emplace_back([this] { worker(); });
  }
  cv_.notify_one();
}

void ElasticPool::shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    shutdown_ = true;
    threads.swap(threads_);
    exited_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads) t.join();
}

void ElasticPool::reap() {
  for (std::thread::id id : exited_) {
    auto it = std::find_if(threads_.begin(), threads_.end(),
                           [&](const std::thread& t) { return t.get_id() == id; });
    if (it != threads_.end()) {
      it->join();  // it has returned from worker(): joining does not block
      threads_.erase(it);
    }
  }
  exited_.clear();
}

void ElasticPool::worker() {
  std::unique_lock lock(mu_);
  for (;;) {
    ++idle_;
    const bool woke = cv_.wait_for(lock, idle_exit_, [&] { return !jobs_.empty() || shutdown_; });
    --idle_;
    if (jobs_.empty() && (shutdown_ || !woke)) {
      // Idle too long (or shutting down): exit; a later enqueue() joins this thread.
      --live_;
      if (!shutdown_) exited_.push_back(std::this_thread::get_id());
      return;
    }
    std::function<void()> fn = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    fn();
    lock.lock();
  }
}

}  // namespace nibble::serve
