// verify() on every fixture model: quantized while loading from fp32 (nf4 + double quant, fp4,
// int8, with the configs transformers used) and loaded from the folders transformers +
// bitsandbytes saved (with the fp32 folder as reference) — every check passes, the footprint
// equals transformers' get_memory_footprint (reference.json), the layer classes equal
// transformers' modules, and the generation check accepts transformers' own greedy output.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "nibble/verify.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

using test::row;

std::string ids_text(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

nlohmann::json reference_json(const fs::path& dir) {
  std::ifstream f(dir / "reference.json");
  return nlohmann::json::parse(f);
}

// The fixture's prompt (input_ids[0, :8]), text (both rows of input_ids) and the greedy outputs
// transformers produced (prompt + 10 tokens) in fp32 and in `variant`.
VerifyOptions fixture_options(const fs::path& dir, const std::string& variant) {
  SafetensorsFile ref = SafetensorsFile::open(dir / "reference.safetensors");
  Tensor ids = ref.get("input_ids");
  VerifyOptions o;
  o.prompt_ids = row(ids, 0, 8);
  o.text_ids = row(ids, 0, ids.size(1));
  auto second = row(ids, 1, ids.size(1));
  o.text_ids.insert(o.text_ids.end(), second.begin(), second.end());
  for (const std::string& v : {std::string("fp32"), variant})
    o.expected_outputs.push_back(ids_text(row(ref.get(v + ".greedy"), 0, 8 + o.max_new_tokens)));
  return o;
}

void expect_all_pass(const VerifyReport& r, const nlohmann::json& refj, const std::string& variant,
                     bool with_reference) {
  for (const auto& c : r.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  EXPECT_TRUE(r.passed());
  std::vector<std::string> want = {"footprint",     "layer_types", "weight_dtypes",
                                   "configuration", "generation",  "round_trip"};
  if (with_reference) want.insert(want.end(), {"layer_error", "logits"});
  for (const auto& n : want) EXPECT_NE(r.check(n), nullptr) << n << " was not run";
  EXPECT_EQ(r.footprint.footprint_bytes, refj.at(variant + "_footprint").get<int64_t>());
  // Every Linear's class as transformers reports it.
  const auto& mods = refj.at(variant + "_modules");
  for (const auto& l : r.layers) {
    ASSERT_TRUE(mods.contains(l.name)) << l.name;
    EXPECT_EQ(l.klass, mods.at(l.name).get<std::string>()) << l.name;
  }
  if (r.logits) {
    std::printf("[ verify ] %-24s KL %.5f top1 %.3f ppl %.2f/%.2f gen %lld/%lld\n", variant.c_str(),
                r.logits->mean_kl, r.logits->top1_agreement, r.logits->perplexity,
                r.logits->reference_perplexity, static_cast<long long>(r.generation->agreeing),
                static_cast<long long>(r.generation->compared));
  }
}

}  // namespace

TEST(Verify, FixturesQuantizedWhileLoading) {
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    nlohmann::json refj = reference_json(dir);
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant + " (quantized while loading)");
      LoadOptions lo;
      lo.quantization_config = BitsAndBytesConfig::from_config_json(dir / variant / "config.json");
      CausalLM model = AutoModelForCausalLM::from_pretrained(dir / "fp32", lo);
      VerifyReport r = verify(model, fixture_options(dir, variant));
      expect_all_pass(r, refj, variant, true);
      for (const auto& l : r.layers)
        if (l.klass != "Linear") {
          EXPECT_TRUE(l.has_error) << l.name;
        }
    }
  }
}

TEST(Verify, FixturesPrequantizedWithReference) {
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    nlohmann::json refj = reference_json(dir);
    for (const char* variant : {"nf4_dq", "fp4", "int8"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant + " (saved by bitsandbytes)");
      CausalLM model = AutoModelForCausalLM::from_pretrained(dir / variant);
      VerifyOptions o = fixture_options(dir, variant);
      o.reference = dir / "fp32";
      VerifyReport r = verify(model, o);
      expect_all_pass(r, refj, variant, true);
      // Without a reference the checks that need the original weights are not run, and say so.
      o.reference.reset();
      o.text_ids.clear();
      o.round_trip = false;
      VerifyReport alone = verify(model, o);
      EXPECT_TRUE(alone.passed());
      EXPECT_EQ(alone.check("layer_error"), nullptr);
      EXPECT_EQ(alone.check("logits"), nullptr);
      EXPECT_FALSE(alone.notes.empty());
    }
  }
}

TEST(Verify, UserSkipListIsReportedWithItsReason) {
  fs::path dir = test::fixtures_root() / "models/llama";
  BitsAndBytesConfig qc{.load_in_4bit = true, .bnb_4bit_quant_type = "nf4"};
  qc.llm_int8_skip_modules = std::vector<std::string>{"lm_head", "model.layers.0.mlp.down_proj"};
  CausalLM model = AutoModelForCausalLM::from_pretrained(dir / "fp32", {.quantization_config = qc});
  VerifyReport r = verify(model, {.prompt_ids = {1, 2, 3}});
  EXPECT_TRUE(r.passed()) << r.to_table();
  const std::string& d = r.check("layer_types")->detail;
  EXPECT_NE(d.find("13 of 15 Linear layers are Linear4bit"), std::string::npos) << d;
  EXPECT_NE(d.find("model.layers.0.mlp.down_proj (user list)"), std::string::npos) << d;
  EXPECT_NE(d.find("lm_head (user list)"), std::string::npos) << d;
  // The footprint the config predicts follows the same list.
  FootprintReport f = footprint_from_config(model.config(), qc, DType::F32);
  EXPECT_EQ(r.footprint.footprint_bytes, f.footprint_bytes);
  EXPECT_EQ(f.params_quantized, r.footprint.params_quantized);
  // A list that leaves the head out makes transformers quantize it: nibble does too, and says so.
  BitsAndBytesConfig all = qc;
  all.llm_int8_skip_modules = std::vector<std::string>{};
  CausalLM q_all = AutoModelForCausalLM::from_pretrained(dir / "fp32", {.quantization_config = all});
  VerifyReport ra = verify(q_all, {.prompt_ids = {1, 2, 3}});
  EXPECT_TRUE(ra.passed()) << ra.to_table();
  EXPECT_NE(ra.check("layer_types")->detail.find("15 of 15"), std::string::npos)
      << ra.check("layer_types")->detail;
}
