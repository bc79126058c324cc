// generation_config.json -> GenerationConfig.
#include "nibble/generation_config.h"
#include "fuzz_common.h"

NIBBLE_FUZZ_ENTRY {
  auto j = nibble::fuzz::parse_json(data, size);
  if (!j) return 0;
  try {
    auto g = nibble::GenerationConfig::from_json(*j, "fuzz/generation_config.json");
    (void)g;
  } catch (const nibble::Error&) {
  }
  return 0;
}
