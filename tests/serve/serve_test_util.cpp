// Helpers of the serve tests; see serve_test_util.h.
#include "serve_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nibble/generate.h"
#include "nibble/generation_config.h"
#include "test_support.h"

namespace nibble::test {

using nlohmann::json;

const CausalLM& tiny_model() {
  static CausalLM m = AutoModelForCausalLM::from_pretrained(shared_root() / "models" / "tinystories-656k");
  return m;
}

const Tokenizer& tiny_tokenizer() {
  static Tokenizer t = Tokenizer::from_pretrained(shared_root() / "models" / "tinystories-656k");
  return t;
}

std::unique_ptr<serve::Server> start_server(serve::ServerOptions o, bool attach) {
  o.host = "127.0.0.1";
  o.port = 0;
  if (o.model_name.empty()) o.model_name = "tinystories";
  auto s = std::make_unique<serve::Server>(o);
  s->start();
  if (attach) s->attach(tiny_model(), tiny_tokenizer(), nullptr);
  // One request of each kind before any test sends them concurrently: cpp-httplib (Debian's,
  // not built with ThreadSanitizer) initializes function-local statics (regexes) on first use,
  // and TSAN cannot see the guard that orders that with later uses on other threads. Done once
  // from this thread, every later use is ordered after it. Harmless without TSAN.
  for (bool stream : {false, true}) {
    httplib::Client c = client(*s);
    c.Get("/health");
    c.Post("/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 2}, {"stream", stream}}.dump(),
           "application/json");
  }
  return s;
}

httplib::Client client(const serve::Server& s, int timeout_s) {
  httplib::Client c("127.0.0.1", s.port());
  c.set_read_timeout(timeout_s, 0);
  c.set_connection_timeout(5, 0);
  return c;
}

namespace {
Reply to_reply(const httplib::Result& r) {
  Reply out;
  if (!r) return out;
  out.status = r->status;
  out.raw = r->body;
  out.headers = r->headers;
  out.body = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  return out;
}
}  // namespace

Reply post(httplib::Client& c, const std::string& path, const std::string& body) {
  return to_reply(c.Post(path.c_str(), body, "application/json"));
}

Reply post(httplib::Client& c, const std::string& path, const json& body) {
  return post(c, path, body.dump());
}

Reply get(httplib::Client& c, const std::string& path) {
  return to_reply(c.Get(path.c_str()));
}

double metric(httplib::Client& c, const std::string& name) {
  httplib::Result m = c.Get("/metrics");
  if (!m) return -1;
  const size_t at = m->body.find("\n" + name + " ");
  if (at == std::string::npos) return 0;
  return std::stod(m->body.substr(at + name.size() + 2));
}

std::vector<json> sse_events(const std::string& body) {
  std::vector<json> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) != 0) continue;
    ev = ev.substr(6);
    out.push_back(ev == "[DONE]" ? json("[DONE]") : json::parse(ev, nullptr, false));
  }
  return out;
}

std::string streamed_text(const std::vector<json>& events) {
  std::string text;
  for (const json& e : events) {
    if (!e.is_object() || !e.contains("choices") || e["choices"].empty()) continue;
    const json& c = e["choices"][0];
    if (c.contains("delta") && c["delta"].contains("content"))
      text += c["delta"]["content"].get<std::string>();
    if (c.contains("text")) text += c["text"].get<std::string>();
  }
  return text;
}

RawSocket::RawSocket(int port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd_ < 0) return;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
}

RawSocket::~RawSocket() {
  close();
}

void RawSocket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool RawSocket::send_all(const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += size_t(n);
  }
  return true;
}

std::string RawSocket::read_some(int timeout_ms, bool& closed) {
  closed = false;
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return {};
  char buf[65536];
  const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
  if (n <= 0) {
    closed = true;
    return {};
  }
  return std::string(buf, size_t(n));
}

std::vector<int64_t> greedy_alone(const std::vector<int64_t>& prompt, int64_t max_new_tokens) {
  GenerateOptions o;
  o.max_new_tokens = max_new_tokens;
  return generate(tiny_model(), prompt, o).new_ids();
}

std::string reply_text(std::vector<int64_t> new_ids) {
  const auto& eos = tiny_model().generation_config().eos_token_id;
  if (!new_ids.empty() && std::find(eos.begin(), eos.end(), new_ids.back()) != eos.end()) new_ids.pop_back();
  return tiny_tokenizer().decode_text(new_ids);
}

}  // namespace nibble::test
