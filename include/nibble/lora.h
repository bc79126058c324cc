// LoRA adapters as peft 0.21 defines them: LoraConfig (fields, defaults, validation and the
// adapter_config.json peft writes), the adapter tensors in peft's safetensors layout
// (base_model.model.<module>.lora_A.weight [r, in], lora_B.weight [out, r]) and their init.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/tensor.h"

namespace nibble {

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  // Module name suffixes (peft matches "name == key or key.endswith('.' + name)"), or, when
  // target_modules_str is set, a regex (re.fullmatch on the full module name) or "all-linear".
  // Kept in the order given/read: peft stores a set, so its file order is Python's set order.
  std::vector<std::string> target_modules;
  std::optional<std::string> target_modules_str;
  std::vector<std::string> exclude_modules;
  std::string bias = "none";  // "none" | "all" | "lora_only"
  bool use_rslora = false;
  // true (Kaiming-uniform A, zero B), false (random B too: a non-identity start), "gaussian".
  std::string init_lora_weights = "true";
  bool fan_in_fan_out = false;
  std::vector<std::string> modules_to_save;
  bool modules_to_save_set = false;  // null vs [] in the file
  std::optional<std::string> task_type = "CAUSAL_LM";
  std::optional<std::vector<int64_t>> layers_to_transform;
  std::optional<std::string> layers_pattern;
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  bool use_dora = false;
  bool lora_bias = false;
  bool inference_mode = false;
  std::optional<std::string> base_model_name_or_path;
  std::optional<std::string> revision;
  // Keys of a read file that nibble does not model, kept to be written back unchanged.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();

  // s = alpha / r, or alpha / sqrt(r) with rslora (peft's LoraLayer.update_layer).
  double scaling() const;
  // peft's __post_init__ / update_layer checks; ConfigError naming the field.
  void validate() const;
  // adapter_config.json exactly as peft's save_pretrained writes it (json.dumps(indent=2,
  // sort_keys=True), no final newline).
  std::string to_json_text() const;
  static LoraConfig from_json(const nlohmann::json& j, const std::string& origin);
  static LoraConfig load(const std::filesystem::path& dir);  // dir/adapter_config.json
  void save(const std::filesystem::path& dir) const;         // atomically
};

// A Linear the model exposes to LoRA: full module name ("model.layers.0.self_attn.q_proj"),
// its shape, and whether it is the output head (excluded by "all-linear").
struct LinearSite {
  std::string name;
  int64_t in = 0, out = 0;
  bool is_output_head = false;
};

// The module names target_modules selects among sites, as peft's check_target_module_exists
// (and "all-linear": every Linear except the output head). ConfigError listing the Linear names
// when nothing matches.
std::vector<std::string> lora_target_names(const LoraConfig& cfg, const std::vector<LinearSite>& sites);

// One adapted module's tensors: f32 A [r, in], B [out, r].
struct LoraPair {
  Tensor A, B;
};

struct LoraAdapter {
  LoraConfig config;
  std::map<std::string, LoraPair> modules;  // by module name (no "base_model.model." prefix)

  // A as torch.nn.init.kaiming_uniform_(a=sqrt(5)) (U(-1/sqrt(in), 1/sqrt(in))) and B = 0 for
  // init_lora_weights=true; A ~ N(0, 1/r) and B = 0 for "gaussian"; false: B also Kaiming-uniform.
  // Generator: std::mt19937_64(seed) with our own uniform/normal transforms (documented in
  // lora.cpp), reproducible across platforms but NOT bit-equal to torch's RNG.
  static LoraAdapter init(const LoraConfig& cfg, const std::vector<LinearSite>& sites, uint64_t seed);
  // adapter_config.json + adapter_model.safetensors (peft names, f32), replacing the folder as
  // a whole: a crash leaves the old adapter or the new one (io/atomic_dir.h).
  void save(const std::filesystem::path& dir) const;
  // The same two files written into the existing folder dir, one after the other (for a
  // writer that makes the whole folder crash-safe itself, as a training checkpoint does).
  void write_files(const std::filesystem::path& dir) const;
  // Reads a peft adapter folder; checks every module exists in sites with matching shapes
  // (ShapeError naming the tensor) and that every A has a B.
  static LoraAdapter load(const std::filesystem::path& dir, const std::vector<LinearSite>& sites);
};

}  // namespace nibble
