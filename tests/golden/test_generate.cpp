// generate() on real weights: greedy tokens equal transformers' for every fixture model
// (fp32 and the nf4/fp4 folders bitsandbytes saved) and for TinyStories' reference
// continuations; sampling is reproducible per seed and top_k = 1 equals greedy; min_new_tokens
// keeps eos out; stop strings, the streaming callback and a batch of prompts of different
// lengths behave as documented.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "nibble/generate.h"
#include "nibble/generation_config.h"
#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

using test::row;

const nlohmann::json& tinystories_ref() {
  static const nlohmann::json j = [] {
    std::ifstream f(test::fixtures_root() / "tinystories" / "reference.json");
    return nlohmann::json::parse(f);
  }();
  return j;
}

const CausalLM& tinystories() {
  static const CausalLM m =
      AutoModelForCausalLM::from_pretrained(test::shared_root() / "models" / "tinystories-656k");
  return m;
}

std::vector<int64_t> ts_prompt(size_t i) {
  return tinystories_ref().at("fp32").at("greedy").at(i).at("prompt_ids").get<std::vector<int64_t>>();
}

// Each id as "[id]": a decode function for stop strings without a tokenizer.
std::string bracket_decode(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) s += "[" + std::to_string(id) + "]";
  return s;
}

}  // namespace

TEST(Generate, GreedyEqualsFixtureModels) {
  int checked = 0;
  for (const auto& dir : test::fixture_model_dirs("reference.safetensors")) {
    SafetensorsFile ref = SafetensorsFile::open(dir / "reference.safetensors");
    Tensor ids = ref.get("input_ids");  // [B, T]
    for (const char* variant : {"fp32", "nf4_dq", "fp4"}) {
      if (!test::fixture_exists(dir / variant / "config.json")) continue;
      SCOPED_TRACE(dir.filename().string() + "/" + variant);
      CausalLM model = AutoModelForCausalLM::from_pretrained(dir / variant);
      Tensor greedy = ref.get(std::string(variant) + ".greedy");  // [1, 8 + 16]
      const std::vector<int64_t> want = row(greedy, 0, greedy.size(1));
      GenerateOptions o;
      o.max_new_tokens = greedy.size(1) - 8;
      Generation g = generate(model, row(ids, 0, 8), o);
      EXPECT_EQ(g.ids, want);
      EXPECT_EQ(g.prompt_length, 8u);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3 * int(test::fixture_models().size()));  // fp32, nf4_dq, fp4 of each
}

TEST(Generate, TinyStoriesGreedyContinuations) {
  for (const char* variant : {"fp32", "nf4_dq"}) {
    CausalLM nf4;
    if (std::string(variant) == "nf4_dq")
      nf4 = AutoModelForCausalLM::from_pretrained(test::fixtures_root() / "tinystories" / "nf4_dq");
    const CausalLM& model = std::string(variant) == "fp32" ? tinystories() : nf4;
    for (const auto& c : tinystories_ref().at(variant).at("greedy")) {
      auto prompt = c.at("prompt_ids").get<std::vector<int64_t>>();
      auto want = c.at("ids").get<std::vector<int64_t>>();
      GenerateOptions o;
      o.max_new_tokens = int64_t(want.size() - prompt.size());
      Generation g = generate(model, prompt, o);
      EXPECT_EQ(g.ids, want) << variant << ": " << c.at("prompt");
    }
  }
}

TEST(Generate, SamplingIsReproduciblePerSeed) {
  GenerateOptions o;
  o.max_new_tokens = 40;
  o.do_sample = true;
  o.temperature = 1.0;
  o.seed = 1;
  auto a = generate(tinystories(), ts_prompt(0), o).ids;
  auto b = generate(tinystories(), ts_prompt(0), o).ids;
  EXPECT_EQ(a, b);
  o.seed = 2;
  auto c = generate(tinystories(), ts_prompt(0), o).ids;
  EXPECT_NE(a, c);
  // with every warper on
  o.top_k = 20;
  o.top_p = 0.9;
  o.min_p = 0.05;
  o.temperature = 0.8;
  o.repetition_penalty = 1.3;
  EXPECT_EQ(generate(tinystories(), ts_prompt(0), o).ids, generate(tinystories(), ts_prompt(0), o).ids);
}

TEST(Generate, TopK1SamplingEqualsGreedy) {
  GenerateOptions o;
  o.max_new_tokens = 40;
  auto greedy = generate(tinystories(), ts_prompt(1), o).ids;
  o.do_sample = true;
  o.top_k = 1;
  for (uint64_t seed : {0, 1, 2}) {
    o.seed = seed;
    EXPECT_EQ(generate(tinystories(), ts_prompt(1), o).ids, greedy) << "seed " << seed;
  }
}

TEST(Generate, RepetitionPenaltyChangesGreedyOutput) {
  // The reference continuation repeats tokens ("Spot, Spot"); a strong penalty must avoid
  // choosing a token already in the sequence wherever another has a positive logit.
  GenerateOptions o;
  o.max_new_tokens = 40;
  auto plain = generate(tinystories(), ts_prompt(0), o).ids;
  o.repetition_penalty = 5.0;
  auto penalized = generate(tinystories(), ts_prompt(0), o).ids;
  EXPECT_NE(plain, penalized);
  size_t plain_unique = std::set<int64_t>(plain.begin(), plain.end()).size();
  size_t pen_unique = std::set<int64_t>(penalized.begin(), penalized.end()).size();
  EXPECT_GT(pen_unique, plain_unique);
}

TEST(Generate, EosStopsAndMinNewTokensKeepsItOut) {
  GenerateOptions o;
  o.max_new_tokens = 20;
  auto greedy = generate(tinystories(), ts_prompt(0), o);
  const size_t P = greedy.prompt_length;
  // Make the 3rd greedy token the eos: generation stops right after it, eos included.
  const int64_t third = greedy.ids[P + 2];
  size_t first = P;
  while (greedy.ids[first] != third) ++first;
  o.eos_token_id = std::vector<int64_t>{third};
  auto stopped = generate(tinystories(), ts_prompt(0), o);
  EXPECT_EQ(stopped.finish_reason, FinishReason::Eos);
  EXPECT_EQ(stopped.ids, std::vector<int64_t>(greedy.ids.begin(), greedy.ids.begin() + int64_t(first) + 1));
  // With min_new_tokens past it, that token cannot appear among the first min_new_tokens.
  o.min_new_tokens = 10;
  auto longer = generate(tinystories(), ts_prompt(0), o);
  ASSERT_GE(longer.ids.size(), P + 10);
  for (size_t i = P; i < P + 10; ++i) EXPECT_NE(longer.ids[i], third) << "position " << i - P;
  EXPECT_EQ(std::vector<int64_t>(longer.ids.begin(), longer.ids.begin() + int64_t(P + 2)),
            std::vector<int64_t>(greedy.ids.begin(), greedy.ids.begin() + int64_t(P + 2)));
}

TEST(Generate, StopStringsEndTheSequenceAfterTheCompletingToken) {
  GenerateOptions o;
  o.max_new_tokens = 30;
  auto greedy = generate(tinystories(), ts_prompt(0), o);
  const size_t P = greedy.prompt_length;
  o.decode = bracket_decode;
  // A stop string spanning two new tokens ("7][12" style): stops after the second.
  const std::string span = std::to_string(greedy.ids[P + 4]) + "][" + std::to_string(greedy.ids[P + 5]);
  o.stop_strings = {"never-produced", span};
  auto g = generate(tinystories(), ts_prompt(0), o);
  EXPECT_EQ(g.finish_reason, FinishReason::StopString);
  ASSERT_LE(g.ids.size(), P + 6);
  EXPECT_NE(bracket_decode(g.new_ids()).find(span), std::string::npos);
  EXPECT_EQ(g.ids, std::vector<int64_t>(greedy.ids.begin(), greedy.ids.begin() + int64_t(g.ids.size())));
  // One straddling the prompt's end stops after the first new token; one inside the prompt
  // alone never fires.
  o.stop_strings = {std::to_string(greedy.ids[P - 1]) + "][" + std::to_string(greedy.ids[P])};
  EXPECT_EQ(generate(tinystories(), ts_prompt(0), o).ids.size(), P + 1);
  o.stop_strings = {"[" + std::to_string(greedy.ids[0]) + "][" + std::to_string(greedy.ids[1]) + "]"};
  auto inside = generate(tinystories(), ts_prompt(0), o);
  EXPECT_EQ(inside.finish_reason, FinishReason::Length);
  EXPECT_EQ(inside.ids, greedy.ids);
  // Without a decode function, stop strings are an error.
  o.decode = nullptr;
  EXPECT_THROW(generate(tinystories(), ts_prompt(0), o), ConfigError);
}

TEST(Generate, StreamingCallbackSeesTokensInOrderAndCanStop) {
  GenerateOptions o;
  o.max_new_tokens = 25;
  std::vector<int64_t> seen;
  o.on_token = [&](size_t seq, int64_t t) {
    EXPECT_EQ(seq, 0u);
    seen.push_back(t);
    return true;
  };
  auto g = generate(tinystories(), ts_prompt(0), o);
  EXPECT_EQ(seen, g.new_ids());
  EXPECT_EQ(seen.size(), 25u);
  seen.clear();
  o.on_token = [&](size_t, int64_t t) {
    seen.push_back(t);
    return seen.size() < 3;
  };
  auto stopped = generate(tinystories(), ts_prompt(0), o);
  EXPECT_EQ(stopped.finish_reason, FinishReason::Callback);
  EXPECT_EQ(stopped.new_ids(), seen);
  EXPECT_EQ(std::vector<int64_t>(g.ids.begin(), g.ids.begin() + int64_t(stopped.ids.size())), stopped.ids);
}

TEST(Generate, BatchOfDifferentLengthsEqualsEachPromptAlone) {
  std::vector<std::vector<int64_t>> prompts{ts_prompt(0), ts_prompt(1), {1, 80}};
  ASSERT_NE(prompts[0].size(), prompts[1].size());
  GenerateOptions o;
  o.max_new_tokens = 30;
  // One sequence finishes early through the callback; the others go on.
  std::vector<std::vector<int64_t>> streamed(prompts.size());
  o.on_token = [&](size_t seq, int64_t t) {
    streamed[seq].push_back(t);
    return !(seq == 2 && streamed[seq].size() == 5);
  };
  auto batch = generate(tinystories(), prompts, o);
  ASSERT_EQ(batch.size(), prompts.size());
  o.on_token = nullptr;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = generate(tinystories(), prompts[i], o);
    if (i == 2) {
      EXPECT_EQ(batch[i].new_ids().size(), 5u);
      EXPECT_EQ(batch[i].ids,
                std::vector<int64_t>(alone.ids.begin(), alone.ids.begin() + int64_t(batch[i].ids.size())));
    } else {
      EXPECT_EQ(batch[i].ids, alone.ids) << "prompt " << i;
    }
    EXPECT_EQ(streamed[i], batch[i].new_ids());
  }
  // Sampling: the first sequence of a batch draws from the same stream as a prompt alone.
  o.do_sample = true;
  o.seed = 5;
  EXPECT_EQ(generate(tinystories(), prompts, o)[0].ids, generate(tinystories(), prompts[0], o).ids);
}

TEST(Generate, DefaultsComeFromGenerationConfig) {
  // TinyStories' generation_config.json sets no lengths: 20 new tokens, greedy, eos 2.
  const GenerationConfig& gc = tinystories().generation_config();
  EXPECT_EQ(gc.eos_token_id, std::vector<int64_t>{2});
  auto g = generate(tinystories(), ts_prompt(0));
  auto ref = tinystories_ref().at("fp32").at("greedy").at(0).at("ids").get<std::vector<int64_t>>();
  EXPECT_EQ(g.ids.size(), g.prompt_length + 20);
  EXPECT_EQ(g.ids, std::vector<int64_t>(ref.begin(), ref.begin() + int64_t(g.ids.size())));
}
