// `nibble tokenize MODEL --text T [--no-special] [--json]`: the ids and vocabulary strings HF
// `tokenizers` gives for a text (special tokens added unless --no-special).
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_tokenize_command(CLI::App& app, TokenizeArgs& a) {
  CLI::App* cmd = app.add_subcommand("tokenize", "encode a text to token ids");
  cmd->add_option("MODEL", a.model, "model folder with tokenizer.json (or a tokenizer.json)")->required();
  cmd->add_option("--text", a.text, "the text to encode")->required();
  cmd->add_flag("--no-special", a.no_special, "do not add special tokens (add_special_tokens=False)");
  cmd->add_flag("--json", a.json, R"(print {"ids": [...], "tokens": [...]})");
}

int run_tokenize(const TokenizeArgs& a) {
  Tokenizer tok = load_tokenizer(a.model);
  Encoding e = tok.encode(a.text, !a.no_special);
  if (a.json) {
    nlohmann::ordered_json j{{"ids", e.ids}, {"tokens", e.tokens}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  for (size_t i = 0; i < e.ids.size(); ++i) {
    // the token as a JSON string, so spaces, newlines and control bytes stay visible
    std::string t =
        i < e.tokens.size()
            ? nlohmann::json(e.tokens[i]).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
            : "";
    std::printf("%lld\t%s\n", static_cast<long long>(e.ids[i]), t.c_str());
  }
  return 0;
}

}  // namespace nibble::cli
