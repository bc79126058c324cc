// What the tokenizer harnesses do with a loaded tokenizer: encode a text (with and without
// special tokens), decode the ids back every way transformers can, and decode ids taken from the
// text's bytes (out-of-vocabulary ids included). Errors must be nibble::Error.
#pragma once
#include <string_view>
#include <vector>

#include "fuzz_common.h"
#include "nibble/tokenizer.h"

namespace nibble::fuzz {

inline void run_tokenizer(const Tokenizer& tok, std::string_view text) {
  try {
    for (bool special : {true, false}) {
      Encoding e = tok.encode(text, special);
      if (e.ids.size() != e.tokens.size()) std::abort();
      (void)tok.decode(e.ids, false);
      (void)tok.decode(e.ids, true);
      (void)tok.decode_text(e.ids);
    }
  } catch (const Error&) {
  }
  // Ids from the bytes: in and past the vocabulary, negative too.
  std::vector<int64_t> ids;
  for (size_t i = 0; i + 1 < text.size() && ids.size() < 256; i += 2)
    ids.push_back(int64_t(int8_t(text[i])) * 256 + uint8_t(text[i + 1]));
  try {
    (void)tok.decode(ids, false);
  } catch (const Error&) {
  }
  try {
    (void)tok.decode_text(ids);
  } catch (const Error&) {
  }
  (void)tok.token_to_id(text);
  (void)tok.all_special_ids();
}

}  // namespace nibble::fuzz
