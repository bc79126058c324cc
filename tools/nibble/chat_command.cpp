// `nibble chat MODEL [decoding flags] [quant flags]`: an interactive conversation on stdin. Each
// user line joins the history, the chat template renders the whole history with the generation
// prompt (tokenized without adding special tokens, as apply_chat_template(tokenize=True)), and
// the reply streams to stdout and joins the history. `/exit` or end of input ends it.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "nibble/chat_template.h"
#include "nibble/model.h"
#include "nibble/tokenizer.h"

namespace nibble::cli {

void add_chat_command(CLI::App& app, ChatArgs& a) {
  CLI::App* cmd =
      app.add_subcommand("chat", "chat with a model on stdin (its chat template; /exit or EOF ends)");
  cmd->add_option("MODEL", a.model, "model folder with a chat template")->required();
  cmd->add_option("--system", a.system, "a system message opening the conversation");
  add_gen_flags(*cmd, a.g);
  add_quant_flags(*cmd, a.q);
  add_adapter_flag(*cmd, a.q);
}

int run_chat(const ChatArgs& a) {
  Tokenizer tok = load_tokenizer(a.model);
  ChatTemplate tmpl = ChatTemplate::from_pretrained(a.model);
  CausalLM model = load_model(a.model, a.q);
  GenerateOptions o = a.g.to_options();
  if (!o.max_new_tokens) o.max_new_tokens = 256;  // a reply, not generation_config's 20 tokens
  o.decode = [&](const std::vector<int64_t>& ids) { return tok.decode(ids, /*skip_special_tokens=*/false); };
  const bool interactive = isatty(fileno(stdin)) != 0;

  nlohmann::json messages = nlohmann::json::array();
  if (!a.system.empty()) messages.push_back({{"role", "system"}, {"content", a.system}});
  for (std::string line;;) {
    if (interactive) std::fputs("> ", stdout), std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "/exit") break;
    if (line.empty()) continue;
    messages.push_back({{"role", "user"}, {"content", line}});
    const std::string rendered = tmpl.apply(messages, /*add_generation_prompt=*/true);
    const std::vector<int64_t> prompt = tok.encode(rendered, /*add_special_tokens=*/false).ids;

    TextStreamer streamer([&](const std::vector<int64_t>& ids) { return tok.decode_text(ids); });
    o.on_token = [&](size_t, int64_t t) {
      std::string s = streamer.push(std::vector<int64_t>{t});
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      return true;
    };
    Generation g = generate(model, prompt, o);
    std::string rest = streamer.flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    std::vector<int64_t> reply = g.new_ids();
    if (g.finish_reason == FinishReason::Eos && !reply.empty()) reply.pop_back();  // the end-of-turn token
    messages.push_back({{"role", "assistant"}, {"content", tok.decode_text(reply)}});
  }
  return 0;
}

}  // namespace nibble::cli
