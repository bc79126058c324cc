// Internal pieces of the tokenizer pipeline (see include/nibble/tokenizer.h): each stage of a
// tokenizer.json (normalizer, pre-tokenizer, model, post-processor, decoder) is a small
// polymorphic object built from its JSON by a factory that names the JSON field on error.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/utf8.h"

namespace nibble::tok {

using Json = nlohmann::json;

// Where a JSON value came from, for error messages: "tokenizer.json: pre_tokenizer.type ...".
struct Where {
  std::string file;   // "tokenizer.json"
  std::string field;  // "pre_tokenizer.pretokenizers[1]"
  Where at(const std::string& key) const { return {file, field.empty() ? key : field + "." + key}; }
  Where at(size_t i) const { return {file, field + "[" + std::to_string(i) + "]"}; }
};

[[noreturn]] void format_error(const Where& w, const std::string& what);
// Normalized text one encode may reach (Tokenizer::kMaxEncodeBytes, 32 MiB): a normalizer that
// expands past it (a charsmap or a Replace can multiply the text) is a FormatError, checked as
// the output grows, so the bound on one encode's memory holds after normalization too.
void check_normalized_size(size_t bytes, const char* normalizer);
// A vocabulary entry's id (`id`, of JSON entry `token` among `entries`), checked to index a table.
int64_t vocab_id(const Json& id, const std::string& token, size_t entries, const Where& w);
[[noreturn]] void unsupported_type(const Where& w, const std::string& type);
// Typed field access that throws FormatError naming the field.
const Json& field(const Json& j, const char* key, const Where& w);
std::string get_string(const Json& j, const char* key, const Where& w);
std::string get_string_or(const Json& j, const char* key, const std::string& dflt, const Where& w);
bool get_bool_or(const Json& j, const char* key, bool dflt, const Where& w);
int64_t get_int_or(const Json& j, const char* key, int64_t dflt, const Where& w);
// The f64 HF tokenizers holds for a JSON number that nlohmann read as x (see util.cpp): serde_json
// without its float_roundtrip feature, which can be an ulp away from the correctly rounded x.
double serde_json_f64(double x);
std::string type_of(const Json& j, const Where& w);  // j["type"], a string

// A piece of the text on its way through the pipeline (HF's Split of a PreTokenizedString).
struct Piece {
  std::string text;
  bool at_start = false;  // begins at offset 0 of the original input (Metaspace prepend "first")
  int64_t added_id = -1;  // >= 0: an added token already, left alone by later stages
};

// A special token as tokenizer_config.json / special_tokens_map.json write it: a string or an
// AddedToken dict {"content": ...} (J: nlohmann::json or ordered_json).
template <class J>
std::optional<std::string> special_token_text(const J& j) {
  if (j.is_string()) return j.template get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string())
    return j["content"].template get<std::string>();
  return std::nullopt;
}

// ---- Unicode helpers (ICU) ----
// Decodes one code point at s[i] (valid UTF-8 assumed); returns it and advances i.
char32_t next_cp(std::string_view s, size_t& i);
using io::append_utf8;
size_t utf8_len(unsigned char lead);
bool is_whitespace(char32_t c);        // Rust char::is_whitespace (White_Space)
bool is_alphanumeric(char32_t c);      // Rust char::is_alphanumeric
bool is_numeric(char32_t c);           // Rust char::is_numeric (Nd, Nl, No)
bool is_punctuation(char32_t c);       // Unicode P* or ASCII punctuation
bool is_control_or_other(char32_t c);  // C* categories
bool is_separator(char32_t c);         // Z* categories
bool is_mark_nonspacing(char32_t c);
bool is_mark(char32_t c);                                      // M* categories
std::string unicode_normalize(std::string_view s, char form);  // form: 'C','D','c'(NFKC),'d'(NFKD)
std::string to_lower(std::string_view s);
std::vector<std::string_view> graphemes(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
bool valid_utf8(std::string_view s);

// ---- Regex (PCRE2, UTF + UCP, JIT) ----
class Regex {
 public:
  Regex(const std::string& pattern, const Where& w);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping matches, left to right, as byte ranges.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  void* code_ = nullptr;
};

// A Split/Replace pattern: {"String": "..."} (literal) or {"Regex": "..."}.
class Pattern {
 public:
  Pattern(const Json& j, const Where& w);
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

// ---- Splitting (HF SplitDelimiterBehavior) ----
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior parse_behavior(const std::string& s, const Where& w);
// `matches` are non-overlapping ranges in `s`; returns the kept byte ranges, empty ones dropped.
std::vector<std::pair<size_t, size_t>> split_ranges(std::string_view s,
                                                    const std::vector<std::pair<size_t, size_t>>& matches,
                                                    SplitBehavior b, bool invert = false);
// Matches of a per-character predicate: each matching char is its own match.
template <typename F>
std::vector<std::pair<size_t, size_t>> char_matches(std::string_view s, F pred) {
  std::vector<std::pair<size_t, size_t>> m;
  size_t i = 0;
  while (i < s.size()) {
    size_t b = i;
    char32_t c = next_cp(s, i);
    if (pred(c)) m.emplace_back(b, i);
  }
  return m;
}

// ---- Byte-level (GPT-2) byte <-> char mapping ----
const std::string& byte_to_char_utf8(uint8_t b);  // the UTF-8 of the char standing for byte b
int char_to_byte(char32_t c);                     // -1 when c stands for no byte
std::string byte_level_encode(std::string_view s);

// ---- Stages ----
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const Json& j, const Where& w);
// sentencepiece's precompiled_charsmap (base64 text); empty means identity.
std::unique_ptr<Normalizer> make_precompiled(const std::string& charsmap_base64, const Where& w);
std::string base64_decode(std::string_view s, const Where& w);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const Where& w);
// Replaces every not-yet-tokenized piece by the pieces fn(text) returns (ranges of text), dropping
// empty ones; fn may rewrite the text first.
template <typename F>
void split_pieces(std::vector<Piece>& pieces, F fn) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (auto& p : pieces) {
    if (p.added_id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    bool at_start = p.at_start;
    std::string text = std::move(p.text);
    for (auto [b, e] : fn(text, at_start)) {
      if (e > b) out.push_back(Piece{text.substr(b, e - b), at_start && b == 0, -1});
    }
  }
  pieces = std::move(out);
}

class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(std::string_view word, std::vector<int64_t>& ids,
                        std::vector<std::string>& tokens) const = 0;
  virtual std::optional<int64_t> token_to_id(std::string_view token) const = 0;
  virtual const std::string* id_to_token(int64_t id) const = 0;
  virtual int64_t vocab_size() const = 0;
};
std::unique_ptr<Model> make_model(const Json& j, const Where& w);

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int64_t>& ids, std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const Json& j, const Where& w);

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const Json& j, const Where& w);

}  // namespace nibble::tok
