// `nibble perplexity MODEL --text-file F [quant flags] [--json]`: the mean next-token negative
// log-likelihood of a text and exp of it. The text is tokenized with special tokens (as
// transformers' tokenizer call). A text longer than max_position_embeddings is cut into
// windows of that length overlapping by one token, so every token but the first is predicted
// exactly once (each window starts its context afresh).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_perplexity_command(CLI::App& app, PerplexityArgs& a) {
  CLI::App* cmd = app.add_subcommand("perplexity", "perplexity of a text under the model");
  cmd->add_option("MODEL", a.model, "model folder (config.json, safetensors, tokenizer.json)")->required();
  cmd->add_option("--text-file", a.text_file, "the text")->required();
  add_quant_flags(*cmd, a.q);
  add_adapter_flag(*cmd, a.q);
  cmd->add_flag("--json", a.json, R"(print {"tokens": n, "nll": x, "ppl": y})");
}

int run_perplexity(const PerplexityArgs& a) {
  const std::string text = read_text_file(a.text_file);
  Tokenizer tok = load_tokenizer(a.model);
  CausalLM model = load_model(a.model, a.q);
  const std::vector<int64_t> ids = tok.encode(text, /*add_special_tokens=*/true).ids;
  if (ids.size() < 2)
    throw ConfigError(a.text_file + ": the text gives " + std::to_string(ids.size()) +
                      " token(s); perplexity needs at least 2");
  const size_t window = model.config().max_position_embeddings > 1
                            ? size_t(model.config().max_position_embeddings)
                            : ids.size();
  double total = 0;
  for (size_t start = 0; start + 1 < ids.size();) {
    const size_t end = std::min(start + window, ids.size());
    std::vector<int64_t> chunk(ids.begin() + int64_t(start), ids.begin() + int64_t(end));
    total += model.mean_nll(chunk) * double(chunk.size() - 1);
    start = end - 1;
  }
  const double nll = total / double(ids.size() - 1), ppl = std::exp(nll);
  if (a.json) {
    nlohmann::ordered_json j{{"tokens", ids.size()}, {"nll", nll}, {"ppl", ppl}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("tokens %zu | nll %.6f | ppl %.4f\n", ids.size(), nll, ppl);
  }
  return 0;
}

}  // namespace nibble::cli
