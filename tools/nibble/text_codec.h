// Text <-> token ids for the commands that take text (`nibble verify --prompt/--text-file/
// --expected-outputs`): the model folder's tokenizer.json through nibble::Tokenizer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace nibble::cli {

struct TextCodec {
  std::function<std::vector<int64_t>(const std::string&)> encode;  // with special tokens
  std::function<std::string(const std::vector<int64_t>&)> decode;  // skip_special_tokens=True
};
// The first of dirs holding a tokenizer.json; nullopt when none does.
std::optional<TextCodec> load_text_codec(const std::vector<std::filesystem::path>& dirs);

}  // namespace nibble::cli
