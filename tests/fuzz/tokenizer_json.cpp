// tokenizer.json + tokenizer_config.json -> Tokenizer, then encode/decode of a text.
// Input: tokenizer.json [SEP tokenizer_config.json [SEP text]] (SEP: fuzz_common.h's
// kPartSeparator; an empty or non-JSON config part means none). Loading must end in a
// Tokenizer or a nibble::Error; a loaded one must encode and decode any text.
#include "fuzz_common.h"
#include "tokenizer_run.h"

NIBBLE_FUZZ_ENTRY {
  auto parts = nibble::fuzz::split_parts(data, size, 3);
  auto tj = nibble::fuzz::parse_json(parts[0]);
  if (!tj) return 0;
  nlohmann::json config = nullptr;
  if (parts.size() > 1)
    if (auto c = nibble::fuzz::parse_json(parts[1])) config = std::move(*c);
  std::string_view text =
      parts.size() > 2 ? parts[2] : std::string_view("Hello world! <s> 12 ab  c\n\xe4\xbd\xa0");
  nibble::Tokenizer tok;
  try {
    tok = nibble::Tokenizer::from_json(*tj, config, nullptr);
  } catch (const nibble::Error&) {
    return 0;
  }
  nibble::fuzz::run_tokenizer(tok, text);
  return 0;
}
