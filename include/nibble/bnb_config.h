// BitsAndBytesConfig: transformers' quantization settings for bitsandbytes (LLM.int8, FP4,
// NF4), with transformers 5.17's exact semantics, so a config moves between nibble and the
// Python stack unchanged: the same validation, the same to_dict()/to_diff_dict() values, and
// to_json_string() byte-identical to Python's json.dumps(..., indent=2, sort_keys=True) + "\n".
//
// Fields are spelled as in transformers (and config.json). Dtype fields hold the name as the
// user gave it ("bfloat16", "half", "torch.float16"); nullopt means transformers' default
// (compute float32, storage uint8). A "torch." prefix stands for passing a torch.dtype object
// in Python; a bare name is what transformers resolves with getattr(torch, name).
//
//   BitsAndBytesConfig qc{.load_in_4bit = true, .bnb_4bit_compute_dtype = "bfloat16",
//                         .bnb_4bit_quant_type = "nf4", .bnb_4bit_use_double_quant = true};
//   qc.validate();                      // throws ConfigError naming the field
//   std::string s = qc.to_json_string();
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "nibble/dtype.h"

namespace nibble {

struct BitsAndBytesConfig {
  bool load_in_8bit = false;
  bool load_in_4bit = false;
  double llm_int8_threshold = 6.0;
  std::optional<std::vector<std::string>> llm_int8_skip_modules = std::nullopt;
  bool llm_int8_enable_fp32_cpu_offload = false;
  bool llm_int8_has_fp16_weight = false;
  std::optional<std::string> bnb_4bit_compute_dtype = std::nullopt;  // -> float32
  std::string bnb_4bit_quant_type = "fp4";
  bool bnb_4bit_use_double_quant = false;
  std::optional<std::string> bnb_4bit_quant_storage = std::nullopt;  // -> uint8

  // Throws ConfigError (one line, naming the field) for what transformers rejects, plus a
  // bnb_4bit_quant_type other than "fp4"/"nf4" (transformers accepts any string there).
  void validate() const;

  // The resolved dtypes. compute_dtype() throws UnsupportedError for a torch dtype nibble has
  // no type for (e.g. "complex64": valid for transformers, useless for computing).
  DType compute_dtype() const;
  DType quant_storage() const;

  // transformers' is_quantizable(): load_in_4bit || load_in_8bit. is_quantized() is the same.
  bool is_quantizable() const { return load_in_8bit || load_in_4bit; }
  bool is_quantized() const { return is_quantizable(); }
  // "llm_int8" | "fp4" | "nf4"; nullopt when neither load flag is set (transformers: None).
  std::optional<std::string> quantization_method() const;

  // Every field plus quant_method "bitsandbytes", _load_in_4bit and _load_in_8bit; dtypes as
  // their canonical torch names. Validates first: an invalid config is never serialized.
  nlohmann::json to_dict() const;
  // The keys of to_dict() whose values differ from BitsAndBytesConfig{}.to_dict().
  nlohmann::json to_diff_dict() const;
  // Python's json.dumps(d, indent=2, sort_keys=True) + "\n" of the diff dict (or the full one).
  std::string to_json_string(bool use_diff = true) const;

  // As transformers' BitsAndBytesConfig(**d): unknown keys (quant_method, ...) are ignored,
  // JSON types are checked as Python would (an integer llm_int8_threshold is an error). The
  // `_load_in_4bit`/`_load_in_8bit` keys, which transformers ignores, are read only when the
  // public key is absent. Dtype strings resolve as for the fields above (transformers itself
  // would fail on a "torch."-prefixed string in a dict). Throws ConfigError.
  static BitsAndBytesConfig from_dict(const nlohmann::json& d);
  // The "quantization_config" of a model's config.json. Throws IoError/FormatError for an
  // unreadable file, ConfigError (naming the file) when there is no bitsandbytes config.
  static BitsAndBytesConfig from_config_json(const std::filesystem::path& config_json);
};

}  // namespace nibble
