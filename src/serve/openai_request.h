// OpenAI request bodies -> typed requests, with OpenAI's validation: every field the server
// reads is type-checked, and anything wrong becomes an ApiError (HTTP status, OpenAI error type,
// the offending `param`) that the HTTP layer turns into {"error": {...}}. Hostile bodies (wrong
// types, deep nesting, out-of-range numbers) end here as a 400, never deeper in the server.
//
//   nlohmann::json j = parse_body(req.body);                // ApiError 400 when malformed
//   ChatRequest c = parse_chat_request(j);                   // ApiError 400 naming the param
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/error.h"

namespace nibble::serve {

// An error a client caused (or the server's state, e.g. 503 while loading), in OpenAI's shape.
class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string param = {},
           std::string type = "invalid_request_error", std::string code = {})
      : Error(message),
        status_(status),
        param_(std::move(param)),
        type_(std::move(type)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string param_, type_, code_;
};

// {"error": {"message", "type", "param", "code"}} (param / code null when empty).
nlohmann::ordered_json error_json(const ApiError& e);

// The JSON of a request body; ApiError 400 when it is not JSON, not an object, or nested deeper
// than max_depth (a bound on the parser's work and on the size of the value's destructor).
nlohmann::json parse_body(std::string_view body, int max_depth = 64);

// The decoding settings common to chat and completions.
struct SamplingRequest {
  std::optional<int64_t> max_tokens;                   // max_tokens / max_completion_tokens (>= 1)
  std::optional<double> temperature;                   // [0, 2]; 0 = greedy; unset = OpenAI's default, 1
  std::optional<double> top_p;                         // (0, 1]
  std::optional<int64_t> top_k;                        // llama-server's extension; 0 = off
  std::optional<double> min_p;                         // llama-server's extension, [0, 1]
  std::optional<double> repetition_penalty;            // llama-server's extension, > 0
  bool ignore_eos = false;  // llama-server's and vLLM's extension: generate past eos (benchmarks)
  double presence_penalty = 0, frequency_penalty = 0;  // [-2, 2]
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;  // at most 4, none empty
  bool stream = false, include_usage = false;
};

struct ChatRequest {
  nlohmann::json messages;  // [{"role", "content": string}], content parts flattened to text
  SamplingRequest sampling;
};

struct CompletionRequest {
  std::optional<std::string> prompt;        // a text prompt (tokenized with special tokens)
  std::optional<std::vector<int64_t>> ids;  // or token ids, used as given
  SamplingRequest sampling;
};

ChatRequest parse_chat_request(const nlohmann::json& body);
CompletionRequest parse_completion_request(const nlohmann::json& body);

// Helpers for the small endpoints (/tokenize, /detokenize), same errors.
std::string get_string(const nlohmann::json& body, const char* name);                            // required
std::optional<bool> get_bool(const nlohmann::json& body, const char* name);                      // optional
std::vector<int64_t> get_ids(const nlohmann::json& body, const char* name, int64_t vocab_size);  // required

}  // namespace nibble::serve
