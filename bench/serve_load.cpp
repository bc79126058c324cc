// serve_load: throughput and latency of an OpenAI-compatible server under concurrent streaming
// clients. Each level sends the same requests (greedy /v1/completions, streamed, usage included)
// from C clients at once: C = 1 is the same load sent one request at a time. Per level: requests/s,
// generated tokens/s, p50/p99 time to first token, p50/p99 time per output token (TPOT: a
// request's decode time over its tokens after the first), and the load average around the run.
//
//   serve_load MODEL [--parallel 8]        # starts `nibble serve` in-process on a free port
//   serve_load --url http://127.0.0.1:8080  # or measures a running server (llama-server too)
//   options: --concurrency 1,8,32 --requests 64 --max-tokens 64 --machine NAME   (JSON on stdout)
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nibble/model.h"
#include "nibble/thread_pool.h"
#include "nibble/tokenizer.h"
#include "serve/http_server.h"

using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

const char* kPrompts[] = {"Once upon a time",
                          "The little dog",
                          "Lily had a red ball",
                          "Tom and Sam went to the park",
                          "One day, a bird",
                          "The sun was hot",
                          "Mom said",
                          "There was a big tree"};

struct Sample {
  double ttft = 0;     // seconds from sending to the first text event
  double decode = 0;   // seconds from the first to the last text event
  int64_t events = 0;  // text events
  int64_t tokens = 0;  // usage.completion_tokens
  bool ok = false;
  // Time per output token after the first (TPOT): events can arrive in bursts when the client
  // reads late, so the per-request average says more than gaps between events.
  double tpot() const { return events > 1 ? decode / double(events - 1) : 0; }
};

Sample one_request(const std::string& host, int port, size_t i, int max_tokens) {
  httplib::Client c(host, port);
  c.set_read_timeout(300, 0);
  json body{{"model", "m"},
            {"prompt", kPrompts[i % std::size(kPrompts)]},
            {"max_tokens", max_tokens},
            {"temperature", 0},
            {"stream", true},
            {"stream_options", {{"include_usage", true}}}};
  Sample s;
  std::string buf;
  const Clock::time_point t0 = Clock::now();
  Clock::time_point last;
  bool first = true, done = false;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    buf.append(d, n);
    for (size_t end; (end = buf.find("\n\n")) != std::string::npos; buf.erase(0, end + 2)) {
      const std::string ev = buf.substr(0, end);
      if (ev.rfind("data: ", 0) != 0) continue;
      if (ev == "data: [DONE]") {
        done = true;
        continue;
      }
      const json j = json::parse(ev.substr(6), nullptr, false);
      if (!j.is_object()) continue;
      if (j.contains("usage") && j["usage"].is_object())
        s.tokens = j["usage"]["completion_tokens"].get<int64_t>();
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const json& ch = j["choices"][0];
      if (!ch.contains("text") || !ch["text"].is_string() || ch["text"].get<std::string>().empty()) continue;
      const Clock::time_point now = Clock::now();
      if (first)
        s.ttft = std::chrono::duration<double>(now - t0).count();
      else
        s.decode += std::chrono::duration<double>(now - last).count();
      ++s.events;
      first = false;
      last = now;
    }
    return true;
  };
  httplib::Result r = c.send(req);
  s.ok = r && r->status == 200 && done && !first;
  return s;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

json run_level(const std::string& host, int port, int concurrency, int requests, int max_tokens) {
  std::vector<Sample> samples(static_cast<size_t>(requests));
  std::atomic<int> next{0};
  const Clock::time_point t0 = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c)
    clients.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < requests;)
        samples[size_t(i)] = one_request(host, port, size_t(i), max_tokens);
    });
  for (auto& t : clients) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> ttft, tpot;
  int64_t tokens = 0;
  int failed = 0;
  for (const Sample& s : samples) {
    if (!s.ok) ++failed;
    ttft.push_back(s.ttft);
    if (s.events > 1) tpot.push_back(s.tpot());
    tokens += s.tokens;
  }
  return {{"concurrency", concurrency},
          {"requests", requests},
          {"failed", failed},
          {"wall_s", wall},
          {"requests_per_s", requests / wall},
          {"generated_tokens", tokens},
          {"tokens_per_s", double(tokens) / wall},
          {"ttft_p50_ms", pct(ttft, 0.5) * 1e3},
          {"ttft_p99_ms", pct(ttft, 0.99) * 1e3},
          {"tpot_p50_ms", pct(tpot, 0.5) * 1e3},
          {"tpot_p99_ms", pct(tpot, 0.99) * 1e3}};
}

json loadavg() {
  std::ifstream f("/proc/loadavg");
  double a = 0, b = 0, c = 0;
  f >> a >> b >> c;
  return {a, b, c};
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "?";
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, url, machine;
  std::vector<int> levels{1, 8, 32};
  int requests = 64, max_tokens = 64, parallel = 8;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--url")
      url = next();
    else if (a == "--requests")
      requests = std::stoi(next());
    else if (a == "--max-tokens")
      max_tokens = std::stoi(next());
    else if (a == "--parallel")
      parallel = std::stoi(next());
    else if (a == "--machine")
      machine = next();
    else if (a == "--concurrency") {
      levels.clear();
      std::stringstream ss(next());
      for (std::string x; std::getline(ss, x, ',');) levels.push_back(std::stoi(x));
    } else if (a.rfind("--", 0) != 0)
      model = a;
    else {
      std::fprintf(stderr, "serve_load: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (model.empty() == url.empty()) {
    std::fprintf(stderr,
                 "usage: serve_load MODEL [--parallel N] | --url http://HOST:PORT  [--concurrency 1,8,32] "
                 "[--requests N] [--max-tokens N] [--machine NAME]\n");
    return 2;
  }
  std::unique_ptr<nibble::CausalLM> m;
  std::unique_ptr<nibble::Tokenizer> tok;
  std::unique_ptr<nibble::serve::Server> server;
  std::string host = "127.0.0.1";
  int port = 0;
  if (!model.empty()) {
    m = std::make_unique<nibble::CausalLM>(nibble::AutoModelForCausalLM::from_pretrained(model));
    tok = std::make_unique<nibble::Tokenizer>(nibble::Tokenizer::from_pretrained(model));
    nibble::serve::ServerOptions o;
    o.port = 0;
    o.scheduler.parallel = parallel;
    o.scheduler.max_queue = 1024;
    server = std::make_unique<nibble::serve::Server>(o);
    server->start();
    server->attach(*m, *tok, nullptr);
    port = server->port();
  } else {
    const size_t colon = url.rfind(':');
    host = url.substr(url.find("//") + 2, colon - url.find("//") - 2);
    port = std::stoi(url.substr(colon + 1));
  }
  one_request(host, port, 0, 4);  // warm-up
  json out{
      {"bench", "serve_load"},
      {"server", model.empty() ? url : "nibble serve (in-process), --parallel " + std::to_string(parallel)},
      {"model", model.empty() ? "(external)" : model},
      {"machine",
       {{"name", machine}, {"cpu", cpu_name()}, {"logical_cores", std::thread::hardware_concurrency()}}},
      {"request",
       {{"endpoint", "/v1/completions"}, {"stream", true}, {"temperature", 0}, {"max_tokens", max_tokens}}},
      {"levels", json::array()}};
  out["loadavg_start"] = loadavg();
  for (int c : levels) {
    out["levels"].push_back(run_level(host, port, c, requests, max_tokens));
    std::fprintf(stderr, "%s\n", out["levels"].back().dump().c_str());
  }
  out["loadavg_end"] = loadavg();
  if (server) server->stop();
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
