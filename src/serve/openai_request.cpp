// Validation of OpenAI request bodies. Field names, ranges and messages follow OpenAI's API
// reference; fields nibble does not implement are refused when they would change the answer
// (n > 1, logprobs, echo, tools) and ignored when they would not (user, metadata, ...).
#include "serve/openai_request.h"

#include <algorithm>
#include <cmath>

namespace nibble::serve {

using nlohmann::json;

namespace {

const char* type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

[[noreturn]] void bad_type(const std::string& name, const json& v, const char* want) {
  throw ApiError(
      400, detail::str("Invalid type for '", name, "': expected ", want, ", but got ", type_name(v), "."),
      name, "invalid_request_error", "invalid_type");
}

[[noreturn]] void bad_value(const std::string& name, const std::string& why) {
  throw ApiError(400, detail::str("Invalid value for '", name, "': ", why), name, "invalid_request_error",
                 "invalid_value");
}

// The field when present and not null (OpenAI treats null as absent).
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> get_number(const json& body, const char* name, double lo, double hi) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad_type(name, *v, "a number");
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad_value(name, detail::str(x, " is outside [", lo, ", ", hi, "]."));
  return x;
}

std::optional<int64_t> get_int(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (v->is_number_unsigned()) {
    if (v->get<uint64_t>() > uint64_t(INT64_MAX)) bad_value(name, "too large.");
    return int64_t(v->get<uint64_t>());
  }
  if (!v->is_number_integer()) bad_type(name, *v, "an integer");
  return v->get<int64_t>();
}

void refuse_unless(const json& body, const char* name, const json& allowed) {
  const json* v = field(body, name);
  if (v && *v != allowed)
    throw ApiError(400, detail::str("'", name, "' = ", v->dump(), " is not supported by this server."), name,
                   "invalid_request_error", "unsupported_value");
}

SamplingRequest parse_sampling(const json& body) {
  SamplingRequest s;
  s.max_tokens = get_int(body, "max_completion_tokens");
  if (!s.max_tokens) s.max_tokens = get_int(body, "max_tokens");
  if (s.max_tokens && *s.max_tokens < 1)
    bad_value(field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens",
              detail::str(*s.max_tokens, " is less than the minimum of 1."));
  s.temperature = get_number(body, "temperature", 0, 2);
  s.top_p = get_number(body, "top_p", 0, 1);
  if (s.top_p && *s.top_p == 0) bad_value("top_p", "must be greater than 0.");
  s.top_k = get_int(body, "top_k");
  if (s.top_k && *s.top_k < 0) bad_value("top_k", "must be >= 0.");
  s.min_p = get_number(body, "min_p", 0, 1);
  s.repetition_penalty = get_number(body, "repetition_penalty", 0, 100);
  if (s.repetition_penalty && *s.repetition_penalty == 0) bad_value("repetition_penalty", "must be > 0.");
  if (const json* v = field(body, "ignore_eos")) {
    if (!v->is_boolean()) bad_type("ignore_eos", *v, "a boolean");
    s.ignore_eos = v->get<bool>();
  }
  s.presence_penalty = get_number(body, "presence_penalty", -2, 2).value_or(0);
  s.frequency_penalty = get_number(body, "frequency_penalty", -2, 2).value_or(0);
  if (auto seed = get_int(body, "seed")) s.seed = uint64_t(*seed);
  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      s.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > 4) bad_value("stop", "at most 4 stop sequences are allowed.");
      for (const json& e : *stop) {
        if (!e.is_string()) bad_type("stop", e, "a string or an array of strings");
        s.stop.push_back(e.get<std::string>());
      }
    } else {
      bad_type("stop", *stop, "a string or an array of strings");
    }
    for (const std::string& x : s.stop)
      if (x.empty()) bad_value("stop", "a stop sequence must not be empty.");
  }
  if (const json* v = field(body, "stream")) {
    if (!v->is_boolean()) bad_type("stream", *v, "a boolean");
    s.stream = v->get<bool>();
  }
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad_type("stream_options", *so, "an object");
    if (!s.stream) bad_value("stream_options", "only allowed when 'stream' is true.");
    if (const json* u = field(*so, "include_usage")) {
      if (!u->is_boolean()) bad_type("stream_options.include_usage", *u, "a boolean");
      s.include_usage = u->get<bool>();
    }
  }
  if (const json* m = field(body, "model"); m && !m->is_string()) bad_type("model", *m, "a string");
  if (auto n = get_int(body, "n"); n && *n != 1) bad_value("n", "this server generates one choice (n = 1).");
  refuse_unless(body, "logprobs", false);
  refuse_unless(body, "best_of", 1);
  refuse_unless(body, "logit_bias", json::object());
  if (const json* rf = field(body, "response_format"); rf && *rf != json{{"type", "text"}})
    throw ApiError(400, "'response_format' other than {\"type\": \"text\"} is not supported by this server.",
                   "response_format", "invalid_request_error", "unsupported_value");
  return s;
}

// A message's content as text: a string, or an array of {"type": "text", "text": ...} parts.
std::string content_text(const json& content, size_t i) {
  const std::string name = detail::str("messages[", i, "].content");
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad_type(name, content, "a string or an array of content parts");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object()) bad_type(name, part, "a content part object");
    const json* type = field(part, "type");
    if (!type || !type->is_string() || type->get<std::string>() != "text")
      bad_value(name, "only content parts of type 'text' are supported.");
    const json* t = field(part, "text");
    if (!t || !t->is_string()) bad_value(name, "a text part needs a string 'text'.");
    text += t->get<std::string>();
  }
  return text;
}

}  // namespace

nlohmann::ordered_json error_json(const ApiError& e) {
  nlohmann::ordered_json err{{"message", e.what()}, {"type", e.type()}};
  err["param"] = e.param().empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(e.param());
  err["code"] = e.code().empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(e.code());
  return {{"error", err}};
}

json parse_body(std::string_view body, int max_depth) {
  json j;
  try {
    j = json::parse(body.begin(), body.end(), [&](int depth, json::parse_event_t event, json&) {
      if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
          depth >= max_depth)
        throw ApiError(400, detail::str("The JSON body is nested deeper than ", max_depth, " levels."));
      return true;
    });
  } catch (const json::exception& e) {
    throw ApiError(400, detail::str("We could not parse the JSON body of your request: ", e.what()));
  }
  if (!j.is_object()) throw ApiError(400, "The request body must be a JSON object.");
  return j;
}

ChatRequest parse_chat_request(const json& body) {
  ChatRequest r;
  const json* msgs = field(body, "messages");
  if (!msgs)
    throw ApiError(400, "Missing required parameter: 'messages'.", "messages", "invalid_request_error",
                   "missing_required_parameter");
  if (!msgs->is_array()) bad_type("messages", *msgs, "an array");
  if (msgs->empty())
    bad_value("messages", "expected an array with minimum length 1, but got an empty array.");
  r.messages = json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string name = detail::str("messages[", i, "]");
    if (!m.is_object()) bad_type(name, m, "an object");
    const json* role = field(m, "role");
    if (!role) bad_value(name + ".role", "missing.");
    if (!role->is_string()) bad_type(name + ".role", *role, "a string");
    const std::string rs = role->get<std::string>();
    if (rs != "system" && rs != "developer" && rs != "user" && rs != "assistant" && rs != "tool")
      bad_value(name + ".role", "'" + rs + "' is not one of system, developer, user, assistant, tool.");
    const json* content = field(m, "content");
    if (!content && rs != "assistant") bad_value(name + ".content", "missing.");
    // The templates know "system", not OpenAI's newer name for it.
    r.messages.push_back(
        {{"role", rs == "developer" ? "system" : rs}, {"content", content ? content_text(*content, i) : ""}});
  }
  refuse_unless(body, "tools", json::array());
  refuse_unless(body, "top_logprobs", 0);
  r.sampling = parse_sampling(body);
  return r;
}

CompletionRequest parse_completion_request(const json& body) {
  CompletionRequest r;
  const json* p = field(body, "prompt");
  if (!p)
    throw ApiError(400, "Missing required parameter: 'prompt'.", "prompt", "invalid_request_error",
                   "missing_required_parameter");
  // A string, or one prompt in an array: [string] or token ids [int, ...] or [[int, ...]].
  const json* one = p;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) one = &(*p)[0];
  if (one->is_string()) {
    r.prompt = one->get<std::string>();
  } else if (one->is_array() && !one->empty() &&
             std::all_of(one->begin(), one->end(), [](const json& e) { return e.is_number_integer(); })) {
    r.ids = one->get<std::vector<int64_t>>();
  } else if (p->is_array() && p->size() > 1 && (*p)[0].is_string()) {
    bad_value("prompt", "this server takes one prompt per request.");
  } else {
    bad_type("prompt", *p, "a string, an array of token ids, or an array of one of these");
  }
  refuse_unless(body, "echo", false);
  refuse_unless(body, "suffix", "");
  r.sampling = parse_sampling(body);
  return r;
}

std::string get_string(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) throw ApiError(400, detail::str("Missing required parameter: '", name, "'."), name);
  if (!v->is_string()) bad_type(name, *v, "a string");
  return v->get<std::string>();
}

std::optional<bool> get_bool(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad_type(name, *v, "a boolean");
  return v->get<bool>();
}

std::vector<int64_t> get_ids(const json& body, const char* name, int64_t vocab_size) {
  const json* v = field(body, name);
  if (!v) throw ApiError(400, detail::str("Missing required parameter: '", name, "'."), name);
  if (!v->is_array()) bad_type(name, *v, "an array of token ids");
  std::vector<int64_t> ids;
  for (const json& e : *v) {
    if (!e.is_number_integer()) bad_type(name, e, "an array of token ids");
    const int64_t id =
        e.is_number_unsigned() && e.get<uint64_t>() > uint64_t(INT64_MAX) ? -1 : e.get<int64_t>();
    if (id < 0 || id >= vocab_size)
      bad_value(name, detail::str("token id ", e.dump(), " is outside [0, ", vocab_size, ")."));
    ids.push_back(id);
  }
  return ids;
}

}  // namespace nibble::serve
