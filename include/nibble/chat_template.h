// ChatTemplate: renders a model's Jinja chat template (tokenizer_config.json's `chat_template`,
// or chat_template.jinja beside it) as transformers' apply_chat_template(tokenize=False) does.
// The interpreter covers what real templates use; an unsupported construct throws
// UnsupportedError naming the template and line, never silently wrong text.
//
//   ChatTemplate t = ChatTemplate::from_pretrained("path/to/model");
//   std::string prompt = t.apply(messages_json, /*add_generation_prompt=*/true);
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace nibble {

class ChatTemplate {
 public:
  ChatTemplate();
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Throws IoError / FormatError when the folder has no chat template.
  static ChatTemplate from_pretrained(const std::filesystem::path& dir);
  // source: the template text; special: bos_token, eos_token, ... as the template sees them.
  static ChatTemplate from_string(const std::string& source,
                                  const nlohmann::json& special = nlohmann::json::object());

  // messages: [{"role": ..., "content": ...}, ...]; extra: further variables (tools,
  // enable_thinking, ...), passed to the template as transformers passes kwargs (`tools` and
  // `documents` are None unless given). Errors: the template's raise_exception(msg) throws a
  // nibble::Error whose what() is msg; other runtime failures throw nibble::Error naming the
  // template line; constructs nibble does not implement throw UnsupportedError.
  std::string apply(const nlohmann::json& messages, bool add_generation_prompt,
                    const nlohmann::json& extra = nlohmann::json::object()) const;
  // The same with key order kept: nlohmann::json sorts object keys, Python dicts do not, so
  // anything the template prints whole (tools via tojson, tool-call arguments) needs this one
  // to match transformers byte for byte.
  std::string apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                    const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  // The template text as loaded.
  const std::string& source() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nibble
