// The HTTP server's state, shared by its two halves: http_server.cpp (lifecycle, auth, the small
// endpoints) and completions.cpp (chat and text completions, streamed or not). Internal.
#pragma once

#include <httplib.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <random>

#include "serve/event_loop.h"
#include "serve/http_server.h"
#include "serve/metrics.h"
#include "serve/openai_request.h"
#include "serve/task_queue.h"

namespace nibble::serve {

// httplib's request handling without its sockets: the protected process_request() reads one
// request from a Stream, routes it and writes the answer. Its streaming writer stops when svr_sock_
// is invalid (httplib's "shutting down"); ours stays valid until every worker has returned.
class HttpCore : public httplib::Server {
 public:
  bool serve(httplib::Stream& strm, bool close_connection, bool& connection_closed) {
    return process_request(strm, close_connection, connection_closed, nullptr);
  }
  void set_listening(socket_t fd) { svr_sock_ = fd; }
};

struct Server::Impl {
  explicit Impl(ServerOptions o) : opt(std::move(o)) {}

  ServerOptions opt;
  Metrics metrics;
  HttpCore http;
  std::unique_ptr<ElasticPool> workers;
  std::unique_ptr<ConnectionLoop> loop;
  std::atomic<bool> stopping{false};  // answers close their connections
  int port = -1;
  size_t max_connections = 0;  // in force, after start()
  int64_t started_at = 0;      // unix seconds, for /v1/models' "created"

  // Set once by attach(), before `ready` turns true; read by handlers after they saw it true.
  std::atomic<bool> ready{false};
  const CausalLM* model = nullptr;
  const Tokenizer* tok = nullptr;
  const ChatTemplate* tmpl = nullptr;
  std::unique_ptr<ChatTemplate> fallback_tmpl;
  std::unique_ptr<Scheduler> scheduler;
  int64_t ctx = 0;

  std::atomic<uint64_t> next_id{0};
  std::mutex seed_mu;
  std::mt19937_64 seed_rng{std::random_device{}()};

  std::mutex stop_mu;
  bool stopped = false;

  // Throws ApiError 503 (with Retry-After) while the model loads.
  void require_ready() const;
  uint64_t random_seed();
};

// The generation endpoints (completions.cpp).
void handle_chat(Server::Impl& s, const httplib::Request& req, httplib::Response& res);
void handle_completion(Server::Impl& s, const httplib::Request& req, httplib::Response& res);

// res <- the error in OpenAI's shape, with Retry-After on 503.
void set_error(httplib::Response& res, const ApiError& e);

}  // namespace nibble::serve
