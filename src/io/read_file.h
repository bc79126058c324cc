// read_text_file: a whole file's bytes as a string, for the JSON and template files nibble reads
// (config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja). Callers parse and
// name their own format errors; this only says when the file itself cannot be read.
//
// Limits a hostile file cannot get past, checked before anything large is allocated:
// - a text file larger than kMaxTextFileBytes (128 MiB: the largest real tokenizer.json files
//   are ~35 MB) is refused from its size alone, so a 1 GB JSON string is never read;
// - JSON nested deeper than kMaxJsonDepth (256; serde_json, which HF tokenizers uses, stops at
//   128) is refused by a linear pre-scan before nlohmann builds a tree that recursive code
//   (dump, conversions, Jinja values) would walk one stack frame per level.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "nibble/error.h"

namespace nibble::io {

inline constexpr uintmax_t kMaxTextFileBytes = uintmax_t(128) << 20;
inline constexpr int kMaxJsonDepth = 256;

// IoError "cannot read <path>" when p cannot be opened or read; FormatError naming the file,
// its size and the limit when it is larger than max_bytes.
inline std::string read_text_file(const std::filesystem::path& p, uintmax_t max_bytes = kMaxTextFileBytes) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw IoError("cannot read " + p.string());
  struct stat st {};
  if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && uintmax_t(st.st_size) > max_bytes)
    throw FormatError(detail::str(p.string(), ": ", st.st_size, " bytes, over the limit of ", max_bytes,
                                  " bytes for a JSON or template file"));
  std::string out;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    out.append(buf, size_t(in.gcount()));
    if (out.size() > max_bytes)  // a pipe or a file that grows while read
      throw FormatError(
          detail::str(p.string(), ": over the limit of ", max_bytes, " bytes for a JSON or template file"));
  }
  if (in.bad()) throw IoError("cannot read " + p.string());
  return out;
}

// A JSON limit was exceeded. A nlohmann::json::exception, so every caller's existing
// `catch (const json::exception&)` names its file as for any other JSON fault.
class JsonLimitError : public nlohmann::json::exception {
 public:
  explicit JsonLimitError(const std::string& what) : nlohmann::json::exception(599, what.c_str()) {}
};

// Throws JsonLimitError when arrays and objects in text nest deeper than max_depth (brackets
// inside strings do not count). Linear, no allocation.
inline void check_json_depth(std::string_view text, int max_depth = kMaxJsonDepth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        throw JsonLimitError(detail::str("JSON nested deeper than ", max_depth, " levels (at byte ", i, ")"));
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

// nlohmann's parse behind check_json_depth; throws nlohmann::json::exception (parse_error or
// JsonLimitError).
template <class Json = nlohmann::json>
Json parse_json(std::string_view text) {
  check_json_depth(text);
  return Json::parse(text.begin(), text.end());
}

}  // namespace nibble::io
