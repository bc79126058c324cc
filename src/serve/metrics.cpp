// Prometheus text exposition of the server's metrics. Names carry the nibble_ prefix and
// Prometheus' unit suffixes (_total, _seconds).
#include "serve/metrics.h"

#include <algorithm>
#include <cstdio>

namespace nibble::serve {

namespace {

std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

void header(std::string& out, const std::string& name, const char* type, const std::string& help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}

void Histogram::observe(double v) {
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::write(std::string& out, const std::string& name, const std::string& help) const {
  header(out, name, "histogram", help);
  std::lock_guard lock(mu_);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : ttft_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      token_latency_({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      batch_hist_({1, 2, 4, 8, 16, 32, 64, 128}) {}

void Metrics::on_request(int status) {
  std::lock_guard lock(mu_);
  for (auto& [s, n] : requests_by_status_)
    if (s == status) return void(++n);
  requests_by_status_.emplace_back(status, 1);
  std::sort(requests_by_status_.begin(), requests_by_status_.end());
}

void Metrics::observe_batch_size(size_t n) {
  batch_size_ = n;
  batch_hist_.observe(double(n));
}

std::string Metrics::prometheus() const {
  std::string out;
  header(out, "nibble_requests_total", "counter", "generation requests answered, by HTTP status");
  {
    std::lock_guard lock(mu_);
    for (auto& [s, n] : requests_by_status_)
      out += "nibble_requests_total{status=\"" + std::to_string(s) + "\"} " + std::to_string(n) + "\n";
  }
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    header(out, name, "counter", help);
    out += std::string(name) + " " + std::to_string(v) + "\n";
  };
  auto gauge = [&](const char* name, const char* help, uint64_t v) {
    header(out, name, "gauge", help);
    out += std::string(name) + " " + std::to_string(v) + "\n";
  };
  counter("nibble_prompt_tokens_total", "prompt tokens prefilled", tokens_in_);
  counter("nibble_generated_tokens_total", "tokens generated", tokens_out_);
  counter("nibble_sequences_finished_total", "sequences that finished (eos, stop, length)", finished_);
  counter("nibble_sequences_cancelled_total", "sequences cancelled (client gone, shutdown)", cancelled_);
  gauge("nibble_queue_depth", "requests waiting for a slot", queue_depth_);
  gauge("nibble_batch_size", "sequences in the last decode step", batch_size_);
  gauge("nibble_http_connections", "open HTTP connections (idle ones included)", connections_);
  gauge("nibble_http_buffered_bytes", "bytes of requests still arriving, held by the connection loop",
        buffered_);
  counter("nibble_http_connections_refused_total", "connections refused with 503: --max-connections reached",
          refused_);
  counter("nibble_http_request_timeouts_total",
          "requests dropped with 408: head or body slower than --header-timeout / --timeout", timeouts_);
  batch_hist_.write(out, "nibble_decode_batch_size", "sequences per decode step");
  ttft_.write(out, "nibble_time_to_first_token_seconds", "from queueing to the first generated token");
  token_latency_.write(out, "nibble_inter_token_latency_seconds", "between two tokens of one sequence");
  return out;
}

}  // namespace nibble::serve
