// `nibble serve MODEL [quant flags] [--host H] [--port P] [--api-key K] [--parallel N]
// [--ctx-size N] [--max-connections N] [--threads-http N] [--timeout S] [--header-timeout S]
// [--request-timeout S] [--idle-timeout S] [--max-body-bytes N] [--max-buffered-bytes N]`: an OpenAI-compatible HTTP server (src/serve). It listens first and loads the
// model after, so GET /health says 503 until the model is ready. SIGINT / SIGTERM stop it
// gracefully: no new connections, in-flight requests finish within --grace seconds (the rest are
// cancelled), exit 0. Signals are taken by sigwait() on a thread of ours, never in a handler.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "commands.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "serve/http_server.h"

namespace nibble::cli {

void add_serve_command(CLI::App& app, ServeArgs& a) {
  CLI::App* cmd = app.add_subcommand("serve", "serve the model over an OpenAI-compatible HTTP API");
  cmd->add_option("MODEL", a.model, "model folder (config.json, safetensors, tokenizer.json)")->required();
  cmd->add_option("--host", a.host, "address to listen on (default 127.0.0.1)");
  cmd->add_option("--port", a.port, "port to listen on (default 8080; 0 picks a free one)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", a.api_key,
                  "require 'Authorization: Bearer KEY' on every endpoint but /health");
  cmd->add_option("--parallel", a.parallel,
                  "sequences decoded at once, each with its own KV cache (default 4)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--queue", a.queue, "requests waiting for a slot before 503 (default 64)")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--ctx-size", a.ctx_size,
                  "prompt + generated tokens per request (default: max_position_embeddings)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  cmd->add_option("--chat-template", a.chat_template,
                  "a Jinja chat template file (default: the model's, else ChatML)");
  cmd->add_option("--alias", a.alias, "model id in /v1/models and responses (default: MODEL as given)");
  cmd->add_option("--grace", a.grace_s, "seconds in-flight requests may finish after SIGTERM (default 10)")
      ->check(CLI::Range(0, 3600));
  // Connections: one epoll loop holds them all; a worker thread takes a request only once it has
  // fully arrived, so idle or trickling clients cost a descriptor each, not a thread.
  cmd->add_option("--max-connections", a.max_connections,
                  "open connections at once, idle ones included; past it a new one gets 503 "
                  "(default 16384; lowered to fit RLIMIT_NOFILE, whose soft limit is raised to the hard one)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  cmd->add_option("--threads-http", a.threads_http,
                  "most requests answered at once: threads started on demand (default 1024)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  cmd->add_option("--timeout", a.timeout_s,
                  "seconds a client may pause in a request body or in reading an answer before it is "
                  "dropped (default 10)")
      ->check(CLI::Range(1, 86400));
  cmd->add_option("--header-timeout", a.header_timeout_s,
                  "seconds from a request's first byte to the end of its headers, else 408 (default 10)")
      ->check(CLI::Range(1, 86400));
  cmd->add_option("--request-timeout", a.request_timeout_s,
                  "seconds from a request's first byte to its last (a drip-fed body), else 408 (default 60)")
      ->check(CLI::Range(1, 86400));
  cmd->add_option("--max-body-bytes", a.max_body_bytes,
                  "largest request body, chunked or not; a larger one gets 413 (default 8 MiB)")
      ->check(CLI::Range(int64_t(1024), int64_t(1) << 34));
  cmd->add_option("--max-buffered-bytes", a.max_buffered_bytes,
                  "request bytes still arriving that the server holds, all connections together; past "
                  "it, large bodies wait in the kernel (default 256 MiB, at least 2x --max-body-bytes)")
      ->check(CLI::Range(int64_t(1) << 20, int64_t(1) << 40));
  cmd->add_option("--idle-timeout", a.idle_timeout_s,
                  "seconds a connection with no request under way stays open (default 30)")
      ->check(CLI::Range(1, 86400));
  add_quant_flags(*cmd, a.q);
  add_adapter_flag(*cmd, a.q);
}

int run_serve(const ServeArgs& a) {
  // Every thread started from here on inherits the blocked set; only sigwait() sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  serve::ServerOptions o;
  o.host = a.host;
  o.port = a.port;
  o.api_key = a.api_key;
  o.model_name = a.alias.empty() ? a.model : a.alias;
  o.ctx_size = a.ctx_size;
  o.scheduler.parallel = a.parallel;
  o.scheduler.max_queue = a.queue;
  o.grace = std::chrono::milliseconds(int64_t(a.grace_s * 1000));
  o.read_timeout_s = o.write_timeout_s = a.timeout_s;
  o.header_timeout_s = a.header_timeout_s;
  o.request_timeout_s = a.request_timeout_s;
  o.idle_timeout_s = a.idle_timeout_s;
  o.max_body_bytes = size_t(a.max_body_bytes);
  o.max_buffered_bytes = size_t(a.max_buffered_bytes);
  o.max_connections = size_t(a.max_connections);
  o.max_threads = size_t(a.threads_http);
  // Each connection holds a descriptor; the default soft limit (often 1024) would cap them.
  const uint64_t fds = serve::raise_fd_limit();
  serve::Server server(o);
  server.start();
  std::fprintf(stderr, "nibble serve: listening on http://%s:%d (loading %s)\n", a.host.c_str(),
               server.port(), a.model.c_str());
  if (server.max_connections() < o.max_connections)
    std::fprintf(stderr,
                 "nibble serve: warning: at most %zu connections, not --max-connections %zu: "
                 "RLIMIT_NOFILE is %llu (raise the hard limit: ulimit -Hn)\n",
                 server.max_connections(), o.max_connections, static_cast<unsigned long long>(fds));
  else
    std::fprintf(stderr, "nibble serve: up to %zu connections (RLIMIT_NOFILE %llu)\n",
                 server.max_connections(), static_cast<unsigned long long>(fds));

  std::mutex mu;
  std::condition_variable cv;
  bool stop_requested = false, loaded = false, quit = false;
  std::thread signals([&] {
    int sig = 0;
    sigwait(&set, &sig);
    std::unique_lock lock(mu);
    if (quit) return;  // loading failed: the error is on its way out
    if (!loaded) {
      // Loading cannot be interrupted and nothing is in flight yet: leave at once.
      std::fprintf(stderr, "nibble serve: %s while loading, exiting\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
      std::fflush(stderr);
      std::_Exit(0);
    }
    stop_requested = true;
    cv.notify_all();
  });

  Tokenizer tok;
  std::unique_ptr<ChatTemplate> tmpl;
  CausalLM model;
  try {
    tok = load_tokenizer(a.model);
    if (!a.chat_template.empty()) {
      tmpl = std::make_unique<ChatTemplate>(ChatTemplate::from_string(read_text_file(a.chat_template)));
    } else {
      try {
        tmpl = std::make_unique<ChatTemplate>(ChatTemplate::from_pretrained(a.model));
      } catch (const IoError&) {
      } catch (const FormatError&) {
        // No template in the folder: the server falls back to ChatML.
      }
    }
    model = load_model(a.model, a.q);
    server.attach(model, tok, tmpl.get());
  } catch (...) {
    {
      std::lock_guard lock(mu);
      quit = true;
    }
    pthread_kill(signals.native_handle(), SIGTERM);  // wakes its sigwait()
    signals.join();
    server.stop();
    throw;
  }
  std::fprintf(stderr, "nibble serve: ready (%d slots%s)\n", a.parallel,
               tmpl ? "" : ", ChatML chat template");

  std::unique_lock lock(mu);
  loaded = true;
  cv.wait(lock, [&] { return stop_requested; });
  lock.unlock();
  std::fprintf(stderr, "nibble serve: stopping (grace %.1f s)\n", a.grace_s);
  server.stop();
  signals.join();
  std::fprintf(stderr, "nibble serve: stopped\n");
  return 0;
}

}  // namespace nibble::cli
