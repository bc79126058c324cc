// The scheduler thread. Each iteration: take cancellations, admit queued jobs into free slots,
// run one prefill chunk (the oldest job still prefilling), then one decode_batch step of every
// slot that has a token to feed. Sampling and stopping are SequenceDecoder's (src/generate), so
// a request decodes exactly as generate() would decode it alone.
#include "serve/scheduler.h"

#include <algorithm>
#include <cstring>

#include "models/causal_lm_impl.h"  // KVCache must be complete to own one
#include "nibble/error.h"
#include "nibble/model.h"
#include "serve/metrics.h"

namespace nibble::serve {

Job::Job(std::vector<int64_t> prompt, const DecodingParams& params, const GenerateOptions& options)
    : prompt_(std::move(prompt)), params_(params), options_(options) {
  if (prompt_.empty()) throw ShapeError("serve: empty prompt");
}

Job::Update Job::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return done_ || !pending_.empty(); });
  Update u;
  u.tokens.swap(pending_);
  u.done = done_;
  u.reason = reason_;
  u.cancelled = cancelled_;
  u.error = error_;
  return u;
}

void Job::push(int64_t token) {
  {
    std::lock_guard lock(mu_);
    pending_.push_back(token);
  }
  cv_.notify_all();
}

void Job::finish(FinishReason r, bool cancelled, std::string error) {
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    reason_ = r;
    cancelled_ = cancelled;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

struct Scheduler::Slot {
  std::shared_ptr<Job> job;  // null: free
  std::unique_ptr<KVCache> cache;
  std::optional<SequenceDecoder> decoder;
  size_t prefilled = 0;     // prompt tokens already in the cache
  int64_t next_input = -1;  // the token the next decode step feeds; -1 while prefilling
  Clock::time_point last_token;
  bool first_token = true;
};

Scheduler::Scheduler(const CausalLM& model, const SchedulerOptions& o, Metrics& metrics)
    : model_(model), opt_(o), metrics_(metrics) {
  if (o.parallel < 1) throw ConfigError(detail::str("serve: --parallel must be >= 1, got ", o.parallel));
  if (o.max_queue < 0) throw ConfigError(detail::str("serve: queue size must be >= 0, got ", o.max_queue));
  if (o.prefill_chunk < 1)
    throw ConfigError(detail::str("serve: prefill chunk must be >= 1, got ", o.prefill_chunk));
  for (int i = 0; i < o.parallel; ++i) slots_.push_back(std::make_unique<Slot>());
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  stop(std::chrono::milliseconds(0));
}

bool Scheduler::submit(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard lock(mu_);
    if (!accepting_ || queue_.size() >= size_t(opt_.max_queue)) return false;
    job->submitted_ = Clock::now();
    queue_.push_back(job);
    metrics_.set_queue_depth(queue_.size());
  }
  cv_.notify_all();
  return true;
}

size_t Scheduler::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

size_t Scheduler::running() const {
  return running_.load();
}

void Scheduler::stop(std::chrono::milliseconds grace) {
  std::unique_lock lock(mu_);
  if (stop_called_) return;
  stop_called_ = true;
  accepting_ = false;
  draining_ = true;
  cv_.notify_all();
  // The loop exits by itself once the queue and the slots are empty; past the grace period
  // it cancels whatever is left.
  if (!cv_.wait_for(lock, grace, [&] { return queue_.empty() && running_.load() == 0; })) cancel_all_ = true;
  cv_.notify_all();
  lock.unlock();
  thread_.join();
}

void Scheduler::release(Slot& s) {
  s.job.reset();
  s.cache.reset();
  s.decoder.reset();
  s.prefilled = 0;
  s.next_input = -1;
  running_.fetch_sub(1);
}

bool Scheduler::admit() {
  std::unique_lock lock(mu_);
  for (;;) {
    if (cancel_all_) {
      for (auto& j : queue_) j->finish(FinishReason::Callback, /*cancelled=*/true);
      queue_.clear();
    }
    // Cancelled before they got a slot: drop them now.
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->cancel_requested()) {
        metrics_.on_cancelled();  // counted before the client can see the end
        (*it)->finish(FinishReason::Callback, true);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& s : slots_) {
      if (s->job || queue_.empty()) continue;
      s->job = std::move(queue_.front());
      queue_.pop_front();
      s->cache = model_.new_cache();
      s->decoder.emplace(s->job->params_, s->job->prompt_, s->job->options_);
      s->first_token = true;
      running_.fetch_add(1);
    }
    metrics_.set_queue_depth(queue_.size());
    const bool busy = running_.load() > 0;
    if (busy) return true;
    if (draining_ && queue_.empty()) {
      cv_.notify_all();  // stop() waits for this
      return false;
    }
    cv_.wait(lock, [&] { return !queue_.empty() || draining_; });
  }
}

void Scheduler::emit(Slot& s, int64_t token) {
  const Clock::time_point now = Clock::now();
  if (s.first_token) {
    metrics_.observe_ttft(std::chrono::duration<double>(now - s.job->submitted_).count());
    s.first_token = false;
  } else {
    metrics_.observe_token_latency(std::chrono::duration<double>(now - s.last_token).count());
  }
  s.last_token = now;
  metrics_.on_tokens_out(1);
  s.job->push(token);
  if (s.decoder->done()) {
    metrics_.on_finished();  // counted before the client can see the end (and read /metrics)
    s.job->finish(s.decoder->finish_reason(), false);
    release(s);
  } else {
    s.next_input = token;
  }
}

void Scheduler::prefill_one() {
  // The slot whose job was submitted first among those still prefilling.
  Slot* pick = nullptr;
  for (auto& s : slots_)
    if (s->job && s->next_input < 0 && (!pick || s->job->submitted_ < pick->job->submitted_)) pick = s.get();
  if (!pick) return;
  Slot& s = *pick;
  const std::vector<int64_t>& prompt = s.job->prompt_;
  const size_t n = std::min<size_t>(prompt.size() - s.prefilled, size_t(opt_.prefill_chunk));
  const std::vector<int64_t> chunk(prompt.begin() + int64_t(s.prefilled),
                                   prompt.begin() + int64_t(s.prefilled + n));
  // The head runs on the chunk's last position only, and only the final chunk's result is used:
  // its argmax found where the model ran when the sequence is greedy with no processor, else its
  // logits [1, vocab] on the host for the processors.
  const bool last_chunk = s.prefilled + n == prompt.size(), argmax = last_chunk && s.decoder->argmax_only();
  int64_t best = -1;
  Tensor logits;
  if (argmax)
    best = model_.forward_last_argmax(chunk, s.cache.get());
  else
    logits = model_.forward_last(chunk, s.cache.get());
  s.prefilled += n;
  metrics_.on_tokens_in(n);
  if (!last_chunk) return;
  if (argmax) return emit(s, s.decoder->accept(best));
  std::vector<float> last(logits.data<float>(), logits.data<float>() + logits.size(1));
  emit(s, s.decoder->step(last));
}

void Scheduler::decode_step() {
  std::vector<Slot*> batch;
  std::vector<int64_t> tokens;
  std::vector<KVCache*> caches;
  for (auto& s : slots_) {
    if (!s->job || s->next_input < 0) continue;
    batch.push_back(s.get());
    tokens.push_back(s->next_input);
    caches.push_back(s->cache.get());
  }
  if (batch.empty()) return;
  metrics_.observe_batch_size(batch.size());
  const bool argmax =
      std::all_of(batch.begin(), batch.end(), [](const Slot* s) { return s->decoder->argmax_only(); });
  if (argmax) {  // every sequence greedy with no processor: B ids cross back instead of [B, vocab] logits
    const std::vector<int64_t> best = model_.decode_batch_argmax(tokens, caches);
    for (size_t b = 0; b < batch.size(); ++b) emit(*batch[b], batch[b]->decoder->accept(best[b]));
    return;
  }
  Tensor logits = model_.decode_batch(tokens, caches);  // [B, vocab]
  const int64_t V = logits.size(1);
  for (size_t b = 0; b < batch.size(); ++b) {
    float* row = logits.data<float>() + int64_t(b) * V;
    emit(*batch[b], batch[b]->decoder->step(std::span<float>(row, size_t(V))));
  }
}

void Scheduler::loop() {
  while (admit()) {
    bool cancel_all;
    {
      std::lock_guard lock(mu_);
      cancel_all = cancel_all_;
    }
    for (auto& s : slots_) {
      if (s->job && (cancel_all || s->job->cancel_requested())) {
        metrics_.on_cancelled();
        s->job->finish(FinishReason::Callback, true);
        release(*s);
      }
    }
    try {
      prefill_one();
      decode_step();
    } catch (const std::exception& e) {
      // A model failure fails the running requests, not the server.
      for (auto& s : slots_) {
        if (!s->job) continue;
        s->job->finish(FinishReason::Callback, false, e.what());
        release(*s);
      }
    }
  }
}

}  // namespace nibble::serve
