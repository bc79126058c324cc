// Text inputs and outputs shared by the commands: a tokenizer from a model folder (or a
// tokenizer.json given directly), a whole text file read as bytes, and decoding with
// transformers' notion of special tokens.
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

// transformers' tokenizer.decode(skip_special_tokens=True) also skips the tokens that
// tokenizer_config.json marks special (added_tokens_decoder, additional_special_tokens) and the
// named bos/eos/unk/pad tokens, which tokenizer.json alone may not flag (TinyStories' <|start_story|>); the
// raw `tokenizers` decode keeps them. The commands print what transformers prints.
SpecialIds::SpecialIds(const Tokenizer& tok) {
  const nlohmann::json& cfg = tok.tokenizer_config();
  if (auto it = cfg.find("added_tokens_decoder"); it != cfg.end() && it->is_object()) {
    for (auto e = it->begin(); e != it->end(); ++e) {
      if (!e.value().is_object() || !e.value().value("special", false)) continue;
      try {
        ids.insert(std::stoll(e.key()));
      } catch (const std::exception&) {
        // a key that is not an id: transformers would fail to load it; nothing to skip
      }
    }
  }
  if (auto it = cfg.find("additional_special_tokens"); it != cfg.end() && it->is_array()) {
    for (const auto& t : *it) {
      std::string content = t.is_string()   ? t.get<std::string>()
                            : t.is_object() ? t.value("content", "")
                                            : "";
      if (!content.empty())
        if (auto id = tok.token_to_id(content)) ids.insert(*id);
    }
  }
  for (const auto& t : {tok.bos_token(), tok.eos_token(), tok.unk_token(), tok.pad_token()})
    if (t)
      if (auto id = tok.token_to_id(*t)) ids.insert(*id);
}

std::string decode_text(const Tokenizer& tok, const SpecialIds& special, const std::vector<int64_t>& ids) {
  std::vector<int64_t> kept;
  kept.reserve(ids.size());
  for (int64_t id : ids)
    if (!special.ids.count(id)) kept.push_back(id);
  return tok.decode(kept, /*skip_special_tokens=*/true);
}

}  // namespace nibble::cli
