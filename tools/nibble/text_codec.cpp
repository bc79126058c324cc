// TextCodec (see text_codec.h). Placeholder until the tokenizer layer lands: a folder with a
// tokenizer.json is reported as unsupported.
#include "text_codec.h"

#include "nibble/error.h"

namespace nibble::cli {

std::optional<TextCodec> load_text_codec(const std::vector<std::filesystem::path>& dirs) {
  for (const auto& d : dirs)
    if (!d.empty() && std::filesystem::exists(d / "tokenizer.json"))
      throw UnsupportedError(d.string() +
                             "/tokenizer.json: this build has no tokenizer yet (give --prompt-ids)");
  return std::nullopt;
}

}  // namespace nibble::cli
