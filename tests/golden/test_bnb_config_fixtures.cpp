// BitsAndBytesConfig against what transformers 5.17 wrote for the fixture models: the configs
// tools/refgen/hf_models.py built (nf4_dq, fp4, int8), rebuilt here in C++, must give the same
// to_dict()/to_diff_dict() as reference.json records, and the saved config.json files must hold
// to_dict() byte for byte (transformers embeds it with indent 2, sorted keys).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/bnb_config.h"
#include "test_support.h"

using namespace nibble;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// The variants as hf_models.py made them; torch.float32 passed as a dtype object.
BitsAndBytesConfig variant_config(const std::string& v) {
  if (v == "nf4_dq")
    return {.load_in_4bit = true,
            .bnb_4bit_compute_dtype = "torch.float32",
            .bnb_4bit_quant_type = "nf4",
            .bnb_4bit_use_double_quant = true};
  if (v == "fp4")
    return {.load_in_4bit = true,
            .bnb_4bit_compute_dtype = "torch.float32",
            .bnb_4bit_quant_type = "fp4",
            .bnb_4bit_use_double_quant = false};
  return {.load_in_8bit = true};
}
const char* const kVariants[] = {"nf4_dq", "fp4", "int8"};

json read_json(const fs::path& p) {
  std::ifstream f(p);
  EXPECT_TRUE(f.good()) << p;
  return json::parse(f);
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// JSON equality that also tells a float from an integer (nlohmann's == says 6 == 6.0, Python's
// json.dumps writes them differently).
bool same_json(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) return a.is_number_float() == b.is_number_float() && a == b;
  if (a.type() != b.type()) return false;
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_json(a[i], b[i])) return false;
    return true;
  }
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (const auto& [k, v] : a.items())
      if (!b.contains(k) || !same_json(v, b[k])) return false;
    return true;
  }
  return a == b;
}

std::vector<fs::path> model_dirs() {
  return test::fixture_model_dirs("reference.json");
}

// How to_json_string(false) appears inside config.json: as the value of a top-level key, so
// every line after the first is indented two more spaces.
std::string nested_block(const BitsAndBytesConfig& c) {
  std::string s = c.to_json_string(false);
  s.pop_back();  // the trailing "\n" belongs to the top level only
  std::string out;
  for (char ch : s) {
    out += ch;
    if (ch == '\n') out += "  ";
  }
  return "  \"quantization_config\": " + out;
}

}  // namespace

TEST(BnbConfigFixtures, ReferenceDictsAndSavedConfigs) {
  auto dirs = model_dirs();
  ASSERT_EQ(dirs.size(), test::fixture_models().size()) << "fixtures under " << test::fixtures_root();
  for (const auto& dir : dirs) {
    json ref = read_json(dir / "reference.json");
    for (const std::string v : kVariants) {
      SCOPED_TRACE(dir.filename().string() + "/" + v);
      ASSERT_TRUE(ref.contains(v + "_config")) << "refgen error: " << ref.value(v + "_error", "?");
      BitsAndBytesConfig c = variant_config(v);
      EXPECT_TRUE(same_json(c.to_dict(), ref[v + "_config"])) << c.to_dict().dump();
      EXPECT_TRUE(same_json(c.to_diff_dict(), ref[v + "_diff_config"])) << c.to_diff_dict().dump();

      // config.json: the full dict, as a value and as text.
      fs::path cfg = dir / v / "config.json";
      EXPECT_TRUE(same_json(read_json(cfg)["quantization_config"], c.to_dict()));
      EXPECT_NE(read_text(cfg).find(nested_block(c)), std::string::npos) << nested_block(c);

      // Reading back: from the recorded dict and from the checkpoint's config.json.
      EXPECT_TRUE(same_json(BitsAndBytesConfig::from_dict(ref[v + "_config"]).to_dict(), c.to_dict()));
      BitsAndBytesConfig loaded = BitsAndBytesConfig::from_config_json(cfg);
      EXPECT_TRUE(same_json(loaded.to_dict(), c.to_dict()));
      EXPECT_EQ(loaded.quantization_method(), v == "int8" ? "llm_int8" : v == "fp4" ? "fp4" : "nf4");
      EXPECT_EQ(loaded.compute_dtype(), DType::F32);
      EXPECT_EQ(loaded.quant_storage(), DType::U8);
    }
  }
}

TEST(BnbConfigFixtures, JsonStringText) {
  // Expected text = Python's json.dumps(d, indent=2, sort_keys=True) + "\n" of the fixture
  // dicts models/llama/reference.json nf4_dq_diff_config and int8_config (run with python3).
  json ref = read_json(test::fixtures_root() / "models" / "llama" / "reference.json");
  ASSERT_TRUE(ref.contains("nf4_dq_diff_config"));
  EXPECT_EQ(variant_config("nf4_dq").to_json_string(),
            "{\n  \"_load_in_4bit\": true,\n  \"bnb_4bit_quant_type\": \"nf4\",\n"
            "  \"bnb_4bit_use_double_quant\": true,\n  \"load_in_4bit\": true\n}\n");
  EXPECT_EQ(variant_config("int8").to_json_string(false),
            "{\n  \"_load_in_4bit\": false,\n  \"_load_in_8bit\": true,\n  \"bnb_4bit_compute_dtype\": "
            "\"float32\",\n"
            "  \"bnb_4bit_quant_storage\": \"uint8\",\n  \"bnb_4bit_quant_type\": \"fp4\",\n"
            "  \"bnb_4bit_use_double_quant\": false,\n  \"llm_int8_enable_fp32_cpu_offload\": false,\n"
            "  \"llm_int8_has_fp16_weight\": false,\n  \"llm_int8_skip_modules\": null,\n"
            "  \"llm_int8_threshold\": 6.0,\n  \"load_in_4bit\": false,\n  \"load_in_8bit\": true,\n"
            "  \"quant_method\": \"bitsandbytes\"\n}\n");
  // The same texts from the recorded dicts, through from_dict.
  EXPECT_EQ(BitsAndBytesConfig::from_dict(ref["nf4_dq_config"]).to_json_string(),
            variant_config("nf4_dq").to_json_string());
  EXPECT_EQ(BitsAndBytesConfig::from_dict(ref["int8_config"]).to_json_string(false),
            variant_config("int8").to_json_string(false));
}

TEST(BnbConfigFixtures, TinyStoriesCheckpoint) {
  fs::path cfg = test::fixtures_root() / "tinystories" / "nf4_dq" / "config.json";
  BitsAndBytesConfig c = BitsAndBytesConfig::from_config_json(cfg);
  EXPECT_TRUE(same_json(c.to_dict(), variant_config("nf4_dq").to_dict()));
  EXPECT_NE(read_text(cfg).find(nested_block(c)), std::string::npos);
}

TEST(BnbConfigFixtures, UnquantizedCheckpointHasNoConfig) {
  fs::path cfg = test::fixtures_root() / "models" / "llama" / "fp32" / "config.json";
  EXPECT_THROW(BitsAndBytesConfig::from_config_json(cfg), ConfigError);
}
