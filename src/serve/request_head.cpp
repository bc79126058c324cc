// The extent of a request in a receive buffer; see request_head.h.
#include "serve/request_head.h"

#include <charconv>
#include <limits>

namespace nibble::serve {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<RequestHead> parse_request_head(std::string_view buf) {
  const size_t end = buf.find("\r\n\r\n");
  if (end == std::string_view::npos) return std::nullopt;
  RequestHead h;
  h.head_bytes = end + 4;
  bool have_length = false;
  // Header lines: after the request line, up to the blank line.
  size_t pos = buf.find("\r\n") + 2;
  while (pos < end + 2) {
    const size_t eol = buf.find("\r\n", pos);
    const std::string_view line = buf.substr(pos, eol - pos);
    pos = eol + 2;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;  // httplib's to judge
    const std::string_view name = line.substr(0, colon), value = trim(line.substr(colon + 1));
    if (iequals(name, "Content-Length")) {
      uint64_t n = 0;
      const auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec == std::errc::result_out_of_range && p == value.data() + value.size()) {
        n = std::numeric_limits<uint64_t>::max();  // refused as too large, not as malformed
      } else if (ec != std::errc() || p != value.data() + value.size() || value.empty()) {
        h.bad_length = true;
        continue;
      }
      if (have_length && n != h.content_length) h.bad_length = true;  // a smuggling attempt
      have_length = true;
      h.content_length = n;
    } else if (iequals(name, "Transfer-Encoding")) {
      h.chunked = true;
    } else if (iequals(name, "Expect")) {
      h.expect_continue = iequals(value, "100-continue");
    }
  }
  return h;
}

}  // namespace nibble::serve
