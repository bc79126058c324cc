// Normalizers of tokenizer.json: each rewrites a piece of text as HF `tokenizers` does (NFC &
// co. and case mapping through ICU; BertNormalizer's cleaning rules; literal/regex Replace).
#include <unicode/locid.h>
#include <unicode/unistr.h>

#include "nibble/error.h"
#include "tokenizer/tok_internal.h"

namespace nibble::tok {
namespace {

// Rust's char::to_lowercase applied char by char (no final-sigma context, unlike str::to_lowercase).
std::string lowercase_chars(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    auto c0 = static_cast<unsigned char>(s[i]);
    if (c0 < 0x80) {
      out += (c0 >= 'A' && c0 <= 'Z') ? char(c0 + 32) : char(c0);
      ++i;
      continue;
    }
    size_t b = i;
    next_cp(s, i);
    out += to_lower(s.substr(b, i - b));
  }
  return out;
}

template <typename F>
std::string map_chars(std::string_view s, F fn) {  // fn(c, out): appends the replacement of c
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) fn(next_cp(s, i), out);
  return out;
}

class SequenceN : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> parts;
  std::string normalize(std::string s) const override {
    for (const auto& p : parts) s = p->normalize(std::move(s));
    return s;
  }
};

class UnicodeN : public Normalizer {
 public:
  explicit UnicodeN(char f) : form(f) {}
  char form;
  std::string normalize(std::string s) const override { return unicode_normalize(s, form); }
};

class LowercaseN : public Normalizer {
 public:
  std::string normalize(std::string s) const override { return lowercase_chars(s); }
};

class StripN : public Normalizer {
 public:
  bool left = true, right = true;
  std::string normalize(std::string s) const override {
    size_t b = 0, e = s.size();
    if (left) {
      while (b < e) {
        size_t j = b;
        if (!is_whitespace(next_cp(s, j))) break;
        b = j;
      }
    }
    if (right) {
      while (e > b) {
        size_t k = e - 1;
        while (k > b && (static_cast<unsigned char>(s[k]) & 0xc0) == 0x80) --k;
        size_t j = k;
        if (!is_whitespace(next_cp(s, j))) break;
        e = k;
      }
    }
    return s.substr(b, e - b);
  }
};

class StripAccentsN : public Normalizer {
 public:
  std::string normalize(std::string s) const override {
    return map_chars(s, [](char32_t c, std::string& o) {
      if (!is_mark(c)) append_utf8(o, c);
    });
  }
};

class PrependN : public Normalizer {
 public:
  std::string prepend;
  std::string normalize(std::string s) const override { return s.empty() ? s : prepend + s; }
};

class ReplaceN : public Normalizer {
 public:
  ReplaceN(const Json& j, const Where& w)
      : pattern(field(j, "pattern", w), w.at("pattern")), content(get_string(j, "content", w)) {}
  Pattern pattern;
  std::string content;
  std::string normalize(std::string s) const override {
    auto m = pattern.find_all(s);
    if (m.empty()) return s;
    std::string out;
    size_t prev = 0;
    for (auto [b, e] : m) {
      out.append(s, prev, b - prev);
      out += content;
      prev = e;
      check_normalized_size(out.size(), "Replace");
    }
    out.append(s, prev, std::string::npos);
    return out;
  }
};

bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

class BertN : public Normalizer {
 public:
  bool clean_text = true, chinese = true, strip_accents = true, lowercase = true;
  std::string normalize(std::string s) const override {
    if (clean_text) {
      s = map_chars(s, [](char32_t c, std::string& o) {
        bool control = c != '\t' && c != '\n' && c != '\r' && is_control_or_other(c);
        if (c == 0 || c == 0xfffd || control) return;
        append_utf8(o, is_whitespace(c) ? U' ' : c);
      });
    }
    if (chinese) {
      s = map_chars(s, [](char32_t c, std::string& o) {
        if (is_chinese_char(c)) {
          o += ' ';
          append_utf8(o, c);
          o += ' ';
        } else {
          append_utf8(o, c);
        }
      });
    }
    if (strip_accents) {
      s = map_chars(unicode_normalize(s, 'D'), [](char32_t c, std::string& o) {
        if (!is_mark_nonspacing(c)) append_utf8(o, c);
      });
    }
    if (lowercase) s = lowercase_chars(s);
    return s;
  }
};

// sentencepiece's NMT rules: drop ASCII controls, map other whitespace-like code points to ' '.
class NmtN : public Normalizer {
 public:
  std::string normalize(std::string s) const override {
    return map_chars(s, [](char32_t c, std::string& o) {
      if ((c >= 0x01 && c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || c == 0x8F ||
          c == 0x9F)
        return;
      bool space = c == 0x09 || c == 0x0A || c == 0x0C || c == 0x0D || c == 0x1680 ||
                   (c >= 0x200B && c <= 0x200F) || c == 0x2028 || c == 0x2029 || c == 0x2581 || c == 0xFEFF ||
                   c == 0xFFFD;
      append_utf8(o, space ? U' ' : c);
    });
  }
};

class ByteLevelN : public Normalizer {
 public:
  std::string normalize(std::string s) const override { return byte_level_encode(s); }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& j, const Where& w) {
  std::string type = type_of(j, w);
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceN>();
    const Json& list = field(j, "normalizers", w);
    if (!list.is_array()) format_error(w.at("normalizers"), "is not an array");
    for (size_t i = 0; i < list.size(); ++i)
      seq->parts.push_back(make_normalizer(list[i], w.at("normalizers").at(i)));
    return seq;
  }
  if (type == "NFC") return std::make_unique<UnicodeN>('C');
  if (type == "NFD") return std::make_unique<UnicodeN>('D');
  if (type == "NFKC") return std::make_unique<UnicodeN>('c');
  if (type == "NFKD") return std::make_unique<UnicodeN>('d');
  if (type == "Lowercase") return std::make_unique<LowercaseN>();
  if (type == "StripAccents") return std::make_unique<StripAccentsN>();
  if (type == "Strip") {
    auto n = std::make_unique<StripN>();
    n->left = get_bool_or(j, "strip_left", true, w);
    n->right = get_bool_or(j, "strip_right", true, w);
    return n;
  }
  if (type == "Prepend") {
    auto n = std::make_unique<PrependN>();
    n->prepend = get_string(j, "prepend", w);
    return n;
  }
  if (type == "Replace") return std::make_unique<ReplaceN>(j, w);
  if (type == "Nmt") return std::make_unique<NmtN>();
  if (type == "ByteLevel") return std::make_unique<ByteLevelN>();
  if (type == "BertNormalizer") {
    auto n = std::make_unique<BertN>();
    n->clean_text = get_bool_or(j, "clean_text", true, w);
    n->chinese = get_bool_or(j, "handle_chinese_chars", true, w);
    n->lowercase = get_bool_or(j, "lowercase", true, w);
    n->strip_accents = get_bool_or(j, "strip_accents", n->lowercase, w);  // null follows lowercase
    return n;
  }
  if (type == "Precompiled") {
    const Json& cm = field(j, "precompiled_charsmap", w);
    if (cm.is_null()) return std::make_unique<SequenceN>();  // identity
    if (!cm.is_string()) format_error(w.at("precompiled_charsmap"), "is not a string");
    return make_precompiled(cm.get<std::string>(), w.at("precompiled_charsmap"));
  }
  unsupported_type(w, type);
}

}  // namespace nibble::tok
