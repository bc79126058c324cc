// verify() on deliberately broken copies of fixture checkpoints (rewritten in a TempDir from
// the folders transformers + bitsandbytes saved): each defect makes the check that should
// catch it fail, with a detail naming what is wrong, while the intact folder passes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/quant.h"
#include "nibble/safetensors.h"
#include "nibble/verify.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

fs::path model_dir(const std::string& arch) {
  return test::fixtures_root() / "models" / arch;
}

std::map<std::string, Tensor> read_all(const fs::path& file) {
  SafetensorsFile f = SafetensorsFile::open(file);
  std::map<std::string, Tensor> m;
  for (const auto& n : f.names()) m[n] = f.get(n).clone();
  return m;
}

// A copy of `src` in `dst` with its tensors and config.json passed through the editors.
void copy_model(const fs::path& src, const fs::path& dst,
                const std::function<void(std::map<std::string, Tensor>&)>& edit_tensors,
                const std::function<void(nlohmann::json&)>& edit_config = nullptr) {
  fs::create_directories(dst);
  fs::copy_file(src / "generation_config.json", dst / "generation_config.json");
  std::ifstream cf(src / "config.json");
  nlohmann::json config = nlohmann::json::parse(cf);
  if (edit_config) edit_config(config);
  std::ofstream(dst / "config.json") << config.dump(2);
  auto tensors = read_all(src / "model.safetensors");
  if (edit_tensors) edit_tensors(tensors);
  save_safetensors(dst / "model.safetensors", tensors);
}

std::vector<int64_t> prompt() {
  return {1, 17, 42, 99, 3, 250, 7, 11};
}

std::vector<int64_t> text() {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < 48; ++i) t.push_back((i * 37 + 5) % 512);
  return t;
}

const VerifyCheck& get(const VerifyReport& r, const std::string& name) {
  const VerifyCheck* c = r.check(name);
  if (!c) throw std::runtime_error("check " + name + " was not run");
  return *c;
}

}  // namespace

TEST(VerifyBroken, AbsmaxScaledFailsLayerErrorAndLogits) {
  test::TempDir tmp;
  const fs::path src = model_dir("llama") / "fp4";  // fp32 absmax (no double quant)
  int64_t scaled = 0;
  copy_model(src, tmp / "m", [&](std::map<std::string, Tensor>& t) {
    for (auto& [name, v] : t) {
      if (!name.ends_with(".weight.absmax")) continue;
      for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] *= 1.5f;
      ++scaled;
    }
  });
  ASSERT_GT(scaled, 0);
  VerifyOptions o{.reference = model_dir("llama") / "fp32", .prompt_ids = prompt(), .text_ids = text()};
  VerifyReport good = verify(AutoModelForCausalLM::from_pretrained(src), o);
  VerifyReport bad = verify(AutoModelForCausalLM::from_pretrained(tmp / "m"), o);
  EXPECT_TRUE(good.passed()) << good.to_table();
  const VerifyCheck& le = get(bad, "layer_error");
  EXPECT_FALSE(le.passed);
  EXPECT_NE(le.detail.find(std::to_string(scaled) + " of " + std::to_string(scaled) + " layers outside"),
            std::string::npos)
      << le.detail;
  EXPECT_NE(le.detail.find("model.layers.0.self_attn.q_proj"), std::string::npos) << le.detail;
  for (const auto& l : bad.layers)
    if (l.klass == "Linear4bit") {
      EXPECT_TRUE(l.flagged) << l.name;
    }
  // The random-weight fixture's next-token distributions are near uniform, so its logits move
  // little (the KL check is exercised on a trained model below); they still move clearly.
  ASSERT_TRUE(bad.logits && good.logits);
  EXPECT_GT(bad.logits->mean_kl, 3 * good.logits->mean_kl);
  // The structure is intact: only the numbers are wrong.
  EXPECT_TRUE(get(bad, "layer_types").passed);
  EXPECT_TRUE(get(bad, "configuration").passed);
  EXPECT_FALSE(bad.passed());
  std::printf("[ absmax x1.5 ] KL %.5f (intact %.5f); %s\n", bad.logits->mean_kl, good.logits->mean_kl,
              le.detail.substr(0, 160).c_str());
}

TEST(VerifyBroken, LayerLeftUnquantizedFailsLayerTypes) {
  test::TempDir tmp;
  const std::string layer = "model.layers.1.mlp.down_proj";
  copy_model(model_dir("llama") / "nf4_dq", tmp / "m", [&](std::map<std::string, Tensor>& t) {
    std::map<std::string, Tensor> qs;
    for (auto it = t.begin(); it != t.end();) {
      if (it->first.starts_with(layer + ".weight.")) {
        qs[it->first.substr(layer.size() + 8)] = it->second;
        it = t.erase(it);
      } else {
        ++it;
      }
    }
    QuantState4 st = quant_state_from_dict(qs, layer);
    t[layer + ".weight"] = dequantize_4bit(t.at(layer + ".weight"), st).view(st.shape).contiguous();
  });
  VerifyReport r = verify(AutoModelForCausalLM::from_pretrained(tmp / "m"), {.prompt_ids = prompt()});
  const VerifyCheck& lt = get(r, "layer_types");
  EXPECT_FALSE(lt.passed);
  EXPECT_NE(lt.detail.find(layer + " is Linear, expected Linear4bit"), std::string::npos) << lt.detail;
  const VerifyCheck& fp = get(r, "footprint");
  EXPECT_FALSE(fp.passed) << fp.detail;
  EXPECT_NE(fp.detail.find("differs from"), std::string::npos) << fp.detail;
  EXPECT_FALSE(r.passed());
}

TEST(VerifyBroken, TamperedConfigFailsConfiguration) {
  const fs::path src = model_dir("llama") / "nf4_dq";
  struct Case {
    const char* key;
    nlohmann::json value;
    const char* expect;  // in the detail
  };
  for (const Case& c :
       {Case{"bnb_4bit_quant_type", "fp4", "quant_state is nf4, config bnb_4bit_quant_type is fp4"},
        Case{"bnb_4bit_use_double_quant", false, "config bnb_4bit_use_double_quant is false"},
        Case{"quant_method", "gptq", "quant_method is \"gptq\""}}) {
    SCOPED_TRACE(c.key);
    test::TempDir tmp;
    copy_model(src, tmp / "m", nullptr,
               [&](nlohmann::json& j) { j["quantization_config"][c.key] = c.value; });
    VerifyReport r = verify(AutoModelForCausalLM::from_pretrained(tmp / "m"), {.prompt_ids = prompt()});
    const VerifyCheck& cc = get(r, "configuration");
    EXPECT_FALSE(cc.passed);
    EXPECT_NE(cc.detail.find(c.expect), std::string::npos) << cc.detail;
    EXPECT_FALSE(r.passed());
  }
}

TEST(VerifyBroken, OutputNotInExpectedSetFailsGeneration) {
  CausalLM model = AutoModelForCausalLM::from_pretrained(model_dir("llama") / "nf4_dq");
  VerifyOptions o{.prompt_ids = prompt(), .round_trip = false};
  std::vector<int64_t> real = model.generate_greedy(prompt(), o.max_new_tokens);
  std::string real_text;
  for (size_t i = 0; i < real.size(); ++i) real_text += (i ? " " : "") + std::to_string(real[i]);
  // Acceptable: a set holding the real output passes; one without it fails.
  o.expected_outputs = {"something else", real_text};
  EXPECT_TRUE(get(verify(model, o), "generation").passed);
  std::vector<int64_t> other = real;
  other.back() = (other.back() + 1) % 512;
  o.expected_outputs = {"something else"};
  o.expected_outputs.push_back("");
  for (size_t i = 0; i < other.size(); ++i)
    o.expected_outputs.back() += (i ? " " : "") + std::to_string(other[i]);
  VerifyReport r = verify(model, o);
  const VerifyCheck& g = get(r, "generation");
  EXPECT_FALSE(g.passed);
  EXPECT_NE(g.detail.find("is not among the 2 expected outputs"), std::string::npos) << g.detail;
  EXPECT_NE(g.detail.find(real_text), std::string::npos) << g.detail;
  // A required token agreement with the reference fails when the outputs diverge.
  o.expected_outputs.clear();
  o.reference = model_dir("llama") / "fp32";
  o.min_token_agreement = 1.0;
  VerifyReport a = verify(model, o);
  ASSERT_TRUE(a.generation);
  if (a.generation->agreeing < a.generation->compared) {
    EXPECT_FALSE(get(a, "generation").passed);
    EXPECT_NE(
        get(a, "generation")
            .detail.find("first divergence at new token " + std::to_string(a.generation->first_divergence)),
        std::string::npos);
  } else {
    EXPECT_TRUE(get(a, "generation").passed);
  }
}

TEST(VerifyBroken, UnquantizedModelAndBadReference) {
  CausalLM fp = AutoModelForCausalLM::from_pretrained(model_dir("llama") / "fp32");
  VerifyReport r = verify(fp, {.prompt_ids = prompt()});
  EXPECT_FALSE(get(r, "layer_types").passed);
  EXPECT_FALSE(get(r, "configuration").passed);
  EXPECT_NE(get(r, "configuration").detail.find("not quantized"), std::string::npos);
  // A reference that is itself quantized, or of another architecture, is a user error.
  CausalLM q = AutoModelForCausalLM::from_pretrained(model_dir("llama") / "nf4_dq");
  EXPECT_THROW(verify(q, {.reference = model_dir("llama") / "int8", .prompt_ids = prompt()}), ConfigError);
  EXPECT_THROW(verify(q, {.reference = model_dir("gpt2") / "fp32", .prompt_ids = prompt()}), ConfigError);
  EXPECT_THROW(verify(q, {.prompt_ids = {1, 100000}}), ShapeError);
}

TEST(VerifyBroken, TrainedModelAbsmaxScaledFailsLogits) {
  // TinyStories quantized to NF4 (fp32 absmax), saved, and a copy with every absmax x1.5.
  test::TempDir tmp;
  const fs::path src = test::shared_root() / "models/tinystories-656k";
  BitsAndBytesConfig qc{.load_in_4bit = true, .bnb_4bit_quant_type = "nf4"};
  AutoModelForCausalLM::from_pretrained(src, {.quantization_config = qc}).save_pretrained(tmp / "nf4");
  copy_model(tmp / "nf4", tmp / "bad", [](std::map<std::string, Tensor>& t) {
    for (auto& [name, v] : t)
      if (name.ends_with(".weight.absmax"))
        for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] *= 1.5f;
  });
  // The text: the stories transformers generated (reference.json), as ids.
  std::ifstream rf(test::fixtures_root() / "tinystories/reference.json");
  nlohmann::json ref = nlohmann::json::parse(rf);
  std::vector<int64_t> story;
  for (const auto& e : ref.at("fp32").at("greedy")) {
    auto ids = e.at("ids").get<std::vector<int64_t>>();
    story.insert(story.end(), ids.begin(), ids.end());
  }
  VerifyOptions o{.reference = src, .prompt_ids = {1, 80, 147, 201, 282, 57}, .text_ids = story};
  VerifyReport good = verify(AutoModelForCausalLM::from_pretrained(tmp / "nf4"), o);
  VerifyReport bad = verify(AutoModelForCausalLM::from_pretrained(tmp / "bad"), o);
  EXPECT_TRUE(good.passed()) << good.to_table();
  const VerifyCheck& lg = get(bad, "logits");
  EXPECT_FALSE(lg.passed);
  EXPECT_NE(lg.detail.find("mean KL"), std::string::npos) << lg.detail;
  EXPECT_FALSE(get(bad, "layer_error").passed);
  ASSERT_TRUE(good.logits && bad.logits);
  std::printf("[ tinystories absmax x1.5 ] KL %.4f (intact %.4f), ppl %.2f (intact %.2f, fp32 %.2f)\n",
              bad.logits->mean_kl, good.logits->mean_kl, bad.logits->perplexity, good.logits->perplexity,
              good.logits->reference_perplexity);
}
