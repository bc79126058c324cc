// Device placement as transformers 5.17 + accelerate compute it: which device each module of a
// model goes to (the model's hf_device_map) for device_map "auto" | "balanced" |
// "balanced_low_0" | "sequential" under per-device memory budgets, from the config alone (no
// weights read, no GPU needed when the budgets are given).
//
//   PlacementRequest r{.device_map = "balanced", .max_memory =
//   parse_max_memory("cuda:0=20GiB,cuda:1=20GiB")}; HfDeviceMap m = infer_device_map(config, r);   //
//   {"model.embed_tokens": "cuda:0", ...}
//
// Sizes are transformers' compute_module_sizes (4-bit Linear weights at half a byte, 8-bit at
// one, tied weights counted once); the budgets go through get_balanced_memory (not for
// "sequential") and, when quantizing, the bitsandbytes quantizer's 90%; the placement is
// infer_auto_device_map (decoder layers never split, a reserve for the largest layer kept on
// the first GPU and the CPU, tied weights on one device) followed by clean_device_map.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nibble/bnb_config.h"
#include "nibble/dtype.h"
#include "nibble/model_config.h"

namespace nibble {

// Bytes of "20GiB" (2^30), "20GB" (10^9), "500MiB", "1.5KB", "123" (a plain integer), as
// accelerate's convert_file_size_to_int (a unit ending in lower-case "b" counts bits: "8Gb" =
// 1 GB). ConfigError otherwise.
int64_t parse_memory_size(const std::string& size);

// Memory budget per device, keyed "cuda:N" or "cpu".
using MaxMemory = std::map<std::string, int64_t>;
// "cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB" ("0=20GiB" and "cuda=..." name cuda:0 too).
MaxMemory parse_max_memory(const std::string& spec);

// module name -> "cuda:N" | "cpu", in module order ("" names the whole model).
using HfDeviceMap = std::vector<std::pair<std::string, std::string>>;
// "model.embed_tokens=cuda:0,model.layers=cuda:1,lm_head=cpu" (devices normalized; "=cpu" alone
// names the whole model).
HfDeviceMap parse_explicit_device_map(const std::string& spec);

struct PlacementRequest {
  // auto | balanced | balanced_low_0 | sequential, or one device: cpu | cuda | cuda:N.
  std::string device_map = "auto";
  // An explicit map {module prefix -> device}; when not empty it replaces device_map, is checked
  // (known modules, known devices, every parameter covered) and returned as given.
  HfDeviceMap explicit_map = {};
  // Budgets; absent: the free memory of each visible GPU and 90% of the available RAM (an error
  // when no GPU is visible: a placement without a GPU needs the GPU budgets named).
  std::optional<MaxMemory> max_memory = std::nullopt;
  std::optional<BitsAndBytesConfig> quantization_config = std::nullopt;
  DType dtype = DType::F32;  // what unquantized parameters are held in (from_pretrained's dtype)
};

// The hf_device_map transformers' from_pretrained would produce for this config. ConfigError
// (one line) for bad input, for a model that does not fit the budgets (what it needs, what was
// allowed) and, when quantizing without llm_int8_enable_fp32_cpu_offload, for a map that puts
// part of the model on the CPU, as transformers refuses it.
HfDeviceMap infer_device_map(const ModelConfig& config, const PlacementRequest& request);

// "cuda:N" | "cpu" for "cpu", "cuda", "cuda:N", "N" (ConfigError otherwise).
std::string normalize_device(const std::string& device);

}  // namespace nibble
