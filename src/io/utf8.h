// append_utf8: one code point as UTF-8. valid_utf8: the well-formedness rule Rust's str enforces (and so the safetensors library on
// header text): no overlong forms, no surrogates, nothing above U+10FFFF, no truncated tails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace nibble::io {

// Appends code point c (at most U+10FFFF) as UTF-8.
inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xc0 | (c >> 6));
    out += char(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    out += char(0xe0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3f));
    out += char(0x80 | (c & 0x3f));
  } else {
    out += char(0xf0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3f));
    out += char(0x80 | ((c >> 6) & 0x3f));
    out += char(0x80 | (c & 0x3f));
  }
}


inline bool valid_utf8(const char* text, size_t n) {
  const auto* s = reinterpret_cast<const uint8_t*>(text);
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1fu, min = 0x80;
    else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0fu, min = 0x800;
    else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07u, min = 0x10000;
    else return false;  // stray continuation byte or 0xf8..0xff
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

}  // namespace nibble::io
