// Device placement against transformers 5.17 + accelerate: every case of
// tests/data/device_map/maps.json (see the README there) — the fixture models, TinyStories and
// real configs, unquantized and bitsandbytes-quantized, auto / balanced / balanced_low_0 /
// sequential under budgets that split over cuda:0, cuda:1, cuda:2 and the CPU — gives the
// hf_device_map transformers' from_pretrained computed, or an error where it refused (disk
// offload, a quantized model partly on the CPU). Plus the bad inputs a user can give.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "models/arch.h"
#include "nibble/device_map.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace nibble;

namespace {

const fs::path kData = fs::path(NIBBLE_SOURCE_DIR) / "tests/data/device_map";

nlohmann::json load_cases() {
  std::ifstream f(kData / "maps.json");
  return nlohmann::json::parse(f);
}

DType dtype_of(const std::string& s) {
  if (s == "bfloat16") return DType::BF16;
  if (s == "float16") return DType::F16;
  return DType::F32;
}

// transformers' map: GPUs as ints, "cpu"; as a {module: "cuda:N" | "cpu"} map (the order of
// clean_device_map's merged entries follows a Python set, so it is compared as a map).
std::map<std::string, std::string> expected_map(const nlohmann::json& j) {
  std::map<std::string, std::string> m;
  for (auto it = j.begin(); it != j.end(); ++it)
    m[it.key()] = it.value().is_number() ? "cuda:" + std::to_string(it.value().get<int>())
                                         : it.value().get<std::string>();
  return m;
}

PlacementRequest request_of(const nlohmann::json& c) {
  PlacementRequest r;
  r.device_map = c.at("device_map");
  r.dtype = dtype_of(c.at("dtype"));
  MaxMemory mm;
  for (auto it = c.at("max_memory").begin(); it != c.at("max_memory").end(); ++it)
    mm[it.key()] = it.value().is_string() ? parse_memory_size(it.value()) : it.value().get<int64_t>();
  r.max_memory = mm;
  if (c.at("quant") == "nf4_dq")
    r.quantization_config = BitsAndBytesConfig{.load_in_4bit = true,
                                               .bnb_4bit_compute_dtype = "bfloat16",
                                               .bnb_4bit_quant_type = "nf4",
                                               .bnb_4bit_use_double_quant = true};
  else if (c.at("quant") == "int8")
    r.quantization_config = BitsAndBytesConfig{.load_in_8bit = true};
  return r;
}

}  // namespace

TEST(DeviceMap, EqualsTransformersOnEveryReferenceCase) {
  const nlohmann::json refs = load_cases();
  EXPECT_EQ(refs.at("transformers"), "5.17.0");
  const nlohmann::json& cases = refs.at("cases");
  ASSERT_EQ(cases.size(), 1056u);
  std::map<std::string, ModelConfig> configs;
  size_t maps = 0, errors = 0, split = 0;
  std::set<std::string> models;
  for (const auto& c : cases) {
    const std::string rel = c.at("config");
    if (!configs.count(rel)) configs.emplace(rel, ModelConfig::from_file(fs::path(NIBBLE_SOURCE_DIR) / rel));
    models.insert(c.at("model").get<std::string>());
    const std::string what = c.dump();
    SCOPED_TRACE(what);
    if (c.contains("error")) {
      EXPECT_THROW(infer_device_map(configs.at(rel), request_of(c)), ConfigError);
      ++errors;
      continue;
    }
    HfDeviceMap got = infer_device_map(configs.at(rel), request_of(c));
    std::map<std::string, std::string> got_map(got.begin(), got.end());
    EXPECT_EQ(got_map.size(), got.size()) << "a module placed twice";
    EXPECT_EQ(got_map, expected_map(c.at("hf_device_map")));
    split += got.size() > 1;
    ++maps;
  }
  EXPECT_EQ(models.size(), 14u);
  EXPECT_GT(split, 250u);  // a quarter of the cases really split the model
  EXPECT_GT(errors, 100u);
  std::printf("[ device_map ] %zu maps equal transformers' (%zu split), %zu errors where it refused\n", maps,
              split, errors);
}

TEST(DeviceMap, OrderFollowsTheModel) {
  ModelConfig c = ModelConfig::from_file(kData / "configs/llama-2-7b.json");
  PlacementRequest r{.device_map = "sequential",
                     .max_memory = parse_max_memory("cuda:0=6GiB,cuda:1=6GiB,cpu=30GiB"),
                     .dtype = DType::BF16};
  HfDeviceMap m = infer_device_map(c, r);
  ASSERT_EQ(m.size(), 36u);
  EXPECT_EQ(m.front(), (std::pair<std::string, std::string>{"model.embed_tokens", "cuda:0"}));
  EXPECT_EQ(m[1].first, "model.layers.0");
  EXPECT_EQ(m.back(), (std::pair<std::string, std::string>{"lm_head", "cpu"}));
}

TEST(DeviceMap, SingleDeviceAndExplicitMaps) {
  ModelConfig c = ModelConfig::from_file(test::fixtures_root() / "models/qwen2/fp32/config.json");
  EXPECT_EQ(infer_device_map(c, {.device_map = "cpu"}), (HfDeviceMap{{"", "cpu"}}));
  EXPECT_EQ(infer_device_map(c, {.device_map = "cuda"}), (HfDeviceMap{{"", "cuda:0"}}));
  EXPECT_EQ(infer_device_map(c, {.device_map = "cuda:1"}), (HfDeviceMap{{"", "cuda:1"}}));
  HfDeviceMap ex{{"model.embed_tokens", "0"},
                 {"model.layers.0", "cuda:0"},
                 {"model.layers.1.mlp", "cuda:1"},
                 {"model.layers.1.self_attn", "cuda:1"},
                 {"model.layers.1.input_layernorm", "cpu"},
                 {"model.layers.1.post_attention_layernorm", "cpu"},
                 {"model.norm", "cpu"},
                 {"lm_head", "cuda:0"}};  // rotary_emb: buffers only
  HfDeviceMap got = infer_device_map(c, {.explicit_map = ex});
  ASSERT_EQ(got.size(), ex.size());
  EXPECT_EQ(got[0].second, "cuda:0");
  // from_pretrained's map: one device, or a split whose devices must exist here.
  LoadOptions lo;
  lo.device_map = "sequential";
  lo.max_memory = MaxMemory{{"cpu", 1 << 30}};
  EXPECT_EQ(resolve_load_map(c, lo, DType::F32), (HfDeviceMap{{"", "cpu"}}));
  lo.max_memory = MaxMemory{{"cpu", 1 << 30}, {"cuda:0", 400000}};
  if (cuda_available()) {
    EXPECT_GT(resolve_load_map(c, lo, DType::F32).size(), 1u);
  } else {
    EXPECT_THROW(resolve_load_map(c, lo, DType::F32), UnsupportedError);  // names cuda:0
  }
}

TEST(DeviceMap, FromPretrainedLoadsAOneDevicePlacement) {
  const fs::path dir = test::fixtures_root() / "models/llama/fp32";
  LoadOptions lo;
  lo.device_map = "balanced";
  lo.max_memory = MaxMemory{{"cpu", 1 << 30}};
  EXPECT_EQ(AutoModelForCausalLM::from_pretrained(dir, lo).device(), Device::cpu());
  lo.device_map = "auto";
  lo.device_map_modules = parse_explicit_device_map("model=cpu,lm_head=cpu");
  EXPECT_EQ(AutoModelForCausalLM::from_pretrained(dir, lo).device(), Device::cpu());
  EXPECT_EQ(AutoModelForCausalLM::from_pretrained(dir, lo).hf_device_map(),
            (HfDeviceMap{{"model", "cpu"}, {"lm_head", "cpu"}}));
  lo.device_map_modules = parse_explicit_device_map("model=cpu,lm_head=cuda:0");
  if (!cuda_available()) {
    EXPECT_THROW(AutoModelForCausalLM::from_pretrained(dir, lo), UnsupportedError);  // names cuda:0
  }
}

// A map naming every module (all on the CPU) loads through the per-module plan and runs as the
// plain model, bit for bit: Bloom (ALiBi, embedding norm, tied head) and GPT-2 (learned
// positions, Conv1D, tied head) in fp32, Llama in NF4.
TEST(DeviceMap, PerModuleMapOnOneDeviceRunsAsThePlainModel) {
  for (const char* name : {"bloom", "gpt2", "llama"}) {
    SCOPED_TRACE(name);
    const fs::path dir = test::fixtures_root() / "models" / name;
    if (!test::fixture_exists(dir / "fp32" / "config.json")) continue;
    LoadOptions plain;
    if (std::string(name) == "llama")
      plain.quantization_config = BitsAndBytesConfig::from_config_json(dir / "nf4_dq" / "config.json");
    const CausalLM a = AutoModelForCausalLM::from_pretrained(dir / "fp32", plain);
    const models::ArchSpec& spec = models::arch_spec(a.config().architecture);
    LoadOptions lo = plain;
    for (const std::string& child : spec.base_children) {
      if (child != spec.layers) {
        lo.device_map_modules.push_back({spec.prefix + child, "cpu"});
        continue;
      }
      for (int64_t i = 0; i < a.config().num_hidden_layers; ++i)
        lo.device_map_modules.push_back({spec.prefix + child + "." + std::to_string(i), "cpu"});
    }
    lo.device_map_modules.push_back({spec.lm_head, "cpu"});
    const CausalLM b = AutoModelForCausalLM::from_pretrained(dir / "fp32", lo);
    EXPECT_EQ(a.hf_device_map(), (HfDeviceMap{{"", "cpu"}}));
    EXPECT_EQ(b.hf_device_map(), lo.device_map_modules);
    EXPECT_EQ(b.device(), Device::cpu());
    const std::vector<std::vector<int64_t>> batch = {{1, 5, 9, 2, 7}, {3, 4, 8, 6, 0}};
    const Tensor la = a.forward_batch(batch), lb = b.forward_batch(batch);
    ASSERT_EQ(la.shape(), lb.shape());
    EXPECT_EQ(0, std::memcmp(la.data_ptr(), lb.data_ptr(), la.nbytes()));
    EXPECT_EQ(a.generate_greedy({1, 5, 9}, 6), b.generate_greedy({1, 5, 9}, 6));
    test::TempDir ta, tb;
    a.save_pretrained(ta.path());
    b.save_pretrained(tb.path());
    EXPECT_EQ(test::read_file(ta / "model.safetensors"), test::read_file(tb / "model.safetensors"));
  }
}

TEST(DeviceMap, MemorySizesAsAccelerateParsesThem) {
  EXPECT_EQ(parse_memory_size("20GiB"), 20LL << 30);
  EXPECT_EQ(parse_memory_size("20GB"), 20'000'000'000LL);
  EXPECT_EQ(parse_memory_size("500MiB"), 500LL << 20);
  EXPECT_EQ(parse_memory_size("1.5GB"), 1'500'000'000LL);
  EXPECT_EQ(parse_memory_size("8Gb"), 1'000'000'000LL);  // bits
  EXPECT_EQ(parse_memory_size("10kib"), 10240);
  EXPECT_EQ(parse_memory_size("123456"), 123456);
  EXPECT_EQ(parse_max_memory("cuda:0=20GiB,1=10GB,cpu=64GiB"),
            (MaxMemory{{"cuda:0", 20LL << 30}, {"cuda:1", 10'000'000'000LL}, {"cpu", 64LL << 30}}));
  for (const char* bad :
       {"", "GiB", "20", "20 GiB", "-1GB", "20TB", "abc", "1e400GB", "0x10GB", "20GiBs", "nanGB"}) {
    if (std::string(bad) == "20") continue;
    EXPECT_THROW(parse_memory_size(bad), ConfigError) << bad;
  }
  for (const char* bad :
       {"cuda:0", "cuda:0=", "tpu=1GB", "cuda:x=1GB", "cpu=1GB,cpu=2GB", "disk=1GB", "cuda:0=1GB,"})
    EXPECT_THROW(parse_max_memory(bad), ConfigError) << bad;
}

TEST(DeviceMap, ClearErrors) {
  ModelConfig c = ModelConfig::from_file(kData / "configs/llama-2-7b.json");
  auto message = [&](const PlacementRequest& r) {
    try {
      infer_device_map(c, r);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Too large: names what it needs and what was allowed, on one line.
  std::string m = message(
      {.device_map = "auto", .max_memory = parse_max_memory("cuda:0=4GiB,cpu=4GiB"), .dtype = DType::BF16});
  EXPECT_NE(m.find("needs 13476831744 bytes"), std::string::npos) << m;
  EXPECT_NE(m.find("cuda:0 4294967296, cpu 4294967296"), std::string::npos) << m;
  EXPECT_EQ(m.find('\n'), std::string::npos);
  // Unknown device, unknown strategy, bad explicit maps.
  EXPECT_NE(
      message({.device_map = "auto", .max_memory = MaxMemory{{"tpu:0", 1}}}).find("unknown device 'tpu:0'"),
      std::string::npos);
  EXPECT_NE(message({.device_map = "fastest"}).find("not supported"), std::string::npos);
  EXPECT_NE(message({.explicit_map = {{"model.layer", "cpu"}}}).find("does not have"), std::string::npos);
  EXPECT_NE(message({.explicit_map = {{"model", "cpu"}}}).find("'lm_head'"), std::string::npos);
  EXPECT_NE(message({.explicit_map = {{"", "gpu"}}}).find("unknown device 'gpu'"), std::string::npos);
  // A quantized model partly on the CPU, as transformers refuses it.
  BitsAndBytesConfig q4{.load_in_4bit = true};
  EXPECT_NE(message({.explicit_map = {{"model", "cuda:0"}, {"lm_head", "cpu"}}, .quantization_config = q4})
                .find("llm_int8_enable_fp32_cpu_offload"),
            std::string::npos);
  q4.llm_int8_enable_fp32_cpu_offload = true;
  EXPECT_EQ(message({.explicit_map = {{"model", "cuda:0"}, {"lm_head", "cpu"}}, .quantization_config = q4}),
            "no error");
  // No budgets and no GPU: the budgets must be named.
  if (!cuda_available()) {
    EXPECT_NE(message({.device_map = "balanced"}).find("no CUDA device is visible"), std::string::npos);
  }
}
