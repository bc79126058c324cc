// Subcommands of the nibble CLI: each has an Args struct filled by CLI11 and a run function.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "nibble/bnb_config.h"

namespace nibble::cli {

// The transformers-spelled quantization flags, shared by every command that loads a model.
struct QuantFlags {
  bool load_in_4bit = false, load_in_8bit = false, double_quant = false;
  std::string quant_type = "fp4", compute_dtype, quant_storage;
  double int8_threshold = 6.0;
  std::vector<std::string> skip_modules;
  BitsAndBytesConfig to_config() const;  // validated
};
void add_quant_flags(CLI::App& cmd, QuantFlags& f);

struct QuantizeArgs {
  std::string model, out;
  QuantFlags q;
  bool json = false;
};
void add_quantize_command(CLI::App& app, QuantizeArgs& a);
int run_quantize(const QuantizeArgs& a);

struct InspectArgs {
  std::string model, config_only;
  QuantFlags q;
  bool json = false, tensors = false;
};
void add_inspect_command(CLI::App& app, InspectArgs& a);
int run_inspect(const InspectArgs& a);

struct VerifyArgs {
  std::string model, reference, prompt, prompt_ids, expected_outputs, text_file;
  QuantFlags q;
  int64_t max_new_tokens = 10;
  double max_kl = 0.1, min_top1 = 0.0, min_token_agreement = 0.0;
  bool no_round_trip = false, json = false;
};
void add_verify_command(CLI::App& app, VerifyArgs& a);
int run_verify(const VerifyArgs& a);  // 0: every check passed, 1: one failed

}  // namespace nibble::cli
