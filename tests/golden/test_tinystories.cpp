// The real model ../shared/models/tinystories-656k: greedy continuations (40 new tokens) of
// transformers + bitsandbytes for fp32 and nf4 + double quant (quantized while loading, and
// the saved nf4_dq/ folder), for int8 equal up to the first near tie (model_check.h); memory
// footprints as transformers counts them.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "model_check.h"
#include "nibble/bnb_config.h"
#include "nibble/model.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

const nlohmann::json& reference() {
  static const nlohmann::json j = [] {
    std::ifstream f(test::fixtures_root() / "tinystories" / "reference.json");
    return nlohmann::json::parse(f);
  }();
  return j;
}

fs::path model_dir() {
  return test::shared_root() / "models" / "tinystories-656k";
}

void check_greedy(const CausalLM& model, const std::string& variant, bool required) {
  for (const auto& g : reference().at(variant).at("greedy")) {
    auto prompt = g.at("prompt_ids").get<std::vector<int64_t>>();
    auto want = g.at("ids").get<std::vector<int64_t>>();
    auto got = model.generate_greedy(prompt, int64_t(want.size() - prompt.size()));
    if (required) {
      EXPECT_EQ(got, want) << variant << ": " << g.at("prompt");
    } else {
      // LLM.int8: every step's reference token within int8's tolerance (2e-2 of max |logit|) of
      // nibble's best, and the tokens equal up to the first step whose top-2 margin is inside
      // it: N = 5 and 4 new tokens for the two prompts today (40 and 28 agree in fact; the 29th
      // of the second prompt differs by 4.5e-3 of max |logit|, within the tolerance).
      test::check_greedy_near_ties(model, want, prompt.size(), test::tolerance("int8"),
                                   "tinystories/" + variant);
    }
  }
}

}  // namespace

TEST(TinyStories, Fp32Greedy) {
  CausalLM model = AutoModelForCausalLM::from_pretrained(model_dir());
  check_greedy(model, "fp32", true);
  EXPECT_EQ(model.get_memory_footprint(), reference().at("fp32").at("footprint").get<int64_t>());
}

TEST(TinyStories, Nf4QuantizedWhileLoading) {
  LoadOptions opts;
  opts.quantization_config =
      BitsAndBytesConfig::from_config_json(test::fixtures_root() / "tinystories" / "nf4_dq" / "config.json");
  CausalLM model = AutoModelForCausalLM::from_pretrained(model_dir(), opts);
  check_greedy(model, "nf4_dq", true);
  EXPECT_EQ(model.get_memory_footprint(), reference().at("nf4_dq").at("footprint").get<int64_t>());
}

TEST(TinyStories, Nf4SavedFolder) {
  CausalLM model = AutoModelForCausalLM::from_pretrained(test::fixtures_root() / "tinystories" / "nf4_dq");
  check_greedy(model, "nf4_dq", true);
}

TEST(TinyStories, Int8GreedyUpToNearTies) {
  BitsAndBytesConfig qc;
  qc.load_in_8bit = true;
  CausalLM model = AutoModelForCausalLM::from_pretrained(model_dir(), {.quantization_config = qc});
  check_greedy(model, "int8", false);
  EXPECT_EQ(model.get_memory_footprint(), reference().at("int8").at("footprint").get<int64_t>());
}
