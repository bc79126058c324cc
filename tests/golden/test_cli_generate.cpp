// The built `nibble` binary on TinyStories-656K: `generate --json` gives transformers' greedy
// continuations (fp32, and NF4 + double quant from the quant flags), the streamed text equals
// the JSON text, stop strings and seeds work from the command line, perplexity JSON is
// well-formed and agrees with the library, tokenize/detokenize round-trip HF tokenizers'
// reference encodings, and bad input gives one line on stderr with a non-zero exit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_run.h"
#include "nibble/chat_template.h"
#include "nibble/generate.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

using test::CliRun;
using test::run_cli;

const nlohmann::json& reference() {
  static const nlohmann::json j = [] {
    std::ifstream f(test::fixtures_root() / "tinystories" / "reference.json");
    return nlohmann::json::parse(f);
  }();
  return j;
}

std::string model_dir() {
  return (test::shared_root() / "models" / "tinystories-656k").string();
}

const std::vector<std::string> kNf4Flags{"--load-in-4bit", "--bnb-4bit-quant-type", "nf4",
                                         "--bnb-4bit-use-double-quant"};

nlohmann::json parse_json(const CliRun& r) {
  EXPECT_EQ(r.rc, 0) << r.err;
  try {
    return nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.out;
    return nlohmann::json::object();
  }
}

void expect_one_line_error(const CliRun& r) {
  EXPECT_NE(r.rc, 0);
  EXPECT_TRUE(r.out.empty()) << r.out;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "stderr: " << r.err;
  EXPECT_EQ(r.err.rfind("nibble: error: ", 0), 0u) << "stderr: " << r.err;
}

}  // namespace

TEST(CliGenerate, JsonGreedyEqualsTransformers) {
  for (const char* variant : {"fp32", "nf4_dq"}) {
    for (const auto& c : reference().at(variant).at("greedy")) {
      SCOPED_TRACE(std::string(variant) + ": " + c.at("prompt").get<std::string>());
      auto want = c.at("ids").get<std::vector<int64_t>>();
      auto prompt_ids = c.at("prompt_ids").get<std::vector<int64_t>>();
      std::vector<std::string> args{"generate",
                                    model_dir(),
                                    "-p",
                                    c.at("prompt").get<std::string>(),
                                    "--max-new-tokens",
                                    std::to_string(want.size() - prompt_ids.size()),
                                    "--json"};
      if (std::string(variant) == "nf4_dq") args.insert(args.end(), kNf4Flags.begin(), kNf4Flags.end());
      nlohmann::json j = parse_json(run_cli(args));
      EXPECT_EQ(j.value("prompt_ids", std::vector<int64_t>{}), prompt_ids);
      EXPECT_EQ(j.value("ids", std::vector<int64_t>{}), want);
      EXPECT_EQ(j.value("text", std::string()), c.at("text").get<std::string>());
    }
  }
}

TEST(CliGenerate, StreamedTextEqualsJsonText) {
  const std::vector<std::string> base{"generate", model_dir(), "-p", "Lily and Ben went to the park. They",
                                      "-n",       "60"};
  CliRun streamed = run_cli(base);
  ASSERT_EQ(streamed.rc, 0) << streamed.err;
  auto args = base;
  args.push_back("--json");
  nlohmann::json j = parse_json(run_cli(args));
  EXPECT_EQ(streamed.out, j.value("text", std::string("?")) + "\n");
  // the same prompt from a file
  test::TempDir tmp;
  std::ofstream(tmp / "prompt.txt") << "Lily and Ben went to the park. They";
  CliRun from_file =
      run_cli({"generate", model_dir(), "--prompt-file", (tmp / "prompt.txt").string(), "-n", "60"});
  EXPECT_EQ(from_file.out, streamed.out) << from_file.err;
}

TEST(CliGenerate, StopStringAndSeeds) {
  const auto& c = reference().at("fp32").at("greedy").at(0);
  auto want = c.at("ids").get<std::vector<int64_t>>();
  nlohmann::json j = parse_json(run_cli({"generate", "--stop", "never-seen", model_dir(), "-p",
                                         "Once upon a time", "-n", "40", "--stop", "Lily", "--json"}));
  auto ids = j.value("ids", std::vector<int64_t>{});
  EXPECT_EQ(j.value("finish_reason", std::string()), "stop_string");
  ASSERT_LT(ids.size(), want.size());
  EXPECT_EQ(ids, std::vector<int64_t>(want.begin(), want.begin() + int64_t(ids.size())));
  // The last token completes "Lily": the text holds it, the text before that token does not.
  EXPECT_NE(j.value("text", std::string()).find("Lily"), std::string::npos);
  std::string list;
  for (size_t i = 0; i + 1 < ids.size(); ++i) list += (list.empty() ? "" : ",") + std::to_string(ids[i]);
  CliRun before = run_cli({"detokenize", model_dir(), "--ids", list, "--skip-special-tokens"});
  ASSERT_EQ(before.rc, 0) << before.err;
  EXPECT_EQ(before.out.find("Lily"), std::string::npos) << before.out;

  auto sample = [&](const char* seed) {
    return parse_json(run_cli({"generate", model_dir(), "-p", "Once upon a time", "-n", "30", "--do-sample",
                               "--top-p", "0.95", "--temperature", "0.9", "--seed", seed, "--json"}))
        .value("ids", std::vector<int64_t>{});
  };
  auto a = sample("3"), b = sample("3"), d = sample("4");
  EXPECT_EQ(a, b);
  EXPECT_NE(a, d);
}

TEST(CliGenerate, PerplexityJsonAgreesWithTheLibrary) {
  test::TempDir tmp;
  // Long enough (repeated) to need windows of max_position_embeddings = 512 tokens.
  std::string story;
  for (const auto& c : reference().at("fp32").at("greedy")) story += c.at("text").get<std::string>() + "\n";
  std::string long_text;
  for (int i = 0; i < 12; ++i) long_text += story;
  for (const std::string& text : {story, long_text}) {
    const fs::path f = tmp / "text.txt";
    std::ofstream(f, std::ios::binary) << text;
    nlohmann::json p = parse_json(run_cli({"perplexity", model_dir(), "--text-file", f.string(), "--json"}));
    ASSERT_TRUE(p.contains("tokens") && p.contains("nll") && p.contains("ppl")) << p.dump();
    const double nll = p.at("nll").get<double>(), ppl = p.at("ppl").get<double>();
    EXPECT_DOUBLE_EQ(ppl, std::exp(nll));
    nlohmann::json t = parse_json(run_cli({"tokenize", model_dir(), "--text", text, "--json"}));
    auto ids = t.value("ids", std::vector<int64_t>{});
    ASSERT_EQ(p.at("tokens").get<size_t>(), ids.size());
    // The windows as the command documents them: 512 tokens overlapping by one.
    CausalLM model = AutoModelForCausalLM::from_pretrained(model_dir());
    double total = 0;
    for (size_t s = 0; s + 1 < ids.size();) {
      size_t e = std::min<size_t>(s + 512, ids.size());
      total += model.mean_nll(std::vector<int64_t>(ids.begin() + int64_t(s), ids.begin() + int64_t(e))) *
               double(e - s - 1);
      s = e - 1;
    }
    EXPECT_NEAR(nll, total / double(ids.size() - 1), 1e-12);
    EXPECT_GT(nll, 0.0);
    EXPECT_LT(ppl, 100.0) << "TinyStories on its own kind of text";
  }
}

TEST(CliGenerate, TokenizeDetokenizeRoundTrip) {
  for (const auto& e : reference().at("tokenizer")) {
    const std::string text = e.at("text").get<std::string>();
    SCOPED_TRACE(text);
    nlohmann::json t = parse_json(run_cli({"tokenize", model_dir(), "--text", text, "--json"}));
    auto ids = t.value("ids", std::vector<int64_t>{});
    EXPECT_EQ(ids, e.at("ids").get<std::vector<int64_t>>());
    EXPECT_EQ(t.value("tokens", std::vector<std::string>{}), e.at("tokens").get<std::vector<std::string>>());
    if (ids.empty()) continue;
    std::string list;
    for (int64_t id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
    CliRun d = run_cli({"detokenize", model_dir(), "--ids", list});
    ASSERT_EQ(d.rc, 0) << d.err;
    EXPECT_EQ(d.out, e.at("decoded_keep_special").get<std::string>() + "\n");
  }
  nlohmann::json t =
      parse_json(run_cli({"tokenize", model_dir(), "--text", "Hello world", "--no-special", "--json"}));
  auto with = reference().at("tokenizer").at(0).at("ids").get<std::vector<int64_t>>();
  EXPECT_EQ(t.value("ids", std::vector<int64_t>{}), std::vector<int64_t>(with.begin() + 1, with.end()));
}

TEST(CliGenerate, ErrorsAreOneLineWithNonZeroExit) {
  expect_one_line_error(run_cli({"generate", model_dir(), "-p", "hi", "--no-such-flag"}));
  expect_one_line_error(run_cli({"generate", "/nonexistent/model", "-p", "hi"}));
  expect_one_line_error(run_cli({"generate", model_dir()}));  // no prompt
  expect_one_line_error(run_cli({"generate", model_dir(), "-p", "hi", "--do-sample", "--temperature", "0"}));
  expect_one_line_error(run_cli({"perplexity", model_dir()}));  // --text-file missing
  expect_one_line_error(run_cli({"perplexity", model_dir(), "--text-file", "/nonexistent.txt"}));
  expect_one_line_error(run_cli({"detokenize", model_dir(), "--ids", "1,x"}));
  expect_one_line_error(run_cli({"tokenize", "/nonexistent/model", "--text", "hi"}));
  expect_one_line_error(run_cli({"no-such-command"}));
  expect_one_line_error(run_cli({"chat", model_dir()}));  // TinyStories has no chat template
}

TEST(CliGenerate, HelpForEachCommand) {
  for (const char* cmd :
       {"generate", "chat", "render-chat", "perplexity", "tokenize", "detokenize", "quantize", "inspect"}) {
    CliRun r = run_cli({cmd, "--help"});
    EXPECT_EQ(r.rc, 0) << cmd;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << cmd << ": " << r.out;
  }
  CliRun g = run_cli({"generate", "--help"});
  for (const char* flag : {"--max-new-tokens", "--do-sample", "--top-p", "--min-p", "--repetition-penalty",
                           "--seed", "--stop", "--load-in-4bit", "--bnb-4bit-quant-type", "--json"})
    EXPECT_NE(g.out.find(flag), std::string::npos) << flag;
}

TEST(CliChat, RenderChatEqualsTransformers) {
  test::TempDir tmp;
  int checked = 0, errors = 0;
  for (const auto& dir : test::fixture_dirs("tokenizers", test::fixture_tokenizers())) {
    const fs::directory_entry entry(dir);
    std::ifstream f(entry.path() / "reference.json");
    if (!test::fixture_exists(entry.path() / "reference.json")) continue;
    const nlohmann::json ref = nlohmann::json::parse(f);
    if (!ref.contains("chat")) continue;
    for (const auto& c : ref.at("chat")) {
      SCOPED_TRACE(entry.path().filename().string() + ": " + c.at("messages").dump());
      const fs::path m = tmp / "messages.json";
      std::ofstream(m) << c.at("messages").dump();
      std::vector<std::string> args{"render-chat", entry.path().string(), "--messages", m.string()};
      if (c.at("add_generation_prompt").get<bool>()) args.push_back("--add-generation-prompt");
      CliRun r = run_cli(args);
      if (c.contains("error")) {  // the template raised in transformers: one line naming it here
        expect_one_line_error(r);
        ++errors;
        continue;
      }
      EXPECT_EQ(r.rc, 0) << r.err;
      EXPECT_EQ(r.out, c.at("text").get<std::string>());
      ++checked;
    }
  }
  EXPECT_EQ(checked + errors, 28);  // 4 conversations in each of the 7 folders with a chat template
}

TEST(CliChat, ReplKeepsHistory) {
  // A model folder pairing the tiny llama fixture (vocab 512) with a tokenizer that fits it and
  // has a chat template (gemma_cropped_tiny, 93 tokens).
  test::TempDir tmp;
  const fs::path model = test::fixtures_root() / "models" / "llama" / "fp32",
                 tokd = test::fixtures_root() / "tokenizers" / "gemma_cropped_tiny";
  const fs::path dir = tmp / "chatmodel";
  fs::create_directory(dir);
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json"})
    fs::create_symlink(model / f, dir / f);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::create_symlink(tokd / f, dir / f);

  CliRun r = run_cli({"chat", dir.string(), "--max-new-tokens", "6"},
                     "Hi there\n\nHow are you?\n/exit\nnever read\n");
  ASSERT_EQ(r.rc, 0) << r.err;

  // The same conversation through the library: each turn renders the whole history.
  Tokenizer tok = Tokenizer::from_pretrained(dir);
  ChatTemplate tmpl = ChatTemplate::from_pretrained(dir);
  CausalLM lm = AutoModelForCausalLM::from_pretrained(dir);
  nlohmann::json messages = nlohmann::json::array();
  std::string want;
  for (const char* user : {"Hi there", "How are you?"}) {
    messages.push_back({{"role", "user"}, {"content", user}});
    auto prompt = tok.encode(tmpl.apply(messages, true), false).ids;
    GenerateOptions o;
    o.max_new_tokens = 6;
    Generation g = generate(lm, prompt, o);
    auto reply = g.new_ids();
    if (g.finish_reason == FinishReason::Eos) reply.pop_back();
    want += tok.decode_text(g.new_ids()) + "\n";
    messages.push_back({{"role", "assistant"}, {"content", tok.decode_text(reply)}});
  }
  EXPECT_EQ(r.out, want);
}
