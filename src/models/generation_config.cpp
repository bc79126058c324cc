// generation_config.json -> GenerationConfig. Absent and null fields keep transformers'
// global defaults (GenerationConfig._get_default_generation_params); values are type-checked
// as the file is read, so a wrong type fails at load time rather than mid-generation.
#include "nibble/generation_config.h"

#include "models/json_fields.h"
#include "nibble/error.h"
#include "nibble/model_config.h"

namespace nibble {

GenerationConfig GenerationConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  models::JsonFields f(j, origin);
  GenerationConfig g;
  g.raw = j;
  g.eos_token_id = f.int_or_int_list("eos_token_id");
  g.bos_token_id = f.opt_int("bos_token_id");
  g.pad_token_id = f.opt_int("pad_token_id");
  g.do_sample = f.bool_or("do_sample", g.do_sample);
  g.temperature = f.num_or("temperature", g.temperature);
  g.top_k = f.int_or("top_k", g.top_k);
  g.top_p = f.num_or("top_p", g.top_p);
  g.min_p = f.opt_num("min_p");
  g.typical_p = f.num_or("typical_p", g.typical_p);
  g.repetition_penalty = f.num_or("repetition_penalty", g.repetition_penalty);
  g.no_repeat_ngram_size = f.int_or("no_repeat_ngram_size", g.no_repeat_ngram_size);
  g.num_beams = f.int_or("num_beams", g.num_beams);
  g.max_new_tokens = f.opt_int("max_new_tokens");
  g.max_length = f.opt_int("max_length");
  g.min_new_tokens = f.opt_int("min_new_tokens");
  g.min_length = f.opt_int("min_length");
  if (g.max_new_tokens && *g.max_new_tokens <= 0)
    f.fail("max_new_tokens", "must be greater than 0, got " + std::to_string(*g.max_new_tokens));
  if (g.num_beams < 1) f.fail("num_beams", "must be at least 1");
  return g;
}

GenerationConfig GenerationConfig::from_file(const std::filesystem::path& p) {
  return from_json(models::read_json_file(p), p.string());
}

GenerationConfig GenerationConfig::from_model_config(const ModelConfig& c) {
  // transformers v5 pops generation parameters out of config.json when it loads a model
  // config, so only the special tokens carry over (with the config class's defaults).
  GenerationConfig g;
  g.raw = nlohmann::json::object();
  g.eos_token_id = c.eos_token_id;
  g.bos_token_id = c.bos_token_id;
  g.pad_token_id = c.pad_token_id;
  return g;
}

GenerationConfig GenerationConfig::from_pretrained(const std::filesystem::path& dir, const ModelConfig& c) {
  const auto p = dir / "generation_config.json";
  if (std::filesystem::exists(p)) return from_file(p);
  return from_model_config(c);
}

}  // namespace nibble
