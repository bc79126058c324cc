// Pieces of the verification shared by its source files: torch's dtype names and the module
// walk of an architecture spec that the config-only footprint arithmetic counts.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "models/arch.h"
#include "nibble/bnb_config.h"
#include "nibble/dtype.h"
#include "nibble/model_config.h"

namespace nibble::verify_detail {

// Dtypes as transformers users know them: "uint8", "float32", "bfloat16".
inline const char* torch_dtype_name(DType t) {
  return traits(t).torch;
}

// One Linear of the architecture a config describes.
struct LinearShape {
  std::string name;
  int64_t out = 0, in = 0;
  bool bias = false;
};
std::vector<LinearShape> linear_shapes(const ModelConfig& c, const models::ArchSpec& spec);

}  // namespace nibble::verify_detail
