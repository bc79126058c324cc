// `nibble serve`'s HTTP layer: OpenAI's API (POST /v1/chat/completions, /v1/completions,
// GET /v1/models) plus llama-server's operational endpoints (GET /health, GET /metrics,
// POST /tokenize, /detokenize) on cpp-httplib, in front of the continuous-batching Scheduler.
// The server listens before the model is loaded (/health answers 503 until attach()), so a
// supervisor can watch it come up.
//
//   Server s({.host = "127.0.0.1", .port = 0, .model_name = "tinystories"});
//   s.start();                         // listening on s.port()
//   s.attach(model, tokenizer, tmpl);  // /health turns 200, generation endpoints serve
//   ...
//   s.stop();                          // refuse new work, finish or cancel in-flight, join
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "serve/scheduler.h"

namespace nibble {
class CausalLM;
class Tokenizer;
class ChatTemplate;
}  // namespace nibble

namespace nibble::serve {

class Metrics;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;         // 0: a free port, port() tells which
  std::string api_key;     // non-empty: every endpoint but /health needs "Authorization: Bearer KEY"
  std::string model_name;  // the id GET /v1/models lists and responses carry
  int64_t ctx_size = 0;    // prompt + generated tokens per request; 0: max_position_embeddings
  SchedulerOptions scheduler;
  size_t max_body_bytes = size_t(8) << 20;  // larger request bodies get 413
  int read_timeout_s = 10;                  // a client that stalls mid-request is dropped after this
  int write_timeout_s = 10;                 // a client that stops reading is dropped after this
  int keep_alive_timeout_s = 5;
  size_t max_threads = 1024;               // connections served at once (httplib: a thread per connection)
  std::chrono::milliseconds grace{10000};  // stop(): how long in-flight requests may finish
};

class Server {
 public:
  explicit Server(ServerOptions o);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port and serves on a background thread; IoError when the address is taken.
  void start();
  int port() const;
  // The model is ready: generation endpoints serve. model, tok and tmpl must outlive stop().
  // tmpl null: chat requests render with the built-in ChatML template (llama-server's fallback).
  void attach(const CausalLM& model, const Tokenizer& tok, const ChatTemplate* tmpl);
  // Stops accepting connections, lets in-flight requests finish for up to the grace period,
  // cancels the rest (their clients get an error), joins every thread. Idempotent.
  void stop();
  Metrics& metrics();

  struct Impl;  // server_impl.h, shared by the server's .cpp files

 private:
  std::unique_ptr<Impl> impl_;
};

// ChatML, used for models without a chat template (llama-server's default).
const char* chatml_template();

}  // namespace nibble::serve
