// Bad model folders: each defect gets an error that names the tensor or field at fault, and a
// failed save leaves nothing behind. The folders are fixture models altered by the test.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "nibble/model.h"
#include "nibble/safetensors.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

fs::path llama(const char* variant) {
  return test::fixtures_root() / "models" / "llama" / variant;
}

// Copies a model folder into dir, letting edit() change the tensors and config first.
void copy_model(const fs::path& from, const fs::path& dir,
                const std::function<void(std::map<std::string, Tensor>&, nlohmann::ordered_json&)>& edit) {
  Checkpoint ck = Checkpoint::open(from);
  std::map<std::string, Tensor> t;
  for (const auto& n : ck.names()) t[n] = ck.get(n).clone();
  std::ifstream f(from / "config.json");
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(f);
  edit(t, cfg);
  fs::create_directories(dir);
  save_safetensors(dir / "model.safetensors", t);
  std::ofstream(dir / "config.json") << cfg.dump(2);
}

template <typename E>
void expect_error(const fs::path& dir, const std::vector<std::string>& parts) {
  try {
    AutoModelForCausalLM::from_pretrained(dir);
    ADD_FAILURE() << "no error";
  } catch (const E& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

}  // namespace

TEST(ModelBadInput, MissingTensor) {
  test::TempDir d;
  copy_model(llama("fp32"), d.path(), [](auto& t, auto&) { t.erase("model.layers.1.mlp.up_proj.weight"); });
  expect_error<FormatError>(d.path(), {"model.layers.1.mlp.up_proj.weight"});
}

TEST(ModelBadInput, ExtraTensor) {
  test::TempDir d;
  copy_model(llama("fp32"), d.path(),
             [](auto& t, auto&) { t["model.layers.0.surprise.weight"] = Tensor::zeros({4}, DType::F32); });
  expect_error<FormatError>(d.path(), {"model.layers.0.surprise.weight"});
}

TEST(ModelBadInput, MisshapedTensor) {
  test::TempDir d;
  copy_model(llama("fp32"), d.path(), [](auto& t, auto&) {
    t["model.layers.0.self_attn.q_proj.weight"] = Tensor::zeros({64, 63}, DType::F32);
  });
  expect_error<FormatError>(d.path(), {"model.layers.0.self_attn.q_proj.weight", "[64, 63]"});
  test::TempDir d2;
  copy_model(llama("fp32"), d2.path(),
             [](auto& t, auto&) { t["model.norm.weight"] = Tensor::zeros({65}, DType::F32); });
  expect_error<FormatError>(d2.path(), {"model.norm.weight"});
}

TEST(ModelBadInput, DtypeMismatch) {
  test::TempDir d;
  copy_model(llama("fp32"), d.path(), [](auto& t, auto&) {
    t["model.layers.0.mlp.down_proj.weight"] = Tensor::zeros({64, 128}, DType::I32);
  });
  expect_error<FormatError>(d.path(), {"model.layers.0.mlp.down_proj.weight", "i32"});
}

TEST(ModelBadInput, MissingConfigField) {
  test::TempDir d;
  copy_model(llama("fp32"), d.path(), [](auto&, auto& cfg) { cfg.erase("hidden_size"); });
  expect_error<ConfigError>(d.path(), {"config.json", "hidden_size"});
}

TEST(ModelBadInput, UnknownArchitectureListsSupported) {
  test::TempDir d;
  copy_model(llama("fp32"), d.path(), [](auto&, auto& cfg) { cfg["architectures"] = {"MambaForCausalLM"}; });
  expect_error<ConfigError>(d.path(), {"MambaForCausalLM", "LlamaForCausalLM", "BloomForCausalLM"});
}

TEST(ModelBadInput, CorruptQuantStateJson) {
  test::TempDir d;
  std::string key = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4";
  copy_model(llama("nf4_dq"), d.path(), [&](auto& t, auto&) {
    std::vector<uint8_t> bad = {'{', '"', 'q', 'u', 'a'};
    t[key] = Tensor::from_vector<uint8_t>({int64_t(bad.size())}, DType::U8, bad);
  });
  expect_error<FormatError>(d.path(), {"model.layers.0.self_attn.q_proj.weight", "JSON"});
}

TEST(ModelBadInput, FourBitWeightWithoutQuantState) {
  test::TempDir d;
  copy_model(llama("nf4_dq"), d.path(), [](auto& t, auto&) {
    t.erase("model.layers.1.mlp.down_proj.weight.quant_state.bitsandbytes__nf4");
  });
  expect_error<FormatError>(d.path(), {"model.layers.1.mlp.down_proj.weight", "quant_state"});
}

TEST(ModelBadInput, FailedSaveLeavesNothing) {
  CausalLM model = AutoModelForCausalLM::from_pretrained(llama("fp32"));
  test::TempDir d;
  std::ofstream(d / "model") << "a file, not a folder";
  try {
    model.save_pretrained(d / "model");
    ADD_FAILURE() << "no error";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("it exists and is not a folder"), std::string::npos) << e.what();
  }
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(d.path())) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"model"});  // no staging folder left beside it
  EXPECT_EQ(fs::file_size(d / "model"), 20u);
}

TEST(ModelPerplexity, MeanNllMatchesTransformersLogits) {
  // transformers' loss: cross-entropy of logits[:-1] against ids[1:], averaged; computed here
  // from transformers' own logits and compared with nibble's.
  SafetensorsFile ref =
      SafetensorsFile::open(test::fixtures_root() / "models" / "llama" / "reference.safetensors");
  Tensor ids = ref.get("input_ids"), logits = ref.get("fp32.logits");
  const int64_t T = ids.size(1), V = logits.size(2);
  std::vector<int64_t> row(ids.data<int64_t>(), ids.data<int64_t>() + T);
  double want = 0;
  for (int64_t t = 0; t + 1 < T; ++t) {
    const float* l = logits.data<float>() + t * V;
    double mx = *std::max_element(l, l + V), s = 0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(double(l[j]) - mx);
    want += mx + std::log(s) - l[row[size_t(t + 1)]];
  }
  want /= double(T - 1);
  CausalLM model = AutoModelForCausalLM::from_pretrained(llama("fp32"));
  EXPECT_NEAR(model.mean_nll(row), want, 1e-5 * want);
}
