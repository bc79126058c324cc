// GenerationConfig: a checkpoint's generation_config.json (special token ids, default decoding
// settings) with transformers 5.17's meaning. Fields it leaves out take transformers' global
// defaults (do_sample false, temperature 1, top_k 50, top_p 1, ...). A checkpoint without the
// file gets GenerationConfig.from_model_config's result: the model config's bos/eos/pad ids.
//
//   auto g = GenerationConfig::from_pretrained(dir, model_config);
//   bool stop = g.is_eos(token);
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

namespace nibble {

struct ModelConfig;

struct GenerationConfig {
  std::vector<int64_t> eos_token_id;  // an int or a list in the file; empty: none
  std::optional<int64_t> bos_token_id, pad_token_id;

  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 50;
  double top_p = 1.0;
  std::optional<double> min_p;
  double typical_p = 1.0;
  double repetition_penalty = 1.0;
  int64_t no_repeat_ngram_size = 0;
  int64_t num_beams = 1;

  // Lengths. max_new_tokens wins when set. A max_length counts the prompt. With neither,
  // transformers generates 20 new tokens, capped at max_position_embeddings in total.
  std::optional<int64_t> max_new_tokens, max_length;
  std::optional<int64_t> min_new_tokens, min_length;

  nlohmann::json raw;  // the whole file (empty object for from_model_config)

  bool is_eos(int64_t token) const {
    for (int64_t e : eos_token_id)
      if (e == token) return true;
    return false;
  }

  // Throws IoError / FormatError / ConfigError (a field of the wrong JSON type, a
  // max_new_tokens <= 0 as transformers' validate() rejects), naming the file and field.
  static GenerationConfig from_file(const std::filesystem::path& generation_config_json);
  static GenerationConfig from_json(const nlohmann::json& j, const std::string& origin);
  static GenerationConfig from_model_config(const ModelConfig& c);
  // <dir>/generation_config.json when it exists, else from_model_config(c) — as from_pretrained.
  static GenerationConfig from_pretrained(const std::filesystem::path& dir, const ModelConfig& c);
};

}  // namespace nibble
