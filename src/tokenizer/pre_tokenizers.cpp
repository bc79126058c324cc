// Pre-tokenizers of tokenizer.json: each cuts the not-yet-tokenized pieces into smaller ones
// (HF's PreTokenizedString::split), the byte-level one also maps bytes to GPT-2's chars.
#include "tokenizer/tok_internal.h"

namespace nibble::tok {
namespace {

using Ranges = std::vector<std::pair<size_t, size_t>>;

const Regex& gpt2_regex() {
  static const Regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
                        Where{"<builtin>", "ByteLevel"});
  return re;
}

class SequenceP : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts) p->pre_tokenize(pieces);
  }
};

class ByteLevelP : public PreTokenizer {
 public:
  bool add_prefix_space = false, use_regex = true;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](std::string& text, bool) {
      if (add_prefix_space && (text.empty() || text[0] != ' ')) text.insert(0, " ");
      if (!use_regex) return Ranges{{0, text.size()}};
      return split_ranges(text, gpt2_regex().find_all(text), SplitBehavior::Isolated);
    });
    for (auto& p : pieces)
      if (p.added_id < 0) p.text = byte_level_encode(p.text);
  }
};

class SplitP : public PreTokenizer {
 public:
  SplitP(const Json& j, const Where& w)
      : pattern(field(j, "pattern", w), w.at("pattern")),
        behavior(parse_behavior(get_string(j, "behavior", w), w.at("behavior"))),
        invert(get_bool_or(j, "invert", false, w)) {}
  Pattern pattern;
  SplitBehavior behavior;
  bool invert;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](std::string& text, bool) {
      return split_ranges(text, pattern.find_all(text), behavior, invert);
    });
  }
};

class MetaspaceP : public PreTokenizer {
 public:
  std::string replacement = "\xE2\x96\x81";
  enum { Always, First, Never } scheme = Always;
  bool split = true;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](std::string& text, bool at_start) {
      std::string r;
      r.reserve(text.size() + 8);
      for (char c : text) {
        if (c == ' ')
          r += replacement;
        else
          r += c;
      }
      bool starts = r.compare(0, replacement.size(), replacement) == 0;
      if (!starts && (scheme == Always || (scheme == First && at_start))) r.insert(0, replacement);
      text = std::move(r);
      if (!split) return Ranges{{0, text.size()}};
      Ranges m;
      for (size_t pos = 0; (pos = text.find(replacement, pos)) != std::string::npos;
           pos += replacement.size())
        m.emplace_back(pos, pos + replacement.size());
      return split_ranges(text, m, SplitBehavior::MergedWithNext);
    });
  }
};

// Splits on a per-char predicate with a fixed behaviour.
template <typename F>
class CharSplitP : public PreTokenizer {
 public:
  CharSplitP(F f, SplitBehavior b) : pred(f), behavior(b) {}
  F pred;
  SplitBehavior behavior;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, [&](std::string& text, bool) {
      return split_ranges(text, char_matches(text, pred), behavior);
    });
  }
};
template <typename F>
std::unique_ptr<PreTokenizer> char_split(F f, SplitBehavior b) {
  return std::make_unique<CharSplitP<F>>(f, b);
}

class WhitespaceP : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    static const Regex re(R"(\w+|[^\w\s]+)", Where{"<builtin>", "Whitespace"});
    split_pieces(pieces, [&](std::string& text, bool) {
      return split_ranges(text, re.find_all(text), SplitBehavior::Removed, /*invert=*/true);
    });
  }
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const Where& w) {
  std::string type = type_of(j, w);
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceP>();
    const Json& list = field(j, "pretokenizers", w);
    if (!list.is_array()) format_error(w.at("pretokenizers"), "is not an array");
    for (size_t i = 0; i < list.size(); ++i)
      seq->parts.push_back(make_pre_tokenizer(list[i], w.at("pretokenizers").at(i)));
    return seq;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelP>();
    p->add_prefix_space = get_bool_or(j, "add_prefix_space", true, w);
    p->use_regex = get_bool_or(j, "use_regex", true, w);
    return p;
  }
  if (type == "Split") return std::make_unique<SplitP>(j, w);
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspaceP>();
    std::string rep = get_string_or(j, "replacement", "\xE2\x96\x81", w);
    size_t i = 0;
    if (rep.empty() || (next_cp(rep, i), i != rep.size()))
      format_error(w.at("replacement"), "must be one character");
    p->replacement = rep;
    std::string scheme = get_string_or(j, "prepend_scheme", "always", w);
    if (scheme == "always")
      p->scheme = MetaspaceP::Always;
    else if (scheme == "first")
      p->scheme = MetaspaceP::First;
    else if (scheme == "never")
      p->scheme = MetaspaceP::Never;
    else
      format_error(w.at("prepend_scheme"), "'" + scheme + "' is not one of always/first/never");
    if (j.contains("add_prefix_space") && !get_bool_or(j, "add_prefix_space", true, w))
      p->scheme = MetaspaceP::Never;
    p->split = get_bool_or(j, "split", true, w);
    return p;
  }
  if (type == "CharDelimiterSplit") {
    std::string d = get_string(j, "delimiter", w);
    size_t i = 0;
    if (d.empty() || (next_cp(d, i), i != d.size())) format_error(w.at("delimiter"), "must be one character");
    i = 0;
    char32_t delim = next_cp(d, i);
    return char_split([delim](char32_t c) { return c == delim; }, SplitBehavior::Removed);
  }
  if (type == "Whitespace") return std::make_unique<WhitespaceP>();
  if (type == "WhitespaceSplit")
    return char_split([](char32_t c) { return is_whitespace(c); }, SplitBehavior::Removed);
  if (type == "Punctuation") {
    auto b = parse_behavior(get_string_or(j, "behavior", "Isolated", w), w.at("behavior"));
    return char_split([](char32_t c) { return is_punctuation(c); }, b);
  }
  if (type == "Digits") {
    bool individual = get_bool_or(j, "individual_digits", false, w);
    return char_split([](char32_t c) { return is_numeric(c); },
                      individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
  }
  if (type == "BertPreTokenizer") {
    auto seq = std::make_unique<SequenceP>();
    seq->parts.push_back(char_split([](char32_t c) { return is_whitespace(c); }, SplitBehavior::Removed));
    seq->parts.push_back(char_split([](char32_t c) { return is_punctuation(c); }, SplitBehavior::Isolated));
    return seq;
  }
  unsupported_type(w, type);
}

}  // namespace nibble::tok
