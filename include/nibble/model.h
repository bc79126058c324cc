// A causal language model loaded from a Hugging Face checkpoint folder, optionally quantized
// while loading (BitsAndBytesConfig) or loaded pre-quantized (folders saved by transformers +
// bitsandbytes), run on the CPU, a GPU, or split over devices by layer, with a KV cache.
//
//   auto model = AutoModelForCausalLM::from_pretrained("path", {.quantization_config = qc});
//   Tensor logits = model.forward(ids);            // [T, vocab] f32
//   auto out = model.generate_greedy(ids, 10);     // prompt + 10 tokens
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nibble/bnb_config.h"
#include "nibble/device_map.h"
#include "nibble/model_config.h"
#include "nibble/tensor.h"

namespace nibble {

struct LoadOptions {
  std::optional<BitsAndBytesConfig> quantization_config;
  // "cpu", "cuda", "cuda:N", or "auto" (without max_memory: the first GPU when there is one,
  // else the CPU), or "balanced", "balanced_low_0", "sequential": placed as transformers places
  // them (nibble/device_map.h) under max_memory.
  std::string device_map = "cpu";
  // An explicit placement {module prefix -> "cuda:N" | "cpu"}; when not empty it replaces device_map.
  HfDeviceMap device_map_modules = {};
  // Budgets per device ({"cuda:0": bytes, "cpu": bytes}; parse_max_memory reads "cuda:0=20GiB,cpu=64GiB").
  std::optional<MaxMemory> max_memory = std::nullopt;
};

// The device a device_map string names (ConfigError / UnsupportedError when it names none).
Device resolve_device_map(const std::string& device_map);
// The hf_device_map from_pretrained places a model of this config by: {"" -> the device} when
// device_map names one device (resolve_device_map's), infer_device_map's map for a placement
// (an explicit map, max_memory, balanced/balanced_low_0/sequential), which may split the model
// over devices. Every device it names must exist (ConfigError / UnsupportedError otherwise).
HfDeviceMap resolve_load_map(const ModelConfig& config, const LoadOptions& opts, DType dtype);

// One leaf module as transformers names it, with its class.
struct ModuleInfo {
  std::string name;   // "model.layers.0.self_attn.q_proj"
  std::string klass;  // "Linear4bit", "Embedding", "LlamaRMSNorm", ...
};

class KVCache;
struct GenerationConfig;

class CausalLM {
 public:
  CausalLM();
  ~CausalLM();
  CausalLM(CausalLM&&) noexcept;
  CausalLM& operator=(CausalLM&&) noexcept;

  const ModelConfig& config() const;
  // generation_config.json (or GenerationConfig::from_model_config): generate()'s defaults.
  const GenerationConfig& generation_config() const;
  const std::optional<BitsAndBytesConfig>& quantization_config() const;
  bool is_quantized() const { return quantization_config().has_value(); }

  // Logits [T, vocab] (f32, on the host) for ids appended after whatever the cache already holds;
  // a fresh cache is used when cache is null.
  Tensor forward(const std::vector<int64_t>& ids, KVCache* cache = nullptr) const;
  // Logits [B, T, vocab] of B sequences of equal length run as one batch, as transformers runs
  // input_ids [B, T]. Differs from B calls of forward() only for LLM.int8 weights, whose outlier
  // columns bitsandbytes chooses over every row of the batch.
  Tensor forward_batch(const std::vector<std::vector<int64_t>>& batch) const;
  // One decode step of B independent sequences, each at its own position: tokens[b] is
  // appended to caches[b] (which may hold different lengths). Logits [B, vocab] (f32). Results
  // per sequence equal forward({tokens[b]}, caches[b]) (continuous batching in a server).
  Tensor decode_batch(const std::vector<int64_t>& tokens, const std::vector<KVCache*>& caches) const;
  // The first maximum of each row of decode_batch's logits (torch.argmax), found where the
  // logits are: only the B ids cross back to the host (greedy decoding with no processor).
  std::vector<int64_t> decode_batch_argmax(const std::vector<int64_t>& tokens,
                                           const std::vector<KVCache*>& caches) const;
  // Logits [1, vocab] of the last position only (the output head runs on that row alone: what
  // generation needs after a prefill).
  Tensor forward_last(const std::vector<int64_t>& ids, KVCache* cache = nullptr) const;
  // The first maximum of forward_last's logits, found where the logits are (one id crosses back).
  int64_t forward_last_argmax(const std::vector<int64_t>& ids, KVCache* cache = nullptr) const;
  // A KV cache for this model on its device; capacity > 0 preallocates that many positions once
  // (a forward past it is an error), 0 gives a cache that grows as needed.
  std::unique_ptr<KVCache> new_cache(int64_t capacity = 0) const;
  // Where the weights live and the forward pass runs; for a model split over devices, where the
  // embedding lives (the forward pass starts there and moves with the layers).
  Device device() const;
  // Where each module lives, as transformers' model.hf_device_map ({"" -> device} when the
  // whole model is on one device).
  const HfDeviceMap& hf_device_map() const;
  // prompt followed by max_new_tokens greedy tokens (stops early at an eos id when stop_at_eos).
  std::vector<int64_t> generate_greedy(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                       bool stop_at_eos = false) const;
  // Mean next-token negative log-likelihood of ids (labels shifted as transformers does).
  double mean_nll(const std::vector<int64_t>& ids) const;

  std::vector<ModuleInfo> modules() const;  // Linear/Embedding/norm leaves in module order
  int64_t get_memory_footprint() const;     // transformers' semantics
  // Above max_shard_size bytes the weights go to model-0000i-of-0000n.safetensors shards plus
  // model.safetensors.index.json, as transformers writes them.
  void save_pretrained(const std::filesystem::path& dir, int64_t max_shard_size = 5'000'000'000) const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
  friend struct AutoModelForCausalLM;
};

struct AutoModelForCausalLM {
  static CausalLM from_pretrained(const std::filesystem::path& dir, const LoadOptions& opts = {});
};

}  // namespace nibble
