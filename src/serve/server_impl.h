// The HTTP server's state, shared by its two halves: http_server.cpp (lifecycle, auth, the small
// endpoints) and completions.cpp (chat and text completions, streamed or not). Internal.
#pragma once

#include <httplib.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "serve/http_server.h"
#include "serve/metrics.h"
#include "serve/openai_request.h"

namespace nibble::serve {

struct Server::Impl {
  explicit Impl(ServerOptions o) : opt(std::move(o)) {}

  ServerOptions opt;
  Metrics metrics;
  httplib::Server http;
  std::thread listener;
  std::atomic<bool> listen_returned{false};  // listen_after_bind() has returned
  int port = -1;
  int listen_fd = -1;
  int64_t started_at = 0;  // unix seconds, for /v1/models' "created"

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
