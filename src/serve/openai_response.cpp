// OpenAI response objects and stop-sequence trimming; see openai_response.h.
#include "serve/openai_response.h"

#include <algorithm>

namespace nibble::serve {

using ojson = nlohmann::ordered_json;

namespace {

// Position of the earliest stop sequence in text, npos when none.
size_t find_stop(const std::string& text, const std::vector<std::string>& stops, size_t from) {
  size_t best = std::string::npos;
  for (const std::string& s : stops) {
    // A match may start up to s.size() - 1 bytes before `from` (it straddles the new text).
    const size_t start = from > s.size() ? from - s.size() : 0;
    best = std::min(best, text.find(s, start));
  }
  return best;
}

// Length of the longest suffix of text that is a proper prefix of a stop sequence.
size_t held_tail(const std::string& text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& s : stops)
    for (size_t n = std::min(s.size() - 1, text.size()); n > held; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        held = n;
        break;
      }
  return held;
}

ojson finish_value(const char* finish_reason) {
  return finish_reason ? ojson(finish_reason) : ojson();
}

}  // namespace

std::string StopTrimmer::push(const std::string& delta) {
  if (stopped_) return {};
  const size_t from = text_.size();
  text_ += delta;
  size_t end = find_stop(text_, stops_, from);
  if (end != std::string::npos) {
    stopped_ = true;
  } else {
    end = text_.size() - held_tail(text_, stops_);
  }
  if (end <= shown_) return {};
  std::string out = text_.substr(shown_, end - shown_);
  shown_ = end;
  return out;
}

std::string StopTrimmer::finish(bool stopped_on_string) {
  if (stopped_ || stopped_on_string) return {};
  std::string out = text_.substr(shown_);
  shown_ = text_.size();
  return out;
}

std::string cut_at_stop(const std::string& text, const std::vector<std::string>& stops) {
  const size_t end = find_stop(text, stops, 0);
  return end == std::string::npos ? text : text.substr(0, end);
}

ojson usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

ojson chat_completion(const ResponseHead& h, const std::string& text, const char* finish_reason,
                      int64_t prompt_tokens, int64_t completion_tokens) {
  ojson message{{"role", "assistant"}, {"content", text}};
  ojson choice{{"index", 0}, {"message", message}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  return {{"id", h.id},
          {"object", "chat.completion"},
          {"created", h.created},
          {"model", h.model},
          {"choices", ojson::array({choice})},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

ojson chat_chunk(const ResponseHead& h, ojson delta, const char* finish_reason, bool with_usage) {
  ojson choice{{"index", 0},
               {"delta", std::move(delta)},
               {"logprobs", nullptr},
               {"finish_reason", finish_value(finish_reason)}};
  ojson j{{"id", h.id},
          {"object", "chat.completion.chunk"},
          {"created", h.created},
          {"model", h.model},
          {"choices", ojson::array({choice})}};
  if (with_usage) j["usage"] = nullptr;
  return j;
}

ojson text_completion(const ResponseHead& h, const std::string& text, const char* finish_reason,
                      int64_t prompt_tokens, int64_t completion_tokens) {
  ojson choice{{"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
  return {{"id", h.id},
          {"object", "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"choices", ojson::array({choice})},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

ojson text_chunk(const ResponseHead& h, const std::string& text, const char* finish_reason, bool with_usage) {
  ojson choice{
      {"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_value(finish_reason)}};
  ojson j{{"id", h.id},
          {"object", "text_completion"},
          {"created", h.created},
          {"model", h.model},
          {"choices", ojson::array({choice})}};
  if (with_usage) j["usage"] = nullptr;
  return j;
}

ojson usage_chunk(const ResponseHead& h, const char* object, int64_t prompt_tokens,
                  int64_t completion_tokens) {
  return {{"id", h.id},
          {"object", object},
          {"created", h.created},
          {"model", h.model},
          {"choices", ojson::array()},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

std::string dump(const ojson& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string sse(const ojson& j) {
  return "data: " + dump(j) + "\n\n";
}

}  // namespace nibble::serve
