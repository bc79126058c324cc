// Decoders of tokenizer.json: each maps the list of token strings to a new list (HF's
// decode_chain); decode() joins the final list.
#include "tokenizer/tok_internal.h"

namespace nibble::tok {
namespace {

using Tokens = std::vector<std::string>;

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  size_t prev = 0, pos;
  while ((pos = s.find(from, prev)) != std::string_view::npos) {
    out.append(s.substr(prev, pos - prev));
    out.append(to);
    prev = pos + from.size();
  }
  out.append(s.substr(prev));
  return out;
}

// HF's wordpiece::cleanup: undo the spaces BERT-style tokenization leaves around punctuation.
std::string cleanup(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},   {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (auto [from, to] : kRules) s = replace_all(s, from, to);
  return s;
}

class SequenceD : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> parts;
  Tokens decode_chain(Tokens t) const override {
    for (const auto& p : parts) t = p->decode_chain(std::move(t));
    return t;
  }
};

class ByteLevelD : public Decoder {
 public:
  Tokens decode_chain(Tokens tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      std::string mine;
      bool all = true;
      size_t i = 0;
      while (i < t.size()) {
        int b = char_to_byte(next_cp(t, i));
        if (b < 0) {
          all = false;
          break;
        }
        mine += char(b);
      }
      bytes += all ? mine : t;
    }
    return {utf8_lossy(bytes)};
  }
};

class MetaspaceD : public Decoder {
 public:
  char32_t replacement = 0x2581;
  bool prepend = true;  // prepend_scheme != never
  Tokens decode_chain(Tokens tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      size_t i = 0;
      while (i < t.size()) {
        char32_t c = next_cp(t, i);
        if (c == replacement) {
          if (!(k == 0 && prepend)) out += ' ';
        } else {
          append_utf8(out, c);
        }
      }
      tokens[k] = std::move(out);
    }
    return tokens;
  }
};

class ReplaceD : public Decoder {
 public:
  ReplaceD(const Json& j, const Where& w)
      : pattern(field(j, "pattern", w), w.at("pattern")), content(get_string(j, "content", w)) {}
  Pattern pattern;
  std::string content;
  Tokens decode_chain(Tokens tokens) const override {
    for (auto& t : tokens) {
      auto m = pattern.find_all(t);
      if (m.empty()) continue;
      std::string out;
      size_t prev = 0;
      for (auto [b, e] : m) {
        out.append(t, prev, b - prev);
        out += content;
        prev = e;
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
    return tokens;
  }
};

class ByteFallbackD : public Decoder {
 public:
  Tokens decode_chain(Tokens tokens) const override {
    Tokens out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (valid_utf8(pending))
        out.push_back(pending);
      else
        for (size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
      pending.clear();
    };
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    for (auto& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && hex(t[3]) >= 0 && hex(t[4]) >= 0) {
        pending += char(hex(t[3]) * 16 + hex(t[4]));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }
};

class FuseD : public Decoder {
 public:
  Tokens decode_chain(Tokens tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    return {all};
  }
};

class StripD : public Decoder {
 public:
  char32_t content = ' ';
  size_t start = 0, stop = 0;
  Tokens decode_chain(Tokens tokens) const override {
    for (auto& t : tokens) {
      std::vector<char32_t> cs;
      size_t i = 0;
      while (i < t.size()) cs.push_back(next_cp(t, i));
      size_t b = 0, e = cs.size();
      for (size_t k = 0; k < start && k < cs.size() && cs[k] == content; ++k) b = k + 1;
      for (size_t k = 0; k < stop && k < cs.size() && cs[cs.size() - 1 - k] == content; ++k)
        e = cs.size() - 1 - k;
      std::string out;
      for (size_t k = b; k < e; ++k) append_utf8(out, cs[k]);
      t = std::move(out);
    }
    return tokens;
  }
};

class WordPieceD : public Decoder {
 public:
  std::string prefix = "##";
  bool do_cleanup = true;
  Tokens decode_chain(Tokens tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix.size(), prefix) == 0) {
          size_t pos = t.find(prefix);  // replacen(prefix, "", 1): the first occurrence
          t.erase(pos, prefix.size());
        } else {
          t = " " + t;
        }
      }
      if (do_cleanup) t = cleanup(std::move(t));
    }
    return tokens;
  }
};

class CtcD : public Decoder {
 public:
  std::string pad = "<pad>", delimiter = "|";
  bool do_cleanup = true;
  Tokens decode_chain(Tokens tokens) const override {
    Tokens out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 && tokens[i] == tokens[i - 1]) continue;
      std::string r = replace_all(tokens[i], pad, "");
      if (do_cleanup) r = replace_all(cleanup(r), delimiter, " ");
      if (!r.empty()) out.push_back(std::move(r));
    }
    return out;
  }
};

class BpeD : public Decoder {
 public:
  std::string suffix = "</w>";
  Tokens decode_chain(Tokens tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = replace_all(tokens[i], suffix, i + 1 == tokens.size() ? "" : " ");
    return tokens;
  }
};

char32_t one_char(const std::string& s, const Where& w) {
  size_t i = 0;
  if (s.empty()) format_error(w, "must be one character");
  char32_t c = next_cp(s, i);
  if (i != s.size()) format_error(w, "must be one character");
  return c;
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Json& j, const Where& w) {
  std::string type = type_of(j, w);
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceD>();
    const Json& list = field(j, "decoders", w);
    if (!list.is_array()) format_error(w.at("decoders"), "is not an array");
    for (size_t i = 0; i < list.size(); ++i)
      seq->parts.push_back(make_decoder(list[i], w.at("decoders").at(i)));
    return seq;
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelD>();
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceD>();
    d->replacement = one_char(get_string_or(j, "replacement", "\xE2\x96\x81", w), w.at("replacement"));
    std::string scheme = get_string_or(j, "prepend_scheme", "always", w);
    d->prepend = scheme != "never";
    if (j.contains("add_prefix_space") && !get_bool_or(j, "add_prefix_space", true, w)) d->prepend = false;
    return d;
  }
  if (type == "Replace") return std::make_unique<ReplaceD>(j, w);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackD>();
  if (type == "Fuse") return std::make_unique<FuseD>();
  if (type == "Strip") {
    auto d = std::make_unique<StripD>();
    d->content = one_char(get_string(j, "content", w), w.at("content"));
    d->start = size_t(get_int_or(j, "start", 0, w));
    d->stop = size_t(get_int_or(j, "stop", 0, w));
    return d;
  }
  if (type == "WordPiece") {
    auto d = std::make_unique<WordPieceD>();
    d->prefix = get_string_or(j, "prefix", "##", w);
    d->do_cleanup = get_bool_or(j, "cleanup", true, w);
    return d;
  }
  if (type == "CTC") {
    auto d = std::make_unique<CtcD>();
    d->pad = get_string_or(j, "pad_token", "<pad>", w);
    d->delimiter = get_string_or(j, "word_delimiter_token", "|", w);
    d->do_cleanup = get_bool_or(j, "cleanup", true, w);
    return d;
  }
  if (type == "BPEDecoder") {
    auto d = std::make_unique<BpeD>();
    d->suffix = get_string_or(j, "suffix", "</w>", w);
    return d;
  }
  unsupported_type(w, type);
}

}  // namespace nibble::tok
