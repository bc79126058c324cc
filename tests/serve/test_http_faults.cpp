// Issue 10's faults, against the built `nibble serve` in its own process (its own descriptor
// table, as users run it): 10,000 open idle connections, hundreds of clients that send half a
// request and stall, a client gone mid-stream, oversize bodies, the connection cap. Each time the
// others must be served within seconds. The times measured are printed.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "serve_test_util.h"

using namespace nibble::test;
using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string http_post(const std::string& path, const std::string& body) {
  return "POST " + path +
         " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// Reads until the connection closes, `until` shows up, or the timeout; the bytes read.
std::string read_until(RawSocket& s, const std::string& until, std::chrono::milliseconds timeout,
                       bool& closed) {
  std::string got;
  closed = false;
  const auto t0 = Clock::now();
  while (!closed && got.find(until) == std::string::npos && Clock::now() - t0 < timeout)
    got += s.read_some(50, closed);
  return got;
}

// A greedy completion and a streamed chat, each within `limit`; their latencies are printed.
void others_are_served(int port, const char* what, std::chrono::milliseconds limit = 5000ms) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30, 0);
  c.set_connection_timeout(10, 0);
  auto t0 = Clock::now();
  const Reply r = post(c, "/v1/completions",
                       json{{"prompt", "Once upon a time"}, {"max_tokens", 16}, {"temperature", 0}});
  const double t_completion = seconds_since(t0);
  EXPECT_EQ(r.status, 200) << what << ": " << r.raw;
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 16) << r.raw;
  httplib::Client c2("127.0.0.1", port);  // a new connection, as a new client would open
  c2.set_read_timeout(30, 0);
  c2.set_connection_timeout(10, 0);
  t0 = Clock::now();
  const Reply s = post(c2, "/v1/chat/completions",
                       json{{"messages", json::array({json{{"role", "user"}, {"content", "Tell a story"}}})},
                            {"max_tokens", 16},
                            {"temperature", 0},
                            {"stream", true}});
  const double t_stream = seconds_since(t0);
  EXPECT_EQ(s.status, 200) << what << ": " << s.raw;
  const auto events = sse_events(s.raw);
  ASSERT_FALSE(events.empty()) << s.raw;
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_FALSE(streamed_text(events).empty());
  EXPECT_LT(t_completion, std::chrono::duration<double>(limit).count()) << what;
  EXPECT_LT(t_stream, std::chrono::duration<double>(limit).count()) << what;
  std::printf("[ServeFaults] %s: completion %.1f ms, streamed chat %.1f ms\n", what, t_completion * 1e3,
              t_stream * 1e3);
}

double server_metric(int port, const std::string& name) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(10, 0);
  return metric(c, name);
}

// Waits up to timeout for a metric to reach at least (or, with at_most, at most) v.
bool metric_reaches(int port, const std::string& name, double v, std::chrono::milliseconds timeout,
                    bool at_most = false) {
  const auto t0 = Clock::now();
  for (;;) {
    const double m = server_metric(port, name);
    if (at_most ? (m >= 0 && m <= v) : m >= v) return true;
    if (Clock::now() - t0 > timeout) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// RLIMIT_NOFILE's soft limit raised to the hard one; the soft limit after.
uint64_t raise_nofile() {
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);
  getrlimit(RLIMIT_NOFILE, &lim);
  return lim.rlim_cur;
}

}  // namespace

TEST(ServeFaults, TenThousandIdleConnectionsDoNotBlockOthers) {
  // This process holds the client ends, the server process the other ends: each needs ~n fds.
  const uint64_t limit = raise_nofile();
  const int want = 10000, margin = 200;
  const int n = int(std::min<uint64_t>(want, limit > uint64_t(margin) ? limit - margin : 0));
  std::printf("[ServeFaults] %d idle connections (RLIMIT_NOFILE %llu%s)\n", n, (unsigned long long)limit,
              n < want ? ": fewer than 10000, the hard limit allows no more" : "");
  ASSERT_GE(n, 1000) << "RLIMIT_NOFILE's hard limit (" << limit << ") is too low for this test";
  ServeProcess p({"--max-connections", std::to_string(n + 100), "--idle-timeout", "600"});
  ASSERT_TRUE(p.wait_ready(30s)) << p.log();
  EXPECT_NE(p.log().find("up to " + std::to_string(n + 100) + " connections"), std::string::npos) << p.log();

  std::vector<std::unique_ptr<RawSocket>> idle;
  idle.reserve(size_t(n));
  const auto t_open = Clock::now();
  for (int i = 0; i < n; ++i) {
    idle.push_back(std::make_unique<RawSocket>(p.port));
    ASSERT_TRUE(idle.back()->ok()) << "connection " << i;
  }
  // Accepted and held by the server, not waiting in its backlog.
  ASSERT_TRUE(metric_reaches(p.port, "nibble_http_connections", n, 20s))
      << server_metric(p.port, "nibble_http_connections") << " of " << n;
  std::printf("[ServeFaults] %d connections open and accepted in %.2f s\n", n, seconds_since(t_open));
  others_are_served(p.port, "with 10k idle connections open");
  // The idle ones are still there and are served when they speak.
  for (size_t i : {size_t(0), size_t(n / 2), size_t(n - 1)}) {
    ASSERT_TRUE(idle[i]->send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
    bool closed = false;
    const std::string got = read_until(*idle[i], "\r\n\r\n", 5000ms, closed);
    EXPECT_NE(got.find(" 200 "), std::string::npos) << "idle connection " << i << ": " << got;
  }
  EXPECT_EQ(server_metric(p.port, "nibble_http_request_timeouts_total"), 0);
  idle.clear();
  EXPECT_TRUE(metric_reaches(p.port, "nibble_http_connections", 1, 10s, /*at_most=*/true))
      << "closed connections are released: " << server_metric(p.port, "nibble_http_connections");
}

TEST(ServeFaults, HalfRequestStallersDoNotBlockOthers) {
  ServeProcess p({"--header-timeout", "2", "--timeout", "2"});
  ASSERT_TRUE(p.wait_ready(30s)) << p.log();
  const std::string req = http_post("/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 4}}.dump());
  const size_t head_end = req.find("\r\n\r\n") + 4;
  // 100 stop inside the headers (slowloris), 100 inside the body.
  std::vector<std::unique_ptr<RawSocket>> stalled;
  for (int i = 0; i < 200; ++i) {
    stalled.push_back(std::make_unique<RawSocket>(p.port));
    ASSERT_TRUE(stalled.back()->ok());
    const size_t cut = i % 2 == 0 ? head_end / 2 : head_end + (req.size() - head_end) / 2;
    ASSERT_TRUE(stalled.back()->send_all(req.substr(0, cut)));
  }
  // And one that trickles its headers a byte every 100 ms: the deadline holds however it trickles.
  std::atomic<bool> trickler_dropped{false};
  std::thread trickler([&] {
    RawSocket s(p.port);
    const std::string head = req.substr(0, head_end - 2);
    bool closed = false;
    for (size_t i = 0; i < head.size() && !closed; ++i) {
      if (!s.send_all(head.substr(i, 1))) break;
      s.read_some(100, closed);
    }
    trickler_dropped = closed;
  });
  const auto t0 = Clock::now();
  others_are_served(p.port, "with 200 half-request stallers");
  // All of them are answered 408 and closed after the deadline (2 s, checked every 100 ms).
  int timed_out = 0;
  for (auto& s : stalled) {
    bool closed = false;
    const std::string got = read_until(*s, "\x01", 8000ms, closed);
    EXPECT_TRUE(closed) << "still open after " << seconds_since(t0) << " s";
    if (got.find(" 408 ") != std::string::npos) ++timed_out;
  }
  trickler.join();
  std::printf("[ServeFaults] 200 stallers dropped with 408 within %.2f s of their start\n",
              seconds_since(t0));
  EXPECT_EQ(timed_out, 200);
  EXPECT_TRUE(trickler_dropped) << "a byte every 100 ms kept a request head open past its deadline";
  EXPECT_GE(server_metric(p.port, "nibble_http_request_timeouts_total"), 201);
  others_are_served(p.port, "after the stallers");
}

TEST(ServeFaults, DisconnectMidStreamCancelsAndFreesTheSlot) {
  ServeProcess p({"--parallel", "1"});
  ASSERT_TRUE(p.wait_ready(30s)) << p.log();
  const double cancelled0 = server_metric(p.port, "nibble_sequences_cancelled_total");
  const double finished0 = server_metric(p.port, "nibble_sequences_finished_total");
  const double tokens0 = server_metric(p.port, "nibble_generated_tokens_total");
  const double conns0 = server_metric(p.port, "nibble_http_connections");
  {
    RawSocket sock(p.port);
    const json body{
        {"prompt", "Once"}, {"max_tokens", 480}, {"temperature", 2}, {"seed", 3}, {"stream", true}};
    ASSERT_TRUE(sock.send_all(http_post("/v1/completions", body.dump())));
    bool closed = false;
    const std::string got = read_until(sock, "data: {", 5000ms, closed);
    ASSERT_NE(got.find("data: {"), std::string::npos) << got;
  }  // gone, mid-stream
  const auto t0 = Clock::now();
  EXPECT_TRUE(metric_reaches(p.port, "nibble_sequences_cancelled_total", cancelled0 + 1, 5s));
  std::printf("[ServeFaults] mid-stream disconnect: job cancelled %.1f ms after the close\n",
              seconds_since(t0) * 1e3);
  EXPECT_EQ(server_metric(p.port, "nibble_sequences_finished_total"), finished0);
  // It stopped generating well short of its 480 tokens, and its one slot serves the next request.
  const double generated = server_metric(p.port, "nibble_generated_tokens_total") - tokens0;
  EXPECT_LT(generated, 480);
  httplib::Client c("127.0.0.1", p.port);
  c.set_read_timeout(30, 0);
  const Reply r = post(c, "/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 8}, {"temperature", 0}});
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(server_metric(p.port, "nibble_generated_tokens_total") - tokens0,
            generated + r.body["usage"]["completion_tokens"].get<double>());
  std::printf("[ServeFaults] the cancelled stream generated %.0f of its 480 tokens\n", generated);
  EXPECT_TRUE(metric_reaches(p.port, "nibble_http_connections", conns0 + 1, 5s, /*at_most=*/true))
      << "the connection was released";
}

TEST(ServeFaults, OversizeBodyIs413WithoutReadingIt) {
  ServeProcess p({});
  ASSERT_TRUE(p.wait_ready(30s)) << p.log();
  // Declared far past the 8 MiB limit, and the body then sent slowly: the answer comes at once.
  {
    RawSocket sock(p.port);
    const auto t0 = Clock::now();
    ASSERT_TRUE(
        sock.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 1073741824\r\n\r\n{\"prompt\": \"" +
                      std::string(64 << 10, 'a')));
    bool closed = false;
    const std::string got = read_until(sock, "}}", 5000ms, closed);
    const double t = seconds_since(t0);
    EXPECT_NE(got.find("HTTP/1.1 413 "), std::string::npos) << got;
    EXPECT_NE(got.find("Connection: close"), std::string::npos) << got;
    EXPECT_NE(got.find("larger than the limit"), std::string::npos) << got;
    EXPECT_LT(t, 1.0);
    std::printf("[ServeFaults] 413 for a declared 1 GiB body after %.1f ms (64 KiB of it sent)\n", t * 1e3);
    // It keeps sending: dropped, not answered again; then it sees the end of the connection.
    for (int i = 0; i < 16; ++i) sock.send_all(std::string(64 << 10, 'a'));
    read_until(sock, "\x01", 7000ms, closed);
    EXPECT_TRUE(closed);
  }
  // "Expect: 100-continue" for too large a body: 413 instead of 100.
  {
    RawSocket sock(p.port);
    ASSERT_TRUE(
        sock.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n"
                      "Expect: 100-continue\r\n\r\n"));
    bool closed = false;
    const std::string got = read_until(sock, "}}", 5000ms, closed);
    EXPECT_EQ(got.rfind("HTTP/1.1 413 ", 0), 0u) << got;
  }
  // A client that sends a 9 MiB body whole before reading gets the 413, not a reset.
  httplib::Client c("127.0.0.1", p.port);
  c.set_read_timeout(30, 0);
  const auto t0 = Clock::now();
  const Reply r = post(c, "/v1/completions", json{{"prompt", std::string(9 << 20, 'a')}}.dump());
  EXPECT_EQ(r.status, 413) << r.raw;
  std::printf("[ServeFaults] 9 MiB body sent whole: 413 after %.1f ms\n", seconds_since(t0) * 1e3);
  others_are_served(p.port, "after oversize bodies");
}

TEST(ServeFaults, PastMaxConnectionsNewOnesGet503) {
  ServeProcess p({"--max-connections", "20"});
  ASSERT_TRUE(p.wait_ready(30s)) << p.log();
  ASSERT_TRUE(metric_reaches(p.port, "nibble_http_connections", 1, 5s, /*at_most=*/true));  // its own
  // Twenty that have been served once (so they are surely admitted), then held open.
  std::vector<std::unique_ptr<RawSocket>> held;
  bool closed = false;
  for (int i = 0; i < 20; ++i) {
    held.push_back(std::make_unique<RawSocket>(p.port));
    ASSERT_TRUE(held.back()->send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
    const std::string got = read_until(*held.back(), "\"ok\"}", 5000ms, closed);
    ASSERT_NE(got.find(" 200 "), std::string::npos) << "connection " << i << ": " << got;
  }
  RawSocket extra(p.port);
  ASSERT_TRUE(extra.ok());
  ASSERT_TRUE(extra.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string got = read_until(extra, "}}", 5000ms, closed);
  EXPECT_EQ(got.rfind("HTTP/1.1 503 ", 0), 0u) << got;
  EXPECT_NE(got.find("Retry-After: 1"), std::string::npos) << got;
  EXPECT_NE(got.find("too many open connections"), std::string::npos) << got;
  httplib::Client c("127.0.0.1", p.port);
  EXPECT_EQ(get(c, "/health").status, 503);
  held.resize(10);  // ten leave: room again
  const auto t0 = Clock::now();
  int status = -1;
  while ((status = get(c, "/health").status) != 200 && Clock::now() - t0 < 5s)
    std::this_thread::sleep_for(20ms);
  EXPECT_EQ(status, 200);
  EXPECT_GE(metric(c, "nibble_http_connections_refused_total"), 2);
}

// Clients that send most of a large body and stall cannot make the server hold more than its cap
// on request bytes; small requests are served meanwhile, and the stallers time out.
TEST(ServeFaults, StalledLargeBodiesStayWithinTheByteCap) {
  auto s = start_server([] {
    nibble::serve::ServerOptions o;
    o.max_body_bytes = 1 << 20;
    o.max_buffered_bytes = 3 << 20;
    o.read_timeout_s = 2;
    return o;
  }());
  const std::string head =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string((1 << 20) - 1) + "\r\n\r\n";
  std::vector<std::unique_ptr<RawSocket>> stalled;
  for (int i = 0; i < 12; ++i) {  // 9 MiB sent in all, 3/4 of each body
    stalled.push_back(std::make_unique<RawSocket>(s->port()));
    ASSERT_TRUE(stalled.back()->send_all(head + "{\"prompt\": \"" + std::string(768 << 10, 'a')));
  }
  std::this_thread::sleep_for(300ms);  // what the server would read, it has read
  auto c = client(*s);
  const double held = metric(c, "nibble_http_buffered_bytes");
  std::printf("[ServeFaults] 12 stalled 3/4 bodies (9 MiB sent): the server holds %.2f MiB (cap 3 MiB)\n",
              held / (1 << 20));
  EXPECT_GT(held, 2 << 20);
  EXPECT_LE(held, (3 << 20) + (256 << 10) + 12 * (64 << 10));  // the cap, one read, a head's worth each
  const auto t0 = Clock::now();
  EXPECT_EQ(post(c, "/v1/completions", json{{"prompt", "Once"}, {"max_tokens", 4}}).status, 200);
  EXPECT_LT(seconds_since(t0), 2.0);
  // Past the read timeout every one of them is answered 408 and the bytes are let go.
  for (auto& st : stalled) {
    bool closed = false;
    const std::string got = read_until(*st, "\x01", 8000ms, closed);
    EXPECT_NE(got.find(" 408 "), std::string::npos) << got.substr(0, 200);
  }
  EXPECT_EQ(metric(c, "nibble_http_buffered_bytes"), 0);
  // A body of the largest size still arrives whole (and is judged: too long a prompt).
  const Reply big = post(c, "/v1/completions", json{{"prompt", std::string((1 << 20) - 100, 'a')}}.dump());
  EXPECT_EQ(big.status, 400) << big.raw.substr(0, 300);
}

// Chunked uploads are buffered by the connection loop like Content-Length ones: a worker only
// gets a request whose last chunk arrived, so clients that drip-feed chunks hold no thread, and
// the whole request must arrive within --request-timeout however it trickles. Framing errors and
// chunk sizes past --max-body-bytes are answered by the loop at once.
TEST(ServeFaults, ChunkedUploadsAreBufferedAndBounded) {
  ServeProcess p({"--threads-http", "4", "--timeout", "10", "--request-timeout", "2", "--max-body-bytes",
                  "65536"});
  ASSERT_TRUE(p.wait_ready(30s)) << p.log();
  const std::string head =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string body = json{{"prompt", "Once upon a time"}, {"max_tokens", 4}, {"temperature", 0}}.dump();
  auto chunk = [](const std::string& s) {
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", s.size());
    return size + s + "\r\n";
  };
  // A well-formed chunked request sent in pieces: answered like the same request sent whole.
  {
    RawSocket sock(p.port);
    ASSERT_TRUE(sock.send_all(head + chunk(body.substr(0, 10))));
    std::this_thread::sleep_for(200ms);
    ASSERT_TRUE(sock.send_all(chunk(body.substr(10)) + "0\r\n\r\n"));
    bool closed = false;
    const std::string got = read_until(sock, "\"usage\"", 10000ms, closed);
    EXPECT_EQ(got.rfind("HTTP/1.1 200 ", 0), 0u) << got;
    httplib::Client c("127.0.0.1", p.port);
    const Reply whole = post(c, "/v1/completions", body);
    ASSERT_EQ(whole.status, 200) << whole.raw;
    const std::string text = json::parse(whole.raw)["choices"][0]["text"].get<std::string>();
    EXPECT_NE(got.find(json(text).dump()), std::string::npos) << "chunked: " << got << "\nwhole: " << whole.raw;
  }
  // 40 clients (ten times the 4 threads) drip a byte of chunk every 300 ms: others are served
  // meanwhile, and each gets 408 once 2 s have passed since its first byte.
  std::vector<std::unique_ptr<RawSocket>> drips;
  for (int i = 0; i < 40; ++i) {
    drips.push_back(std::make_unique<RawSocket>(p.port));
    ASSERT_TRUE(drips.back()->send_all(head));
  }
  const auto t0 = Clock::now();
  std::atomic<bool> stop{false};
  std::thread dripper([&] {
    while (!stop)
      for (auto& s : drips) {
        s->send_all("1\r\na\r\n");
        std::this_thread::sleep_for(300ms / 40);
      }
  });
  others_are_served(p.port, "with 40 chunked drip-feeders");
  int timed_out = 0;
  for (auto& s : drips) {
    bool closed = false;
    const std::string got = read_until(*s, "}}", 6000ms, closed);
    if (got.find("HTTP/1.1 408 ") != std::string::npos) ++timed_out;
  }
  stop = true;
  dripper.join();
  std::printf("[ServeFaults] 40 chunked drip-feeders answered 408 within %.2f s\n", seconds_since(t0));
  EXPECT_EQ(timed_out, 40);
  // Chunk sizes past the body limit: 413 at once, the chunk's data never waited for.
  {
    RawSocket sock(p.port);
    ASSERT_TRUE(sock.send_all(head + "8000\r\n" + std::string(1000, 'a')));  // 32 KiB: fine so far
    ASSERT_TRUE(sock.send_all(std::string(32768 - 1000, 'a') + "\r\n8001\r\n"));  // 64 KiB + 1
    bool closed = false;
    const std::string got = read_until(sock, "}}", 3000ms, closed);
    EXPECT_EQ(got.rfind("HTTP/1.1 413 ", 0), 0u) << got;
  }
  // Framing the server cannot trust: malformed sizes, an unknown coding, both framings at once.
  const std::pair<std::string, const char*> bad[] = {
      {head + "zz\r\n", "HTTP/1.1 400 "},
      {head + "5\r\nhelloXX", "HTTP/1.1 400 "},
      {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 501 "},
      {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
       "HTTP/1.1 400 "},
  };
  for (const auto& [req, want] : bad) {
    RawSocket sock(p.port);
    ASSERT_TRUE(sock.send_all(req));
    bool closed = false;
    const std::string got = read_until(sock, "}}", 3000ms, closed);
    EXPECT_EQ(got.rfind(want, 0), 0u) << req << "\n->\n" << got;
  }
  others_are_served(p.port, "after the chunked faults");
}
