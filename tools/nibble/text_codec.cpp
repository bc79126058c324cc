// TextCodec over nibble::Tokenizer (see text_codec.h).
#include "text_codec.h"

#include <memory>

#include "nibble/error.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

std::optional<TextCodec> load_text_codec(const std::vector<std::filesystem::path>& dirs) {
  for (const auto& d : dirs) {
    if (d.empty() || !std::filesystem::exists(d / "tokenizer.json")) continue;
    auto tok = std::make_shared<Tokenizer>(Tokenizer::from_pretrained(d));
    TextCodec c;
    c.encode = [tok](const std::string& s) { return tok->encode(s, true).ids; };
    c.decode = [tok](const std::vector<int64_t>& ids) { return tok->decode_text(ids); };
    return c;
  }
  return std::nullopt;
}

}  // namespace nibble::cli
