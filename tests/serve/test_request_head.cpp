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
