// `nibble render-chat MODEL --messages FILE.json [--add-generation-prompt]`: the prompt text the
// model's chat template makes of a conversation (transformers' apply_chat_template with
// tokenize=False). FILE.json holds a list of {"role", "content"} messages, or an object with
// "messages" (and further template variables beside it, e.g. "tools").
#include <cstdio>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "io/read_file.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"

namespace nibble::cli {

void add_render_chat_command(CLI::App& app, RenderChatArgs& a) {
  CLI::App* cmd =
      app.add_subcommand("render-chat", "print a conversation rendered with the model's chat template");
  cmd->add_option("MODEL", a.model, "model folder (tokenizer_config.json or chat_template.jinja)")
      ->required();
  cmd->add_option("--messages", a.messages, "JSON file: [{\"role\": ..., \"content\": ...}, ...]")
      ->required();
  cmd->add_flag("--add-generation-prompt", a.add_generation_prompt, "end with the assistant turn's opening");
}

int run_render_chat(const RenderChatArgs& a) {
  nlohmann::json j;
  try {
    j = io::parse_json(read_text_file(a.messages));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(a.messages + ": not valid JSON (" + e.what() + ")");
  }
  nlohmann::json messages = j, extra = nlohmann::json::object();
  if (j.is_object()) {
    if (!j.contains("messages")) throw FormatError(a.messages + ": an object needs a \"messages\" list");
    messages = j.at("messages");
    for (auto it = j.begin(); it != j.end(); ++it)
      if (it.key() != "messages") extra[it.key()] = it.value();
  }
  if (!messages.is_array())
    throw FormatError(a.messages + ": \"messages\" must be a list of {\"role\", \"content\"} objects");
  ChatTemplate t = ChatTemplate::from_pretrained(a.model);
  std::string out = t.apply(messages, a.add_generation_prompt, extra);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace nibble::cli
