// parse_request_head: where a request in a receive buffer ends, as the connection loop needs it.
#include <gtest/gtest.h>

#include <limits>

#include "serve/request_head.h"

using nibble::serve::parse_request_head;

TEST(RequestHead, IncompleteUntilTheBlankLine) {
  EXPECT_FALSE(parse_request_head(""));
  EXPECT_FALSE(parse_request_head("GET /health HTTP/1.1\r\nHost: x\r\n"));
  const auto h = parse_request_head("GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->head_bytes, 33u);
  EXPECT_EQ(h->content_length, 0u);
  EXPECT_EQ(h->body_end(), 33u);
  EXPECT_FALSE(h->chunked || h->expect_continue || h->bad_length);
}

TEST(RequestHead, ContentLengthAnyCaseAndSpacing) {
  const auto h =
      parse_request_head("POST /v1/completions HTTP/1.1\r\ncontent-LENGTH:  12 \r\n\r\n{\"prompt\"");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->content_length, 12u);
  EXPECT_EQ(h->body_end(), h->head_bytes + 12);
  EXPECT_FALSE(h->bad_length);
}

TEST(RequestHead, HugeLengthIsTooLargeNotMalformed) {
  const auto h = parse_request_head("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->content_length, std::numeric_limits<uint64_t>::max());
  EXPECT_FALSE(h->bad_length);
}

TEST(RequestHead, ConflictingOrBadLengthsAreFlagged) {
  EXPECT_TRUE(
      parse_request_head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")->bad_length);
  EXPECT_FALSE(
      parse_request_head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")->bad_length);
  EXPECT_TRUE(parse_request_head("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")->bad_length);
  EXPECT_TRUE(parse_request_head("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n")->bad_length);
  EXPECT_TRUE(parse_request_head("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n")->bad_length);
}

TEST(RequestHead, ChunkedAndExpectContinue) {
  const auto h = parse_request_head(
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\nNoColonLine\r\n\r\n");
  ASSERT_TRUE(h);
  EXPECT_TRUE(h->chunked);
  EXPECT_TRUE(h->expect_continue);
}

TEST(RequestHead, TransferEncodingOtherThanChunkedIsFlagged) {
  const auto h = parse_request_head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
  ASSERT_TRUE(h);
  EXPECT_FALSE(h->chunked);
  EXPECT_TRUE(h->other_coding);
  const auto both = parse_request_head("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
  ASSERT_TRUE(both);
  EXPECT_TRUE(both->chunked && both->has_length);
}

namespace {
using nibble::serve::ChunkedScan;
using nibble::serve::scan_chunked_body;
using S = ChunkedScan::State;
constexpr uint64_t kMax = 1000;
constexpr size_t kLine = 64;
}  // namespace

TEST(ChunkedBody, CompleteWithExtensionsAndTrailers) {
  const std::string head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string body = "5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
  const std::string next = "GET /health HTTP/1.1\r\n\r\n";
  const ChunkedScan b = scan_chunked_body(head + body + next, head.size(), kMax, kLine);
  EXPECT_EQ(b.state, S::Complete);
  EXPECT_EQ(b.end, head.size() + body.size());
  // every proper prefix is incomplete, never malformed or complete
  for (size_t n = 0; n < body.size(); ++n)
    EXPECT_EQ(scan_chunked_body(head + body.substr(0, n), head.size(), kMax, kLine).state, S::Incomplete) << n;
}

TEST(ChunkedBody, TooLargeAsSoonAsTheSizesPassTheLimit) {
  EXPECT_EQ(scan_chunked_body("3e8\r\n", 0, kMax, kLine).state, S::Incomplete);  // 1000: at the limit
  EXPECT_EQ(scan_chunked_body("3e9\r\n", 0, kMax, kLine).state, S::TooLarge);    // 1001, no data yet
  const std::string half(600, 'x');
  EXPECT_EQ(scan_chunked_body("258\r\n" + half + "\r\n258\r\n", 0, kMax, kLine).state, S::TooLarge);
  EXPECT_EQ(scan_chunked_body("fffffffffffffff\r\n", 0, UINT64_MAX, kLine).state, S::Incomplete);
}

TEST(ChunkedBody, MalformedFraming) {
  EXPECT_EQ(scan_chunked_body("\r\n", 0, kMax, kLine).state, S::Malformed);           // no size
  EXPECT_EQ(scan_chunked_body("-1\r\n", 0, kMax, kLine).state, S::Malformed);         // not hex
  EXPECT_EQ(scan_chunked_body("5 x\r\nhello\r\n", 0, kMax, kLine).state, S::Malformed);  // junk after size
  EXPECT_EQ(scan_chunked_body("5\r\nhelloXY0\r\n\r\n", 0, kMax, kLine).state, S::Malformed);  // no CRLF after data
  EXPECT_EQ(scan_chunked_body("1000000000000000\r\n", 0, UINT64_MAX, kLine).state, S::Malformed);  // 16 digits
  EXPECT_EQ(scan_chunked_body(std::string(kLine + 1, '1'), 0, kMax, kLine).state, S::Malformed);  // endless line
  const std::string trailers = "0\r\n" + std::string(kLine, 'h') + ": v\r\n";
  EXPECT_EQ(scan_chunked_body(trailers, 0, kMax, kLine).state, S::Malformed);  // trailer section too long
}
