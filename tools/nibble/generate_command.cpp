// `nibble generate MODEL -p TEXT [decoding flags] [quant flags] [--json]`: tokenizes the prompt
// (with special tokens, as transformers' tokenizer call), generates, and streams the decoded
// text to stdout as tokens arrive; --json prints one object with the ids and the text instead.
// The decoding flags (shared with `nibble chat`) are transformers' generate() kwargs.
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/generation_config.h"
#include "nibble/model.h"
#include "nibble/thread_pool.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_gen_flags(CLI::App& cmd, GenFlags& f) {
  cmd.add_option("--max-new-tokens,-n", f.max_new_tokens,
                 "tokens to generate (default: generation_config.json, else 20)");
  cmd.add_option("--min-new-tokens", f.min_new_tokens,
                 "eos is kept out until this many tokens are generated");
  cmd.add_flag("--do-sample", f.do_sample, "sample instead of greedy search");
  cmd.add_option("--temperature", f.temperature, "divides the logits (sampling)");
  cmd.add_option("--top-k", f.top_k, "keep the k most likely tokens (sampling; 0 disables)");
  cmd.add_option("--top-p", f.top_p,
                 "keep the smallest set of tokens whose probability reaches p (sampling)");
  cmd.add_option("--min-p", f.min_p, "drop tokens below min_p x the top probability (sampling)");
  cmd.add_option("--repetition-penalty", f.repetition_penalty,
                 "penalize tokens already in the sequence (1 = off)");
  cmd.add_option("--seed", f.seed, "random seed of the sampler (default 0)");
  cmd.add_option("--stop", f.stop, "stop after the token that completes this string (repeatable)")
      ->allow_extra_args(false);  // one string per --stop, so MODEL after it stays positional
  cmd.add_flag("--timing", f.timing, "print prefill / decode speed on stderr");
}

GenerateOptions GenFlags::to_options() const {
  GenerateOptions o;
  o.max_new_tokens = max_new_tokens;
  o.min_new_tokens = min_new_tokens;
  if (do_sample) o.do_sample = true;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.min_p = min_p;
  o.repetition_penalty = repetition_penalty;
  o.seed = seed;
  o.stop_strings = stop;
  return o;
}

void add_generate_command(CLI::App& app, GenerateArgs& a) {
  CLI::App* cmd = app.add_subcommand("generate", "generate text from a prompt (greedy unless --do-sample)");
  cmd->add_option("MODEL", a.model, "model folder (config.json, safetensors, tokenizer.json)")->required();
  auto* p = cmd->add_option("-p,--prompt", a.prompt, "the prompt text");
  cmd->add_option("--prompt-file", a.prompt_file, "read the prompt from this file")->excludes(p);
  add_gen_flags(*cmd, a.g);
  add_quant_flags(*cmd, a.q);
  add_adapter_flag(*cmd, a.q);
  cmd->add_flag("--json", a.json, R"(print {"prompt_ids", "ids", "text"} instead of streaming text)");
}

// Wall-clock of the first and last new token, for --timing.
struct Timing {
  std::chrono::steady_clock::time_point start, first, last;
  int64_t tokens = 0;
  void on_token() {
    last = std::chrono::steady_clock::now();
    if (tokens++ == 0) first = last;
  }
  void report(size_t prompt_tokens, double load_s, const CausalLM& model) const {
    using secs = std::chrono::duration<double>;
    double prefill = secs(first - start).count(), decode = secs(last - first).count();
    std::fprintf(stderr,
                 "[timing] load %.2f s | prompt %zu tokens + first token: %.1f ms | decode %lld tokens: %.1f tok/s | "
                 "%s\n",
                 load_s, prompt_tokens, prefill * 1e3, static_cast<long long>(tokens - 1),
                 tokens > 1 && decode > 0 ? double(tokens - 1) / decode : 0.0,
                 model.device().is_cpu() ? (std::to_string(num_threads()) + " threads").c_str()
                                         : model.device().str().c_str());
  }
};

int run_generate(const GenerateArgs& a) {
  if (!a.prompt && a.prompt_file.empty())
    throw ConfigError("generate: give a prompt with -p TEXT or --prompt-file F");
  const std::string prompt = a.prompt ? *a.prompt : read_text_file(a.prompt_file);
  Tokenizer tok = load_tokenizer(a.model);
  const auto t_load = std::chrono::steady_clock::now();
  CausalLM model = load_model(a.model, a.q);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const std::vector<int64_t> prompt_ids = tok.encode(prompt, /*add_special_tokens=*/true).ids;

  GenerateOptions o = a.g.to_options();
  // Stop strings are matched on the text as the tokens spell it, special tokens included.
  o.decode = [&](const std::vector<int64_t>& ids) { return tok.decode(ids, /*skip_special_tokens=*/false); };
  // Settings are checked before anything is printed, so a bad one is the only output.
  resolve_decoding(model.generation_config(), o, int64_t(prompt_ids.size()),
                   model.config().max_position_embeddings);
  TextStreamer streamer([&](const std::vector<int64_t>& ids) { return tok.decode_text(ids); });
  Timing timing;
  o.on_token = [&](size_t, int64_t t) {
    timing.on_token();
    if (!a.json) {
      std::string s = streamer.push(std::vector<int64_t>{t});
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  if (!a.json) {
    std::string s = streamer.push(prompt_ids);
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  }
  timing.start = std::chrono::steady_clock::now();
  Generation g = generate(model, prompt_ids, o);
  if (a.json) {
    nlohmann::ordered_json j{{"prompt_ids", prompt_ids},
                             {"ids", g.ids},
                             {"text", tok.decode_text(g.ids)},
                             {"finish_reason", finish_reason_name(g.finish_reason)}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::string s = streamer.flush();
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fputc('\n', stdout);
  }
  if (a.g.timing) timing.report(prompt_ids.size(), load_s, model);
  return 0;
}

}  // namespace nibble::cli
