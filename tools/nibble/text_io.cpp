// Text inputs shared by the commands: a tokenizer from a model folder (or a tokenizer.json
// given directly) and a whole text file read as bytes.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/tokenizer.h"

#include <nlohmann/json.hpp>

namespace nibble::cli {

Tokenizer load_tokenizer(const std::string& model) {
  std::filesystem::path p(model);
  if (std::filesystem::is_regular_file(p) && p.extension() == ".json") return Tokenizer::from_file(p);
  return Tokenizer::from_pretrained(p);
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError(path + ": cannot open for reading");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw IoError(path + ": read failed");
  return ss.str();
}

}  // namespace nibble::cli
