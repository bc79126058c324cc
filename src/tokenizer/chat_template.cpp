// ChatTemplate: finds a model's chat template and special tokens the way transformers 5's
// tokenizer loading does, and renders it as apply_chat_template(tokenize=False) does:
//   template variables = special tokens map (named *_token entries, as strings) + kwargs,
//   then messages, tools (None unless given), documents (None unless given),
//   add_generation_prompt.
// The template is parsed once at load, so syntax errors surface at from_pretrained.
#include "nibble/chat_template.h"

#include "io/read_file.h"
#include "nibble/error.h"
#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/lexer.h"
#include "tokenizer/jinja/parser.h"
#include "tokenizer/tok_internal.h"

namespace fs = std::filesystem;

namespace nibble {

using jinja::Value;

struct ChatTemplate::Impl {
  std::string source;
  jinja::Body body;
  std::vector<std::pair<std::string, Value>> special;  // bos_token, eos_token, ... in load order
  std::string origin;                                  // file named in errors
  std::string tool_use_source;                         // a named "tool_use" template, if any
  jinja::Body tool_use_body;

  std::string render(const Value& messages, bool add_generation_prompt, const Value& extra) const;
};

namespace {

nlohmann::ordered_json read_json(const fs::path& p) {
  try {
    return io::parse_json<nlohmann::ordered_json>(io::read_text_file(p));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(detail::str(p.string(), ": invalid JSON: ", e.what()));
  }
}

void set_special(std::vector<std::pair<std::string, Value>>& special, const std::string& key,
                 const std::string& val) {
  for (auto& [k, v] : special)
    if (k == key) {
      v = Value::string(val);
      return;
    }
  special.emplace_back(key, Value::string(val));
}

jinja::Body compile(const std::string& source, const std::string& origin) {
  try {
    return jinja::parse(jinja::lex(source));
  } catch (const UnsupportedError& e) {
    throw UnsupportedError(detail::str(origin, ": ", e.what()));
  } catch (const FormatError& e) {
    throw FormatError(detail::str(origin, ": ", e.what()));
  }
}

}  // namespace

ChatTemplate::ChatTemplate() : impl_(std::make_unique<Impl>()) {}
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

ChatTemplate ChatTemplate::from_pretrained(const fs::path& dir) {
  ChatTemplate t;
  Impl& im = *t.impl_;
  const fs::path config_path = dir / "tokenizer_config.json";
  const fs::path jinja_path = dir / "chat_template.jinja";
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (fs::exists(config_path)) config = read_json(config_path);

  if (fs::exists(jinja_path)) {
    im.source = io::read_text_file(jinja_path);
    im.origin = jinja_path.string();
  } else if (config.contains("chat_template") && config["chat_template"].is_string()) {
    im.source = config["chat_template"].get<std::string>();
    im.origin = config_path.string() + " chat_template";
  } else if (config.contains("chat_template") && config["chat_template"].is_array()) {
    // Named templates: [{"name": "default", "template": ...}, {"name": "tool_use", ...}].
    for (const auto& entry : config["chat_template"]) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template"))
        throw FormatError(
            detail::str(config_path.string(), ": chat_template entries need 'name' and 'template'"));
      std::string name = entry["name"].get<std::string>();
      if (name == "default") im.source = entry["template"].get<std::string>();
      if (name == "tool_use") im.tool_use_source = entry["template"].get<std::string>();
    }
    if (im.source.empty())
      throw FormatError(detail::str(config_path.string(), ": chat_template has no template named 'default'"));
    im.origin = config_path.string() + " chat_template";
  } else if (!fs::exists(config_path)) {
    throw IoError(detail::str(dir.string(),
                              ": no chat template (neither chat_template.jinja nor tokenizer_config.json)"));
  } else {
    throw FormatError(
        detail::str(config_path.string(), ": no chat_template (and no chat_template.jinja beside it)"));
  }

  // Special tokens as transformers 5 collects them: the named ones and any other *_token
  // string / AddedToken entry, then extra_special_tokens given as a dict. special_tokens_map.json
  // is only read by the legacy path (no added_tokens_decoder in the config), where it overrides.
  for (auto it = config.begin(); it != config.end(); ++it) {
    const std::string& key = it.key();
    if (key.size() > 6 && key.compare(key.size() - 6, 6, "_token") == 0)
      if (auto val = tok::special_token_text(it.value())) set_special(im.special, key, *val);
  }
  if (config.contains("extra_special_tokens") && config["extra_special_tokens"].is_object())
    for (auto it = config["extra_special_tokens"].begin(); it != config["extra_special_tokens"].end(); ++it) {
      if (auto val = tok::special_token_text(it.value())) set_special(im.special, it.key(), *val);
    }
  const fs::path map_path = dir / "special_tokens_map.json";
  if (!config.contains("added_tokens_decoder") && fs::exists(map_path)) {
    nlohmann::ordered_json map = read_json(map_path);
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (it.key().size() > 6 && it.key().compare(it.key().size() - 6, 6, "_token") == 0)
        if (auto val = tok::special_token_text(it.value())) set_special(im.special, it.key(), *val);
    }
  }

  im.body = compile(im.source, im.origin);
  if (!im.tool_use_source.empty()) im.tool_use_body = compile(im.tool_use_source, im.origin + " (tool_use)");
  return t;
}

ChatTemplate ChatTemplate::from_string(const std::string& source, const nlohmann::json& special) {
  ChatTemplate t;
  Impl& im = *t.impl_;
  im.source = source;
  im.origin = "chat template";
  for (auto it = special.begin(); it != special.end(); ++it) {
    if (it.value().is_string())
      set_special(im.special, it.key(), it.value().get<std::string>());
    else if (it.value().is_object() && it.value().contains("content"))
      set_special(im.special, it.key(), it.value()["content"].get<std::string>());
    else
      im.special.emplace_back(it.key(), jinja::from_json(it.value()));
  }
  im.body = compile(source, im.origin);
  return t;
}

std::string ChatTemplate::Impl::render(const Value& messages, bool add_generation_prompt,
                                       const Value& extra) const {
  const Impl& im = *this;
  jinja::Scope globals;
  jinja::add_globals(globals);
  for (const auto& [k, v] : im.special) globals.vars[k] = v;
  globals.vars["tools"] = Value::none();
  globals.vars["documents"] = Value::none();
  if (extra.is_dict())
    for (const auto& [k, v] : *extra.dict) globals.vars[k] = v;
  globals.vars["messages"] = messages;
  globals.vars["add_generation_prompt"] = Value::boolean(add_generation_prompt);
  const Value* tools = extra.find("tools");
  const jinja::Body& chosen =
      (tools && !tools->is_none() && !im.tool_use_body.empty()) ? im.tool_use_body : im.body;
  jinja::Interpreter interp;
  try {
    return interp.render(chosen, globals);
  } catch (const jinja::RaisedError&) {
    throw;
  } catch (const jinja::TemplateError& e) {
    throw jinja::TemplateError(detail::str(im.origin, ": ", e.what()));
  } catch (const UnsupportedError& e) {
    throw UnsupportedError(detail::str(im.origin, ": ", e.what()));
  }
}

std::string ChatTemplate::apply(const nlohmann::json& messages, bool add_generation_prompt,
                                const nlohmann::json& extra) const {
  return impl_->render(jinja::from_json(messages), add_generation_prompt, jinja::from_json(extra));
}

std::string ChatTemplate::apply(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                const nlohmann::ordered_json& extra) const {
  return impl_->render(jinja::from_json(messages), add_generation_prompt, jinja::from_json(extra));
}

const std::string& ChatTemplate::source() const {
  return impl_->source;
}

}  // namespace nibble
