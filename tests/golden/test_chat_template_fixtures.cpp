// Chat templates against transformers: every `chat` case of every tokenizer fixture that has
// one (byte-identical text, or the same TemplateError), and the real templates of
// tokenizers-extra (Qwen3, DeepSeek, gpt-oss, Gemma 4, Phi-4, SmolLM3, Nemotron...), which
// must load and render a plain conversation, and match transformers where a reference was taken.
#include <gtest/gtest.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <set>
#include <string>

#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "test_support.h"

namespace fs = std::filesystem;

namespace nibble {
namespace {

using ojson = nlohmann::ordered_json;

ojson read_json(const fs::path& p) {
  std::ifstream f(p);
  return ojson::parse(f);
}

bool has_chat_template(const fs::path& dir) {
  if (fs::exists(dir / "chat_template.jinja")) return true;
  if (!fs::exists(dir / "tokenizer_config.json")) return false;
  return read_json(dir / "tokenizer_config.json").contains("chat_template");
}

TEST(ChatTemplateFixtures, EveryChatCaseMatchesTransformers) {
  int folders = 0, texts = 0, errors = 0;
  for (const fs::path& dir : test::fixture_dirs("tokenizers", test::fixture_tokenizers())) {
    if (!fs::exists(dir / "reference.json")) continue;
    ojson ref = read_json(dir / "reference.json");
    if (!ref.contains("chat") || !ref["chat"].is_array() || ref["chat"].empty()) continue;
    ++folders;
    SCOPED_TRACE(dir.filename().string());
    ChatTemplate t = ChatTemplate::from_pretrained(dir);
    for (const auto& c : ref["chat"]) {
      const bool agp = c["add_generation_prompt"].get<bool>();
      if (c.contains("error")) {
        // transformers raised, e.g. "TemplateError('System role not supported')": the same
        // message must come out of raise_exception.
        std::string want = c["error"].get<std::string>();
        size_t a = want.find("('"), b = want.rfind("')");
        ASSERT_TRUE(a != std::string::npos && b != std::string::npos && b > a) << want;
        want = want.substr(a + 2, b - a - 2);
        try {
          t.apply(c["messages"], agp);
          ADD_FAILURE() << "expected error " << want;
        } catch (const Error& e) {
          EXPECT_EQ(std::string(e.what()), want);
        }
        ++errors;
        continue;
      }
      EXPECT_EQ(t.apply(c["messages"], agp), c["text"].get<std::string>()) << c["messages"].dump();
      ++texts;
    }
  }
  // tinyllama, meta-llama-3-8b-instruct, qwen2.5, phi3, phi-4-mini, minimind, gemma have chat cases.
  EXPECT_EQ(folders, 7);
  EXPECT_EQ(texts + errors, 28);  // 4 conversations per folder; 2 of them raise in transformers
  std::cout << "chat fixtures: " << folders << " folders, " << texts << " texts, " << errors << " errors\n";
}

const char* const kExtraRef =
#include "chat_template_extra_ref.inc"
    ;

std::string expand_dates(std::string text) {
  for (size_t p = text.find("{{DATE:"); p != std::string::npos; p = text.find("{{DATE:")) {
    size_t e = text.find("}}", p);
    std::string fmt = text.substr(p + 7, e - p - 7);
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[128];
    size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
    text.replace(p, e + 2 - p, std::string(buf, n));
  }
  return text;
}

TEST(ChatTemplateFixtures, ExtraTemplatesMatchTransformersReferences) {
  ojson ref = ojson::parse(kExtraRef);
  ASSERT_GE(ref.size(), 10u);
  for (const auto& c : ref) {
    const std::string folder = c["folder"].get<std::string>();
    SCOPED_TRACE(folder);
    ChatTemplate t = ChatTemplate::from_pretrained(test::fixtures_root() / "tokenizers-extra" / folder);
    EXPECT_EQ(t.apply(c["messages"], c["add_generation_prompt"].get<bool>(), c["extra"]),
              expand_dates(c["text"].get<std::string>()));
  }
}

TEST(ChatTemplateFixtures, EveryExtraTemplateRendersAConversation) {
  const ojson messages = ojson::parse(R"([
    {"role": "system", "content": "SYSTEM-TEXT"},
    {"role": "user", "content": "USER-ONE"},
    {"role": "assistant", "content": "ASSISTANT-ONE"},
    {"role": "user", "content": "USER-TWO"}])");
  std::set<std::string> rendered;
  for (const fs::path& dir : test::fixture_dirs("tokenizers-extra", test::fixture_tokenizers_extra())) {
    if (!has_chat_template(dir)) continue;
    SCOPED_TRACE(dir.filename().string());
    ChatTemplate t = ChatTemplate::from_pretrained(dir);
    for (bool agp : {false, true}) {
      std::string text = t.apply(messages, agp);
      for (const char* part : {"USER-ONE", "ASSISTANT-ONE", "USER-TWO"})
        EXPECT_NE(text.find(part), std::string::npos) << part << " missing from:\n" << text;
    }
    rendered.insert(dir.filename().string());
  }
  for (const char* name : {"qwen3", "deepseek", "gpt-oss", "models_gemma-4", "models_phi-4",
                           "phi-4-mini-reasoning", "v5_smollm3", "nvidia-mistral"})
    EXPECT_TRUE(rendered.count(name)) << name << " was not rendered";
}

}  // namespace
}  // namespace nibble
