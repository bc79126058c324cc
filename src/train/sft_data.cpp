// Supervised fine-tuning data: TRL's SFTTrainer formats from a JSONL file (text,
// prompt + completion, chat messages with an assistant-only loss, pre-tokenized ids), tokenized
// and labelled, and TRL's packing.
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "io/read_file.h"
#include "nibble/chat_template.h"
#include "nibble/error.h"
#include "nibble/tokenizer.h"
#include "nibble/train.h"

namespace nibble {

using detail::str;

namespace {

std::vector<int64_t> encode(const Tokenizer* tok, const std::string& text, bool special,
                            const std::string& where) {
  if (!tok) throw ConfigError(where + ": text data needs the model's tokenizer.json");
  return tok->encode(text, special).ids;
}

void append_eos(const Tokenizer* tok, SftExample& e) {
  if (!tok || !tok->eos_token()) return;
  if (auto id = tok->token_to_id(*tok->eos_token())) {
    if (!e.input_ids.empty() && e.input_ids.back() == *id) return;
    e.input_ids.push_back(*id);
    e.labels.push_back(*id);
  }
}

std::vector<int64_t> int_list(const nlohmann::json& j, const std::string& field, const std::string& where) {
  if (!j.is_array()) throw FormatError(where + ": '" + field + "' must be a list of integers");
  std::vector<int64_t> v;
  for (const auto& x : j) {
    if (!x.is_number_integer()) throw FormatError(where + ": '" + field + "' must be a list of integers");
    v.push_back(x.get<int64_t>());
  }
  return v;
}

std::string string_field(const nlohmann::json& o, const char* field, const std::string& where) {
  const auto& v = o.at(field);
  if (!v.is_string()) throw FormatError(where + ": '" + field + "' must be a string");
  return v.get<std::string>();
}

SftExample from_messages(const nlohmann::json& msgs, const Tokenizer* tok, const ChatTemplate* tmpl,
                         const std::string& where) {
  if (!msgs.is_array() || msgs.empty()) throw FormatError(where + ": 'messages' must be a non-empty list");
  if (!tmpl) throw ConfigError(where + ": 'messages' data needs the model's chat template");
  for (const auto& m : msgs)
    if (!m.is_object() || !m.contains("role") || !m.contains("content"))
      throw FormatError(where + ": every message needs 'role' and 'content'");
  SftExample e;
  e.input_ids = encode(tok, tmpl->apply(msgs, false), false, where);  // the template holds the specials
  e.labels.assign(e.input_ids.size(), -100);
  bool any = false;
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (msgs[i]["role"] != "assistant") continue;
    nlohmann::json before(nlohmann::json::array()), upto(nlohmann::json::array());
    for (size_t k = 0; k < i; ++k) before.push_back(msgs[k]);
    upto = before;
    upto.push_back(msgs[i]);
    const size_t p = encode(tok, tmpl->apply(before, true), false, where).size();
    const size_t u = std::min(encode(tok, tmpl->apply(upto, false), false, where).size(), e.input_ids.size());
    for (size_t t = p; t < u; ++t) e.labels[t] = e.input_ids[t], any = true;
  }
  if (!any) throw FormatError(where + ": 'messages' has no assistant turn to learn from");
  return e;
}

// std::getline with a bound, so one hostile line cannot take gigabytes: false at the end of the
// file, FormatError naming the line past max bytes (io::kMaxTextFileBytes, as for a JSON file).
bool read_line(std::istream& in, std::string& line, const std::string& file, int64_t lineno) {
  line.clear();
  std::streambuf* sb = in.rdbuf();
  for (int c = sb->sbumpc(); c != std::char_traits<char>::eof(); c = sb->sbumpc()) {
    if (c == '\n') return true;
    line.push_back(char(c));
    if (line.size() > io::kMaxTextFileBytes)
      throw FormatError(str(file, ":", lineno, ": a line longer than ", io::kMaxTextFileBytes, " bytes"));
  }
  return !line.empty();
}

}  // namespace

SftData load_sft_jsonl(const std::filesystem::path& file, const Tokenizer* tok, const ChatTemplate* tmpl,
                       int64_t max_seq_length) {
  std::ifstream in(file);
  if (!in) throw IoError(str("cannot open ", file.string()));
  if (max_seq_length < 2) throw ConfigError(str("--max-seq-length must be >= 2 (got ", max_seq_length, ")"));
  SftData d;
  std::string line;
  int64_t lineno = 0;
  while (read_line(in, line, file.string(), lineno + 1)) {
    ++lineno;
    const std::string where = str(file.string(), ":", lineno);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json o;
    try {
      o = io::parse_json(line);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(where + ": not JSON (" + e.what() + ")");
    }
    if (!o.is_object()) throw FormatError(where + ": expected a JSON object");
    SftExample e;
    if (o.contains("input_ids")) {
      e.input_ids = int_list(o["input_ids"], "input_ids", where);
      e.labels = o.contains("labels") ? int_list(o["labels"], "labels", where) : e.input_ids;
      if (e.labels.size() != e.input_ids.size())
        throw FormatError(
            str(where, ": 'labels' has ", e.labels.size(), " entries, 'input_ids' ", e.input_ids.size()));
    } else if (o.contains("messages")) {
      e = from_messages(o["messages"], tok, tmpl, where);
    } else if (o.contains("prompt") || o.contains("completion")) {
      if (!o.contains("prompt") || !o.contains("completion"))
        throw FormatError(where + ": 'prompt' and 'completion' go together (one is missing)");
      const auto p = encode(tok, string_field(o, "prompt", where), true, where);
      const auto c = encode(tok, string_field(o, "completion", where), false, where);
      e.input_ids = p;
      e.input_ids.insert(e.input_ids.end(), c.begin(), c.end());
      e.labels.assign(p.size(), -100);
      e.labels.insert(e.labels.end(), c.begin(), c.end());
      append_eos(tok, e);
    } else if (o.contains("text")) {
      e.input_ids = encode(tok, string_field(o, "text", where), true, where);
      e.labels = e.input_ids;
      append_eos(tok, e);
    } else {
      std::string keys;
      for (auto it = o.begin(); it != o.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
      throw FormatError(where +
                        ": no 'text', 'prompt'+'completion', 'messages' or 'input_ids' field (found: " +
                        (keys.empty() ? "none" : keys) + ")");
    }
    if (e.input_ids.empty()) throw FormatError(where + ": the example has no tokens");
    if (int64_t(e.input_ids.size()) > max_seq_length) {
      e.input_ids.resize(size_t(max_seq_length));
      e.labels.resize(size_t(max_seq_length));
      ++d.truncated;
    }
    d.examples.push_back(std::move(e));
  }
  if (d.examples.empty()) throw ConfigError(str(file.string(), ": no training examples (the file is empty)"));
  return d;
}

std::vector<SftExample> pack_examples(const std::vector<SftExample>& ex, int64_t max_seq_length) {
  std::vector<SftExample> out;
  SftExample cur;
  for (const auto& e : ex)
    for (size_t i = 0; i < e.input_ids.size(); ++i) {
      cur.input_ids.push_back(e.input_ids[i]);
      cur.labels.push_back(e.labels[i]);
      if (int64_t(cur.input_ids.size()) == max_seq_length) out.push_back(std::move(cur)), cur = {};
    }
  if (cur.input_ids.size() > 1) out.push_back(std::move(cur));
  return out;
}

}  // namespace nibble
