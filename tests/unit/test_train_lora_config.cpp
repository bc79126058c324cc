// LoraConfig and adapter files against peft 0.21's own files in the fixtures (byte for byte),
// peft's validation errors, target-module matching and the init distributions.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "io/read_file.h"
#include "nibble/error.h"
#include "nibble/lora.h"
#include "nibble/safetensors.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;
const fs::path kLlama = fs::path(NIBBLE_SOURCE_DIR) / "../shared/fixtures/models/llama";

// The llama fixture's Linear sites, read from the base model's safetensors (not from the
// adapter under test).
std::vector<LinearSite> llama_sites() {
  SafetensorsFile f = SafetensorsFile::open(kLlama / "fp32/model.safetensors");
  std::vector<LinearSite> s;
  for (const auto& n : f.names()) {
    if (!n.ends_with(".weight")) continue;
    const auto& sh = f.info(n).shape;
    const std::string mod = n.substr(0, n.size() - 7);
    if (sh.size() == 2 && mod.find("embed") == std::string::npos)
      s.push_back({mod, sh[1], sh[0], mod == "lm_head"});
  }
  if (!f.contains("lm_head.weight")) s.push_back({"lm_head", 64, 512, true});
  return s;
}

TEST(LoraConfig, DefaultsArePefts) {
  LoraConfig c;
  EXPECT_EQ(c.r, 8);
  EXPECT_EQ(c.lora_alpha, 8);
  EXPECT_EQ(c.lora_dropout, 0.0);
  EXPECT_EQ(c.bias, "none");
  EXPECT_EQ(c.init_lora_weights, "true");
  EXPECT_FALSE(c.use_rslora);
  EXPECT_DOUBLE_EQ(c.scaling(), 1.0);
  c.r = 16;
  c.lora_alpha = 32;
  c.use_rslora = true;
  EXPECT_DOUBLE_EQ(c.scaling(), 8.0);  // 32 / sqrt(16)
}

TEST(LoraConfig, FixtureRoundTripsByteForByte) {
  for (const char* d : {"lora_init", "lora_final"}) {
    const std::string want = io::read_text_file(kLlama / d / "adapter_config.json");
    LoraConfig c = LoraConfig::load(kLlama / d);
    EXPECT_EQ(c.r, 8);
    EXPECT_EQ(c.lora_alpha, 16);
    EXPECT_EQ(c.target_modules.size(), 7u);
    EXPECT_EQ(c.to_json_text(), want) << d;
  }
}

TEST(LoraConfig, FreshConfigWritesPeftsKeys) {
  // A config built in nibble writes the same key set and values peft writes for the same
  // settings: the fixture's file with the fields set the same way.
  LoraConfig fx = LoraConfig::load(kLlama / "lora_init");
  LoraConfig c;
  c.r = 8;
  c.lora_alpha = 16;
  c.target_modules = fx.target_modules;
  c.inference_mode = true;
  c.base_model_name_or_path = "/tmp/ref/models/llama/nf4_dq";
  EXPECT_EQ(c.to_json_text(), io::read_text_file(kLlama / "lora_init/adapter_config.json"));
}

TEST(LoraConfig, PeftValidationErrors) {
  auto expect_err = [](auto mutate, const char* needle) {
    LoraConfig c;
    c.target_modules = {"q_proj"};
    mutate(c);
    try {
      c.validate();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_err([](LoraConfig& c) { c.r = 0; },
             "`r` should be a positive integer value but the value passed is 0");
  expect_err([](LoraConfig& c) { c.bias = "some"; }, "Requested bias: some, is not implemented.");
  expect_err([](LoraConfig& c) { c.lora_dropout = 1.5; },
             "dropout probability has to be between 0 and 1, but got 1.5");
  expect_err([](LoraConfig& c) { c.task_type = "LM"; }, "Invalid task type: 'LM'");
  expect_err([](LoraConfig& c) { c.init_lora_weights = "pissa"; }, "init_lora_weights");
  expect_err([](LoraConfig& c) { c.layers_pattern = "layers"; },
             "`layers_to_transform` must also be specified");
  expect_err(
      [](LoraConfig& c) {
        c.target_modules_str = ".*q_proj";
        c.layers_to_transform = std::vector<int64_t>{0};
      },
      "`layers_to_transform` cannot be used when `target_modules` is a str.");
}

// Integer fields hold JSON integers: 1e300 (undefined behaviour if converted to int64) and 8.0
// are refused with the field's name, as are integers past int64.
TEST(LoraConfig, IntegerFieldsRefuseFloats) {
  const char* cases[][2] = {{R"({"r": 1e300})", "'r'"},
                            {R"({"r": 8.0})", "'r'"},
                            {R"({"r": 18446744073709551615})", "'r'"},
                            {R"({"r": 8, "layers_to_transform": [0, -1e300]})", "'layers_to_transform'"},
                            {R"({"r": 8, "layers_to_transform": 2.5})", "'layers_to_transform'"},
                            {R"({"r": 8, "rank_pattern": {"q_proj": 1e300}})", "'rank_pattern'"}};
  for (const auto& [text, needle] : cases) {
    nlohmann::json j = nlohmann::json::parse(text);
    j["peft_type"] = "LORA";
    j["target_modules"] = {"q_proj"};
    try {
      (void)LoraConfig::from_json(j, "adapter_config.json");
      ADD_FAILURE() << "accepted " << text;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("adapter_config.json"), std::string::npos) << e.what();
    }
  }
  nlohmann::json ok = {
      {"peft_type", "LORA"}, {"r", 8}, {"target_modules", {"q_proj"}}, {"layers_to_transform", 1}};
  EXPECT_EQ(LoraConfig::from_json(ok, "adapter_config.json").r, 8);
}

TEST(LoraConfig, TargetMatching) {
  const auto sites = llama_sites();
  LoraConfig c;
  c.target_modules_str = "all-linear";
  auto all = lora_target_names(c, sites);
  EXPECT_EQ(all.size(), 14u);  // 7 per layer, lm_head excluded
  for (const auto& n : all) EXPECT_NE(n, "lm_head");
  c.target_modules_str.reset();
  c.target_modules = {"q_proj", "v_proj"};
  EXPECT_EQ(lora_target_names(c, sites).size(), 4u);
  c.layers_to_transform = std::vector<int64_t>{1};
  auto l1 = lora_target_names(c, sites);
  ASSERT_EQ(l1.size(), 2u);
  EXPECT_EQ(l1[0].rfind("model.layers.1.", 0), 0u);
  c.layers_to_transform.reset();
  c.target_modules_str = R"(model\.layers\.0\.mlp\..*)";
  EXPECT_EQ(lora_target_names(c, sites).size(), 3u);
  c.target_modules_str.reset();
  c.target_modules = {"proj"};  // suffix match is on whole dotted names: "q_proj" != "proj"
  try {
    lora_target_names(c, sites);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj"), std::string::npos) << e.what();
  }
}

TEST(LoraAdapter, LoadsFixtureAndSavesPeftLayout) {
  const auto sites = llama_sites();
  LoraAdapter a = LoraAdapter::load(kLlama / "lora_init", sites);
  EXPECT_EQ(a.modules.size(), 14u);
  const auto& q = a.modules.at("model.layers.0.self_attn.q_proj");
  EXPECT_EQ(q.A.shape(), (Shape{8, 64}));
  const fs::path out = fs::temp_directory_path() / ("nibble_lora_" + std::to_string(::getpid()));
  a.save(out);
  // Same tensors, names, layout and bytes as peft's file (both f32, sorted names, {"format":"pt"}).
  EXPECT_EQ(io::read_text_file(out / "adapter_model.safetensors"),
            io::read_text_file(kLlama / "lora_init/adapter_model.safetensors"));
  EXPECT_EQ(io::read_text_file(out / "adapter_config.json"),
            io::read_text_file(kLlama / "lora_init/adapter_config.json"));
  fs::remove_all(out);
}

TEST(LoraAdapter, ShapeMismatchNamesTheTensor) {
  auto sites = llama_sites();
  for (auto& s : sites)
    if (s.name == "model.layers.1.mlp.down_proj") s.in = 96;
  try {
    LoraAdapter::load(kLlama / "lora_init", sites);
    ADD_FAILURE() << "no error";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"),
              std::string::npos)
        << e.what();
  }
}

TEST(LoraAdapter, InitDistributions) {
  std::vector<LinearSite> sites = {{"m.a", 256, 96, false}, {"m.b", 400, 512, false}};
  LoraConfig c;
  c.r = 16;
  c.target_modules = {"a", "b"};
  const uint64_t seed = 1234;
  LoraAdapter a = LoraAdapter::init(c, sites, seed);
  for (const auto& s : sites) {
    const auto& p = a.modules.at(s.name);
    const float* A = p.A.data<float>();
    const int64_t n = c.r * s.in;
    const double bound = 1.0 / std::sqrt(double(s.in));
    double mx = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, std::abs(double(A[i]))), var += double(A[i]) * A[i];
    var /= double(n);
    EXPECT_LE(mx, bound);
    EXPECT_GT(mx, 0.98 * bound);
    EXPECT_NEAR(var, bound * bound / 3, 0.1 * bound * bound / 3) << "seed " << seed;  // U(-b, b): b^2/3
    for (int64_t i = 0; i < s.out * c.r; ++i) ASSERT_EQ(p.B.data<float>()[i], 0.0f);
  }
  c.init_lora_weights = "gaussian";
  LoraAdapter g = LoraAdapter::init(c, sites, seed);
  const auto& A = g.modules.at("m.b").A;
  double m = 0, v = 0;
  const int64_t n = A.numel();
  for (int64_t i = 0; i < n; ++i)
    m += A.data<float>()[i], v += double(A.data<float>()[i]) * A.data<float>()[i];
  m /= double(n);
  v = v / double(n) - m * m;
  EXPECT_NEAR(std::sqrt(v), 1.0 / 16, 0.05 / 16);
  EXPECT_NEAR(m, 0.0, 4.0 / 16 / std::sqrt(double(n)));
  // Same seed, same adapter.
  LoraAdapter g2 = LoraAdapter::init(c, sites, seed);
  EXPECT_EQ(0, std::memcmp(A.data<float>(), g2.modules.at("m.b").A.data<float>(), size_t(n) * 4));
}

}  // namespace
}  // namespace nibble
