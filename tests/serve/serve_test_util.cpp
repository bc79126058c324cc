// Helpers of the serve tests; see serve_test_util.h.
#include "serve_test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "nibble/generate.h"
#include "nibble/generation_config.h"
#include "test_support.h"

extern char** environ;

namespace nibble::test {

using nlohmann::json;
using namespace std::chrono_literals;

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

ServeProcess::ServeProcess(std::vector<std::string> extra) {
  std::vector<std::string> args{
      NIBBLE_CLI, "--threads", "1", "serve", (shared_root() / "models" / "tinystories-656k").string(),
      "--port",   "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  const std::string err = (dir_ / "stderr.txt").string();
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (posix_spawn(&pid, NIBBLE_CLI, &fa, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  const std::regex re("listening on http://127\\.0\\.0\\.1:([0-9]+)");
  for (int i = 0; i < 200 && pid > 0 && port < 0; ++i) {
    std::smatch m;
    const std::string l = log();
    if (std::regex_search(l, m, re))
      port = std::stoi(m[1]);
    else
      std::this_thread::sleep_for(25ms);
  }
}

ServeProcess::~ServeProcess() {
  if (pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
}

std::string ServeProcess::log() const {
  std::ifstream f(dir_ / "stderr.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool ServeProcess::wait_ready(std::chrono::milliseconds timeout) {
  if (port < 0) return false;
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(5, 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < timeout) {
    if (get(c, "/health").status == 200) return true;
    std::this_thread::sleep_for(25ms);
  }
  return false;
}

int ServeProcess::wait_exit(std::chrono::milliseconds timeout) {
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  while (std::chrono::steady_clock::now() - t0 < timeout) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(10ms);
  }
  return -1;
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
