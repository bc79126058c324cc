// sentencepiece's Precompiled normalizer: precompiled_charsmap is base64 of
// [u32 LE trie size in bytes][Darts double-array trie][NUL-separated replacement strings].
// As HF does: text is cut into grapheme clusters; a cluster shorter than 6 bytes is looked up
// whole, otherwise (or when absent) each char is looked up; a lookup takes the first (shortest)
// prefix hit of the trie and yields the replacement string at the stored offset.
#include <cstring>

#include "tokenizer/tok_internal.h"

namespace nibble::tok {

std::string base64_decode(std::string_view s, const Where& w) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(s.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    if (c == '=') break;
    if (c == '\n' || c == '\r') continue;
    int v = val(c);
    if (v < 0) format_error(w, "is not valid base64");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

namespace {

class Precompiled : public Normalizer {
 public:
  Precompiled(const std::string& blob, const Where& w) {
    if (blob.size() < 4) format_error(w, "is too short");
    uint32_t trie_bytes;
    std::memcpy(&trie_bytes, blob.data(), 4);  // little-endian hosts only (x86-64, aarch64)
    if (trie_bytes % 4 != 0 || size_t(trie_bytes) + 4 > blob.size()) format_error(w, "has a bad trie size");
    units_.resize(trie_bytes / 4);
    std::memcpy(units_.data(), blob.data() + 4, trie_bytes);
    normalized_ = blob.substr(4 + trie_bytes);
    if (units_.empty()) format_error(w, "has an empty trie");
  }

  std::string normalize(std::string s) const override {
    std::string out;
    out.reserve(s.size());
    for (std::string_view g : graphemes(s)) {
      check_normalized_size(out.size(), "Precompiled");
      if (g.size() < 6) {
        if (auto r = transform(g)) {
          out += *r;
          continue;
        }
      }
      size_t i = 0;
      while (i < g.size()) {
        size_t b = i;
        next_cp(g, i);
        std::string_view part = g.substr(b, i - b);
        if (auto r = transform(part))
          out += *r;
        else
          out += part;
      }
    }
    check_normalized_size(out.size(), "Precompiled");
    return out;
  }

 private:
  std::optional<std::string_view> transform(std::string_view key) const {
    // Darts unit layout: label in bits 0-7 (+bit 31), has_leaf bit 8, offset above bit 10.
    auto offset = [](uint32_t u) { return size_t(u >> 10) << ((u & (1u << 9)) >> 6); };
    size_t pos = 0;
    uint32_t unit = units_[0];
    pos ^= offset(unit);
    for (char ch : key) {
      auto c = static_cast<unsigned char>(ch);
      if (c == 0) break;
      pos ^= c;
      if (pos >= units_.size()) return std::nullopt;
      unit = units_[pos];
      if ((unit & ((1u << 31) | 0xffu)) != c) return std::nullopt;
      pos ^= offset(unit);
      if (pos >= units_.size()) return std::nullopt;
      if ((unit >> 8) & 1u) {
        size_t value = units_[pos] & ((1u << 31) - 1);
        if (value >= normalized_.size()) return std::nullopt;
        size_t end = normalized_.find('\0', value);
        if (end == std::string::npos) end = normalized_.size();
        return std::string_view(normalized_).substr(value, end - value);
      }
    }
    return std::nullopt;
  }

  std::vector<uint32_t> units_;
  std::string normalized_;
};

class Identity : public Normalizer {
 public:
  std::string normalize(std::string s) const override { return s; }
};

}  // namespace

std::unique_ptr<Normalizer> make_precompiled(const std::string& charsmap_base64, const Where& w) {
  std::string blob = base64_decode(charsmap_base64, w);
  if (blob.empty()) return std::make_unique<Identity>();
  return std::make_unique<Precompiled>(blob, w);
}

}  // namespace nibble::tok
