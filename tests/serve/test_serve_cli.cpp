// The built `nibble serve` binary as a user runs it: it listens on the port it prints, serves,
// and on SIGTERM stops accepting, lets an in-flight streamed request finish, and exits 0.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "serve_test_util.h"
#include "test_support.h"

using namespace nibble::test;
using nlohmann::json;
using namespace std::chrono_literals;

TEST(ServeCli, SigtermFinishesInFlightStreamThenExitsZero) {
  ServeProcess p({"--parallel", "2", "--alias", "tiny"});
  ASSERT_GT(p.port, 0) << p.log();
  httplib::Client c("127.0.0.1", p.port);
  c.set_read_timeout(30, 0);
  Reply h;
  for (int i = 0; i < 200 && (h = get(c, "/health")).status != 200; ++i) std::this_thread::sleep_for(25ms);
  ASSERT_EQ(h.status, 200) << p.log();
  EXPECT_EQ(get(c, "/v1/models").body["data"][0]["id"], "tiny");

  // A long streamed request; SIGTERM arrives once its first tokens did.
  RawSocket sock(p.port);
  ASSERT_TRUE(sock.ok());
  const std::string body =
      json{{"prompt", "Once"}, {"max_tokens", 480}, {"temperature", 2}, {"seed", 3}, {"stream", true}}.dump();
  ASSERT_TRUE(sock.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body));
  std::string raw;
  bool closed = false;
  for (int i = 0; i < 100 && raw.find("data: {") == std::string::npos && !closed; ++i)
    raw += sock.read_some(100, closed);
  ASSERT_NE(raw.find("data: {"), std::string::npos) << raw;
  ASSERT_EQ(kill(p.pid, SIGTERM), 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (!closed && raw.find("data: [DONE]") == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < 20s)
    raw += sock.read_some(100, closed);
  sock.close();  // an idle keep-alive connection would hold the exit for keep_alive_timeout
  const int rc = p.wait_exit(20s);
  EXPECT_EQ(rc, 0) << p.log();
  EXPECT_NE(raw.find("data: [DONE]"), std::string::npos) << "the in-flight stream was finished, not cut";
  EXPECT_NE(raw.find(R"("finish_reason":"length")"), std::string::npos);
  // Nothing listens any more.
  httplib::Client after("127.0.0.1", p.port);
  after.set_connection_timeout(1, 0);
  EXPECT_FALSE(after.Get("/health"));
}

TEST(ServeCli, GraceZeroCancelsInFlightAndBadPortFails) {
  ServeProcess p({"--grace", "0"});
  ASSERT_GT(p.port, 0) << p.log();
  httplib::Client c("127.0.0.1", p.port);
  Reply h;
  for (int i = 0; i < 200 && (h = get(c, "/health")).status != 200; ++i) std::this_thread::sleep_for(25ms);
  ASSERT_EQ(h.status, 200) << p.log();
  // A second server on the same port fails with a clear error (no SO_REUSEPORT sharing).
  const CommandResult dup =
      run_command(std::string(NIBBLE_CLI) + " serve " +
                  shell_quote((shared_root() / "models" / "tinystories-656k").string()) + " --port " +
                  std::to_string(p.port));
  EXPECT_EQ(dup.rc, 2);
  EXPECT_NE(dup.err.find("cannot listen"), std::string::npos) << dup.err;
  // So does a failure after listening: a bad --ctx-size, a folder that is not a model.
  const std::string cli = std::string(NIBBLE_CLI) + " serve --port 0 ";
  const CommandResult ctx = run_command(
      cli + shell_quote((shared_root() / "models" / "tinystories-656k").string()) + " --ctx-size 100000");
  EXPECT_EQ(ctx.rc, 2);
  EXPECT_NE(ctx.err.find("--ctx-size"), std::string::npos) << ctx.err;
  const CommandResult nomodel = run_command(cli + shell_quote(shared_root().string()));
  EXPECT_EQ(nomodel.rc, 2) << nomodel.err;
  // With no grace, a stream in flight is cancelled: it ends with an error event, not a finish.
  RawSocket sock(p.port);
  const std::string body =
      json{{"prompt", "Once"}, {"max_tokens", 480}, {"temperature", 2}, {"seed", 3}, {"stream", true}}.dump();
  ASSERT_TRUE(sock.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body));
  std::string raw;
  bool closed = false;
  for (int i = 0; i < 100 && raw.find("data: {") == std::string::npos && !closed; ++i)
    raw += sock.read_some(100, closed);
  ASSERT_NE(raw.find("data: {"), std::string::npos) << raw;
  ASSERT_EQ(kill(p.pid, SIGINT), 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (!closed && raw.find("data: [DONE]") == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < 20s)
    raw += sock.read_some(100, closed);
  sock.close();
  EXPECT_EQ(p.wait_exit(20s), 0) << p.log();
  EXPECT_NE(raw.find("shutting down"), std::string::npos)
      << raw.substr(raw.size() > 600 ? raw.size() - 600 : 0);
  EXPECT_EQ(raw.find(R"("finish_reason":"length")"), std::string::npos);
}

// --adapter: a peft adapter trained here for a few steps is applied by the server as by
// `nibble generate --adapter` (same greedy completion), and it changes that completion.
TEST(ServeCli, AdapterIsAppliedAsInGenerate) {
  TempDir work;
  const std::string model = (shared_root() / "models" / "tinystories-656k").string();
  {
    std::ofstream data(work / "train.jsonl");
    for (int i = 0; i < 4; ++i)
      data << json{{"text",
                    "Once upon a time there was a purple dragon who loved to sing songs to the moon."}}
                  .dump()
           << "\n";
  }
  const std::string adapter = (work / "adapter").string();
  const CommandResult ft =
      run_command(shell_quote(NIBBLE_CLI) + " --threads 1 finetune " + shell_quote(model) + " --data " +
                  shell_quote((work / "train.jsonl").string()) + " --output-dir " + shell_quote(adapter) +
                  " --lora-r 4 --lora-alpha 16 --max-steps 8 --learning-rate 5e-2 "
                  "--per-device-train-batch-size 2 --seed 1");
  ASSERT_EQ(ft.rc, 0) << ft.out << ft.err;
  auto generated = [&](const std::string& extra) {
    const CommandResult g = run_command(shell_quote(NIBBLE_CLI) + " --threads 1 generate " +
                                        shell_quote(model) + " -p 'Once upon a time' -n 16 --json" + extra);
    EXPECT_EQ(g.rc, 0) << g.err;
    const json j = json::parse(g.out);
    const auto ids = j["ids"].get<std::vector<int64_t>>();
    return std::vector<int64_t>(ids.begin() + std::ptrdiff_t(j["prompt_ids"].size()), ids.end());
  };
  const std::vector<int64_t> with = generated(" --adapter " + shell_quote(adapter)), without = generated("");
  EXPECT_NE(with, without) << "the adapter should change the greedy completion";

  ServeProcess p({"--adapter", adapter});
  ASSERT_GT(p.port, 0) << p.log();
  httplib::Client c("127.0.0.1", p.port);
  c.set_read_timeout(30, 0);
  Reply h;
  for (int i = 0; i < 400 && (h = get(c, "/health")).status != 200; ++i) std::this_thread::sleep_for(25ms);
  ASSERT_EQ(h.status, 200) << p.log();
  const Reply r = post(c, "/v1/completions",
                       json{{"prompt", "Once upon a time"}, {"max_tokens", 16}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["choices"][0]["text"].get<std::string>(), reply_text(with));
  ASSERT_EQ(kill(p.pid, SIGTERM), 0);
  EXPECT_EQ(p.wait_exit(20s), 0) << p.log();
}
