// `nibble serve`'s HTTP layer: OpenAI's API (POST /v1/chat/completions, /v1/completions,
// GET /v1/models) plus llama-server's operational endpoints (GET /health, GET /metrics,
// POST /tokenize, /detokenize) on cpp-httplib's request handling, behind our own accept + epoll
// loop (event_loop.h), in front of the continuous-batching Scheduler.
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
  size_t max_body_bytes = size_t(8) << 20;  // larger request bodies get 413, without being read
  // Connections wait for their bytes in one epoll loop; a worker thread answers a request once it
  // has fully arrived (event_loop.h). The deadlines drop clients that trickle or stall.
  int header_timeout_s = 10;       // from a request's first byte to the end of its headers, else 408
  int read_timeout_s = 10;         // between two pieces of a request body, else 408
  int request_timeout_s = 60;      // from a request's first byte to its last, else 408 (drip-fed bodies)
  int write_timeout_s = 10;        // a client that stops reading is dropped after this
  int idle_timeout_s = 30;         // a connection with no request under way is closed after this
  size_t max_connections = 16384;  // open at once; past it a new one gets 503. Capped by RLIMIT_NOFILE
  size_t max_threads = 1024;       // requests answered at once (threads started on demand)
  // Bytes of requests still arriving that the server holds, all connections together (at least
  // 2 * max_body_bytes); past it, large bodies are read no further until others move on.
  size_t max_buffered_bytes = size_t(256) << 20;
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
  // The cap on open connections in force: max_connections, lowered to fit the descriptor limit
  // (RLIMIT_NOFILE, less a reserve). Known after start().
  size_t max_connections() const;
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

// Every open connection holds a descriptor. raise_fd_limit() raises RLIMIT_NOFILE's soft limit to
// its hard limit (a server calls it at startup) and returns the soft limit in force after;
// fd_limit() returns it.
uint64_t raise_fd_limit();
uint64_t fd_limit();

}  // namespace nibble::serve
