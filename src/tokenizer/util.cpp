// Shared helpers of the tokenizer: JSON field access with file/field-naming errors, Unicode
// classes and normalization through ICU, PCRE2 regexes (UTF + UCP + JIT, the stand-in for HF's
// Oniguruma patterns), HF's split behaviours, and GPT-2's byte <-> char table.
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <unordered_map>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/brkiter.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "io/utf8.h"
#include "nibble/error.h"
#include "nibble/tokenizer.h"
#include "tokenizer/tok_internal.h"

namespace nibble::tok {

void format_error(const Where& w, const std::string& what) {
  throw FormatError(w.file + ": " + (w.field.empty() ? "" : w.field + " ") + what);
}

void check_normalized_size(size_t bytes, const char* normalizer) {
  if (bytes > Tokenizer::kMaxEncodeBytes)
    throw FormatError(detail::str("tokenizer: the ", normalizer, " normalizer expands the text past ",
                                  Tokenizer::kMaxEncodeBytes, " bytes, the limit for one encode (encode it in parts)"));
}

void unsupported_type(const Where& w, const std::string& type) {
  throw UnsupportedError(w.file + ": " + w.field + ".type '" + type + "' is not supported");
}

const Json& field(const Json& j, const char* key, const Where& w) {
  if (!j.is_object()) format_error(w, "is not a JSON object");
  auto it = j.find(key);
  if (it == j.end()) format_error(w.at(key), "is missing");
  return *it;
}

std::string get_string(const Json& j, const char* key, const Where& w) {
  const Json& v = field(j, key, w);
  if (!v.is_string()) format_error(w.at(key), "is not a string");
  return v.get<std::string>();
}

std::string get_string_or(const Json& j, const char* key, const std::string& dflt, const Where& w) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_string()) format_error(w.at(key), "is not a string");
  return it->get<std::string>();
}

bool get_bool_or(const Json& j, const char* key, bool dflt, const Where& w) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) format_error(w.at(key), "is not a boolean");
  return it->get<bool>();
}

int64_t get_int_or(const Json& j, const char* key, int64_t dflt, const Where& w) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_number_integer()) format_error(w.at(key), "is not an integer");
  return it->get<int64_t>();
}

std::string type_of(const Json& j, const Where& w) {
  if (!j.is_object()) format_error(w, "is not a JSON object");
  return get_string(j, "type", w);
}

// ---------------------------------------------------------------- Unicode

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) return 2;
  if ((c & 0xf0) == 0xe0) return 3;
  return 4;
}

char32_t next_cp(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t n = utf8_len(c);
  if (i + n > s.size()) n = s.size() - i;
  char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  i += n;
  return cp;
}

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0d);
  return u_isUWhiteSpace(UChar32(c));
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return (U_GET_GC_MASK(UChar32(c)) & U_GC_N_MASK) != 0;
}

bool is_alphanumeric(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
  return u_isUAlphabetic(UChar32(c)) || is_numeric(c);
}

bool is_punctuation(char32_t c) {
  if (c < 0x80)
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  return (U_GET_GC_MASK(UChar32(c)) & U_GC_P_MASK) != 0;
}

bool is_control_or_other(char32_t c) {
  return (U_GET_GC_MASK(UChar32(c)) & U_GC_C_MASK) != 0;
}
bool is_separator(char32_t c) {
  return (U_GET_GC_MASK(UChar32(c)) & U_GC_Z_MASK) != 0;
}
bool is_mark_nonspacing(char32_t c) {
  return u_charType(UChar32(c)) == U_NON_SPACING_MARK;
}
bool is_mark(char32_t c) {
  return (U_GET_GC_MASK(UChar32(c)) & U_GC_M_MASK) != 0;
}

static icu::UnicodeString to_icu(std::string_view s) {
  return icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), int32_t(s.size())));
}

std::string unicode_normalize(std::string_view s, char form) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = form == 'C'   ? icu::Normalizer2::getNFCInstance(err)
                              : form == 'D' ? icu::Normalizer2::getNFDInstance(err)
                              : form == 'c' ? icu::Normalizer2::getNFKCInstance(err)
                                            : icu::Normalizer2::getNFKDInstance(err);
  if (U_FAILURE(err)) throw InternalError("ICU normalizer unavailable");
  icu::UnicodeString u = to_icu(s);
  if (n->isNormalized(u, err) && U_SUCCESS(err)) return std::string(s);
  err = U_ZERO_ERROR;
  icu::UnicodeString r = n->normalize(u, err);
  if (U_FAILURE(err)) throw InternalError("ICU normalization failed");
  std::string out;
  r.toUTF8String(out);
  return out;
}

std::string to_lower(std::string_view s) {
  bool ascii = true;
  for (char c : s) ascii &= static_cast<unsigned char>(c) < 0x80;
  std::string out(s);
  if (ascii) {
    for (char& c : out)
      if (c >= 'A' && c <= 'Z') c = char(c + 32);
    return out;
  }
  icu::UnicodeString u = to_icu(s);
  u.toLower(icu::Locale::getRoot());
  out.clear();
  u.toUTF8String(out);
  return out;
}

std::vector<std::string_view> graphemes(std::string_view s) {
  std::vector<std::string_view> out;
  if (s.empty()) return out;
  UErrorCode err = U_ZERO_ERROR;
  thread_local std::unique_ptr<icu::BreakIterator> it(
      icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), err));
  if (!it) throw InternalError("ICU break iterator unavailable");
  icu::UnicodeString u = to_icu(s);
  it->setText(u);
  // Map UTF-16 boundaries back to UTF-8 byte offsets.
  std::vector<size_t> byte_at(size_t(u.length()) + 1, 0);
  {
    size_t bi = 0;
    int32_t ui = 0;
    while (bi < s.size()) {
      byte_at[size_t(ui)] = bi;
      char32_t c = next_cp(s, bi);
      ui += c >= 0x10000 ? 2 : 1;
    }
    byte_at[size_t(u.length())] = s.size();
  }
  int32_t prev = it->first();
  for (int32_t p = it->next(); p != icu::BreakIterator::DONE; p = it->next()) {
    out.emplace_back(s.substr(byte_at[size_t(prev)], byte_at[size_t(p)] - byte_at[size_t(prev)]));
    prev = p;
  }
  return out;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  while (i < s.size()) {
    unsigned char c = b[i];
    if (c < 0x80) {
      out += char(c);
      ++i;
      continue;
    }
    // Length and the valid range of the second byte (Unicode table 3-7).
    size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
      n = 2;
    else if (c == 0xe0)
      n = 3, lo = 0xa0;
    else if (c >= 0xe1 && c <= 0xec)
      n = 3;
    else if (c == 0xed)
      n = 3, hi = 0x9f;
    else if (c >= 0xee && c <= 0xef)
      n = 3;
    else if (c == 0xf0)
      n = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3)
      n = 4;
    else if (c == 0xf4)
      n = 4, hi = 0x8f;
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    size_t k = 1;
    while (k < n && i + k < s.size()) {
      unsigned char x = b[i + k];
      bool ok = k == 1 ? (x >= lo && x <= hi) : (x >= 0x80 && x <= 0xbf);
      if (!ok) break;
      ++k;
    }
    if (k == n)
      out.append(s.substr(i, n));
    else
      out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

bool valid_utf8(std::string_view s) {
  return io::valid_utf8(s.data(), s.size());
}

// ---------------------------------------------------------------- Regex

Regex::Regex(const std::string& pattern, const Where& w) {
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    format_error(w, "regex '" + pattern + "' does not compile: " + reinterpret_cast<char*>(buf));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
  code_ = code;
}

Regex::~Regex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view s) const {
  std::vector<std::pair<size_t, size_t>> out;
  auto* code = static_cast<pcre2_code*>(code_);
  struct MatchData {
    pcre2_match_data* md = pcre2_match_data_create(4, nullptr);
    ~MatchData() { pcre2_match_data_free(md); }
  };
  thread_local MatchData tl;
  pcre2_match_data* md = tl.md;
  size_t pos = 0;
  while (pos <= s.size()) {
    // The input is valid UTF-8 (checked at encode), so skip PCRE2's re-check.
    int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, PCRE2_NO_UTF_CHECK, md,
                         nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its backtracking on the heap
      rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                       PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof(buf));
      throw Error(std::string("tokenizer: regex match failed: ") + reinterpret_cast<char*>(buf));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t b = ov[0], e = ov[1];
    out.emplace_back(b, e);
    if (e == b) {
      if (e >= s.size()) break;
      pos = e + utf8_len(static_cast<unsigned char>(s[e]));  // empty match: step one char
    } else {
      pos = e;
    }
  }
  return out;
}

Pattern::Pattern(const Json& j, const Where& w) {
  if (j.is_object() && j.contains("String")) {
    if (!j["String"].is_string()) format_error(w.at("String"), "is not a string");
    literal_ = j["String"].get<std::string>();
  } else if (j.is_object() && j.contains("Regex")) {
    if (!j["Regex"].is_string()) format_error(w.at("Regex"), "is not a string");
    regex_ = std::make_unique<Regex>(j["Regex"].get<std::string>(), w.at("Regex"));
  } else {
    format_error(w, "must be {\"String\": ...} or {\"Regex\": ...}");
  }
}

std::vector<std::pair<size_t, size_t>> Pattern::find_all(std::string_view s) const {
  if (regex_) return regex_->find_all(s);
  std::vector<std::pair<size_t, size_t>> out;
  if (literal_.empty()) return out;
  size_t pos = 0;
  while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
    out.emplace_back(pos, pos + literal_.size());
    pos += literal_.size();
  }
  return out;
}

// ---------------------------------------------------------------- Splitting

SplitBehavior parse_behavior(const std::string& s, const Where& w) {
  if (s == "Removed") return SplitBehavior::Removed;
  if (s == "Isolated") return SplitBehavior::Isolated;
  if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (s == "Contiguous") return SplitBehavior::Contiguous;
  format_error(w, "'" + s + "' is not a split behavior");
}

std::vector<std::pair<size_t, size_t>> split_ranges(std::string_view s,
                                                    const std::vector<std::pair<size_t, size_t>>& matches,
                                                    SplitBehavior behavior, bool invert) {
  struct Span {
    size_t b, e;
    bool m;
  };
  // The whole input as alternating (range, is_match) spans, as HF's Pattern::find_matches.
  std::vector<Span> spans;
  if (s.empty()) {
    spans.push_back({0, 0, false});
  } else {
    size_t prev = 0;
    for (auto [b, e] : matches) {
      if (prev != b) spans.push_back({prev, b, false});
      spans.push_back({b, e, true});
      prev = e;
    }
    if (prev != s.size()) spans.push_back({prev, s.size(), false});
  }
  if (invert)
    for (auto& sp : spans) sp.m = !sp.m;

  std::vector<Span> acc;  // m here means "remove"
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (auto sp : spans) acc.push_back({sp.b, sp.e, false});
      break;
    case SplitBehavior::Removed:
      acc = spans;
      break;
    case SplitBehavior::Contiguous: {
      bool prev = false;
      for (auto sp : spans) {
        if (sp.m == prev && !acc.empty())
          acc.back().e = sp.e;
        else
          acc.push_back({sp.b, sp.e, false});
        prev = sp.m;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool prev = false;
      for (auto sp : spans) {
        if (sp.m && !prev && !acc.empty())
          acc.back().e = sp.e;
        else
          acc.push_back({sp.b, sp.e, false});
        prev = sp.m;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->m && !prev && !acc.empty())
          acc.back().b = it->b;
        else
          acc.push_back({it->b, it->e, false});
        prev = it->m;
      }
      std::reverse(acc.begin(), acc.end());
      break;
    }
  }
  std::vector<std::pair<size_t, size_t>> out;
  out.reserve(acc.size());
  for (auto sp : acc)
    if (!sp.m && sp.e > sp.b) out.emplace_back(sp.b, sp.e);
  return out;
}

// ---------------------------------------------------------------- Byte level

namespace {
struct ByteTable {
  std::array<std::string, 256> utf8;
  std::unordered_map<char32_t, int> back;
  ByteTable() {
    // GPT-2: printable bytes stand for themselves, the others take 256, 257, ... in byte order.
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      char32_t c = printable ? char32_t(b) : char32_t(256 + n++);
      append_utf8(utf8[size_t(b)], c);
      back[c] = b;
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}
}  // namespace

const std::string& byte_to_char_utf8(uint8_t b) {
  return byte_table().utf8[b];
}

int char_to_byte(char32_t c) {
  const auto& m = byte_table().back;
  auto it = m.find(c);
  return it == m.end() ? -1 : it->second;
}

std::string byte_level_encode(std::string_view s) {
  const auto& t = byte_table();
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += t.utf8[static_cast<unsigned char>(c)];
  return out;
}

// serde_json's default number reading (de.rs, f64_from_parts without float_roundtrip): the
// decimal digits as a u64 significand (digits past u64's range dropped), converted to f64, then
// one multiplication or division by 10^|exponent| from a table of f64 powers (by 1e308 first
// while the exponent is beyond the table). Two roundings instead of one: "-12.130167007446289"
// (a t5 Unigram score) becomes -12.130167007446287, one ulp off, and Unigram's near ties follow
// that. nlohmann keeps no number text, so the digits are the shortest round-trip ones of x,
// which is what both serde_json and Python's json write.
double serde_json_f64(double x) {
  if (!std::isfinite(x) || x == 0) return x;
  static const std::array<double, 309> pow10 = [] {
    std::array<double, 309> p{};
    for (int k = 0; k < 309; ++k) p[size_t(k)] = std::strtod(("1e" + std::to_string(k)).c_str(), nullptr);
    return p;
  }();
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, std::fabs(x), std::chars_format::scientific);
  if (ec != std::errc()) return x;
  // d.dddde±XX: the digits, then the decimal exponent of the first one.
  const char* e = std::find(buf, end, 'e');
  uint64_t significand = 0;
  int exponent = 0, digits = 0;
  std::from_chars(e + 1 + (e + 1 < end && e[1] == '+'), end, exponent);
  for (const char* p = buf; p < e; ++p) {
    if (*p == '.') continue;
    const uint64_t d = uint64_t(*p - '0');
    if (significand >= UINT64_MAX / 10 && (significand > UINT64_MAX / 10 || d > UINT64_MAX % 10)) break;
    significand = significand * 10 + d;
    ++digits;
  }
  exponent -= digits - 1;
  double f = double(significand);
  while (true) {
    if (std::abs(exponent) < 309) {
      if (exponent >= 0)
        f *= pow10[size_t(exponent)];
      else
        f /= pow10[size_t(-exponent)];
      break;
    }
    if (f == 0.0 || exponent >= 0) break;  // serde errors on overflow; x is finite here
    f /= 1e308;
    exponent += 308;
  }
  return x < 0 ? -f : f;
}

}  // namespace nibble::tok
