// Subcommands of the nibble CLI: each has an Args struct filled by CLI11 and a run function.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "nibble/bnb_config.h"
#include "nibble/generate.h"

namespace nibble {
struct LoadOptions;
class CausalLM;
class Tokenizer;
}  // namespace nibble

namespace nibble::cli {

// The transformers-spelled quantization flags, shared by every command that loads a model.
struct QuantFlags {
  bool load_in_4bit = false, load_in_8bit = false, double_quant = false;
  std::string quant_type = "fp4", compute_dtype, quant_storage;
  double int8_threshold = 6.0;
  std::vector<std::string> skip_modules;
  std::string device_map = "auto";  // cpu | cuda | cuda:N | auto (the first GPU if any) | balanced | ...
                                    // or an explicit map "model.layers.0=cuda:0,lm_head=cpu"
  std::string max_memory;           // --max-memory cuda:0=20GiB,cpu=64GiB
  std::string adapter;              // --adapter: a peft LoRA adapter folder attached after loading
  BitsAndBytesConfig to_config() const;  // validated
  bool any() const;                      // --load-in-4bit or --load-in-8bit given
};
void add_quant_flags(CLI::App& cmd, QuantFlags& f);
// --adapter DIR (generate, chat, verify, perplexity): load_model attaches it (CPU).
void add_adapter_flag(CLI::App& cmd, QuantFlags& f);

// The model of folder `dir`, quantized while loading when q asks for it; progress on stderr
// when stderr is a terminal.
CausalLM load_model(const std::string& dir, const QuantFlags& q);
bool stderr_is_terminal();
// --device-map / --max-memory into LoadOptions (an explicit map when --device-map has '=').
void apply_placement_flags(LoadOptions& opts, const QuantFlags& q);

// The decoding flags of generate and chat (transformers' generate() kwargs); unset ones keep
// the model's generation_config.json values.
struct GenFlags {
  std::optional<int64_t> max_new_tokens, min_new_tokens, top_k;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  bool do_sample = false, timing = false;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  GenerateOptions to_options() const;
};
void add_gen_flags(CLI::App& cmd, GenFlags& f);

struct QuantizeArgs {
  std::string model, out;
  QuantFlags q;
  bool json = false;
};
void add_quantize_command(CLI::App& app, QuantizeArgs& a);
int run_quantize(const QuantizeArgs& a);

struct InspectArgs {
  std::string model, config_only, dtype;
  QuantFlags q;
  bool json = false, tensors = false;
  bool placement = false;  // --device-map or --max-memory given: print the hf_device_map
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

struct GenerateArgs {
  std::string model, prompt_file;
  std::optional<std::string> prompt;  // "" is a prompt (the special tokens alone)
  QuantFlags q;
  GenFlags g;
  bool json = false;
};
void add_generate_command(CLI::App& app, GenerateArgs& a);
int run_generate(const GenerateArgs& a);

struct ChatArgs {
  std::string model, system;
  QuantFlags q;
  GenFlags g;
};
void add_chat_command(CLI::App& app, ChatArgs& a);
int run_chat(const ChatArgs& a);

struct RenderChatArgs {
  std::string model, messages;
  bool add_generation_prompt = false;
};
void add_render_chat_command(CLI::App& app, RenderChatArgs& a);
int run_render_chat(const RenderChatArgs& a);

struct PerplexityArgs {
  std::string model, text_file;
  QuantFlags q;
  bool json = false;
};
void add_perplexity_command(CLI::App& app, PerplexityArgs& a);
int run_perplexity(const PerplexityArgs& a);

struct TokenizeArgs {
  std::string model, text;
  bool no_special = false, json = false;
};
void add_tokenize_command(CLI::App& app, TokenizeArgs& a);
int run_tokenize(const TokenizeArgs& a);

struct DetokenizeArgs {
  std::string model, ids;
  bool skip_special_tokens = false;
};
void add_detokenize_command(CLI::App& app, DetokenizeArgs& a);
int run_detokenize(const DetokenizeArgs& a);

struct FinetuneArgs {
  std::string model, data, output_dir, eval_data, adapter, resume;
  QuantFlags q;
  int64_t lora_r = 8;
  double lora_alpha = 8, lora_dropout = 0.0;
  std::vector<std::string> target_modules;  // empty: all-linear
  bool use_rslora = false;
  double learning_rate = 2e-4, warmup_ratio = 0.0, num_train_epochs = 3.0, max_grad_norm = 1.0,
         weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  std::string lr_scheduler_type = "linear";
  int64_t warmup_steps = 0, max_steps = -1, batch_size = 8, grad_accum = 1, max_seq_length = 1024;
  int64_t logging_steps = 10, save_steps = 500;
  bool packing = false, gradient_checkpointing = false;
  std::string recompute_granularity = "full";
  int64_t recompute_num_layers = 0;
  uint64_t seed = 42;
};
void add_finetune_command(CLI::App& app, FinetuneArgs& a);
int run_finetune(const FinetuneArgs& a);

struct MergeArgs {
  std::string model, adapter, output_dir;
  QuantFlags q;
  bool requantize = false;
};
void add_merge_command(CLI::App& app, MergeArgs& a);
int run_merge(const MergeArgs& a);

struct ServeArgs {
  std::string model, host = "127.0.0.1", api_key, chat_template, alias;
  QuantFlags q;
  int port = 8080, parallel = 4, queue = 64;
  int64_t ctx_size = 0;
  double grace_s = 10;
  int timeout_s = 10, header_timeout_s = 10, idle_timeout_s = 30, request_timeout_s = 60;
  int64_t max_connections = 16384, threads_http = 1024;
  int64_t max_body_bytes = int64_t(8) << 20, max_buffered_bytes = int64_t(256) << 20;
};
void add_serve_command(CLI::App& app, ServeArgs& a);
int run_serve(const ServeArgs& a);  // returns after SIGINT / SIGTERM

// A tokenizer from a model folder, or from a tokenizer.json given directly.
Tokenizer load_tokenizer(const std::string& model);
std::string read_text_file(const std::string& path);

}  // namespace nibble::cli
