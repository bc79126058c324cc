// The server's counters and histograms, written by the scheduler and HTTP threads, read as
// Prometheus text exposition (GET /metrics).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace nibble::serve {

// A cumulative histogram with fixed upper bounds, Prometheus style (le buckets, sum, count).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // "name_bucket{le=...} n" lines, then name_sum and name_count.
  void write(std::string& out, const std::string& name, const std::string& help) const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // [bounds + 1]: the last one is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void on_request(int status);  // one finished HTTP request to a generation endpoint
  void on_tokens_in(size_t n) { tokens_in_ += n; }
  void on_tokens_out(size_t n) { tokens_out_ += n; }
  void on_finished() { ++finished_; }
  void on_cancelled() { ++cancelled_; }
  void set_queue_depth(size_t n) { queue_depth_ = n; }
  void set_connections(size_t n) { connections_ = n; }  // open HTTP connections
  void set_buffered_bytes(size_t n) { buffered_ = n; }  // request bytes the connection loop holds
  void on_connection_refused() { ++refused_; }          // past --max-connections
  void on_request_timeout() { ++timeouts_; }            // a request that arrived too slowly
  void observe_batch_size(size_t n);
  void observe_ttft(double seconds) { ttft_.observe(seconds); }
  void observe_token_latency(double seconds) { token_latency_.observe(seconds); }
  std::string prometheus() const;  // text format 0.0.4

 private:
  std::atomic<uint64_t> tokens_in_{0}, tokens_out_{0}, finished_{0}, cancelled_{0}, refused_{0}, timeouts_{0};
  std::atomic<size_t> queue_depth_{0}, batch_size_{0}, connections_{0}, buffered_{0};
  mutable std::mutex mu_;
  std::vector<std::pair<int, uint64_t>> requests_by_status_;
  Histogram ttft_, token_latency_, batch_hist_;
};

}  // namespace nibble::serve
