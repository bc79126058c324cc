// `nibble detokenize MODEL --ids 1,2,3 [--skip-special-tokens]`: the text of token ids, as
// transformers' tokenizer.decode gives it.
#include <cstdio>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_detokenize_command(CLI::App& app, DetokenizeArgs& a) {
  CLI::App* cmd = app.add_subcommand("detokenize", "decode token ids to text");
  cmd->add_option("MODEL", a.model, "model folder with tokenizer.json (or a tokenizer.json)")->required();
  cmd->add_option("--ids", a.ids, "comma-separated token ids, e.g. 1,80,1288")->required();
  cmd->add_flag("--skip-special-tokens", a.skip_special_tokens, "leave special tokens out of the text");
}

namespace {

std::vector<int64_t> parse_ids(const std::string& s) {
  std::vector<int64_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ',' || s[i] == ' ' || s[i] == '[' || s[i] == ']')) ++i;
    if (i == s.size()) break;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(s.substr(i), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || v < 0)
      throw ConfigError("detokenize: --ids must be comma-separated non-negative integers, got '" + s + "'");
    ids.push_back(v);
    i += used;
    if (i < s.size() && s[i] != ',' && s[i] != ' ' && s[i] != ']')
      throw ConfigError("detokenize: --ids must be comma-separated non-negative integers, got '" + s + "'");
  }
  return ids;
}

}  // namespace

int run_detokenize(const DetokenizeArgs& a) {
  std::vector<int64_t> ids = parse_ids(a.ids);
  Tokenizer tok = load_tokenizer(a.model);
  for (int64_t id : ids)
    if (id >= tok.vocab_size())
      throw ConfigError("detokenize: id " + std::to_string(id) + " is outside the vocabulary (" +
                        std::to_string(tok.vocab_size()) + " tokens)");
  std::string text = a.skip_special_tokens ? tok.decode_text(ids) : tok.decode(ids, false);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

}  // namespace nibble::cli
