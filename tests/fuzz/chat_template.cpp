// Chat templates: a fuzzed Jinja source, parsed, then rendered with fuzzed messages.
// Input: template [SEP variables-JSON], where the JSON is the messages array, or an object with
// "messages", "add_generation_prompt" and any further variables (tools, enable_thinking, ...);
// without it, a fixed conversation. Rendering must end in text or a nibble::Error, within
// bounded time and memory.
#include "nibble/chat_template.h"
#include "fuzz_common.h"

using ojson = nlohmann::ordered_json;

NIBBLE_FUZZ_ENTRY {
  auto parts = nibble::fuzz::split_parts(data, size, 2);
  nibble::ChatTemplate t;
  try {
    t = nibble::ChatTemplate::from_string(
        std::string(parts[0]), {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
  } catch (const nibble::Error&) {
    return 0;
  }
  ojson messages = ojson::array({{{"role", "system"}, {"content", "Be brief."}},
                                 {{"role", "user"}, {"content", "Hello"}},
                                 {{"role", "assistant"}, {"content", "Hi!"}},
                                 {{"role", "user"}, {"content", "Bye"}}});
  ojson extra = ojson::object();
  bool add_generation_prompt = true;
  if (parts.size() > 1) {
    auto v = nibble::fuzz::parse_ordered_json(parts[1]);
    if (!v) return 0;
    if (v->is_object()) {
      for (auto it = v->begin(); it != v->end(); ++it) {
        if (it.key() == "messages")
          messages = it.value();
        else if (it.key() == "add_generation_prompt" && it.value().is_boolean())
          add_generation_prompt = it.value().get<bool>();
        else
          extra[it.key()] = it.value();
      }
    } else {
      messages = *v;
    }
  }
  try {
    (void)t.apply(messages, add_generation_prompt, extra);
  } catch (const nibble::Error&) {
  }
  return 0;
}
