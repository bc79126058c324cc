// verify() on a real trained model (../shared/models/tinystories-656k, tied head): NF4 + double
// quant and LLM.int8 quantized on load, and the nf4_dq folder transformers + bitsandbytes saved
// (with the fp32 model as reference). Every check passes; footprints are transformers'; the
// generation check accepts transformers' greedy output of the same variant (reference.json);
// per-layer errors of real weights stay within bitsandbytes' yardsticks.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/model.h"
#include "nibble/verify.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

std::string ids_text(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

struct Fixture {
  fs::path model = test::shared_root() / "models/tinystories-656k";
  nlohmann::json ref;
  Fixture() {
    std::ifstream f(test::fixtures_root() / "tinystories/reference.json");
    ref = nlohmann::json::parse(f);
  }
  // Prompt 0; text = every greedy continuation in reference.json; expected = the variant's
  // (and fp32's) output cut at 10 new tokens.
  VerifyOptions options(const std::string& variant) const {
    VerifyOptions o;
    const auto& g = ref.at(variant).at("greedy").at(0);
    o.prompt_ids = g.at("prompt_ids").get<std::vector<int64_t>>();
    for (const std::string v : {"fp32", "nf4_dq", "int8"})
      for (const auto& e : ref.at(v).at("greedy")) {
        auto ids = e.at("ids").get<std::vector<int64_t>>();
        o.text_ids.insert(o.text_ids.end(), ids.begin(), ids.end());
      }
    for (const std::string& v : {std::string("fp32"), variant}) {
      auto ids = ref.at(v).at("greedy").at(0).at("ids").get<std::vector<int64_t>>();
      ids.resize(o.prompt_ids.size() + size_t(o.max_new_tokens));
      o.expected_outputs.push_back(ids_text(ids));
    }
    return o;
  }
};

void expect_pass(const VerifyReport& r, int64_t footprint) {
  for (const auto& c : r.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  for (const char* n : {"footprint", "layer_types", "weight_dtypes", "configuration", "generation",
                        "round_trip", "layer_error", "logits"})
    EXPECT_NE(r.check(n), nullptr) << n;
  EXPECT_EQ(r.footprint.footprint_bytes, footprint);
  EXPECT_NE(r.check("layer_types")->detail.find("lm_head (output head, tied)"), std::string::npos)
      << r.check("layer_types")->detail;
  ASSERT_TRUE(r.logits);
  double worst = 0;
  for (const auto& l : r.layers) worst = std::max(worst, l.norm_mean_abs_error);
  std::printf(
      "[ tinystories ] KL %.5f top1 %.3f ppl %.3f vs %.3f, gen %lld/%lld, worst layer error %.4f sigma, %.3f "
      "bits/param\n",
      r.logits->mean_kl, r.logits->top1_agreement, r.logits->perplexity, r.logits->reference_perplexity,
      static_cast<long long>(r.generation->agreeing), static_cast<long long>(r.generation->compared), worst,
      r.footprint.bits_per_param);
}

}  // namespace

TEST(VerifyTinyStories, QuantizedWhileLoading) {
  Fixture fx;
  BitsAndBytesConfig nf4{
      .load_in_4bit = true, .bnb_4bit_quant_type = "nf4", .bnb_4bit_use_double_quant = true};
  BitsAndBytesConfig int8{.load_in_8bit = true};
  for (const auto& [variant, qc] :
       {std::pair{std::string("nf4_dq"), nf4}, std::pair{std::string("int8"), int8}}) {
    SCOPED_TRACE(variant);
    CausalLM model = AutoModelForCausalLM::from_pretrained(fx.model, {.quantization_config = qc});
    expect_pass(verify(model, fx.options(variant)), fx.ref.at(variant).at("footprint").get<int64_t>());
  }
}

TEST(VerifyTinyStories, SavedNf4WithReference) {
  Fixture fx;
  CausalLM model = AutoModelForCausalLM::from_pretrained(test::fixtures_root() / "tinystories/nf4_dq");
  VerifyOptions o = fx.options("nf4_dq");
  o.reference = fx.model;
  expect_pass(verify(model, o), fx.ref.at("nf4_dq").at("footprint").get<int64_t>());
}
