// ModelConfig / GenerationConfig / rope against what transformers 5.17 wrote and computed:
//  - every fixture checkpoint's config.json (v5 rope_parameters, dtype), the real tinystories
//    model's (v4: rope_theta + rope_scaling null, torch_dtype) and bloom-1b7's, with the values
//    transformers' config classes give for them;
//  - each fixture folder's generation_config.json;
//  - rotary tables that transformers itself computed (rope_transformers_ref.inc) for every rope
//    type and both spellings: at most 2 ulp apart (pow and cos differ between SLEEF, CUDA
//    and libm), and nearly all bit-identical.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>

#include "models/rope.h"
#include "nibble/generation_config.h"
#include "nibble/model_config.h"
#include "rope_transformers_ref.inc"
#include "test_support.h"

namespace nibble {
namespace {

namespace fs = std::filesystem;

fs::path model_dir(const std::string& arch) {
  return test::fixtures_root() / "models" / arch / "fp32";
}

// What transformers' config classes hold for the fixture configs (tools/refgen/hf_models.py).
void check_fixture(const std::string& arch, const ModelConfig& c) {
  SCOPED_TRACE(arch);
  // hf_models.py's second llama has odd sizes, three layers and llama-3 rope scaling.
  const bool llama3 = arch == "llama3_rope";
  EXPECT_EQ(c.model_type, llama3 ? "llama" : arch);
  EXPECT_EQ(c.vocab_size, llama3 ? 1000 : 512);
  EXPECT_EQ(c.hidden_size, llama3 ? 96 : 64);
  EXPECT_EQ(c.num_hidden_layers, llama3 ? 3 : 2);
  EXPECT_EQ(c.num_attention_heads, llama3 ? 6 : 4);
  EXPECT_EQ(c.torch_dtype, DType::F32);
  EXPECT_EQ(c.layer_types.size(), llama3 ? 3u : 2u);
  if (llama3) {
    EXPECT_EQ(c.architecture, "LlamaForCausalLM");
    EXPECT_EQ(c.intermediate_size, 200);
    EXPECT_EQ(c.num_key_value_heads, 2);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_TRUE(c.tie_word_embeddings);
    ASSERT_TRUE(c.rope);
    EXPECT_EQ(c.rope->rope_type, "llama3");
    EXPECT_EQ(c.rope->rope_theta, 500000.0);
    EXPECT_EQ(c.rope->original_max_position_embeddings, 64);
  } else if (arch == "mistral") {
    EXPECT_EQ(c.architecture, "MistralForCausalLM");
    EXPECT_EQ(c.sliding_window, 16);
    EXPECT_TRUE(c.layer_is_sliding(0) && c.layer_is_sliding(1));
    EXPECT_FALSE(c.tie_word_embeddings);
  } else if (arch == "qwen3") {
    EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_FALSE(c.layer_is_sliding(0) || c.layer_is_sliding(1));
  } else if (arch == "gemma2") {
    EXPECT_EQ(c.architecture, "Gemma2ForCausalLM");
    EXPECT_EQ(c.query_pre_attn_scalar, 16.0);
    EXPECT_EQ(c.attn_logit_softcapping, 50.0);
    EXPECT_EQ(c.final_logit_softcapping, 30.0);
    EXPECT_TRUE(c.layer_is_sliding(0));
    EXPECT_FALSE(c.layer_is_sliding(1));
  } else if (arch == "llama") {
    EXPECT_EQ(c.architecture, "LlamaForCausalLM");
    EXPECT_EQ(c.intermediate_size, 128);
    EXPECT_EQ(c.num_key_value_heads, 2);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.max_position_embeddings, 256);
    EXPECT_DOUBLE_EQ(c.norm_eps, 1e-6);
    EXPECT_EQ(c.hidden_act, "silu");
    EXPECT_FALSE(c.tie_word_embeddings || c.attention_bias || c.mlp_bias);
    ASSERT_TRUE(c.rope);
    EXPECT_EQ(c.rope->rope_type, "default");
    EXPECT_EQ(c.rope->rope_theta, 10000.0);
    EXPECT_EQ(c.rope_dim(), 16);
    EXPECT_EQ(c.bos_token_id, 1);
    EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{2});
    EXPECT_FALSE(c.pad_token_id);
  } else if (arch == "qwen2") {
    EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
    EXPECT_EQ(c.intermediate_size, 192);
    EXPECT_EQ(c.num_key_value_heads, 1);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_TRUE(c.tie_word_embeddings && c.attention_bias);
    EXPECT_EQ(c.rope->rope_theta, 1e6);
    EXPECT_FALSE(c.sliding_window);
    EXPECT_FALSE(c.layer_is_sliding(0) || c.layer_is_sliding(1));
    EXPECT_FALSE(c.bos_token_id);
    EXPECT_TRUE(c.eos_token_id.empty());
  } else if (arch == "phi3") {
    EXPECT_EQ(c.architecture, "Phi3ForCausalLM");
    EXPECT_EQ(c.num_key_value_heads, 4);
    EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
    EXPECT_EQ(c.rope->partial_rotary_factor, 1.0);
    EXPECT_EQ(c.rope_dim(), 16);
    EXPECT_FALSE(c.sliding_window);
    EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{32000});
    EXPECT_EQ(c.pad_token_id, 0);
  } else if (arch == "gpt_neox") {
    EXPECT_EQ(c.architecture, "GPTNeoXForCausalLM");
    EXPECT_EQ(c.intermediate_size, 256);
    EXPECT_EQ(c.num_key_value_heads, 4);
    EXPECT_EQ(c.hidden_act, "gelu");
    EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
    EXPECT_TRUE(c.use_parallel_residual && c.attention_bias && c.mlp_bias);
    EXPECT_FALSE(c.tie_word_embeddings);
    EXPECT_EQ(c.rope->partial_rotary_factor, 0.25);
    EXPECT_EQ(c.rope_dim(), 4);
    EXPECT_EQ(c.bos_token_id, 0);
  } else if (arch == "gpt2") {
    EXPECT_EQ(c.architecture, "GPT2LMHeadModel");
    EXPECT_EQ(c.intermediate_size, 256);
    EXPECT_EQ(c.max_position_embeddings, 128);
    EXPECT_EQ(c.hidden_act, "gelu_new");
    EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
    EXPECT_TRUE(c.tie_word_embeddings && c.scale_attn_weights);
    EXPECT_FALSE(c.scale_attn_by_inverse_layer_idx || c.reorder_and_upcast_attn);
    EXPECT_FALSE(c.rope);
    EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{50256});
  } else if (arch == "opt") {
    EXPECT_EQ(c.architecture, "OPTForCausalLM");
    EXPECT_EQ(c.intermediate_size, 128);
    EXPECT_EQ(c.word_embed_proj_dim, 64);
    EXPECT_EQ(c.max_position_embeddings, 256);
    EXPECT_EQ(c.hidden_act, "relu");
    EXPECT_TRUE(c.do_layer_norm_before && c.layer_norm_elementwise_affine && c.attention_bias &&
                c.tie_word_embeddings);
    EXPECT_FALSE(c._remove_final_layer_norm);
    EXPECT_EQ(c.pad_token_id, 1);
    EXPECT_EQ(c.bos_token_id, 2);
  } else if (arch == "bloom") {
    EXPECT_EQ(c.architecture, "BloomForCausalLM");
    EXPECT_EQ(c.intermediate_size, 256);
    EXPECT_EQ(c.max_position_embeddings, 0);
    EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_FALSE(c.apply_residual_connection_post_layernorm || c.rope);
    EXPECT_EQ(c.pretraining_tp, 1);
  }
}

TEST(ModelConfigFixtures, EveryFixtureConfigParses) {
  const fs::path root = test::fixtures_root() / "models";
  NIBBLE_SKIP_WITHOUT_FIXTURE(root);
  int checked = 0;
  for (const auto& dir : test::fixture_model_dirs("fp32")) {
    const std::string arch = dir.filename().string();
    for (const char* variant : {"fp32", "nf4_dq", "fp4", "int8"}) {
      const fs::path p = dir / variant / "config.json";
      if (!test::fixture_exists(p)) continue;
      ModelConfig c = ModelConfig::from_file(p);
      EXPECT_EQ(c.origin, p.string());
      if (c.rope) {
        EXPECT_NO_THROW(rope_init(c)) << p;
      }
      if (std::string(variant) == "fp32") {
        check_fixture(arch, c);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, int(test::fixture_models().size()));
}

TEST(ModelConfigFixtures, TinyStoriesV4Config) {
  const fs::path p = test::shared_root() / "models" / "tinystories-656k" / "config.json";
  NIBBLE_SKIP_WITHOUT_FIXTURE(p);
  ModelConfig c = ModelConfig::from_file(p);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 2048);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.intermediate_size, 384);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, DType::F32);  // from v4's torch_dtype
  ASSERT_TRUE(c.rope);
  EXPECT_EQ(c.rope->rope_type, "default");  // rope_scaling null
  EXPECT_EQ(c.rope->rope_theta, 10000.0);

  GenerationConfig g = GenerationConfig::from_pretrained(p.parent_path(), c);
  EXPECT_EQ(g.bos_token_id, 1);
  EXPECT_EQ(g.eos_token_id, std::vector<int64_t>{2});
  EXPECT_FALSE(g.do_sample);
}

TEST(ModelConfigFixtures, Bloom1b7Config) {
  const fs::path p = test::fixtures_root() / "configs" / "bloom-1b7" / "config.json";
  NIBBLE_SKIP_WITHOUT_FIXTURE(p);
  ModelConfig c = ModelConfig::from_file(p);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_attention_heads, 16);  // n_head
  EXPECT_EQ(c.num_hidden_layers, 24);    // n_layer
  EXPECT_EQ(c.vocab_size, 250880);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.pretraining_tp, 2);
  EXPECT_EQ(c.pad_token_id, 3);
  EXPECT_TRUE(c.tie_word_embeddings);  // BloomConfig default
  EXPECT_EQ(c.torch_dtype, DType::F16);
}

TEST(GenerationConfigFixtures, EachFixtureFolder) {
  // bos, eos, pad as each fp32/generation_config.json holds them (absent = none).
  const std::map<std::string,
                 std::tuple<std::optional<int64_t>, std::vector<int64_t>, std::optional<int64_t>>>
      want = {
          {"llama", {1, {2}, std::nullopt}},
          {"qwen2", {std::nullopt, {}, std::nullopt}},
          {"gpt2", {50256, {50256}, std::nullopt}},
          {"phi3", {1, {32000}, 0}},
          {"gpt_neox", {0, {2}, std::nullopt}},
          {"bloom", {1, {2}, std::nullopt}},
          {"opt", {2, {2}, 1}},
      };
  int checked = 0;
  for (const auto& [arch, ids] : want) {
    const fs::path dir = model_dir(arch);
    if (!test::fixture_exists(dir / "generation_config.json")) continue;
    SCOPED_TRACE(arch);
    GenerationConfig g = GenerationConfig::from_file(dir / "generation_config.json");
    EXPECT_EQ(g.bos_token_id, std::get<0>(ids));
    EXPECT_EQ(g.eos_token_id, std::get<1>(ids));
    EXPECT_EQ(g.pad_token_id, std::get<2>(ids));
    EXPECT_FALSE(g.do_sample);
    EXPECT_EQ(g.top_k, 50);
    EXPECT_EQ(g.raw.value("transformers_version", ""), "5.17.0");
    // from_model_config of the same folder's config.json agrees on the ids.
    GenerationConfig m = GenerationConfig::from_model_config(ModelConfig::from_file(dir / "config.json"));
    EXPECT_EQ(m.bos_token_id, g.bos_token_id);
    EXPECT_EQ(m.eos_token_id, g.eos_token_id);
    EXPECT_EQ(m.pad_token_id, g.pad_token_id);
    ++checked;
  }
  EXPECT_EQ(checked, int(want.size()));
}

// ---- rope against transformers' own numbers ------------------------------------------------

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
int64_t ulp_diff(float a, uint32_t b) {
  return std::abs(int64_t(int32_t(bits(a))) - int64_t(int32_t(b)));
}

struct Agreement {
  int64_t exact = 0, total = 0;
};

void expect_table(const std::vector<float>& got, const uint32_t* want, size_t n, Agreement& a,
                  const char* what) {
  ASSERT_EQ(got.size(), n) << what;
  for (size_t i = 0; i < n; ++i) {
    EXPECT_LE(ulp_diff(got[i], want[i]), 2) << what << " [" << i << "]";
    a.exact += ulp_diff(got[i], want[i]) == 0;
    ++a.total;
  }
}

TEST(RopeTransformers, InvFreqEveryRopeType) {
  Agreement a;
  for (const auto& rc : rope_ref::kCases) {
    SCOPED_TRACE(rc.name);
    ModelConfig c = ModelConfig::from_json(nlohmann::json::parse(rc.config_json), rc.name);
    RopeTables r = rope_init(c);
    expect_table(r.inv_freq, rc.inv_freq, rc.n, a, "init");
    EXPECT_EQ(r.attention_scaling, float(rc.attention_scaling));
    if (rc.at_seq_len) expect_table(rope_init(c, rc.seq_len).inv_freq, rc.at_seq_len, rc.n, a, "at seq_len");
  }
  // Only pow's last-bit differences between SLEEF/CUDA and libm remain.
  EXPECT_GE(double(a.exact), 0.95 * double(a.total)) << a.exact << " of " << a.total << " bit-exact";
}

TEST(RopeTransformers, CosSin) {
  const auto& rc = rope_ref::kCases[1];
  ASSERT_STREQ(rc.name, "llama_hd16");
  RopeTables r = rope_init(ModelConfig::from_json(nlohmann::json::parse(rc.config_json), rc.name));
  const int64_t T = std::size(rope_ref::kPositions);
  const size_t n = r.inv_freq.size();
  std::vector<float> cs(size_t(T) * n), sn(size_t(T) * n);
  rope_cos_sin(r, rope_ref::kPositions, T, cs.data(), sn.data());
  for (size_t i = 0; i < cs.size(); ++i) {
    float want_c, want_s;
    std::memcpy(&want_c, &rope_ref::llama_hd16_cos[i], 4);
    std::memcpy(&want_s, &rope_ref::llama_hd16_sin[i], 4);
    EXPECT_NEAR(cs[i], want_c, 2.5e-7) << i;
    EXPECT_NEAR(sn[i], want_s, 2.5e-7) << i;
  }
}

}  // namespace
}  // namespace nibble
