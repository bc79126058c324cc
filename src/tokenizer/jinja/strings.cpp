// Python str semantics by code point. Case mapping covers the letters chat templates meet in
// practice (ASCII, Latin-1, Greek, Cyrillic); other scripts pass through unchanged, as they
// have no case or are rare in role names and keywords.
#include "tokenizer/jinja/strings.h"

#include <algorithm>

#include "io/utf8.h"
#include "tokenizer/jinja/value.h"

namespace nibble::jinja {

std::u32string utf8_decode(const std::string& s) {
  std::u32string out;
  for (size_t p = 0; p < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[p]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 1;
    if (p + n > s.size()) n = 1;
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[p + k]) & 0x3f);
    out += cp;
    p += n;
  }
  return out;
}

std::string utf8_encode(const std::u32string& s) {
  std::string out;
  for (char32_t cp : s) io::append_utf8(out, cp);
  return out;
}

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
         c == 0x3000;
}

std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right) {
  std::u32string u = utf8_decode(s);
  std::u32string set = chars ? utf8_decode(*chars) : std::u32string();
  auto strip_me = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : py_isspace(c); };
  size_t a = 0, b = u.size();
  if (left)
    while (a < b && strip_me(u[a])) ++a;
  if (right)
    while (b > a && strip_me(u[b - 1])) --b;
  return utf8_encode(u.substr(a, b - a));
}

std::vector<std::string> py_split(const std::string& s, const std::string* sep, int64_t maxsplit,
                                  bool from_right) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) return out;
    if (!from_right) {
      size_t p = 0;
      while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
        size_t q = s.find(*sep, p);
        if (q == std::string::npos) break;
        out.push_back(s.substr(p, q - p));
        p = q + sep->size();
      }
      out.push_back(s.substr(p));
    } else {
      size_t end = s.size();
      while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
        if (end < sep->size()) break;
        size_t q = s.rfind(*sep, end - sep->size());
        if (q == std::string::npos) break;
        out.push_back(s.substr(q + sep->size(), end - q - sep->size()));
        end = q;
      }
      out.push_back(s.substr(0, end));
      std::reverse(out.begin(), out.end());
    }
    return out;
  }
  std::u32string u = utf8_decode(s);
  if (!from_right) {
    size_t p = 0;
    while (true) {
      while (p < u.size() && py_isspace(u[p])) ++p;
      if (p >= u.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
        size_t e = u.size();
        while (e > p && py_isspace(u[e - 1])) --e;
        out.push_back(utf8_encode(u.substr(p, e - p)));
        break;
      }
      size_t q = p;
      while (q < u.size() && !py_isspace(u[q])) ++q;
      out.push_back(utf8_encode(u.substr(p, q - p)));
      p = q;
    }
  } else {
    size_t e = u.size();
    while (true) {
      while (e > 0 && py_isspace(u[e - 1])) --e;
      if (e == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
        size_t b = 0;
        while (b < e && py_isspace(u[b])) ++b;
        out.push_back(utf8_encode(u.substr(b, e - b)));
        break;
      }
      size_t q = e;
      while (q > 0 && !py_isspace(u[q - 1])) --q;
      out.push_back(utf8_encode(u.substr(q, e - q)));
      e = q;
    }
    std::reverse(out.begin(), out.end());
  }
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s) {
  std::u32string u = utf8_decode(s);
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t k = 0; k < u.size(); ++k) {
    char32_t c = u[k];
    bool brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
               c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) continue;
    out.push_back(utf8_encode(u.substr(start, k - start)));
    if (c == '\r' && k + 1 < u.size() && u[k + 1] == '\n') ++k;
    start = k + 1;
  }
  if (start < u.size()) out.push_back(utf8_encode(u.substr(start)));
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {
    std::u32string u = utf8_decode(s);
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || done < count) {
        out += repl;
        ++done;
        check_size(double(out.size()), "replace");
      }
      if (k < u.size()) out += utf8_encode(u.substr(k, 1));
    }
    return out;
  }
  size_t p = 0;
  while (count < 0 || done < count) {
    size_t q = s.find(old, p);
    if (q == std::string::npos) break;
    out += s.substr(p, q - p) + repl;
    check_size(double(out.size() + s.size() - q), "replace");
    p = q + old.size();
    ++done;
  }
  return out + s.substr(p);
}

static char32_t to_upper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if ((c >= 0xe0 && c <= 0xfe && c != 0xf7)) return c - 32;
  if (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) return c - 32;
  if (c >= 0x430 && c <= 0x44f) return c - 32;
  if (c >= 0x450 && c <= 0x45f) return c - 80;
  return c;
}

static char32_t to_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c >= 0xc0 && c <= 0xde && c != 0xd7) return c + 32;
  if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) return c + 32;
  if (c >= 0x410 && c <= 0x42f) return c + 32;
  if (c >= 0x400 && c <= 0x40f) return c + 80;
  return c;
}

static bool is_cased(char32_t c) {
  return to_upper(c) != c || to_lower(c) != c;
}

std::string py_upper(const std::string& s) {
  std::u32string u, in = utf8_decode(s);
  for (char32_t c : in) {
    if (c == 0xdf)
      u += U"SS";  // str.upper() expands the sharp s
    else
      u += to_upper(c);
  }
  return utf8_encode(u);
}

std::string py_lower(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (auto& c : u) c = to_lower(c);
  return utf8_encode(u);
}

std::string py_capitalize(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (size_t k = 0; k < u.size(); ++k) u[k] = k == 0 ? to_upper(u[k]) : to_lower(u[k]);
  return utf8_encode(u);
}

std::string py_title(const std::string& s) {
  std::u32string u = utf8_decode(s);
  bool prev_cased = false;
  for (auto& c : u) {
    bool cased = is_cased(c);
    c = cased ? (prev_cased ? to_lower(c) : to_upper(c)) : c;
    prev_cased = cased;
  }
  return utf8_encode(u);
}

bool py_islower(const std::string& s) {
  bool any = false;
  for (char32_t c : utf8_decode(s)) {
    if (to_lower(c) != c) return false;
    any = any || to_upper(c) != c;
  }
  return any;
}

bool py_isupper(const std::string& s) {
  bool any = false;
  for (char32_t c : utf8_decode(s)) {
    if (to_upper(c) != c) return false;
    any = any || to_lower(c) != c;
  }
  return any;
}

}  // namespace nibble::jinja
