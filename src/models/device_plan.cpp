// The per-module devices of a split model (device_plan.h).
#include "models/device_plan.h"

#include "nibble/error.h"

namespace nibble::models {

using detail::str;

DevicePlan DevicePlan::uniform(Device d, int64_t n_layers) {
  return {d, d, d, std::vector<Device>(size_t(n_layers), d), d, d};
}

std::vector<Device> DevicePlan::devices() const {
  std::vector<Device> out;
  auto add = [&](Device d) {
    for (const Device& e : out)
      if (e == d) return;
    out.push_back(d);
  };
  for (Device d : {embed, pos_embed, embed_norm}) add(d);
  for (Device d : layers) add(d);
  for (Device d : {final_norm, lm_head}) add(d);
  return out;
}

Device parse_device(const std::string& d) {
  if (d == "cpu") return Device::cpu();
  const std::string n = d.starts_with("cuda:") ? d.substr(5) : "";
  if (n.empty() || n.size() > 3 || n.find_first_not_of("0123456789") != std::string::npos)
    throw ConfigError(str("unknown device '", d, "' (cpu or cuda:N)"));
  return Device::cuda(std::stoi(n));
}

namespace {

// The one device of `module`: its closest placed ancestor's (or its own entry's), and every
// entry under it must agree. A module no entry places takes `fallback` when given.
Device module_device(const HfDeviceMap& map, const std::string& module, const Device* fallback = nullptr) {
  const std::string* ancestor = nullptr;
  size_t best = 0;
  std::vector<std::string> inner;  // devices of entries strictly inside the module
  for (const auto& [k, v] : map) {
    if (k.empty() || k == module || module.starts_with(k + ".")) {
      if (!ancestor || k.size() >= best) ancestor = &v, best = k.size();
    } else if (k.starts_with(module + ".")) {
      inner.push_back(v);
    }
  }
  if (!ancestor && inner.empty() && fallback) return *fallback;
  if (!ancestor && inner.empty()) throw ConfigError(str("device_map places no prefix of '", module, "'"));
  const std::string& d = ancestor ? *ancestor : inner.front();
  for (const auto& v : inner)
    if (v != d)
      throw UnsupportedError(str("device_map splits '", module, "' over ", d, " and ", v,
                                 "; nibble runs each decoder layer (and the embedding, final norm and head) "
                                 "on one device"));
  return parse_device(d);
}

}  // namespace

DevicePlan device_plan(const ModelConfig& c, const ArchSpec& spec, const HfDeviceMap& map) {
  const std::string& P = spec.prefix;
  DevicePlan p;
  p.embed = module_device(map, P + spec.embed);
  p.pos_embed = spec.pos_embed.empty() ? p.embed : module_device(map, P + spec.pos_embed);
  p.embed_norm = spec.embed_norm.empty() ? p.pos_embed : module_device(map, P + spec.embed_norm);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    p.layers.push_back(module_device(map, P + spec.layers + "." + std::to_string(i)));
  p.final_norm = module_device(map, P + spec.final_norm);
  // a tied head has no parameter of its own: a map may leave it out (it runs beside the embedding)
  p.lm_head = module_device(map, spec.lm_head, c.tie_word_embeddings ? &p.embed : nullptr);
  return p;
}

}  // namespace nibble::models
