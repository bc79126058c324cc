// Continuous batching: one thread owns the model and runs, per iteration, one prefill chunk of
// the oldest newcomer and one decode step (CausalLM::decode_batch) of every running sequence.
// Requests join the batch when a slot (a KV cache) is free and leave it when they finish or are
// cancelled, between two steps; the others never wait longer than one prefill chunk.
//
//   Scheduler s(model, {.parallel = 4}, metrics);
//   auto job = std::make_shared<Job>(prompt, params, options);
//   if (!s.submit(job)) ... queue full (503);
//   for (Job::Update u; !(u = job->wait(100ms)).done;) stream u.tokens;
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "nibble/generate.h"

namespace nibble {
class CausalLM;
class KVCache;
}  // namespace nibble

namespace nibble::serve {

class Metrics;
using Clock = std::chrono::steady_clock;

// One request inside the scheduler. The HTTP thread creates it, waits on it and may cancel it;
// the scheduler thread appends tokens and finishes it. Everything shared sits behind mu_.
class Job {
 public:
  Job(std::vector<int64_t> prompt, const DecodingParams& params, const GenerateOptions& options);

  struct Update {
    std::vector<int64_t> tokens;  // new since the previous wait()
    bool done = false;
    FinishReason reason = FinishReason::Length;
    bool cancelled = false;  // ended by cancel() or by the server stopping
    std::string error;       // the model threw: what()
  };
  // Blocks until new tokens, the end, or the timeout; returns what arrived.
  Update wait(std::chrono::milliseconds timeout);
  void cancel() { cancel_requested_.store(true); }
  bool cancel_requested() const { return cancel_requested_.load(); }
  size_t prompt_length() const { return prompt_.size(); }

 private:
  friend class Scheduler;
  void push(int64_t token);
  void finish(FinishReason r, bool cancelled, std::string error = {});

  // Set before submit, read by the scheduler thread only.
  std::vector<int64_t> prompt_;
  DecodingParams params_;
  GenerateOptions options_;
  Clock::time_point submitted_;

  std::atomic<bool> cancel_requested_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int64_t> pending_;  // pushed, not yet taken by wait()
  bool done_ = false, cancelled_ = false;
  FinishReason reason_ = FinishReason::Length;
  std::string error_;
};

struct SchedulerOptions {
  int parallel = 4;             // KV cache slots: sequences decoding at once
  int max_queue = 64;           // requests waiting for a slot; submit() refuses beyond it
  int64_t prefill_chunk = 256;  // prompt tokens per prefill step
};

class Scheduler {
 public:
  Scheduler(const CausalLM& model, const SchedulerOptions& o, Metrics& metrics);
  ~Scheduler();  // stop(0)
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues the job; false when the queue is full or the scheduler is stopping.
  bool submit(const std::shared_ptr<Job>& job);
  // Refuses new jobs, lets queued and running ones finish for up to `grace`, cancels the rest,
  // joins the thread. Idempotent.
  void stop(std::chrono::milliseconds grace);
  size_t queued() const;
  size_t running() const;

 private:
  struct Slot;
  void loop();
  bool admit();  // moves queued jobs into free slots; false when nothing is left to do
  void prefill_one();
  void decode_step();
  void emit(Slot& s, int64_t token);
  void release(Slot& s);

  const CausalLM& model_;
  const SchedulerOptions opt_;
  Metrics& metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool accepting_ = true, draining_ = false, cancel_all_ = false, stop_called_ = false;
  std::atomic<size_t> running_{0};

  std::vector<std::unique_ptr<Slot>> slots_;  // scheduler thread only
  std::thread thread_;
};

}  // namespace nibble::serve
