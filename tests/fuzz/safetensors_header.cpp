// safetensors header + tensor table: every offset, dtype and shape is validated before use.
#include "fuzz_common.h"
#include "nibble/safetensors.h"

NIBBLE_FUZZ_ENTRY {
  try {
    auto h = nibble::parse_safetensors_header(data, size, "fuzz.safetensors");
    (void)h;
  } catch (const nibble::Error&) {
  }
  return 0;
}
