// Tokenizer: a Hugging Face tokenizer.json (with tokenizer_config.json and
// special_tokens_map.json beside it), encoding and decoding exactly as HF `tokenizers` does.
// Pipeline: added tokens split out first -> normalizer -> pre-tokenizer -> model (BPE,
// WordPiece, Unigram) -> post-processor (special tokens); decoding runs the decoder chain.
//
//   Tokenizer tok = Tokenizer::from_pretrained("path/to/model");
//   Encoding e = tok.encode("Hello world");          // e.ids, e.tokens
//   std::string s = tok.decode(e.ids, /*skip_special_tokens=*/true);
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace nibble {

struct Encoding {
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;  // the vocabulary strings, as HF `tokens`
};

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // <dir>/tokenizer.json (+ tokenizer_config.json, special_tokens_map.json when present).
  // Throws IoError / FormatError / UnsupportedError naming the file and the JSON field.
  static Tokenizer from_pretrained(const std::filesystem::path& dir);
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  // The same from parsed JSON (tests, fuzzing, in-memory use): tokenizer.json alone, `origin`
  // naming it in errors; or with tokenizer_config.json and special_tokens_map.json, each null
  // when absent.
  static Tokenizer from_json(const nlohmann::json& tokenizer, const std::string& origin);
  static Tokenizer from_json(const nlohmann::json& tokenizer, const nlohmann::json& tokenizer_config,
                             const nlohmann::json& special_tokens_map);

  // Input longer than kMaxEncodeBytes is a FormatError: an encoding holds ~100 bytes per token
  // and a token can be one byte of input, so the bound keeps one call within a few GB (HF has
  // no bound; 32 MiB is ~8M tokens, beyond any context nibble runs). Encode longer text in parts.
  static constexpr size_t kMaxEncodeBytes = size_t(32) << 20;
  Encoding encode(std::string_view text, bool add_special_tokens = true) const;
  // HF `tokenizers`' decode: skip_special_tokens skips the added tokens tokenizer.json marks
  // special (and, for `normalized` ones, only by their decoded form, as HF does).
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;
  // transformers' tokenizer.decode(ids, skip_special_tokens=True): also skips all_special_ids().
  std::string decode_text(const std::vector<int64_t>& ids) const;
  // The ids transformers counts as special beyond tokenizer.json's flags: tokenizer_config.json's
  // added_tokens_decoder entries marked special, additional_special_tokens, and the named
  // bos/eos/unk/pad tokens (TinyStories' <|start_story|> is only special there). Sorted.
  const std::vector<int64_t>& all_special_ids() const;

  std::optional<int64_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int64_t id) const;
  int64_t vocab_size() const;  // model vocabulary plus added tokens
  bool is_special(int64_t id) const;

  // Special tokens as tokenizer_config.json / special_tokens_map.json name them ("<s>", ...);
  // nullopt when the files name none.
  std::optional<std::string> bos_token() const, eos_token() const, unk_token() const, pad_token() const;
  // tokenizer_config.json (an empty object when absent).
  const nlohmann::json& tokenizer_config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble
