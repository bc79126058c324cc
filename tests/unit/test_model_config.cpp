// ModelConfig / GenerationConfig parsing: each family's aliases and transformers defaults, both
// rope spellings and their standardization, and the errors (file and field named) for missing,
// mistyped and inconsistent fields.
#include <gtest/gtest.h>

#include "nibble/error.h"
#include "nibble/generation_config.h"
#include "nibble/model_config.h"
#include "test_support.h"

namespace nibble {
namespace {

using json = nlohmann::json;

json llama_json() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4})");
}

ModelConfig parse(const json& j) {
  return ModelConfig::from_json(j, "dir/config.json");
}

// Expects a ConfigError whose message holds every one of `parts`.
void expect_error(const json& j, std::initializer_list<const char*> parts) {
  try {
    parse(j);
    ADD_FAILURE() << "no error for " << j.dump();
  } catch (const ConfigError& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, LlamaDefaults) {
  ModelConfig c = parse(llama_json());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_key_value_heads, 4);  // None -> num_attention_heads
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-6);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{2});
  EXPECT_FALSE(c.pad_token_id);
  ASSERT_TRUE(c.rope);
  EXPECT_EQ(c.rope->rope_type, "default");
  EXPECT_EQ(c.rope->rope_theta, 10000.0);
  EXPECT_EQ(c.rope_dim(), 16);
  EXPECT_EQ(c.layer_types, (std::vector<std::string>{"full_attention", "full_attention"}));
  EXPECT_FALSE(c.sliding_window);
  EXPECT_FALSE(c.torch_dtype);
  EXPECT_EQ(c.raw, llama_json());
}

TEST(ModelConfig, MissingAndMistypedFieldsNameFileAndField) {
  json j = llama_json();
  j.erase("hidden_size");
  expect_error(j, {"dir/config.json", "hidden_size", "missing"});
  j = llama_json();
  j["hidden_size"] = "64";
  expect_error(j, {"dir/config.json", "hidden_size", "integer", "string"});
  j = llama_json();
  j["hidden_size"] = 64.0;
  expect_error(j, {"hidden_size", "float"});
  j = llama_json();
  j["rms_norm_eps"] = "1e-6";
  expect_error(j, {"rms_norm_eps", "number"});
  j = llama_json();
  j["tie_word_embeddings"] = 1;
  expect_error(j, {"tie_word_embeddings", "true or false"});
  j = llama_json();
  j.erase("model_type");
  expect_error(j, {"model_type"});
  j = llama_json();
  j["architectures"] = "LlamaForCausalLM";
  expect_error(j, {"architectures"});
  j = llama_json();
  j["num_hidden_layers"] = 0;
  expect_error(j, {"num_hidden_layers", "positive"});
  EXPECT_THROW(ModelConfig::from_json(json::array(), "x"), ConfigError);
}

TEST(ModelConfig, ClaimedSizesPastTheLimitsAreRefused) {
  // A layer count in the quadrillions once reached the per-layer list's allocation (found by the
  // model_config fuzzer); sizes past 2^31 - 1 and layer counts past 65536 are refused by name.
  json j = llama_json();
  j["num_hidden_layers"] = 7777777777777773LL;
  expect_error(j, {"dir/config.json", "num_hidden_layers", "at most 65536"});
  j["num_hidden_layers"] = 65537;
  expect_error(j, {"num_hidden_layers", "at most 65536"});
  j["num_hidden_layers"] = 65536;  // at the limit: parsed
  EXPECT_EQ(parse(j).num_hidden_layers, 65536);
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_attention_heads"}) {
    j = llama_json();
    j[key] = int64_t(1) << 31;
    expect_error(j, {key, "at most 2147483647"});
  }
}

TEST(ModelConfig, HeadsMustDivide) {
  json j = llama_json();
  j["num_attention_heads"] = 5;
  expect_error(j, {"num_attention_heads", "not a multiple"});
  j = llama_json();
  j["num_key_value_heads"] = 3;
  expect_error(j, {"num_key_value_heads", "does not divide"});
  // LlamaConfig rejects hidden % heads even with an explicit head_dim; qwen3 does not.
  j = llama_json();
  j["num_attention_heads"] = 6;
  j["head_dim"] = 16;
  expect_error(j, {"num_attention_heads"});
  j["model_type"] = "qwen3";
  expect_error(j, {"num_key_value_heads", "32"});  // Qwen3Config's default is 32 kv heads
  j["num_key_value_heads"] = 2;
  EXPECT_EQ(parse(j).head_dim, 16);
}

TEST(ModelConfig, ExplicitHeadDimAndFamilyDefaults) {
  json j = llama_json();
  j["head_dim"] = 32;
  EXPECT_EQ(parse(j).head_dim, 32);
  j["head_dim"] = nullptr;  // null: derived
  EXPECT_EQ(parse(j).head_dim, 16);
  j = llama_json();
  j["model_type"] = "qwen3";
  j["num_key_value_heads"] = 2;
  EXPECT_EQ(parse(j).head_dim, 128);  // Qwen3Config default
  j["model_type"] = "gemma2";
  ModelConfig g = parse(j);
  EXPECT_EQ(g.head_dim, 256);
  EXPECT_EQ(g.hidden_act, "gelu_pytorch_tanh");
  EXPECT_TRUE(g.tie_word_embeddings);
  EXPECT_EQ(g.query_pre_attn_scalar, 256.0);
  EXPECT_EQ(g.final_logit_softcapping, 30.0);
  EXPECT_EQ(g.attn_logit_softcapping, 50.0);
  EXPECT_EQ(g.sliding_window, 4096);
  EXPECT_EQ(g.layer_types, (std::vector<std::string>{"sliding_attention", "full_attention"}));
  EXPECT_EQ(g.bos_token_id, 2);
  EXPECT_EQ(g.pad_token_id, 0);
  j["final_logit_softcapping"] = nullptr;
  j["hidden_activation"] = "gelu";
  j["layer_types"] = {"full_attention", "full_attention"};
  g = parse(j);
  EXPECT_FALSE(g.final_logit_softcapping);
  EXPECT_EQ(g.hidden_act, "gelu");
  EXPECT_FALSE(g.layer_is_sliding(0));
}

TEST(ModelConfig, QwenAndMistralSlidingLayouts) {
  json j = llama_json();
  j["model_type"] = "qwen2";
  j["num_key_value_heads"] = 2;
  j["num_hidden_layers"] = 4;
  ModelConfig c = parse(j);
  EXPECT_FALSE(c.sliding_window);  // use_sliding_window defaults to false
  EXPECT_TRUE(c.attention_bias);   // qwen2's q/k/v biases
  EXPECT_EQ(c.layer_types, std::vector<std::string>(4, "full_attention"));
  j["use_sliding_window"] = true;
  j["sliding_window"] = 32;
  j["max_window_layers"] = 2;
  c = parse(j);
  EXPECT_EQ(c.sliding_window, 32);
  EXPECT_EQ(c.layer_types, (std::vector<std::string>{"full_attention", "full_attention", "sliding_attention",
                                                     "sliding_attention"}));
  j["layer_types"] = {"full_attention", "sliding_attention"};
  expect_error(j, {"layer_types", "2 entries for 4 layers"});
  j["layer_types"] = {"full_attention", "full_attention", "chunked_attention", "full_attention"};
  expect_error(j, {"layer_types", "entry 2"});

  j = llama_json();
  j["model_type"] = "mistral";
  j["num_key_value_heads"] = 2;
  c = parse(j);
  EXPECT_EQ(c.sliding_window, 4096);  // MistralConfig default
  EXPECT_TRUE(c.layer_is_sliding(0) && c.layer_is_sliding(1));
  j["sliding_window"] = nullptr;
  c = parse(j);
  EXPECT_FALSE(c.sliding_window);
  EXPECT_FALSE(c.layer_is_sliding(1));
  j["sliding_window"] = 0;
  expect_error(j, {"sliding_window"});
}

TEST(ModelConfig, Gpt2Aliases) {
  json j = json::parse(R"({"model_type": "gpt2", "vocab_size": 512, "n_embd": 64, "n_layer": 2, "n_head": 4,
                           "n_positions": 128, "n_inner": null})");
  ModelConfig c = parse(j);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.max_position_embeddings, 128);
  EXPECT_EQ(c.intermediate_size, 256);  // n_inner None -> 4 * n_embd
  EXPECT_EQ(c.hidden_act, "gelu_new");
  EXPECT_TRUE(c.tie_word_embeddings && c.attention_bias && c.mlp_bias && c.scale_attn_weights);
  EXPECT_FALSE(c.rope);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{50256});
  j["n_inner"] = 100;
  j["hidden_size"] = 32;  // attribute_map alias, set after the field: it wins
  j["activation_function"] = "relu";
  c = parse(j);
  EXPECT_EQ(c.intermediate_size, 100);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.hidden_act, "relu");
  j.erase("n_layer");
  expect_error(j, {"n_layer", "missing"});
}

TEST(ModelConfig, BloomOptNeox) {
  ModelConfig b = parse(json::parse(
      R"({"model_type": "bloom", "vocab_size": 512, "n_embed": 64, "n_layer": 2, "n_head": 4, "hidden_size": 32})"));
  EXPECT_EQ(b.hidden_size, 64);  // n_embed kwarg overrides hidden_size
  EXPECT_EQ(b.intermediate_size, 256);
  EXPECT_EQ(b.max_position_embeddings, 0);
  EXPECT_EQ(b.hidden_act, "bloom_gelu");
  EXPECT_FALSE(b.rope);

  ModelConfig o =
      parse(json::parse(R"({"model_type": "opt", "vocab_size": 512, "hidden_size": 64, "ffn_dim": 96,
      "num_hidden_layers": 2, "num_attention_heads": 4, "enable_bias": false, "_remove_final_layer_norm": true})"));
  EXPECT_EQ(o.intermediate_size, 96);
  EXPECT_EQ(o.word_embed_proj_dim, 64);  // None -> hidden_size
  EXPECT_FALSE(o.attention_bias || o.mlp_bias);
  EXPECT_TRUE(o.do_layer_norm_before && o._remove_final_layer_norm && o.layer_norm_elementwise_affine);
  EXPECT_EQ(o.pad_token_id, 1);
  EXPECT_DOUBLE_EQ(o.norm_eps, 1e-5);

  // Legacy gpt_neox keys: rotary_pct, rotary_emb_base (a top-level rope_theta is ignored).
  ModelConfig n = parse(json::parse(R"({"model_type": "gpt_neox", "vocab_size": 512, "hidden_size": 64,
      "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "rotary_pct": 0.5,
      "rotary_emb_base": 20000, "rope_theta": 5, "use_parallel_residual": false})"));
  ASSERT_TRUE(n.rope);
  EXPECT_EQ(n.rope->rope_theta, 20000.0);
  EXPECT_EQ(n.rope->partial_rotary_factor, 0.5);
  EXPECT_EQ(n.rope_dim(), 8);
  EXPECT_FALSE(n.use_parallel_residual);
  EXPECT_TRUE(n.attention_bias);
  n = parse(json::parse(R"({"model_type": "gpt_neox", "vocab_size": 512, "hidden_size": 64,
      "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4})"));
  EXPECT_EQ(n.rope->partial_rotary_factor, 0.25);  // GPTNeoXConfig default
  EXPECT_EQ(n.rope_dim(), 4);
}

TEST(ModelConfig, LegacyRopeSpelling) {
  json j = llama_json();
  j["rope_theta"] = 500000;  // an integer is a number
  j["rope_scaling"] = nullptr;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope->rope_type, "default");
  EXPECT_EQ(c.rope->rope_theta, 500000.0);
  j["rope_scaling"] = json{{"type", "linear"}, {"factor", 2.0}};
  c = parse(j);
  EXPECT_EQ(c.rope->rope_type, "linear");
  EXPECT_EQ(c.rope->factor, 2.0);
  EXPECT_EQ(c.rope->rope_theta, 500000.0);
  j["rope_scaling"] = json{{"type", "dynamic"}, {"factor", 2.0}};
  EXPECT_EQ(parse(j).rope->rope_type, "dynamic");
}

TEST(ModelConfig, V5RopeParametersAndPriority) {
  json j = llama_json();
  j["rope_parameters"] =
      json{{"rope_type", "llama3"},  {"rope_theta", 500000.0},  {"factor", 8.0},
           {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  j["rope_theta"] = 1.0;  // the dict's value wins over a top-level one
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope->rope_type, "llama3");
  EXPECT_EQ(c.rope->rope_theta, 500000.0);
  EXPECT_EQ(c.rope->original_max_position_embeddings, 64);
  EXPECT_EQ(c.rope->low_freq_factor, 1.0);
  // rope_scaling, when non-empty, replaces rope_parameters; an empty one does not.
  j["rope_scaling"] = json{{"rope_type", "linear"}, {"factor", 3.0}};
  c = parse(j);
  EXPECT_EQ(c.rope->rope_type, "linear");
  EXPECT_EQ(c.rope->rope_theta, 1.0);
  j["rope_scaling"] = json::object();
  EXPECT_EQ(parse(j).rope->rope_type, "llama3");
  // original_max_position_embeddings defaults to max_position_embeddings for yarn.
  j = llama_json();
  j["max_position_embeddings"] = 4096;
  j["rope_parameters"] = json{{"rope_type", "yarn"}, {"factor", 4.0}};
  c = parse(j);
  EXPECT_EQ(c.rope->original_max_position_embeddings, 4096);
  // llama-style default rope ignores partial_rotary_factor; scaled types use it.
  j["rope_parameters"] = json{{"rope_type", "default"}, {"partial_rotary_factor", 0.5}};
  EXPECT_EQ(parse(j).rope_dim(), 16);
  j["rope_parameters"] = json{{"rope_type", "linear"}, {"factor", 2.0}, {"partial_rotary_factor", 0.5}};
  EXPECT_EQ(parse(j).rope_dim(), 8);
}

TEST(ModelConfig, RopeErrors) {
  json j = llama_json();
  j["rope_scaling"] = json{{"type", "mrope"}};
  expect_error(j, {"rope_scaling.type", "mrope", "not supported"});
  j["rope_scaling"] = json{{"rope_type", "linear"}};
  expect_error(j, {"rope_scaling.factor", "missing"});
  j["rope_scaling"] = json{{"rope_type", "llama3"}, {"factor", 8.0}, {"high_freq_factor", 4.0}};
  expect_error(j, {"low_freq_factor"});
  j["rope_scaling"] = json{{"rope_type", "yarn"}};
  expect_error(j, {"factor"});
  j["rope_scaling"] = json{{"rope_type", "linear"}, {"factor", "2"}};
  expect_error(j, {"rope_scaling.factor", "number"});
  j["rope_scaling"] = "linear";
  expect_error(j, {"rope_scaling", "object"});
  j.erase("rope_scaling");
  j["rope_parameters"] =
      json{{"rope_type", "longrope"}, {"short_factor", {1.0, 1.0}}, {"long_factor", {1.0, 1.0}}};
  expect_error(j, {"short_factor", "expected 8"});
  j["rope_parameters"] = json{{"rope_type", "default"}, {"partial_rotary_factor", 1.5}};
  expect_error(j, {"partial_rotary_factor"});
  j["rope_parameters"] = json{{"full_attention", {{"rope_type", "default"}}}};
  expect_error(j, {"per-layer-type"});
}

TEST(ModelConfig, Phi3LongropeQuirks) {
  json j = llama_json();
  j["model_type"] = "phi3";
  j["max_position_embeddings"] = 131072;
  j["original_max_position_embeddings"] = 4096;
  j["rope_scaling"] = json{{"type", "su"},
                           {"short_factor", std::vector<double>(8, 1.0)},
                           {"long_factor", std::vector<double>(8, 2.0)},
                           {"original_max_position_embeddings", 99}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope->rope_type, "longrope");                   // "su" is renamed
  EXPECT_EQ(c.rope->original_max_position_embeddings, 4096);  // the top-level field wins
  EXPECT_EQ(c.rope->long_factor, std::vector<double>(8, 2.0));
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{32000});
  EXPECT_EQ(c.pad_token_id, 32000);
  EXPECT_FALSE(c.sliding_window);
  j["sliding_window"] = 2047;
  c = parse(j);
  EXPECT_TRUE(c.layer_is_sliding(0) && c.layer_is_sliding(1));
}

TEST(ModelConfig, DtypeAndTokens) {
  json j = llama_json();
  j["torch_dtype"] = "float16";
  EXPECT_EQ(parse(j).torch_dtype, DType::F16);
  j["dtype"] = "bfloat16";  // v5 key wins
  EXPECT_EQ(parse(j).torch_dtype, DType::BF16);
  j["dtype"] = "complex32";
  expect_error(j, {"dtype", "complex32"});
  j = llama_json();
  j["eos_token_id"] = {128001, 128008, 128009};
  j["bos_token_id"] = nullptr;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.eos_token_id, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_FALSE(c.bos_token_id);
  j["eos_token_id"] = {1, "2"};
  expect_error(j, {"eos_token_id"});
}

TEST(ModelConfig, UnknownModelTypeParsesGenericFields) {
  json j = llama_json();
  j["model_type"] = "granite";
  j["architectures"] = {"GraniteForCausalLM"};
  j["num_key_value_heads"] = 2;
  j["num_attention_heads"] = 6;  // with an explicit head_dim no divisibility is needed
  j["head_dim"] = 16;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.architecture, "GraniteForCausalLM");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_TRUE(c.rope);
}

TEST(ModelConfig, FromFileErrors) {
  test::TempDir dir;
  EXPECT_THROW(ModelConfig::from_file(dir / "config.json"), IoError);
  test::write_file(dir / "config.json", {'{', 'x'});
  try {
    ModelConfig::from_file(dir / "config.json");
    ADD_FAILURE();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos) << e.what();
  }
  const std::string text = llama_json().dump();
  test::write_file(dir / "config.json", std::vector<uint8_t>(text.begin(), text.end()));
  EXPECT_EQ(ModelConfig::from_file(dir / "config.json").origin, (dir / "config.json").string());
  // No generation_config.json: from_pretrained falls back to the model config's ids.
  EXPECT_EQ(
      GenerationConfig::from_pretrained(dir.path(), ModelConfig::from_file(dir / "config.json")).bos_token_id,
      1);
}

TEST(GenerationConfig, FieldsDefaultsAndTypes) {
  json j = json::parse(R"({"bos_token_id": 1, "eos_token_id": [2, 7], "do_sample": true, "temperature": 0.6,
                           "top_p": 0.9, "top_k": 20, "max_new_tokens": 64, "repetition_penalty": 1.1})");
  GenerationConfig g = GenerationConfig::from_json(j, "g.json");
  EXPECT_EQ(g.bos_token_id, 1);
  EXPECT_TRUE(g.is_eos(7) && g.is_eos(2) && !g.is_eos(1));
  EXPECT_TRUE(g.do_sample);
  EXPECT_EQ(g.temperature, 0.6);
  EXPECT_EQ(g.top_p, 0.9);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_EQ(g.max_new_tokens, 64);
  EXPECT_EQ(g.repetition_penalty, 1.1);
  EXPECT_FALSE(g.max_length);
  GenerationConfig d = GenerationConfig::from_json(json::object(), "g.json");
  EXPECT_FALSE(d.do_sample);
  EXPECT_EQ(d.temperature, 1.0);
  EXPECT_EQ(d.top_k, 50);
  EXPECT_EQ(d.top_p, 1.0);
  EXPECT_TRUE(d.eos_token_id.empty());
  j["temperature"] = "hot";
  EXPECT_THROW(GenerationConfig::from_json(j, "g.json"), ConfigError);
  j = json{{"max_new_tokens", 0}};
  EXPECT_THROW(GenerationConfig::from_json(j, "g.json"), ConfigError);
  j = json{{"do_sample", "yes"}};
  try {
    GenerationConfig::from_json(j, "g.json");
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("g.json: do_sample"), std::string::npos) << e.what();
  }
}

TEST(GenerationConfig, FromModelConfig) {
  json j = llama_json();
  j["eos_token_id"] = {2, 3};
  j["pad_token_id"] = 0;
  GenerationConfig g = GenerationConfig::from_model_config(parse(j));
  EXPECT_EQ(g.eos_token_id, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(g.pad_token_id, 0);
  EXPECT_EQ(g.bos_token_id, 1);  // LlamaConfig's default
  EXPECT_FALSE(g.do_sample);
}

}  // namespace
}  // namespace nibble
