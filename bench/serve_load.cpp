// serve_load: throughput and latency of an OpenAI-compatible server under concurrent streaming
// clients. Each level sends the same requests (greedy /v1/completions, streamed, usage included)
// from C clients at once: C = 1 is the same load sent one request at a time. Per level: requests/s,
// generated tokens/s, p50/p99 time to first token, p50/p99 time per output token (TPOT: a
// request's decode time, first to last text event, over its tokens after the first, counted by
// the usage the server reports), and the load average around the run.
//
// Every request asks for exactly max_tokens: `ignore_eos` (llama-server's and vLLM's extension,
// nibble serve's too) so no server stops early, and `cache_prompt: false` so llama-server does
// not reuse a previous request's prompt from its slot (nibble keeps no prompt cache). Each level
// reports the usage counts it got (completion tokens min/max, requests without usage) so a
// caller can check that two servers generated the same number of tokens.
//
//   serve_load MODEL [--parallel 8] [--quant nf4|int8] [--threads N] [--device-map cpu|cuda|auto]
//                                            # starts `nibble serve` in-process on a free port
//                                            # (the model on the CPU unless --device-map says otherwise)
//   serve_load --url http://127.0.0.1:8080  # or measures a running server (llama-server too)
//   options: --concurrency 1,8,32 --requests 64 (or one count per level: 8,32,64) --max-tokens 64
//            --machine NAME   (JSON on stdout)
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/model_config.h"
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
  int64_t events = 0;         // text events
  int64_t tokens = -1;        // usage.completion_tokens (-1: no usage came)
  int64_t prompt_tokens = -1;  // usage.prompt_tokens
  bool ok = false;
  // Time per output token after the first (TPOT): events can arrive in bursts when the client
  // reads late, and a server may hold back a token that ends inside a UTF-8 character, so the
  // decode time is divided by the tokens the server says it made, not by the events.
  int64_t n_out() const { return tokens >= 0 ? tokens : events; }
  double tpot() const { return n_out() > 1 && events > 1 ? decode / double(n_out() - 1) : 0; }
};

Sample one_request(const std::string& host, int port, size_t i, int max_tokens) {
  httplib::Client c(host, port);
  c.set_read_timeout(300, 0);
  json body{{"model", "m"},
            {"prompt", kPrompts[i % std::size(kPrompts)]},
            {"max_tokens", max_tokens},
            {"temperature", 0},
            {"stream", true},
            {"stream_options", {{"include_usage", true}}},
            {"ignore_eos", true},
            {"cache_prompt", false}};
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
      if (j.contains("usage") && j["usage"].is_object()) {
        s.tokens = j["usage"].value("completion_tokens", int64_t(-1));
        s.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(-1));
      }
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
  int64_t tokens = 0, prompt_tokens = 0, events = 0;
  int64_t min_out = INT64_MAX, max_out = 0;
  int failed = 0, no_usage = 0;
  for (const Sample& s : samples) {
    if (!s.ok) ++failed;
    if (s.tokens < 0) ++no_usage;
    ttft.push_back(s.ttft);
    if (s.events > 1) tpot.push_back(s.tpot());
    tokens += s.n_out();
    prompt_tokens += std::max<int64_t>(s.prompt_tokens, 0);
    events += s.events;
    min_out = std::min(min_out, s.n_out());
    max_out = std::max(max_out, s.n_out());
  }
  return {{"concurrency", concurrency},
          {"requests", requests},
          {"failed", failed},
          {"requests_without_usage", no_usage},
          {"wall_s", wall},
          {"requests_per_s", requests / wall},
          {"generated_tokens", tokens},
          {"completion_tokens_min", min_out},
          {"completion_tokens_max", max_out},
          {"prompt_tokens", prompt_tokens},
          {"text_events", events},
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
  std::string model, url, machine, quant, device_map = "cpu";
  std::vector<int> levels{1, 8, 32}, requests{64};
  int max_tokens = 64, parallel = 8, threads = 0;
  auto int_list = [](const std::string& s) {
    std::vector<int> v;
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoi(x));
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--url")
      url = next();
    else if (a == "--requests")
      requests = int_list(next());
    else if (a == "--quant")
      quant = next();
    else if (a == "--threads")
      threads = std::stoi(next());
    else if (a == "--max-tokens")
      max_tokens = std::stoi(next());
    else if (a == "--parallel")
      parallel = std::stoi(next());
    else if (a == "--machine")
      machine = next();
    else if (a == "--device-map")
      device_map = next();
    else if (a == "--concurrency")
      levels = int_list(next());
    else if (a.rfind("--", 0) != 0)
      model = a;
    else {
      std::fprintf(stderr, "serve_load: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (model.empty() == url.empty()) {
    std::fprintf(
        stderr,
        "usage: serve_load MODEL [--parallel N] [--quant nf4|int8] [--threads N] [--device-map D] | --url "
        "http://HOST:PORT  [--concurrency 1,8,32] [--requests N or N,N,N] [--max-tokens N] "
        "[--machine NAME]\n");
    return 2;
  }
  if (requests.size() == 1) requests.resize(levels.size(), requests[0]);
  if (requests.size() != levels.size()) {
    std::fprintf(stderr, "serve_load: --requests needs one count or one per --concurrency level\n");
    return 2;
  }
  if (!quant.empty() && quant != "nf4" && quant != "int8") {
    std::fprintf(stderr, "serve_load: --quant is nf4 or int8, not %s\n", quant.c_str());
    return 2;
  }
  if (threads > 0) nibble::set_num_threads(threads);
  std::unique_ptr<nibble::CausalLM> m;
  std::unique_ptr<nibble::Tokenizer> tok;
  std::unique_ptr<nibble::serve::Server> server;
  std::string host = "127.0.0.1";
  int port = 0;
  double load_s = 0;
  if (!model.empty()) {
    nibble::LoadOptions lo;
    lo.device_map = device_map;
    if (quant == "nf4") {
      // NF4 + double quant; bf16 compute for a bf16 checkpoint, f32 otherwise (bench/model_cpu's).
      const nibble::ModelConfig c = nibble::ModelConfig::from_file(std::string(model) + "/config.json");
      const bool bf16 = c.raw.value("torch_dtype", std::string()) == "bfloat16";
      lo.quantization_config = nibble::BitsAndBytesConfig{.load_in_4bit = true,
                                                          .bnb_4bit_compute_dtype = bf16 ? "bfloat16" : "float32",
                                                          .bnb_4bit_quant_type = "nf4",
                                                          .bnb_4bit_use_double_quant = true};
    } else if (quant == "int8") {
      lo.quantization_config = nibble::BitsAndBytesConfig{.load_in_8bit = true};
    }
    const Clock::time_point tl = Clock::now();
    m = std::make_unique<nibble::CausalLM>(nibble::AutoModelForCausalLM::from_pretrained(model, lo));
    load_s = std::chrono::duration<double>(Clock::now() - tl).count();
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
      {"quant", model.empty() ? "(external)" : quant.empty() ? "stored" : quant},
      {"machine",
       {{"name", machine}, {"cpu", cpu_name()}, {"logical_cores", std::thread::hardware_concurrency()}}},
      {"request",
       {{"endpoint", "/v1/completions"},
        {"stream", true},
        {"temperature", 0},
        {"max_tokens", max_tokens},
        {"ignore_eos", true},
        {"cache_prompt", false}}},
      {"levels", json::array()}};
  if (!model.empty()) {
    out["load_s"] = load_s;
    out["threads"] = nibble::num_threads();
    out["device_map"] = device_map;
    out["device"] = m->device().str();
  }
  out["loadavg_start"] = loadavg();
  for (size_t i = 0; i < levels.size(); ++i) {
    const json la = loadavg();
    json level = run_level(host, port, levels[i], requests[i], max_tokens);
    level["loadavg_start"] = la;
    level["loadavg_end"] = loadavg();
    out["levels"].push_back(level);
    std::fprintf(stderr, "%s\n", level.dump().c_str());
  }
  out["loadavg_end"] = loadavg();
  if (server) server->stop();
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
