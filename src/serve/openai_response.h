// OpenAI response objects (chat.completion, chat.completion.chunk, text_completion) and the
// text side of a reply: OpenAI returns the text *before* a stop sequence, while nibble's
// decoder stops *after* the token completing it, so StopTrimmer cuts the stop sequence off and,
// while streaming, holds back the tail that may still grow into one.
//
//   StopTrimmer t(stops);
//   send(t.push(streamer.push(tokens)));   // safe to show now
//   send(t.finish());                      // the rest, stop sequence removed
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace nibble::serve {

class StopTrimmer {
 public:
  explicit StopTrimmer(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // The part of the text so far that can be shown: everything before a stop sequence, less a
  // tail that is a proper prefix of one.
  std::string push(const std::string& delta);
  // The rest, at the end. A held-back tail that never became a stop sequence is shown, unless
  // the decoder stopped on a stop string (one that straddles the prompt's end).
  std::string finish(bool stopped_on_string);
  bool stopped() const { return stopped_; }  // a stop sequence was found in the text

 private:
  std::vector<std::string> stops_;
  std::string text_;
  size_t shown_ = 0;
  bool stopped_ = false;
};

// The text before the first stop sequence (the whole text when none occurs).
std::string cut_at_stop(const std::string& text, const std::vector<std::string>& stops);

// Identifies one response: "chatcmpl-..." / "cmpl-...", creation time, served model name.
struct ResponseHead {
  std::string id;
  int64_t created = 0;
  std::string model;
};

nlohmann::ordered_json usage_json(int64_t prompt_tokens, int64_t completion_tokens);
// finish_reason: "stop" / "length".
nlohmann::ordered_json chat_completion(const ResponseHead& h, const std::string& text,
                                       const char* finish_reason, int64_t prompt_tokens,
                                       int64_t completion_tokens);
// delta: {"role": "assistant", "content": ""} first, {"content": text} after, {} with the finish
// reason last; finish_reason null while streaming. with_usage: a "usage": null member (what
// OpenAI sends on every chunk when stream_options.include_usage is set).
nlohmann::ordered_json chat_chunk(const ResponseHead& h, nlohmann::ordered_json delta,
                                  const char* finish_reason, bool with_usage);
nlohmann::ordered_json text_completion(const ResponseHead& h, const std::string& text,
                                       const char* finish_reason, int64_t prompt_tokens,
                                       int64_t completion_tokens);
nlohmann::ordered_json text_chunk(const ResponseHead& h, const std::string& text, const char* finish_reason,
                                  bool with_usage);
// The last chunk of include_usage: no choices, the usage.
nlohmann::ordered_json usage_chunk(const ResponseHead& h, const char* object, int64_t prompt_tokens,
                                   int64_t completion_tokens);

// One Server-Sent Event: "data: <json>\n\n" (invalid UTF-8 replaced by U+FFFD).
std::string sse(const nlohmann::ordered_json& j);
// JSON text of a response body (invalid UTF-8 replaced by U+FFFD).
std::string dump(const nlohmann::ordered_json& j);

}  // namespace nibble::serve
