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
  bool chunked = false;          // Transfer-Encoding present: the body's end is httplib's to find
  bool expect_continue = false;  // "Expect: 100-continue": the client waits before sending the body
  bool bad_length = false;       // Content-Length unparsable, or given twice with different values
  size_t body_end() const { return head_bytes + size_t(content_length); }
};

// The head of the request at the start of buf; nullopt until its blank line ("\r\n\r\n") arrived.
std::optional<RequestHead> parse_request_head(std::string_view buf);

}  // namespace nibble::serve
