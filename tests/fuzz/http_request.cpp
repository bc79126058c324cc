// The connection loop's view of raw request bytes (serve/request_head.h): where a request's head
// ends, its framing, and where a chunked body ends. Checked invariants, not just "no crash": a
// Complete chunked body ends inside the buffer; scanning only up to that end gives the same end;
// a shorter prefix is never Complete; TooLarge and Malformed stay so as more bytes arrive.
#include <cstring>

#include "fuzz_common.h"
#include "serve/request_head.h"

namespace serve = nibble::serve;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "http_request: %s\n", what);
  std::abort();
}

}  // namespace

NIBBLE_FUZZ_ENTRY {
  const std::string_view buf(reinterpret_cast<const char*>(data), size);
  const auto h = serve::parse_request_head(buf);
  if (!h) return 0;
  if (h->head_bytes > buf.size() || buf.compare(h->head_bytes - 4, 4, "\r\n\r\n") != 0) fail("head end");
  if (!h->chunked) return 0;
  using S = serve::ChunkedScan::State;
  constexpr uint64_t kMaxBody = 4096;
  constexpr size_t kMaxLine = 256;
  const serve::ChunkedScan b = serve::scan_chunked_body(buf, h->head_bytes, kMaxBody, kMaxLine);
  if (b.state == S::Complete) {
    if (b.end < h->head_bytes + 5 || b.end > buf.size()) fail("complete end outside the buffer");
    const serve::ChunkedScan exact = serve::scan_chunked_body(buf.substr(0, b.end), h->head_bytes, kMaxBody, kMaxLine);
    if (exact.state != S::Complete || exact.end != b.end) fail("the end depends on bytes after it");
    const serve::ChunkedScan shorter =
        serve::scan_chunked_body(buf.substr(0, b.end - 1), h->head_bytes, kMaxBody, kMaxLine);
    if (shorter.state == S::Complete) fail("complete before its end");
  } else if (b.state != S::Incomplete) {
    std::string more(buf);
    more += "0\r\n\r\n";
    if (serve::scan_chunked_body(more, h->head_bytes, kMaxBody, kMaxLine).state != b.state)
      fail("a rejected body became acceptable with more bytes");
  }
  return 0;
}
