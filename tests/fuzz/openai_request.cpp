// The server's request bodies: JSON body -> ChatRequest / CompletionRequest / the /tokenize and
// /detokenize fields, with OpenAI's validation. Every rejection is an ApiError whose
// {"error": {...}} body must serialize; an accepted chat request is rendered through the ChatML
// template the server falls back on. (cpp-httplib's own HTTP parsing is upstream's.)
#include "serve/openai_request.h"
#include "fuzz_common.h"
#include "nibble/chat_template.h"
#include "serve/http_server.h"
#include "serve/openai_response.h"

namespace serve = nibble::serve;

namespace {

template <typename F>
void guarded(F&& f) {
  try {
    f();
  } catch (const serve::ApiError& e) {
    (void)serve::dump(serve::error_json(e));  // the answer the client gets
  }
}

}  // namespace

NIBBLE_FUZZ_ENTRY {
  static const nibble::ChatTemplate chatml = nibble::ChatTemplate::from_string(serve::chatml_template());
  std::string_view body(reinterpret_cast<const char*>(data), size);
  nlohmann::json j;
  try {
    j = serve::parse_body(body);
  } catch (const serve::ApiError& e) {
    (void)serve::dump(serve::error_json(e));
    return 0;
  }
  guarded([&] {
    serve::ChatRequest r = serve::parse_chat_request(j);
    try {
      (void)chatml.apply(r.messages, /*add_generation_prompt=*/true);
    } catch (const nibble::Error&) {
    }
  });
  guarded([&] { (void)serve::parse_completion_request(j); });
  guarded([&] { (void)serve::get_string(j, "content"); });
  guarded([&] { (void)serve::get_bool(j, "add_special"); });
  guarded([&] { (void)serve::get_ids(j, "tokens", 32000); });
  return 0;
}
