// ModelConfig: a Hugging Face config.json read into typed fields with transformers 5.17's
// semantics for the families nibble runs (llama, mistral, qwen2, qwen3, gemma2, phi3, gpt2,
// gpt_neox, opt, bloom): each family's aliases (n_embd -> hidden_size, n_head, n_layer, ...),
// its defaults for absent fields, and both rope spellings — legacy top-level
// rope_theta/rope_scaling ({"type": ...} or {"rope_type": ...}) and v5 rope_parameters —
// standardized the way transformers' RotaryEmbeddingConfigMixin does it.
//
// Shape fields (vocab_size, hidden_size, num_hidden_layers, num_attention_heads and the MLP
// width) are required: transformers would silently take a 7B-sized default, which only ever
// hides a broken file. Other absent fields take the family's transformers default. An unknown
// model_type is parsed with llama's names and defaults (the model registry decides whether it
// can run it).
//
//   ModelConfig c = ModelConfig::from_file(dir / "config.json");   // throws ConfigError
//   if (c.rope) { RopeTables r = rope_init(c); ... }                 // src/models/rope.h
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/dtype.h"

namespace nibble {

// Rotary embedding settings after transformers' standardization (rope_type always set,
// rope_theta and partial_rotary_factor moved in, original_max_position_embeddings filled in
// for llama3/yarn/longrope). Absent optionals are absent in the file: rope.cpp applies
// transformers' fallbacks (yarn beta_fast 32, beta_slow 1, truncate true, ...).
struct RopeParameters {
  std::string rope_type = "default";  // default | linear | dynamic | yarn | longrope | llama3
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  std::optional<double> factor;                             // all but default
  std::optional<int64_t> original_max_position_embeddings;  // llama3, yarn, longrope
  std::optional<double> attention_factor;                   // yarn, longrope
  std::optional<double> low_freq_factor, high_freq_factor;  // llama3
  std::optional<double> beta_fast, beta_slow;               // yarn
  std::optional<double> mscale, mscale_all_dim;             // yarn
  std::optional<bool> truncate;                             // yarn
  std::vector<double> short_factor, long_factor;            // longrope, [rotary dim / 2] each
};

struct ModelConfig {
  std::string architecture;  // architectures[0] ("" when the file names none)
  std::string model_type;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;              // gpt2: n_embd; bloom: also n_embed
  int64_t intermediate_size = 0;        // MLP width. opt: ffn_dim; gpt2: n_inner or 4*hidden; bloom: 4*hidden
  int64_t num_hidden_layers = 0;        // gpt2/bloom: n_layer
  int64_t num_attention_heads = 0;      // gpt2/bloom: n_head
  int64_t num_key_value_heads = 0;      // = num_attention_heads for MHA families
  int64_t head_dim = 0;                 // config.json's head_dim, else the family default, else hidden/heads
  int64_t max_position_embeddings = 0;  // gpt2: n_positions; 0 for bloom (alibi, no limit)

  // rms_norm_eps | layer_norm_eps (gpt_neox) | layer_norm_epsilon (gpt2, bloom) | fixed 1e-5 (opt)
  double norm_eps = 1e-6;
  // Activation name as transformers' ACT2FN spells it: hidden_act, or gemma2's hidden_activation,
  // or gpt2/opt's activation_function. bloom has none in its config: "bloom_gelu" (tanh form).
  std::string hidden_act;
  bool tie_word_embeddings = false;
  // Biases on the attention projections, as the family's modeling code uses them:
  // llama/qwen3: q,k,v,o per attention_bias; qwen2: always q,k,v (never o) — true here;
  // gpt_neox: attention_bias (default true); gpt2/bloom: always; opt: enable_bias.
  bool attention_bias = false;
  // Biases on the MLP projections: llama's mlp_bias; gpt2/bloom/gpt_neox always; opt enable_bias.
  bool mlp_bias = false;

  std::optional<RopeParameters> rope;  // none for gpt2, opt, bloom

  // Sliding-window attention: the window (tokens) and, per layer, "full_attention" or
  // "sliding_attention" (always num_hidden_layers entries). mistral/phi3 slide on every layer
  // when sliding_window is set; qwen2/qwen3 only when use_sliding_window, on layers from
  // max_window_layers; gemma2 alternates (even layers slide) unless layer_types says otherwise.
  std::optional<int64_t> sliding_window;
  std::vector<std::string> layer_types;

  // Special tokens as the model class resolves them (class defaults when absent; null = none).
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_id;  // an int or a list in config.json

  // ---- family-specific (false/empty where the family has no such field) ---------------------
  // gemma2: attention scale is query_pre_attn_scalar^-0.5; tanh soft-capping of logits.
  std::optional<double> query_pre_attn_scalar;
  std::optional<double> final_logit_softcapping, attn_logit_softcapping;
  // gpt_neox: x + attn(ln1(x)) + mlp(ln2(x)) instead of sequential residuals.
  bool use_parallel_residual = false;
  // gpt2: divide scores by sqrt(head_dim) / additionally by (layer_idx + 1); upcast attention.
  bool scale_attn_weights = false;
  bool scale_attn_by_inverse_layer_idx = false;
  bool reorder_and_upcast_attn = false;
  // opt: pre-LN (true) or post-LN; drop the final norm (opt-350m); embedding projection
  // width (a project_in/project_out pair when != hidden_size); affine LayerNorms.
  bool do_layer_norm_before = false;
  bool _remove_final_layer_norm = false;
  int64_t word_embed_proj_dim = 0;
  bool layer_norm_elementwise_affine = false;
  // bloom: residual taken after the input LayerNorm; pretraining_tp/slow_but_exact only change
  // the summation order of transformers' dense layers.
  bool apply_residual_connection_post_layernorm = false;
  int64_t pretraining_tp = 1;
  bool slow_but_exact = false;
  // qwen2/qwen3 (sliding layout inputs; the result is in sliding_window/layer_types).
  bool use_sliding_window = false;
  int64_t max_window_layers = 0;

  std::optional<DType> torch_dtype;  // "dtype" (v5) or "torch_dtype" (v4); dtype wins when both
  nlohmann::json raw;                // the whole config.json
  std::string origin;                // file (or label) it came from, for messages

  // Rotated dims per head: head_dim, or int(head_dim * partial_rotary_factor) for every scaled
  // rope type and for phi3/gpt_neox's default (llama-style classes ignore the factor in their
  // default rope). 0 without rope.
  int64_t rope_dim() const;

  bool layer_is_sliding(int64_t layer) const { return layer_types.at(size_t(layer)) == "sliding_attention"; }

  // Throws IoError (unreadable), FormatError (not JSON), ConfigError (a field missing, of the
  // wrong JSON type, or inconsistent: heads not dividing hidden_size, kv heads not dividing
  // heads, bad layer_types, rope settings transformers rejects). Messages name file and field.
  static ModelConfig from_file(const std::filesystem::path& config_json);
  static ModelConfig from_json(const nlohmann::json& j, const std::string& origin);
};

}  // namespace nibble
