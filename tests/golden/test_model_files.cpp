// What a loaded model reports and writes, against transformers: the leaf Linear/Embedding
// modules and their classes (reference.json's <variant>_modules), get_memory_footprint
// (<variant>_footprint), and save_pretrained — which, since quantization is bit-exact, must
// write the very bytes transformers + bitsandbytes saved, and must load back to the same logits.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

// Linear layers and token/position embeddings (rotary "embeddings" hold no weights).
bool is_leaf_of_interest(const std::string& k) {
  return k == "Linear" || k == "Linear4bit" || k == "Linear8bitLt" ||
         (k.ends_with("Embedding") && k.find("Rotary") == std::string::npos);
}

CausalLM load_variant(const fs::path& dir, const std::string& variant) {
  if (variant == "fp32") return AutoModelForCausalLM::from_pretrained(dir / "fp32");
  LoadOptions opts;
  opts.quantization_config = BitsAndBytesConfig::from_config_json(dir / variant / "config.json");
  return AutoModelForCausalLM::from_pretrained(dir / "fp32", opts);
}

}  // namespace

TEST(ModelFiles, ModulesAndFootprintMatchTransformers) {
  for (const auto& dir : test::fixture_model_dirs("reference.json")) {
    nlohmann::json ref = read_json(dir / "reference.json");
    // reference.json lists the modules of the quantized variants (fp32: its footprint only).
    CausalLM fp32 = load_variant(dir, "fp32");
    EXPECT_EQ(fp32.get_memory_footprint(), ref.at("fp32_footprint").get<int64_t>()) << dir.filename();
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      EXPECT_TRUE(ref.contains(std::string(variant) + "_modules")) << dir / "reference.json";
      if (!ref.contains(std::string(variant) + "_modules")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant);
      CausalLM model = load_variant(dir, variant);
      std::map<std::string, std::string> want, got;
      for (const auto& [name, klass] : ref.at(std::string(variant) + "_modules").items()) {
        std::string k = klass.get<std::string>();
        if (is_leaf_of_interest(k)) want[name] = k;
      }
      for (const auto& m : model.modules())
        if (is_leaf_of_interest(m.klass)) got[m.name] = m.klass;
      EXPECT_EQ(got, want);
      EXPECT_EQ(model.get_memory_footprint(), ref.at(std::string(variant) + "_footprint").get<int64_t>());
    }
  }
}

TEST(ModelFiles, SavePretrainedWritesWhatBitsandbytesWrote) {
  for (const auto& dir : test::fixture_model_dirs("reference.json")) {
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      if (!test::fixture_exists(dir / variant / "model.safetensors")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant);
      CausalLM model = load_variant(dir, variant);
      test::TempDir out;
      model.save_pretrained(out.path());
      Checkpoint ours = Checkpoint::open(out.path()), theirs = Checkpoint::open(dir / variant);
      EXPECT_EQ(ours.names(), theirs.names());
      for (const auto& n : theirs.names()) {
        if (!ours.contains(n)) continue;
        Tensor a = ours.get(n), b = theirs.get(n);
        EXPECT_EQ(a.shape(), b.shape()) << n;
        EXPECT_TRUE(a.dtype() == b.dtype() && a.nbytes() == b.nbytes() &&
                    std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0)
            << n;
      }
      // the whole weights file, byte for byte
      EXPECT_EQ(test::read_file(out / "model.safetensors"),
                test::read_file(dir / variant / "model.safetensors"));
      nlohmann::json cfg = read_json(out / "config.json"), want = read_json(dir / variant / "config.json");
      EXPECT_EQ(cfg.at("quantization_config"), want.at("quantization_config"));
    }
  }
}

TEST(ModelFiles, SavePretrainedRoundTrip) {
  for (const auto& dir : test::fixture_model_dirs("reference.json")) {
    for (const char* variant : {"fp32", "nf4_dq", "fp4", "int8"}) {
      SCOPED_TRACE(dir.filename().string() + "/" + variant);
      CausalLM model = load_variant(dir, variant);
      test::TempDir out;
      model.save_pretrained(out.path());  // every fixture variant must save: an error fails the test
      CausalLM back = AutoModelForCausalLM::from_pretrained(out.path());
      EXPECT_EQ(back.is_quantized(), std::string(variant) != "fp32");
      std::vector<int64_t> ids = {1, 5, 9, 200, 17, 3, 77, 300};
      Tensor a = model.forward(ids), b = back.forward(ids);
      ASSERT_EQ(a.shape(), b.shape());
      EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()));
    }
  }
}

TEST(ModelFiles, ShardedSaveLoadsBack) {
  fs::path dir = test::fixtures_root() / "models" / "llama";
  CausalLM model = load_variant(dir, "nf4_dq");
  test::TempDir out;
  model.save_pretrained(out.path(), 60'000);  // forces several shards
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  ASSERT_TRUE(fs::exists(out / "model.safetensors.index.json"));
  nlohmann::json index = read_json(out / "model.safetensors.index.json");
  std::set<std::string> shards;
  for (const auto& [k, v] : index.at("weight_map").items()) shards.insert(v.get<std::string>());
  EXPECT_GT(shards.size(), 2u);
  CausalLM back = AutoModelForCausalLM::from_pretrained(out.path());
  std::vector<int64_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  Tensor a = model.forward(ids), b = back.forward(ids);
  EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()));
}
