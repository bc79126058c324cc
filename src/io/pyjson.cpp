// python_json_dumps: a small JSON writer that follows CPython's json encoder rules.
#include "io/pyjson.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <vector>

#include "nibble/error.h"

namespace nibble::io {

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);  // shortest digits
  std::string s(buf, res.ptr);
  bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  size_t e = s.find('e');
  int exp = std::stoi(s.substr(e + 1));
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  std::string out;
  if (exp >= -4 && exp < 16) {
    int point = exp + 1;  // digits before the decimal point
    if (point <= 0) {
      out = "0." + std::string(size_t(-point), '0') + digits;
    } else if (size_t(point) >= digits.size()) {
      out = digits + std::string(size_t(point) - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(point)) + "." + digits.substr(size_t(point));
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return neg ? "-" + out : out;
}

namespace {

void append_u_escape(std::string& out, uint32_t unit) {
  static const char* hex = "0123456789abcdef";
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += hex[(unit >> shift) & 0xf];
}

// json.dumps(s) with ensure_ascii=True: short escapes for " \ \n \r \t \b \f, \u00XX for other
// control characters, \uXXXX (lowercase, surrogate pairs above the BMP) for all of 0x7f and up.
void put_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80 || !ensure_ascii) {
      switch (c) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        default:
          if (c < 0x20 || (c == 0x7f && ensure_ascii))
            append_u_escape(out, c);
          else
            out += char(c);
      }
      ++i;
      continue;
    }
    int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
    uint32_t cp = len == 4 ? c & 0x07u : len == 3 ? c & 0x0fu : c & 0x1fu;
    bool ok = len >= 2 && c < 0xf5 && i + size_t(len) <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + size_t(k)]);
      ok = (cc & 0xc0) == 0x80;
      cp = (cp << 6) | (cc & 0x3fu);
    }
    // Reject overlong forms, surrogates and values past U+10FFFF: Python strings hold none.
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (!ok || cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      throw FormatError("JSON string is not valid UTF-8 (byte " + std::to_string(i) + ")");
    if (cp >= 0x10000) {
      cp -= 0x10000;
      append_u_escape(out, 0xd800 + (cp >> 10));
      append_u_escape(out, 0xdc00 + (cp & 0x3ff));
    } else {
      append_u_escape(out, cp);
    }
    i += size_t(len);
  }
  out += '"';
}


void dump(std::string& out, const nlohmann::ordered_json& j, const PyDumpOptions& o, int level) {
  auto newline = [&](int lv) {
    if (o.indent < 0) return;
    out += '\n';
    out.append(size_t(o.indent * lv), ' ');
  };
  const char* item_sep = o.indent < 0 ? ", " : ",";
  switch (j.type()) {
    case nlohmann::json::value_t::null: out += "null"; return;
    case nlohmann::json::value_t::boolean: out += j.get<bool>() ? "true" : "false"; return;
    case nlohmann::json::value_t::number_integer: out += std::to_string(j.get<int64_t>()); return;
    case nlohmann::json::value_t::number_unsigned: out += std::to_string(j.get<uint64_t>()); return;
    case nlohmann::json::value_t::number_float: out += python_float_repr(j.get<double>()); return;
    case nlohmann::json::value_t::string: put_string(out, j.get_ref<const std::string&>(), o.ensure_ascii); return;
    case nlohmann::json::value_t::array: {
      if (j.empty()) { out += "[]"; return; }
      out += '[';
      bool first = true;
      for (const auto& v : j) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        dump(out, v, o, level + 1);
      }
      newline(level);
      out += ']';
      return;
    }
    case nlohmann::json::value_t::object: {
      if (j.empty()) { out += "{}"; return; }
      std::vector<std::string> keys;
      for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
      if (o.sort_keys) std::sort(keys.begin(), keys.end());
      out += '{';
      bool first = true;
      for (const auto& k : keys) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        put_string(out, k, o.ensure_ascii);
        out += ": ";
        dump(out, j.at(k), o, level + 1);
      }
      newline(level);
      out += '}';
      return;
    }
    default: out += "null"; return;  // binary/discarded never occur in our documents
  }
}

}  // namespace

void put_python_json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  put_string(out, s, ensure_ascii);
}

std::string python_json_dumps(const nlohmann::ordered_json& j, const PyDumpOptions& opts) {
  std::string out;
  dump(out, j, opts, 0);
  return out;
}

}  // namespace nibble::io
