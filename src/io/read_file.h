// read_text_file: a whole file's bytes as a string, for the JSON and template files nibble reads
// (config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja). Callers parse and
// name their own format errors; this only says when the file itself cannot be read.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "nibble/error.h"

namespace nibble::io {

// IoError "cannot read <path>" when p cannot be opened or read.
inline std::string read_text_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw IoError("cannot read " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError("cannot read " + p.string());
  return ss.str();
}

}  // namespace nibble::io
