// The per-module devices of a split model read off an hf_device_map (models/device_plan.h):
// longest-prefix placement, the embedding stage's own modules (GPT-2's wpe, Bloom's embedding
// norm), a tied head left out of the map, maps from infer_device_map, and the refusals (a
// decoder layer split over devices, a module no key places). Pure logic: no device is touched.
#include <gtest/gtest.h>

#include "models/arch.h"
#include "models/device_plan.h"
#include "nibble/device_map.h"
#include "nibble/error.h"
#include "nibble/model_config.h"
#include "test_support.h"

namespace nibble {
namespace {

using models::DevicePlan;

ModelConfig fixture_config(const std::string& model) {
  return ModelConfig::from_file(test::fixtures_root() / "models" / model / "fp32" / "config.json");
}

DevicePlan plan(const ModelConfig& c, const HfDeviceMap& m) {
  return models::device_plan(c, models::arch_spec(c.architecture), m);
}

const Device cpu = Device::cpu(), gpu0 = Device::cuda(0), gpu1 = Device::cuda(1);

TEST(DevicePlan, OneDeviceAndUniform) {
  const ModelConfig c = fixture_config("llama");
  const DevicePlan p = plan(c, {{"", "cuda:1"}});
  EXPECT_EQ(p.embed, gpu1);
  EXPECT_EQ(p.layers, std::vector<Device>(size_t(c.num_hidden_layers), gpu1));
  EXPECT_EQ(p.lm_head, gpu1);
  EXPECT_FALSE(p.split());
  EXPECT_EQ(p.devices(), std::vector<Device>{gpu1});
  const DevicePlan u = DevicePlan::uniform(cpu, 3);
  EXPECT_EQ(u.layers.size(), 3u);
  EXPECT_FALSE(u.split());
}

TEST(DevicePlan, LongestPrefixPerModule) {
  const ModelConfig c = fixture_config("llama");  // 2 layers
  const DevicePlan p = plan(c, {{"model", "cuda:0"}, {"model.layers.1", "cpu"}, {"lm_head", "cuda:1"}});
  EXPECT_EQ(p.embed, gpu0);
  EXPECT_EQ(p.layers, (std::vector<Device>{gpu0, cpu}));
  EXPECT_EQ(p.final_norm, gpu0);
  EXPECT_EQ(p.lm_head, gpu1);
  EXPECT_TRUE(p.split());
  EXPECT_EQ(p.devices(), (std::vector<Device>{gpu0, cpu, gpu1}));  // module order, each once
  // "model.layers.1" must not catch "model.layers.10" and the like: a prefix ends at a dot
  const DevicePlan q = plan(c, {{"model.layers.0", "cpu"},
                                {"model.layers.1", "cuda:0"},
                                {"model.embed_tokens", "cpu"},
                                {"model.norm", "cuda:0"},
                                {"lm_head", "cpu"}});
  EXPECT_EQ(q.layers, (std::vector<Device>{cpu, gpu0}));
  EXPECT_EQ(q.devices(), (std::vector<Device>{cpu, gpu0}));
}

TEST(DevicePlan, EmbeddingStageModulesAndTiedHead) {
  // GPT-2: wte + wpe, tied head absent from the map -> beside the embedding
  const ModelConfig g = fixture_config("gpt2");
  ASSERT_TRUE(g.tie_word_embeddings);
  const DevicePlan p = plan(g, {{"transformer.wte", "cuda:0"},
                                {"transformer.wpe", "cpu"},
                                {"transformer.drop", "cpu"},
                                {"transformer.h", "cpu"},
                                {"transformer.ln_f", "cpu"}});
  EXPECT_EQ(p.embed, gpu0);
  EXPECT_EQ(p.pos_embed, cpu);
  EXPECT_EQ(p.embed_norm, cpu);  // none: follows the positions
  EXPECT_EQ(p.lm_head, gpu0);
  // Bloom: the embedding norm is a module of its own
  const ModelConfig b = fixture_config("bloom");
  const DevicePlan q = plan(b, {{"transformer.word_embeddings", "cpu"},
                                {"transformer.word_embeddings_layernorm", "cuda:0"},
                                {"transformer.h", "cuda:0"},
                                {"transformer.ln_f", "cpu"},
                                {"lm_head", "cpu"}});
  EXPECT_EQ(q.embed, cpu);
  EXPECT_EQ(q.embed_norm, gpu0);
  EXPECT_EQ(q.layers, (std::vector<Device>{gpu0, gpu0}));
  EXPECT_EQ(q.final_norm, cpu);
}

TEST(DevicePlan, FromInferDeviceMap) {
  // sequential under a small first-GPU budget: the first modules on cuda:0, the rest on the CPU
  const ModelConfig c = fixture_config("qwen2");
  PlacementRequest r{.device_map = "sequential",
                     .max_memory = MaxMemory{{"cuda:0", 400000}, {"cpu", int64_t(1) << 30}}};
  const HfDeviceMap m = infer_device_map(c, r);
  const DevicePlan p = plan(c, m);
  EXPECT_TRUE(p.split());
  EXPECT_EQ(p.devices().front(), p.embed);
  for (const auto& [k, v] : m)  // every layer the map names on its own is planned there
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      if (k == "model.layers." + std::to_string(i)) {
        EXPECT_EQ(p.layers[size_t(i)].str(), v) << k;
      }
}

TEST(DevicePlan, Refusals) {
  const ModelConfig c = fixture_config("llama");
  // a decoder layer over two devices
  EXPECT_THROW(plan(c, {{"model", "cpu"}, {"model.layers.0.mlp", "cuda:0"}, {"lm_head", "cpu"}}),
               UnsupportedError);
  EXPECT_THROW(plan(c, {{"model.embed_tokens", "cpu"},
                        {"model.layers.0.self_attn", "cuda:0"},
                        {"model.layers.0.mlp", "cpu"},
                        {"model.layers.0.input_layernorm", "cpu"},
                        {"model.layers.0.post_attention_layernorm", "cpu"},
                        {"model.layers.1", "cpu"},
                        {"model.norm", "cpu"},
                        {"lm_head", "cpu"}}),
               UnsupportedError);
  // parts of a layer that agree are the layer's device
  const DevicePlan p = plan(c, {{"model.embed_tokens", "cpu"},
                                {"model.layers.0.self_attn", "cuda:0"},
                                {"model.layers.0.mlp", "cuda:0"},
                                {"model.layers.0.input_layernorm", "cuda:0"},
                                {"model.layers.0.post_attention_layernorm", "cuda:0"},
                                {"model.layers.1", "cpu"},
                                {"model.norm", "cpu"},
                                {"lm_head", "cpu"}});
  EXPECT_EQ(p.layers, (std::vector<Device>{gpu0, cpu}));
  // an untied head no key places; a device that is not one
  EXPECT_THROW(plan(c, {{"model", "cpu"}}), ConfigError);
  EXPECT_THROW(plan(c, {{"", "tpu:0"}}), ConfigError);
  EXPECT_EQ(models::parse_device("cuda:3"), Device::cuda(3));
  EXPECT_THROW(models::parse_device("cuda"), ConfigError);
}

}  // namespace
}  // namespace nibble
