// `nibble verify` with text (TinyStories, which has a tokenizer): --prompt, --text-file and
// --expected-outputs go through the model's tokenizer; the default prompt is transformers'
// "Hello my name is". The expected texts come from the ids transformers generated
// (reference.json), decoded as its tests decode them (skip_special_tokens=True).
#include <gtest/gtest.h>


#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/tokenizer.h"
#include "cli_run.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

using test::CliRun;
using test::nibble_cli;
using test::q;

const nlohmann::json* find_check(const nlohmann::json& j, const std::string& name) {
  for (const auto& c : j.at("checks"))
    if (c.at("name") == name) return &c;
  return nullptr;
}

}  // namespace

TEST(VerifyCliText, PromptTextFileAndExpectedOutputs) {
  const fs::path model = test::shared_root() / "models/tinystories-656k";
  std::ifstream rf(test::fixtures_root() / "tinystories/reference.json");
  nlohmann::json ref = nlohmann::json::parse(rf);
  Tokenizer tok = Tokenizer::from_pretrained(model);
  const auto& g = ref.at("nf4_dq").at("greedy").at(0);
  auto ids = g.at("ids").get<std::vector<int64_t>>();
  ids.resize(g.at("prompt_ids").size() + 10);
  test::TempDir tmp;
  std::ofstream(tmp / "expected.txt") << "not this one\n" << tok.decode_text(ids) << "\n";
  std::ofstream(tmp / "wrong.txt") << "not this one\n";
  std::ofstream(tmp / "story.txt") << ref.at("fp32").at("greedy").at(0).at("text").get<std::string>();
  const std::string base = "verify " + q(model) +
                           " --load-in-4bit --bnb-4bit-quant-type nf4 --bnb-4bit-use-double-quant " +
                           "--prompt " + q(g.at("prompt").get<std::string>());

  CliRun ok = nibble_cli(base + " --expected-outputs " + q(tmp / "expected.txt") + " --text-file " +
                         q(tmp / "story.txt") + " --json");
  ASSERT_EQ(ok.rc, 0) << ok.out;
  nlohmann::json j = nlohmann::json::parse(ok.out);
  ASSERT_NE(find_check(j, "generation"), nullptr);
  EXPECT_TRUE(find_check(j, "generation")->at("passed").get<bool>());
  EXPECT_EQ(j.at("generation").at("text"), tok.decode_text(ids));
  ASSERT_NE(find_check(j, "logits"), nullptr);
  auto story = tok.encode(ref.at("fp32").at("greedy").at(0).at("text").get<std::string>()).ids;
  EXPECT_EQ(j.at("logits").at("positions").get<size_t>(), story.size());

  CliRun bad = nibble_cli(base + " --expected-outputs " + q(tmp / "wrong.txt") + " --json");
  ASSERT_EQ(bad.rc, 1) << bad.out;
  EXPECT_FALSE(find_check(nlohmann::json::parse(bad.out), "generation")->at("passed").get<bool>());

  // No --prompt: transformers' "Hello my name is".
  CliRun dflt = nibble_cli("verify " + q(model) + " --load-in-8bit --json");
  ASSERT_EQ(dflt.rc, 0) << dflt.out;
  auto hello = tok.encode("Hello my name is").ids;
  auto out = nlohmann::json::parse(dflt.out).at("generation").at("output_ids").get<std::vector<int64_t>>();
  ASSERT_EQ(out.size(), hello.size() + 10);
  EXPECT_TRUE(std::equal(hello.begin(), hello.end(), out.begin()));
  EXPECT_EQ(nibble_cli(base + " --text-file /nonexistent/story.txt").rc, 2);
}
