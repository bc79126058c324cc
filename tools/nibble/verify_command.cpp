// `nibble verify MODEL [quant flags] [--reference MODEL_FP] [--prompt TEXT] [--expected-outputs
// FILE] [--text-file F] [--json]`: loads the model (quantizing it on load when given quant
// flags), runs nibble::verify and prints the table (or one JSON object). Exit 0 when every
// check passes, 1 when one fails; errors exit 2 through main.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/train.h"
#include "nibble/error.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"
#include "nibble/verify.h"

namespace nibble::cli {

using detail::str;

void add_verify_command(CLI::App& app, VerifyArgs& a) {
  CLI::App* cmd = app.add_subcommand(
      "verify", "check a quantized model: footprint, layers, dtypes, config, generation, round trip, error");
  cmd->add_option("MODEL", a.model, "model folder (pre-quantized, or unquantized with quant flags)")
      ->required();
  add_quant_flags(*cmd, a.q);
  add_adapter_flag(*cmd, a.q);
  cmd->add_option("--reference", a.reference,
                  "the unquantized model (default: MODEL itself when quantized on load)");
  cmd->add_option("--prompt", a.prompt,
                  "prompt for the generation check (default \"Hello my name is\" when there is a tokenizer)");
  cmd->add_option("--prompt-ids", a.prompt_ids,
                  "the prompt as comma-separated token ids (models without a tokenizer)");
  cmd->add_option("--max-new-tokens", a.max_new_tokens, "new tokens for the generation check (default 10)");
  cmd->add_option("--expected-outputs", a.expected_outputs,
                  "file of acceptable outputs (prompt + continuation), one per line");
  cmd->add_option("--text-file", a.text_file, "text for KL divergence, top-1 agreement and perplexities");
  cmd->add_option("--max-kl", a.max_kl, "largest acceptable mean KL in nats (default 0.1)");
  cmd->add_option("--min-top1", a.min_top1, "smallest acceptable top-1 agreement (default 0: reported only)");
  cmd->add_option("--min-token-agreement", a.min_token_agreement,
                  "smallest acceptable greedy token agreement (default 0)");
  cmd->add_flag("--no-round-trip", a.no_round_trip, "skip the save_pretrained + load round trip");
  cmd->add_flag("--json", a.json, "one JSON object instead of the table");
}

namespace {

// The tokenizer of the first of dirs holding a tokenizer.json (the model, else its reference).
std::optional<Tokenizer> find_tokenizer(const std::vector<std::string>& dirs) {
  for (const auto& d : dirs)
    if (!d.empty() && std::filesystem::exists(std::filesystem::path(d) / "tokenizer.json")) return load_tokenizer(d);
  return std::nullopt;
}

std::vector<int64_t> parse_ids(const std::string& s) {
  std::vector<int64_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw ConfigError(str("--prompt-ids: '", item, "' is not a token id"));
    }
  }
  return ids;
}

}  // namespace

int run_verify(const VerifyArgs& a) {
  LoadOptions lo;
  BitsAndBytesConfig qc = a.q.to_config();
  if (qc.is_quantizable()) lo.quantization_config = qc;
  apply_placement_flags(lo, a.q);
  if (!a.q.adapter.empty() && lo.device_map == "auto") lo.device_map = "cpu";  // LoRA runs on the CPU
  CausalLM model = AutoModelForCausalLM::from_pretrained(a.model, lo);
  if (!a.q.adapter.empty()) attach_adapter(model, a.q.adapter);  // the reference stays without it

  VerifyOptions o;
  if (!a.reference.empty()) o.reference = a.reference;
  o.max_new_tokens = a.max_new_tokens;
  o.max_kl = a.max_kl;
  o.min_top1 = a.min_top1;
  o.min_token_agreement = a.min_token_agreement;
  o.round_trip = !a.no_round_trip && a.q.adapter.empty();  // the saved model would not carry the adapter

  const bool needs_text =
      !a.prompt.empty() || !a.text_file.empty() || (!a.expected_outputs.empty() && a.prompt_ids.empty());
  std::optional<Tokenizer> tok;
  if (needs_text || a.prompt_ids.empty()) tok = find_tokenizer({a.model, a.reference});
  if (needs_text && !tok)
    throw ConfigError(
        str(a.model,
            ": no tokenizer.json for --prompt / --text-file / --expected-outputs (give --prompt-ids and "
            "expected outputs as space-separated ids)"));
  if (!a.prompt_ids.empty()) {
    o.prompt_ids = parse_ids(a.prompt_ids);
  } else if (tok) {
    o.prompt_ids = tok->encode(a.prompt.empty() ? "Hello my name is" : a.prompt).ids;  // transformers' bnb tests' prompt
  }
  if (tok && a.prompt_ids.empty()) o.decode = [&tok](const std::vector<int64_t>& ids) { return tok->decode_text(ids); };
  if (!a.expected_outputs.empty()) {
    std::istringstream lines(read_text_file(a.expected_outputs));
    std::string line;
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) o.expected_outputs.push_back(line);
    }
    if (o.expected_outputs.empty())
      throw ConfigError(str("--expected-outputs: ", a.expected_outputs, " holds no outputs"));
  }
  if (!a.text_file.empty()) o.text_ids = tok->encode(read_text_file(a.text_file)).ids;

  VerifyReport r = verify(model, o);
  if (a.json)
    std::printf("%s\n", r.to_json().dump(2).c_str());
  else
    std::printf("%s", r.to_table().c_str());
  return r.passed() ? 0 : 1;
}

}  // namespace nibble::cli
