// config.json -> ModelConfig (architecture fields, rope scaling, layer types).
#include "nibble/model_config.h"
#include "fuzz_common.h"

NIBBLE_FUZZ_ENTRY {
  auto j = nibble::fuzz::parse_json(data, size);
  if (!j) return 0;
  try {
    auto c = nibble::ModelConfig::from_json(*j, "fuzz/config.json");
    (void)c.rope_dim();
  } catch (const nibble::Error&) {
  }
  return 0;
}
