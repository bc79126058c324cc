// PEFT adapter_config.json -> LoraConfig: fields, validation, target-module matching against a
// small Llama's Linear sites (names, regexes, all-linear, layers_to_transform/layers_pattern),
// then written back: what nibble writes it must read back to the same text.
#include "fuzz_common.h"
#include "nibble/lora.h"

namespace {

const std::vector<nibble::LinearSite>& sites() {
  static const std::vector<nibble::LinearSite> s = [] {
    std::vector<nibble::LinearSite> v;
    for (int l = 0; l < 2; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"})
        v.push_back({p + n, 64, 64, false});
      for (const char* n : {"mlp.gate_proj", "mlp.up_proj"}) v.push_back({p + n, 64, 128, false});
      v.push_back({p + "mlp.down_proj", 128, 64, false});
    }
    v.push_back({"lm_head", 64, 256, true});
    return v;
  }();
  return s;
}

}  // namespace

NIBBLE_FUZZ_ENTRY {
  auto j = nibble::fuzz::parse_json(data, size);
  if (!j) return 0;
  nibble::LoraConfig c;
  try {
    c = nibble::LoraConfig::from_json(*j, "fuzz/adapter_config.json");
  } catch (const nibble::Error&) {
    return 0;
  }
  (void)c.scaling();
  try {
    (void)nibble::lora_target_names(c, sites());
  } catch (const nibble::Error&) {
  }
  const std::string text = c.to_json_text();
  auto back = nibble::fuzz::parse_json(text);
  if (!back) std::abort();
  try {
    if (nibble::LoraConfig::from_json(*back, "fuzz/written").to_json_text() != text) std::abort();
  } catch (const nibble::Error& e) {
    std::fprintf(stderr, "written adapter_config.json does not read back: %s\n", e.what());
    std::abort();
  }
  return 0;
}
