// Where an HTTP/1.1 request at the start of a receive buffer ends: the end of its header block
// and its body's declared length. The connection loop reads this much of a request before any
// worker thread sees it, so a worker only gets requests that have fully arrived, and the bytes
// after them are the next pipelined request. httplib parses the request itself afterwards; this
// only finds its extent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace nibble::serve {

struct RequestHead {
  size_t head_bytes = 0;         // request line + headers + the blank line
  uint64_t content_length = 0;   // 0 when absent; UINT64_MAX when too large to represent
  bool has_length = false;       // a Content-Length header was given
  bool chunked = false;          // "Transfer-Encoding: chunked": the loop finds the end (chunked_end)
  bool other_coding = false;     // a Transfer-Encoding other than chunked (501: httplib has no other)
  bool expect_continue = false;  // "Expect: 100-continue": the client waits before sending the body
  bool bad_length = false;       // Content-Length unparsable, or given twice with different values
  size_t chunked_end = 0;        // a chunked request: its end, once the last chunk and trailers arrived
  size_t body_end() const { return chunked ? chunked_end : head_bytes + size_t(content_length); }
};

// The head of the request at the start of buf; nullopt until its blank line ("\r\n\r\n") arrived.
std::optional<RequestHead> parse_request_head(std::string_view buf);

// A chunked body (RFC 9112 §7.1) starting at buf[start]: Complete with its end (after the last
// chunk and the trailer section) once all of it arrived; TooLarge as soon as the chunk sizes add
// up past max_body; Malformed on a bad size line, a chunk not followed by CRLF, or a size line or
// trailer section longer than max_line.
struct ChunkedScan {
  enum class State { Incomplete, Complete, TooLarge, Malformed } state = State::Incomplete;
  size_t end = 0;
};
ChunkedScan scan_chunked_body(std::string_view buf, size_t start, uint64_t max_body, size_t max_line);

}  // namespace nibble::serve
