// TextStreamer on real tokenizers (byte-level BPE and sentencepiece-style byte fallback): pushing
// the reference encodings one id at a time prints exactly the full decode, and never a partial
// UTF-8 character (U+FFFD) that the full decode does not have.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/generate.h"
#include "nibble/tokenizer.h"
#include "test_support.h"

using namespace nibble;

namespace {
size_t count_replacement(const std::string& s) {
  size_t n = 0;
  for (size_t p = s.find("\xEF\xBF\xBD"); p != std::string::npos; p = s.find("\xEF\xBF\xBD", p + 3)) ++n;
  return n;
}
}  // namespace

TEST(TextStreamer, RealTokenizersStreamTheFullDecode) {
  for (const char* name : {"llama2", "tinyllama", "mistral", "phi3", "gpt2", "smollm", "qwen2_regex_tiny"}) {
    const auto dir = test::fixtures_root() / "tokenizers" / name;
    SCOPED_TRACE(name);
    Tokenizer tok = Tokenizer::from_pretrained(dir);
    std::ifstream f(dir / "reference.json");
    const nlohmann::json ref = nlohmann::json::parse(f);
    for (const auto& c : ref.at("cases")) {
      SCOPED_TRACE(c.at("text").get<std::string>());
      const auto ids = c.at("ids").get<std::vector<int64_t>>();
      auto decode = [&](const std::vector<int64_t>& v) {
        return tok.decode(v, /*skip_special_tokens=*/true);
      };
      TextStreamer s(decode);
      std::string streamed;
      size_t bad = 0;
      for (int64_t id : ids) {
        std::string piece = s.push(std::vector<int64_t>{id});
        bad += count_replacement(piece);
        streamed += piece;
      }
      streamed += s.flush();
      const std::string full = decode(ids);
      EXPECT_EQ(streamed, full);
      EXPECT_LE(bad, count_replacement(full));
    }
  }
}
