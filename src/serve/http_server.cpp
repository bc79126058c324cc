// The server's lifecycle and its small endpoints. The connection loop (event_loop.h) hands each
// request that has fully arrived to a thread of ElasticPool, where cpp-httplib parses and routes
// it; handlers validate, then hand generation to the Scheduler's one model thread.
// Errors leave every handler as OpenAI's {"error": {...}} with the matching status, including
// the ones httplib produces itself (404, 413, 400 on a malformed request line).
#include "serve/http_server.h"

#include <algorithm>
#include <charconv>
#include <chrono>

#include "nibble/chat_template.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "serve/openai_response.h"
#include "serve/server_impl.h"
#include "serve/task_queue.h"

namespace nibble::serve {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

const char* chatml_template() {
  return "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
         "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
         "{% endif %}";
}

void set_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  if (e.status() == 503) res.set_header("Retry-After", "1");
  if (e.status() == 401) res.set_header("WWW-Authenticate", "Bearer");
  res.set_content(dump(error_json(e)), "application/json");
}

void Server::Impl::require_ready() const {
  if (!ready.load(std::memory_order_acquire))
    throw ApiError(503, "Loading model", {}, "unavailable_error", "model_loading");
}

uint64_t Server::Impl::random_seed() {
  std::lock_guard lock(seed_mu);
  return seed_rng();
}

namespace {

using Handler = std::function<void(Server::Impl&, const httplib::Request&, httplib::Response&)>;

// A handler whose exceptions become OpenAI errors: ApiError with its status, anything else 500.
// counted: a generation endpoint, whose answers nibble_requests_total counts (here, before the
// response is written, so a client that reads /metrics after its answer sees it counted).
httplib::Server::Handler guarded(Server::Impl& s, Handler h, bool counted = false) {
  return [&s, h = std::move(h), counted](const httplib::Request& req, httplib::Response& res) {
    try {
      h(s, req, res);
    } catch (const ApiError& e) {
      set_error(res, e);
    } catch (const std::exception& e) {
      set_error(res, ApiError(500, detail::str("Internal server error: ", e.what()), {}, "server_error"));
    }
    if (counted) s.metrics.on_request(res.status == -1 ? 200 : res.status);
  };
}

// Comparison whose time does not depend on where the strings differ (only the length leaks).
bool same_secret(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

constexpr size_t kKeepAliveMax = 1000;  // requests on one connection before it is closed

const char* status_message(int status) {
  switch (status) {
    case 400:
      return "The request could not be parsed.";
    case 404:
      return "Unknown endpoint.";
    case 405:
      return "Method not allowed.";
    case 413:
      return "The request body is too large.";
    case 414:
      return "The request URI is too long.";
    case 431:
      return "The request headers are too large.";
    default:
      return "The request failed.";
  }
}

void models(Server::Impl& s, const httplib::Request&, httplib::Response& res) {
  ojson m{{"id", s.opt.model_name}, {"object", "model"}, {"created", s.started_at}, {"owned_by", "nibble"}};
  res.set_content(dump(ojson{{"object", "list"}, {"data", ojson::array({m})}}), "application/json");
}

bool declared_too_long(const httplib::Request& req, size_t limit) {
  const std::string length = req.get_header_value("Content-Length");
  uint64_t n = 0;
  const auto [end, ec] = std::from_chars(length.data(), length.data() + length.size(), n);
  return !length.empty() && (ec == std::errc::result_out_of_range || (ec == std::errc() && n > limit));
}

ApiError too_long_error(size_t limit) {
  return ApiError(413, detail::str("The request body is larger than the limit of ", limit, " bytes."));
}

// A worker answers the request that has fully arrived at the start of c.in (the loop parsed its
// head), then hands the connection back: kept for the next request, or closed after the answer.
After serve_connection(Server::Impl& s, Conn& c) {
  const RequestHead h = *c.head;
  // An oversize body was not waited for, a doubtful one has no end we trust: close after (and
  // after a chunked one, whose bytes httplib reads on its own terms).
  const bool unread_body = !h.chunked && !h.bad_length && c.in.size() < h.body_end();
  const bool close =
      s.stopping.load() || c.served + 1 >= kKeepAliveMax || h.chunked || h.bad_length || unread_body;
  ConnStream strm(c, std::chrono::seconds(s.opt.read_timeout_s), std::chrono::seconds(s.opt.write_timeout_s));
  CurrentRequestSocket current(c.fd);
  bool closed = false;
  const bool ok = s.http.serve(strm, close, closed);
  ++c.served;
  if (!ok) return After::Close;  // the client is gone (or sent what httplib cannot read)
  if (close || closed) return After::Linger;
  // This request's bytes go, its whole body included even where a handler did not read it (401).
  c.in.erase(0, std::max(strm.consumed(), h.body_end()));
  return After::KeepAlive;
}

void health(Server::Impl& s, const httplib::Request&, httplib::Response& res) {
  s.require_ready();
  res.set_content(R"({"status":"ok"})", "application/json");
}

void metrics_text(Server::Impl& s, const httplib::Request&, httplib::Response& res) {
  if (s.ready.load(std::memory_order_acquire)) s.metrics.set_queue_depth(s.scheduler->queued());
  res.set_content(s.metrics.prometheus(), "text/plain; version=0.0.4");
}

void tokenize(Server::Impl& s, const httplib::Request& req, httplib::Response& res) {
  s.require_ready();
  const json body = parse_body(req.body);
  const std::string text = get_string(body, "content");
  const bool special = get_bool(body, "add_special").value_or(false);
  res.set_content(dump(ojson{{"tokens", s.tok->encode(text, special).ids}}), "application/json");
}

void detokenize(Server::Impl& s, const httplib::Request& req, httplib::Response& res) {
  s.require_ready();
  const json body = parse_body(req.body);
  const std::vector<int64_t> ids = get_ids(body, "tokens", s.tok->vocab_size());
  res.set_content(dump(ojson{{"content", s.tok->decode(ids, false)}}), "application/json");
}

}  // namespace

Server::Server(ServerOptions o) : impl_(std::make_unique<Impl>(std::move(o))) {
  Impl& s = *impl_;
  if (s.opt.model_name.empty()) s.opt.model_name = "nibble";
  s.started_at =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  httplib::Server& h = s.http;
  // Only for the Keep-Alive header httplib writes: the loop and the workers enforce both.
  h.set_keep_alive_timeout(s.opt.idle_timeout_s);
  h.set_keep_alive_max_count(kKeepAliveMax);
  h.set_payload_max_length(s.opt.max_body_bytes);  // a chunked body past it: 413
  // A client that asks before sending a body too large gets 413 instead of "100 Continue".
  h.set_expect_100_continue_handler([&s](const httplib::Request& req, httplib::Response& res) {
    if (!declared_too_long(req, s.opt.max_body_bytes)) return 100;
    set_error(res, too_long_error(s.opt.max_body_bytes));
    return 413;
  });
  h.set_pre_routing_handler([&s](const httplib::Request& req, httplib::Response& res) {
    // Runs before httplib reads the body: a declared length past the limit is refused at once,
    // unread (the loop did not wait for it either; the connection closes after the answer).
    if (declared_too_long(req, s.opt.max_body_bytes)) {
      set_error(res, too_long_error(s.opt.max_body_bytes));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (s.opt.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    const bool ok = auth.size() > prefix.size() && auth.compare(0, prefix.size(), prefix) == 0 &&
                    same_secret(auth.substr(prefix.size()), s.opt.api_key);
    if (ok) return httplib::Server::HandlerResponse::Unhandled;
    set_error(res,
              ApiError(401,
                       auth.empty() ? "You didn't provide an API key: pass it as 'Authorization: Bearer KEY'."
                                    : "Incorrect API key provided.",
                       {}, "invalid_request_error", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // Errors httplib answers by itself (no route, body too large, unparsable request) get a body
  // in OpenAI's shape too; handlers' own errors already have one.
  h.set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string msg = status_message(res.status);
        if (res.status == 404) msg = detail::str("Unknown endpoint: ", req.method, " ", req.path, ".");
        set_error(
            res, ApiError(res.status, msg, {}, res.status >= 500 ? "server_error" : "invalid_request_error"));
        return httplib::Server::HandlerResponse::Handled;
      }));
  for (const char* p : {"/v1/chat/completions", "/chat/completions"})
    h.Post(p, guarded(s, handle_chat, true));
  for (const char* p : {"/v1/completions", "/completions"}) h.Post(p, guarded(s, handle_completion, true));
  for (const char* p : {"/v1/models", "/models"}) h.Get(p, guarded(s, models));
  h.Get("/health", guarded(s, health));
  h.Get("/metrics", guarded(s, metrics_text));
  h.Post("/tokenize", guarded(s, tokenize));
  h.Post("/detokenize", guarded(s, detokenize));
}

Server::~Server() {
  stop();
}

void Server::start() {
  Impl& s = *impl_;
  if (s.loop) throw ConfigError("serve: start() called twice");
  s.workers = std::make_unique<ElasticPool>(s.opt.max_threads);
  LoopOptions lo;
  // Every connection holds a descriptor; a few are kept for the model's files and the rest.
  const uint64_t fds = fd_limit(), reserve = 128;
  s.max_connections = std::min<uint64_t>(s.opt.max_connections, fds > 2 * reserve ? fds - reserve : fds / 2);
  lo.max_connections = std::max<size_t>(1, s.max_connections);
  lo.idle_timeout = std::chrono::seconds(s.opt.idle_timeout_s);
  lo.header_timeout = std::chrono::seconds(s.opt.header_timeout_s);
  lo.read_timeout = std::chrono::seconds(s.opt.read_timeout_s);
  lo.request_timeout = std::chrono::seconds(s.opt.request_timeout_s);
  lo.max_body_bytes = s.opt.max_body_bytes;
  // Room for a request of the largest size to arrive whole, however many others are pending.
  lo.max_buffered_bytes = std::max(s.opt.max_buffered_bytes, 2 * s.opt.max_body_bytes + lo.max_head_bytes);
  s.loop = std::make_unique<ConnectionLoop>(
      lo, *s.workers, [&s](Conn& c) { return serve_connection(s, c); }, s.metrics);
  s.port = s.loop->listen(s.opt.host, s.opt.port);
  s.http.set_listening(s.loop->listen_fd());
  s.loop->start();
}

int Server::port() const {
  return impl_->port;
}

size_t Server::max_connections() const {
  return impl_->max_connections;
}

Metrics& Server::metrics() {
  return impl_->metrics;
}

void Server::attach(const CausalLM& model, const Tokenizer& tok, const ChatTemplate* tmpl) {
  Impl& s = *impl_;
  if (s.ready) throw ConfigError("serve: attach() called twice");
  const int64_t max_pos = model.config().max_position_embeddings;
  s.ctx = s.opt.ctx_size > 0 ? s.opt.ctx_size : max_pos;
  if (s.opt.ctx_size < 0 || (max_pos > 0 && s.ctx > max_pos))
    throw ConfigError(detail::str("serve: --ctx-size ", s.opt.ctx_size, " must be in [1, ", max_pos,
                                  "] (the model's max_position_embeddings)"));
  s.model = &model;
  s.tok = &tok;
  if (!tmpl) {
    s.fallback_tmpl = std::make_unique<ChatTemplate>(ChatTemplate::from_string(chatml_template()));
    tmpl = s.fallback_tmpl.get();
  }
  s.tmpl = tmpl;
  s.scheduler = std::make_unique<Scheduler>(model, s.opt.scheduler, s.metrics);
  s.ready.store(true, std::memory_order_release);
}

void Server::stop() {
  Impl& s = *impl_;
  std::lock_guard lock(s.stop_mu);
  if (s.stopped) return;
  s.stopped = true;
  s.stopping = true;  // answers from now on close their connections
  // No new connections; idle ones (and requests still arriving) are closed. Not httplib's stop():
  // nothing of its listening machinery runs, and its streaming writer must go on (HttpCore).
  if (s.loop) s.loop->stop_accepting();
  if (s.scheduler) s.scheduler->stop(s.opt.grace);  // in-flight jobs finish or are cancelled
  if (s.workers) s.workers->shutdown();             // every answer has been written
  if (s.loop) s.loop->quit();
}

}  // namespace nibble::serve
