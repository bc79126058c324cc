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
      if (h.has_length && n != h.content_length) h.bad_length = true;  // a smuggling attempt
      h.has_length = true;
      h.content_length = n;
    } else if (iequals(name, "Transfer-Encoding")) {
      if (iequals(value, "chunked"))
        h.chunked = true;
      else
        h.other_coding = true;
    } else if (iequals(name, "Expect")) {
      h.expect_continue = iequals(value, "100-continue");
    }
  }
  return h;
}

ChunkedScan scan_chunked_body(std::string_view buf, size_t pos, uint64_t max_body, size_t max_line) {
  using S = ChunkedScan::State;
  // The next line from pos: its end (the CR), npos while it has not arrived.
  const auto line_end = [&](size_t from, S& bad) {
    const size_t eol = buf.find("\r\n", from);
    if (eol == std::string_view::npos) bad = buf.size() - from > max_line ? S::Malformed : S::Incomplete;
    return eol;
  };
  uint64_t total = 0;
  for (;;) {  // chunk-size [ chunk-ext ] CRLF chunk-data CRLF, up to the last chunk (size 0)
    S bad{};
    const size_t eol = line_end(pos, bad);
    if (eol == std::string_view::npos) return {bad};
    if (eol - pos > max_line) return {S::Malformed};
    const std::string_view line = buf.substr(pos, eol - pos);
    uint64_t n = 0;
    size_t i = 0;
    for (; i < line.size(); ++i) {
      const char ch = line[i];
      const int d = ch >= '0' && ch <= '9' ? ch - '0'
                    : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                    : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                             : -1;
      if (d < 0) break;
      if (i == 15) return {S::Malformed};  // more hex digits than any body we take
      n = n * 16 + uint64_t(d);
    }
    const std::string_view ext = trim(line.substr(i));
    if (i == 0 || (!ext.empty() && ext.front() != ';')) return {S::Malformed};
    pos = eol + 2;
    if (n == 0) break;
    if (n > max_body - total) return {S::TooLarge};
    total += n;
    if (buf.size() - pos < n + 2) return {S::Incomplete};
    if (buf.substr(pos + n, 2) != "\r\n") return {S::Malformed};
    pos += n + 2;
  }
  const size_t trailers = pos;
  for (;;) {  // the trailer section: field lines up to an empty line
    S bad{};
    const size_t eol = line_end(pos, bad);
    if (eol == std::string_view::npos) return {bad};
    if (eol == pos) return {S::Complete, eol + 2};
    pos = eol + 2;
    if (pos - trailers > max_line) return {S::Malformed};
  }
}

}  // namespace nibble::serve
