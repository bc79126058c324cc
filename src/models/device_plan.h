// Where each part of the generic decoder lives and runs, read off an hf_device_map: the
// embedding stage's modules, every decoder layer, the final norm and the output head. A module
// takes the device of the longest map key that is it or one of its ancestors ("" names the
// whole model); a map that places parts of one decoder layer (or of another module the decoder
// runs as one block) on different devices is refused, as transformers never produces one
// (decoder layers are _no_split_modules).
//
//   {"model.embed_tokens": cuda:0, "model.layers.0": cuda:0, "model.layers.1": cpu,
//    "model.norm": cpu, "lm_head": cpu}  ->  embed cuda:0, layers {cuda:0, cpu}, norm/head cpu
#pragma once

#include <vector>

#include "models/arch.h"
#include "nibble/device_map.h"
#include "nibble/model_config.h"
#include "nibble/tensor.h"

namespace nibble::models {

struct DevicePlan {
  Device embed, pos_embed, embed_norm;  // token embedding, learned positions, embedding norm
  std::vector<Device> layers;           // one per decoder layer
  Device final_norm, lm_head;

  // Everything on d.
  static DevicePlan uniform(Device d, int64_t n_layers);
  // Every device used, in module order (the embedding's first), each once.
  std::vector<Device> devices() const;
  bool split() const { return devices().size() > 1; }
};

// "cpu" | "cuda:N" (as infer_device_map writes them) -> Device; ConfigError otherwise.
Device parse_device(const std::string& device);

// The plan of an hf_device_map for this config (no device is checked for existence here).
// ConfigError for a module no key places; UnsupportedError for a module split over devices.
DevicePlan device_plan(const ModelConfig& config, const ArchSpec& spec, const HfDeviceMap& map);

}  // namespace nibble::models
