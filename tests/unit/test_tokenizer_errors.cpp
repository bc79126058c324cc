// Malformed or unsupported tokenizer files fail with one line naming the file and the field.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/error.h"
#include "nibble/tokenizer.h"
#include "test_support.h"

using namespace nibble;
using nlohmann::json;

namespace {

json minimal() {
  return json{
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder", nullptr},
      {"model",
       {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", json::array({"a b"})}}}};
}

template <typename E>
std::string error_of(const test::TempDir& dir, const std::string& text) {
  std::ofstream(dir / "tokenizer.json") << text;
  try {
    Tokenizer::from_pretrained(dir.path());
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no exception";
}

}  // namespace

TEST(TokenizerErrors, MinimalLoads) {
  test::TempDir dir;
  std::ofstream(dir / "tokenizer.json") << minimal().dump();
  Tokenizer t = Tokenizer::from_pretrained(dir.path());
  EXPECT_EQ(t.encode("ab").ids, (std::vector<int64_t>{2}));
  EXPECT_FALSE(t.bos_token().has_value());
  EXPECT_TRUE(t.tokenizer_config().is_object());
}

TEST(TokenizerErrors, MalformedJson) {
  test::TempDir dir;
  std::string msg = error_of<FormatError>(dir, "{\"model\": ");
  EXPECT_NE(msg.find("tokenizer.json: malformed JSON"), std::string::npos) << msg;
}

TEST(TokenizerErrors, UnknownTypesNameTheField) {
  test::TempDir dir;
  json j = minimal();
  j["pre_tokenizer"] = {{"type", "Foo"}};
  EXPECT_EQ(error_of<UnsupportedError>(dir, j.dump()),
            "tokenizer.json: pre_tokenizer.type 'Foo' is not supported");
  j = minimal();
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", json::array({json{{"type", "NFC"}}, json{{"type", "Bar"}}})}};
  EXPECT_EQ(error_of<UnsupportedError>(dir, j.dump()),
            "tokenizer.json: normalizer.normalizers[1].type 'Bar' is not supported");
  j = minimal();
  j["decoder"] = {{"type", "Baz"}};
  EXPECT_EQ(error_of<UnsupportedError>(dir, j.dump()), "tokenizer.json: decoder.type 'Baz' is not supported");
  j = minimal();
  j["model"]["type"] = "Qux";
  EXPECT_EQ(error_of<UnsupportedError>(dir, j.dump()), "tokenizer.json: model.type 'Qux' is not supported");
  j = minimal();
  j["post_processor"] = {{"type", "Quux"}};
  EXPECT_EQ(error_of<UnsupportedError>(dir, j.dump()),
            "tokenizer.json: post_processor.type 'Quux' is not supported");
}

TEST(TokenizerErrors, BadFields) {
  test::TempDir dir;
  json j = minimal();
  j["model"]["merges"] = json::array({"a c"});
  std::string msg = error_of<FormatError>(dir, j.dump());
  EXPECT_NE(msg.find("tokenizer.json: model.merges[0]"), std::string::npos) << msg;
  j = minimal();
  j.erase("model");
  EXPECT_EQ(error_of<FormatError>(dir, j.dump()), "tokenizer.json: model is missing");
  j = minimal();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  msg = error_of<FormatError>(dir, j.dump());
  EXPECT_NE(msg.find("tokenizer.json: pre_tokenizer.pattern.Regex regex '(unclosed' does not compile"),
            std::string::npos)
      << msg;
  j = minimal();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}};
  msg = error_of<FormatError>(dir, j.dump());
  EXPECT_NE(msg.find("pre_tokenizer.behavior 'Sideways' is not a split behavior"), std::string::npos) << msg;
  j = minimal();
  j["added_tokens"] = json::array({json{{"id", 5}}});
  EXPECT_EQ(error_of<FormatError>(dir, j.dump()), "tokenizer.json: added_tokens[0].content is missing");
}

TEST(TokenizerErrors, MissingFileAndBadText) {
  test::TempDir dir;
  EXPECT_THROW(Tokenizer::from_pretrained(dir.path()), IoError);
  std::ofstream(dir / "tokenizer.json") << minimal().dump();
  std::ofstream(dir / "tokenizer_config.json") << "[1, 2";
  try {
    Tokenizer::from_pretrained(dir.path());
    ADD_FAILURE() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: malformed JSON"), std::string::npos)
        << e.what();
  }
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>"})";
  Tokenizer t = Tokenizer::from_pretrained(dir.path());
  EXPECT_EQ(t.bos_token(), "<s>");
  EXPECT_EQ(t.eos_token(), "</s>");
  EXPECT_FALSE(t.pad_token().has_value());
  // special_tokens_map.json wins over tokenizer_config.json, as in transformers.
  std::ofstream(dir / "special_tokens_map.json")
      << R"({"eos_token": {"content": "<eos>"}, "pad_token": "<pad>"})";
  Tokenizer t2 = Tokenizer::from_pretrained(dir.path());
  EXPECT_EQ(t2.bos_token(), "<s>");
  EXPECT_EQ(t2.eos_token(), "<eos>");
  EXPECT_EQ(t2.pad_token(), "<pad>");
  EXPECT_THROW(t.encode("a\xFF"), FormatError);
}

// Hostile input sizes: 100 MB on one line is refused at once with one line (Tokenizer::
// kMaxEncodeBytes), before any copy; a single 2 MB "word" (no pre-tokenizer: the whole input is
// one piece for the model, the worst case of BPE merging and of the Unigram lattice) is
// bounded work, seconds, not the hours a quadratic merge would take.
TEST(TokenizerErrors, HugeInputIsRefusedAndLongWordsAreBoundedWork) {
  test::TempDir dir;
  std::ofstream(dir / "tokenizer.json") << minimal().dump();
  Tokenizer t = Tokenizer::from_pretrained(dir.path());
  const std::string huge(100u << 20, 'a');
  auto t0 = std::chrono::steady_clock::now();
  try {
    t.encode(huge);
    ADD_FAILURE() << "no error";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()),
              "tokenizer: the input text is 104857600 bytes, over the limit of 33554432 bytes for one encode "
              "(encode it in parts)");
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);

  std::string word;
  for (size_t i = 0; i < (1u << 20); ++i) word += "ab";
  t0 = std::chrono::steady_clock::now();
  Encoding e = t.encode(word);
  EXPECT_EQ(e.ids.size(), 1u << 20);  // every "a b" merged
  EXPECT_EQ(e.ids.front(), 2);
  json uni = {{"type", "Unigram"},
              {"unk_id", 0},
              {"vocab", json::array({json::array({"<unk>", 0.0}), json::array({"a", -1.0}),
                                     json::array({"aa", -1.5}), json::array({"aaaa", -2.5})})}};
  json j = minimal();
  j["model"] = uni;
  std::ofstream(dir / "tokenizer.json") << j.dump();
  Tokenizer u = Tokenizer::from_pretrained(dir.path());
  EXPECT_EQ(u.encode(std::string(2u << 20, 'a')).ids.size(), (2u << 20) / 4);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 60.0);
}
