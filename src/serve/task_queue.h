// The server's worker threads. The connection loop (event_loop.h) gives a worker a connection
// only once a whole request has arrived on it; the worker holds it while it answers (for a
// generation request: while the answer is generated and streamed), then gives it back. Workers
// are needed for requests in flight, not for open connections. ElasticPool starts a thread
// whenever a request arrives and none is free, up to max_threads, and lets threads that stay
// idle for a while exit.
#pragma once

#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace nibble::serve {

class ElasticPool : public httplib::TaskQueue {
 public:
  explicit ElasticPool(size_t max_threads, std::chrono::seconds idle_exit = std::chrono::seconds(30));
  ~ElasticPool() override;
  void enqueue(std::function<void()> fn) override;
  void shutdown() override;  // runs what is queued, joins every thread

 private:
  void worker();
  const size_t max_threads_;
  const std::chrono::seconds idle_exit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  size_t idle_ = 0, live_ = 0;
  bool shutdown_ = false;
  std::vector<std::thread> threads_;     // every thread started (joined at shutdown)
  std::vector<std::thread::id> exited_;  // threads that returned, to join and drop
  void reap();                           // joins exited threads; mu_ held
};

}  // namespace nibble::serve
