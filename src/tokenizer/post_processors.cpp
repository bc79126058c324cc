// Post-processors for a single sequence with special tokens: TemplateProcessing, Bert/Roberta
// ([CLS] A [SEP]), ByteLevel (offsets only: nothing to do on ids), Sequence.
#include "tokenizer/tok_internal.h"

namespace nibble::tok {
namespace {

struct Special {
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;
};

class TemplateP : public PostProcessor {
 public:
  // Each element: the sequence (nullopt) or a special token's ids/tokens.
  std::vector<std::optional<Special>> single;
  void process(std::vector<int64_t>& ids, std::vector<std::string>& tokens) const override {
    std::vector<int64_t> out_ids;
    std::vector<std::string> out_tokens;
    for (const auto& piece : single) {
      if (!piece) {
        out_ids.insert(out_ids.end(), ids.begin(), ids.end());
        out_tokens.insert(out_tokens.end(), tokens.begin(), tokens.end());
      } else {
        out_ids.insert(out_ids.end(), piece->ids.begin(), piece->ids.end());
        out_tokens.insert(out_tokens.end(), piece->tokens.begin(), piece->tokens.end());
      }
    }
    ids = std::move(out_ids);
    tokens = std::move(out_tokens);
  }
};

class SequenceP : public PostProcessor {
 public:
  std::vector<std::unique_ptr<PostProcessor>> parts;
  void process(std::vector<int64_t>& ids, std::vector<std::string>& tokens) const override {
    for (const auto& p : parts) p->process(ids, tokens);
  }
};

class NoopP : public PostProcessor {
 public:
  void process(std::vector<int64_t>&, std::vector<std::string>&) const override {}
};

Special token_pair(const Json& j, const Where& w) {
  if (!j.is_array() || j.size() != 2 || !j[0].is_string() || !j[1].is_number_integer())
    format_error(w, "is not [token, id]");
  return Special{{j[1].get<int64_t>()}, {j[0].get<std::string>()}};
}

std::unique_ptr<PostProcessor> make_template(const Json& j, const Where& w) {
  auto t = std::make_unique<TemplateP>();
  const Json& specials = j.contains("special_tokens") ? j["special_tokens"] : Json::object();
  auto special = [&](const std::string& name, const Where& wp) {
    if (!specials.is_object() || !specials.contains(name))
      format_error(wp, "names special token '" + name + "' missing from special_tokens");
    const Json& s = specials[name];
    Where ws = w.at("special_tokens").at(name);
    Special sp;
    const Json& ids = field(s, "ids", ws);
    const Json& toks = field(s, "tokens", ws);
    if (!ids.is_array() || !toks.is_array() || ids.size() != toks.size())
      format_error(ws, "needs ids and tokens of equal length");
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!ids[i].is_number_integer() || !toks[i].is_string()) format_error(ws, "has a bad id or token");
      sp.ids.push_back(ids[i].get<int64_t>());
      sp.tokens.push_back(toks[i].get<std::string>());
    }
    return sp;
  };
  Json single = field(j, "single", w);
  Where ws = w.at("single");
  if (single.is_string()) {  // "[CLS] $A [SEP]" form
    Json arr = Json::array();
    std::string s = single.get<std::string>();
    size_t pos = 0;
    while (pos < s.size()) {
      size_t e = s.find(' ', pos);
      if (e == std::string::npos) e = s.size();
      if (e > pos) arr.push_back(s.substr(pos, e - pos));
      pos = e + 1;
    }
    single = arr;
  }
  if (!single.is_array()) format_error(ws, "is not an array");
  for (size_t i = 0; i < single.size(); ++i) {
    const Json& p = single[i];
    if (p.is_string()) {
      std::string s = p.get<std::string>();
      size_t colon = s.rfind(':');
      if (colon != std::string::npos && colon > 0) s = s.substr(0, colon);
      if (!s.empty() && s[0] == '$')
        t->single.emplace_back(std::nullopt);
      else
        t->single.emplace_back(special(s, ws.at(i)));
    } else if (p.is_object() && p.contains("Sequence")) {
      t->single.emplace_back(std::nullopt);
    } else if (p.is_object() && p.contains("SpecialToken")) {
      t->single.emplace_back(
          special(get_string(p["SpecialToken"], "id", ws.at(i).at("SpecialToken")), ws.at(i)));
    } else {
      format_error(ws.at(i), "is neither a Sequence nor a SpecialToken");
    }
  }
  return t;
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const Json& j, const Where& w) {
  std::string type = type_of(j, w);
  if (type == "TemplateProcessing") return make_template(j, w);
  if (type == "ByteLevel") return std::make_unique<NoopP>();
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    auto t = std::make_unique<TemplateP>();
    t->single.emplace_back(token_pair(field(j, "cls", w), w.at("cls")));
    t->single.emplace_back(std::nullopt);
    t->single.emplace_back(token_pair(field(j, "sep", w), w.at("sep")));
    return t;
  }
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceP>();
    const Json& list = field(j, "processors", w);
    if (!list.is_array()) format_error(w.at("processors"), "is not an array");
    for (size_t i = 0; i < list.size(); ++i)
      seq->parts.push_back(make_post_processor(list[i], w.at("processors").at(i)));
    return seq;
  }
  unsupported_type(w, type);
}

}  // namespace nibble::tok
