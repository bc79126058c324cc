// Helpers of the serve tests: the TinyStories model and tokenizer, an in-process server on a
// free 127.0.0.1 port or the built `nibble serve` in a child process, JSON over httplib's client,
// Server-Sent Events parsing, raw sockets for misbehaving clients.
#pragma once

#include <httplib.h>

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "serve/http_server.h"
#include "test_support.h"

namespace nibble::test {

const CausalLM& tiny_model();
const Tokenizer& tiny_tokenizer();

// A server on 127.0.0.1:<free port> with the TinyStories model attached (unless attach is false).
std::unique_ptr<serve::Server> start_server(serve::ServerOptions o = {}, bool attach = true);

httplib::Client client(const serve::Server& s, int timeout_s = 30);

struct Reply {
  int status = -1;  // -1: no response
  nlohmann::json body;
  std::string raw;
  httplib::Headers headers;
};
Reply post(httplib::Client& c, const std::string& path, const std::string& body);
Reply post(httplib::Client& c, const std::string& path, const nlohmann::json& body);
Reply get(httplib::Client& c, const std::string& path);

// A metric's value in GET /metrics' Prometheus text (name with its labels, if any); 0 when absent.
double metric(httplib::Client& c, const std::string& name);

// The JSON payloads of a text/event-stream body; "[DONE]" as a string.
std::vector<nlohmann::json> sse_events(const std::string& body);
// The streamed text: content deltas (chat) or text pieces (completions), concatenated.
std::string streamed_text(const std::vector<nlohmann::json>& events);

// A blocking TCP connection to 127.0.0.1:port (-1 on failure); closes on destruction.
class RawSocket {
 public:
  explicit RawSocket(int port);
  ~RawSocket();
  RawSocket(const RawSocket&) = delete;
  bool ok() const { return fd_ >= 0; }
  bool send_all(const std::string& data);
  // Reads what arrives within timeout_ms: "" on timeout; nullopt-like "\x01EOF" markers avoided:
  // returns the bytes, and sets closed when the peer closed (or reset) the connection.
  std::string read_some(int timeout_ms, bool& closed);
  void close();

 private:
  int fd_ = -1;
};

// `nibble --threads 1 serve TINYSTORIES --port 0 extra...` (the built binary) with stderr in a
// file; port is the one it printed (-1 when it printed none). Killed on destruction.
class ServeProcess {
 public:
  explicit ServeProcess(std::vector<std::string> extra);
  ~ServeProcess();
  ServeProcess(const ServeProcess&) = delete;
  std::string log() const;  // its stderr so far
  // Waits up to timeout for GET /health to answer 200.
  bool wait_ready(std::chrono::milliseconds timeout);
  // The exit status, or -1 if it did not exit within the timeout.
  int wait_exit(std::chrono::milliseconds timeout);
  pid_t pid = -1;
  int port = -1;

 private:
  TempDir dir_;
};

// Greedy generate() of ids alone: the new tokens.
std::vector<int64_t> greedy_alone(const std::vector<int64_t>& prompt, int64_t max_new_tokens);
// The text a server returns for new tokens: the eos dropped, special tokens skipped.
std::string reply_text(std::vector<int64_t> new_ids);

}  // namespace nibble::test
