// Shared by every fuzz harness: a harness defines LLVMFuzzerTestOneInput; a rejected input is a
// nibble::Error (a clear, typed error); anything else escaping (another exception, a crash, a
// sanitizer report) is a finding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>

#include "nibble/error.h"

namespace nibble::fuzz {

// JSON from fuzz bytes; nullopt when it is not JSON (the parser itself is nlohmann's, tested upstream).
inline std::optional<nlohmann::json> parse_json(const uint8_t* data, size_t size) {
  auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

}  // namespace nibble::fuzz

#define NIBBLE_FUZZ_ENTRY extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
