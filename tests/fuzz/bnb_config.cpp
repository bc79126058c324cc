// quantization_config JSON -> BitsAndBytesConfig, validated and serialized back.
#include "nibble/bnb_config.h"
#include "fuzz_common.h"

NIBBLE_FUZZ_ENTRY {
  auto j = nibble::fuzz::parse_json(data, size);
  if (!j) return 0;
  try {
    auto c = nibble::BitsAndBytesConfig::from_dict(*j);
    c.validate();
    (void)c.to_json_string();
  } catch (const nibble::Error&) {
  }
  return 0;
}
